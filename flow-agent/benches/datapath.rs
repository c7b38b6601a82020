//! Datapath benchmarks (run as root: `cargo bench -p flow-agent --bench datapath`,
//! or `cargo xtask bench` for these plus TCP throughput).
//!
//! - per-packet cost of the classifier through `BPF_PROG_TEST_RUN`, next to an
//!   empty classifier (the floor), for a packet of an existing flow and for a
//!   packet that creates a flow;
//! - how long one drain of 100k flows takes, and the memory it needs (kernel
//!   map memory from fdinfo, process resident memory).
//!
//! Figures are printed, never asserted.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on failure")]

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use flow_agent::datapath::{Datapath, DatapathConfig, TESTKIT_OBJECT};
use flow_common::{Direction, FlowKey, HeldFlows};

fn udp_frame(src_port: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let payload = 64u16;
    let total = 20 + 8 + payload;
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 2, 10, 2, 0, 2]);
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&53u16.to_be_bytes());
    frame.extend_from_slice(&(8 + payload).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.resize(frame.len() + usize::from(payload), 0);
    frame
}

/// Frames of two UDP flows from [`udp_frame`]'s ports that share a held slot
/// (see [`flow_common::HeldFlows`]).
fn one_slot_frames() -> [Vec<u8>; 2] {
    let key = |src_port: u16| FlowKey {
        src_addr: Ipv4Addr::new(10, 1, 0, 2).to_ipv6_mapped().octets(),
        dst_addr: Ipv4Addr::new(10, 2, 0, 2).to_ipv6_mapped().octets(),
        src_port,
        dst_port: 53,
        protocol: 17,
        ..FlowKey::default()
    };
    let first = 60_000;
    let second = (first + 1..)
        .find(|&port| HeldFlows::slot_of(&key(port)) == HeldFlows::slot_of(&key(first)))
        .unwrap();
    [udp_frame(first), udp_frame(second)]
}

/// Average ns per run as the kernel measures it (program only, no syscall).
fn run(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Duration {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .unwrap();
    result.duration
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn per_packet_cost() {
    const REPEAT: u32 = 200_000;
    const ROUNDS: usize = 15;
    const SINGLE_RUNS: u16 = 50_000;
    let mut testkit = Ebpf::load(TESTKIT_OBJECT).unwrap();
    let floor: &mut SchedClassifier = testkit
        .program_mut("pass_through")
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().unwrap();
    let frame = udp_frame(1);

    let mut datapath = Datapath::load(&DatapathConfig {
        map_entries: 131_072,
        ..DatapathConfig::default()
    })
    .unwrap();
    let mut paged = Datapath::load(&DatapathConfig {
        map_entries: 1024,
        paged_reads_only: true,
        ..DatapathConfig::default()
    })
    .unwrap();
    let paged = paged.classifier_mut(Direction::Ingress).unwrap();
    let classifier = datapath.classifier_mut(Direction::Ingress).unwrap();

    // Interleave the two so machine noise hits both alike; report medians.
    let mut floor_runs = Vec::new();
    let mut existing_runs = Vec::new();
    let mut paged_runs = Vec::new();
    for _ in 0..ROUNDS {
        floor_runs.push(run(floor, &frame, REPEAT).as_nanos() as f64);
        existing_runs.push(run(classifier, &frame, REPEAT).as_nanos() as f64);
        paged_runs.push(run(paged, &frame, REPEAT).as_nanos() as f64);
    }
    let (floor_ns, existing_ns, paged_ns) = (
        median(floor_runs),
        median(existing_runs),
        median(paged_runs),
    );
    // One run per packet, each a new flow; and the same for an existing flow, so
    // both carry the same per-run timer overhead.
    let new_flow: Vec<f64> = (2..2 + SINGLE_RUNS)
        .map(|port| run(classifier, &udp_frame(port), 1).as_nanos() as f64)
        .collect();
    let same_flow: Vec<f64> = (0..SINGLE_RUNS)
        .map(|_| run(classifier, &frame, 1).as_nanos() as f64)
        .collect();
    let floor_single: Vec<f64> = (0..SINGLE_RUNS)
        .map(|_| run(floor, &frame, 1).as_nanos() as f64)
        .collect();
    // The held slots' worst case: two flows of one slot taking turns, so
    // that every packet moves the other flow into the map.
    let rivals = one_slot_frames();
    let taking_turns: Vec<f64> = (0..SINGLE_RUNS)
        .map(|index| run(classifier, &rivals[usize::from(index % 2)], 1).as_nanos() as f64)
        .collect();
    println!("per-packet cost (BPF_PROG_TEST_RUN, 110-byte IPv4/UDP frame):");
    println!("  empty classifier, median of {ROUNDS} x repeat {REPEAT}:        {floor_ns:.0} ns");
    println!(
        "  flow-agent, existing flow, median of {ROUNDS} x repeat {REPEAT}: {existing_ns:.0} ns"
    );
    println!(
        "  the same, every header through bpf_skb_load_bytes (paged-data path): {paged_ns:.0} ns"
    );
    println!(
        "  single runs (median of {SINGLE_RUNS}): empty {:.0} ns, existing flow {:.0} ns, new flow {:.0} ns,",
        median(floor_single),
        median(same_flow),
        median(new_flow)
    );
    println!(
        "    two existing flows of one held slot taking turns (each packet moves the other to the map) {:.0} ns",
        median(taking_turns)
    );
}

fn kernel_map_bytes() -> u64 {
    // Sum "memlock:" over this process's BPF map file descriptors.
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        if let Some(line) = info.lines().find(|line| line.starts_with("memlock:")) {
            total += line[8..].trim().parse::<u64>().unwrap_or(0);
        }
    }
    total
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn drain_100k() {
    const FLOWS: u32 = 100_000;
    let before_kib = resident_kib();
    let before_map = kernel_map_bytes();
    let mut datapath = Datapath::load(&DatapathConfig {
        map_entries: 131_072,
        ..DatapathConfig::default()
    })
    .unwrap();
    let loaded_kib = resident_kib();
    let loaded_map = kernel_map_bytes();
    let mut durations = Vec::new();
    for round in 0..3 {
        insert_flows(&mut datapath, FLOWS);
        let full_map = kernel_map_bytes();
        let started = Instant::now();
        let drained = datapath.drain().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(drained.len(), FLOWS as usize, "every flow drained");
        let samples = drained.into_samples();
        durations.push(elapsed);
        if round == 0 {
            println!("drain of {FLOWS} flows:");
            println!(
                "  kernel map memory: {:.1} MiB empty, {:.1} MiB with {FLOWS} flows (both epochs' maps, {} CPUs)",
                (loaded_map - before_map) as f64 / (1 << 20) as f64,
                (full_map - before_map) as f64 / (1 << 20) as f64,
                aya::util::nr_cpus().unwrap()
            );
            println!(
                "  resident memory: {} KiB before load, {} KiB loaded, {} KiB holding {} drained samples",
                before_kib,
                loaded_kib,
                resident_kib(),
                samples.len()
            );
        }
    }
    println!(
        "  drain time (switch epoch, RCU wait, batched lookup-and-delete, merge): {}",
        durations
            .iter()
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Inserts `count` flows through the ingress classifier (one run each).
fn insert_flows(datapath: &mut Datapath, count: u32) {
    let classifier = datapath.classifier_mut(Direction::Ingress).unwrap();
    for flow in 0..count {
        let mut frame = udp_frame((flow % 60_000) as u16 + 1);
        // Vary the destination address too, to get past 65535 distinct ports.
        frame[33] = (flow / 60_000) as u8 + 2;
        run(classifier, &frame, 1);
    }
}

/// What a drain of an almost empty map (two flows) costs, whatever the map's
/// capacity and whatever the interval before: after an idle interval, and
/// right after an interval of 100k flows (whose map the next drain walks
/// again). Medians of 5 rounds.
/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Wall time includes one RCU grace period, during which the drain sleeps:
/// its CPU time is what it costs the node.
fn almost_empty_drain() {
    println!("drain of an almost empty map (2 flows), median of 5, wall time (CPU time):");
    for capacity in [65_536, 1_048_576] {
        let mut datapath = Datapath::load(&DatapathConfig {
            map_entries: capacity,
            ..DatapathConfig::default()
        })
        .unwrap();
        let mut times: [Vec<f64>; 4] = Default::default();
        for _ in 0..5 {
            for (busy, wall, cpu) in [(0, 0, 1), (100_000, 2, 3)] {
                insert_flows(&mut datapath, busy);
                datapath.drain().unwrap();
                insert_flows(&mut datapath, 2);
                let (started, cpu_started) = (Instant::now(), thread_cpu_time());
                let drained = datapath.drain().unwrap();
                times[cpu].push((thread_cpu_time() - cpu_started).as_secs_f64() * 1e3);
                times[wall].push(started.elapsed().as_secs_f64() * 1e3);
                assert_eq!(drained.len(), 2, "both flows drained");
            }
        }
        let [idle, idle_cpu, busy, busy_cpu] = times.map(median);
        println!(
            "  map of {capacity} entries: {idle:.1} ms ({idle_cpu:.2} ms) after an idle interval, {busy:.1} ms ({busy_cpu:.2} ms) after 100000 flows"
        );
    }
}

/// Loads the programs as the agent does and pins `flow_ingress` at `path` (a
/// bpffs file), for harnesses outside the project (NetObserv's side by side:
/// `cargo xtask bench --peer-netobserv`). The pin keeps the program and its
/// maps alive after this process exits; removing it frees them.
fn pin_ingress(path: &str) {
    let mut datapath = Datapath::load(&DatapathConfig {
        map_entries: 131_072,
        ..DatapathConfig::default()
    })
    .unwrap();
    let classifier = datapath.classifier_mut(Direction::Ingress).unwrap();
    classifier.pin(path).unwrap();
    println!("pinned flow_ingress at {path}");
}

/// NetObserv's TC ingress program from an object the peer harness built,
/// configured as that harness configures it: its agent's default globals
/// (sampling off, every optional feature off) and map sizes, but a flow map
/// of `capacity` entries. The object pins its maps by name, so they go to
/// `pins`, a bpffs directory the caller removes.
fn load_peer(object: &str, capacity: u32, pins: &Path) -> Ebpf {
    let page = 4096;
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(pins)
        .map_max_entries("aggregated_flows", capacity)
        .override_global("dns_port", &53u16, true)
        .override_global("network_events_monitoring_groupid", &10u8, true);
    for map in [
        "aggregated_flows_dns",
        "aggregated_flows_network_events",
        "aggregated_flows_pkt_drop",
        "aggregated_flows_xlat",
        "additional_flow_metrics",
        "dns_flows",
        "filter_map",
        "peer_filter_map",
        "ipsec_ingress_map",
        "ipsec_egress_map",
    ] {
        loader.map_max_entries(map, 1);
    }
    for ring in ["direct_flows", "ssl_data_event_map", "packet_record"] {
        loader.map_max_entries(ring, page);
    }
    let mut peer = loader.load_file(object).unwrap();
    let program: &mut SchedClassifier = peer
        .program_mut("tc_ingress_flow_parse")
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    peer
}

/// Median ns of single runs of (new flow, existing flow) for flow-agent and
/// the peer, interleaved packet by packet, and of the empty program.
struct NewFlowRuns {
    ours: (f64, f64),
    peer: (f64, f64),
    floor: f64,
}

fn new_flow_runs(object: &str, ours_capacity: u32, peer_capacity: u32) -> NewFlowRuns {
    // Below either map's capacity, so every insert succeeds.
    const FLOWS: u16 = 4000;
    let pins =
        Path::new("/sys/fs/bpf").join(format!("flow-agent-bench-peer-{}", std::process::id()));
    std::fs::create_dir_all(&pins).unwrap();
    let mut peer = load_peer(object, peer_capacity, &pins);
    let peer: &mut SchedClassifier = peer
        .program_mut("tc_ingress_flow_parse")
        .unwrap()
        .try_into()
        .unwrap();
    let mut datapath = Datapath::load(&DatapathConfig {
        map_entries: ours_capacity,
        ..DatapathConfig::default()
    })
    .unwrap();
    let ours = datapath.classifier_mut(Direction::Ingress).unwrap();
    let mut testkit = Ebpf::load(TESTKIT_OBJECT).unwrap();
    let floor: &mut SchedClassifier = testkit
        .program_mut("pass_through")
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().unwrap();

    let existing = udp_frame(1);
    let mut runs: [Vec<f64>; 5] = Default::default();
    for flow in 0..FLOWS {
        let frame = udp_frame(10_000 + flow);
        for (times, program, frame) in [
            (0, &*ours, &frame),
            (1, &*ours, &existing),
            (2, &*peer, &frame),
            (3, &*peer, &existing),
            (4, &*floor, &existing),
        ] {
            runs[times].push(run(program, frame, 1).as_nanos() as f64);
        }
    }
    std::fs::remove_dir_all(&pins).unwrap();
    let [ours_new, ours_old, peer_new, peer_old, floor] = runs.map(median);
    NewFlowRuns {
        ours: (ours_new, ours_old),
        peer: (peer_new, peer_old),
        floor,
    }
}

/// The cost of a packet that creates a flow, beside NetObserv's program: each
/// with its agent's default flow map, then both with ours.
fn new_flow_beside_peer(object: &str) {
    let ours_default = DatapathConfig::default().map_entries;
    println!(
        "new flow beside NetObserv (single runs of 4000 new IPv4/UDP flows, interleaved, medians above an empty program):"
    );
    for (label, peer_capacity) in [("its default", 5000), ("ours", ours_default)] {
        let NewFlowRuns { ours, peer, floor } = new_flow_runs(object, ours_default, peer_capacity);
        println!(
            "  flow maps of {ours_default} entries (flow-agent) and {peer_capacity} ({label}, NetObserv); empty program {floor:.0} ns:"
        );
        println!(
            "    flow-agent: new flow {:.0} ns, existing flow {:.0} ns",
            ours.0 - floor,
            ours.1 - floor
        );
        println!(
            "    NetObserv tc_ingress_flow_parse: new flow {:.0} ns, existing flow {:.0} ns",
            peer.0 - floor,
            peer.1 - floor
        );
        println!(
            "    new-flow ratio flow-agent / NetObserv: {:.2}",
            (ours.0 - floor) / (peer.0 - floor)
        );
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping datapath benchmarks: needs root");
        return;
    }
    if let Some(path) = std::env::var_os("FLOW_AGENT_BENCH_PIN") {
        pin_ingress(&path.to_string_lossy());
        return;
    }
    if let Some(object) = std::env::var_os("FLOW_AGENT_BENCH_PEER_OBJECT") {
        new_flow_beside_peer(&object.to_string_lossy());
    }
    per_packet_cost();
    drain_100k();
    almost_empty_drain();
}
