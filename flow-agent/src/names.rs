//! Names on flows: the DNS frames the datapath copied, read into the cache of
//! the names each pod resolved, and looked up for each record.
//!
//! The querier of an answer is the address it was sent to; a record's
//! destination is named by what its source resolved, and its source by what
//! its destination resolved (a reply's ends are the other way round). Nothing
//! here trusts the frame: see [`flow_dns`].

use std::{net::IpAddr, time::Instant};

use flow_dns::{
    DnsMessage, Kind, NameCache, NameCacheConfig, NameCacheStats,
    frame::{self, FrameError, Transport},
};
use flow_model::record::FlowRecord;

use crate::datapath::DnsFrameRef;

/// What became of the copied frames, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Frames read from the datapath.
    pub frames: u64,
    /// Frames longer than the copy: their message could not be read.
    pub cut: u64,
    /// Frames whose headers were short or inconsistent.
    pub malformed_frames: u64,
    /// Fragments and frames that were neither UDP nor TCP.
    pub not_transport: u64,
    /// Bytes of TCP segments that were not part of a whole message.
    pub tcp_partial_bytes: u64,
    /// Messages that were truncated, malformed or not a query or answer.
    pub malformed_messages: u64,
    /// Queries read.
    pub queries: u64,
    /// Answers read.
    pub responses: u64,
    /// Answer records for names nobody asked for: ignored.
    pub unsolicited: u64,
    /// Names not attached because an address had too many in one message.
    pub dropped_names: u64,
    /// The cache's own counts.
    pub cache: NameCacheStats,
}

impl DnsStats {
    /// Every count by its metric label, the cache's among them; the
    /// entries held are a gauge, not here.
    pub fn by_name(&self) -> [(&'static str, u64); 15] {
        let Self {
            frames,
            cut,
            malformed_frames,
            not_transport,
            tcp_partial_bytes,
            malformed_messages,
            queries,
            responses,
            unsolicited,
            dropped_names,
            cache,
        } = *self;
        [
            ("frames", frames),
            ("cut_frames", cut),
            ("malformed_frames", malformed_frames),
            ("not_udp_or_tcp", not_transport),
            ("tcp_partial_bytes", tcp_partial_bytes),
            ("malformed_messages", malformed_messages),
            ("queries", queries),
            ("responses", responses),
            ("unsolicited_records", unsolicited),
            ("names_over_message_limit", dropped_names),
            ("ttl_zero_answers", cache.ttl_zero),
            ("names_evicted_full", cache.evicted_full),
            ("names_evicted_address_limit", cache.evicted_address_limit),
            ("names_replaced", cache.replaced),
            ("names_expired", cache.expired),
        ]
    }
}

/// The cache of names and the counts of what was read into it.
#[derive(Debug)]
pub struct Names {
    cache: NameCache,
    stats: DnsStats,
}

impl Names {
    /// An empty cache.
    pub fn new(config: NameCacheConfig) -> Self {
        Self {
            cache: NameCache::new(config),
            stats: DnsStats::default(),
        }
    }

    /// What was read so far.
    pub fn stats(&self) -> DnsStats {
        DnsStats {
            cache: self.cache.stats(),
            ..self.stats
        }
    }

    /// Reads one copied frame at `now`; returns its messages with the
    /// segment's addresses, for DNS flows.
    pub fn take(&mut self, copied: DnsFrameRef<'_>, now: Instant) -> Vec<Message> {
        self.stats.frames += 1;
        let segment = match frame::read(copied.bytes) {
            Ok(segment) => segment,
            Err(error) => {
                self.count_frame_error(error);
                return Vec::new();
            }
        };
        let (payloads, partial) = segment.messages();
        self.stats.tcp_partial_bytes += partial as u64;
        let mut messages = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let message = match DnsMessage::read(payload) {
                Ok(message) => message,
                Err(_) => {
                    self.stats.malformed_messages += 1;
                    continue;
                }
            };
            self.learn(segment.destination, &message, now);
            messages.push(Message {
                source: (segment.source, segment.source_port),
                destination: (segment.destination, segment.destination_port),
                transport: segment.transport,
                message,
            });
        }
        messages
    }

    fn count_frame_error(&mut self, error: FrameError) {
        let counter = match error {
            FrameError::Cut { .. } => &mut self.stats.cut,
            FrameError::Truncated(_) => &mut self.stats.malformed_frames,
            FrameError::NotTransport => &mut self.stats.not_transport,
        };
        *counter += 1;
    }

    fn learn(&mut self, querier: IpAddr, message: &DnsMessage, now: Instant) {
        if message.kind == Kind::Query {
            self.stats.queries += 1;
            return;
        }
        self.stats.responses += 1;
        self.stats.unsolicited += message.unsolicited as u64;
        self.stats.dropped_names += message.dropped_names as u64;
        for resolved in &message.resolved {
            self.cache.insert(querier, resolved, now);
        }
    }

    /// Drops the names whose TTL and grace ran out.
    pub fn expire(&mut self, now: Instant) {
        self.cache.expire(now);
    }

    /// Names both ends of `record` as its other end resolved them at `now`.
    /// The destination of a record reached through a Service is also named
    /// by what the source resolved to the Service's address.
    pub fn name(&self, record: &mut FlowRecord, now: Instant) {
        // Every record of a drain comes here: without names, skip the lookups.
        if self.cache.is_empty() {
            record.source.names.clear();
            record.destination.names.clear();
            return;
        }
        let (source, destination) = (record.source.ip, record.destination.ip);
        record.source.names = self.cache.lookup(destination, source, now);
        record.destination.names = self.cache.lookup(source, destination, now);
        if let Some(service) = &record.destination.service
            && record.destination.names.is_empty()
        {
            record.destination.names = self.cache.lookup(source, service.ip, now);
        }
    }
}

/// A DNS message with the addresses and ports of its segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender and port.
    pub source: (IpAddr, u16),
    /// Receiver and port.
    pub destination: (IpAddr, u16),
    /// UDP or TCP.
    pub transport: Transport,
    /// The message.
    pub message: DnsMessage,
}

#[cfg(test)]
mod tests;
