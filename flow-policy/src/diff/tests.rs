//! The change judged pair by pair, and the `--fail-on` conditions.

use std::collections::BTreeMap;

use flow_model::record::Timestamp;

use super::*;
use crate::graph::{Change, Edge, EdgeKey, EdgeStats, WorkloadInfo};

fn workload(namespace: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: namespace.into(),
        kind: "Deployment".into(),
        name: name.into(),
    }
}

/// `a/web`, `a/api` (tenant a), `b/web` (tenant b), `kube-system/dns`
/// (tenant a, which the platform namespace overrides); `a/web` was seen
/// calling `a/api` on TCP 8080.
fn fixture() -> (Graph, ClusterView) {
    let mut graph = Graph::new();
    let parties = [
        ("a", "web", "a"),
        ("a", "api", "a"),
        ("b", "web", "b"),
        ("kube-system", "dns", "a"),
    ];
    for (namespace, name, tenant) in parties {
        graph.apply(Change::Workload {
            workload: workload(namespace, name),
            info: WorkloadInfo {
                tenant: Some(tenant.into()),
                labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
                last_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            },
        });
    }
    graph.apply(Change::Edge(Edge {
        key: EdgeKey {
            client: Party::Workload(workload("a", "web")),
            server: Party::Workload(workload("a", "api")),
            protocol: Protocol(6),
            port: 8080,
        },
        stats: EdgeStats {
            first_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            last_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            connections: 3,
            packets: 9,
            bytes: 900,
            cross_tenant: false,
            services: std::collections::BTreeSet::new(),
            days: Default::default(),
            names: std::collections::BTreeSet::new(),
        },
    }));
    let mut cluster = ClusterView::new();
    cluster.add_graph(&graph);
    (graph, cluster)
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("p.yaml"), yaml).unwrap();
    crate::evaluate::load_policies(directory.path()).unwrap()
}

const API_FROM_WEB: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n";

fn summary(paths: &[PathChange]) -> Vec<String> {
    paths
        .iter()
        .map(|path| {
            format!(
                "{:?} {} -> {} {} ({} pairs, {} ports)",
                path.kind, path.client, path.server, path.ports, path.pod_pairs, path.size
            )
        })
        .collect()
}

#[test]
fn opening_to_every_namespace_is_cross_tenant_except_from_the_platform() {
    let (graph, mut cluster) = fixture();
    let old = policies(API_FROM_WEB);
    let new = policies(&API_FROM_WEB.replace(
        "[{podSelector: {matchLabels: {app: web}}}]",
        "[{namespaceSelector: {}}]",
    ));
    let platform = vec!["kube-system".to_owned()];
    let judged = diff(&old, &new, &graph, &mut cluster, &platform);
    assert_eq!(judged.policies.modified, ["a/api"]);
    assert!(judged.broken.is_empty());
    assert_eq!(
        summary(&judged.opened),
        [
            "CrossTenant b/Deployment/web -> a/Deployment/api TCP 8080 (1 pairs, 1 ports)",
            "Unobserved kube-system/Deployment/dns -> a/Deployment/api TCP 8080 (1 pairs, 1 ports)",
        ]
    );
    assert!(judged.closed.is_empty());
    // Without the platform namespace, dns is tenant a's: nothing crosses.
    let (graph, mut cluster) = fixture();
    let judged = diff(&old, &new, &graph, &mut cluster, &[]);
    assert_eq!(judged.opened[0].kind, PathKind::CrossTenant);
    assert_eq!(judged.opened[1].kind, PathKind::Unobserved);
    assert_eq!(judged.opened[1].client, "kube-system/Deployment/dns");
    assert_eq!(judged.opened[1].server_tenant.as_deref(), Some("a"));
}

#[test]
fn a_rewritten_policy_that_means_the_same_changes_no_pair() {
    let (graph, mut cluster) = fixture();
    let old = policies(API_FROM_WEB);
    // The same rule, its ports written as a one-port range, in a new file
    // layout: modified, but no pod pair reaches anything else.
    let new = policies(&API_FROM_WEB.replace("{port: 8080}", "{port: 8080, endPort: 8080}"));
    let judged = diff(&old, &new, &graph, &mut cluster, &[]);
    assert_eq!(judged.policies.modified, ["a/api"]);
    assert_eq!((judged.opened.len(), judged.closed.len()), (0, 0));
    assert_eq!(
        (judged.checked, judged.broken.len(), judged.fixed),
        (1, 0, 0)
    );
}

#[test]
fn removing_all_policies_opens_everything_and_narrowing_breaks_the_edge() {
    let (graph, mut cluster) = fixture();
    let old = policies(API_FROM_WEB);
    let opened = diff(&old, &[], &graph, &mut cluster, &[]);
    assert_eq!(opened.policies.removed, ["a/api"]);
    // Every other port from web, and every port from the other three.
    let web = opened
        .opened
        .iter()
        .find(|path| path.client == "a/Deployment/web")
        .unwrap();
    assert_eq!(web.ports, "TCP 1-8079, 8081-65535; UDP any; SCTP any");
    assert_eq!(web.size, 3 * 65535 - 1);
    assert_eq!(opened.opened.len(), 3);
    let narrower = policies(&API_FROM_WEB.replace("{port: 8080}", "{port: 8081}"));
    let broken = diff(&old, &narrower, &graph, &mut cluster, &[]);
    assert_eq!(broken.broken.len(), 1);
    assert_eq!(broken.broken[0].blocked_by, ["ingress of a/(api)"]);
    assert_eq!(
        summary(&broken.closed),
        ["Observed a/Deployment/web -> a/Deployment/api TCP 8080 (1 pairs, 1 ports)"]
    );
    assert_eq!(
        summary(&broken.opened),
        ["Unobserved a/Deployment/web -> a/Deployment/api TCP 8081 (1 pairs, 1 ports)"]
    );
}

#[test]
fn fail_on_conditions_parse_and_hold_above_their_bound() {
    let parse = |text: &str| text.parse::<FailCondition>();
    assert_eq!(
        parse("unobserved-paths>0"),
        Ok(FailCondition {
            metric: Metric::UnobservedPaths,
            most: 0
        })
    );
    assert_eq!(parse("opened-paths>=3").unwrap().most, 2);
    assert_eq!(
        parse("closed-paths > 10").unwrap().to_string(),
        "closed-paths>10"
    );
    for bad in [
        "unobserved-paths",
        "paths>1",
        "opened-paths>x",
        "opened-paths>-1",
        "",
    ] {
        let error = parse(bad).unwrap_err();
        assert!(
            error.starts_with("expected METRIC>N or METRIC>=N"),
            "{bad}: {error}"
        );
    }
    assert_eq!(
        parse("opened-paths>=0").unwrap_err(),
        "\"opened-paths>=0\" always holds"
    );
    let (graph, mut cluster) = fixture();
    let judged = diff(&policies(API_FROM_WEB), &[], &graph, &mut cluster, &[]);
    assert!(parse("opened-paths>2").unwrap().holds(&judged));
    assert!(!parse("opened-paths>3").unwrap().holds(&judged));
    assert!(!parse("broken-connections>0").unwrap().holds(&judged));
}
