//! The agent's own observability: Prometheus metrics (OpenMetrics text) and
//! the `/healthz` and `/readyz` probes, served on `--metrics-listen`.
//!
//! Every label has bounded cardinality: datapath counter names, API client
//! names (certificate names, token tenants), the namespaces and tenants of
//! policy violations (the cluster's namespaces, one tenant each), the tenant
//! pairs of learned cross-tenant edges (pairs that talk, at most the square
//! of the tenants), and, only when enabled, workload pairs up to a fixed
//! number of series (the rest fold into `_other_`).

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use flow_common::Counter as DatapathCounter;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use thiserror::Error;

use flow_model::record::FlowRecord;
use flow_policy::{check::ViolationScope, learner::TenantPair};

use crate::{aggregate::AggregateRecord, datapath::DatapathCounters, names::DnsStats};

/// Labels of a series.
type Labels = Vec<(String, String)>;

/// Label value that collects workload pairs beyond the series limit.
pub const OTHER: &str = "_other_";

/// Errors serving metrics.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The address cannot be bound.
    #[error("cannot listen for metrics on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Liveness and readiness, set by the agent, read by the probes.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the event loop's last turn.
    last_turn_ms: AtomicU64,
    attached: AtomicUsize,
    identity_synced: AtomicBool,
    /// The loop must turn at least this often to be live.
    liveness_window: Duration,
}

impl Health {
    /// Health for a loop that turns at least every `flush_interval`.
    pub fn new(flush_interval: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            attached: AtomicUsize::new(0),
            identity_synced: AtomicBool::new(false),
            liveness_window: (3 * flush_interval).max(Duration::from_secs(10)),
        }
    }

    /// The event loop is turning.
    pub fn turned(&self) {
        self.last_turn_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Interfaces currently attached.
    pub fn set_attached(&self, count: usize) {
        self.attached.store(count, Ordering::Relaxed);
    }

    /// Identity has its first complete view (or is not configured).
    pub fn set_identity_synced(&self, synced: bool) {
        self.identity_synced.store(synced, Ordering::Relaxed);
    }

    /// Whether identity has its first complete view: the identity half of
    /// [`Self::readiness`].
    pub fn identity_synced(&self) -> bool {
        self.identity_synced.load(Ordering::Relaxed)
    }

    /// `None` when live, else why not.
    pub fn liveness(&self) -> Option<String> {
        self.liveness_at(Instant::now())
    }

    /// [`Self::liveness`] as seen at `now`.
    fn liveness_at(&self, now: Instant) -> Option<String> {
        let since =
            now.saturating_duration_since(self.started)
                .saturating_sub(Duration::from_millis(
                    self.last_turn_ms.load(Ordering::Relaxed),
                ));
        (since > self.liveness_window).then(|| {
            format!(
                "the event loop has not turned for {}",
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            )
        })
    }

    /// `None` when ready, else why not.
    pub fn readiness(&self) -> Option<String> {
        if let Some(reason) = self.liveness() {
            return Some(reason);
        }
        if self.attached.load(Ordering::Relaxed) == 0 {
            return Some("no interface attached".to_owned());
        }
        if !self.identity_synced() {
            return Some("identity not synced yet".to_owned());
        }
        None
    }
}

/// What one drain reports to the metrics, once its records are counted
/// ([`Metrics::records`]).
#[derive(Debug)]
pub struct DrainReport {
    /// Flows (records) the drain produced.
    pub flows: usize,
    /// Datapath counters after the drain.
    pub counters: DatapathCounters,
    /// Flow map capacity.
    pub map_entries: u32,
    /// How long the drain (map read to records) took.
    pub duration: Duration,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    packets: Counter,
    bytes: Counter,
    records: Counter,
    datapath: Family<Labels, Counter>,
    fill_ratio: Gauge<f64, AtomicU64>,
    drain_seconds: Histogram,
    interfaces: Gauge,
    resident_memory: Gauge,
    identity_pods: Gauge,
    unresolved: Counter,
    conntrack_failures: Counter,
    violations: Family<Labels, Counter>,
    api_lost: Family<Labels, Counter>,
    api_subscribers: Gauge,
    file_dropped: Counter,
    learned_edges: Gauge,
    cross_tenant_edges: Family<Labels, Counter>,
    ready: Gauge,
    identity_synced: Gauge,
    flush_interval: Gauge<f64, AtomicU64>,
    dns: Family<Labels, Counter>,
    dns_names: Gauge,
    pair_bytes: Family<Labels, Counter>,
    pair_packets: Family<Labels, Counter>,
    /// Workload pairs tracked when pair metrics are on, and the limit.
    pairs: Option<Mutex<PairLimit>>,
    /// Counter values already reported, to turn absolute values into increments.
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct PairLimit {
    known: std::collections::HashSet<Labels>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Seen {
    datapath: DatapathCounters,
    api_lost: HashMap<String, u64>,
    file_dropped: u64,
    conntrack_failures: u64,
    dns: BTreeMap<&'static str, u64>,
    violations: BTreeMap<ViolationScope, u64>,
    cross_tenant_edges: BTreeMap<TenantPair, u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds to `family` what each of `totals` (absolute, since start) grew by
/// since `seen`, which then holds them; `labels_of` names a key's series.
fn add_increases<K: Ord + Clone>(
    family: &Family<Labels, Counter>,
    seen: &mut BTreeMap<K, u64>,
    totals: &BTreeMap<K, u64>,
    labels_of: impl Fn(&K) -> Labels,
) {
    for (key, total) in totals {
        let before = seen.insert(key.clone(), *total).unwrap_or(0);
        if *total > before {
            family.get_or_create(&labels_of(key)).inc_by(total - before);
        }
    }
}

impl Metrics {
    /// The metrics of one agent; `workload_pairs` is the number of
    /// workload-pair series to keep (0: pair metrics off).
    pub fn new(node: &str, workload_pairs: usize) -> Self {
        let mut registry = Registry::with_prefix("flowagent");
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&labels(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("node", node),
            ]))
            .set(1);
        registry.register("build_info", "Version and node of this agent", build);
        let metrics = Self {
            packets: Counter::default(),
            bytes: Counter::default(),
            records: Counter::default(),
            datapath: Family::default(),
            fill_ratio: Gauge::default(),
            drain_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            interfaces: Gauge::default(),
            resident_memory: Gauge::default(),
            identity_pods: Gauge::default(),
            unresolved: Counter::default(),
            conntrack_failures: Counter::default(),
            violations: Family::default(),
            api_lost: Family::default(),
            api_subscribers: Gauge::default(),
            file_dropped: Counter::default(),
            learned_edges: Gauge::default(),
            cross_tenant_edges: Family::default(),
            ready: Gauge::default(),
            identity_synced: Gauge::default(),
            flush_interval: Gauge::default(),
            dns: Family::default(),
            dns_names: Gauge::default(),
            pair_bytes: Family::default(),
            pair_packets: Family::default(),
            pairs: (workload_pairs > 0).then(|| {
                Mutex::new(PairLimit {
                    known: std::collections::HashSet::new(),
                    limit: workload_pairs,
                })
            }),
            seen: Mutex::new(Seen::default()),
            registry: Registry::default(),
        };
        let mut metrics = metrics;
        registry.register(
            "packets",
            "Packets in flow records",
            metrics.packets.clone(),
        );
        registry.register(
            "bytes",
            "Bytes (IP datagrams) in flow records",
            metrics.bytes.clone(),
        );
        registry.register(
            "flow_records",
            "Flow records emitted",
            metrics.records.clone(),
        );
        registry.register(
            "datapath_packets",
            "Datapath counters by name: inserted flows, packets that found the map full, failed updates, spilled, lost, not IP, malformed, deduplicated, fragments without ports, DNS frames copied, over budget and lost",
            metrics.datapath.clone(),
        );
        registry.register(
            "dns",
            "DNS frames the datapath copied and what became of them: frames, cut_frames (longer than the copy), malformed_frames, not_udp_or_tcp, tcp_partial_bytes, malformed_messages, queries, responses, unsolicited_records (for names nobody asked for), names_over_message_limit, ttl_zero_answers, and names evicted (full, address_limit), replaced or expired",
            metrics.dns.clone(),
        );
        registry.register(
            "dns_names",
            "Names held: (pod, address, name) entries",
            metrics.dns_names.clone(),
        );
        registry.register(
            "flow_map_fill_ratio",
            "Flows drained at the last drain over the map's capacity",
            metrics.fill_ratio.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Time to drain the maps and make records",
            metrics.drain_seconds.clone(),
        );
        registry.register(
            "interfaces_attached",
            "Interfaces the programs are attached to",
            metrics.interfaces.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent process (VmRSS), read at each scrape",
            prometheus_client::registry::Unit::Bytes,
            metrics.resident_memory.clone(),
        );
        registry.register(
            "identity_pods",
            "Pods in the identity cache (deleted ones in their grace period included)",
            metrics.identity_pods.clone(),
        );
        registry.register(
            "unresolved_endpoints",
            "Record ends no pod, node or Service address explained (world)",
            metrics.unresolved.clone(),
        );
        registry.register(
            "conntrack_lookup_failures",
            "Conntrack lookups of Service connections that failed or timed out: those records keep the Service address",
            metrics.conntrack_failures.clone(),
        );
        registry.register(
            "policy_violations",
            "Request flow records the approved policies would deny (monitor mode), by the namespace and tenant of the workload whose policy denies them (the destination's when its ingress does, else the source's): a connection open over several flush intervals counts once per interval",
            metrics.violations.clone(),
        );
        registry.register(
            "api_lost_records",
            "Records API clients did not receive because they fell behind, by client",
            metrics.api_lost.clone(),
        );
        registry.register(
            "api_subscribers",
            "Following API subscribers",
            metrics.api_subscribers.clone(),
        );
        registry.register(
            "output_file_dropped_records",
            "Records the output file sink dropped",
            metrics.file_dropped.clone(),
        );
        registry.register(
            "learned_edges",
            "Edges in the learned connection graph",
            metrics.learned_edges.clone(),
        );
        registry.register(
            "learned_cross_tenant_edges",
            "Edges between two tenants new to the learned graph when learned, by the client's and the server's tenant",
            metrics.cross_tenant_edges.clone(),
        );
        registry.register(
            "ready",
            "1 when /readyz answers ready (the loop turns, an interface is attached, identity is synced), else 0",
            metrics.ready.clone(),
        );
        registry.register(
            "identity_synced",
            "1 once the identity source has listed every kind (or identity is off or from a file), else 0",
            metrics.identity_synced.clone(),
        );
        registry.register(
            "flush_interval_seconds",
            "The configured flush interval: how often the maps are drained",
            metrics.flush_interval.clone(),
        );
        if metrics.pairs.is_some() {
            registry.register(
                "workload_pair_bytes",
                "Request and reply bytes between workloads, per interval aggregate",
                metrics.pair_bytes.clone(),
            );
            registry.register(
                "workload_pair_packets",
                "Request and reply packets between workloads",
                metrics.pair_packets.clone(),
            );
        }
        metrics.registry = registry;
        metrics
    }

    /// Datapath counters at start (pinned counters carry an earlier agent's
    /// totals): increases are counted from here.
    pub fn baseline(&self, counters: DatapathCounters) {
        lock(&self.seen).datapath = counters;
    }

    /// Counts records, as a drain hands them to the sinks (a large drain
    /// does so in several batches).
    pub fn records(&self, records: &[FlowRecord]) {
        self.records.inc_by(records.len() as u64);
        for record in records {
            self.packets.inc_by(record.packets);
            self.bytes.inc_by(record.bytes);
            for end in [&record.source, &record.destination] {
                if end.identity.kind == Some(flow_model::identity::PeerKind::World) {
                    self.unresolved.inc();
                }
            }
        }
    }

    /// Reports one drain: the map's fill, its duration and the datapath
    /// counters.
    pub fn drain(&self, report: &DrainReport) {
        let DrainReport {
            flows,
            counters,
            map_entries,
            duration,
        } = report;
        self.fill_ratio
            .set(*flows as f64 / f64::from((*map_entries).max(1)));
        self.drain_seconds.observe(duration.as_secs_f64());
        let mut seen = lock(&self.seen);
        for (counter, increase) in counters.increase_since(&seen.datapath) {
            self.datapath
                .get_or_create(&labels(&[("counter", counter_name(counter))]))
                .inc_by(increase);
        }
        seen.datapath = *counters;
    }

    /// Sets the gauges of the agent's state.
    pub fn state(
        &self,
        interfaces: usize,
        identity_pods: usize,
        learned_edges: usize,
        subscribers: u64,
    ) {
        self.interfaces.set(interfaces as i64);
        self.identity_pods.set(identity_pods as i64);
        self.learned_edges.set(learned_edges as i64);
        self.api_subscribers
            .set(i64::try_from(subscribers).unwrap_or(i64::MAX));
    }

    /// Reports absolute loss counts (by API client, and of the file sink).
    pub fn losses(&self, api_lost: &BTreeMap<String, u64>, file_dropped: u64) {
        let mut seen = lock(&self.seen);
        for (client, total) in api_lost {
            let before = seen.api_lost.insert(client.clone(), *total).unwrap_or(0);
            if *total > before {
                self.api_lost
                    .get_or_create(&labels(&[("client", client)]))
                    .inc_by(total - before);
            }
        }
        if file_dropped > seen.file_dropped {
            self.file_dropped.inc_by(file_dropped - seen.file_dropped);
            seen.file_dropped = file_dropped;
        }
    }

    /// Sets the configured flush interval.
    pub fn set_flush_interval(&self, interval: Duration) {
        self.flush_interval.set(interval.as_secs_f64());
    }

    /// Takes the monitor's violations by whose policy denies them (totals
    /// since start).
    pub fn violations(&self, totals: &BTreeMap<ViolationScope, u64>) {
        add_increases(
            &self.violations,
            &mut lock(&self.seen).violations,
            totals,
            |ViolationScope { namespace, tenant }| {
                labels(&[("namespace", namespace), ("tenant", tenant)])
            },
        );
    }

    /// Takes the learner's new cross-tenant edges by tenant pair (totals
    /// since start).
    pub fn cross_tenant_edges(&self, totals: &BTreeMap<TenantPair, u64>) {
        add_increases(
            &self.cross_tenant_edges,
            &mut lock(&self.seen).cross_tenant_edges,
            totals,
            |TenantPair {
                 source,
                 destination,
             }| {
                labels(&[
                    ("source_tenant", source),
                    ("destination_tenant", destination),
                ])
            },
        );
    }

    /// Reads readiness and identity sync from the probes' `health` (at
    /// each scrape: readiness depends on when the loop last turned).
    pub fn health(&self, health: &Health) {
        self.ready.set(i64::from(health.readiness().is_none()));
        self.identity_synced
            .set(i64::from(health.identity_synced()));
    }

    /// Takes the failed conntrack lookups (total since start).
    pub fn conntrack(&self, failures: u64) {
        let mut seen = lock(&self.seen);
        if failures > seen.conntrack_failures {
            self.conntrack_failures
                .inc_by(failures - seen.conntrack_failures);
            seen.conntrack_failures = failures;
        }
    }

    /// Takes the DNS counts (totals since start).
    pub fn dns(&self, stats: &DnsStats) {
        let mut seen = lock(&self.seen);
        for (name, total) in stats.by_name() {
            let before = seen.dns.insert(name, total).unwrap_or(0);
            if total > before {
                self.dns
                    .get_or_create(&labels(&[("event", name)]))
                    .inc_by(total - before);
            }
        }
        self.dns_names.set(stats.cache.entries as i64);
    }

    /// Adds an interval's workload-pair aggregates (when pair metrics are on).
    pub fn aggregates(&self, aggregates: &[AggregateRecord]) {
        let Some(pairs) = &self.pairs else {
            return;
        };
        let mut pairs = lock(pairs);
        for aggregate in aggregates {
            let end = |peer: &crate::aggregate::Peer| {
                (
                    peer.namespace.clone().unwrap_or_default(),
                    peer.workload
                        .as_ref()
                        .map(|workload| format!("{}/{}", workload.kind, workload.name))
                        .or_else(|| peer.kind.map(|kind| kind.as_str().to_owned()))
                        .unwrap_or_default(),
                    peer.tenant.clone().unwrap_or_default(),
                )
            };
            let (source_namespace, source, source_tenant) = end(&aggregate.source);
            let (destination_namespace, destination, destination_tenant) =
                end(&aggregate.destination);
            // A tenant is its namespace's: the tenant labels add no series.
            let mut series = labels(&[
                ("source_namespace", &source_namespace),
                ("source_workload", &source),
                ("source_tenant", &source_tenant),
                ("destination_namespace", &destination_namespace),
                ("destination_workload", &destination),
                ("destination_tenant", &destination_tenant),
            ]);
            if !pairs.known.contains(&series) {
                if pairs.known.len() < pairs.limit {
                    pairs.known.insert(series.clone());
                } else {
                    series = labels(&[
                        ("source_namespace", OTHER),
                        ("source_workload", OTHER),
                        ("source_tenant", OTHER),
                        ("destination_namespace", OTHER),
                        ("destination_workload", OTHER),
                        ("destination_tenant", OTHER),
                    ]);
                }
            }
            self.pair_bytes
                .get_or_create(&series)
                .inc_by(aggregate.bytes + aggregate.reply_bytes);
            self.pair_packets
                .get_or_create(&series)
                .inc_by(aggregate.packets + aggregate.reply_packets);
        }
    }

    /// The OpenMetrics text of every metric, the process's resident memory
    /// read now.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// This process's resident set size, from `VmRSS` in `/proc/self/status`
/// (`None` when that cannot be read: the gauge keeps its last value).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

/// The `VmRSS:  1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1_024)
}

/// The metric label of a datapath counter.
pub fn counter_name(counter: DatapathCounter) -> &'static str {
    match counter {
        DatapathCounter::Inserted => "inserted",
        DatapathCounter::MapFull => "map_full",
        DatapathCounter::UpdateFailed => "update_failed",
        DatapathCounter::Spilled => "spilled",
        DatapathCounter::Lost => "lost",
        DatapathCounter::NotIp => "not_ip",
        DatapathCounter::Malformed => "malformed",
        DatapathCounter::Deduplicated => "deduplicated",
        DatapathCounter::FragmentWithoutPorts => "fragment_without_ports",
        DatapathCounter::DnsCopied => "dns_copied",
        DatapathCounter::DnsOverBudget => "dns_over_budget",
        DatapathCounter::DnsLost => "dns_lost",
    }
}

/// Binds `listen` and returns the server future for `/metrics`, `/healthz`
/// and `/readyz`; it serves until `shutdown` resolves.
pub async fn serve<F: Future<Output = ()> + Send + 'static>(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: F,
) -> Result<impl Future<Output = std::io::Result<()>> + Send + use<F>, MetricsError> {
    use axum::{
        Router,
        http::{StatusCode, header},
        routing::get,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind {
            address: listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    let probe = |reason: Option<String>| match reason {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    };
    let live = Arc::clone(&health);
    let scraped = Arc::clone(&health);
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                let health = Arc::clone(&scraped);
                async move {
                    metrics.health(&health);
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = Arc::clone(&live);
                async move { probe(health.liveness()) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let health = Arc::clone(&health);
                async move { probe(health.readiness()) }
            }),
        );
    tracing::info!(address = %bound, "metrics and health endpoints listening");
    Ok(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    })
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc as StdArc, time::SystemTime};

    use super::*;
    use crate::aggregate::Peer;
    use flow_model::identity::{Identity, PeerKind, Workload};
    use flow_model::record::{Endpoint, Hook, Protocol, Timestamp};

    fn record(packets: u64, bytes: u64, world: bool) -> FlowRecord {
        let time = Timestamp(SystemTime::UNIX_EPOCH);
        let mut destination = Endpoint::new("203.0.113.1".parse().unwrap(), 443);
        if world {
            destination.identity = StdArc::new(Identity {
                kind: Some(PeerKind::World),
                ..Identity::default()
            });
        }
        FlowRecord {
            time,
            first_seen: time,
            source: Endpoint::new("10.0.0.1".parse().unwrap(), 40_000),
            destination,
            protocol: Protocol(6),
            icmp: None,
            packets,
            bytes,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "n".into(),
            cross_tenant: None,
            new_connection: false,
            violation: world,
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn drains_add_up_and_absolute_counters_become_increments() {
        let metrics = Metrics::new("node-a", 0);
        let mut counters = DatapathCounters::default();
        counters.0[DatapathCounter::MapFull as usize] = 3;
        let records = [record(5, 500, false), record(2, 120, true)];
        metrics.records(&records);
        metrics.drain(&DrainReport {
            flows: records.len(),
            counters,
            map_entries: 4,
            duration: Duration::from_millis(3),
        });
        counters.0[DatapathCounter::MapFull as usize] = 10;
        metrics.records(&records[..1]);
        metrics.drain(&DrainReport {
            flows: 1,
            counters,
            map_entries: 4,
            duration: Duration::from_millis(300),
        });
        let mut api = BTreeMap::from([("team-acme".to_owned(), 4)]);
        metrics.losses(&api, 2);
        api.insert("team-acme".to_owned(), 9);
        metrics.losses(&api, 2);
        metrics.state(3, 12, 40, 2);
        metrics.conntrack(3);
        metrics.conntrack(5);
        let text = metrics.encode();
        assert_eq!(value(&text, "flowagent_packets_total"), 12.0);
        assert_eq!(value(&text, "flowagent_bytes_total"), 1_120.0);
        assert_eq!(value(&text, "flowagent_flow_records_total"), 3.0);
        assert_eq!(
            value(
                &text,
                "flowagent_datapath_packets_total{counter=\"map_full\"}"
            ),
            10.0
        );
        assert_eq!(value(&text, "flowagent_flow_map_fill_ratio"), 0.25);
        assert_eq!(value(&text, "flowagent_drain_duration_seconds_count"), 2.0);
        assert_eq!(value(&text, "flowagent_unresolved_endpoints_total"), 1.0);
        assert_eq!(
            value(
                &text,
                "flowagent_api_lost_records_total{client=\"team-acme\"}"
            ),
            9.0
        );
        assert_eq!(
            value(&text, "flowagent_output_file_dropped_records_total"),
            2.0
        );
        assert_eq!(value(&text, "flowagent_interfaces_attached"), 3.0);
        assert_eq!(
            value(&text, "flowagent_conntrack_lookup_failures_total"),
            5.0
        );
        assert_eq!(value(&text, "flowagent_learned_edges"), 40.0);
        assert_eq!(
            value(
                &text,
                "flowagent_build_info{version=\"0.1.0\",node=\"node-a\"}"
            ),
            1.0
        );
        assert!(
            !text.contains("workload_pair"),
            "pair metrics are off by default"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// The exposition of metric `name`: its HELP and TYPE lines, then its
    /// series sorted (a family's order is a hash map's).
    fn exposition(text: &str, name: &str) -> String {
        let mut head: Vec<&str> = Vec::new();
        let mut series: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with(&format!("# HELP {name} "))
                || line.starts_with(&format!("# TYPE {name} "))
            {
                head.push(line);
            } else if line.starts_with(name) && !line.starts_with('#') {
                series.push(line);
            }
        }
        series.sort_unstable();
        head.into_iter()
            .chain(series)
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn violations_count_by_namespace_and_tenant_and_cross_tenant_edges_by_tenants() {
        let metrics = Metrics::new("n", 0);
        let scope = |namespace: &str, tenant: &str| ViolationScope {
            namespace: namespace.into(),
            tenant: tenant.into(),
        };
        let mut violations = BTreeMap::from([(scope("shop", "acme"), 1)]);
        metrics.violations(&violations);
        violations.insert(scope("shop", "acme"), 4);
        violations.insert(scope("data", ""), 2);
        metrics.violations(&violations);
        let pair = |source: &str, destination: &str| TenantPair {
            source: source.into(),
            destination: destination.into(),
        };
        let edges = BTreeMap::from([(pair("acme", "globex"), 1)]);
        metrics.cross_tenant_edges(&edges);
        metrics.cross_tenant_edges(&edges);
        let text = metrics.encode();
        assert_eq!(
            exposition(&text, "flowagent_policy_violations"),
            "# HELP flowagent_policy_violations Request flow records the approved policies would deny (monitor mode), by the namespace and tenant of the workload whose policy denies them (the destination's when its ingress does, else the source's): a connection open over several flush intervals counts once per interval.\n\
             # TYPE flowagent_policy_violations counter\n\
             flowagent_policy_violations_total{namespace=\"data\",tenant=\"\"} 2\n\
             flowagent_policy_violations_total{namespace=\"shop\",tenant=\"acme\"} 4\n"
        );
        assert_eq!(
            exposition(&text, "flowagent_learned_cross_tenant_edges"),
            "# HELP flowagent_learned_cross_tenant_edges Edges between two tenants new to the learned graph when learned, by the client's and the server's tenant.\n\
             # TYPE flowagent_learned_cross_tenant_edges counter\n\
             flowagent_learned_cross_tenant_edges_total{source_tenant=\"acme\",destination_tenant=\"globex\"} 1\n"
        );
    }

    #[test]
    fn readiness_identity_sync_and_the_flush_interval_are_gauges() {
        let metrics = Metrics::new("n", 0);
        metrics.set_flush_interval(Duration::from_millis(2_500));
        let health = Health::new(Duration::from_secs(1));
        health.turned();
        metrics.health(&health);
        let text = metrics.encode();
        assert_eq!(
            [
                exposition(&text, "flowagent_ready"),
                exposition(&text, "flowagent_identity_synced"),
                exposition(&text, "flowagent_flush_interval_seconds"),
            ]
            .concat(),
            "# HELP flowagent_ready 1 when /readyz answers ready (the loop turns, an interface is attached, identity is synced), else 0.\n\
             # TYPE flowagent_ready gauge\n\
             flowagent_ready 0\n\
             # HELP flowagent_identity_synced 1 once the identity source has listed every kind (or identity is off or from a file), else 0.\n\
             # TYPE flowagent_identity_synced gauge\n\
             flowagent_identity_synced 0\n\
             # HELP flowagent_flush_interval_seconds The configured flush interval: how often the maps are drained.\n\
             # TYPE flowagent_flush_interval_seconds gauge\n\
             flowagent_flush_interval_seconds 2.5\n"
        );
        // Synced but nothing attached: not ready yet.
        health.set_identity_synced(true);
        metrics.health(&health);
        let text = metrics.encode();
        assert_eq!(value(&text, "flowagent_identity_synced"), 1.0);
        assert_eq!(value(&text, "flowagent_ready"), 0.0);
        health.set_attached(1);
        metrics.health(&health);
        assert_eq!(value(&metrics.encode(), "flowagent_ready"), 1.0);
    }

    #[test]
    fn dns_counts_become_counters_by_event_and_a_gauge_of_names() {
        let metrics = Metrics::new("n", 0);
        let mut stats = DnsStats {
            frames: 5,
            cut: 1,
            unsolicited: 2,
            ..DnsStats::default()
        };
        stats.cache.entries = 7;
        metrics.dns(&stats);
        stats.frames = 9;
        metrics.dns(&stats);
        let text = metrics.encode();
        assert_eq!(value(&text, "flowagent_dns_total{event=\"frames\"}"), 9.0);
        assert_eq!(
            value(&text, "flowagent_dns_total{event=\"cut_frames\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "flowagent_dns_total{event=\"unsolicited_records\"}"),
            2.0
        );
        assert!(!text.contains("event=\"queries\""), "{text}");
        assert_eq!(value(&text, "flowagent_dns_names"), 7.0);
    }

    #[test]
    fn workload_pairs_are_bounded() {
        let metrics = Metrics::new("n", 2);
        let peer = |name: &str| Peer {
            kind: Some(PeerKind::Pod),
            namespace: Some("shop".into()),
            workload: Some(Workload {
                kind: "Deployment".into(),
                name: name.into(),
            }),
            tenant: Some("acme".into()),
            labels: BTreeMap::new(),
            node: None,
            ip: None,
        };
        let time = Timestamp(SystemTime::UNIX_EPOCH);
        let aggregate = |client: &str, server: &str| AggregateRecord {
            interval_start: time,
            interval_end: time,
            source: peer(client),
            destination: peer(server),
            protocol: Protocol(6),
            port: 80,
            service: None,
            connections: 1,
            packets: 3,
            bytes: 300,
            reply_packets: 2,
            reply_bytes: 1_000,
            first_seen: time,
            last_seen: time,
            cross_tenant: Some(false),
        };
        metrics.aggregates(&[
            aggregate("a", "b"),
            aggregate("a", "c"),
            aggregate("b", "c"),
            aggregate("c", "a"),
        ]);
        let text = metrics.encode();
        let series = text
            .lines()
            .filter(|line| line.starts_with("flowagent_workload_pair_bytes_total{"))
            .count();
        assert_eq!(series, 3, "two pairs and the overflow series:\n{text}");
        let other = format!(
            "flowagent_workload_pair_bytes_total{{source_namespace=\"{OTHER}\",source_workload=\"{OTHER}\",source_tenant=\"{OTHER}\",destination_namespace=\"{OTHER}\",destination_workload=\"{OTHER}\",destination_tenant=\"{OTHER}\"}}"
        );
        assert_eq!(
            value(
                &text,
                "flowagent_workload_pair_bytes_total{source_namespace=\"shop\",source_workload=\"Deployment/a\",source_tenant=\"acme\",destination_namespace=\"shop\",destination_workload=\"Deployment/b\",destination_tenant=\"acme\"}"
            ),
            1_300.0
        );
        assert_eq!(value(&text, &other), 2_600.0);
    }

    #[test]
    fn resident_memory_is_read_from_vm_rss_at_each_encode() {
        let status =
            "Name:\tflow-agent\nVmPeak:\t  90000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 8000 kB\n";
        assert_eq!(vm_rss_bytes(status), Some(12_345 * 1_024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\t12 MB\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\t  kB\n"), None);
        let text = Metrics::new("n", 0).encode();
        assert!(
            text.contains("# UNIT flowagent_process_resident_memory_bytes bytes\n"),
            "{text}"
        );
        // This test process has some resident memory.
        assert!(value(&text, "flowagent_process_resident_memory_bytes") > 0.0);
    }

    #[test]
    fn health_reports_why_it_is_not_ready() {
        let health = Health::new(Duration::from_secs(1));
        health.turned();
        assert_eq!(health.liveness(), None);
        assert_eq!(health.readiness().as_deref(), Some("no interface attached"));
        health.set_attached(2);
        assert_eq!(
            health.readiness().as_deref(),
            Some("identity not synced yet")
        );
        health.set_identity_synced(true);
        assert_eq!(health.readiness(), None);
    }

    #[test]
    fn a_loop_that_stops_turning_is_not_live_after_three_intervals() {
        // A 5 s flush: the window is 15 s (never under 10 s).
        let health = Health::new(Duration::from_secs(5));
        health.turned();
        let turned =
            health.started + Duration::from_millis(health.last_turn_ms.load(Ordering::Relaxed));
        assert_eq!(health.liveness_at(turned + Duration::from_secs(15)), None);
        assert_eq!(
            health
                .liveness_at(turned + Duration::from_secs(17))
                .as_deref(),
            Some("the event loop has not turned for 17s")
        );
        let short = Health::new(Duration::from_millis(100));
        short.turned();
        let turned =
            short.started + Duration::from_millis(short.last_turn_ms.load(Ordering::Relaxed));
        assert_eq!(short.liveness_at(turned + Duration::from_secs(9)), None);
        assert!(
            short
                .liveness_at(turned + Duration::from_secs(11))
                .is_some()
        );
    }
}
