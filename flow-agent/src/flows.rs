//! Connection tracking in userspace: which end opened each connection, so every
//! record can say whether it is the request or the reply direction.
//!
//! Evidence, strongest first: a TCP segment with SYN and without ACK comes from
//! the initiator, SYN+ACK from the responder; an ICMP echo (or timestamp,
//! information, address-mask) request from the initiator and its reply from the
//! responder. Without such evidence (UDP, SCTP, a TCP connection already open when
//! the agent started or restarted, or one idle past the timeout), the end with
//! an ephemeral port (32768 and up, Linux's and Windows' client range) talking
//! to one below it is the initiator: servers listen low (80, 5432, NodePorts up
//! to 32767), so a reply seen first does not turn a connection around.
//! An ICMP error counted with the connection it quotes is its reply
//! direction (see [`flow_common::icmp_error`]).
//! Otherwise whichever direction was seen first is the request. Weak decisions
//! are corrected when strong evidence arrives later.

use std::hash::BuildHasher as _;

use flow_common::{FlowKey, protocol, tcp_flag};
use hashbrown::{DefaultHashBuilder, HashTable, hash_table};

use crate::drain::FlowSample;

/// An (address, port) pair; for ICMP the port is zero.
type Endpoint = ([u8; 16], u16);

/// Both directions of a connection map to the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnectionKey {
    low: Endpoint,
    high: Endpoint,
    protocol: u8,
    /// For ICMP: the request type of the exchange (echo replies map to echo
    /// requests), and the code. Zero for other protocols.
    icmp_exchange: u8,
    icmp_code: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Request,
    Reply,
}

/// What the tracker remembers of one connection: 16 bytes, beside its
/// 40-byte key, since a node may track a million.
#[derive(Clone, Copy, Debug)]
struct Connection {
    last_seen_ns: u64,
    /// The drain ([`FlowTracker::drains`]) in which the connection last
    /// opened.
    opened_in: u32,
    /// The initiator is the key's `low` end (else its `high` end).
    initiator_is_low: bool,
    /// Decided by SYN or ICMP type rather than first sight.
    certain: bool,
    /// FIN or RST seen: forget the connection soon after it goes quiet.
    closing: bool,
}

impl Connection {
    fn initiator(&self, key: &ConnectionKey) -> Endpoint {
        if self.initiator_is_low {
            key.low
        } else {
            key.high
        }
    }
}

/// How long connections are remembered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    /// A connection without traffic for this long is forgotten.
    pub idle_timeout_ns: u64,
    /// A TCP connection that saw FIN or RST is forgotten after this much quiet.
    pub closed_timeout_ns: u64,
}

/// What the tracker decided about one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The reply direction of its connection.
    pub is_reply: bool,
    /// The request direction of a connection that started in this drain (TCP:
    /// a SYN; other protocols: first seen).
    pub new_connection: bool,
}

/// Remembers the initiator of each live connection.
///
/// Connections sit in one vector, found through a table of positions: a
/// million take 56 bytes each and 5 for the table, and a drain's second
/// look at a sample's connection is an index, not a second hash lookup.
#[derive(Default)]
pub struct FlowTracker {
    connections: Vec<(ConnectionKey, Connection)>,
    /// Positions in `connections`, hashed by key.
    positions: HashTable<u32>,
    hasher: DefaultHashBuilder,
    config: TrackerConfig,
    /// Drains classified so far, wrapping. A connection whose `opened_in` is
    /// the current number opened in the current drain.
    drains: u32,
}

impl std::fmt::Debug for FlowTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTracker")
            .field("connections", &self.connections.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// ICMP request types and their replies (RFC 792, RFC 4443).
const ICMP_EXCHANGES: [(u8, u8); 4] = [(8, 0), (13, 14), (15, 16), (17, 18)];
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

fn icmp_role(protocol: u8, icmp_type: u8) -> Option<(Role, u8)> {
    match protocol {
        protocol::ICMP => ICMP_EXCHANGES.iter().find_map(|&(request, reply)| {
            if icmp_type == request {
                Some((Role::Request, request))
            } else if icmp_type == reply {
                Some((Role::Reply, request))
            } else {
                None
            }
        }),
        protocol::ICMPV6 => match icmp_type {
            ICMPV6_ECHO_REQUEST => Some((Role::Request, ICMPV6_ECHO_REQUEST)),
            ICMPV6_ECHO_REPLY => Some((Role::Reply, ICMPV6_ECHO_REQUEST)),
            _ => None,
        },
        _ => None,
    }
}

fn connection_key(key: &FlowKey) -> ConnectionKey {
    let FlowKey {
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        protocol,
        icmp_type,
        icmp_code,
        _pad,
    } = *key;
    let source = (src_addr, src_port);
    let destination = (dst_addr, dst_port);
    let (low, high) = if source <= destination {
        (source, destination)
    } else {
        (destination, source)
    };
    let icmp_exchange = match icmp_role(protocol, icmp_type) {
        Some((_, request)) => request,
        None => icmp_type,
    };
    ConnectionKey {
        low,
        high,
        protocol,
        icmp_exchange,
        icmp_code,
    }
}

/// What a sample proves about its own direction. ICMP errors travel back to
/// the sender of the packet they quote, and the datapath counts them under the
/// quoted connection's reply key: a sample of nothing but errors is a reply.
fn evidence(sample: &FlowSample) -> Option<Role> {
    let FlowKey {
        protocol,
        icmp_type,
        ..
    } = sample.key;
    if sample.icmp_errors != 0 && sample.icmp_errors == sample.packets {
        return Some(Role::Reply);
    }
    match protocol {
        protocol::TCP if sample.tcp_flags & tcp_flag::SYN_ONLY != 0 => Some(Role::Request),
        protocol::TCP if sample.tcp_flags & tcp_flag::SYN_ACK != 0 => Some(Role::Reply),
        protocol::ICMP | protocol::ICMPV6 => icmp_role(protocol, icmp_type).map(|(role, _)| role),
        _ => None,
    }
}

impl FlowTracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Connections remembered.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// No connection is remembered.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Decides, for each sample of one drain (ordered by first packet), whether
    /// it is the reply direction and whether it opened a connection. Returns
    /// one decision per sample, in order.
    pub fn classify(&mut self, samples: &[FlowSample]) -> Vec<Classified> {
        self.drains = self.drains.wrapping_add(1);
        self.reserve(samples.len());
        // First pass: learn initiators, so that strong evidence anywhere in the
        // drain decides every record of the connection.
        let positions: Vec<u32> = samples.iter().map(|sample| self.learn(sample)).collect();
        samples
            .iter()
            .zip(positions)
            .map(|(sample, position)| {
                let source = (sample.key.src_addr, sample.key.src_port);
                let (key, connection) = &self.connections[position as usize];
                let is_reply = connection.initiator(key) != source;
                Classified {
                    is_reply,
                    new_connection: !is_reply && connection.opened_in == self.drains,
                }
            })
            .collect()
    }

    /// Room for `additional` more connections: a drain's connections are at
    /// most its samples, and making room once spares the table its growth,
    /// each doubling of which hashes every key again.
    fn reserve(&mut self, additional: usize) {
        let Self {
            connections,
            positions,
            hasher,
            ..
        } = self;
        connections.reserve(additional);
        positions.reserve(additional, |&position| {
            hasher.hash_one(connections[position as usize].0)
        });
    }

    /// What one sample teaches about its connection; returns the
    /// connection's position.
    fn learn(&mut self, sample: &FlowSample) -> u32 {
        let source = (sample.key.src_addr, sample.key.src_port);
        let destination = (sample.key.dst_addr, sample.key.dst_port);
        let evidence = evidence(sample);
        let closing = sample.key.protocol == protocol::TCP
            && sample.tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0;
        let proven_initiator = match evidence {
            Some(Role::Request) => Some(source),
            Some(Role::Reply) => Some(destination),
            None => None,
        };
        let key = connection_key(&sample.key);
        let syn = sample.tcp_flags & tcp_flag::SYN_ONLY != 0;
        let drain = self.drains;
        let (position, known) = self.find_or_insert(key, || {
            // TCP opens with a SYN: one without is a connection already
            // open (an agent restart, an idle connection forgotten). Other
            // protocols open on first sight.
            let opens = sample.key.protocol != protocol::TCP || syn;
            let initiator = proven_initiator
                .or_else(|| by_ports(source, destination))
                .unwrap_or(source);
            Connection {
                last_seen_ns: sample.last_seen_ns,
                // Never this drain's number unless it opens now.
                opened_in: if opens { drain } else { drain.wrapping_sub(1) },
                initiator_is_low: initiator == key.low,
                certain: proven_initiator.is_some(),
                closing,
            }
        });
        if !known {
            return position;
        }
        let connection = &mut self.connections[position as usize].1;
        // A SYN on a known open connection is a retransmission; after FIN
        // or RST it is the tuple reused.
        if syn && connection.closing {
            connection.opened_in = drain;
        }
        if let Some(initiator) = proven_initiator {
            // A new SYN on a known tuple is a new connection (port reuse);
            // otherwise strong evidence corrects first sight.
            if !connection.certain || evidence == Some(Role::Request) {
                connection.initiator_is_low = initiator == key.low;
                connection.certain = true;
            }
            if evidence == Some(Role::Request) {
                connection.closing = false;
            }
        }
        connection.closing |= closing;
        connection.last_seen_ns = connection.last_seen_ns.max(sample.last_seen_ns);
        position
    }

    /// The position of `key`'s connection, made by `make` when unknown, and
    /// whether it was known.
    fn find_or_insert(
        &mut self,
        key: ConnectionKey,
        make: impl FnOnce() -> Connection,
    ) -> (u32, bool) {
        let Self {
            connections,
            positions,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(key);
        match positions.entry(
            hash,
            |&position| connections[position as usize].0 == key,
            |&position| hasher.hash_one(connections[position as usize].0),
        ) {
            hash_table::Entry::Occupied(found) => (*found.get(), true),
            hash_table::Entry::Vacant(vacant) => {
                // Connections are fewer than the samples of the drains that
                // made them, and a drain's samples fit in memory.
                let position = u32::try_from(connections.len()).unwrap_or(u32::MAX);
                vacant.insert(position);
                connections.push((key, make()));
                (position, false)
            }
        }
    }

    /// Forgets connections that have been quiet for too long; returns how many.
    pub fn evict_idle(&mut self, now_ns: u64) -> usize {
        let TrackerConfig {
            idle_timeout_ns,
            closed_timeout_ns,
        } = self.config;
        let before = self.connections.len();
        let mut position = 0;
        while let Some((_, connection)) = self.connections.get(position) {
            let timeout = if connection.closing {
                closed_timeout_ns
            } else {
                idle_timeout_ns
            };
            if now_ns.saturating_sub(connection.last_seen_ns) < timeout {
                position += 1;
            } else {
                // The last connection takes its place: look at it next.
                self.remove(position);
            }
        }
        // After a burst, give back what a tracker a quarter as full needs.
        if self.connections.len() < self.connections.capacity() / 4 {
            let Self {
                connections,
                positions,
                hasher,
                ..
            } = self;
            connections.shrink_to(connections.len() * 2);
            positions.shrink_to(connections.len() * 2, |&position| {
                hasher.hash_one(connections[position as usize].0)
            });
        }
        before - self.connections.len()
    }

    /// Removes the connection at `position`; the last one moves there.
    fn remove(&mut self, position: usize) {
        let Self {
            connections,
            positions,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(connections[position].0);
        if let Ok(found) = positions.find_entry(hash, |&found| found as usize == position) {
            found.remove();
        }
        let last = connections.len() - 1;
        if position != last {
            let hash = hasher.hash_one(connections[last].0);
            if let Some(moved) = positions.find_mut(hash, |&found| found as usize == last) {
                // `position` is below `last`, which fits in a u32.
                *moved = position as u32;
            }
        }
        connections.swap_remove(position);
    }
}

/// The first port of the ephemeral range clients take their ports from
/// (Linux `ip_local_port_range` starts here; Windows at 49152).
const EPHEMERAL_PORTS: u16 = 32768;

/// The initiator by its ports when exactly one end uses an ephemeral port and
/// the other a lower one; ICMP (ports zero) and ambiguous pairs say nothing.
fn by_ports(source: Endpoint, destination: Endpoint) -> Option<Endpoint> {
    let ((_, source_port), (_, destination_port)) = (source, destination);
    if source_port == 0 || destination_port == 0 {
        return None;
    }
    match (
        source_port >= EPHEMERAL_PORTS,
        destination_port >= EPHEMERAL_PORTS,
    ) {
        (true, false) => Some(source),
        (false, true) => Some(destination),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use flow_common::Direction;

    use super::*;

    const CONFIG: TrackerConfig = TrackerConfig {
        idle_timeout_ns: 1_000,
        closed_timeout_ns: 100,
    };

    fn addr(last: u8) -> [u8; 16] {
        let mut address = [0u8; 16];
        address[15] = last;
        address
    }

    fn sample(
        src: u8,
        src_port: u16,
        dst: u8,
        dst_port: u16,
        protocol: u8,
        first: u64,
    ) -> FlowSample {
        FlowSample {
            key: FlowKey {
                src_addr: addr(src),
                dst_addr: addr(dst),
                src_port,
                dst_port,
                protocol,
                ..FlowKey::default()
            },
            packets: 1,
            bytes: 60,
            first_seen_ns: first,
            last_seen_ns: first,
            tcp_flags: 0,
            first_ifindex: 1,
            first_direction: Direction::Ingress,
            icmp_error_kinds: 0,
            icmp_errors: 0,
        }
    }

    fn tcp(src: u8, src_port: u16, dst: u8, dst_port: u16, first: u64, flags: u16) -> FlowSample {
        FlowSample {
            tcp_flags: flags,
            ..sample(src, src_port, dst, dst_port, protocol::TCP, first)
        }
    }

    fn replies(tracker: &mut FlowTracker, samples: &[FlowSample]) -> Vec<bool> {
        tracker
            .classify(samples)
            .iter()
            .map(|c| c.is_reply)
            .collect()
    }

    fn icmp(src: u8, dst: u8, icmp_type: u8, first: u64) -> FlowSample {
        let mut sample = sample(src, 0, dst, 0, protocol::ICMP, first);
        sample.key.icmp_type = icmp_type;
        sample
    }

    fn icmp_errors_only(src: u8, src_port: u16, dst: u8, dst_port: u16, first: u64) -> FlowSample {
        FlowSample {
            icmp_error_kinds: flow_common::icmp_error::UNREACHABLE,
            icmp_errors: 1,
            ..sample(src, src_port, dst, dst_port, protocol::UDP, first)
        }
    }

    #[test]
    fn error_only_flows_are_the_reply_of_the_connection_they_quote() {
        let mut tracker = FlowTracker::new(CONFIG);
        // A port unreachable counted on 2:6000 -> 1:5000, seen before the
        // query it answers (another CPU's clock): still the reply, and the
        // query still opens the connection.
        let classified = tracker.classify(&[
            icmp_errors_only(2, 6000, 1, 5000, 10),
            sample(1, 5000, 2, 6000, protocol::UDP, 11),
        ]);
        assert_eq!(
            classified,
            [
                Classified {
                    is_reply: true,
                    new_connection: false,
                },
                Classified {
                    is_reply: false,
                    new_connection: true,
                },
            ]
        );
        // Alone, whose query was never seen: a reply that opens nothing.
        let classified = tracker.classify(&[icmp_errors_only(4, 7000, 3, 8000, 20)]);
        assert_eq!(
            classified,
            [Classified {
                is_reply: true,
                new_connection: false,
            }]
        );
        // Errors mixed with real replies judge nothing by themselves: first
        // sight decides, as for any UDP flow.
        let mixed = FlowSample {
            packets: 3,
            ..icmp_errors_only(6, 9000, 5, 9001, 30)
        };
        assert_eq!(replies(&mut tracker, &[mixed]), [false]);
    }

    #[test]
    fn udp_initiator_is_the_first_direction_seen() {
        let mut tracker = FlowTracker::new(CONFIG);
        let flags = replies(
            &mut tracker,
            &[
                sample(1, 5000, 2, 53, protocol::UDP, 10),
                sample(2, 53, 1, 5000, protocol::UDP, 20),
            ],
        );
        assert_eq!(flags, [false, true]);
        // Later drains keep the decision even if only the reply has traffic.
        assert_eq!(
            replies(&mut tracker, &[sample(2, 53, 1, 5000, protocol::UDP, 30)]),
            [true]
        );
    }

    #[test]
    fn tcp_syn_decides_even_when_the_reply_was_seen_first() {
        let mut tracker = FlowTracker::new(CONFIG);
        // The SYN-ACK direction carries an earlier first_seen (clock skew between
        // CPUs), yet the SYN proves who opened the connection.
        let flags = replies(
            &mut tracker,
            &[
                tcp(
                    2,
                    80,
                    1,
                    40000,
                    5,
                    tcp_flag::SYN | tcp_flag::ACK | tcp_flag::SYN_ACK,
                ),
                tcp(
                    1,
                    40000,
                    2,
                    80,
                    6,
                    tcp_flag::SYN | tcp_flag::SYN_ONLY | tcp_flag::ACK,
                ),
            ],
        );
        assert_eq!(flags, [true, false]);
    }

    #[test]
    fn without_evidence_the_ephemeral_port_tells_the_client() {
        let mut tracker = FlowTracker::new(CONFIG);
        // A connection already open (an agent restart): the server's segment
        // is seen first, yet 40000 -> 5432 is the client's direction.
        assert_eq!(
            replies(
                &mut tracker,
                &[
                    tcp(2, 5432, 1, 40000, 5, tcp_flag::ACK),
                    tcp(1, 40000, 2, 5432, 6, tcp_flag::ACK),
                ]
            ),
            [true, false]
        );
        // UDP alike; a NodePort (below 32768) is a server port too.
        assert_eq!(
            replies(
                &mut tracker,
                &[sample(3, 30080, 4, 51000, protocol::UDP, 7)]
            ),
            [true]
        );
        // Both ephemeral, or both low: first sight.
        assert_eq!(
            replies(
                &mut tracker,
                &[sample(5, 50051, 6, 40001, protocol::UDP, 8)]
            ),
            [false]
        );
        assert_eq!(
            replies(&mut tracker, &[sample(7, 53, 8, 123, protocol::UDP, 9)]),
            [false]
        );
    }

    #[test]
    fn tcp_mid_stream_falls_back_to_first_sight_and_syn_corrects_it() {
        let mut tracker = FlowTracker::new(CONFIG);
        // Both ports ephemeral: nothing but the order to go by.
        assert_eq!(
            replies(&mut tracker, &[tcp(2, 40080, 1, 40000, 5, tcp_flag::ACK)]),
            [false]
        );
        // A new connection on the same tuple, opened by 1: port reuse.
        assert_eq!(
            replies(
                &mut tracker,
                &[tcp(
                    1,
                    40000,
                    2,
                    40080,
                    50,
                    tcp_flag::SYN | tcp_flag::SYN_ONLY
                )]
            ),
            [false]
        );
        assert_eq!(
            replies(&mut tracker, &[tcp(2, 40080, 1, 40000, 60, tcp_flag::ACK)]),
            [true]
        );
    }

    #[test]
    fn icmp_echo_reply_is_a_reply_whatever_the_order() {
        let mut tracker = FlowTracker::new(CONFIG);
        let flags = replies(&mut tracker, &[icmp(2, 1, 0, 5), icmp(1, 2, 8, 6)]);
        assert_eq!(flags, [true, false]);
        // Destination unreachable has no exchange: first sight.
        assert_eq!(replies(&mut tracker, &[icmp(3, 1, 3, 9)]), [false]);
    }

    #[test]
    fn new_connections_are_marked_on_their_request_direction_once() {
        let mut tracker = FlowTracker::new(CONFIG);
        let first = tracker.classify(&[
            tcp(1, 40000, 2, 80, 5, tcp_flag::SYN | tcp_flag::SYN_ONLY),
            tcp(
                2,
                80,
                1,
                40000,
                6,
                tcp_flag::SYN | tcp_flag::ACK | tcp_flag::SYN_ACK,
            ),
        ]);
        assert_eq!(
            first,
            [
                Classified {
                    is_reply: false,
                    new_connection: true
                },
                Classified {
                    is_reply: true,
                    new_connection: false
                },
            ]
        );
        let later = tracker.classify(&[tcp(1, 40000, 2, 80, 50, tcp_flag::ACK)]);
        assert!(!later[0].new_connection);
        // A SYN retransmitted into a later drain is the same connection.
        let again =
            tracker.classify(&[tcp(1, 40000, 2, 80, 60, tcp_flag::SYN | tcp_flag::SYN_ONLY)]);
        assert!(!again[0].new_connection);
        // Closed, then the same tuple opened again (port reuse): new.
        tracker.classify(&[tcp(1, 40000, 2, 80, 70, tcp_flag::FIN | tcp_flag::ACK)]);
        let reused =
            tracker.classify(&[tcp(1, 40000, 2, 80, 90, tcp_flag::SYN | tcp_flag::SYN_ONLY)]);
        assert!(reused[0].new_connection);
        // A connection already open when the agent started is not new.
        let mut restarted = FlowTracker::new(CONFIG);
        let open = restarted.classify(&[tcp(1, 40001, 2, 80, 5, tcp_flag::ACK)]);
        assert!(!open[0].is_reply && !open[0].new_connection);
        // UDP has no handshake: first sight opens.
        let udp = restarted.classify(&[sample(1, 40002, 2, 53, protocol::UDP, 6)]);
        assert!(udp[0].new_connection);
    }

    #[test]
    fn connections_left_after_an_eviction_keep_their_initiators() {
        let mut tracker = FlowTracker::new(CONFIG);
        tracker.classify(&[
            tcp(
                1,
                40000,
                2,
                80,
                10,
                tcp_flag::SYN_ONLY | tcp_flag::SYN | tcp_flag::FIN,
            ),
            sample(3, 40001, 4, 53, protocol::UDP, 500),
            tcp(5, 40002, 6, 443, 500, tcp_flag::SYN_ONLY | tcp_flag::SYN),
        ]);
        // The closed connection goes; the last one takes its place.
        assert_eq!(tracker.evict_idle(200), 1);
        assert_eq!(tracker.len(), 2);
        assert_eq!(
            replies(
                &mut tracker,
                &[
                    tcp(6, 443, 5, 40002, 600, tcp_flag::ACK),
                    sample(4, 53, 3, 40001, protocol::UDP, 600),
                ]
            ),
            [true, true]
        );
        assert_eq!(tracker.len(), 2);
    }

    #[test]
    fn idle_and_closed_connections_are_evicted() {
        let mut tracker = FlowTracker::new(CONFIG);
        tracker.classify(&[
            sample(1, 5000, 2, 53, protocol::UDP, 10),
            tcp(1, 40000, 2, 80, 10, tcp_flag::SYN_ONLY | tcp_flag::SYN),
            tcp(
                1,
                40001,
                2,
                80,
                10,
                tcp_flag::SYN_ONLY | tcp_flag::SYN | tcp_flag::FIN,
            ),
        ]);
        assert_eq!(tracker.len(), 3);
        assert_eq!(tracker.evict_idle(200), 1);
        assert_eq!(tracker.len(), 2);
        assert_eq!(tracker.evict_idle(2_000), 2);
        assert!(tracker.is_empty());
    }
}
