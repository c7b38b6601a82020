//! The protobuf form of values several API messages share: times, and text
//! that protobuf leaves empty when absent.

use std::time::SystemTime;

use crate::record::Timestamp;

/// A [`Timestamp`] in protobuf form.
pub fn timestamp(Timestamp(time): Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(time))
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LATEST_SECONDS: u64 = 253_402_300_799;

/// A protobuf time as a [`Timestamp`], clamped to 1970..=9999: a server's
/// time outside what RFC 3339 can print must not make the client panic.
pub fn from_timestamp(timestamp: Option<&prost_types::Timestamp>) -> Timestamp {
    let latest = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LATEST_SECONDS);
    let time = timestamp.map_or(SystemTime::UNIX_EPOCH, |timestamp| {
        // Far-future seconds may not fit a SystemTime at all.
        if timestamp.seconds > LATEST_SECONDS as i64 {
            latest
        } else {
            SystemTime::try_from(*timestamp).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    });
    Timestamp(time.clamp(SystemTime::UNIX_EPOCH, latest))
}

/// Protobuf's empty string as no value.
pub fn text(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_cannot_print_are_clamped_not_a_panic() {
        let print = |time: Timestamp| humantime::format_rfc3339_nanos(time.0).to_string();
        let at = |seconds: i64, nanos: i32| {
            print(from_timestamp(Some(&prost_types::Timestamp {
                seconds,
                nanos,
            })))
        };
        assert_eq!(at(-1, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(i64::MIN, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(i64::MAX, 0), "9999-12-31T23:59:59.000000000Z");
        assert_eq!(
            at(1_800_000_000, 500_000_000),
            "2027-01-15T08:00:00.500000000Z"
        );
        assert_eq!(
            print(from_timestamp(None)),
            "1970-01-01T00:00:00.000000000Z"
        );
    }
}
