//! The agent's userspace work per drain, without the kernel: synthetic
//! drains of 100k and 1M flows through [`Pipeline::emit`], the code the agent
//! runs on every drain (Service translation, request or reply, records with
//! identities, aggregates, sinks; learner and monitor off), with an identity
//! cache holding an inventory of 5,000 pods, with records discarded
//! (`--output none`), also published to the API's hub, or printed as JSON
//! lines (`--output json`, to /dev/null). Each case runs in a child process of its own, so that its
//! peak resident memory (VmHWM) is its own; rounds are interleaved and the
//! figures are medians. Prints figures; asserts nothing.
//!
//! `cargo bench -p flow-agent --bench pipeline` (no root needed);
//! `BENCH_ROUNDS=N` sets the rounds (default 3); `--dump FLOWS DIRECTORY`
//! writes two drains' records and aggregates as JSON lines instead.

#![expect(clippy::expect_used, reason = "a benchmark aborts on failure")]

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use flow_model::identity::{CacheEvent, IdentityCache, IdentityConfig, inventory};

use flow_model::record::{MonotonicClock, key_address};

use flow_agent::{
    agent::{Pipeline, PipelineParts},
    api::hub::{Hub, HubSettings},
    drain::DrainedFlows,
    enrich::Enricher,
    flows::TrackerConfig,
    output::{JsonContent, JsonLines, RecordSink},
};
use flow_common::{Direction, FlowKey, FlowStats, protocol, tcp_flag};
use flow_lab::cluster::Inventory;

const PODS: usize = 5_000;
const PODS_PER_WORKLOAD: usize = 10;
const WORKLOADS: usize = PODS / PODS_PER_WORKLOAD;
const NAMESPACES: usize = 25;
const NODES: usize = 50;
/// Pods on this node: every NODES-th pod.
const LOCAL_PODS: usize = PODS / NODES;
const WORLD_ADDRESSES: u32 = 1_000;
const SIZES: [usize; 2] = [100_000, 1_000_000];

fn pod_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 64, (index / 256) as u8, (index % 256) as u8)
}

fn pod_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, index as u16)
}

fn service_ip(workload: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (workload / 256) as u8, (workload % 256) as u8)
}

fn local_pod(index: usize) -> usize {
    index * NODES
}

/// 25 namespaces of 10 tenants, 500 Deployments of 10 pods over 50 nodes,
/// a Service per Deployment, in the YAML `kubectl get -o yaml` prints.
fn inventory_yaml() -> String {
    let mut inventory = Inventory::new();
    for namespace in 0..NAMESPACES {
        let tenant = format!("tenant-{}", namespace % 10);
        inventory.namespace(&format!("ns-{namespace}"), Some(&tenant));
    }
    let mut items = String::new();
    for node in 0..NODES {
        let _ = write!(
            items,
            "- apiVersion: v1\n  kind: Node\n  metadata: {{name: node-{node}}}\n  status: {{addresses: [{{type: InternalIP, address: '192.168.0.{}'}}]}}\n",
            node + 1
        );
    }
    for workload in 0..WORKLOADS {
        workload_yaml(&mut items, workload);
    }
    inventory.raw(&items);
    inventory.yaml()
}

fn workload_yaml(items: &mut String, workload: usize) {
    let namespace = format!("ns-{}", workload % NAMESPACES);
    let name = format!("app-{workload}");
    let labels = format!("{{app: {name}, team: team-{}}}", workload % 7);
    let _ = write!(
        items,
        "- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: {name}, namespace: {namespace}}}
  spec: {{selector: {{matchLabels: {{app: {name}}}}}, template: {{metadata: {{labels: {labels}}}, spec: {{containers: [{{name: main, image: app}}]}}}}}}
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata: {{name: {name}-5d8f9c, namespace: {namespace}, ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {name}, uid: d-{workload}, controller: true}}]}}
  spec: {{selector: {{matchLabels: {{app: {name}}}}}, template: {{metadata: {{labels: {labels}}}, spec: {{containers: [{{name: main, image: app}}]}}}}}}
- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: {namespace}}}
  spec: {{type: ClusterIP, clusterIP: {ip}, clusterIPs: [{ip}], ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-x9z8, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
",
        ip = service_ip(workload)
    );
    let pods = workload * PODS_PER_WORKLOAD..(workload + 1) * PODS_PER_WORKLOAD;
    for pod in pods.clone() {
        let _ = writeln!(
            items,
            "  - {{addresses: ['{}'], conditions: {{ready: true}}}}",
            pod_v4(pod)
        );
    }
    for pod in pods {
        let _ = write!(
            items,
            "- apiVersion: v1
  kind: Pod
  metadata: {{name: {name}-5d8f9c-{pod:05}, namespace: {namespace}, uid: pod-{pod}, labels: {{app: {name}, team: team-{}, pod-template-hash: 5d8f9c}}, ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {name}-5d8f9c, uid: rs-{workload}, controller: true}}]}}
  spec: {{nodeName: node-{}, containers: [{{name: main, image: app, ports: [{{name: http, containerPort: 8080}}]}}]}}
  status: {{phase: Running, startTime: '2026-01-01T00:00:00Z', podIP: '{v4}', podIPs: [{{ip: '{v4}'}}, {{ip: '{v6}'}}]}}
",
            workload % 7,
            pod % NODES,
            v4 = pod_v4(pod),
            v6 = pod_v6(pod),
        );
    }
}

fn identity_cache() -> IdentityCache {
    let mut cache = IdentityCache::new(IdentityConfig {
        tenant_label: "tenant".to_owned(),
        node_name: "node-0".to_owned(),
        local_addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))],
        grace: Duration::from_secs(120),
        platform_namespaces: flow_model::identity::platform_namespaces([]),
    });
    let parsed = inventory::parse(&inventory_yaml(), "bench.yaml");
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let now = SystemTime::now();
    for object in parsed.objects {
        cache.apply(CacheEvent::Apply(object), now);
    }
    assert_eq!(cache.stats().pods, PODS);
    cache
}

/// A deterministic pseudo-random number (splitmix64).
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One connection's two directions, as the kernel counted them.
struct Connection {
    request: FlowKey,
    reply: FlowKey,
    request_flags: u16,
    reply_flags: u16,
    /// The local pod's interface, and whether it is the client.
    ifindex: u32,
    local_client: bool,
}

fn key(source: IpAddr, source_port: u16, destination: IpAddr, destination_port: u16) -> FlowKey {
    FlowKey {
        src_addr: key_address(source),
        dst_addr: key_address(destination),
        src_port: source_port,
        dst_port: destination_port,
        ..FlowKey::default()
    }
}

/// Connection `index`: a local pod and a peer of a neighbouring workload,
/// TCP to a pod (60%) or to its Service (10%), DNS over UDP (20%), HTTPS to
/// the world (5%), ICMP echo (5%); a fifth over IPv6. Every connection has
/// its own 5-tuple: the local pod is `index % 100` and the client port
/// `32768 + index / 100`.
fn connection(index: usize) -> Connection {
    let random = mix(index as u64);
    let local = local_pod(index % LOCAL_PODS);
    let client_port = 32_768 + (index / LOCAL_PODS) as u16;
    let peer_workload = (local / PODS_PER_WORKLOAD + 1 + (random % 4) as usize) % WORKLOADS;
    let peer =
        peer_workload * PODS_PER_WORKLOAD + ((random >> 8) % PODS_PER_WORKLOAD as u64) as usize;
    let v6 = (random >> 16).is_multiple_of(5);
    let address = |pod: usize| {
        if v6 {
            IpAddr::V6(pod_v6(pod))
        } else {
            IpAddr::V4(pod_v4(pod))
        }
    };
    let local_client = (random >> 20).is_multiple_of(2);
    let (client, server) = if local_client {
        (address(local), address(peer))
    } else {
        (address(peer), address(local))
    };
    let tcp = (
        tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN | tcp_flag::SYN_ONLY,
        tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN | tcp_flag::SYN_ACK,
    );
    let kind = (random >> 24) % 20;
    let (server, server_port, protocol, (request_flags, reply_flags)) = match kind {
        0..12 => (server, 8080, protocol::TCP, tcp),
        12..14 if !v6 => (
            IpAddr::V4(service_ip(peer_workload)),
            80,
            protocol::TCP,
            tcp,
        ),
        14..18 => (address(peer_workload % 10), 53, protocol::UDP, (0, 0)),
        18 => {
            let world = (random >> 32) as u32 % WORLD_ADDRESSES;
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, world as u16))
            } else {
                IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + world))
            };
            (ip, 443, protocol::TCP, tcp)
        }
        _ => (server, 0, protocol::ICMP, (0, 0)),
    };
    let client = if matches!(kind, 14..19) {
        address(local)
    } else {
        client
    };
    let local_client = local_client || matches!(kind, 14..19);
    let (mut request, mut reply) = (
        key(client, client_port, server, server_port),
        key(server, server_port, client, client_port),
    );
    for key in [&mut request, &mut reply] {
        key.protocol = if protocol == protocol::ICMP && v6 {
            protocol::ICMPV6
        } else {
            protocol
        };
    }
    if protocol == protocol::ICMP {
        // Echo: the identifier stands in the ports.
        let (request_type, reply_type) = if v6 { (128, 129) } else { (8, 0) };
        request.icmp_type = request_type;
        reply.icmp_type = reply_type;
        request.dst_port = 0;
        reply.src_port = 0;
    }
    Connection {
        request,
        reply,
        request_flags,
        reply_flags,
        ifindex: 1_000 + (index % LOCAL_PODS) as u32,
        local_client,
    }
}

fn stats(
    packets: u64,
    first_seen_ns: u64,
    flags: u16,
    ifindex: u32,
    direction: Direction,
) -> FlowStats {
    FlowStats {
        packets,
        bytes: packets * 700,
        first_seen_ns,
        last_seen_ns: first_seen_ns + 2_000_000,
        epoch: 1,
        first_ifindex: ifindex,
        tcp_flags: flags,
        first_direction: direction as u8,
        icmp_error_kinds: 0,
        icmp_errors: 0,
    }
}

/// `flows` flows (half as many connections) as the datapath hands them over:
/// one per-CPU slot per map entry, in no particular order (a hash map's).
fn drain(flows: usize) -> DrainedFlows {
    let mut drained = DrainedFlows::default();
    let start_ns = MonotonicClock::monotonic_now_ns().saturating_sub(5_000_000_000);
    let connections = flows / 2;
    for step in 0..connections {
        // A prime that divides no connection count used here: a permutation.
        let index = (step * 1_000_003) % connections;
        let Connection {
            request,
            reply,
            request_flags,
            reply_flags,
            ifindex,
            local_client,
        } = connection(index);
        // On a pod's host-side veth, ingress is what the pod sent.
        let (out, back) = if local_client {
            (Direction::Ingress, Direction::Egress)
        } else {
            (Direction::Egress, Direction::Ingress)
        };
        let first = start_ns + index as u64 * 4_000;
        drained.add_slots(request, &[stats(10, first, request_flags, ifindex, out)], 1);
        drained.add_slots(
            reply,
            &[stats(8, first + 100_000, reply_flags, ifindex, back)],
            1,
        );
    }
    drained
}

/// CPU time this process has used (the pipeline's thread and the JSON
/// sink's helper): on a shared machine, what the pipeline cost, whoever else
/// ran meanwhile.
fn process_cpu() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a valid timespec; the clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) };
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn pipeline<S: RecordSink>(sink: S) -> Pipeline<S> {
    Pipeline::new(PipelineParts {
        node_name: "node-0".to_owned(),
        tracker: TrackerConfig {
            idle_timeout_ns: 120_000_000_000,
            closed_timeout_ns: 10_000_000_000,
        },
        enricher: Some(Enricher::without_conntrack(identity_cache())),
        // On by default in the agent: every record is looked up.
        names: Some(flow_agent::names::Names::new(Default::default())),
        dns_flows: false,
        monitor: None,
        learner: None,
        sink,
        metrics: None,
    })
}

fn interfaces() -> HashMap<u32, String> {
    (0..LOCAL_PODS as u32)
        .map(|index| {
            (
                1_000 + index,
                format!("azv{:08x}", mix(u64::from(index)) as u32),
            )
        })
        .collect()
}

/// Where a case's records go besides the aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Nowhere (`--output none`).
    Discard,
    /// The API's hub.
    Hub,
    /// JSON lines to /dev/null, through the agent's stdout buffer size
    /// (`--output json > /dev/null`).
    Json,
}

impl Output {
    const ALL: [Self; 3] = [Self::Discard, Self::Hub, Self::Json];

    fn flag(self) -> &'static str {
        match self {
            Self::Discard => "--discard",
            Self::Hub => "--api",
            Self::Json => "--json",
        }
    }

    fn from_args(args: &[String]) -> Self {
        Self::ALL
            .into_iter()
            .find(|output| args.iter().any(|arg| arg == output.flag()))
            .unwrap_or(Self::Discard)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Discard => "          ",
            Self::Hub => ", API hub ",
            Self::Json => ", JSON    ",
        }
    }
}

/// One case, in this (child) process: the first drain (every connection,
/// identity and record slot new), then the next drain of the same flows (the
/// agent's steady state). Prints `flows records aggregates fill_us emit_us
/// idle_kib peak_kib emit_cpu_us next_emit_us next_cpu_us`.
fn run_case(flows: usize, output: Output) {
    let json = (output == Output::Json).then(|| {
        let null = std::fs::File::create("/dev/null").expect("/dev/null");
        // The agent's stdout buffer (main.rs).
        JsonLines::new(
            std::io::BufWriter::with_capacity(64 * 1024, null),
            JsonContent::Flows,
        )
    });
    let hub = (output == Output::Hub).then(|| {
        Arc::new(Hub::new(
            "node-0".to_owned(),
            HubSettings {
                buffer: 10_000,
                aggregate_buffer: 1_000,
                subscriber_queue: 65_536,
                max_subscribers: 256,
            },
        ))
    });
    let mut pipeline = pipeline((json, hub));
    let interfaces = interfaces();
    let idle_kib = status_kib("VmRSS:");
    let began = Instant::now();
    let drained = drain(flows);
    let fill = began.elapsed();
    let (began, began_cpu) = (Instant::now(), process_cpu());
    let output = pipeline
        .emit(drained, &interfaces, true)
        .expect("writing to /dev/null never fails");
    let (emit, emit_cpu) = (began.elapsed(), process_cpu() - began_cpu);
    let peak_kib = status_kib("VmHWM:");
    let drained = drain(flows);
    let (began, began_cpu) = (Instant::now(), process_cpu());
    pipeline
        .emit(drained, &interfaces, true)
        .expect("writing to /dev/null never fails");
    let (next, next_cpu) = (began.elapsed(), process_cpu() - began_cpu);
    println!(
        "{} {} {} {} {} {idle_kib} {peak_kib} {} {} {}",
        flows,
        output.records,
        output.aggregates,
        fill.as_micros(),
        emit.as_micros(),
        emit_cpu.as_micros(),
        next.as_micros(),
        next_cpu.as_micros(),
    );
}

/// Writes a case's records and aggregates as the agent prints them (`--output
/// json` and `aggregates`), to compare two versions of the pipeline.
fn dump(flows: usize, directory: &str) {
    let file = |name: &str| {
        std::io::BufWriter::new(
            std::fs::File::create(format!("{directory}/{name}")).expect("a writable directory"),
        )
    };
    let mut pipeline = pipeline((
        JsonLines::new(file("flows.jsonl"), JsonContent::Flows),
        JsonLines::new(file("aggregates.jsonl"), JsonContent::Aggregates),
    ));
    let interfaces = interfaces();
    for _ in 0..2 {
        pipeline
            .emit(drain(flows), &interfaces, true)
            .expect("writing the dump");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--case") {
        let flows = args[position + 1].parse().expect("--case FLOWS");
        run_case(flows, Output::from_args(&args));
        return;
    }
    if let Some(position) = args.iter().position(|arg| arg == "--dump") {
        let flows = args[position + 1].parse().expect("--dump FLOWS DIRECTORY");
        dump(flows, &args[position + 2]);
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(3);
    let exe = std::env::current_exe().expect("the bench's own path");
    let cases: Vec<(usize, Output)> = SIZES
        .iter()
        .flat_map(|&flows| Output::ALL.map(|output| (flows, output)))
        .collect();
    let mut results: Vec<Vec<Vec<f64>>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (case, &(flows, output)) in cases.iter().enumerate() {
            let mut command = Command::new(&exe);
            command.args(["--case", &flows.to_string(), output.flag()]);
            let output = command.output().expect("running a case");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let line = String::from_utf8_lossy(&output.stdout);
            results[case].push(
                line.split_whitespace()
                    .map(|field| field.parse().expect("a number"))
                    .collect(),
            );
        }
    }
    println!(
        "the agent's per-drain pipeline (translate, classify, records with identities from 5,000 pods, aggregates, output none or JSON to /dev/null, learner off), medians of {rounds} interleaved rounds:"
    );
    for (case, &(flows, output)) in cases.iter().enumerate() {
        let field = |index: usize| median(results[case].iter().map(|row| row[index]).collect());
        let per_flow = |index: usize| field(index) / flows as f64;
        println!(
            "  {flows:>9} flows{}: first drain {:.3} µs/flow ({:.0} ms; CPU {:.3} µs/flow), next drain {:.3} µs/flow (CPU {:.3}); merging the drained slots {:.3} µs/flow; {:.0} records, {:.0} aggregates; peak RSS {:.0} MiB (idle {:.0} MiB)",
            output.label(),
            per_flow(4),
            field(4) / 1e3,
            per_flow(7),
            per_flow(8),
            per_flow(9),
            per_flow(3),
            field(1),
            field(2),
            field(6) / 1024.0,
            field(5) / 1024.0,
        );
    }
}
