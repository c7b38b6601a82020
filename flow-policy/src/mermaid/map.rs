//! Service maps: per namespace, its workloads, the edges that touch them
//! with their ports, and the peers outside it, as a [`Flowchart`] in a
//! Markdown section.
//!
//! An edge is drawn in the map of each namespace one of its workload ends
//! is in; there the other end, when it is elsewhere, is an outside node. A
//! map draws at most [`MAX_EDGES`] edges, the first in [`MapEdge`] order
//! (findings first, then by weight, then by name), and a note counting the
//! rest.

use std::collections::{BTreeMap, BTreeSet};

use super::{EdgeStyle, Flowchart, Line, NodeId, NodeStyle, Shape};
use crate::graph::WorkloadRef;

/// Edges a map draws before it summarises the rest.
pub const MAX_EDGES: usize = 40;

/// Ports an edge's label lists before it counts the rest.
pub const MAX_LABEL_PORTS: usize = 6;

/// What an end outside the workloads is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutsideKind {
    /// An address or an address block (the world, a node, the API server).
    Address,
    /// A DNS resolver on every node.
    NodeLocalDns,
}

/// One end of a map's edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// A workload of the cluster.
    Workload(WorkloadRef),
    /// Something else, by the label it is drawn with.
    Outside {
        /// Its label: an address, a block, DNS names.
        label: String,
        /// What it is.
        kind: OutsideKind,
    },
}

impl End {
    /// An end as the reports write it: `namespace/Kind/name` is a workload,
    /// anything else (`10.0.0.0/8`, `192.0.2.1 (world)`) an address.
    pub fn parse(text: &str) -> Self {
        let mut parts = text.split('/');
        if let (Some(namespace), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let workload = WorkloadRef {
                namespace: namespace.to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
            };
            if workload.check_names().is_ok() {
                return Self::Workload(workload);
            }
        }
        Self::Outside {
            label: text.to_owned(),
            kind: OutsideKind::Address,
        }
    }

    fn namespace(&self) -> Option<&str> {
        match self {
            Self::Workload(workload) => Some(&workload.namespace),
            Self::Outside { .. } => None,
        }
    }
}

/// What an edge is to the report that draws it; also the order in which a
/// map keeps edges, so that a summary never hides a finding behind plain
/// traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdgeKind {
    /// Connections the policies deny: observed, and refused (audit), or
    /// broken by the change (diff).
    Denied,
    /// Between tenants: allowed on request (review), allowed (audit),
    /// opened (diff).
    CrossTenant,
    /// Opened by the change (diff).
    New,
    /// Closed by the change (diff).
    Removed,
    /// Allowed, and no observed connection used it (audit).
    Unused,
    /// Allowed (review).
    Allowed,
}

impl EdgeKind {
    /// How it is drawn.
    pub fn style(self) -> EdgeStyle {
        let (line, css) = match self {
            Self::Denied => (Line::Crossed, "stroke:#e07a00,stroke-width:2px"),
            Self::CrossTenant => (Line::Thick, "stroke:#d7263d,stroke-width:3px"),
            Self::New => (Line::Solid, "stroke:#2a9d4b,stroke-width:2px"),
            Self::Removed => (Line::Dotted, "stroke:#888888"),
            Self::Unused => (Line::Dotted, "stroke:#4a6fa5"),
            Self::Allowed => (Line::Solid, ""),
        };
        EdgeStyle { line, css }
    }

    /// How the legend names it.
    pub fn legend(self) -> &'static str {
        match self {
            Self::Denied => "orange lines ending in a cross: denied",
            Self::CrossTenant => "thick red lines: cross-tenant",
            Self::New => "green lines: opened",
            Self::Removed => "grey dotted lines: closed",
            Self::Unused => "blue dotted lines: allowed, never used",
            Self::Allowed => "plain lines: allowed",
        }
    }
}

/// An edge of a service map: from the end that opens connections to the
/// one that accepts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEdge {
    /// The client.
    pub client: End,
    /// The server.
    pub server: End,
    /// The ports, as labels (`TCP 80`), sorted, once each.
    pub ports: BTreeSet<String>,
    /// How much it matters within its kind: bytes, connections, pod pairs
    /// × ports, as the report counts.
    pub weight: u128,
    /// What it is.
    pub kind: EdgeKind,
}

impl MapEdge {
    /// An edge with one port label.
    pub fn new(client: End, server: End, port: String, weight: u128, kind: EdgeKind) -> Self {
        Self {
            client,
            server,
            ports: BTreeSet::from([port]),
            weight,
            kind,
        }
    }

    /// The edge's label: its ports, at most [`MAX_LABEL_PORTS`].
    fn label(&self) -> String {
        let mut shown: Vec<&str> = self
            .ports
            .iter()
            .take(MAX_LABEL_PORTS)
            .map(String::as_str)
            .collect();
        let more = self.ports.len().saturating_sub(MAX_LABEL_PORTS);
        let more_text = format!("+{more} more");
        if more > 0 {
            shown.push(&more_text);
        }
        shown.join(", ")
    }
}

/// Edges with the same ends and kind as one, their ports and weights added
/// up; in map order: kind, then weight (largest first), then client and
/// server.
pub fn merged(edges: impl IntoIterator<Item = MapEdge>) -> Vec<MapEdge> {
    let mut by_ends: BTreeMap<(EdgeKind, End, End), (BTreeSet<String>, u128)> = BTreeMap::new();
    for MapEdge {
        client,
        server,
        ports,
        weight,
        kind,
    } in edges
    {
        let entry = by_ends.entry((kind, client, server)).or_default();
        entry.0.extend(ports);
        entry.1 = entry.1.saturating_add(weight);
    }
    let mut edges: Vec<MapEdge> = by_ends
        .into_iter()
        .map(|((kind, client, server), (ports, weight))| MapEdge {
            client,
            server,
            ports,
            weight,
            kind,
        })
        .collect();
    edges.sort_by(|a, b| {
        (a.kind, std::cmp::Reverse(a.weight), &a.client, &a.server).cmp(&(
            b.kind,
            std::cmp::Reverse(b.weight),
            &b.client,
            &b.server,
        ))
    });
    edges
}

const OTHER_NAMESPACE: NodeStyle = NodeStyle {
    name: "otherNamespace",
    css: "fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3",
};

const OUTSIDE: NodeStyle = NodeStyle {
    name: "outside",
    css: "fill:#fff8e1,stroke:#b08800",
};

const NODE_LOCAL_DNS: NodeStyle = NodeStyle {
    name: "nodeLocalDns",
    css: "fill:#e8f4fd,stroke:#3b82c4",
};

const SUMMARY: NodeStyle = NodeStyle {
    name: "summary",
    css: "fill:#ffffff,stroke:#999999,stroke-dasharray:2 2",
};

/// The map of `namespace`: of `edges` (in map order, as [`merged`] gives
/// them) those with a workload end in it.
pub fn namespace_chart(namespace: &str, edges: &[MapEdge]) -> Flowchart {
    let touching: Vec<&MapEdge> = edges
        .iter()
        .filter(|edge| {
            edge.client.namespace() == Some(namespace) || edge.server.namespace() == Some(namespace)
        })
        .collect();
    chart_of(namespace, &touching)
}

/// Per namespace, the edges with a workload end in it, in their order: one
/// pass over every edge, not one per namespace.
fn by_namespace(edges: &[MapEdge]) -> BTreeMap<&str, Vec<&MapEdge>> {
    let mut by_namespace: BTreeMap<&str, Vec<&MapEdge>> = BTreeMap::new();
    for edge in edges {
        let (client, server) = (edge.client.namespace(), edge.server.namespace());
        for namespace in [client, server.filter(|server| Some(*server) != client)]
            .into_iter()
            .flatten()
        {
            by_namespace.entry(namespace).or_default().push(edge);
        }
    }
    by_namespace
}

/// The map of `namespace` from the edges that touch it, in map order.
fn chart_of(namespace: &str, touching: &[&MapEdge]) -> Flowchart {
    let mut chart = Flowchart::new();
    let mut ids: BTreeMap<&End, NodeId> = BTreeMap::new();
    for edge in touching.iter().take(MAX_EDGES) {
        let from = node(&mut chart, &mut ids, namespace, &edge.client);
        let to = node(&mut chart, &mut ids, namespace, &edge.server);
        chart.edge(from, to, &edge.label(), edge.kind.style());
    }
    let left = touching.len().saturating_sub(MAX_EDGES);
    if left > 0 {
        let noun = if left == 1 { "edge" } else { "edges" };
        chart.node(
            &format!("and {left} more {noun}"),
            Shape::Note,
            Some(SUMMARY),
        );
    }
    chart
}

/// The end's node, added the first time it is met.
fn node<'e>(
    chart: &mut Flowchart,
    ids: &mut BTreeMap<&'e End, NodeId>,
    namespace: &str,
    end: &'e End,
) -> NodeId {
    if let Some(id) = ids.get(end) {
        return *id;
    }
    let id = match end {
        End::Workload(workload) if workload.namespace == namespace => chart.node(
            &format!("{}/{}", workload.kind, workload.name),
            Shape::Box,
            None,
        ),
        End::Workload(workload) => {
            chart.node(&workload.to_string(), Shape::Stadium, Some(OTHER_NAMESPACE))
        }
        End::Outside {
            label,
            kind: OutsideKind::Address,
        } => chart.node(label, Shape::Hexagon, Some(OUTSIDE)),
        End::Outside {
            label,
            kind: OutsideKind::NodeLocalDns,
        } => chart.node(label, Shape::Hexagon, Some(NODE_LOCAL_DNS)),
    };
    ids.insert(end, id);
    id
}

/// The namespaces of the edges' workload ends, sorted.
pub fn namespaces(edges: &[MapEdge]) -> BTreeSet<&str> {
    edges
        .iter()
        .flat_map(|edge| [edge.client.namespace(), edge.server.namespace()])
        .flatten()
        .collect()
}

/// A Markdown section `## Service map` (at `heading`, e.g. `##`), empty
/// without edges: a legend
/// naming the kinds of `edges` drawn, then per namespace of `namespaces`
/// that has edges, a `### namespace` heading and its Mermaid block.
/// `edges` must be in map order ([`merged`]); `weight` names what their
/// weights count.
pub fn section<'n>(
    heading: &str,
    edges: &[MapEdge],
    namespaces: impl IntoIterator<Item = &'n str>,
    weight: &str,
) -> String {
    let kinds: BTreeSet<EdgeKind> = edges.iter().map(|edge| edge.kind).collect();
    if kinds.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{heading} Service map\n\n");
    let legend: Vec<&str> = kinds.iter().map(|kind| kind.legend()).collect();
    out.push_str(&format!(
        "Per namespace: its workloads (boxes), other namespaces' workloads (rounded, dashed) and addresses, names and node-local DNS (hexagons); edges from client to server, labelled with ports: {}. At most {MAX_EDGES} edges each, findings first, then by {weight}.\n",
        legend.join("; "),
    ));
    let by_namespace = by_namespace(edges);
    for namespace in namespaces {
        let Some(touching) = by_namespace.get(namespace) else {
            continue;
        };
        let chart = chart_of(namespace, touching);
        out.push_str(&format!(
            "\n{heading}# `{namespace}`\n\n```mermaid\n{}```\n",
            chart.render()
        ));
    }
    out
}
