//! Operating the agent: the Prometheus endpoint and the health probes
//! scraped from a running agent, with values checked against known traffic.
//!
//! Needs root; skipped with a message otherwise.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use common::netns::Agent;
use flow_lab::Node;
use flow_model::record::FlowRecord;

const METRICS: &str = "127.0.0.1:9090";

/// `GET path` on the node's metrics endpoint: status and body.
fn get(node: &Node, path: &str) -> (u16, String) {
    let address = METRICS.parse().unwrap();
    common::prometheus::http_get(&node.netns, address, path)
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
    // The same in the metrics; without identity, identity is synced.
    let (_, metrics) = get(&node, "/metrics");
    assert_eq!(value(&metrics, "flowagent_ready"), 0.0);
    assert_eq!(value(&metrics, "flowagent_identity_synced"), 1.0);
    assert_eq!(value(&metrics, "flowagent_flush_interval_seconds"), 0.2);

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
    let deadline = Instant::now() + Duration::from_secs(30);
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
        assert!(
            Instant::now() < deadline,
            "flowagent_flow_records_total {} never matched the {} records printed",
            value(&metrics, "flowagent_flow_records_total"),
            after.len()
        );
        std::thread::sleep(Duration::from_millis(30));
    };
    let packets: u64 = records.iter().map(|record| record.packets).sum();
    let bytes: u64 = records.iter().map(|record| record.bytes).sum();
    assert_eq!(value(&metrics, "flowagent_packets_total"), packets as f64);
    assert_eq!(value(&metrics, "flowagent_bytes_total"), bytes as f64);
    assert!(packets >= 10 && bytes >= 1_280);
    assert_eq!(value(&metrics, "flowagent_interfaces_attached"), 2.0);
    assert_eq!(value(&metrics, "flowagent_ready"), 1.0);
    assert_eq!(
        value(
            &metrics,
            "flowagent_build_info{version=\"0.1.0\",node=\"test-node\"}"
        ),
        1.0
    );
    assert!(value(&metrics, "flowagent_drain_duration_seconds_count") >= 2.0);
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

/// A bpffs instance mounted on a temporary directory, unmounted on drop.
struct Bpffs {
    directory: tempfile::TempDir,
}

impl Bpffs {
    fn mount() -> Self {
        let directory = tempfile::tempdir().unwrap();
        flow_lab::run(
            "mount",
            &["-t", "bpf", "bpf", directory.path().to_str().unwrap()],
        )
        .unwrap();
        Self { directory }
    }

    fn pin_dir(&self) -> String {
        self.directory
            .path()
            .join("flow-agent")
            .to_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = flow_lab::run("umount", &[self.directory.path().to_str().unwrap()]);
    }
}

/// Sends `count` 100-byte datagrams from pod 0's `socket` port to pod 1.
fn send(node: &Node, source_port: u16, count: usize) {
    let target = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 7000);
    node.pods[0]
        .netns
        .run(move || {
            let socket = UdpSocket::bind(("0.0.0.0", source_port)).unwrap();
            for _ in 0..count {
                socket.send_to(&[1u8; 100], target).unwrap();
            }
        })
        .unwrap();
}

fn totals(records: &[FlowRecord], source_port: u16) -> (u64, u64) {
    records
        .iter()
        .filter(|record| record.source.port == source_port && record.destination.port == 7000)
        .fold((0, 0), |(packets, bytes), record| {
            (packets + record.packets, bytes + record.bytes)
        })
}

/// Where [`plant_leftover`] writes.
#[derive(Clone, Copy)]
enum Leftover {
    /// The inactive flow map.
    Map,
    /// The inactive held flows, in the key's slot.
    Held,
}

/// Writes what an agent killed in the middle of a drain leaves behind: a flow
/// of pod 0's `source_port` to pod 1 in the inactive pinned map or held
/// flows, stamped with the previous epoch, `per_cpu` datagrams of 128 bytes
/// on every CPU. Returns the planted (packets, bytes).
fn plant_leftover(
    node: &Node,
    pin_dir: &str,
    source_port: u16,
    per_cpu: u64,
    place: Leftover,
) -> (u64, u64) {
    use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
    use flow_common::{DatapathControl, FlowEvent, FlowKey, FlowStats, HeldFlows};

    let maps = Path::new(pin_dir).join("maps");
    let control: Array<MapData, DatapathControl> = Array::try_from(Map::Array(
        MapData::from_pin(maps.join(flow_common::CONTROL)).unwrap(),
    ))
    .unwrap();
    let DatapathControl { epoch, .. } = control.get(&0, 0).unwrap();
    let previous = epoch.wrapping_sub(1);
    let interface = std::ffi::CString::new(node.pods[0].host_interface.clone()).unwrap();
    // SAFETY: a valid C string.
    let ifindex = node
        .netns
        .run(move || unsafe { libc::if_nametoindex(interface.as_ptr()) })
        .unwrap();
    assert_ne!(ifindex, 0);
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    let now = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    let key = FlowKey {
        src_addr: node.pods[0].ipv4.to_ipv6_mapped().octets(),
        dst_addr: node.pods[1].ipv4.to_ipv6_mapped().octets(),
        src_port: source_port,
        dst_port: 7000,
        protocol: 17,
        ..FlowKey::default()
    };
    let slot = FlowStats {
        packets: per_cpu,
        bytes: per_cpu * 128,
        first_seen_ns: now,
        last_seen_ns: now,
        epoch: previous,
        first_ifindex: ifindex,
        ..FlowStats::default()
    };
    let cpus = aya::util::nr_cpus().unwrap();
    match place {
        Leftover::Map => {
            let name = if previous & 1 == 0 {
                flow_common::FLOWS_EVEN
            } else {
                flow_common::FLOWS_ODD
            };
            let mut flows: PerCpuHashMap<MapData, FlowKey, FlowStats> = PerCpuHashMap::try_from(
                Map::PerCpuHashMap(MapData::from_pin(maps.join(name)).unwrap()),
            )
            .unwrap();
            flows
                .insert(key, PerCpuValues::try_from(vec![slot; cpus]).unwrap(), 0)
                .unwrap();
        }
        Leftover::Held => {
            let mut held: PerCpuArray<MapData, HeldFlows> = PerCpuArray::try_from(
                Map::PerCpuArray(MapData::from_pin(maps.join(flow_common::HELD_FLOWS)).unwrap()),
            )
            .unwrap();
            let mut flows = HeldFlows::default();
            flows.flows[HeldFlows::slot_of(&key)] = FlowEvent { key, stats: slot };
            held.set(
                previous & 1,
                PerCpuValues::try_from(vec![flows; cpus]).unwrap(),
                0,
            )
            .unwrap();
        }
    }
    let cpus = cpus as u64;
    (per_cpu * cpus, per_cpu * 128 * cpus)
}

fn restart_loses_nothing(mode: &str) {
    let node = Node::new(2).unwrap();
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let glob = node.glob();
    let args = [
        "-i",
        glob.as_str(),
        "--flush-interval",
        "200ms",
        "--attach-mode",
        mode,
        "--pin-dir",
        pin_dir.as_str(),
    ];
    let port = 41_000;

    // Agent A counts the first 100, then stops; its programs stay attached.
    let agent = Agent::start(&node.netns, &args);
    send(&node, port, 100);
    wait_until("agent A's records", || {
        totals(&agent.records(), port).0 == 100
    });
    let first = agent.stop();
    assert!(first.success);
    assert!(
        first
            .stderr
            .iter()
            .any(|line| line.contains("programs stay attached")),
        "{:?}",
        first.stderr
    );

    // 150 more while no agent runs.
    send(&node, port, 150);

    // Agent B takes over the pinned maps and programs and reports them, then
    // 50 more of its own.
    let agent = Agent::start(&node.netns, &args);
    send(&node, port, 50);
    wait_until("agent B's records", || {
        totals(&agent.records(), port).0 == 200
    });
    let second = agent.stop();
    assert!(second.success);
    let (a, b) = (totals(&first.records, port), totals(&second.records, port));
    assert_eq!(
        (a.0 + b.0, a.1 + b.1),
        (300, 300 * 128),
        "A {a:?}, B {b:?}: exactly once across the restart"
    );

    // Agent C is killed with SIGKILL between drains: the next start finds
    // the pins consistent and reports everything C had not.
    let slow: Vec<&str> = args
        .iter()
        .map(|arg| if *arg == "200ms" { "1h" } else { arg })
        .collect();
    let agent = Agent::start(&node.netns, &slow);
    send(&node, port, 30);
    agent.kill();
    let agent = Agent::start(&node.netns, &args);
    wait_until("agent D's records", || {
        totals(&agent.records(), port).0 == 30
    });
    let fourth = agent.stop();
    assert_eq!(totals(&fourth.records, port), (30, 30 * 128));

    // An agent killed in the middle of a drain leaves the old epoch's slots
    // in the map and held flows that become the active ones at the next
    // switch. Plant such leftovers: the next agent reports them instead of
    // letting the programs reset them.
    let (leftover_port, held_port) = (41_001, 41_002);
    let planted = plant_leftover(&node, &pin_dir, leftover_port, 5, Leftover::Map);
    let planted_held = plant_leftover(&node, &pin_dir, held_port, 4, Leftover::Held);
    let agent = Agent::start(&node.netns, &args);
    send(&node, leftover_port, 3);
    send(&node, held_port, 2);
    wait_until("agent E's records", || {
        let records = agent.records();
        totals(&records, leftover_port).0 == planted.0 + 3
            && totals(&records, held_port).0 == planted_held.0 + 2
    });
    let fifth = agent.stop();
    assert_eq!(
        totals(&fifth.records, leftover_port),
        (planted.0 + 3, planted.1 + 3 * 128)
    );
    assert_eq!(
        totals(&fifth.records, held_port),
        (planted_held.0 + 2, planted_held.1 + 2 * 128)
    );

    // Cleanup removes the pins and the programs: nothing counts any more.
    let cleanup = common::cli::cli(&node, &["cleanup", "--pin-dir", &pin_dir, "-i", &glob]);
    assert!(cleanup.success, "{:?}", cleanup.stderr);
    assert!(
        cleanup.stdout[0].starts_with("removed "),
        "{:?}",
        cleanup.stdout
    );
    assert!(!Path::new(&pin_dir).exists());
    let tc = flow_lab::run_in(
        &node.netns.name,
        "tc",
        &[
            "filter",
            "show",
            "dev",
            &node.pods[0].host_interface,
            "ingress",
        ],
    )
    .unwrap();
    assert!(!tc.contains("flow_ingress"), "{tc}");
    let again = common::cli::cli(&node, &["cleanup", "--pin-dir", &pin_dir, "-i", &glob]);
    assert!(again.success, "cleanup twice is fine: {:?}", again.stderr);
}

#[test]
fn restarts_lose_nothing_with_tcx_links_pinned() {
    require_root!();
    restart_loses_nothing("tcx");
}

#[test]
fn restarts_lose_nothing_with_clsact_filters() {
    require_root!();
    restart_loses_nothing("tc");
}

/// Switching `--attach-mode` between restarts with pins: the programs of the
/// other mode are released, so no packet is counted twice.
#[test]
fn switching_attach_mode_across_a_pinned_restart_counts_once() {
    require_root!();
    let node = Node::new(2).unwrap();
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let glob = node.glob();
    let args = |mode: &'static str| {
        vec![
            "-i".to_owned(),
            glob.clone(),
            "--flush-interval".to_owned(),
            "200ms".to_owned(),
            "--attach-mode".to_owned(),
            mode.to_owned(),
            "--pin-dir".to_owned(),
            pin_dir.clone(),
        ]
    };
    let filters = || {
        flow_lab::run_in(
            &node.netns.name,
            "tc",
            &[
                "filter",
                "show",
                "dev",
                &node.pods[0].host_interface,
                "ingress",
            ],
        )
        .unwrap()
    };
    for (round, mode) in ["tc", "tcx", "tc"].into_iter().enumerate() {
        let args = args(mode);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = Agent::start(&node.netns, &args);
        let port = 42_000 + round as u16;
        send(&node, port, 40);
        wait_until("the round's records", || {
            totals(&agent.records(), port).0 >= 40
        });
        let stopped = agent.stop();
        assert!(stopped.success);
        assert_eq!(
            totals(&stopped.records, port),
            (40, 40 * 128),
            "{mode}: counted once"
        );
        let shown = filters();
        assert_eq!(
            shown.contains("flow_ingress"),
            mode == "tc",
            "round {round} ({mode}): {shown}"
        );
    }
    let cleanup = common::cli::cli(&node, &["cleanup", "--pin-dir", &pin_dir, "-i", &glob]);
    assert!(cleanup.success, "{:?}", cleanup.stderr);
}

/// One agent per pin directory: a second one, or a cleanup, is refused while
/// the first runs (two drains would race on the same epoch).
#[test]
fn a_pin_directory_in_use_is_refused_to_a_second_agent_and_to_cleanup() {
    require_root!();
    let node = Node::new(1).unwrap();
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let glob = node.glob();
    let args = ["-i", glob.as_str(), "--pin-dir", pin_dir.as_str()];
    let agent = Agent::start(&node.netns, &args);
    let mut second = vec!["run"];
    second.extend_from_slice(&args);
    for refused in [
        common::cli::cli(&node, &second),
        common::cli::cli(&node, &["cleanup", "--pin-dir", &pin_dir, "-i", &glob]),
    ] {
        assert!(!refused.success);
        let stderr = refused.stderr.join("\n");
        assert!(
            stderr.contains("is in use by another flow-agent on this node"),
            "{stderr}"
        );
    }
    assert!(agent.stop().success);
    let cleanup = common::cli::cli(&node, &["cleanup", "--pin-dir", &pin_dir, "-i", &glob]);
    assert!(cleanup.success, "{:?}", cleanup.stderr);
    assert!(!Path::new(&pin_dir).exists());
}

/// An agent from before the bit array kept every counted interface in the
/// hash map. Taking over its pins, this agent counts each packet once, moves
/// the set into the bit array and leaves the hash map without the keys it no
/// longer reads (the stale one included).
#[test]
fn an_earlier_agents_counted_set_is_taken_over_into_the_bit_array() {
    use aya::maps::{Array, HashMap, Map, MapData};

    require_root!();
    let node = Node::new(2).unwrap();
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let maps = Path::new(&pin_dir).join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let pods: Vec<u32> = node
        .pods
        .iter()
        .map(|pod| node.ifindex(&pod.host_interface).unwrap())
        .collect();
    let mut earlier = HashMap::<MapData, u32, u8>::create(16_384, 0).unwrap();
    for &index in pods.iter().chain(&[9_999]) {
        earlier.insert(index, 1, 0).unwrap();
    }
    earlier
        .pin(maps.join(flow_common::COUNTED_INTERFACES))
        .unwrap();

    let glob = node.glob();
    let agent = Agent::start(
        &node.netns,
        &[
            "-i",
            &glob,
            "--flush-interval",
            "200ms",
            "--pin-dir",
            &pin_dir,
        ],
    );
    send(&node, 43_000, 40);
    wait_until("the records", || totals(&agent.records(), 43_000).0 >= 40);
    let stopped = agent.stop();
    assert!(stopped.success);
    assert_eq!(totals(&stopped.records, 43_000), (40, 40 * 128));

    let high: HashMap<MapData, u32, u8> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(maps.join(flow_common::COUNTED_INTERFACES)).unwrap(),
    ))
    .unwrap();
    assert_eq!(high.keys().count(), 0);
    let bits: Array<MapData, u64> = Array::try_from(Map::Array(
        MapData::from_pin(maps.join(flow_common::COUNTED_BITS)).unwrap(),
    ))
    .unwrap();
    let mut set = Vec::new();
    for word in 0..flow_common::COUNTED_BITS_WORDS {
        let value = bits.get(&word, 0).unwrap();
        set.extend(
            (0..64)
                .filter(|bit| value & (1 << bit) != 0)
                .map(|bit| word * 64 + bit),
        );
    }
    assert_eq!(set, pods);
    let cleanup = common::cli::cli(&node, &["cleanup", "--pin-dir", &pin_dir, "-i", &glob]);
    assert!(cleanup.success, "{:?}", cleanup.stderr);
}

/// A pinned map of another shape (here a counter array from an agent that
/// kept fewer counters) is refused with the cleanup hint, not half-used.
#[test]
fn a_pinned_counter_array_of_another_length_is_refused() {
    require_root!();
    let node = Node::new(1).unwrap();
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.pin_dir();
    let maps = Path::new(&pin_dir).join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    aya::maps::PerCpuArray::<aya::maps::MapData, u64>::create(4, 0)
        .unwrap()
        .pin(maps.join(flow_common::COUNTERS))
        .unwrap();
    let glob = node.glob();
    let refused = common::cli::cli(&node, &["run", "-i", &glob, "--pin-dir", &pin_dir]);
    assert!(!refused.success);
    let stderr = refused.stderr.join("\n");
    assert!(
        stderr.contains("4 counters pinned, this agent keeps 12")
            && stderr.contains("flow-agent cleanup --pin-dir"),
        "{stderr}"
    );
}
