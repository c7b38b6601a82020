//! One adapter per report: the edges of its service maps, and its map
//! section.
//!
//! - REVIEW.md: the edges the proposal allows, weighed by request bytes;
//!   cross-tenant ones (allowed with `--allow-cross-tenant`) stand apart.
//! - AUDIT.md: the edges its findings concern: observed connections denied
//!   (by connections), cross-tenant openings, allowances never used (by pod
//!   pairs × ports).
//! - `policy diff`: the paths the change opens (cross-tenant ones apart)
//!   and closes (by pod pairs × ports), and the observed connections it
//!   breaks (by connections).

use super::map::{self, End, MapEdge};
use crate::{
    audit::Audit,
    diff::{PathChange, PathKind, PolicyDiff},
    generate::Proposal,
};

/// REVIEW.md's map section: per namespace that gets policies.
pub fn review_section(proposal: &Proposal) -> String {
    map::section(
        "##",
        &proposal.map,
        proposal.namespaces.iter().map(String::as_str),
        "request bytes",
    )
}

/// AUDIT.md's map section: per namespace of a workload a finding names.
pub fn audit_section(audit: &Audit) -> String {
    let edges = audit_edges(audit);
    map::section(
        "##",
        &edges,
        map::namespaces(&edges),
        "connections or pod pairs × ports",
    )
}

/// The diff summary's map section: per namespace of a workload the change
/// reaches.
pub fn diff_section(diff: &PolicyDiff) -> String {
    let edges = diff_edges(diff);
    map::section(
        "###",
        &edges,
        map::namespaces(&edges),
        "connections or pod pairs × ports",
    )
}

/// The audit's edges, in map order.
pub fn audit_edges(audit: &Audit) -> Vec<MapEdge> {
    let denied = audit.denied.iter().map(|denial| {
        MapEdge::new(
            End::parse(&denial.client),
            End::parse(&denial.server),
            format!("{} {}", denial.protocol, denial.port),
            u128::from(denial.connections),
            map::EdgeKind::Denied,
        )
    });
    let cross = audit.cross_tenant.iter().map(|pair| MapEdge {
        client: End::parse(&pair.client),
        server: End::parse(&pair.server),
        ports: port_labels(&pair.ports),
        weight: 0,
        kind: map::EdgeKind::CrossTenant,
    });
    let unused = audit.unused.iter().map(|unused| {
        let (selected, peer) = (End::parse(&unused.selected), End::parse(&unused.peer));
        let (client, server) = if unused.rule.direction == "egress" {
            (selected, peer)
        } else {
            (peer, selected)
        };
        MapEdge {
            client,
            server,
            ports: port_labels(&unused.ports),
            weight: unused.size,
            kind: map::EdgeKind::Unused,
        }
    });
    map::merged(denied.chain(cross).chain(unused))
}

/// The diff's edges, in map order.
pub fn diff_edges(diff: &PolicyDiff) -> Vec<MapEdge> {
    let path = |path: &PathChange, kind| MapEdge {
        client: End::parse(&path.client),
        server: End::parse(&path.server),
        ports: port_labels(&path.ports),
        weight: u128::from(path.size),
        kind,
    };
    let opened = diff.opened.iter().map(|opened| {
        let kind = if opened.kind == PathKind::CrossTenant {
            map::EdgeKind::CrossTenant
        } else {
            map::EdgeKind::New
        };
        path(opened, kind)
    });
    let closed = diff
        .closed
        .iter()
        .map(|closed| path(closed, map::EdgeKind::Removed));
    let broken = diff.broken.iter().map(|denial| {
        MapEdge::new(
            End::parse(&denial.client),
            End::parse(&denial.server),
            format!("{} {}", denial.protocol, denial.port),
            u128::from(denial.connections),
            map::EdgeKind::Denied,
        )
    });
    map::merged(opened.chain(closed).chain(broken))
}

/// Ports as the reports describe them (`TCP 80, 8000-8080; UDP any`), one
/// label per protocol.
fn port_labels(ports: &str) -> std::collections::BTreeSet<String> {
    ports
        .split("; ")
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}
