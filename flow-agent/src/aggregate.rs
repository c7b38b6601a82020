//! The per-interval view the learner and the API consume: flow records folded
//! by (client workload, server workload, protocol, server port), requests and
//! replies together.

use std::{collections::BTreeMap, hash::BuildHasher as _, net::IpAddr, sync::Arc};

use hashbrown::{DefaultHashBuilder, Equivalent, HashMap, HashTable, hash_table};
use serde::{Deserialize, Serialize};

use flow_model::identity::{Identity, PeerKind, Workload};

use flow_model::record::{Endpoint, FlowRecord, Protocol, Timestamp};

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
        let ip = Self::address_of(endpoint);
        let Endpoint { identity, .. } = endpoint;
        let Identity {
            kind,
            namespace,
            workload,
            tenant,
            labels,
            node,
            ..
        } = &**identity;
        let is_node = matches!(kind, Some(PeerKind::Host | PeerKind::RemoteNode));
        Self {
            kind: *kind,
            namespace: namespace.clone(),
            workload: workload.clone(),
            tenant: tenant.clone(),
            labels: labels.clone(),
            node: node.clone().filter(|_| is_node),
            ip,
        }
    }

    /// The address a peer keeps: only that of an end without a workload
    /// that is neither a node nor the API server (the world, or an end
    /// without identity).
    fn address_of(endpoint: &Endpoint) -> Option<IpAddr> {
        let Identity { kind, workload, .. } = &*endpoint.identity;
        let is_node = matches!(kind, Some(PeerKind::Host | PeerKind::RemoteNode));
        (workload.is_none() && !is_node && *kind != Some(PeerKind::KubeApiserver))
            .then_some(endpoint.ip)
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

/// Peers (or Services) kept at most from interval to interval: past this
/// they start afresh with the next interval, so that the addresses of the
/// world do not pile up.
const MAX_PEERS: usize = 65_536;

/// The peers met, each once: an aggregate's key is two numbers, not two
/// copies of the peers' names and labels. Kept from interval to interval,
/// as the same workloads talk again.
#[derive(Debug, Default)]
struct Peers {
    peers: Vec<Peer>,
    by_content: HashMap<Peer, u32>,
    /// The peer an identity and an address make. Records of one pod share
    /// its identity, so this finds most peers without building them (or
    /// reading the identity); it holds the identity, so that its address is
    /// not reused by another while it is a key here.
    by_identity: HashMap<(SharedIdentity, IpAddr), u32>,
}

/// An identity compared by address: the interned copy records share.
#[derive(Clone, Debug)]
struct SharedIdentity(Arc<Identity>);

impl PartialEq for SharedIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedIdentity {}

impl std::hash::Hash for SharedIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// A key of [`Peers::by_identity`], looked up without taking a reference
/// count; hashes as the key does.
struct IdentityRef<'a>(&'a Arc<Identity>, IpAddr);

impl std::hash::Hash for IdentityRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(self.0), state);
        self.1.hash(state);
    }
}

impl Equivalent<(SharedIdentity, IpAddr)> for IdentityRef<'_> {
    fn equivalent(&self, key: &(SharedIdentity, IpAddr)) -> bool {
        Arc::ptr_eq(self.0, &key.0.0) && self.1 == key.1
    }
}

impl Peers {
    /// The number of the peer `endpoint` is.
    fn id(&mut self, endpoint: &Endpoint) -> u32 {
        let by_identity = IdentityRef(&endpoint.identity, endpoint.ip);
        if let Some(&id) = self.by_identity.get(&by_identity) {
            return id;
        }
        let key = (SharedIdentity(Arc::clone(&endpoint.identity)), endpoint.ip);
        let peer = Peer::of(endpoint);
        let id = match self.by_content.get(&peer) {
            Some(&id) => id,
            None => {
                // Fewer peers than records, and a drain's records fit in memory.
                let id = u32::try_from(self.peers.len()).unwrap_or(u32::MAX);
                self.by_content.insert(peer.clone(), id);
                self.peers.push(peer);
                id
            }
        };
        self.by_identity.insert(key, id);
        id
    }

    /// The position of each peer of `used` among them in [`Peer`]'s order,
    /// by peer number (peers not used rank first).
    fn ranks(&self, used: impl Iterator<Item = u32>) -> Vec<u32> {
        let mut order: Vec<u32> = used.collect();
        order.sort_unstable();
        order.dedup();
        order.sort_unstable_by(|a, b| self.peers[*a as usize].cmp(&self.peers[*b as usize]));
        let mut ranks = vec![0; self.peers.len()];
        for (rank, id) in order.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
    }
}

/// What an aggregate is about: client, server (numbers in [`Peers`]),
/// protocol and the server's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AggregateKey {
    source: u32,
    destination: u32,
    protocol: Protocol,
    port: u16,
}

/// One aggregate being folded.
#[derive(Clone, Debug)]
struct Entry {
    key: AggregateKey,
    /// The Service (its number in [`Aggregator::services`]) the clients
    /// addressed, last seen.
    service: Option<u32>,
    connections: u64,
    packets: u64,
    bytes: u64,
    reply_packets: u64,
    reply_bytes: u64,
    first_seen: Timestamp,
    last_seen: Timestamp,
    cross_tenant: Option<bool>,
}

/// A Service's `namespace/name`, looked up by its parts without building
/// the string.
#[derive(Hash)]
struct ServiceName<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for ServiceName<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// Folds one interval's records; [`Aggregator::finish`] emits and clears.
///
/// Entries sit in one vector, found through a table of positions, and name
/// their peers and Services by number: a million aggregates take about 100
/// bytes each while they are folded, and become [`AggregateRecord`]s only
/// as they are emitted.
#[derive(Debug, Default)]
pub struct Aggregator {
    interval_start: Option<Timestamp>,
    peers: Peers,
    services: Vec<String>,
    service_ids: HashMap<(String, String), u32>,
    entries: Vec<Entry>,
    /// Positions in `entries`, hashed by key.
    positions: HashTable<u32>,
    hasher: DefaultHashBuilder,
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
    /// `interval_start` is the start of the interval being folded: the same
    /// for every record until [`Aggregator::finish`].
    pub fn add(&mut self, record: &FlowRecord, interval_start: Timestamp) {
        if self.interval_start.is_none() {
            self.start_interval(interval_start);
        }
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
            source: self.peers.id(client),
            destination: self.peers.id(server),
            protocol: record.protocol,
            port,
        };
        let service = server
            .service
            .as_ref()
            .map(|service| self.service_id(service));
        let entry = self.entry(key, record);
        if service.is_some() {
            entry.service = service;
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

    /// The first record of an interval: what is kept from the last
    /// intervals starts afresh when it grew too large.
    fn start_interval(&mut self, interval_start: Timestamp) {
        self.interval_start = Some(interval_start);
        // Every peer was made by a lookup that added to `by_identity`,
        // which also grows as identities are replaced: it bounds both.
        if self.peers.by_identity.len() > MAX_PEERS || self.services.len() > MAX_PEERS {
            self.peers = Peers::default();
            self.services.clear();
            self.service_ids.clear();
        }
    }

    fn service_id(&mut self, service: &flow_model::identity::ServiceRef) -> u32 {
        let name = ServiceName(&service.namespace, &service.name);
        if let Some(&id) = self.service_ids.get(&name) {
            return id;
        }
        let id = u32::try_from(self.services.len()).unwrap_or(u32::MAX);
        self.services
            .push(format!("{}/{}", service.namespace, service.name));
        self.service_ids
            .insert((service.namespace.clone(), service.name.clone()), id);
        id
    }

    /// The entry of `key`, made from `record` when it is new.
    fn entry(&mut self, key: AggregateKey, record: &FlowRecord) -> &mut Entry {
        let Self {
            entries,
            positions,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(key);
        let position = match positions.entry(
            hash,
            |&position| entries[position as usize].key == key,
            |&position| hasher.hash_one(entries[position as usize].key),
        ) {
            hash_table::Entry::Occupied(found) => *found.get(),
            hash_table::Entry::Vacant(vacant) => {
                let position = u32::try_from(entries.len()).unwrap_or(u32::MAX);
                vacant.insert(position);
                entries.push(Entry {
                    key,
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
                position
            }
        };
        &mut entries[position as usize]
    }

    /// The interval's aggregates, in a stable order (by client, server,
    /// protocol and port), ending at `interval_end`.
    pub fn finish(&mut self, interval_end: Timestamp) -> Vec<AggregateRecord> {
        self.finish_lazily(interval_end).collect()
    }

    /// [`Aggregator::finish`], making each aggregate only when it is taken:
    /// the interval's aggregates need not all be in memory at once.
    pub fn finish_lazily(&mut self, interval_end: Timestamp) -> FinishedInterval<'_> {
        let interval_start = self.interval_start.take().unwrap_or(interval_end);
        let mut entries = std::mem::take(&mut self.entries);
        self.positions = HashTable::new();
        let ranks = self.peers.ranks(
            entries
                .iter()
                .flat_map(|entry| [entry.key.source, entry.key.destination]),
        );
        entries.sort_unstable_by_key(|entry| {
            let AggregateKey {
                source,
                destination,
                protocol,
                port,
            } = entry.key;
            (
                ranks[source as usize],
                ranks[destination as usize],
                protocol,
                port,
            )
        });
        FinishedInterval {
            interval_start,
            interval_end,
            peers: &self.peers.peers,
            services: &self.services,
            entries: entries.into_iter(),
        }
    }
}

/// The aggregates of a finished interval, in order, made as they are taken.
#[derive(Debug)]
pub struct FinishedInterval<'a> {
    interval_start: Timestamp,
    interval_end: Timestamp,
    peers: &'a [Peer],
    services: &'a [String],
    entries: std::vec::IntoIter<Entry>,
}

impl Iterator for FinishedInterval<'_> {
    type Item = AggregateRecord;

    fn next(&mut self) -> Option<AggregateRecord> {
        let Entry {
            key:
                AggregateKey {
                    source,
                    destination,
                    protocol,
                    port,
                },
            service,
            connections,
            packets,
            bytes,
            reply_packets,
            reply_bytes,
            first_seen,
            last_seen,
            cross_tenant,
        } = self.entries.next()?;
        Some(AggregateRecord {
            interval_start: self.interval_start,
            interval_end: self.interval_end,
            source: self.peers[source as usize].clone(),
            destination: self.peers[destination as usize].clone(),
            protocol,
            port,
            service: service.map(|id| self.services[id as usize].clone()),
            connections,
            packets,
            bytes,
            reply_packets,
            reply_bytes,
            first_seen,
            last_seen,
            cross_tenant,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for FinishedInterval<'_> {}
