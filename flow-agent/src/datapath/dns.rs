//! The DNS frames the programs copied, read out of their ring buffer.

use flow_common::{Direction, DnsFrameHeader};
use tracing::warn;

use super::Datapath;

/// One copied frame: where it was seen, how long it was, and its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsFrameRef<'a> {
    /// When the programs copied it, on the flows' monotonic clock
    /// (nanoseconds, as [`flow_model::record::MonotonicClock`] reads).
    pub time_ns: u64,
    /// Interface the frame was seen on.
    pub ifindex: u32,
    /// Hook that saw it, when the programs wrote a known one.
    pub direction: Option<Direction>,
    /// Length of the whole frame.
    pub frame_len: usize,
    /// Its first `min(frame_len, DNS_COPY_BYTES)` bytes.
    pub bytes: &'a [u8],
}

impl Datapath {
    /// Hands every frame in the DNS ring buffer to `take`, oldest first, and
    /// returns how many there were. A record too short for what its header
    /// says is logged and skipped.
    pub fn read_dns_frames(&mut self, mut take: impl FnMut(DnsFrameRef<'_>)) -> usize {
        let mut count = 0;
        while let Some(item) = self.dns_frames.next() {
            count += 1;
            let header_len = size_of::<DnsFrameHeader>();
            let Some(header) = item.get(..header_len) else {
                warn!(len = item.len(), "short dns frame record ignored");
                continue;
            };
            // SAFETY: the record starts with a DnsFrameHeader written by the
            // programs; it is plain data, read unaligned.
            let header =
                unsafe { std::ptr::read_unaligned(header.as_ptr().cast::<DnsFrameHeader>()) };
            let Some(bytes) = item.get(header_len..header_len + usize::from(header.copied)) else {
                warn!(
                    len = item.len(),
                    copied = header.copied,
                    "short dns frame record ignored"
                );
                continue;
            };
            take(DnsFrameRef {
                time_ns: header.time_ns,
                ifindex: header.ifindex,
                direction: Direction::from_u8(header.direction),
                frame_len: header.frame_len as usize,
                bytes,
            });
        }
        count
    }
}
