//! `policy generate --kubernetes` over a simulated cluster: 50 agents, each
//! an in-process gRPC server (flow-agent's own API, plaintext on loopback
//! addresses 127.1.0.N) serving a learned graph of 4,000 edges, listed by
//! a fake API server's EndpointSlice (tests/common/kube_api.rs). The real
//! binary runs end to end: discovery, concurrent GetGraph, merge, propose,
//! export. Prints its wall time and peak RSS (the child's ru_maxrss) at
//! several `--concurrency` settings, and for comparison `policy generate
//! --graph` of the same merged graph (no fetching); asserts nothing.
//!
//! Two clusters: nodes that saw different edges (each its own draw from the
//! same 400 workloads: the merged graph is big and proposing dominates), and
//! nodes that saw the same 4,000 edges (replicas everywhere: the merged graph
//! is small, so the fetch's own memory shows).
//!
//! The agents run in a second process (this bench, run again): a child's
//! ru_maxrss starts from its parent's high-water mark (exec copies it), so
//! the process that starts `flow-agent` must stay small.
//!
//! `cargo bench -p flow-agent --bench agents` (no root needed).

#![expect(clippy::unwrap_used, reason = "the fake API server is test code")]

#[expect(dead_code, reason = "the bench lists; it never watches")]
#[path = "../../tests/common/kube_api.rs"]
mod kube_api;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::Instant,
};

use flow_policy::{
    graph::{Change, Edge, Graph},
    learner::LearnedGraph,
    synthetic::{Shape, generate},
};

use flow_agent::api::{
    convert,
    hub::{Hub, HubSettings},
    sent::SentBytes,
    server::{self, ApiSettings, Authz, Served},
};
use kube_api::KubeApi;
use prost::Message as _;
use serde_json::{Value, json};

const AGENTS: u8 = 50;
const EDGES_PER_AGENT: usize = 4_000;

/// A node's graph: the same 400 workloads on every node, and 4,000 of the
/// edges a node of that cluster would see, drawn with `seed`.
fn agent_graph(seed: u64) -> Graph {
    let synthetic = generate(Shape {
        tenants: 4,
        namespaces: 5,
        workloads: 20,
        edges_per_workload: 12,
        seed,
    });
    let mut graph = Graph::new();
    for (workload, info) in synthetic.graph.workloads() {
        graph.apply(Change::Workload {
            workload: workload.clone(),
            info: info.clone(),
        });
    }
    for (key, stats) in synthetic.graph.edges().take(EDGES_PER_AGENT) {
        graph.apply(Change::Edge(Edge {
            key: key.clone(),
            stats: stats.clone(),
        }));
    }
    assert_eq!(graph.len(), EDGES_PER_AGENT, "the shape makes enough edges");
    graph
}

fn address(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, index)
}

/// Where a cluster's agents are listed.
fn slices(namespace: &str) -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices")
}

/// A port free on the agents' loopback addresses, while the listener lives.
fn free_port() -> std::net::TcpListener {
    std::net::TcpListener::bind((address(1), 0)).unwrap()
}

/// Serves `graph` on `listen` until the runtime ends.
async fn serve(listen: SocketAddr, graph: Graph) {
    let hub = Arc::new(Hub::new(
        format!("node-{}", listen.ip()),
        HubSettings {
            buffer: 16,
            aggregate_buffer: 16,
            subscriber_queue: 16,
            max_subscribers: 4,
        },
    ));
    hub.attach_graph(LearnedGraph::new(graph));
    let settings = ApiSettings {
        grpc: Some(listen),
        hubble: None,
        tls: None,
        client_ca: None,
        access: None,
        authz: Authz::File,
        allow_plaintext: false,
    };
    let served = Served {
        hub,
        peers: Arc::default(),
        sent: SentBytes::default(),
    };
    let serving = server::start(&settings, served, std::future::pending())
        .await
        .unwrap();
    tokio::spawn(serving);
}

fn slice(namespace: &str, port: u16) -> Value {
    let endpoints: Vec<Value> = (1..=AGENTS)
        .map(|index| {
            json!({
                "addresses": [address(index).to_string()],
                "conditions": {"ready": true},
                "nodeName": format!("aks-nodepool1-{index:02}"),
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": format!("flow-agent-{index:02}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "flow-agent-x1", "namespace": namespace,
            "labels": {"kubernetes.io/service-name": "flow-agent"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// Runs `flow-agent ARGS`; returns its wall time (s), peak RSS (KiB) and
/// stdout.
fn measure(args: &[&str], kubeconfig: &Path) -> (f64, i64, String) {
    use std::io::Read as _;
    let began = Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "wait4 reaps it, for its resource usage"
    )]
    let mut child = Command::new(env!("CARGO_BIN_EXE_flow-agent"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It prints a few lines: reading them in turn cannot fill a pipe.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = began.elapsed().as_secs_f64();
    assert_eq!(waited, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{stderr}"
    );
    (elapsed, usage.ru_maxrss, stdout)
}

/// Set (to the two clusters' ports) in the process that serves the agents.
const SERVE_AGENTS: &str = "FLOW_AGENT_BENCH_SERVE_AGENTS";

/// The agents' process: serves both clusters, says `ready`, and serves until
/// its stdin closes.
fn serve_agents(ports: &str) {
    let ports: Vec<u16> = ports.split(',').map(|port| port.parse().unwrap()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clusters = [
        (
            "flow-agent",
            (1..=AGENTS)
                .map(|index| agent_graph(u64::from(index)))
                .collect(),
        ),
        (
            "flow-agent-replicated",
            (1..=AGENTS).map(|_| agent_graph(1)).collect(),
        ),
    ];
    for ((namespace, graphs), port) in clusters.into_iter().zip(ports) {
        let graphs: Vec<Graph> = graphs;
        let answer = convert::graph(&graphs[0], |_, _| true).encoded_len();
        let mut union = Graph::new();
        for graph in &graphs {
            union.merge(graph);
        }
        println!(
            "{namespace}: {AGENTS} agents x {EDGES_PER_AGENT} edges over 400 workloads, {} distinct edges in all; GetGraph answers {} KiB each",
            union.len(),
            answer / 1024,
        );
        runtime.block_on(async {
            for (index, graph) in (1..=AGENTS).zip(graphs) {
                serve(SocketAddr::from((address(index), port)), graph).await;
            }
        });
    }
    println!("ready");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

/// `policy generate --kubernetes` at several concurrencies, then from the
/// saved merged graph alone.
fn generate_from(namespace: &str, directory: &Path, kubeconfig: &Path) {
    let output = directory.join("policies");
    let saved = directory.join("merged.json");
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    let service = format!("{namespace}/flow-agent");
    for concurrency in ["1", "4", "16", "50"] {
        let _ = std::fs::remove_dir_all(&output);
        let (seconds, peak_kib, stdout) = measure(
            &[
                "policy",
                "generate",
                "--kubernetes",
                "--agents-service",
                &service,
                "--concurrency",
                concurrency,
                "--output-dir",
                &path(&output),
                "--save-graph",
                &path(&saved),
            ],
            kubeconfig,
        );
        let summary = stdout.lines().next().unwrap_or_default().to_owned();
        println!(
            "  --kubernetes --concurrency {concurrency:>2}: {seconds:.2} s wall, peak RSS {} MiB ({summary})",
            peak_kib / 1024
        );
    }
    let _ = std::fs::remove_dir_all(&output);
    let (seconds, peak_kib, _) = measure(
        &[
            "policy",
            "generate",
            "--graph",
            &path(&saved),
            "--output-dir",
            &path(&output),
        ],
        kubeconfig,
    );
    println!(
        "  --graph of the merged graph (no agents): {seconds:.2} s wall, peak RSS {} MiB",
        peak_kib / 1024
    );
}

fn main() {
    if let Ok(ports) = std::env::var(SERVE_AGENTS) {
        return serve_agents(&ports);
    }
    // Two free ports, held together so that they differ (closed by `map`).
    let held = [free_port(), free_port()];
    let ports = held.map(|listener| listener.local_addr().unwrap().port());
    let mut agents = Command::new(std::env::current_exe().unwrap())
        .env(SERVE_AGENTS, format!("{},{}", ports[0], ports[1]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let announced = std::io::BufReader::new(agents.stdout.take().unwrap());
    for line in std::io::BufRead::lines(announced) {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        println!("{line}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kube = runtime.block_on(KubeApi::start());
    let background = std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    let namespaces = ["flow-agent", "flow-agent-replicated"];
    for (namespace, port) in namespaces.into_iter().zip(ports) {
        kube.add(
            &slices(namespace),
            "discovery.k8s.io/v1",
            "EndpointSliceList",
        );
        kube.set(&slices(namespace), vec![slice(namespace, port)]);
    }
    let directory =
        std::env::temp_dir().join(format!("flow-agent-agents-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let kubeconfig = directory.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster: {{server: \"{}\"}}\nusers:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context: {{cluster: bench, user: bench}}\ncurrent-context: bench\n",
            kube.url
        ),
    )
    .unwrap();
    println!("{}", resident("this process, which starts flow-agent"));
    for namespace in namespaces {
        println!("{namespace}:");
        generate_from(namespace, &directory, &kubeconfig);
    }
    let _ = std::fs::remove_dir_all(&directory);
    drop(agents.stdin.take());
    let _ = agents.wait();
    drop(background);
}

/// This process's peak RSS, which every child's ru_maxrss starts from.
fn resident(what: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .map_or("?", str::trim);
    format!("peak RSS of {what}: {peak}")
}
