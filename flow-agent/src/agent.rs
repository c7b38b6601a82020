//! `flow-agent run`: attach, follow interfaces, drain on every flush interval,
//! emit records, and on shutdown detach and drain one last time.

use std::{collections::HashMap, future::Future, io, sync::Arc, time::Instant};

use flow_common::Counter;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use tokio::sync::mpsc;

use crate::{
    aggregate::Aggregator,
    api::{
        hub::{Hub, NodeStatus},
        hubble::peer::{Nodes, PeerSet},
        server::{self, ApiError, Served},
    },
    config::{IdentitySettings, IdentitySource, RunConfig},
    datapath::{Datapath, DatapathCounters, DatapathError},
    drain::{DrainedFlows, FlowSample},
    enrich::{Enricher, Translation},
    flows::{Classified, FlowTracker},
    identity::{
        CacheEvent, IdentityCache, IdentityConfig, ObjectKind,
        inventory::{InventorySource, ReadError},
        kubernetes::{self, KubernetesError},
    },
    interfaces::{InterfaceError, Link, LinkEvent, LinkMonitor, list_links, local_addresses},
    metrics::{DrainReport, Health, Metrics, MetricsError},
    output::{FileSink, FileSinkStats, RecordSink},
    policy::{
        check::Monitor,
        evaluate::{PolicyLoadError, load_policies},
        learner::Learner,
        store::StoreError,
    },
    record::{FlowRecord, MonotonicClock, Protocol, Timestamp, endpoints, tcp_flag_names},
};

/// How long the API gets at shutdown to deliver what is queued to its
/// subscribers before their connections are dropped.
const API_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Each link's master (bridge), for the links that have one.
fn masters_of(links: &[Link]) -> HashMap<u32, u32> {
    links
        .iter()
        .filter_map(|link| Some((link.index, link.master?)))
        .collect()
}

/// At most one log line about early drains per this interval.
const EARLY_DRAIN_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// How often the active flow map's fill is checked: a map that is half full is
/// drained at once instead of at the next flush, so bursts of new flows do not
/// spill.
const PRESSURE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Errors that stop the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Loading, attaching or draining failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// Listing or following interfaces failed.
    #[error(transparent)]
    Interfaces(#[from] InterfaceError),
    /// No interface matched at start.
    #[error(
        "no interface matches {patterns} (interfaces here: {available}); pass --wait-for-interfaces to start anyway and attach when one appears"
    )]
    NoInterface {
        /// The patterns, quoted.
        patterns: String,
        /// Interfaces present.
        available: String,
    },
    /// Every selected interface failed to attach.
    #[error("could not attach to any selected interface; first failure on {interface}")]
    NothingAttached {
        /// The first interface that failed.
        interface: String,
        /// Why.
        #[source]
        source: DatapathError,
    },
    /// Every selected interface is of a kind the agent does not attach to.
    #[error(
        "the selected interfaces ({interfaces}) are all skipped: loopback or without an Ethernet header (see the warnings above)"
    )]
    NoneAttachable {
        /// The interfaces selected.
        interfaces: String,
    },
    /// Writing records failed.
    #[error("writing flow records failed")]
    Output(#[source] io::Error),
    /// The inventory file cannot be read.
    #[error(transparent)]
    Inventory(#[from] ReadError),
    /// The Kubernetes API cannot be reached.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    /// The gRPC API cannot start or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The gRPC API's task panicked.
    #[error("the gRPC API task failed")]
    ApiTask(#[source] tokio::task::JoinError),
    /// The output file cannot be opened.
    #[error("cannot start the output file sink")]
    OutputFile(#[source] io::Error),
    /// The learned graph's store cannot be opened.
    #[error("cannot open the learned graph")]
    Learner(#[from] StoreError),
    /// The approved policies cannot be loaded.
    #[error("cannot load the approved policies for monitor mode")]
    Policies(#[from] PolicyLoadError),
    /// The metrics endpoint cannot start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Totals of one agent run, returned on shutdown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records emitted.
    pub records: u64,
    /// Packets in those records.
    pub packets: u64,
    /// Bytes in those records.
    pub bytes: u64,
    /// Datapath counters at exit.
    pub counters: DatapathCounters,
    /// Records API subscribers did not receive because they fell behind.
    pub api_lost_records: u64,
    /// Records the output file sink dropped.
    pub file_dropped_records: u64,
}

/// The sinks the agent adds to the caller's: the API hub and the output file.
type Sinks<S> = (S, (Option<Arc<Hub>>, Option<FileSink>));

struct Agent<'a, S> {
    config: &'a RunConfig,
    datapath: Datapath,
    tracker: FlowTracker,
    enricher: Option<Enricher>,
    aggregator: Aggregator,
    interval_start: Timestamp,
    sink: Sinks<S>,
    hub: Option<Arc<Hub>>,
    /// The cluster's nodes, for Hubble's Peer service.
    peers: Arc<PeerSet>,
    learner: Option<Learner>,
    /// The store failed: learning goes on in memory only.
    learner_failed: bool,
    monitor: Option<Monitor>,
    metrics: Option<Arc<Metrics>>,
    health: Arc<Health>,
    /// Kinds the identity source has fully listed; ready once all are.
    synced_kinds: std::collections::BTreeSet<crate::identity::ObjectKind>,
    file_stats: Option<Arc<FileSinkStats>>,
    /// Names of attached interfaces, and of removed ones until the next drain
    /// has reported their last packets.
    names: HashMap<u32, String>,
    removed: Vec<u32>,
    /// Early drains not yet logged, and when the last line was.
    early_drains: (u64, Option<Instant>),
    /// Every link's master (bridge), to find bridges all of whose ports are
    /// attached.
    masters: HashMap<u32, u32>,
    counters: DatapathCounters,
    /// The counters when this agent started: pinned counters carry an
    /// earlier agent's totals, which status and summary leave out.
    baseline: DatapathCounters,
    summary: RunSummary,
}

/// Runs the agent until `shutdown` resolves, then detaches and drains once more,
/// so every packet counted in the kernel reaches a record.
pub async fn run<S: RecordSink>(
    config: &RunConfig,
    sink: S,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, AgentError> {
    // Subscribe before listing, so no link that appears in between is missed.
    let mut monitor = LinkMonitor::open()?;
    let links = list_links()?;
    let selected: Vec<Link> = links
        .iter()
        .filter(|link| config.interfaces.matches(&link.name))
        .cloned()
        .collect();
    if selected.is_empty() && !config.wait_for_interfaces {
        let mut available: Vec<&str> = links.iter().map(|link| link.name.as_str()).collect();
        available.sort_unstable();
        return Err(AgentError::NoInterface {
            patterns: config
                .interfaces
                .patterns()
                .iter()
                .map(|pattern| format!("{pattern:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            available: available.join(", "),
        });
    }

    let (identity_tx, mut identity_rx) = mpsc::channel(64);
    let enricher = match &config.identity {
        Some(settings) => Some(start_identity(config, settings, identity_tx).await?),
        None => None,
    };
    let file = match &config.file {
        Some(settings) => Some(FileSink::open(settings.clone()).map_err(AgentError::OutputFile)?),
        None => None,
    };
    let file_stats = file.as_ref().map(FileSink::stats);
    // The API binds before anything is attached, so a taken port fails at start.
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let peers = Arc::new(PeerSet::default());
    let (hub, mut api_task) = match &config.api {
        Some((settings, hub_settings)) => {
            let hub = Arc::new(Hub::new(config.node_name.clone(), *hub_settings));
            let served = Served {
                hub: Arc::clone(&hub),
                peers: Arc::clone(&peers),
            };
            let serve = server::start(settings, served, async {
                let _ = api_stopped.await;
            })
            .await?;
            (Some(hub), Some(tokio::spawn(serve)))
        }
        None => (None, None),
    };
    let learner = match &config.learner {
        Some(settings) => {
            let (learner, recovery) = Learner::open(settings.clone())?;
            info!(
                state_dir = %settings.state_dir.display(),
                snapshot_edges = recovery.snapshot_edges,
                replayed = recovery.replayed,
                truncated_bytes = recovery.truncated_bytes,
                edges = learner.graph().read().map_or(0, |graph| graph.len()),
                "learned graph recovered"
            );
            if let Some(hub) = &hub {
                hub.attach_graph(learner.graph());
            }
            Some(learner)
        }
        None => None,
    };
    let policy_monitor = match &config.policies {
        Some(path) => {
            let policy_monitor = Monitor::new(load_policies(path)?);
            info!(policies = policy_monitor.policies(), path = %path.display(), "monitor mode: flows outside the approved policies are violations");
            Some(policy_monitor)
        }
        None => None,
    };
    let health = Arc::new(Health::new(config.flush_interval));
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let (metrics, metrics_task) = match config.metrics {
        Some((listen, pairs)) => {
            let metrics = Arc::new(Metrics::new(&config.node_name, pairs));
            let serve =
                crate::metrics::serve(listen, Arc::clone(&metrics), Arc::clone(&health), async {
                    let _ = metrics_stopped.await;
                })
                .await?;
            (Some(metrics), Some(tokio::spawn(serve)))
        }
        None => (None, None),
    };
    // Identity from a file is complete once loaded; the API's watchers report
    // each kind's first listing.
    let synced_kinds = match &config.identity {
        Some(IdentitySettings {
            source: IdentitySource::Kubernetes,
            ..
        }) => std::collections::BTreeSet::new(),
        _ => crate::identity::ObjectKind::ALL.into_iter().collect(),
    };
    health.set_identity_synced(synced_kinds.len() == crate::identity::ObjectKind::ALL.len());
    let datapath = Datapath::load(&config.datapath)?;
    let mut agent = Agent {
        config,
        datapath,
        tracker: FlowTracker::new(config.tracker),
        enricher,
        aggregator: Aggregator::new(),
        interval_start: Timestamp(std::time::SystemTime::now()),
        sink: (sink, (hub.clone(), file)),
        hub,
        peers,
        learner,
        learner_failed: false,
        monitor: policy_monitor,
        metrics,
        health,
        synced_kinds,
        file_stats: file_stats.clone(),
        names: HashMap::new(),
        removed: Vec::new(),
        early_drains: (0, None),
        masters: masters_of(&links),
        counters: DatapathCounters::default(),
        baseline: DatapathCounters::default(),
        summary: RunSummary::default(),
    };
    let failures = agent.attach(&selected);
    if agent.names.is_empty()
        && let Some((interface, source)) = failures.into_iter().next()
    {
        return Err(AgentError::NothingAttached { interface, source });
    }
    if agent.names.is_empty() && !config.wait_for_interfaces {
        return Err(AgentError::NoneAttachable {
            interfaces: selected
                .iter()
                .map(|link| link.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    agent.datapath.reconcile_pins();
    agent.update_bridges();
    // Pinned counters carry an earlier agent's totals: count from here.
    agent.counters = agent.datapath.counters()?;
    agent.baseline = agent.counters;
    if let Some(metrics) = &agent.metrics {
        metrics.baseline(agent.counters);
    }
    info!(
        interfaces = agent.names.len(),
        mode = ?agent.datapath.effective_attach_mode(),
        flush_interval = %humantime::format_duration(config.flush_interval),
        map_size = config.datapath.map_entries,
        node = config.node_name,
        identity = config.identity.as_ref().map_or("none", |settings| match settings.source {
            IdentitySource::Kubernetes => "kubernetes",
            IdentitySource::Inventory(_) => "inventory",
        }),
        "flow-agent started"
    );

    agent.publish_status();
    agent.publish_peers();

    let result = agent
        .event_loop(&mut monitor, &mut identity_rx, &mut api_task, shutdown)
        .await;
    let final_result = agent.shutdown(file_stats.as_deref());
    // Every record is in the hub: end the following streams once their queues
    // are delivered, then stop the server.
    if let Some(hub) = &agent.hub {
        hub.close();
    }
    let _ = stop_api.send(());
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(API_SHUTDOWN_GRACE, task).await;
    }
    if let Some(task) = api_task {
        match tokio::time::timeout(API_SHUTDOWN_GRACE, task).await {
            Ok(Ok(Ok(()))) => debug!("gRPC API stopped"),
            Ok(Ok(Err(error))) => {
                warn!(error = %error_chain(&error), "gRPC API failed while stopping")
            }
            Ok(Err(join)) => error!(error = %join, "gRPC API task failed"),
            Err(_) => warn!(
                grace = %humantime::format_duration(API_SHUTDOWN_GRACE),
                "gRPC subscribers still connected after the grace period; closing their connections"
            ),
        }
    }
    result.and(final_result)
}

/// Resolves when the API server task ends (which it should not before
/// shutdown); never, without an API.
async fn api_ended(
    task: &mut Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
) -> Result<(), AgentError> {
    let Some(handle) = task else {
        return std::future::pending().await;
    };
    let result = handle.await;
    *task = None;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(join) => Err(AgentError::ApiTask(join)),
    }
}

impl<S: RecordSink> Agent<'_, S> {
    async fn event_loop(
        &mut self,
        monitor: &mut LinkMonitor,
        identity: &mut mpsc::Receiver<Vec<CacheEvent>>,
        api: &mut Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let mut ticker = tokio::time::interval(self.config.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut pressure = tokio::time::interval(PRESSURE_CHECK_INTERVAL);
        pressure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(shutdown);
        loop {
            self.health.turned();
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                _ = ticker.tick() => self.flush()?,
                _ = pressure.tick() => {
                    if self.datapath.needs_early_drain()? {
                        self.note_early_drain();
                        self.flush()?;
                        ticker.reset();
                    }
                }
                events = monitor.next() => self.on_link_events(events?)?,
                Some(events) = identity.recv() => self.on_identity_events(events),
                result = api_ended(api) => {
                    result?;
                    warn!("gRPC API stopped unexpectedly; flows are still recorded locally");
                }
            }
        }
    }

    fn on_identity_events(&mut self, events: Vec<CacheEvent>) {
        let Some(enricher) = &mut self.enricher else {
            return;
        };
        let now = std::time::SystemTime::now();
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
                    && self.synced_kinds.len() == crate::identity::ObjectKind::ALL.len()
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
            .enricher
            .iter()
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

    /// Attaches to links not yet attached; returns the failures.
    fn attach(&mut self, links: &[Link]) -> Vec<(String, DatapathError)> {
        let mut wanted = Vec::new();
        for link in links {
            if self.names.contains_key(&link.index) && !self.removed.contains(&link.index) {
                continue;
            }
            if link.link_type == crate::interfaces::ARPHRD_LOOPBACK {
                // A looped packet passes lo's egress and then its ingress, and
                // egress comes first, so nothing marks it as counted.
                warn!(
                    interface = link.name,
                    "skipping the loopback device: each packet would be counted twice"
                );
                continue;
            }
            if !link.has_ethernet_header() {
                warn!(
                    interface = link.name,
                    link_type = link.link_type,
                    "skipping interface without an Ethernet header"
                );
                continue;
            }
            wanted.push((link.index, link.name.clone()));
        }
        let failures = self.datapath.attach_all(&wanted);
        for (index, name) in wanted {
            if failures.iter().all(|(failed, _)| *failed != name) {
                info!(interface = name, index, "attached");
                self.removed.retain(|removed| *removed != index);
                self.names.insert(index, name);
            }
        }
        for (name, error) in &failures {
            warn!(interface = name, error = %error_chain(error), "attach failed");
        }
        failures
    }

    /// Bridges all of whose ports are attached go into the counted set
    /// ([`Datapath::set_bridges`]).
    fn update_bridges(&mut self) {
        let attached: std::collections::HashSet<u32> =
            self.datapath.attached().map(|(index, _)| index).collect();
        let mut complete: std::collections::BTreeMap<u32, bool> = std::collections::BTreeMap::new();
        for (port, master) in &self.masters {
            *complete.entry(*master).or_insert(true) &= attached.contains(port);
        }
        let bridges: std::collections::BTreeSet<u32> = complete
            .into_iter()
            .filter(|(master, all)| *all && !attached.contains(master))
            .map(|(master, _)| master)
            .collect();
        if bridges != *self.datapath.bridges() {
            info!(bridges = ?bridges, "bridges whose every port is watched: what they route between ports is counted once");
            self.datapath.set_bridges(&bridges);
        }
    }

    fn on_link_events(&mut self, events: Vec<LinkEvent>) -> Result<(), AgentError> {
        for event in &events {
            match event {
                LinkEvent::New(Link { index, master, .. }) => match master {
                    Some(master) => {
                        self.masters.insert(*index, *master);
                    }
                    None => {
                        self.masters.remove(index);
                    }
                },
                LinkEvent::Removed(Link { index, .. }) => {
                    self.masters.remove(index);
                }
                LinkEvent::Resync => {}
            }
        }
        let result = self.apply_link_events(events);
        self.update_bridges();
        result
    }

    fn apply_link_events(&mut self, events: Vec<LinkEvent>) -> Result<(), AgentError> {
        for event in events {
            match event {
                LinkEvent::New(link) => self.on_new_link(link),
                LinkEvent::Removed(Link { index, name, .. }) => self.on_removed_link(index, &name),
                LinkEvent::Resync => {
                    warn!("link notifications overran; re-listing interfaces");
                    let links = list_links()?;
                    self.masters = masters_of(&links);
                    let present: Vec<u32> = links.iter().map(|link| link.index).collect();
                    let gone: Vec<(u32, String)> = self
                        .datapath
                        .attached()
                        .filter(|(index, _)| !present.contains(index))
                        .map(|(index, name)| (index, name.to_owned()))
                        .collect();
                    for (index, name) in gone {
                        self.on_removed_link(index, &name);
                    }
                    for link in links {
                        self.on_new_link(link);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_new_link(&mut self, link: Link) {
        let attached_name = self
            .datapath
            .attached()
            .find(|(index, _)| *index == link.index)
            .map(|(_, name)| name.to_owned());
        let selected = self.config.interfaces.matches(&link.name);
        match attached_name {
            Some(name) if name == link.name => {}
            Some(name) if !selected => {
                info!(
                    interface = name,
                    new_name = link.name,
                    "renamed out of selection; detaching"
                );
                self.on_removed_link(link.index, &name);
            }
            Some(_) => {
                // Renamed within the selection: the programs stay; both
                // places that hold the name learn the new one.
                self.datapath.rename(link.index, &link.name);
                self.names.insert(link.index, link.name);
            }
            None if selected => {
                let _failures = self.attach(std::slice::from_ref(&link));
            }
            None => {}
        }
    }

    fn on_removed_link(&mut self, index: u32, name: &str) {
        if !self.names.contains_key(&index) || self.removed.contains(&index) {
            return;
        }
        self.datapath.detach(index);
        // Keep the name until the next drain has reported the last packets.
        self.removed.push(index);
        info!(interface = name, index, "detached (interface removed)");
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        let started = Instant::now();
        let drained = tokio::task::block_in_place(|| self.datapath.drain())?;
        self.emit(drained, started)?;
        self.check_counters()?;
        let evicted = self.tracker.evict_idle(MonotonicClock::monotonic_now_ns());
        if evicted > 0 {
            debug!(
                evicted,
                tracked = self.tracker.len(),
                "idle connections forgotten"
            );
        }
        if let Some(enricher) = &mut self.enricher {
            let cache = enricher.cache_mut();
            cache.set_local_addresses(local_addresses());
            let forgotten = cache.evict(std::time::SystemTime::now());
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
        if let Some(metrics) = &self.metrics {
            let pods = self
                .enricher
                .as_ref()
                .map_or(0, |enricher| enricher.cache().stats().pods);
            let edges = self.learner.as_ref().map_or(0, |learner| {
                learner.graph().read().map_or(0, |graph| graph.len())
            });
            let subscribers = self.hub.as_ref().map_or(0, |hub| hub.subscribers());
            metrics.state(attached, pods, edges, subscribers);
            let lost = self
                .hub
                .as_ref()
                .map(|hub| hub.lost_by_client())
                .unwrap_or_default();
            let dropped = self.file_stats.as_ref().map_or(0, |stats| {
                stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
            });
            metrics.losses(&lost, dropped);
        }
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
            monitoring: self.monitor.is_some(),
            violations: self.monitor.as_ref().map_or(0, Monitor::violations),
        });
    }

    fn emit(&mut self, drained: DrainedFlows, started: Instant) -> Result<(), AgentError> {
        if drained.stale_slots() > 0 {
            warn!(
                slots = drained.stale_slots(),
                "ignored per-CPU slots left over from an earlier epoch"
            );
        }
        let clock = MonotonicClock::now();
        let mut samples = drained.into_samples();
        let translations = match &mut self.enricher {
            Some(enricher) => enricher.translate(&mut samples),
            None => vec![None; samples.len()],
        };
        let classified = self.tracker.classify(&samples);
        let mut records: Vec<FlowRecord> = samples
            .iter()
            .zip(classified)
            .zip(&translations)
            .map(|((sample, classified), translation)| {
                self.record(sample, classified, translation.as_ref(), &clock)
            })
            .collect();
        // Until every kind is listed, a pod may be known before its
        // ReplicaSet or Job: its flows would teach the graph a workload that
        // does not exist (`Job/nightly-28391234` for `CronJob/nightly`), and
        // the monitor would judge it by labels it does not have yet.
        let synced = self.synced_kinds.len() == crate::identity::ObjectKind::ALL.len();
        if let Some(monitor) = &mut self.monitor
            && synced
        {
            let cache = self.enricher.as_ref().map(Enricher::cache);
            for (connection, (blocked_by, count)) in monitor.mark(&mut records, cache) {
                warn!(connection, blocked_by, records = count, "policy violation");
            }
        }
        for record in &records {
            self.summary.records += 1;
            self.summary.packets += record.packets;
            self.summary.bytes += record.bytes;
            self.aggregator.add(record, self.interval_start);
        }
        self.sink.flows(&records).map_err(AgentError::Output)?;
        if !synced && self.learner.is_some() && !records.is_empty() {
            debug!(
                records = records.len(),
                "not learning before the identity is synced"
            );
        }
        if synced && let Some(learner) = &mut self.learner {
            match learner.learn(&records, std::time::SystemTime::now()) {
                Err(error) => {
                    if !self.learner_failed {
                        error!(error = %error_chain(&error), "cannot write the learned graph; learning goes on in memory until the disk takes writes again");
                    }
                    self.learner_failed = true;
                }
                // The disk takes writes again: what the failed commits missed
                // goes to disk with a full snapshot of the graph.
                Ok(_) if self.learner_failed => match learner.close() {
                    Ok(()) => {
                        info!("the learned graph is on disk again, in full");
                        self.learner_failed = false;
                    }
                    Err(error) => {
                        debug!(error = %error_chain(&error), "snapshot of the learned graph still failing");
                    }
                },
                Ok(_) => {}
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.drain(&DrainReport {
                records: &records,
                counters: self.datapath.counters()?,
                map_entries: self.datapath.map_entries(),
                duration: started.elapsed(),
            });
        }
        let interval_end = Timestamp(clock.to_system_time(MonotonicClock::monotonic_now_ns()));
        let aggregates = self.aggregator.finish(interval_end);
        if let Some(metrics) = &self.metrics {
            metrics.aggregates(&aggregates);
        }
        self.interval_start = interval_end;
        self.sink
            .aggregates(&aggregates)
            .map_err(AgentError::Output)?;
        debug!(
            flows = records.len(),
            aggregates = aggregates.len(),
            epoch = self.datapath.epoch(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "drained"
        );
        Ok(())
    }

    fn record(
        &self,
        sample: &FlowSample,
        classified: Classified,
        translation: Option<&Translation>,
        clock: &MonotonicClock,
    ) -> FlowRecord {
        let FlowSample {
            key,
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            tcp_flags,
            first_ifindex,
            first_direction,
        } = *sample;
        let Classified {
            is_reply,
            new_connection,
        } = classified;
        let (source, destination, icmp) = endpoints(&key);
        let first_seen = clock.to_system_time(first_seen_ns);
        let mut record = FlowRecord {
            time: Timestamp(clock.to_system_time(last_seen_ns)),
            first_seen: Timestamp(first_seen),
            source,
            destination,
            protocol: Protocol(key.protocol),
            icmp,
            packets,
            bytes,
            tcp_flags: tcp_flag_names(tcp_flags),
            is_reply,
            interface: self
                .names
                .get(&first_ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{first_ifindex}")),
            interface_index: first_ifindex,
            hook: first_direction.into(),
            node: self.config.node_name.clone(),
            cross_tenant: None,
            new_connection,
            violation: false,
        };
        if let Some(enricher) = &self.enricher {
            enricher.annotate(&mut record, translation, first_seen);
        }
        record
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

    fn shutdown(&mut self, file: Option<&FileSinkStats>) -> Result<RunSummary, AgentError> {
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
        self.emit(drained, started)?;
        self.check_counters()?;
        let counters = self.counters.since(&self.baseline);
        self.publish_status();
        // Dropping the file sink writes what it has queued.
        let (_, (_, file_sink)) = &mut self.sink;
        drop(file_sink.take());
        if let Some(learner) = &mut self.learner
            && let Err(error) = learner.close()
        {
            if self.learner_failed {
                error!(error = %error_chain(&error), "cannot write the learned graph: what failed commits missed since the last snapshot is lost");
            } else {
                error!(error = %error_chain(&error), "cannot write the learned graph's snapshot (the log has everything)");
            }
        }
        self.summary.api_lost_records = self.hub.as_ref().map_or(0, |hub| hub.lost_records());
        self.summary.file_dropped_records = file.map_or(0, |stats| {
            stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
        });
        info!(
            inserted = counters.get(Counter::Inserted),
            records = self.summary.records,
            packets = self.summary.packets,
            bytes = self.summary.bytes,
            map_full = counters.get(Counter::MapFull),
            update_failed = counters.get(Counter::UpdateFailed),
            spilled = counters.get(Counter::Spilled),
            lost = counters.get(Counter::Lost),
            not_ip = counters.get(Counter::NotIp),
            malformed = counters.get(Counter::Malformed),
            deduplicated = counters.get(Counter::Deduplicated),
            fragment_without_ports = counters.get(Counter::FragmentWithoutPorts),
            api_lost_records = self.summary.api_lost_records,
            file_dropped_records = self.summary.file_dropped_records,
            "{}",
            if pinned {
                "flow-agent stopped; programs stay attached (pinned): the next agent reports what they count meanwhile"
            } else {
                "flow-agent stopped; every counted packet was reported"
            }
        );
        self.summary.counters = counters;
        Ok(self.summary.clone())
    }
}

/// Builds the identity cache, loads or starts its source, and spawns the task
/// that feeds it.
async fn start_identity(
    config: &RunConfig,
    settings: &IdentitySettings,
    events: mpsc::Sender<Vec<CacheEvent>>,
) -> Result<Enricher, AgentError> {
    let IdentitySettings {
        source,
        tenant_label,
        grace,
    } = settings;
    let mut cache = IdentityCache::new(IdentityConfig {
        tenant_label: tenant_label.clone(),
        node_name: config.node_name.clone(),
        local_addresses: local_addresses(),
        grace: *grace,
    });
    match source {
        IdentitySource::Inventory(path) => {
            let (inventory, initial) =
                InventorySource::open(path.clone(), std::time::Duration::from_secs(1))?;
            let now = std::time::SystemTime::now();
            for event in initial {
                cache.apply(event, now);
            }
            tokio::spawn(inventory.run(events));
        }
        IdentitySource::Kubernetes => {
            let client = kubernetes::client().await?;
            tokio::spawn(kubernetes::run(client, events));
        }
    }
    Ok(Enricher::new(cache))
}

fn is_link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// An error and its sources on one line: `outer: inner: root`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Transparent wrappers repeat their source's message.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_is_one_line_without_repeats() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "no such device");
        let error = AgentError::Output(inner);
        assert_eq!(
            error_chain(&error),
            "writing flow records failed: no such device"
        );
        let transparent = AgentError::Datapath(DatapathError::Barrier(io::Error::other(
            "line one\nline two",
        )));
        assert_eq!(
            error_chain(&transparent),
            "waiting for running BPF programs failed: line one line two"
        );
    }
}
