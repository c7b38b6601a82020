//! An [`Audit`] as AUDIT.md, for reviewers.

use std::fmt::Write as _;

use super::{
    Audit,
    rewrite::{How, describe},
    tighten::{Outcome, RuleChange, Tightening},
};
use crate::load::Skipped;

/// Rows a table of AUDIT.md shows before it says how many more there are
/// (`--report` has them all).
pub const MAX_ROWS: usize = 100;

/// What was read, for the report's first lines.
pub struct Inputs<'a> {
    /// The observed traffic, named.
    pub judged_against: &'a str,
    /// Documents that could not be read, as `file: document N: why`.
    pub errors: &'a [String],
    /// Documents of other kinds.
    pub skipped: &'a [Skipped],
    /// The tightening proposed, if one was made.
    pub proposal: Option<Proposal<'a>>,
}

/// The tightening and what became of its files.
pub struct Proposal<'a> {
    /// The tightening.
    pub tightening: &'a Tightening,
    /// Each changed file, relative to the policies given, and how it was
    /// rewritten.
    pub files: &'a [(String, How)],
    /// Where the files were written, if they were.
    pub output_dir: Option<&'a str>,
}

fn more(out: &mut String, total: usize) {
    if total > MAX_ROWS {
        let _ = writeln!(out, "\n…and {} more, in the JSON report.", total - MAX_ROWS);
    }
}

fn table<T>(out: &mut String, title: &str, header: &str, rows: &[T], row: impl Fn(&T) -> String) {
    if rows.is_empty() {
        return;
    }
    let columns = header.matches('|').count() - 1;
    let rule = vec![" --- "; columns].join("|");
    let _ = writeln!(out, "\n## {title}\n\n{header}\n|{rule}|");
    for item in rows.iter().take(MAX_ROWS) {
        let _ = writeln!(out, "{}", row(item));
    }
    more(out, rows.len());
}

/// AUDIT.md.
pub fn markdown(audit: &Audit, inputs: &Inputs<'_>) -> String {
    let mut out = String::from("# Policy audit\n\n");
    let _ = writeln!(
        out,
        "{} policies judged against {} ({} observed edges, {} checked) and {} pods.\n",
        audit.policies, inputs.judged_against, audit.edges, audit.checked, audit.pods
    );
    let unused_size: u128 = audit
        .unused
        .iter()
        .map(|unused| unused.size)
        .fold(0, u128::saturating_add);
    out.push_str("| finding | count |\n| --- | ---: |\n");
    let rows = [
        (
            "observed connections denied",
            audit.denied.len().to_string(),
        ),
        (
            "unused allowances (pod pairs × ports)",
            format!("{} ({unused_size})", audit.unused.len()),
        ),
        ("over-broad constructs", audit.broad.len().to_string()),
        (
            "cross-tenant openings (workload pairs)",
            audit.cross_tenant.len().to_string(),
        ),
        (
            "workloads open to every tenant",
            audit.open_to_all.len().to_string(),
        ),
        ("documents not read", inputs.errors.len().to_string()),
        (
            "documents of other kinds, skipped",
            inputs.skipped.len().to_string(),
        ),
    ];
    for (finding, count) in rows {
        let _ = writeln!(out, "| {finding} | {count} |");
    }
    out.push_str(&crate::mermaid::reports::audit_section(audit));
    table(
        &mut out,
        "Observed connections denied",
        "| client | server | port | connections | blocked by |",
        &audit.denied,
        |denial| {
            format!(
                "| {} | {} | {}/{} | {} | {} |",
                denial.client,
                denial.server,
                denial.protocol,
                denial.port,
                denial.connections,
                denial.blocked_by.join(", ")
            )
        },
    );
    table(
        &mut out,
        "Allowances never used, largest first",
        "| rule | selects | peer | unused ports | pod pairs × ports |",
        &audit.unused,
        |unused| {
            format!(
                "| `{}` | {} | {} | {} | {} |",
                unused.rule, unused.selected, unused.peer, unused.ports, unused.size
            )
        },
    );
    table(
        &mut out,
        "Over-broad constructs",
        "| policy | rule | construct |",
        &audit.broad,
        |broad| {
            let rule = broad
                .rule
                .as_ref()
                .map_or_else(|| "(whole policy)".to_owned(), |rule| format!("`{rule}`"));
            format!("| `{}` | {rule} | {} |", broad.policy, broad.construct)
        },
    );
    table(
        &mut out,
        "Cross-tenant openings",
        "| client | server | tenants | ports | observed |",
        &audit.cross_tenant,
        |cross| {
            format!(
                "| {} | {} | {} → {} | {} | {} |",
                cross.client,
                cross.server,
                cross.tenants.0,
                cross.tenants.1,
                cross.ports,
                if cross.observed { "yes" } else { "no" }
            )
        },
    );
    list(
        &mut out,
        "Open to every tenant (no policy isolates their ingress)",
        &audit.open_to_all,
        |workload| workload.clone(),
    );
    if let Some(proposal) = &inputs.proposal {
        tightening(&mut out, proposal, !inputs.errors.is_empty());
    }
    list(&mut out, "Documents not read", inputs.errors, |error| {
        error.clone()
    });
    list(
        &mut out,
        "Documents of other kinds, skipped",
        inputs.skipped,
        |skipped| {
            let kind = if skipped.kind.is_empty() {
                "no kind"
            } else {
                skipped.kind.as_str()
            };
            format!(
                "{}: document {}: {kind}",
                skipped.file.display(),
                skipped.document
            )
        },
    );
    out
}

fn list<T>(out: &mut String, title: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## {title}\n");
    for item in items.iter().take(MAX_ROWS) {
        let _ = writeln!(out, "- {}", line(item));
    }
    more(out, items.len());
}

/// The tightening section: files, rules, and what could not be narrowed.
fn tightening(out: &mut String, proposal: &Proposal<'_>, unread: bool) {
    let Proposal {
        tightening,
        files,
        output_dir,
    } = proposal;
    let changed = tightening
        .policies
        .iter()
        .filter(|policy| policy.changed())
        .count();
    let whole = files
        .iter()
        .filter(|(_, how)| matches!(how, How::Whole(_)))
        .count();
    let _ = writeln!(
        out,
        "\n## Tightening\n\nThe smallest change that keeps every observed connection the policies allow and removes every allowance none used: {changed} of {} policies change, in {} files ({} rewritten in place, {whole} proposed whole).",
        tightening.policies.len(),
        files.len(),
        files.len() - whole
    );
    match output_dir {
        Some(directory) => {
            let _ = writeln!(
                out,
                "The changed files are written under `{directory}` at their relative paths, each with a `.diff`; unchanged files are not written."
            );
        }
        None if changed > 0 => {
            out.push_str("Run with `--output-dir` to write the changed files and their diffs.\n")
        }
        None => {}
    }
    table(
        out,
        "Tightened files",
        "| file | written |",
        files,
        |(file, how)| {
            let how = match how {
                How::InPlace => "in place: only the changed rules rewritten".to_owned(),
                How::Whole(why) => format!("whole, flagged: {why}"),
            };
            format!("| {file} | {how} |")
        },
    );
    let changes: Vec<&RuleChange> = tightening
        .policies
        .iter()
        .flat_map(|policy| &policy.changes)
        .collect();
    table(
        out,
        "Tightened rules",
        "| rule | change |",
        &changes,
        |change| format!("| `{}` | {} |", change.rule, rule_change(change)),
    );
    let typed: Vec<String> = tightening
        .policies
        .iter()
        .filter_map(|policy| {
            let types = policy.policy_types.as_ref()?;
            Some(format!(
                "`{}`: `policyTypes: [{}]`",
                policy.policy,
                types.join(", ")
            ))
        })
        .collect();
    list(
        out,
        "Policies that keep isolating with no rule left (`policyTypes` written)",
        &typed,
        Clone::clone,
    );
    let kept: Vec<String> = changes
        .iter()
        .flat_map(|change| {
            change
                .kept
                .iter()
                .map(move |why| format!("`{}`: {why}", change.rule))
        })
        .collect();
    list(out, "Peers kept as they were", &kept, Clone::clone);
    out.push_str("\nA policy that selects several workloads keeps the union of what they used.");
    if unread {
        out.push_str(
            " Documents not read (below: invalid ones, CiliumNetworkPolicies) are not tightened and not written.",
        );
    }
    out.push('\n');
}

fn rule_change(change: &RuleChange) -> String {
    let rules = match &change.outcome {
        Outcome::Dropped => return "removed: no observed connection used it".to_owned(),
        Outcome::Narrowed(rules) => rules,
    };
    let key = if change.rule.direction == "ingress" {
        "from"
    } else {
        "to"
    };
    let parts: Vec<String> = rules
        .iter()
        .map(|rule| {
            let mut what = Vec::new();
            if rule.peers != change.before.peers {
                what.push(format!(
                    "{key} {} → {}",
                    describe(change.before.peers.as_ref(), "every peer"),
                    describe(rule.peers.as_ref(), "every peer")
                ));
            }
            if rule.ports != change.before.ports {
                what.push(format!(
                    "ports {} → {}",
                    describe(change.before.ports.as_ref(), "every port"),
                    describe(rule.ports.as_ref(), "every port")
                ));
            }
            if what.is_empty() {
                "as it was".to_owned()
            } else {
                what.join("; ")
            }
        })
        .collect();
    if parts.len() == 1 {
        parts.concat()
    } else {
        let numbered: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(index, part)| format!("{}) {part}", index + 1))
            .collect();
        format!("split in {}: {}", parts.len(), numbered.join("; "))
    }
}
