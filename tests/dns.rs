//! DNS answers seen on the node name the flows of the pod that asked: a lab
//! DNS server in one pod answers A, AAAA and CNAME queries over UDP and TCP,
//! a client pod resolves and then connects, and the records carry the names.
//!
//! Needs root (BPF, network namespaces).
#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use common::{
    dns::{self, Answer},
    netns::Agent,
    shop::tcp_server,
};
use flow_model::record::FlowRecord;

/// Answers a UDP datagram on `address` in `netns` once.
fn udp_echo(
    netns: &flow_lab::Netns,
    address: SocketAddr,
) -> std::thread::JoinHandle<flow_lab::Result<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = netns.spawn(move || {
        let socket = UdpSocket::bind(address).unwrap();
        ready_tx.send(()).unwrap();
        let mut buffer = [0u8; 64];
        let (len, peer) = socket.recv_from(&mut buffer).unwrap();
        socket.send_to(&buffer[..len], peer).unwrap();
    });
    ready_rx.recv().unwrap();
    handle
}

/// Sends a datagram to `to` from `netns` and waits for its echo.
fn udp_ask(netns: &flow_lab::Netns, to: SocketAddr) {
    netns
        .run(move || {
            let socket = UdpSocket::bind("[::]:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            socket.send_to(b"hello", to).unwrap();
            let mut buffer = [0u8; 64];
            socket.recv_from(&mut buffer).unwrap();
        })
        .unwrap();
}

fn names(record: &FlowRecord, destination: bool) -> Vec<String> {
    let end = if destination {
        &record.destination
    } else {
        &record.source
    };
    end.names.iter().map(|name| name.to_string()).collect()
}

/// The one record from `source` to `destination`'s address and port.
fn record(records: &[FlowRecord], source: IpAddr, destination: SocketAddr) -> &FlowRecord {
    let found: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| {
            r.source.ip == source
                && r.destination.ip == destination.ip()
                && r.destination.port == destination.port()
        })
        .collect();
    assert_eq!(found.len(), 1, "{source} -> {destination}: {records:#?}");
    found[0]
}

#[test]
fn answers_name_the_flows_of_the_pod_that_asked_and_only_those() {
    require_root!();
    let node = flow_lab::Node::new(4).unwrap();
    let (client, resolver, api, reused) =
        (&node.pods[0], &node.pods[1], &node.pods[2], &node.pods[3]);
    let api_v4 = IpAddr::V4(api.ipv4);
    let api_v6 = IpAddr::V6(api.ipv6);
    let reused_v4 = IpAddr::V4(reused.ipv4);
    let zone = vec![
        (
            "api.partner.example",
            vec![
                Answer::Cname("api.partner.example", "edge.partner-cdn.example", 300),
                Answer::Address("edge.partner-cdn.example", api_v4, 60),
                // A name nobody asked for: never attached.
                Answer::Address("bank.example", reused_v4, 60),
            ],
        ),
        (
            "api-tcp.partner.example",
            vec![Answer::Address("api-tcp.partner.example", api_v4, 60)],
        ),
        (
            "v6.partner.example",
            vec![Answer::Address("v6.partner.example", api_v6, 60)],
        ),
        (
            "first.example",
            vec![Answer::Address("first.example", reused_v4, 1)],
        ),
        (
            "second.example",
            vec![Answer::Address("second.example", reused_v4, 60)],
        ),
    ];
    let server = dns::serve(&resolver.netns, zone, 4, 1);
    let agent = Agent::on(&node, "1h", &[]);
    let over_v4 = SocketAddr::new(IpAddr::V4(resolver.ipv4), 53);
    let over_v6 = SocketAddr::new(IpAddr::V6(resolver.ipv6), 53);

    // Over UDP, a CNAME chain; over TCP, a plain answer: both name api's address.
    assert!(
        dns::ask_udp(
            &client.netns,
            over_v4,
            dns::query(1, "api.partner.example", 1)
        ) > 0
    );
    assert!(
        dns::ask_tcp(
            &client.netns,
            over_v4,
            dns::query(2, "api-tcp.partner.example", 1)
        ) > 0
    );
    let https = SocketAddr::new(api_v4, 443);
    let api_server = tcp_server(&node, 2, 443, 100, 300);
    common::shop::tcp_client(&node, 0, https, 100, 300);
    api_server.join().unwrap().unwrap();
    // Over IPv6, an AAAA answer names api's IPv6 address.
    assert!(
        dns::ask_udp(
            &client.netns,
            over_v6,
            dns::query(3, "v6.partner.example", 28)
        ) > 0
    );
    let quic = SocketAddr::new(api_v6, 8443);
    let echo = udp_echo(&api.netns, quic);
    udp_ask(&client.netns, quic);
    echo.join().unwrap().unwrap();
    // The resolver pod connects to api without resolving it: no names.
    let api_server = tcp_server(&node, 2, 443, 100, 300);
    common::shop::tcp_client(&node, 1, https, 100, 300);
    api_server.join().unwrap().unwrap();
    // An address whose TTL ran out, then resolved for another name, goes by
    // the new name only.
    assert!(dns::ask_udp(&client.netns, over_v4, dns::query(4, "first.example", 1)) > 0);
    std::thread::sleep(Duration::from_millis(2_200));
    assert!(dns::ask_udp(&client.netns, over_v4, dns::query(5, "second.example", 1)) > 0);
    let reused_https = SocketAddr::new(reused_v4, 443);
    let reused_server = tcp_server(&node, 3, 443, 100, 300);
    common::shop::tcp_client(&node, 0, reused_https, 100, 300);
    reused_server.join().unwrap().unwrap();
    server.join().unwrap().unwrap();

    let records: Vec<FlowRecord> = agent
        .stop_raw()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let client_v4 = IpAddr::V4(client.ipv4);
    let request = record(&records, client_v4, https);
    assert_eq!(
        names(request, true),
        [
            "api-tcp.partner.example",
            "api.partner.example",
            "edge.partner-cdn.example"
        ]
    );
    assert_eq!(names(request, false), Vec::<String>::new());
    let reply = records
        .iter()
        .find(|r| r.source.ip == api_v4 && r.source.port == 443 && r.destination.ip == client_v4)
        .unwrap();
    assert_eq!(names(reply, false), names(request, true));
    let v6 = record(&records, IpAddr::V6(client.ipv6), quic);
    assert_eq!(names(v6, true), ["v6.partner.example"]);
    let unresolved = record(&records, IpAddr::V4(resolver.ipv4), https);
    assert_eq!(names(unresolved, true), Vec::<String>::new());
    let reused = record(&records, client_v4, reused_https);
    assert_eq!(names(reused, true), ["second.example"]);
    // The queries over IPv4 (three over UDP, one over TCP): the
    // resolver's address was resolved by no one.
    let queries: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| r.source.ip == client_v4 && r.destination.ip == over_v4.ip())
        .collect();
    assert_eq!(queries.len(), 4, "{queries:#?}");
    assert!(queries.iter().all(|r| r.destination.names.is_empty()));
}

#[test]
fn with_dns_off_nothing_is_named() {
    require_root!();
    let node = flow_lab::Node::new(3).unwrap();
    let (client, resolver, api) = (&node.pods[0], &node.pods[1], &node.pods[2]);
    let zone = vec![(
        "api.partner.example",
        vec![Answer::Address(
            "api.partner.example",
            IpAddr::V4(api.ipv4),
            60,
        )],
    )];
    let server = dns::serve(&resolver.netns, zone, 1, 0);
    let agent = Agent::on(&node, "1h", &["--dns=false"]);
    let over_v4 = SocketAddr::new(IpAddr::V4(resolver.ipv4), 53);
    assert!(
        dns::ask_udp(
            &client.netns,
            over_v4,
            dns::query(1, "api.partner.example", 1)
        ) > 0
    );
    let https = SocketAddr::new(IpAddr::V4(api.ipv4), 443);
    let api_server = tcp_server(&node, 2, 443, 100, 300);
    common::shop::tcp_client(&node, 0, https, 100, 300);
    api_server.join().unwrap().unwrap();
    server.join().unwrap().unwrap();
    let records: Vec<FlowRecord> = agent
        .stop_raw()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let request = record(&records, IpAddr::V4(client.ipv4), https);
    assert_eq!(names(request, true), Vec::<String>::new());
}
