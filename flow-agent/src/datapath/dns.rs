//! The DNS frames the programs copied, read out of their ring buffer.

use flow_common::{Direction, DnsFrameHeader};
use tracing::warn;

use super::Datapath;
use crate::drain::read_record;

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

impl<'a> DnsFrameRef<'a> {
    /// Reads one record of the DNS ring: a [`DnsFrameHeader`], then the
    /// `copied` bytes it announces. `None` when the record is shorter than
    /// that.
    pub fn read(record: &'a [u8]) -> Option<Self> {
        let header: DnsFrameHeader = read_record(record)?;
        let start = size_of::<DnsFrameHeader>();
        let bytes = record.get(start..start + usize::from(header.copied))?;
        Some(Self {
            time_ns: header.time_ns,
            ifindex: header.ifindex,
            direction: Direction::from_u8(header.direction),
            frame_len: header.frame_len as usize,
            bytes,
        })
    }
}

impl Datapath {
    /// Hands every frame in the DNS ring buffer to `take`, oldest first, and
    /// returns how many there were. A record too short for what its header
    /// says is logged and skipped.
    pub fn read_dns_frames(&mut self, mut take: impl FnMut(DnsFrameRef<'_>)) -> usize {
        let mut count = 0;
        while let Some(item) = self.dns_frames.next() {
            count += 1;
            let Some(frame) = DnsFrameRef::read(&item) else {
                warn!(len = item.len(), "short dns frame record ignored");
                continue;
            };
            take(frame);
        }
        count
    }
}
