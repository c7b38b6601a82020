//! `flow-agent policy check`: every observed connection that a set of
//! NetworkPolicies and Cilium policies would deny, for a GitOps pipeline to
//! gate a pull request on. An address's names (those the pod resolved to
//! it, on the record or learned on the edge) are what Cilium's `toFQDNs`
//! is judged against.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;

use super::{
    cluster::{ClusterView, PodView},
    evaluate::{Evaluator, PolicySet, Subject},
    graph::{Graph, Party, WorkloadRef},
};
use flow_model::{
    identity::{Identity, IdentityCache, PeerKind, Workload},
    record::{Endpoint, FlowRecord, Protocol, Timestamp},
};

/// A connection the policies would deny.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The client: `namespace/pod` or an address.
    pub source: String,
    /// The server.
    pub destination: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// Which side refuses: `egress of ns/pod`, `ingress of ns/pod`.
    pub blocked_by: Vec<String>,
    /// Records of it.
    pub records: u64,
    /// Last seen.
    pub last_seen: Timestamp,
}

/// The result of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Records read.
    pub records: usize,
    /// Request records checked (replies are allowed with their connection).
    pub checked: usize,
    /// Records that could not be checked: no identity, or a Service address
    /// that was never translated to a pod.
    pub unresolved: usize,
    /// Request records of protocols without ports (ICMP): what
    /// NetworkPolicy does with them is up to the network plugin, so they are
    /// counted here, not judged.
    pub unexpressible: usize,
    /// Checked records the policies allow.
    pub allowed: usize,
    /// Distinct denied connections (by pods, protocol and port), sorted.
    pub denied: Vec<Denial>,
}

impl CheckReport {
    /// Denied records.
    pub fn denied_records(&self) -> u64 {
        self.denied.iter().map(|denial| denial.records).sum()
    }
}

/// How a record's end is seen by policies.
enum End {
    Pod(usize),
    /// A Service address not translated to one backend: any pod of the
    /// backends' workload may have served it.
    Backends(Vec<usize>),
    Address {
        ip: std::net::IpAddr,
        kind: PeerKind,
    },
    Unresolved,
}

fn end_of(endpoint: &Endpoint, cluster: &mut ClusterView) -> End {
    let Identity {
        kind,
        namespace,
        pod,
        workload,
        labels,
        ..
    } = &*endpoint.identity;
    match (kind, namespace, pod) {
        (Some(PeerKind::Pod), Some(namespace), Some(pod)) => {
            if let Some(index) = cluster.pod_index(namespace, pod) {
                return End::Pod(index);
            }
            let Workload { kind, name } = workload.clone().unwrap_or_else(|| Workload {
                kind: "Pod".to_owned(),
                name: pod.clone(),
            });
            End::Pod(cluster.add_pod(PodView {
                namespace: namespace.clone(),
                name: pod.clone(),
                labels: labels.clone(),
                ips: vec![endpoint.ip],
                ports: Vec::new(),
                host_network: false,
                workload: WorkloadRef {
                    namespace: namespace.clone(),
                    kind,
                    name,
                },
            }))
        }
        (Some(PeerKind::Pod), Some(namespace), None) => {
            let pods = workload
                .as_ref()
                .and_then(|Workload { kind, name }| {
                    cluster.workload(&WorkloadRef {
                        namespace: namespace.clone(),
                        kind: kind.clone(),
                        name: name.clone(),
                    })
                })
                .map(|view| view.pods.clone())
                .unwrap_or_default();
            if pods.is_empty() {
                End::Unresolved
            } else {
                End::Backends(pods)
            }
        }
        (Some(PeerKind::Service), _, _) | (None, _, _) => End::Unresolved,
        (Some(kind), _, _) => End::Address {
            ip: endpoint.ip,
            kind: *kind,
        },
    }
}

fn describe(pod: Option<usize>, endpoint: &Endpoint, cluster: &ClusterView) -> String {
    match pod {
        Some(index) => {
            let pod = &cluster.pods()[index];
            format!("{}/{}", pod.namespace, pod.name)
        }
        None => {
            let kind = endpoint.identity.kind.map_or("unknown", PeerKind::as_str);
            format!("{} ({kind})", endpoint.ip)
        }
    }
}

/// What the policies say about one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reply: allowed with its connection.
    Reply,
    /// An end cannot be checked.
    Unresolved,
    /// A protocol NetworkPolicy has no ports for (ICMP).
    Unexpressible,
    /// Allowed.
    Allowed,
    /// Denied: the ends as text and which sides refuse.
    Denied {
        /// The client.
        source: String,
        /// The server.
        destination: String,
        /// `egress of ...`, `ingress of ...`.
        blocked_by: Vec<String>,
        /// The destination's ingress refuses it (else the source's egress
        /// alone does).
        by_ingress: bool,
    },
}

/// A request to judge: a request record, or a learned edge.
struct Request<'a> {
    source: &'a Endpoint,
    destination: &'a Endpoint,
    protocol: Protocol,
    /// The server's port (the target port behind a Service).
    port: u16,
    /// A host address at the source is the destination pod's own node, whose
    /// traffic policies cannot block.
    resident_source: bool,
}

/// The outcome of each record under `policies`, adding the pods the view
/// lacks from the records' identities.
pub fn outcomes(
    records: &[FlowRecord],
    cluster: &mut ClusterView,
    policies: &PolicySet,
) -> Vec<Outcome> {
    let requests: Vec<Option<Request<'_>>> = records
        .iter()
        .map(|record| {
            (!record.is_reply && !record.is_outside_policy()).then(|| Request {
                source: &record.source,
                destination: &record.destination,
                protocol: record.protocol,
                port: record.server_port(),
                resident_source: record.destination.identity.node.as_deref()
                    == Some(record.node.as_str()),
            })
        })
        .collect();
    judge_all(&requests, cluster, policies)
}

/// The outcome of each request (`None`: a reply).
fn judge_all(
    requests: &[Option<Request<'_>>],
    cluster: &mut ClusterView,
    policies: &PolicySet,
) -> Vec<Outcome> {
    // Resolve every end first: the evaluator borrows the finished view.
    let resolved: Vec<Option<(End, End)>> = requests
        .iter()
        .map(|request| {
            request.as_ref().map(|request| {
                (
                    end_of(request.source, cluster),
                    end_of(request.destination, cluster),
                )
            })
        })
        .collect();
    let evaluator = Evaluator::with_set(cluster, policies);
    requests
        .iter()
        .zip(&resolved)
        .map(|(request, ends)| match (request, ends) {
            (Some(request), Some(ends)) => judge(&evaluator, cluster, request, ends),
            _ => Outcome::Reply,
        })
        .collect()
}

/// Each pod (or address, with its `names`) an end may be, with its pod
/// index.
fn candidates<'a>(
    end: &End,
    resident: bool,
    names: &'a [Arc<str>],
    cluster: &'a ClusterView,
) -> Vec<(Subject<'a>, Option<usize>)> {
    match end {
        End::Pod(index) => vec![(Subject::Pod(&cluster.pods()[*index]), Some(*index))],
        End::Backends(pods) => pods
            .iter()
            .map(|index| (Subject::Pod(&cluster.pods()[*index]), Some(*index)))
            .collect(),
        End::Address { ip, kind } => vec![(
            Subject::Address {
                ip: *ip,
                resident_node: *kind == PeerKind::Host && resident,
                kind: *kind,
                names,
            },
            None,
        )],
        End::Unresolved => Vec::new(),
    }
}

fn judge<'a>(
    evaluator: &Evaluator<'_>,
    cluster: &'a ClusterView,
    request: &Request<'a>,
    (source, destination): &(End, End),
) -> Outcome {
    if !matches!(request.protocol.name(), Some("TCP" | "UDP" | "SCTP")) {
        return Outcome::Unexpressible;
    }
    let froms = candidates(
        source,
        request.resident_source,
        &request.source.names,
        cluster,
    );
    let tos = candidates(destination, false, &request.destination.names, cluster);
    if froms.is_empty() || tos.is_empty() {
        return Outcome::Unresolved;
    }
    // Through an untranslated Service any backend may have served it:
    // allowed only when every one of them would be.
    for (from, from_pod) in &froms {
        for (to, to_pod) in &tos {
            let verdict = evaluator.check(*from, *to, request.protocol, request.port);
            if verdict.allowed() {
                continue;
            }
            let source = describe(*from_pod, request.source, cluster);
            let destination = describe(*to_pod, request.destination, cluster);
            let mut blocked_by = Vec::new();
            if !verdict.egress {
                blocked_by.push(format!("egress of {source}"));
            }
            if !verdict.ingress {
                blocked_by.push(format!("ingress of {destination}"));
            }
            return Outcome::Denied {
                source,
                destination,
                blocked_by,
                by_ingress: !verdict.ingress,
            };
        }
    }
    Outcome::Allowed
}

/// Checks every request record against `policies`.
pub fn check(
    records: &[FlowRecord],
    cluster: &mut ClusterView,
    policies: &PolicySet,
) -> CheckReport {
    let mut report = CheckReport {
        records: records.len(),
        ..CheckReport::default()
    };
    let mut denied: BTreeMap<(String, String, Protocol, u16), Denial> = BTreeMap::new();
    for (record, outcome) in records.iter().zip(outcomes(records, cluster, policies)) {
        match outcome {
            Outcome::Reply => {}
            Outcome::Unresolved => report.unresolved += 1,
            Outcome::Unexpressible => report.unexpressible += 1,
            Outcome::Allowed => {
                report.checked += 1;
                report.allowed += 1;
            }
            Outcome::Denied {
                source,
                destination,
                blocked_by,
                ..
            } => {
                report.checked += 1;
                let key = (
                    source.clone(),
                    destination.clone(),
                    record.protocol,
                    record.server_port(),
                );
                let entry = denied.entry(key).or_insert_with(|| Denial {
                    source,
                    destination,
                    protocol: record.protocol,
                    port: record.server_port(),
                    blocked_by,
                    records: 0,
                    last_seen: record.time,
                });
                entry.records += 1;
                entry.last_seen = entry.last_seen.max(record.time);
            }
        }
    }
    report.denied = denied.into_values().collect();
    report
}

/// A learned edge the policies would deny.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EdgeDenial {
    /// The client: `namespace/Kind/name` or an address and its kind.
    pub client: String,
    /// The server.
    pub server: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Server port.
    pub port: u16,
    /// Which side refuses, naming the first pod that does: `egress of
    /// ns/pod`, `ingress of ns/pod` (`ns/(name)` stands for a workload's pods
    /// the inventory does not list).
    pub blocked_by: Vec<String>,
    /// Connections the agents counted on it, at least one.
    pub connections: u64,
    /// Last seen.
    pub last_seen: Timestamp,
}

/// The result of checking learned edges (from agents or graph files).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EdgeCheckReport {
    /// Edges read.
    pub edges: usize,
    /// Edges judged.
    pub checked: usize,
    /// Edges with an end that cannot be judged: a Service whose backends
    /// were not told apart.
    pub unresolved: usize,
    /// Edges of protocols without ports (ICMP), counted apart as for records.
    pub unexpressible: usize,
    /// Judged edges the policies allow.
    pub allowed: usize,
    /// Denied edges, in the graph's order.
    pub denied: Vec<EdgeDenial>,
}

/// An edge's end as a request's end: a workload stands for every one of
/// its pods (all must be allowed), an address for itself.
fn edge_end(party: &Party, graph: &Graph) -> Endpoint {
    let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let (ip, identity) = match party {
        Party::Workload(workload) => {
            let info = graph.workload(workload);
            let kind = if workload.kind == "Service" {
                PeerKind::Service
            } else {
                PeerKind::Pod
            };
            let identity = Identity {
                kind: Some(kind),
                namespace: Some(workload.namespace.clone()),
                workload: Some(Workload {
                    kind: workload.kind.clone(),
                    name: workload.name.clone(),
                }),
                tenant: info.and_then(|info| info.tenant.clone()),
                labels: info.map(|info| info.labels.clone()).unwrap_or_default(),
                ..Identity::default()
            };
            (unspecified, identity)
        }
        Party::Address { ip, kind } => (
            *ip,
            Identity {
                kind: Some(*kind),
                ..Identity::default()
            },
        ),
    };
    Endpoint {
        ip,
        port: 0,
        identity: Arc::new(identity),
        service: None,
        names: Vec::new(),
    }
}

/// Checks every learned edge against `policies`, as a request between any
/// pod of its client and any pod of its server. The workloads the view
/// lacks are added with their learned labels.
pub fn check_edges(
    graph: &Graph,
    cluster: &mut ClusterView,
    policies: &PolicySet,
) -> EdgeCheckReport {
    cluster.add_graph(graph);
    // One end per party, not per edge: a workload is at the end of many.
    let mut ends: HashMap<&Party, Endpoint> = HashMap::new();
    for (key, _) in graph.edges() {
        for party in [&key.client, &key.server] {
            ends.entry(party).or_insert_with(|| edge_end(party, graph));
        }
    }
    // An address server with learned names stands for itself under those
    // names, edge by edge.
    let named: Vec<Option<Endpoint>> = graph
        .edges()
        .map(|(key, stats)| {
            (matches!(key.server, Party::Address { .. }) && !stats.names.is_empty()).then(|| {
                Endpoint {
                    names: stats
                        .names
                        .iter()
                        .map(|name| Arc::from(name.as_str()))
                        .collect(),
                    ..ends[&key.server].clone()
                }
            })
        })
        .collect();
    let requests: Vec<Option<Request<'_>>> = graph
        .edges()
        .zip(&named)
        .map(|((key, _), named)| {
            Some(Request {
                source: &ends[&key.client],
                destination: named.as_ref().unwrap_or(&ends[&key.server]),
                protocol: key.protocol,
                port: key.port,
                // An agent sees its node's own address as `host` only on
                // that node, so a host client reached a pod of its own node.
                resident_source: true,
            })
        })
        .collect();
    let mut report = EdgeCheckReport {
        edges: graph.len(),
        ..EdgeCheckReport::default()
    };
    for ((key, stats), outcome) in graph.edges().zip(judge_all(&requests, cluster, policies)) {
        match outcome {
            Outcome::Reply => {}
            Outcome::Unresolved => report.unresolved += 1,
            Outcome::Unexpressible => report.unexpressible += 1,
            Outcome::Allowed => {
                report.checked += 1;
                report.allowed += 1;
            }
            Outcome::Denied { blocked_by, .. } => {
                report.checked += 1;
                report.denied.push(EdgeDenial {
                    client: key.client.to_string(),
                    server: key.server.to_string(),
                    protocol: key.protocol,
                    port: key.port,
                    blocked_by,
                    connections: stats.connection_count(),
                    last_seen: stats.last_seen,
                });
            }
        }
    }
    report
}

/// Pods the monitor remembers before it starts its view afresh (pod churn).
const MONITOR_MAX_PODS: usize = 50_000;

/// How long the monitor keeps what it learned of pods and namespaces before
/// it asks the identity cache again (labels change).
const MONITOR_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Whose approved policy denies a flow: the namespace and tenant of the end
/// that refuses it (the destination when its ingress does, else the source),
/// empty when its identity has none. Namespaces are the cluster's, and a
/// namespace has one tenant at a time: few distinct scopes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViolationScope {
    /// Namespace.
    pub namespace: String,
    /// Tenant.
    pub tenant: String,
}

/// Monitor mode: marks records the approved policies would deny.
#[derive(Debug)]
pub struct Monitor {
    policies: PolicySet,
    cluster: ClusterView,
    built: std::time::Instant,
    violations: u64,
    /// Violations since start by whose policy denies them.
    by_scope: BTreeMap<ViolationScope, u64>,
}

impl Monitor {
    /// Monitors against `policies` (validated NetworkPolicies and Cilium
    /// policies).
    pub fn new(policies: PolicySet) -> Self {
        Self {
            policies,
            cluster: ClusterView::new(),
            built: std::time::Instant::now(),
            violations: 0,
            by_scope: BTreeMap::new(),
        }
    }

    /// Adds an end's pod as the identity cache knows it: all its labels (not
    /// only its workload's stable ones), its declared ports (named ports) and
    /// its namespace's labels (namespace selectors).
    fn learn_pod(&mut self, endpoint: &Endpoint, at: std::time::SystemTime, cache: &IdentityCache) {
        let Identity {
            kind: Some(PeerKind::Pod),
            namespace: Some(namespace),
            pod: Some(pod),
            workload,
            ..
        } = &*endpoint.identity
        else {
            return;
        };
        if self.cluster.pod_index(namespace, pod).is_some() {
            return;
        }
        let Some(info) = cache.pod_info_at(endpoint.ip, at) else {
            return;
        };
        if info.namespace != *namespace || info.name != *pod {
            return;
        }
        if let Some(labels) = cache.namespace_labels(namespace) {
            self.cluster.set_namespace_labels(namespace, labels);
        }
        let Workload { kind, name } = workload.clone().unwrap_or_else(|| Workload {
            kind: "Pod".to_owned(),
            name: pod.clone(),
        });
        self.cluster.add_pod(PodView {
            namespace: namespace.clone(),
            name: pod.clone(),
            labels: info.labels.clone(),
            ips: info.ips.clone(),
            ports: info.ports.clone(),
            host_network: info.host_network,
            workload: WorkloadRef {
                namespace: namespace.clone(),
                kind,
                name,
            },
        });
    }

    /// Policies loaded.
    pub fn policies(&self) -> usize {
        self.policies.len()
    }

    /// Violations since start.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// Violations since start by whose policy denies them; they add up to
    /// [`Monitor::violations`].
    pub fn violations_by_scope(&self) -> &BTreeMap<ViolationScope, u64> {
        &self.by_scope
    }

    /// Sets `violation` on each request record the policies would deny;
    /// returns the distinct violations (`source -> destination proto/port`
    /// and why) with their record counts, for the log.
    ///
    /// With the agent's identity cache, pods are judged by their full labels,
    /// declared ports and namespace labels; without, by what the records
    /// carry (workload labels, namespace name).
    pub fn mark(
        &mut self,
        records: &mut [FlowRecord],
        cache: Option<&IdentityCache>,
    ) -> BTreeMap<String, (String, u64)> {
        if self.cluster.pods().len() > MONITOR_MAX_PODS || self.built.elapsed() > MONITOR_REFRESH {
            self.cluster = ClusterView::new();
            self.built = std::time::Instant::now();
        }
        if let Some(cache) = cache {
            for record in records.iter().filter(|record| !record.is_reply) {
                self.learn_pod(&record.source, record.first_seen.0, cache);
                self.learn_pod(&record.destination, record.first_seen.0, cache);
            }
        }
        let outcomes = outcomes(records, &mut self.cluster, &self.policies);
        let mut distinct: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for (record, outcome) in records.iter_mut().zip(outcomes) {
            if let Outcome::Denied {
                source,
                destination,
                blocked_by,
                by_ingress,
            } = outcome
            {
                record.violation = true;
                self.violations += 1;
                let refusing = if by_ingress {
                    &record.destination
                } else {
                    &record.source
                };
                let Identity {
                    namespace, tenant, ..
                } = &*refusing.identity;
                *self
                    .by_scope
                    .entry(ViolationScope {
                        namespace: namespace.clone().unwrap_or_default(),
                        tenant: tenant.clone().unwrap_or_default(),
                    })
                    .or_insert(0) += 1;
                let key = format!(
                    "{source} -> {destination} {}/{}",
                    record.protocol,
                    record.server_port()
                );
                distinct
                    .entry(key)
                    .or_insert_with(|| (blocked_by.join(", "), 0))
                    .1 += 1;
            }
        }
        distinct
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use flow_model::record::Hook;

    use crate::generate::{GenerateOptions, PolicyFormat, propose, render};

    fn pod(ip: &str, port: u16, namespace: &str, name: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            identity: Arc::new(Identity {
                kind: Some(PeerKind::Pod),
                namespace: Some(namespace.into()),
                pod: Some(format!("{name}-1")),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: name.into(),
                }),
                tenant: Some("acme".into()),
                labels: [("app".to_owned(), name.to_owned())].into(),
                node: Some("n".into()),
                note: None,
            }),
            service: None,
            names: Vec::new(),
        }
    }

    fn record(source: Endpoint, destination: Endpoint, protocol: u8) -> FlowRecord {
        let time = Timestamp(SystemTime::now());
        FlowRecord {
            time,
            first_seen: time,
            source,
            destination,
            protocol: Protocol(protocol),
            icmp: None,
            packets: 1,
            bytes: 60,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "n".into(),
            cross_tenant: Some(false),
            new_connection: true,
            violation: false,
        }
    }

    /// web reaching Service api (10.96.0.5:80) without conntrack: the
    /// destination stays the Service address, identified as api's workload.
    fn through_service(target_port: u16) -> FlowRecord {
        let mut destination = pod("10.96.0.5", 80, "shop", "api");
        let mut identity = (*destination.identity).clone();
        identity.pod = None;
        destination.identity = Arc::new(identity);
        destination.service = Some(flow_model::identity::ServiceRef {
            namespace: "shop".into(),
            name: "api".into(),
            ip: "10.96.0.5".parse().unwrap(),
            port: 80,
            target_port: Some(target_port),
        });
        record(pod("10.0.0.1", 40_010, "shop", "web"), destination, 6)
    }

    #[test]
    fn an_untranslated_service_is_checked_on_every_backend_at_the_target_port() {
        let observed = vec![
            record(
                pod("10.0.0.1", 40_000, "shop", "web"),
                pod("10.0.0.2", 8080, "shop", "api"),
                6,
            ),
            through_service(8080),
        ];
        let mut graph = Graph::new();
        for record in &observed {
            graph.observe(record);
        }
        assert_eq!(graph.len(), 1, "both are web -> api TCP/8080");
        let mut cluster = ClusterView::new();
        cluster.add_graph(&graph);
        let files = render(
            &propose(&graph, &cluster, &GenerateOptions::default()),
            PolicyFormat::Networkpolicy,
        );
        let directory = tempfile::tempdir().unwrap();
        for (name, text) in &files {
            std::fs::write(directory.path().join(name), text).unwrap();
        }
        let policies = crate::evaluate::load_policy_set(directory.path()).unwrap();
        let report = check(&observed, &mut cluster, &policies);
        assert_eq!(
            (report.checked, report.allowed, report.unresolved),
            (2, 2, 0)
        );
        // The same Service leading to a port nobody allowed is denied at its
        // target port, named by the first backend that refuses (the view's
        // stand-in for api's pods, then api-1).
        let report = check(&[through_service(9090)], &mut cluster, &policies);
        assert_eq!((report.checked, report.allowed), (1, 0));
        let denial = &report.denied[0];
        assert_eq!(
            (denial.destination.as_str(), denial.port),
            ("shop/(api)", 9090)
        );
        // ICMP errors alone are never judged, not even on a port nobody
        // allowed: they belong to the connection they quote.
        let mut errors = record(
            pod("10.0.0.1", 40_020, "shop", "web"),
            pod("10.0.0.2", 9, "shop", "api"),
            17,
        );
        errors.icmp_errors = Some(flow_model::record::IcmpErrors {
            packets: 1,
            kinds: vec!["unreachable".into()],
        });
        let report = check(&[errors], &mut cluster, &policies);
        assert_eq!(
            (
                report.records,
                report.checked,
                report.allowed,
                report.denied.len()
            ),
            (1, 0, 0, 0)
        );
    }

    #[test]
    fn monitor_mode_judges_pods_by_the_identity_caches_labels_ports_and_namespaces() {
        use std::time::Duration;

        use flow_model::identity::{CacheEvent, IdentityConfig, inventory};

        // web (namespace front, labelled team=shop) reaches api's named port
        // `http` (8080). api's policy selects by a namespace label and a pod
        // label that no workload template carries, and names the port.
        let now = SystemTime::now();
        let started = humantime::format_rfc3339_seconds(now - Duration::from_secs(60));
        let pod = |namespace: &str, name: &str, ip: &str, labels: &str, ports: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, uid: {name}-uid, labels: {{{labels}}}}}\nspec:\n  nodeName: n\n  containers: [{{name: main, image: app{ports}}}]\nstatus:\n  phase: Running\n  startTime: \"{started}\"\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n"
            )
        };
        let inventory_text = [
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: front, labels: {team: shop}}\n"
                .to_owned(),
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: back}\n".to_owned(),
            pod(
                "front",
                "web-1",
                "10.0.0.1",
                "app: web, canary: \"yes\"",
                "",
            ),
            pod(
                "back",
                "api-1",
                "10.0.0.2",
                "app: api",
                ", ports: [{name: http, containerPort: 8080}]",
            ),
        ]
        .concat();
        let inventory = inventory::parse(&inventory_text, "test.yaml");
        assert!(inventory.errors.is_empty(), "{:?}", inventory.errors);
        let mut cache = IdentityCache::new(IdentityConfig {
            tenant_label: "tenant".to_owned(),
            node_name: "n".to_owned(),
            local_addresses: Vec::new(),
            grace: Duration::from_secs(60),
            platform_namespaces: flow_model::identity::platform_namespaces([]),
        });
        for object in inventory.objects {
            cache.apply(CacheEvent::Apply(object), now);
        }
        let policies_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            policies_dir.path().join("api.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api, namespace: back}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: shop}}\n      podSelector: {matchLabels: {canary: \"yes\"}}\n    ports: [{port: http}]\n",
        )
        .unwrap();
        let policies = crate::evaluate::load_policy_set(policies_dir.path()).unwrap();
        let endpoint = |ip: &str, port: u16| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            Endpoint {
                ip,
                port,
                identity: Arc::new(cache.identify(ip, now)),
                service: None,
                names: Vec::new(),
            }
        };
        let request = |port: u16| {
            let mut record = record(endpoint("10.0.0.1", 40_000), endpoint("10.0.0.2", port), 6);
            record.time = Timestamp(now);
            record.first_seen = Timestamp(now);
            record
        };
        assert_eq!(
            request(8080).destination.identity.pod.as_deref(),
            Some("api-1")
        );

        let mut monitor = Monitor::new(policies.clone());
        let mut records = vec![request(8080), request(9090)];
        let violations = monitor.mark(&mut records, Some(&cache));
        assert_eq!(
            records
                .iter()
                .map(|record| record.violation)
                .collect::<Vec<_>>(),
            [false, true],
            "{violations:?}"
        );
        assert_eq!(monitor.violations(), 1);
        assert_eq!(
            violations.keys().collect::<Vec<_>>(),
            ["front/web-1 -> back/api-1 TCP/9090"]
        );

        // Without the cache only the records' identities are known: neither
        // the namespace label nor the named port, so the allowed connection
        // looks like a violation.
        let mut blind = Monitor::new(policies);
        let mut records = vec![request(8080)];
        blind.mark(&mut records, None);
        assert!(records[0].violation);
    }

    #[test]
    fn monitor_counts_a_violation_against_the_namespace_whose_policy_refuses_it() {
        // shop's web may only reach data's db; data's db only takes shop's
        // api. web -> api is refused by web's egress alone (shop), api -> db
        // is allowed, web -> db by db's ingress (data).
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("policies.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}\n      podSelector: {matchLabels: {app: db}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: data}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}\n      podSelector: {matchLabels: {app: api}}\n",
        )
        .unwrap();
        let policies = crate::evaluate::load_policies(directory.path()).unwrap();
        let web = || pod("10.0.0.1", 40_000, "shop", "web");
        let api = |port| pod("10.0.0.2", port, "shop", "api");
        let db = || {
            let mut db = pod("10.0.1.1", 5432, "data", "db");
            let mut identity = (*db.identity).clone();
            identity.tenant = None;
            db.identity = Arc::new(identity);
            db
        };
        let mut records = vec![
            record(web(), api(8080), 6),
            record(web(), api(8080), 6),
            record(api(40_001), db(), 6),
            record(web(), db(), 6),
        ];
        let mut monitor = Monitor::new(policies.into());
        monitor.mark(&mut records, None);
        assert_eq!(
            records
                .iter()
                .map(|record| record.violation)
                .collect::<Vec<_>>(),
            [true, true, false, true]
        );
        let scope = |namespace: &str, tenant: &str| ViolationScope {
            namespace: namespace.into(),
            tenant: tenant.into(),
        };
        assert_eq!(
            monitor.violations_by_scope(),
            &BTreeMap::from([(scope("data", ""), 1), (scope("shop", "acme"), 2)])
        );
        assert_eq!(monitor.violations(), 3);
    }

    #[test]
    fn learned_edges_are_judged_for_every_pod_of_their_workloads() {
        let learned = |records: &[FlowRecord]| {
            let mut graph = Graph::new();
            for record in records {
                graph.observe(record);
            }
            graph
        };
        let observed = learned(&[
            record(
                pod("10.0.0.1", 40_000, "shop", "web"),
                pod("10.0.0.2", 8080, "shop", "api"),
                6,
            ),
            record(
                pod("10.0.0.2", 40_001, "shop", "api"),
                pod("10.0.1.1", 5432, "data", "db"),
                6,
            ),
            record(
                pod("10.0.0.1", 40_002, "shop", "web"),
                pod("10.0.0.2", 0, "shop", "api"),
                1,
            ),
        ]);
        let mut cluster = ClusterView::new();
        cluster.add_graph(&observed);
        let files = render(
            &propose(&observed, &cluster, &GenerateOptions::default()),
            PolicyFormat::Networkpolicy,
        );
        let directory = tempfile::tempdir().unwrap();
        for (name, text) in &files {
            std::fs::write(directory.path().join(name), text).unwrap();
        }
        let policies = crate::evaluate::load_policy_set(directory.path()).unwrap();
        let report = check_edges(&observed, &mut ClusterView::new(), &policies);
        assert_eq!(
            report,
            EdgeCheckReport {
                edges: 3,
                checked: 2,
                unresolved: 0,
                unexpressible: 1,
                allowed: 2,
                denied: Vec::new(),
            }
        );

        // An edge nobody allowed: web reaching db directly.
        let mut unobserved = record(
            pod("10.0.0.1", 40_003, "shop", "web"),
            pod("10.0.1.1", 5432, "data", "db"),
            6,
        );
        unobserved.time = Timestamp(SystemTime::UNIX_EPOCH);
        let report = check_edges(&learned(&[unobserved]), &mut cluster, &policies);
        assert_eq!((report.edges, report.checked, report.allowed), (1, 1, 0));
        assert_eq!(
            report.denied,
            [EdgeDenial {
                client: "shop/Deployment/web".to_owned(),
                server: "data/Deployment/db".to_owned(),
                protocol: Protocol(6),
                port: 5432,
                blocked_by: vec![
                    "egress of shop/(web)".to_owned(),
                    "ingress of data/(db)".to_owned()
                ],
                connections: 1,
                last_seen: Timestamp(SystemTime::UNIX_EPOCH),
            }]
        );
    }

    #[test]
    fn generated_policies_allow_what_was_observed_and_deny_what_was_not() {
        let observed = vec![
            record(
                pod("10.0.0.1", 40_000, "shop", "web"),
                pod("10.0.0.2", 8080, "shop", "api"),
                6,
            ),
            record(
                pod("10.0.0.2", 40_001, "shop", "api"),
                pod("10.0.1.1", 5432, "data", "db"),
                6,
            ),
            record(
                pod("10.0.0.1", 40_002, "shop", "web"),
                pod("10.0.9.9", 53, "kube-system", "coredns"),
                17,
            ),
        ];
        let mut graph = Graph::new();
        for record in &observed {
            graph.observe(record);
        }
        let mut cluster = ClusterView::new();
        cluster.add_graph(&graph);
        let files = render(
            &propose(&graph, &cluster, &GenerateOptions::default()),
            PolicyFormat::Networkpolicy,
        );
        let directory = tempfile::tempdir().unwrap();
        for (name, text) in &files {
            std::fs::write(directory.path().join(name), text).unwrap();
        }
        let policies = crate::evaluate::load_policy_set(directory.path()).unwrap();
        let report = check(&observed, &mut cluster, &policies);
        assert_eq!(
            (report.checked, report.allowed, report.denied.len()),
            (3, 3, 0)
        );

        // Pairs that never talked, and ports never used, are denied; DNS over
        // TCP is allowed (the DNS rule is both).
        let unobserved = vec![
            record(
                pod("10.0.0.2", 40_003, "shop", "api"),
                pod("10.0.0.1", 8080, "shop", "web"),
                6,
            ),
            record(
                pod("10.0.0.1", 40_004, "shop", "web"),
                pod("10.0.1.1", 5432, "data", "db"),
                6,
            ),
            record(
                pod("10.0.0.1", 40_005, "shop", "web"),
                pod("10.0.0.2", 9090, "shop", "api"),
                6,
            ),
            record(
                pod("10.0.0.1", 40_006, "shop", "web"),
                pod("10.0.9.9", 53, "kube-system", "coredns"),
                6,
            ),
        ];
        let mut reply = unobserved[0].clone();
        reply.is_reply = true;
        let mut all = unobserved.clone();
        all.push(reply);
        let report = check(&all, &mut cluster, &policies);
        assert_eq!((report.records, report.checked, report.allowed), (5, 4, 1));
        let denied: Vec<(String, String, u16, Vec<String>)> = report
            .denied
            .iter()
            .map(|denial| {
                (
                    denial.source.clone(),
                    denial.destination.clone(),
                    denial.port,
                    denial.blocked_by.clone(),
                )
            })
            .collect();
        assert_eq!(
            denied,
            [
                (
                    "shop/api-1".to_owned(),
                    "shop/web-1".to_owned(),
                    8080,
                    vec![
                        "egress of shop/api-1".to_owned(),
                        "ingress of shop/web-1".to_owned()
                    ]
                ),
                (
                    "shop/web-1".to_owned(),
                    "data/db-1".to_owned(),
                    5432,
                    vec![
                        "egress of shop/web-1".to_owned(),
                        "ingress of data/db-1".to_owned()
                    ]
                ),
                (
                    "shop/web-1".to_owned(),
                    "shop/api-1".to_owned(),
                    9090,
                    vec![
                        "egress of shop/web-1".to_owned(),
                        "ingress of shop/api-1".to_owned()
                    ]
                ),
            ]
        );
        assert_eq!(report.denied_records(), 3);
    }

    /// An address outside the cluster the client resolved from `names`.
    fn world(ip: &str, port: u16, names: &[&str]) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            identity: Arc::new(Identity {
                kind: Some(PeerKind::World),
                ..Identity::default()
            }),
            service: None,
            names: names.iter().map(|name| Arc::from(*name)).collect(),
        }
    }

    #[test]
    fn generated_cilium_policies_allow_exactly_what_was_observed_names_included() {
        let web = |port| pod("10.0.0.1", port, "shop", "web");
        let observed = vec![
            record(web(40_000), pod("10.0.0.2", 8080, "shop", "api"), 6),
            record(
                web(40_001),
                pod("10.0.9.9", 53, "kube-system", "coredns"),
                17,
            ),
            record(
                web(40_002),
                world("20.42.65.92", 443, &["myvault.vault.azure.net"]),
                6,
            ),
            record(
                web(40_003),
                world("52.239.1.4", 443, &["acct.blob.core.windows.net"]),
                6,
            ),
        ];
        let mut graph = Graph::new();
        for record in &observed {
            graph.observe(record);
        }
        let mut cluster = ClusterView::new();
        cluster.add_graph(&graph);
        let options = GenerateOptions {
            format: PolicyFormat::Cilium,
            ..GenerateOptions::default()
        };
        let files = render(&propose(&graph, &cluster, &options), PolicyFormat::Cilium);
        let directory = tempfile::tempdir().unwrap();
        for (name, text) in &files {
            std::fs::write(directory.path().join(name), text).unwrap();
        }
        let policies = crate::evaluate::load_policy_set(directory.path()).unwrap();
        assert_eq!(policies.network.len(), 0);
        assert_eq!(policies.cilium.len(), files.len() - 1, "{files:?}");
        let report = check(&observed, &mut cluster, &policies);
        assert_eq!(
            (report.checked, report.allowed, report.denied.len()),
            (4, 4, 0),
            "{report:#?}"
        );
        let edges = check_edges(&graph, &mut cluster, &policies);
        assert_eq!(
            (edges.edges, edges.checked, edges.allowed),
            (4, 4, 4),
            "{edges:#?}"
        );

        // The same address without its name, under another name, or on
        // another port: denied by web's egress. Another address the name
        // resolved to is allowed, as Cilium allows what the name resolves
        // to; DNS over TCP is allowed (the DNS rule is both).
        let unobserved = vec![
            record(web(40_004), world("20.42.65.92", 443, &[]), 6),
            record(
                web(40_005),
                world("20.42.65.92", 443, &["evil.example.com"]),
                6,
            ),
            record(
                web(40_006),
                world("20.42.65.92", 80, &["myvault.vault.azure.net"]),
                6,
            ),
            record(
                web(40_007),
                world("198.51.100.7", 443, &["acct.blob.core.windows.net"]),
                6,
            ),
            record(
                web(40_008),
                pod("10.0.9.9", 53, "kube-system", "coredns"),
                6,
            ),
        ];
        let report = check(&unobserved, &mut cluster, &policies);
        assert_eq!((report.checked, report.allowed), (5, 2), "{report:#?}");
        let denied: Vec<(&str, &str, u16)> = report
            .denied
            .iter()
            .map(|denial| {
                assert_eq!(denial.blocked_by, ["egress of shop/web-1"]);
                (
                    denial.source.as_str(),
                    denial.destination.as_str(),
                    denial.port,
                )
            })
            .collect();
        assert_eq!(
            denied,
            [
                ("shop/web-1", "20.42.65.92 (world)", 80),
                ("shop/web-1", "20.42.65.92 (world)", 443),
            ]
        );
        assert_eq!(report.denied_records(), 3);

        // A learned edge under another name is denied too.
        let mut other = Graph::new();
        other.observe(&unobserved[1]);
        let edges = check_edges(&other, &mut cluster, &policies);
        assert_eq!((edges.checked, edges.allowed), (1, 0), "{edges:#?}");
    }
}
