//! The direct writer against serde_json: the same bytes for records of
//! every shape, odd strings, addresses and times included.

use std::{collections::BTreeMap, net::Ipv6Addr, panic::AssertUnwindSafe};

use super::*;
use flow_model::identity::PeerKind;

/// Strings serde_json escapes, and some it writes as they are that look as
/// if it might not.
fn odd_strings() -> Vec<String> {
    let mut strings: Vec<String> = (0u8..0x20)
        .map(|byte| format!("a{}b", char::from(byte)))
        .collect();
    strings.extend(
        [
            "",
            " ",
            "\"",
            "\\",
            "\\\"",
            "\"\\\"",
            "a\"b\\c\nd\te",
            "\u{7f}",
            "/",
            "</script>",
            "\u{2028}\u{2029}",
            "é",
            "名前",
            "🦀",
            "{\"json\":true}",
            "null",
            "1",
            "\u{0}",
            "\u{1f}\u{20}",
        ]
        .map(String::from),
    );
    strings
}

/// A deterministic pseudo-random sequence (splitmix64).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn one_in(&mut self, odds: u64) -> bool {
        self.below(odds) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Names as the cluster has them, or one of the odd strings.
fn text(random: &mut Random, odd: &[String]) -> String {
    if random.one_in(3) {
        random.pick(odd).clone()
    } else {
        format!("name-{}", random.below(1_000))
    }
}

fn optional(random: &mut Random, odd: &[String]) -> Option<String> {
    random.one_in(2).then(|| text(random, odd))
}

/// A group of an IPv6 address: zero, or a value of one to four hex digits.
fn group(random: &mut Random) -> u16 {
    match random.below(4) {
        0 => 0,
        1 => *random.pick(&[1, 0xa, 0xf0, 0x100, 0xabc, 0x1000, 0xffff]),
        _ => random.next() as u16,
    }
}

fn address(random: &mut Random) -> IpAddr {
    match random.below(6) {
        0 => IpAddr::V4(Ipv4Addr::from(random.next() as u32)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 0, random.below(3) as u8, 0)),
        2 => IpAddr::V6(Ipv4Addr::from(random.next() as u32).to_ipv6_mapped()),
        3 => IpAddr::V6(*random.pick(&[
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x0a00, 1),
            Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
            Ipv6Addr::new(1, 0, 0, 0, 0, 0, 0, 0),
        ])),
        _ => IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u16, 8, _>(|_| {
            group(random)
        }))),
    }
}

fn identity(random: &mut Random, odd: &[String]) -> Identity {
    let labels: BTreeMap<String, String> = (0..random.below(4))
        .map(|_| (text(random, odd), text(random, odd)))
        .collect();
    Identity {
        kind: random.one_in(2).then(|| *random.pick(&PeerKind::ALL)),
        namespace: optional(random, odd),
        pod: optional(random, odd),
        workload: random.one_in(2).then(|| Workload {
            kind: text(random, odd),
            name: text(random, odd),
        }),
        tenant: optional(random, odd),
        labels,
        node: optional(random, odd),
        note: optional(random, odd),
    }
}

/// A time `humantime` formats: near either end of its range, or now, a
/// little before or after a minute begins.
fn time(random: &mut Random) -> Timestamp {
    let seconds = match random.below(4) {
        0 => random.below(120),
        1 => UNFORMATTED_SECONDS - 1 - random.below(120),
        2 => random.below(UNFORMATTED_SECONDS),
        _ => 1_800_000_000 + 60 * random.below(3) + *random.pick(&[0, 1, 58, 59]),
    };
    let any = random.below(1_000_000_000);
    let nanos = *random.pick(&[0, 1, 999_999_999, 100_000_000, any]);
    Timestamp(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos as u32))
}

fn endpoint(random: &mut Random, identities: &[Arc<Identity>], odd: &[String]) -> Endpoint {
    let service = random.one_in(3).then(|| ServiceRef {
        namespace: text(random, odd),
        name: text(random, odd),
        ip: address(random),
        port: random.next() as u16,
        target_port: random.one_in(2).then(|| random.next() as u16),
    });
    let any = random.next() as u16;
    Endpoint {
        ip: address(random),
        port: *random.pick(&[0, 1, 80, 65_535, any]),
        identity: Arc::clone(random.pick(identities)),
        service,
        names: (0..*random.pick(&[0, 0, 1, 3]))
            .map(|_| Arc::from(text(random, odd)))
            .collect(),
    }
}

fn record(random: &mut Random, identities: &[Arc<Identity>], odd: &[String]) -> FlowRecord {
    let flags = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let any = random.next();
    FlowRecord {
        time: time(random),
        first_seen: time(random),
        source: endpoint(random, identities, odd),
        destination: endpoint(random, identities, odd),
        protocol: Protocol(*random.pick(&[1, 6, 17, 58, 132, 0, 47, 255])),
        icmp: random.one_in(3).then(|| Icmp {
            icmp_type: random.next() as u8,
            code: random.next() as u8,
        }),
        packets: *random.pick(&[0, 1, u64::MAX, any]),
        bytes: *random.pick(&[0, 40, u64::MAX, any >> 7]),
        tcp_flags: flags
            .iter()
            .filter(|_| random.one_in(3))
            .map(|flag| (*flag).to_owned())
            .collect(),
        icmp_errors: random.one_in(3).then(|| IcmpErrors {
            packets: *random.pick(&[1, u64::MAX, any]),
            kinds: [
                "unreachable",
                "time_exceeded",
                "packet_too_big",
                "parameter_problem",
            ]
            .iter()
            .filter(|_| random.one_in(2))
            .map(|kind| (*kind).to_owned())
            .collect(),
        }),
        is_reply: random.one_in(2),
        interface: text(random, odd),
        interface_index: *random.pick(&[0, 1, u32::MAX, any as u32]),
        hook: *random.pick(&[Hook::Ingress, Hook::Egress]),
        node: text(random, odd),
        cross_tenant: *random.pick(&[None, Some(false), Some(true)]),
        new_connection: random.one_in(2),
        violation: random.one_in(4),
    }
}

fn serde_lines(records: &[FlowRecord]) -> String {
    let mut lines = String::new();
    for record in records {
        lines.push_str(&serde_json::to_string(record).unwrap());
        lines.push('\n');
    }
    lines
}

#[test]
fn flow_lines_are_what_serde_json_writes_byte_for_byte() {
    let mut random = Random(11);
    let odd = odd_strings();
    // Shared as the enricher shares them: many records point at each, the
    // unknown identity (no fields) among them.
    let mut identities = vec![Arc::new(Identity::default())];
    identities.extend((0..60).map(|_| Arc::new(identity(&mut random, &odd))));
    let mut lines = FlowLines::default();
    for batch in 0..4 {
        let records: Vec<FlowRecord> = (0..5_000)
            .map(|_| record(&mut random, &identities, &odd))
            .collect();
        let mut written = Vec::new();
        lines.write(&records, &mut written).unwrap();
        let written = String::from_utf8(written).unwrap();
        let expected = serde_lines(&records);
        for (line, (written, expected)) in written.lines().zip(expected.lines()).enumerate() {
            assert_eq!(written, expected, "batch {batch}, line {line}");
        }
        assert_eq!(written, expected, "batch {batch}");
        // A batch after `forget` writes every identity afresh.
        if batch % 2 == 1 {
            lines.forget();
        }
    }
}

#[test]
fn an_identity_changed_after_a_batch_is_written_as_it_is_now() {
    let mut random = Random(12);
    let odd = odd_strings();
    let identities = [Arc::new(identity(&mut random, &odd))];
    let mut record = record(&mut random, &identities, &odd);
    let mut lines = FlowLines::default();
    let mut written = Vec::new();
    lines
        .write(std::slice::from_ref(&record), &mut written)
        .unwrap();
    lines.forget();
    // The enricher's cache hands out a new copy, perhaps at the address of
    // the old one.
    drop(identities);
    Arc::make_mut(&mut record.source.identity).pod = Some("renamed".to_owned());
    written.clear();
    lines
        .write(std::slice::from_ref(&record), &mut written)
        .unwrap();
    assert_eq!(String::from_utf8(written).unwrap(), serde_lines(&[record]));
}

#[test]
fn ipv6_addresses_are_written_as_display_writes_them() {
    let mut random = Random(13);
    // Every pattern of zero and non-zero groups, a few times each.
    for pattern in 0u32..256 {
        for _ in 0..8 {
            let groups = std::array::from_fn(|index| match pattern & (1 << index) {
                0 => 0,
                _ => group(&mut random).max(1),
            });
            let ip = Ipv6Addr::from(groups);
            let mut written = Vec::new();
            write_ipv6(ip, &mut written);
            assert_eq!(String::from_utf8(written).unwrap(), ip.to_string());
        }
    }
}

#[test]
fn times_are_written_as_humantime_writes_them() {
    let mut random = Random(14);
    let mut lines = FlowLines::default();
    for _ in 0..100_000 {
        let timestamp = time(&mut random);
        let written = lines.timestamp(timestamp).unwrap();
        assert_eq!(
            std::str::from_utf8(&written).unwrap(),
            humantime::format_rfc3339_nanos(timestamp.0).to_string()
        );
    }
}

#[test]
fn a_time_humantime_cannot_format_fails_as_through_serde_json() {
    let mut random = Random(15);
    let odd = odd_strings();
    let identities = [Arc::new(Identity::default())];
    for seconds in [UNFORMATTED_SECONDS, u64::from(u32::MAX) * 1_000] {
        let mut record = record(&mut random, &identities, &odd);
        record.first_seen = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        let through_serde = std::panic::catch_unwind(AssertUnwindSafe(|| {
            serde_json::to_vec(&record).map_err(|error| error.to_string())
        }));
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut written = Vec::new();
            FlowLines::default()
                .write(std::slice::from_ref(&record), &mut written)
                .map(|()| written)
                .map_err(|error| error.to_string())
        }));
        assert_eq!(through_serde.is_err(), written.is_err());
        if let (Ok(through_serde), Ok(written)) = (through_serde, written) {
            assert_eq!(
                written,
                through_serde.map(|mut line| {
                    line.push(b'\n');
                    line
                })
            );
        }
    }
}
