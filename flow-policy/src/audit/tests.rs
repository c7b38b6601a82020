//! Each finding of the audit on a small cluster with known traffic.

use std::{collections::BTreeMap, path::PathBuf, time::SystemTime};

use flow_model::{identity::PeerKind, record::Timestamp};

use super::*;
use crate::graph::{Change, Edge, EdgeKey, EdgeStats, WorkloadInfo};

pub(super) fn workload(namespace: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: namespace.into(),
        kind: "Deployment".into(),
        name: name.into(),
    }
}

pub(super) fn edge(graph: &mut Graph, client: Party, server: Party, protocol: u8, port: u16) {
    let at = Timestamp(SystemTime::UNIX_EPOCH);
    graph.apply(Change::Edge(Edge {
        key: EdgeKey {
            client,
            server,
            protocol: Protocol(protocol),
            port,
        },
        stats: EdgeStats {
            first_seen: at,
            last_seen: at,
            connections: 1,
            packets: 1,
            bytes: 60,
            cross_tenant: false,
            services: BTreeSet::new(),
            days: Default::default(),
            names: BTreeSet::new(),
        },
    }));
}

/// Tenant a: `a/web`, `a/api`, `a/batch`; tenant b: `b/web`; the platform's
/// `kube-system/dns`. `a/web` calls `a/api` on TCP 8080 and 8081,
/// 203.0.113.5 on TCP 443, and dns on UDP 53.
fn fixture() -> (Graph, ClusterView) {
    let mut graph = Graph::new();
    let workloads = [
        ("a", "web", "a"),
        ("a", "api", "a"),
        ("a", "batch", "a"),
        ("b", "web", "b"),
        ("kube-system", "dns", "b"),
    ];
    for (namespace, name, tenant) in workloads {
        graph.apply(Change::Workload {
            workload: workload(namespace, name),
            info: WorkloadInfo {
                tenant: Some(tenant.into()),
                labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
                last_seen: Timestamp(SystemTime::UNIX_EPOCH),
            },
        });
    }
    let web = Party::Workload(workload("a", "web"));
    edge(
        &mut graph,
        web.clone(),
        Party::Workload(workload("a", "api")),
        6,
        8080,
    );
    edge(
        &mut graph,
        web.clone(),
        Party::Workload(workload("a", "api")),
        6,
        8081,
    );
    let world = Party::Address {
        ip: "203.0.113.5".parse().unwrap(),
        kind: PeerKind::World,
    };
    edge(&mut graph, web.clone(), world, 6, 443);
    edge(
        &mut graph,
        web,
        Party::Workload(workload("kube-system", "dns")),
        17,
        53,
    );
    let mut cluster = ClusterView::new();
    cluster.add_graph(&graph);
    (graph, cluster)
}

fn loaded(yaml: &str) -> Vec<LoadedPolicy> {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("p.yaml"), yaml).unwrap();
    let mut loaded = crate::load::load_all(directory.path()).unwrap();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    for policy in &mut loaded.policies {
        policy.file = PathBuf::from("p.yaml");
    }
    loaded.policies
}

const PLATFORM: [&str; 1] = ["kube-system"];

fn run(yaml: &str) -> Audit {
    let (graph, mut cluster) = fixture();
    let platform: Vec<String> = PLATFORM.map(str::to_owned).to_vec();
    audit(&loaded(yaml), &graph, &mut cluster, &platform)
}

const WEB_EGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n    ports: [{port: 443}, {port: 80}]\n  - to: [{podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: 8000, endPort: 8100}]\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]\n    ports: [{port: 53, protocol: UDP}]\n";

#[test]
fn unused_ports_of_blocks_and_ranges_are_counted_and_ranked() {
    let found = run(WEB_EGRESS);
    assert!(found.denied.is_empty(), "{:?}", found.denied);
    let unused: Vec<String> = found
        .unused
        .iter()
        .map(|unused| {
            format!(
                "{} {} -> {}: {} = {}",
                unused.rule, unused.selected, unused.peer, unused.ports, unused.size
            )
        })
        .collect();
    // 0.0.0.0/0 minus nothing observed on 80: 2^32 addresses × 1 pod × 1 port.
    assert_eq!(
        unused,
        [
            "a/web egress[0] a/Deployment/web -> 0.0.0.0/0: TCP 80 = 4294967296",
            "a/web egress[1] a/Deployment/web -> a/Deployment/api: TCP 8000-8079, 8082-8100 = 99",
        ]
    );
    let broad: Vec<&str> = found
        .broad
        .iter()
        .map(|broad| broad.construct.as_str())
        .collect();
    assert_eq!(
        broad,
        [
            "`ipBlock` 0.0.0.0/0: every address",
            "`TCP 8000-8100` allows 101 ports; observed: 8080-8081",
        ]
    );
    // Ingress is left open, so b/web reaches all of a; the platform's dns,
    // tenant b by its label, has no tenant and crosses nothing.
    let clients: Vec<&str> = found
        .cross_tenant
        .iter()
        .map(|cross| cross.client.as_str())
        .collect();
    assert_eq!(clients, ["b/Deployment/web"; 3]);
    let (graph, mut cluster) = fixture();
    let without_platform = audit(&loaded(WEB_EGRESS), &graph, &mut cluster, &[]);
    assert_eq!(without_platform.cross_tenant.len(), 6);
}

#[test]
fn a_policy_wider_than_its_traffic_and_namespaces_left_open_are_named() {
    let found = run(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {}}]\n    ports: [{port: 8080}, {port: 8081}]\n",
    );
    assert_eq!(
        found
            .broad
            .iter()
            .map(|broad| broad.construct.as_str())
            .collect::<Vec<_>>(),
        [
            "`podSelector: {}` in `from`: every pod of the namespace",
            "selects 3 workloads, 2 of them without observed traffic through its rules: a/Deployment/batch, a/Deployment/web",
        ]
    );
    // Namespace b has no policy: it is not covered, so not listed; a's
    // workloads are all isolated for ingress.
    assert!(found.open_to_all.is_empty());
    let found = run(WEB_EGRESS);
    assert_eq!(
        found.open_to_all,
        ["a/Deployment/api", "a/Deployment/batch", "a/Deployment/web"]
    );
    // b/web may reach every a workload: all of them are open.
    let cross: Vec<String> = found
        .cross_tenant
        .iter()
        .map(|cross| {
            format!(
                "{} -> {} {} {}",
                cross.client, cross.server, cross.ports, cross.observed
            )
        })
        .collect();
    assert_eq!(
        cross,
        [
            "b/Deployment/web -> a/Deployment/api TCP any; UDP any; SCTP any false",
            "b/Deployment/web -> a/Deployment/batch TCP any; UDP any; SCTP any false",
            "b/Deployment/web -> a/Deployment/web TCP any; UDP any; SCTP any false",
        ]
    );
}

#[test]
fn a_denied_observed_connection_names_the_side_that_refuses() {
    let found = run(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    );
    let denied: Vec<String> = found
        .denied
        .iter()
        .map(|denial| {
            format!(
                "{} -> {} {}/{}: {}",
                denial.client,
                denial.server,
                denial.protocol,
                denial.port,
                denial.blocked_by.join(", ")
            )
        })
        .collect();
    assert_eq!(
        denied,
        ["a/Deployment/web -> a/Deployment/api TCP/8081: ingress of a/(api)"]
    );
    assert!(found.unused.is_empty(), "{:?}", found.unused);
}
