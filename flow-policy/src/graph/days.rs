//! On which days an edge was seen: the last day and a bit per day of the
//! [`WINDOW_DAYS`] days up to it.
//!
//! Days are UTC days since the Unix epoch. Merging is commutative and
//! idempotent (the store replays its log over a snapshot that may already
//! hold some of it, and graphs from several agents are merged in any order):
//! both masks are brought to the later last day, then ORed.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use flow_model::record::Timestamp;

/// Days an edge remembers, up to and including its last.
pub const WINDOW_DAYS: u32 = 64;

const SECONDS_PER_DAY: u64 = 86_400;

/// The UTC day of `time`, counted from the Unix epoch; 0 before it.
pub fn day_of(time: SystemTime) -> u32 {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    u32::try_from(seconds / SECONDS_PER_DAY).unwrap_or(u32::MAX)
}

/// The days an edge was seen on.
///
/// Invariant: `mask == 0` means never seen (then `last` is 0); otherwise bit
/// 0 is set (`last` is a day it was seen) and bit `i` says it was seen on
/// day `last - i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "StoredDays", into = "StoredDays")]
// 12 bytes, not 16: every edge holds one, and `EdgeStats` fits its last
// day into padding it already had (8 MiB less for 200,000 edges).
#[repr(C, packed(4))]
pub struct DaysSeen {
    /// The last day seen.
    last: u32,
    /// Bit `i`: seen on day `last - i`.
    mask: u64,
}

impl DaysSeen {
    /// Seen on the day of `time` only.
    pub fn on(time: Timestamp) -> Self {
        Self {
            last: day_of(time.0),
            mask: 1,
        }
    }

    /// From the wire or a file: `(0, 0)` is never seen; a mask whose bit 0
    /// is clear is refused (its last day was not a day seen).
    pub fn from_parts(last: u32, mask: u64) -> Result<Self, String> {
        match (last, mask) {
            (0, 0) => Ok(Self::default()),
            (_, 0) => Err(format!("day {last} with no day seen")),
            (_, mask) if mask & 1 == 0 => Err(format!(
                "days mask {mask:#x} does not have its last day {last} set"
            )),
            _ => Ok(Self { last, mask }),
        }
    }

    /// The last day and the mask, as stored.
    pub fn parts(self) -> (u32, u64) {
        (self.last, self.mask)
    }

    /// Never seen.
    pub fn is_empty(&self) -> bool {
        self.mask == 0
    }

    /// The last day seen, if any.
    pub fn last_day(self) -> Option<u32> {
        (!self.is_empty()).then_some(self.last)
    }

    /// Distinct days seen within the window.
    pub fn count(self) -> u32 {
        self.mask.count_ones()
    }

    /// Also seen at `time`.
    pub fn record(&mut self, time: Timestamp) {
        self.merge(Self::on(time));
    }

    /// The union of both: days older than the window before the later last
    /// day are forgotten.
    pub fn merge(&mut self, other: Self) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other;
            return;
        }
        let last = self.last.max(other.last);
        self.mask = shifted(self.mask, last - self.last) | shifted(other.mask, last - other.last);
        self.last = last;
    }
}

/// [`DaysSeen`] in files and the store's log, checked as it is read.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredDays {
    last: u32,
    mask: u64,
}

impl TryFrom<StoredDays> for DaysSeen {
    type Error = String;

    fn try_from(StoredDays { last, mask }: StoredDays) -> Result<Self, String> {
        Self::from_parts(last, mask)
    }
}

impl From<DaysSeen> for StoredDays {
    fn from(DaysSeen { last, mask }: DaysSeen) -> Self {
        Self { last, mask }
    }
}

/// `mask` seen from `days` days later.
fn shifted(mask: u64, days: u32) -> u64 {
    mask.checked_shl(days).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const DAY: u32 = 20_000;

    fn at_day(day: u32, second: u64) -> Timestamp {
        Timestamp(
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(day) * SECONDS_PER_DAY + second),
        )
    }

    fn seen(days: &[u32]) -> DaysSeen {
        let mut seen = DaysSeen::default();
        for day in days {
            seen.record(at_day(*day, 3_600));
        }
        seen
    }

    #[test]
    fn a_day_is_a_utc_calendar_day() {
        assert_eq!(day_of(at_day(DAY, 0).0), DAY);
        assert_eq!(day_of(at_day(DAY, 86_399).0), DAY);
        assert_eq!(day_of(at_day(DAY, 86_400).0), DAY + 1);
        assert_eq!(day_of(SystemTime::UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn records_count_distinct_days() {
        assert_eq!(DaysSeen::default().count(), 0);
        assert_eq!(DaysSeen::default().last_day(), None);
        let mut one = DaysSeen::on(at_day(DAY, 10));
        one.record(at_day(DAY, 80_000));
        assert_eq!((one.count(), one.parts()), (1, (DAY, 1)));
        let three = seen(&[DAY, DAY + 2, DAY + 5, DAY + 2]);
        assert_eq!(three.parts(), (DAY + 5, 0b10_1001));
        assert_eq!((three.count(), three.last_day()), (3, Some(DAY + 5)));
        // An earlier record leaves the last day where it is.
        let mut late_first = seen(&[DAY + 5]);
        late_first.record(at_day(DAY, 0));
        assert_eq!(late_first.parts(), (DAY + 5, 0b10_0001));
    }

    #[test]
    fn merging_is_commutative_and_idempotent() {
        let samples = [
            DaysSeen::default(),
            seen(&[DAY]),
            seen(&[DAY, DAY + 1, DAY + 30]),
            seen(&[DAY + 3, DAY + 63]),
            seen(&[DAY + 100]),
            seen(&[DAY + 7, DAY + 70]),
        ];
        for a in samples {
            let mut twice = a;
            twice.merge(a);
            assert_eq!(twice, a, "{a:?} merged with itself");
            for b in samples {
                let (mut ab, mut ba) = (a, b);
                ab.merge(b);
                ba.merge(a);
                assert_eq!(ab, ba, "{a:?} and {b:?}");
                let mut again = ab;
                again.merge(b);
                assert_eq!(again, ab, "replaying {b:?}");
            }
        }
    }

    #[test]
    fn the_window_keeps_sixty_four_days_up_to_the_last() {
        // Day DAY is 63 days before DAY + 63: still in the window.
        let edge = seen(&[DAY, DAY + 63]);
        assert_eq!(edge.parts(), (DAY + 63, 1 | 1 << 63));
        assert_eq!(edge.count(), 2);
        // One day later it falls out.
        let mut later = edge;
        later.record(at_day(DAY + 64, 0));
        assert_eq!(later.parts(), (DAY + 64, 0b11));
        // A jump of more than the window forgets everything before.
        let mut far = edge;
        far.record(at_day(DAY + 1_000, 0));
        assert_eq!(far.parts(), (DAY + 1_000, 1));
        // A day older than the window before the last adds nothing.
        let mut old = seen(&[DAY + 64]);
        old.record(at_day(DAY, 0));
        assert_eq!(old.parts(), (DAY + 64, 1));
    }

    #[test]
    fn an_edge_pays_twelve_bytes_for_its_days() {
        assert_eq!(size_of::<DaysSeen>(), 12);
    }

    #[test]
    fn parts_round_trip_and_bad_parts_are_refused() {
        let edge = seen(&[DAY, DAY + 2]);
        let (last, mask) = edge.parts();
        assert_eq!(DaysSeen::from_parts(last, mask), Ok(edge));
        assert_eq!(DaysSeen::from_parts(0, 0), Ok(DaysSeen::default()));
        assert_eq!(
            DaysSeen::from_parts(DAY, 0),
            Err("day 20000 with no day seen".to_owned())
        );
        assert_eq!(
            DaysSeen::from_parts(DAY, 0b10),
            Err("days mask 0x2 does not have its last day 20000 set".to_owned())
        );
    }
}
