//! Hand-built packets for `BPF_PROG_TEST_RUN`. Lengths and header fields are
//! computed unless a test overrides them to build a malformed packet. Also a
//! ping over a raw socket, for the lab's pods (no `ping` binary needed).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use flow_lab::Node;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// Ethernet header (no FCS) followed by `payload`.
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Ethernet with VLAN tags (outermost first) in front of `ethertype`.
pub fn ethernet_vlan(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (tpid, vid) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header and payload.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    pub more_fragments: bool,
    /// Options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Overrides the computed IHL (in 32-bit words).
    pub ihl: Option<u8>,
    /// Overrides the computed total length.
    pub total_length: Option<u16>,
    pub version: u8,
}

impl Ipv4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        Self {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            protocol,
            id: 0x1234,
            fragment_offset: 0,
            more_fragments: false,
            options: Vec::new(),
            ihl: None,
            total_length: None,
            version: 4,
        }
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let ihl = self.ihl.unwrap_or((header_len / 4) as u8);
        let total = self
            .total_length
            .unwrap_or((header_len + payload.len()) as u16);
        let flags = (u16::from(self.more_fragments) << 13) | self.fragment_offset;
        let mut packet = vec![(self.version << 4) | (ihl & 0x0f), 0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&self.id.to_be_bytes());
        packet.extend_from_slice(&flags.to_be_bytes());
        packet.extend_from_slice(&[64, self.protocol, 0, 0]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&self.options);
        packet.extend_from_slice(payload);
        packet
    }

    /// The whole frame.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        ethernet(ETH_P_IP, &self.build(payload))
    }
}

/// An IPv6 header, optional extension headers, and payload.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Extension headers in order, as (type, body without next-header).
    pub extensions: Vec<Extension>,
    /// Upper-layer protocol after the extension headers.
    pub protocol: u8,
    /// Overrides the computed payload length.
    pub payload_length: Option<u16>,
    pub version: u8,
}

#[derive(Clone, Debug)]
pub enum Extension {
    HopByHop(usize),
    DestinationOptions(usize),
    Routing(usize),
    Fragment { offset: u16, more: bool, id: u32 },
    Authentication(usize),
}

impl Extension {
    fn kind(&self) -> u8 {
        match self {
            Self::HopByHop(_) => 0,
            Self::DestinationOptions(_) => 60,
            Self::Routing(_) => 43,
            Self::Fragment { .. } => 44,
            Self::Authentication(_) => 51,
        }
    }

    fn encode(&self, next: u8) -> Vec<u8> {
        match self {
            // `units` is the header length field: (len + 1) * 8 bytes.
            Self::HopByHop(units) | Self::DestinationOptions(units) | Self::Routing(units) => {
                let mut header = vec![next, *units as u8];
                header.resize((units + 1) * 8, 0);
                header
            }
            Self::Fragment { offset, more, id } => {
                let field = (offset << 3) | u16::from(*more);
                let mut header = vec![next, 0];
                header.extend_from_slice(&field.to_be_bytes());
                header.extend_from_slice(&id.to_be_bytes());
                header
            }
            // Payload length in 4-byte units minus 2.
            Self::Authentication(units) => {
                let mut header = vec![next, *units as u8];
                header.resize((units + 2) * 4, 0);
                header
            }
        }
    }
}

impl Ipv6 {
    pub fn new(src: &str, dst: &str, protocol: u8) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            extensions: Vec::new(),
            protocol,
            payload_length: None,
            version: 6,
        }
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (index, extension) in self.extensions.iter().enumerate() {
            let next = self
                .extensions
                .get(index + 1)
                .map_or(self.protocol, Extension::kind);
            body.extend(extension.encode(next));
        }
        body.extend_from_slice(payload);
        let first = self
            .extensions
            .first()
            .map_or(self.protocol, Extension::kind);
        let length = self.payload_length.unwrap_or(body.len() as u16);
        let mut packet = vec![self.version << 4, 0, 0, 0];
        packet.extend_from_slice(&length.to_be_bytes());
        packet.extend_from_slice(&[first, 64]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend(body);
        packet
    }

    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        ethernet(ETH_P_IPV6, &self.build(payload))
    }
}

/// A TCP header (with `options` bytes of options) and data.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8, options: usize, data: &[u8]) -> Vec<u8> {
    let header_len = 20 + options;
    tcp_with_offset(
        src_port,
        dst_port,
        flags,
        (header_len / 4) as u8,
        options,
        data,
    )
}

/// A TCP header with an explicit data offset field (in words), for malformed cases.
pub fn tcp_with_offset(
    src_port: u16,
    dst_port: u16,
    flags: u8,
    data_offset: u8,
    options: usize,
    data: &[u8],
) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend_from_slice(&src_port.to_be_bytes());
    segment.extend_from_slice(&dst_port.to_be_bytes());
    segment.extend_from_slice(&1u32.to_be_bytes());
    segment.extend_from_slice(&0u32.to_be_bytes());
    segment.push(data_offset << 4);
    segment.push(flags);
    segment.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    segment.resize(20 + options, 1);
    segment.extend_from_slice(data);
    segment
}

pub fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&src_port.to_be_bytes());
    datagram.extend_from_slice(&dst_port.to_be_bytes());
    datagram.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(data);
    datagram
}

/// SCTP common header (12 bytes) and chunk bytes.
pub fn sctp(src_port: u16, dst_port: u16, chunks: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&src_port.to_be_bytes());
    packet.extend_from_slice(&dst_port.to_be_bytes());
    packet.extend_from_slice(&[0; 8]);
    packet.extend_from_slice(chunks);
    packet
}

/// ICMP or ICMPv6 header (8 bytes) and data.
pub fn icmp(icmp_type: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0, 0, 1, 0, 1];
    message.extend_from_slice(data);
    message
}

/// IPv4-mapped 16-byte form of an IPv4 address, as in `FlowKey`.
pub fn mapped(address: [u8; 4]) -> [u8; 16] {
    Ipv4Addr::from(address).to_ipv6_mapped().octets()
}

pub fn v6(address: &str) -> [u8; 16] {
    address.parse::<Ipv6Addr>().unwrap().octets()
}

/// A `struct __sk_buff` for `BPF_PROG_TEST_RUN`'s ctx_in, with the fields the
/// kernel lets a test set (Linux 5.10+ for gso_segs).
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbContext {
    pub ingress_ifindex: u32,
    pub gso_segs: u32,
    pub gso_size: u32,
}

impl SkbContext {
    /// Offsets from include/uapi/linux/bpf.h.
    const INGRESS_IFINDEX: usize = 36;
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    const SIZE: usize = 192;

    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; Self::SIZE];
        bytes[Self::INGRESS_IFINDEX..][..4].copy_from_slice(&self.ingress_ifindex.to_ne_bytes());
        bytes[Self::GSO_SEGS..][..4].copy_from_slice(&self.gso_segs.to_ne_bytes());
        bytes[Self::GSO_SIZE..][..4].copy_from_slice(&self.gso_size.to_ne_bytes());
        bytes
    }
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `count` echo requests with 56 bytes of data over a raw socket, waiting
/// for each reply.
pub fn ping(node: &Node, pod: usize, to: IpAddr, count: u16) {
    node.pods[pod]
        .netns
        .run(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let (domain, protocol, echo, reply, reply_offset) = match to {
                // Raw IPv4 sockets receive the IP header; IPv6 ones do not.
                IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8, 20),
                IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8, 0),
            };
            let socket = Socket::new(domain, Type::RAW, Some(protocol)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            for sequence in 0..count {
                let mut message = vec![echo, 0, 0, 0, 0x12, 0x34];
                message.extend_from_slice(&sequence.to_be_bytes());
                message.extend_from_slice(&[0xab; 56]);
                if to.is_ipv4() {
                    // The kernel fills in the ICMPv6 checksum, not the ICMP one.
                    let sum = checksum(&message);
                    message[2..4].copy_from_slice(&sum.to_be_bytes());
                }
                socket
                    .send_to(&message, &SocketAddr::new(to, 0).into())
                    .unwrap();
                let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
                loop {
                    let received = socket
                        .recv(&mut buffer)
                        .unwrap_or_else(|error| panic!("no echo reply: {error}"));
                    // SAFETY: recv initialised the first `received` bytes.
                    let bytes: Vec<u8> = buffer[..received]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    let sequence_at = reply_offset + 6;
                    if bytes.get(reply_offset) == Some(&reply)
                        && bytes.get(sequence_at..sequence_at + 2) == Some(&sequence.to_be_bytes())
                    {
                        break;
                    }
                }
            }
        })
        .unwrap();
}
