//! The tightening `policy audit` proposes: the smallest change to the given
//! policies that keeps every observed connection they allowed and removes
//! every allowance no observed connection used.
//!
//! Invariants:
//! - A tightened rule allows a subset of what its original allowed: its
//!   peers are original peer entries kept whole, workload selectors checked
//!   to match no pod the original peers did not, or single addresses inside
//!   the original blocks; its ports are the observed subset of the original
//!   ports.
//! - Every observed connection a rule allowed, the tightened rule (or one
//!   of the rules it was split into) still allows: rules are tightened one
//!   by one, each keeping what went through it.
//! - Policies are never removed, and a direction that loses all its rules
//!   stays isolated: `policyTypes` is written when it was implied.
//!
//! A policy selecting several workloads keeps the union of what they used.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort,
};

use super::{Auditor, Rule, RuleRef, rules, selected};
use crate::{
    cluster::{ClusterView, PodView},
    evaluate::{rule_reach, types},
    generate::{PeerSpec, network_peer, network_ports, port_ranges},
    graph::{Graph, Party, WorkloadRef},
    load::LoadedPolicy,
    ports::{PROTOCOLS, PortSet, Reach},
};

/// A rule's peers and ports, whichever its direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleParts {
    /// `from` or `to`.
    pub peers: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`.
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// What becomes of one rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No observed connection went through it: removed.
    Dropped,
    /// Replaced by these rules (more than one when its peers used
    /// different ports).
    Narrowed(Vec<RuleParts>),
}

/// A rule that changes.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleChange {
    /// The rule.
    pub rule: RuleRef,
    /// Its peers and ports before.
    pub before: RuleParts,
    /// What it becomes.
    pub outcome: Outcome,
    /// Peers that could not be narrowed, and why.
    pub kept: Vec<String>,
}

/// How one policy is tightened.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyTightening {
    /// `namespace/name`.
    pub policy: String,
    /// Its file.
    pub file: PathBuf,
    /// Its 1-based document in the file.
    pub document: usize,
    /// The policy as given.
    pub original: NetworkPolicy,
    /// The policy tightened (equal to `original` when nothing changes).
    pub tightened: NetworkPolicy,
    /// Its rules that change, ingress then egress, in rule order.
    pub changes: Vec<RuleChange>,
    /// `policyTypes` written because a direction lost every rule and its
    /// isolation was only implied.
    pub policy_types: Option<Vec<String>>,
}

impl PolicyTightening {
    /// Whether the policy changes.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// The tightening of a set of policies, in their order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tightening {
    /// Every policy, changed or not.
    pub policies: Vec<PolicyTightening>,
}

/// The other end of a rule's traffic: a workload or an address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unit {
    Workload(WorkloadRef),
    Address(IpAddr),
}

/// What went through a rule to one unit: ports, and whether a protocol
/// without ports (ICMP) did, which only a rule without `ports` allows.
#[derive(Clone, Debug, Default, PartialEq)]
struct Use {
    reach: Reach,
    portless: bool,
}

impl Use {
    fn is_empty(&self) -> bool {
        self.reach.is_empty() && !self.portless
    }
}

/// Client and server workloads seen talking over a protocol without ports.
type Portless = BTreeSet<(Party, Party)>;

fn portless(graph: &Graph) -> Portless {
    graph
        .edges()
        .filter(|(key, _)| !PROTOCOLS.contains(&key.protocol))
        .map(|(key, _)| (key.client.clone(), key.server.clone()))
        .collect()
}

/// Tightens `policies` against the traffic of `graph` in `cluster` (which
/// gains the graph's workloads it lacks).
pub fn tighten(policies: &[LoadedPolicy], graph: &Graph, cluster: &mut ClusterView) -> Tightening {
    cluster.add_graph(graph);
    let cluster: &ClusterView = cluster;
    let plain: Vec<NetworkPolicy> = policies.iter().map(|l| l.policy.clone()).collect();
    let auditor = Auditor::new(cluster, &plain, policies, graph, &[]);
    let portless = portless(graph);
    let policies = policies
        .iter()
        .map(|loaded| tighten_policy(&auditor, &portless, loaded))
        .collect();
    Tightening { policies }
}

fn tighten_policy(
    auditor: &Auditor<'_>,
    portless: &Portless,
    loaded: &LoadedPolicy,
) -> PolicyTightening {
    let policy = &loaded.policy;
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    let selected = selected(auditor.cluster, policy);
    let mut changes = Vec::new();
    let mut ingress: Vec<Option<Vec<RuleParts>>> = Vec::new();
    let mut egress: Vec<Option<Vec<RuleParts>>> = Vec::new();
    for rule in rules(loaded) {
        let tightener = RuleTightener::new(auditor, portless, &rule, namespace, &selected);
        let change = tightener.tighten();
        let replacement = change.as_ref().map(|change| match &change.outcome {
            Outcome::Dropped => Vec::new(),
            Outcome::Narrowed(rules) => rules.clone(),
        });
        if rule.egress {
            egress.push(replacement);
        } else {
            ingress.push(replacement);
        }
        changes.extend(change);
    }
    let (tightened, policy_types) = rebuild(policy, &ingress, &egress);
    PolicyTightening {
        policy: format!(
            "{namespace}/{}",
            policy.metadata.name.as_deref().unwrap_or_default()
        ),
        file: loaded.file.clone(),
        document: loaded.document,
        original: policy.clone(),
        tightened,
        changes,
        policy_types,
    }
}

/// The policy with its rules replaced (`None`: kept), and the
/// `policyTypes` written, if any.
fn rebuild(
    policy: &NetworkPolicy,
    ingress: &[Option<Vec<RuleParts>>],
    egress: &[Option<Vec<RuleParts>>],
) -> (NetworkPolicy, Option<Vec<String>>) {
    let mut tightened = policy.clone();
    let (ingress_type, egress_type) = types(policy);
    let Some(spec) = tightened.spec.as_mut() else {
        return (tightened, None);
    };
    let mut emptied = false;
    if ingress.iter().any(Option::is_some) {
        let original = spec.ingress.take().unwrap_or_default();
        let rules: Vec<NetworkPolicyIngressRule> = original
            .into_iter()
            .zip(ingress)
            .flat_map(|(rule, replacement)| match replacement {
                None => vec![rule],
                Some(parts) => parts
                    .iter()
                    .map(|parts| NetworkPolicyIngressRule {
                        from: parts.peers.clone(),
                        ports: parts.ports.clone(),
                    })
                    .collect(),
            })
            .collect();
        emptied |= rules.is_empty();
        spec.ingress = Some(rules);
    }
    if egress.iter().any(Option::is_some) {
        let original = spec.egress.take().unwrap_or_default();
        let rules: Vec<NetworkPolicyEgressRule> = original
            .into_iter()
            .zip(egress)
            .flat_map(|(rule, replacement)| match replacement {
                None => vec![rule],
                Some(parts) => parts
                    .iter()
                    .map(|parts| NetworkPolicyEgressRule {
                        to: parts.peers.clone(),
                        ports: parts.ports.clone(),
                    })
                    .collect(),
            })
            .collect();
        emptied |= rules.is_empty();
        spec.egress = Some(rules);
    }
    let implied = spec.policy_types.as_ref().is_none_or(Vec::is_empty);
    let policy_types = (emptied && implied).then(|| {
        let mut written = Vec::new();
        if ingress_type {
            written.push("Ingress".to_owned());
        }
        if egress_type {
            written.push("Egress".to_owned());
        }
        written
    });
    if let Some(written) = &policy_types {
        spec.policy_types = Some(written.clone());
    }
    (tightened, policy_types)
}

/// Pods by workload.
type Matched<'a> = BTreeMap<WorkloadRef, Vec<&'a PodView>>;

/// One rule being tightened.
struct RuleTightener<'t, 'a> {
    auditor: &'t Auditor<'a>,
    portless: &'t Portless,
    rule: &'t Rule<'t>,
    namespace: &'t str,
    selected: &'t Matched<'a>,
    /// The pods the rule's peers match.
    matched: Matched<'a>,
    /// The workloads each of its peer entries matches (none for blocks).
    entries: Vec<BTreeSet<WorkloadRef>>,
}

/// A pod with no declared ports: the destination of traffic to an
/// address, where named ports match nothing.
fn portless_pod() -> PodView {
    PodView {
        namespace: String::new(),
        name: String::new(),
        labels: BTreeMap::new(),
        ips: Vec::new(),
        ports: Vec::new(),
        host_network: false,
        workload: WorkloadRef {
            namespace: String::new(),
            kind: String::new(),
            name: String::new(),
        },
    }
}

impl<'t, 'a> RuleTightener<'t, 'a> {
    fn new(
        auditor: &'t Auditor<'a>,
        portless: &'t Portless,
        rule: &'t Rule<'t>,
        namespace: &'t str,
        selected: &'t Matched<'a>,
    ) -> Self {
        let mut tightener = Self {
            auditor,
            portless,
            rule,
            namespace,
            selected,
            matched: auditor.peer_pods(rule, namespace),
            entries: Vec::new(),
        };
        tightener.entries = rule
            .peers
            .into_iter()
            .flatten()
            .map(|entry| tightener.entry_workloads(entry).into_keys().collect())
            .collect();
        tightener
    }

    fn everyone(&self) -> bool {
        self.rule.peers.is_none_or(Vec::is_empty)
    }

    fn before(&self) -> RuleParts {
        RuleParts {
            peers: self.rule.peers.cloned(),
            ports: self.rule.ports.cloned(),
        }
    }

    /// The rule's change, or `None` when it stays as it is.
    fn tighten(&self) -> Option<RuleChange> {
        let used = self.used();
        if used.is_empty() {
            return Some(RuleChange {
                rule: self.rule.reference.clone(),
                before: self.before(),
                outcome: Outcome::Dropped,
                kept: Vec::new(),
            });
        }
        // Units that used the same ports share a rule, in first-seen order.
        let mut groups: Vec<(Use, Vec<Unit>)> = Vec::new();
        for (unit, usage) in used {
            match groups.iter_mut().find(|(known, _)| *known == usage) {
                Some((_, units)) => units.push(unit),
                None => groups.push((usage, vec![unit])),
            }
        }
        let mut kept = Vec::new();
        let rules: Vec<RuleParts> = groups
            .iter()
            .map(|(usage, units)| RuleParts {
                peers: self.peers(units, &mut kept),
                ports: self.ports(usage, units),
            })
            .collect();
        if rules == [self.before()] {
            return None;
        }
        kept.sort();
        kept.dedup();
        Some(RuleChange {
            rule: self.rule.reference.clone(),
            before: self.before(),
            outcome: Outcome::Narrowed(rules),
            kept,
        })
    }

    /// What went through the rule, per unit.
    fn used(&self) -> BTreeMap<Unit, Use> {
        let mut used: BTreeMap<Unit, Use> = BTreeMap::new();
        for (workload, pods) in self.selected {
            for (peer, peer_pods) in &self.matched {
                let destination = if self.rule.egress {
                    peer_pods[0]
                } else {
                    pods[0]
                };
                let allowed = rule_reach(self.rule.ports, destination);
                let observed = self.auditor.used(self.rule.egress, workload, peer);
                let reach = observed.zip(&allowed, PortSet::intersection);
                let ends = (
                    Party::Workload(workload.clone()),
                    Party::Workload(peer.clone()),
                );
                let (client, server) = if self.rule.egress {
                    ends
                } else {
                    (ends.1, ends.0)
                };
                let usage = Use {
                    reach,
                    portless: self.rule.ports.is_none_or(Vec::is_empty)
                        && self.portless.contains(&(client, server)),
                };
                merge(&mut used, Unit::Workload(peer.clone()), &usage);
            }
        }
        for (ip, usage) in self.used_addresses() {
            merge(&mut used, Unit::Address(ip), &usage);
        }
        used.retain(|_, usage| !usage.is_empty());
        used
    }

    /// What went through the rule's address blocks (every address for a
    /// rule without peers).
    fn used_addresses(&self) -> BTreeMap<IpAddr, Use> {
        let nowhere = portless_pod();
        let mut used: BTreeMap<IpAddr, Use> = BTreeMap::new();
        for (workload, ip, client, protocol, port) in &self.auditor.addresses {
            let Some(pods) = self.selected.get(workload) else {
                continue;
            };
            if *client != self.rule.egress || !self.address_inside(*ip) {
                continue;
            }
            let Some(index) = PROTOCOLS.iter().position(|known| known == protocol) else {
                continue;
            };
            let destination = if self.rule.egress { &nowhere } else { pods[0] };
            let allowed = rule_reach(self.rule.ports, destination);
            if allowed.0[index].contains(*port) {
                let usage = used.entry(*ip).or_default();
                usage.reach.0[index] = usage.reach.0[index].union(&PortSet::single(*port));
            }
        }
        used
    }

    fn address_inside(&self, ip: IpAddr) -> bool {
        self.everyone()
            || self.rule.peers.into_iter().flatten().any(|peer| {
                peer.ip_block
                    .as_ref()
                    .is_some_and(|block| block_contains(block, ip))
            })
    }

    /// The peers of one group of units: original entries kept whole where
    /// every workload they match is in the group, the narrowest safe peer
    /// for each other unit.
    fn peers(&self, units: &[Unit], kept: &mut Vec<String>) -> Option<Vec<NetworkPolicyPeer>> {
        if self.everyone() {
            let mut peers = Vec::new();
            for unit in units {
                match self.narrow(unit) {
                    Ok(peer) => peers.push(peer),
                    Err(why) => {
                        kept.push(why);
                        return self.rule.peers.cloned();
                    }
                }
            }
            return Some(peers);
        }
        let mut peers = Vec::new();
        let mut covered: BTreeSet<&Unit> = BTreeSet::new();
        for (entry, workloads) in self.rule.peers.into_iter().flatten().zip(&self.entries) {
            let inside: Vec<&Unit> = units
                .iter()
                .filter(|unit| !covered.contains(unit) && entry_matches(entry, workloads, unit))
                .collect();
            if inside.is_empty() {
                continue;
            }
            if entry_is_exact(entry, workloads, units) {
                peers.push(entry.clone());
                covered.extend(inside);
                continue;
            }
            for unit in inside {
                match self.narrow(unit) {
                    Ok(peer) => peers.push(peer),
                    Err(why) => {
                        kept.push(why);
                        if !peers.contains(entry) {
                            peers.push(entry.clone());
                        }
                    }
                }
                covered.insert(unit);
            }
        }
        Some(peers)
    }

    fn entry_workloads(&self, entry: &NetworkPolicyPeer) -> Matched<'a> {
        let one = vec![entry.clone()];
        let rule = Rule {
            reference: self.rule.reference.clone(),
            egress: self.rule.egress,
            peers: Some(&one),
            ports: None,
        };
        self.auditor.peer_pods(&rule, self.namespace)
    }

    /// The narrowest peer for a unit, if it matches no pod the rule's
    /// peers did not.
    fn narrow(&self, unit: &Unit) -> Result<NetworkPolicyPeer, String> {
        let workload = match unit {
            Unit::Address(ip) => {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                return Ok(NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: format!("{ip}/{prefix}"),
                        except: None,
                    }),
                    ..NetworkPolicyPeer::default()
                });
            }
            Unit::Workload(workload) => workload,
        };
        let cluster = self.auditor.cluster;
        let Some(selection) = cluster.selector(workload) else {
            return Err(format!("{workload}: no labels to select its pods by"));
        };
        let peer = network_peer(
            &PeerSpec::Pods {
                namespace: Arc::from(workload.namespace.as_str()),
                labels: Arc::new(selection.labels),
            },
            self.namespace,
        )
        .ok_or_else(|| format!("{workload}: no peer for its pods"))?;
        let after = self.entry_workloads(&peer);
        let inside = after.iter().all(|(other, pods)| {
            self.matched.get(other).is_some_and(|allowed| {
                pods.iter()
                    .all(|pod| allowed.iter().any(|known| std::ptr::eq(*known, *pod)))
            })
        });
        if inside {
            Ok(peer)
        } else {
            Err(format!(
                "{workload}: its selector would also match pods the rule did not"
            ))
        }
    }

    /// The ports of one group: the original entries when they allow
    /// exactly what the group used, else the used ports.
    fn ports(&self, usage: &Use, units: &[Unit]) -> Option<Vec<NetworkPolicyPort>> {
        if usage.portless {
            return self.rule.ports.cloned();
        }
        let nowhere = portless_pod();
        let exact = units.iter().all(|unit| {
            let destination = match unit {
                Unit::Workload(workload) if self.rule.egress => self
                    .auditor
                    .cluster
                    .workload(workload)
                    .and_then(|view| view.pods.first())
                    .map_or(&nowhere, |index| &self.auditor.cluster.pods()[*index]),
                Unit::Address(_) if self.rule.egress => &nowhere,
                _ => self
                    .selected
                    .values()
                    .next()
                    .map_or(&nowhere, |pods| pods[0]),
            };
            self.rule.ports.is_some_and(|ports| !ports.is_empty())
                && rule_reach(self.rule.ports, destination) == usage.reach
        });
        if exact {
            return self.rule.ports.cloned();
        }
        let ports = PROTOCOLS
            .iter()
            .zip(&usage.reach.0)
            .flat_map(|(protocol, set)| {
                set.ranges().iter().flat_map(move |(first, last)| {
                    (*first..=*last).map(move |port| (*protocol, port))
                })
            });
        Some(network_ports(&port_ranges(ports)))
    }
}

/// Whether a peer entry matches a unit.
fn entry_matches(
    entry: &NetworkPolicyPeer,
    workloads: &BTreeSet<WorkloadRef>,
    unit: &Unit,
) -> bool {
    match (unit, &entry.ip_block) {
        (Unit::Address(ip), Some(block)) => block_contains(block, *ip),
        (Unit::Workload(workload), None) => workloads.contains(workload),
        _ => false,
    }
}

/// Whether a peer entry allows nothing beyond `units`: every workload it
/// matches is one of them, or it is a single address among them.
fn entry_is_exact(
    entry: &NetworkPolicyPeer,
    workloads: &BTreeSet<WorkloadRef>,
    units: &[Unit],
) -> bool {
    match &entry.ip_block {
        Some(block) => units
            .iter()
            .any(|unit| matches!(unit, Unit::Address(ip) if single_address(block) == Some(*ip))),
        None => workloads
            .iter()
            .all(|workload| units.contains(&Unit::Workload(workload.clone()))),
    }
}

fn merge(used: &mut BTreeMap<Unit, Use>, unit: Unit, usage: &Use) {
    let known = used.entry(unit).or_default();
    known.reach = known.reach.zip(&usage.reach, PortSet::union);
    known.portless |= usage.portless;
}

fn block_contains(block: &IPBlock, ip: IpAddr) -> bool {
    let inside = |text: &str| {
        text.contains('/')
            && flow_model::cidr::Cidr::parse(text).is_some_and(|cidr| cidr.contains(ip))
    };
    inside(&block.cidr) && !block.except.iter().flatten().any(|except| inside(except))
}

/// The one address a block holds, if it holds one.
fn single_address(block: &IPBlock) -> Option<IpAddr> {
    let (address, prefix) = block.cidr.split_once('/')?;
    let ip: IpAddr = address.parse().ok()?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    (prefix == full).then_some(ip)
}

#[cfg(test)]
mod tests;
