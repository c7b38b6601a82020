//! The `flow-agent` binary on real traffic: network namespaces as a node and its
//! pods, veth pairs between them, the agent attached to the host side inside the
//! node namespace, and exact packet and byte totals checked against what was
//! sent (and, for TCP, against the kernel's own counters).
//!
//! Needs root; skipped with a message otherwise.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics to report failure"
)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::{
    netns::{Agent, AgentOutput, flow, totals},
    packet::ping,
};
use flow_lab::{IpCounters, Node, disable_segmentation_offload, ip_counters, transmitted};
use flow_model::record::Hook;

const FLUSH: &str = "200ms";

/// A UDP server in the pod that answers each datagram with its first 10 bytes.
fn udp_echo_server(
    node: &Node,
    pod: usize,
    address: IpAddr,
    port: u16,
) -> std::thread::JoinHandle<flow_lab::Result<usize>> {
    let socket_address = SocketAddr::new(address, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = node.pods[pod].netns.spawn(move || {
        let socket = UdpSocket::bind(socket_address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 2048];
        let mut received = 0;
        while let Ok((_, peer)) = socket.recv_from(&mut buffer) {
            received += 1;
            socket.send_to(&buffer[..10], peer).unwrap();
        }
        received
    });
    ready_rx.recv().unwrap();
    handle
}

/// Sends `count` datagrams of `size` bytes from a pod and waits for each answer.
fn udp_client(
    node: &Node,
    pod: usize,
    to: SocketAddr,
    count: usize,
    size: usize,
    gap: Duration,
) -> u16 {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    node.pods[pod]
        .netns
        .run(move || {
            let socket = UdpSocket::bind(bind).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buffer = [0u8; 64];
            for _ in 0..count {
                socket.send_to(&vec![7u8; size], to).unwrap();
                socket.recv_from(&mut buffer).unwrap();
                std::thread::sleep(gap);
            }
            socket.local_addr().unwrap().port()
        })
        .unwrap()
}

/// Re-wires a node as a bridge plugin does (kubenet's cbr0, flannel's cni0):
/// both host veths become ports of one bridge that holds the pods' gateways,
/// so traffic between the two pods' subnets is routed by the bridge device.
/// Returns the bridge's name.
fn bridge_the_pods(node: &Node) -> String {
    let bridge = format!("br{}", &node.prefix[2..]);
    node.netns
        .ip(&["link", "add", &bridge, "type", "bridge"])
        .unwrap();
    for (index, pod) in node.pods.iter().enumerate() {
        let gateway = format!("10.{}.0.1/24", index + 1);
        node.netns
            .ip(&["addr", "del", &gateway, "dev", &pod.host_interface])
            .unwrap();
        node.netns
            .ip(&["link", "set", &pod.host_interface, "master", &bridge])
            .unwrap();
        node.netns
            .ip(&["addr", "add", &gateway, "dev", &bridge])
            .unwrap();
    }
    node.netns.ip(&["link", "set", &bridge, "up"]).unwrap();
    node.netns.wait_until_up(&bridge).unwrap();
    bridge
}

#[test]
fn a_packet_routed_by_a_bridge_between_two_watched_ports_is_counted_once() {
    require_root!();
    let node = Node::new(2).unwrap();
    let bridge = bridge_the_pods(&node);
    let agent = Agent::on(&node, FLUSH, &[]);
    // The bridge is found as a master of watched ports, even one created
    // after the agent started.
    agent.wait_for_log(
        "bridges whose every port is watched",
        Duration::from_secs(5),
    );
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    let server = udp_echo_server(&node, 1, b4, 9000);
    let port = udp_client(&node, 0, SocketAddr::new(b4, 9000), 25, 100, Duration::ZERO);
    assert_eq!(server.join().unwrap().unwrap(), 25);
    // A third port that no glob selects: the bridge is no longer trusted
    // (its packets would be skipped uncounted), so it leaves the set.
    node.netns
        .ip(&[
            "link", "add", "stray0", "type", "veth", "peer", "name", "stray1",
        ])
        .unwrap();
    node.netns
        .ip(&["link", "set", "stray0", "master", &bridge])
        .unwrap();
    agent.wait_for_log(
        "what they route between ports is counted once bridges={}",
        Duration::from_secs(5),
    );
    let output = agent.stop();
    assert!(output.success);
    let flows = totals(&output.records);
    let a4 = node.pods[0].ipv4;
    let (request, _) = flow(&flows, a4, port, b4, 9000, "UDP");
    // Counted on pod A's port; skipped on pod B's, whose ingress interface
    // is the bridge.
    assert_eq!((request.packets, request.bytes), (25, 25 * 128));
    let (reply, _) = flow(&flows, b4, 9000, a4, port, "UDP");
    assert_eq!((reply.packets, reply.bytes), (25, 25 * 38));
}

#[test]
fn udp_between_pods_on_one_node_is_counted_once_with_exact_bytes() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(&node, FLUSH, &[]);
    let (b4, b6) = (IpAddr::V4(node.pods[1].ipv4), IpAddr::V6(node.pods[1].ipv6));
    let server4 = udp_echo_server(&node, 1, b4, 9000);
    let server6 = udp_echo_server(&node, 1, b6, 9001);
    // 30 datagrams over ~600 ms: the flow spans several flush intervals.
    let port4 = udp_client(
        &node,
        0,
        SocketAddr::new(b4, 9000),
        30,
        100,
        Duration::from_millis(20),
    );
    let port6 = udp_client(&node, 0, SocketAddr::new(b6, 9001), 20, 100, Duration::ZERO);
    assert_eq!(server4.join().unwrap().unwrap(), 30);
    assert_eq!(server6.join().unwrap().unwrap(), 20);
    let output = agent.stop();
    assert!(output.success);

    let flows = totals(&output.records);
    let a4 = node.pods[0].ipv4;
    let a6 = node.pods[0].ipv6;
    let (request, replies) = flow(&flows, a4, port4, b4, 9000, "UDP");
    // Counted once although each packet crossed two watched interfaces.
    assert_eq!((request.packets, request.bytes), (30, 30 * 128));
    assert!(
        request.records >= 2,
        "a long-lived flow reports every interval: {request:?}"
    );
    assert!(replies.iter().all(|is_reply| !is_reply));
    let (reply, replies) = flow(&flows, b4, 9000, a4, port4, "UDP");
    assert_eq!((reply.packets, reply.bytes), (30, 30 * 38));
    assert!(replies.iter().all(|is_reply| *is_reply));

    let (request, replies) = flow(&flows, a6, port6, b6, 9001, "UDP");
    assert_eq!((request.packets, request.bytes), (20, 20 * 148));
    assert!(replies.iter().all(|is_reply| !is_reply));
    let (reply, replies) = flow(&flows, b6, 9001, a6, port6, "UDP");
    assert_eq!((reply.packets, reply.bytes), (20, 20 * 58));
    assert!(replies.iter().all(|is_reply| *is_reply));

    // The request was first seen entering the node from pod A, the reply from pod B.
    for record in &output.records {
        if record.protocol.to_string() == "UDP" {
            let sender = if record.is_reply { 1 } else { 0 };
            assert_eq!(record.interface, node.pods[sender].host_interface);
            assert_eq!(record.hook, Hook::Ingress);
            assert_eq!(record.node, "test-node");
        }
    }
}

/// Resolves every neighbour on the path between pods 0 and 1 (ARP or ND, both
/// ways) with one UDP exchange, so a measured TCP connection does not lose its
/// first SYN-ACK in a neighbour queue: TCP counts a segment as sent even when
/// it never leaves the pod.
fn resolve_neighbours(node: &Node, server: IpAddr) {
    let echo = udp_echo_server(node, 1, server, 9999);
    udp_client(node, 0, SocketAddr::new(server, 9999), 1, 1, Duration::ZERO);
    echo.join().unwrap().unwrap();
}

#[test]
fn udp_flood_across_many_drains_loses_no_packet() {
    require_root!();
    let node = Node::new(2).unwrap();
    // A drain every 50 ms while pod A sends as fast as it can: every drain
    // switches maps under load, and the totals must still be exact.
    let agent = Agent::on(&node, "50ms", &[]);
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    resolve_neighbours(&node, b4);
    let (port, delivered, transmitted_delta) = node.pods[0]
        .netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let before = transmitted("eth0").unwrap();
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < Duration::from_secs(2) {
                for _ in 0..1000 {
                    socket.send_to(&[3u8; 64], (b4, 9)).unwrap();
                    sent += 1;
                }
            }
            let after = transmitted("eth0").unwrap();
            // The veth hands each datagram to the host side's ingress hook, or
            // drops it when that side's backlog is full.
            let dropped = after.dropped - before.dropped;
            (
                socket.local_addr().unwrap().port(),
                sent - dropped,
                after.packets - before.packets,
            )
        })
        .unwrap();
    let output = agent.stop();
    let flows = totals(&output.records);
    let (flood, _) = flow(&flows, node.pods[0].ipv4, port, b4, 9, "UDP");
    // Every datagram that reached the host side was counted, exactly once.
    assert_eq!(flood.packets, delivered);
    // Nothing else left the pod meanwhile but, at most, an IPv6 report or two.
    assert!(transmitted_delta >= delivered && transmitted_delta - delivered <= 4);
    assert_eq!(flood.bytes, flood.packets * 92);
    assert!(
        flood.records >= 10,
        "the flood spanned many drains: {flood:?}"
    );
    assert_eq!(summary_value(&output.stderr, "lost"), 0);
    eprintln!(
        "flood: {} packets in {} records",
        flood.packets, flood.records
    );
}

/// One measured TCP exchange between pod 1 (client) and pod 2 (server).
struct TcpExchange {
    client_port: u16,
    /// Each pod's IP and TCP counters: what changed during the exchange.
    counters: [IpCounters; 2],
    output: AgentOutput,
}

fn pod_counters(node: &Node) -> [IpCounters; 2] {
    [0, 1].map(|pod| node.pods[pod].netns.run(ip_counters).unwrap().unwrap())
}

/// Runs one TCP exchange under a running agent: the client sends `up` bytes,
/// the server answers with `down` bytes, both close; then stops the agent.
fn tcp_exchange(node: &Node, agent: Agent, server: IpAddr, up: usize, down: usize) -> TcpExchange {
    resolve_neighbours(node, server);
    let before = pod_counters(node);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_thread = node.pods[1].netns.spawn(move || {
        let listener = TcpListener::bind(SocketAddr::new(server, 8080)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = vec![0u8; up];
        stream.read_exact(&mut received).unwrap();
        stream.write_all(&vec![1u8; down]).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    ready_rx.recv().unwrap();
    let client_port = node.pods[0]
        .netns
        .run(move || {
            let mut stream = TcpStream::connect(SocketAddr::new(server, 8080)).unwrap();
            stream.write_all(&vec![2u8; up]).unwrap();
            let mut answer = vec![0u8; down];
            stream.read_exact(&mut answer).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
            stream.local_addr().unwrap().port()
        })
        .unwrap();
    server_thread.join().unwrap().unwrap();
    // The last ACKs may still be crossing: read the counters until two reads
    // 50 ms apart agree (on a loaded machine that takes longer, not fails).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut after = pod_counters(node);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let again = pod_counters(node);
        let same = (0..2).all(|pod| {
            (
                again[pod].in_receives,
                again[pod].in_octets,
                again[pod].tcp_segments_sent,
            ) == (
                after[pod].in_receives,
                after[pod].in_octets,
                after[pod].tcp_segments_sent,
            )
        });
        after = again;
        if same {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pods' counters never settled"
        );
    }
    let counters = [0, 1].map(|pod| IpCounters {
        in_receives: after[pod].in_receives - before[pod].in_receives,
        in_octets: after[pod].in_octets - before[pod].in_octets,
        tcp_segments_sent: after[pod].tcp_segments_sent - before[pod].tcp_segments_sent,
    });
    TcpExchange {
        client_port,
        counters,
        output: agent.stop(),
    }
}

#[test]
fn tcp_packets_and_bytes_match_the_receivers_ip_counters() {
    require_root!();
    let node = Node::new(2).unwrap();
    for pod in &node.pods {
        pod.netns
            .run(|| disable_segmentation_offload("eth0"))
            .unwrap()
            .unwrap();
    }
    let agent = Agent::on(&node, FLUSH, &[]);
    let server = IpAddr::V4(node.pods[1].ipv4);
    let TcpExchange {
        client_port: port,
        counters,
        output,
    } = tcp_exchange(&node, agent, server, 1_000_000, 100_000);

    let flows = totals(&output.records);
    let a = node.pods[0].ipv4;
    let (request, replies) = flow(&flows, a, port, server, 8080, "TCP");
    let (reply, reply_flags) = flow(&flows, server, 8080, a, port, "TCP");
    // What pod B's stack received is exactly what the agent saw from A to B.
    assert_eq!(
        (request.packets, request.bytes),
        (counters[1].in_receives, counters[1].in_octets)
    );
    assert_eq!(
        (reply.packets, reply.bytes),
        (counters[0].in_receives, counters[0].in_octets)
    );
    assert!(request.bytes > 1_000_000 && reply.bytes > 100_000);
    assert!(
        replies.iter().all(|is_reply| !is_reply),
        "the SYN's sender is the initiator"
    );
    assert!(reply_flags.iter().all(|is_reply| *is_reply));
    let flags: Vec<&String> = output
        .records
        .iter()
        .filter(|r| r.destination.port == 8080)
        .flat_map(|r| &r.tcp_flags)
        .collect();
    assert!(flags.iter().any(|f| *f == "SYN") && flags.iter().any(|f| *f == "FIN"));
}

#[test]
fn tcp_with_segmentation_offload_counts_wire_segments() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(&node, FLUSH, &[]);
    let server = IpAddr::V6(node.pods[1].ipv6);
    let TcpExchange {
        client_port: port,
        counters,
        output,
    } = tcp_exchange(&node, agent, server, 4_000_000, 10_000);

    let flows = totals(&output.records);
    let a = node.pods[0].ipv6;
    let (request, _) = flow(&flows, a, port, server, 8080, "TCP");
    let (reply, _) = flow(&flows, server, 8080, a, port, "TCP");
    // GSO super-packets count as the segments TCP sent.
    assert_eq!(request.packets, counters[0].tcp_segments_sent);
    assert_eq!(reply.packets, counters[1].tcp_segments_sent);
}

#[test]
fn icmp_echo_over_ipv4_and_ipv6_marks_the_reply() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(&node, FLUSH, &[]);
    ping(&node, 0, IpAddr::V4(node.pods[1].ipv4), 3);
    ping(&node, 0, IpAddr::V6(node.pods[1].ipv6), 4);
    let output = agent.stop();

    let icmp = |source: &str, icmp_type: u8| {
        let records: Vec<_> = output
            .records
            .iter()
            .filter(|r| {
                r.source.ip.to_string() == source
                    && r.icmp.is_some_and(|i| i.icmp_type == icmp_type)
            })
            .collect();
        let packets: u64 = records.iter().map(|r| r.packets).sum();
        let bytes: u64 = records.iter().map(|r| r.bytes).sum();
        let replies: Vec<bool> = records.iter().map(|r| r.is_reply).collect();
        (packets, bytes, replies)
    };
    let (a4, b4) = (node.pods[0].ipv4.to_string(), node.pods[1].ipv4.to_string());
    let (a6, b6) = (node.pods[0].ipv6.to_string(), node.pods[1].ipv6.to_string());
    let (packets, bytes, replies) = icmp(&a4, 8);
    assert_eq!((packets, bytes), (3, 3 * 84));
    assert!(replies.iter().all(|r| !r));
    let (packets, bytes, replies) = icmp(&b4, 0);
    assert_eq!((packets, bytes), (3, 3 * 84));
    assert!(replies.iter().all(|r| *r));
    let (packets, bytes, replies) = icmp(&a6, 128);
    assert_eq!((packets, bytes), (4, 4 * 104));
    assert!(replies.iter().all(|r| !r));
    let (packets, bytes, replies) = icmp(&b6, 129);
    assert_eq!((packets, bytes), (4, 4 * 104));
    assert!(replies.iter().all(|r| *r));
}

#[test]
fn interfaces_added_after_start_are_attached_and_removed_ones_detached() {
    require_root!();
    let mut node = Node::new(0).unwrap();
    let agent = Agent::start(
        &node.netns,
        &[
            "-i",
            &node.glob(),
            "--wait-for-interfaces",
            "--flush-interval",
            FLUSH,
        ],
    );
    node.add_pod().unwrap();
    node.add_pod().unwrap();
    let (first, second) = (
        node.pods[0].host_interface.clone(),
        node.pods[1].host_interface.clone(),
    );
    agent.wait_for_log(
        &format!("attached interface=\"{first}\""),
        Duration::from_secs(5),
    );
    agent.wait_for_log(
        &format!("attached interface=\"{second}\""),
        Duration::from_secs(5),
    );
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    let server = udp_echo_server(&node, 1, b4, 9000);
    let port = udp_client(&node, 0, SocketAddr::new(b4, 9000), 5, 100, Duration::ZERO);
    server.join().unwrap().unwrap();

    // Deleting the pod's namespace destroys its veth.
    let removed = node.pods.remove(0);
    drop(removed);
    agent.wait_for_log(
        &format!("detached (interface removed) interface=\"{first}\""),
        Duration::from_secs(5),
    );
    let output = agent.stop();
    let flows = totals(&output.records);
    let (request, _) = flow(&flows, "10.1.0.2", port, b4, 9000, "UDP");
    assert_eq!((request.packets, request.bytes), (5, 5 * 128));
}

#[test]
fn an_interface_renamed_within_the_selection_and_back_keeps_its_programs_and_name() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(&node, FLUSH, &[]);
    let original = node.pods[0].host_interface.clone();
    let renamed = format!("{original}x");
    let rename = |from: &str, to: &str| {
        node.netns.ip(&["link", "set", from, "down"]).unwrap();
        node.netns.ip(&["link", "set", from, "name", to]).unwrap();
        node.netns.ip(&["link", "set", to, "up"]).unwrap();
        node.netns.wait_until_up(to).unwrap();
    };
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    let exchange = |count: usize| {
        let server = udp_echo_server(&node, 1, b4, 9000);
        let port = udp_client(
            &node,
            0,
            SocketAddr::new(b4, 9000),
            count,
            100,
            Duration::ZERO,
        );
        server.join().unwrap().unwrap();
        port
    };
    rename(&original, &renamed);
    let first = exchange(3);
    rename(&renamed, &original);
    let second = exchange(4);
    let output = agent.stop();
    assert!(
        !output.stderr.iter().any(|line| line.contains("detached")),
        "a rename within the selection keeps the programs: {:?}",
        output.stderr
    );
    let interface_of = |port: u16| -> Vec<String> {
        output
            .records
            .iter()
            .filter(|record| record.source.port == port && !record.is_reply)
            .map(|record| record.interface.clone())
            .collect()
    };
    let flows = totals(&output.records);
    let a4 = node.pods[0].ipv4;
    assert_eq!(flow(&flows, a4, first, b4, 9000, "UDP").0.packets, 3);
    assert_eq!(flow(&flows, a4, second, b4, 9000, "UDP").0.packets, 4);
    assert!(
        interface_of(first).iter().all(|name| *name == renamed),
        "{:?}",
        interface_of(first)
    );
    assert!(
        interface_of(second).iter().all(|name| *name == original),
        "{:?}",
        interface_of(second)
    );
}

#[test]
fn sigterm_reports_every_packet_counted_before_exit() {
    require_root!();
    let node = Node::new(2).unwrap();
    // No flush happens while the agent runs: everything comes from the final drain.
    let agent = Agent::on(&node, "1h", &[]);
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    let server = udp_echo_server(&node, 1, b4, 9000);
    let port = udp_client(&node, 0, SocketAddr::new(b4, 9000), 7, 300, Duration::ZERO);
    server.join().unwrap().unwrap();
    assert!(agent.records().is_empty());
    let output = agent.stop();
    assert!(output.success);
    let flows = totals(&output.records);
    let (request, _) = flow(&flows, node.pods[0].ipv4, port, b4, 9000, "UDP");
    assert_eq!((request.packets, request.bytes), (7, 7 * 328));
    assert!(
        output
            .stderr
            .iter()
            .any(|line| line.contains("every counted packet was reported"))
    );
}

/// Reads `name=value` from the agent's shutdown summary line.
fn summary_value(stderr: &[String], name: &str) -> u64 {
    let line = stderr
        .iter()
        .find(|line| line.contains("flow-agent stopped"))
        .expect("shutdown summary");
    let field = format!("{name}=");
    let start = line
        .find(&field)
        .unwrap_or_else(|| panic!("{name} missing in {line}"))
        + field.len();
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn full_flow_map_is_reported_and_flows_still_arrive_through_the_spill_ring() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(&node, "1h", &["--map-size", "1"]);
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    let server = udp_echo_server(&node, 1, b4, 9000);
    // Ten sockets open at once: ten distinct source ports, ten flows each way.
    let to = SocketAddr::new(b4, 9000);
    let ports = node.pods[0]
        .netns
        .run(move || {
            let sockets: Vec<UdpSocket> = (0..10)
                .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
                .collect();
            let mut answer = [0u8; 64];
            for socket in &sockets {
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                socket.send_to(&[7u8; 100], to).unwrap();
                socket.recv_from(&mut answer).unwrap();
            }
            sockets
                .iter()
                .map(|socket| socket.local_addr().unwrap().port())
                .collect::<Vec<u16>>()
        })
        .unwrap();
    server.join().unwrap().unwrap();
    let output = agent.stop();
    let flows = totals(&output.records);
    for port in ports {
        let (request, _) = flow(&flows, node.pods[0].ipv4, port, b4, 9000, "UDP");
        assert_eq!((request.packets, request.bytes), (1, 128));
    }
    // With one slot, most packets found the map full and went through the spill
    // ring (the fill check drains early, which frees the slot now and then);
    // every one of them reached a record, and none was lost.
    let map_full = summary_value(&output.stderr, "map_full");
    assert!(map_full >= 1, "20 UDP packets in 20 flows, one map slot");
    assert_eq!(summary_value(&output.stderr, "spilled"), map_full);
    assert_eq!(summary_value(&output.stderr, "lost"), 0);
    assert!(
        output
            .stderr
            .iter()
            .any(|line| line.contains("flow map full")),
        "map pressure must be logged"
    );
}

#[test]
fn a_filling_flow_map_is_drained_early_instead_of_spilling() {
    require_root!();
    let node = Node::new(2).unwrap();
    // Flows each CPU may hold outside the map (see flow_common::HeldFlows).
    let held = flow_common::HELD_FLOW_SLOTS * aya::util::nr_cpus().unwrap();
    // A map of four times that (64 on two CPUs) and no timed flush: only
    // the fill check can drain.
    let map_size = (4 * held).max(64);
    let agent = Agent::on(&node, "1h", &["--map-size", &map_size.to_string()]);
    let b4 = node.pods[1].ipv4;
    resolve_neighbours(&node, IpAddr::V4(b4));
    let mut ports = Vec::new();
    // Every socket stays open to the end: distinct source ports, so no later
    // burst reuses an earlier flow.
    let mut sockets: Vec<UdpSocket> = Vec::new();
    // Five bursts of half the map plus what the CPUs hold: even with every
    // held slot taken, each burst puts half the map in it (the early
    // drain's trigger) and stays under its size, and the next burst waits
    // until this one was drained, so nothing can spill however slow the
    // agent.
    let burst_flows = map_size / 2 + held;
    for burst in 1..=5 {
        let burst_sockets = node.pods[0]
            .netns
            .run(move || {
                let sockets: Vec<UdpSocket> = (0..burst_flows)
                    .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
                    .collect();
                for socket in &sockets {
                    socket.send_to(&[0u8; 100], (b4, 9)).unwrap();
                }
                sockets
            })
            .unwrap();
        ports.extend(
            burst_sockets
                .iter()
                .map(|socket| socket.local_addr().unwrap().port()),
        );
        sockets.extend(burst_sockets);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while agent
            .records()
            .iter()
            .filter(|record| record.destination.port == 9)
            .count()
            < burst_flows * burst
        {
            assert!(
                std::time::Instant::now() < deadline,
                "burst {burst} was never drained early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let output = agent.stop();
    drop(sockets);
    assert_eq!(
        ports
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        5 * burst_flows
    );
    let flows = totals(&output.records);
    for port in ports {
        assert_eq!(
            flow(&flows, node.pods[0].ipv4, port, b4, 9, "UDP")
                .0
                .packets,
            1
        );
    }
    assert_eq!(summary_value(&output.stderr, "map_full"), 0);
    // Of each burst, all but what was held went through the map.
    assert!(summary_value(&output.stderr, "inserted") >= 5 * (burst_flows - held) as u64);
    // Five bursts through a small map drain early several times, but the log
    // says so once a minute, not per drain.
    let early: Vec<&String> = output
        .stderr
        .iter()
        .filter(|line| line.contains("draining early"))
        .collect();
    assert_eq!(early.len(), 1, "{early:?}");
    assert!(early[0].contains("early_drains=1"), "{early:?}");
}

#[test]
fn tcx_attaches_ahead_of_a_program_that_drops_everything() {
    require_root!();
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
    let node = Node::new(2).unwrap();
    let interface = node.pods[0].host_interface.clone();
    // Play a CNI: a TCX program on pod A's ingress that drops every packet.
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (query_tx, query_rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<Vec<String>>>();
    let cni_interface = interface.clone();
    let cni = node.netns.spawn(move || {
        let mut ebpf = aya::Ebpf::load(flow_agent::datapath::TESTKIT_OBJECT).unwrap();
        let program: &mut SchedClassifier =
            ebpf.program_mut("drop_all").unwrap().try_into().unwrap();
        program.load().unwrap();
        program
            .attach_with_options(
                &cni_interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap();
        attached_tx.send(()).unwrap();
        let names = || -> Vec<String> {
            let (_, programs) =
                SchedClassifier::query_tcx(&cni_interface, TcAttachType::Ingress).unwrap();
            programs
                .iter()
                .map(|info| info.name_as_str().unwrap_or("?").to_owned())
                .collect()
        };
        loop {
            match query_rx.recv_timeout(Duration::from_millis(10)) {
                Ok(reply) => reply.send(names()).unwrap(),
                Err(_) if release_rx.try_recv().is_ok() => return names(),
                Err(_) => {}
            }
        }
    });
    attached_rx.recv().unwrap();
    // The CNI stand-in also drops pod A's ARP requests.
    node.pin_gateway_neighbour(0).unwrap();
    let query = || {
        let (tx, rx) = std::sync::mpsc::channel();
        query_tx.send(tx).unwrap();
        rx.recv().unwrap()
    };

    let agent = Agent::on(&node, FLUSH, &[]);
    assert_eq!(
        query(),
        ["flow_ingress", "drop_all"],
        "flow-agent must run first"
    );
    let b4 = node.pods[1].ipv4;
    let port = node.pods[0]
        .netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..5 {
                socket.send_to(&[0u8; 100], (b4, 9000)).unwrap();
            }
            socket.local_addr().unwrap().port()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let output = agent.stop();
    // Detaching removed only flow-agent's program.
    assert_eq!(query(), ["drop_all"]);
    release_tx.send(()).unwrap();
    cni.join().unwrap().unwrap();

    let flows = totals(&output.records);
    let (request, _) = flow(&flows, node.pods[0].ipv4, port, b4, 9000, "UDP");
    assert_eq!((request.packets, request.bytes), (5, 5 * 128));
}

#[test]
fn legacy_tc_mode_counts_and_leaves_existing_qdisc_and_filters_alone() {
    require_root!();
    let node = Node::new(2).unwrap();
    let interface = node.pods[0].host_interface.clone();
    let tc = |args: &[&str]| {
        let mut full = vec!["netns", "exec", &node.netns.name, "tc"];
        full.extend_from_slice(args);
        flow_lab::run("ip", &full).unwrap();
    };
    tc(&["qdisc", "add", "dev", &interface, "clsact"]);
    // Someone else's classifier, installed before the agent starts: a cls_bpf
    // filter at priority 100 that outlives the process that installed it.
    let other_interface = interface.clone();
    node.netns
        .run(move || {
            use aya::programs::{
                SchedClassifier, TcAttachType,
                tc::{NlOptions, TcAttachOptions, TcHandle},
            };
            let mut ebpf = aya::Ebpf::load(flow_agent::datapath::TESTKIT_OBJECT).unwrap();
            let program: &mut SchedClassifier = ebpf
                .program_mut("pass_through")
                .unwrap()
                .try_into()
                .unwrap();
            program.load().unwrap();
            let options = NlOptions {
                priority: 100,
                handle: TcHandle::new(0, 7),
                classid: None,
            };
            let link = program
                .attach_with_options(
                    &other_interface,
                    TcAttachType::Ingress,
                    TcAttachOptions::Netlink(options),
                )
                .unwrap();
            // Leave the filter installed when this thread's handles go away.
            std::mem::forget(program.take_link(link).unwrap());
        })
        .unwrap();

    let agent = Agent::on(&node, FLUSH, &["--attach-mode", "tc"]);
    let b4 = IpAddr::V4(node.pods[1].ipv4);
    let server = udp_echo_server(&node, 1, b4, 9000);
    let port = udp_client(&node, 0, SocketAddr::new(b4, 9000), 6, 100, Duration::ZERO);
    server.join().unwrap().unwrap();
    let output = agent.stop();
    let flows = totals(&output.records);
    let (request, _) = flow(&flows, node.pods[0].ipv4, port, b4, 9000, "UDP");
    assert_eq!((request.packets, request.bytes), (6, 6 * 128));

    let show = |args: &[&str]| {
        let mut full = vec!["netns", "exec", &node.netns.name, "tc"];
        full.extend_from_slice(args);
        let output = std::process::Command::new("ip")
            .args(&full)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let filters = show(&["filter", "show", "dev", &interface, "ingress"]);
    assert!(
        filters.contains("pass_through"),
        "the existing filter stays: {filters}"
    );
    assert!(
        !filters.contains("flow_"),
        "our filters are gone: {filters}"
    );
    assert!(show(&["qdisc", "show", "dev", &interface]).contains("clsact"));
}

#[test]
fn filters_left_by_a_killed_agent_are_replaced_in_tc_mode() {
    require_root!();
    let node = Node::new(1).unwrap();
    let interface = node.pods[0].host_interface.clone();
    let filters = || {
        flow_lab::run_in(
            &node.netns.name,
            "tc",
            &["filter", "show", "dev", &interface, "ingress"],
        )
        .unwrap()
    };
    let args = [
        "-i",
        &node.glob(),
        "--flush-interval",
        FLUSH,
        "--attach-mode",
        "tc",
    ];
    Agent::start(&node.netns, &args).kill();
    // Netlink filters outlive their process, unlike TCX links.
    assert_eq!(
        filters()
            .lines()
            .filter(|line| line.contains("flow_ingress"))
            .count(),
        1,
        "{}",
        filters()
    );

    let agent = Agent::start(&node.netns, &args);
    agent.wait_for_log(
        "removed a filter left by an earlier agent",
        Duration::from_secs(1),
    );
    assert_eq!(
        filters()
            .lines()
            .filter(|line| line.contains("flow_ingress"))
            .count(),
        1,
        "{}",
        filters()
    );
    agent.stop();
    assert!(!filters().contains("flow_"), "{}", filters());
}

/// Sends one raw Ethernet frame out of a pod's eth0 (AF_PACKET): no stack
/// between us and the wire, so the frame can be malformed.
fn send_raw_frame(node: &Node, pod: usize, payload: Vec<u8>) {
    node.pods[pod]
        .netns
        .run(move || {
            // SAFETY: plain socket calls on valid, owned buffers.
            unsafe {
                let protocol = (libc::ETH_P_ALL as u16).to_be();
                let socket = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol));
                assert!(socket >= 0, "{}", std::io::Error::last_os_error());
                let name = std::ffi::CString::new("eth0").unwrap();
                let mut address: libc::sockaddr_ll = std::mem::zeroed();
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_protocol = protocol;
                address.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                address.sll_halen = 6;
                address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
                let mut frame = vec![0xff; 6];
                frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
                frame.extend_from_slice(&payload);
                let sent = libc::sendto(
                    socket,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    std::ptr::from_ref(&address).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "{}",
                    std::io::Error::last_os_error()
                );
                libc::close(socket);
            }
        })
        .unwrap();
}

#[test]
fn malformed_packets_are_counted_and_logged_with_ebpf_debug() {
    require_root!();
    let node = Node::new(1).unwrap();
    let agent = Agent::on(&node, FLUSH, &["--ebpf-debug"]);
    // An IPv4 header announcing TCP, followed by only 4 bytes of it.
    let mut packet = vec![
        0x45, 0, 0, 24, 0, 0, 0, 0, 64, 6, 0, 0, 10, 1, 0, 2, 10, 9, 9, 9,
    ];
    packet.extend_from_slice(&[0x12, 0x34, 0x00, 0x50]);
    for _ in 0..3 {
        send_raw_frame(&node, 0, packet.clone());
    }
    agent.wait_for_log("transport header truncated", Duration::from_secs(5));
    let output = agent.stop();
    assert_eq!(summary_value(&output.stderr, "malformed"), 3);
    assert!(
        output
            .records
            .iter()
            .all(|record| record.destination.ip.to_string() != "10.9.9.9")
    );
}

/// Runs the binary and returns (exit code, stderr lines).
fn run_agent(netns: &str, args: &[&str]) -> (i32, Vec<String>) {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_flow-agent")])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    (
        output.status.code().unwrap_or(-1),
        stderr.lines().map(str::to_owned).collect(),
    )
}

#[test]
fn bad_input_fails_with_one_line_that_says_what_to_do() {
    require_root!();
    let node = Node::new(1).unwrap();
    let ns = node.netns.name.clone();

    let (code, stderr) = run_agent(&ns, &["run", "-i", "nosuch*"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].contains("no interface matches \"nosuch*\""),
        "{stderr:?}"
    );
    assert!(stderr[0].contains("--wait-for-interfaces"), "{stderr:?}");

    let (code, stderr) = run_agent(&ns, &["run", "-i", "x", "--flush-interval", "soon"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(stderr[0].contains("--flush-interval"), "{stderr:?}");

    let (code, stderr) = run_agent(&ns, &["run", "--bogus"]);
    assert_eq!((code, stderr.len()), (2, 1), "{stderr:?}");
    assert!(stderr[0].contains("--bogus"));

    let (code, stderr) = run_agent(&ns, &["run"]);
    assert_eq!((code, stderr.len()), (1, 1), "{stderr:?}");
    assert!(stderr[0].contains("--interface"), "{stderr:?}");

    // Only the loopback device selected: nothing can be attached.
    let (code, stderr) = run_agent(&ns, &["run", "-i", "lo"]);
    assert_eq!(code, 1, "{stderr:?}");
    assert!(
        stderr
            .last()
            .is_some_and(|line| line.contains("(lo) are all skipped: loopback")),
        "{stderr:?}"
    );

    let (code, stderr) = run_agent(&ns, &["run", "-i", "lo", "--map-size", "0"]);
    assert_eq!((code, stderr.len()), (1, 1), "{stderr:?}");
    assert!(stderr[0].contains("map-size"), "{stderr:?}");

    let config = std::env::temp_dir().join(format!("{ns}.yaml"));
    std::fs::write(&config, "interfaces: [lo]\nflush-intervall: 5s\n").unwrap();
    let (code, stderr) = run_agent(&ns, &["run", "--config", config.to_str().unwrap()]);
    std::fs::remove_file(&config).unwrap();
    assert_eq!((code, stderr.len()), (1, 1), "{stderr:?}");
    assert!(
        stderr[0].contains("flush-intervall") && stderr[0].contains(".yaml"),
        "{stderr:?}"
    );

    // Without privileges: drop to nobody with no capabilities.
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_flow-agent"))
        .args(["run", "-i", "lo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not permitted to use BPF") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn a_start_with_nothing_valid_to_read_is_an_error() {
    require_root!();
    let node = Node::new(1).unwrap();
    let ns = node.netns.name.clone();
    let glob = node.glob();
    let directory = tempfile::tempdir().unwrap();
    let path = |name: &str| directory.path().join(name).to_str().unwrap().to_owned();

    // An inventory whose only document is not YAML.
    std::fs::write(
        path("inventory.yaml"),
        "apiVersion: v1\nkind: List\nitems: [\n",
    )
    .unwrap();
    let (code, stderr) = run_agent(
        &ns,
        &["run", "-i", &glob, "--inventory", &path("inventory.yaml")],
    );
    assert_eq!(code, 1, "{stderr:?}");
    let last = stderr.last().unwrap();
    assert!(
        last.contains(&format!(
            "inventory {} cannot be used: a document is not valid YAML",
            path("inventory.yaml")
        )),
        "{stderr:?}"
    );

    // Approved policies: a directory with a ConfigMap and no policy.
    std::fs::create_dir(path("approved")).unwrap();
    std::fs::write(
        path("approved/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: b}\n",
    )
    .unwrap();
    let (code, stderr) = run_agent(&ns, &["run", "-i", &glob, "--policies", &path("approved")]);
    assert_eq!(code, 1, "{stderr:?}");
    assert!(
        stderr
            .last()
            .unwrap()
            .contains(&format!("{} holds no NetworkPolicy", path("approved"))),
        "{stderr:?}"
    );

    // A configuration file of comments only.
    std::fs::write(path("agent.yaml"), "# interfaces: [eth0]\n").unwrap();
    let (code, stderr) = run_agent(&ns, &["run", "-i", &glob, "--config", &path("agent.yaml")]);
    assert_eq!((code, stderr.len()), (1, 1), "{stderr:?}");
    assert!(stderr[0].contains("it sets nothing"), "{stderr:?}");
}
