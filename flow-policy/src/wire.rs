//! A learned graph in the agent API's protobuf form (GetGraph), both ways.

use flow_model::{
    identity::PeerKind,
    wire::{from_timestamp, text, timestamp},
};
use flow_proto::v1 as proto;

use crate::graph::{
    Change, DaysSeen, Edge, EdgeKey, EdgeStats, Graph, Party, WorkloadInfo, WorkloadRef,
};

fn workload_id(workload: &WorkloadRef) -> proto::WorkloadId {
    let WorkloadRef {
        namespace,
        kind,
        name,
    } = workload;
    proto::WorkloadId {
        namespace: namespace.clone(),
        kind: kind.clone(),
        name: name.clone(),
    }
}

fn party(party: &Party) -> proto::Party {
    proto::Party {
        party: Some(match party {
            Party::Workload(workload) => proto::party::Party::Workload(workload_id(workload)),
            Party::Address { ip, kind } => proto::party::Party::Address(proto::GraphAddress {
                ip: ip.to_string(),
                kind: kind.as_str().to_owned(),
            }),
        }),
    }
}

fn from_workload_id(workload: Option<&proto::WorkloadId>) -> Result<WorkloadRef, String> {
    let proto::WorkloadId {
        namespace,
        kind,
        name,
    } = workload.ok_or("workload missing")?;
    if namespace.is_empty() || kind.is_empty() || name.is_empty() {
        return Err(format!("incomplete workload {namespace}/{kind}/{name}"));
    }
    Ok(WorkloadRef {
        namespace: namespace.clone(),
        kind: kind.clone(),
        name: name.clone(),
    })
}

fn from_party(party: Option<&proto::Party>) -> Result<Party, String> {
    match party.and_then(|party| party.party.as_ref()) {
        Some(proto::party::Party::Workload(workload)) => {
            Ok(Party::Workload(from_workload_id(Some(workload))?))
        }
        Some(proto::party::Party::Address(proto::GraphAddress { ip, kind })) => {
            Ok(Party::Address {
                ip: ip
                    .parse()
                    .map_err(|_| format!("{ip:?} is not an address"))?,
                kind: PeerKind::from_name(kind)
                    .ok_or_else(|| format!("{kind:?} is not a peer kind"))?,
            })
        }
        None => Err("party missing".to_owned()),
    }
}

/// The part of a graph a caller may see, in protobuf form: edges with an end
/// `visible`, and the workloads they refer to.
pub fn graph(graph: &Graph, visible: impl Fn(&Party, &EdgeKey) -> bool) -> proto::GetGraphResponse {
    let mut workloads = std::collections::BTreeSet::new();
    let edges = graph
        .edges()
        .filter(|(key, _)| visible(&key.client, key) || visible(&key.server, key))
        .map(|(key, stats)| {
            for end in [&key.client, &key.server] {
                if let Party::Workload(workload) = end {
                    workloads.insert(workload.clone());
                }
            }
            let EdgeStats {
                first_seen,
                last_seen,
                connections,
                packets,
                bytes,
                cross_tenant,
                services,
                days,
                names,
            } = stats;
            let (last_day, days_mask) = days.parts();
            proto::GraphEdge {
                client: Some(party(&key.client)),
                server: Some(party(&key.server)),
                protocol: key.protocol.to_string(),
                port: u32::from(key.port),
                first_seen: timestamp(*first_seen),
                last_seen: timestamp(*last_seen),
                connections: *connections,
                packets: *packets,
                bytes: *bytes,
                cross_tenant: *cross_tenant,
                services: services.iter().cloned().collect(),
                last_day,
                days_mask,
                names: names.iter().cloned().collect(),
            }
        })
        .collect();
    let workloads = workloads
        .iter()
        .filter_map(|workload| {
            let WorkloadInfo {
                tenant,
                labels,
                last_seen,
            } = graph.workload(workload)?;
            Some(proto::GraphWorkload {
                workload: Some(workload_id(workload)),
                tenant: tenant.clone().unwrap_or_default(),
                labels: labels.clone().into_iter().collect(),
                last_seen: timestamp(*last_seen),
            })
        })
        .collect();
    proto::GetGraphResponse {
        edges,
        workloads,
        // The agent says whether its graph is durable.
        in_memory_only: false,
    }
}

/// A graph from its protobuf form; an error names the bad edge or workload.
pub fn from_graph(response: &proto::GetGraphResponse) -> Result<Graph, String> {
    let mut graph = Graph::new();
    for (index, edge) in response.edges.iter().enumerate() {
        let proto::GraphEdge {
            client,
            server,
            protocol,
            port,
            first_seen,
            last_seen,
            connections,
            packets,
            bytes,
            cross_tenant,
            services,
            last_day,
            days_mask,
            names,
        } = edge;
        let invalid = |message: String| format!("edges[{index}]: {message}");
        let key = EdgeKey {
            client: from_party(client.as_ref())
                .map_err(|message| invalid(format!("client: {message}")))?,
            server: from_party(server.as_ref())
                .map_err(|message| invalid(format!("server: {message}")))?,
            protocol: protocol.parse().map_err(invalid)?,
            port: u16::try_from(*port).map_err(|_| invalid(format!("port {port}")))?,
        };
        let days = DaysSeen::from_parts(*last_day, *days_mask)
            .map_err(|message| invalid(format!("days: {message}")))?;
        graph.apply(Change::Edge(Edge {
            key,
            stats: EdgeStats {
                first_seen: from_timestamp(first_seen.as_ref()),
                last_seen: from_timestamp(last_seen.as_ref()),
                connections: *connections,
                packets: *packets,
                bytes: *bytes,
                cross_tenant: *cross_tenant,
                services: services.iter().cloned().collect(),
                days,
                names: {
                    let mut kept = std::collections::BTreeSet::new();
                    crate::graph::add_names(&mut kept, names.iter().map(String::as_str));
                    kept
                },
            },
        }));
    }
    for (index, entry) in response.workloads.iter().enumerate() {
        let proto::GraphWorkload {
            workload,
            tenant,
            labels,
            last_seen,
        } = entry;
        graph.apply(Change::Workload {
            workload: from_workload_id(workload.as_ref())
                .map_err(|message| format!("workloads[{index}]: {message}"))?,
            info: WorkloadInfo {
                tenant: text(tenant),
                labels: labels.clone().into_iter().collect(),
                last_seen: from_timestamp(last_seen.as_ref()),
            },
        });
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use flow_model::record::{Protocol, Timestamp};

    fn at_day(day: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(day * 86_400 + 3_600))
    }

    fn one_edge(days: DaysSeen) -> Graph {
        let mut graph = Graph::new();
        graph.apply(Change::Edge(Edge {
            key: EdgeKey {
                client: Party::Workload(WorkloadRef {
                    namespace: "shop".into(),
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                server: Party::Address {
                    ip: "203.0.113.9".parse().unwrap(),
                    kind: PeerKind::World,
                },
                protocol: Protocol(6),
                port: 443,
            },
            stats: EdgeStats {
                first_seen: at_day(20_000),
                last_seen: at_day(20_010),
                connections: 0,
                packets: 4,
                bytes: 240,
                cross_tenant: false,
                services: Default::default(),
                days,
                names: Default::default(),
            },
        }));
        graph
    }

    #[test]
    fn days_cross_the_wire_and_an_agent_without_them_gets_first_and_last() {
        let mut days = DaysSeen::on(at_day(20_000));
        days.record(at_day(20_003));
        days.record(at_day(20_010));
        let graph = one_edge(days);
        let response = super::graph(&graph, |_, _| true);
        let edge = &response.edges[0];
        assert_eq!(
            (edge.last_day, edge.days_mask),
            (20_010, 1 | 1 << 7 | 1 << 10)
        );
        assert_eq!(from_graph(&response).unwrap(), graph);
        // An older agent sends neither field.
        let mut old = response.clone();
        old.edges[0].last_day = 0;
        old.edges[0].days_mask = 0;
        let read = from_graph(&old).unwrap();
        let (_, stats) = read.edges().next().unwrap();
        assert_eq!(stats.days.parts(), (20_010, 1 | 1 << 10));
        assert_eq!((stats.connections, stats.connection_count()), (0, 1));
        // A mask without its last day is refused, naming the edge.
        let mut bad = response;
        bad.edges[0].days_mask = 0b10;
        assert_eq!(
            from_graph(&bad).unwrap_err(),
            "edges[0]: days: days mask 0x2 does not have its last day 20010 set"
        );
    }
}
