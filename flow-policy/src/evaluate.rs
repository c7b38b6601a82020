//! Kubernetes NetworkPolicy semantics, to check flows against policies.
//!
//! - A pod is isolated for a direction once any policy of its namespace
//!   selects it with that direction in its (effective) `policyTypes`; then only
//!   the union of those policies' rules allows traffic. `policyTypes` omitted
//!   means Ingress, plus Egress when the policy has egress rules.
//! - A connection needs both the source's egress and the destination's
//!   ingress to allow it; replies are implicit.
//! - In a rule, absent or empty `from`/`to` means every peer and absent or
//!   empty `ports` every port. Inside one peer entry `namespaceSelector` and
//!   `podSelector` must both match (AND); separate entries are alternatives
//!   (OR). `podSelector` alone means the policy's namespace.
//! - `ipBlock` matches addresses that are not pods (as the reference
//!   analyzers model it), minus its `except` blocks.
//! - Ports: protocol defaults to TCP; a named port is looked up on the
//!   destination pod's containers; `endPort` makes a range. Protocols without
//!   ports (ICMP) only pass rules without `ports`.
//! - Traffic from a pod's own node is allowed (Kubernetes cannot block it).
//!
//! Cilium's own policies ([`crate::cilium`], judged in `cilium`) join the same judgement: as Cilium
//! enforces both kinds, a pod is isolated in a direction when a policy of
//! either kind isolates it, and a connection then passes when a policy of
//! either kind allows it.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use thiserror::Error;

use super::cluster::{ClusterView, PodView};
use flow_model::{cidr::Cidr, identity::PeerKind, record::Protocol};

/// Errors loading policies.
#[derive(Debug, Error)]
pub enum PolicyLoadError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid.
    #[error("{path}: document {document}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based document in the file.
        document: usize,
        /// What is wrong.
        message: String,
    },
    /// A path that must hold the approved policies holds none: in monitor
    /// mode every flow would be a violation, which is never what was meant.
    #[error("{path} holds no NetworkPolicy nor Cilium policy")]
    Empty {
        /// The file or directory.
        path: PathBuf,
    },
}

/// Problems that make a NetworkPolicy invalid (the API server would refuse
/// it), each naming its field.
pub fn validate(policy: &NetworkPolicy) -> Vec<String> {
    let mut problems = Vec::new();
    if policy.metadata.name.as_deref().is_none_or(str::is_empty) {
        problems.push("metadata.name: missing".to_owned());
    }
    if policy
        .metadata
        .namespace
        .as_deref()
        .is_none_or(str::is_empty)
    {
        problems.push("metadata.namespace: missing".to_owned());
    }
    let Some(spec) = &policy.spec else {
        problems.push("spec: missing".to_owned());
        return problems;
    };
    for (index, kind) in spec.policy_types.iter().flatten().enumerate() {
        if kind != "Ingress" && kind != "Egress" {
            problems.push(format!(
                "spec.policyTypes[{index}]: {kind:?} is not Ingress or Egress"
            ));
        }
    }
    if let Some(selector) = &spec.pod_selector {
        validate_selector(selector, "spec.podSelector", &mut problems);
    }
    let mut check_rule = |peers: Option<&Vec<NetworkPolicyPeer>>,
                          ports: Option<&Vec<NetworkPolicyPort>>,
                          path: String| {
        for (index, peer) in peers.into_iter().flatten().enumerate() {
            let field = format!("{path}.peers[{index}]");
            let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
            match &peer.ip_block {
                Some(_) if selectors => problems.push(format!(
                    "{field}: ipBlock cannot be combined with selectors"
                )),
                Some(block) => validate_block(block, &field, &mut problems),
                None if !selectors => problems.push(format!(
                    "{field}: needs podSelector, namespaceSelector or ipBlock"
                )),
                None => {}
            }
            for (selector, name) in [
                (&peer.pod_selector, "podSelector"),
                (&peer.namespace_selector, "namespaceSelector"),
            ] {
                if let Some(selector) = selector {
                    validate_selector(selector, &format!("{field}.{name}"), &mut problems);
                }
            }
        }
        for (index, port) in ports.into_iter().flatten().enumerate() {
            let field = format!("{path}.ports[{index}]");
            if let Some(protocol) = &port.protocol
                && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
            {
                problems.push(format!(
                    "{field}.protocol: {protocol:?} is not TCP, UDP or SCTP"
                ));
            }
            match (&port.port, port.end_port) {
                (Some(IntOrString::Int(number)), end) => {
                    if !(1..=65_535).contains(number) {
                        problems.push(format!("{field}.port: {number} is not a port"));
                    }
                    if let Some(end) = end
                        && (end < *number || end > 65_535)
                    {
                        problems.push(format!(
                            "{field}.endPort: {end} must be between port and 65535"
                        ));
                    }
                }
                (Some(IntOrString::String(name)), end) => {
                    if name.is_empty() || name.len() > 15 {
                        problems.push(format!("{field}.port: {name:?} is not a port name"));
                    }
                    if end.is_some() {
                        problems.push(format!("{field}.endPort: only with a numeric port"));
                    }
                }
                (None, Some(_)) => {
                    problems.push(format!("{field}.endPort: only with a numeric port"))
                }
                (None, None) => {}
            }
        }
    };
    for (index, rule) in spec.ingress.iter().flatten().enumerate() {
        check_rule(
            rule.from.as_ref(),
            rule.ports.as_ref(),
            format!("spec.ingress[{index}]"),
        );
    }
    for (index, rule) in spec.egress.iter().flatten().enumerate() {
        check_rule(
            rule.to.as_ref(),
            rule.ports.as_ref(),
            format!("spec.egress[{index}]"),
        );
    }
    problems
}

fn validate_selector(selector: &LabelSelector, field: &str, problems: &mut Vec<String>) {
    for (index, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let values = expression.values.as_ref().map_or(0, Vec::len);
        let valid = match expression.operator.as_str() {
            "In" | "NotIn" => values > 0,
            "Exists" | "DoesNotExist" => values == 0,
            _ => false,
        };
        if !valid {
            problems.push(format!(
                "{field}.matchExpressions[{index}]: operator {:?} with {values} values",
                expression.operator
            ));
        }
    }
}

fn validate_block(block: &IPBlock, field: &str, problems: &mut Vec<String>) {
    let Some(cidr) = parse_cidr(&block.cidr) else {
        problems.push(format!(
            "{field}.ipBlock.cidr: {:?} is not a CIDR",
            block.cidr
        ));
        return;
    };
    for (index, except) in block.except.iter().flatten().enumerate() {
        match parse_cidr(except) {
            // Kubernetes wants a strict subset: an except equal to the block
            // is refused by the API server.
            Some(inner) if cidr.contains_block(&inner) && !inner.contains_block(&cidr) => {}
            Some(_) => problems.push(format!(
                "{field}.ipBlock.except[{index}]: {except} is not strictly inside {}",
                block.cidr
            )),
            None => problems.push(format!(
                "{field}.ipBlock.except[{index}]: {except:?} is not a CIDR"
            )),
        }
    }
}

fn parse_cidr(text: &str) -> Option<Cidr> {
    // NetworkPolicy CIDRs always carry a prefix length.
    text.contains('/').then(|| Cidr::parse(text)).flatten()
}

/// Reads every NetworkPolicy in `.yaml`, `.yml` and `.json` files of a
/// directory (or one file): multi-document files and `List`s are read, other
/// kinds (a kustomization, ConfigMaps) skipped. The first invalid policy is
/// an error; [`crate::load::load_all`] goes on past it.
pub fn load_policies(path: &Path) -> Result<Vec<NetworkPolicy>, PolicyLoadError> {
    let loaded = crate::load::load_all(path)?;
    match loaded.errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(loaded
            .policies
            .into_iter()
            .map(|loaded| loaded.policy)
            .collect()),
    }
}

/// The policies `policy check` and monitor mode judge with: Kubernetes
/// NetworkPolicies and Cilium's, enforced together.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// NetworkPolicies.
    pub network: Vec<NetworkPolicy>,
    /// CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies.
    pub cilium: Vec<crate::cilium::Policy>,
}

impl PolicySet {
    /// Policies of both kinds.
    pub fn len(&self) -> usize {
        self.network.len() + self.cilium.len()
    }

    /// No policy of either kind.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<NetworkPolicy>> for PolicySet {
    fn from(network: Vec<NetworkPolicy>) -> Self {
        Self {
            network,
            cilium: Vec::new(),
        }
    }
}

/// Reads every NetworkPolicy, CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy of `path` as [`load_policies`] reads
/// NetworkPolicies; the first document that is invalid or cannot be judged
/// exactly is an error.
pub fn load_policy_set(path: &Path) -> Result<PolicySet, PolicyLoadError> {
    let loaded = crate::load::load_all_kinds(path)?;
    match loaded.errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(PolicySet {
            network: loaded
                .policies
                .into_iter()
                .map(|loaded| loaded.policy)
                .collect(),
            cilium: loaded
                .cilium
                .into_iter()
                .map(|loaded| loaded.policy)
                .collect(),
        }),
    }
}

/// An end of a connection being checked.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A pod (policies apply to it and select it).
    Pod(&'a PodView),
    /// An address that is no pod. `resident_node` marks the destination
    /// pod's own node, whose traffic is always allowed.
    Address {
        /// The address.
        ip: IpAddr,
        /// The destination pod's own node.
        resident_node: bool,
        /// What it is (Cilium's entities).
        kind: PeerKind,
        /// The names the pod resolved to it, as of the flow (Cilium's
        /// `toFQDNs`).
        names: &'a [std::sync::Arc<str>],
    },
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The source's egress allows it.
    pub egress: bool,
    /// The destination's ingress allows it.
    pub ingress: bool,
}

impl Verdict {
    /// Both directions allow it.
    pub fn allowed(&self) -> bool {
        self.egress && self.ingress
    }
}

/// What a rule is checked against: the other end, the destination (for named
/// ports), protocol and port.
#[derive(Clone, Copy)]
struct Probe<'s> {
    other: Subject<'s>,
    destination: Subject<'s>,
    protocol: Protocol,
    port: u16,
}

/// Evaluates connections against a set of policies in a cluster.
#[derive(Debug)]
pub struct Evaluator<'a> {
    cluster: &'a ClusterView,
    /// Policies by namespace.
    policies: BTreeMap<String, Vec<&'a NetworkPolicy>>,
    /// Cilium's policies, judged with NetworkPolicies by [`Evaluator::check`]
    /// (not by [`Evaluator::reach`], which is for NetworkPolicies alone).
    cilium: &'a [crate::cilium::Policy],
}

/// Whether a label selector matches `labels`.
pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let LabelSelector {
        match_labels,
        match_expressions,
    } = selector;
    match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value))
        && match_expressions.iter().flatten().all(|expression| {
            let values = expression.values.as_deref().unwrap_or_default();
            let value = labels.get(&expression.key);
            match expression.operator.as_str() {
                "In" => value.is_some_and(|value| values.contains(value)),
                "NotIn" => value.is_none_or(|value| !values.contains(value)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Whether `policy` isolates ingress and egress, as the API server
/// defaults `policyTypes`.
pub(crate) fn types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &policy.spec else {
        return (false, false);
    };
    // The API server defaults an empty list like a missing one.
    match &spec.policy_types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|kind| kind == "Ingress"),
            types.iter().any(|kind| kind == "Egress"),
        ),
        _ => (
            true,
            spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
        ),
    }
}

/// Whether `policy` isolates `pod` in one direction: it is in the pod's
/// namespace, has that policy type and selects the pod.
pub fn applies(policy: &NetworkPolicy, pod: &PodView, egress: bool) -> bool {
    let (ingress_type, egress_type) = types(policy);
    policy.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
        && (if egress { egress_type } else { ingress_type })
        && Evaluator::selects(policy, pod)
}

impl<'a> Evaluator<'a> {
    /// An evaluator of `policies` in `cluster`.
    pub fn new(cluster: &'a ClusterView, policies: &'a [NetworkPolicy]) -> Self {
        let mut by_namespace: BTreeMap<String, Vec<&NetworkPolicy>> = BTreeMap::new();
        for policy in policies {
            if let Some(namespace) = &policy.metadata.namespace {
                by_namespace
                    .entry(namespace.clone())
                    .or_default()
                    .push(policy);
            }
        }
        Self {
            cluster,
            policies: by_namespace,
            cilium: &[],
        }
    }

    /// An evaluator of both kinds of `policies` in `cluster`.
    pub fn with_set(cluster: &'a ClusterView, policies: &'a PolicySet) -> Self {
        Self {
            cilium: &policies.cilium,
            ..Self::new(cluster, &policies.network)
        }
    }

    pub(crate) fn selects(policy: &NetworkPolicy, pod: &PodView) -> bool {
        policy
            .spec
            .as_ref()
            .and_then(|spec| spec.pod_selector.as_ref())
            .is_none_or(|selector| selector_matches(selector, &pod.labels))
    }

    pub(crate) fn peer_matches(
        &self,
        peer: &NetworkPolicyPeer,
        policy_namespace: &str,
        other: Subject<'_>,
    ) -> bool {
        match (&peer.ip_block, other) {
            (Some(block), Subject::Address { ip, .. }) => {
                let inside = |text: &str| parse_cidr(text).is_some_and(|cidr| cidr.contains(ip));
                inside(&block.cidr) && !block.except.iter().flatten().any(|except| inside(except))
            }
            (Some(_), Subject::Pod(_)) | (None, Subject::Address { .. }) => false,
            (None, Subject::Pod(pod)) => {
                let namespace_ok = match &peer.namespace_selector {
                    None => pod.namespace == policy_namespace,
                    Some(selector) => {
                        selector_matches(selector, &self.cluster.namespace_labels(&pod.namespace))
                    }
                };
                namespace_ok
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|selector| selector_matches(selector, &pod.labels))
            }
        }
    }

    fn port_matches(
        port: &NetworkPolicyPort,
        protocol: Protocol,
        number: u16,
        destination: Subject<'_>,
    ) -> bool {
        let wanted = port.protocol.as_deref().unwrap_or("TCP");
        if protocol.name() != Some(wanted) {
            return false;
        }
        match &port.port {
            None => true,
            Some(IntOrString::Int(first)) => {
                let first = i64::from(*first);
                let last = port.end_port.map_or(first, i64::from);
                (first..=last).contains(&i64::from(number))
            }
            Some(IntOrString::String(name)) => match destination {
                Subject::Pod(pod) => pod.ports.iter().any(|declared| {
                    declared.name.as_deref() == Some(name.as_str())
                        && declared.protocol == protocol
                        && declared.port == number
                }),
                Subject::Address { .. } => false,
            },
        }
    }

    fn rule_allows(
        &self,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
        namespace: &str,
        probe: &Probe<'_>,
    ) -> bool {
        let Probe {
            other,
            destination,
            protocol,
            port,
        } = *probe;
        let peers_ok = match peers {
            None => true,
            Some(peers) if peers.is_empty() => true,
            Some(peers) => peers
                .iter()
                .any(|peer| self.peer_matches(peer, namespace, other)),
        };
        let ports_ok = match ports {
            None => true,
            Some(ports) if ports.is_empty() => true,
            Some(ports) => ports
                .iter()
                .any(|entry| Self::port_matches(entry, protocol, port, destination)),
        };
        peers_ok && ports_ok
    }

    /// Whether `pod`'s policies of both kinds let it talk with `other` in
    /// one direction.
    fn direction(
        &self,
        pod: &PodView,
        other: Subject<'_>,
        egress: bool,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        if pod.host_network {
            return true;
        }
        let network = self.network_direction(pod, other, egress, protocol, port);
        let probe = cilium::Probe {
            other,
            protocol,
            port,
        };
        let cilium = cilium::direction(self.cluster, self.cilium, pod, egress, &probe);
        network.allowed || cilium.allowed || !(network.enforced || cilium.enforced)
    }

    /// What `pod`'s NetworkPolicies say in one direction.
    fn network_direction(
        &self,
        pod: &PodView,
        other: Subject<'_>,
        egress: bool,
        protocol: Protocol,
        port: u16,
    ) -> cilium::Side {
        let destination = if egress { other } else { Subject::Pod(pod) };
        let mut side = cilium::Side::default();
        for policy in self.policies.get(&pod.namespace).into_iter().flatten() {
            let (ingress_type, egress_type) = types(policy);
            if !(if egress { egress_type } else { ingress_type }) || !Self::selects(policy, pod) {
                continue;
            }
            side.enforced = true;
            let Some(spec) = &policy.spec else { continue };
            let namespace = pod.namespace.as_str();
            let probe = Probe {
                other,
                destination,
                protocol,
                port,
            };
            side.allowed |= if egress {
                spec.egress.iter().flatten().any(|rule| {
                    self.rule_allows(rule.to.as_ref(), rule.ports.as_ref(), namespace, &probe)
                })
            } else {
                spec.ingress.iter().flatten().any(|rule| {
                    self.rule_allows(rule.from.as_ref(), rule.ports.as_ref(), namespace, &probe)
                })
            };
            if side.allowed {
                break;
            }
        }
        side
    }

    /// Checks a connection from `source` to `destination` on `protocol` and
    /// destination `port`.
    pub fn check(
        &self,
        source: Subject<'_>,
        destination: Subject<'_>,
        protocol: Protocol,
        port: u16,
    ) -> Verdict {
        let egress = match source {
            Subject::Pod(pod) => self.direction(pod, destination, true, protocol, port),
            Subject::Address { .. } => true,
        };
        let ingress = match (destination, source) {
            (
                Subject::Pod(_),
                Subject::Address {
                    resident_node: true,
                    ..
                },
            ) => true,
            (Subject::Pod(pod), _) => self.direction(pod, source, false, protocol, port),
            (Subject::Address { .. }, _) => true,
        };
        Verdict { egress, ingress }
    }
}

mod cilium;
mod reach;

pub(crate) use reach::rule_reach;

#[cfg(test)]
mod tests;
