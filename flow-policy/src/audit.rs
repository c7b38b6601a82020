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
    evaluate::{Evaluator, rule_reach, selector_matches, types},
    graph::{Graph, Party, WorkloadRef},
    load::LoadedPolicy,
    ports::{PROTOCOLS, PortSet, Reach},
};
use flow_model::{cidr::Cidr, record::Protocol};

pub mod report;

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

impl Auditor<'_> {
    /// The pods a rule's peers match, by workload: namespace by namespace,
    /// so a pod is only compared with the peers its namespace allows.
    fn peer_pods(&self, rule: &Rule<'_>, namespace: &str) -> BTreeMap<WorkloadRef, Vec<&PodView>> {
        let mut matched: BTreeMap<WorkloadRef, Vec<&PodView>> = BTreeMap::new();
        let everyone = rule.peers.is_none_or(Vec::is_empty);
        for (candidate, labels) in &self.namespaces {
            let live: Vec<&NetworkPolicyPeer> = rule
                .peers
                .into_iter()
                .flatten()
                .filter(|peer| {
                    peer.ip_block.is_none()
                        && match &peer.namespace_selector {
                            None => candidate == namespace,
                            Some(selector) => selector_matches(selector, labels),
                        }
                })
                .collect();
            if !everyone && live.is_empty() {
                continue;
            }
            for pod in self.cluster.namespace_pods(candidate) {
                let hit = everyone
                    || live.iter().any(|peer| {
                        peer.pod_selector
                            .as_ref()
                            .is_none_or(|selector| selector_matches(selector, &pod.labels))
                    });
                if hit {
                    matched.entry(pod.workload.clone()).or_default().push(pod);
                }
            }
        }
        matched
    }

    /// The observed ports between `selected` and `peer` in the rule's
    /// direction.
    fn used(&self, egress: bool, selected: &WorkloadRef, peer: &WorkloadRef) -> Reach {
        let (client, server) = if egress {
            (selected, peer)
        } else {
            (peer, selected)
        };
        self.pairs
            .get(client)
            .and_then(|servers| servers.get(server))
            .cloned()
            .unwrap_or_default()
    }

    /// Unused pod allowances of one rule.
    fn unused_pods(
        &self,
        rule: &Rule<'_>,
        selected: &BTreeMap<WorkloadRef, Vec<&PodView>>,
        peers: &BTreeMap<WorkloadRef, Vec<&PodView>>,
    ) -> Vec<Unused> {
        let mut unused = Vec::new();
        for (workload, pods) in selected {
            for (peer, peer_pods) in peers {
                let pairs = pod_pairs(pods, peer_pods);
                if pairs == 0 {
                    continue;
                }
                let destination = if rule.egress { peer_pods[0] } else { pods[0] };
                let allowed = rule_reach(rule.ports, destination);
                let left =
                    allowed.zip(&self.used(rule.egress, workload, peer), PortSet::difference);
                let ports: u64 = left.0.iter().map(PortSet::len).sum();
                if ports > 0 {
                    unused.push(Unused {
                        rule: rule.reference.clone(),
                        selected: workload.to_string(),
                        peer: peer.to_string(),
                        ports: crate::diff::describe_reach(&left),
                        size: u128::from(pairs) * u128::from(ports),
                    });
                }
            }
        }
        unused
    }

    /// Unused address allowances of one rule: its blocks (or every address
    /// for a rule without peers) that no observed connection used on some
    /// of its ports.
    fn unused_blocks(
        &self,
        rule: &Rule<'_>,
        selected: &BTreeMap<WorkloadRef, Vec<&PodView>>,
    ) -> Vec<Unused> {
        let blocks: Vec<(String, Vec<Cidr>, Vec<Cidr>)> = match rule.peers {
            Some(peers) if !peers.is_empty() => peers
                .iter()
                .filter_map(|peer| peer.ip_block.as_ref())
                .filter_map(|block| {
                    let cidr = Cidr::parse(&block.cidr)?;
                    let except = block
                        .except
                        .iter()
                        .flatten()
                        .filter_map(|text| Cidr::parse(text));
                    Some((block.cidr.clone(), vec![cidr], except.collect()))
                })
                .collect(),
            _ => vec![(
                "every address".to_owned(),
                ["0.0.0.0/0", "::/0"]
                    .iter()
                    .filter_map(|text| Cidr::parse(text))
                    .collect(),
                Vec::new(),
            )],
        };
        let mut unused = Vec::new();
        for (name, inside, except) in blocks {
            for (workload, pods) in selected {
                let mut seen = Reach::default();
                for (observed, ip, client, protocol, port) in &self.addresses {
                    let in_block = inside.iter().any(|cidr| cidr.contains(*ip))
                        && !except.iter().any(|cidr| cidr.contains(*ip));
                    if observed == workload && *client == rule.egress && in_block {
                        if let Some(index) = PROTOCOLS.iter().position(|known| known == protocol) {
                            seen.0[index] = seen.0[index].union(&PortSet::single(*port));
                        }
                    }
                }
                let allowed = rule_reach(rule.ports, pods[0]);
                let left = allowed.zip(&seen, PortSet::difference);
                let ports: u64 = left.0.iter().map(PortSet::len).sum();
                if ports > 0 {
                    let addresses = inside
                        .iter()
                        .map(Cidr::addresses)
                        .fold(0u128, u128::saturating_add);
                    unused.push(Unused {
                        rule: rule.reference.clone(),
                        selected: workload.to_string(),
                        peer: name.clone(),
                        ports: crate::diff::describe_reach(&left),
                        size: addresses
                            .saturating_mul(pods.len() as u128)
                            .saturating_mul(u128::from(ports)),
                    });
                }
            }
        }
        unused
    }
}

/// Pod pairs between two groups, a pod never paired with itself.
fn pod_pairs(one: &[&PodView], other: &[&PodView]) -> u64 {
    let mut pairs = 0;
    for a in one {
        for b in other {
            if !std::ptr::eq(*a, *b) {
                pairs += 1;
            }
        }
    }
    pairs
}

/// The over-broad constructs of one rule.
fn broad_rule(rule: &Rule<'_>, observed_ports: &Reach, out: &mut Vec<Broad>) {
    let mut push = |construct: String| {
        out.push(Broad {
            policy: rule.reference.policy.clone(),
            rule: Some(rule.reference.clone()),
            construct,
        });
    };
    let side = if rule.egress { "to" } else { "from" };
    match rule.peers {
        Some(peers) if !peers.is_empty() => {
            for peer in peers {
                if peer
                    .namespace_selector
                    .as_ref()
                    .is_some_and(is_empty_selector)
                {
                    push(format!(
                        "`namespaceSelector: {{}}` in `{side}`: every namespace"
                    ));
                }
                if peer.namespace_selector.is_none()
                    && peer.ip_block.is_none()
                    && peer.pod_selector.as_ref().is_none_or(is_empty_selector)
                {
                    push(format!(
                        "`podSelector: {{}}` in `{side}`: every pod of the namespace"
                    ));
                }
                if let Some(block) = &peer.ip_block
                    && (block.cidr == "0.0.0.0/0" || block.cidr == "::/0")
                {
                    push(format!("`ipBlock` {}: every address", block.cidr));
                }
            }
        }
        _ => push(format!("no `{side}`: every source and destination")),
    }
    match rule.ports {
        Some(ports) if !ports.is_empty() => {
            for port in ports {
                broad_range(port, observed_ports, &mut push);
            }
        }
        _ => push("no `ports`: every port of every protocol".to_owned()),
    }
}

/// A port range wider than what was observed through it.
fn broad_range(port: &NetworkPolicyPort, observed: &Reach, push: &mut impl FnMut(String)) {
    let (Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(first)), Some(last)) =
        (&port.port, port.end_port)
    else {
        return;
    };
    let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(last)) else {
        return;
    };
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let Some(index) = PROTOCOLS
        .iter()
        .position(|known| known.name() == Some(protocol))
    else {
        return;
    };
    let range = PortSet::range(first, last);
    let used = range.intersection(&observed.0[index]);
    if used.len() < range.len() {
        let seen = if used.is_empty() {
            "none".to_owned()
        } else {
            used.to_string()
        };
        push(format!(
            "`{protocol} {first}-{last}` allows {} ports; observed: {seen}",
            range.len()
        ));
    }
}

fn is_empty_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
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
    let checked = check_edges(graph, cluster, &plain);
    let cluster: &ClusterView = cluster;
    let (pairs, addresses) = observed(graph);
    let auditor = Auditor {
        cluster,
        namespaces: cluster
            .namespaces()
            .map(|namespace| (namespace.clone(), cluster.namespace_labels(namespace)))
            .collect(),
        ingress_isolated: ingress_isolated(cluster, policies),
        evaluator: Evaluator::new(cluster, &plain),
        pairs,
        addresses,
        platform,
    };
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

/// The namespaces the policies are in.
fn covered(policies: &[LoadedPolicy]) -> BTreeSet<String> {
    policies
        .iter()
        .filter_map(|loaded| loaded.policy.metadata.namespace.clone())
        .collect()
}

/// Indexes of the pods some policy isolates for ingress: each policy is
/// compared with its own namespace's pods only.
fn ingress_isolated(cluster: &ClusterView, policies: &[LoadedPolicy]) -> BTreeSet<usize> {
    let mut isolated = BTreeSet::new();
    for loaded in policies {
        let namespace = loaded
            .policy
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        for index in cluster.namespace_pod_indexes(namespace) {
            if crate::evaluate::applies(&loaded.policy, &cluster.pods()[*index], false) {
                isolated.insert(*index);
            }
        }
    }
    isolated
}

impl Auditor<'_> {
    /// Whether some pod of a workload is not isolated for ingress.
    fn ingress_open(&self, pods: &[usize]) -> bool {
        pods.iter().any(|index| {
            !self.cluster.pods()[*index].host_network && !self.ingress_isolated.contains(index)
        })
    }
}

/// Workload pairs of different tenants with some port allowed, where the
/// server is in a namespace the policies cover. A server isolated for
/// ingress is reached only by the peers of its rules; an open one by all.
fn cross_tenant(
    auditor: &Auditor<'_>,
    policies: &[LoadedPolicy],
    candidates: &Candidates,
) -> Vec<CrossTenant> {
    let covered = covered(policies);
    let cluster = auditor.cluster;
    let first_pod = |workload: &WorkloadRef| {
        let view = cluster.workload(workload)?;
        cluster.pods().get(*view.pods.first()?)
    };
    let every: BTreeSet<WorkloadRef> = cluster.workloads().map(|(w, _)| w.clone()).collect();
    let no_clients = BTreeSet::new();
    let mut found = Vec::new();
    for (server, view) in cluster.workloads() {
        let Some(server_tenant) = tenant(cluster, server, auditor.platform) else {
            continue;
        };
        let Some(server_pod) = first_pod(server) else {
            continue;
        };
        if !covered.contains(&server.namespace) {
            continue;
        }
        let clients = if auditor.ingress_open(&view.pods) {
            &every
        } else {
            candidates.get(server).unwrap_or(&no_clients)
        };
        for client in clients {
            let Some(client_tenant) = tenant(cluster, client, auditor.platform) else {
                continue;
            };
            let Some(client_pod) = first_pod(client) else {
                continue;
            };
            if client_tenant == server_tenant {
                continue;
            }
            let reach = auditor.evaluator.reach(client_pod, server_pod);
            if reach.is_empty() {
                continue;
            }
            found.push(CrossTenant {
                client: client.to_string(),
                server: server.to_string(),
                tenants: (client_tenant, server_tenant.clone()),
                ports: crate::diff::describe_reach(&reach),
                observed: auditor
                    .pairs
                    .get(client)
                    .is_some_and(|servers| servers.contains_key(server)),
            });
        }
    }
    found
}

/// Workloads of covered namespaces no policy isolates for ingress.
fn open_to_all(auditor: &Auditor<'_>, policies: &[LoadedPolicy]) -> Vec<String> {
    let covered = covered(policies);
    auditor
        .cluster
        .workloads()
        .filter(|(workload, view)| {
            covered.contains(&workload.namespace) && auditor.ingress_open(&view.pods)
        })
        .map(|(workload, _)| workload.to_string())
        .collect()
}

#[cfg(test)]
mod tests;
