//! The policy learner end to end: the shop's pods of two tenants talk, a real
//! agent learns the graph (crash-safe under --state-dir), `flow-agent policy
//! generate` proposes policies from the agent and from Hubble-shaped flow
//! files, `flow-agent policy check` proves the observed traffic allowed and
//! every pair that never talked denied, and monitor mode flags the rest.
//!
//! Needs root and nft; skipped with a message otherwise.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    cli::cli,
    netns::Agent,
    shop::{cluster, tcp_client, tcp_server, traffic},
};
use flow_lab::Node;
use flow_model::record::{FlowRecord, Protocol};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

const API: &str = "127.0.0.1:4245";
const METRICS: &str = "127.0.0.1:9090";

/// The agent's `/metrics`, scraped in the node.
fn scrape(node: &Node) -> String {
    use std::io::{Read as _, Write as _};
    node.netns
        .run(|| {
            let mut stream = std::net::TcpStream::connect(METRICS).unwrap();
            stream
                .write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: flow-agent\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .unwrap()
}

fn path(directory: &Path, name: &str) -> String {
    directory.join(name).to_str().unwrap().to_owned()
}

fn wait_for_edges(node: &Node, at_least: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let edges = common::cli::learned_edges(node, API, &[]);
        if edges >= at_least {
            return edges;
        }
        assert!(Instant::now() < deadline, "only {edges} edges learned");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn policy_files(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

fn policy(directory: &Path, name: &str) -> NetworkPolicy {
    let text = std::fs::read_to_string(directory.join(name)).unwrap();
    yaml_serde::from_str(&text).unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// `policy check`; returns (exit success, JSON report).
fn check(node: &Node, policies: &Path, flows: &str, inventory: &str) -> (bool, Value) {
    let output = cli(
        node,
        &[
            "policy",
            "check",
            "--policies",
            policies.to_str().unwrap(),
            "--flows",
            flows,
            "--inventory",
            inventory,
            "-o",
            "json",
        ],
    );
    let report: Value = serde_json::from_str(&output.stdout.join("\n"))
        .unwrap_or_else(|error| panic!("{error}: {:?} {:?}", output.stdout, output.stderr));
    (output.success, report)
}

fn write_records(file: &Path, records: &[FlowRecord]) {
    let lines: Vec<String> = records
        .iter()
        .map(|record| serde_json::to_string(record).unwrap())
        .collect();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
}

#[test]
fn generated_policies_allow_exactly_what_the_agent_learned() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let inventory = cluster.inventory.to_str().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let flows = path(dir, "flows.jsonl");
    let agent = Agent::on(
        node,
        "200ms",
        &[
            "--inventory",
            inventory,
            "--grpc-listen",
            API,
            "--state-dir",
            &path(dir, "state"),
            "--output-file",
            &flows,
        ],
    );
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));
    let (via_service, cross_tenant, udp) = traffic(node);
    // frontend → cart, cart → db, api → db.
    wait_for_edges(node, 3);

    // The same flows as Hubble prints them, for offline learning.
    let hubble = cli(
        node,
        &[
            "observe",
            "--server",
            API,
            "--last",
            "100000",
            "-o",
            "hubble-json",
        ],
    );
    assert!(hubble.success);
    std::fs::write(dir.join("hubble.jsonl"), hubble.stdout.join("\n") + "\n").unwrap();

    let generate = |extra: &[&str], output_dir: &str| {
        let mut args = vec![
            "policy",
            "generate",
            "--inventory",
            inventory,
            "--output-dir",
            output_dir,
        ];
        args.extend_from_slice(extra);
        let output = cli(node, &args);
        assert!(output.success, "{:?}", output.stderr);
        output.stdout
    };
    let summary = generate(
        &["--server", API, "--save-graph", &path(dir, "graph.json")],
        &path(dir, "policies"),
    );
    assert!(
        summary[0].contains("1 cross-tenant edges left for review"),
        "{summary:?}"
    );
    generate(
        &["--server", API, "--allow-cross-tenant"],
        &path(dir, "policies-all"),
    );
    generate(
        &[
            "--flows",
            &path(dir, "hubble.jsonl"),
            "--allow-cross-tenant",
        ],
        &path(dir, "policies-hubble"),
    );
    generate(
        &["--graph", &path(dir, "graph.json"), "--allow-cross-tenant"],
        &path(dir, "policies-graph"),
    );
    let output = agent.stop();
    assert!(output.success);
    // Our own JSON lines, as the agent wrote them to its file.
    generate(
        &["--flows", &flows, "--allow-cross-tenant"],
        &path(dir, "policies-flows"),
    );

    // One default deny per namespace, one policy per workload that talked.
    let policies = dir.join("policies");
    assert_eq!(
        policy_files(&policies),
        [
            "kustomization.yaml",
            "shop-a.allow-deployment-cart.yaml",
            "shop-a.allow-deployment-frontend.yaml",
            "shop-a.default-deny.yaml",
            "shop-b.allow-deployment-api.yaml",
            "shop-b.allow-statefulset-db.yaml",
            "shop-b.default-deny.yaml",
        ]
    );
    // cart admits frontend on the target port 8080 (the Service's port is 80),
    // selected by its one stable label; its egress to the other tenant's db
    // is left out without --allow-cross-tenant.
    let cart = policy(&policies, "shop-a.allow-deployment-cart.yaml")
        .spec
        .unwrap();
    assert_eq!(
        cart.pod_selector.unwrap().match_labels.unwrap(),
        [("app".to_owned(), "cart".to_owned())].into()
    );
    let ingress = cart.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    let from = ingress[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app"],
        "frontend"
    );
    assert!(
        from[0].namespace_selector.is_none(),
        "same namespace: podSelector alone"
    );
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(
        (ports.len(), ports[0].protocol.as_deref()),
        (1, Some("TCP"))
    );
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
    assert!(cart.egress.is_none());
    let review = std::fs::read_to_string(policies.join("REVIEW.md")).unwrap();
    assert!(
        review.contains("shop-a/Deployment/cart -> shop-b/StatefulSet/db TCP/5432"),
        "{review}"
    );
    // With the flag, db admits cart from the other namespace: AND-form peer.
    let db = policy(
        &dir.join("policies-all"),
        "shop-b.allow-statefulset-db.yaml",
    )
    .spec
    .unwrap();
    let peers: Vec<_> = db
        .ingress
        .unwrap()
        .into_iter()
        .flat_map(|rule| rule.from.unwrap())
        .collect();
    let cart_peer = peers
        .iter()
        .find(|peer| {
            peer.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app"]
                == "cart"
        })
        .unwrap();
    assert_eq!(
        cart_peer
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "shop-a"
    );

    // Valid against the Kubernetes 1.33 OpenAPI schema, unknown fields refused.
    if let Some(python) = common::cli::python() {
        let validate = python.with_file_name("kubernetes-validate");
        for set in ["policies", "policies-all"] {
            let files: Vec<String> = policy_files(&dir.join(set))
                .into_iter()
                .filter(|name| name != "kustomization.yaml")
                .map(|name| path(&dir.join(set), &name))
                .collect();
            let output = std::process::Command::new(&validate)
                .args(["--strict", "-k", "1.33.0"])
                .args(&files)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{text}");
            assert_eq!(
                text.matches(" passed for resource networkpolicy/").count(),
                files.len(),
                "{text}"
            );
        }
    }

    // The same policies from the agent, from Hubble's JSON, from our JSON
    // lines and from the saved graph: byte for byte.
    for other in ["policies-hubble", "policies-flows", "policies-graph"] {
        for name in policy_files(&dir.join("policies-all")) {
            assert_eq!(
                std::fs::read_to_string(dir.join("policies-all").join(&name)).unwrap(),
                std::fs::read_to_string(dir.join(other).join(&name)).unwrap(),
                "{other}/{name}"
            );
        }
    }

    // Checked against everything the agent recorded: with the cross-tenant
    // edge allowed nothing is denied; without it, exactly that connection.
    let (clean, report) = check(node, &dir.join("policies-all"), &flows, inventory);
    assert!(clean, "{report:#}");
    assert_eq!(report["denied"], serde_json::json!([]));
    // Every request the checker could judge is allowed, and there are some.
    assert_eq!(report["allowed"], report["checked"], "{report:#}");
    assert!(report["checked"].as_u64().unwrap() >= 3, "{report:#}");
    assert_eq!(report["unresolved"], 0, "{report:#}");
    let (clean, report) = check(node, &policies, &flows, inventory);
    assert!(!clean);
    let denied = report["denied"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "{report:#}");
    assert_eq!(denied[0]["source"], "shop-a/cart-5c8b-p000");
    assert_eq!(denied[0]["destination"], "shop-b/db-0");
    assert_eq!(
        (denied[0]["protocol"].as_str(), denied[0]["port"].as_u64()),
        (Some("TCP"), Some(5432))
    );
    assert_eq!(
        denied[0]["blocked_by"],
        serde_json::json!(["egress of shop-a/cart-5c8b-p000", "ingress of shop-b/db-0"])
    );

    // Least privilege, counted: every other pair of pods, on the shop's ports
    // and a few common ones, over TCP and UDP, is denied.
    let records = &output.records;
    let observed: BTreeSet<(IpAddr, IpAddr, Protocol, u16)> = records
        .iter()
        .filter(|record| {
            !record.is_reply
                && record
                    .protocol
                    .name()
                    .is_some_and(|name| name == "TCP" || name == "UDP")
        })
        .map(|record| {
            (
                record.source.ip,
                record.destination.ip,
                record.protocol,
                record.destination.port,
            )
        })
        .collect();
    assert!(observed.contains(&(
        IpAddr::V4(node.pods[0].ipv4),
        IpAddr::V4(node.pods[1].ipv4),
        Protocol(6),
        8080
    )));
    let template = records
        .iter()
        .find(|record| record.source.port == via_service && !record.is_reply)
        .unwrap();
    let endpoint_of = |ip: IpAddr| {
        records
            .iter()
            .flat_map(|record| [&record.source, &record.destination])
            .find(|end| end.ip == ip && end.identity.pod.is_some())
            .unwrap()
            .clone()
    };
    let mut probes = Vec::new();
    for from in &node.pods {
        for to in &node.pods {
            if from.ipv4 == to.ipv4 {
                continue;
            }
            for protocol in [Protocol(6), Protocol(17)] {
                for port in [80, 443, 5432, 8080, 9999] {
                    let key = (IpAddr::V4(from.ipv4), IpAddr::V4(to.ipv4), protocol, port);
                    if observed.contains(&key) {
                        continue;
                    }
                    let mut probe = template.clone();
                    probe.source = endpoint_of(IpAddr::V4(from.ipv4));
                    probe.source.port = 50_000;
                    probe.destination = endpoint_of(IpAddr::V4(to.ipv4));
                    probe.destination.port = port;
                    probe.destination.service = None;
                    probe.protocol = protocol;
                    probes.push(probe);
                }
            }
        }
    }
    assert_eq!(probes.len(), 12 * 2 * 5 - 3, "{observed:?}");
    write_records(&dir.join("unobserved.jsonl"), &probes);
    let (clean, report) = check(
        node,
        &dir.join("policies-all"),
        &path(dir, "unobserved.jsonl"),
        inventory,
    );
    assert!(!clean);
    assert_eq!(report["checked"], 117);
    assert_eq!(report["allowed"], 0, "over-permission: {report:#}");
    let denied_records: u64 = report["denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|denial| denial["records"].as_u64().unwrap())
        .sum();
    assert_eq!(denied_records, 117);
    let _ = (cross_tenant, udp);
}

#[test]
fn check_tells_denials_from_bad_input_by_exit_status() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::create_dir(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/deny.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    let flow = r#"{"time":"2026-11-20T10:00:00Z","first_seen":"2026-11-20T10:00:00Z","source":{"ip":"10.0.0.1","port":40000,"kind":"pod","namespace":"shop","pod":"web-1","workload":{"kind":"Deployment","name":"web"},"labels":{"app":"web"}},"destination":{"ip":"10.0.0.2","port":8080,"kind":"pod","namespace":"shop","pod":"api-1","workload":{"kind":"Deployment","name":"api"},"labels":{"app":"api"}},"protocol":"TCP","packets":1,"bytes":60,"is_reply":false,"interface":"veth0","hook":"ingress","node":"n"}"#;
    std::fs::write(dir.join("flows.jsonl"), format!("{flow}\n")).unwrap();
    let run = |policies: &str, flows: &str| {
        let output = std::process::Command::new(common::cli::binary())
            .args(["policy", "check", "--policies", policies, "--flows", flows])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&path(dir, "policies"), &path(dir, "flows.jsonl"));
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains(
            "DENIED shop/web-1 -> shop/api-1 TCP/8080 (1 records; blocked by ingress of shop/api-1)"
        ),
        "{stdout}"
    );
    let (code, _, stderr) = run(&path(dir, "policies"), &path(dir, "missing.jsonl"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("missing.jsonl"), "{stderr}");
    std::fs::write(dir.join("policies/bad.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n").unwrap();
    let (code, _, stderr) = run(&path(dir, "policies"), &path(dir, "flows.jsonl"));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bad.yaml: document 1")
            && stderr.contains("spec.ingress[0].ports[0].port: 70000 is not a port"),
        "{stderr}"
    );
}

#[test]
fn the_learned_graph_survives_kill_9_and_a_clean_restart_compacts_it() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let inventory = cluster.inventory.to_str().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let state = path(directory.path(), "state");
    let args = [
        "--inventory",
        inventory,
        "--grpc-listen",
        API,
        "--state-dir",
        state.as_str(),
    ];
    let agent = Agent::on(node, "100ms", &args);
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));

    // frontend sends UDP to ever new ports of cart: one new edge each, while
    // the agent is killed.
    let running = Arc::new(AtomicBool::new(true));
    let target = IpAddr::V4(node.pods[1].ipv4);
    let sender = {
        let running = Arc::clone(&running);
        node.pods[0].netns.spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut port = 20_000u16;
            while running.load(Ordering::SeqCst) && port < 60_000 {
                for _ in 0..20 {
                    let _ = socket.send_to(&[1u8; 16], SocketAddr::new(target, port));
                    port += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            port - 20_000
        })
    };
    let acknowledged = wait_for_edges(node, 200);
    agent.kill();
    running.store(false, Ordering::SeqCst);
    let sent = sender.join().unwrap().unwrap();
    assert!(sent as usize > acknowledged);

    // Restarted on the same directory: everything the API had shown is back.
    let agent = Agent::on(node, "100ms", &args);
    agent.wait_for_log("learned graph recovered", Duration::from_secs(5));
    let recovered = common::cli::learned_edges(node, API, &[]);
    assert!(recovered >= acknowledged, "{recovered} < {acknowledged}");
    let log = agent
        .stderr()
        .into_iter()
        .find(|line| line.contains("learned graph recovered"))
        .unwrap();
    assert!(
        log.contains("snapshot_edges=0") && !log.contains("replayed=0"),
        "{log}"
    );
    // A clean stop writes a snapshot; the next start replays nothing.
    assert!(agent.stop().success);
    let agent = Agent::on(node, "100ms", &args);
    agent.wait_for_log("learned graph recovered", Duration::from_secs(5));
    let log = agent
        .stderr()
        .into_iter()
        .find(|line| line.contains("learned graph recovered"))
        .unwrap();
    assert!(
        log.contains(&format!("snapshot_edges={recovered}")) && log.contains("replayed=0"),
        "{log}"
    );
    assert_eq!(common::cli::learned_edges(node, API, &[]), recovered);
    assert!(agent.stop().success);
}

#[test]
fn monitor_mode_flags_exactly_the_connections_outside_the_approved_policies() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let inventory = cluster.inventory.to_str().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    // Learn and approve.
    let agent = Agent::on(
        node,
        "200ms",
        &[
            "--inventory",
            inventory,
            "--grpc-listen",
            API,
            "--state-dir",
            &path(dir, "state"),
        ],
    );
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));
    traffic(node);
    wait_for_edges(node, 3);
    let output = cli(
        node,
        &[
            "policy",
            "generate",
            "--server",
            API,
            "--inventory",
            inventory,
            "--allow-cross-tenant",
            "--output-dir",
            &path(dir, "approved"),
        ],
    );
    assert!(output.success, "{:?}", output.stderr);
    assert!(agent.stop().success);

    // Monitor: the known traffic again, and api → cart, which never happened.
    let agent = Agent::on(
        node,
        "200ms",
        &[
            "--inventory",
            inventory,
            "--grpc-listen",
            API,
            "--policies",
            &path(dir, "approved"),
            "--metrics-listen",
            METRICS,
        ],
    );
    agent.wait_for_log("monitor mode", Duration::from_secs(5));
    let follower = flow_lab::LabProcess::start(
        &node.netns,
        common::cli::binary(),
        &[
            "observe",
            "--server",
            API,
            "--follow",
            "--violations",
            "-o",
            "json",
        ],
        Some("observe"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::cli::status(node, API, &[])["subscribers"] != "1" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    traffic(node);
    let server = tcp_server(node, 1, 8080, 10, 10);
    let intruder = tcp_client(
        node,
        3,
        SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 8080),
        10,
        10,
    );
    server.join().unwrap().unwrap();
    // Read the status once every record of the exchange is out: the count of
    // violating records the agent printed agrees with the status, and did
    // not move over two flush intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut previous = None;
    let state = loop {
        let state = common::cli::status(node, API, &[]);
        let printed = agent
            .records()
            .iter()
            .filter(|record| record.violation)
            .count();
        let agrees = state["monitoring"] == format!("yes, {printed} violations");
        if agrees && printed > 0 && previous == Some(printed) {
            break state;
        }
        previous = Some(printed);
        assert!(
            Instant::now() < deadline,
            "violations never settled: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(400));
    };
    // The metrics count them against the namespace whose ingress refuses
    // them, published with the status.
    let metrics = scrape(node);
    let output = agent.stop();
    let followed = follower.wait_for_exit(Duration::from_secs(10)).unwrap();

    let violating: Vec<&FlowRecord> = output
        .records
        .iter()
        .filter(|record| record.violation)
        .collect();
    assert!(!violating.is_empty());
    for record in &violating {
        assert_eq!(
            (record.source.port, record.destination.port),
            (intruder, 8080),
            "{record:?}"
        );
        assert_eq!(
            record.source.identity.workload.as_ref().unwrap().name,
            "api"
        );
        assert!(!record.is_reply);
    }
    // Every record of the approved traffic passes.
    assert!(
        output
            .records
            .iter()
            .filter(|record| record.source.port != intruder)
            .all(|record| !record.violation)
    );
    // The API's violation stream is exactly those records, the status counts
    // them, and the log names the connection.
    let streamed: Vec<FlowRecord> = followed
        .stdout
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(streamed.iter().collect::<Vec<_>>(), violating);
    assert_eq!(
        state["monitoring"],
        format!("yes, {} violations", violating.len())
    );
    let tenant = violating[0].destination.identity.tenant.clone();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("flowagent_policy_violations_total"))
        .collect();
    assert_eq!(
        series,
        [format!(
            "flowagent_policy_violations_total{{namespace=\"shop-a\",tenant=\"{}\"}} {}",
            tenant.unwrap_or_default(),
            violating.len()
        )],
        "{metrics}"
    );
    assert!(
        output
            .stderr
            .iter()
            .any(|line| line.contains("policy violation")
                && line.contains("shop-b/api-77aa-p000 -> shop-a/cart-5c8b-p000 TCP/8080")
                && line.contains("ingress of shop-a/cart-5c8b-p000")),
        "{:?}",
        output.stderr
    );
}

/// Parses one connection of `nca -o txt_no_fw_rules` ("All connections" or
/// "{protocols:TCP,UDP,dst_ports:80,8000-8002}") into the probes it allows.
fn nca_allows(connection: &str, probes: &BTreeSet<(Protocol, u16)>) -> BTreeSet<(Protocol, u16)> {
    if connection.trim() == "All connections" {
        return probes.clone();
    }
    let mut allowed = BTreeSet::new();
    for group in connection.split(';') {
        let group = group.trim().trim_start_matches('{').trim_end_matches('}');
        let (protocols, ports) = match group.split_once(",dst_ports:") {
            Some((protocols, ports)) => (protocols, Some(ports)),
            None => (group, None),
        };
        let protocols: Vec<Protocol> = protocols
            .trim_start_matches("protocols:")
            .split(',')
            .map(|name| {
                name.trim()
                    .parse()
                    .unwrap_or_else(|error| panic!("{connection}: {error}"))
            })
            .collect();
        for (protocol, port) in probes {
            let port_ok = ports.is_none_or(|ports| {
                ports
                    .split(',')
                    .map(str::trim)
                    .any(|range| match range.split_once('-') {
                        Some((low, high)) => {
                            (low.parse::<u16>().unwrap()..=high.parse().unwrap()).contains(port)
                        }
                        None => range.parse::<u16>().unwrap() == *port,
                    })
            });
            if protocols.contains(protocol) && port_ok {
                allowed.insert((*protocol, *port));
            }
        }
    }
    allowed
}

#[test]
fn an_independent_analyzer_computes_the_same_connectivity_as_the_evaluator() {
    use flow_policy::{
        evaluate::{Evaluator, Subject, load_policies},
        generate::{GenerateOptions, PolicyFormat, propose, render},
        graph::Party,
        synthetic::{Shape, generate},
    };
    let Some(python) = common::cli::python() else {
        return;
    };
    let synthetic = generate(Shape {
        tenants: 3,
        namespaces: 2,
        workloads: 6,
        edges_per_workload: 6,
        seed: 11,
    });
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let proposal = propose(
        &synthetic.graph,
        &synthetic.cluster,
        &GenerateOptions::default(),
    );
    std::fs::create_dir(dir.join("policies")).unwrap();
    for (name, text) in render(&proposal, PolicyFormat::Networkpolicy) {
        if name != "kustomization.yaml" {
            std::fs::write(dir.join("policies").join(name), text).unwrap();
        }
    }
    // The cluster as the analyzer reads it.
    let cluster = &synthetic.cluster;
    let mut namespaces = String::from("apiVersion: v1\nkind: NamespaceList\nitems:\n");
    for namespace in cluster.namespaces() {
        let labels = serde_json::to_string(&cluster.namespace_labels(namespace)).unwrap();
        namespaces.push_str(&format!("- {{apiVersion: v1, kind: Namespace, metadata: {{name: {namespace}, labels: {labels}}}}}\n"));
    }
    let mut pods = String::from("apiVersion: v1\nkind: PodList\nitems:\n");
    for pod in cluster.pods() {
        let labels = serde_json::to_string(&pod.labels).unwrap();
        pods.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: {}, namespace: {}, labels: {labels}}}, spec: {{containers: [{{name: main, image: app}}]}}, status: {{podIP: {}}}}}\n",
            pod.name, pod.namespace, pod.ips[0]
        ));
    }
    std::fs::write(dir.join("namespaces.yaml"), namespaces).unwrap();
    std::fs::write(dir.join("pods.yaml"), pods).unwrap();
    let output = std::process::Command::new(python.with_file_name("nca"))
        .args([
            "--connectivity",
            &path(dir, "policies"),
            "-n",
            &path(dir, "namespaces.yaml"),
            "-p",
            &path(dir, "pods.yaml"),
            "-o",
            "txt_no_fw_rules",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Probes: every port the graph saw, and DNS over TCP.
    let mut probes: BTreeSet<(Protocol, u16)> = [(Protocol(6), 53)].into();
    for (key, _) in synthetic.graph.edges() {
        if let (Party::Workload(_), Party::Workload(_)) = (&key.client, &key.server) {
            probes.insert((key.protocol, key.port));
        }
    }
    let mut theirs: BTreeSet<(String, String, Protocol, u16)> = BTreeSet::new();
    for line in text.lines() {
        let Some((ends, connection)) = line.split_once(" : ") else {
            continue;
        };
        let Some((source, destination)) = ends.split_once(" => ") else {
            continue;
        };
        let (Some(source), Some(destination)) = (
            source.strip_suffix("[Pod]"),
            destination.strip_suffix("[Pod]"),
        ) else {
            continue;
        };
        for (protocol, port) in nca_allows(connection, &probes) {
            theirs.insert((source.to_owned(), destination.to_owned(), protocol, port));
        }
    }
    let policies = load_policies(&dir.join("policies")).unwrap();
    let evaluator = Evaluator::new(cluster, &policies);
    let mut ours = BTreeSet::new();
    for from in cluster.pods() {
        for to in cluster.pods() {
            if from.name == to.name && from.namespace == to.namespace {
                continue;
            }
            for (protocol, port) in &probes {
                if evaluator
                    .check(Subject::Pod(from), Subject::Pod(to), *protocol, *port)
                    .allowed()
                {
                    ours.insert((
                        format!("{}/{}", from.namespace, from.name),
                        format!("{}/{}", to.namespace, to.name),
                        *protocol,
                        *port,
                    ));
                }
            }
        }
    }
    assert!(ours.len() > 100, "{}", ours.len());
    let missing: Vec<_> = ours.difference(&theirs).take(5).collect();
    let extra: Vec<_> = theirs.difference(&ours).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "only ours: {missing:?}; only the analyzer's: {extra:?}"
    );
}

/// The flows of the `policy diff` fixture: `shop-a/web` calls `shop-a/api`
/// on TCP 8080 and DNS in kube-system; `shop-b/web` calls DNS.
fn diff_flows() -> String {
    let record = |(source, source_tenant): (&str, Option<&str>),
                  (destination, destination_tenant): (&str, Option<&str>),
                  protocol: &str,
                  port: u16| {
        let end = |at: &str, tenant: Option<&str>, ip: &str, port: u16| {
            let (namespace, name) = at.split_once('/').unwrap();
            let mut end = serde_json::json!({"ip": ip, "port": port, "kind": "pod", "namespace": namespace, "pod": format!("{name}-1"), "workload": {"kind": "Deployment", "name": name}, "labels": {"app": name}});
            if let Some(tenant) = tenant {
                end["tenant"] = tenant.into();
            }
            end
        };
        serde_json::json!({"time": "2026-11-20T10:00:00Z", "first_seen": "2026-11-20T10:00:00Z", "source": end(source, source_tenant, "10.0.0.1", 40000), "destination": end(destination, destination_tenant, "10.0.0.2", port), "protocol": protocol, "packets": 1, "bytes": 60, "is_reply": false, "interface": "veth0", "hook": "ingress", "node": "n", "new_connection": true}).to_string()
    };
    [
        record(
            ("shop-a/web", Some("a")),
            ("shop-a/api", Some("a")),
            "TCP",
            8080,
        ),
        record(
            ("shop-a/web", Some("a")),
            ("kube-system/coredns", None),
            "UDP",
            53,
        ),
        record(
            ("shop-b/web", Some("b")),
            ("kube-system/coredns", None),
            "UDP",
            53,
        ),
    ]
    .join("\n")
        + "\n"
}
const DIFF_BASE: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop-a}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop-a}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop-a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 8080}]
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}]
"#;
/// The breaking change: api and web move from TCP 8080 to 8081.
fn diff_breaking() -> String {
    let changed = DIFF_BASE.replace("ports: [{port: 8080}]", "ports: [{port: 8081}]");
    assert_eq!(changed.matches("8081").count(), 2);
    changed
}

/// The cross-tenant change: api also lets in every namespace on 8080.
fn diff_cross() -> String {
    let web = "from: [{podSelector: {matchLabels: {app: web}}}]";
    assert_eq!(DIFF_BASE.matches(web).count(), 1);
    DIFF_BASE.replace(
        web,
        "from: [{podSelector: {matchLabels: {app: web}}}, {namespaceSelector: {}}]",
    )
}

const DIFF_SHOP_B: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop-b}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop-b}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}]
"#;
const DIFF_CLEAN_SUMMARY: &str = r#"## flow-policy diff: passes

The change keeps every observed connection allowed and opens no cross-tenant path.

Policies: 2 added, 0 modified, 0 removed, 3 unchanged. Judged against flows `flows.jsonl` (3 observed edges, 3 checked) and every pair of 4 pods.

| what | count |
| --- | ---: |
| observed connections broken | 0 |
| observed connections the change allows again | 0 |
| observed connections denied before and after | 0 |
| cross-tenant paths opened | 0 |
| paths opened, never observed | 0 |
| paths opened, observed | 0 |
| paths closed | 2 |

### Service map

Per namespace: its workloads (boxes), other namespaces' workloads (rounded, dashed) and addresses, names and node-local DNS (hexagons); edges from client to server, labelled with ports: grey dotted lines: closed. At most 40 edges each, findings first, then by connections or pod pairs × ports.

#### `kube-system`

```mermaid
flowchart LR
  n0["Deployment/coredns"]
  n1(["shop-b/Deployment/web"])
  n0 -.->|"SCTP any, TCP any, UDP any"| n1
  n1 -.->|"SCTP any, TCP any, UDP 1-52, 54-65535"| n0
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1 otherNamespace
  linkStyle 0,1 stroke:#888888
```

#### `shop-b`

```mermaid
flowchart LR
  n0(["kube-system/Deployment/coredns"])
  n1["Deployment/web"]
  n0 -.->|"SCTP any, TCP any, UDP any"| n1
  n1 -.->|"SCTP any, TCP any, UDP 1-52, 54-65535"| n0
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n0 otherNamespace
  linkStyle 0,1 stroke:#888888
```

### Paths closed

| client | server | ports | pod pairs | observed |
| --- | --- | --- | ---: | --- |
| kube-system/Deployment/coredns | shop-b/Deployment/web | TCP any; UDP any; SCTP any | 1 | no |
| shop-b/Deployment/web | kube-system/Deployment/coredns | TCP any; UDP 1-52, 54-65535; SCTP any | 1 | no |

### Policies changed

- added: `shop-b/default-deny`, `shop-b/web`
"#;
const DIFF_CLEAN_JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="flow-policy diff" tests="3" failures="0">
  <testsuite name="observed connections" tests="1" failures="0">
    <testcase classname="observed connections" name="3 observed edges checked stay allowed"/>
  </testsuite>
  <testsuite name="cross-tenant paths" tests="1" failures="0">
    <testcase classname="cross-tenant paths" name="no cross-tenant path opened"/>
  </testsuite>
  <testsuite name="conditions" tests="1" failures="0">
    <testcase classname="conditions" name="--fail-on unobserved-paths&gt;0"/>
  </testsuite>
</testsuites>
"#;
const DIFF_BREAKING_SUMMARY: &str = r#"## flow-policy diff: fails

The change breaks 1 observed connection; it meets `--fail-on unobserved-paths>0` (1).

Policies: 0 added, 2 modified, 0 removed, 1 unchanged. Judged against flows `flows.jsonl` (3 observed edges, 3 checked) and every pair of 4 pods.

| what | count |
| --- | ---: |
| observed connections broken | 1 |
| observed connections the change allows again | 0 |
| observed connections denied before and after | 0 |
| cross-tenant paths opened | 0 |
| paths opened, never observed | 1 |
| paths opened, observed | 0 |
| paths closed | 1 |

### Service map

Per namespace: its workloads (boxes), other namespaces' workloads (rounded, dashed) and addresses, names and node-local DNS (hexagons); edges from client to server, labelled with ports: orange lines ending in a cross: denied; green lines: opened; grey dotted lines: closed. At most 40 edges each, findings first, then by connections or pod pairs × ports.

#### `shop-a`

```mermaid
flowchart LR
  n0["Deployment/web"]
  n1["Deployment/api"]
  n0 --x|"TCP 8080"| n1
  n0 -->|"TCP 8081"| n1
  n0 -.->|"TCP 8080"| n1
  linkStyle 0 stroke:#e07a00,stroke-width:2px
  linkStyle 1 stroke:#2a9d4b,stroke-width:2px
  linkStyle 2 stroke:#888888
```

### Observed connections broken

| client | server | port | connections | last seen | blocked by |
| --- | --- | --- | ---: | --- | --- |
| shop-a/Deployment/web | shop-a/Deployment/api | TCP/8080 | 1 | 2026-11-20T10:00:00Z | egress of shop-a/(web), ingress of shop-a/(api) |

### Paths opened, never observed

| client | server | ports | pod pairs |
| --- | --- | --- | ---: |
| shop-a/Deployment/web | shop-a/Deployment/api | TCP 8081 | 1 |

### Paths closed

| client | server | ports | pod pairs | observed |
| --- | --- | --- | ---: | --- |
| shop-a/Deployment/web | shop-a/Deployment/api | TCP 8080 | 1 | yes |

### Policies changed

- modified: `shop-a/api`, `shop-a/web`
"#;
const DIFF_BREAKING_JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="flow-policy diff" tests="4" failures="3">
  <testsuite name="observed connections" tests="1" failures="1">
    <testcase classname="observed connections" name="shop-a/Deployment/web -&gt; shop-a/Deployment/api TCP/8080">
      <failure message="broken: blocked by egress of shop-a/(web), ingress of shop-a/(api)"/>
    </testcase>
  </testsuite>
  <testsuite name="cross-tenant paths" tests="1" failures="0">
    <testcase classname="cross-tenant paths" name="no cross-tenant path opened"/>
  </testsuite>
  <testsuite name="paths opened, never observed" tests="1" failures="1">
    <testcase classname="paths opened, never observed" name="shop-a/Deployment/web -&gt; shop-a/Deployment/api TCP 8081">
      <failure message="opened, never observed"/>
    </testcase>
  </testsuite>
  <testsuite name="conditions" tests="1" failures="1">
    <testcase classname="conditions" name="--fail-on unobserved-paths&gt;0">
      <failure message="1 found"/>
    </testcase>
  </testsuite>
</testsuites>
"#;
const DIFF_CROSS_SUMMARY: &str = r#"## flow-policy diff: fails

The change opens 1 cross-tenant path; it meets `--fail-on unobserved-paths>0` (1).

Policies: 0 added, 1 modified, 0 removed, 2 unchanged. Judged against flows `flows.jsonl` (3 observed edges, 3 checked) and every pair of 4 pods.

| what | count |
| --- | ---: |
| observed connections broken | 0 |
| observed connections the change allows again | 0 |
| observed connections denied before and after | 0 |
| cross-tenant paths opened | 1 |
| paths opened, never observed | 1 |
| paths opened, observed | 0 |
| paths closed | 0 |

### Service map

Per namespace: its workloads (boxes), other namespaces' workloads (rounded, dashed) and addresses, names and node-local DNS (hexagons); edges from client to server, labelled with ports: thick red lines: cross-tenant; green lines: opened. At most 40 edges each, findings first, then by connections or pod pairs × ports.

#### `kube-system`

```mermaid
flowchart LR
  n0["Deployment/coredns"]
  n1(["shop-a/Deployment/api"])
  n0 -->|"TCP 8080"| n1
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1 otherNamespace
  linkStyle 0 stroke:#2a9d4b,stroke-width:2px
```

#### `shop-a`

```mermaid
flowchart LR
  n0(["shop-b/Deployment/web"])
  n1["Deployment/api"]
  n2(["kube-system/Deployment/coredns"])
  n0 ==>|"TCP 8080"| n1
  n2 -->|"TCP 8080"| n1
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n0,n2 otherNamespace
  linkStyle 0 stroke:#d7263d,stroke-width:3px
  linkStyle 1 stroke:#2a9d4b,stroke-width:2px
```

#### `shop-b`

```mermaid
flowchart LR
  n0["Deployment/web"]
  n1(["shop-a/Deployment/api"])
  n0 ==>|"TCP 8080"| n1
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1 otherNamespace
  linkStyle 0 stroke:#d7263d,stroke-width:3px
```

### Cross-tenant paths opened

| client | server | ports | pod pairs | tenants |
| --- | --- | --- | ---: | --- |
| shop-b/Deployment/web | shop-a/Deployment/api | TCP 8080 | 1 | b → a |

### Paths opened, never observed

| client | server | ports | pod pairs |
| --- | --- | --- | ---: |
| kube-system/Deployment/coredns | shop-a/Deployment/api | TCP 8080 | 1 |

### Policies changed

- modified: `shop-a/api`
"#;
const DIFF_CROSS_JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="flow-policy diff" tests="4" failures="3">
  <testsuite name="observed connections" tests="1" failures="0">
    <testcase classname="observed connections" name="3 observed edges checked stay allowed"/>
  </testsuite>
  <testsuite name="cross-tenant paths" tests="1" failures="1">
    <testcase classname="cross-tenant paths" name="shop-b/Deployment/web -&gt; shop-a/Deployment/api TCP 8080">
      <failure message="opens a path from tenant b to tenant a (1 pod pair)"/>
    </testcase>
  </testsuite>
  <testsuite name="paths opened, never observed" tests="1" failures="1">
    <testcase classname="paths opened, never observed" name="kube-system/Deployment/coredns -&gt; shop-a/Deployment/api TCP 8080">
      <failure message="opened, never observed"/>
    </testcase>
  </testsuite>
  <testsuite name="conditions" tests="1" failures="1">
    <testcase classname="conditions" name="--fail-on unobserved-paths&gt;0">
      <failure message="1 found"/>
    </testcase>
  </testsuite>
</testsuites>
"#;

#[test]
fn diff_judges_three_pull_requests_with_exact_summaries_junit_and_exit_statuses() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("flows.jsonl"), diff_flows()).unwrap();
    let (breaking, cross) = (diff_breaking(), diff_cross());
    let layouts: [(&str, &[(&str, &str)]); 4] = [
        ("base", &[("shop-a.yaml", DIFF_BASE)]),
        (
            "clean",
            &[("shop-a.yaml", DIFF_BASE), ("shop-b.yaml", DIFF_SHOP_B)],
        ),
        ("breaking", &[("shop-a.yaml", &breaking)]),
        ("cross", &[("shop-a.yaml", &cross)]),
    ];
    for (name, files) in layouts {
        std::fs::create_dir(dir.join(name)).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(name).join(file), text).unwrap();
        }
    }
    let expected = [
        ("clean", 0, DIFF_CLEAN_SUMMARY, DIFF_CLEAN_JUNIT),
        ("breaking", 1, DIFF_BREAKING_SUMMARY, DIFF_BREAKING_JUNIT),
        ("cross", 1, DIFF_CROSS_SUMMARY, DIFF_CROSS_JUNIT),
    ];
    for (change, status, summary, junit) in expected {
        let output = std::process::Command::new(common::cli::binary())
            .current_dir(dir)
            .args(["policy", "diff", "base", change, "--flows", "flows.jsonl"])
            .args(["--summary", "summary.md", "--junit", "junit.xml"])
            .args(["--fail-on", "unobserved-paths>0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(status), "{change}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), summary, "{change}");
        assert_eq!(
            std::fs::read_to_string(dir.join("summary.md")).unwrap(),
            summary
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("junit.xml")).unwrap(),
            junit,
            "{change}"
        );
    }
    // Bad input is neither a pass nor a fail: status 2, the file named.
    std::fs::write(
        dir.join("cross/bad.yaml"),
        "kind: NetworkPolicy\nmetadata: {name: x, namespace: shop-a}\nspec: {podSelector: 7}\n",
    )
    .unwrap();
    let output = std::process::Command::new(common::cli::binary())
        .current_dir(dir)
        .args(["policy", "diff", "base", "cross", "--flows", "flows.jsonl"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("flow-agent: error: ") && stderr.contains("bad.yaml: document 1"),
        "{stderr}"
    );
    let output = std::process::Command::new(common::cli::binary())
        .current_dir(dir)
        .args([
            "policy",
            "diff",
            "base",
            "clean",
            "--flows",
            "flows.jsonl",
            "--fail-on",
            "paths>0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
const AUDIT_FLAWED: &str = r#"# shop-a's policies, written by hand
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop-a}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop-a}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: 8080}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 9090}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop-a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
"#;
const AUDIT_EXTRA: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: notes, namespace: shop-a}
data: {owner: team-a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: shop-a}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 70000}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp, namespace: shop-b}
spec: {endpointSelector: {}}
"#;
/// AUDIT_FLAWED tightened: namespaceSelector {} narrowed to web, the rule
/// never used removed, the port-less rule given the port used.
const AUDIT_TIGHTENED: &str = r#"# shop-a's policies, written by hand
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop-a}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop-a}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop-a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 8080, protocol: TCP}]
"#;
const AUDIT_TIGHTENED_DIFF: &str = r#"--- a/shop-a.yaml
+++ b/shop-a.yaml
@@ -11,10 +11,8 @@
   podSelector: {matchLabels: {app: api}}
   policyTypes: [Ingress]
   ingress:
-  - from: [{namespaceSelector: {}}]
-    ports: [{port: 8080}]
   - from: [{podSelector: {matchLabels: {app: web}}}]
-    ports: [{port: 9090}]
+    ports: [{port: 8080}]
 ---
 apiVersion: networking.k8s.io/v1
 kind: NetworkPolicy
@@ -24,3 +22,4 @@
   policyTypes: [Egress]
   egress:
   - to: [{podSelector: {matchLabels: {app: api}}}]
+    ports: [{port: 8080, protocol: TCP}]
"#;
const AUDIT_MD: &str = r#"# Policy audit

3 policies judged against flows `flows.jsonl` (3 observed edges, 3 checked) and 4 pods.

| finding | count |
| --- | ---: |
| observed connections denied | 1 |
| unused allowances (pod pairs × ports) | 4 (196607) |
| over-broad constructs | 2 |
| cross-tenant openings (workload pairs) | 1 |
| workloads open to every tenant | 0 |
| documents not read | 2 |
| documents of other kinds, skipped | 1 |

## Service map

Per namespace: its workloads (boxes), other namespaces' workloads (rounded, dashed) and addresses, names and node-local DNS (hexagons); edges from client to server, labelled with ports: orange lines ending in a cross: denied; thick red lines: cross-tenant; blue dotted lines: allowed, never used. At most 40 edges each, findings first, then by connections or pod pairs × ports.

### `kube-system`

```mermaid
flowchart LR
  n0(["shop-a/Deployment/web"])
  n1["Deployment/coredns"]
  n2(["shop-a/Deployment/api"])
  n0 --x|"UDP 53"| n1
  n1 -.->|"TCP 8080"| n2
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n0,n2 otherNamespace
  linkStyle 0 stroke:#e07a00,stroke-width:2px
  linkStyle 1 stroke:#4a6fa5
```

### `shop-a`

```mermaid
flowchart LR
  n0["Deployment/web"]
  n1(["kube-system/Deployment/coredns"])
  n2(["shop-b/Deployment/web"])
  n3["Deployment/api"]
  n0 --x|"UDP 53"| n1
  n2 ==>|"TCP 8080"| n3
  n0 -.->|"SCTP any, TCP 1-8079, 8081-65535, TCP 9090, UDP any"| n3
  n1 -.->|"TCP 8080"| n3
  n2 -.->|"TCP 8080"| n3
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1,n2 otherNamespace
  linkStyle 0 stroke:#e07a00,stroke-width:2px
  linkStyle 1 stroke:#d7263d,stroke-width:3px
  linkStyle 2,3,4 stroke:#4a6fa5
```

### `shop-b`

```mermaid
flowchart LR
  n0["Deployment/web"]
  n1(["shop-a/Deployment/api"])
  n0 ==>|"TCP 8080"| n1
  n0 -.->|"TCP 8080"| n1
  classDef otherNamespace fill:#f4f4f4,stroke:#777777,stroke-dasharray:4 3
  class n1 otherNamespace
  linkStyle 0 stroke:#d7263d,stroke-width:3px
  linkStyle 1 stroke:#4a6fa5
```

## Observed connections denied

| client | server | port | connections | blocked by |
| --- | --- | --- | --- | --- |
| shop-a/Deployment/web | kube-system/Deployment/coredns | UDP/53 | 1 | egress of shop-a/(web) |

## Allowances never used, largest first

| rule | selects | peer | unused ports | pod pairs × ports |
| --- | --- | --- | --- | --- |
| `shop-a/web egress[0]` | shop-a/Deployment/web | shop-a/Deployment/api | TCP 1-8079, 8081-65535; UDP any; SCTP any | 196604 |
| `shop-a/api ingress[0]` | shop-a/Deployment/api | kube-system/Deployment/coredns | TCP 8080 | 1 |
| `shop-a/api ingress[0]` | shop-a/Deployment/api | shop-b/Deployment/web | TCP 8080 | 1 |
| `shop-a/api ingress[1]` | shop-a/Deployment/api | shop-a/Deployment/web | TCP 9090 | 1 |

## Over-broad constructs

| policy | rule | construct |
| --- | --- | --- |
| `shop-a/api` | `shop-a/api ingress[0]` | `namespaceSelector: {}` in `from`: every namespace |
| `shop-a/web` | `shop-a/web egress[0]` | no `ports`: every port of every protocol |

## Cross-tenant openings

| client | server | tenants | ports | observed |
| --- | --- | --- | --- | --- |
| shop-b/Deployment/web | shop-a/Deployment/api | b → a | TCP 8080 | no |

## Tightening

The smallest change that keeps every observed connection the policies allow and removes every allowance none used: 2 of 3 policies change, in 1 files (1 rewritten in place, 0 proposed whole).
The changed files are written under `out` at their relative paths, each with a `.diff`; unchanged files are not written.

## Tightened files

| file | written |
| --- | --- |
| shop-a.yaml | in place: only the changed rules rewritten |

## Tightened rules

| rule | change |
| --- | --- |
| `shop-a/api ingress[0]` | from `[{namespaceSelector: {}}]` → `[{podSelector: {matchLabels: {app: web}}}]` |
| `shop-a/api ingress[1]` | removed: no observed connection used it |
| `shop-a/web egress[0]` | ports every port → `[{port: 8080, protocol: TCP}]` |

A policy that selects several workloads keeps the union of what they used. Documents not read (below: invalid ones, CiliumNetworkPolicies) are not tightened and not written.

## Documents not read

- flawed2/extra.yaml: document 2: NetworkPolicy broken: spec.ingress[0].ports[0].port: 70000 is not a port
- flawed2/extra.yaml: document 3: CiliumNetworkPolicy cannot be judged with NetworkPolicy semantics: only policy check and monitor mode judge Cilium's policies

## Documents of other kinds, skipped

- flawed2/extra.yaml: document 1: ConfigMap
"#;

#[test]
fn audit_finds_each_known_flaw_and_audits_past_bad_documents() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("flows.jsonl"), diff_flows()).unwrap();
    std::fs::create_dir(dir.join("flawed2")).unwrap();
    std::fs::write(dir.join("flawed2/shop-a.yaml"), AUDIT_FLAWED).unwrap();
    std::fs::write(dir.join("flawed2/extra.yaml"), AUDIT_EXTRA).unwrap();
    let audit = |policies: &str| {
        std::process::Command::new(common::cli::binary())
            .current_dir(dir)
            .args([
                "policy",
                "audit",
                "--policies",
                policies,
                "--flows",
                "flows.jsonl",
            ])
            .args(["--output-dir", "out", "--report", "report.json"])
            .output()
            .unwrap()
    };
    let output = audit("flawed2");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Two documents are bad: status 2, each named, and the rest audited.
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "flow-agent: warning: flawed2/extra.yaml: document 2: NetworkPolicy broken: spec.ingress[0].ports[0].port: 70000 is not a port",
            "flow-agent: warning: flawed2/extra.yaml: document 3: CiliumNetworkPolicy cannot be judged with NetworkPolicy semantics: only policy check and monitor mode judge Cilium's policies",
            "flow-agent: error: some policy documents could not be read (named above); the rest was audited",
        ]
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), AUDIT_MD);
    assert_eq!(
        std::fs::read_to_string(dir.join("out/AUDIT.md")).unwrap(),
        AUDIT_MD
    );
    // The tightening: the changed file and its diff, nothing else.
    assert_eq!(
        std::fs::read_to_string(dir.join("out/shop-a.yaml")).unwrap(),
        AUDIT_TIGHTENED
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/shop-a.yaml.diff")).unwrap(),
        AUDIT_TIGHTENED_DIFF
    );
    let mut written: Vec<String> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["AUDIT.md", "shop-a.yaml", "shop-a.yaml.diff"]);
    // `policy check` judges the tightened set as the originals: the flows
    // they allowed pass, the DNS lookup they denied is still denied.
    let allowed: Vec<String> = diff_flows()
        .lines()
        .filter(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            record["source"]["namespace"] != "shop-a"
                || record["destination"]["namespace"] != "kube-system"
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(allowed.len(), 2);
    std::fs::write(dir.join("allowed.jsonl"), allowed.concat()).unwrap();
    let check = |policies: &str, flows: &str| {
        std::process::Command::new(common::cli::binary())
            .current_dir(dir)
            .args(["policy", "check", "--policies", policies, "--flows", flows])
            .output()
            .unwrap()
            .status
            .code()
    };
    std::fs::create_dir(dir.join("original")).unwrap();
    std::fs::write(dir.join("original/shop-a.yaml"), AUDIT_FLAWED).unwrap();
    assert_eq!(check("original", "allowed.jsonl"), Some(0));
    assert_eq!(check("out/shop-a.yaml", "allowed.jsonl"), Some(0));
    assert_eq!(check("original", "flows.jsonl"), Some(1));
    assert_eq!(check("out/shop-a.yaml", "flows.jsonl"), Some(1));
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["unused"].as_array().unwrap().len(), 4);
    assert_eq!(report["unused"][0]["size"], 196_604);
    assert_eq!(
        report["cross_tenant"][0]["tenants"],
        serde_json::json!(["b", "a"])
    );
    // Without the bad file, the findings alone decide: status 1.
    std::fs::remove_file(dir.join("flawed2/extra.yaml")).unwrap();
    let output = audit("flawed2");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sends `payload` bytes over UDP from pod `from` to `to` with `ttl` (hop
/// limit for IPv6); returns the client's port. Waits for nothing: the error
/// the datagram earns is the point.
fn udp_probe(node: &Node, from: usize, to: SocketAddr, ttl: u32, payload: usize) -> u16 {
    node.pods[from]
        .netns
        .run(move || {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let socket = UdpSocket::bind(any).unwrap();
            if to.is_ipv4() {
                socket.set_ttl(ttl).unwrap();
            } else {
                let hops = libc::c_int::try_from(ttl).unwrap();
                // SAFETY: a valid socket and an int option of the right size.
                let result = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&socket),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_UNICAST_HOPS,
                        (&raw const hops).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(result, 0);
            }
            socket.send_to(&vec![3u8; payload], to).unwrap();
            socket.local_addr().unwrap().port()
        })
        .unwrap()
}

#[test]
fn icmp_errors_from_a_closed_port_and_a_ttl_expiry_are_folded_into_their_connection() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let inventory = cluster.inventory.to_str().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let flows = path(dir, "flows.jsonl");
    let agent = Agent::on(
        node,
        "200ms",
        &[
            "--inventory",
            inventory,
            "--grpc-listen",
            API,
            "--state-dir",
            &path(dir, "state"),
            "--output-file",
            &flows,
        ],
    );
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));
    // api queries db on a closed port: db answers port unreachable. frontend
    // sends to cart with TTL 1: the node, which routes between the pods,
    // answers time exceeded from its own address.
    // Both families: ICMPv6 errors fold the same way.
    let mut probes = Vec::new();
    for (db, cart, api, frontend) in [
        (
            IpAddr::V4(node.pods[2].ipv4),
            IpAddr::V4(node.pods[1].ipv4),
            IpAddr::V4(node.pods[3].ipv4),
            IpAddr::V4(node.pods[0].ipv4),
        ),
        (
            IpAddr::V6(node.pods[2].ipv6),
            IpAddr::V6(node.pods[1].ipv6),
            IpAddr::V6(node.pods[3].ipv6),
            IpAddr::V6(node.pods[0].ipv6),
        ),
    ] {
        let closed = udp_probe(node, 3, SocketAddr::new(db, 9), 64, 32);
        probes.push((api, closed, db, 9, "unreachable"));
        let expired = udp_probe(node, 0, SocketAddr::new(cart, 7777), 1, 32);
        probes.push((frontend, expired, cart, 7777, "time_exceeded"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent
        .records()
        .iter()
        .filter(|record| record.icmp_errors.is_some())
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "{:#?}", agent.records());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_edges(node, 2);
    let generate = |source: &[&str], output_dir: &str| {
        let mut args = vec![
            "policy",
            "generate",
            "--inventory",
            inventory,
            "--output-dir",
            output_dir,
        ];
        args.extend_from_slice(source);
        let output = cli(node, &args);
        assert!(output.success, "{:?}", output.stderr);
    };
    generate(&["--server", API], &path(dir, "policies"));
    let output = agent.stop();
    assert!(output.success);
    generate(&["--flows", &flows], &path(dir, "policies-flows"));

    // Each query is one request record, and its error one record of the
    // same connection's reply: IP + 8 + the quoted IP + 8 + 32. IPv6's
    // neighbour discovery beside them is left out of learning and checking.
    let link_control = output
        .records
        .iter()
        .filter(|record| record.is_icmpv6_link_control())
        .count();
    let mut seen: Vec<_> = output
        .records
        .iter()
        .filter(|record| !record.is_icmpv6_link_control())
        .map(|record| {
            (
                record.source.ip,
                record.source.port,
                record.destination.ip,
                record.destination.port,
                record.protocol,
                record.packets,
                record.bytes,
                record.is_reply,
                record.icmp_errors.clone(),
            )
        })
        .collect();
    seen.sort_by_key(|(source, source_port, ..)| (*source_port, *source));
    let udp = Protocol(17);
    let mut expected = Vec::new();
    for (client, client_port, server, server_port, kind) in probes {
        let ip_header = if client.is_ipv4() { 20 } else { 40 };
        let query = ip_header + 8 + 32;
        let errors = Some(flow_model::record::IcmpErrors {
            packets: 1,
            kinds: vec![kind.to_owned()],
        });
        expected.push((
            client,
            client_port,
            server,
            server_port,
            udp,
            1,
            query,
            false,
            None,
        ));
        expected.push((
            server,
            server_port,
            client,
            client_port,
            udp,
            1,
            ip_header + 8 + query,
            true,
            errors,
        ));
    }
    expected.sort_by_key(|(source, source_port, ..)| (*source_port, *source));
    assert_eq!(seen, expected);

    // The queries are the edges; the errors make none, and no note.
    for set in ["policies", "policies-flows"] {
        let review = std::fs::read_to_string(dir.join(set).join("REVIEW.md")).unwrap();
        assert!(
            review.contains("\n## Not allowed: NetworkPolicy cannot express them\n\nNone.\n"),
            "{set}: {review}"
        );
        assert!(
            review.contains(
                "\n## Edges with addresses outside the workloads (ipBlock /32 or /128)\n\nNone.\n"
            ),
            "{set}: {review}"
        );
        assert!(!review.contains("ICMP"), "{set}: {review}");
        assert!(
            review.contains("Generated by flow-agent from 2 observed edges"),
            "{set}: {review}"
        );
        for line in [
            "- ingress from shop-a pods app=frontend UDP/7777\n",
            "- egress to shop-a pods app=cart UDP/7777\n",
            "- egress to shop-b pods app=db UDP/9\n",
            "- ingress from shop-b pods app=api UDP/9\n",
        ] {
            assert!(review.contains(line), "{set}: {line} in {review}");
        }
    }
    assert_eq!(
        policy_files(&dir.join("policies")),
        [
            "kustomization.yaml",
            "shop-a.allow-deployment-cart.yaml",
            "shop-a.allow-deployment-frontend.yaml",
            "shop-a.default-deny.yaml",
            "shop-b.allow-deployment-api.yaml",
            "shop-b.allow-statefulset-db.yaml",
            "shop-b.default-deny.yaml",
        ]
    );
    // Checked against its own policies, no record is a violation: the
    // errors are judged as nothing of their own.
    let (success, report) = check(node, &dir.join("policies"), &flows, inventory);
    assert!(success, "{report:#}");
    assert_eq!(
        report,
        serde_json::json!({
            "records": 8 + link_control,
            "checked": 4,
            "unresolved": 0,
            "unexpressible": 0,
            "allowed": 4,
            "denied": [],
        })
    );
}

/// One request of ours as a JSON line: `web-1` in namespace shop to the
/// first pod of `server`, at `time`, opening a connection.
fn request_line(time: &str, server: &str, ip: &str, port: u16) -> String {
    let pod = |ip: &str, port: u16, name: &str| {
        serde_json::json!({
            "ip": ip, "port": port, "kind": "pod", "namespace": "shop",
            "pod": format!("{name}-1"),
            "workload": {"kind": "Deployment", "name": name},
            "labels": {"app": name},
        })
    };
    serde_json::json!({
        "time": time, "first_seen": time,
        "source": pod("10.0.0.1", 40_000, "web"),
        "destination": pod(ip, port, server),
        "protocol": "TCP", "packets": 3, "bytes": 180, "is_reply": false,
        "interface": "veth0", "hook": "ingress", "node": "n",
        "new_connection": true,
    })
    .to_string()
}

/// `flow-agent ARGS` outside any lab node: (exit status, stdout, stderr).
fn run_policy(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(common::cli::binary())
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The list items of one section of REVIEW.md; `None` without the section.
fn review_items(review: &str, title: &str) -> Option<Vec<String>> {
    let (_, rest) = review.split_once(&format!("\n## {title}\n"))?;
    let section = rest.split("\n## ").next().unwrap_or_default();
    Some(
        section
            .lines()
            .filter(|line| line.starts_with("- "))
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn min_connections_and_since_leave_out_rare_edges_which_check_then_denies() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    // web -> api: 4 connections on 3 days, the newest at 2026-11-20T10:00Z;
    // web -> search: 2 connections on 2 days; web -> cache: 1 connection an
    // hour before the newest; web -> db: 4 connections, all 12 days before.
    let lines = [
        request_line("2026-11-18T10:00:00Z", "api", "10.0.1.1", 8080),
        request_line("2026-11-19T10:00:00Z", "api", "10.0.1.1", 8080),
        request_line("2026-11-20T09:30:00Z", "api", "10.0.1.1", 8080),
        request_line("2026-11-20T10:00:00Z", "api", "10.0.1.1", 8080),
        request_line("2026-11-17T10:00:00Z", "search", "10.0.1.4", 9200),
        request_line("2026-11-20T10:00:00Z", "search", "10.0.1.4", 9200),
        request_line("2026-11-20T09:00:00Z", "cache", "10.0.1.2", 6379),
        request_line("2026-11-08T09:00:00Z", "db", "10.0.1.3", 5432),
        request_line("2026-11-08T09:10:00Z", "db", "10.0.1.3", 5432),
        request_line("2026-11-08T09:20:00Z", "db", "10.0.1.3", 5432),
        request_line("2026-11-08T10:00:00Z", "db", "10.0.1.3", 5432),
    ];
    let flows = path(dir, "flows.jsonl");
    std::fs::write(&flows, lines.join("\n") + "\n").unwrap();
    let generate = |output: &str, flags: &[&str]| {
        let output_dir = path(dir, output);
        let mut args = vec![
            "policy",
            "generate",
            "--flows",
            &flows,
            "--output-dir",
            &output_dir,
        ];
        args.extend_from_slice(flags);
        let (code, stdout, stderr) = run_policy(&args);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        stdout
    };
    let stdout = generate("rare", &["--min-connections", "2", "--since", "7d"]);
    assert!(
        stdout.contains(
            "2 edges left out by --min-connections 2 --since 7days (REVIEW.md lists them), 1 rarely seen edges kept"
        ),
        "{stdout}"
    );
    generate("all", &[]);

    // REVIEW.md lists every edge left out and why, and marks the rare edge
    // kept; without the flags there is no such list, and all four are rare.
    let review = std::fs::read_to_string(dir.join("rare/REVIEW.md")).unwrap();
    let left_out = "Edges left out by --min-connections / --since";
    assert_eq!(
        review_items(&review, left_out).unwrap(),
        [
            "- `shop/Deployment/web -> shop/Deployment/cache TCP/6379`: 1 connection, 1 hour ago (left out by --min-connections 2)",
            "- `shop/Deployment/web -> shop/Deployment/db TCP/5432`: 4 connections on 1 day, 12 days ago (left out by --since 7days)",
        ],
        "{review}"
    );
    assert_eq!(
        review_items(&review, "Rarely seen edges").unwrap(),
        ["- `shop/Deployment/web -> shop/Deployment/search TCP/9200`: 2 connections on 2 days"]
    );
    let all_review = std::fs::read_to_string(dir.join("all/REVIEW.md")).unwrap();
    assert_eq!(review_items(&all_review, left_out), None);
    assert_eq!(
        review_items(&all_review, "Rarely seen edges").unwrap(),
        [
            "- `shop/Deployment/web -> shop/Deployment/cache TCP/6379`: 1 connection, 1 hour ago",
            "- `shop/Deployment/web -> shop/Deployment/db TCP/5432`: 4 connections on 1 day, 12 days ago",
            "- `shop/Deployment/web -> shop/Deployment/search TCP/9200`: 2 connections on 2 days",
        ]
    );

    // The policies do not allow the edges left out: web's egress and the
    // ingress of cache and db lose them.
    let web = policy(&dir.join("rare"), "shop.allow-deployment-web.yaml")
        .spec
        .unwrap();
    let mut egress_ports: Vec<_> = web
        .egress
        .unwrap()
        .iter()
        .flat_map(|rule| rule.ports.clone().unwrap())
        .map(|port| port.port.unwrap())
        .collect();
    egress_ports.sort_by_key(|port| format!("{port:?}"));
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int;
    assert_eq!(egress_ports, [Int(8080), Int(9200)]);
    let files = policy_files(&dir.join("rare"));
    assert_eq!(
        files,
        [
            "kustomization.yaml",
            "shop.allow-deployment-api.yaml",
            "shop.allow-deployment-search.yaml",
            "shop.allow-deployment-web.yaml",
            "shop.default-deny.yaml",
        ]
    );

    // Checked against the same flows: exactly the edges left out are
    // denied; the policies made without the flags deny nothing.
    let check = |policies: &str| {
        run_policy(&[
            "policy",
            "check",
            "--policies",
            &path(dir, policies),
            "--flows",
            &flows,
        ])
    };
    let (code, stdout, stderr) = check("rare");
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let denied: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("DENIED"))
        .collect();
    assert_eq!(
        denied,
        [
            "DENIED shop/web-1 -> shop/cache-1 TCP/6379 (1 records; blocked by egress of shop/web-1, ingress of shop/cache-1)",
            "DENIED shop/web-1 -> shop/db-1 TCP/5432 (4 records; blocked by egress of shop/web-1, ingress of shop/db-1)",
        ],
        "{stdout}"
    );
    let (code, stdout, stderr) = check("all");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn generate_refuses_a_bad_since_or_min_connections_with_status_2() {
    let directory = tempfile::tempdir().unwrap();
    let output_dir = path(directory.path(), "out");
    let generate = |flag: &str, value: &str| {
        run_policy(&[
            "policy",
            "generate",
            "--flows",
            "flows.jsonl",
            "--output-dir",
            &output_dir,
            flag,
            value,
        ])
    };
    let (code, _, stderr) = generate("--since", "a week");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("'--since <DURATION>'")
            && stderr.contains("use a duration such as 12h, 7d or 2weeks"),
        "{stderr}"
    );
    let (code, _, stderr) = generate("--min-connections", "0");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("'--min-connections <N>'") && stderr.contains("0 is not in 1.."),
        "{stderr}"
    );
    assert!(!directory.path().join("out").exists());
}
