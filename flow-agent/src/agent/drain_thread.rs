//! The drain thread: the one thread that owns the datapath and everything a
//! drain touches, and the one place where the agent blocks.
//!
//! Blocking work — loading and attaching the programs, draining the BPF
//! maps, conntrack lookups, the learner's fsyncs, writing records to stdout —
//! runs here, in order, and nowhere else. The async runtime's workers serve
//! the API, the probes and the identity sources and never wait on the kernel
//! or the disk: what this thread must know (link and identity events, and
//! when to stop) reaches it through one channel, one way, and what it
//! produces leaves through the sinks (the API hub, the output file's own
//! writer thread). The thread keeps its own clock for flushes and map
//! pressure checks, and hands back its run summary when it ends.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant, SystemTime},
};

use flow_common::Counter;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::{
    AgentError, RunSummary, Sinks, is_link_local,
    links::masters_of,
    pipeline::{Pipeline, PipelineParts},
};
use crate::{
    api::{
        hub::{Hub, NodeStatus},
        hubble::peer::{Nodes, PeerSet},
    },
    config::{IdentitySettings, IdentitySource, RunConfig},
    datapath::{Datapath, DatapathCounters},
    drain::DrainedFlows,
    enrich::Enricher,
    interfaces::{Link, LinkEvent, local_addresses},
    metrics::{DrainReport, Health, Metrics},
    names::Names,
    output::{FileSink, FileSinkStats, RecordSink},
};
use flow_model::identity::{CacheEvent, ObjectKind};
use flow_model::record::MonotonicClock;
use flow_policy::{
    check::Monitor,
    evaluate::{PolicyLoadError, load_policy_set},
    learner::{Learner, LearnerSettings},
};

/// At most one log line about early drains per this interval.
const EARLY_DRAIN_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How often the active flow map's fill is checked: a map that is half full is
/// drained at once instead of at the next flush, so bursts of new flows do not
/// spill.
const PRESSURE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A flush this much behind its time is late: the next one is an interval
/// after it, not on the grid (tokio's `MissedTickBehavior::Delay`).
const LATE_FLUSH: Duration = Duration::from_millis(5);

/// What the async side tells the drain thread.
#[derive(Debug)]
pub(super) enum Command {
    /// Interfaces appeared, went or were renamed.
    Links(Vec<LinkEvent>),
    /// The identity source saw changes.
    Identity(Vec<CacheEvent>),
    /// Detach (or release), drain one last time and end.
    Stop,
}

/// What the drain thread starts from.
pub(super) struct Start<S> {
    pub(super) config: Arc<RunConfig>,
    /// The caller's sink (stdout, or nothing).
    pub(super) sink: S,
    pub(super) enricher: Option<Enricher>,
    /// Every link at start, and those the selection picks.
    pub(super) links: Vec<Link>,
    pub(super) selected: Vec<Link>,
    pub(super) hub: Option<Arc<Hub>>,
    pub(super) peers: Arc<PeerSet>,
    pub(super) metrics: Option<Arc<Metrics>>,
    pub(super) health: Arc<Health>,
}

/// The async side's handle on the drain thread.
pub(super) struct DrainThread {
    commands: mpsc::Sender<Command>,
    finished: oneshot::Receiver<Result<RunSummary, AgentError>>,
    /// The thread's result, when it ended before being told to stop.
    ended: Option<Result<RunSummary, AgentError>>,
}

impl DrainThread {
    /// Starts the thread, which loads the programs and attaches; resolves
    /// once it has (or failed to), the thread then running on its own.
    pub(super) async fn start<S: RecordSink + Send + 'static>(
        start: Start<S>,
    ) -> Result<Self, AgentError> {
        let (commands, inbox) = mpsc::channel();
        let (started_sender, started) = oneshot::channel();
        let (finished_sender, finished) = oneshot::channel();
        // What the datapath runs asynchronously (the eBPF programs' log
        // reader) is spawned on the agent's runtime, not run here.
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("flow-drain".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                match Agent::start(start) {
                    Ok(agent) => {
                        let _ = started_sender.send(Ok(()));
                        let _ = finished_sender.send(agent.run(&inbox));
                    }
                    Err(error) => {
                        let _ = started_sender.send(Err(error));
                    }
                }
            })
            .map_err(AgentError::DrainThread)?;
        started
            .await
            .unwrap_or(Err(AgentError::DrainThreadPanicked))?;
        Ok(Self {
            commands,
            finished,
            ended: None,
        })
    }

    /// Where to send commands; sending fails once the thread has ended.
    pub(super) fn commands(&self) -> mpsc::Sender<Command> {
        self.commands.clone()
    }

    /// Resolves when the thread ends without being told to (an error
    /// stopped it); [`DrainThread::stop`] then returns why.
    pub(super) async fn ended(&mut self) {
        if self.ended.is_some() {
            return std::future::pending().await;
        }
        let result = (&mut self.finished)
            .await
            .unwrap_or(Err(AgentError::DrainThreadPanicked));
        self.ended = Some(result);
    }

    /// Tells the thread to stop and waits for its final drain: the run's
    /// summary, or what stopped it.
    pub(super) async fn stop(self) -> Result<RunSummary, AgentError> {
        let Self {
            commands,
            finished,
            ended,
        } = self;
        if let Some(result) = ended {
            return result;
        }
        // Gone already: its result is on its way.
        let _ = commands.send(Command::Stop);
        finished
            .await
            .unwrap_or(Err(AgentError::DrainThreadPanicked))
    }
}

/// The agent's state, owned by the drain thread.
pub(super) struct Agent<S> {
    pub(super) config: Arc<RunConfig>,
    pub(super) datapath: Datapath,
    pipeline: Pipeline<Sinks<S>>,
    hub: Option<Arc<Hub>>,
    /// The cluster's nodes, for Hubble's Peer service.
    peers: Arc<PeerSet>,
    metrics: Option<Arc<Metrics>>,
    health: Arc<Health>,
    /// Kinds the identity source has fully listed; ready once all are.
    synced_kinds: BTreeSet<ObjectKind>,
    file_stats: Option<Arc<FileSinkStats>>,
    /// Names of attached interfaces, and of removed ones until the next drain
    /// has reported their last packets.
    pub(super) names: HashMap<u32, String>,
    pub(super) removed: Vec<u32>,
    /// Early drains not yet logged, and when the last line was.
    early_drains: (u64, Option<Instant>),
    /// Every link's master (bridge), to find bridges all of whose ports are
    /// attached.
    pub(super) masters: HashMap<u32, u32>,
    counters: DatapathCounters,
    /// The counters when this agent started: pinned counters carry an
    /// earlier agent's totals, which status and summary leave out.
    baseline: DatapathCounters,
}

impl<S: RecordSink> Agent<S> {
    /// Opens what the pipeline writes to, loads the programs and attaches
    /// to the selected interfaces.
    fn start(start: Start<S>) -> Result<Self, AgentError> {
        let Start {
            config,
            sink,
            enricher,
            links,
            selected,
            hub,
            peers,
            metrics,
            health,
        } = start;
        let file = config
            .file
            .clone()
            .map(FileSink::open)
            .transpose()
            .map_err(AgentError::OutputFile)?;
        let file_stats = file.as_ref().map(FileSink::stats);
        let pipeline = Pipeline::new(PipelineParts {
            node_name: config.node_name.clone(),
            tracker: config.tracker,
            enricher,
            names: config.dns.map(|dns| Names::new(dns.cache)),
            // Only Hubble serves them.
            dns_flows: hub.is_some() && config.dns.is_some_and(|dns| dns.flows),
            monitor: config.policies.as_deref().map(load_monitor).transpose()?,
            learner: config
                .learner
                .as_ref()
                .map(|settings| open_learner(settings, hub.as_deref()))
                .transpose()?,
            sink: (sink, (hub.clone(), file)),
            metrics: metrics.clone(),
        });
        // Identity from a file is complete once loaded; the API's watchers
        // report each kind's first listing.
        let synced_kinds = match &config.identity {
            Some(IdentitySettings {
                source: IdentitySource::Kubernetes,
                ..
            }) => BTreeSet::new(),
            _ => ObjectKind::ALL.into_iter().collect(),
        };
        health.set_identity_synced(synced_kinds.len() == ObjectKind::ALL.len());
        let datapath = Datapath::load(&config.datapath)?;
        let mut agent = Self {
            config,
            datapath,
            pipeline,
            hub,
            peers,
            metrics,
            health,
            synced_kinds,
            file_stats,
            names: HashMap::new(),
            removed: Vec::new(),
            early_drains: (0, None),
            masters: masters_of(&links),
            counters: DatapathCounters::default(),
            baseline: DatapathCounters::default(),
        };
        agent.attach_at_start(&selected)?;
        agent.log_start();
        agent.publish_status();
        agent.publish_peers();
        Ok(agent)
    }

    /// Attaches to the interfaces selected at start: at least one must take
    /// the programs, unless the agent may wait for interfaces.
    fn attach_at_start(&mut self, selected: &[Link]) -> Result<(), AgentError> {
        let failures = self.attach(selected);
        if self.names.is_empty()
            && let Some((interface, source)) = failures.into_iter().next()
        {
            return Err(AgentError::NothingAttached { interface, source });
        }
        if self.names.is_empty() && !self.config.wait_for_interfaces {
            return Err(AgentError::NoneAttachable {
                interfaces: selected
                    .iter()
                    .map(|link| link.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.datapath.reconcile_pins();
        self.update_bridges();
        // Pinned counters carry an earlier agent's totals: count from here.
        self.counters = self.datapath.counters()?;
        self.baseline = self.counters;
        if let Some(metrics) = &self.metrics {
            metrics.baseline(self.counters);
        }
        Ok(())
    }

    fn log_start(&self) {
        let config = &self.config;
        info!(
            interfaces = self.names.len(),
            mode = ?self.datapath.effective_attach_mode(),
            flush_interval = %humantime::format_duration(config.flush_interval),
            map_size = config.datapath.map_entries,
            node = config.node_name,
            identity = config.identity.as_ref().map_or("none", |settings| match settings.source {
                IdentitySource::Kubernetes => "kubernetes",
                IdentitySource::Inventory(_) => "inventory",
            }),
            "flow-agent started"
        );
    }

    /// Runs until told to stop (or until the async side is gone), then
    /// drains one last time; returns the run's summary.
    fn run(mut self, inbox: &mpsc::Receiver<Command>) -> Result<RunSummary, AgentError> {
        let result = self.serve(inbox);
        let summary = self.shutdown();
        result.and(summary)
    }

    /// Flushes every flush interval, checks the map's fill every
    /// [`PRESSURE_CHECK_INTERVAL`], and applies commands in between.
    fn serve(&mut self, inbox: &mpsc::Receiver<Command>) -> Result<(), AgentError> {
        let interval = self.config.flush_interval;
        let mut next_flush = Instant::now() + interval;
        let mut next_check = Instant::now() + PRESSURE_CHECK_INTERVAL;
        loop {
            self.health.turned();
            let now = Instant::now();
            if now >= next_flush {
                // On time, flushes keep to the interval's grid; late (a long
                // flush), the next is an interval after this one.
                next_flush = if now > next_flush + LATE_FLUSH {
                    now + interval
                } else {
                    next_flush + interval
                };
                self.flush()?;
                continue;
            }
            if now >= next_check {
                next_check = now + PRESSURE_CHECK_INTERVAL;
                self.read_dns();
                if self.datapath.needs_early_drain()? {
                    self.note_early_drain();
                    self.flush()?;
                    next_flush = Instant::now() + interval;
                }
                continue;
            }
            match inbox.recv_timeout(next_flush.min(next_check) - now) {
                Ok(Command::Links(events)) => self.on_link_events(events)?,
                Ok(Command::Identity(events)) => self.on_identity_events(events),
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn on_identity_events(&mut self, events: Vec<CacheEvent>) {
        let Some(enricher) = self.pipeline.enricher_mut() else {
            return;
        };
        let now = SystemTime::now();
        let nodes_changed = events.iter().any(|event| match event {
            CacheEvent::Apply(object) => object.key().kind == ObjectKind::Node,
            CacheEvent::Delete(key) => key.kind == ObjectKind::Node,
            CacheEvent::ResyncStart(kind) | CacheEvent::ResyncDone(kind) => {
                *kind == ObjectKind::Node
            }
        });
        for event in events {
            if let CacheEvent::ResyncDone(kind) = &event {
                debug!(kind = kind.as_str(), "identity resynced");
                if self.synced_kinds.insert(*kind)
                    && self.synced_kinds.len() == ObjectKind::ALL.len()
                {
                    info!("identity synced: every kind listed");
                    self.health.set_identity_synced(true);
                }
            }
            enricher.cache_mut().apply(event, now);
        }
        if nodes_changed {
            self.publish_peers();
        }
    }

    /// Tells Hubble's Peer service the cluster's nodes: the Node objects with
    /// their InternalIP, and this node even before its Node object is known
    /// (at the Hubble listen address, or at its first own address).
    fn publish_peers(&self) {
        let mut nodes: Nodes = self
            .pipeline
            .enricher()
            .into_iter()
            .flat_map(|enricher| enricher.cache().nodes())
            .map(|node| (node.name.clone(), node.internal_ip))
            .collect();
        let own = nodes.entry(self.config.node_name.clone()).or_default();
        if own.is_none() {
            let listen = self
                .config
                .api
                .as_ref()
                .and_then(|(api, _)| api.hubble.as_ref())
                .map(|hubble| hubble.listen.ip())
                .filter(|ip| !ip.is_unspecified());
            *own = listen.or_else(|| {
                local_addresses()
                    .into_iter()
                    .find(|ip| !ip.is_loopback() && !is_link_local(*ip))
            });
        }
        self.peers.publish(nodes);
    }

    /// Reads the DNS frames the programs copied into the names and, with
    /// `--dns-flows`, hands their messages to the API as flows.
    fn read_dns(&mut self) {
        let now = Instant::now();
        let clock = MonotonicClock::now();
        let Self {
            datapath,
            pipeline,
            names,
            hub,
            ..
        } = self;
        let mut flows = Vec::new();
        datapath.read_dns_frames(|frame| {
            pipeline.take_dns_flows(frame, now, &clock, names, &mut flows);
        });
        if let Some(hub) = hub {
            hub.publish_dns(flows);
        }
    }

    /// One drain and what follows it: counters, idle connections and
    /// identities forgotten, interfaces gone for good, status.
    fn flush(&mut self) -> Result<(), AgentError> {
        let started = Instant::now();
        let drained = self.datapath.drain()?;
        // The answers that came before the drained flows name them.
        self.read_dns();
        self.emit(drained, started, started.elapsed())?;
        self.pipeline.expire_names(Instant::now());
        self.check_counters()?;
        let evicted = self.pipeline.evict_idle(MonotonicClock::monotonic_now_ns());
        if evicted > 0 {
            debug!(
                evicted,
                tracked = self.pipeline.connections(),
                "idle connections forgotten"
            );
        }
        if let Some(enricher) = self.pipeline.enricher_mut() {
            let cache = enricher.cache_mut();
            cache.set_local_addresses(local_addresses());
            let forgotten = cache.evict(SystemTime::now());
            if forgotten > 0 {
                debug!(forgotten, stats = ?cache.stats(), "deleted pods forgotten after their grace period");
            }
        }
        for index in self.removed.drain(..) {
            self.names.remove(&index);
        }
        self.publish_status();
        Ok(())
    }

    /// Tells the API, the probes and the metrics which interfaces are
    /// attached and what the counters say.
    fn publish_status(&self) {
        let attached = self.datapath.attached().count();
        self.health.set_attached(attached);
        self.publish_metrics(attached);
        let Some(hub) = &self.hub else {
            return;
        };
        let mut interfaces: Vec<String> = self
            .datapath
            .attached()
            .map(|(_, name)| name.to_owned())
            .collect();
        interfaces.sort_unstable();
        hub.set_status(NodeStatus {
            interfaces,
            counters: self.counters.since(&self.baseline),
            monitoring: self.pipeline.monitor().is_some(),
            violations: self.pipeline.monitor().map_or(0, Monitor::violations),
        });
    }

    fn publish_metrics(&self, attached: usize) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let pods = self
            .pipeline
            .enricher()
            .map_or(0, |enricher| enricher.cache().stats().pods);
        let edges = self
            .pipeline
            .learner()
            .map_or(0, |learner| learner.graph().read().len());
        let subscribers = self.hub.as_ref().map_or(0, |hub| hub.subscribers());
        metrics.state(attached, pods, edges, subscribers);
        let lost = self
            .hub
            .as_ref()
            .map(|hub| hub.lost_by_client())
            .unwrap_or_default();
        let dropped = self
            .file_stats
            .as_ref()
            .map_or(0, |stats| stats.dropped.load(Ordering::Relaxed));
        metrics.losses(&lost, dropped);
        if let Some(enricher) = self.pipeline.enricher() {
            metrics.conntrack(enricher.conntrack_failures());
        }
        if let Some(dns) = self.pipeline.dns_stats() {
            metrics.dns(&dns);
        }
        if let Some(monitor) = self.pipeline.monitor() {
            metrics.violations(monitor.violations_by_scope());
        }
        if let Some(learner) = self.pipeline.learner() {
            metrics.cross_tenant_edges(learner.cross_tenant_edges_learned());
        }
    }

    /// Emits a drain that began at `started` and spent `kernel` moving the
    /// flows out of the kernel.
    fn emit(
        &mut self,
        drained: DrainedFlows,
        started: Instant,
        kernel: Duration,
    ) -> Result<(), AgentError> {
        let synced = self.synced_kinds.len() == ObjectKind::ALL.len();
        let output = self
            .pipeline
            .emit(drained, &self.names, synced)
            .map_err(AgentError::Output)?;
        if let Some(metrics) = &self.metrics {
            metrics.drain(&DrainReport {
                flows: output.records,
                counters: self.datapath.counters()?,
                map_entries: self.datapath.map_entries(),
                duration: started.elapsed(),
            });
        }
        debug!(
            flows = output.records,
            aggregates = output.aggregates,
            epoch = self.datapath.epoch(),
            kernel_us = kernel.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "drained"
        );
        Ok(())
    }

    /// Map pressure in the log: the first early drain, then at most one line
    /// a minute with how many there were, never one per drain.
    fn note_early_drain(&mut self) {
        let (count, last) = &mut self.early_drains;
        *count += 1;
        if last.is_none_or(|last| last.elapsed() >= EARLY_DRAIN_LOG_INTERVAL) {
            info!(
                map_size = self.datapath.map_entries(),
                early_drains = *count,
                "flow map half full before the flush interval: draining early (a larger --map-size or a shorter --flush-interval avoids it)"
            );
            *count = 0;
            *last = Some(Instant::now());
        }
    }

    /// Warns when packets could not go into the flow map, and how many were lost.
    fn check_counters(&mut self) -> Result<(), AgentError> {
        let counters = self.datapath.counters()?;
        let increases = counters.increase_since(&self.counters);
        let pressure = |counter| {
            increases
                .iter()
                .find(|(c, _)| *c == counter)
                .map_or(0, |(_, delta)| *delta)
        };
        let (map_full, failed, spilled, lost) = (
            pressure(Counter::MapFull),
            pressure(Counter::UpdateFailed),
            pressure(Counter::Spilled),
            pressure(Counter::Lost),
        );
        if lost > 0 {
            error!(
                map_full,
                update_failed = failed,
                spilled,
                lost,
                "flow map full and spill ring full: packets went uncounted; raise --map-size or --spill-size"
            );
        } else if map_full + failed > 0 {
            warn!(
                map_full,
                update_failed = failed,
                spilled,
                "flow map full: packets went through the spill ring; consider a larger --map-size"
            );
        }
        self.counters = counters;
        Ok(())
    }

    /// Detaches (or, pinned, releases) the programs, drains one last time,
    /// writes out what the sinks and the learner hold, and sums up the run.
    fn shutdown(&mut self) -> Result<RunSummary, AgentError> {
        let started = Instant::now();
        let pinned = self.datapath.pinned();
        let drained = if pinned {
            // The programs stay attached and keep counting into the pinned
            // maps: report up to a flip, and leave the rest to the next agent.
            self.datapath.release_all();
            self.datapath.drain()?
        } else {
            self.datapath.detach_all();
            self.datapath.drain_final()?
        };
        self.read_dns();
        self.emit(drained, started, started.elapsed())?;
        self.check_counters()?;
        let counters = self.counters.since(&self.baseline);
        self.publish_status();
        // Dropping the file sink writes what it has queued.
        let (_, (_, file_sink)) = self.pipeline.sink_mut();
        drop(file_sink.take());
        self.pipeline.close_learner();
        let totals = self.pipeline.totals();
        let summary = RunSummary {
            records: totals.records,
            packets: totals.packets,
            bytes: totals.bytes,
            counters,
            api_lost_records: self.hub.as_ref().map_or(0, |hub| hub.lost_records()),
            file_dropped_records: self
                .file_stats
                .as_ref()
                .map_or(0, |stats| stats.dropped.load(Ordering::Relaxed)),
        };
        log_summary(&summary, pinned);
        Ok(summary)
    }
}

/// Opens the learned graph, and serves it through the API when there is one.
fn open_learner(settings: &LearnerSettings, hub: Option<&Hub>) -> Result<Learner, AgentError> {
    let (learner, recovery) = Learner::open(settings.clone())?;
    info!(
        state_dir = %settings.state_dir.display(),
        snapshot_edges = recovery.snapshot_edges,
        replayed = recovery.replayed,
        truncated_bytes = recovery.truncated_bytes,
        edges = learner.graph().read().len(),
        "learned graph recovered"
    );
    if let Some(hub) = hub {
        hub.attach_graph(learner.graph());
    }
    Ok(learner)
}

/// Monitor mode against the approved policies in `path`, which must hold at
/// least one.
fn load_monitor(path: &Path) -> Result<Monitor, AgentError> {
    let policies = load_policy_set(path)?;
    if policies.is_empty() {
        return Err(PolicyLoadError::Empty {
            path: path.to_owned(),
        }
        .into());
    }
    let monitor = Monitor::new(policies);
    info!(policies = monitor.policies(), path = %path.display(), "monitor mode: flows outside the approved policies are violations");
    Ok(monitor)
}

fn log_summary(summary: &RunSummary, pinned: bool) {
    let RunSummary {
        records,
        packets,
        bytes,
        counters,
        api_lost_records,
        file_dropped_records,
    } = summary;
    info!(
        inserted = counters.get(Counter::Inserted),
        records,
        packets,
        bytes,
        map_full = counters.get(Counter::MapFull),
        update_failed = counters.get(Counter::UpdateFailed),
        spilled = counters.get(Counter::Spilled),
        lost = counters.get(Counter::Lost),
        not_ip = counters.get(Counter::NotIp),
        malformed = counters.get(Counter::Malformed),
        deduplicated = counters.get(Counter::Deduplicated),
        fragment_without_ports = counters.get(Counter::FragmentWithoutPorts),
        api_lost_records,
        file_dropped_records,
        "{}",
        if pinned {
            "flow-agent stopped; programs stay attached (pinned): the next agent reports what they count meanwhile"
        } else {
            "flow-agent stopped; every counted packet was reported"
        }
    );
}
