//! Packet parsing: from an Ethernet frame to a [`FlowKey`].
//!
//! The parser is generic over a [`Reader`]: [`Linear`] reads the linear area
//! directly (bounds-checked, the fast path), [`Paged`] goes through
//! `bpf_skb_load_bytes`, which also reaches paged data. The programs parse with
//! `Linear` first and fall back to `Paged` only when a header lies beyond the
//! linear area. Every read is checked; nothing here writes to the packet.

use aya_ebpf::{helpers::bpf_skb_load_bytes, maps::LruHashMap, programs::TcContext};
use flow_common::{FlowKey, FragmentKey, FragmentPorts, icmp_error, protocol, tcp_flag};

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
    /// The kind of ICMP or ICMPv6 error this packet is ([`icmp_error`]), or
    /// zero. The programs then fold it into the connection it quotes
    /// ([`fold_icmp_error`]).
    pub(crate) icmp_error: u8,
    /// For an ICMP error: where the quoted packet starts in the frame, and
    /// where the error's datagram ends (both saturated at `u16::MAX`, which
    /// makes the quote unreadable rather than wrong).
    pub(crate) quote_offset: u16,
    pub(crate) quote_end: u16,
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

/// Where packet bytes are read from: a checked window of `N` bytes at an
/// offset, whose fields are then read without further checks.
pub(crate) trait Reader {
    /// `N` bytes of the frame.
    type Window<const N: usize>: Window<N>;

    /// The `N` bytes at `offset` from the start of the frame, or `None` when
    /// they are not available to this reader.
    fn window<const N: usize>(&self, offset: usize) -> Option<Self::Window<N>>;
}

/// `N` bytes of a packet, known to be readable. Field offsets are constants,
/// checked against `N` at compile time. Multi-byte fields are read as they
/// lie in memory (network order) unless the name says big-endian.
pub(crate) trait Window<const N: usize> {
    /// The byte at `AT`.
    fn u8<const AT: usize>(&self) -> u8;
    /// The big-endian 16-bit field at `AT`, in host order.
    fn be16<const AT: usize>(&self) -> u16;
    /// The four bytes at `AT` as they lie in memory.
    fn raw32<const AT: usize>(&self) -> u32;
    /// The eight bytes at `AT` as they lie in memory.
    fn raw64<const AT: usize>(&self) -> u64;
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
    type Window<const N: usize> = LinearWindow<N>;

    #[inline(always)]
    fn window<const N: usize>(&self, offset: usize) -> Option<LinearWindow<N>> {
        let bounded = offset & (LINEAR_REACH - 1);
        if bounded != offset || self.start + bounded + N > self.end {
            return None;
        }
        Some(LinearWindow {
            address: self.start + bounded,
        })
    }
}

/// `N` bytes of the linear area, checked against `data_end`.
pub(crate) struct LinearWindow<const N: usize> {
    address: usize,
}

/// One load of `$width` at `$at` bytes past `$address`, as a single BPF
/// instruction. Packet headers carry no alignment guarantee, and LLVM's BPF
/// backend splits every load it cannot prove aligned into byte loads, shifts
/// and ors (a 32-bit field costs 11 instructions instead of 1). The kernel
/// accepts unaligned packet loads where the CPU does them efficiently (x86-64
/// and arm64): the verifier checks packet alignment only on the other
/// architectures, and there it rejects the program at load, never a packet.
macro_rules! packet_load {
    ($width:literal, $address:expr, $at:expr) => {{
        let value: u64;
        // SAFETY: the window check put [address, address + N) within the
        // linear data, and the caller asserts `at + width <= N` at compile
        // time; the instruction only reads.
        unsafe {
            core::arch::asm!(
                concat!("{value} = *(", $width, " *)({address} + {at})"),
                address = in(reg) $address,
                at = const $at,
                value = lateout(reg) value,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        value
    }};
}

impl<const N: usize> Window<N> for LinearWindow<N> {
    #[inline(always)]
    fn u8<const AT: usize>(&self) -> u8 {
        const { assert!(AT < N) };
        packet_load!("u8", self.address, AT) as u8
    }

    #[inline(always)]
    fn be16<const AT: usize>(&self) -> u16 {
        const { assert!(AT + 2 <= N) };
        u16::from_be(packet_load!("u16", self.address, AT) as u16)
    }

    #[inline(always)]
    fn raw32<const AT: usize>(&self) -> u32 {
        const { assert!(AT + 4 <= N) };
        packet_load!("u32", self.address, AT) as u32
    }

    #[inline(always)]
    fn raw64<const AT: usize>(&self) -> u64 {
        const { assert!(AT + 8 <= N) };
        packet_load!("u64", self.address, AT)
    }
}

/// The whole packet through `bpf_skb_load_bytes`, which also reaches paged data.
pub(crate) struct Paged<'a>(pub(crate) &'a TcContext);

impl Reader for Paged<'_> {
    type Window<const N: usize> = Copied<N>;

    #[inline(always)]
    fn window<const N: usize>(&self, offset: usize) -> Option<Copied<N>> {
        let Self(ctx) = self;
        let mut copy = Copied([0; N]);
        let length = u32::try_from(N).ok()?;
        // SAFETY: the helper writes at most `length` = N bytes into `copy`,
        // which holds N, and reads only the packet.
        let result = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                offset as u32,
                copy.0.as_mut_ptr().cast(),
                length,
            )
        };
        (result == 0).then_some(copy)
    }
}

/// `N` bytes copied to the stack, aligned so that fields at aligned offsets
/// are single loads.
#[repr(C, align(8))]
pub(crate) struct Copied<const N: usize>([u8; N]);

impl<const N: usize> Window<N> for Copied<N> {
    #[inline(always)]
    fn u8<const AT: usize>(&self) -> u8 {
        const { assert!(AT < N) };
        self.0[AT]
    }

    #[inline(always)]
    fn be16<const AT: usize>(&self) -> u16 {
        const { assert!(AT + 2 <= N) };
        u16::from_be_bytes([self.0[AT], self.0[AT + 1]])
    }

    #[inline(always)]
    fn raw32<const AT: usize>(&self) -> u32 {
        const { assert!(AT + 4 <= N) };
        u32::from_ne_bytes([self.0[AT], self.0[AT + 1], self.0[AT + 2], self.0[AT + 3]])
    }

    #[inline(always)]
    fn raw64<const AT: usize>(&self) -> u64 {
        const { assert!(AT + 8 <= N) };
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[AT..AT + 8]);
        u64::from_ne_bytes(bytes)
    }
}

#[inline(always)]
fn window<const N: usize, R: Reader>(
    reader: &R,
    offset: usize,
    reason: Malformed,
) -> Result<R::Window<N>, ParseError> {
    reader.window(offset).ok_or(ParseError::Malformed(reason))
}

/// Source and destination ports, in host order, from the first four bytes of
/// a TCP, UDP or SCTP header as they lie in memory.
#[inline(always)]
fn ports(raw: u32) -> (u16, u16) {
    let [source, destination] = [raw as u16, (raw >> 16) as u16];
    (u16::from_be(source), u16::from_be(destination))
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

/// An address from its two 64-bit halves as they lie in memory.
#[inline(always)]
fn address(low: u64, high: u64) -> [u8; 16] {
    (u128::from(low) | u128::from(high) << 64).to_ne_bytes()
}

/// `::ffff:a.b.c.d` from the four bytes of an IPv4 address as they lie in
/// memory.
#[inline(always)]
fn ipv4_mapped(raw: u32) -> [u8; 16] {
    address(
        0,
        u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]) | u64::from(raw) << 32,
    )
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
    let mut ethertype = window::<ETH_HLEN, R>(ctx, 0, Malformed::EthernetTruncated)?.be16::<12>();
    let mut l3_offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag control information (2 bytes), then the encapsulated ethertype.
        ethertype = window::<4, R>(ctx, l3_offset, Malformed::VlanTruncated)?.be16::<2>();
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
    let header = window::<20, R>(ctx, l3_offset, Malformed::Ipv4Truncated)?;
    let version_ihl = header.u8::<0>();
    if version_ihl >> 4 != 4 {
        return Err(Malformed::Ipv4BadVersion.into());
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let available = packet_len.saturating_sub(l3_offset);
    let total_len = match usize::from(header.be16::<2>()) {
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
    let flags_offset = header.be16::<6>();
    let more_fragments = flags_offset & 0x2000 != 0;
    let fragment_offset = flags_offset & 0x1fff;
    let id = u32::from(header.be16::<4>());
    let protocol = header.u8::<9>();
    let fragment = if fragment_offset != 0 {
        Fragment::Later { id }
    } else if more_fragments {
        Fragment::First { id, next: protocol }
    } else {
        Fragment::Whole
    };
    key.src_addr = ipv4_mapped(header.raw32::<12>());
    key.dst_addr = ipv4_mapped(header.raw32::<16>());
    Ok(Network {
        protocol,
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
    // Version, traffic class, flow label, payload length, next header, hop
    // limit, then the two addresses.
    let header = window::<IPV6_HLEN, R>(ctx, l3_offset, Malformed::Ipv6Truncated)?;
    if header.u8::<0>() >> 4 != 6 {
        return Err(Malformed::Ipv6BadVersion.into());
    }
    let available = packet_len.saturating_sub(l3_offset);
    let ip_len = match usize::from(header.be16::<4>()) {
        // BIG TCP and jumbograms carry a zero payload length.
        0 if is_gso => available,
        payload_len => IPV6_HLEN + payload_len,
    };
    if ip_len > available {
        return Err(Malformed::Ipv6BadPayloadLength.into());
    }
    key.src_addr = address(header.raw64::<8>(), header.raw64::<16>());
    key.dst_addr = address(header.raw64::<24>(), header.raw64::<32>());

    let end = l3_offset + ip_len;
    let mut next = header.u8::<6>();
    let mut offset = l3_offset + IPV6_HLEN;
    let mut fragment = Fragment::Whole;
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        let header_len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let extension = window::<2, R>(ctx, offset, Malformed::Ipv6ExtensionTruncated)?;
                next = extension.u8::<0>();
                (usize::from(extension.u8::<1>()) + 1) * 8
            }
            NEXTHDR_AUTH => {
                let extension = window::<2, R>(ctx, offset, Malformed::Ipv6ExtensionTruncated)?;
                next = extension.u8::<0>();
                (usize::from(extension.u8::<1>()) + 2) * 4
            }
            NEXTHDR_FRAGMENT => {
                let extension = window::<8, R>(ctx, offset, Malformed::Ipv6ExtensionTruncated)?;
                next = extension.u8::<0>();
                let offset_flags = extension.be16::<2>();
                let id = u32::from_be(extension.raw32::<4>());
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

    let mut icmp_error = None;
    let (transport_len, tcp_flags) = match protocol {
        protocol::TCP => {
            let header = window::<14, R>(ctx, l4_offset, Malformed::TransportTruncated)?;
            let data_offset = usize::from(header.u8::<12>() >> 4) * 4;
            if data_offset < 20 || l4_offset + data_offset > datagram_end {
                return Err(Malformed::TcpBadDataOffset.into());
            }
            (key.src_port, key.dst_port) = ports(header.raw32::<0>());
            let flags = u16::from(header.u8::<13>());
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
            let header = window::<4, R>(ctx, l4_offset, Malformed::TransportTruncated)?;
            if l4_offset + needed > datagram_end {
                return Err(Malformed::TransportTruncated.into());
            }
            (key.src_port, key.dst_port) = ports(header.raw32::<0>());
            (needed, 0)
        }
        protocol::ICMP | protocol::ICMPV6 => {
            let header = window::<2, R>(ctx, l4_offset, Malformed::TransportTruncated)?;
            // Type, code and checksum.
            if l4_offset + 4 > datagram_end {
                return Err(Malformed::TransportTruncated.into());
            }
            key.icmp_type = header.u8::<0>();
            key.icmp_code = header.u8::<1>();
            icmp_error = icmp_error::kind_of(protocol == protocol::ICMPV6, key.icmp_type);
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
    if let Some(kind) = icmp_error {
        packet.icmp_error = kind;
        // Type, code, checksum and four bytes (unused, MTU or pointer), then
        // the quoted packet.
        packet.quote_offset = u16::try_from(l4_offset + ICMP_ERROR_HLEN).unwrap_or(u16::MAX);
        packet.quote_end = u16::try_from(datagram_end).unwrap_or(u16::MAX);
    }
    Ok(())
}

/// The header an ICMP or ICMPv6 error puts before the packet it quotes.
const ICMP_ERROR_HLEN: usize = 8;
/// Bytes of the quoted transport header read: RFC 792 promises at least
/// eight, which hold every port.
const QUOTED_TRANSPORT_LEN: usize = 8;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Turns the key of an ICMP or ICMPv6 error ([`Packet::icmp_error`] set) into
/// the key of the connection it quotes, in the direction the error travels:
/// the reply direction of the quoted packet (addresses and ports swapped, its
/// protocol; an echo request becomes its reply). A quote that cannot be read
/// (truncated, a later fragment, IPv6 extension headers, a protocol without
/// ports other than echo) leaves the ICMP key as it was; the packet stays
/// marked as an error either way.
///
/// A separate BPF-to-BPF function with its own stack frame, reading through
/// `bpf_skb_load_bytes` with bounded constant lengths: errors are rare, and
/// the common path pays only the test of `icmp_error`.
#[inline(never)]
pub(crate) fn fold_icmp_error(paged: &Paged<'_>, packet: &mut Packet) {
    let offset = usize::from(packet.quote_offset);
    let end = usize::from(packet.quote_end);
    let mut quoted = FlowKey::default();
    let folded = if packet.key.protocol == protocol::ICMPV6 {
        quoted_ipv6(paged, offset, end, &mut quoted)
    } else {
        quoted_ipv4(paged, offset, end, &mut quoted)
    };
    if folded.is_some() {
        packet.key = quoted;
    }
}

#[inline(always)]
fn quoted_ipv4(paged: &Paged<'_>, offset: usize, end: usize, key: &mut FlowKey) -> Option<()> {
    if offset + 20 > end {
        return None;
    }
    let header = paged.window::<20>(offset)?;
    let version_ihl = header.u8::<0>();
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    // A later fragment quotes no transport header.
    if version_ihl >> 4 != 4 || header_len < 20 || header.be16::<6>() & 0x1fff != 0 {
        return None;
    }
    let l4_offset = offset + header_len;
    if l4_offset + QUOTED_TRANSPORT_LEN > end {
        return None;
    }
    let transport = paged.window::<QUOTED_TRANSPORT_LEN>(l4_offset)?;
    key.src_addr = ipv4_mapped(header.raw32::<16>());
    key.dst_addr = ipv4_mapped(header.raw32::<12>());
    quoted_transport(header.u8::<9>(), &transport, key)
}

#[inline(always)]
fn quoted_ipv6(paged: &Paged<'_>, offset: usize, end: usize, key: &mut FlowKey) -> Option<()> {
    let l4_offset = offset + IPV6_HLEN;
    if l4_offset + QUOTED_TRANSPORT_LEN > end {
        return None;
    }
    let header = paged.window::<IPV6_HLEN>(offset)?;
    if header.u8::<0>() >> 4 != 6 {
        return None;
    }
    let transport = paged.window::<QUOTED_TRANSPORT_LEN>(l4_offset)?;
    key.src_addr = address(header.raw64::<24>(), header.raw64::<32>());
    key.dst_addr = address(header.raw64::<8>(), header.raw64::<16>());
    quoted_transport(header.u8::<6>(), &transport, key)
}

/// Fills the reply direction's ports (or echo reply type) of the quoted
/// transport header; `None` for protocols whose reply cannot be named.
#[inline(always)]
fn quoted_transport(
    protocol: u8,
    transport: &Copied<QUOTED_TRANSPORT_LEN>,
    key: &mut FlowKey,
) -> Option<()> {
    match protocol {
        protocol::TCP | protocol::UDP | protocol::SCTP => {
            let (source, destination) = ports(transport.raw32::<0>());
            key.src_port = destination;
            key.dst_port = source;
        }
        protocol::ICMP if transport.u8::<0>() == ICMP_ECHO_REQUEST => {
            key.icmp_type = ICMP_ECHO_REPLY;
        }
        protocol::ICMPV6 if transport.u8::<0>() == ICMPV6_ECHO_REQUEST => {
            key.icmp_type = ICMPV6_ECHO_REPLY;
        }
        _ => return None,
    }
    key.protocol = protocol;
    Some(())
}
