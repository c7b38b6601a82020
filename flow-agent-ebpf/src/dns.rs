//! DNS frames copied to userspace, which reads the names pods resolved from
//! them.
//!
//! A frame is copied when the loader asked for its kind ([`DNS_COPY`]: answers,
//! from UDP or TCP port 53, or answers and queries), it carries a transport
//! payload, and this CPU has not yet spent its byte budget for the current
//! second ([`DNS_BYTES_PER_SECOND`]). The frame is copied from its Ethernet
//! header on, at most [`DNS_COPY_BYTES`] bytes, into a per-CPU scratch
//! buffer, then output to the [`DNS_FRAMES`] ring buffer cut to its length.
//! What cannot be copied is counted, never waited for: the packet itself goes
//! on unchanged either way.
//!
//! The copy sits on the counting path, after the packet has been parsed and
//! deduplicated, so each DNS packet a node forwards is copied once. Packets
//! that are not DNS pay a read of a read-only global and two compares; with
//! copying off the verifier prunes even those.
//!
//! Minimum kernel: 5.8 (`bpf_ringbuf_output`).

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::bpf_skb_load_bytes,
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::TcContext,
};
use flow_common::{
    Counter, DEFAULT_DNS_BYTES_PER_SECOND, DEFAULT_DNS_RING_BYTES, DNS_COPY_BYTES, Direction,
    DnsBudget, DnsCopy, DnsFrame, DnsFrameHeader, FlowKey, protocol,
};

/// Which messages to copy, a [`DnsCopy`]; set by the loader. Read-only, so
/// with [`DnsCopy::Off`] the verifier prunes the whole path.
#[unsafe(no_mangle)]
static DNS_COPY: u8 = DnsCopy::Off as u8;

/// Bytes each CPU may copy per second; set by the loader.
#[unsafe(no_mangle)]
static DNS_BYTES_PER_SECOND: u32 = DEFAULT_DNS_BYTES_PER_SECOND;

#[map]
static DNS_FRAMES: RingBuf = RingBuf::with_byte_size(DEFAULT_DNS_RING_BYTES, 0);

/// Where a frame is assembled: too large for the 512-byte stack.
#[map]
static DNS_SCRATCH: PerCpuArray<DnsFrame> = PerCpuArray::with_max_entries(1, 0);

#[map]
static DNS_BUDGET: PerCpuArray<DnsBudget> = PerCpuArray::with_max_entries(1, 0);

const DNS_PORT: u16 = 53;
const SECOND_NS: u64 = 1_000_000_000;

/// What a frame's copy needs to know of it.
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    /// `skb->len`.
    pub(crate) frame_len: usize,
    /// Bytes after the transport header.
    pub(crate) payload_len: u32,
    pub(crate) ifindex: u32,
    pub(crate) direction: Direction,
}

/// Copies the frame if it is a DNS message the loader asked for, and says
/// which counter the attempt goes to; `None` for frames that are not.
#[inline(always)]
pub(crate) fn copy_if_dns(ctx: &TcContext, key: &FlowKey, seen: Seen) -> Option<Counter> {
    // SAFETY: a plain read of a read-only global, volatile so the loader decides.
    let mode = unsafe { core::ptr::read_volatile(&DNS_COPY) };
    if mode == DnsCopy::Off as u8 {
        return None;
    }
    if key.protocol != protocol::UDP && key.protocol != protocol::TCP {
        return None;
    }
    let wanted = key.src_port == DNS_PORT
        || (mode == DnsCopy::AnswersAndQueries as u8 && key.dst_port == DNS_PORT);
    if !wanted || seen.payload_len == 0 {
        return None;
    }
    Some(copy(ctx, seen))
}

/// Out of line: DNS frames are few, and the counting path stays short.
#[inline(never)]
fn copy(ctx: &TcContext, seen: Seen) -> Counter {
    let copied = seen.frame_len.min(DNS_COPY_BYTES);
    if copied == 0 {
        return Counter::DnsLost;
    }
    let now = crate::now();
    if !spend(copied as u64, now) {
        return Counter::DnsOverBudget;
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else {
        return Counter::DnsLost;
    };
    // SAFETY: this CPU's slot, valid until the program exits; TC programs do
    // not preempt each other on one CPU.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: `copied` is between 1 and the length of `frame`.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast::<c_void>().cast_const(),
            0,
            scratch.frame.as_mut_ptr().cast::<c_void>(),
            copied as u32,
        )
    };
    if loaded < 0 {
        return Counter::DnsLost;
    }
    scratch.header = DnsFrameHeader {
        time_ns: now,
        frame_len: seen.frame_len as u32,
        ifindex: seen.ifindex,
        copied: copied as u16,
        direction: seen.direction as u8,
        _pad: [0; 5],
    };
    // SAFETY: the header and the first `copied` bytes of `frame` lie at the
    // start of the scratch slot, which outlives the slice.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (scratch as *const DnsFrame).cast::<u8>(),
            size_of::<DnsFrameHeader>() + copied,
        )
    };
    match DNS_FRAMES.output::<[u8]>(bytes, 0) {
        Ok(()) => Counter::DnsCopied,
        Err(_) => Counter::DnsLost,
    }
}

/// Spends `bytes` of this CPU's budget for the current second, if it has
/// them.
#[inline(always)]
fn spend(bytes: u64, now: u64) -> bool {
    let Some(budget) = DNS_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as for the scratch slot.
    let budget = unsafe { &mut *budget };
    // SAFETY: a plain read of a read-only global.
    let limit = u64::from(unsafe { core::ptr::read_volatile(&DNS_BYTES_PER_SECOND) });
    if now.wrapping_sub(budget.window_start_ns) >= SECOND_NS {
        budget.window_start_ns = now;
        budget.bytes = 0;
    }
    if budget.bytes + bytes > limit {
        return false;
    }
    budget.bytes += bytes;
    true
}
