//! `flow-agent run`: attach, follow interfaces, drain on every flush interval,
//! emit records, and on shutdown detach and drain one last time.
//!
//! Where blocking work runs: once the agent runs, everything that waits on
//! the kernel or the disk for the agent's state — the BPF map drain,
//! attaching and detaching, conntrack lookups, the learner's fsyncs, writing
//! records to stdout — runs on the drain thread ([`drain_thread`]), which
//! owns the datapath and the per-drain [`Pipeline`]. The async runtime's
//! workers serve the API, the probes, the link monitor and the identity
//! sources, never block (rereading the inventory file goes through
//! `spawn_blocking`), and only send the drain thread events through one
//! channel, one way. The output file has its own writer thread. Start-up
//! (listing interfaces, loading the inventory) runs in order on the caller's
//! thread before any of it.

mod drain_thread;
mod links;
mod pipeline;

use std::{future::Future, io, sync::Arc, time::Duration};

pub use flow_model::error_chain;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use self::drain_thread::{Command, DrainThread, Start};
pub use self::pipeline::{DrainOutput, Pipeline, PipelineParts, Totals};
use crate::{
    api::{
        hub::Hub,
        hubble::peer::PeerSet,
        server::{self, ApiError, Served},
    },
    config::{IdentitySettings, IdentitySource, RunConfig},
    datapath::{DatapathCounters, DatapathError},
    enrich::Enricher,
    interfaces::{InterfaceError, Link, LinkMonitor, list_links, local_addresses},
    metrics::{Health, Metrics, MetricsError},
    output::{FileSink, RecordSink},
};
use flow_model::identity::{
    CacheEvent, IdentityCache, IdentityConfig,
    inventory::{InventorySource, OpenError},
    kubernetes::{self, KubernetesError},
};
use flow_policy::{evaluate::PolicyLoadError, store::StoreError};

/// How long followers get, after [`API_SHUTDOWN_GRACE`], to receive the
/// loss count of what they did not read (see [`crate::api::hub::Hub::cut_short`]).
const API_CUT_GRACE: Duration = Duration::from_secs(2);

/// How long the API gets at shutdown to deliver what is queued to its
/// subscribers before their connections are dropped.
const API_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the inventory file is looked at for changes.
const INVENTORY_POLL: Duration = Duration::from_secs(1);

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
    /// The inventory file cannot be read, or holds nothing usable at start.
    #[error(transparent)]
    Inventory(#[from] OpenError),
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
    /// The drain thread cannot be started.
    #[error("cannot start the drain thread")]
    DrainThread(#[source] io::Error),
    /// The drain thread panicked: what it had not yet emitted is lost.
    #[error("the drain thread panicked")]
    DrainThreadPanicked,
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

/// Runs the agent until `shutdown` resolves, then detaches and drains once more,
/// so every packet counted in the kernel reaches a record.
pub async fn run<S: RecordSink + Send + 'static>(
    config: &RunConfig,
    sink: S,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, AgentError> {
    // Subscribe before listing, so no link that appears in between is missed.
    let mut link_monitor = LinkMonitor::open()?;
    let (links, selected) = select_links(config)?;
    let (identity_events, mut identity) = mpsc::channel(64);
    let enricher = match &config.identity {
        Some(settings) => Some(start_identity(config, settings, identity_events).await?),
        None => None,
    };
    let mut services = Services::start(config).await?;
    let start = Start {
        config: Arc::new(config.clone()),
        sink,
        enricher,
        links,
        selected,
        hub: services.hub.clone(),
        peers: Arc::clone(&services.peers),
        metrics: services.metrics.clone(),
        health: Arc::clone(&services.health),
    };
    let mut drain_thread = match DrainThread::start(start).await {
        Ok(drain_thread) => drain_thread,
        Err(error) => {
            services.stop().await;
            return Err(error);
        }
    };
    let result = supervise(
        &mut drain_thread,
        &mut link_monitor,
        &mut identity,
        &mut services.api_task,
        shutdown,
    )
    .await;
    let summary = drain_thread.stop().await;
    // Every record is in the hub: the API can end its streams.
    services.stop().await;
    result.and(summary)
}

/// Every link, and those the configuration selects; none selected is an
/// error unless the agent may wait for interfaces.
fn select_links(config: &RunConfig) -> Result<(Vec<Link>, Vec<Link>), AgentError> {
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
    Ok((links, selected))
}

/// Moves link and identity events to the drain thread until `shutdown`
/// resolves, the thread ends on its own, or an event source fails.
async fn supervise(
    drain_thread: &mut DrainThread,
    link_monitor: &mut LinkMonitor,
    identity: &mut mpsc::Receiver<Vec<CacheEvent>>,
    api: &mut Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let commands = drain_thread.commands();
    tokio::pin!(shutdown);
    loop {
        let command = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            () = drain_thread.ended() => return Ok(()),
            events = link_monitor.next() => Command::Links(events?),
            Some(events) = identity.recv() => Command::Identity(events),
            result = api_ended(api) => {
                result?;
                warn!("gRPC API stopped unexpectedly; flows are still recorded locally");
                continue;
            }
        };
        // Fails only once the thread has ended, which `ended` reports next.
        let _ = commands.send(command);
    }
}

/// The API, the metrics endpoint and what they share with the drain thread.
struct Services {
    hub: Option<Arc<Hub>>,
    /// The cluster's nodes, for Hubble's Peer service.
    peers: Arc<PeerSet>,
    metrics: Option<Arc<Metrics>>,
    health: Arc<Health>,
    api_task: Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
    metrics_task: Option<tokio::task::JoinHandle<io::Result<()>>>,
    stop_api: oneshot::Sender<()>,
    stop_metrics: oneshot::Sender<()>,
}

impl Services {
    /// Binds the API and the metrics endpoint (before anything is attached,
    /// so a taken port fails at start) and serves them.
    async fn start(config: &RunConfig) -> Result<Self, AgentError> {
        let (stop_api, api_stopped) = oneshot::channel::<()>();
        let peers = Arc::new(PeerSet::default());
        let (hub, api_task) = match &config.api {
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
        let health = Arc::new(Health::new(config.flush_interval));
        let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
        let (metrics, metrics_task) = match config.metrics {
            Some((listen, pairs)) => {
                let metrics = Arc::new(Metrics::new(&config.node_name, pairs));
                metrics.set_flush_interval(config.flush_interval);
                let serve = crate::metrics::serve(
                    listen,
                    Arc::clone(&metrics),
                    Arc::clone(&health),
                    async {
                        let _ = metrics_stopped.await;
                    },
                )
                .await?;
                (Some(metrics), Some(tokio::spawn(serve)))
            }
            None => (None, None),
        };
        Ok(Self {
            hub,
            peers,
            metrics,
            health,
            api_task,
            metrics_task,
            stop_api,
            stop_metrics,
        })
    }

    /// Ends the following streams once their queues are delivered (within
    /// [`API_SHUTDOWN_GRACE`]; a follower still reading then is told what it
    /// did not read as lost, within [`API_CUT_GRACE`]), then stops the
    /// servers.
    async fn stop(self) {
        let Self {
            hub,
            api_task,
            metrics_task,
            stop_api,
            stop_metrics,
            ..
        } = self;
        if let Some(hub) = &hub {
            hub.close();
        }
        let _ = stop_api.send(());
        let _ = stop_metrics.send(());
        if let Some(task) = metrics_task {
            let _ = tokio::time::timeout(API_SHUTDOWN_GRACE, task).await;
        }
        let Some(mut task) = api_task else {
            return;
        };
        let task = match tokio::time::timeout(API_SHUTDOWN_GRACE, &mut task).await {
            Ok(ended) => Ok(ended),
            Err(_) => {
                if let Some(hub) = &hub {
                    hub.cut_short();
                }
                info!(
                    grace = %humantime::format_duration(API_SHUTDOWN_GRACE),
                    "followers still reading after the grace period: each is told what it did not read as lost"
                );
                tokio::time::timeout(API_CUT_GRACE, task).await
            }
        };
        match task {
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
        platform_namespaces,
        grace,
    } = settings;
    let mut cache = IdentityCache::new(IdentityConfig {
        tenant_label: tenant_label.clone(),
        node_name: config.node_name.clone(),
        local_addresses: local_addresses(),
        grace: *grace,
        platform_namespaces: platform_namespaces.clone(),
    });
    match source {
        IdentitySource::Inventory(path) => {
            let (inventory, initial) = InventorySource::open(path.clone(), INVENTORY_POLL)?;
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
