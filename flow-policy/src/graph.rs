//! The connection graph a policy is learned from: who opened connections to
//! whom, on which protocol and destination (target) port.
//!
//! Edges come from request-direction flow records only (replies never make an
//! edge). A destination reached through a Service is its backend pod and target
//! port, never the Service port: the agent translates before it records, and
//! where it could not, the edge takes the Service's target port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use flow_model::{
    identity::{Identity, PeerKind, Workload},
    record::{Endpoint, FlowRecord, Protocol, Timestamp},
};

pub mod days;

pub use days::DaysSeen;

/// A workload: namespace, controller kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadRef {
    /// Namespace.
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, ..., `Pod` for a bare pod, `Service` for a
    /// Service whose backends were not told apart.
    pub kind: String,
    /// Name.
    pub name: String,
}

impl WorkloadRef {
    /// Checks the names against Kubernetes' rules before they become file
    /// names and selectors: the namespace a DNS-1123 label, the name a
    /// DNS-1123 subdomain, the kind an identifier. Graphs from files, flow
    /// files and remote agents are checked with this, so a name like
    /// `../../etc` never reaches a path.
    pub fn check_names(&self) -> Result<(), String> {
        let Self {
            namespace,
            kind,
            name,
        } = self;
        if !is_dns_label(namespace) {
            return Err(format!(
                "namespace {namespace:?} of {kind} {name:?} is not a DNS-1123 label"
            ));
        }
        if kind.is_empty() || kind.len() > 63 || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("workload kind {kind:?} in {namespace} is invalid"));
        }
        if name.is_empty() || name.len() > 253 || !name.split('.').all(is_dns_label) {
            return Err(format!(
                "{kind} name {name:?} in {namespace} is not a DNS-1123 subdomain"
            ));
        }
        Ok(())
    }
}

/// Lower-case alphanumerics and '-', 1 to 63 characters, alphanumeric at both
/// ends.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            namespace,
            kind,
            name,
        } = self;
        write!(f, "{namespace}/{kind}/{name}")
    }
}

/// One end of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Party {
    /// A workload of the cluster.
    Workload(WorkloadRef),
    /// An address that is no workload: outside the cluster, a node, the API
    /// server, or a Service address that was not translated.
    Address {
        /// The address.
        ip: IpAddr,
        /// What it is.
        kind: PeerKind,
    },
}

impl Party {
    /// The workload, if this is one.
    pub fn workload(&self) -> Option<&WorkloadRef> {
        match self {
            Self::Workload(workload) => Some(workload),
            Self::Address { .. } => None,
        }
    }

    fn of(endpoint: &Endpoint) -> Option<Self> {
        let Identity {
            kind,
            namespace,
            workload,
            ..
        } = &*endpoint.identity;
        match (kind, namespace, workload) {
            (
                Some(PeerKind::Pod | PeerKind::Service),
                Some(namespace),
                Some(Workload { kind, name }),
            ) => Some(Self::Workload(WorkloadRef {
                namespace: namespace.clone(),
                kind: kind.clone(),
                name: name.clone(),
            })),
            (Some(kind), _, _) => Some(Self::Address {
                ip: endpoint.ip,
                kind: *kind,
            }),
            // Without identity nothing can be learned about this end.
            (None, _, _) => None,
        }
    }
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Workload(workload) => workload.fmt(f),
            Self::Address { ip, kind } => write!(f, "{ip} ({})", kind.as_str()),
        }
    }
}

/// What identifies an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeKey {
    /// Who opened the connections.
    pub client: Party,
    /// Who accepted them.
    pub server: Party,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port on the server (the target port behind a Service); 0
    /// for protocols without ports.
    pub port: u16,
}

/// What was seen on an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// First request packet.
    pub first_seen: Timestamp,
    /// Last request packet.
    pub last_seen: Timestamp,
    /// Connections opened (SYNs seen); see [`EdgeStats::connection_count`].
    pub connections: u64,
    /// Request packets.
    pub packets: u64,
    /// Request bytes.
    pub bytes: u64,
    /// The two ends belong to different tenants.
    pub cross_tenant: bool,
    /// Services (`namespace/name`) the client addressed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub services: BTreeSet<String>,
    /// The days it was seen on. Graphs written before days were kept have
    /// none: [`EdgeStats::with_days`] fills them in as they are read.
    #[serde(default, skip_serializing_if = "DaysSeen::is_empty")]
    pub days: DaysSeen,
    /// The DNS names the client resolved to an external server's address
    /// (the question and every CNAME on the way), sorted, at most
    /// [`MAX_EDGE_NAMES`]: past that, the first in sort order are kept, so
    /// which are kept does not depend on the order edges merge in. Empty
    /// for workload servers, for addresses no name was seen for, and in
    /// graphs written before names were kept.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub names: BTreeSet<String>,
}

/// The most names an edge keeps ([`EdgeStats::names`]).
pub const MAX_EDGE_NAMES: usize = 64;

/// Adds `more` to `names`, keeping the first [`MAX_EDGE_NAMES`] in sort
/// order.
pub fn add_names<'a>(names: &mut BTreeSet<String>, more: impl IntoIterator<Item = &'a str>) {
    for name in more {
        if names.len() >= MAX_EDGE_NAMES && names.last().is_some_and(|last| last.as_str() <= name) {
            continue;
        }
        if names.insert(name.to_owned()) && names.len() > MAX_EDGE_NAMES {
            names.pop_last();
        }
    }
}

impl EdgeStats {
    /// Connections, at least one: a seen edge was one connection even
    /// without a SYN (UDP, or a connection open before the agent started).
    pub fn connection_count(&self) -> u64 {
        self.connections.max(1)
    }

    /// The same, with days where it has none (a graph from before days were
    /// kept): the days of its first and last request. The days in between
    /// are unknown and taken as not seen, so such an edge looks rarer in
    /// REVIEW.md than it may have been, never more common; which edges
    /// `--min-connections` and `--since` leave out does not depend on days.
    pub fn with_days(mut self) -> Self {
        if self.days.is_empty() {
            self.days = DaysSeen::on(self.first_seen);
            self.days.record(self.last_seen);
        }
        self
    }

    fn merge(&mut self, other: &Self) {
        let Self {
            first_seen,
            last_seen,
            connections,
            packets,
            bytes,
            cross_tenant,
            services,
            days,
            names,
        } = other;
        self.first_seen = Timestamp(self.first_seen.0.min(first_seen.0));
        self.last_seen = Timestamp(self.last_seen.0.max(last_seen.0));
        self.connections += connections;
        self.packets += packets;
        self.bytes += bytes;
        self.cross_tenant |= cross_tenant;
        self.services.extend(services.iter().cloned());
        self.days.merge(*days);
        add_names(&mut self.names, names.iter().map(String::as_str));
    }
}

/// An edge: key and what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// What identifies it.
    #[serde(flatten)]
    pub key: EdgeKey,
    /// What was seen.
    #[serde(flatten)]
    pub stats: EdgeStats,
}

/// What the graph knows of a workload, for selectors and tenancy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The workload's stable pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Last time one of its pods was seen in a flow.
    pub last_seen: Timestamp,
}

/// A change to the graph, as the store logs it: the full new state of one
/// entry, so replaying changes in order is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "change")]
pub enum Change {
    /// An edge now has this state.
    Edge(Edge),
    /// An edge was removed (expired or evicted).
    RemoveEdge(EdgeKey),
    /// A workload now has this information.
    Workload {
        /// The workload.
        workload: WorkloadRef,
        /// Its information.
        info: WorkloadInfo,
    },
    /// A workload was forgotten (no edge refers to it any more).
    RemoveWorkload(WorkloadRef),
}

/// The connection graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    edges: BTreeMap<EdgeKey, EdgeStats>,
    workloads: BTreeMap<WorkloadRef, WorkloadInfo>,
}

/// The graph's file form.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    /// Format version: 1.
    pub version: u32,
    /// Edges, sorted.
    pub edges: Vec<Edge>,
    /// Workloads, sorted.
    pub workloads: Vec<FileWorkload>,
}

/// A workload in the file form.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWorkload {
    /// The workload.
    #[serde(flatten)]
    pub workload: WorkloadRef,
    /// Its information.
    #[serde(flatten)]
    pub info: WorkloadInfo,
}

/// The version of [`GraphFile`] this build writes and reads.
pub const GRAPH_VERSION: u32 = 1;

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Edges, sorted by key.
    pub fn edges(&self) -> impl Iterator<Item = (&EdgeKey, &EdgeStats)> {
        self.edges.iter()
    }

    /// Number of edges.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether there is no edge.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Checks every workload's names ([`WorkloadRef::check_names`]).
    pub fn check_names(&self) -> Result<(), String> {
        self.edges
            .keys()
            .flat_map(|EdgeKey { client, server, .. }| [client, server])
            .filter_map(Party::workload)
            .chain(self.workloads.keys())
            .try_for_each(WorkloadRef::check_names)
    }

    /// What is known of a workload.
    pub fn workload(&self, workload: &WorkloadRef) -> Option<&WorkloadInfo> {
        self.workloads.get(workload)
    }

    /// Every workload, sorted.
    pub fn workloads(&self) -> impl Iterator<Item = (&WorkloadRef, &WorkloadInfo)> {
        self.workloads.iter()
    }

    /// Learns from one flow record; returns the changes it made. Replies,
    /// records outside policy (nothing but ICMP errors, which belong to the
    /// connection they quote; ICMPv6 neighbour and multicast listener
    /// discovery) and records without identity on both ends teach nothing.
    pub fn observe(&mut self, record: &FlowRecord) -> Vec<Change> {
        let mut changes = Vec::new();
        if record.is_reply || record.is_outside_policy() {
            return changes;
        }
        let (Some(client), Some(server)) =
            (Party::of(&record.source), Party::of(&record.destination))
        else {
            return changes;
        };
        // Only edges with a workload end can become policy.
        if client.workload().is_none() && server.workload().is_none() {
            return changes;
        }
        for (party, endpoint) in [(&client, &record.source), (&server, &record.destination)] {
            if let Party::Workload(workload) = party {
                let info = WorkloadInfo {
                    tenant: endpoint.identity.tenant.clone(),
                    labels: endpoint.identity.labels.clone(),
                    last_seen: record.time,
                };
                if let Some(change) = self.set_workload(workload.clone(), info) {
                    changes.push(change);
                }
            }
        }
        // Names only mean something for an address outside the workloads.
        let mut names = BTreeSet::new();
        if server.workload().is_none() {
            add_names(
                &mut names,
                record.destination.names.iter().map(|name| &**name),
            );
        }
        let key = EdgeKey {
            client,
            server,
            protocol: record.protocol,
            port: record.server_port(),
        };
        let mut days = DaysSeen::on(record.time);
        days.record(record.first_seen);
        let stats = EdgeStats {
            first_seen: record.first_seen,
            last_seen: record.time,
            connections: u64::from(record.new_connection),
            packets: record.packets,
            bytes: record.bytes,
            cross_tenant: record.cross_tenant == Some(true),
            services: record
                .destination
                .service
                .iter()
                .map(|service| format!("{}/{}", service.namespace, service.name))
                .collect(),
            days,
            names,
        };
        changes.push(self.merge_edge(key, &stats));
        changes
    }

    fn set_workload(&mut self, workload: WorkloadRef, info: WorkloadInfo) -> Option<Change> {
        match self.workloads.get_mut(&workload) {
            // Labels and tenant as of the latest flow; only report a change
            // when they change (last_seen alone moves every record).
            Some(known) if known.tenant == info.tenant && known.labels == info.labels => {
                known.last_seen = Timestamp(known.last_seen.0.max(info.last_seen.0));
                None
            }
            Some(known) if known.last_seen.0 > info.last_seen.0 => None,
            _ => {
                self.workloads.insert(workload.clone(), info.clone());
                Some(Change::Workload { workload, info })
            }
        }
    }

    fn merge_edge(&mut self, key: EdgeKey, stats: &EdgeStats) -> Change {
        let merged = match self.edges.get_mut(&key) {
            Some(known) => {
                known.merge(stats);
                known.clone()
            }
            None => {
                self.edges.insert(key.clone(), stats.clone());
                stats.clone()
            }
        };
        Change::Edge(Edge { key, stats: merged })
    }

    /// Applies a logged change (an edge without days gets them from its
    /// times: [`EdgeStats::with_days`]).
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Edge(Edge { key, stats }) => {
                self.edges.insert(key, stats.with_days());
            }
            Change::RemoveEdge(key) => {
                self.edges.remove(&key);
            }
            Change::Workload { workload, info } => {
                self.workloads.insert(workload, info);
            }
            Change::RemoveWorkload(workload) => {
                self.workloads.remove(&workload);
            }
        }
    }

    /// Adds another graph's edges and workloads (the union over nodes).
    pub fn merge(&mut self, other: &Self) {
        for (key, stats) in &other.edges {
            self.merge_edge(key.clone(), stats);
        }
        for (workload, info) in &other.workloads {
            self.set_workload(workload.clone(), info.clone());
        }
    }

    /// Removes edges without traffic for `expiry` (when set), then the least
    /// recently seen edges beyond `max_edges`, then workloads no edge refers
    /// to. Returns the removals.
    pub fn prune(
        &mut self,
        now: SystemTime,
        expiry: Option<Duration>,
        max_edges: usize,
    ) -> Vec<Change> {
        let mut removed: Vec<EdgeKey> = Vec::new();
        if let Some(expiry) = expiry {
            let cutoff = now.checked_sub(expiry).unwrap_or(SystemTime::UNIX_EPOCH);
            removed.extend(
                self.edges
                    .iter()
                    .filter(|(_, stats)| stats.last_seen.0 < cutoff)
                    .map(|(key, _)| key.clone()),
            );
            for key in &removed {
                self.edges.remove(key);
            }
        }
        if self.edges.len() > max_edges {
            let mut by_age: Vec<(SystemTime, EdgeKey)> = self
                .edges
                .iter()
                .map(|(key, stats)| (stats.last_seen.0, key.clone()))
                .collect();
            by_age.sort();
            let excess = self.edges.len() - max_edges;
            for (_, key) in by_age.into_iter().take(excess) {
                self.edges.remove(&key);
                removed.push(key);
            }
        }
        let mut changes: Vec<Change> = removed.into_iter().map(Change::RemoveEdge).collect();
        if !changes.is_empty() {
            let referenced: BTreeSet<&WorkloadRef> = self
                .edges
                .keys()
                .flat_map(|key| [key.client.workload(), key.server.workload()])
                .flatten()
                .collect();
            let orphans: Vec<WorkloadRef> = self
                .workloads
                .keys()
                .filter(|workload| !referenced.contains(workload))
                .cloned()
                .collect();
            for workload in orphans {
                self.workloads.remove(&workload);
                changes.push(Change::RemoveWorkload(workload));
            }
        }
        changes
    }

    /// The file form.
    pub fn to_file(&self) -> GraphFile {
        GraphFile {
            version: GRAPH_VERSION,
            edges: self
                .edges
                .iter()
                .map(|(key, stats)| Edge {
                    key: key.clone(),
                    stats: stats.clone(),
                })
                .collect(),
            workloads: self
                .workloads
                .iter()
                .map(|(workload, info)| FileWorkload {
                    workload: workload.clone(),
                    info: info.clone(),
                })
                .collect(),
        }
    }

    /// A graph from its file form.
    pub fn from_file(file: GraphFile) -> Result<Self, String> {
        let GraphFile {
            version,
            edges,
            workloads,
        } = file;
        if version != GRAPH_VERSION {
            return Err(format!(
                "graph format version {version}; this build reads {GRAPH_VERSION}"
            ));
        }
        Ok(Self {
            edges: edges
                .into_iter()
                .map(|Edge { key, stats }| (key, stats.with_days()))
                .collect(),
            workloads: workloads
                .into_iter()
                .map(|FileWorkload { workload, info }| (workload, info))
                .collect(),
        })
    }

    /// The same graph, its maps rebuilt in bulk: inserting entries one at a
    /// time leaves a B-tree's nodes from half to two thirds full, building
    /// from sorted entries fills them (a 200,000-edge graph takes 30 MB
    /// less). Worth it once a graph is complete, before it is read.
    pub fn compacted(self) -> Self {
        let Self { edges, workloads } = self;
        Self {
            edges: edges.into_iter().collect(),
            workloads: workloads.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use flow_model::{
        identity::ServiceRef,
        record::{Hook, Icmp, IcmpErrors},
    };

    fn at(seconds: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds))
    }

    fn pod(ip: &str, port: u16, namespace: &str, workload: &str, tenant: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            identity: Arc::new(Identity {
                kind: Some(PeerKind::Pod),
                namespace: Some(namespace.into()),
                pod: Some(format!("{workload}-abc")),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: workload.into(),
                }),
                tenant: Some(tenant.into()),
                labels: [("app".to_owned(), workload.to_owned())].into(),
                node: Some("n".into()),
                note: None,
            }),
            service: None,
            names: Vec::new(),
        }
    }

    fn world(ip: &str, port: u16) -> Endpoint {
        let mut endpoint = Endpoint::new(ip.parse().unwrap(), port);
        endpoint.identity = Arc::new(Identity {
            kind: Some(PeerKind::World),
            ..Identity::default()
        });
        endpoint
    }

    fn record(source: Endpoint, destination: Endpoint, time: u64) -> FlowRecord {
        FlowRecord {
            time: at(time),
            first_seen: at(time),
            source,
            destination,
            protocol: Protocol(6),
            icmp: None,
            packets: 3,
            bytes: 200,
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

    fn web() -> WorkloadRef {
        WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn requests_make_edges_with_target_ports_and_replies_make_none() {
        let mut graph = Graph::new();
        let mut request = record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            pod("10.0.0.2", 8080, "shop", "api", "acme"),
            1,
        );
        request.destination.service = Some(ServiceRef {
            namespace: "shop".into(),
            name: "api".into(),
            ip: "10.96.0.1".parse().unwrap(),
            port: 80,
            target_port: Some(8080),
        });
        graph.observe(&request);
        let mut again = request.clone();
        again.source.port = 40_001;
        again.time = at(5);
        graph.observe(&again);
        let mut reply = record(
            pod("10.0.0.2", 8080, "shop", "api", "acme"),
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            2,
        );
        reply.is_reply = true;
        assert!(graph.observe(&reply).is_empty());
        let edges: Vec<_> = graph.edges().collect();
        assert_eq!(edges.len(), 1);
        let (key, stats) = edges[0];
        assert_eq!(key.client, Party::Workload(web()));
        assert_eq!(key.server.workload().unwrap().name, "api");
        assert_eq!((key.protocol, key.port), (Protocol(6), 8080));
        assert_eq!((stats.connections, stats.packets, stats.bytes), (2, 6, 400));
        assert_eq!((stats.first_seen, stats.last_seen), (at(1), at(5)));
        assert_eq!(stats.services, BTreeSet::from(["shop/api".to_owned()]));
        assert_eq!(graph.workload(&web()).unwrap().labels["app"], "web");
    }

    #[test]
    fn records_of_nothing_but_icmp_errors_make_no_edge() {
        let errors = |packets| {
            Some(IcmpErrors {
                packets,
                kinds: vec!["unreachable".into()],
            })
        };
        let mut graph = Graph::new();
        // A port unreachable whose quote could not be read, taken for a
        // request: the DNS server "to" the client over ICMP.
        let mut unreadable = record(
            pod("10.0.0.53", 0, "kube-dns", "coredns", "platform"),
            pod("10.0.0.1", 0, "shop", "web", "acme"),
            1,
        );
        unreadable.protocol = Protocol(1);
        unreadable.icmp = Some(Icmp {
            icmp_type: 3,
            code: 3,
        });
        unreadable.packets = 1;
        unreadable.icmp_errors = errors(1);
        assert!(unreadable.is_icmp_errors_only());
        assert!(graph.observe(&unreadable).is_empty());
        // One folded into a UDP connection's request direction alike.
        let mut folded = record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            pod("10.0.0.2", 9, "shop", "api", "acme"),
            2,
        );
        folded.protocol = Protocol(17);
        folded.packets = 1;
        folded.icmp_errors = errors(1);
        assert!(graph.observe(&folded).is_empty());
        assert_eq!(graph.len(), 0);
        // A record of the connection that also carries errors is the
        // connection.
        folded.packets = 3;
        assert!(!folded.is_icmp_errors_only());
        graph.observe(&folded);
        let (key, stats) = graph.edges().next().unwrap();
        assert_eq!((key.protocol, key.port), (Protocol(17), 9));
        assert_eq!(stats.packets, 3);
        assert_eq!(graph.len(), 1);
    }

    #[test]
    fn an_untranslated_service_destination_takes_the_target_port() {
        // No conntrack: the destination is still the Service address and
        // port, identified as the workload all backends share.
        let mut destination = pod("10.96.0.1", 80, "shop", "api", "acme");
        let mut identity = (*destination.identity).clone();
        identity.pod = None;
        destination.identity = Arc::new(identity);
        destination.service = Some(ServiceRef {
            namespace: "shop".into(),
            name: "api".into(),
            ip: "10.96.0.1".parse().unwrap(),
            port: 80,
            target_port: Some(8080),
        });
        let request = record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            destination,
            1,
        );
        assert_eq!(request.server_port(), 8080);
        let mut graph = Graph::new();
        graph.observe(&request);
        let (key, _) = graph.edges().next().unwrap();
        assert_eq!(key.server.workload().unwrap().name, "api");
        assert_eq!(key.port, 8080, "NetworkPolicy sees the pod's port");
        // A Service whose backends disagree on the port keeps the port seen.
        let mut unknown = request.clone();
        unknown.destination.service.as_mut().unwrap().target_port = None;
        assert_eq!(unknown.server_port(), 80);
    }

    #[test]
    fn names_kubernetes_would_refuse_are_caught_before_they_become_paths() {
        let named = |namespace: &str, kind: &str, name: &str| WorkloadRef {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
        };
        assert_eq!(web().check_names(), Ok(()));
        assert_eq!(
            named("shop", "StatefulSet", "db.v2-0").check_names(),
            Ok(())
        );
        for (workload, expected) in [
            (
                named("../../etc", "Deployment", "web"),
                "namespace \"../../etc\"",
            ),
            (named("/etc", "Deployment", "web"), "namespace \"/etc\""),
            (named("Shop", "Deployment", "web"), "not a DNS-1123 label"),
            (named("-shop", "Deployment", "web"), "not a DNS-1123 label"),
            (
                named(&"n".repeat(64), "Deployment", "web"),
                "not a DNS-1123 label",
            ),
            (named("shop", "Deploy/ment", "web"), "kind \"Deploy/ment\""),
            (named("shop", "", "web"), "kind \"\""),
            (named("shop", "Deployment", "../x"), "name \"../x\""),
            (
                named("shop", "Deployment", "a\n- evil.yaml"),
                "not a DNS-1123 subdomain",
            ),
            (
                named("shop", "Deployment", "wéb"),
                "not a DNS-1123 subdomain",
            ),
            (
                named("shop", "Deployment", "a..b"),
                "not a DNS-1123 subdomain",
            ),
            (named("shop", "Deployment", ""), "not a DNS-1123 subdomain"),
        ] {
            let error = workload.check_names().unwrap_err();
            assert!(error.contains(expected), "{workload:?}: {error}");
        }
        // A graph is checked through its edges and its workload table.
        let mut graph = Graph::new();
        graph.observe(&record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            pod("10.0.0.2", 8080, "../x", "api", "acme"),
            1,
        ));
        let error = graph.check_names().unwrap_err();
        assert!(error.contains("../x"), "{error}");
    }

    #[test]
    fn external_peers_are_addresses_and_world_to_world_is_ignored() {
        let mut graph = Graph::new();
        graph.observe(&record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            world("203.0.113.9", 443),
            1,
        ));
        graph.observe(&record(
            world("198.51.100.1", 5000),
            world("203.0.113.9", 443),
            1,
        ));
        let keys: Vec<&EdgeKey> = graph.edges().map(|(key, _)| key).collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].server,
            Party::Address {
                ip: "203.0.113.9".parse().unwrap(),
                kind: PeerKind::World
            }
        );
    }

    #[test]
    fn merging_graphs_is_a_union_and_replaying_changes_rebuilds_the_graph() {
        let mut node_a = Graph::new();
        let mut log = Vec::new();
        log.extend(node_a.observe(&record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            pod("10.0.1.2", 8080, "shop", "api", "acme"),
            1,
        )));
        let mut node_b = Graph::new();
        node_b.observe(&record(
            pod("10.0.0.1", 40_002, "shop", "web", "acme"),
            pod("10.0.1.2", 8080, "shop", "api", "acme"),
            9,
        ));
        node_b.observe(&record(
            pod("10.0.1.2", 40_003, "shop", "api", "acme"),
            pod("10.0.2.2", 5432, "data", "db", "globex"),
            9,
        ));
        let mut cluster = node_a.clone();
        cluster.merge(&node_b);
        assert_eq!(cluster.len(), 2);
        let web_api = cluster
            .edges()
            .find(|(key, _)| key.client == Party::Workload(web()))
            .unwrap()
            .1;
        assert_eq!(
            (web_api.connections, web_api.first_seen, web_api.last_seen),
            (2, at(1), at(9))
        );

        let mut replayed = Graph::new();
        for change in log {
            replayed.apply(change);
        }
        assert_eq!(replayed, node_a);
        // The file form round-trips.
        let file = serde_json::to_string(&cluster.to_file()).unwrap();
        let back = Graph::from_file(serde_json::from_str(&file).unwrap()).unwrap();
        assert_eq!(back, cluster);
        // Compacting keeps every edge and workload.
        let compacted = cluster.clone().compacted();
        assert_eq!((compacted.len(), compacted.workloads().count()), (2, 3));
        assert_eq!(compacted, cluster);
    }

    #[test]
    fn edges_count_the_days_they_were_seen_and_at_least_one_connection() {
        const DAY: u64 = 86_400;
        // at(0) is 2027-01-15T08:00:00Z, day 20,833.
        let mut node_a = Graph::new();
        let mut udp = record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            pod("10.0.1.2", 53, "shop", "dns", "acme"),
            0,
        );
        udp.protocol = Protocol(17);
        udp.new_connection = false;
        node_a.observe(&udp);
        let mut later = udp.clone();
        // A flow open since day 20,835, recorded on day 20,836.
        (later.first_seen, later.time) = (at(2 * DAY), at(3 * DAY));
        node_a.observe(&later);
        let (_, stats) = node_a.edges().next().unwrap();
        assert_eq!(stats.days.parts(), (20_836, 0b1011));
        assert_eq!(
            (
                stats.days.count(),
                stats.connections,
                stats.connection_count()
            ),
            (3, 0, 1)
        );
        // Another node saw it on day 20,834: merged in either order, the
        // same days.
        let mut node_b = Graph::new();
        let mut other = udp.clone();
        (other.first_seen, other.time) = (at(DAY), at(DAY));
        node_b.observe(&other);
        let mut ab = node_a.clone();
        ab.merge(&node_b);
        let mut ba = node_b.clone();
        ba.merge(&node_a);
        let days = |graph: &Graph| graph.edges().next().unwrap().1.days;
        assert_eq!(days(&ab), days(&ba));
        assert_eq!(
            (days(&ab).parts(), days(&ab).count()),
            ((20_836, 0b1111), 4)
        );
    }

    #[test]
    fn pruning_expires_old_edges_bounds_the_size_and_forgets_orphans() {
        let mut graph = Graph::new();
        for (index, time) in [(1u16, 10), (2, 20), (3, 30), (4, 40)] {
            graph.observe(&record(
                pod("10.0.0.1", 40_000, "shop", "web", "acme"),
                pod(
                    "10.0.1.2",
                    8000 + index,
                    "shop",
                    &format!("api{index}"),
                    "acme",
                ),
                time,
            ));
        }
        let now = at(45).0;
        let changes = graph.prune(now, Some(Duration::from_secs(30)), 2);
        // 10 s old... 35 s old: expired (at 10); then the oldest beyond two (at 20).
        let ports: Vec<u16> = graph.edges().map(|(key, _)| key.port).collect();
        assert_eq!(ports, [8003, 8004]);
        assert_eq!(
            changes
                .iter()
                .filter(|change| matches!(change, Change::RemoveEdge(_)))
                .count(),
            2
        );
        let forgotten: Vec<&str> = changes
            .iter()
            .filter_map(|change| match change {
                Change::RemoveWorkload(workload) => Some(workload.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(forgotten, ["api1", "api2"]);
        assert!(graph.workload(&web()).is_some());
    }

    #[test]
    fn external_servers_keep_their_names_bounded_and_through_the_graph_file() {
        let mut graph = Graph::new();
        let mut destination = world("203.0.113.9", 443);
        destination.names = vec!["api.example.com".into(), "edge.cdn.example.net".into()];
        graph.observe(&record(
            pod("10.0.0.1", 40_000, "shop", "web", "acme"),
            destination,
            1,
        ));
        // A workload server keeps none, even if a record says some.
        let mut api = pod("10.0.0.2", 8080, "shop", "api", "acme");
        api.names = vec!["api.shop.svc.cluster.local".into()];
        graph.observe(&record(
            pod("10.0.0.1", 40_001, "shop", "web", "acme"),
            api,
            2,
        ));
        let names: Vec<Vec<&str>> = graph
            .edges()
            .map(|(_, stats)| stats.names.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            names,
            [vec![], vec!["api.example.com", "edge.cdn.example.net"]]
        );
        let text = serde_json::to_string(&graph.to_file()).unwrap();
        assert!(
            text.contains(r#""names":["api.example.com","edge.cdn.example.net"]"#),
            "{text}"
        );
        let back = Graph::from_file(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, graph);
        // A graph written before names were kept loads without them.
        let old = text.replace(r#","names":["api.example.com","edge.cdn.example.net"]"#, "");
        let old = Graph::from_file(serde_json::from_str(&old).unwrap()).unwrap();
        assert!(old.edges().all(|(_, stats)| stats.names.is_empty()));
    }

    #[test]
    fn an_edge_keeps_the_first_names_in_sort_order_whatever_order_they_come_in() {
        let all: Vec<String> = (0..100)
            .map(|index| format!("h{index:03}.example.com"))
            .collect();
        let mut forward = BTreeSet::new();
        add_names(&mut forward, all.iter().map(String::as_str));
        let mut backward = BTreeSet::new();
        add_names(&mut backward, all.iter().rev().map(String::as_str));
        assert_eq!(forward.len(), MAX_EDGE_NAMES);
        assert_eq!(forward, backward);
        assert_eq!(
            forward.first().map(String::as_str),
            Some("h000.example.com")
        );
        assert_eq!(forward.last().map(String::as_str), Some("h063.example.com"));
    }
}
