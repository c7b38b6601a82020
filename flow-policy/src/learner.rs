//! The agent's learner: folds each drain's records into the graph, writes the
//! changes to the store and only then lets the API see them, so every edge a
//! client has read survives a crash. While the disk refuses writes, learning
//! goes on in memory and [`LearnedGraph::durable`] says so, until a snapshot
//! succeeds.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use super::{
    graph::{Change, EdgeKey, Graph, WorkloadRef},
    store::{Recovery, Store, StoreError},
};
use flow_model::record::FlowRecord;

/// Where and how much the agent learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnerSettings {
    /// State directory (created if missing).
    pub state_dir: PathBuf,
    /// Forget edges without traffic for this long.
    pub expiry: Option<Duration>,
    /// Most edges kept; the least recently seen go first.
    pub max_edges: usize,
}

/// The tenants at the two ends of an edge (empty when an end has none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantPair {
    /// The client's tenant.
    pub source: String,
    /// The server's tenant.
    pub destination: String,
}

/// The graph and its store.
#[derive(Debug)]
pub struct Learner {
    store: Store,
    graph: LearnedGraph,
    settings: LearnerSettings,
    /// New cross-tenant edges learned since open, by tenant pair: at most
    /// the square of the cluster's tenants, and only pairs that talk.
    cross_tenant: BTreeMap<TenantPair, u64>,
}

/// The learned graph as readers share it, and whether all of it is on disk.
#[derive(Clone, Debug)]
pub struct LearnedGraph {
    graph: Arc<RwLock<Graph>>,
    durable: Arc<AtomicBool>,
}

impl LearnedGraph {
    /// Shares `graph`, taken as durable (as a store just opened holds it).
    pub fn new(graph: Graph) -> Self {
        Self {
            graph: Arc::new(RwLock::new(graph)),
            durable: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The graph, once the learner's current commit is done.
    pub fn read(&self) -> RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every entry of the graph is on disk. False from a failed
    /// commit until the next successful snapshot: entries learned meanwhile
    /// would be lost if the agent stopped.
    pub fn durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }
}

/// Keeps only the last change of each entry: changes carry full states.
fn last_per_entry(changes: Vec<Change>) -> Vec<Change> {
    #[derive(PartialEq, Eq, Hash)]
    enum Entry {
        Edge(EdgeKey),
        Workload(WorkloadRef),
    }
    let entry = |change: &Change| match change {
        Change::Edge(edge) => Entry::Edge(edge.key.clone()),
        Change::RemoveEdge(key) => Entry::Edge(key.clone()),
        Change::Workload { workload, .. } | Change::RemoveWorkload(workload) => {
            Entry::Workload(workload.clone())
        }
    };
    let mut last: HashMap<Entry, usize> = HashMap::new();
    for (index, change) in changes.iter().enumerate() {
        last.insert(entry(change), index);
    }
    changes
        .into_iter()
        .enumerate()
        .filter(|(index, change)| last.get(&entry(change)) == Some(index))
        .map(|(_, change)| change)
        .collect()
}

impl Learner {
    /// Opens the store and recovers the graph it holds.
    pub fn open(settings: LearnerSettings) -> Result<(Self, Recovery), StoreError> {
        let (store, graph, recovery) = Store::open(&settings.state_dir)?;
        Ok((
            Self {
                store,
                graph: LearnedGraph::new(graph),
                settings,
                cross_tenant: BTreeMap::new(),
            },
            recovery,
        ))
    }

    /// The graph, shared with the API.
    pub fn graph(&self) -> LearnedGraph {
        self.graph.clone()
    }

    /// Edges between two tenants that were new to the graph when learned
    /// (since open; one expired and seen again counts again), by tenants.
    pub fn cross_tenant_edges_learned(&self) -> &BTreeMap<TenantPair, u64> {
        &self.cross_tenant
    }

    /// Learns from one drain's records, expires and bounds the graph, and
    /// makes the changes durable before anyone can read them. Returns how
    /// many entries changed.
    pub fn learn(&mut self, records: &[FlowRecord], now: SystemTime) -> Result<usize, StoreError> {
        let Self {
            store,
            graph,
            settings,
            cross_tenant,
        } = self;
        let LearnedGraph { graph, durable } = graph;
        let mut graph = graph.write().unwrap_or_else(PoisonError::into_inner);
        let mut changes = Vec::new();
        for record in records {
            // Observing adds at most one edge and removes none.
            let edges = graph.len();
            changes.extend(graph.observe(record));
            if graph.len() > edges && record.cross_tenant == Some(true) {
                let tenant = |end: &flow_model::record::Endpoint| {
                    end.identity.tenant.clone().unwrap_or_default()
                };
                *cross_tenant
                    .entry(TenantPair {
                        source: tenant(&record.source),
                        destination: tenant(&record.destination),
                    })
                    .or_insert(0) += 1;
            }
        }
        changes.extend(graph.prune(now, settings.expiry, settings.max_edges));
        let changes = last_per_entry(changes);
        if let Err(error) = store.commit(&changes, &graph) {
            // Marked before the write lock is released, so no reader sees
            // these entries as durable.
            durable.store(false, Ordering::Release);
            return Err(error);
        }
        Ok(changes.len())
    }

    /// Writes a snapshot and empties the log (at shutdown, and to catch up
    /// after failed commits): on success the whole graph is durable again.
    pub fn close(&mut self) -> Result<(), StoreError> {
        let graph = self.graph.read();
        self.store.compact(&graph)?;
        self.graph.durable.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{Tmpfs, record};

    #[test]
    fn only_new_edges_between_tenants_are_counted_by_their_tenants() {
        let state = tempfile::tempdir().unwrap();
        let (mut learner, _) = Learner::open(LearnerSettings {
            state_dir: state.path().to_owned(),
            expiry: None,
            max_edges: 100_000,
        })
        .unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let across = |port: u16| {
            let mut record = record(40_000, "billing", port);
            let mut identity = (*record.destination.identity).clone();
            identity.tenant = Some("globex".into());
            record.destination.identity = std::sync::Arc::new(identity);
            record.cross_tenant = Some(true);
            record
        };
        learner
            .learn(
                &[across(8080), across(8080), record(40_000, "api", 80)],
                now,
            )
            .unwrap();
        learner.learn(&[across(8080), across(9090)], now).unwrap();
        assert_eq!(learner.graph().read().len(), 3);
        assert_eq!(
            learner.cross_tenant_edges_learned(),
            &BTreeMap::from([(
                TenantPair {
                    source: "acme".into(),
                    destination: "globex".into()
                },
                2
            )])
        );
    }

    #[test]
    fn a_failed_commit_marks_the_graph_not_durable_until_a_snapshot_succeeds() {
        let Some(disk) = Tmpfs::mount_as_root("16k") else {
            return;
        };
        let (mut learner, _) = Learner::open(LearnerSettings {
            state_dir: disk.0.path().to_owned(),
            expiry: None,
            max_edges: 100_000,
        })
        .unwrap();
        let shared = learner.graph();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let long = "w".repeat(250);
        let mut learned = 0;
        let failed_at = (1..2_000).find(|port| {
            let failed = learner.learn(&[record(40_000, &long, *port)], now).is_err();
            learned += 1;
            failed
        });
        assert!(failed_at.is_some(), "a 16 KiB disk fills up");
        assert!(!shared.durable());
        // The reader still sees every edge, the last one included.
        assert_eq!(shared.read().len(), learned);
        // Space comes back: a commit alone does not bring back what failed.
        disk.resize("1m");
        learner.learn(&[record(40_000, "api", 8080)], now).unwrap();
        assert!(!shared.durable());
        learner.close().unwrap();
        assert!(shared.durable());
        drop(learner);
        let (reopened, _) = Learner::open(LearnerSettings {
            state_dir: disk.0.path().to_owned(),
            expiry: None,
            max_edges: 100_000,
        })
        .unwrap();
        assert_eq!(*reopened.graph().read(), *shared.read());
    }
}
