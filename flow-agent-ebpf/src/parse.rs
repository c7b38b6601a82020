//! Packet parsing: from an Ethernet frame to a [`FlowKey`].
//!
//! The parser is generic over a [`Reader`]: [`Linear`] reads the linear area
//! directly (bounds-checked, the fast path), [`Paged`] goes through
//! `bpf_skb_load_bytes`, which also reaches paged data. The programs parse with
//! `Linear` first and fall back to `Paged` only when a header lies beyond the
//! linear area. Every read is checked; nothing here writes to the packet.

use aya_ebpf::{maps::LruHashMap, programs::TcContext};
use flow_common::{FlowKey, FragmentKey, FragmentPorts, protocol, tcp_flag};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// QinQ: an outer 802.1ad tag and an inner 802.1Q tag.
const MAX_VLAN_TAGS: usize = 2;
/// Extension headers walked before giving up on an IPv6 packet.
const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// A packet reduced to what the flow map needs.
#[derive(Default)]
pub(crate) struct Packet {
    pub(crate) key: FlowKey,
    /// Length of the IP datagram (of the GSO super-packet, for GSO).
    pub(crate) ip_len: u32,
    /// IP header (with options or extension headers) plus transport header: what
    /// each segment of a GSO super-packet repeats.
    pub(crate) headers_len: u32,
    pub(crate) tcp_flags: u16,
    /// A non-first fragment whose first fragment was not seen: ports are zero.
    pub(crate) fragment_without_ports: bool,
}

pub(crate) enum ParseError {
    NotIp,
    Malformed(Malformed),
}

/// Why a packet was not counted; logged when debug logging is on.
#[derive(Clone, Copy)]
pub(crate) enum Malformed {
    EthernetTruncated,
    VlanTruncated,
    Ipv4Truncated,
    Ipv4BadVersion,
    Ipv4BadHeaderLength,
    Ipv4BadTotalLength,
    Ipv6Truncated,
    Ipv6BadVersion,
    Ipv6BadPayloadLength,
    Ipv6ExtensionTruncated,
    Ipv6TooManyExtensions,
    TransportTruncated,
    TcpBadDataOffset,
}

impl Malformed {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::EthernetTruncated => "ethernet header truncated",
            Self::VlanTruncated => "vlan tag truncated",
            Self::Ipv4Truncated => "ipv4 header truncated",
            Self::Ipv4BadVersion => "ipv4 version is not 4",
            Self::Ipv4BadHeaderLength => "ipv4 ihl below 5 or beyond the datagram",
            Self::Ipv4BadTotalLength => "ipv4 total length inconsistent with the packet",
            Self::Ipv6Truncated => "ipv6 header truncated",
            Self::Ipv6BadVersion => "ipv6 version is not 6",
            Self::Ipv6BadPayloadLength => "ipv6 payload length beyond the packet",
            Self::Ipv6ExtensionTruncated => "ipv6 extension header truncated",
            Self::Ipv6TooManyExtensions => "too many ipv6 extension headers",
            Self::TransportTruncated => "transport header truncated",
            Self::TcpBadDataOffset => "tcp data offset below 5 or beyond the datagram",
        }
    }
}

impl From<Malformed> for ParseError {
    fn from(reason: Malformed) -> Self {
        Self::Malformed(reason)
    }
}

/// Where packet bytes are read from.
pub(crate) trait Reader {
    /// Reads a `T` at `offset` from the start of the frame, or `None` when the
    /// bytes are not available to this reader.
    fn read<T>(&self, offset: usize) -> Option<T>;
}

/// The linear part of the packet, read directly: the fast path, and what almost
/// every packet needs since the stack keeps headers in the linear area.
pub(crate) struct Linear {
    start: usize,
    end: usize,
}

impl Linear {
    pub(crate) fn new(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Bytes in the linear area.
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Offsets the direct reader reaches: its mask bounds them for the verifier.
/// Headers almost always end well before; a packet whose headers do not is
/// read again with [`Paged`].
pub(crate) const LINEAR_REACH: usize = 1024;

impl Reader for Linear {
    #[inline(always)]
    fn read<T>(&self, offset: usize) -> Option<T> {
        let bounded = offset & (LINEAR_REACH - 1);
        if bounded != offset || self.start + bounded + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the read lies within the packet's linear data.
        Some(unsafe { core::ptr::read_unaligned((self.start + bounded) as *const T) })
    }
}

/// The whole packet through `bpf_skb_load_bytes`, which also reaches paged data.
pub(crate) struct Paged<'a>(pub(crate) &'a TcContext);

impl Reader for Paged<'_> {
    #[inline(always)]
    fn read<T>(&self, offset: usize) -> Option<T> {
        let Self(ctx) = self;
        ctx.load::<T>(offset).ok()
    }
}

#[inline(always)]
fn load<T, R: Reader>(reader: &R, offset: usize, reason: Malformed) -> Result<T, ParseError> {
    reader.read(offset).ok_or(ParseError::Malformed(reason))
}

#[inline(always)]
const fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Where the fragment of a datagram is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset zero, more fragments follow: carries the transport header.
    /// `next` is the protocol every fragment names (IPv4's protocol, the
    /// IPv6 Fragment header's Next Header), which is not the transport
    /// protocol when IPv6 extension headers follow the Fragment header.
    First { id: u32, next: u8 },
    /// Non-zero offset: no transport header; the datagram's protocol is
    /// `Network::protocol`, as named in every fragment.
    Later { id: u32 },
}

/// The network layer of a packet; the addresses went straight into the key.
struct Network {
    protocol: u8,
    l3_offset: usize,
    l4_offset: usize,
    ip_len: usize,
    fragment: Fragment,
}

#[inline(always)]
fn ipv4_mapped(address: [u8; 4]) -> [u8; 16] {
    let [a, b, c, d] = address;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// Parses the linear area into `packet`, which must start zeroed. Inlined: this
/// is the path nearly every packet takes.
#[inline(always)]
pub(crate) fn parse_linear(
    linear: &Linear,
    packet_len: usize,
    fragments: &LruHashMap<FragmentKey, FragmentPorts>,
    is_gso: bool,
    packet: &mut Packet,
) -> Result<(), ParseError> {
    parse(linear, packet_len, fragments, is_gso, packet)
}

/// Parses through `bpf_skb_load_bytes` into `packet`, which must start zeroed.
/// A separate BPF-to-BPF function (Linux 4.16+) with its own stack frame, so the
/// rarely taken second parser does not crowd the 512-byte stack of the first.
#[inline(never)]
pub(crate) fn parse_paged(
    paged: &Paged<'_>,
    packet_len: usize,
    fragments: &LruHashMap<FragmentKey, FragmentPorts>,
    is_gso: bool,
    packet: &mut Packet,
) -> Result<(), ParseError> {
    parse(paged, packet_len, fragments, is_gso, packet)
}

#[inline(always)]
fn parse<R: Reader>(
    ctx: &R,
    packet_len: usize,
    fragments: &LruHashMap<FragmentKey, FragmentPorts>,
    is_gso: bool,
    packet: &mut Packet,
) -> Result<(), ParseError> {
    let mut ethertype = be16(load(ctx, 12, Malformed::EthernetTruncated)?);
    let mut l3_offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag control information (2 bytes), then the encapsulated ethertype.
        ethertype = be16(load(ctx, l3_offset + 2, Malformed::VlanTruncated)?);
        l3_offset += 4;
    }
    let network = match ethertype {
        ETH_P_IP => ipv4(ctx, l3_offset, packet_len, is_gso, &mut packet.key)?,
        ETH_P_IPV6 => ipv6(ctx, l3_offset, packet_len, is_gso, &mut packet.key)?,
        _ => return Err(ParseError::NotIp),
    };
    transport(ctx, fragments, network, packet)
}

#[inline(always)]
fn ipv4<R: Reader>(
    ctx: &R,
    l3_offset: usize,
    packet_len: usize,
    is_gso: bool,
    key: &mut FlowKey,
) -> Result<Network, ParseError> {
    let header: [u8; 20] = load(ctx, l3_offset, Malformed::Ipv4Truncated)?;
    if header[0] >> 4 != 4 {
        return Err(Malformed::Ipv4BadVersion.into());
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let available = packet_len.saturating_sub(l3_offset);
    let total_len = match usize::from(be16([header[2], header[3]])) {
        // BIG TCP (Linux 6.3+) leaves the total length of a >64 KiB GSO packet zero.
        0 if is_gso => available,
        total_len => total_len,
    };
    if header_len < 20 || header_len > total_len {
        return Err(Malformed::Ipv4BadHeaderLength.into());
    }
    if total_len > available {
        return Err(Malformed::Ipv4BadTotalLength.into());
    }
    let flags_offset = be16([header[6], header[7]]);
    let more_fragments = flags_offset & 0x2000 != 0;
    let fragment_offset = flags_offset & 0x1fff;
    let id = u32::from(be16([header[4], header[5]]));
    let fragment = if fragment_offset != 0 {
        Fragment::Later { id }
    } else if more_fragments {
        Fragment::First {
            id,
            next: header[9],
        }
    } else {
        Fragment::Whole
    };
    key.src_addr = ipv4_mapped([header[12], header[13], header[14], header[15]]);
    key.dst_addr = ipv4_mapped([header[16], header[17], header[18], header[19]]);
    Ok(Network {
        protocol: header[9],
        l3_offset,
        l4_offset: l3_offset + header_len,
        ip_len: total_len,
        fragment,
    })
}

#[inline(always)]
fn ipv6<R: Reader>(
    ctx: &R,
    l3_offset: usize,
    packet_len: usize,
    is_gso: bool,
    key: &mut FlowKey,
) -> Result<Network, ParseError> {
    // Version, traffic class, flow label, payload length, next header, hop limit.
    let header: [u8; 8] = load(ctx, l3_offset, Malformed::Ipv6Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(Malformed::Ipv6BadVersion.into());
    }
    let available = packet_len.saturating_sub(l3_offset);
    let ip_len = match usize::from(be16([header[4], header[5]])) {
        // BIG TCP and jumbograms carry a zero payload length.
        0 if is_gso => available,
        payload_len => IPV6_HLEN + payload_len,
    };
    if ip_len > available {
        return Err(Malformed::Ipv6BadPayloadLength.into());
    }
    key.src_addr = load(ctx, l3_offset + 8, Malformed::Ipv6Truncated)?;
    key.dst_addr = load(ctx, l3_offset + 24, Malformed::Ipv6Truncated)?;

    let end = l3_offset + ip_len;
    let mut next = header[6];
    let mut offset = l3_offset + IPV6_HLEN;
    let mut fragment = Fragment::Whole;
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        let header_len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let [next_header, len]: [u8; 2] =
                    load(ctx, offset, Malformed::Ipv6ExtensionTruncated)?;
                next = next_header;
                (usize::from(len) + 1) * 8
            }
            NEXTHDR_AUTH => {
                let [next_header, len]: [u8; 2] =
                    load(ctx, offset, Malformed::Ipv6ExtensionTruncated)?;
                next = next_header;
                (usize::from(len) + 2) * 4
            }
            NEXTHDR_FRAGMENT => {
                let bytes: [u8; 8] = load(ctx, offset, Malformed::Ipv6ExtensionTruncated)?;
                next = bytes[0];
                let offset_flags = be16([bytes[2], bytes[3]]);
                let id = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                fragment = if offset_flags >> 3 != 0 {
                    Fragment::Later { id }
                } else if offset_flags & 1 != 0 {
                    Fragment::First { id, next }
                } else {
                    // An atomic fragment (RFC 6946): a whole datagram.
                    Fragment::Whole
                };
                8
            }
            _ => break,
        };
        offset += header_len;
        if offset > end {
            return Err(Malformed::Ipv6ExtensionTruncated.into());
        }
        if matches!(fragment, Fragment::Later { .. }) {
            // Later fragments carry no further headers worth reading.
            break;
        }
    }
    if is_extension_header(next) && !matches!(fragment, Fragment::Later { .. }) {
        return Err(Malformed::Ipv6TooManyExtensions.into());
    }
    Ok(Network {
        protocol: next,
        l3_offset,
        l4_offset: offset,
        ip_len,
        fragment,
    })
}

#[inline(always)]
const fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
    )
}

#[inline(always)]
fn transport<R: Reader>(
    ctx: &R,
    fragments: &LruHashMap<FragmentKey, FragmentPorts>,
    network: Network,
    packet: &mut Packet,
) -> Result<(), ParseError> {
    let Network {
        protocol,
        l3_offset,
        l4_offset,
        ip_len,
        fragment,
    } = network;
    let key = &mut packet.key;
    key.protocol = protocol;
    packet.ip_len = ip_len as u32;
    let datagram_end = l3_offset + ip_len;
    let network_headers_len = (l4_offset - l3_offset) as u32;

    if let Fragment::Later { id } = fragment {
        let fragment_key = FragmentKey {
            src_addr: key.src_addr,
            dst_addr: key.dst_addr,
            id,
            protocol,
            _pad: [0; 3],
        };
        // SAFETY: the value is copied out immediately.
        match unsafe { fragments.get(&fragment_key) } {
            Some(&FragmentPorts {
                src_port,
                dst_port,
                icmp_type,
                icmp_code,
                protocol: transport,
                ..
            }) => {
                // The first fragment read past any extension headers.
                if transport != 0 {
                    key.protocol = transport;
                }
                key.src_port = src_port;
                key.dst_port = dst_port;
                key.icmp_type = icmp_type;
                key.icmp_code = icmp_code;
            }
            None => packet.fragment_without_ports = true,
        }
        packet.headers_len = network_headers_len;
        return Ok(());
    }

    let (transport_len, tcp_flags) = match protocol {
        protocol::TCP => {
            let header: [u8; 14] = load(ctx, l4_offset, Malformed::TransportTruncated)?;
            let data_offset = usize::from(header[12] >> 4) * 4;
            if data_offset < 20 || l4_offset + data_offset > datagram_end {
                return Err(Malformed::TcpBadDataOffset.into());
            }
            key.src_port = be16([header[0], header[1]]);
            key.dst_port = be16([header[2], header[3]]);
            let flags = u16::from(header[13]);
            let synthetic = match (flags & tcp_flag::SYN != 0, flags & tcp_flag::ACK != 0) {
                (true, false) => tcp_flag::SYN_ONLY,
                (true, true) => tcp_flag::SYN_ACK,
                _ => 0,
            };
            (data_offset, flags | synthetic)
        }
        protocol::UDP | protocol::SCTP => {
            // UDP header is 8 bytes, the SCTP common header 12; both start with ports.
            let needed = if protocol == protocol::UDP { 8 } else { 12 };
            let ports: [u8; 4] = load(ctx, l4_offset, Malformed::TransportTruncated)?;
            if l4_offset + needed > datagram_end {
                return Err(Malformed::TransportTruncated.into());
            }
            key.src_port = be16([ports[0], ports[1]]);
            key.dst_port = be16([ports[2], ports[3]]);
            (needed, 0)
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let [icmp_type, icmp_code]: [u8; 2] =
                load(ctx, l4_offset, Malformed::TransportTruncated)?;
            // Type, code and checksum.
            if l4_offset + 4 > datagram_end {
                return Err(Malformed::TransportTruncated.into());
            }
            key.icmp_type = icmp_type;
            key.icmp_code = icmp_code;
            (4, 0)
        }
        _ => (0, 0),
    };

    if let Fragment::First { id, next } = fragment {
        // Keyed by what later fragments name, holding what they lack.
        let fragment_key = FragmentKey {
            src_addr: key.src_addr,
            dst_addr: key.dst_addr,
            id,
            protocol: next,
            _pad: [0; 3],
        };
        let ports = FragmentPorts {
            src_port: key.src_port,
            dst_port: key.dst_port,
            icmp_type: key.icmp_type,
            icmp_code: key.icmp_code,
            protocol,
            _pad: 0,
        };
        // Best effort: if this fails, later fragments are counted without ports.
        let _ = fragments.insert(&fragment_key, &ports, 0);
    }

    packet.headers_len = network_headers_len + transport_len as u32;
    packet.tcp_flags = tcp_flags;
    Ok(())
}
