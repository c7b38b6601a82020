//! Allowances no observed connection used, rule by rule: the peers a rule's
//! selectors and blocks match, and the ports it grants them, minus what was
//! observed.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;

use super::{Auditor, Rule, Unused, WorkloadRef};
use crate::{
    cluster::PodView,
    diff::describe_reach,
    evaluate::{rule_reach, selector_matches},
    ports::{PROTOCOLS, PortSet, Reach},
};
use flow_model::cidr::Cidr;

impl<'a> Auditor<'a> {
    /// The pods a rule's peers match, by workload: namespace by namespace,
    /// so a pod is only compared with the peers its namespace allows.
    pub(super) fn peer_pods(
        &self,
        rule: &Rule<'_>,
        namespace: &str,
    ) -> BTreeMap<WorkloadRef, Vec<&'a PodView>> {
        let mut matched: BTreeMap<WorkloadRef, Vec<&'a PodView>> = BTreeMap::new();
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
    pub(super) fn used(&self, egress: bool, selected: &WorkloadRef, peer: &WorkloadRef) -> Reach {
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
    pub(super) fn unused_pods(
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
                        ports: describe_reach(&left),
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
    pub(super) fn unused_blocks(
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
                        ports: describe_reach(&left),
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
