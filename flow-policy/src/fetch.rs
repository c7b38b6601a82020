//! Fetching the agents' graphs: at most `concurrency` requests in flight,
//! each under a timeout, and each graph merged as soon as it arrives and
//! then dropped, so 500 nodes never need 500 graphs in memory at once: at
//! most `concurrency` of them plus the merged one.

use std::{borrow::Borrow, future::Future, time::Duration};

use futures::StreamExt as _;
use thiserror::Error;

use super::{
    agents::{Agent, Missing},
    graph::{Change, Graph, WorkloadInfo, WorkloadRef},
};
use flow_model::{
    client::{self, ClientError, server_name},
    error_chain,
};

use crate::{cli::GraphSources, wire};

/// Agents asked at once unless `--concurrency` says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How long one agent may take unless `--agent-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one agent's graph is missing.
#[derive(Debug, Error)]
pub enum AgentError {
    /// It cannot be reached, or refused.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// Its graph does not decode.
    #[error("sent an invalid graph: {0}")]
    InvalidGraph(String),
    /// Its graph names a workload or namespace Kubernetes would not accept.
    #[error("sent an invalid name: {0}")]
    InvalidName(String),
    /// It took longer than `--agent-timeout`.
    #[error("no graph within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// `--tls-server-name` has `{node}` but this agent's node is unknown.
    #[error("its node is unknown, so the {{node}} of --tls-server-name cannot be filled in")]
    UnknownNode,
}

/// How many agents answered, and which did not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Agents whose graph was merged.
    pub answered: usize,
    /// Agents whose graph is missing, in the order they failed.
    pub missing: Vec<Missing>,
}

/// Fetches every agent's graph with `fetch`, at most `concurrency` at once
/// and each under `timeout`, and merges each into `merged` as it arrives,
/// then drops it. `on_missing` hears of each agent that fails when it fails.
pub async fn merge_agents<F, Fut, G>(
    agents: Vec<Agent>,
    concurrency: usize,
    timeout: Duration,
    merged: &mut Graph,
    fetch: F,
    mut on_missing: impl FnMut(&Missing),
) -> Fetched
where
    F: Fn(Agent) -> Fut,
    Fut: Future<Output = Result<G, AgentError>>,
    G: Borrow<Graph>,
{
    // `map` makes each request only when `buffer_unordered` has room for it.
    let mut arrivals = futures::stream::iter(agents)
        .map(|agent| {
            let request = tokio::time::timeout(timeout, fetch(agent.clone()));
            async move {
                let result = request.await.unwrap_or(Err(AgentError::Timeout(timeout)));
                (agent, result)
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut fetched = Fetched::default();
    while let Some((agent, result)) = arrivals.next().await {
        match result {
            Ok(graph) => {
                merge(merged, graph.borrow());
                drop(graph);
                fetched.answered += 1;
            }
            Err(error) => {
                let missing = Missing {
                    agent,
                    reason: error_chain(&error),
                };
                on_missing(&missing);
                fetched.missing.push(missing);
            }
        }
    }
    fetched
}

/// Asks one agent for its learned graph (GetGraph), with the connection
/// flags of `sources` and `{node}` in the TLS server name filled in.
pub async fn fetch_graph(
    sources: &GraphSources,
    agent: Agent,
    timeout: Duration,
) -> Result<Graph, AgentError> {
    let mut connect = sources.connect(&agent.address, timeout);
    if let Some(template) = &sources.tls_server_name
        && template.contains("{node}")
    {
        let node = agent.node.as_deref().ok_or(AgentError::UnknownNode)?;
        connect.tls_server_name = Some(server_name(template, node));
    }
    let mut client = client::connect(&connect).await?;
    let response = client
        .get_graph(flow_proto::v1::GetGraphRequest {})
        .await
        .map_err(|status| ClientError::rpc(&agent.address, status))?
        .into_inner();
    if response.in_memory_only {
        tracing::warn!(
            agent = %agent.address,
            "this agent's learned graph is partly in memory only (its last write failed): edges it learned since may be lost if it restarts"
        );
    }
    let graph = wire::from_graph(&response).map_err(AgentError::InvalidGraph)?;
    graph.check_names().map_err(AgentError::InvalidName)?;
    Ok(graph)
}

/// Merges `graph` into `merged` so that the result does not depend on the
/// order graphs arrive in. [`Graph::merge`] keeps a workload's most
/// recently seen labels and tenant, and on a tie those of the graph merged
/// last; here a tie goes to the greater (tenant, labels), so that agents
/// answering in a different order never change the policies.
pub fn merge(merged: &mut Graph, graph: &Graph) {
    let kept: Vec<(WorkloadRef, WorkloadInfo)> = graph
        .workloads()
        .filter_map(|(workload, info)| {
            let known = merged.workload(workload)?;
            (known.last_seen == info.last_seen
                && (&known.tenant, &known.labels) > (&info.tenant, &info.labels))
                .then(|| (workload.clone(), known.clone()))
        })
        .collect();
    merged.merge(graph);
    for (workload, info) in kept {
        merged.apply(Change::Workload { workload, info });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        collections::BTreeMap,
        rc::Rc,
        time::{Duration, SystemTime},
    };

    use super::*;
    use flow_model::record::{Protocol, Timestamp};

    use crate::graph::{Edge, EdgeKey, EdgeStats, Party};

    fn at(seconds: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
    }

    fn workload(name: &str) -> WorkloadRef {
        WorkloadRef {
            namespace: "shop".to_owned(),
            kind: "Deployment".to_owned(),
            name: name.to_owned(),
        }
    }

    /// A graph of one edge `client -> db TCP/5432` seen at `seen`, with
    /// `client` labelled `version=label`.
    fn graph(client: &str, label: &str, seen: u64) -> Graph {
        let mut graph = Graph::new();
        let info = |labels: BTreeMap<String, String>| WorkloadInfo {
            tenant: Some("acme".to_owned()),
            labels,
            last_seen: at(seen),
        };
        graph.apply(Change::Workload {
            workload: workload(client),
            info: info([("version".to_owned(), label.to_owned())].into()),
        });
        graph.apply(Change::Workload {
            workload: workload("db"),
            info: info(BTreeMap::new()),
        });
        graph.apply(Change::Edge(Edge {
            key: EdgeKey {
                client: Party::Workload(workload(client)),
                server: Party::Workload(workload("db")),
                protocol: Protocol(6),
                port: 5432,
            },
            stats: EdgeStats {
                first_seen: at(seen),
                last_seen: at(seen),
                connections: 1,
                packets: 3,
                bytes: 180,
                cross_tenant: false,
                services: Default::default(),
                days: Default::default(),
                names: Default::default(),
            },
        }));
        graph
    }

    fn agent(index: usize) -> Agent {
        Agent {
            address: format!("10.0.0.{index}:4245"),
            node: Some(format!("node-{index}")),
        }
    }

    /// Counts what is alive, for the bounds.
    #[derive(Default)]
    struct Gauge {
        now: Cell<usize>,
        most: Cell<usize>,
    }

    /// One alive thing: counted from its making until its drop.
    struct Counted<T>(T, Rc<Gauge>);

    impl<T> Counted<T> {
        fn new(value: T, gauge: &Rc<Gauge>) -> Self {
            gauge.now.set(gauge.now.get() + 1);
            gauge.most.set(gauge.most.get().max(gauge.now.get()));
            Self(value, Rc::clone(gauge))
        }
    }

    impl<T> Drop for Counted<T> {
        fn drop(&mut self) {
            self.1.now.set(self.1.now.get() - 1);
        }
    }

    impl Borrow<Graph> for Counted<Graph> {
        fn borrow(&self) -> &Graph {
            &self.0
        }
    }

    fn index(agent: &Agent) -> u64 {
        agent.address[7..]
            .trim_end_matches(":4245")
            .parse()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_concurrency_agents_are_asked_at_once_and_failures_are_named() {
        let in_flight = Rc::new(Gauge::default());
        let mut merged = Graph::new();
        let mut heard = Vec::new();
        let fetched = merge_agents(
            (1..=40).map(agent).collect(),
            8,
            Duration::from_secs(10),
            &mut merged,
            |agent| {
                let flight = Counted::new((), &in_flight);
                async move {
                    let index = index(&agent);
                    // Agents answer out of order.
                    tokio::time::sleep(Duration::from_millis(100 + (index * 37) % 90)).await;
                    let answer = match index {
                        7 => Err(AgentError::InvalidGraph("edge 0: no client".to_owned())),
                        13 => std::future::pending().await,
                        _ => Ok(graph(&format!("web{index}"), "v1", index)),
                    };
                    drop(flight);
                    answer
                }
            },
            |missing| heard.push(missing.agent.address.clone()),
        )
        .await;
        assert_eq!(in_flight.most.get(), 8);
        assert_eq!(in_flight.now.get(), 0);
        assert_eq!(fetched.answered, 38);
        assert_eq!(
            fetched
                .missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "agent 10.0.0.7:4245 (node node-7): sent an invalid graph: edge 0: no client",
                "agent 10.0.0.13:4245 (node node-13): no graph within 10s",
            ]
        );
        assert_eq!(heard, ["10.0.0.7:4245", "10.0.0.13:4245"]);
        // Every answering agent's edge, and the workloads of both ends.
        assert_eq!(merged.len(), 38);
        assert_eq!(merged.workloads().count(), 39);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_concurrency_graphs_are_alive_besides_the_merged_one() {
        let alive = Rc::new(Gauge::default());
        let mut merged = Graph::new();
        let fetched = merge_agents(
            (1..=30).map(agent).collect(),
            4,
            Duration::from_secs(10),
            &mut merged,
            |agent| {
                let alive = Rc::clone(&alive);
                async move {
                    let index = index(&agent);
                    tokio::time::sleep(Duration::from_millis(10 + index % 7)).await;
                    let answer = Counted::new(graph(&format!("web{index}"), "v1", index), &alive);
                    // Answered, but kept a while: the four in flight overlap.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(answer)
                }
            },
            |_| {},
        )
        .await;
        assert_eq!(fetched.answered, 30);
        assert_eq!(merged.len(), 30);
        assert_eq!((alive.most.get(), alive.now.get()), (4, 0));
    }

    #[test]
    fn the_merge_does_not_depend_on_the_order_graphs_arrive_in() {
        // The same workload, seen at the same time with different labels on
        // two nodes, and later with a third on another.
        let a = graph("web", "v1", 100);
        let b = graph("web", "v2", 100);
        let c = graph("web", "v0", 50);
        let mut results = Vec::new();
        for order in [[&a, &b, &c], [&b, &a, &c], [&c, &b, &a], [&c, &a, &b]] {
            let mut merged = Graph::new();
            for graph in order {
                merge(&mut merged, graph);
            }
            results.push(merged);
        }
        let web = results[0].workload(&workload("web")).unwrap();
        assert_eq!(web.labels["version"], "v2");
        assert_eq!(web.last_seen, at(100));
        assert!(results.iter().all(|merged| *merged == results[0]));
        let (_, stats) = results[0].edges().next().unwrap();
        assert_eq!((stats.connections, stats.packets), (3, 9));
        assert_eq!(
            results[0].edges().next().unwrap().0.client,
            Party::Workload(workload("web"))
        );
    }
}
