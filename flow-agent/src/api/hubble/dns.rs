//! A DNS message as Hubble's L7 DNS flow (`--dns-flows`): the Flow of the
//! packet that carried it, of Type L7, with `l7.dns` filled from the message
//! and `l7.type` REQUEST for a query, RESPONSE for an answer.
//!
//! Names are written as Hubble writes them, with their final dot
//! (`api.example.com.`); record types by their mnemonic (`A`, `AAAA`,
//! `CNAME`), or `TYPE<n>` (RFC 3597) for those without one here.

use flow_dns::{DnsMessage, Kind};
use flow_proto::hubble::flow::{
    self as hubble, CiliumEventType, FlowType, L7FlowType, TrafficDirection, layer7,
};

/// Cilium's monitor message type of an L7 access-log event
/// (`MessageTypeAccessLog`): what `hubble observe --type l7` asks for.
pub const EVENT_TYPE_L7: i32 = 129;

/// The direction of every DNS flow: Cilium reports a query and its answer
/// from the querier's side, as egress traffic.
pub const TRAFFIC_DIRECTION: TrafficDirection = TrafficDirection::Egress;

/// What Hubble's `observation_source` says observed the message.
pub const OBSERVATION_SOURCE: &str = "ebpf";

/// The mnemonic of a DNS record type, `TYPE<n>` when it has none here.
pub fn record_type(number: u16) -> String {
    let name = match number {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        39 => "DNAME",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{number}"),
    };
    name.to_owned()
}

/// A name with its final dot; the root stays `.`.
fn fully_qualified(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// The name a DNS flow is about: its first question's, with the final dot
/// (empty for a message without a question).
pub fn query(message: &DnsMessage) -> String {
    message
        .questions
        .first()
        .map(|question| fully_qualified(&question.name))
        .unwrap_or_default()
}

/// Hubble's `DNS` of a message: the addresses in answer order, the
/// smallest TTL among them (0 without any), the CNAME chain.
pub fn dns(message: &DnsMessage) -> hubble::Dns {
    let DnsMessage {
        rcode,
        questions,
        resolved,
        cnames,
        rrtypes,
        ..
    } = message;
    hubble::Dns {
        query: query(message),
        ips: resolved
            .iter()
            .map(|resolved| resolved.address.to_string())
            .collect(),
        ttl: resolved
            .iter()
            .map(|resolved| resolved.ttl)
            .min()
            .unwrap_or(0),
        cnames: cnames.iter().map(|name| fully_qualified(name)).collect(),
        observation_source: OBSERVATION_SOURCE.to_owned(),
        rcode: u32::from(*rcode),
        qtypes: questions
            .iter()
            .map(|question| record_type(question.qtype))
            .collect(),
        rrtypes: rrtypes.iter().copied().map(record_type).collect(),
    }
}

/// Turns the Flow of the packet that carried `message` into its L7 DNS flow.
pub fn into_l7(flow: &mut hubble::Flow, message: &DnsMessage) {
    let r#type = match message.kind {
        Kind::Query => L7FlowType::Request,
        Kind::Response => L7FlowType::Response,
    };
    flow.r#type = FlowType::L7 as i32;
    flow.event_type = Some(CiliumEventType {
        r#type: EVENT_TYPE_L7,
        sub_type: 0,
    });
    // An access-log event has no trace observation point; its direction is
    // the querier's, whose egress Cilium's DNS proxy sits on.
    flow.trace_observation_point = 0;
    flow.traffic_direction = TRAFFIC_DIRECTION as i32;
    flow.l7 = Some(hubble::Layer7 {
        r#type: r#type as i32,
        latency_ns: 0,
        record: Some(layer7::Record::Dns(dns(message))),
    });
}

#[cfg(test)]
mod tests;
