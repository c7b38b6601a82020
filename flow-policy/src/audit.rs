//! `policy audit`: existing NetworkPolicies, ours or anyone's, judged
//! against observed traffic, rule by rule.
//!
//! For each policy and rule it finds the observed connections the set
//! denies, the allowances no observed connection used (peer workload or
//! address block × ports, counted in pod pairs × ports), over-broad
//! constructs, and the pod pairs of different tenants the set lets talk.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use serde::Serialize;

use crate::{
    check::{EdgeDenial, check_edges},
    cluster::{ClusterView, PodView},
    evaluate::{Evaluator, types},
    graph::{Graph, Party, WorkloadRef},
    load::LoadedPolicy,
    ports::{PROTOCOLS, PortSet, Reach},
};
use flow_model::record::Protocol;

mod allowances;
mod broad;
pub mod files;
pub mod report;
pub mod rewrite;
mod tenants;
pub mod tighten;
pub mod unified;

use self::{
    broad::broad_rule,
    tenants::{cross_tenant, ingress_isolated, open_to_all},
};

/// A rule of a policy, as a reviewer finds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RuleRef {
    /// `namespace/name`.
    pub policy: String,
    /// Its file and document: `path#2`.
    pub source: String,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// 0-based index of the rule in its list.
    pub rule: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.rule)
    }
}

/// An allowance no observed connection used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unused {
    /// The rule that grants it.
    pub rule: RuleRef,
    /// The workload its policy selects.
    pub selected: String,
    /// The other end: a workload, or an address block.
    pub peer: String,
    /// The unused ports, as `TCP 80; UDP any`.
    pub ports: String,
    /// Pod pairs × ports (addresses × pods × ports for a block).
    pub size: u128,
}

/// A construct wider than traffic needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broad {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The rule, when the construct is in one.
    pub rule: Option<RuleRef>,
    /// What is broad, and why.
    pub construct: String,
}

/// A pair of workloads of different tenants the policies let talk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrossTenant {
    /// The client workload.
    pub client: String,
    /// The server workload.
    pub server: String,
    /// Their tenants.
    pub tenants: (String, String),
    /// The ports allowed, as `TCP 80; UDP any`.
    pub ports: String,
    /// Whether connections between them were observed.
    pub observed: bool,
}

/// Everything `policy audit` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Policies audited.
    pub policies: usize,
    /// Pods considered.
    pub pods: usize,
    /// Observed edges read.
    pub edges: usize,
    /// Observed edges judged.
    pub checked: usize,
    /// Observed edges the policies deny.
    pub denied: Vec<EdgeDenial>,
    /// Unused allowances, largest first.
    pub unused: Vec<Unused>,
    /// Over-broad constructs, in policy order.
    pub broad: Vec<Broad>,
    /// Workload pairs of different tenants allowed, observed or not.
    pub cross_tenant: Vec<CrossTenant>,
    /// Workloads of namespaces the policies cover that no policy isolates
    /// for ingress: every tenant may reach them.
    pub open_to_all: Vec<String>,
}

/// Observed ports per client workload, per server workload, per protocol.
type ObservedPairs = BTreeMap<WorkloadRef, BTreeMap<WorkloadRef, Reach>>;

/// Observed ports between a workload and addresses: (workload, address,
/// the workload is the client) → ports.
type ObservedAddresses = Vec<(WorkloadRef, std::net::IpAddr, bool, Protocol, u16)>;

fn observed(graph: &Graph) -> (ObservedPairs, ObservedAddresses) {
    let mut pairs = ObservedPairs::new();
    let mut addresses = ObservedAddresses::new();
    for (key, _) in graph.edges() {
        let Some(index) = PROTOCOLS.iter().position(|known| *known == key.protocol) else {
            continue;
        };
        match (&key.client, &key.server) {
            (Party::Workload(client), Party::Workload(server)) => {
                let servers = pairs.entry(client.clone()).or_default();
                let reach = servers.entry(server.clone()).or_default();
                reach.0[index] = reach.0[index].union(&PortSet::single(key.port));
            }
            (Party::Workload(client), Party::Address { ip, .. }) => {
                addresses.push((client.clone(), *ip, true, key.protocol, key.port));
            }
            (Party::Address { ip, .. }, Party::Workload(server)) => {
                addresses.push((server.clone(), *ip, false, key.protocol, key.port));
            }
            (Party::Address { .. }, Party::Address { .. }) => {}
        }
    }
    (pairs, addresses)
}

/// A workload's tenant, unless its namespace is a platform namespace.
fn tenant(cluster: &ClusterView, workload: &WorkloadRef, platform: &[String]) -> Option<String> {
    if platform.contains(&workload.namespace) {
        return None;
    }
    cluster.workload(workload)?.tenant.clone()
}

/// The pods a policy selects, by workload (hostNetwork pods left out:
/// policies do not apply to them).
fn selected<'c>(
    cluster: &'c ClusterView,
    policy: &NetworkPolicy,
) -> BTreeMap<WorkloadRef, Vec<&'c PodView>> {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    let mut selected: BTreeMap<WorkloadRef, Vec<&PodView>> = BTreeMap::new();
    for pod in cluster.namespace_pods(namespace) {
        if !pod.host_network && Evaluator::selects(policy, pod) {
            selected.entry(pod.workload.clone()).or_default().push(pod);
        }
    }
    selected
}

/// One rule of one policy, with what it needs to be judged.
struct Rule<'p> {
    reference: RuleRef,
    egress: bool,
    peers: Option<&'p Vec<NetworkPolicyPeer>>,
    ports: Option<&'p Vec<NetworkPolicyPort>>,
}

fn rules(loaded: &LoadedPolicy) -> Vec<Rule<'_>> {
    let policy = &loaded.policy;
    let name = format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name.as_deref().unwrap_or_default()
    );
    let reference = |direction, rule| RuleRef {
        policy: name.clone(),
        source: format!("{}#{}", loaded.file.display(), loaded.document),
        direction,
        rule,
    };
    let Some(spec) = &policy.spec else {
        return Vec::new();
    };
    let (ingress_type, egress_type) = types(policy);
    let mut rules = Vec::new();
    if ingress_type {
        for (index, rule) in spec.ingress.iter().flatten().enumerate() {
            rules.push(Rule {
                reference: reference("ingress", index),
                egress: false,
                peers: rule.from.as_ref(),
                ports: rule.ports.as_ref(),
            });
        }
    }
    if egress_type {
        for (index, rule) in spec.egress.iter().flatten().enumerate() {
            rules.push(Rule {
                reference: reference("egress", index),
                egress: true,
                peers: rule.to.as_ref(),
                ports: rule.ports.as_ref(),
            });
        }
    }
    rules
}

/// Per server workload, the client workloads some ingress rule of a policy
/// selecting it lets in.
type Candidates = BTreeMap<WorkloadRef, BTreeSet<WorkloadRef>>;

/// Everything the audit reads, shared by its parts.
struct Auditor<'a> {
    cluster: &'a ClusterView,
    /// Every namespace with its labels, computed once.
    namespaces: Vec<(String, BTreeMap<String, String>)>,
    /// Indexes of the pods some policy isolates for ingress.
    ingress_isolated: BTreeSet<usize>,
    evaluator: Evaluator<'a>,
    pairs: ObservedPairs,
    addresses: ObservedAddresses,
    platform: &'a [String],
}

impl<'a> Auditor<'a> {
    fn new(
        cluster: &'a ClusterView,
        plain: &'a [NetworkPolicy],
        policies: &[LoadedPolicy],
        graph: &Graph,
        platform: &'a [String],
    ) -> Self {
        let (pairs, addresses) = observed(graph);
        Auditor {
            cluster,
            namespaces: cluster
                .namespaces()
                .map(|namespace| (namespace.clone(), cluster.namespace_labels(namespace)))
                .collect(),
            ingress_isolated: ingress_isolated(cluster, policies),
            evaluator: Evaluator::new(cluster, plain),
            pairs,
            addresses,
            platform,
        }
    }
}

/// Audits `policies` against `graph` in `cluster` (which gains the graph's
/// workloads it lacks). Workloads of `platform` namespaces have no tenant.
pub fn audit(
    policies: &[LoadedPolicy],
    graph: &Graph,
    cluster: &mut ClusterView,
    platform: &[String],
) -> Audit {
    let plain: Vec<NetworkPolicy> = policies
        .iter()
        .map(|loaded| loaded.policy.clone())
        .collect();
    let set = crate::evaluate::PolicySet::from(plain);
    let checked = check_edges(graph, cluster, &set);
    let cluster: &ClusterView = cluster;
    let auditor = Auditor::new(cluster, &set.network, policies, graph, platform);
    let mut audit = Audit {
        policies: policies.len(),
        pods: cluster.pods().len(),
        edges: checked.edges,
        checked: checked.checked,
        denied: checked.denied,
        ..Audit::default()
    };
    let mut candidates = Candidates::new();
    for loaded in policies {
        audit_policy(&auditor, loaded, &mut audit, &mut candidates);
    }
    audit
        .unused
        .sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.rule.cmp(&b.rule)));
    audit.cross_tenant = cross_tenant(&auditor, policies, &candidates);
    audit.open_to_all = open_to_all(&auditor, policies);
    audit
}

fn audit_policy(
    auditor: &Auditor<'_>,
    loaded: &LoadedPolicy,
    audit: &mut Audit,
    candidates: &mut Candidates,
) {
    let policy = &loaded.policy;
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    let selected = selected(auditor.cluster, policy);
    let mut with_edges = BTreeSet::new();
    for rule in rules(loaded) {
        let peers = auditor.peer_pods(&rule, namespace);
        if !rule.egress {
            for workload in selected.keys() {
                let clients = candidates.entry(workload.clone()).or_default();
                clients.extend(peers.keys().cloned());
            }
        }
        let mut observed_ports = Reach::default();
        for workload in selected.keys() {
            for peer in peers.keys() {
                let used = auditor.used(rule.egress, workload, peer);
                if !used.is_empty() {
                    with_edges.insert(workload.clone());
                }
                observed_ports = observed_ports.zip(&used, PortSet::union);
            }
        }
        audit
            .unused
            .extend(auditor.unused_pods(&rule, &selected, &peers));
        let has_blocks = rule.peers.is_none_or(|peers| {
            peers.is_empty() || peers.iter().any(|peer| peer.ip_block.is_some())
        });
        if has_blocks {
            audit.unused.extend(auditor.unused_blocks(&rule, &selected));
        }
        broad_rule(&rule, &observed_ports, &mut audit.broad);
    }
    let has_rules = !rules(loaded).is_empty();
    if has_rules && with_edges.len() < selected.len() {
        let idle: Vec<String> = selected
            .keys()
            .filter(|workload| !with_edges.contains(*workload))
            .map(ToString::to_string)
            .collect();
        audit.broad.push(Broad {
            policy: format!(
                "{namespace}/{}",
                policy.metadata.name.as_deref().unwrap_or_default()
            ),
            rule: None,
            construct: format!(
                "selects {} workloads, {} of them without observed traffic through its rules: {}",
                selected.len(),
                idle.len(),
                idle.join(", ")
            ),
        });
    }
}

#[cfg(test)]
mod tests;
