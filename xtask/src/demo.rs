//! `cargo xtask demo`: a node with four pods in network namespaces, a small
//! microservice's traffic between them, flow-agent attached to the node, and a
//! live flow table built from its JSON records. Cleans up on exit and on Ctrl-C.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use flow_lab::{AgentProcess, Node};
use serde_json::Value;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const NAMES: [&str; 4] = ["frontend", "cart", "db", "dns"];
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

fn pod_name(node: &Node, ip: &str) -> String {
    node.pods
        .iter()
        .zip(NAMES)
        .find(|(pod, _)| pod.ipv4.to_string() == ip || pod.ipv6.to_string() == ip)
        .map_or_else(|| ip.to_owned(), |(_, name)| name.to_owned())
}

fn endpoint(node: &Node, value: &Value) -> String {
    let ip = value["ip"].as_str().unwrap_or("?");
    format!("{}:{}", pod_name(node, ip), value["port"])
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

fn print_table(node: &Node, records: &[Value], title: &str) {
    println!("\n{title}");
    println!(
        "{:<24} {:<24} {:<7} {:>8} {:>10}  {:<8} SEEN ON",
        "SOURCE", "DESTINATION", "PROTO", "PACKETS", "BYTES", "DIR"
    );
    let mut rows: Vec<&Value> = records.iter().collect();
    rows.sort_by_key(|record| std::cmp::Reverse(record["bytes"].as_u64().unwrap_or(0)));
    for record in rows.iter().take(20) {
        println!(
            "{:<24} {:<24} {:<7} {:>8} {:>10}  {:<8} {} ({})",
            endpoint(node, &record["source"]),
            endpoint(node, &record["destination"]),
            record["protocol"].as_str().unwrap_or("?"),
            record["packets"],
            human_bytes(record["bytes"].as_u64().unwrap_or(0)),
            if record["is_reply"].as_bool().unwrap_or(false) {
                "reply"
            } else {
                "request"
            },
            record["interface"].as_str().unwrap_or("?"),
            record["hook"].as_str().unwrap_or("?"),
        );
    }
    if rows.len() > 20 {
        println!("... and {} more flows", rows.len() - 20);
    }
}

/// Totals per (client pod, server pod, server port, protocol), requests and
/// replies together; link-local control traffic (neighbour discovery, MLD) is
/// counted apart.
fn print_summary(node: &Node, records: &[Value]) {
    let is_pod = |ip: &str| pod_name(node, ip) != ip;
    let mut conversations: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    let mut control = (0u64, 0u64);
    for record in records {
        let (client, server) = if record["is_reply"].as_bool().unwrap_or(false) {
            (&record["destination"], &record["source"])
        } else {
            (&record["source"], &record["destination"])
        };
        let (client_ip, server_ip) = (
            client["ip"].as_str().unwrap_or("?"),
            server["ip"].as_str().unwrap_or("?"),
        );
        let packets = record["packets"].as_u64().unwrap_or(0);
        let bytes = record["bytes"].as_u64().unwrap_or(0);
        if !(is_pod(client_ip) && is_pod(server_ip)) {
            control.0 += packets;
            control.1 += bytes;
            continue;
        }
        let key = (
            pod_name(node, client_ip),
            format!("{}:{}", pod_name(node, server_ip), server["port"]),
            record["protocol"].as_str().unwrap_or("?").to_owned(),
        );
        let totals = conversations.entry(key).or_default();
        totals.0 += packets;
        totals.1 += bytes;
    }
    println!("\nWho talked to whom (both directions, whole run):");
    println!(
        "{:<10} {:<16} {:<7} {:>8} {:>10}",
        "CLIENT", "SERVER", "PROTO", "PACKETS", "BYTES"
    );
    for ((client, server, protocol), (packets, bytes)) in conversations {
        println!(
            "{client:<10} {server:<16} {protocol:<7} {packets:>8} {:>10}",
            human_bytes(bytes)
        );
    }
    println!(
        "(plus {} packets, {} of IPv6 neighbour discovery and multicast listener reports)",
        control.0,
        human_bytes(control.1)
    );
}

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
    println!(
        "Building a node with four pods ({}) in network namespaces...",
        NAMES.join(", ")
    );
    let node = Node::new(4).context("building the lab (needs root and iproute2)")?;
    for (pod, name) in node.pods.iter().zip(NAMES) {
        println!(
            "  {name:<9} {:<10} {:<10} host side {}",
            pod.ipv4, pod.ipv6, pod.host_interface
        );
    }
    let flush = humantime_secs(FLUSH);
    let agent = AgentProcess::start(
        agent_binary,
        &node.netns,
        &[
            "-i",
            &node.glob(),
            "--flush-interval",
            &flush,
            "--output",
            "json",
            "--node-name",
            "demo-node",
        ],
        false,
    )
    .context("starting flow-agent")?;
    println!(
        "flow-agent attached to {} (TCX, head of chain); flushing every {flush}.",
        node.glob()
    );

    let running = Running(Arc::new(AtomicBool::new(true)));
    let cart = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 8080);
    let db = SocketAddr::new(IpAddr::V4(node.pods[2].ipv4), 5432);
    let dns4 = SocketAddr::new(IpAddr::V4(node.pods[3].ipv4), 53);
    let dns6 = SocketAddr::new(IpAddr::V6(node.pods[3].ipv6), 53);
    let mut workers = vec![
        tcp_server(&node, 1, 8080, 200, 2_000, &running),
        tcp_server(&node, 2, 5432, 100, 800, &running),
        udp_server(&node, 3, dns4.ip(), 100, &running),
        udp_server(&node, 3, dns6.ip(), 120, &running),
    ];
    std::thread::sleep(Duration::from_millis(200));
    workers.extend([
        tcp_client(
            &node,
            0,
            cart,
            Exchange {
                request: 200,
                response: 2_000,
                every: Duration::from_millis(300),
                persistent: false,
            },
            &running,
        ),
        tcp_client(
            &node,
            1,
            db,
            Exchange {
                request: 100,
                response: 800,
                every: Duration::from_millis(500),
                persistent: true,
            },
            &running,
        ),
        udp_client(&node, 0, dns6, Duration::from_secs(1), &running),
        udp_client(&node, 1, dns4, Duration::from_secs(1), &running),
        udp_client(&node, 2, dns4, Duration::from_millis(1500), &running),
    ]);

    let started = Instant::now();
    let mut all = Vec::new();
    while started.elapsed() < duration && running.yes() {
        running.pause(FLUSH);
        let lines = agent.take_stdout();
        let records: Vec<Value> = lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if !records.is_empty() {
            print_table(
                &node,
                &records,
                &format!(
                    "Flows in the last {flush} (t = {:.0}s):",
                    started.elapsed().as_secs_f64()
                ),
            );
            all.extend(records);
        }
    }
    let Running(flag) = &running;
    flag.store(false, Ordering::SeqCst);
    for worker in workers {
        let _ = worker.join();
    }
    let output = agent.stop().context("stopping flow-agent")?;
    all.extend(
        output
            .stdout
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok()),
    );
    print_summary(&node, &all);
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
        "{} flow records in total; the lab is being removed.",
        all.len()
    );
    std::io::stdout().flush().ok();
    Ok(())
}

fn humantime_secs(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}
