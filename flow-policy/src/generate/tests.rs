//! Generator tests: each semantic rule of the module's documentation.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::*;
use flow_model::{
    identity::{Identity, PeerKind, ServiceRef, Workload},
    record::{Endpoint, FlowRecord, Hook, Timestamp},
};

use crate::{cluster::PodView, graph::EdgeStats};

fn endpoint(
    ip: &str,
    port: u16,
    namespace: &str,
    kind: &str,
    name: &str,
    tenant: &str,
) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        identity: Arc::new(Identity {
            kind: Some(PeerKind::Pod),
            namespace: Some(namespace.into()),
            pod: Some(format!("{name}-1")),
            workload: Some(Workload {
                kind: kind.into(),
                name: name.into(),
            }),
            tenant: Some(tenant.into()),
            labels: [("app".to_owned(), name.to_owned())].into(),
            node: None,
            note: None,
        }),
        service: None,
        names: Vec::new(),
    }
}

fn address(ip: &str, port: u16, kind: PeerKind) -> Endpoint {
    let mut endpoint = Endpoint::new(ip.parse().unwrap(), port);
    endpoint.identity = Arc::new(Identity {
        kind: Some(kind),
        ..Identity::default()
    });
    endpoint
}

fn flow(source: Endpoint, destination: Endpoint, protocol: u8) -> FlowRecord {
    let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    FlowRecord {
        time,
        first_seen: time,
        cross_tenant: Some(
            source.identity.tenant.is_some()
                && source.identity.tenant != destination.identity.tenant
                && destination.identity.tenant.is_some(),
        ),
        source,
        destination,
        protocol: Protocol(protocol),
        icmp: None,
        packets: 1,
        bytes: 100,
        tcp_flags: Vec::new(),
        icmp_errors: None,
        is_reply: false,
        interface: "veth0".into(),
        interface_index: 0,
        hook: Hook::Ingress,
        node: "n".into(),
        new_connection: true,
        violation: false,
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

fn web(port: u16) -> Endpoint {
    endpoint("10.0.0.1", port, "shop", "Deployment", "web", "acme")
}

/// web → api (through Service api:80 → target 8080), web → cache 8080,
/// web → db 5432 in namespace data (same tenant), web → world 443, web →
/// coredns UDP 53, web → billing (tenant globex) 9000, a ping to the world.
fn shop_graph() -> Graph {
    let mut graph = Graph::new();
    let mut to_api = flow(
        web(40_000),
        endpoint("10.0.1.1", 8080, "shop", "Deployment", "api", "acme"),
        TCP,
    );
    to_api.destination.service = Some(ServiceRef {
        namespace: "shop".into(),
        name: "api".into(),
        ip: "10.96.0.10".parse().unwrap(),
        port: 80,
        target_port: Some(8080),
    });
    for record in [
        to_api,
        flow(
            web(40_001),
            endpoint("10.0.1.2", 8080, "shop", "Deployment", "cache", "acme"),
            TCP,
        ),
        flow(
            web(40_002),
            endpoint("10.0.2.1", 5432, "data", "StatefulSet", "db", "acme"),
            TCP,
        ),
        flow(
            web(40_003),
            address("203.0.113.9", 443, PeerKind::World),
            TCP,
        ),
        flow(
            web(40_004),
            endpoint(
                "10.0.9.1",
                53,
                "kube-system",
                "Deployment",
                "coredns",
                "kube-system",
            ),
            UDP,
        ),
        flow(
            web(40_005),
            endpoint(
                "10.0.3.1",
                9000,
                "billing",
                "Deployment",
                "billing",
                "globex",
            ),
            TCP,
        ),
        flow(web(0), address("203.0.113.9", 0, PeerKind::World), 1),
    ] {
        graph.observe(&record);
    }
    graph
}

fn view_of(graph: &Graph) -> ClusterView {
    let mut view = ClusterView::new();
    view.add_graph(graph);
    view
}

fn policy<'a>(proposal: &'a Proposal, name: &str) -> &'a WorkloadPolicy {
    proposal
        .policies
        .iter()
        .find(|policy| policy.workload.name == name)
        .unwrap_or_else(|| panic!("no policy for {name}: {:#?}", proposal.policies))
}

fn pods(namespace: &str, app: &str) -> PeerSpec {
    PeerSpec::Pods {
        namespace: namespace.into(),
        labels: Arc::new([("app".to_owned(), app.to_owned())].into()),
    }
}

fn ports(list: &[(u8, u16)]) -> Vec<PortSpec> {
    list.iter()
        .map(|(protocol, port)| PortSpec {
            protocol: Protocol(*protocol),
            port: *port,
            end_port: None,
        })
        .collect()
}

#[test]
fn each_workload_gets_exactly_its_edges_grouped_into_rules() {
    let graph = shop_graph();
    let proposal = propose(&graph, &view_of(&graph), &GenerateOptions::default());
    // kube-system gets no policies; the others each a default deny (billing
    // too: the cross-tenant edge into it is not allowed).
    assert_eq!(proposal.namespaces, ["billing", "data", "shop"]);
    let web = policy(&proposal, "web");
    assert_eq!(web.name, "allow-deployment-web");
    assert_eq!(
        web.selection.labels,
        [("app".to_owned(), "web".to_owned())].into()
    );
    assert!(web.ingress.is_empty());
    assert_eq!(
        web.egress,
        [
            // Same port set: api and cache share one rule; the target port,
            // never the Service's 80.
            RuleSpec {
                peers: vec![pods("shop", "api"), pods("shop", "cache")],
                ports: ports(&[(TCP, 8080)]),
            },
            RuleSpec {
                peers: vec![pods("data", "db")],
                ports: ports(&[(TCP, 5432)]),
            },
            // DNS: UDP and TCP 53 to the resolver pods.
            RuleSpec {
                peers: vec![pods("kube-system", "coredns")],
                ports: ports(&[(TCP, 53), (UDP, 53)]),
            },
            RuleSpec {
                peers: vec![PeerSpec::Cidr("203.0.113.9/32".into())],
                ports: ports(&[(TCP, 443)]),
            },
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    let api = policy(&proposal, "api");
    assert_eq!(
        api.ingress,
        [RuleSpec {
            peers: vec![pods("shop", "web")],
            ports: ports(&[(TCP, 8080)]),
        }]
    );
    assert!(api.egress.is_empty());
    assert!(policy(&proposal, "db").ingress[0].peers == [pods("shop", "web")]);
    // No policy for kube-system's coredns, nor for the other tenant's billing.
    assert!(
        proposal
            .policies
            .iter()
            .all(|policy| policy.workload.name != "coredns" && policy.workload.name != "billing")
    );
    // What is left out is said.
    assert!(
        proposal.notes.iter().any(
            |note| matches!(note, Note::CrossTenantExcluded(text) if text.contains("billing"))
        )
    );
    assert!(
        proposal
            .notes
            .iter()
            .any(|note| matches!(note, Note::Unexpressible(text) if text.contains("ICMP")))
    );
    assert!(
        proposal
            .notes
            .iter()
            .any(|note| matches!(note, Note::External(text) if text.contains("203.0.113.9")))
    );
    assert!(
        proposal
            .allowed
            .contains(&"shop/Deployment/web egress to shop pods app=api TCP/8080".to_owned())
    );
    assert!(!proposal.allowed.iter().any(|line| line.contains("billing")));
}

#[test]
fn cross_tenant_edges_need_the_flag_and_are_then_listed_as_included() {
    let graph = shop_graph();
    let options = GenerateOptions {
        allow_cross_tenant: true,
        ..GenerateOptions::default()
    };
    let proposal = propose(&graph, &view_of(&graph), &options);
    let web = policy(&proposal, "web");
    assert!(
        web.egress
            .iter()
            .any(|rule| rule.peers == [pods("billing", "billing")]
                && rule.ports == ports(&[(TCP, 9000)]))
    );
    assert_eq!(
        policy(&proposal, "billing").ingress[0].peers,
        [pods("shop", "web")]
    );
    assert!(
        proposal.notes.iter().any(
            |note| matches!(note, Note::CrossTenantIncluded(text) if text.contains("billing"))
        )
    );
}

#[test]
fn edges_to_a_platform_namespace_never_cross_tenants_even_when_recorded_so() {
    let graph = shop_graph();
    // The record said web -> billing crosses tenants (acme, globex).
    let options = GenerateOptions {
        platform_namespaces: BTreeSet::from(["billing".to_owned()]),
        ..GenerateOptions::default()
    };
    let proposal = propose(&graph, &view_of(&graph), &options);
    let web = policy(&proposal, "web");
    assert!(
        web.egress
            .iter()
            .any(|rule| rule.peers == [pods("billing", "billing")]
                && rule.ports == ports(&[(TCP, 9000)]))
    );
    let crossing: Vec<&Note> = proposal
        .notes
        .iter()
        .filter(|note| {
            matches!(
                note,
                Note::CrossTenantIncluded(_) | Note::CrossTenantExcluded(_)
            )
        })
        .collect();
    assert_eq!(crossing, Vec::<&Note>::new());
    // With the default platform namespaces it is left out and listed.
    let proposal = propose(&graph, &view_of(&graph), &GenerateOptions::default());
    let excluded: Vec<&Note> = proposal
        .notes
        .iter()
        .filter(|note| matches!(note, Note::CrossTenantExcluded(_)))
        .collect();
    assert_eq!(excluded.len(), 1, "{excluded:?}");
}

/// Ports as port entries: runs of consecutive ports become ranges.
fn port_specs(ports: &BTreeSet<(Protocol, u16)>) -> Vec<PortSpec> {
    port_ranges(ports.iter().copied())
}

#[test]
fn consecutive_ports_become_ranges_and_nothing_unobserved_is_allowed() {
    let specs = port_specs(
        &[
            (Protocol(6), 8000),
            (Protocol(6), 8001),
            (Protocol(6), 8002),
            (Protocol(6), 8004),
            (Protocol(6), 8005),
            (Protocol(17), 8001),
        ]
        .into(),
    );
    assert_eq!(
        specs,
        [
            PortSpec {
                protocol: Protocol(6),
                port: 8000,
                end_port: Some(8002)
            },
            PortSpec {
                protocol: Protocol(6),
                port: 8004,
                end_port: None
            },
            PortSpec {
                protocol: Protocol(6),
                port: 8005,
                end_port: None
            },
            PortSpec {
                protocol: Protocol(17),
                port: 8001,
                end_port: None
            },
        ]
    );
}

#[test]
fn host_network_services_and_unlabelled_workloads_are_never_guessed() {
    let mut graph = Graph::new();
    let mut untranslated = endpoint("10.96.0.50", 80, "shop", "Service", "legacy", "acme");
    Arc::make_mut(&mut untranslated.identity).kind = Some(PeerKind::Service);
    graph.observe(&flow(web(1), untranslated, TCP));
    let mut bare = endpoint("10.0.5.5", 7000, "shop", "Pod", "debug", "acme");
    Arc::make_mut(&mut bare.identity).labels.clear();
    graph.observe(&flow(web(2), bare, TCP));
    let mut view = view_of(&graph);
    view.add_pod(PodView {
        namespace: "shop".into(),
        name: "agent-x".into(),
        labels: [("app".to_owned(), "agent".to_owned())].into(),
        ips: Vec::new(),
        ports: Vec::new(),
        host_network: true,
        workload: WorkloadRef {
            namespace: "shop".into(),
            kind: "DaemonSet".into(),
            name: "agent".into(),
        },
    });
    graph.observe(&flow(
        web(3),
        endpoint("10.0.0.9", 9100, "shop", "DaemonSet", "agent", "acme"),
        TCP,
    ));
    let proposal = propose(&graph, &view, &GenerateOptions::default());
    // Nothing web did can be expressed: no policy allows it, and the
    // namespace's default deny makes the review list what it will block.
    assert!(proposal.policies.is_empty(), "{:#?}", proposal.policies);
    assert_eq!(proposal.namespaces, ["shop"]);
    let unselectable: Vec<&Note> = proposal
        .notes
        .iter()
        .filter(|note| matches!(note, Note::Unselectable(_)))
        .collect();
    assert_eq!(unselectable.len(), 3, "{unselectable:#?}");
    assert!(
        proposal
            .policies
            .iter()
            .all(|policy| policy.workload.name != "agent" && policy.workload.name != "legacy")
    );
}

#[test]
fn rendering_is_deterministic_valid_and_cross_namespace_peers_are_and_form() {
    let graph = shop_graph();
    let view = view_of(&graph);
    let first = render(
        &propose(&graph, &view, &GenerateOptions::default()),
        PolicyFormat::Networkpolicy,
    );
    // The same graph built in another order renders byte for byte the same.
    let mut reversed = Graph::new();
    let records: Vec<(EdgeKey, EdgeStats)> = graph
        .edges()
        .map(|(key, stats)| (key.clone(), stats.clone()))
        .collect();
    for (key, stats) in records.into_iter().rev() {
        reversed.apply(crate::graph::Change::Edge(crate::graph::Edge {
            key,
            stats,
        }));
    }
    for (workload, info) in graph.workloads() {
        reversed.apply(crate::graph::Change::Workload {
            workload: workload.clone(),
            info: info.clone(),
        });
    }
    assert_eq!(
        render(
            &propose(&reversed, &view_of(&reversed), &GenerateOptions::default()),
            PolicyFormat::Networkpolicy
        ),
        first
    );

    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        [
            "billing.default-deny.yaml",
            "data.allow-statefulset-db.yaml",
            "data.default-deny.yaml",
            "kustomization.yaml",
            "shop.allow-deployment-api.yaml",
            "shop.allow-deployment-cache.yaml",
            "shop.allow-deployment-web.yaml",
            "shop.default-deny.yaml",
        ]
    );
    assert!(first["kustomization.yaml"].contains("- shop.allow-deployment-web.yaml\n"));
    for (name, text) in &first {
        if name == "kustomization.yaml" {
            continue;
        }
        let parsed: NetworkPolicy =
            yaml_serde::from_str(text).unwrap_or_else(|error| panic!("{name}: {error}\n{text}"));
        assert!(
            text.starts_with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"),
            "{text}"
        );
        let problems = crate::evaluate::validate(&parsed);
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
    let web: NetworkPolicy =
        yaml_serde::from_str(&first["shop.allow-deployment-web.yaml"]).unwrap();
    let egress = web.spec.unwrap().egress.unwrap();
    let db_peer = egress
        .iter()
        .flat_map(|rule| rule.to.iter().flatten())
        .find(|peer| {
            peer.pod_selector
                .as_ref()
                .and_then(|selector| selector.match_labels.as_ref())
                .is_some_and(|labels| labels["app"] == "db")
        })
        .unwrap();
    // One peer entry holding both selectors: namespace AND pods.
    assert_eq!(
        db_peer
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[NAMESPACE_NAME_LABEL],
        "data"
    );
    let deny: NetworkPolicy = yaml_serde::from_str(&first["shop.default-deny.yaml"]).unwrap();
    let spec = deny.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    assert!(spec.ingress.is_none() && spec.egress.is_none());

    let cilium = render(
        &propose(&graph, &view, &GenerateOptions::default()),
        PolicyFormat::Cilium,
    );
    let text = &cilium["shop.allow-deployment-web.yaml"];
    assert!(
        text.starts_with("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"),
        "{text}"
    );
    assert!(
        text.contains("k8s:io.kubernetes.pod.namespace: data")
            && text.contains("toCIDR:")
            && text.contains("203.0.113.9/32"),
        "{text}"
    );
    assert!(
        cilium["shop.default-deny.yaml"].contains("ingress:\n  - {}\n")
            || cilium["shop.default-deny.yaml"].contains("ingress:\n  - {}"),
        "{}",
        cilium["shop.default-deny.yaml"]
    );
}

#[test]
fn exports_diff_against_the_previous_one_and_remove_only_their_own_files() {
    let directory = tempfile::tempdir().unwrap();
    let graph = shop_graph();
    let view = view_of(&graph);
    let proposal = propose(&graph, &view, &GenerateOptions::default());
    let summary =
        crate::export::export(directory.path(), &proposal, PolicyFormat::Networkpolicy).unwrap();
    assert!(!summary.had_previous);
    let review = std::fs::read_to_string(directory.path().join("REVIEW.md")).unwrap();
    assert!(
        review.contains("First export")
            && review.contains("billing")
            && review.contains("### shop/Deployment/web"),
        "{review}"
    );
    std::fs::write(directory.path().join("mine.yaml"), "kind: ConfigMap\n").unwrap();

    // The same again: byte-identical policies, no changes.
    let before: Vec<(String, Vec<u8>)> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .map(|path| (path.display().to_string(), std::fs::read(&path).unwrap()))
        .collect();
    let summary =
        crate::export::export(directory.path(), &proposal, PolicyFormat::Networkpolicy).unwrap();
    assert!(
        summary.had_previous
            && summary.added.is_empty()
            && summary.dropped.is_empty()
            && summary.removed.is_empty()
    );
    for (path, bytes) in &before {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path}");
    }
    assert!(
        std::fs::read_to_string(directory.path().join("REVIEW.md"))
            .unwrap()
            .contains("None: the same connections are allowed.")
    );

    // cache stops talking: its policy file goes, and the review says so.
    let mut smaller = Graph::new();
    for (key, stats) in graph.edges() {
        if key
            .server
            .workload()
            .is_some_and(|workload| workload.name == "cache")
        {
            continue;
        }
        smaller.apply(crate::graph::Change::Edge(crate::graph::Edge {
            key: key.clone(),
            stats: stats.clone(),
        }));
    }
    for (workload, info) in graph.workloads() {
        smaller.apply(crate::graph::Change::Workload {
            workload: workload.clone(),
            info: info.clone(),
        });
    }
    let proposal = propose(&smaller, &view, &GenerateOptions::default());
    let summary =
        crate::export::export(directory.path(), &proposal, PolicyFormat::Networkpolicy).unwrap();
    assert_eq!(summary.removed, ["shop.allow-deployment-cache.yaml"]);
    assert_eq!(
        summary.dropped,
        [
            "shop/Deployment/cache ingress from shop pods app=web TCP/8080",
            "shop/Deployment/web egress to shop pods app=cache TCP/8080",
        ]
    );
    assert!(summary.added.is_empty());
    assert!(
        directory.path().join("mine.yaml").exists(),
        "a file flow-agent did not write stays"
    );
    let review = std::fs::read_to_string(directory.path().join("REVIEW.md")).unwrap();
    assert!(
        review.contains(
            "no longer allowed: `shop/Deployment/web egress to shop pods app=cache TCP/8080`"
        ),
        "{review}"
    );
}

#[test]
fn cilium_selects_the_api_server_and_the_node_by_entity_and_flags_remote_nodes() {
    let mut graph = Graph::new();
    for (ip, port, kind) in [
        ("20.1.2.3", 443, PeerKind::KubeApiserver),
        ("10.224.0.4", 10250, PeerKind::Host),
        ("10.224.0.5", 10250, PeerKind::RemoteNode),
        ("203.0.113.9", 443, PeerKind::World),
    ] {
        graph.observe(&flow(web(40_000), address(ip, port, kind), TCP));
    }
    let view = view_of(&graph);
    let cilium_options = GenerateOptions {
        format: PolicyFormat::Cilium,
        ..GenerateOptions::default()
    };
    let proposal = propose(&graph, &view, &cilium_options);
    let text = &render(&proposal, PolicyFormat::Cilium)["shop.allow-deployment-web.yaml"];
    let spec: serde_json::Value =
        yaml_serde::from_str::<serde_json::Value>(text).unwrap()["spec"].clone();
    let egress = spec["egress"].as_array().unwrap();
    let rule_for = |port: &str, field: &str| -> Vec<String> {
        egress
            .iter()
            .filter(|rule| rule["toPorts"][0]["ports"][0]["port"] == port)
            .filter_map(|rule| rule[field].as_array())
            .flatten()
            .map(|value| value.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(rule_for("443", "toEntities"), ["kube-apiserver"]);
    assert_eq!(rule_for("443", "toCIDR"), ["203.0.113.9/32"]);
    assert_eq!(rule_for("10250", "toEntities"), ["host"]);
    assert_eq!(rule_for("10250", "toCIDR"), ["10.224.0.5/32"]);
    assert!(
        proposal.notes.iter().any(|note| matches!(note, Note::Unselectable(text) if text.contains("policy-cidr-match-mode=nodes") && text.contains("10.224.0.5"))),
        "{:?}",
        proposal.notes
    );

    // NetworkPolicy has no entities: every address is an ipBlock, and the
    // Cilium-only note is not there.
    let proposal = propose(&graph, &view, &GenerateOptions::default());
    let text = &render(&proposal, PolicyFormat::Networkpolicy)["shop.allow-deployment-web.yaml"];
    for block in [
        "20.1.2.3/32",
        "10.224.0.4/32",
        "10.224.0.5/32",
        "203.0.113.9/32",
    ] {
        assert!(text.contains(&format!("cidr: {block}")), "{block}: {text}");
    }
    assert!(!proposal.notes.iter().any(
        |note| matches!(note, Note::Unselectable(text) if text.contains("policy-cidr-match-mode"))
    ));
}

/// Noon of `day` days after day 20,800 (2026-12-14), plus `hours`.
fn noon(day: i64, hours: u64) -> Timestamp {
    let day = u64::try_from(20_800 + day).unwrap();
    Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(day * 86_400 + 43_200 + hours * 3_600))
}

/// web's edges, seen as often and as lately as their names say, the newest
/// at noon of day 0: api 10 connections over three days; cache 5 on one
/// day, a day before; queue 2 on two days; db (namespace data) 1, twelve
/// days before; the world over UDP, no SYN.
fn seen_graph() -> Graph {
    let mut graph = Graph::new();
    let mut learn = |server: Endpoint, protocol: u8, times: &[(i64, u64)], connection: bool| {
        for (index, (day, hours)) in times.iter().enumerate() {
            let mut record = flow(web(40_000 + index as u16), server.clone(), protocol);
            (record.time, record.first_seen) = (noon(*day, *hours), noon(*day, *hours));
            record.new_connection = connection;
            graph.observe(&record);
        }
    };
    let api = endpoint("10.0.1.1", 8080, "shop", "Deployment", "api", "acme");
    let mut api_times = vec![(-2, 0), (-2, 1), (-1, 0)];
    api_times.extend((0..7).map(|hours| (0, hours)));
    // The newest edge: noon of day 0 plus 6 hours, last seen by api.
    learn(api, TCP, &api_times, true);
    let cache = endpoint("10.0.1.2", 6379, "shop", "Deployment", "cache", "acme");
    learn(
        cache,
        TCP,
        &[(-1, 0), (-1, 1), (-1, 2), (-1, 3), (-1, 4)],
        true,
    );
    let queue = endpoint("10.0.1.3", 5672, "shop", "Deployment", "queue", "acme");
    learn(queue, TCP, &[(-1, 6), (0, 6)], true);
    let db = endpoint("10.0.2.1", 5432, "data", "StatefulSet", "db", "acme");
    learn(db, TCP, &[(-12, 6)], true);
    let world = address("203.0.113.9", 443, PeerKind::World);
    learn(world, UDP, &[(0, 0), (0, 1)], false);
    graph
}

fn web_egress(proposal: &Proposal) -> Vec<&str> {
    proposal
        .allowed
        .iter()
        .filter_map(|line| line.strip_prefix("shop/Deployment/web egress to "))
        .collect()
}

/// The lines of one section of REVIEW.md, `None` when it has none.
fn review_lines(proposal: &Proposal, title: &str) -> Option<Vec<String>> {
    let review = crate::export::review(
        proposal,
        PolicyFormat::Networkpolicy,
        &crate::export::ExportSummary::default(),
        &[],
    );
    let (_, rest) = review.split_once(&format!("\n## {title}\n"))?;
    let section = rest.split("\n## ").next().unwrap_or_default();
    Some(
        section
            .lines()
            .filter(|line| line.starts_with("- ") || *line == "None.")
            .map(str::to_owned)
            .collect(),
    )
}

fn with_thresholds(min_connections: Option<u64>, since_days: Option<u64>) -> Proposal {
    let graph = seen_graph();
    let options = GenerateOptions {
        thresholds: EdgeThresholds {
            min_connections,
            since: since_days.map(|days| Duration::from_secs(days * 86_400)),
        },
        ..GenerateOptions::default()
    };
    propose(&graph, &view_of(&graph), &options)
}

const LEFT_OUT: &str = "Edges left out by --min-connections / --since";

#[test]
fn rarely_seen_edges_are_allowed_and_marked_without_the_flags() {
    let proposal = with_thresholds(None, None);
    assert_eq!(
        web_egress(&proposal),
        [
            "203.0.113.9/32 UDP/443",
            "data pods app=db TCP/5432",
            "shop pods app=api TCP/8080",
            "shop pods app=cache TCP/6379",
            "shop pods app=queue TCP/5672",
        ]
    );
    assert_eq!(proposal.left_out, []);
    assert_eq!(review_lines(&proposal, LEFT_OUT), None);
    assert_eq!(
        review_lines(&proposal, "Rarely seen edges").unwrap(),
        [
            "- `shop/Deployment/web -> 203.0.113.9 (world) UDP/443`: 1 connection, 5 hours ago",
            "- `shop/Deployment/web -> data/StatefulSet/db TCP/5432`: 1 connection, 12 days ago",
            "- `shop/Deployment/web -> shop/Deployment/cache TCP/6379`: 5 connections on 1 day, 1 day ago",
            "- `shop/Deployment/web -> shop/Deployment/queue TCP/5672`: 2 connections on 2 days",
        ]
    );
    // Flags that leave nothing out change no policy.
    let lenient = with_thresholds(Some(1), Some(365));
    assert_eq!(
        (&lenient.policies, &lenient.allowed),
        (&proposal.policies, &proposal.allowed)
    );
    assert_eq!(review_lines(&lenient, LEFT_OUT).unwrap(), ["None."]);
}

#[test]
fn min_connections_leaves_out_edges_with_fewer_and_lists_each() {
    let proposal = with_thresholds(Some(2), None);
    assert_eq!(
        web_egress(&proposal),
        [
            "shop pods app=api TCP/8080",
            "shop pods app=cache TCP/6379",
            "shop pods app=queue TCP/5672",
        ]
    );
    // data keeps its default deny: db's only edge is left out, so db gets
    // no policy and its namespace denies everything.
    assert_eq!(proposal.namespaces, ["data", "shop"]);
    assert!(
        proposal
            .policies
            .iter()
            .all(|policy| policy.workload.name != "db")
    );
    assert_eq!(
        review_lines(&proposal, LEFT_OUT).unwrap(),
        [
            "- `shop/Deployment/web -> 203.0.113.9 (world) UDP/443`: 1 connection, 5 hours ago (left out by --min-connections 2)",
            "- `shop/Deployment/web -> data/StatefulSet/db TCP/5432`: 1 connection, 12 days ago (left out by --min-connections 2)",
        ]
    );
    assert_eq!(
        review_lines(&proposal, "Rarely seen edges").unwrap(),
        [
            "- `shop/Deployment/web -> shop/Deployment/cache TCP/6379`: 5 connections on 1 day, 1 day ago",
            "- `shop/Deployment/web -> shop/Deployment/queue TCP/5672`: 2 connections on 2 days",
        ]
    );
}

#[test]
fn since_counts_from_the_newest_edge_and_both_flags_name_themselves() {
    // 12 days before the newest is more than 7 days; 1 day (cache) is not.
    let proposal = with_thresholds(None, Some(7));
    assert_eq!(
        web_egress(&proposal),
        [
            "203.0.113.9/32 UDP/443",
            "shop pods app=api TCP/8080",
            "shop pods app=cache TCP/6379",
            "shop pods app=queue TCP/5672",
        ]
    );
    assert_eq!(
        review_lines(&proposal, LEFT_OUT).unwrap(),
        [
            "- `shop/Deployment/web -> data/StatefulSet/db TCP/5432`: 1 connection, 12 days ago (left out by --since 7days)"
        ]
    );
    // With --since 1d, cache too: 26 hours before the newest.
    assert_eq!(
        with_thresholds(None, Some(1)).left_out.len(),
        2,
        "db and cache"
    );
    let both = with_thresholds(Some(2), Some(7));
    assert_eq!(
        review_lines(&both, LEFT_OUT).unwrap(),
        [
            "- `shop/Deployment/web -> 203.0.113.9 (world) UDP/443`: 1 connection, 5 hours ago (left out by --min-connections 2)",
            "- `shop/Deployment/web -> data/StatefulSet/db TCP/5432`: 1 connection, 12 days ago (left out by --min-connections 2 and --since 7days)",
        ]
    );
}

#[test]
fn outside_addresses_keep_their_names_and_a_name_on_two_addresses_marks_both_changed() {
    let mut graph = shop_graph();
    let named = |ip: &str, port: u16, names: &[&str]| {
        let mut destination = address(ip, 443, PeerKind::World);
        destination.names = names.iter().map(|name| Arc::from(*name)).collect();
        flow(web(port), destination, TCP)
    };
    graph.observe(&named("20.42.65.92", 41_000, &["myvault.vault.azure.net"]));
    graph.observe(&named("20.42.65.93", 41_001, &["myvault.vault.azure.net"]));
    graph.observe(&named(
        "52.239.1.4",
        41_002,
        &["acct.blob.core.windows.net"],
    ));
    let proposal = propose(&graph, &view_of(&graph), &GenerateOptions::default());
    let seen: Vec<(String, Vec<String>, bool)> = proposal
        .named_addresses
        .iter()
        .map(|named| {
            (
                named.address.to_string(),
                named.names.iter().cloned().collect(),
                named.changed,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "20.42.65.92".to_owned(),
                vec!["myvault.vault.azure.net".to_owned()],
                true
            ),
            (
                "20.42.65.93".to_owned(),
                vec!["myvault.vault.azure.net".to_owned()],
                true
            ),
            (
                "52.239.1.4".to_owned(),
                vec!["acct.blob.core.windows.net".to_owned()],
                false
            ),
        ]
    );
    // The unnamed world address of the shop graph is not listed.
    assert!(
        proposal
            .named_addresses
            .iter()
            .all(|named| named.address.to_string() != "203.0.113.9")
    );
}

#[test]
fn cilium_policies_allow_named_addresses_by_name_with_the_dns_rule_and_read_back_strictly() {
    use crate::cilium::{FqdnSelector, L7Rules, Policy};
    let mut graph = shop_graph();
    for (ip, port, name) in [
        ("20.42.65.92", 41_000, "myvault.vault.azure.net"),
        ("52.239.1.4", 41_001, "acct.blob.core.windows.net"),
    ] {
        let mut destination = address(ip, 443, PeerKind::World);
        destination.names = vec![Arc::from(name)];
        graph.observe(&flow(web(port), destination, TCP));
    }
    let options = GenerateOptions {
        format: PolicyFormat::Cilium,
        ..GenerateOptions::default()
    };
    let proposal = propose(&graph, &view_of(&graph), &options);
    let files = rendered_policies(&proposal, PolicyFormat::Cilium);
    let mut web = None;
    for (file, text) in files {
        // Every document reads back under the strict types.
        let policy = Policy::from_yaml(&text).unwrap_or_else(|error| panic!("{file}: {error}"));
        if file == "shop.allow-deployment-web.yaml" {
            web = Some(policy);
        }
    }
    let egress = web.unwrap().spec.unwrap().egress.unwrap();
    let by_name: Vec<_> = egress
        .iter()
        .filter(|rule| rule.to_fqdns.is_some())
        .collect();
    assert_eq!(by_name.len(), 1, "{egress:#?}");
    assert_eq!(
        by_name[0].to_fqdns.as_deref().unwrap(),
        [
            FqdnSelector::MatchName("acct.blob.core.windows.net".into()),
            FqdnSelector::MatchName("myvault.vault.azure.net".into()),
        ]
    );
    let ports = by_name[0].to_ports.as_ref().unwrap();
    assert_eq!(
        (
            ports[0].ports[0].port.as_str(),
            ports[0].ports[0].protocol.as_str()
        ),
        ("443", "TCP")
    );
    // The named addresses are not allowed by address as well.
    assert!(egress.iter().all(|rule| {
        rule.to_cidr
            .iter()
            .flatten()
            .all(|cidr| !cidr.starts_with("20.42.65.92") && !cidr.starts_with("52.239.1.4"))
    }));
    // The DNS rule: to the resolver's pods, UDP and TCP 53, through the proxy.
    let dns: Vec<_> = egress
        .iter()
        .flat_map(|rule| rule.to_ports.iter().flatten())
        .filter(|ports| ports.ports.iter().any(|port| port.port == "53"))
        .collect();
    assert!(!dns.is_empty(), "{egress:#?}");
    for rule in dns {
        assert_eq!(
            rule.rules,
            Some(L7Rules {
                dns: vec![FqdnSelector::MatchPattern("*".into())]
            })
        );
        let protocols: BTreeSet<&str> = rule
            .ports
            .iter()
            .map(|port| port.protocol.as_str())
            .collect();
        assert_eq!(protocols, BTreeSet::from(["TCP", "UDP"]));
    }
}

#[test]
fn the_review_map_draws_allowed_edges_with_cross_tenant_ones_apart() {
    let graph = shop_graph();
    let options = GenerateOptions {
        allow_cross_tenant: true,
        ..GenerateOptions::default()
    };
    let proposal = propose(&graph, &view_of(&graph), &options);
    // The cross-tenant edge first; then by request bytes (each edge one
    // record of the same size), then by name: workloads (other namespaces
    // first, in name order) before addresses. DNS gets UDP and TCP 53; the
    // ping is not allowed, so not drawn.
    assert_eq!(
        crate::mermaid::map::namespace_chart("shop", &proposal.map).render(),
        "flowchart LR
  n0[\"Deployment/web\"]
  n1([\"billing/Deployment/billing\"])
  n2([\"data/StatefulSet/db\"])
  n3([\"kube-system/Deployment/coredns\"])
  n4[\"Deployment/api\"]
  n5[\"Deployment/cache\"]
  n6{{\"203.0.113.9 #40;world#41;\"}}
  n0 ==>|\"TCP 9000\"| n1
  n0 -->|\"TCP 5432\"| n2
  n0 -->|\"TCP 53, UDP 53\"| n3
  n0 -->|\"TCP 8080\"| n4
  n0 -->|\"TCP 8080\"| n5
  n0 -->|\"TCP 443\"| n6
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1,n2,n3 otherNamespace
  classDef outside fill:#fff8e1,stroke:#b08800
  class n6 outside
  linkStyle 0 stroke:#d7263d,stroke-width:3px
"
    );
}

#[test]
fn workloads_reaching_names_without_a_dns_edge_are_named_for_review() {
    // api reaches a named address and never queried DNS; web did query.
    let mut graph = shop_graph();
    let api = || endpoint("10.0.1.1", 41_000, "shop", "Deployment", "api", "acme");
    for (client, ip) in [(web(41_001), "20.42.65.92"), (api(), "52.239.1.4")] {
        let mut destination = address(ip, 443, PeerKind::World);
        destination.names = vec![Arc::from("myvault.vault.azure.net")];
        graph.observe(&flow(client, destination, TCP));
    }
    // An unnamed outside address asks for nothing.
    graph.observe(&flow(
        endpoint("10.0.1.2", 41_002, "shop", "Deployment", "cache", "acme"),
        address("203.0.113.9", 443, PeerKind::World),
        TCP,
    ));
    let options = GenerateOptions {
        format: PolicyFormat::Cilium,
        ..GenerateOptions::default()
    };
    let proposal = propose(&graph, &view_of(&graph), &options);
    assert_eq!(proposal.names_without_dns, ["shop/Deployment/api"]);
    // Once api's DNS is learned, nothing is left to say.
    graph.observe(&flow(
        api(),
        endpoint(
            "10.0.9.1",
            53,
            "kube-system",
            "Deployment",
            "coredns",
            "kube-system",
        ),
        UDP,
    ));
    let proposal = propose(&graph, &view_of(&graph), &options);
    assert_eq!(proposal.names_without_dns, Vec::<String>::new());
}
