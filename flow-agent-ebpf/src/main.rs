//! flow-agent's TC classifiers.
//!
//! `flow_ingress` and `flow_egress` parse each packet (Ethernet, 802.1Q/802.1ad,
//! IPv4 with options and fragments, IPv6 with extension headers, TCP, UDP, SCTP,
//! ICMP, ICMPv6) and add it to its flow in the current epoch's per-CPU flow map.
//! An ICMP or ICMPv6 error is added to the flow of the connection it quotes
//! (its reply direction), marked as an error.
//! They never drop, redirect or modify a packet: both always return
//! `TC_ACT_UNSPEC` (`TCX_NEXT` on TCX), which hands the packet to the next program
//! or to the stack unchanged.
//!
//! Minimum kernel: 5.8 (ring buffer, bounded loops, `bpf_skb_load_bytes` on
//! clsact). TCX attachment needs 6.6; userspace falls back to clsact before that.
//! The coarse clock needs 5.11; older kernels read the precise one.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod dns;
mod parse;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use flow_common::{
    COUNTED_BITS_WORDS, Counter, DEFAULT_FLOW_MAP_ENTRIES, DEFAULT_SPILL_BYTES, DatapathControl,
    Direction, FRAGMENT_MAP_ENTRIES, FlowEvent, FlowKey, FlowStats, FragmentKey, FragmentPorts,
    HeldFlows, NewFlowLog, counted_bit,
};

use crate::parse::{Linear, Packet, Paged, ParseError};

const E2BIG: i32 = 7;
const EEXIST: i32 = 17;

/// Set to 1 by the loader (`--ebpf-debug`) to log from the programs. It lives in
/// `.rodata`, so with the default of 0 the verifier prunes every logging branch
/// and the hot path carries no logging cost at all.
#[unsafe(no_mangle)]
static DEBUG_LOG: u8 = 0;

/// Set to 1 by the loader where `bpf_ktime_get_coarse_ns` exists (Linux
/// 5.11+): the flows' first and last packet times then have the kernel tick's
/// resolution (1-4 ms with the usual CONFIG_HZ), as IPFIX's millisecond
/// timestamps do, and cost a few nanoseconds instead of the ~25 a precise
/// clock read takes. Read-only: the verifier prunes the clock not taken, so
/// older kernels never see the newer helper.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 0;

/// Set to 1 by tests to parse every packet through `bpf_skb_load_bytes`, the
/// path otherwise taken only by packets whose headers lie in paged data (which
/// BPF_PROG_TEST_RUN cannot build). Read-only: pruned by the verifier when 0.
#[unsafe(no_mangle)]
static PAGED_READS_ONLY: u8 = 0;

/// Preallocated (flags 0): creating a flow pops an element from a free list. With
/// BPF_F_NO_PREALLOC every new flow would allocate per-CPU memory on the packet
/// path, measured at 12 µs per flow against 0.6 µs preallocated.
#[map]
static FLOWS_EVEN: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);

#[map]
static FLOWS_ODD: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_MAP_ENTRIES, 0);

#[map]
static CONTROL: Array<DatapathControl> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Interfaces whose ingress program counts packets, one bit per index below
/// [`flow_common::COUNTED_BITS_LIMIT`]. An egress packet that entered the node
/// through one of them was already counted there. The verifier inlines an
/// array lookup into a bounds check and a load; a hash lookup would hash the
/// key and walk a bucket on every egress packet.
#[map]
static COUNTED_BITS: Array<u64> = Array::with_max_entries(COUNTED_BITS_WORDS, 0);

/// The counted interfaces whose index is past [`COUNTED_BITS`] (value unused).
#[map]
static COUNTED_INTERFACES: HashMap<u32, u8> = HashMap::with_max_entries(16_384, 0);

#[map]
static SPILL: RingBuf = RingBuf::with_byte_size(DEFAULT_SPILL_BYTES, 0);

/// Every flow created in a flow map, per CPU and epoch parity, for the drain
/// (see [`NewFlowLog`]).
#[map]
static NEW_FLOW_LOG: PerCpuArray<NewFlowLog> = PerCpuArray::with_max_entries(2, 0);

/// Each CPU's most recently counted flows, per epoch parity (see
/// [`HeldFlows`]).
#[map]
static HELD_FLOWS: PerCpuArray<HeldFlows> = PerCpuArray::with_max_entries(2, 0);

#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::with_max_entries(FRAGMENT_MAP_ENTRIES, 0);

#[classifier]
pub fn flow_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn flow_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn debug_enabled() -> bool {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold the
    // default value in, leaving the decision to the loader and the verifier.
    unsafe { core::ptr::read_volatile(&DEBUG_LOG) != 0 }
}

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC, or its coarse flavour:
/// see [`COARSE_CLOCK`]).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a plain read of a read-only global, volatile so the loader decides.
    if unsafe { core::ptr::read_volatile(&COARSE_CLOCK) } != 0 {
        // SAFETY: no preconditions; present on every kernel that sets the flag.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; TC programs do not preempt each other on one CPU.
        unsafe { *value += 1 }
    }
}

/// Whether the ingress program of interface `ifindex` counts packets.
#[inline(always)]
fn counted(ifindex: u32) -> bool {
    match counted_bit(ifindex) {
        Some((word, mask)) => COUNTED_BITS.get(word).is_some_and(|bits| bits & mask != 0),
        // SAFETY: the value is never dereferenced.
        None => unsafe { COUNTED_INTERFACES.get(&ifindex) }.is_some(),
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the whole program run.
    let (ifindex, ingress_ifindex, gso_segs, gso_size) = unsafe {
        (
            (*skb).ifindex,
            (*skb).ingress_ifindex,
            (*skb).gso_segs,
            (*skb).gso_size,
        )
    };

    if direction == Direction::Egress && ingress_ifindex != 0 && counted(ingress_ifindex) {
        bump(Counter::Deduplicated);
        return;
    }

    let mut packet = Packet::default();
    let packet_len = ctx.len() as usize;
    let linear = Linear::new(ctx);
    let is_gso = gso_segs > 1;
    // SAFETY: a plain read of a read-only global, volatile so the loader decides.
    let paged_only = unsafe { core::ptr::read_volatile(&PAGED_READS_ONLY) } != 0;
    let mut result = Err(ParseError::NotIp);
    let mut read_paged = paged_only;
    if !paged_only {
        result = parse::parse_linear(&linear, packet_len, &FRAGMENTS, is_gso, &mut packet);
        // A header may lie in paged data, or beyond the 1024 bytes the direct
        // reader reaches, rather than be missing.
        read_paged = matches!(result, Err(ParseError::Malformed(_)))
            && (linear.len() < packet_len || linear.len() > parse::LINEAR_REACH);
    }
    if read_paged {
        packet = Packet::default();
        result = parse::parse_paged(&Paged(ctx), packet_len, &FRAGMENTS, is_gso, &mut packet);
    }
    match result {
        Ok(()) => {}
        Err(ParseError::NotIp) => {
            bump(Counter::NotIp);
            return;
        }
        Err(ParseError::Malformed(reason)) => {
            bump(Counter::Malformed);
            if debug_enabled() {
                debug!(
                    ctx,
                    "malformed packet on ifindex {}: {}",
                    ifindex,
                    reason.as_str()
                );
            }
            return;
        }
    };
    if packet.fragment_without_ports {
        bump(Counter::FragmentWithoutPorts);
    }
    if packet.icmp_error != 0 {
        parse::fold_icmp_error(&Paged(ctx), &mut packet);
    }

    let Packet {
        key,
        ip_len,
        headers_len,
        tcp_flags,
        fragment_without_ports: _,
        icmp_error,
        quote_offset: _,
        quote_end: _,
    } = packet;
    // A GSO/GRO super-packet stands for `gso_segs` packets on the wire, each of
    // which repeats the IP and transport headers. Untrusted GSO (SKB_GSO_DODGY:
    // tap, virtio, packet sockets with a vnet header) arrives with gso_segs 0:
    // the kernel computes it only when it segments, so count as it will.
    let segments = if gso_segs == 0 && gso_size != 0 {
        let payload = ip_len.saturating_sub(headers_len);
        payload.div_ceil(gso_size)
    } else {
        gso_segs
    };
    let seen = dns::Seen {
        frame_len: packet_len,
        payload_len: ip_len.saturating_sub(headers_len),
        ifindex,
        direction,
    };
    // An ICMP error folded into a DNS flow carries its key, not a message.
    if icmp_error == 0
        && let Some(counter) = dns::copy_if_dns(ctx, &key, seen)
    {
        bump(counter);
    }
    let (packets, bytes) = if segments > 1 {
        let extra = u64::from(segments - 1) * u64::from(headers_len);
        (u64::from(segments), u64::from(ip_len) + extra)
    } else {
        (1, u64::from(ip_len))
    };
    record(
        ctx,
        &key,
        Update {
            packets,
            bytes,
            tcp_flags,
            ifindex,
            direction,
            icmp_error,
        },
    );
}

#[derive(Clone, Copy)]
struct Update {
    packets: u64,
    bytes: u64,
    tcp_flags: u16,
    ifindex: u32,
    direction: Direction,
    /// The packet's kind of ICMP error ([`flow_common::icmp_error`]), or zero.
    icmp_error: u8,
}

/// Counts a packet of flow `key` in this CPU's held slot for it (see
/// [`HeldFlows`]), first moving the flow held there into the flow map when
/// it is another one.
#[inline(always)]
fn record(ctx: &TcContext, key: &FlowKey, update: Update) {
    let now = now();
    let epoch = match CONTROL.get(0) {
        Some(DatapathControl { epoch, .. }) => *epoch,
        None => 0,
    };
    let held = HELD_FLOWS
        .get_ptr_mut(epoch & 1)
        // SAFETY: this CPU's slot of an array element, valid until the
        // program exits; TC programs do not preempt each other on one CPU,
        // and userspace reads this parity only once no program uses it.
        .and_then(|flows| unsafe { (*flows).flows.get_mut(HeldFlows::slot_of(key)) });
    let Some(held) = held else {
        let mut fresh = FlowStats::default();
        add(&mut fresh, epoch, now, &update);
        store(ctx, key, &fresh, epoch);
        return;
    };
    if held.stats.epoch == epoch && held.stats.packets != 0 {
        if same_flow(&held.key, key) {
            add(&mut held.stats, epoch, now, &update);
            return;
        }
        store(ctx, &held.key, &held.stats, epoch);
    }
    held.key = *key;
    held.stats.packets = 0;
    add(&mut held.stats, epoch, now, &update);
}

/// Key equality as five 8-byte compares.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    a.words() == b.words()
}

/// Adds `stats`, counted on this CPU during `epoch`, to `key`'s slot in the
/// epoch's flow map, creating the entry when there is none; when the map is
/// full, sends them through the spill ring buffer instead.
#[inline(always)]
fn store(ctx: &TcContext, key: &FlowKey, stats: &FlowStats, epoch: u32) {
    let flows = if epoch & 1 == 0 {
        &FLOWS_EVEN
    } else {
        &FLOWS_ODD
    };

    if let Some(slot) = flows.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a live element, valid until the program exits.
        merge(unsafe { &mut *slot }, stats, epoch);
        return;
    }

    let counter = match flows.insert(key, stats, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            bump(Counter::Inserted);
            log_new_flow(key, epoch);
            return;
        }
        Err(error) if error == -EEXIST => {
            // Another CPU created the flow between our lookup and insert.
            if let Some(slot) = flows.get_ptr_mut(key) {
                // SAFETY: as above.
                merge(unsafe { &mut *slot }, stats, epoch);
                return;
            }
            Counter::UpdateFailed
        }
        Err(error) if error == -E2BIG => Counter::MapFull,
        Err(_) => Counter::UpdateFailed,
    };
    bump(counter);
    if debug_enabled() {
        debug!(ctx, "flow map update failed ({}), spilling", counter as u32);
    }
    match SPILL.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let event = entry.as_mut_ptr();
            // SAFETY: the reserved entry is sized and aligned for a FlowEvent; the
            // fields are written in place to keep the 88-byte event off the stack.
            unsafe {
                (&raw mut (*event).key).write(*key);
                (&raw mut (*event).stats).write(*stats);
            }
            entry.submit(0);
            bump(Counter::Spilled);
        }
        None => bump(Counter::Lost),
    }
}

/// Adds `stats` (this epoch's, counted after what `slot` holds) to a flow
/// map slot; a slot from another epoch, or empty, takes them whole.
#[inline(always)]
fn merge(slot: &mut FlowStats, stats: &FlowStats, epoch: u32) {
    if slot.epoch != epoch || slot.packets == 0 {
        *slot = *stats;
        return;
    }
    slot.packets += stats.packets;
    slot.bytes += stats.bytes;
    slot.last_seen_ns = stats.last_seen_ns;
    slot.tcp_flags |= stats.tcp_flags;
    slot.icmp_error_kinds |= stats.icmp_error_kinds;
    slot.icmp_errors = slot.icmp_errors.wrapping_add(stats.icmp_errors);
}

/// Tells the drain that `epoch`'s map holds `key`: appends it to this CPU's
/// log for the epoch, started afresh at the epoch's first new flow. Once the
/// log is full it is marked overflowed, and the drain walks that map.
#[inline(always)]
fn log_new_flow(key: &FlowKey, epoch: u32) {
    let Some(log) = NEW_FLOW_LOG.get_ptr_mut(epoch & 1) else {
        return;
    };
    // SAFETY: this CPU's slot of an array element, valid until the program
    // exits; TC programs do not preempt each other on one CPU, and userspace
    // reads this parity only once no program uses its epoch.
    let log = unsafe { &mut *log };
    if log.epoch != epoch {
        log.epoch = epoch;
        log.len = 0;
    }
    let len = log.len;
    match log.keys.get_mut(len as usize) {
        Some(slot) => {
            *slot = *key;
            log.len = len + 1;
        }
        None => log.len = NewFlowLog::OVERFLOWED,
    }
}

#[inline(always)]
fn add(slot: &mut FlowStats, epoch: u32, now: u64, update: &Update) {
    let Update {
        packets,
        bytes,
        tcp_flags,
        ifindex,
        direction,
        icmp_error,
    } = *update;
    // A slot from another epoch belongs to a previous life of this element (per-CPU
    // slots are not zeroed on reuse before Linux 5.10): start it afresh.
    if slot.epoch != epoch || slot.packets == 0 {
        *slot = FlowStats {
            first_seen_ns: now,
            epoch,
            first_ifindex: ifindex,
            first_direction: direction as u8,
            ..FlowStats::default()
        };
    }
    slot.packets += packets;
    slot.bytes += bytes;
    slot.last_seen_ns = now;
    slot.tcp_flags |= tcp_flags;
    if icmp_error != 0 {
        slot.icmp_error_kinds |= icmp_error;
        // An ICMP error is never GSO: `packets` is 1.
        slot.icmp_errors = slot.icmp_errors.wrapping_add(packets as u32);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
