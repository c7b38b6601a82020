//! `cargo xtask demo`: a node with five pods of two tenants in network
//! namespaces, a small shop's traffic between them (some of it through Service
//! addresses DNATed as kube-proxy does), flow-agent attached to the node with an
//! inventory for identity, and a live workload-to-workload table from its
//! aggregates. Cleans up on exit and on Ctrl-C.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use flow_lab::{
    AgentProcess, LabProcess, Node,
    cluster::{Controller, Inventory},
};
use serde_json::Value;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const NAMES: [&str; 5] = [
    "shop-a/frontend",
    "shop-a/cart",
    "shop-b/orders-db",
    "shop-b/reports",
    "kube-system/coredns",
];
const FLUSH: Duration = Duration::from_secs(2);

/// Keeps serving or sending until the demo stops.
#[derive(Clone)]
struct Running(Arc<AtomicBool>);

impl Running {
    fn yes(&self) -> bool {
        let Self(flag) = self;
        flag.load(Ordering::Relaxed) && !INTERRUPTED.load(Ordering::Relaxed)
    }

    /// Sleeps up to `duration`, returning early when the demo stops.
    fn pause(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while self.yes() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP server answering each `request`-byte message with `response` bytes.
fn tcp_server(
    node: &Node,
    pod: usize,
    port: u16,
    request: usize,
    response: usize,
    running: &Running,
) -> JoinHandle<flow_lab::Result<()>> {
    let address = SocketAddr::new(IpAddr::V4(node.pods[pod].ipv4), port);
    let running = running.clone();
    node.pods[pod].netns.spawn(move || {
        let Ok(listener) = TcpListener::bind(address) else {
            return;
        };
        let _ = listener.set_nonblocking(true);
        while running.yes() {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let running = running.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buffer = vec![0u8; request];
                        while running.yes() {
                            match stream.read_exact(&mut buffer) {
                                Ok(()) => {
                                    if stream.write_all(&vec![b'r'; response]).is_err() {
                                        return;
                                    }
                                }
                                Err(error)
                                    if matches!(
                                        error.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// A UDP server answering each datagram with `response` bytes.
fn udp_server(
    node: &Node,
    pod: usize,
    address: IpAddr,
    response: usize,
    running: &Running,
) -> JoinHandle<flow_lab::Result<()>> {
    let running = running.clone();
    node.pods[pod].netns.spawn(move || {
        let Ok(socket) = UdpSocket::bind(SocketAddr::new(address, 53)) else {
            return;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buffer = [0u8; 512];
        while running.yes() {
            if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                let _ = socket.send_to(&vec![b'a'; response], peer);
            }
        }
    })
}

/// One client's request pattern.
#[derive(Clone, Copy)]
struct Exchange {
    request: usize,
    response: usize,
    every: Duration,
    /// Keep one connection (like a database pool) rather than one per request
    /// (like HTTP/1.0).
    persistent: bool,
}

fn tcp_client(
    node: &Node,
    pod: usize,
    to: SocketAddr,
    exchange: Exchange,
    running: &Running,
) -> JoinHandle<flow_lab::Result<()>> {
    let running = running.clone();
    let Exchange {
        request,
        response,
        every,
        persistent,
    } = exchange;
    node.pods[pod].netns.spawn(move || {
        let mut connection: Option<TcpStream> = None;
        while running.yes() {
            if connection.is_none() {
                connection = TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok();
            }
            if let Some(stream) = connection.as_mut() {
                let mut answer = vec![0u8; response];
                let ok = stream.write_all(&vec![b'q'; request]).is_ok()
                    && stream.read_exact(&mut answer).is_ok();
                if !ok || !persistent {
                    connection = None;
                }
            }
            running.pause(every);
        }
    })
}

fn udp_client(
    node: &Node,
    pod: usize,
    to: SocketAddr,
    every: Duration,
    running: &Running,
) -> JoinHandle<flow_lab::Result<()>> {
    let running = running.clone();
    node.pods[pod].netns.spawn(move || {
        let bind: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(bind) else {
            return;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buffer = [0u8; 512];
        while running.yes() {
            let _ = socket.send_to(&[b'd'; 40], to);
            let _ = socket.recv_from(&mut buffer);
            running.pause(every);
        }
    })
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

/// `namespace/workload` for a workload, else the node or address.
fn peer(value: &Value) -> String {
    match (
        value["namespace"].as_str(),
        value["workload"]["name"].as_str(),
    ) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        _ => value["node"]
            .as_str()
            .or(value["ip"].as_str())
            .or(value["kind"].as_str())
            .unwrap_or("?")
            .to_owned(),
    }
}

fn tenant(value: &Value) -> &str {
    value["tenant"].as_str().unwrap_or("-")
}

/// Aggregates keyed by client, server, protocol and port, summed.
type Conversations = BTreeMap<(String, String, String, u64), (Value, u64, u64, u64)>;

fn fold(conversations: &mut Conversations, aggregates: &[Value]) {
    for aggregate in aggregates {
        let key = (
            peer(&aggregate["source"]),
            peer(&aggregate["destination"]),
            aggregate["protocol"].as_str().unwrap_or("?").to_owned(),
            aggregate["port"].as_u64().unwrap_or(0),
        );
        let entry = conversations
            .entry(key)
            .or_insert_with(|| (aggregate.clone(), 0, 0, 0));
        entry.1 += aggregate["connections"].as_u64().unwrap_or(0);
        entry.2 += aggregate["bytes"].as_u64().unwrap_or(0);
        entry.3 += aggregate["reply_bytes"].as_u64().unwrap_or(0);
    }
}

fn print_conversations(conversations: &Conversations, title: &str) {
    println!("\n{title}");
    println!(
        "{:<18} {:<44} {:<10} {:>5} {:>9} {:>9}  TENANTS",
        "CLIENT", "SERVER", "PROTO:PORT", "CONNS", "SENT", "RECEIVED"
    );
    let mut control = (0usize, 0u64);
    for ((client, server, protocol, port), (aggregate, connections, sent, received)) in
        conversations
    {
        // Link-local IPv6 chatter (neighbour discovery, multicast listener
        // reports) has no workload on either end.
        if aggregate["source"]["workload"].is_null()
            && aggregate["destination"]["workload"].is_null()
        {
            control.0 += 1;
            control.1 += sent + received;
            continue;
        }
        let via = aggregate["service"]
            .as_str()
            .map_or(String::new(), |service| format!(" via {service}"));
        let crossing = if aggregate["cross_tenant"].as_bool().unwrap_or(false) {
            "  CROSS-TENANT"
        } else {
            ""
        };
        println!(
            "{client:<18} {:<44} {:<10} {connections:>5} {:>9} {:>9}  {} -> {}{crossing}",
            format!("{server}{via}"),
            format!("{protocol}:{port}"),
            human_bytes(*sent),
            human_bytes(*received),
            tenant(&aggregate["source"]),
            tenant(&aggregate["destination"]),
        );
    }
    if control.0 > 0 {
        println!(
            "(and {} exchanges, {}, of IPv6 neighbour discovery and multicast reports)",
            control.0,
            human_bytes(control.1)
        );
    }
}

/// The lab's Kubernetes objects: five pods of four workloads in three
/// namespaces, two Services.
fn inventory(node: &Node) -> Inventory {
    let pods = &node.pods;
    let mut inventory = Inventory::new();
    inventory
        .namespace("shop-a", Some("acme"))
        .namespace("shop-b", Some("globex"))
        .namespace("kube-system", None)
        .workload(
            "shop-a",
            "frontend",
            Controller::Deployment { hash: "6f7d9c" },
            &[("app", "frontend")],
            &[&pods[0]],
            "demo-node",
        )
        .workload(
            "shop-a",
            "cart",
            Controller::Deployment { hash: "5c8b44" },
            &[("app", "cart")],
            &[&pods[1]],
            "demo-node",
        )
        .workload(
            "shop-b",
            "orders-db",
            Controller::StatefulSet,
            &[("app", "orders-db")],
            &[&pods[2]],
            "demo-node",
        )
        .workload(
            "shop-b",
            "reports",
            Controller::Deployment { hash: "77aa01" },
            &[("app", "reports")],
            &[&pods[3]],
            "demo-node",
        )
        .workload(
            "kube-system",
            "coredns",
            Controller::Deployment { hash: "9f0e12" },
            &[("k8s-app", "kube-dns")],
            &[&pods[4]],
            "demo-node",
        )
        .service(
            "shop-a",
            "cart",
            CART_IP,
            ("http", 80, "TCP"),
            "http",
            8080,
            &[("cart-5c8b44-p000".to_owned(), IpAddr::V4(pods[1].ipv4))],
        )
        .service(
            "kube-system",
            "kube-dns",
            DNS_IP,
            ("dns", 53, "UDP"),
            "53",
            53,
            &[("coredns-9f0e12-p000".to_owned(), IpAddr::V4(pods[4].ipv4))],
        );
    inventory
}

const CART_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub(crate) fn demo(agent_binary: &Path, duration: Duration) -> Result<()> {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    println!("Building a node with five pods in network namespaces...");
    let node = Node::new(5).context("building the lab (needs root and iproute2)")?;
    for (pod, name) in node.pods.iter().zip(NAMES) {
        println!(
            "  {name:<22} {:<10} host side {}",
            pod.ipv4, pod.host_interface
        );
    }
    // kube-proxy's part: Service addresses DNATed to their pods.
    node.dnat(CART_IP, 80, "tcp", node.pods[1].ipv4, 8080)
        .context("adding Service DNAT rules (needs nftables)")?;
    node.dnat(DNS_IP, 53, "udp", node.pods[4].ipv4, 53)?;
    println!("  Services: shop-a/cart {CART_IP}:80 -> :8080, kube-system/kube-dns {DNS_IP}:53/UDP");
    let work = std::env::temp_dir().join(format!("flow-agent-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let inventory_path = work.join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(&node).yaml())?;
    let flows_path = work.join("flows.jsonl");
    let policies_path = work.join("policies");
    let flush = format!("{}s", FLUSH.as_secs());
    let agent = match AgentProcess::start(
        agent_binary,
        &node.netns,
        &[
            "-i",
            &node.glob(),
            "--flush-interval",
            &flush,
            "--output",
            "aggregates",
            "--node-name",
            "demo-node",
            "--inventory",
            &inventory_path.display().to_string(),
            "--grpc-listen",
            "127.0.0.1:4245",
            "--state-dir",
            &work.join("state").display().to_string(),
            "--output-file",
            &flows_path.display().to_string(),
        ],
        false,
    ) {
        Ok(agent) => agent,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(error).context("starting flow-agent");
        }
    };

    println!(
        "flow-agent attached to {} (TCX, head of chain), identity from an inventory; flushing every {flush}.",
        node.glob()
    );

    let running = Running(Arc::new(AtomicBool::new(true)));
    let cart = SocketAddr::new(IpAddr::V4(CART_IP), 80);
    let db = SocketAddr::new(IpAddr::V4(node.pods[2].ipv4), 5432);
    let dns = SocketAddr::new(IpAddr::V4(DNS_IP), 53);
    let mut workers = vec![
        tcp_server(&node, 1, 8080, 200, 2_000, &running),
        tcp_server(&node, 2, 5432, 100, 800, &running),
        udp_server(&node, 4, IpAddr::V4(node.pods[4].ipv4), 100, &running),
    ];
    std::thread::sleep(Duration::from_millis(200));
    let every = |millis| Duration::from_millis(millis);
    workers.extend([
        // frontend calls cart through its Service, a new connection per request.
        tcp_client(
            &node,
            0,
            cart,
            Exchange {
                request: 200,
                response: 2_000,
                every: every(300),
                persistent: false,
            },
            &running,
        ),
        // cart (tenant acme) queries the orders database of tenant globex.
        tcp_client(
            &node,
            1,
            db,
            Exchange {
                request: 100,
                response: 800,
                every: every(500),
                persistent: true,
            },
            &running,
        ),
        // reports (globex) queries it too.
        tcp_client(
            &node,
            3,
            db,
            Exchange {
                request: 100,
                response: 800,
                every: every(700),
                persistent: true,
            },
            &running,
        ),
        udp_client(&node, 0, dns, every(1_000), &running),
        udp_client(&node, 1, dns, every(1_000), &running),
        udp_client(&node, 3, dns, every(1_500), &running),
    ]);

    let started = Instant::now();
    let mut whole_run = Conversations::new();
    while started.elapsed() < duration && running.yes() {
        running.pause(FLUSH);
        let aggregates: Vec<Value> = agent
            .take_stdout()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if !aggregates.is_empty() {
            let mut interval = Conversations::new();
            fold(&mut interval, &aggregates);
            print_conversations(
                &interval,
                &format!(
                    "Workload to workload, last {flush} (t = {:.0}s):",
                    started.elapsed().as_secs_f64()
                ),
            );
            fold(&mut whole_run, &aggregates);
        }
    }
    // The same flows through the gRPC API, as a tenant's tooling would see them.
    let query = [
        "observe",
        "--last",
        "6",
        "--cross-tenant",
        "--direction",
        "request",
    ];
    match LabProcess::start(&node.netns, agent_binary, &query, None)
        .and_then(|observe| observe.wait_for_exit(Duration::from_secs(10)))
    {
        Ok(output) if output.success => {
            println!("\nThrough the gRPC API: flow-agent {}", query.join(" "));
            for line in output.stdout {
                println!("  {line}");
            }
        }
        Ok(output) => println!("flow-agent observe failed: {}", output.stderr.join(" ")),
        Err(error) => println!("flow-agent observe failed: {error}"),
    }
    // The learner's proposal, from the graph the agent learned.
    let inventory_text = inventory_path.display().to_string();
    let policies_text = policies_path.display().to_string();
    let generate = [
        "policy",
        "generate",
        "--server",
        "127.0.0.1:4245",
        "--inventory",
        &inventory_text,
        "--output-dir",
        &policies_text,
    ];
    match LabProcess::start(&node.netns, agent_binary, &generate, None)
        .and_then(|process| process.wait_for_exit(Duration::from_secs(30)))
    {
        Ok(output) if output.success => {
            println!(
                "\nLeast-privilege policies: flow-agent {}",
                generate.join(" ")
            );
            for line in output.stdout {
                println!("  {line}");
            }
            if let Ok(files) = std::fs::read_dir(&policies_path) {
                let mut names: Vec<String> = files
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with('.'))
                    .collect();
                names.sort();
                println!("  files: {}", names.join(" "));
            }
            // The part of REVIEW.md that needs a reviewer's decision.
            if let Ok(review) = std::fs::read_to_string(policies_path.join("REVIEW.md")) {
                let section: Vec<&str> = review
                    .split("\n## ")
                    .find(|section| section.starts_with("Cross-tenant edges left out"))
                    .map(|section| {
                        section
                            .lines()
                            .filter(|line| line.starts_with("- "))
                            .collect()
                    })
                    .unwrap_or_default();
                println!("  REVIEW.md, cross-tenant edges left for a decision:");
                for line in section {
                    println!("    {line}");
                }
            }
        }
        Ok(output) => println!(
            "flow-agent policy generate failed: {}",
            output.stderr.join(" ")
        ),
        Err(error) => println!("flow-agent policy generate failed: {error}"),
    }
    let Running(flag) = &running;
    flag.store(false, Ordering::SeqCst);
    for worker in workers {
        let _ = worker.join();
    }
    let output = agent.stop().context("stopping flow-agent")?;
    // Would the proposal have broken anything the agent saw?
    let flows_text = flows_path.display().to_string();
    let check = [
        "policy",
        "check",
        "--policies",
        &policies_text,
        "--flows",
        &flows_text,
        "--inventory",
        &inventory_text,
    ];
    if let Ok(result) = LabProcess::start(&node.netns, agent_binary, &check, None)
        .and_then(|process| process.wait_for_exit(Duration::from_secs(30)))
    {
        println!("\nChecked against every flow of the run: flow-agent policy check ...");
        for line in result.stdout {
            println!("  {line}");
        }
        println!(
            "  (cross-tenant connections stay denied until a reviewer approves them: --allow-cross-tenant)"
        );
    }
    for leftover in ["inventory.yaml", "flows.jsonl"] {
        let _ = std::fs::remove_file(work.join(leftover));
    }
    let _ = std::fs::remove_dir_all(work.join("state"));
    let last: Vec<Value> = output
        .stdout
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    fold(&mut whole_run, &last);
    print_conversations(
        &whole_run,
        "The whole run, by workload (what a policy learner sees):",
    );
    if let Some(line) = output
        .stderr
        .iter()
        .find(|line| line.contains("flow-agent stopped"))
    {
        println!(
            "\nflow-agent: {}",
            line.split("INFO flow_agent::agent: ")
                .last()
                .unwrap_or(line)
        );
    }
    println!(
        "\nThe proposed policies and REVIEW.md are in {}",
        policies_path.display()
    );
    println!("The lab is being removed.");
    std::io::stdout().flush().ok();
    Ok(())
}
