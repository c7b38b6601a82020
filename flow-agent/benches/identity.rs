//! Identity cache under churn: 10,000 pods created and deleted (addresses
//! reused from a pool of 2,048), with a lookup load, on a simulated clock.
//! Prints sizes, memory and per-operation times; asserts nothing.
//!
//! `cargo bench -p flow-agent --bench identity` (no root needed).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant, SystemTime},
};

use flow_model::identity::{
    CacheEvent, IdentityCache, IdentityConfig, Object, ObjectKey, ObjectKind,
    model::{OwnerRef, PodInfo},
};

const PODS: u32 = 10_000;
const POOL: u32 = 2_048;
/// A pod is created every 100 ms and lives 60 s: about 600 alive at once.
const CREATE_EVERY: Duration = Duration::from_millis(100);
const LIFETIME: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(120);

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn address(index: u32) -> IpAddr {
    let slot = index % POOL;
    IpAddr::V4(Ipv4Addr::new(10, 1, (slot / 256) as u8, (slot % 256) as u8))
}

fn pod(index: u32, since: SystemTime) -> Object {
    let deployment = format!("app-{}", index % 50);
    Object::Pod(PodInfo {
        namespace: format!("tenant-{}", index % 20),
        name: format!("{deployment}-5d8f9c-{index:05}"),
        uid: format!("uid-{index}"),
        ips: vec![address(index)],
        labels: BTreeMap::from([
            ("app".to_owned(), deployment.clone()),
            ("pod-template-hash".to_owned(), "5d8f9c".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]),
        owner: Some(OwnerRef {
            kind: "ReplicaSet".to_owned(),
            name: format!("{deployment}-5d8f9c"),
        }),
        node: Some("node-a".to_owned()),
        host_network: false,
        since: Some(since),
        terminal: false,
        finished_at: None,
        ports: Vec::new(),
    })
}

fn main() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut cache = IdentityCache::new(IdentityConfig {
        tenant_label: "tenant".to_owned(),
        node_name: "node-a".to_owned(),
        local_addresses: Vec::new(),
        grace: GRACE,
        platform_namespaces: flow_model::identity::platform_namespaces([]),
    });
    let rss_start = resident_kib();
    let (mut applies, mut apply_time) = (0u64, Duration::ZERO);
    let (mut lookups, mut lookup_time) = (0u64, Duration::ZERO);
    let mut peak = cache.stats();
    let mut peak_rss = rss_start;
    let mut now = start;
    let mut next_pod = 0u32;
    let mut deleted = 0u32;
    let end = start + CREATE_EVERY * PODS + LIFETIME;
    while now <= end {
        // Create the pods due now; delete those whose lifetime is over.
        while next_pod < PODS && start + CREATE_EVERY * next_pod <= now {
            let began = Instant::now();
            cache.apply(CacheEvent::Apply(pod(next_pod, now)), now);
            apply_time += began.elapsed();
            applies += 1;
            next_pod += 1;
        }
        while deleted < next_pod && start + CREATE_EVERY * deleted + LIFETIME <= now {
            let began = Instant::now();
            cache.apply(
                CacheEvent::Delete(ObjectKey {
                    kind: ObjectKind::Pod,
                    namespace: format!("tenant-{}", deleted % 20),
                    name: format!("app-{}-5d8f9c-{deleted:05}", deleted % 50),
                }),
                now,
            );
            apply_time += began.elapsed();
            applies += 1;
            deleted += 1;
        }
        // Each simulated second: look up every live address as a drain would, evict.
        if now
            .duration_since(start)
            .unwrap_or_default()
            .subsec_millis()
            == 0
        {
            let began = Instant::now();
            for index in deleted..next_pod {
                std::hint::black_box(cache.identify(address(index), now - Duration::from_secs(1)));
                lookups += 1;
            }
            lookup_time += began.elapsed();
            cache.evict(now);
            let stats = cache.stats();
            if stats.tenures > peak.tenures {
                peak = stats;
            }
            peak_rss = peak_rss.max(resident_kib());
        }
        now += CREATE_EVERY;
    }
    let settled = cache.stats();
    cache.evict(now + GRACE + Duration::from_secs(1));
    let after = cache.stats();
    println!(
        "identity cache, {PODS} pods created and deleted (one every {CREATE_EVERY:?}, living {LIFETIME:?}, {POOL} addresses reused, grace {GRACE:?}):"
    );
    println!(
        "  peak: {} pods known (live and in grace), {} tenures on {} addresses",
        peak.pods, peak.tenures, peak.addresses
    );
    println!(
        "  when the last pod is deleted: {} pods, {} tenures; after the grace period: {} pods, {} tenures",
        settled.pods, settled.tenures, after.pods, after.tenures
    );
    println!(
        "  resident memory: {rss_start} KiB at start, {peak_rss} KiB at peak, {} KiB at the end",
        resident_kib()
    );
    println!(
        "  {:.0} ns per pod event, {:.0} ns per address lookup (pod, workload, labels)",
        apply_time.as_nanos() as f64 / applies as f64,
        lookup_time.as_nanos() as f64 / lookups.max(1) as f64
    );
}
