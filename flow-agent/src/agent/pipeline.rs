//! What one drain goes through once it is out of the kernel: Service
//! translation, request or reply, records, monitor mode, aggregates, the
//! sinks and the learner. The agent runs it on every drain; the userspace
//! benchmark (`benches/pipeline.rs`) runs the same code on synthetic drains.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Instant, SystemTime},
};

use flow_common::FlowKey;
use flow_dns::{DnsMessage, Kind, frame::Transport};
use tracing::{debug, error, info, warn};

use super::error_chain;
use crate::{
    aggregate::{AggregateRecord, Aggregator},
    datapath::DnsFrameRef,
    drain::{DrainedFlows, FlowSample},
    enrich::{Enricher, Translation, Translations},
    flows::{Classified, FlowTracker, TrackerConfig},
    metrics::Metrics,
    names::{DnsStats, Message, Names},
    output::RecordSink,
};
use flow_model::identity::Identity;
use flow_model::record::{
    Endpoint, FlowRecord, Hook, Icmp, IcmpErrors, MonotonicClock, Protocol, Timestamp, ip_from_key,
    write_tcp_flag_names,
};
use flow_policy::{check::Monitor, learner::Learner};

/// Records, packets and bytes emitted since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records emitted.
    pub records: u64,
    /// Packets in those records.
    pub packets: u64,
    /// Bytes in those records.
    pub bytes: u64,
}

/// What a [`Pipeline`] is made of.
pub struct PipelineParts<S> {
    /// The observing node's name, in every record.
    pub node_name: String,
    /// Connection tracking settings.
    pub tracker: TrackerConfig,
    /// Identities, when configured.
    pub enricher: Option<Enricher>,
    /// Names from DNS answers, unless DNS copying is off.
    pub names: Option<Names>,
    /// Each DNS message read also becomes a flow (`--dns-flows`).
    pub dns_flows: bool,
    /// Monitor mode, when approved policies are given.
    pub monitor: Option<Monitor>,
    /// The learned graph, when learning.
    pub learner: Option<Learner>,
    /// Where records and aggregates go.
    pub sink: S,
    /// The metrics endpoint, when serving.
    pub metrics: Option<Arc<Metrics>>,
}

/// Policy violations of one drain: for each connection, the policies that
/// would block it and how many records.
type Violations = BTreeMap<String, (String, u64)>;

/// The learner and whether its store is failing (learning then goes on in
/// memory until the disk takes writes again).
struct Learning {
    learner: Learner,
    failed: bool,
}

/// Records are built, judged, aggregated and handed to the sinks this many
/// at a time: a drain of a million flows never holds a million records (some
/// 350 bytes each), and a drain of the default map size is one batch.
const RECORD_BATCH: usize = 65_536;

/// Aggregates are made and handed to the sinks this many at a time.
const AGGREGATE_BATCH: usize = 4_096;

/// What one drain produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainOutput {
    /// Records emitted: one per flow.
    pub records: usize,
    /// Aggregates emitted: the interval's.
    pub aggregates: usize,
}

/// The per-drain pipeline and the state it keeps between drains (connections,
/// the interval's aggregates, identities).
pub struct Pipeline<S> {
    node_name: String,
    /// The identity of an end before the enricher says who it is (or
    /// without identity): one copy for every record.
    unknown: Arc<Identity>,
    tracker: FlowTracker,
    enricher: Option<Enricher>,
    names: Option<Names>,
    dns_flows: bool,
    aggregator: Aggregator,
    interval_start: Timestamp,
    monitor: Option<Monitor>,
    learning: Option<Learning>,
    sink: S,
    metrics: Option<Arc<Metrics>>,
    totals: Totals,
    /// The records of the batch being emitted, kept from batch to batch and
    /// drain to drain: a record is rewritten in place, so building one
    /// allocates nothing once a batch has been this large before (at most
    /// [`RECORD_BATCH`] records, some 25 MB, are kept).
    records: Vec<FlowRecord>,
}

impl<S: RecordSink> Pipeline<S> {
    /// A pipeline whose first interval starts now.
    pub fn new(parts: PipelineParts<S>) -> Self {
        let PipelineParts {
            node_name,
            tracker,
            enricher,
            names,
            dns_flows,
            monitor,
            learner,
            sink,
            metrics,
        } = parts;
        Self {
            node_name,
            unknown: Arc::default(),
            tracker: FlowTracker::new(tracker),
            enricher,
            names,
            dns_flows,
            aggregator: Aggregator::new(),
            interval_start: Timestamp(SystemTime::now()),
            monitor,
            learning: learner.map(|learner| Learning {
                learner,
                failed: false,
            }),
            sink,
            metrics,
            totals: Totals::default(),
            records: Vec::new(),
        }
    }

    /// Turns one drain into records and the interval's aggregates, and hands
    /// both to the sinks, the monitor and the learner. `interfaces` names the
    /// interfaces by index; `synced` says whether the identity source has
    /// listed every kind.
    pub fn emit(
        &mut self,
        drained: DrainedFlows,
        interfaces: &HashMap<u32, String>,
        synced: bool,
    ) -> io::Result<DrainOutput> {
        if drained.stale_slots() > 0 {
            warn!(
                slots = drained.stale_slots(),
                "ignored per-CPU slots left over from an earlier epoch"
            );
        }
        let clock = MonotonicClock::now();
        let now = Instant::now();
        let mut samples = drained.into_samples();
        let translations = match &mut self.enricher {
            Some(enricher) => enricher.translate(&mut samples),
            None => Translations::default(),
        };
        let classified = self.tracker.classify(&samples);
        if !synced && self.learning.is_some() && !samples.is_empty() {
            debug!(
                records = samples.len(),
                "not learning before the identity is synced"
            );
        }
        let mut violations = Violations::new();
        let mut records = std::mem::take(&mut self.records);
        let mut pending = translations.iter().peekable();
        let mut result = Ok(());
        for (first, batch) in (0..)
            .step_by(RECORD_BATCH)
            .zip(samples.chunks(RECORD_BATCH))
        {
            for (slot, sample) in batch.iter().enumerate() {
                let position = first + slot;
                let translation = pending
                    .next_if(|(translated, _)| *translated == position)
                    .map(|(_, translation)| translation);
                if slot == records.len() {
                    records.push(blank_record(&self.unknown));
                }
                let classified = classified[position];
                self.fill(
                    &mut records[slot],
                    sample,
                    classified,
                    translation,
                    interfaces,
                    &clock,
                );
                if let Some(names) = &self.names {
                    names.name(&mut records[slot], now);
                }
            }
            // Slots past the batch stay for the next one.
            result = self.flows(&mut records[..batch.len()], synced, &mut violations);
            if result.is_err() {
                break;
            }
        }
        self.records = records;
        for (connection, (blocked_by, count)) in violations {
            warn!(connection, blocked_by, records = count, "policy violation");
        }
        result?;
        let flows = samples.len();
        // What is left to hold is the interval's aggregates.
        drop(pending);
        drop((samples, translations, classified));
        let interval_end = Timestamp(clock.to_system_time(MonotonicClock::monotonic_now_ns()));
        let aggregates = self.aggregates(interval_end)?;
        self.interval_start = interval_end;
        Ok(DrainOutput {
            records: flows,
            aggregates,
        })
    }

    /// One batch of a drain's records: monitor mode, totals, aggregates,
    /// sinks, learner.
    fn flows(
        &mut self,
        records: &mut [FlowRecord],
        synced: bool,
        violations: &mut Violations,
    ) -> io::Result<()> {
        // Until every kind is listed, a pod may be known before its
        // ReplicaSet or Job: its flows would teach the graph a workload that
        // does not exist (`Job/nightly-28391234` for `CronJob/nightly`), and
        // the monitor would judge it by labels it does not have yet.
        if let Some(monitor) = &mut self.monitor
            && synced
        {
            let cache = self.enricher.as_ref().map(Enricher::cache);
            for (connection, (blocked_by, count)) in monitor.mark(records, cache) {
                violations.entry(connection).or_insert((blocked_by, 0)).1 += count;
            }
        }
        for record in records.iter() {
            self.totals.records += 1;
            self.totals.packets += record.packets;
            self.totals.bytes += record.bytes;
            self.aggregator.add(record, self.interval_start);
        }
        self.sink.flows(records)?;
        if synced {
            self.learn(records);
        }
        if let Some(metrics) = &self.metrics {
            metrics.records(records);
        }
        Ok(())
    }

    /// Ends the interval at `interval_end`: its aggregates go to the sinks
    /// and the metrics, a batch at a time. Returns how many there were.
    fn aggregates(&mut self, interval_end: Timestamp) -> io::Result<usize> {
        let mut finished = self.aggregator.finish_lazily(interval_end);
        let count = finished.len();
        let mut batch: Vec<AggregateRecord> = Vec::with_capacity(count.min(AGGREGATE_BATCH));
        loop {
            batch.clear();
            batch.extend(finished.by_ref().take(AGGREGATE_BATCH));
            if let Some(metrics) = &self.metrics {
                metrics.aggregates(&batch);
            }
            // An interval without aggregates still tells the sinks it ended.
            self.sink.aggregates(&batch)?;
            if finished.len() == 0 {
                return Ok(count);
            }
        }
    }

    fn learn(&mut self, records: &[FlowRecord]) {
        let Some(Learning { learner, failed }) = &mut self.learning else {
            return;
        };
        match learner.learn(records, SystemTime::now()) {
            Err(error) => {
                if !*failed {
                    error!(error = %error_chain(&error), "cannot write the learned graph; learning goes on in memory until the disk takes writes again");
                }
                *failed = true;
            }
            // The disk takes writes again: what the failed commits missed
            // goes to disk with a full snapshot of the graph.
            Ok(_) if *failed => match learner.close() {
                Ok(()) => {
                    info!("the learned graph is on disk again, in full");
                    *failed = false;
                }
                Err(error) => {
                    debug!(error = %error_chain(&error), "snapshot of the learned graph still failing");
                }
            },
            Ok(_) => {}
        }
    }

    /// Rewrites `record` as the record of `sample`: every field is set, and
    /// its strings keep their buffers.
    fn fill(
        &self,
        record: &mut FlowRecord,
        sample: &FlowSample,
        classified: Classified,
        translation: Option<&Translation>,
        interfaces: &HashMap<u32, String>,
        clock: &MonotonicClock,
    ) {
        let FlowSample {
            key,
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            tcp_flags,
            first_ifindex,
            first_direction,
            icmp_error_kinds,
            icmp_errors,
        } = *sample;
        let FlowKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            protocol,
            icmp_type,
            icmp_code,
            _pad,
        } = key;
        let Classified {
            is_reply,
            new_connection,
        } = classified;
        let first_seen = clock.to_system_time(first_seen_ns);
        record.time = Timestamp(clock.to_system_time(last_seen_ns));
        record.first_seen = Timestamp(first_seen);
        for (end, address, port) in [
            (&mut record.source, src_addr, src_port),
            (&mut record.destination, dst_addr, dst_port),
        ] {
            end.ip = ip_from_key(address);
            end.port = port;
            end.identity.clone_from(&self.unknown);
            end.service = None;
            end.names.clear();
        }
        record.protocol = Protocol(protocol);
        record.icmp = record.protocol.is_icmp().then_some(Icmp {
            icmp_type,
            code: icmp_code,
        });
        record.packets = packets;
        record.bytes = bytes;
        write_tcp_flag_names(tcp_flags, &mut record.tcp_flags);
        record.icmp_errors = IcmpErrors::from_counts(icmp_errors, icmp_error_kinds);
        record.is_reply = is_reply;
        record.interface.clear();
        match interfaces.get(&first_ifindex) {
            Some(name) => record.interface.push_str(name),
            None => {
                let _ = write!(record.interface, "if{first_ifindex}");
            }
        }
        record.interface_index = first_ifindex;
        record.hook = first_direction.into();
        if record.node != self.node_name {
            self.node_name.clone_into(&mut record.node);
        }
        record.cross_tenant = None;
        record.new_connection = new_connection;
        record.violation = false;
        if let Some(enricher) = &self.enricher {
            enricher.annotate(record, translation, first_seen);
        }
    }

    /// Reads a DNS frame the datapath copied at `now` into the names;
    /// returns its messages (none when DNS copying is off).
    pub fn take_dns_frame(&mut self, frame: DnsFrameRef<'_>, now: Instant) -> Vec<Message> {
        match &mut self.names {
            Some(names) => names.take(frame, now),
            None => Vec::new(),
        }
    }

    /// Reads a DNS frame as [`Pipeline::take_dns_frame`] does and, with
    /// DNS flows on, appends each of its messages to `flows` with the
    /// record of the packet that carried it, at the time the programs
    /// copied it (`clock` reads the frame's time): its ends named
    /// by the identity source as any record's, one packet of the frame's
    /// length. `interfaces` names the interfaces by index.
    pub fn take_dns_flows(
        &mut self,
        frame: DnsFrameRef<'_>,
        now: Instant,
        clock: &MonotonicClock,
        interfaces: &HashMap<u32, String>,
        flows: &mut Vec<(FlowRecord, DnsMessage)>,
    ) {
        let messages = self.take_dns_frame(frame, now);
        if !self.dns_flows {
            return;
        }
        let at = clock.to_system_time(frame.time_ns);
        for message in messages {
            let record = self.dns_record(&frame, &message, at, interfaces);
            flows.push((record, message.message));
        }
    }

    /// The record of the packet that carried a DNS message.
    fn dns_record(
        &self,
        frame: &DnsFrameRef<'_>,
        message: &Message,
        at: SystemTime,
        interfaces: &HashMap<u32, String>,
    ) -> FlowRecord {
        let mut record = blank_record(&self.unknown);
        record.time = Timestamp(at);
        record.first_seen = Timestamp(at);
        for (end, (ip, port)) in [
            (&mut record.source, message.source),
            (&mut record.destination, message.destination),
        ] {
            end.ip = ip;
            end.port = port;
        }
        record.protocol = Protocol(match message.transport {
            Transport::Udp => flow_common::protocol::UDP,
            Transport::Tcp => flow_common::protocol::TCP,
        });
        record.packets = 1;
        record.bytes = frame.frame_len as u64;
        record.is_reply = message.message.kind == Kind::Response;
        record.interface = interfaces
            .get(&frame.ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{}", frame.ifindex));
        record.interface_index = frame.ifindex;
        record.hook = frame.direction.map_or(Hook::Ingress, Hook::from);
        self.node_name.clone_into(&mut record.node);
        if let Some(enricher) = &self.enricher {
            enricher.annotate(&mut record, None, at);
        }
        record
    }

    /// Drops the names whose TTL and grace ran out by `now`.
    pub fn expire_names(&mut self, now: Instant) {
        if let Some(names) = &mut self.names {
            names.expire(now);
        }
    }

    /// What the DNS names saw, when DNS copying is on.
    pub fn dns_stats(&self) -> Option<DnsStats> {
        self.names.as_ref().map(Names::stats)
    }

    /// Forgets connections that have been quiet for too long; returns how
    /// many.
    pub fn evict_idle(&mut self, now_ns: u64) -> usize {
        self.tracker.evict_idle(now_ns)
    }

    /// Connections remembered.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// The enricher, when identity is configured.
    pub fn enricher(&self) -> Option<&Enricher> {
        self.enricher.as_ref()
    }

    /// The enricher, to apply identity events to its cache.
    pub fn enricher_mut(&mut self) -> Option<&mut Enricher> {
        self.enricher.as_mut()
    }

    /// The learner, when learning.
    pub fn learner(&self) -> Option<&Learner> {
        self.learning.as_ref().map(|learning| &learning.learner)
    }

    /// The monitor, in monitor mode.
    pub fn monitor(&self) -> Option<&Monitor> {
        self.monitor.as_ref()
    }

    /// The sinks.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Records, packets and bytes emitted since start.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Writes the learned graph's snapshot (at shutdown).
    pub fn close_learner(&mut self) {
        let Some(Learning { learner, failed }) = &mut self.learning else {
            return;
        };
        if let Err(error) = learner.close() {
            if *failed {
                error!(error = %error_chain(&error), "cannot write the learned graph: what failed commits missed since the last snapshot is lost");
            } else {
                error!(error = %error_chain(&error), "cannot write the learned graph's snapshot (the log has everything)");
            }
        }
    }
}

/// A record to be filled in ([`Pipeline::fill`]).
fn blank_record(unknown: &Arc<Identity>) -> FlowRecord {
    let end = || Endpoint {
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
        identity: Arc::clone(unknown),
        service: None,
        names: Vec::new(),
    };
    FlowRecord {
        time: Timestamp(SystemTime::UNIX_EPOCH),
        first_seen: Timestamp(SystemTime::UNIX_EPOCH),
        source: end(),
        destination: end(),
        protocol: Protocol(0),
        icmp: None,
        packets: 0,
        bytes: 0,
        tcp_flags: Vec::new(),
        icmp_errors: None,
        is_reply: false,
        interface: String::new(),
        interface_index: 0,
        hook: Hook::Ingress,
        node: String::new(),
        cross_tenant: None,
        new_connection: false,
        violation: false,
    }
}
