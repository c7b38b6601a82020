//! What names from DNS cost (run as root: `cargo bench -p flow-agent --bench
//! dns`, or `cargo xtask bench`):
//!
//! - the classifier's per-packet cost on a packet that is not DNS, with DNS
//!   copying off (the verifier prunes the check: the cost before DNS existed)
//!   and on, interleaved in one run, through `BPF_PROG_TEST_RUN`; and the cost
//!   of a DNS answer it copies;
//! - DNS answers per second read from copied frames into the name cache;
//! - resident memory per 100,000 names held.
//!
//! Figures are printed, never asserted.
#![expect(clippy::unwrap_used, reason = "a benchmark aborts on failure")]

use std::{net::Ipv4Addr, time::Instant};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use flow_agent::{
    datapath::{Datapath, DatapathConfig, DnsCopySettings, DnsFrameRef},
    names::Names,
};
use flow_common::{Direction, DnsCopy};
use flow_dns::{NameCache, NameCacheConfig, Resolved};

const ROUNDS: usize = 15;

fn name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
}

/// A response for `qname`: a CNAME to a CDN name, then its A record.
fn answer(qname: &str, address: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
    name(&mut out, qname);
    out.extend([0, 1, 0, 1]);
    name(&mut out, qname);
    let mut target = Vec::new();
    name(&mut target, "edge.cdn.example");
    out.extend([0, 5, 0, 1, 0, 0, 1, 0x2c, 0, target.len() as u8]);
    out.extend(&target);
    out.extend(target);
    out.extend([0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    out.extend(address);
    out
}

/// An Ethernet/IPv4/UDP frame from `source_port` to 40000 carrying `payload`.
fn udp_frame(source_port: u16, to: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    frame.extend([0x45, 0]);
    frame.extend(total.to_be_bytes());
    frame.extend([0, 0, 0x40, 0, 64, 17, 0, 0, 10, 96, 0, 10]);
    frame.extend(to);
    frame.extend(source_port.to_be_bytes());
    frame.extend(40_000_u16.to_be_bytes());
    frame.extend((8 + payload.len() as u16).to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn run(program: &SchedClassifier, frame: &[u8], repeat: u32) -> f64 {
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .unwrap()
        .duration
        .as_nanos() as f64
}

fn load(copy: DnsCopy) -> Datapath {
    Datapath::load(&DatapathConfig {
        map_entries: 4096,
        dns: DnsCopySettings {
            copy,
            ring_bytes: 16 << 20,
            bytes_per_second: u32::MAX,
        },
        ..DatapathConfig::default()
    })
    .unwrap()
}

fn classifier_cost() {
    const REPEAT: u32 = 200_000;
    const ANSWER_REPEAT: u32 = 2_000;
    let mut off = load(DnsCopy::Off);
    let mut on = load(DnsCopy::Answers);
    let other = udp_frame(40_001, [10, 1, 0, 2], &[7; 64]);
    let dns = udp_frame(
        53,
        [10, 1, 0, 2],
        &answer("api.partner.example", [203, 0, 113, 7]),
    );
    let (mut off_runs, mut on_runs, mut answer_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off_runs.push(run(
            off.classifier_mut(Direction::Egress).unwrap(),
            &other,
            REPEAT,
        ));
        on_runs.push(run(
            on.classifier_mut(Direction::Egress).unwrap(),
            &other,
            REPEAT,
        ));
        answer_runs.push(run(
            on.classifier_mut(Direction::Egress).unwrap(),
            &dns,
            ANSWER_REPEAT,
        ));
        on.read_dns_frames(|_| {});
    }
    let (off_ns, on_ns) = (median(off_runs), median(on_runs));
    println!("classifier, existing UDP flow that is not DNS (median of {ROUNDS} x {REPEAT}):");
    println!(
        "  DNS copying off: {off_ns:.1} ns; on: {on_ns:.1} ns; ratio {:.3}",
        on_ns / off_ns
    );
    println!(
        "  a DNS answer it copies ({} bytes): {:.1} ns",
        dns.len(),
        median(answer_runs)
    );
}

fn answers_per_second() {
    const FRAMES: usize = 200_000;
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| {
            let pod = [10, 1, (i / 250 % 250) as u8, (i % 250) as u8];
            let address = [203, 0, (i / 256 % 256) as u8, (i % 256) as u8];
            udp_frame(
                53,
                pod,
                &answer(&format!("svc{i}.partner.example"), address),
            )
        })
        .collect();
    let mut rates = Vec::new();
    for _ in 0..5 {
        let mut names = Names::new(NameCacheConfig::default());
        let now = Instant::now();
        let started = Instant::now();
        for frame in &frames {
            names.take(
                DnsFrameRef {
                    time_ns: 0,
                    ifindex: 1,
                    direction: None,
                    frame_len: frame.len(),
                    bytes: frame,
                },
                now,
            );
        }
        rates.push(FRAMES as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "userspace: {:.0} answers/s read into the name cache (median of 5 x {FRAMES}; two names each, 100,000 entries kept)",
        median(rates)
    );
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn memory_per_100k_names() {
    const NAMES: usize = 100_000;
    let now = Instant::now();
    let before = resident_kib();
    let mut cache = NameCache::new(NameCacheConfig {
        max_entries: NAMES,
        ..NameCacheConfig::default()
    });
    for i in 0..NAMES {
        let querier = Ipv4Addr::new(10, 1, (i / 250 % 250) as u8, (i % 250) as u8).into();
        let resolved = Resolved {
            address: Ipv4Addr::new(203, 0, (i / 256 % 256) as u8, (i % 256) as u8).into(),
            ttl: 300,
            names: vec![format!("service-{i}.eastus.partner-api.example")],
        };
        cache.insert(querier, &resolved, now);
    }
    let after = resident_kib();
    assert_eq!(cache.stats().entries, NAMES);
    println!(
        "memory: {:.1} MiB resident per 100,000 names (names of 39-42 characters, one per pod and address)",
        (after - before) as f64 / 1024.0
    );
    std::hint::black_box(cache);
}

fn main() {
    // First, before other parts leave freed memory for the allocator to reuse.
    memory_per_100k_names();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the classifier part needs root; run as root");
    } else {
        classifier_cost();
    }
    answers_per_second();
}
