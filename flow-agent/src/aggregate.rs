//! The per-interval view the learner and the API consume: flow records folded
//! by (client workload, server workload, protocol, server port), requests and
//! replies together.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    identity::{Identity, PeerKind, Workload},
    record::{Endpoint, FlowRecord, Protocol, Timestamp},
};

/// One end of an aggregate: a workload, or a node, the API server, a Service
/// that could not be resolved further, or an outside address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// What kind of peer (absent when identity is not configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PeerKind>,
    /// Namespace of a workload or Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The workload's stable labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node, for node peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The address, for peers without a workload (world, unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl Peer {
    /// The aggregation identity of a record's end: its workload if it has one,
    /// else its node, else its address.
    pub fn of(endpoint: &Endpoint) -> Self {
        let Endpoint { ip, identity, .. } = endpoint;
        let Identity {
            kind,
            namespace,
            workload,
            tenant,
            labels,
            node,
            ..
        } = &**identity;
        let has_workload = workload.is_some();
        let is_node = matches!(kind, Some(PeerKind::Host | PeerKind::RemoteNode));
        Self {
            kind: *kind,
            namespace: namespace.clone(),
            workload: workload.clone(),
            tenant: tenant.clone(),
            labels: labels.clone(),
            node: node.clone().filter(|_| is_node),
            ip: (!has_workload && !is_node && *kind != Some(PeerKind::KubeApiserver))
                .then_some(*ip),
        }
    }
}

/// Connections and traffic between two peers on one port during one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateRecord {
    /// Start of the interval.
    pub interval_start: Timestamp,
    /// End of the interval.
    pub interval_end: Timestamp,
    /// The client.
    pub source: Peer,
    /// The server.
    pub destination: Peer,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The server's port (a Service's target port, not the Service port).
    pub port: u16,
    /// Service the clients addressed, as `namespace/name`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Connections that started in the interval.
    pub connections: u64,
    /// Packets from clients to the server.
    pub packets: u64,
    /// Bytes from clients to the server.
    pub bytes: u64,
    /// Packets from the server back to clients.
    pub reply_packets: u64,
    /// Bytes from the server back to clients.
    pub reply_bytes: u64,
    /// First packet in the interval.
    pub first_seen: Timestamp,
    /// Last packet in the interval.
    pub last_seen: Timestamp,
    /// Client and server belong to different tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_tenant: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct AggregateKey {
    source: Peer,
    destination: Peer,
    protocol: Protocol,
    port: u16,
}

/// Folds one interval's records; [`Aggregator::finish`] emits and clears.
#[derive(Debug, Default)]
pub struct Aggregator {
    entries: BTreeMap<AggregateKey, AggregateRecord>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held (bounded by the peer pairs of one interval).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one record, in the orientation of its connection's request.
    pub fn add(&mut self, record: &FlowRecord, interval_start: Timestamp) {
        let (client, server) = if record.is_reply {
            (&record.destination, &record.source)
        } else {
            (&record.source, &record.destination)
        };
        let port = server
            .service
            .as_ref()
            .and_then(|service| service.target_port)
            .unwrap_or(server.port);
        let key = AggregateKey {
            source: Peer::of(client),
            destination: Peer::of(server),
            protocol: record.protocol,
            port,
        };
        let entry = self
            .entries
            .entry(key)
            .or_insert_with_key(|key| AggregateRecord {
                interval_start,
                interval_end: record.time,
                source: key.source.clone(),
                destination: key.destination.clone(),
                protocol: key.protocol,
                port: key.port,
                service: None,
                connections: 0,
                packets: 0,
                bytes: 0,
                reply_packets: 0,
                reply_bytes: 0,
                first_seen: record.first_seen,
                last_seen: record.time,
                cross_tenant: record.cross_tenant,
            });
        if let Some(service) = &server.service {
            entry.service = Some(format!("{}/{}", service.namespace, service.name));
        }
        if record.is_reply {
            entry.reply_packets += record.packets;
            entry.reply_bytes += record.bytes;
        } else {
            entry.packets += record.packets;
            entry.bytes += record.bytes;
            entry.connections += u64::from(record.new_connection);
        }
        entry.first_seen = entry.first_seen.min(record.first_seen);
        entry.last_seen = entry.last_seen.max(record.time);
    }

    /// The interval's aggregates, in a stable order, ending at `interval_end`.
    pub fn finish(&mut self, interval_end: Timestamp) -> Vec<AggregateRecord> {
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|mut record| {
                record.interval_end = interval_end;
                record
            })
            .collect()
    }
}
