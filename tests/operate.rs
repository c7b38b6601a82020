//! Operating the agent: the Prometheus endpoint and the health probes
//! scraped from a running agent, with values checked against known traffic.
//!
//! Needs root; skipped with a message otherwise.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::netns::Agent;
use flow_agent::record::FlowRecord;
use flow_lab::Node;

const METRICS: &str = "127.0.0.1:9090";

/// `GET path` on the node's metrics endpoint: status and body.
fn get(node: &Node, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: flow-agent\r\nConnection: close\r\n\r\n");
    node.netns
        .run(move || {
            let mut stream = TcpStream::connect(METRICS).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let status = response
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default();
            (status, body)
        })
        .unwrap()
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_and_probes_report_the_agent_and_its_traffic_exactly() {
    require_root!();
    let mut node = Node::new(0).unwrap();
    let glob = node.glob();
    let agent = Agent::start(
        &node.netns,
        &[
            "-i",
            &glob,
            "--wait-for-interfaces",
            "--flush-interval",
            "200ms",
            "--metrics-listen",
            METRICS,
        ],
    );
    agent.wait_for_log(
        "metrics and health endpoints listening",
        Duration::from_secs(5),
    );
    // Live, but nothing to watch yet: not ready, and it says why.
    assert_eq!(get(&node, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(
        get(&node, "/readyz"),
        (503, "no interface attached\n".to_owned())
    );
    assert_eq!(get(&node, "/nothing").0, 404);

    node.add_pod().unwrap();
    node.add_pod().unwrap();
    wait_until("readiness", || get(&node, "/readyz").0 == 200);

    // Known traffic: ten 100-byte datagrams from one socket, one flow.
    let target = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 7000);
    let port = node.pods[0]
        .netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..10 {
                socket.send_to(&[1u8; 100], target).unwrap();
            }
            socket.local_addr().unwrap().port()
        })
        .unwrap();
    let flow = |records: &[FlowRecord]| -> (u64, u64) {
        records
            .iter()
            .filter(|record| record.source.port == port && record.destination.port == 7000)
            .fold((0, 0), |(packets, bytes), record| {
                (packets + record.packets, bytes + record.bytes)
            })
    };
    wait_until("the flow's records", || {
        flow(&agent.records()) == (10, 1_280)
    });

    // The metrics add up to exactly what the agent printed (scraped between
    // two drains: the record count must not move around the scrape).
    let (records, metrics) = loop {
        let before = agent.records();
        let (status, metrics) = get(&node, "/metrics");
        assert_eq!(status, 200);
        let after = agent.records();
        if before.len() == after.len()
            && value(&metrics, "flowagent_flow_records_total") == after.len() as f64
        {
            break (after, metrics);
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    let packets: u64 = records.iter().map(|record| record.packets).sum();
    let bytes: u64 = records.iter().map(|record| record.bytes).sum();
    assert_eq!(value(&metrics, "flowagent_packets_total"), packets as f64);
    assert_eq!(value(&metrics, "flowagent_bytes_total"), bytes as f64);
    assert!(packets >= 10 && bytes >= 1_280);
    assert_eq!(value(&metrics, "flowagent_interfaces_attached"), 2.0);
    assert_eq!(
        value(
            &metrics,
            "flowagent_build_info{version=\"0.1.0\",node=\"test-node\"}"
        ),
        1.0
    );
    assert!(value(&metrics, "flowagent_drain_duration_seconds_count") >= 2.0);
    assert!(
        value(
            &metrics,
            "flowagent_datapath_packets_total{counter=\"inserted\"}"
        ) >= records.len() as f64
    );
    assert!(
        !metrics.contains("counter=\"lost\""),
        "nothing lost:\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE flowagent_drain_duration_seconds histogram"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"));
    assert!(agent.stop().success);
}
