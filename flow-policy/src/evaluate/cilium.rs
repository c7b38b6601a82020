//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy semantics, for
//! the [`Evaluator`](super::Evaluator) to combine with NetworkPolicy's.
//!
//! In a Cilium cluster Cilium enforces both kinds as one set of rules per
//! endpoint: an endpoint is in default deny for a direction when any rule
//! selecting it (of either kind) puts it there, and then a connection
//! passes when any rule (of either kind) allows it.
//!
//! - A rule selects the endpoints its `endpointSelector` matches, in the
//!   policy's namespace for a CiliumNetworkPolicy, anywhere for a
//!   cluster-wide one. An endpoint's labels are its pod's, plus
//!   `io.kubernetes.pod.namespace` and its namespace's labels as
//!   `io.cilium.k8s.namespace.labels.<key>`; `k8s:` and `any:` key
//!   prefixes both match them.
//! - A non-empty `ingress` (`egress`) section puts the endpoint in default
//!   deny for that direction, unless `enableDefaultDeny` says otherwise
//!   (which, set to true, does so even without a section).
//! - In a rule every given field must match. Peers: `*Endpoints` (in a
//!   namespaced policy a selector that does not name
//!   `io.kubernetes.pod.namespace` means the policy's namespace; one naming
//!   the namespace's labels likewise spans namespaces),
//!   `*Entities`, `*CIDR`/`*CIDRSet` (addresses outside the cluster only,
//!   less `except`), `toFQDNs` (an outside address the pod resolved, at the
//!   time of the flow, from a name the selector matches). A rule with no
//!   peer field allows every peer when it has `toPorts`, none otherwise (the
//!   empty rule `{}` only sets default deny); a peer field given empty
//!   matches nothing.
//! - `toPorts`: absent or empty means every port; `ANY` (or no protocol)
//!   means TCP, UDP and SCTP; `endPort` makes a range. DNS rules
//!   (`rules.dns`) are judged at layer 4: they allow the port to the peer.
//! - Entities: `all`; `world` (outside addresses); `cluster` (pods, this
//!   node, other nodes); `host` (the node an agent runs on, which is the
//!   endpoint's own for the flows it sees at its pods); `remote-node`;
//!   `kube-apiserver` (the API server's addresses, which match no other
//!   entity but `all`); `none`. A hostNetwork pod as a peer carries its
//!   node's identity in Cilium, so no endpoint selector matches it; only
//!   `all` and `cluster` do.

use std::collections::BTreeMap;

use flow_model::{cidr::Cidr, identity::PeerKind, record::Protocol};

use super::Subject;
use crate::{
    cilium::{CidrRule, Policy, Port, PortRule, Rule, Selector, validate::label_key},
    cluster::{ClusterView, PodView},
};

/// The label Cilium gives an endpoint's namespace.
const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The prefix of the labels Cilium gives an endpoint from its namespace's.
const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";

/// What the Cilium policies say about one endpoint in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Side {
    /// A selecting rule puts the endpoint in default deny.
    pub enforced: bool,
    /// A selecting rule allows the connection.
    pub allowed: bool,
}

/// The connection judged: the other end, protocol and destination port.
#[derive(Clone, Copy)]
pub(super) struct Probe<'s> {
    pub other: Subject<'s>,
    pub protocol: Protocol,
    pub port: u16,
}

/// The rules of `policies` selecting `pod`, judged for one direction.
pub(super) fn direction(
    cluster: &ClusterView,
    policies: &[Policy],
    pod: &PodView,
    egress: bool,
    probe: &Probe<'_>,
) -> Side {
    let mut side = Side::default();
    if policies.is_empty() {
        return side;
    }
    let labels = endpoint_labels(cluster, pod);
    for policy in policies {
        let namespace = if policy.is_clusterwide() {
            None
        } else {
            policy.metadata.namespace.as_deref()
        };
        if namespace.is_some_and(|namespace| namespace != pod.namespace) {
            continue;
        }
        for (_, spec) in policy.rules() {
            if !selects(&spec.endpoint_selector, &labels) {
                continue;
            }
            let rules = if egress { &spec.egress } else { &spec.ingress };
            let rules = rules.as_deref().unwrap_or_default();
            let default_deny = spec.enable_default_deny.and_then(|default_deny| {
                if egress {
                    default_deny.egress
                } else {
                    default_deny.ingress
                }
            });
            side.enforced |= default_deny.unwrap_or(!rules.is_empty());
            side.allowed |= rules
                .iter()
                .any(|rule| rule_allows(cluster, rule, namespace, egress, probe));
        }
    }
    side
}

/// The labels Cilium gives a pod's endpoint, without source prefixes.
fn endpoint_labels(cluster: &ClusterView, pod: &PodView) -> BTreeMap<String, String> {
    let mut labels = pod.labels.clone();
    labels.insert(NAMESPACE_LABEL.to_owned(), pod.namespace.clone());
    for (key, value) in cluster.namespace_labels(&pod.namespace) {
        labels.insert(format!("{NAMESPACE_LABELS}{key}"), value);
    }
    labels
}

/// Whether `selector` matches `labels`. Keys were checked when the policy
/// was read; one that cannot be read matches nothing.
fn selects(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    let value = |key: &str| label_key(key).ok().map(|key| labels.get(key));
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, wanted)| value(key).flatten() == Some(wanted))
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| {
                let Some(value) = value(&requirement.key) else {
                    return false;
                };
                let values = requirement.values.as_deref().unwrap_or_default();
                match requirement.operator.as_str() {
                    "In" => value.is_some_and(|value| values.contains(value)),
                    "NotIn" => value.is_none_or(|value| !values.contains(value)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
}

/// Whether a selector names the namespace, or its labels: then it is not
/// confined to the policy's namespace.
fn names_namespace(selector: &Selector) -> bool {
    let keys = selector.match_labels.iter().flatten().map(|(key, _)| key);
    let expressions = selector.match_expressions.iter().flatten();
    keys.chain(expressions.map(|requirement| &requirement.key))
        .filter_map(|key| label_key(key).ok())
        .any(|key| key == NAMESPACE_LABEL || key.starts_with(NAMESPACE_LABELS))
}

/// A rule's peer fields, whichever its direction.
struct Peers<'r> {
    endpoints: Option<&'r Vec<Selector>>,
    cidrs: Option<&'r Vec<String>>,
    cidr_sets: Option<&'r Vec<CidrRule>>,
    entities: Option<&'r Vec<String>>,
    names: Option<&'r Vec<crate::cilium::FqdnSelector>>,
}

impl<'r> Peers<'r> {
    fn of(rule: &'r Rule, egress: bool) -> Self {
        if egress {
            Self {
                endpoints: rule.to_endpoints.as_ref(),
                cidrs: rule.to_cidr.as_ref(),
                cidr_sets: rule.to_cidr_set.as_ref(),
                entities: rule.to_entities.as_ref(),
                names: rule.to_fqdns.as_ref(),
            }
        } else {
            Self {
                endpoints: rule.from_endpoints.as_ref(),
                cidrs: rule.from_cidr.as_ref(),
                cidr_sets: rule.from_cidr_set.as_ref(),
                entities: rule.from_entities.as_ref(),
                names: None,
            }
        }
    }

    fn given(&self) -> bool {
        self.endpoints.is_some()
            || self.cidrs.is_some()
            || self.cidr_sets.is_some()
            || self.entities.is_some()
            || self.names.is_some()
    }

    fn entity(&self, members: &[&str]) -> bool {
        self.entities
            .into_iter()
            .flatten()
            .any(|entity| members.contains(&entity.as_str()))
    }
}

fn rule_allows(
    cluster: &ClusterView,
    rule: &Rule,
    namespace: Option<&str>,
    egress: bool,
    probe: &Probe<'_>,
) -> bool {
    let peers = Peers::of(rule, egress);
    let peer_ok = if peers.given() {
        peer_matches(cluster, &peers, namespace, probe.other)
    } else {
        rule.to_ports
            .as_ref()
            .is_some_and(|ports| !ports.is_empty())
    };
    peer_ok && ports_match(rule.to_ports.as_deref(), probe.protocol, probe.port)
}

fn peer_matches(
    cluster: &ClusterView,
    peers: &Peers<'_>,
    namespace: Option<&str>,
    other: Subject<'_>,
) -> bool {
    match other {
        Subject::Pod(peer) if peer.host_network => peers.entity(&["all", "cluster"]),
        Subject::Pod(peer) => {
            let labels = endpoint_labels(cluster, peer);
            peers.entity(&["all", "cluster"])
                || peers.endpoints.into_iter().flatten().any(|selector| {
                    selects(selector, &labels)
                        && (names_namespace(selector)
                            || namespace.is_none_or(|namespace| peer.namespace == namespace))
                })
        }
        Subject::Address {
            ip, kind, names, ..
        } => {
            let members: &[&str] = match kind {
                PeerKind::World => &["all", "world"],
                PeerKind::Host => &["all", "cluster", "host"],
                PeerKind::RemoteNode => &["all", "cluster", "remote-node"],
                PeerKind::KubeApiserver => &["all", "kube-apiserver"],
                PeerKind::Pod | PeerKind::Service => &["all"],
            };
            if peers.entity(members) {
                return true;
            }
            // CIDRs and names select addresses outside the cluster only.
            kind == PeerKind::World
                && (in_cidrs(peers, ip)
                    || peers.names.into_iter().flatten().any(|selector| {
                        names
                            .iter()
                            .any(|name| selector.matches(&name.to_lowercase()))
                    }))
        }
    }
}

fn in_cidrs(peers: &Peers<'_>, ip: std::net::IpAddr) -> bool {
    let inside = |text: &str| Cidr::parse(text).is_some_and(|cidr| cidr.contains(ip));
    peers.cidrs.into_iter().flatten().any(|block| inside(block))
        || peers.cidr_sets.into_iter().flatten().any(|set| {
            inside(&set.cidr) && !set.except.iter().flatten().any(|except| inside(except))
        })
}

fn ports_match(rules: Option<&[PortRule]>, protocol: Protocol, number: u16) -> bool {
    match rules {
        None | Some([]) => true,
        Some(rules) => rules
            .iter()
            .flat_map(|rule| &rule.ports)
            .any(|port| port_matches(port, protocol, number)),
    }
}

fn port_matches(port: &Port, protocol: Protocol, number: u16) -> bool {
    let protocol_ok = match port.protocol.as_str() {
        "ANY" => matches!(protocol.name(), Some("TCP" | "UDP" | "SCTP")),
        wanted => protocol.name() == Some(wanted),
    };
    let Ok(first) = port.port.parse::<u16>() else {
        return false;
    };
    protocol_ok && (first..=port.end_port.unwrap_or(first)).contains(&number)
}

#[cfg(test)]
mod tests;
