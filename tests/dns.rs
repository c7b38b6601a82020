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

const HUBBLE: &str = "127.0.0.1:4244";
const ADMIN_TOKEN: &str = "dns-admin-secret";
const ACME_TOKEN: &str = "dns-acme-secret";
const GLOBEX_TOKEN: &str = "dns-globex-secret";

/// What a test checks of an L7 DNS flow: kind, query, qtypes, ips, ttl,
/// cnames, rcode, rrtypes, source pod, destination pod, is_reply, direction.
type DnsFlow = (
    String,
    String,
    Vec<String>,
    Vec<String>,
    u32,
    Vec<String>,
    u32,
    Vec<String>,
    String,
    String,
    bool,
    String,
);

fn dns_flow(flow: &flow_proto::hubble::flow::Flow) -> DnsFlow {
    use flow_proto::hubble::flow::{L7FlowType, TrafficDirection, layer7::Record};
    let l7 = flow.l7.as_ref().unwrap();
    let Some(Record::Dns(dns)) = &l7.record else {
        panic!("not a DNS flow: {flow:?}");
    };
    let pod = |end: &Option<flow_proto::hubble::flow::Endpoint>| {
        end.as_ref().map(|end| end.pod_name.clone()).unwrap()
    };
    (
        L7FlowType::try_from(l7.r#type)
            .unwrap()
            .as_str_name()
            .to_owned(),
        dns.query.clone(),
        dns.qtypes.clone(),
        dns.ips.clone(),
        dns.ttl,
        dns.cnames.clone(),
        dns.rcode,
        dns.rrtypes.clone(),
        pod(&flow.source),
        pod(&flow.destination),
        flow.is_reply.unwrap(),
        TrafficDirection::try_from(flow.traffic_direction)
            .unwrap()
            .as_str_name()
            .to_owned(),
    )
}

/// The flows GetFlows replays to `token` for `whitelist`, asked from inside
/// `netns`.
fn replay(
    netns: &flow_lab::Netns,
    token: &'static str,
    whitelist: Vec<flow_proto::hubble::flow::FlowFilter>,
) -> Vec<flow_proto::hubble::flow::Flow> {
    use flow_proto::hubble::observer::{
        GetFlowsRequest, get_flows_response::ResponseTypes, observer_client::ObserverClient,
    };
    netns
        .run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut client = ObserverClient::connect(format!("http://{HUBBLE}"))
                    .await
                    .unwrap();
                let mut request = tonic::Request::new(GetFlowsRequest {
                    whitelist,
                    ..GetFlowsRequest::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                let mut stream = client.get_flows(request).await.unwrap().into_inner();
                let mut flows = Vec::new();
                while let Some(response) = stream.message().await.unwrap() {
                    if let Some(ResponseTypes::Flow(flow)) = response.response_types {
                        flows.push(flow);
                    }
                }
                flows
            })
        })
        .unwrap()
}

/// A lab node with an agent serving Hubble, and the agent's input files.
struct HubbleLab {
    // Declared first: the agent stops before its node goes.
    agent: Option<Agent>,
    node: flow_lab::Node,
    files: [std::path::PathBuf; 2],
    /// Before the first query and after the last answer.
    asked: (std::time::SystemTime, std::time::SystemTime),
}

impl HubbleLab {
    fn replay(
        &self,
        token: &'static str,
        whitelist: Vec<flow_proto::hubble::flow::FlowFilter>,
    ) -> Vec<flow_proto::hubble::flow::Flow> {
        replay(&self.node.netns, token, whitelist)
    }
}

impl Drop for HubbleLab {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.kill();
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A node whose client pod (shop-a, tenant acme) asks the resolver pod
/// (dns, no tenant) three questions over UDP, with an agent serving Hubble
/// with `extra` arguments, once the answers are in.
fn resolve_under_hubble(extra: &[&str]) -> HubbleLab {
    use flow_lab::cluster::{Controller, Inventory};
    let node = flow_lab::Node::new(2).unwrap();
    let (client, resolver) = (&node.pods[0], &node.pods[1]);
    let mut inventory = Inventory::new();
    inventory
        .namespace("shop-a", Some("acme"))
        .namespace("shop-b", Some("globex"))
        .namespace("dns", None)
        .workload(
            "shop-a",
            "client",
            Controller::Deployment { hash: "6f7d" },
            &[("app", "client")],
            &[client],
            "test-node",
        )
        .workload(
            "dns",
            "resolver",
            Controller::Deployment { hash: "5c8b" },
            &[("app", "resolver")],
            &[resolver],
            "test-node",
        );
    let access = format!(
        "tokens:\n- {{sha256: {}, admin: true}}\n- {{sha256: {}, tenant: acme}}\n- {{sha256: {}, tenant: globex}}\n",
        common::pki::sha256_hex(ADMIN_TOKEN),
        common::pki::sha256_hex(ACME_TOKEN),
        common::pki::sha256_hex(GLOBEX_TOKEN),
    );
    let write = |what: &str, text: String| {
        let path = std::env::temp_dir().join(format!("{}-{what}.yaml", node.netns.name));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (inventory, access) = (
        write("inventory", inventory.yaml()),
        write("access", access),
    );
    let zone = vec![
        (
            "www.partner.example",
            vec![
                Answer::Cname("www.partner.example", "edge.partner-cdn.example", 300),
                Answer::Address(
                    "edge.partner-cdn.example",
                    "192.0.2.10".parse().unwrap(),
                    60,
                ),
            ],
        ),
        (
            "v6.partner.example",
            vec![Answer::Address(
                "v6.partner.example",
                "2001:db8::7".parse().unwrap(),
                30,
            )],
        ),
    ];
    let server = dns::serve(&resolver.netns, zone, 3, 0);
    let mut args = vec![
        "--inventory",
        inventory.to_str().unwrap(),
        "--hubble-listen",
        "0.0.0.0:4244",
        "--grpc-allow-plaintext",
        "--grpc-access",
        access.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::on(&node, "250ms", &args);
    let over_v4 = SocketAddr::new(IpAddr::V4(resolver.ipv4), 53);
    let first = std::time::SystemTime::now();
    for (id, name, qtype) in [
        (1, "www.partner.example", 1),
        (2, "v6.partner.example", 28),
        (3, "gone.partner.example", 1),
    ] {
        assert!(dns::ask_udp(&client.netns, over_v4, dns::query(id, name, qtype)) > 0);
    }
    let last = std::time::SystemTime::now();
    server.join().unwrap().unwrap();
    // The ring is read every 250 ms, the flows every flush.
    std::thread::sleep(Duration::from_millis(1_000));
    HubbleLab {
        agent: Some(agent),
        node,
        files: [inventory, access],
        asked: (first, last),
    }
}

fn l7_type() -> flow_proto::hubble::flow::FlowFilter {
    flow_proto::hubble::flow::FlowFilter {
        event_type: vec![flow_proto::hubble::flow::EventTypeFilter {
            r#type: 129,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

#[test]
fn with_dns_flows_hubble_serves_each_query_and_answer_as_an_l7_flow() {
    use flow_proto::hubble::flow::{FlowFilter, FlowType};
    require_root!();
    let lab = resolve_under_hubble(&["--dns-flows"]);
    let (client, resolver) = ("client-6f7d-p000", "resolver-5c8b-p000");
    let request = |query: &str, qtype: &str| {
        (
            "REQUEST".to_owned(),
            query.to_owned(),
            strings(&[qtype]),
            Vec::new(),
            0,
            Vec::new(),
            0,
            Vec::new(),
            client.to_owned(),
            resolver.to_owned(),
            false,
            "EGRESS".to_owned(),
        )
    };
    let expected: Vec<DnsFlow> = vec![
        request("www.partner.example.", "A"),
        (
            "RESPONSE".to_owned(),
            "www.partner.example.".to_owned(),
            strings(&["A"]),
            strings(&["192.0.2.10"]),
            60,
            strings(&["edge.partner-cdn.example."]),
            0,
            strings(&["CNAME", "A"]),
            resolver.to_owned(),
            client.to_owned(),
            true,
            "EGRESS".to_owned(),
        ),
        request("v6.partner.example.", "AAAA"),
        (
            "RESPONSE".to_owned(),
            "v6.partner.example.".to_owned(),
            strings(&["AAAA"]),
            strings(&["2001:db8::7"]),
            30,
            Vec::new(),
            0,
            strings(&["AAAA"]),
            resolver.to_owned(),
            client.to_owned(),
            true,
            "EGRESS".to_owned(),
        ),
        request("gone.partner.example.", "A"),
        (
            "RESPONSE".to_owned(),
            "gone.partner.example.".to_owned(),
            strings(&["A"]),
            Vec::new(),
            0,
            Vec::new(),
            3,
            Vec::new(),
            resolver.to_owned(),
            client.to_owned(),
            true,
            "EGRESS".to_owned(),
        ),
    ];
    // Every flow, for the admin: the L7 ones are exactly the six messages,
    // in order, among the records of the same packets.
    let all = lab.replay(ADMIN_TOKEN, Vec::new());
    let l7: Vec<DnsFlow> = all
        .iter()
        .filter(|flow| flow.r#type == FlowType::L7 as i32)
        .map(dns_flow)
        .collect();
    assert_eq!(l7, expected);
    assert!(all.iter().any(|flow| flow.r#type == FlowType::L3L4 as i32));
    for flow in all.iter().filter(|flow| flow.r#type == FlowType::L7 as i32) {
        assert_eq!(
            flow.event_type.as_ref().map(|event| event.r#type),
            Some(129)
        );
        assert_eq!(flow.node_name, "test-node");
        // The time the packet was copied (the coarse clock may lag a tick).
        let time = std::time::SystemTime::try_from(flow.time.unwrap()).unwrap();
        assert!(
            time + Duration::from_millis(10) >= lab.asked.0 && time <= lab.asked.1,
            "{time:?} not within {:?}",
            lab.asked
        );
        assert_eq!(flow.source.as_ref().unwrap().namespace.as_str(), {
            if flow.is_reply == Some(true) {
                "dns"
            } else {
                "shop-a"
            }
        });
    }
    // `hubble observe --type l7`, `--protocol dns`: only them.
    let by_type: Vec<DnsFlow> = lab
        .replay(ADMIN_TOKEN, vec![l7_type()])
        .iter()
        .map(dns_flow)
        .collect();
    assert_eq!(by_type, expected);
    let by_protocol = lab.replay(
        ADMIN_TOKEN,
        vec![FlowFilter {
            protocol: strings(&["dns"]),
            ..FlowFilter::default()
        }],
    );
    assert_eq!(
        by_protocol.iter().map(dns_flow).collect::<Vec<_>>(),
        expected
    );
    // `--dns-query`: a regular expression on the query name.
    let www: Vec<DnsFlow> = lab
        .replay(
            ADMIN_TOKEN,
            vec![FlowFilter {
                dns_query: strings(&[r"^www\."]),
                ..FlowFilter::default()
            }],
        )
        .iter()
        .map(dns_flow)
        .collect();
    assert_eq!(www, expected[..2]);
    // The querier's tenant sees them all; a tenant with neither end sees none.
    let acme: Vec<DnsFlow> = lab
        .replay(ACME_TOKEN, vec![l7_type()])
        .iter()
        .map(dns_flow)
        .collect();
    assert_eq!(acme, expected);
    assert_eq!(lab.replay(GLOBEX_TOKEN, vec![l7_type()]), Vec::new());
}

#[test]
fn without_dns_flows_no_l7_flow_is_served() {
    use flow_proto::hubble::flow::FlowType;
    require_root!();
    let lab = resolve_under_hubble(&[]);
    let all = lab.replay(ADMIN_TOKEN, Vec::new());
    // The queries and answers are there as L3/L4 records, never as L7 flows.
    assert!(
        all.iter()
            .any(|flow| flow.destination.as_ref().unwrap().pod_name == "resolver-5c8b-p000"),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .all(|flow| flow.r#type == FlowType::L3L4 as i32 && flow.l7.is_none())
    );
    assert_eq!(lab.replay(ADMIN_TOKEN, vec![l7_type()]), Vec::new());
}

/// The lab for Cilium policies by name: 0 web (shop), 1 coredns
/// (kube-system), both in the inventory; 2 api and 3 other, outside it, so
/// the world to the agent.
fn named_lab() -> (flow_lab::Node, std::path::PathBuf) {
    use flow_lab::cluster::{Controller, Inventory};
    let node = flow_lab::Node::new(4).unwrap();
    let pods = &node.pods;
    let mut inventory = Inventory::new();
    inventory
        .namespace("shop", Some("acme"))
        .namespace("kube-system", None)
        .workload(
            "shop",
            "web",
            Controller::Deployment { hash: "6f7d" },
            &[("app", "web")],
            &[&pods[0]],
            "test-node",
        )
        .workload(
            "kube-system",
            "coredns",
            Controller::Deployment { hash: "5c8b" },
            &[("k8s-app", "kube-dns")],
            &[&pods[1]],
            "test-node",
        );
    let path = std::env::temp_dir().join(format!("{}-inventory.yaml", node.netns.name));
    std::fs::write(&path, inventory.yaml()).unwrap();
    (node, path)
}

/// `flow-agent` with `args`, in the lab's namespace: (success, stdout).
fn run_cli(node: &flow_lab::Node, args: &[&str]) -> (bool, String) {
    let output = common::cli::cli(node, args);
    assert!(
        output.stderr.is_empty() || output.success,
        "{:?}",
        output.stderr
    );
    (output.success, output.stdout.join("\n"))
}

#[test]
fn a_cilium_policy_generated_from_lab_dns_allows_by_name_in_check_and_monitor_mode() {
    require_root!();
    let (node, inventory_path) = named_lab();
    let inventory = inventory_path.to_str().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let (web, resolver, api, other) = (&node.pods[0], &node.pods[1], &node.pods[2], &node.pods[3]);
    let over_v4 = SocketAddr::new(IpAddr::V4(resolver.ipv4), 53);
    let api_https = SocketAddr::new(IpAddr::V4(api.ipv4), 443);
    let other_https = SocketAddr::new(IpAddr::V4(other.ipv4), 443);
    let zone = || {
        vec![
            (
                "api.partner.example",
                vec![Answer::Address("api.partner.example", api_https.ip(), 300)],
            ),
            (
                "other.example",
                vec![Answer::Address("other.example", other_https.ip(), 300)],
            ),
        ]
    };

    // Learn: web resolves api's name, then connects to it.
    let server = dns::serve(&resolver.netns, zone(), 1, 0);
    let agent = Agent::on(&node, "200ms", &["--inventory", inventory]);
    assert!(dns::ask_udp(&web.netns, over_v4, dns::query(1, "api.partner.example", 1)) > 0);
    let api_server = tcp_server(&node, 2, 443, 100, 300);
    common::shop::tcp_client(&node, 0, api_https, 100, 300);
    api_server.join().unwrap().unwrap();
    server.join().unwrap().unwrap();
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, agent.stop_raw().join("\n") + "\n").unwrap();
    let flows = flows.to_str().unwrap();
    let approved = dir.join("approved");
    let (generated, _) = run_cli(
        &node,
        &[
            "policy",
            "generate",
            "--flows",
            flows,
            "--inventory",
            inventory,
            "--format",
            "cilium",
            "--output-dir",
            approved.to_str().unwrap(),
        ],
    );
    assert!(generated);

    // web's policy allows api by name, with the DNS rule, read strictly.
    let text = std::fs::read_to_string(approved.join("shop.allow-deployment-web.yaml")).unwrap();
    let policy = flow_policy::cilium::Policy::from_yaml(&text)
        .unwrap_or_else(|error| panic!("{error}\n{text}"));
    let egress = policy.spec.unwrap().egress.unwrap();
    let by_name: Vec<_> = egress
        .iter()
        .filter_map(|rule| rule.to_fqdns.clone())
        .collect();
    assert_eq!(
        by_name,
        [vec![flow_policy::cilium::FqdnSelector::MatchName(
            "api.partner.example".into()
        )]],
        "{text}"
    );
    assert!(
        egress.iter().any(|rule| rule.to_endpoints.is_some()
            && rule
                .to_ports
                .iter()
                .flatten()
                .any(|ports| ports.rules.is_some()
                    && ports.ports.iter().any(|port| port.port == "53"))),
        "{text}"
    );
    assert!(!text.contains(&api.ipv4.to_string()), "{text}");
    // And policy check judges what it was made from exactly: all allowed.
    let (clean, report) = run_cli(
        &node,
        &[
            "policy",
            "check",
            "--policies",
            approved.to_str().unwrap(),
            "--flows",
            flows,
            "--inventory",
            inventory,
            "-o",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(clean, "{report}");
    assert_eq!(report["allowed"], report["checked"], "{report}");
    assert_eq!(report["checked"], 2, "{report}");
    assert_eq!(report["denied"], serde_json::json!([]), "{report}");
    assert_eq!(report["unresolved"], 0, "{report}");

    // Monitor: api by its name passes; other, first unresolved, then by a
    // name the policy does not have, is a violation each time.
    let server = dns::serve(&resolver.netns, zone(), 2, 0);
    let agent = Agent::on(
        &node,
        "200ms",
        &[
            "--inventory",
            inventory,
            "--policies",
            approved.to_str().unwrap(),
        ],
    );
    agent.wait_for_log("monitor mode", Duration::from_secs(5));
    assert!(dns::ask_udp(&web.netns, over_v4, dns::query(2, "api.partner.example", 1)) > 0);
    let api_server = tcp_server(&node, 2, 443, 100, 300);
    let by_name = common::shop::tcp_client(&node, 0, api_https, 100, 300);
    api_server.join().unwrap().unwrap();
    let other_server = tcp_server(&node, 3, 443, 100, 300);
    let unresolved = common::shop::tcp_client(&node, 0, other_https, 100, 300);
    other_server.join().unwrap().unwrap();
    // Names are attached when the agent drains the connection's record:
    // let it drain (five flush intervals) before other's name is answered.
    std::thread::sleep(Duration::from_secs(1));
    assert!(dns::ask_udp(&web.netns, over_v4, dns::query(3, "other.example", 1)) > 0);
    let other_server = tcp_server(&node, 3, 443, 100, 300);
    let other_name = common::shop::tcp_client(&node, 0, other_https, 100, 300);
    other_server.join().unwrap().unwrap();
    server.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let output = agent.stop();
    let requests: Vec<&FlowRecord> = output
        .records
        .iter()
        .filter(|record| record.source.ip == IpAddr::V4(web.ipv4) && !record.is_reply)
        .collect();
    let verdicts: std::collections::BTreeSet<(u16, u16, Vec<String>, bool)> = requests
        .iter()
        .map(|record| {
            let port = if record.destination.port == 53 {
                0
            } else {
                record.source.port
            };
            (
                port,
                record.destination.port,
                names(record, true),
                record.violation,
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (0, 53, Vec::new(), false),
            (by_name, 443, vec!["api.partner.example".to_owned()], false),
            (unresolved, 443, Vec::new(), true),
            (other_name, 443, vec!["other.example".to_owned()], true),
        ]
        .into_iter()
        .collect(),
        "{requests:#?}"
    );
    // The violating records are exactly the requests of web's two
    // connections to other, and the log names other.
    let violating: Vec<&FlowRecord> = output
        .records
        .iter()
        .filter(|record| record.violation)
        .collect();
    let connections: std::collections::BTreeSet<u16> =
        violating.iter().map(|record| record.source.port).collect();
    assert_eq!(
        connections,
        std::collections::BTreeSet::from([unresolved, other_name])
    );
    assert_eq!(
        violating.len(),
        requests
            .iter()
            .filter(|record| record.destination.ip == other_https.ip())
            .count()
    );
    let logged = output
        .stderr
        .iter()
        .filter(|line| {
            line.contains("policy violation") && line.contains(&format!("{}", other.ipv4))
        })
        .count();
    assert!(logged >= 1, "{:?}", output.stderr);
    let _ = std::fs::remove_file(&inventory_path);
}
