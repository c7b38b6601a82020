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
//! - DNS: a workload seen querying port 53 gets UDP and TCP 53 to that resolver.
//! - Cross-tenant edges are left out (and listed) unless explicitly allowed.
//!   The platform namespaces (those that get no policies, `kube-system` by
//!   default) belong to no tenant: DNS to kube-system is not cross-tenant.
//!
//! Output is deterministic: the same graph and cluster give byte-identical
//! files.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
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
    cluster::{ClusterView, NAMESPACE_NAME_LABEL, Selection},
    graph::{EdgeKey, EdgeStats, Graph, Party, WorkloadRef},
};
use crate::{identity::PeerKind, record::Protocol};

/// Consecutive observed ports that become one `port`/`endPort` range.
pub const ENDPORT_MIN_RUN: usize = 3;

/// Namespaces left out of policy subjects by default (they stay peers).
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", "kube-node-lease"];

/// Label marking what flow-agent generated.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "flow-agent");

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
        }
    }
}

/// A peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerSpec {
    /// Pods of a namespace with these labels.
    Pods {
        /// Namespace.
        namespace: String,
        /// `matchLabels`.
        labels: BTreeMap<String, String>,
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

fn is_dns(key: &EdgeKey) -> bool {
    key.port == 53 && matches!(key.protocol.name(), Some("UDP" | "TCP"))
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

/// Ports as port entries: runs of consecutive ports become ranges.
fn port_specs(ports: &BTreeSet<(Protocol, u16)>) -> Vec<PortSpec> {
    let mut specs = Vec::new();
    let mut by_protocol: BTreeMap<Protocol, Vec<u16>> = BTreeMap::new();
    for (protocol, port) in ports {
        by_protocol.entry(*protocol).or_default().push(*port);
    }
    for (protocol, ports) in by_protocol {
        let mut start = 0;
        while start < ports.len() {
            let mut end = start;
            while end + 1 < ports.len() && ports[end + 1] == ports[end] + 1 {
                end += 1;
            }
            if end - start + 1 >= ENDPORT_MIN_RUN {
                specs.push(PortSpec {
                    protocol,
                    port: ports[start],
                    end_port: Some(ports[end]),
                });
            } else {
                specs.extend(ports[start..=end].iter().map(|port| PortSpec {
                    protocol,
                    port: *port,
                    end_port: None,
                }));
            }
            start = end + 1;
        }
    }
    specs
}

/// Peers with their ports as rules: peers with the same port set share a
/// rule, so a rule allows exactly the product of its peers and ports.
fn rules(peers: BTreeMap<PeerSpec, BTreeSet<(Protocol, u16)>>) -> Vec<RuleSpec> {
    let mut by_ports: BTreeMap<BTreeSet<(Protocol, u16)>, Vec<PeerSpec>> = BTreeMap::new();
    for (peer, ports) in peers {
        by_ports.entry(ports).or_default().push(peer);
    }
    let mut rules: Vec<RuleSpec> = by_ports
        .into_iter()
        .map(|(ports, peers)| RuleSpec {
            peers,
            ports: port_specs(&ports),
        })
        .collect();
    rules.sort();
    rules
}

#[derive(Default)]
struct Sides {
    ingress: BTreeMap<PeerSpec, BTreeSet<(Protocol, u16)>>,
    egress: BTreeMap<PeerSpec, BTreeSet<(Protocol, u16)>>,
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
    }
}

/// Proposes policies for `graph` in `cluster`.
pub fn propose(graph: &Graph, cluster: &ClusterView, options: &GenerateOptions) -> Proposal {
    let mut notes = BTreeSet::new();
    // Namespaces with a workload that takes part in a connection.
    let mut subjects: BTreeSet<String> = BTreeSet::new();
    let mut sides: BTreeMap<WorkloadRef, Sides> = BTreeMap::new();
    let mut selections: BTreeMap<WorkloadRef, Option<Selection>> = BTreeMap::new();
    let mut select = |workload: &WorkloadRef, notes: &mut BTreeSet<Note>| -> Option<Selection> {
        selections
            .entry(workload.clone())
            .or_insert_with(|| {
                let selection = cluster.selector(workload);
                match &selection {
                    None => {
                        notes.insert(Note::Unselectable(format!(
                            "{workload}: no labels to select its pods by"
                        )));
                    }
                    Some(selection) if !selection.also_selects.is_empty() => {
                        let others: Vec<String> = selection
                            .also_selects
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        notes.insert(Note::Overlap(format!(
                            "{workload}: its labels also select {}",
                            others.join(", ")
                        )));
                    }
                    Some(_) => {}
                }
                selection
            })
            .clone()
    };
    let subject = |workload: &WorkloadRef| {
        workload.kind != "Service"
            && !options.excluded_namespaces.contains(&workload.namespace)
            && !cluster
                .workload(workload)
                .is_some_and(|view| view.host_network)
    };
    let tenant = |party: &Party| -> Option<String> {
        let workload = party.workload()?;
        cluster
            .workload(workload)
            .and_then(|view| view.tenant.clone())
            .or_else(|| {
                graph
                    .workload(workload)
                    .and_then(|info| info.tenant.clone())
            })
    };

    for (key, stats) in graph.edges() {
        let EdgeKey {
            client,
            server,
            protocol,
            port,
        } = key;
        let EdgeStats { cross_tenant, .. } = stats;
        // Every namespace taking part gets a default deny, even when none of
        // its edges can be allowed: what it will block is in the review.
        for party in [client, server] {
            if let Party::Workload(workload) = party
                && subject(workload)
            {
                subjects.insert(workload.namespace.clone());
            }
        }
        if !matches!(protocol.name(), Some("TCP" | "UDP" | "SCTP")) || *port == 0 {
            notes.insert(Note::Unexpressible(format!(
                "{}: NetworkPolicy allows {} only together with every other protocol",
                edge_text(key),
                protocol
            )));
            continue;
        }
        let platform = |party: &Party| {
            party
                .workload()
                .is_some_and(|workload| options.excluded_namespaces.contains(&workload.namespace))
        };
        let crossing = !platform(client)
            && !platform(server)
            && (*cross_tenant
                || matches!((tenant(client), tenant(server)), (Some(a), Some(b)) if a != b));
        if crossing {
            if !options.allow_cross_tenant {
                notes.insert(Note::CrossTenantExcluded(edge_text(key)));
                continue;
            }
            notes.insert(Note::CrossTenantIncluded(edge_text(key)));
        }
        if client.workload().is_none() || server.workload().is_none() {
            notes.insert(Note::External(edge_text(key)));
        }
        let ports: BTreeSet<(Protocol, u16)> = if is_dns(key) {
            [(Protocol(6), 53), (Protocol(17), 53)].into()
        } else {
            [(*protocol, *port)].into()
        };
        // What each end looks like as the other's peer.
        let mut as_peer = |party: &Party, notes: &mut BTreeSet<Note>| -> Option<PeerSpec> {
            match party {
                Party::Address { ip, kind } => Some(match kind {
                    PeerKind::KubeApiserver => PeerSpec::Entity {
                        entity: "kube-apiserver".to_owned(),
                        cidr: cidr(*ip),
                    },
                    PeerKind::Host => PeerSpec::Entity {
                        entity: "host".to_owned(),
                        cidr: cidr(*ip),
                    },
                    PeerKind::RemoteNode if options.format == PolicyFormat::Cilium => {
                        notes.insert(Note::Unselectable(format!(
                            "{}: a node's address; Cilium matches it by toCIDR/fromCIDR only with policy-cidr-match-mode=nodes (otherwise allow the remote-node entity by hand, which admits every node)",
                            edge_text(key)
                        )));
                        PeerSpec::Cidr(cidr(*ip))
                    }
                    _ => PeerSpec::Cidr(cidr(*ip)),
                }),
                Party::Workload(workload) if workload.kind == "Service" => {
                    notes.insert(Note::Unselectable(format!(
                        "{}: the Service's backends were not told apart; allow its pods by hand",
                        edge_text(key)
                    )));
                    None
                }
                Party::Workload(workload)
                    if cluster
                        .workload(workload)
                        .is_some_and(|view| view.host_network) =>
                {
                    notes.insert(Note::Unselectable(format!(
                        "{}: {workload} uses the node's network; NetworkPolicy cannot select it",
                        edge_text(key)
                    )));
                    None
                }
                Party::Workload(workload) => {
                    select(workload, notes).map(|selection| PeerSpec::Pods {
                        namespace: workload.namespace.clone(),
                        labels: selection.labels,
                    })
                }
            }
        };
        let client_peer = as_peer(client, &mut notes);
        let server_peer = as_peer(server, &mut notes);
        if let (Party::Workload(workload), Some(peer)) = (client, &server_peer)
            && subject(workload)
        {
            sides
                .entry(workload.clone())
                .or_default()
                .egress
                .entry(peer.clone())
                .or_default()
                .extend(ports.iter().copied());
        }
        if let (Party::Workload(workload), Some(peer)) = (server, &client_peer)
            && subject(workload)
        {
            sides
                .entry(workload.clone())
                .or_default()
                .ingress
                .entry(peer.clone())
                .or_default()
                .extend(ports.iter().copied());
        }
    }

    let mut policies = Vec::new();
    let mut allowed = Vec::new();
    for (workload, Sides { ingress, egress }) in sides {
        let Some(selection) = select(&workload, &mut notes) else {
            continue;
        };
        for (direction, peers) in [("ingress from", &ingress), ("egress to", &egress)] {
            for (peer, ports) in peers {
                for (protocol, port) in ports {
                    allowed.push(format!(
                        "{workload} {direction} {} {protocol}/{port}",
                        peer_text(peer)
                    ));
                }
            }
        }
        policies.push(WorkloadPolicy {
            name: policy_name(&workload),
            workload,
            selection,
            ingress: rules(ingress),
            egress: rules(egress),
        });
    }
    allowed.sort();
    Proposal {
        namespaces: subjects.into_iter().collect(),
        policies,
        notes: notes.into_iter().collect(),
        allowed,
        edges: graph.len(),
    }
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

fn network_peer(peer: &PeerSpec, namespace: &str) -> NetworkPolicyPeer {
    match peer {
        PeerSpec::Pods {
            namespace: peer_namespace,
            labels,
        } => NetworkPolicyPeer {
            // Another namespace: both selectors in one peer, so they AND.
            namespace_selector: (peer_namespace != namespace).then(|| {
                match_labels(&BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    peer_namespace.clone(),
                )]))
            }),
            pod_selector: Some(match_labels(labels)),
            ip_block: None,
        },
        PeerSpec::Cidr(cidr) | PeerSpec::Entity { cidr, .. } => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        },
    }
}

fn network_ports(ports: &[PortSpec]) -> Vec<NetworkPolicyPort> {
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

/// The namespace's default deny.
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

/// A workload's NetworkPolicy.
pub fn network_policy(policy: &WorkloadPolicy) -> NetworkPolicy {
    let WorkloadPolicy {
        workload,
        name,
        selection,
        ingress,
        egress,
    } = policy;
    let namespace = &workload.namespace;
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
                                .map(|peer| network_peer(peer, namespace))
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
                                .map(|peer| network_peer(peer, namespace))
                                .collect(),
                        ),
                        ports: Some(network_ports(&rule.ports)),
                    })
                    .collect()
            }),
        }),
    }
}

/// CiliumNetworkPolicy, as far as the generator uses it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CiliumPolicy {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: CiliumSpec,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CiliumSpec {
    endpoint_selector: LabelSelector,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress: Option<Vec<CiliumRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<Vec<CiliumRule>>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct CiliumRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    from_cidr: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    to_cidr: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_entities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_entities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_ports: Option<Vec<CiliumPorts>>,
}

#[derive(Clone, Debug, Serialize)]
struct CiliumPorts {
    ports: Vec<CiliumPort>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CiliumPort {
    port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_port: Option<u16>,
    protocol: String,
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

fn cilium_rules(rules: &[RuleSpec], ingress: bool) -> Vec<CiliumRule> {
    let mut out = Vec::new();
    for RuleSpec { peers, ports } in rules {
        let to_ports = Some(vec![CiliumPorts {
            ports: ports
                .iter()
                .map(
                    |PortSpec {
                         protocol,
                         port,
                         end_port,
                     }| CiliumPort {
                        port: port.to_string(),
                        end_port: *end_port,
                        protocol: protocol.to_string(),
                    },
                )
                .collect(),
        }]);
        let (mut endpoints, mut cidrs, mut entities) = (Vec::new(), Vec::new(), BTreeSet::new());
        for peer in peers {
            match peer {
                PeerSpec::Pods { namespace, labels } => {
                    let mut labels = labels.clone();
                    labels.insert(
                        "k8s:io.kubernetes.pod.namespace".to_owned(),
                        namespace.clone(),
                    );
                    endpoints.push(match_labels(&labels));
                }
                PeerSpec::Cidr(cidr) => cidrs.push(cidr.clone()),
                PeerSpec::Entity { entity, .. } => {
                    entities.insert(entity.clone());
                }
            }
        }
        // One rule per kind of peer, on the side the direction names.
        let rule = || CiliumRule {
            to_ports: to_ports.clone(),
            ..CiliumRule::default()
        };
        if !endpoints.is_empty() {
            let (from_endpoints, to_endpoints) = sides(ingress, endpoints);
            out.push(CiliumRule {
                from_endpoints,
                to_endpoints,
                ..rule()
            });
        }
        if !cidrs.is_empty() {
            let (from_cidr, to_cidr) = sides(ingress, cidrs);
            out.push(CiliumRule {
                from_cidr,
                to_cidr,
                ..rule()
            });
        }
        if !entities.is_empty() {
            let (from_entities, to_entities) = sides(ingress, entities.into_iter().collect());
            out.push(CiliumRule {
                from_entities,
                to_entities,
                ..rule()
            });
        }
    }
    out
}

fn cilium_default_deny(namespace: &str) -> CiliumPolicy {
    CiliumPolicy {
        api_version: "cilium.io/v2",
        kind: "CiliumNetworkPolicy",
        metadata: metadata(namespace, "default-deny"),
        spec: CiliumSpec {
            endpoint_selector: LabelSelector::default(),
            // An empty rule in a section puts the endpoints in default deny
            // for that direction and allows nothing.
            ingress: Some(vec![CiliumRule::default()]),
            egress: Some(vec![CiliumRule::default()]),
        },
    }
}

fn cilium_policy(policy: &WorkloadPolicy) -> CiliumPolicy {
    let WorkloadPolicy {
        workload,
        name,
        selection,
        ingress,
        egress,
    } = policy;
    CiliumPolicy {
        api_version: "cilium.io/v2",
        kind: "CiliumNetworkPolicy",
        metadata: metadata(&workload.namespace, name),
        spec: CiliumSpec {
            endpoint_selector: match_labels(&selection.labels),
            ingress: (!ingress.is_empty()).then(|| cilium_rules(ingress, true)),
            egress: (!egress.is_empty()).then(|| cilium_rules(egress, false)),
        },
    }
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    // Serializing these types cannot fail: no maps with non-string keys.
    yaml_serde::to_string(value).unwrap_or_else(|error| format!("# cannot serialize: {error}\n"))
}

/// The proposal as files: name → content, with a `kustomization.yaml`.
pub fn render(proposal: &Proposal, format: PolicyFormat) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for namespace in &proposal.namespaces {
        let text = match format {
            PolicyFormat::Networkpolicy => to_yaml(&default_deny(namespace)),
            PolicyFormat::Cilium => to_yaml(&cilium_default_deny(namespace)),
        };
        files.insert(format!("{namespace}.default-deny.yaml"), text);
    }
    for policy in &proposal.policies {
        let text = match format {
            PolicyFormat::Networkpolicy => to_yaml(&network_policy(policy)),
            PolicyFormat::Cilium => to_yaml(&cilium_policy(policy)),
        };
        files.insert(
            format!("{}.{}.yaml", policy.workload.namespace, policy.name),
            text,
        );
    }
    let mut kustomization = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for name in files.keys() {
        kustomization.push_str(&format!("- {name}\n"));
    }
    files.insert("kustomization.yaml".to_owned(), kustomization);
    files
}

#[cfg(test)]
mod tests;
