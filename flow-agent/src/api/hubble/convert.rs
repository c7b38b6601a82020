//! A flow record as Hubble's `flow.Flow`: one Flow per record.
//!
//! Hubble reports packets one by one and has no counters: packets and bytes
//! stay in flow-agent's own API. The rest maps field by field (README, "The
//! Hubble API").

use std::net::IpAddr;

use flow_proto::hubble::flow::{
    self as hubble, CiliumEventType, Emitter, FlowType, IpVersion, Layer4, NetworkInterface,
    TraceObservationPoint, TrafficDirection, Verdict, layer4,
};

use flow_model::identity::{Identity, PeerKind, Workload};

use flow_model::record::{Endpoint, FlowRecord, Hook, Icmp, Protocol};

/// Cilium's monitor message type of a trace event: flows of the datapath are
/// traces (`MessageTypeTrace` in Cilium's monitor API).
pub const EVENT_TYPE_TRACE: i32 = 4;

/// Who made a flow: the same for every record of one agent run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowIdentity {
    /// Tells this agent run from others on any node.
    pub run: u64,
    /// The record's position among the run's records.
    pub sequence: u64,
}

impl FlowIdentity {
    /// An RFC 9562 version 8 UUID: the run, then the sequence. The same
    /// record replayed gets the same UUID; records of different runs differ.
    pub fn uuid(self) -> String {
        let bytes = self.bytes();
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// The UUID's 16 bytes.
    pub fn bytes(self) -> [u8; 16] {
        let Self { run, sequence } = self;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&run.to_be_bytes());
        bytes[8..].copy_from_slice(&sequence.to_be_bytes());
        // Version 8 in the high nibble of byte 6 and variant 0b10 in the top
        // bits of byte 8 replace four bits of the (random) run and the top two
        // bits of the sequence, which never reaches 2^62.
        bytes[6] = 0x80 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        bytes
    }
}

/// The traffic direction Cilium reports for a flow seen at a pod: a request
/// the pod sends, and its reply, are EGRESS; a request it receives, and the
/// reply it sends, are INGRESS. On a pod's host-side interface the TC ingress
/// hook sees what the pod sends.
pub fn traffic_direction(hook: Hook, is_reply: bool) -> TrafficDirection {
    let sent_by_pod = hook == Hook::Ingress;
    if sent_by_pod != is_reply {
        TrafficDirection::Egress
    } else {
        TrafficDirection::Ingress
    }
}

/// Where Cilium would have seen it: leaving the pod (FROM_ENDPOINT) or being
/// delivered to it (TO_ENDPOINT).
fn observation_point(hook: Hook) -> TraceObservationPoint {
    match hook {
        Hook::Ingress => TraceObservationPoint::FromEndpoint,
        Hook::Egress => TraceObservationPoint::ToEndpoint,
    }
}

/// The `reserved:` label Cilium gives a peer that is no pod.
pub fn reserved_label(kind: Option<PeerKind>) -> Option<&'static str> {
    match kind {
        Some(PeerKind::Host) => Some("host"),
        Some(PeerKind::RemoteNode) => Some("remote-node"),
        Some(PeerKind::KubeApiserver) => Some("kube-apiserver"),
        Some(PeerKind::World) => Some("world"),
        Some(PeerKind::Pod | PeerKind::Service) | None => None,
    }
}

/// Cilium's reserved security identity of a peer that is no pod (Hubble UI
/// draws one box per identity); pods get none (0), and Hubble UI tells them
/// apart by workload.
pub fn reserved_identity(kind: Option<PeerKind>) -> u32 {
    match kind {
        Some(PeerKind::Host) => 1,
        Some(PeerKind::World) => 2,
        Some(PeerKind::RemoteNode) => 6,
        Some(PeerKind::KubeApiserver) => 7,
        Some(PeerKind::Pod | PeerKind::Service) | None => 0,
    }
}

/// The namespace label Cilium adds to every pod's labels.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// An endpoint's labels as Hubble writes them, sorted: `k8s:key=value`,
/// `k8s:io.kubernetes.pod.namespace=NS` for pods, `reserved:KIND` for peers
/// that are no pod.
pub fn labels(identity: &Identity) -> Vec<String> {
    let Identity {
        kind,
        namespace,
        pod,
        labels,
        ..
    } = identity;
    let mut list: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("k8s:{key}={value}"))
        .collect();
    if let (Some(namespace), Some(_)) = (namespace, pod) {
        list.push(format!("k8s:{NAMESPACE_LABEL}={namespace}"));
    }
    list.extend(reserved_label(*kind).map(|reserved| format!("reserved:{reserved}")));
    list.sort_unstable();
    list
}

fn endpoint(endpoint: &Endpoint) -> hubble::Endpoint {
    let identity = &*endpoint.identity;
    let Identity {
        kind,
        namespace,
        pod,
        workload,
        ..
    } = identity;
    hubble::Endpoint {
        identity: reserved_identity(*kind),
        cluster_name: String::new(),
        namespace: namespace.clone().unwrap_or_default(),
        labels: labels(identity),
        pod_name: pod.clone().unwrap_or_default(),
        workloads: workload
            .iter()
            .map(|Workload { kind, name }| hubble::Workload {
                name: name.clone(),
                kind: kind.clone(),
            })
            .collect(),
    }
}

fn ip_version(address: IpAddr) -> IpVersion {
    match address {
        IpAddr::V4(_) => IpVersion::IPv4,
        IpAddr::V6(_) => IpVersion::IPv6,
    }
}

/// TCP flag names in Hubble's TCPFlags field order.
const TCP_FLAGS: [&str; 9] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"];

/// A record's TCP flag names as bits in [`TCP_FLAGS`] order.
pub fn tcp_flag_bits(names: &[String]) -> u16 {
    names
        .iter()
        .filter_map(|name| {
            TCP_FLAGS
                .iter()
                .position(|flag| flag.eq_ignore_ascii_case(name))
        })
        .fold(0, |bits, bit| bits | (1 << bit))
}

/// Hubble's TCPFlags as bits in [`TCP_FLAGS`] order.
pub fn hubble_flag_bits(flags: &hubble::TcpFlags) -> u16 {
    let hubble::TcpFlags {
        fin,
        syn,
        rst,
        psh,
        ack,
        urg,
        ece,
        cwr,
        ns,
    } = *flags;
    [fin, syn, rst, psh, ack, urg, ece, cwr, ns]
        .into_iter()
        .enumerate()
        .fold(0, |bits, (bit, set)| bits | (u16::from(set) << bit))
}

fn tcp_flags(names: &[String]) -> Option<hubble::TcpFlags> {
    let bits = tcp_flag_bits(names);
    let set = |bit: usize| bits & (1 << bit) != 0;
    (bits != 0).then(|| hubble::TcpFlags {
        fin: set(0),
        syn: set(1),
        rst: set(2),
        psh: set(3),
        ack: set(4),
        urg: set(5),
        ece: set(6),
        cwr: set(7),
        ns: set(8),
    })
}

fn layer4(record: &FlowRecord) -> Option<Layer4> {
    let FlowRecord {
        source,
        destination,
        protocol,
        icmp,
        tcp_flags: flags,
        ..
    } = record;
    let (source_port, destination_port) = (u32::from(source.port), u32::from(destination.port));
    let Icmp { icmp_type, code } = icmp.unwrap_or(Icmp {
        icmp_type: 0,
        code: 0,
    });
    let (icmp_type, code) = (u32::from(icmp_type), u32::from(code));
    let protocol = match protocol.name()? {
        "TCP" => layer4::Protocol::Tcp(hubble::Tcp {
            source_port,
            destination_port,
            flags: tcp_flags(flags),
        }),
        "UDP" => layer4::Protocol::Udp(hubble::Udp {
            source_port,
            destination_port,
        }),
        "SCTP" => layer4::Protocol::Sctp(hubble::Sctp {
            source_port,
            destination_port,
        }),
        "ICMP" => layer4::Protocol::IcmPv4(hubble::IcmPv4 {
            r#type: icmp_type,
            code,
        }),
        "ICMPv6" => layer4::Protocol::IcmPv6(hubble::IcmPv6 {
            r#type: icmp_type,
            code,
        }),
        _ => return None,
    };
    Some(Layer4 {
        protocol: Some(protocol),
    })
}

/// The Flow of a record. `id` is absent where the record's place in an
/// agent's run is unknown (a client printing what it received).
pub fn flow(record: &FlowRecord, id: Option<FlowIdentity>) -> hubble::Flow {
    let FlowRecord {
        time,
        source,
        destination,
        is_reply,
        interface,
        interface_index,
        hook,
        node,
        violation,
        ..
    } = record;
    hubble::Flow {
        time: Some(prost_types::Timestamp::from(time.0)),
        uuid: id.map(FlowIdentity::uuid).unwrap_or_default(),
        verdict: if *violation {
            Verdict::Audit
        } else {
            Verdict::Forwarded
        } as i32,
        ip: Some(hubble::Ip {
            source: source.ip.to_string(),
            destination: destination.ip.to_string(),
            ip_version: ip_version(source.ip) as i32,
            encrypted: false,
        }),
        l4: layer4(record),
        source: Some(endpoint(source)),
        destination: Some(endpoint(destination)),
        r#type: FlowType::L3L4 as i32,
        l7: None,
        node_name: node.clone(),
        source_names: source.names.iter().map(|name| name.to_string()).collect(),
        destination_names: destination
            .names
            .iter()
            .map(|name| name.to_string())
            .collect(),
        event_type: Some(CiliumEventType {
            r#type: EVENT_TYPE_TRACE,
            sub_type: 0,
        }),
        source_service: None,
        destination_service: destination.service.as_ref().map(|service| hubble::Service {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
        }),
        traffic_direction: traffic_direction(*hook, *is_reply) as i32,
        trace_observation_point: observation_point(*hook) as i32,
        is_reply: Some(*is_reply),
        interface: Some(NetworkInterface {
            index: *interface_index,
            name: interface.clone(),
        }),
        emitter: Some(Emitter {
            name: "flow-agent".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
    }
}

/// The protocol names Hubble's `protocol` filter takes for a record's
/// protocol (lowercase).
pub fn protocol_names(protocol: Protocol) -> &'static [&'static str] {
    match protocol.name() {
        Some("TCP") => &["tcp"],
        Some("UDP") => &["udp"],
        Some("SCTP") => &["sctp"],
        Some("ICMP") => &["icmp", "icmpv4"],
        Some("ICMPv6") => &["icmp", "icmpv6"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

    use super::*;
    use flow_model::record::Timestamp;

    #[test]
    fn uuids_are_version_8_and_fixed_by_run_and_sequence() {
        let id = FlowIdentity {
            run: 0x0123_4567_89ab_cdef,
            sequence: 42,
        };
        assert_eq!(id.uuid(), "01234567-89ab-8def-8000-00000000002a");
        assert_eq!(id.uuid(), id.uuid());
        assert_ne!(id.uuid(), FlowIdentity { sequence: 43, ..id }.uuid());
    }

    #[test]
    fn direction_is_the_connections_as_seen_from_the_pod() {
        // A request the pod sends and its reply: EGRESS.
        assert_eq!(
            traffic_direction(Hook::Ingress, false),
            TrafficDirection::Egress
        );
        assert_eq!(
            traffic_direction(Hook::Egress, true),
            TrafficDirection::Egress
        );
        // A request the pod receives and the reply it sends: INGRESS.
        assert_eq!(
            traffic_direction(Hook::Egress, false),
            TrafficDirection::Ingress
        );
        assert_eq!(
            traffic_direction(Hook::Ingress, true),
            TrafficDirection::Ingress
        );
    }

    #[test]
    fn a_record_becomes_one_flow() {
        let mut source = Endpoint::new("fd00::5".parse().unwrap(), 5353);
        source.identity = Arc::new(Identity {
            kind: Some(PeerKind::Pod),
            namespace: Some("shop-a".into()),
            pod: Some("dns-1".into()),
            workload: Some(Workload {
                kind: "DaemonSet".into(),
                name: "dns".into(),
            }),
            labels: BTreeMap::from([("k8s-app".to_owned(), "dns".to_owned())]),
            ..Identity::default()
        });
        let mut destination = Endpoint::new("fd00::9".parse().unwrap(), 0);
        Arc::make_mut(&mut destination.identity).kind = Some(PeerKind::Host);
        let time = Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7));
        let record = FlowRecord {
            time,
            first_seen: time,
            source,
            destination,
            protocol: Protocol(58),
            icmp: Some(Icmp {
                icmp_type: 129,
                code: 0,
            }),
            packets: 3,
            bytes: 312,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: true,
            interface: "veth9".into(),
            interface_index: 9,
            hook: Hook::Ingress,
            node: "node-2".into(),
            cross_tenant: None,
            new_connection: false,
            violation: true,
        };
        let flow = flow(&record, None);
        assert_eq!(flow.uuid, "");
        assert_eq!(flow.verdict, Verdict::Audit as i32);
        assert_eq!(flow.time.unwrap().seconds, 7);
        let ip = flow.ip.unwrap();
        assert_eq!(
            (ip.source.as_str(), ip.destination.as_str(), ip.ip_version),
            ("fd00::5", "fd00::9", IpVersion::IPv6 as i32)
        );
        assert_eq!(
            flow.l4.unwrap().protocol,
            Some(layer4::Protocol::IcmPv6(hubble::IcmPv6 {
                r#type: 129,
                code: 0
            }))
        );
        let source = flow.source.unwrap();
        assert_eq!(
            source.labels,
            ["k8s:io.kubernetes.pod.namespace=shop-a", "k8s:k8s-app=dns"]
        );
        assert_eq!(source.workloads[0].kind, "DaemonSet");
        assert_eq!(source.identity, 0);
        let destination = flow.destination.unwrap();
        assert_eq!(destination.labels, ["reserved:host"]);
        assert_eq!(destination.identity, 1);
        assert_eq!(flow.traffic_direction, TrafficDirection::Ingress as i32);
        assert_eq!(
            flow.trace_observation_point,
            TraceObservationPoint::FromEndpoint as i32
        );
        assert_eq!(flow.is_reply, Some(true));
        assert_eq!(
            flow.interface,
            Some(NetworkInterface {
                index: 9,
                name: "veth9".into()
            })
        );
        assert_eq!(flow.r#type, FlowType::L3L4 as i32);
        assert_eq!(flow.destination_service, None);
    }
}
