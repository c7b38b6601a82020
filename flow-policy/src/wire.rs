//! A learned graph in the agent API's protobuf form (GetGraph), both ways.

use flow_model::{
    identity::PeerKind,
    wire::{from_timestamp, text, timestamp},
};
use flow_proto::v1 as proto;

use crate::graph::{Change, Edge, EdgeKey, EdgeStats, Graph, Party, WorkloadInfo, WorkloadRef};

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
            } = stats;
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
    proto::GetGraphResponse { edges, workloads }
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
