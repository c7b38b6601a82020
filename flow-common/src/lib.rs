//! Types that cross the boundary between flow-agent's eBPF programs and its
//! userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy` and has explicit padding so that the
//! kernel side (compiled for `bpfel-unknown-none`) and the userspace side agree on
//! every byte. The layout tests at the bottom of this file pin sizes and offsets.
//!
//! # How the datapath counts
//!
//! The TC programs aggregate packets per [`FlowKey`] into one of two
//! preallocated per-CPU hash maps (no allocation on the packet path), chosen by
//! the *epoch* in [`DatapathControl`]: even epochs write
//! [`FLOWS_EVEN`], odd epochs [`FLOWS_ODD`]. To drain, userspace bumps the epoch,
//! waits for an RCU grace period (after which no program can still be writing the
//! old map), then reads and deletes every entry of the now quiescent map. No packet
//! can be counted into an entry after it was read, so summing a flow's records
//! gives its exact totals.
//!
//! Every per-CPU slot carries the epoch it was written in ([`FlowStats::epoch`]).
//! Kernels before 5.10 do not zero the other CPUs' slots when a preallocated
//! per-CPU hash element is reused, so a re-created flow could otherwise inherit a previous life's counts:
//! the programs reset a slot whose epoch is not the current one before adding to it,
//! and userspace ignores slots from another epoch.
#![no_std]
#![deny(missing_docs)]

/// Name of the per-CPU hash map written during even epochs.
pub const FLOWS_EVEN: &str = "FLOWS_EVEN";
/// Name of the per-CPU hash map written during odd epochs.
pub const FLOWS_ODD: &str = "FLOWS_ODD";
/// Name of the single-entry array holding [`DatapathControl`].
pub const CONTROL: &str = "CONTROL";
/// Name of the per-CPU array of datapath counters, indexed by [`Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// Name of the array of bits, one per interface index below
/// [`COUNTED_BITS_LIMIT`], set for the interfaces whose ingress program counts
/// packets (see [`counted_bit`]).
pub const COUNTED_BITS: &str = "COUNTED_BITS";
/// Name of the hash map of the counted interfaces whose index is
/// [`COUNTED_BITS_LIMIT`] or more (value unused).
pub const COUNTED_INTERFACES: &str = "COUNTED_INTERFACES";
/// Name of the ring buffer that carries [`FlowEvent`]s when a flow map is full.
pub const SPILL: &str = "SPILL";
/// Name of the per-CPU array of two [`HeldFlows`], one per epoch parity: the
/// flows each CPU counted most recently, not yet in that epoch's flow map.
pub const HELD_FLOWS: &str = "HELD_FLOWS";
/// Name of the per-CPU array of two [`NewFlowLog`]s, one per epoch parity:
/// the flows each CPU created in that epoch's map.
pub const NEW_FLOW_LOG: &str = "NEW_FLOW_LOG";
/// Name of the LRU map that remembers the ports of fragmented datagrams.
pub const FRAGMENTS: &str = "FRAGMENTS";
/// Name of the read-only global that enables debug logging from the programs.
pub const DEBUG_LOG: &str = "DEBUG_LOG";
/// Name of the read-only global that makes the programs read every header
/// through `bpf_skb_load_bytes` (tests of the paged-data parser).
pub const PAGED_READS_ONLY: &str = "PAGED_READS_ONLY";
/// Name of the read-only global that makes the programs time packets with the
/// coarse monotonic clock (`bpf_ktime_get_coarse_ns`, Linux 5.11+).
pub const COARSE_CLOCK: &str = "COARSE_CLOCK";
/// Read-only global: which DNS messages the programs copy, see [`DnsCopy`].
pub const DNS_COPY: &str = "DNS_COPY";
/// Read-only global: bytes of DNS frames each CPU may copy per second.
pub const DNS_BYTES_PER_SECOND: &str = "DNS_BYTES_PER_SECOND";
/// Ring buffer of [`DnsFrame`]s, each cut to its header and copied bytes.
pub const DNS_FRAMES: &str = "DNS_FRAMES";
/// Per-CPU scratch [`DnsFrame`] the copy is assembled in.
pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
/// Per-CPU [`DnsBudget`].
pub const DNS_BUDGET: &str = "DNS_BUDGET";
/// Name of the ingress classifier in the eBPF object.
pub const PROGRAM_INGRESS: &str = "flow_ingress";
/// Name of the egress classifier in the eBPF object.
pub const PROGRAM_EGRESS: &str = "flow_egress";

/// Capacity of each flow map as compiled; the loader sizes the maps (see
/// flow-agent's `datapath::auto_map_entries`).
pub const DEFAULT_FLOW_MAP_ENTRIES: u32 = 65_536;
/// Interface indexes below this are kept in [`COUNTED_BITS`], the others in
/// [`COUNTED_INTERFACES`]. A node's interface indexes grow with every link
/// created (two per pod), so 65,536 covers some 30,000 pod starts; past that
/// the egress program pays a hash lookup instead of an inlined array load.
pub const COUNTED_BITS_LIMIT: u32 = 65_536;
/// Entries (64-bit words) of [`COUNTED_BITS`].
pub const COUNTED_BITS_WORDS: u32 = COUNTED_BITS_LIMIT / 64;

/// Where an interface index lives in [`COUNTED_BITS`]: the word's index and
/// the bit's mask, or `None` from [`COUNTED_BITS_LIMIT`] on.
#[inline(always)]
pub const fn counted_bit(ifindex: u32) -> Option<(u32, u64)> {
    if ifindex < COUNTED_BITS_LIMIT {
        Some((ifindex / 64, 1 << (ifindex % 64)))
    } else {
        None
    }
}

/// Capacity of the fragment map (entries).
pub const FRAGMENT_MAP_ENTRIES: u32 = 4_096;
/// Default size of the spill ring buffer in bytes (a power of two, multiple of the page size).
pub const DEFAULT_SPILL_BYTES: u32 = 256 * 1024;
/// Default size of the [`DNS_FRAMES`] ring buffer: 1 MiB holds about 3,000
/// typical answers (300-byte frames); userspace reads it every 250 ms.
pub const DEFAULT_DNS_RING_BYTES: u32 = 1 << 20;
/// Default per-CPU budget of copied DNS frame bytes per second.
pub const DEFAULT_DNS_BYTES_PER_SECOND: u32 = 1 << 20;
/// Bytes of a frame copied for a DNS message, from the Ethernet header on:
/// enough for two VLAN tags, IPv6 with 64 bytes of extension headers, TCP
/// with options and a 1,232-byte message (the EDNS size of DNS Flag Day
/// 2020). A longer frame is copied up to this and reported cut.
pub const DNS_COPY_BYTES: usize = 1_408;
/// Flows one CPU holds per epoch in [`HeldFlows`].
pub const HELD_FLOW_SLOTS: usize = 8;
const _: () = assert!(HELD_FLOW_SLOTS.is_power_of_two());
/// Keys one CPU's [`NewFlowLog`] holds for one epoch. A drain of an epoch in
/// which no CPU created more moves out just the logged keys; otherwise it
/// walks the map.
pub const NEW_FLOW_LOG_KEYS: usize = 512;

/// IANA protocol numbers the datapath parses.
pub mod protocol {
    /// Internet Control Message Protocol.
    pub const ICMP: u8 = 1;
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// Stream Control Transmission Protocol.
    pub const SCTP: u8 = 132;
}

/// ICMP and ICMPv6 error messages: the kinds [`FlowStats::icmp_error_kinds`]
/// collects.
///
/// An error belongs to the connection whose header it quotes: the datapath
/// counts it with that connection's reply direction (the error travels back
/// to the sender of the quoted packet), so it never looks like a flow of its
/// own.
pub mod icmp_error {
    /// Destination unreachable (ICMP type 3, ICMPv6 type 1).
    pub const UNREACHABLE: u8 = 0x01;
    /// Time exceeded (ICMP type 11, ICMPv6 type 3).
    pub const TIME_EXCEEDED: u8 = 0x02;
    /// Packet too big (ICMPv6 type 2; ICMP reports it as unreachable code 4).
    pub const PACKET_TOO_BIG: u8 = 0x04;
    /// Parameter problem (ICMP type 12, ICMPv6 type 4).
    pub const PARAMETER_PROBLEM: u8 = 0x08;

    /// Every kind with its stable name, in bit order.
    pub const NAMES: [(u8, &str); 4] = [
        (UNREACHABLE, "unreachable"),
        (TIME_EXCEEDED, "time_exceeded"),
        (PACKET_TOO_BIG, "packet_too_big"),
        (PARAMETER_PROBLEM, "parameter_problem"),
    ];

    /// The kind of an ICMP (`is_v6` false) or ICMPv6 message of type
    /// `icmp_type`, or `None` when it is not an error (echo, neighbour
    /// discovery, ...).
    #[inline(always)]
    pub const fn kind_of(is_v6: bool, icmp_type: u8) -> Option<u8> {
        match (is_v6, icmp_type) {
            (false, 3) | (true, 1) => Some(UNREACHABLE),
            (false, 11) | (true, 3) => Some(TIME_EXCEEDED),
            (true, 2) => Some(PACKET_TOO_BIG),
            (false, 12) | (true, 4) => Some(PARAMETER_PROBLEM),
            _ => None,
        }
    }
}

/// TCP header flag bits as they appear in [`FlowStats::tcp_flags`] (low byte), plus
/// two synthetic bits the datapath derives to tell the initiator of a connection.
pub mod tcp_flag {
    /// No more data from sender.
    pub const FIN: u16 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u16 = 0x02;
    /// Reset the connection.
    pub const RST: u16 = 0x04;
    /// Push function.
    pub const PSH: u16 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u16 = 0x10;
    /// Urgent pointer field significant.
    pub const URG: u16 = 0x20;
    /// ECN-Echo.
    pub const ECE: u16 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u16 = 0x80;
    /// Synthetic: a segment with SYN and without ACK was seen, so this direction
    /// opened the connection.
    pub const SYN_ONLY: u16 = 0x100;
    /// Synthetic: a segment with both SYN and ACK was seen, so this direction
    /// accepted the connection.
    pub const SYN_ACK: u16 = 0x200;
}

/// Which hook of an interface saw a packet.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// TC ingress: the packet was received by the interface. On the host side of
    /// a pod's veth this is traffic sent *by* the pod.
    Ingress = 0,
    /// TC egress: the packet was sent through the interface. On the host side of a
    /// pod's veth this is traffic delivered *to* the pod.
    Egress = 1,
}

impl Direction {
    /// Decodes the byte stored in [`FlowStats::first_direction`].
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// Identifies a unidirectional flow.
///
/// Addresses are 16 bytes in network order; IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`) so both families share one key type. Ports are in host byte
/// order and zero for protocols without ports. For ICMP and ICMPv6 the type and
/// code take the place of the ports.
///
/// Aligned to 8 (its size is a multiple of 8 already, so no byte changes):
/// the programs zero and fill it with 8-byte stores instead of narrower ones.
#[repr(C, align(8))]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address, network byte order.
    pub src_addr: [u8; 16],
    /// Destination address, network byte order.
    pub dst_addr: [u8; 16],
    /// Source port (TCP, UDP, SCTP), host byte order.
    pub src_port: u16,
    /// Destination port (TCP, UDP, SCTP), host byte order.
    pub dst_port: u16,
    /// IANA protocol number of the transport header.
    pub protocol: u8,
    /// ICMP or ICMPv6 type; zero otherwise.
    pub icmp_type: u8,
    /// ICMP or ICMPv6 code; zero otherwise.
    pub icmp_code: u8,
    /// Always zero: part of the hashed key, so it must be deterministic.
    pub _pad: u8,
}

/// What one CPU counted for one flow during one epoch.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets on the wire: a GSO/GRO super-packet counts as its segments.
    pub packets: u64,
    /// Bytes of the IP datagrams (IPv4 total length, or 40 + IPv6 payload length),
    /// like IPFIX octetDeltaCount: link-layer headers are not counted.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last packet.
    pub last_seen_ns: u64,
    /// Epoch this slot was written in; a slot from another epoch is stale.
    pub epoch: u32,
    /// Interface index of the first packet.
    pub first_ifindex: u32,
    /// Union of the TCP flags seen, see [`tcp_flag`].
    pub tcp_flags: u16,
    /// [`Direction`] of the first packet.
    pub first_direction: u8,
    /// Union of the kinds of ICMP or ICMPv6 errors counted here, see
    /// [`icmp_error`].
    pub icmp_error_kinds: u8,
    /// How many of `packets` were ICMP or ICMPv6 errors: folded into the flow
    /// of the connection they quote, or, when the quote could not be read,
    /// counted under their own ICMP key. Never more than `packets`.
    pub icmp_errors: u32,
}

/// A flow update that could not go into the flow map (it was full), sent through
/// the [`SPILL`] ring buffer instead so that it still reaches userspace.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// The flow.
    pub key: FlowKey,
    /// What was counted: one packet (or one GSO super-packet's segments).
    pub stats: FlowStats,
}

/// The flows one CPU counted most recently in one epoch, in [`HELD_FLOWS`]
/// at the epoch's parity.
///
/// A packet is counted in the slot its key hashes to. When that slot holds
/// another flow of the same epoch, that flow is first added to the epoch's
/// flow map (and the slot takes the packet's flow); a slot from another
/// epoch, or with no packets, is free. The drain of an epoch reads every
/// CPU's slots and adds them to what it moves out of the map, then zeroes
/// them.
///
/// A packet of a held flow is counted without the flow map's hash, bucket
/// and per-CPU pointer, all dependent loads that the stack has usually
/// pushed out of the CPU's caches between two packets.
///
/// Invariants: a slot with packets and this epoch is a flow counted only
/// here since it was taken (what the map holds for its key on this CPU came
/// before); a key is held in at most one slot, the one it hashes to.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldFlows {
    /// The slots, each a key and what was counted for it.
    pub flows: [FlowEvent; HELD_FLOW_SLOTS],
}

impl HeldFlows {
    /// The slot that holds `key`: the top bits of a multiplicative hash of
    /// its words, with the destination's address rotated so that a
    /// connection's two directions usually differ. A few instructions, where
    /// the flow map hashes 40 bytes with jhash.
    #[inline(always)]
    pub fn slot_of(key: &FlowKey) -> usize {
        let [a, b, c, d, e] = key.words();
        let mixed = (a ^ b ^ (c ^ d).rotate_left(17) ^ e).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (64 - HELD_FLOW_SLOTS.trailing_zeros())) as usize
    }
}

impl FlowKey {
    /// The key as five 8-byte words: compared and hashed with five loads
    /// instead of forty.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: FlowKey is 40 bytes, aligned to 8, without padding (see
        // the layout tests), so it is five initialised u64s.
        unsafe { core::mem::transmute_copy(self) }
    }
}

/// The flows one CPU created in one epoch's flow map, in [`NEW_FLOW_LOG`]
/// at the epoch's parity: the drain of an almost empty map moves out exactly
/// these keys instead of walking every bucket, so it costs the same whatever
/// the map's capacity.
///
/// Invariants: the programs start the log afresh (`len` 0) at the first flow
/// a CPU creates in an epoch other than `epoch`. `len` ≤
/// [`NEW_FLOW_LOG_KEYS`] means `keys[..len]` are every flow this CPU created
/// in `epoch`; `len` = [`NEW_FLOW_LOG_KEYS`] + 1 means it created more. A log
/// whose `epoch` is another one says this CPU created nothing in the epoch
/// asked about.
///
/// A per-CPU slot costs the packet that creates a flow a few stores, where a
/// ring buffer's reserve and commit cost it about 120 ns (measured with
/// BPF_PROG_TEST_RUN). 20,488 bytes: within the 32 KiB a per-CPU value may
/// take.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NewFlowLog {
    /// The epoch the keys belong to.
    pub epoch: u32,
    /// How many of `keys` are set, or [`NEW_FLOW_LOG_KEYS`] + 1 after an
    /// overflow.
    pub len: u32,
    /// The flows, in the order they were created.
    pub keys: [FlowKey; NEW_FLOW_LOG_KEYS],
}

const _: () = assert!(core::mem::size_of::<NewFlowLog>() <= 32 * 1024);

impl NewFlowLog {
    /// `len` once more than [`NEW_FLOW_LOG_KEYS`] flows were created.
    pub const OVERFLOWED: u32 = NEW_FLOW_LOG_KEYS as u32 + 1;

    /// The keys this log lists for `epoch`: `None` when this CPU created more
    /// than the log holds, none when the log belongs to another epoch.
    pub fn keys_of(&self, epoch: u32) -> Option<&[FlowKey]> {
        if self.epoch != epoch {
            return Some(&[]);
        }
        self.keys.get(..self.len as usize)
    }
}

/// Control block written by userspace, read by the programs on every packet.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathControl {
    /// Current epoch: even epochs count into [`FLOWS_EVEN`], odd ones into [`FLOWS_ODD`].
    pub epoch: u32,
    /// Always zero.
    pub _pad: u32,
}

/// Which DNS messages the programs copy to userspace ([`DNS_COPY`]).
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DnsCopy {
    /// None: the check costs nothing, the verifier prunes it.
    Off = 0,
    /// Messages from port 53 (UDP or TCP): answers, for names on flows.
    Answers = 1,
    /// Messages from or to port 53: answers and queries, for DNS flows.
    AnswersAndQueries = 2,
}

/// What precedes the copied bytes of a frame in [`DNS_FRAMES`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsFrameHeader {
    /// When it was copied, on the flows' monotonic clock (nanoseconds).
    pub time_ns: u64,
    /// Length of the whole frame (`skb->len`).
    pub frame_len: u32,
    /// Interface the frame was seen on.
    pub ifindex: u32,
    /// Bytes copied: `min(frame_len, DNS_COPY_BYTES)`.
    pub copied: u16,
    /// [`Direction`] of the hook that saw it.
    pub direction: u8,
    /// Always zero.
    pub _pad: [u8; 5],
}

/// A frame of a DNS message as copied; the ring buffer holds only the header
/// and the first `copied` bytes of `frame`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DnsFrame {
    /// Lengths and where it was seen.
    pub header: DnsFrameHeader,
    /// The frame from its Ethernet header on.
    pub frame: [u8; DNS_COPY_BYTES],
}

/// One CPU's spending of [`DNS_BYTES_PER_SECOND`] ([`DNS_BUDGET`]).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsBudget {
    /// Start of the current one-second window (`bpf_ktime_get_ns`).
    pub window_start_ns: u64,
    /// Bytes copied in the window.
    pub bytes: u64,
}

/// Key of the [`FRAGMENTS`] map: identifies the fragments of one datagram.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address, as in [`FlowKey`].
    pub src_addr: [u8; 16],
    /// Destination address, as in [`FlowKey`].
    pub dst_addr: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// Transport protocol.
    pub protocol: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Value of the [`FRAGMENTS`] map: the transport fields of the first fragment.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    /// Source port of the datagram.
    pub src_port: u16,
    /// Destination port of the datagram.
    pub dst_port: u16,
    /// ICMP type of the datagram.
    pub icmp_type: u8,
    /// ICMP code of the datagram.
    pub icmp_code: u8,
    /// Transport protocol of the datagram: later fragments name the
    /// protocol after the Fragment header, which for IPv6 may be an
    /// extension header. Zero in entries of agents before this field.
    pub protocol: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Indexes into the [`COUNTERS`] per-CPU array. Each counts packets.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// A new flow could not be inserted because the flow map was full (`E2BIG`).
    MapFull = 0,
    /// A new flow could not be inserted for another reason.
    UpdateFailed = 1,
    /// Packets that went through the spill ring buffer because of one of the two above.
    Spilled = 2,
    /// Packets that could be recorded neither in the map nor in the ring buffer:
    /// the only way a packet goes uncounted.
    Lost = 3,
    /// Frames that carry neither IPv4 nor IPv6 (ARP, LLDP, ...): not flows.
    NotIp = 4,
    /// IP packets whose headers are truncated or inconsistent (bad IHL, bad
    /// length, short transport header): not counted as flows.
    Malformed = 5,
    /// Packets seen on egress that were already counted on the ingress of a
    /// watched interface (a pod-to-pod packet on one node).
    Deduplicated = 6,
    /// Non-first fragments whose first fragment was not seen: counted without ports.
    FragmentWithoutPorts = 7,
    /// Flows created in a flow map (one per flow and epoch). Userspace watches
    /// it to drain early when the active map fills up.
    Inserted = 8,
    /// DNS frames copied to [`DNS_FRAMES`].
    DnsCopied = 9,
    /// DNS frames not copied: the CPU had spent its [`DNS_BYTES_PER_SECOND`].
    DnsOverBudget = 10,
    /// DNS frames not copied: [`DNS_FRAMES`] was full.
    DnsLost = 11,
}

impl Counter {
    /// Number of counters: the size of the [`COUNTERS`] array.
    pub const COUNT: u32 = 12;
    /// Every counter, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::MapFull,
        Self::UpdateFailed,
        Self::Spilled,
        Self::Lost,
        Self::NotIp,
        Self::Malformed,
        Self::Deduplicated,
        Self::FragmentWithoutPorts,
        Self::Inserted,
        Self::DnsCopied,
        Self::DnsOverBudget,
        Self::DnsLost,
    ];

    /// A stable snake_case name, used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MapFull => "map_full",
            Self::UpdateFailed => "update_failed",
            Self::Spilled => "spilled",
            Self::Lost => "lost",
            Self::NotIp => "not_ip",
            Self::Malformed => "malformed",
            Self::Deduplicated => "deduplicated",
            Self::FragmentWithoutPorts => "fragment_without_ports",
            Self::Inserted => "inserted",
            Self::DnsCopied => "dns_copied",
            Self::DnsOverBudget => "dns_over_budget",
            Self::DnsLost => "dns_lost",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, `Copy`, has no implicit padding
    // (checked by the layout tests) and is valid for any bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::NewFlowLog {}
    unsafe impl aya::Pod for super::HeldFlows {}
    unsafe impl aya::Pod for super::DatapathControl {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentPorts {}
    unsafe impl aya::Pod for super::DnsFrameHeader {}
    unsafe impl aya::Pod for super::DnsFrame {}
    unsafe impl aya::Pod for super::DnsBudget {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn counted_bits_cover_every_index_below_the_limit_once() {
        assert_eq!(counted_bit(0), Some((0, 1)));
        assert_eq!(counted_bit(63), Some((0, 1 << 63)));
        assert_eq!(counted_bit(64), Some((1, 1)));
        assert_eq!(
            counted_bit(COUNTED_BITS_LIMIT - 1),
            Some((COUNTED_BITS_WORDS - 1, 1 << 63))
        );
        assert_eq!(counted_bit(COUNTED_BITS_LIMIT), None);
        assert_eq!(counted_bit(u32::MAX), None);
    }

    /// Pod-to-pod keys of one node: 64 client pods of 10.244.1.0/24 with
    /// 32 ephemeral ports each, to 4 servers' port 8080, over TCP and UDP.
    fn node_keys() -> impl Iterator<Item = FlowKey> {
        let address = |host: u8| {
            let mut address = [0; 16];
            address[10..].copy_from_slice(&[0xff, 0xff, 10, 244, 1, host]);
            address
        };
        (1..=64u8).flat_map(move |client| {
            (0..32u16).flat_map(move |port| {
                (200..204u8).flat_map(move |server| {
                    [6, 17].map(|protocol| FlowKey {
                        src_addr: address(client),
                        dst_addr: address(server),
                        src_port: 40_000 + port * 7,
                        dst_port: 8080,
                        protocol,
                        ..FlowKey::default()
                    })
                })
            })
        })
    }

    #[test]
    fn held_slots_spread_a_nodes_flows_and_part_a_connections_directions() {
        let mut per_slot = [0usize; HELD_FLOW_SLOTS];
        let (mut flows, mut same_slot_replies) = (0, 0);
        for key in node_keys() {
            let slot = HeldFlows::slot_of(&key);
            per_slot[slot] += 1;
            flows += 1;
            let reply = FlowKey {
                src_addr: key.dst_addr,
                dst_addr: key.src_addr,
                src_port: key.dst_port,
                dst_port: key.src_port,
                ..key
            };
            same_slot_replies += usize::from(HeldFlows::slot_of(&reply) == slot);
        }
        assert_eq!(flows, 16_384);
        // Each slot within a fifth of an even share (2,048).
        for count in per_slot {
            assert!((1_638..=2_458).contains(&count), "{per_slot:?}");
        }
        // A reply shares its request's slot about as often as any other
        // flow does (1 in 8), not always, as a symmetric hash would make it.
        assert!(
            (1_638..=2_458).contains(&same_slot_replies),
            "{same_slot_replies}"
        );
    }

    #[test]
    fn key_words_are_the_key_bytes_in_order() {
        let key = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 0x0403,
            dst_port: 0x0605,
            protocol: 7,
            icmp_type: 8,
            icmp_code: 9,
            _pad: 0,
        };
        let [a, b, c, d, e] = key.words();
        assert_eq!(
            [a, b, c, d],
            [
                0x0101_0101_0101_0101,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0202_0202_0202_0202,
            ]
        );
        assert_eq!(e.to_ne_bytes(), [3, 4, 5, 6, 7, 8, 9, 0]);
    }

    #[test]
    fn flow_key_layout_has_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(offset_of!(FlowKey, src_addr), 0);
        assert_eq!(offset_of!(FlowKey, dst_addr), 16);
        assert_eq!(offset_of!(FlowKey, src_port), 32);
        assert_eq!(offset_of!(FlowKey, dst_port), 34);
        assert_eq!(offset_of!(FlowKey, protocol), 36);
        assert_eq!(offset_of!(FlowKey, icmp_type), 37);
        assert_eq!(offset_of!(FlowKey, icmp_code), 38);
        assert_eq!(offset_of!(FlowKey, _pad), 39);
    }

    #[test]
    fn flow_stats_layout_is_a_multiple_of_eight() {
        // Per-CPU map values are copied in 8-byte rounded slots; keep them exact.
        assert_eq!(size_of::<FlowStats>(), 48);
        assert_eq!(offset_of!(FlowStats, packets), 0);
        assert_eq!(offset_of!(FlowStats, bytes), 8);
        assert_eq!(offset_of!(FlowStats, first_seen_ns), 16);
        assert_eq!(offset_of!(FlowStats, last_seen_ns), 24);
        assert_eq!(offset_of!(FlowStats, epoch), 32);
        assert_eq!(offset_of!(FlowStats, first_ifindex), 36);
        assert_eq!(offset_of!(FlowStats, tcp_flags), 40);
        assert_eq!(offset_of!(FlowStats, first_direction), 42);
        assert_eq!(offset_of!(FlowStats, icmp_error_kinds), 43);
        assert_eq!(offset_of!(FlowStats, icmp_errors), 44);
    }

    #[test]
    fn icmp_errors_are_told_by_family_and_type() {
        assert_eq!(icmp_error::kind_of(false, 3), Some(icmp_error::UNREACHABLE));
        assert_eq!(
            icmp_error::kind_of(false, 11),
            Some(icmp_error::TIME_EXCEEDED)
        );
        assert_eq!(
            icmp_error::kind_of(false, 12),
            Some(icmp_error::PARAMETER_PROBLEM)
        );
        assert_eq!(icmp_error::kind_of(true, 1), Some(icmp_error::UNREACHABLE));
        assert_eq!(
            icmp_error::kind_of(true, 2),
            Some(icmp_error::PACKET_TOO_BIG)
        );
        assert_eq!(
            icmp_error::kind_of(true, 3),
            Some(icmp_error::TIME_EXCEEDED)
        );
        assert_eq!(
            icmp_error::kind_of(true, 4),
            Some(icmp_error::PARAMETER_PROBLEM)
        );
        // Echo, redirect, neighbour discovery: not errors.
        for (is_v6, icmp_type) in [
            (false, 0),
            (false, 8),
            (false, 5),
            (false, 1),
            (true, 128),
            (true, 135),
            (true, 0),
        ] {
            assert_eq!(icmp_error::kind_of(is_v6, icmp_type), None);
        }
    }

    #[test]
    fn dns_frame_layouts() {
        assert_eq!(size_of::<DnsFrameHeader>(), 24);
        assert_eq!(offset_of!(DnsFrameHeader, frame_len), 8);
        assert_eq!(offset_of!(DnsFrameHeader, ifindex), 12);
        assert_eq!(offset_of!(DnsFrameHeader, copied), 16);
        assert_eq!(offset_of!(DnsFrameHeader, direction), 18);
        assert_eq!(size_of::<DnsFrame>(), 24 + DNS_COPY_BYTES);
        assert_eq!(size_of::<DnsFrame>() % 8, 0);
        assert_eq!(size_of::<DnsBudget>(), 16);
    }

    #[test]
    fn event_control_and_fragment_layouts() {
        assert_eq!(size_of::<FlowEvent>(), 88);
        assert_eq!(offset_of!(FlowEvent, stats), 40);
        assert_eq!(size_of::<NewFlowLog>(), 8 + 40 * NEW_FLOW_LOG_KEYS);
        assert_eq!(offset_of!(NewFlowLog, len), 4);
        assert_eq!(offset_of!(NewFlowLog, keys), 8);
        assert_eq!(size_of::<HeldFlows>(), 88 * HELD_FLOW_SLOTS);
        assert_eq!(size_of::<DatapathControl>(), 8);
        assert_eq!(size_of::<FragmentKey>(), 40);
        assert_eq!(offset_of!(FragmentKey, id), 32);
        assert_eq!(offset_of!(FragmentKey, protocol), 36);
        assert_eq!(size_of::<FragmentPorts>(), 8);
        assert_eq!(offset_of!(FragmentPorts, protocol), 6);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn direction_round_trips_through_its_byte() {
        assert_eq!(
            Direction::from_u8(Direction::Ingress as u8),
            Some(Direction::Ingress)
        );
        assert_eq!(
            Direction::from_u8(Direction::Egress as u8),
            Some(Direction::Egress)
        );
        assert_eq!(Direction::from_u8(2), None);
    }

    #[test]
    fn a_new_flow_log_lists_its_own_epoch_only_and_says_when_it_overflowed() {
        let key = |port| FlowKey {
            src_port: port,
            ..FlowKey::default()
        };
        let mut log = NewFlowLog {
            epoch: 6,
            len: 2,
            keys: [FlowKey::default(); NEW_FLOW_LOG_KEYS],
        };
        log.keys[0] = key(1);
        log.keys[1] = key(2);
        log.keys[2] = key(3);
        assert_eq!(log.keys_of(6), Some(&[key(1), key(2)][..]));
        assert_eq!(log.keys_of(8), Some(&[][..]));
        log.len = NEW_FLOW_LOG_KEYS as u32;
        assert_eq!(log.keys_of(6).map(<[_]>::len), Some(NEW_FLOW_LOG_KEYS));
        log.len = NewFlowLog::OVERFLOWED;
        assert_eq!(log.keys_of(6), None);
        assert_eq!(log.keys_of(7), Some(&[][..]));
    }
}
