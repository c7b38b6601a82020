//! Hubble's API end to end, on two lab nodes each running its own agent with
//! `--hubble-listen`. A Python client whose stubs grpcio-tools generates from
//! `proto/hubble/` talks to both from the host namespace, as hubble-relay
//! would: Notify, GetFlows (replays, filters, follow), ServerStatus,
//! GetNodes, GetNamespaces, the health service; every answer is compared
//! with the same predicate over that agent's own JSON records.
//!
//! Needs root, nft and the test virtualenv. The lab pods' IPv6 neighbour
//! discovery adds ICMPv6 records at any time, so comparisons leave ICMPv6 out
//! on both sides. With `FLOW_AGENT_HUBBLE_PROTO=DIR` the Python client's stubs
//! come from another copy of the definitions, such as a checkout's
//! `cilium/api/v1`, and every assertion must still hold.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use common::{
    netns::{Agent, udp_bursts},
    packet::ping,
    pki::{Pki, sha256_hex},
    shop::{tcp_client, tcp_server, udp_exchange},
};
use flow_lab::{
    Node,
    cluster::{Controller, Inventory},
};
use flow_model::record::FlowRecord;
use serde_json::{Value, json};

const HUBBLE_PORT: u16 = 4244;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const ADMIN_TOKEN: &str = "hubble-admin-secret";
const ACME_TOKEN: &str = "acme-secret";

/// One lab node with its agent's inputs.
struct LabNode {
    node: Node,
    name: &'static str,
    /// Reached from the host namespace.
    address: Ipv4Addr,
    inventory: PathBuf,
    access: PathBuf,
}

impl LabNode {
    fn hubble(&self) -> String {
        SocketAddr::new(IpAddr::V4(self.address), HUBBLE_PORT).to_string()
    }

    fn start_agent(&self) -> Agent {
        let glob = self.node.glob();
        let listen = format!("0.0.0.0:{HUBBLE_PORT}");
        Agent::start_as(
            &self.node.netns,
            self.name,
            &[
                "-i",
                &glob,
                "--flush-interval",
                "250ms",
                "--inventory",
                self.inventory.to_str().unwrap(),
                "--hubble-listen",
                &listen,
                "--grpc-allow-plaintext",
                "--grpc-access",
                self.access.to_str().unwrap(),
            ],
        )
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.inventory);
        let _ = std::fs::remove_file(&self.access);
    }
}

fn node_object(name: &str, address: Ipv4Addr) -> String {
    format!(
        "- apiVersion: v1\n  kind: Node\n  metadata: {{name: {name}}}\n  status: {{addresses: [{{type: InternalIP, address: '{address}'}}, {{type: Hostname, address: {name}}}]}}\n"
    )
}

/// node-a: frontend and cart (shop-a, tenant acme) and db-0 (shop-b, tenant
/// globex), with the cart Service DNATed as kube-proxy does; node-b: api
/// (shop-b) and web (shop-c, tenant initech). Each agent's inventory holds
/// its own node's pods (pod addresses repeat across lab nodes) and both
/// Node objects. Tests running at once give different `subnets` for the
/// links to the host.
fn lab(subnets: [u8; 2]) -> Option<[LabNode; 2]> {
    if flow_lab::run("nft", &["--version"]).is_err() {
        assert!(
            std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none(),
            "nft (nftables) is missing: `cargo xtask setup` installs it"
        );
        eprintln!("skipping: nft (nftables) is not installed");
        return None;
    }
    let a = Node::new(3).unwrap();
    let b = Node::new(2).unwrap();
    let (address_a, address_b) = (
        a.link_to_host(subnets[0]).unwrap(),
        b.link_to_host(subnets[1]).unwrap(),
    );
    a.dnat(CLUSTER_IP, 80, "tcp", a.pods[1].ipv4, 8080).unwrap();
    let nodes = node_object("node-a", address_a) + &node_object("node-b", address_b);
    let namespaces = |inventory: &mut Inventory| {
        inventory
            .namespace("shop-a", Some("acme"))
            .namespace("shop-b", Some("globex"))
            .namespace("shop-c", Some("initech"));
    };
    let mut inventory_a = Inventory::new();
    namespaces(&mut inventory_a);
    inventory_a
        .workload(
            "shop-a",
            "frontend",
            Controller::Deployment { hash: "6f7d" },
            &[("app", "frontend"), ("tier", "web")],
            &[&a.pods[0]],
            "node-a",
        )
        .workload(
            "shop-a",
            "cart",
            Controller::Deployment { hash: "5c8b" },
            &[("app", "cart")],
            &[&a.pods[1]],
            "node-a",
        )
        .workload(
            "shop-b",
            "db",
            Controller::StatefulSet,
            &[("app", "db")],
            &[&a.pods[2]],
            "node-a",
        )
        .service(
            "shop-a",
            "cart",
            CLUSTER_IP,
            ("web", 80, "TCP"),
            "8080",
            8080,
            &[("cart-5c8b-p000".to_owned(), IpAddr::V4(a.pods[1].ipv4))],
        )
        .raw(&nodes);
    let mut inventory_b = Inventory::new();
    namespaces(&mut inventory_b);
    inventory_b
        .workload(
            "shop-b",
            "api",
            Controller::Deployment { hash: "77aa" },
            &[("app", "api")],
            &[&b.pods[0]],
            "node-b",
        )
        .workload(
            "shop-c",
            "web",
            Controller::Deployment { hash: "1b2c" },
            &[("app", "web")],
            &[&b.pods[1]],
            "node-b",
        )
        .raw(&nodes);
    let access = format!(
        "tokens:\n- {{sha256: {}, admin: true}}\n- {{sha256: {}, tenant: acme}}\n",
        sha256_hex(ADMIN_TOKEN),
        sha256_hex(ACME_TOKEN)
    );
    let write = |node: &Node, what: &str, text: String| {
        let path = std::env::temp_dir().join(format!("{}-{what}.yaml", node.netns.name));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (inventory_a, inventory_b) = (
        write(&a, "inventory", inventory_a.yaml()),
        write(&b, "inventory", inventory_b.yaml()),
    );
    let (access_a, access_b) = (
        write(&a, "access", access.clone()),
        write(&b, "access", access),
    );
    Some([
        LabNode {
            node: a,
            name: "node-a",
            address: address_a,
            inventory: inventory_a,
            access: access_a,
        },
        LabNode {
            node: b,
            name: "node-b",
            address: address_b,
            inventory: inventory_b,
            access: access_b,
        },
    ])
}

/// Traffic on both nodes: frontend -> cart through the Service (TCP),
/// cart -> db (TCP, across tenants), frontend -> cart (UDP), a ping
/// frontend -> cart; on node-b api -> web (TCP) and web -> api (UDP).
fn traffic(a: &Node, b: &Node) {
    let cart = tcp_server(a, 1, 8080, 300, 2_000);
    tcp_client(
        a,
        0,
        SocketAddr::new(IpAddr::V4(CLUSTER_IP), 80),
        300,
        2_000,
    );
    cart.join().unwrap().unwrap();
    let db = tcp_server(a, 2, 5432, 100, 800);
    tcp_client(
        a,
        1,
        SocketAddr::new(IpAddr::V4(a.pods[2].ipv4), 5432),
        100,
        800,
    );
    db.join().unwrap().unwrap();
    udp_exchange(a, 0, 1, 9999);
    ping(a, 0, IpAddr::V4(a.pods[1].ipv4), 1);
    let web = tcp_server(b, 1, 8000, 50, 500);
    tcp_client(
        b,
        0,
        SocketAddr::new(IpAddr::V4(b.pods[1].ipv4), 8000),
        50,
        500,
    );
    web.join().unwrap().unwrap();
    udp_exchange(b, 1, 0, 5353);
}

/// The Python client, its stubs generated once per test.
struct Client {
    python: PathBuf,
    stubs: tempfile::TempDir,
}

/// What a call printed: its messages and how it ended.
#[derive(Debug, Default)]
struct Answer {
    messages: Vec<Value>,
    code: String,
    details: String,
}

fn answers(lines: &[String]) -> BTreeMap<String, Answer> {
    let mut answers: BTreeMap<String, Answer> = BTreeMap::new();
    for line in lines {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}"));
        let answer = answers
            .entry(event["call"].as_str().unwrap().to_owned())
            .or_default();
        match event["event"].as_str().unwrap() {
            "message" => answer.messages.push(event["message"].clone()),
            "end" => {
                answer.code = event["code"].as_str().unwrap().to_owned();
                answer.details = event["details"].as_str().unwrap().to_owned();
            }
            _ => {}
        }
    }
    answers
}

/// Calls running in the background, their output collected as it comes.
struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Background {
    fn wait_for_started(&self, calls: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let started = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|line| line.contains("\"started\""))
                .count();
            if started == calls {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{started} of {calls} calls started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> BTreeMap<String, Answer> {
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        assert!(status.success(), "the Python client failed: {status}");
        answers(&self.lines.lock().unwrap())
    }
}

impl Client {
    fn new() -> Option<Self> {
        let python = common::cli::python()?;
        Some(Self {
            python,
            stubs: tempfile::tempdir().unwrap(),
        })
    }

    fn command(&self, calls: &[Value]) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/hubble_client.py");
        // FLOW_AGENT_HUBBLE_PROTO=DIR runs the same calls with stubs
        // generated from another copy of the definitions, such as Cilium's
        // own api/v1: the answers must not change.
        let proto = std::env::var_os("FLOW_AGENT_HUBBLE_PROTO").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/hubble"),
            PathBuf::from,
        );
        let mut command = Command::new(&self.python);
        command.args([
            script.to_str().unwrap(),
            proto.to_str().unwrap(),
            self.stubs.path().to_str().unwrap(),
            &json!({ "calls": calls }).to_string(),
        ]);
        command
    }

    /// Runs the calls one after another.
    fn run(&self, calls: &[Value]) -> BTreeMap<String, Answer> {
        let output = self.command(calls).output().unwrap();
        assert!(
            output.status.success(),
            "the Python client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        answers(&lines)
    }

    /// Starts the calls, each in a thread of its own.
    fn start(&self, calls: &[Value]) -> Background {
        let mut command = self.command(calls);
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                sink.lock().unwrap().push(line.unwrap());
            }
        });
        Background {
            child,
            lines,
            reader,
        }
    }
}

/// A call to `node`'s Hubble API as the admin.
fn call(node: &LabNode, name: &str, method: &str, request: Value) -> Value {
    json!({
        "name": name,
        "address": node.hubble(),
        "method": method,
        "request": request,
        "token": ADMIN_TOKEN,
    })
}

/// A flow of either side, as (time, source, destination, protocol, reply).
type FlowKey = (u128, String, String, String, bool);

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn record_key(record: &FlowRecord) -> FlowKey {
    let port = |port: u16| {
        if record.protocol.has_ports() {
            format!(":{port}")
        } else {
            String::new()
        }
    };
    (
        nanos(record.time.0),
        format!("{}{}", record.source.ip, port(record.source.port)),
        format!("{}{}", record.destination.ip, port(record.destination.port)),
        record.protocol.to_string(),
        record.is_reply,
    )
}

fn hubble_key(flow: &Value) -> FlowKey {
    let l4 = flow["l4"].as_object().unwrap();
    let (protocol, fields) = l4.iter().next().unwrap();
    let port = |name: &str| {
        fields
            .get(name)
            .map_or(String::new(), |port| format!(":{}", port.as_u64().unwrap()))
    };
    let ports = ["TCP", "UDP", "SCTP"].contains(&protocol.as_str());
    let time = humantime::parse_rfc3339(flow["time"].as_str().unwrap()).unwrap();
    let end = |ip: &str, field: &str| {
        let ip = flow["IP"][ip].as_str().unwrap();
        if ports {
            format!("{ip}{}", port(field))
        } else {
            ip.to_owned()
        }
    };
    let protocol = match protocol.as_str() {
        "ICMPv4" => "ICMP",
        other => other,
    };
    (
        nanos(time),
        end("source", "source_port"),
        end("destination", "destination_port"),
        protocol.to_owned(),
        flow["is_reply"].as_bool().unwrap(),
    )
}

fn not_icmpv6(record: &&FlowRecord) -> bool {
    record.protocol.to_string() != "ICMPv6"
}

/// The flows of a GetFlows answer, in order, ICMPv6 left out.
fn flows(answer: &Answer) -> Vec<FlowKey> {
    answer
        .messages
        .iter()
        .filter_map(|message| message.get("flow"))
        .filter(|flow| flow["l4"].get("ICMPv6").is_none())
        .map(hubble_key)
        .collect()
}

fn keys<'a>(records: impl IntoIterator<Item = &'a FlowRecord>) -> Vec<FlowKey> {
    records
        .into_iter()
        .filter(not_icmpv6)
        .map(record_key)
        .collect()
}

/// Waits until the agent's records stop changing (ICMPv6 aside) and hold
/// what `ready` wants.
fn settled(agent: &Agent, ready: impl Fn(&[FlowRecord]) -> bool) -> Vec<FlowRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Option<Vec<FlowKey>> = None;
    loop {
        let records = agent.records();
        let now = keys(&records);
        if ready(&records) && last.as_ref() == Some(&now) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's records never settled"
        );
        last = Some(now);
        std::thread::sleep(Duration::from_millis(600));
    }
}

/// Both agents' flows followed, the peers announced, then a node deleted.
#[test]
fn a_relay_sees_every_nodes_flows_and_peers() {
    require_root!();
    let Some(client) = Client::new() else { return };
    let Some([a, b]) = lab([11, 12]) else { return };
    let (agent_a, agent_b) = (a.start_agent(), b.start_agent());
    let follow = |node: &LabNode, name: &str, token: &str| {
        json!({
            "name": name, "address": node.hubble(), "method": "Observer/GetFlows",
            "request": {"follow": true}, "token": token, "deadline": 12, "background": true,
        })
    };
    let background = client.start(&[
        follow(&a, "follow-a", ADMIN_TOKEN),
        follow(&b, "follow-b", ADMIN_TOKEN),
        follow(&a, "acme-a", ACME_TOKEN),
        follow(&b, "acme-b", ACME_TOKEN),
        json!({
            "name": "notify", "address": a.hubble(), "method": "Peer/Notify",
            "token": ADMIN_TOKEN, "deadline": 12, "background": true,
        }),
    ]);
    background.wait_for_started(5);
    traffic(&a.node, &b.node);
    let records_a = settled(&agent_a, |records| {
        records
            .iter()
            .any(|record| record.protocol.to_string() == "ICMP" && record.is_reply)
    });
    let records_b = settled(&agent_b, |records| {
        records
            .iter()
            .filter(|record| record.protocol.to_string() == "UDP")
            .count()
            >= 2
    });
    // hubble-relay learns of a node gone when its Node object goes.
    let inventory = std::fs::read_to_string(&a.inventory).unwrap();
    let without_b = inventory.replace(&node_object("node-b", b.address), "");
    assert_ne!(inventory, without_b);
    std::fs::write(&a.inventory, without_b).unwrap();
    let answers = background.finish();
    let replayed = client.run(&[call(&a, "replay-a", "Observer/GetFlows", json!({}))]);
    drop((agent_a.stop(), agent_b.stop()));

    // A flow keeps its uuid when it is replayed.
    let uuids = |answer: &Answer| -> BTreeMap<FlowKey, String> {
        answer
            .messages
            .iter()
            .filter_map(|message| message.get("flow"))
            .map(|flow| (hubble_key(flow), flow["uuid"].as_str().unwrap().to_owned()))
            .collect()
    };
    let (followed, replayed) = (uuids(&answers["follow-a"]), uuids(&replayed["replay-a"]));
    assert!(!followed.is_empty());
    for (key, uuid) in &followed {
        assert_eq!(replayed.get(key), Some(uuid), "{key:?}");
    }

    // Every record, once, as a Flow of its node, in the agent's order.
    for (name, records, node) in [
        ("follow-a", &records_a, "node-a"),
        ("follow-b", &records_b, "node-b"),
    ] {
        let answer = &answers[name];
        assert_eq!(
            answer.code, "DEADLINE_EXCEEDED",
            "{name}: {}",
            answer.details
        );
        assert_eq!(flows(answer), keys(records.iter()), "{name}");
        assert!(
            answer
                .messages
                .iter()
                .all(|message| message["node_name"] == node)
        );
        let uuids: BTreeSet<&str> = answer
            .messages
            .iter()
            .map(|message| message["flow"]["uuid"].as_str().unwrap())
            .collect();
        assert_eq!(
            uuids.len(),
            answer.messages.len(),
            "{name}: uuids are unique"
        );
    }
    // A tenant sees the flows with an end in its tenant, on every node.
    let acme = |records: &[FlowRecord]| -> Vec<FlowKey> {
        keys(records.iter().filter(|record| {
            [&record.source, &record.destination]
                .iter()
                .any(|end| end.identity.tenant.as_deref() == Some("acme"))
        }))
    };
    assert_eq!(flows(&answers["acme-a"]), acme(&records_a));
    assert!(!acme(&records_a).is_empty());
    assert_eq!(flows(&answers["acme-b"]), []);

    // The Service flow, field by field.
    let service_flow = answers["follow-a"]
        .messages
        .iter()
        .map(|message| &message["flow"])
        .find(|flow| flow["destination_service"]["name"] == "cart" && flow["is_reply"] == false)
        .unwrap();
    assert_eq!(service_flow["verdict"], "FORWARDED");
    assert_eq!(service_flow["Type"], "L3_L4");
    assert_eq!(service_flow["node_name"], "node-a");
    assert_eq!(service_flow["traffic_direction"], "EGRESS");
    assert_eq!(service_flow["IP"]["ipVersion"], "IPv4");
    assert_eq!(
        service_flow["IP"]["destination"],
        a.node.pods[1].ipv4.to_string()
    );
    assert_eq!(service_flow["l4"]["TCP"]["destination_port"], 8080);
    assert_eq!(service_flow["l4"]["TCP"]["flags"]["SYN"], true);
    assert_eq!(service_flow["destination_service"]["namespace"], "shop-a");
    assert_eq!(service_flow["source"]["namespace"], "shop-a");
    assert_eq!(service_flow["source"]["pod_name"], "frontend-6f7d-p000");
    assert_eq!(
        service_flow["source"]["labels"],
        json!([
            "k8s:app=frontend",
            "k8s:io.kubernetes.pod.namespace=shop-a",
            "k8s:tier=web"
        ])
    );
    assert_eq!(
        service_flow["destination"]["workloads"],
        json!([{"name": "cart", "kind": "Deployment"}])
    );
    assert_eq!(
        service_flow["interface"]["name"],
        a.node.pods[0].host_interface
    );
    assert_eq!(
        service_flow["interface"]["index"],
        a.node.ifindex(&a.node.pods[0].host_interface).unwrap()
    );

    // Notify: both nodes at their InternalIP and the Hubble port, then the
    // deleted one.
    let notify = &answers["notify"];
    let changes: Vec<String> = notify
        .messages
        .iter()
        .map(|change| {
            format!(
                "{} {} {}",
                change["type"].as_str().unwrap(),
                change["name"].as_str().unwrap(),
                change["address"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            format!("PEER_ADDED node-a {}", a.hubble()),
            format!("PEER_ADDED node-b {}", b.hubble()),
            format!("PEER_DELETED node-b {}", b.hubble()),
        ]
    );
    assert!(
        notify
            .messages
            .iter()
            .all(|change| change.get("tls").is_none())
    );
}

/// A replay request with this whitelist, ICMPv6 blacklisted.
fn replay(node: &LabNode, name: &str, whitelist: Value) -> Value {
    call(
        node,
        name,
        "Observer/GetFlows",
        json!({"whitelist": whitelist, "blacklist": [{"protocol": ["icmpv6"]}]}),
    )
}

/// Which records a filter should select.
type Predicate = Box<dyn Fn(&FlowRecord) -> bool>;

/// Each supported FlowFilter field selects what the same predicate selects
/// over the agent's records.
fn filter_cases() -> Vec<(&'static str, Value, Predicate)> {
    let tenant = |record: &FlowRecord, source: bool| {
        let end = if source {
            &record.source
        } else {
            &record.destination
        };
        end.identity.tenant.clone().unwrap_or_default()
    };
    let app = |record: &FlowRecord, source: bool| {
        let end = if source {
            &record.source
        } else {
            &record.destination
        };
        end.identity.labels.get("app").cloned().unwrap_or_default()
    };
    let workload = |record: &FlowRecord, source: bool| {
        let end = if source {
            &record.source
        } else {
            &record.destination
        };
        end.identity
            .workload
            .clone()
            .map(|w| (w.kind, w.name))
            .unwrap_or_default()
    };
    let pod = |record: &FlowRecord, source: bool| {
        let end = if source {
            &record.source
        } else {
            &record.destination
        };
        (
            end.identity.namespace.clone().unwrap_or_default(),
            end.identity.pod.clone().unwrap_or_default(),
        )
    };
    let sent_by_pod = |record: &FlowRecord| record.hook == flow_model::record::Hook::Ingress;
    vec![
        (
            "source_ip",
            json!([{"source_ip": ["10.1.0.0/24"]}]),
            Box::new(|r: &FlowRecord| r.source.ip.to_string().starts_with("10.1.0.")),
        ),
        (
            "destination_ip",
            json!([{"destination_ip": ["10.3.0.2"]}]),
            Box::new(|r: &FlowRecord| r.destination.ip.to_string() == "10.3.0.2"),
        ),
        (
            "source_pod",
            json!([{"source_pod": ["shop-a/front"]}]),
            Box::new(move |r: &FlowRecord| {
                let (ns, name) = pod(r, true);
                ns == "shop-a" && name.starts_with("front")
            }),
        ),
        (
            "destination_pod",
            json!([{"destination_pod": ["shop-b/"]}]),
            Box::new(move |r: &FlowRecord| pod(r, false).0 == "shop-b"),
        ),
        (
            "source_label",
            json!([{"source_label": ["app=frontend"]}]),
            Box::new(move |r: &FlowRecord| app(r, true) == "frontend"),
        ),
        (
            "destination_label",
            json!([{"destination_label": ["k8s:app in (cart, db)"]}]),
            Box::new(move |r: &FlowRecord| ["cart", "db"].contains(&app(r, false).as_str())),
        ),
        (
            "negated label",
            json!([{"source_label": ["!tier"]}]),
            Box::new(|r: &FlowRecord| !r.source.identity.labels.contains_key("tier")),
        ),
        (
            "destination_service",
            json!([{"destination_service": ["shop-a/cart"]}]),
            Box::new(|r: &FlowRecord| {
                r.destination
                    .service
                    .as_ref()
                    .is_some_and(|s| s.name == "cart")
            }),
        ),
        (
            "source_workload",
            json!([{"source_workload": [{"name": "cart"}]}]),
            Box::new(move |r: &FlowRecord| workload(r, true).1 == "cart"),
        ),
        (
            "destination_workload",
            json!([{"destination_workload": [{"kind": "StatefulSet"}]}]),
            Box::new(move |r: &FlowRecord| workload(r, false).0 == "StatefulSet"),
        ),
        (
            "destination_port",
            json!([{"destination_port": ["8080"]}]),
            Box::new(|r: &FlowRecord| r.protocol.has_ports() && r.destination.port == 8080),
        ),
        (
            "source_port",
            json!([{"source_port": ["5432"]}]),
            Box::new(|r: &FlowRecord| r.protocol.has_ports() && r.source.port == 5432),
        ),
        (
            "protocol",
            json!([{"protocol": ["UDP", "icmp"]}]),
            Box::new(|r: &FlowRecord| ["UDP", "ICMP"].contains(&r.protocol.to_string().as_str())),
        ),
        (
            "verdict",
            json!([{"verdict": ["FORWARDED"]}]),
            Box::new(|r: &FlowRecord| !r.violation),
        ),
        (
            "reply",
            json!([{"reply": [true]}]),
            Box::new(|r: &FlowRecord| r.is_reply),
        ),
        (
            "traffic_direction",
            json!([{"traffic_direction": ["INGRESS"]}]),
            Box::new(move |r: &FlowRecord| sent_by_pod(r) == r.is_reply),
        ),
        (
            "ip_version",
            json!([{"ip_version": ["IPv4"]}]),
            Box::new(|r: &FlowRecord| r.source.ip.is_ipv4()),
        ),
        (
            "node_name",
            json!([{"node_name": ["node-*"]}]),
            Box::new(|_: &FlowRecord| true),
        ),
        (
            "node_name of another node",
            json!([{"node_name": ["default/node-b"]}]),
            Box::new(|_: &FlowRecord| false),
        ),
        (
            "tcp_flags",
            json!([{"tcp_flags": [{"SYN": true, "ACK": true}]}]),
            Box::new(|r: &FlowRecord| {
                ["SYN", "ACK"]
                    .iter()
                    .all(|flag| r.tcp_flags.iter().any(|set| set == flag))
            }),
        ),
        (
            "fields of one filter all hold",
            json!([{"source_pod": ["shop-a/"], "protocol": ["tcp"], "reply": [false]}]),
            Box::new(move |r: &FlowRecord| {
                pod(r, true).0 == "shop-a" && r.protocol.to_string() == "TCP" && !r.is_reply
            }),
        ),
        (
            "filters are alternatives",
            json!([{"destination_port": ["5432"]}, {"destination_port": ["9999"]}]),
            Box::new(|r: &FlowRecord| {
                r.protocol.has_ports() && [5432, 9999].contains(&r.destination.port)
            }),
        ),
        (
            "a tenant's flows",
            json!([{"source_label": ["k8s:io.kubernetes.pod.namespace=shop-b"]}, {"destination_label": ["k8s:io.kubernetes.pod.namespace=shop-b"]}]),
            Box::new(move |r: &FlowRecord| {
                tenant(r, true) == "globex" || tenant(r, false) == "globex"
            }),
        ),
    ]
}

#[test]
fn get_flows_replays_filters_and_refuses_as_hubble_does() {
    require_root!();
    let Some(client) = Client::new() else { return };
    let Some([a, b]) = lab([21, 22]) else { return };
    let agent = a.start_agent();
    traffic(&a.node, &b.node);
    let records = settled(&agent, |records| {
        records
            .iter()
            .any(|record| record.protocol.to_string() == "ICMP" && record.is_reply)
    });
    let all: Vec<&FlowRecord> = records.iter().filter(not_icmpv6).collect();
    assert!(all.len() >= 8, "{all:?}");
    let time = |index: usize| humantime::format_rfc3339_nanos(all[index].time.0).to_string();
    let (since, until) = (time(2), time(all.len() - 3));
    let cases = filter_cases();
    let mut calls: Vec<Value> = cases
        .iter()
        .map(|(name, whitelist, _)| replay(&a, name, whitelist.clone()))
        .collect();
    let blacklist_icmpv6 = json!([{"protocol": ["icmpv6"]}]);
    calls.extend([
        call(
            &a,
            "everything",
            "Observer/GetFlows",
            json!({"blacklist": blacklist_icmpv6}),
        ),
        call(
            &a,
            "last 3",
            "Observer/GetFlows",
            json!({"number": 3, "blacklist": blacklist_icmpv6}),
        ),
        call(
            &a,
            "first 3",
            "Observer/GetFlows",
            json!({"number": 3, "first": true, "blacklist": blacklist_icmpv6}),
        ),
        call(
            &a,
            "window",
            "Observer/GetFlows",
            json!({"since": since, "until": until, "blacklist": blacklist_icmpv6}),
        ),
        call(
            &a,
            "last 2 of the window",
            "Observer/GetFlows",
            json!({"number": 2, "since": since, "until": until, "blacklist": blacklist_icmpv6}),
        ),
        call(
            &a,
            "blacklist",
            "Observer/GetFlows",
            json!({"blacklist": [{"protocol": ["icmpv6"]}, {"protocol": ["tcp"]}]}),
        ),
        call(
            &a,
            "l7 refused",
            "Observer/GetFlows",
            json!({"whitelist": [{"source_pod": ["shop-a/"]}, {"http_method": ["GET"]}]}),
        ),
        call(
            &a,
            "bad fqdn",
            "Observer/GetFlows",
            json!({"whitelist": [{"destination_fqdn": ["*.azure.net/x"]}]}),
        ),
        call(
            &a,
            "identity refused",
            "Observer/GetFlows",
            json!({"blacklist": [{"source_identity": [2]}]}),
        ),
        call(
            &a,
            "bad selector",
            "Observer/GetFlows",
            json!({"whitelist": [{"source_label": ["app in cart"]}]}),
        ),
        call(
            &a,
            "first with follow",
            "Observer/GetFlows",
            json!({"first": true, "follow": true}),
        ),
        call(
            &a,
            "agent events",
            "Observer/GetAgentEvents",
            json!({"follow": true}),
        ),
        call(&a, "debug events", "Observer/GetDebugEvents", json!({})),
        call(&a, "status", "Observer/ServerStatus", json!({})),
        call(&a, "nodes", "Observer/GetNodes", json!({})),
        call(&a, "namespaces", "Observer/GetNamespaces", json!({})),
        call(
            &a,
            "health",
            "Health/Check",
            json!({"service": "hubble.server.Observer"}),
        ),
    ]);
    calls.push(json!({
        "name": "acme namespaces", "address": a.hubble(), "method": "Observer/GetNamespaces",
        "token": ACME_TOKEN,
    }));
    calls.push(json!({
        "name": "acme status", "address": a.hubble(), "method": "Observer/ServerStatus",
        "token": ACME_TOKEN,
    }));
    calls.push(json!({
        "name": "stranger", "address": a.hubble(), "method": "Observer/ServerStatus",
        "token": "not-a-token",
    }));
    let answers = client.run(&calls);
    let buffered = agent.records().len();
    drop(agent.stop());

    for (name, _, predicate) in &cases {
        let answer = &answers[*name];
        assert_eq!(answer.code, "OK", "{name}: {}", answer.details);
        let expected = keys(all.iter().copied().filter(|record| predicate(record)));
        assert_eq!(flows(answer), expected, "{name}");
    }
    for name in [
        "source_ip",
        "destination_service",
        "reply",
        "protocol",
        "a tenant's flows",
    ] {
        assert!(
            !flows(&answers[name]).is_empty(),
            "{name} selects something"
        );
    }
    let everything = keys(all.iter().copied());
    assert_eq!(flows(&answers["everything"]), everything);
    assert_eq!(
        flows(&answers["last 3"]),
        everything[everything.len() - 3..]
    );
    assert_eq!(flows(&answers["first 3"]), everything[..3]);
    // The window is by time: a record's time is its last packet's, so the
    // buffer is not in time order (a reply may end before its request).
    let (from, to) = (all[2].time.0, all[all.len() - 3].time.0);
    let window = keys(
        all.iter()
            .copied()
            .filter(|record| (from..=to).contains(&record.time.0)),
    );
    assert_eq!(flows(&answers["window"]), window);
    assert_eq!(
        flows(&answers["last 2 of the window"]),
        window[window.len() - 2..]
    );
    assert_eq!(
        flows(&answers["blacklist"]),
        keys(
            all.iter()
                .copied()
                .filter(|record| record.protocol.to_string() != "TCP")
        )
    );
    for (name, field) in [
        ("l7 refused", "whitelist[1].http_method"),
        ("bad fqdn", "whitelist[0].destination_fqdn[0]"),
        ("identity refused", "blacklist[0].source_identity"),
        ("bad selector", "whitelist[0].source_label[0]"),
        ("first with follow", "first"),
    ] {
        let answer = &answers[name];
        assert_eq!(answer.code, "INVALID_ARGUMENT", "{name}");
        assert!(
            answer.details.starts_with(field),
            "{name}: {}",
            answer.details
        );
        assert!(answer.messages.is_empty(), "{name}");
    }
    for name in ["agent events", "debug events"] {
        assert_eq!(
            (answers[name].code.as_str(), answers[name].messages.len()),
            ("OK", 0),
            "{name}"
        );
    }

    let status = &answers["status"].messages[0];
    assert_eq!(status["num_flows"], buffered.to_string());
    assert_eq!(status["seen_flows"], buffered.to_string());
    assert_eq!(status["max_flows"], "10000");
    assert_eq!(
        status["version"],
        format!("flow-agent {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        status["uptime_ns"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(status["flows_rate"].as_f64().unwrap() > 0.0);
    let acme_status = &answers["acme status"].messages[0];
    assert!(acme_status.get("num_flows").is_none() && acme_status.get("seen_flows").is_none());
    assert_eq!(answers["stranger"].code, "UNAUTHENTICATED");

    let nodes = &answers["nodes"].messages[0]["nodes"];
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["name"], "node-a");
    assert_eq!(nodes[0]["address"], a.hubble());
    assert_eq!(nodes[0]["state"], "NODE_CONNECTED");
    assert_eq!(nodes[0]["num_flows"], buffered.to_string());
    assert!(nodes[0]["tls"].get("enabled").is_none(), "plaintext");

    let namespaces = |name: &str| -> Vec<String> {
        answers[name].messages[0]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|namespace| namespace["namespace"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(namespaces("namespaces"), ["shop-a", "shop-b"]);
    // acme's cart talked to globex's db: both namespaces are acme's to see.
    assert_eq!(namespaces("acme namespaces"), ["shop-a", "shop-b"]);
    assert_eq!(answers["health"].messages[0]["status"], "SERVING");
}

/// A Hubble client over mutual TLS, as hubble-relay dials a node: the CA,
/// its client certificate, and the server name the Peer service announced.
async fn tls_channel(
    pki: &Pki,
    client: &str,
    address: &str,
    server_name: &str,
) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("{client}.pem")),
            read(&format!("{client}.key")),
        ))
        .domain_name(server_name);
    Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        // A small window: a client that does not read is soon not sent to.
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap()
}

/// `flowagent_api_lost_records_total` of `client`, from the agent's metrics.
fn lost_metric(address: SocketAddr, client: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let series = format!("flowagent_api_lost_records_total{{client=\"{client}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Over mutual TLS, as hubble-relay: the peers carry their TLS server names,
/// a tenant's certificate sees its tenant only, and a follower that reads
/// slowly is told exactly what it lost, in the metrics too.
#[test]
fn over_mutual_tls_a_slow_follower_is_told_exactly_what_it_lost() {
    use flow_proto::hubble::{
        flow::FlowFilter,
        observer::{
            GetFlowsRequest, GetNodesRequest, get_flows_response::ResponseTypes,
            observer_client::ObserverClient,
        },
        peer::{NotifyRequest, peer_client::PeerClient},
    };
    require_root!();
    let Some([a, _b]) = lab([31, 32]) else { return };
    let pki = Pki::new();
    let glob = a.node.glob();
    let agent = Agent::start_as(
        &a.node.netns,
        "node-a",
        &[
            "-i",
            &glob,
            "--flush-interval",
            "200ms",
            "--inventory",
            a.inventory.to_str().unwrap(),
            "--hubble-listen",
            "0.0.0.0:4244",
            "--grpc-tls-cert",
            &pki.path("server.pem"),
            "--grpc-tls-key",
            &pki.path("server.key"),
            "--grpc-client-ca",
            &pki.path("ca.pem"),
            "--grpc-access",
            &pki.path("access.yaml"),
            "--grpc-subscriber-queue",
            "1500",
            "--metrics-listen",
            "0.0.0.0:9090",
        ],
    );
    let server_name = "node-a.default.hubble-grpc.cilium.io";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let address = a.hubble();
    let (peers, nodes, mut slow, mut acme) = runtime.block_on(async {
        let platform = tls_channel(&pki, "platform", &address, server_name).await;
        let mut notify = PeerClient::new(platform.clone())
            .notify(NotifyRequest {})
            .await
            .unwrap()
            .into_inner();
        let peers = [
            notify.message().await.unwrap().unwrap(),
            notify.message().await.unwrap().unwrap(),
        ];
        let nodes = ObserverClient::new(platform.clone())
            .get_nodes(GetNodesRequest {})
            .await
            .unwrap()
            .into_inner();
        let to_sink = GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                protocol: vec!["udp".into()],
                destination_port: vec!["7000".into()],
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        };
        let slow = ObserverClient::new(platform)
            .get_flows(to_sink)
            .await
            .unwrap()
            .into_inner();
        let team = tls_channel(&pki, "team-acme", &address, server_name).await;
        let everything = GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        };
        let acme = ObserverClient::new(team)
            .get_flows(everything)
            .await
            .unwrap()
            .into_inner();
        (peers, nodes, slow, acme)
    });
    let names: Vec<(&str, &str)> = peers
        .iter()
        .map(|peer| {
            (
                peer.name.as_str(),
                peer.tls.as_ref().unwrap().server_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("node-a", server_name),
            ("node-b", "node-b.default.hubble-grpc.cilium.io")
        ]
    );
    let node = &nodes.nodes[0];
    assert_eq!(
        node.tls
            .as_ref()
            .map(|tls| (tls.enabled, tls.server_name.as_str())),
        Some((true, server_name))
    );
    let stranger = runtime.block_on(async {
        let channel = tls_channel(&pki, "stranger", &address, server_name).await;
        ObserverClient::new(channel)
            .get_nodes(GetNodesRequest {})
            .await
            .unwrap_err()
    });
    assert_eq!(stranger.code(), tonic::Code::PermissionDenied);

    // Five bursts of a thousand UDP flows frontend -> cart; the platform
    // follower reads nothing meanwhile.
    let target = SocketAddr::new(IpAddr::V4(a.node.pods[1].ipv4), 7000);
    let sink = std::sync::Arc::new(
        a.node.pods[1]
            .netns
            .run(move || std::net::UdpSocket::bind(target).unwrap())
            .unwrap(),
    );
    udp_bursts(&agent, &a.node, 0, target, 5);
    let metrics = SocketAddr::new(IpAddr::V4(a.address), 9090);
    // The metrics are updated after each drain: read them once they settle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lost_reported_by_metrics = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = lost_metric(metrics, "platform");
        if now > 0 && now == lost_reported_by_metrics {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow follower's losses never settled"
        );
        lost_reported_by_metrics = now;
    }
    // Read both on at once, then stop the agent: the streams end once
    // delivered, within the agent's shutdown grace for the API (5 s), which
    // one stream read after the other could outlast on a loaded machine.
    // Messages read so far on both streams: the agent is stopped once they
    // stop growing, so what is left to deliver at exit is only the last drain.
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let slow_read = Arc::clone(&read);
    let slow_reading = runtime.spawn(async move {
        let (mut received, mut lost) = (0, 0);
        while let Some(message) = slow.message().await.unwrap() {
            slow_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match message.response_types {
                Some(ResponseTypes::Flow(_)) => received += 1,
                Some(ResponseTypes::LostEvents(events)) => lost += events.num_events_lost,
                _ => {}
            }
        }
        (received, lost)
    });
    let acme_read = Arc::clone(&read);
    let acme_reading = runtime.spawn(async move {
        let (mut acme_received, mut acme_lost, mut foreign) = (0, 0, 0);
        while let Some(message) = acme.message().await.unwrap() {
            acme_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match message.response_types {
                Some(ResponseTypes::Flow(flow)) => {
                    acme_received += 1;
                    let namespaces = [
                        flow.source.unwrap().namespace,
                        flow.destination.unwrap().namespace,
                    ];
                    if !namespaces.iter().any(|namespace| namespace == "shop-a") {
                        foreign += 1;
                    }
                }
                Some(ResponseTypes::LostEvents(events)) => acme_lost += events.num_events_lost,
                _ => {}
            }
        }
        (acme_received, acme_lost, foreign)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = u64::MAX;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = read.load(std::sync::atomic::Ordering::Relaxed);
        if now == before {
            break;
        }
        before = now;
    }
    let output = agent.stop();
    drop(sink);
    let total = output
        .records
        .iter()
        .filter(|record| record.destination.port == 7000 && record.protocol.to_string() == "UDP")
        .count() as u64;
    let acme_total = output
        .records
        .iter()
        .filter(|record| {
            [&record.source, &record.destination]
                .iter()
                .any(|end| end.identity.tenant.as_deref() == Some("acme"))
        })
        .count() as u64;
    let (received, lost) = runtime.block_on(slow_reading).unwrap();
    let (acme_received, acme_lost, acme_foreign) = runtime.block_on(acme_reading).unwrap();
    eprintln!("slow follower: received {received}, told of {lost} lost, of {total} records");
    assert!(
        lost > 0,
        "the slow follower should have fallen behind (received {received})"
    );
    assert_eq!(received + lost, total);
    assert_eq!(lost, lost_reported_by_metrics);
    assert_eq!(acme_foreign, 0, "team-acme saw only acme's flows");
    assert!(acme_received > 0);
    assert_eq!(acme_received + acme_lost, acme_total);
}

/// A plaintext channel to `address`.
async fn plain_channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `message` with `authorization: Bearer token`.
fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn port_text(port: u32, ports: bool) -> String {
    if ports {
        format!(":{port}")
    } else {
        String::new()
    }
}

/// The key of a Hubble flow as the Rust client decodes it; `None` for ICMPv6.
fn hubble_proto_key(flow: &flow_proto::hubble::flow::Flow) -> Option<FlowKey> {
    use flow_proto::hubble::flow::layer4::Protocol as L4;
    let ip = flow.ip.as_ref().unwrap();
    let (protocol, ports) = match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(L4::Tcp(tcp)) => ("TCP", Some((tcp.source_port, tcp.destination_port))),
        Some(L4::Udp(udp)) => ("UDP", Some((udp.source_port, udp.destination_port))),
        Some(L4::IcmPv4(_)) => ("ICMP", None),
        _ => return None,
    };
    let (source, destination) = ports.unwrap_or_default();
    let time = flow.time.unwrap();
    Some((
        nanos(SystemTime::try_from(time).unwrap()),
        format!("{}{}", ip.source, port_text(source, ports.is_some())),
        format!(
            "{}{}",
            ip.destination,
            port_text(destination, ports.is_some())
        ),
        protocol.to_owned(),
        flow.is_reply.unwrap(),
    ))
}

/// The key of one of flow-agent's own API flows; `None` for ICMPv6.
fn v1_key(flow: &flow_proto::v1::Flow) -> Option<FlowKey> {
    if flow.protocol == "ICMPv6" {
        return None;
    }
    let ports = ["TCP", "UDP", "SCTP"].contains(&flow.protocol.as_str());
    let (source, destination) = (flow.source.as_ref()?, flow.destination.as_ref()?);
    Some((
        nanos(SystemTime::try_from(flow.time.unwrap()).unwrap()),
        format!("{}{}", source.ip, port_text(source.port, ports)),
        format!("{}{}", destination.ip, port_text(destination.port, ports)),
        flow.protocol.clone(),
        flow.is_reply,
    ))
}

/// Everything a caller with `token` is replayed by Hubble's GetFlows.
async fn hubble_replay(address: &str, token: &str) -> Result<BTreeSet<FlowKey>, tonic::Status> {
    use flow_proto::hubble::observer::{
        GetFlowsRequest, get_flows_response::ResponseTypes, observer_client::ObserverClient,
    };
    let request = GetFlowsRequest {
        number: 100_000,
        ..GetFlowsRequest::default()
    };
    let mut stream = ObserverClient::new(plain_channel(address).await)
        .get_flows(bearer(request, token))
        .await?
        .into_inner();
    let mut keys = BTreeSet::new();
    while let Some(response) = stream.message().await? {
        if let Some(ResponseTypes::Flow(flow)) = response.response_types {
            keys.extend(hubble_proto_key(&flow));
        }
    }
    Ok(keys)
}

/// Everything a caller with `token` is replayed by flow-agent's GetFlows.
async fn v1_replay(address: &str, token: &str) -> Result<BTreeSet<FlowKey>, tonic::Status> {
    use flow_proto::v1::{
        GetFlowsRequest, flow_service_client::FlowServiceClient, get_flows_response::Response,
    };
    let request = GetFlowsRequest {
        number: 100_000,
        ..GetFlowsRequest::default()
    };
    let mut stream = FlowServiceClient::new(plain_channel(address).await)
        .get_flows(bearer(request, token))
        .await?
        .into_inner();
    let mut keys = BTreeSet::new();
    while let Some(response) = stream.message().await? {
        if let Some(Response::Flow(flow)) = response.response {
            keys.extend(v1_key(&flow));
        }
    }
    Ok(keys)
}

/// The Hubble destination ports a follower receives within `wait`.
async fn followed_ports(
    stream: &mut tonic::Streaming<flow_proto::hubble::observer::GetFlowsResponse>,
    wait: Duration,
) -> BTreeSet<String> {
    use flow_proto::hubble::observer::get_flows_response::ResponseTypes;
    let mut ports = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(Some(response))) = tokio::time::timeout_at(deadline, stream.message()).await {
        if let Some(ResponseTypes::Flow(flow)) = response.response_types
            && let Some((_, _, destination, _, _)) = hubble_proto_key(&flow)
        {
            ports.insert(destination.rsplit(':').next().unwrap().to_owned());
        }
    }
    ports
}

/// `--grpc-authz kubernetes` against a fake API server: tokens are reviewed,
/// RoleBindings to a user or a group grant their namespace's flows on both
/// listeners, a ClusterRoleBinding grants all, callers without a binding or
/// with an unknown token are refused, answers are cached for the TTL, a
/// revoked binding stops a follower, and an API server outage denies.
#[test]
fn access_follows_the_clusters_rbac_on_both_listeners() {
    use common::kube_api::{Binding, KubeApi};
    use flow_proto::hubble::observer::{GetFlowsRequest, observer_client::ObserverClient};
    require_root!();
    let Some([a, b]) = lab([35, 36]) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kube = runtime.block_on(KubeApi::start_on(IpAddr::V4(Ipv4Addr::new(100, 64, 35, 1))));
    kube.set(
        "/api/v1/namespaces",
        ["shop-a", "shop-b", "shop-c"]
            .map(
                |name| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            )
            .to_vec(),
    );
    for (token, user, groups) in [
        ("alice-token", "alice", vec![]),
        ("bob-token", "bob", vec!["entra:globex-ops"]),
        ("carol-token", "carol", vec!["platform-admins"]),
        ("dave-token", "dave", vec![]),
        ("erin-token", "erin", vec!["entra:acme"]),
    ] {
        kube.token(token, user, &groups);
    }
    let binding = |kind, name: &str, namespace: Option<&str>| Binding {
        kind,
        name: name.to_owned(),
        namespace: namespace.map(str::to_owned),
    };
    let bindings = vec![
        binding("User", "alice", Some("shop-a")),
        binding("Group", "entra:globex-ops", Some("shop-b")),
        binding("Group", "platform-admins", None),
        binding("Group", "entra:acme", Some("shop-a")),
    ];
    kube.bindings(bindings.clone());
    let directory = tempfile::tempdir().unwrap();
    let kubeconfig = directory.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"{}\"}}\nusers:\n- name: agent\n  user: {{}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: agent}}\ncurrent-context: lab\n",
            kube.url
        ),
    )
    .unwrap();
    let glob = a.node.glob();
    let agent = Agent::start_with_env(
        &a.node.netns,
        "node-a",
        &[&format!("KUBECONFIG={}", kubeconfig.display())],
        &[
            "-i",
            &glob,
            "--flush-interval",
            "250ms",
            "--inventory",
            a.inventory.to_str().unwrap(),
            "--grpc-listen",
            "0.0.0.0:4245",
            "--hubble-listen",
            "0.0.0.0:4244",
            "--grpc-allow-plaintext",
            "--grpc-authz",
            "kubernetes",
            "--authz-cache-ttl",
            "4s",
        ],
    );
    traffic(&a.node, &b.node);
    let records = settled(&agent, |records| {
        [5432, 9999].iter().all(|port| {
            records
                .iter()
                .any(|record| record.destination.port == *port)
        })
    });
    let with_an_end_in = |namespace: &str| -> BTreeSet<FlowKey> {
        records
            .iter()
            .filter(not_icmpv6)
            .filter(|record| {
                [&record.source, &record.destination]
                    .iter()
                    .any(|end| end.identity.namespace.as_deref() == Some(namespace))
            })
            .map(record_key)
            .collect()
    };
    let everything: BTreeSet<FlowKey> = keys(&records).into_iter().collect();
    let (shop_a, shop_b) = (with_an_end_in("shop-a"), with_an_end_in("shop-b"));
    assert!(
        !shop_b.is_empty() && shop_b.len() < shop_a.len(),
        "{shop_b:?}"
    );
    assert!(shop_a.len() < everything.len() || !shop_a.is_subset(&shop_b));

    let grpc = SocketAddr::new(IpAddr::V4(a.address), 4245).to_string();
    let hubble = a.hubble();
    runtime.block_on(async {
        for (token, expected) in [
            ("alice-token", &shop_a),
            ("bob-token", &shop_b),
            ("carol-token", &everything),
        ] {
            assert_eq!(
                &hubble_replay(&hubble, token).await.unwrap(),
                expected,
                "{token}"
            );
            assert_eq!(&v1_replay(&grpc, token).await.unwrap(), expected, "{token}");
        }
        // Within the TTL every answer comes from the cache.
        let reviews = kube.reviews();
        assert_eq!(hubble_replay(&hubble, "alice-token").await.unwrap(), shop_a);
        assert_eq!(kube.reviews(), reviews);
        for refused in [
            hubble_replay(&hubble, "dave-token").await,
            v1_replay(&grpc, "dave-token").await,
        ] {
            let status = refused.unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert_eq!(
                status.message(),
                "dave may not list flows.flow-agent.io in any namespace"
            );
        }
        let status = v1_replay(&grpc, "no-such-token").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        let status = hubble_replay(&hubble, "no-such-token").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    });

    // Followers: alice (a RoleBinding) and carol (an administrator). Once
    // alice's binding is revoked, her stream ends within a TTL.
    let (mut alice, mut carol) = runtime.block_on(async {
        let follow = |token: &'static str| {
            let hubble = hubble.clone();
            async move {
                let request = GetFlowsRequest {
                    follow: true,
                    ..GetFlowsRequest::default()
                };
                ObserverClient::new(plain_channel(&hubble).await)
                    .get_flows(bearer(request, token))
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        (follow("alice-token").await, follow("carol-token").await)
    });
    udp_exchange(&a.node, 0, 1, 7101);
    runtime.block_on(async {
        let seen = followed_ports(&mut alice, Duration::from_secs(3)).await;
        assert!(seen.contains("7101"), "{seen:?}");
    });
    kube.bindings(bindings[1..].to_vec());
    std::thread::sleep(Duration::from_secs(9));
    runtime.block_on(followed_ports(&mut alice, Duration::from_millis(500)));
    udp_exchange(&a.node, 0, 1, 7102);
    let (alice_after, carol_after) = runtime.block_on(async {
        (
            followed_ports(&mut alice, Duration::from_secs(3)).await,
            followed_ports(&mut carol, Duration::from_secs(1)).await,
        )
    });
    assert!(!alice_after.contains("7102"), "{alice_after:?}");
    assert!(carol_after.contains("7102"), "{carol_after:?}");

    // An API server that cannot answer denies, and never allows: neither a
    // caller never seen, nor one whose answers expired.
    kube.reviews_down(true);
    std::thread::sleep(Duration::from_secs(5));
    runtime.block_on(async {
        for token in ["erin-token", "carol-token"] {
            let status = hubble_replay(&hubble, token).await.unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::Unavailable,
                "{token}: {status:?}"
            );
            assert!(
                status.message().starts_with("access denied: "),
                "{status:?}"
            );
        }
    });
    let output = agent.stop();
    assert!(
        output
            .stderr
            .iter()
            .any(|line| line.contains("access denied in every namespace") && line.contains("dave")),
        "{:?}",
        output.stderr
    );
}
