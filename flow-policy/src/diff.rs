//! `policy diff`: what a change from one set of NetworkPolicies to another
//! does, judged against observed traffic.
//!
//! Two things are judged. The observed edges, each as `policy check` judges
//! it: an edge the old policies allow and the new ones deny is broken. And
//! every pod pair a changed policy applies to, over every port of every
//! protocol ([`Evaluator::reach`]): the ports the change opens and closes,
//! grouped by workload pair, each opening classed as cross-tenant, never
//! observed, or observed. Pods no changed policy selects cannot change, so
//! only pairs with such a pod at an end are evaluated.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;

use crate::{
    check::{EdgeDenial, check_edges},
    cluster::{ClusterView, PodView},
    evaluate::{Evaluator, PolicySet, applies},
    graph::{Graph, Party, WorkloadRef},
    ports::{PROTOCOLS, PortSet, Reach},
};
use flow_model::record::Protocol;

pub mod report;

/// What a change does to the policies themselves, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyChanges {
    /// Policies only the new set has.
    pub added: Vec<String>,
    /// Policies only the old set has.
    pub removed: Vec<String>,
    /// Policies in both whose spec differs.
    pub modified: Vec<String>,
    /// Policies in both with the same spec.
    pub unchanged: usize,
}

/// How an opened or closed path stands against observed traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Its ends belong to different tenants (platform namespaces have none).
    CrossTenant,
    /// No observed connection used it.
    Unobserved,
    /// Observed connections used it.
    Observed,
}

/// Ports a change opens or closes from one workload's pods to another's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathChange {
    /// The client workload.
    pub client: String,
    /// The server workload.
    pub server: String,
    /// How it stands against observed traffic.
    pub kind: PathKind,
    /// The client's tenant.
    pub client_tenant: Option<String>,
    /// The server's tenant.
    pub server_tenant: Option<String>,
    /// The ports, as `TCP 80, 8000-8080; UDP any`.
    pub ports: String,
    /// Pod pairs whose reach changed.
    pub pod_pairs: u64,
    /// Pod pairs × ports.
    pub size: u64,
}

/// What a change between two sets of policies does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// The policies that changed.
    pub policies: PolicyChanges,
    /// Observed edges read.
    pub edges: usize,
    /// Observed edges judged (pods or addresses at both ends, ports known).
    pub checked: usize,
    /// Observed edges the old policies allow and the new deny.
    pub broken: Vec<EdgeDenial>,
    /// Observed edges the old policies deny and the new allow.
    pub fixed: usize,
    /// Observed edges both deny.
    pub still_denied: usize,
    /// Pods considered.
    pub pods: usize,
    /// Paths opened: cross-tenant first, then never observed, then observed.
    pub opened: Vec<PathChange>,
    /// Paths closed: observed first.
    pub closed: Vec<PathChange>,
}

/// A count `policy diff` can fail on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Observed edges broken.
    BrokenConnections,
    /// Cross-tenant paths opened.
    CrossTenantPaths,
    /// Paths opened that no observed connection used.
    UnobservedPaths,
    /// Paths opened.
    OpenedPaths,
    /// Paths closed.
    ClosedPaths,
}

impl Metric {
    const ALL: [(&'static str, Self); 5] = [
        ("broken-connections", Self::BrokenConnections),
        ("cross-tenant-paths", Self::CrossTenantPaths),
        ("unobserved-paths", Self::UnobservedPaths),
        ("opened-paths", Self::OpenedPaths),
        ("closed-paths", Self::ClosedPaths),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, metric)| *metric == self)
            .map_or("?", |(name, _)| name)
    }

    /// This count in `diff`.
    pub fn count(self, diff: &PolicyDiff) -> u64 {
        let opened = |kind: PathKind| diff.opened.iter().filter(|path| path.kind == kind).count();
        let count = match self {
            Self::BrokenConnections => diff.broken.len(),
            Self::CrossTenantPaths => opened(PathKind::CrossTenant),
            Self::UnobservedPaths => opened(PathKind::Unobserved),
            Self::OpenedPaths => diff.opened.len(),
            Self::ClosedPaths => diff.closed.len(),
        };
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

/// `--fail-on METRIC>N` or `METRIC>=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailCondition {
    /// What is counted.
    pub metric: Metric,
    /// The count must stay at or below this to pass.
    pub most: u64,
}

impl FailCondition {
    /// Whether `diff` meets the condition, and so fails.
    pub fn holds(&self, diff: &PolicyDiff) -> bool {
        self.metric.count(diff) > self.most
    }
}

impl fmt::Display for FailCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}>{}", self.metric.name(), self.most)
    }
}

impl FromStr for FailCondition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let names: Vec<&str> = Metric::ALL.iter().map(|(name, _)| *name).collect();
        let usage = || {
            format!(
                "expected METRIC>N or METRIC>=N with METRIC one of {}, got {text:?}",
                names.join(", ")
            )
        };
        let (name, most) = if let Some((name, count)) = text.split_once(">=") {
            let count: u64 = count.trim().parse().map_err(|_| usage())?;
            (name, count.checked_sub(1))
        } else if let Some((name, count)) = text.split_once('>') {
            (name, Some(count.trim().parse().map_err(|_| usage())?))
        } else {
            return Err(usage());
        };
        let metric = Metric::ALL
            .iter()
            .find(|(known, _)| *known == name.trim())
            .map(|(_, metric)| *metric)
            .ok_or_else(usage)?;
        // `>=0` always holds: nothing passes it.
        let most = most.ok_or_else(|| format!("{text:?} always holds"))?;
        Ok(Self { metric, most })
    }
}

fn key(policy: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Which policies differ, and the old and new versions of those that do.
fn policy_changes<'p>(
    old: &'p [NetworkPolicy],
    new: &'p [NetworkPolicy],
) -> (PolicyChanges, Vec<&'p NetworkPolicy>) {
    let old_by_key: BTreeMap<String, &NetworkPolicy> = old.iter().map(|p| (key(p), p)).collect();
    let new_by_key: BTreeMap<String, &NetworkPolicy> = new.iter().map(|p| (key(p), p)).collect();
    let mut changes = PolicyChanges::default();
    let mut changed = Vec::new();
    for (name, policy) in &old_by_key {
        match new_by_key.get(name) {
            None => {
                changes.removed.push(name.clone());
                changed.push(*policy);
            }
            Some(newer) if newer.spec != policy.spec => {
                changes.modified.push(name.clone());
                changed.extend([*policy, *newer]);
            }
            Some(_) => changes.unchanged += 1,
        }
    }
    for (name, policy) in &new_by_key {
        if !old_by_key.contains_key(name) {
            changes.added.push(name.clone());
            changed.push(*policy);
        }
    }
    (changes, changed)
}

/// Observed ports per (client workload, server workload, protocol).
type Observed = BTreeMap<(WorkloadRef, WorkloadRef, Protocol), PortSet>;

fn observed_ports(graph: &Graph) -> Observed {
    let mut observed = Observed::new();
    for (key, _) in graph.edges() {
        if let (Party::Workload(client), Party::Workload(server)) = (&key.client, &key.server) {
            let entry = observed
                .entry((client.clone(), server.clone(), key.protocol))
                .or_default();
            *entry = entry.union(&PortSet::single(key.port));
        }
    }
    observed
}

/// A workload's tenant, unless its namespace is a platform namespace.
fn tenant(cluster: &ClusterView, workload: &WorkloadRef, platform: &[String]) -> Option<String> {
    if platform.contains(&workload.namespace) {
        return None;
    }
    cluster.workload(workload)?.tenant.clone()
}

/// Pod pairs and pod pairs × ports of one group of changes.
#[derive(Default)]
struct Group {
    reach: Reach,
    pod_pairs: u64,
    size: u64,
}

type Groups = BTreeMap<(PathKind, WorkloadRef, WorkloadRef), Group>;

/// `reach` as `TCP 80, 8000-8080; UDP any`, protocols without ports left
/// out.
pub fn describe_reach(reach: &Reach) -> String {
    let parts: Vec<String> = PROTOCOLS
        .iter()
        .zip(&reach.0)
        .filter(|(_, ports)| !ports.is_empty())
        .map(|(protocol, ports)| format!("{protocol} {ports}"))
        .collect();
    parts.join("; ")
}

/// Everything needed to class a changed pair's ports.
struct Classifier<'a> {
    cluster: &'a ClusterView,
    observed: &'a Observed,
    platform: &'a [String],
}

impl Classifier<'_> {
    /// The ports of `changed` from `client` to `server` that observed
    /// connections used.
    fn seen(&self, client: &WorkloadRef, server: &WorkloadRef) -> Reach {
        let mut seen = Reach::default();
        for (index, protocol) in PROTOCOLS.iter().enumerate() {
            if let Some(ports) = self
                .observed
                .get(&(client.clone(), server.clone(), *protocol))
            {
                seen.0[index] = ports.clone();
            }
        }
        seen
    }

    /// Adds the ports `changed` from `client` to `server` to `groups`, split
    /// by kind.
    fn add(&self, groups: &mut Groups, (client, server): (&PodView, &PodView), changed: &Reach) {
        if changed.is_empty() {
            return;
        }
        let (from, to) = (&client.workload, &server.workload);
        let tenants = (
            tenant(self.cluster, from, self.platform),
            tenant(self.cluster, to, self.platform),
        );
        let parts = if matches!(&tenants, (Some(a), Some(b)) if a != b) {
            vec![(PathKind::CrossTenant, changed.clone())]
        } else {
            let seen = self.seen(from, to);
            vec![
                (
                    PathKind::Observed,
                    changed.zip(&seen, PortSet::intersection),
                ),
                (
                    PathKind::Unobserved,
                    changed.zip(&seen, PortSet::difference),
                ),
            ]
        };
        for (kind, part) in parts {
            if part.is_empty() {
                continue;
            }
            let group = groups.entry((kind, from.clone(), to.clone())).or_default();
            group.reach = group.reach.zip(&part, PortSet::union);
            group.pod_pairs += 1;
            group.size += part.0.iter().map(PortSet::len).sum::<u64>();
        }
    }

    fn paths(&self, groups: Groups) -> Vec<PathChange> {
        let mut paths: Vec<PathChange> = groups
            .into_iter()
            .map(|((kind, client, server), group)| PathChange {
                client_tenant: tenant(self.cluster, &client, self.platform),
                server_tenant: tenant(self.cluster, &server, self.platform),
                client: client.to_string(),
                server: server.to_string(),
                kind,
                ports: describe_reach(&group.reach),
                pod_pairs: group.pod_pairs,
                size: group.size,
            })
            .collect();
        // Kind first; within one, the largest first.
        paths.sort_by(|a, b| {
            (a.kind, std::cmp::Reverse(a.size), &a.client, &a.server).cmp(&(
                b.kind,
                std::cmp::Reverse(b.size),
                &b.client,
                &b.server,
            ))
        });
        paths
    }
}

/// Indexes of the pods a changed policy applies to: as sources (egress)
/// and as destinations (ingress).
fn affected(
    cluster: &ClusterView,
    changed: &[&NetworkPolicy],
) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let mut sources = BTreeSet::new();
    let mut destinations = BTreeSet::new();
    for (index, pod) in cluster.pods().iter().enumerate() {
        for policy in changed {
            if applies(policy, pod, true) {
                sources.insert(index);
            }
            if applies(policy, pod, false) {
                destinations.insert(index);
            }
        }
    }
    (sources, destinations)
}

/// Judges the change from `old` to `new` against `graph`, in `cluster`
/// (which gains the graph's workloads it lacks). Workloads of `platform`
/// namespaces have no tenant.
pub fn diff(
    old: &[NetworkPolicy],
    new: &[NetworkPolicy],
    graph: &Graph,
    cluster: &mut ClusterView,
    platform: &[String],
) -> PolicyDiff {
    let (policies, changed) = policy_changes(old, new);
    let before = check_edges(graph, cluster, &PolicySet::from(old.to_vec()));
    let after = check_edges(graph, cluster, &PolicySet::from(new.to_vec()));
    let denied_before: BTreeSet<(&str, &str, u8, u16)> = before
        .denied
        .iter()
        .map(|d| (d.client.as_str(), d.server.as_str(), d.protocol.0, d.port))
        .collect();
    let denied_after: BTreeSet<(&str, &str, u8, u16)> = after
        .denied
        .iter()
        .map(|d| (d.client.as_str(), d.server.as_str(), d.protocol.0, d.port))
        .collect();
    let broken: Vec<EdgeDenial> = after
        .denied
        .iter()
        .filter(|d| {
            !denied_before.contains(&(d.client.as_str(), d.server.as_str(), d.protocol.0, d.port))
        })
        .cloned()
        .collect();
    let fixed = denied_before.difference(&denied_after).count();
    let still_denied = denied_before.intersection(&denied_after).count();

    let observed = observed_ports(graph);
    let classifier = Classifier {
        cluster,
        observed: &observed,
        platform,
    };
    let (sources, destinations) = affected(cluster, &changed);
    let (old_evaluator, new_evaluator) =
        (Evaluator::new(cluster, old), Evaluator::new(cluster, new));
    let pods = cluster.pods();
    let mut opened = Groups::new();
    let mut closed = Groups::new();
    for (from, client) in pods.iter().enumerate() {
        for (to, server) in pods.iter().enumerate() {
            if from == to || !(sources.contains(&from) || destinations.contains(&to)) {
                continue;
            }
            let before = old_evaluator.reach(client, server);
            let after = new_evaluator.reach(client, server);
            let pair = (client, server);
            classifier.add(&mut opened, pair, &after.zip(&before, PortSet::difference));
            classifier.add(&mut closed, pair, &before.zip(&after, PortSet::difference));
        }
    }
    PolicyDiff {
        policies,
        edges: after.edges,
        checked: after.checked,
        broken,
        fixed,
        still_denied,
        pods: pods.len(),
        opened: classifier.paths(opened),
        closed: {
            let mut closed = classifier.paths(closed);
            // Closing what was observed is what breaks traffic: first.
            closed.sort_by_key(|path| path.kind != PathKind::Observed);
            closed
        },
    }
}

#[cfg(test)]
mod tests;
