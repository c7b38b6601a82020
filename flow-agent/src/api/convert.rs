//! Between the agent's records and their protobuf form, both ways: the server
//! sends protobuf, the CLI prints the agent's own JSON schema.

use std::{net::IpAddr, sync::Arc};

use flow_proto::v1 as proto;

use flow_model::wire::{from_timestamp, text, timestamp};
pub use flow_policy::wire::{from_graph, graph};

use flow_model::identity::{Identity, PeerKind, ServiceRef, Workload};

use flow_model::record::{Endpoint, FlowRecord, Hook, Icmp, IcmpErrors, Protocol};

use crate::aggregate::{AggregateRecord, Peer};

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

fn endpoint(endpoint: &Endpoint) -> proto::Endpoint {
    let Endpoint {
        ip,
        port,
        identity,
        service,
        names,
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
        names: names.iter().map(|name| name.to_string()).collect(),
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
        names,
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
        names: names.iter().map(|name| Arc::from(name.as_str())).collect(),
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
        icmp_errors,
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
        icmp_errors: icmp_errors
            .as_ref()
            .map(|IcmpErrors { packets, kinds }| proto::IcmpErrors {
                packets: *packets,
                kinds: kinds.clone(),
            }),
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
        icmp_errors,
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
        icmp_errors: icmp_errors
            .as_ref()
            .map(|proto::IcmpErrors { packets, kinds }| IcmpErrors {
                packets: *packets,
                kinds: kinds.clone(),
            }),
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
