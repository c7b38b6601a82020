//! A tightening written back into the policy files: only the rules that
//! change are rewritten, in the file's own style, so comments, key order
//! and every untouched byte stay as they were. The result is read back and
//! must hold exactly the tightened policies; a file that cannot be
//! rewritten so (a `List`, anchors, flow-style rule lists, anything the
//! read-back disagrees with) is proposed whole, and says why.

use std::path::Path;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use serde_json::Value;

use super::tighten::{Outcome, PolicyTightening, RuleChange, RuleParts};

mod emit;
mod tree;

use self::{
    emit::{Layout, at_column, block, block_entry, flow},
    tree::{Kind, Node, documents},
};

/// How a file was rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// Only the changed rules were rewritten.
    InPlace,
    /// The whole file was written anew, for this reason.
    Whole(String),
}

/// A file with its tightening applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The new text.
    pub text: String,
    /// How it was made.
    pub how: How,
}

/// A replacement of `start..end` of the source.
#[derive(Debug)]
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

/// Applies the tightening of the policies read from `file` (all of them,
/// in document order) to its text `original`.
pub fn rewrite_file(file: &Path, original: &str, policies: &[&PolicyTightening]) -> Rewritten {
    match in_place(file, original, policies) {
        Ok(text) => Rewritten {
            text,
            how: How::InPlace,
        },
        Err(reason) => Rewritten {
            text: whole(policies, original),
            how: How::Whole(reason),
        },
    }
}

fn in_place(file: &Path, original: &str, policies: &[&PolicyTightening]) -> Result<String, String> {
    let mut numbers: Vec<usize> = policies.iter().map(|policy| policy.document).collect();
    numbers.dedup();
    if numbers.len() != policies.len() {
        return Err("its policies are items of a List".to_owned());
    }
    let roots = documents(original).map_err(|why| why.to_string())?;
    let mut edits = Vec::new();
    for policy in policies.iter().filter(|policy| policy.changed()) {
        let root = roots
            .get(policy.document - 1)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("document {} was not found", policy.document))?;
        let context = Context {
            text: original,
            layout: layout(original, root),
        };
        edits.extend(
            context
                .policy(root, policy)
                .map_err(|why| format!("{}: {why}", policy.policy))?,
        );
    }
    let text = apply(original, edits);
    verify(file, original, &text, policies)?;
    Ok(text)
}

fn apply(original: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by(|a, b| b.start.cmp(&a.start).then_with(|| b.end.cmp(&a.end)));
    let mut text = original.to_owned();
    for Edit {
        start,
        end,
        text: new,
    } in edits
    {
        text.replace_range(start..end, &new);
    }
    text
}

/// The rewritten text must read back as the tightened policies, with the
/// file's other documents as they were.
fn verify(
    file: &Path,
    original: &str,
    text: &str,
    policies: &[&PolicyTightening],
) -> Result<(), String> {
    let before = crate::load::read_text(file, original);
    let after = crate::load::read_text(file, text);
    let intended: Vec<&NetworkPolicy> = policies.iter().map(|policy| &policy.tightened).collect();
    let read: Vec<&NetworkPolicy> = after.policies.iter().map(|loaded| &loaded.policy).collect();
    if read != intended
        || after.skipped != before.skipped
        || after.errors.len() != before.errors.len()
    {
        return Err("the rewritten file did not read back as the tightened policies".to_owned());
    }
    Ok(())
}

/// The tightened policies of a file, written anew.
fn whole(policies: &[&PolicyTightening], original: &str) -> String {
    let others = crate::load::read_text(Path::new(""), original);
    let mut text = String::from(
        "# Proposed whole by `policy audit`: the original could not be rewritten in place.\n",
    );
    if !others.skipped.is_empty() || !others.errors.is_empty() {
        text.push_str("# The original's other documents are not in this proposal.\n");
    }
    for (index, policy) in policies.iter().enumerate() {
        if index > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serialize(&policy.tightened));
    }
    text
}

fn serialize(policy: &NetworkPolicy) -> String {
    #[derive(Serialize)]
    struct Typed<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        kind: &'static str,
        #[serde(flatten)]
        policy: &'a NetworkPolicy,
    }
    let value = serde_json::to_value(Typed {
        api_version: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        policy,
    })
    .unwrap_or(Value::Null);
    let layout = Layout { sequence_offset: 0 };
    let mut lines = Vec::new();
    if let Value::Object(map) = &value {
        for key in ["apiVersion", "kind", "metadata", "spec"] {
            if let Some(value) = map.get(key) {
                lines.extend(block_entry(key, value, layout));
            }
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

/// The file's block sequence indentation, from its first rule list.
fn layout(text: &str, root: &Node) -> Layout {
    let column = |offset: usize| offset - text[..offset].rfind('\n').map_or(0, |at| at + 1);
    let offset = root.entry("spec").and_then(|(_, spec)| {
        ["ingress", "egress"].iter().find_map(|direction| {
            let (key, rules) = spec.entry(direction)?;
            let first = rules.items()?.first()?;
            (!rules.flow).then(|| column(first.start).checked_sub(column(key.start) + 2))?
        })
    });
    Layout {
        sequence_offset: offset.unwrap_or(0),
    }
}

/// The source and how it lays out YAML.
struct Context<'t> {
    text: &'t str,
    layout: Layout,
}

/// A list of peers or ports in flow style, for reports: `none` when
/// absent or empty.
pub fn describe<T: Serialize>(value: Option<&Vec<T>>, none: &str) -> String {
    match value {
        Some(items) if !items.is_empty() => format!("`{}`", flow(&json(items))),
        _ => none.to_owned(),
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Context<'_> {
    fn line_start(&self, offset: usize) -> usize {
        self.text[..offset].rfind('\n').map_or(0, |at| at + 1)
    }

    fn line_end(&self, offset: usize) -> usize {
        self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |at| offset + at)
    }

    fn column(&self, offset: usize) -> usize {
        offset - self.line_start(offset)
    }

    /// The edits of one policy's document.
    fn policy(&self, root: &Node, policy: &PolicyTightening) -> Result<Vec<Edit>, String> {
        let (_, spec) = root.entry("spec").ok_or("no spec")?;
        let mut edits = Vec::new();
        for (direction, key) in [("ingress", "from"), ("egress", "to")] {
            let changes: Vec<&RuleChange> = policy
                .changes
                .iter()
                .filter(|change| change.rule.direction == direction)
                .collect();
            if changes.is_empty() {
                continue;
            }
            let (name, rules) = spec
                .entry(direction)
                .ok_or_else(|| format!("no `{direction}` found"))?;
            if rules.flow {
                return Err(format!("`{direction}` is written in flow style"));
            }
            let items = rules
                .items()
                .ok_or_else(|| format!("`{direction}` is not a list"))?;
            let left = rule_count(&policy.tightened, direction);
            if left == 0 {
                edits.push(Edit {
                    start: name.end,
                    end: rules.end,
                    text: ": []".to_owned(),
                });
                continue;
            }
            for change in changes {
                let item = items
                    .get(change.rule.rule)
                    .ok_or_else(|| format!("{direction}[{}] not found", change.rule.rule))?;
                edits.extend(self.rule(item, change, key)?);
            }
        }
        if let Some(types) = &policy.policy_types {
            edits.push(self.policy_types(spec, types)?);
        }
        Ok(edits)
    }

    /// `policyTypes` added after `podSelector`, or first.
    fn policy_types(&self, spec: &Node, types: &[String]) -> Result<Edit, String> {
        if spec.flow {
            return Err("`spec` is written in flow style".to_owned());
        }
        let line = format!("policyTypes: [{}]", types.join(", "));
        Ok(match spec.entry("podSelector") {
            Some((key, value)) => {
                let at = self.line_end(value.end);
                Edit {
                    start: at,
                    end: at,
                    text: format!("\n{}{line}", " ".repeat(self.column(key.start))),
                }
            }
            None => {
                let at = self.line_start(spec.start);
                Edit {
                    start: at,
                    end: at,
                    text: format!("{}{line}\n", " ".repeat(self.column(spec.start))),
                }
            }
        })
    }

    /// The `-` of a block sequence item, alone on its line before it.
    fn dash(&self, item: &Node) -> Result<usize, String> {
        let before = self.text[..item.start].trim_end_matches(' ');
        let dash = before
            .len()
            .checked_sub(1)
            .filter(|_| before.ends_with('-'));
        match dash {
            Some(at)
                if self.text[self.line_start(at)..at]
                    .bytes()
                    .all(|byte| byte == b' ') =>
            {
                Ok(at)
            }
            _ => Err("a rule does not start its own line".to_owned()),
        }
    }

    fn rule(&self, item: &Node, change: &RuleChange, key: &str) -> Result<Vec<Edit>, String> {
        let dash = self.dash(item)?;
        let rules = match &change.outcome {
            Outcome::Dropped => {
                let end = self.line_end(item.end);
                let end = if end < self.text.len() { end + 1 } else { end };
                return Ok(vec![Edit {
                    start: self.line_start(dash),
                    end,
                    text: String::new(),
                }]);
            }
            Outcome::Narrowed(rules) => rules,
        };
        let (first, others) = rules.split_first().ok_or("a narrowed rule without rules")?;
        let mut edits = Vec::new();
        let mut tail = String::new();
        let flow_item = item.flow || !matches!(item.kind, Kind::Mapping(_));
        if flow_item {
            edits.push(Edit {
                start: item.start,
                end: item.end,
                text: flow(&rule_json(first, key)),
            });
        } else {
            let column = self.column(item.start);
            let flow_values = [key, "ports"]
                .iter()
                .filter_map(|name| item.entry(name))
                .all(|(_, value)| value.flow);
            for (name, changed, new) in [
                (
                    key,
                    first.peers != change.before.peers,
                    first.peers.as_ref().map(json),
                ),
                (
                    "ports",
                    first.ports != change.before.ports,
                    first.ports.as_ref().map(json),
                ),
            ] {
                if !changed {
                    continue;
                }
                let new = new.ok_or("a rule would lose a key")?;
                match item.entry(name) {
                    Some((name_node, value)) => edits.push(Edit {
                        start: name_node.end,
                        end: value.end,
                        text: format!(":{}", self.value(&new, value.flow, column)),
                    }),
                    None => tail.push_str(&format!(
                        "\n{}{name}:{}",
                        " ".repeat(column),
                        self.value(&new, flow_values, column)
                    )),
                }
            }
            for other in others {
                let lines = self.rule_lines(other, key, flow_values);
                tail.push_str(&format!(
                    "\n{}- {}",
                    " ".repeat(self.column(dash)),
                    at_column(&lines, self.column(dash) + 2)
                ));
            }
        }
        if flow_item {
            for other in others {
                tail.push_str(&format!(
                    "\n{}- {}",
                    " ".repeat(self.column(dash)),
                    flow(&rule_json(other, key))
                ));
            }
        }
        if !tail.is_empty() {
            let at = self.line_end(item.end);
            edits.push(Edit {
                start: at,
                end: at,
                text: tail,
            });
        }
        Ok(edits)
    }

    /// A value after its key's `:`, for a key at `column`.
    fn value(&self, value: &Value, flow_style: bool, column: usize) -> String {
        if flow_style {
            return format!(" {}", flow(value));
        }
        let indent = " ".repeat(column + self.layout.sequence_offset);
        block(value, self.layout)
            .iter()
            .map(|line| format!("\n{indent}{line}"))
            .collect()
    }

    /// A rule as block lines at column 0, its values flow or block.
    fn rule_lines(&self, rule: &RuleParts, key: &str, flow_values: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let values = [
            (key, rule.peers.as_ref().map(json)),
            ("ports", rule.ports.as_ref().map(json)),
        ];
        for (name, value) in values {
            let Some(value) = value else { continue };
            if flow_values {
                lines.push(format!("{name}: {}", flow(&value)));
            } else {
                lines.extend(block_entry(name, &value, self.layout));
            }
        }
        lines
    }
}

fn rule_json(rule: &RuleParts, key: &str) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(peers) = &rule.peers {
        map.insert(key.to_owned(), json(peers));
    }
    if let Some(ports) = &rule.ports {
        map.insert("ports".to_owned(), json(ports));
    }
    Value::Object(map)
}

fn rule_count(policy: &NetworkPolicy, direction: &str) -> usize {
    let Some(spec) = &policy.spec else { return 0 };
    if direction == "ingress" {
        spec.ingress.as_ref().map_or(0, Vec::len)
    } else {
        spec.egress.as_ref().map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests;
