//! YAML documents as trees of nodes that know their byte spans in the
//! source, read with granit-parser's event parser: what the rewrite needs
//! to replace one rule and leave every other byte as it was.

use granit_parser::{Event, Parser, StructureStyle};

/// A node and where it is in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    /// Byte offset of its first character (of its first child's, for a
    /// block collection).
    pub start: usize,
    /// Byte offset just past its last character (a block collection ends
    /// with its last child, never with what follows it).
    pub end: usize,
    /// Written in flow style (`[...]`, `{...}`).
    pub flow: bool,
    /// What it holds.
    pub kind: Kind,
}

/// A node's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Scalar(String),
    Mapping(Vec<(Node, Node)>),
    Sequence(Vec<Node>),
}

impl Node {
    /// The value of `key` in a mapping, with the key node.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        let Kind::Mapping(entries) = &self.kind else {
            return None;
        };
        entries
            .iter()
            .find(|(name, _)| matches!(&name.kind, Kind::Scalar(text) if text == key))
            .map(|(name, value)| (name, value))
    }

    /// The items of a sequence.
    pub fn items(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Sequence(items) => Some(items),
            _ => None,
        }
    }
}

/// Why a file's structure cannot be read for a rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Unreadable {
    /// The parser refused it.
    Syntax(String),
    /// Anchors or aliases: a rewrite could change what shares them.
    Anchors,
    /// The parser gave no byte offsets.
    Offsets,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(message) => write!(f, "the YAML parser refused it: {message}"),
            Self::Anchors => f.write_str("it uses anchors or aliases"),
            Self::Offsets => f.write_str("its byte offsets are unknown"),
        }
    }
}

/// Collections being read.
enum Open {
    Mapping {
        start: usize,
        flow: bool,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
    Sequence {
        start: usize,
        flow: bool,
        items: Vec<Node>,
    },
}

/// The documents of `text`, each its root node (`None` for an empty one).
pub(super) fn documents(text: &str) -> Result<Vec<Option<Node>>, Unreadable> {
    let mut documents = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|error| Unreadable::Syntax(error.to_string()))?;
        let (Some(start), Some(end)) = (span.start.byte_offset(), span.end.byte_offset()) else {
            return Err(Unreadable::Offsets);
        };
        let done = match event {
            Event::DocumentStart(..) => {
                root = None;
                None
            }
            Event::DocumentEnd => {
                documents.push(root.take());
                None
            }
            Event::Alias(_) | Event::Anchor(..) | Event::UnresolvedAlias(_) => {
                return Err(Unreadable::Anchors);
            }
            Event::Scalar(value, _, anchor, _) => {
                if anchor != 0 {
                    return Err(Unreadable::Anchors);
                }
                Some(Node {
                    start,
                    end,
                    flow: false,
                    kind: Kind::Scalar(value.into_owned()),
                })
            }
            Event::MappingStart(_, anchor, _) | Event::SequenceStart(_, anchor, _)
                if anchor != 0 =>
            {
                return Err(Unreadable::Anchors);
            }
            Event::MappingStart(style, ..) => {
                stack.push(Open::Mapping {
                    start,
                    flow: style == StructureStyle::Flow,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceStart(style, ..) => {
                stack.push(Open::Sequence {
                    start,
                    flow: style == StructureStyle::Flow,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingEnd | Event::SequenceEnd => stack.pop().map(|open| close(open, end)),
            _ => None,
        };
        if let Some(node) = done {
            match stack.last_mut() {
                None => root = Some(node),
                Some(Open::Sequence { items, .. }) => items.push(node),
                Some(Open::Mapping { entries, key, .. }) => match key.take() {
                    None => *key = Some(node),
                    Some(name) => entries.push((name, node)),
                },
            }
        }
    }
    Ok(documents)
}

/// The node of a finished collection; `end` is where its end event is.
fn close(open: Open, end: usize) -> Node {
    match open {
        Open::Mapping {
            start,
            flow,
            entries,
            ..
        } => {
            let last = entries.last().map_or(start, |(_, value)| value.end);
            let first = entries.first().map_or(start, |(key, _)| key.start);
            Node {
                start: if flow { start } else { first },
                end: if flow { end } else { last },
                flow,
                kind: Kind::Mapping(entries),
            }
        }
        Open::Sequence { start, flow, items } => {
            let last = items.last().map_or(start, |item| item.end);
            let first = items.first().map_or(start, |item| item.start);
            Node {
                start: if flow { start } else { first },
                end: if flow { end } else { last },
                flow,
                kind: Kind::Sequence(items),
            }
        }
    }
}
