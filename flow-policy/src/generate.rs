//! From a connection graph to least-privilege policies: per namespace a
//! default deny, per workload one policy allowing exactly its learned edges.
//!
//! - Selectors: the smallest set of the workload's stable labels that selects
//!   its pods and no other workload's ([`ClusterView::selector`]).
//! - Peers: same-namespace workloads by `podSelector`; other namespaces by
//!   `namespaceSelector` on `kubernetes.io/metadata.name` AND `podSelector` in
//!   the same peer entry; addresses by `ipBlock` /32 or /128.
//! - Ports: the target ports the pods listen on (never Service ports); a run
//!   of at least [`ENDPORT_MIN_RUN`] consecutive observed ports becomes
//!   `port`..`endPort`; nothing unobserved is ever included.
//! - DNS: a workload seen querying port 53 gets UDP and TCP 53 to that
//!   resolver: the DNS pods, or a node-local resolver by address
//!   ([`resolver`]).
//! - Cross-tenant edges are left out (and listed) unless explicitly allowed.
//! - Edges seen rarely or long before the newest are marked for review, and
//!   left out (and listed) with `--min-connections` and `--since`
//!   ([`rarity`]).
//!   The platform namespaces (those that get no policies, `kube-system` by
//!   default) belong to no tenant: DNS to kube-system is not cross-tenant.
//!
//! Output is deterministic: the same graph and cluster give byte-identical
//! files. Each document carries the label [`MANAGED_BY`] and a hash of its
//! own content ([`content_hash`]), by which an export tells the files it
//! may replace from those a person edited.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde::Serialize;

use super::{
    cilium,
    cluster::{ClusterView, NAMESPACE_NAME_LABEL, Selection},
    graph::{EdgeKey, Graph, Party, WorkloadRef},
};
use flow_model::{identity::PeerKind, record::Protocol};

pub mod content_hash;
pub mod fqdn;
mod propose;
pub mod rarity;
pub mod resolver;
mod yaml;

pub use rarity::{EdgeThresholds, LeftOut, Sighting};
pub(crate) use yaml::is_plain;

/// Consecutive observed ports that become one `port`/`endPort` range.
pub const ENDPORT_MIN_RUN: usize = 3;

/// Namespaces left out of policy subjects by default (they stay peers).
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", "kube-node-lease"];

/// Label marking what flow-agent generated.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "flow-agent");

/// Which policy API to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyFormat {
    /// Kubernetes `networking.k8s.io/v1` NetworkPolicy.
    #[default]
    Networkpolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy.
    Cilium,
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Output API.
    pub format: PolicyFormat,
    /// Include cross-tenant edges.
    pub allow_cross_tenant: bool,
    /// Namespaces that get no policies.
    pub excluded_namespaces: BTreeSet<String>,
    /// Namespaces of the platform, not of a tenant: edges with an end in
    /// one never cross tenants (nor do those with an end in an excluded
    /// namespace).
    pub platform_namespaces: BTreeSet<String>,
    /// Edges left out for too few connections or too old a last sighting.
    pub thresholds: EdgeThresholds,
    /// Addresses of a DNS resolver on every node (`--node-local-dns`), on
    /// top of those the inventory's kube-system DaemonSets reveal.
    pub node_local_dns: BTreeSet<IpAddr>,
    /// Cilium format: more names than this under one parent domain share a
    /// `matchPattern` ([`fqdn`]).
    pub fqdn_pattern_threshold: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            format: PolicyFormat::default(),
            allow_cross_tenant: false,
            excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|namespace| (*namespace).to_owned())
                .collect(),
            platform_namespaces: flow_model::identity::platform_namespaces([]),
            thresholds: EdgeThresholds::default(),
            node_local_dns: BTreeSet::new(),
            fqdn_pattern_threshold: fqdn::DEFAULT_PATTERN_THRESHOLD,
        }
    }
}

/// A peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerSpec {
    /// Pods of a namespace with these labels. Both shared by every rule
    /// that has the workload as a peer: copies of their own in each were
    /// most of the memory of a large proposal.
    Pods {
        /// Namespace.
        namespace: Arc<str>,
        /// `matchLabels`: the workload's selector.
        labels: Arc<BTreeMap<String, String>>,
    },
    /// An address block.
    Cidr(String),
    /// An address Cilium selects by entity, not by CIDR: `host` (the pod's
    /// own node) or `kube-apiserver`. NetworkPolicy gets the address block.
    Entity {
        /// Cilium's entity name.
        entity: String,
        /// The observed address, as a block.
        cidr: String,
    },
    /// A DNS resolver on every node, at this address block: `ipBlock` in
    /// NetworkPolicy, [`resolver::cilium_node_local`] in Cilium's format.
    NodeLocalResolver(String),
    /// DNS names (Cilium's `toFQDNs`, egress only): made only for the
    /// Cilium format, from an external address's names. NetworkPolicy
    /// cannot name hosts and leaves such a peer out.
    Fqdn(cilium::FqdnSelector),
}

/// A port entry of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    /// Protocol.
    pub protocol: Protocol,
    /// First port.
    pub port: u16,
    /// Last port, for ranges.
    pub end_port: Option<u16>,
}

/// One rule: these peers on these ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleSpec {
    /// Peers (any of).
    pub peers: Vec<PeerSpec>,
    /// Ports (any of).
    pub ports: Vec<PortSpec>,
}

/// The policy of one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadPolicy {
    /// The workload.
    pub workload: WorkloadRef,
    /// Policy name.
    pub name: String,
    /// Its selector.
    pub selection: Selection,
    /// Ingress rules.
    pub ingress: Vec<RuleSpec>,
    /// Egress rules.
    pub egress: Vec<RuleSpec>,
}

/// Why an edge is not (or not silently) in the policies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Note {
    /// A cross-tenant edge, left out.
    CrossTenantExcluded(String),
    /// A cross-tenant edge, included by request.
    CrossTenantIncluded(String),
    /// An edge with an address outside the workloads.
    External(String),
    /// NetworkPolicy cannot express it (ICMP, protocols without ports).
    Unexpressible(String),
    /// An end cannot be selected (no labels, hostNetwork, an untranslated
    /// Service address).
    Unselectable(String),
    /// A selector also selects other workloads' pods.
    Overlap(String),
}

/// What the generator proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Namespaces that get a default deny.
    pub namespaces: Vec<String>,
    /// Per-workload policies, sorted.
    pub policies: Vec<WorkloadPolicy>,
    /// Review notes, sorted.
    pub notes: Vec<Note>,
    /// Every allowed (workload, direction, peer, port), one line each, sorted:
    /// what the next export compares with.
    pub allowed: Vec<String>,
    /// Edges the proposal was made from.
    pub edges: usize,
    /// Edges allowed but seen rarely or long before the newest, sorted.
    pub rare: Vec<Sighting>,
    /// Edges the thresholds left out, sorted.
    pub left_out: Vec<LeftOut>,
    /// The thresholds it was made with.
    pub thresholds: EdgeThresholds,
    /// Per subject workload (as `namespace/Kind/name`), the resolvers its
    /// DNS queries went to, as REVIEW.md names them; sorted.
    pub resolvers: BTreeMap<String, BTreeSet<String>>,
    /// Addresses outside the cluster that workloads resolved names to,
    /// sorted by address.
    pub named_addresses: Vec<NamedAddress>,
    /// The allowed edges by their ends, as REVIEW.md's service maps draw
    /// them, in map order ([`crate::mermaid::map::merged`]).
    pub map: Vec<crate::mermaid::map::MapEdge>,
    /// Workloads with policies that reached outside addresses by name but
    /// have no DNS edge allowed (as `namespace/Kind/name`), sorted: in
    /// Cilium their `toFQDNs` never match, as the DNS proxy never sees
    /// their answers.
    pub names_without_dns: Vec<String>,
}

/// An address outside the cluster with the names workloads resolved to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedAddress {
    /// The address.
    pub address: IpAddr,
    /// Its names, sorted.
    pub names: BTreeSet<String>,
    /// One of its names also resolved to another address during the
    /// window: a rule by address breaks when the name moves.
    pub changed: bool,
}

/// The outside addresses of `graph` that have names, and whether their names
/// moved between addresses.
pub fn named_addresses(graph: &Graph) -> Vec<NamedAddress> {
    let mut by_address: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for (key, stats) in graph.edges() {
        if let Party::Address {
            ip,
            kind: PeerKind::World,
        } = &key.server
            && !stats.names.is_empty()
        {
            by_address
                .entry(*ip)
                .or_default()
                .extend(stats.names.iter().map(String::as_str));
        }
    }
    let mut addresses_of: HashMap<&str, usize> = HashMap::new();
    for names in by_address.values() {
        for name in names {
            *addresses_of.entry(name).or_default() += 1;
        }
    }
    by_address
        .into_iter()
        .map(|(address, names)| NamedAddress {
            address,
            changed: names.iter().any(|name| addresses_of[name] > 1),
            names: names.into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

/// The workloads of `policies` with a named outside server in `graph`
/// and no resolver in `resolvers`, sorted.
pub(crate) fn names_without_dns(
    graph: &Graph,
    policies: &[WorkloadPolicy],
    resolvers: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let subjects: BTreeSet<&WorkloadRef> = policies.iter().map(|policy| &policy.workload).collect();
    let mut missing = BTreeSet::new();
    for (key, stats) in graph.edges() {
        if let (
            Party::Workload(client),
            Party::Address {
                kind: PeerKind::World,
                ..
            },
        ) = (&key.client, &key.server)
            && !stats.names.is_empty()
            && subjects.contains(client)
        {
            let text = client.to_string();
            if !resolvers.contains_key(&text) {
                missing.insert(text);
            }
        }
    }
    missing.into_iter().collect()
}

impl Proposal {
    /// Rules over all policies.
    pub fn rules(&self) -> usize {
        self.policies
            .iter()
            .map(|policy| policy.ingress.len() + policy.egress.len())
            .sum()
    }
}

fn edge_text(key: &EdgeKey) -> String {
    format!(
        "{} -> {} {}/{}",
        key.client, key.server, key.protocol, key.port
    )
}

fn cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}/32"),
        IpAddr::V6(ip) => format!("{ip}/128"),
    }
}

pub(crate) fn is_dns(key: &EdgeKey) -> bool {
    key.port == 53 && matches!(key.protocol.name(), Some("UDP" | "TCP"))
}

/// `value` in decimal, without the formatting machinery: ports go into every
/// rule of every policy and every allowed line.
fn push_decimal(text: &mut String, value: u16) {
    let mut digits = [0u8; 5];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        // A digit: `rest % 10` is below 10.
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for digit in &digits[start..] {
        text.push(char::from(*digit));
    }
}

/// A DNS-1123 name for a workload's policy: `allow-<kind>-<name>`, shortened
/// with a hash when too long.
pub fn policy_name(workload: &WorkloadRef) -> String {
    let name = format!(
        "allow-{}-{}",
        workload.kind.to_ascii_lowercase(),
        workload.name
    );
    if name.len() <= 253 {
        return name;
    }
    let hash = crc32fast::hash(name.as_bytes());
    let cut = (0..=244)
        .rev()
        .find(|&index| name.is_char_boundary(index))
        .unwrap_or(0);
    format!("{}-{hash:08x}", &name[..cut])
}

/// Sorted, distinct ports as port entries: a run of at least
/// [`ENDPORT_MIN_RUN`] consecutive ports of one protocol becomes a range.
pub(crate) fn port_ranges(ports: impl IntoIterator<Item = (Protocol, u16)>) -> Vec<PortSpec> {
    let mut specs = Vec::new();
    // Protocol, first and last port of the current run.
    let mut run: Option<(Protocol, u16, u16)> = None;
    for (protocol, port) in ports {
        match &mut run {
            Some((run_protocol, _, last))
                if *run_protocol == protocol && last.checked_add(1) == Some(port) =>
            {
                *last = port;
            }
            _ => {
                if let Some(done) = run.replace((protocol, port, port)) {
                    push_run(&mut specs, done);
                }
            }
        }
    }
    if let Some(done) = run {
        push_run(&mut specs, done);
    }
    specs
}

fn push_run(specs: &mut Vec<PortSpec>, (protocol, first, last): (Protocol, u16, u16)) {
    if usize::from(last - first) + 1 >= ENDPORT_MIN_RUN {
        specs.push(PortSpec {
            protocol,
            port: first,
            end_port: Some(last),
        });
    } else {
        specs.extend((first..=last).map(|port| PortSpec {
            protocol,
            port,
            end_port: None,
        }));
    }
}

fn peer_text(peer: &PeerSpec) -> String {
    match peer {
        PeerSpec::Pods { namespace, labels } => {
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            format!("{namespace} pods {}", labels.join(","))
        }
        PeerSpec::Cidr(cidr) => cidr.clone(),
        PeerSpec::Entity { entity, cidr } => format!("{cidr} ({entity})"),
        PeerSpec::NodeLocalResolver(cidr) => format!("{cidr} (node-local DNS)"),
        PeerSpec::Fqdn(cilium::FqdnSelector::MatchName(name)) => format!("name {name}"),
        PeerSpec::Fqdn(cilium::FqdnSelector::MatchPattern(pattern)) => {
            format!("pattern {pattern}")
        }
    }
}

/// Proposes policies for `graph` in `cluster`.
pub fn propose(graph: &Graph, cluster: &ClusterView, options: &GenerateOptions) -> Proposal {
    propose::Proposer::new(graph, cluster, options).propose()
}

fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY.0.to_owned(),
            MANAGED_BY.1.to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

fn match_labels(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: (!labels.is_empty()).then(|| labels.clone()),
        match_expressions: None,
    }
}

/// The peer as a NetworkPolicy peer; `None` for DNS names, which
/// NetworkPolicy cannot say ([`network_rules`] leaves them out).
pub(crate) fn network_peer(peer: &PeerSpec, namespace: &str) -> Option<NetworkPolicyPeer> {
    match peer {
        PeerSpec::Pods {
            namespace: peer_namespace,
            labels,
        } => Some(NetworkPolicyPeer {
            // Another namespace: both selectors in one peer, so they AND.
            namespace_selector: (**peer_namespace != *namespace).then(|| {
                match_labels(&BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    peer_namespace.to_string(),
                )]))
            }),
            pod_selector: Some(match_labels(labels)),
            ip_block: None,
        }),
        PeerSpec::Cidr(cidr)
        | PeerSpec::Entity { cidr, .. }
        | PeerSpec::NodeLocalResolver(cidr) => Some(NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        }),
        PeerSpec::Fqdn(_) => None,
    }
}

pub(crate) fn network_ports(ports: &[PortSpec]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(
            |PortSpec {
                 protocol,
                 port,
                 end_port,
             }| NetworkPolicyPort {
                protocol: Some(protocol.to_string()),
                port: Some(IntOrString::Int(i32::from(*port))),
                end_port: end_port.map(i32::from),
            },
        )
        .collect()
}

/// The namespace's default deny, as rendered less its content hash
/// annotation.
pub fn default_deny(namespace: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: metadata(namespace, "default-deny"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: None,
            egress: None,
        }),
    }
}

/// The rules as NetworkPolicy can say them: without DNS names (the proposer
/// makes those for the Cilium format only), and without a rule left with no
/// peer, which in NetworkPolicy would allow every peer.
pub(crate) fn network_rules(rules: &[RuleSpec]) -> std::borrow::Cow<'_, [RuleSpec]> {
    let named = |peer: &PeerSpec| matches!(peer, PeerSpec::Fqdn(_));
    if !rules.iter().flat_map(|rule| &rule.peers).any(named) {
        return std::borrow::Cow::Borrowed(rules);
    }
    std::borrow::Cow::Owned(
        rules
            .iter()
            .map(|rule| RuleSpec {
                peers: rule
                    .peers
                    .iter()
                    .filter(|peer| !named(peer))
                    .cloned()
                    .collect(),
                ports: rule.ports.clone(),
            })
            .filter(|rule| !rule.peers.is_empty())
            .collect(),
    )
}

/// A workload's NetworkPolicy, as rendered less its content hash annotation.
pub fn network_policy(policy: &WorkloadPolicy) -> NetworkPolicy {
    let WorkloadPolicy {
        workload,
        name,
        selection,
        ingress,
        egress,
    } = policy;
    let namespace = &workload.namespace;
    let (ingress, egress) = (network_rules(ingress), network_rules(egress));
    NetworkPolicy {
        metadata: metadata(namespace, name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(&selection.labels)),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: (!ingress.is_empty()).then(|| {
                ingress
                    .iter()
                    .map(|rule| NetworkPolicyIngressRule {
                        from: Some(
                            rule.peers
                                .iter()
                                .filter_map(|peer| network_peer(peer, namespace))
                                .collect(),
                        ),
                        ports: Some(network_ports(&rule.ports)),
                    })
                    .collect()
            }),
            egress: (!egress.is_empty()).then(|| {
                egress
                    .iter()
                    .map(|rule| NetworkPolicyEgressRule {
                        to: Some(
                            rule.peers
                                .iter()
                                .filter_map(|peer| network_peer(peer, namespace))
                                .collect(),
                        ),
                        ports: Some(network_ports(&rule.ports)),
                    })
                    .collect()
            }),
        }),
    }
}

fn cilium_metadata(namespace: &str, name: &str) -> cilium::Metadata {
    cilium::Metadata {
        annotations: None,
        labels: Some(BTreeMap::from([(
            MANAGED_BY.0.to_owned(),
            MANAGED_BY.1.to_owned(),
        )])),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
    }
}

fn cilium_selector(labels: &BTreeMap<String, String>) -> cilium::Selector {
    cilium::Selector {
        match_labels: (!labels.is_empty()).then(|| labels.clone()),
        match_expressions: None,
    }
}

/// `values` as the `from*` field of an ingress rule or the `to*` field of an
/// egress one: (from, to).
fn sides<T>(ingress: bool, values: Vec<T>) -> (Option<Vec<T>>, Option<Vec<T>>) {
    if ingress {
        (Some(values), None)
    } else {
        (None, Some(values))
    }
}

/// Whether a rule's ports are those of DNS: TCP and UDP 53.
fn is_dns_ports(ports: &[PortSpec]) -> bool {
    let dns = |protocol: u8| PortSpec {
        protocol: Protocol(protocol),
        port: 53,
        end_port: None,
    };
    ports == [dns(6), dns(17)]
}

/// Whether a policy names DNS names (`toFQDNs`): its DNS rules then go
/// through Cilium's DNS proxy, which learns the addresses from the answers.
fn has_fqdns(policy: &WorkloadPolicy) -> bool {
    policy
        .egress
        .iter()
        .flat_map(|rule| &rule.peers)
        .any(|peer| matches!(peer, PeerSpec::Fqdn(_)))
}

/// The port rule of a Cilium rule; `dns_proxy` adds the DNS rule that
/// sends the queries through Cilium's proxy. Its pattern is `*`: the pod
/// still resolves every other name (in-cluster Services among them), and
/// the proxy has to see those answers too; what may be reached is what
/// `toFQDNs` names.
fn cilium_ports(ports: &[PortSpec], dns_proxy: bool) -> cilium::PortRule {
    cilium::PortRule {
        ports: ports
            .iter()
            .map(
                |PortSpec {
                     protocol,
                     port,
                     end_port,
                 }| cilium::Port {
                    port: port.to_string(),
                    end_port: *end_port,
                    protocol: protocol.to_string(),
                },
            )
            .collect(),
        rules: dns_proxy.then(|| cilium::L7Rules {
            dns: vec![cilium::FqdnSelector::MatchPattern("*".to_owned())],
        }),
    }
}

/// One RuleSpec as Cilium rules: one per kind of peer, endpoints, then
/// CIDRs, then entities (sorted, once each), then DNS names.
fn cilium_rules(rules: &[RuleSpec], ingress: bool, fqdns: bool) -> Vec<cilium::Rule> {
    let mut out = Vec::new();
    for RuleSpec { peers, ports } in rules {
        let to_ports = Some(vec![cilium_ports(
            ports,
            fqdns && !ingress && is_dns_ports(ports),
        )]);
        let (mut endpoints, mut cidrs, mut entities) = (Vec::new(), Vec::new(), BTreeSet::new());
        let mut names = Vec::new();
        for peer in peers {
            match peer {
                PeerSpec::Pods { namespace, labels } => {
                    let mut labels = BTreeMap::clone(labels);
                    labels.insert(
                        yaml::CILIUM_NAMESPACE_LABEL.to_owned(),
                        namespace.to_string(),
                    );
                    endpoints.push(cilium_selector(&labels));
                }
                PeerSpec::Cidr(cidr) => cidrs.push(cidr.clone()),
                PeerSpec::Entity { entity, .. } => {
                    entities.insert(entity.clone());
                }
                PeerSpec::NodeLocalResolver(cidr) => {
                    let (cidr, entity) = resolver::cilium_node_local(cidr);
                    cidrs.push(cidr.to_owned());
                    entities.insert(entity.to_owned());
                }
                PeerSpec::Fqdn(selector) => names.push(selector.clone()),
            }
        }
        // One rule per kind of peer, on the side the direction names.
        let rule = || cilium::Rule {
            to_ports: to_ports.clone(),
            ..cilium::Rule::default()
        };
        if !endpoints.is_empty() {
            let (from_endpoints, to_endpoints) = sides(ingress, endpoints);
            out.push(cilium::Rule {
                from_endpoints,
                to_endpoints,
                ..rule()
            });
        }
        if !cidrs.is_empty() {
            let (from_cidr, to_cidr) = sides(ingress, cidrs);
            out.push(cilium::Rule {
                from_cidr,
                to_cidr,
                ..rule()
            });
        }
        if !entities.is_empty() {
            let (from_entities, to_entities) = sides(ingress, entities.into_iter().collect());
            out.push(cilium::Rule {
                from_entities,
                to_entities,
                ..rule()
            });
        }
        // Names are egress only (the proposer makes them for egress only).
        if !names.is_empty() && !ingress {
            out.push(cilium::Rule {
                to_fqdns: Some(names),
                ..rule()
            });
        }
    }
    out
}

fn cilium_default_deny(namespace: &str) -> cilium::Policy {
    cilium::Policy {
        api_version: "cilium.io/v2".to_owned(),
        kind: "CiliumNetworkPolicy".to_owned(),
        metadata: cilium_metadata(namespace, "default-deny"),
        spec: Some(cilium::Spec {
            endpoint_selector: cilium::Selector::default(),
            // An empty rule in a section puts the endpoints in default deny
            // for that direction and allows nothing.
            ingress: Some(vec![cilium::Rule::default()]),
            egress: Some(vec![cilium::Rule::default()]),
            ..cilium::Spec::default()
        }),
        specs: None,
    }
}

/// A workload's policy as a CiliumNetworkPolicy (less its content hash).
pub fn cilium_policy(policy: &WorkloadPolicy) -> cilium::Policy {
    let WorkloadPolicy {
        workload,
        name,
        selection,
        ingress,
        egress,
    } = policy;
    let fqdns = has_fqdns(policy);
    cilium::Policy {
        api_version: "cilium.io/v2".to_owned(),
        kind: "CiliumNetworkPolicy".to_owned(),
        metadata: cilium_metadata(&workload.namespace, name),
        spec: Some(cilium::Spec {
            endpoint_selector: cilium_selector(&selection.labels),
            ingress: (!ingress.is_empty()).then(|| cilium_rules(ingress, true, false)),
            egress: (!egress.is_empty()).then(|| cilium_rules(egress, false, fqdns)),
            ..cilium::Spec::default()
        }),
        specs: None,
    }
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    // Serializing these types cannot fail: no maps with non-string keys.
    yaml_serde::to_string(value).unwrap_or_else(|error| format!("# cannot serialize: {error}\n"))
}

/// The proposal as files: name → content, with a `kustomization.yaml`.
pub fn render(proposal: &Proposal, format: PolicyFormat) -> BTreeMap<String, String> {
    rendered_files(proposal, format).collect()
}

/// The names of the proposal's policy files (without `kustomization.yaml`).
pub fn file_names(proposal: &Proposal) -> BTreeSet<String> {
    let denies = proposal
        .namespaces
        .iter()
        .map(|namespace| deny_file_name(namespace));
    let policies = proposal.policies.iter().map(policy_file_name);
    denies.chain(policies).collect()
}

fn deny_file_name(namespace: &str) -> String {
    format!("{namespace}.default-deny.yaml")
}

fn policy_file_name(policy: &WorkloadPolicy) -> String {
    format!("{}.{}.yaml", policy.workload.namespace, policy.name)
}

/// [`render`]'s files one at a time, made as they are asked for, so that an
/// export writes each without holding them all: the default denies, the
/// policies (a later file of the same name replaces an earlier one), and
/// `kustomization.yaml`.
pub fn rendered_files(
    proposal: &Proposal,
    format: PolicyFormat,
) -> impl Iterator<Item = (String, String)> + '_ {
    let kustomization = std::iter::once_with(|| {
        let names = file_names(proposal);
        (
            "kustomization.yaml".to_owned(),
            kustomization(names.iter().map(String::as_str)),
        )
    });
    rendered_policies(proposal, format).chain(kustomization)
}

/// [`rendered_files`] without `kustomization.yaml`.
pub fn rendered_policies(
    proposal: &Proposal,
    format: PolicyFormat,
) -> impl Iterator<Item = (String, String)> + '_ {
    // Each document is written into a buffer kept from one to the next,
    // then copied out at its exact size.
    let mut scratch = String::new();
    let denies = proposal.namespaces.iter().map(move |namespace| {
        let text = deny_yaml(namespace, format, &mut scratch);
        (deny_file_name(namespace), text)
    });
    let mut scratch = String::new();
    let policies = proposal.policies.iter().map(move |policy| {
        let text = policy_yaml(policy, format, &mut scratch);
        (policy_file_name(policy), text)
    });
    denies.chain(policies)
}

/// A `kustomization.yaml` whose resources are `names`, in their order.
pub fn kustomization<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for name in names {
        text.push_str("- ");
        text.push_str(name);
        text.push('\n');
    }
    text
}

/// A namespace's default deny: written directly when that gives what the
/// serializer would, else through it.
fn deny_yaml(namespace: &str, format: PolicyFormat, scratch: &mut String) -> String {
    let direct = match format {
        PolicyFormat::Networkpolicy => yaml::default_deny(scratch, namespace),
        PolicyFormat::Cilium => yaml::cilium_default_deny(scratch, namespace),
    };
    if direct {
        // At its exact size: the scratch buffer has room to spare.
        return scratch.as_str().to_owned();
    }
    serialized_deny(namespace, format)
}

/// `object` through the serializer, with its content hash annotation: the
/// hash of the document as serialized without it.
fn to_annotated_yaml<T: Serialize>(
    mut object: T,
    metadata: impl FnOnce(&mut T) -> &mut ObjectMeta,
) -> String {
    let hash = content_hash::annotation_value(&to_yaml(&object));
    metadata(&mut object).annotations = Some(BTreeMap::from([(
        content_hash::CONTENT_HASH_ANNOTATION.to_owned(),
        hash,
    )]));
    to_yaml(&object)
}

/// A CiliumNetworkPolicy through the serializer, with its content hash
/// annotation, as [`to_annotated_yaml`].
fn to_annotated_cilium(mut policy: cilium::Policy) -> String {
    let hash = content_hash::annotation_value(&to_yaml(&policy));
    policy.metadata.annotations = Some(BTreeMap::from([(
        content_hash::CONTENT_HASH_ANNOTATION.to_owned(),
        hash,
    )]));
    to_yaml(&policy)
}

/// A namespace's default deny as the serializer writes it.
fn serialized_deny(namespace: &str, format: PolicyFormat) -> String {
    match format {
        PolicyFormat::Networkpolicy => {
            to_annotated_yaml(default_deny(namespace), |policy| &mut policy.metadata)
        }
        PolicyFormat::Cilium => to_annotated_cilium(cilium_default_deny(namespace)),
    }
}

/// A workload's policy as the serializer writes it.
fn serialized_policy(policy: &WorkloadPolicy, format: PolicyFormat) -> String {
    match format {
        PolicyFormat::Networkpolicy => {
            to_annotated_yaml(network_policy(policy), |policy| &mut policy.metadata)
        }
        PolicyFormat::Cilium => to_annotated_cilium(cilium_policy(policy)),
    }
}

/// A workload's policy, as [`deny_yaml`] writes a default deny.
fn policy_yaml(policy: &WorkloadPolicy, format: PolicyFormat, scratch: &mut String) -> String {
    let direct = match format {
        PolicyFormat::Networkpolicy => yaml::network_policy(scratch, policy),
        PolicyFormat::Cilium => yaml::cilium_policy(scratch, policy),
    };
    if direct {
        return scratch.as_str().to_owned();
    }
    serialized_policy(policy, format)
}

#[cfg(test)]
mod tests;
