//! Between the agent's records and their protobuf form, both ways: the server
//! sends protobuf, the CLI prints the agent's own JSON schema.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use flow_proto::v1 as proto;

use crate::{
    aggregate::{AggregateRecord, Peer},
    identity::{Identity, PeerKind, ServiceRef, Workload},
    policy::graph::{Change, Edge, EdgeKey, EdgeStats, Graph, Party, WorkloadInfo, WorkloadRef},
    record::{Endpoint, FlowRecord, Hook, Icmp, Protocol, Timestamp},
};

fn timestamp(Timestamp(time): Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(time))
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LATEST_SECONDS: u64 = 253_402_300_799;

/// A protobuf time as a [`Timestamp`], clamped to 1970..=9999: a server's
/// time outside what RFC 3339 can print must not make the client panic.
fn from_timestamp(timestamp: Option<&prost_types::Timestamp>) -> Timestamp {
    let latest = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LATEST_SECONDS);
    let time = timestamp.map_or(SystemTime::UNIX_EPOCH, |timestamp| {
        // Far-future seconds may not fit a SystemTime at all.
        if timestamp.seconds > LATEST_SECONDS as i64 {
            latest
        } else {
            SystemTime::try_from(*timestamp).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    });
    Timestamp(time.clamp(SystemTime::UNIX_EPOCH, latest))
}

fn kind(kind: Option<PeerKind>) -> String {
    kind.map_or_else(String::new, |kind| kind.as_str().to_owned())
}

fn workload(workload: Option<&Workload>) -> Option<proto::Workload> {
    workload.map(|Workload { kind, name }| proto::Workload {
        kind: kind.clone(),
        name: name.clone(),
    })
}

fn from_workload(workload: Option<&proto::Workload>) -> Option<Workload> {
    workload.map(|proto::Workload { kind, name }| Workload {
        kind: kind.clone(),
        name: name.clone(),
    })
}

fn text(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn endpoint(endpoint: &Endpoint) -> proto::Endpoint {
    let Endpoint {
        ip,
        port,
        identity,
        service,
    } = endpoint;
    let Identity {
        kind: peer,
        namespace,
        pod,
        workload: owner,
        tenant,
        labels,
        node,
        note,
    } = &**identity;
    proto::Endpoint {
        ip: ip.to_string(),
        port: u32::from(*port),
        kind: kind(*peer),
        namespace: namespace.clone().unwrap_or_default(),
        pod: pod.clone().unwrap_or_default(),
        workload: workload(owner.as_ref()),
        tenant: tenant.clone().unwrap_or_default(),
        labels: labels.clone().into_iter().collect(),
        node: node.clone().unwrap_or_default(),
        note: note.clone().unwrap_or_default(),
        service: service.as_ref().map(
            |ServiceRef {
                 namespace,
                 name,
                 ip,
                 port,
                 target_port,
             }| proto::ServiceRef {
                namespace: namespace.clone(),
                name: name.clone(),
                ip: ip.to_string(),
                port: u32::from(*port),
                target_port: target_port.map_or(0, u32::from),
            },
        ),
    }
}

fn from_endpoint(endpoint: Option<&proto::Endpoint>) -> Endpoint {
    let default = proto::Endpoint::default();
    let proto::Endpoint {
        ip,
        port,
        kind,
        namespace,
        pod,
        workload,
        tenant,
        labels,
        node,
        note,
        service,
    } = endpoint.unwrap_or(&default);
    let address = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    Endpoint {
        ip: address,
        port: u16::try_from(*port).unwrap_or(0),
        identity: Arc::new(Identity {
            kind: PeerKind::from_name(kind),
            namespace: text(namespace),
            pod: text(pod),
            workload: from_workload(workload.as_ref()),
            tenant: text(tenant),
            labels: labels.clone().into_iter().collect(),
            node: text(node),
            note: text(note),
        }),
        service: service.as_ref().map(
            |proto::ServiceRef {
                 namespace,
                 name,
                 ip,
                 port,
                 target_port,
             }| ServiceRef {
                namespace: namespace.clone(),
                name: name.clone(),
                ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                port: u16::try_from(*port).unwrap_or(0),
                target_port: u16::try_from(*target_port).ok().filter(|port| *port != 0),
            },
        ),
    }
}

/// A record in protobuf form, at `sequence` in the buffer.
pub fn flow(record: &FlowRecord, sequence: u64) -> proto::Flow {
    let FlowRecord {
        time,
        first_seen,
        source,
        destination,
        protocol,
        icmp,
        packets,
        bytes,
        tcp_flags,
        is_reply,
        interface,
        interface_index,
        hook,
        node,
        cross_tenant,
        new_connection,
        violation,
    } = record;
    proto::Flow {
        time: timestamp(*time),
        first_seen: timestamp(*first_seen),
        source: Some(endpoint(source)),
        destination: Some(endpoint(destination)),
        protocol: protocol.to_string(),
        icmp: icmp.map(|Icmp { icmp_type, code }| proto::Icmp {
            r#type: u32::from(icmp_type),
            code: u32::from(code),
        }),
        packets: *packets,
        bytes: *bytes,
        tcp_flags: tcp_flags.clone(),
        is_reply: *is_reply,
        interface: interface.clone(),
        interface_index: *interface_index,
        hook: match hook {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
        .to_owned(),
        node: node.clone(),
        cross_tenant: *cross_tenant,
        new_connection: *new_connection,
        violation: *violation,
        sequence,
    }
}

/// A protobuf flow as the agent's record.
pub fn from_flow(flow: &proto::Flow) -> FlowRecord {
    let proto::Flow {
        time,
        first_seen,
        source,
        destination,
        protocol,
        icmp,
        packets,
        bytes,
        tcp_flags,
        is_reply,
        interface,
        interface_index,
        hook,
        node,
        cross_tenant,
        new_connection,
        violation,
        sequence: _,
    } = flow;
    FlowRecord {
        time: from_timestamp(time.as_ref()),
        first_seen: from_timestamp(first_seen.as_ref()),
        source: from_endpoint(source.as_ref()),
        destination: from_endpoint(destination.as_ref()),
        protocol: protocol.parse().unwrap_or(Protocol(0)),
        icmp: icmp.as_ref().map(|proto::Icmp { r#type, code }| Icmp {
            icmp_type: u8::try_from(*r#type).unwrap_or(0),
            code: u8::try_from(*code).unwrap_or(0),
        }),
        packets: *packets,
        bytes: *bytes,
        tcp_flags: tcp_flags.clone(),
        is_reply: *is_reply,
        interface: interface.clone(),
        interface_index: *interface_index,
        hook: if hook == "egress" {
            Hook::Egress
        } else {
            Hook::Ingress
        },
        node: node.clone(),
        cross_tenant: *cross_tenant,
        new_connection: *new_connection,
        violation: *violation,
    }
}

fn peer(peer: &Peer) -> proto::Peer {
    let Peer {
        kind: peer_kind,
        namespace,
        workload: owner,
        tenant,
        labels,
        node,
        ip,
    } = peer;
    proto::Peer {
        kind: kind(*peer_kind),
        namespace: namespace.clone().unwrap_or_default(),
        workload: workload(owner.as_ref()),
        tenant: tenant.clone().unwrap_or_default(),
        labels: labels.clone().into_iter().collect(),
        node: node.clone().unwrap_or_default(),
        ip: ip.map_or_else(String::new, |ip| ip.to_string()),
    }
}

fn from_peer(peer: Option<&proto::Peer>) -> Peer {
    let default = proto::Peer::default();
    let proto::Peer {
        kind,
        namespace,
        workload,
        tenant,
        labels,
        node,
        ip,
    } = peer.unwrap_or(&default);
    Peer {
        kind: PeerKind::from_name(kind),
        namespace: text(namespace),
        workload: from_workload(workload.as_ref()),
        tenant: text(tenant),
        labels: labels.clone().into_iter().collect(),
        node: text(node),
        ip: ip.parse().ok(),
    }
}

/// An aggregate in protobuf form.
pub fn aggregate(aggregate: &AggregateRecord, node: &str) -> proto::Aggregate {
    let AggregateRecord {
        interval_start,
        interval_end,
        source,
        destination,
        protocol,
        port,
        service,
        connections,
        packets,
        bytes,
        reply_packets,
        reply_bytes,
        first_seen,
        last_seen,
        cross_tenant,
    } = aggregate;
    proto::Aggregate {
        interval_start: timestamp(*interval_start),
        interval_end: timestamp(*interval_end),
        source: Some(peer(source)),
        destination: Some(peer(destination)),
        protocol: protocol.to_string(),
        port: u32::from(*port),
        service: service.clone().unwrap_or_default(),
        connections: *connections,
        packets: *packets,
        bytes: *bytes,
        reply_packets: *reply_packets,
        reply_bytes: *reply_bytes,
        first_seen: timestamp(*first_seen),
        last_seen: timestamp(*last_seen),
        cross_tenant: *cross_tenant,
        node: node.to_owned(),
    }
}

/// A protobuf aggregate as the agent's record.
pub fn from_aggregate(aggregate: &proto::Aggregate) -> AggregateRecord {
    let proto::Aggregate {
        interval_start,
        interval_end,
        source,
        destination,
        protocol,
        port,
        service,
        connections,
        packets,
        bytes,
        reply_packets,
        reply_bytes,
        first_seen,
        last_seen,
        cross_tenant,
        node: _,
    } = aggregate;
    AggregateRecord {
        interval_start: from_timestamp(interval_start.as_ref()),
        interval_end: from_timestamp(interval_end.as_ref()),
        source: from_peer(source.as_ref()),
        destination: from_peer(destination.as_ref()),
        protocol: protocol.parse().unwrap_or(Protocol(0)),
        port: u16::try_from(*port).unwrap_or(0),
        service: text(service),
        connections: *connections,
        packets: *packets,
        bytes: *bytes,
        reply_packets: *reply_packets,
        reply_bytes: *reply_bytes,
        first_seen: from_timestamp(first_seen.as_ref()),
        last_seen: from_timestamp(last_seen.as_ref()),
        cross_tenant: *cross_tenant,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_cannot_print_are_clamped_not_a_panic() {
        let print = |time: Timestamp| humantime::format_rfc3339_nanos(time.0).to_string();
        let at = |seconds: i64, nanos: i32| {
            print(from_timestamp(Some(&prost_types::Timestamp {
                seconds,
                nanos,
            })))
        };
        assert_eq!(at(-1, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(i64::MIN, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(i64::MAX, 0), "9999-12-31T23:59:59.000000000Z");
        assert_eq!(
            at(1_800_000_000, 500_000_000),
            "2027-01-15T08:00:00.500000000Z"
        );
        assert_eq!(
            print(from_timestamp(None)),
            "1970-01-01T00:00:00.000000000Z"
        );
    }
}
