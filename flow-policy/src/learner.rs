//! The agent's learner: folds each drain's records into the graph, writes the
//! changes to the store and only then lets the API see them, so every edge a
//! client has read survives a crash.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
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

/// The graph and its store.
#[derive(Debug)]
pub struct Learner {
    store: Store,
    graph: Arc<RwLock<Graph>>,
    settings: LearnerSettings,
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
                graph: Arc::new(RwLock::new(graph)),
                settings,
            },
            recovery,
        ))
    }

    /// The graph, shared with the API.
    pub fn graph(&self) -> Arc<RwLock<Graph>> {
        Arc::clone(&self.graph)
    }

    /// Learns from one drain's records, expires and bounds the graph, and
    /// makes the changes durable before anyone can read them. Returns how
    /// many entries changed.
    pub fn learn(&mut self, records: &[FlowRecord], now: SystemTime) -> Result<usize, StoreError> {
        let Self {
            store,
            graph,
            settings,
        } = self;
        let mut graph = graph.write().unwrap_or_else(PoisonError::into_inner);
        let mut changes = Vec::new();
        for record in records {
            changes.extend(graph.observe(record));
        }
        changes.extend(graph.prune(now, settings.expiry, settings.max_edges));
        let changes = last_per_entry(changes);
        store.commit(&changes, &graph)?;
        Ok(changes.len())
    }

    /// Writes a snapshot and empties the log (at shutdown).
    pub fn close(&mut self) -> Result<(), StoreError> {
        let graph = self.graph.read().unwrap_or_else(PoisonError::into_inner);
        self.store.compact(&graph)
    }
}
