//! Mermaid flowcharts for reviews: REVIEW.md, AUDIT.md and the `policy
//! diff` summary draw a service map per namespace in a ```` ```mermaid ````
//! block, which GitHub and Azure DevOps render in pull requests.
//!
//! [`Flowchart`] is a small typed builder: nodes, edges and their styles,
//! written as Mermaid text. No name reaches that text raw: node ids are
//! generated (`n0`, `n1`, ...) and every label is quoted with each character
//! Mermaid or Markdown could read as syntax written as an entity code
//! (`#35;`), so a workload or DNS name cannot break the diagram or the page
//! around it. [`map`] makes the service maps; [`reports`] turns each report
//! into the map's edges.

use std::fmt::Write as _;

pub mod map;
pub mod reports;

/// How a node is drawn, by what it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    /// A rectangle: a workload of the namespace drawn.
    Box,
    /// Rounded ends: a workload of another namespace.
    Stadium,
    /// A hexagon: an address, a DNS name, a node-local resolver.
    Hexagon,
    /// A note: what the diagram left out.
    Note,
}

/// A node's style: a `classDef` name and its CSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStyle {
    /// The class name, a plain identifier.
    pub name: &'static str,
    /// Its declarations, e.g. `fill:#eee,stroke:#888`.
    pub css: &'static str,
}

/// How an edge is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// `-->`.
    Solid,
    /// `==>`.
    Thick,
    /// `-.->`.
    Dotted,
    /// `--x`: a connection that ends in a refusal.
    Crossed,
}

impl Line {
    fn arrow(self) -> &'static str {
        match self {
            Self::Solid => "-->",
            Self::Thick => "==>",
            Self::Dotted => "-.->",
            Self::Crossed => "--x",
        }
    }
}

/// An edge's style: its line and, when set, a `linkStyle` CSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeStyle {
    /// The line.
    pub line: Line,
    /// Its declarations, e.g. `stroke:#d7263d,stroke-width:3px`; empty for
    /// Mermaid's default.
    pub css: &'static str,
}

/// A node, by its place in the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(usize);

#[derive(Clone, Debug)]
struct Node {
    label: String,
    shape: Shape,
    style: Option<NodeStyle>,
}

#[derive(Clone, Debug)]
struct Edge {
    from: NodeId,
    to: NodeId,
    label: String,
    style: EdgeStyle,
}

/// A left-to-right flowchart, written in the order it was built: the same
/// calls give the same text.
#[derive(Clone, Debug, Default)]
pub struct Flowchart {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

impl Flowchart {
    /// An empty chart.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node; its id is `n` and its place.
    pub fn node(&mut self, label: &str, shape: Shape, style: Option<NodeStyle>) -> NodeId {
        self.nodes.push(Node {
            label: label.to_owned(),
            shape,
            style,
        });
        NodeId(self.nodes.len() - 1)
    }

    /// Adds an edge; an empty label draws none.
    pub fn edge(&mut self, from: NodeId, to: NodeId, label: &str, style: EdgeStyle) {
        self.edges.push(Edge {
            from,
            to,
            label: label.to_owned(),
            style,
        });
    }

    /// Nodes added.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The Mermaid text, each line ending in a newline: `flowchart LR`, the
    /// nodes, the edges, then `classDef` and `class` lines per node style
    /// and a `linkStyle` line per edge style, in order of first use.
    pub fn render(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (index, node) in self.nodes.iter().enumerate() {
            let (open, close) = match node.shape {
                Shape::Box => ("[", "]"),
                Shape::Stadium => ("([", "])"),
                Shape::Hexagon => ("{{", "}}"),
                Shape::Note => (">", "]"),
            };
            let _ = writeln!(out, "  n{index}{open}\"{}\"{close}", escape(&node.label));
        }
        for Edge {
            from,
            to,
            label,
            style,
        } in &self.edges
        {
            let arrow = style.line.arrow();
            if label.is_empty() {
                let _ = writeln!(out, "  n{} {arrow} n{}", from.0, to.0);
            } else {
                let _ = writeln!(
                    out,
                    "  n{} {arrow}|\"{}\"| n{}",
                    from.0,
                    escape(label),
                    to.0
                );
            }
        }
        self.render_node_styles(&mut out);
        self.render_edge_styles(&mut out);
        out
    }

    fn render_node_styles(&self, out: &mut String) {
        let mut styles: Vec<NodeStyle> = Vec::new();
        for style in self.nodes.iter().filter_map(|node| node.style) {
            if !styles.contains(&style) {
                styles.push(style);
            }
        }
        for style in styles {
            let members: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| node.style == Some(style))
                .map(|(index, _)| format!("n{index}"))
                .collect();
            let _ = writeln!(out, "  classDef {} {}", style.name, style.css);
            let _ = writeln!(out, "  class {} {}", members.join(","), style.name);
        }
    }

    fn render_edge_styles(&self, out: &mut String) {
        let mut styles: Vec<EdgeStyle> = Vec::new();
        for edge in &self.edges {
            if !edge.style.css.is_empty() && !styles.contains(&edge.style) {
                styles.push(edge.style);
            }
        }
        for style in styles {
            let members: Vec<String> = self
                .edges
                .iter()
                .enumerate()
                .filter(|(_, edge)| edge.style == style)
                .map(|(index, _)| index.to_string())
                .collect();
            let _ = writeln!(out, "  linkStyle {} {}", members.join(","), style.css);
        }
    }
}

/// Whether Mermaid reads `character` as itself inside a quoted label, and
/// Markdown around the block cannot read it as anything either.
fn is_plain(character: char) -> bool {
    character.is_ascii_alphanumeric()
        || matches!(
            character,
            ' ' | '.' | '/' | '-' | '_' | ',' | '=' | '+' | '*' | '@'
        )
}

/// `label` fit for a quoted Mermaid label: every character but letters,
/// digits, spaces and `./-_,=+*@` as a decimal entity code (`"` is `#34;`,
/// `#` is `#35;`, a newline `#10;`, `é` `#233;`), which Mermaid shows as
/// the character itself.
pub fn escape(label: &str) -> String {
    let mut escaped = String::with_capacity(label.len());
    for character in label.chars() {
        if is_plain(character) {
            escaped.push(character);
        } else {
            let _ = write!(escaped, "#{};", u32::from(character));
        }
    }
    escaped
}

#[cfg(test)]
mod tests;
