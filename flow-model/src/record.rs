//! The flow record: what the agent emits for each flow and interval, and its JSON
//! form (one object per line with `--output json`).

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use flow_common::{Direction, icmp_error, protocol, tcp_flag};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, ServiceRef};

/// A point in time, serialized as RFC 3339 with nanoseconds (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Self(time) = self;
        serializer.collect_str(&humantime::format_rfc3339_nanos(*time))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Self)
            .map_err(|error| serde::de::Error::custom(format!("invalid time {text:?}: {error}")))
    }
}

/// Converts the kernel's CLOCK_MONOTONIC nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// Wall-clock time at monotonic zero, in nanoseconds since the Unix epoch.
    realtime_at_zero_ns: i128,
}

impl MonotonicClock {
    /// Samples both clocks now.
    pub fn now() -> Self {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_at_zero_ns: realtime - monotonic,
        }
    }

    /// The current CLOCK_MONOTONIC reading in nanoseconds.
    pub fn monotonic_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }

    /// The wall-clock time of a CLOCK_MONOTONIC reading.
    pub fn to_system_time(&self, monotonic_ns: u64) -> SystemTime {
        let nanos = self.realtime_at_zero_ns + i128::from(monotonic_ns);
        let nanos = u64::try_from(nanos.max(0)).unwrap_or(u64::MAX);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a valid timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut spec) };
    i128::from(spec.tv_sec) * 1_000_000_000 + i128::from(spec.tv_nsec)
}

/// The transport protocol of a flow, serialized by name (`TCP`, `UDP`, `SCTP`,
/// `ICMP`, `ICMPv6`) or, for others, by IANA number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    /// The protocol's name, or `None` for numbers without one here.
    pub const fn name(self) -> Option<&'static str> {
        match self {
            Self(protocol::TCP) => Some("TCP"),
            Self(protocol::UDP) => Some("UDP"),
            Self(protocol::SCTP) => Some("SCTP"),
            Self(protocol::ICMP) => Some("ICMP"),
            Self(protocol::ICMPV6) => Some("ICMPv6"),
            _ => None,
        }
    }

    /// Whether flows of this protocol have ports.
    pub const fn has_ports(self) -> bool {
        matches!(self.0, protocol::TCP | protocol::UDP | protocol::SCTP)
    }

    /// Whether this is ICMP or ICMPv6.
    pub const fn is_icmp(self) -> bool {
        matches!(self.0, protocol::ICMP | protocol::ICMPV6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self(protocol::TCP)),
            "UDP" => Ok(Self(protocol::UDP)),
            "SCTP" => Ok(Self(protocol::SCTP)),
            "ICMP" => Ok(Self(protocol::ICMP)),
            "ICMPV6" => Ok(Self(protocol::ICMPV6)),
            other => other.parse::<u8>().map(Self).map_err(|_| {
                format!("unknown protocol {text:?}: use TCP, UDP, SCTP, ICMP, ICMPv6 or a number")
            }),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// IPv4 or IPv6 address. For a connection to a Service that was translated
    /// (conntrack), the backend's address.
    pub ip: IpAddr,
    /// Transport port; 0 for protocols without ports.
    pub port: u16,
    /// Who the address belonged to when the flow was seen (when identity is
    /// on). Shared: records of the same pod point at one copy.
    #[serde(flatten)]
    pub identity: Arc<Identity>,
    /// The Service the client addressed, for destinations reached through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// The DNS names the flow's other end resolved to this address (the
    /// question and every CNAME on the way), sorted; empty when it resolved
    /// none that is still alive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<Arc<str>>,
}

impl Endpoint {
    /// An endpoint without identity.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            identity: Arc::default(),
            service: None,
            names: Vec::new(),
        }
    }
}

/// ICMP type and code of an ICMP or ICMPv6 flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    /// ICMP type.
    #[serde(rename = "type")]
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
}

/// The ICMP or ICMPv6 errors counted in a record: errors belong to the
/// connection whose packet they quote and are counted with its reply
/// direction; an error whose quote could not be read keeps its own ICMP
/// flow, made of nothing but errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpErrors {
    /// How many of the record's packets were ICMP errors.
    pub packets: u64,
    /// Their kinds, in a fixed order: `unreachable`, `time_exceeded`,
    /// `packet_too_big`, `parameter_problem`.
    pub kinds: Vec<String>,
}

impl IcmpErrors {
    /// The errors of a flow that counted `packets` errors of `kinds`
    /// ([`flow_common::icmp_error`] bits), or `None` when there were none.
    pub fn from_counts(packets: u64, kinds: u8) -> Option<Self> {
        (packets != 0).then(|| Self {
            packets,
            kinds: icmp_error::NAMES
                .iter()
                .filter(|(bit, _)| kinds & bit != 0)
                .map(|(_, name)| (*name).to_owned())
                .collect(),
        })
    }
}

/// The TC hook that first saw the flow, relative to the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Received by the interface (on a pod's host-side veth: sent by the pod).
    Ingress,
    /// Sent through the interface (on a pod's host-side veth: delivered to the pod).
    Egress,
}

impl From<Direction> for Hook {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Ingress => Self::Ingress,
            Direction::Egress => Self::Egress,
        }
    }
}

/// One flow over one flush interval: `packets` and `bytes` are what was counted
/// since the flow's previous record, so summing a flow's records gives its totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Time of the last packet counted in this record.
    pub time: Timestamp,
    /// Time of the first packet counted in this record.
    pub first_seen: Timestamp,
    /// Where the packets came from.
    pub source: Endpoint,
    /// Where the packets went.
    pub destination: Endpoint,
    /// Transport protocol.
    pub protocol: Protocol,
    /// ICMP type and code, for ICMP and ICMPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    /// Packets on the wire (a GSO super-packet counts as its segments).
    pub packets: u64,
    /// Bytes of the IP datagrams (as IPFIX octetDeltaCount).
    pub bytes: u64,
    /// TCP flags seen, in header order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_flags: Vec<String>,
    /// ICMP or ICMPv6 errors counted in `packets`, when there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_errors: Option<IcmpErrors>,
    /// This is the reply direction of a connection (the initiator is the
    /// destination): TCP by its SYN, other protocols by who was seen first.
    pub is_reply: bool,
    /// Interface that saw the first packet.
    pub interface: String,
    /// Its index in the node's network namespace; 0 when unknown (records
    /// read from files written before it was recorded).
    #[serde(default)]
    pub interface_index: u32,
    /// Hook of that interface.
    pub hook: Hook,
    /// Node that observed the flow.
    pub node: String,
    /// The two ends belong to different tenants (when identity is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_tenant: Option<bool>,
    /// The first record of a connection (request direction only): TCP by its
    /// SYN, other protocols when first seen.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_connection: bool,
    /// Monitor mode (`--policies`): the approved policies would deny this
    /// connection (request direction only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub violation: bool,
}

impl FlowRecord {
    /// Every packet of this record was an ICMP or ICMPv6 error. Such a
    /// record says nothing about who may talk to whom: it makes no edge and
    /// is never judged by policies. A record of a real connection that also
    /// carries errors is judged as its connection.
    pub fn is_icmp_errors_only(&self) -> bool {
        self.icmp_errors
            .as_ref()
            .is_some_and(|errors| errors.packets >= self.packets)
    }

    /// An ICMPv6 message of the link's own control plane: multicast
    /// listener discovery (types 130-132, 143) and neighbour discovery
    /// (router and neighbour solicitations and advertisements, redirects:
    /// 133-137). They stay on the link, and a pod needs them whatever its
    /// policies say.
    pub fn is_icmpv6_link_control(&self) -> bool {
        self.protocol == Protocol(protocol::ICMPV6)
            && self
                .icmp
                .is_some_and(|Icmp { icmp_type, .. }| matches!(icmp_type, 130..=137 | 143))
    }

    /// Nothing in this record is a connection of its own that policies
    /// could allow or deny: it is all ICMP errors
    /// ([`FlowRecord::is_icmp_errors_only`]) or ICMPv6 link control
    /// ([`FlowRecord::is_icmpv6_link_control`]). It makes no edge, no note
    /// and no violation.
    pub fn is_outside_policy(&self) -> bool {
        self.is_icmp_errors_only() || self.is_icmpv6_link_control()
    }

    /// The port the server's pods listen on, which NetworkPolicy sees: the
    /// destination port, or the Service's target port when the destination
    /// is still a Service address (not translated to a backend).
    pub fn server_port(&self) -> u16 {
        match &self.destination.service {
            Some(crate::identity::ServiceRef {
                ip,
                target_port: Some(target_port),
                ..
            }) if *ip == self.destination.ip => *target_port,
            _ => self.destination.port,
        }
    }
}

/// An address in [`FlowKey`] form: IPv4 as IPv4-mapped IPv6.
pub fn key_address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a [`FlowKey`] as an [`IpAddr`]: IPv4-mapped addresses become IPv4.
pub fn ip_from_key(address: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(address);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// TCP header flags and their names, in header order.
const TCP_FLAG_NAMES: [(u16, &str); 8] = [
    (tcp_flag::FIN, "FIN"),
    (tcp_flag::SYN, "SYN"),
    (tcp_flag::RST, "RST"),
    (tcp_flag::PSH, "PSH"),
    (tcp_flag::ACK, "ACK"),
    (tcp_flag::URG, "URG"),
    (tcp_flag::ECE, "ECE"),
    (tcp_flag::CWR, "CWR"),
];

/// Names of the TCP header flags set in `flags` (the synthetic bits are left out).
pub fn tcp_flag_names(flags: u16) -> Vec<String> {
    let mut names = Vec::new();
    write_tcp_flag_names(flags, &mut names);
    names
}

/// [`tcp_flag_names`] written over `names`, reusing its strings: a record
/// rewritten for another flow allocates nothing for its flags.
pub fn write_tcp_flag_names(flags: u16, names: &mut Vec<String>) {
    let mut kept = 0;
    for (_, name) in TCP_FLAG_NAMES.iter().filter(|(bit, _)| flags & bit != 0) {
        match names.get_mut(kept) {
            Some(slot) if slot == name => {}
            Some(slot) => (*name).clone_into(slot),
            None => names.push((*name).to_owned()),
        }
        kept += 1;
    }
    names.truncate(kept);
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn ipv4_mapped_addresses_print_as_ipv4() {
        let mut address = [0u8; 16];
        address[10] = 0xff;
        address[11] = 0xff;
        address[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(ip_from_key(address), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(ip_from_key(v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn protocol_names_round_trip_and_unknown_numbers_stay_numbers() {
        for (number, name) in [
            (6, "TCP"),
            (17, "UDP"),
            (132, "SCTP"),
            (1, "ICMP"),
            (58, "ICMPv6"),
        ] {
            assert_eq!(Protocol(number).to_string(), name);
            assert_eq!(name.parse::<Protocol>(), Ok(Protocol(number)));
        }
        assert_eq!(Protocol(47).to_string(), "47");
        assert_eq!("47".parse::<Protocol>(), Ok(Protocol(47)));
        assert!(
            "FOO"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("unknown protocol")
        );
    }

    #[test]
    fn errors_only_and_icmpv6_link_control_are_outside_policy() {
        let mut record = FlowRecord {
            time: Timestamp(SystemTime::UNIX_EPOCH),
            first_seen: Timestamp(SystemTime::UNIX_EPOCH),
            source: Endpoint::new("fd00:1::2".parse().unwrap(), 0),
            destination: Endpoint::new("fd00:1::1".parse().unwrap(), 0),
            protocol: Protocol(protocol::ICMPV6),
            icmp: Some(Icmp {
                icmp_type: 135,
                code: 0,
            }),
            packets: 2,
            bytes: 144,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth1".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "node-a".into(),
            cross_tenant: None,
            new_connection: true,
            violation: false,
        };
        let outside = |record: &FlowRecord, icmp_type| {
            let mut record = record.clone();
            record.icmp = Some(Icmp { icmp_type, code: 0 });
            record.is_outside_policy()
        };
        for icmp_type in [130, 131, 132, 133, 134, 135, 136, 137, 143] {
            assert!(outside(&record, icmp_type), "type {icmp_type}");
        }
        // Echo is a conversation of its own, errors only with their counts.
        for icmp_type in [1, 128, 129, 138, 142, 144] {
            assert!(!outside(&record, icmp_type), "type {icmp_type}");
        }
        record.icmp = Some(Icmp {
            icmp_type: 1,
            code: 4,
        });
        record.icmp_errors = IcmpErrors::from_counts(1, icmp_error::UNREACHABLE);
        assert!(!record.is_icmp_errors_only(), "1 of 2 packets");
        record.icmp_errors = IcmpErrors::from_counts(2, icmp_error::UNREACHABLE);
        assert!(record.is_icmp_errors_only() && record.is_outside_policy());
        assert_eq!(
            record
                .icmp_errors
                .as_ref()
                .map(|errors| errors.kinds.clone()),
            Some(vec!["unreachable".to_owned()])
        );
        assert_eq!(
            IcmpErrors::from_counts(3, icmp_error::TIME_EXCEEDED | icmp_error::PARAMETER_PROBLEM)
                .map(|errors| errors.kinds),
            Some(vec![
                "time_exceeded".to_owned(),
                "parameter_problem".to_owned()
            ])
        );
        assert_eq!(IcmpErrors::from_counts(0, icmp_error::UNREACHABLE), None);
        // ICMP (v4) type 135 is nothing of the kind.
        record.protocol = Protocol(protocol::ICMP);
        record.icmp_errors = None;
        assert!(!outside(&record, 135));
    }

    #[test]
    fn tcp_flags_are_named_in_header_order_without_synthetic_bits() {
        let flags = tcp_flag::ACK | tcp_flag::SYN | tcp_flag::SYN_ACK | tcp_flag::FIN;
        assert_eq!(tcp_flag_names(flags), ["FIN", "SYN", "ACK"]);
    }

    #[test]
    fn tcp_flag_names_written_over_a_record_replace_the_old_ones() {
        let mut names = tcp_flag_names(tcp_flag::SYN | tcp_flag::ACK);
        write_tcp_flag_names(tcp_flag::FIN | tcp_flag::PSH | tcp_flag::ACK, &mut names);
        assert_eq!(names, ["FIN", "PSH", "ACK"]);
        write_tcp_flag_names(tcp_flag::RST, &mut names);
        assert_eq!(names, ["RST"]);
        write_tcp_flag_names(tcp_flag::SYN_ONLY, &mut names);
        assert!(names.is_empty());
    }

    #[test]
    fn record_serializes_to_the_documented_json_shape() {
        let record = FlowRecord {
            time: Timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            ),
            first_seen: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            source: Endpoint::new("10.0.0.1".parse().unwrap(), 40000),
            destination: Endpoint::new("10.0.0.2".parse().unwrap(), 80),
            protocol: Protocol(6),
            icmp: None,
            packets: 3,
            bytes: 180,
            tcp_flags: vec!["SYN".into()],
            icmp_errors: None,
            is_reply: false,
            interface: "veth1".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "node-a".into(),
            cross_tenant: None,
            new_connection: true,
            violation: false,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(json["source"]["ip"], "10.0.0.1");
        assert_eq!(json["source"]["port"], 40000);
        assert_eq!(json["destination"]["port"], 80);
        assert_eq!(json["protocol"], "TCP");
        assert_eq!(json["packets"], 3);
        assert_eq!(json["bytes"], 180);
        assert_eq!(json["is_reply"], false);
        assert_eq!(json["interface"], "veth1");
        assert_eq!(json["hook"], "ingress");
        assert!(json.get("icmp").is_none());
        assert!(json.get("cross_tenant").is_none());
        assert_eq!(json["new_connection"], true);
        assert!(json["source"].get("namespace").is_none());
        let back: FlowRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
