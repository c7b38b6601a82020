//! The flow API end to end: a real agent on a lab node serves gRPC inside the
//! node's namespace; `flow-agent observe` (the CLI), an in-process tonic client
//! and a Python client generated from `proto/` with grpcio-tools consume it.
//!
//! Needs root and nft; skipped with a message otherwise. The IPv6 neighbour
//! and router discovery of the lab's pods can add ICMPv6 records at any time,
//! so comparisons with the agent's own output leave ICMPv6 out on both sides.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use common::{
    cli::{binary, cli},
    netns::{Agent, udp_bursts},
    pki::{Pki, sha256_hex},
    shop::{Cluster, cluster, traffic, udp_exchange},
};
use flow_lab::{LabProcess, Node};
use flow_model::record::FlowRecord;
use flow_proto::v1::{
    EndpointFilter, FlowFilter, GetFlowsRequest, flow_service_client::FlowServiceClient,
    get_flows_response,
};
use serde_json::Value;

const API: &str = "127.0.0.1:4245";

/// `flow-agent observe --server API ARGS`, which must succeed.
fn observe(node: &Node, args: &[&str]) -> Vec<String> {
    let mut all = vec!["observe", "--server", API];
    all.extend_from_slice(args);
    let output = cli(node, &all);
    assert!(
        output.success,
        "observe {args:?} failed: {:?}",
        output.stderr
    );
    output.stdout
}

/// `observe -o json ARGS`: the records, in order.
fn observe_json(node: &Node, args: &[&str]) -> Vec<FlowRecord> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    parse_records(&observe(node, &all))
}

/// `observe ARGS`, which must fail; its stderr.
fn observe_refused(node: &Node, args: &[&str]) -> String {
    let output = cli(node, &[&["observe"], args].concat());
    assert!(
        !output.success,
        "observe {args:?} succeeded: {:?}",
        output.stdout
    );
    assert!(output.stdout.is_empty(), "{:?}", output.stdout);
    output.stderr.join("\n")
}

fn parse_records(lines: &[String]) -> Vec<FlowRecord> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect()
}

/// A following `observe` in the node.
fn follower(node: &Node, args: &[&str]) -> LabProcess {
    let mut all = vec!["observe", "--server", API, "--follow"];
    all.extend_from_slice(args);
    LabProcess::start(&node.netns, binary(), &all, Some("observe")).unwrap()
}

/// `flow-agent status` of the agent on `API`.
fn status(node: &Node, extra: &[&str]) -> HashMap<String, String> {
    common::cli::status(node, API, extra)
}

fn wait_for_subscribers(node: &Node, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(node, &[])["subscribers"] != count.to_string() {
        assert!(
            Instant::now() < deadline,
            "{count} subscribers never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn not_icmpv6(record: &FlowRecord) -> bool {
    record.protocol.to_string() != "ICMPv6"
}

fn tenant_of(record: &FlowRecord) -> [Option<&str>; 2] {
    [
        record.source.identity.tenant.as_deref(),
        record.destination.identity.tenant.as_deref(),
    ]
}

fn workload_name(record: &FlowRecord, source: bool) -> Option<&str> {
    let end = if source {
        &record.source
    } else {
        &record.destination
    };
    end.identity
        .workload
        .as_ref()
        .map(|workload| workload.name.as_str())
}

/// The agent with identity from the shop's inventory and the API on `API`.
fn shop_agent(cluster: &Cluster, flush: &str, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--inventory",
        cluster.inventory.to_str().unwrap(),
        "--grpc-listen",
        API,
    ];
    args.extend_from_slice(extra);
    let agent = Agent::on(&cluster.node, flush, &args);
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));
    agent
}

#[test]
fn followers_get_traffic_within_two_flush_intervals_with_identities() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let flush = Duration::from_secs(1);
    let agent = shop_agent(&cluster, "1s", &[]);
    // The pods' IPv6 neighbour discovery comes and goes: leave it out.
    let json = follower(node, &["-o", "json", "--not-protocol", "ICMPv6"]);
    let hubble = follower(node, &["-o", "hubble-json", "--not-protocol", "ICMPv6"]);
    let table = follower(node, &["--not-protocol", "ICMPv6"]);
    wait_for_subscribers(node, 3);

    let (via_service, cross_tenant, udp) = traffic(node);
    // The last exchange, api → db over UDP, reaches the follower while the
    // agent runs (streamed, not at exit). The timeout only guards against a
    // hang: speed is measured in benchmarks, not asserted here.
    json.wait_for_stdout(
        |lines| {
            parse_records(lines)
                .iter()
                .any(|record| record.destination.port == udp && record.is_reply)
        },
        30 * flush,
    )
    .unwrap();

    // Stopping the agent ends the streams after the last drain is delivered.
    let output = agent.stop();
    assert!(output.success);
    let json = json.wait_for_exit(Duration::from_secs(10)).unwrap();
    let hubble = hubble.wait_for_exit(Duration::from_secs(10)).unwrap();
    let table = table.wait_for_exit(Duration::from_secs(10)).unwrap();
    assert!(json.success && hubble.success && table.success);

    // The follower saw exactly what the agent printed (the traffic started
    // after it subscribed).
    let followed = parse_records(&json.stdout);
    let printed: Vec<FlowRecord> = output.records.into_iter().filter(not_icmpv6).collect();
    assert!(followed.len() >= 6, "{followed:#?}");
    assert_eq!(followed, printed);
    for port in [via_service, cross_tenant, udp] {
        assert!(
            followed.iter().any(|record| record.source.port == port),
            "{port}"
        );
    }
    let crossing = followed
        .iter()
        .find(|record| record.source.port == cross_tenant && !record.is_reply)
        .unwrap();
    assert_eq!(workload_name(crossing, true), Some("cart"));
    assert_eq!(workload_name(crossing, false), Some("db"));
    assert_eq!(tenant_of(crossing), [Some("acme"), Some("globex")]);
    assert_eq!(crossing.cross_tenant, Some(true));

    // One Hubble object per record, in Hubble's shape.
    assert_eq!(hubble.stdout.len(), followed.len());
    let objects: Vec<Value> = hubble
        .stdout
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let flow = objects
        .iter()
        .map(|object| &object["flow"])
        .find(|flow| flow["l4"]["TCP"]["source_port"] == cross_tenant && flow["is_reply"] == false)
        .unwrap();
    assert_eq!(flow["verdict"], "FORWARDED");
    assert_eq!(flow["Type"], "L3_L4");
    assert_eq!(flow["node_name"], "test-node");
    assert_eq!(flow["traffic_direction"], "EGRESS");
    assert_eq!(flow["IP"]["source"], node.pods[1].ipv4.to_string());
    assert_eq!(flow["IP"]["destination"], node.pods[2].ipv4.to_string());
    assert_eq!(flow["IP"]["ipVersion"], "IPv4");
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 5432);
    assert_eq!(flow["source"]["namespace"], "shop-a");
    assert_eq!(flow["source"]["pod_name"], "cart-5c8b-p000");
    assert_eq!(
        flow["source"]["workloads"],
        serde_json::json!([{"name": "cart", "kind": "Deployment"}])
    );
    assert_eq!(
        flow["source"]["labels"],
        serde_json::json!(["k8s:app=cart", "k8s:io.kubernetes.pod.namespace=shop-a"])
    );
    assert_eq!(flow["destination"]["pod_name"], "db-0");
    assert!(flow["time"].as_str().unwrap().ends_with('Z'));
    let through_service = objects
        .iter()
        .map(|object| &object["flow"])
        .find(|flow| flow["l4"]["TCP"]["source_port"] == via_service)
        .unwrap();
    assert_eq!(
        through_service["destination_service"],
        serde_json::json!({"name": "cart", "namespace": "shop-a"})
    );

    // The table: one row per record, under a header repeated whenever a
    // column had to widen, so each row lines up with the header above it.
    let rows: Vec<(usize, &String)> = table
        .stdout
        .iter()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("TIME"))
        .collect();
    assert_eq!(rows.len(), followed.len(), "{:?}", table.stdout);
    assert!(table.stdout[0].starts_with("TIME"), "{:?}", table.stdout);
    let (index, row) = rows
        .iter()
        .find(|(_, line)| line.contains(&format!("shop-a/cart-5c8b-p000:{cross_tenant}")))
        .unwrap();
    assert!(
        row.contains("shop-b/db-0:5432") && row.ends_with("acme -> globex"),
        "{row}"
    );
    let header = table.stdout[..*index]
        .iter()
        .rev()
        .find(|line| line.starts_with("TIME"))
        .unwrap();
    for (column, value) in [
        ("DESTINATION", "shop-b/db-0"),
        ("PROTO", "TCP"),
        ("TYPE", "new"),
    ] {
        assert_eq!(
            row.find(value).unwrap(),
            header.find(column).unwrap(),
            "{column}: {:?}",
            table.stdout
        );
    }
}

#[test]
fn replay_since_filters_status_and_the_rotating_file_agree_with_the_agent() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("flows.jsonl");
    let agent = shop_agent(
        &cluster,
        "200ms",
        &[
            "--output-file",
            file.to_str().unwrap(),
            "--output-file-max-size",
            "4096",
            "--output-file-keep",
            "3",
        ],
    );
    let (via_service, cross_tenant, _) = traffic(node);
    std::thread::sleep(Duration::from_millis(1_500));
    let second_burst = SystemTime::now();
    let late = udp_exchange(node, 3, 2, 9998);
    // Until the late exchange's reply is printed (its request came first).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent
        .records()
        .iter()
        .any(|record| record.destination.port == late && record.is_reply)
    {
        assert!(Instant::now() < deadline, "the late exchange never drained");
        std::thread::sleep(Duration::from_millis(20));
    }
    let records: Vec<FlowRecord> = agent.records().into_iter().filter(not_icmpv6).collect();
    let no_icmpv6 = ["--not-protocol", "ICMPv6"];
    let replay = |args: &[&str]| observe_json(node, &[args, &no_icmpv6].concat());
    let expect = |keep: &dyn Fn(&FlowRecord) -> bool| -> Vec<FlowRecord> {
        records
            .iter()
            .filter(|record| keep(record))
            .cloned()
            .collect()
    };

    // The last N, everything, and what came since a time.
    assert_eq!(replay(&["--last", "5"])[..], records[records.len() - 5..]);
    assert_eq!(replay(&["--last", "100000"]), records);
    let boundary = second_burst - Duration::from_millis(700);
    let ago = SystemTime::now().duration_since(boundary).unwrap();
    let since = replay(&["--since", &format!("{}ms", ago.as_millis())]);
    assert_eq!(since, expect(&|record| record.time.0 >= boundary));
    assert!(
        !since.is_empty()
            && since
                .iter()
                .all(|record| record.source.port == late || record.destination.port == late)
    );
    // Without --last, --since or --follow: the last twenty.
    assert_eq!(
        replay(&[]).len(),
        records.len().min(20),
        "the default replay"
    );

    // Filters select exactly what they name.
    let (cart, db) = (node.pods[1].ipv4.to_string(), node.pods[2].ipv4.to_string());
    let cart_block = format!("{cart}/32");
    type Keep<'a> = Box<dyn Fn(&FlowRecord) -> bool + 'a>;
    let cases: Vec<(Vec<&str>, Keep<'_>)> = vec![
        (
            vec!["--from-namespace", "shop-a"],
            Box::new(|r| r.source.identity.namespace.as_deref() == Some("shop-a")),
        ),
        (
            vec!["--to-port", "5432"],
            Box::new(|r| r.destination.port == 5432),
        ),
        (
            vec!["--protocol", "udp"],
            Box::new(|r| r.protocol.to_string() == "UDP"),
        ),
        (
            vec!["--tenant", "globex", "--direction", "request"],
            Box::new(|r| tenant_of(r).contains(&Some("globex")) && !r.is_reply),
        ),
        (
            vec!["--cross-tenant"],
            Box::new(|r| r.cross_tenant == Some(true)),
        ),
        (
            vec!["--workload", "StatefulSet/db", "--not-port", "5432"],
            Box::new(|r| {
                (workload_name(r, true) == Some("db") || workload_name(r, false) == Some("db"))
                    && r.source.port != 5432
                    && r.destination.port != 5432
            }),
        ),
        (
            vec!["--ip", &cart_block, "--to-ip", &db],
            Box::new(|r| {
                (r.source.ip.to_string() == cart || r.destination.ip.to_string() == cart)
                    && r.destination.ip.to_string() == db
            }),
        ),
        (
            vec!["--label", "app=cart", "--not-namespace", "shop-b"],
            Box::new(|r| {
                [&r.source, &r.destination]
                    .iter()
                    .any(|end| end.identity.labels.get("app").map(String::as_str) == Some("cart"))
                    && [&r.source, &r.destination]
                        .iter()
                        .all(|end| end.identity.namespace.as_deref() != Some("shop-b"))
            }),
        ),
        (
            vec![
                "--from-workload",
                "frontend",
                "--from-workload",
                "api",
                "--to-pod",
                "cart-5c8b-p000",
                "--to-pod",
                "db-0",
            ],
            Box::new(|r| {
                matches!(workload_name(r, true), Some("frontend" | "api"))
                    && matches!(
                        r.destination.identity.pod.as_deref(),
                        Some("cart-5c8b-p000" | "db-0")
                    )
            }),
        ),
    ];
    for (args, keep) in &cases {
        let mut all = vec!["--last", "100000"];
        all.extend_from_slice(args);
        let selected = replay(&all);
        let expected = expect(keep.as_ref());
        assert!(
            !expected.is_empty(),
            "{args:?} selects nothing: a weak case"
        );
        assert_eq!(selected, expected, "{args:?}");
    }
    let crossing = replay(&["--last", "100000", "--cross-tenant"]);
    assert!(!crossing.is_empty());
    assert!(crossing.iter().all(
        |record| record.source.port == cross_tenant || record.destination.port == cross_tenant
    ));
    let to_cart = replay(&["--last", "100000", "--to-port", "8080"]);
    assert!(!to_cart.is_empty());
    assert!(
        to_cart
            .iter()
            .all(|record| record.source.port == via_service
                && record.destination.service.as_ref().unwrap().name == "cart")
    );

    // Invalid requests are refused, naming the field.
    let refused = observe_refused(node, &["--server", API, "--ip", "10.0.0.0/33"]);
    assert!(
        refused.contains("InvalidArgument") && refused.contains("allow[0].either.ip[0]"),
        "{refused}"
    );
    let refused = observe_refused(node, &["--server", API, "--not-protocol", "carrier-pigeon"]);
    assert!(
        refused.contains("InvalidArgument") && refused.contains("deny[0].protocol[0]"),
        "{refused}"
    );
    let refused = observe_refused(node, &["--server", API, "--aggregates", "--namespace", "x"]);
    assert!(refused.contains("only --tenant"), "{refused}");
    let refused = observe_refused(
        node,
        &["--server", "127.0.0.1:1", "--connect-timeout", "2s"],
    );
    assert!(
        refused.contains("cannot connect to 127.0.0.1:1"),
        "{refused}"
    );

    // Status: the node, its four pod interfaces, what was seen.
    let seen_before = agent.records().len();
    let state = status(node, &[]);
    let seen_after = agent.records().len();
    assert_eq!(state["node"], "test-node");
    assert!(state["interfaces"].starts_with("4 ("), "{state:?}");
    let seen: usize = state["flows seen"].parse().unwrap();
    assert!(
        (seen_before..=seen_after).contains(&seen),
        "{seen} not in {seen_before}..={seen_after}"
    );
    assert_eq!(state["lost records"], "0");
    assert_eq!(state["lost packets"], "0");
    assert!(state["flows in buffer"].ends_with("/ 10000"), "{state:?}");

    // Aggregates are served too.
    let aggregates = observe(
        node,
        &[
            "--aggregates",
            "--last",
            "1000",
            "-o",
            "json",
            "--tenant",
            "globex",
        ],
    );
    let aggregates: Vec<Value> = aggregates
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(aggregates.iter().any(|aggregate| {
        aggregate["source"]["workload"]["name"] == "api"
            && aggregate["destination"]["workload"]["name"] == "db"
            && aggregate["port"] == 9999
    }));
    assert!(aggregates.iter().all(|aggregate| {
        aggregate["source"]["tenant"] == "globex" || aggregate["destination"]["tenant"] == "globex"
    }));

    // The rotating file holds the same records, oldest files first, each file
    // within the size limit.
    let output = agent.stop();
    let mut from_file = Vec::new();
    let mut rotated = 0;
    for suffix in [".3", ".2", ".1", ""] {
        let path = PathBuf::from(format!("{}{suffix}", file.display()));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        assert!(
            text.len() <= 4096,
            "{}: {} bytes",
            path.display(),
            text.len()
        );
        rotated += usize::from(!suffix.is_empty());
        from_file.extend(parse_records(
            &text.lines().map(str::to_owned).collect::<Vec<_>>(),
        ));
    }
    assert!(rotated >= 1, "the file was never rotated");
    let all = &output.records;
    assert!(!from_file.is_empty());
    assert_eq!(from_file[..], all[all.len() - from_file.len()..]);
}

/// Subscribes with a small HTTP/2 window, reads nothing until told, then reads
/// to the end: (records received, records reported lost).
fn slow_consumer(subscribed: mpsc::Sender<()>, go: mpsc::Receiver<()>) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:4245")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let mut client = FlowServiceClient::new(channel);
        let request = GetFlowsRequest {
            follow: true,
            allow: vec![FlowFilter {
                protocol: vec!["UDP".into()],
                destination: Some(EndpointFilter {
                    port: vec![7000],
                    ..EndpointFilter::default()
                }),
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        };
        let mut stream = client.get_flows(request).await.unwrap().into_inner();
        subscribed.send(()).unwrap();
        // The connection keeps running; the application just does not read.
        tokio::task::spawn_blocking(move || go.recv())
            .await
            .unwrap()
            .unwrap();
        let (mut received, mut lost) = (0, 0);
        while let Some(message) = stream.message().await.unwrap() {
            match message.response {
                Some(get_flows_response::Response::Flow(_)) => received += 1,
                Some(get_flows_response::Response::LostRecords(records)) => lost += records.count,
                None => {}
            }
        }
        (received, lost)
    })
}

#[test]
fn a_slow_consumer_is_told_exactly_what_it_lost_and_the_fast_one_loses_nothing() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(
        &node,
        "200ms",
        &[
            "--grpc-listen",
            API,
            "--grpc-subscriber-queue",
            "1500",
            "--grpc-buffer",
            "100",
        ],
    );
    let (subscribed_tx, subscribed_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let slow = node
        .netns
        .spawn(move || slow_consumer(subscribed_tx, go_rx));
    subscribed_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let fast = follower(
        &node,
        &["-o", "json", "--protocol", "UDP", "--to-port", "7000"],
    );
    wait_for_subscribers(&node, 2);

    // Five bursts of a thousand datagrams from fresh sockets, each burst drained
    // on its own: each fits a subscriber's queue, all five do not.
    let target = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 7000);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (bound_tx, bound_rx) = mpsc::channel();
    let sink = node.pods[1].netns.spawn(move || {
        let socket = UdpSocket::bind(target).unwrap();
        bound_tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(socket);
    });
    bound_rx.recv().unwrap();
    let to_sink = |agent: &Agent| -> Vec<FlowRecord> {
        agent
            .records()
            .into_iter()
            .filter(|record| record.destination.port == 7000)
            .collect()
    };
    udp_bursts(&agent, &node, 0, target, 5);
    let sent = to_sink(&agent);
    fast.wait_for_stdout(|lines| lines.len() >= sent.len(), Duration::from_secs(10))
        .unwrap();
    // Every loss is counted by the agent before the slow consumer reads on.
    let lost_before_reading: u64 = status(&node, &[])["lost records"].parse().unwrap();

    go_tx.send(()).unwrap();
    let output = agent.stop();
    stop_tx.send(()).unwrap();
    sink.join().unwrap().unwrap();
    let (received, lost) = slow.join().unwrap().unwrap();
    let fast = fast.wait_for_exit(Duration::from_secs(10)).unwrap();
    assert!(fast.success);

    let expected: Vec<FlowRecord> = output
        .records
        .into_iter()
        .filter(|record| record.destination.port == 7000 && record.protocol.to_string() == "UDP")
        .collect();
    assert_eq!(expected, sent, "nothing arrived after the bursts");
    let fast_records = parse_records(&fast.stdout);
    assert_eq!(fast_records, expected, "the fast consumer lost nothing");
    eprintln!(
        "slow consumer: received {received}, told of {lost} lost, of {} records",
        expected.len()
    );
    assert!(
        lost > 0,
        "the slow consumer should have fallen behind (received {received})"
    );
    assert_eq!(received + lost, expected.len() as u64);
    assert_eq!(lost_before_reading, lost);
}

/// `observe` flags for mutual TLS as `client`.
fn tls_client(pki: &Pki, client: &str) -> Vec<String> {
    [
        "--server",
        API,
        "--tls-ca",
        &pki.path("ca.pem"),
        "--tls-cert",
        &pki.path(&format!("{client}.pem")),
        "--tls-key",
        &pki.path(&format!("{client}.key")),
        "--tls-server-name",
        "flow-agent.test",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn mutual_tls_and_tokens_scope_each_client_to_its_tenant() {
    require_root!();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let pki = Pki::new();
    // The certificates' names, and a token for clients without one.
    let access = pki.directory.path().join("mtls-access.yaml");
    std::fs::write(
        &access,
        std::fs::read_to_string(pki.path("access.yaml")).unwrap()
            + &format!(
                "tokens:\n- {{sha256: {}, tenant: globex}}\n",
                sha256_hex("globex-secret")
            ),
    )
    .unwrap();
    let agent = shop_agent(
        &cluster,
        "200ms",
        &[
            "--grpc-tls-cert",
            &pki.path("server.pem"),
            "--grpc-tls-key",
            &pki.path("server.key"),
            "--grpc-client-ca",
            &pki.path("ca.pem"),
            "--grpc-access",
            access.to_str().unwrap(),
        ],
    );
    agent.wait_for_log("mtls", Duration::from_secs(1));
    let (via_service, cross_tenant, udp) = traffic(node);
    std::thread::sleep(Duration::from_millis(600));
    let records: Vec<FlowRecord> = agent.records().into_iter().filter(not_icmpv6).collect();
    let as_client = |client: &str, extra: &[&str]| {
        let flags = tls_client(&pki, client);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend_from_slice(&["-o", "json", "--last", "100000", "--not-protocol", "ICMPv6"]);
        args.extend_from_slice(extra);
        let output = cli(node, &[&["observe"], &args[..]].concat());
        assert!(output.success, "{client}: {:?}", output.stderr);
        parse_records(&output.stdout)
    };
    let of_tenant = |tenant: &str| -> Vec<FlowRecord> {
        records
            .iter()
            .filter(|record| tenant_of(record).contains(&Some(tenant)))
            .cloned()
            .collect()
    };
    // Each tenant sees the flows with one end in it, and nothing else.
    let acme = as_client("team-acme", &[]);
    assert_eq!(acme, of_tenant("acme"));
    assert!(
        acme.iter().any(|r| r.source.port == via_service)
            && acme.iter().any(|r| r.source.port == cross_tenant)
    );
    assert!(
        acme.iter()
            .all(|r| r.source.port != udp && r.destination.port != udp),
        "acme sees no globex-only flow"
    );
    let globex = as_client("team-globex", &[]);
    assert_eq!(globex, of_tenant("globex"));
    assert!(
        globex
            .iter()
            .all(|r| r.source.port != via_service && r.destination.port != via_service)
    );
    // Whatever filters it sends: asking for globex, acme gets only the flows
    // shared with globex.
    let asked = as_client("team-acme", &["--tenant", "globex"]);
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|r| r.cross_tenant == Some(true)),
        "{asked:#?}"
    );
    let shared: Vec<FlowRecord> = of_tenant("acme")
        .into_iter()
        .filter(|record| tenant_of(record).contains(&Some("globex")))
        .collect();
    assert_eq!(asked, shared);
    // The cluster admin sees everything.
    assert_eq!(as_client("platform", &[]), records);

    // A certificate from our CA that the policy does not name is refused.
    let refused = observe_refused(
        node,
        &tls_client(&pki, "stranger")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        refused.contains("PermissionDenied") && refused.contains("stranger"),
        "{refused}"
    );
    // A known name from the wrong CA, and a server certificate checked
    // against the wrong CA: no connection.
    let rogue = tls_client(&pki, "rogue");
    let refused = observe_refused(node, &rogue.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !refused.contains("PermissionDenied"),
        "refused by TLS, not by policy: {refused}"
    );
    let ca = pki.path("ca.pem");
    let refused = observe_refused(
        node,
        &[
            "--server",
            API,
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "flow-agent.test",
        ],
    );
    // No certificate and no token: connected, then refused by the access
    // layer; a token stands in for the certificate.
    assert!(
        refused.contains("no client certificate and no bearer token"),
        "{refused}"
    );
    let by_token = observe_json(
        node,
        &[
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "flow-agent.test",
            "--token",
            "globex-secret",
            "--last",
            "100000",
            "--not-protocol",
            "ICMPv6",
        ],
    );
    assert_eq!(by_token, of_tenant("globex"));
    let mut wrong_ca = tls_client(&pki, "team-acme");
    wrong_ca[3] = pki.path("rogue-ca.pem");
    let refused = observe_refused(
        node,
        &wrong_ca.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        refused.contains("cannot connect") || refused.contains("certificate"),
        "{refused}"
    );
    // Plaintext to a TLS server gets nothing.
    observe_refused(node, &["--server", API, "--last", "5"]);
    drop(agent.stop());

    // Tokens, over plaintext on loopback.
    let tokens = pki.directory.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n- {{sha256: {}, tenant: globex}}\n- {{sha256: {}, admin: true}}\n",
            sha256_hex("globex-secret"),
            sha256_hex("ops-secret")
        ),
    )
    .unwrap();
    let agent = shop_agent(
        &cluster,
        "200ms",
        &["--grpc-access", tokens.to_str().unwrap()],
    );
    let (_, cross_tenant, udp) = traffic(node);
    std::thread::sleep(Duration::from_millis(600));
    let records: Vec<FlowRecord> = agent.records().into_iter().filter(not_icmpv6).collect();
    let globex = observe_json(
        node,
        &[
            "--token",
            "globex-secret",
            "--last",
            "100000",
            "--not-protocol",
            "ICMPv6",
        ],
    );
    let expected: Vec<FlowRecord> = records
        .iter()
        .filter(|r| tenant_of(r).contains(&Some("globex")))
        .cloned()
        .collect();
    assert_eq!(globex, expected);
    assert!(
        globex.iter().any(|r| r.source.port == udp)
            && globex.iter().any(|r| r.source.port == cross_tenant)
    );
    let admin = observe_json(
        node,
        &[
            "--token",
            "ops-secret",
            "--last",
            "100000",
            "--not-protocol",
            "ICMPv6",
        ],
    );
    assert_eq!(admin, records);
    // Status: the admin sees the node's figures; a tenant only the node's
    // health and its own losses, nothing that tells of other tenants.
    let admin = status(node, &["--token", "ops-secret"]);
    assert!(admin["interfaces"].starts_with("4 ("), "{admin:?}");
    assert_ne!(admin["flows seen"], "0");
    let tenant = status(node, &["--token", "globex-secret"]);
    assert_eq!(
        (
            tenant["interfaces"].as_str(),
            tenant["flows seen"].as_str(),
            tenant["subscribers"].as_str(),
            tenant["lost records"].as_str(),
        ),
        ("0 ()", "0", "0", "0"),
        "{tenant:?}"
    );
    assert_eq!(tenant["node"], admin["node"]);
    let refused = observe_refused(node, &["--server", API, "--token", "guess"]);
    assert!(
        refused.contains("Unauthenticated") && refused.contains("unknown token"),
        "{refused}"
    );
    let refused = observe_refused(node, &["--server", API]);
    assert!(refused.contains("Unauthenticated"), "{refused}");
    drop(agent.stop());
}

#[test]
fn the_agent_refuses_unsafe_or_broken_api_settings_at_start() {
    require_root!();
    let node = Node::new(1).unwrap();
    let glob = node.glob();
    let refused = |args: &[&str]| {
        let output = cli(
            &node,
            &[&["run", "-i", glob.as_str(), "--output", "none"], args].concat(),
        );
        assert!(!output.success, "{args:?} started");
        output.stderr.join("\n")
    };
    let error = refused(&["--grpc-listen", "0.0.0.0:4245"]);
    assert!(
        error.contains("refusing plaintext gRPC on 0.0.0.0:4245"),
        "{error}"
    );
    let error = refused(&["--grpc-listen", "0.0.0.0:4245", "--grpc-allow-plaintext"]);
    assert!(error.contains("needs --grpc-access"), "{error}");
    let error = refused(&[
        "--grpc-listen",
        API,
        "--grpc-tls-cert",
        "/nonexistent/cert.pem",
        "--grpc-tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(
        error.contains("cannot read /nonexistent/cert.pem"),
        "{error}"
    );
    let error = refused(&["--grpc-listen", API, "--grpc-client-ca", "/x/ca.pem"]);
    assert!(error.contains("grpc-client-ca"), "{error}");
    let directory = tempfile::tempdir().unwrap();
    let policy = directory.path().join("access.yaml");
    std::fs::write(&policy, "clients:\n- {name: someone}\n").unwrap();
    let error = refused(&[
        "--grpc-listen",
        API,
        "--grpc-access",
        policy.to_str().unwrap(),
    ]);
    assert!(
        error.contains("invalid access policy") && error.contains("clients[0]"),
        "{error}"
    );
    let error = refused(&["--output-file", "/nonexistent/flows.jsonl"]);
    assert!(
        error.contains("cannot open output file /nonexistent/flows.jsonl"),
        "{error}"
    );
    // A taken port fails before anything is attached.
    let agent = Agent::on(&node, "1s", &["--grpc-listen", API]);
    let error = refused(&["--grpc-listen", API]);
    assert!(
        error.contains("gRPC server on 127.0.0.1:4245 failed") && error.contains("in use"),
        "{error}"
    );
    assert!(agent.stop().success);
}

#[test]
fn a_python_client_generated_from_the_proto_streams_flows() {
    require_root!();
    let Some(python) = common::cli::python() else {
        return;
    };
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let agent = shop_agent(&cluster, "200ms", &[]);
    let stubs = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/flow_client.py");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let client = LabProcess::start(
        &node.netns,
        &python,
        &[
            script.to_str().unwrap(),
            API,
            proto.to_str().unwrap(),
            stubs.path().to_str().unwrap(),
            "4",
        ],
        Some("python"),
    )
    .unwrap();
    client
        .wait_for_stdout(
            |lines| lines.iter().any(|line| line.contains("\"subscribed\"")),
            Duration::from_secs(60),
        )
        .unwrap();
    let (via_service, cross_tenant, udp) = traffic(node);
    let output = client.wait_for_exit(Duration::from_secs(60)).unwrap();
    assert!(output.success, "{:?}", output.stderr);
    let records: Vec<FlowRecord> = agent.records().into_iter().filter(not_icmpv6).collect();
    drop(agent.stop());
    let events: Vec<Value> = output
        .stdout
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let of = |kind: &'static str| events.iter().filter(move |event| event["event"] == kind);

    // The standard health service, and ServerStatus.
    let health: Vec<(&str, &str)> = of("health")
        .map(|event| {
            (
                event["service"].as_str().unwrap(),
                event["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        health,
        [("", "SERVING"), ("flowagent.v1.FlowService", "SERVING")]
    );
    let status = of("status").next().unwrap();
    assert_eq!(status["node"], "test-node");
    assert_eq!(status["interfaces"].as_array().unwrap().len(), 4);
    assert_eq!(status["buffer_capacity"], 10_000);

    // What Python followed is what the agent printed for the shop's traffic,
    // identities included; the follow ended at its deadline.
    let key = |source: (&str, u64), destination: (&str, u64), packets: u64, bytes: u64| {
        format!(
            "{}:{} > {}:{} {packets}p {bytes}B",
            source.0, source.1, destination.0, destination.1
        )
    };
    let python_key = |flow: &Value| {
        key(
            (
                flow["source"]["ip"].as_str().unwrap(),
                flow["source"]["port"].as_u64().unwrap(),
            ),
            (
                flow["destination"]["ip"].as_str().unwrap(),
                flow["destination"]["port"].as_u64().unwrap(),
            ),
            flow["packets"].as_u64().unwrap(),
            flow["bytes"].as_u64().unwrap(),
        )
    };
    let record_key = |record: &FlowRecord| {
        key(
            (&record.source.ip.to_string(), u64::from(record.source.port)),
            (
                &record.destination.ip.to_string(),
                u64::from(record.destination.port),
            ),
            record.packets,
            record.bytes,
        )
    };
    let shop = |record: &&FlowRecord| {
        [via_service, cross_tenant, udp]
            .iter()
            .any(|port| record.source.port == *port || record.destination.port == *port)
    };
    let mut expected: Vec<String> = records.iter().filter(shop).map(record_key).collect();
    let mut followed: Vec<String> = of("flow")
        .map(|event| &event["flow"])
        .filter(|flow| {
            [via_service, cross_tenant, udp]
                .iter()
                .any(|port| flow["source"]["port"] == *port || flow["destination"]["port"] == *port)
        })
        .map(python_key)
        .collect();
    expected.sort();
    followed.sort();
    assert!(expected.len() >= 6, "{expected:?}");
    assert_eq!(followed, expected);
    assert_eq!(of("lost").count(), 0);
    assert_eq!(
        of("follow-ended").next().unwrap()["code"],
        "DEADLINE_EXCEEDED"
    );
    let crossing = of("flow")
        .map(|event| &event["flow"])
        .find(|flow| flow["source"]["port"] == cross_tenant && flow["is_reply"] == false)
        .unwrap();
    assert_eq!(crossing["source"]["workload"], "Deployment/cart");
    assert_eq!(crossing["destination"]["workload"], "StatefulSet/db");
    assert_eq!(crossing["destination"]["tenant"], "globex");
    assert_eq!(crossing["cross_tenant"], true);

    // The replay is the buffer, in order, with increasing sequence numbers.
    let replayed: Vec<&Value> = of("replay")
        .map(|event| &event["flow"])
        .filter(|flow| flow["protocol"] != "ICMPv6")
        .collect();
    assert_eq!(
        replayed
            .iter()
            .map(|flow| python_key(flow))
            .collect::<Vec<_>>(),
        records.iter().map(record_key).collect::<Vec<_>>()
    );
    let sequences: Vec<u64> = of("replay")
        .map(|event| event["flow"]["sequence"].as_u64().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{sequences:?}"
    );

    // Invalid requests: INVALID_ARGUMENT naming the field.
    let invalid: Vec<(&str, &str, &str)> = of("invalid")
        .map(|event| {
            (
                event["case"].as_str().unwrap(),
                event["code"].as_str().unwrap(),
                event["details"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(invalid.len(), 3);
    for (case, code, details) in invalid {
        assert_eq!(code, "INVALID_ARGUMENT", "{case}: {details}");
        let field = match case {
            "negative number" => "number",
            "bad cidr" => "allow[0].source.ip[0]",
            _ => "deny[0].protocol[1]",
        };
        assert!(details.starts_with(field), "{case}: {details}");
    }
}
