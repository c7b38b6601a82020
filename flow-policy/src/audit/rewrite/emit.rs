//! Peers, ports and rules written as YAML in the style of the file they go
//! into: flow (`[{port: 8080}]`) where the file used flow, block with its
//! sequence indentation otherwise.

use serde_json::Value;

use crate::generate::is_plain;

/// Keys in the order people write them; others follow, sorted.
const KEY_ORDER: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "from",
    "to",
    "namespaceSelector",
    "podSelector",
    "ipBlock",
    "cidr",
    "except",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "port",
    "endPort",
    "protocol",
    "policyTypes",
    "ingress",
    "egress",
];

/// How a file lays out block YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// Columns from a key to the `-` of its block sequence's items (0 for
    /// `key:\n- item`, 2 for `key:\n  - item`).
    pub sequence_offset: usize,
}

fn ordered(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = map.iter().filter(|(_, v)| !v.is_null()).collect();
    let rank = |key: &str| {
        KEY_ORDER
            .iter()
            .position(|known| *known == key)
            .unwrap_or(KEY_ORDER.len())
    };
    entries.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    entries
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) if is_plain(text) => text.clone(),
        Value::String(text) => Value::String(text.clone()).to_string(),
        other => other.to_string(),
    }
}

/// `value` in flow style, on one line.
pub(super) fn flow(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = ordered(map)
                .into_iter()
                .map(|(key, value)| {
                    format!("{}: {}", scalar(&Value::String(key.clone())), flow(value))
                })
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        other => scalar(other),
    }
}

/// `value` as the lines of a block node at column 0 (a scalar or an empty
/// collection as one flow line).
pub(super) fn block(value: &Value, layout: Layout) -> Vec<String> {
    match value {
        Value::Array(items) if !items.is_empty() => {
            let mut lines = Vec::new();
            for item in items {
                for (index, line) in block(item, layout).into_iter().enumerate() {
                    let prefix = if index == 0 { "- " } else { "  " };
                    lines.push(format!("{prefix}{line}"));
                }
            }
            lines
        }
        Value::Object(map) if !map.is_empty() => {
            let mut lines = Vec::new();
            for (key, value) in ordered(map) {
                lines.extend(block_entry(key, value, layout));
            }
            lines
        }
        other => vec![flow(other)],
    }
}

/// `key: value` as block lines at column 0.
pub(super) fn block_entry(key: &str, value: &Value, layout: Layout) -> Vec<String> {
    let key = scalar(&Value::String(key.to_owned()));
    let nested = match value {
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        _ => false,
    };
    if !nested {
        return vec![format!("{key}: {}", flow(value))];
    }
    let offset = if value.is_array() {
        layout.sequence_offset
    } else {
        2
    };
    let mut lines = vec![format!("{key}:")];
    lines.extend(
        block(value, layout)
            .into_iter()
            .map(|line| format!("{}{line}", " ".repeat(offset))),
    );
    lines
}

/// Lines joined for a node whose first line goes on after text already
/// at `column`, the others indented to it.
pub(super) fn at_column(lines: &[String], column: usize) -> String {
    let indent = format!("\n{}", " ".repeat(column));
    lines.join(&indent)
}
