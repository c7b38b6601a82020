use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use flow_model::identity::ServiceRef;
use flow_model::record::{Endpoint, FlowRecord, Protocol, Timestamp};

use super::*;

const CLIENT: [u8; 4] = [10, 1, 0, 2];
const RESOLVER: [u8; 4] = [10, 96, 0, 10];
const VAULT: [u8; 4] = [20, 42, 65, 92];

fn name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
}

/// A response for `qname` with one A record per `(owner, address, ttl)` and
/// a CNAME from `qname` to each other owner.
fn response(qname: &str, answers: &[(&str, [u8; 4], u32)]) -> Vec<u8> {
    let cnames: Vec<&str> = answers
        .iter()
        .map(|(owner, _, _)| *owner)
        .filter(|owner| *owner != qname)
        .collect();
    let mut out = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0];
    out.push((answers.len() + cnames.len()) as u8);
    out.extend([0, 0, 0, 0]);
    name(&mut out, qname);
    out.extend([0, 1, 0, 1]);
    for owner in cnames {
        name(&mut out, qname);
        let mut target = Vec::new();
        name(&mut target, owner);
        out.extend([0, 5, 0, 1, 0, 0, 1, 0x2c, 0, target.len() as u8]);
        out.extend(target);
    }
    for (owner, address, ttl) in answers {
        name(&mut out, owner);
        out.extend([0, 1, 0, 1]);
        out.extend(ttl.to_be_bytes());
        out.extend([0, 4]);
        out.extend(address);
    }
    out
}

/// An Ethernet frame of a UDP datagram from the resolver's port 53.
fn udp_frame(from: [u8; 4], to: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0; 12];
    frame.extend([0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    frame.extend([0x45, 0]);
    frame.extend(total.to_be_bytes());
    frame.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend(from);
    frame.extend(to);
    frame.extend(53_u16.to_be_bytes());
    frame.extend(40_000_u16.to_be_bytes());
    frame.extend((8 + payload.len() as u16).to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

fn copied(bytes: &[u8]) -> DnsFrameRef<'_> {
    DnsFrameRef {
        time_ns: 0,
        ifindex: 7,
        direction: None,
        frame_len: bytes.len(),
        bytes,
    }
}

fn record(source: [u8; 4], destination: [u8; 4]) -> FlowRecord {
    let time = Timestamp(std::time::SystemTime::UNIX_EPOCH);
    FlowRecord {
        time,
        first_seen: time,
        source: Endpoint::new(Ipv4Addr::from(source).into(), 40_001),
        destination: Endpoint::new(Ipv4Addr::from(destination).into(), 443),
        protocol: Protocol(6),
        icmp: None,
        packets: 1,
        bytes: 60,
        tcp_flags: Vec::new(),
        is_reply: false,
        interface: String::new(),
        interface_index: 7,
        hook: flow_model::record::Hook::Ingress,
        node: String::new(),
        cross_tenant: None,
        new_connection: true,
        violation: false,
        icmp_errors: None,
    }
}

fn texts(names: &[Arc<str>]) -> Vec<&str> {
    names.iter().map(|name| &**name).collect()
}

#[test]
fn an_answer_names_both_ends_of_the_querier_s_flows_and_no_one_else_s() {
    let now = Instant::now();
    let mut names = Names::new(NameCacheConfig::default());
    let answer = response(
        "myvault.vault.azure.net",
        &[("vault-edge.azure.example", VAULT, 30)],
    );
    let messages = names.take(copied(&udp_frame(RESOLVER, CLIENT, &answer)), now);
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].destination,
        (Ipv4Addr::from(CLIENT).into(), 40_000)
    );

    let mut request = record(CLIENT, VAULT);
    names.name(&mut request, now);
    assert_eq!(
        texts(&request.destination.names),
        ["myvault.vault.azure.net", "vault-edge.azure.example"]
    );
    assert_eq!(texts(&request.source.names), Vec::<&str>::new());
    let mut reply = record(VAULT, CLIENT);
    names.name(&mut reply, now);
    assert_eq!(
        texts(&reply.source.names),
        ["myvault.vault.azure.net", "vault-edge.azure.example"]
    );
    // Another pod never resolved it.
    let mut other = record([10, 1, 0, 3], VAULT);
    names.name(&mut other, now);
    assert_eq!(texts(&other.destination.names), Vec::<&str>::new());
    // Past TTL and grace, the name is gone.
    names.expire(now + Duration::from_secs(30 + 121));
    names.name(&mut request, now + Duration::from_secs(30 + 121));
    assert_eq!(texts(&request.destination.names), Vec::<&str>::new());
}

#[test]
fn a_destination_behind_a_service_is_named_by_the_service_address() {
    let now = Instant::now();
    let mut names = Names::new(NameCacheConfig::default());
    let service_ip = [10, 96, 0, 20];
    let answer = response(
        "cart.shop.svc.cluster.local",
        &[("cart.shop.svc.cluster.local", service_ip, 5)],
    );
    names.take(copied(&udp_frame(RESOLVER, CLIENT, &answer)), now);
    let mut request = record(CLIENT, [10, 2, 0, 30]);
    request.destination.service = Some(ServiceRef {
        namespace: "shop".into(),
        name: "cart".into(),
        ip: Ipv4Addr::from(service_ip).into(),
        port: 80,
        target_port: Some(8080),
    });
    names.name(&mut request, now);
    assert_eq!(
        texts(&request.destination.names),
        ["cart.shop.svc.cluster.local"]
    );
}

#[test]
fn bad_frames_and_messages_are_counted_and_name_nothing() {
    let now = Instant::now();
    let mut names = Names::new(NameCacheConfig::default());
    let answer = response("a.example", &[("a.example", VAULT, 30)]);
    let frame = udp_frame(RESOLVER, CLIENT, &answer);
    // Cut: the copy ends before the datagram does.
    names.take(
        DnsFrameRef {
            frame_len: frame.len(),
            ..copied(&frame[..frame.len() - 4])
        },
        now,
    );
    // Headers cut short.
    names.take(copied(&frame[..20]), now);
    // A datagram whose payload is no DNS message.
    names.take(copied(&udp_frame(RESOLVER, CLIENT, &[1, 2, 3])), now);
    // An answer for a name nobody asked for.
    let mut unsolicited = response("a.example", &[]);
    unsolicited[7] = 1;
    unsolicited.extend([1, b'b', 0, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
    unsolicited.extend(VAULT);
    names.take(copied(&udp_frame(RESOLVER, CLIENT, &unsolicited)), now);

    let mut request = record(CLIENT, VAULT);
    names.name(&mut request, now);
    assert_eq!(texts(&request.destination.names), Vec::<&str>::new());
    assert_eq!(
        names.stats(),
        DnsStats {
            frames: 4,
            cut: 1,
            malformed_frames: 1,
            malformed_messages: 1,
            responses: 1,
            unsolicited: 1,
            ..DnsStats::default()
        }
    );
}
