use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

pub(crate) mod wire {
    //! DNS messages written byte by byte, so that the tests can also write
    //! the broken ones.

    /// QR=1, RD, RA, NOERROR.
    pub const RESPONSE: u16 = 0x8180;
    /// QR=0, RD.
    pub const QUERY: u16 = 0x0100;

    pub struct Rr {
        pub owner: &'static str,
        pub rtype: u16,
        pub ttl: u32,
        pub data: Vec<u8>,
    }

    pub fn name(out: &mut Vec<u8>, name: &str) {
        for label in name.split('.').filter(|label| !label.is_empty()) {
            out.push(u8::try_from(label.len()).unwrap_or(63));
            out.extend(label.as_bytes());
        }
        out.push(0);
    }

    pub fn a(owner: &'static str, ttl: u32, address: [u8; 4]) -> Rr {
        Rr {
            owner,
            rtype: 1,
            ttl,
            data: address.to_vec(),
        }
    }

    pub fn aaaa(owner: &'static str, ttl: u32, address: [u8; 16]) -> Rr {
        Rr {
            owner,
            rtype: 28,
            ttl,
            data: address.to_vec(),
        }
    }

    pub fn cname(owner: &'static str, ttl: u32, target: &str) -> Rr {
        let mut data = Vec::new();
        name(&mut data, target);
        Rr {
            owner,
            rtype: 5,
            ttl,
            data,
        }
    }

    pub fn message(id: u16, flags: u16, questions: &[(&str, u16)], answers: &[Rr]) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [
            id,
            flags,
            count(questions.len()),
            count(answers.len()),
            0,
            0,
        ] {
            out.extend(field.to_be_bytes());
        }
        for (qname, qtype) in questions {
            name(&mut out, qname);
            out.extend(qtype.to_be_bytes());
            out.extend(1_u16.to_be_bytes());
        }
        for rr in answers {
            name(&mut out, rr.owner);
            out.extend(rr.rtype.to_be_bytes());
            out.extend(1_u16.to_be_bytes());
            out.extend(rr.ttl.to_be_bytes());
            out.extend(count(rr.data.len()).to_be_bytes());
            out.extend(&rr.data);
        }
        out
    }

    fn count(n: usize) -> u16 {
        u16::try_from(n).unwrap_or(u16::MAX)
    }
}

use wire::{QUERY, RESPONSE, a, aaaa, cname, message};

fn read(bytes: &[u8]) -> DnsMessage {
    match DnsMessage::read(bytes) {
        Ok(message) => message,
        Err(error) => panic!("{error}"),
    }
}

fn question(name: &str, qtype: u16) -> Question {
    Question {
        name: name.into(),
        qtype,
    }
}

#[test]
fn an_a_answer_resolves_its_question() {
    let bytes = message(
        0x1234,
        RESPONSE,
        &[("MyVault.Vault.Azure.NET", 1)],
        &[a("myvault.vault.azure.net", 30, [20, 42, 65, 92])],
    );
    assert_eq!(
        read(&bytes),
        DnsMessage {
            id: 0x1234,
            kind: Kind::Response,
            rcode: 0,
            questions: vec![question("myvault.vault.azure.net", 1)],
            resolved: vec![Resolved {
                address: IpAddr::V4(Ipv4Addr::new(20, 42, 65, 92)),
                ttl: 30,
                names: vec!["myvault.vault.azure.net".into()],
            }],
            cnames: vec![],
            rrtypes: vec![1],
            unsolicited: 0,
            dropped_names: 0,
        }
    );
}

#[test]
fn a_cname_chain_resolves_to_every_name_on_it_with_its_smallest_ttl() {
    let bytes = message(
        7,
        RESPONSE,
        &[("www.shop.example", 28)],
        &[
            cname("www.shop.example", 300, "shop.cdn.example"),
            cname("shop.cdn.example", 60, "edge.cdn.example"),
            aaaa(
                "edge.cdn.example",
                120,
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            ),
            aaaa(
                "edge.cdn.example",
                20,
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8],
            ),
        ],
    );
    let chain: Vec<String> = ["www.shop.example", "shop.cdn.example", "edge.cdn.example"]
        .map(String::from)
        .to_vec();
    let message = read(&bytes);
    assert_eq!(
        message.resolved,
        vec![
            Resolved {
                address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
                ttl: 60,
                names: chain.clone(),
            },
            Resolved {
                address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8)),
                ttl: 20,
                names: chain,
            },
        ]
    );
    assert_eq!(message.cnames, ["shop.cdn.example", "edge.cdn.example"]);
    assert_eq!(message.rrtypes, [5, 5, 28, 28]);
    assert_eq!(message.unsolicited, 0);
}

#[test]
fn answers_for_names_nobody_asked_for_are_counted_and_ignored() {
    let bytes = message(
        9,
        RESPONSE,
        &[("api.example", 1)],
        &[
            a("api.example", 60, [198, 51, 100, 1]),
            a("bank.example", 60, [198, 51, 100, 2]),
            cname("other.example", 60, "api.example"),
        ],
    );
    let message = read(&bytes);
    assert_eq!(
        message.resolved,
        vec![Resolved {
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            ttl: 60,
            names: vec!["api.example".into()],
        }]
    );
    assert_eq!(message.unsolicited, 2);
}

#[test]
fn a_cname_loop_ends_and_resolves_nothing() {
    let bytes = message(
        3,
        RESPONSE,
        &[("a.example", 1)],
        &[
            cname("a.example", 60, "b.example"),
            cname("b.example", 60, "a.example"),
        ],
    );
    let message = read(&bytes);
    assert_eq!(message.resolved, vec![]);
    assert_eq!(message.cnames, ["b.example"]);
}

#[test]
fn queries_and_nxdomain_keep_their_question_and_code() {
    let query = read(&message(11, QUERY, &[("db.example", 28)], &[]));
    assert_eq!(query.kind, Kind::Query);
    assert_eq!(query.questions, vec![question("db.example", 28)]);
    let nxdomain = read(&message(11, RESPONSE | 3, &[("db.example", 28)], &[]));
    assert_eq!(nxdomain.kind, Kind::Response);
    assert_eq!(nxdomain.rcode, 3);
    assert_eq!(nxdomain.resolved, vec![]);
}

#[test]
fn every_truncation_of_a_response_is_an_error() {
    let bytes = message(
        5,
        RESPONSE,
        &[("www.shop.example", 1)],
        &[
            cname("www.shop.example", 300, "edge.cdn.example"),
            a("edge.cdn.example", 60, [203, 0, 113, 7]),
        ],
    );
    for end in 0..bytes.len() {
        assert!(
            matches!(
                DnsMessage::read(&bytes[..end]),
                Err(ReadError::Malformed(_))
            ),
            "{end} of {} bytes",
            bytes.len()
        );
    }
}

#[test]
fn compression_pointers_that_loop_or_point_forward_are_errors() {
    // Header, then a question whose name is a pointer to itself (offset 12).
    let mut looping = message(1, RESPONSE, &[], &[]);
    looping[5] = 1;
    looping.extend([0xc0, 12, 0, 1, 0, 1]);
    assert!(matches!(
        DnsMessage::read(&looping),
        Err(ReadError::Malformed(_))
    ));
    // Two labels pointing at each other.
    let mut pair = message(1, RESPONSE, &[], &[]);
    pair[5] = 1;
    pair.extend([1, b'a', 0xc0, 16, 1, b'b', 0xc0, 12, 0, 1, 0, 1]);
    assert!(matches!(
        DnsMessage::read(&pair),
        Err(ReadError::Malformed(_))
    ));
    // A pointer past itself.
    let mut forward = message(1, RESPONSE, &[], &[]);
    forward[5] = 1;
    forward.extend([0xc0, 18, 0, 1, 0, 1, 1, b'x', 0]);
    assert!(matches!(
        DnsMessage::read(&forward),
        Err(ReadError::Malformed(_))
    ));
}

#[test]
fn counts_larger_than_the_message_are_errors() {
    let mut bytes = message(1, RESPONSE, &[("a.example", 1)], &[]);
    bytes[6] = 0xff;
    bytes[7] = 0xff;
    assert!(matches!(
        DnsMessage::read(&bytes),
        Err(ReadError::Malformed(_))
    ));
}

#[test]
fn other_operations_are_refused() {
    // Opcode 5 (UPDATE) sits in bits 11-14 of the flags.
    let bytes = message(1, RESPONSE | (5 << 11), &[("a.example", 6)], &[]);
    assert!(matches!(
        DnsMessage::read(&bytes),
        Err(ReadError::NotQuery(5))
    ));
}

fn leaked_names(count: usize) -> Vec<&'static str> {
    (0..count)
        .map(|i| &*Box::leak(format!("n{i}.example").into_boxed_str()))
        .collect()
}

#[test]
fn a_chain_stops_at_its_limit() {
    let names = leaked_names(40);
    let mut answers: Vec<wire::Rr> = names
        .windows(2)
        .map(|pair| cname(pair[0], 60, pair[1]))
        .collect();
    answers.push(a(names[39], 60, [192, 0, 2, 1]));
    answers.push(a(names[MAX_CHAIN - 1], 60, [192, 0, 2, 2]));
    let message = read(&message(1, RESPONSE, &[(names[0], 1)], &answers));
    assert_eq!(message.cnames.len(), MAX_CHAIN - 1);
    assert_eq!(
        message.resolved,
        vec![Resolved {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            ttl: 60,
            names: names[..MAX_CHAIN]
                .iter()
                .map(|name| name.to_string())
                .collect(),
        }]
    );
    // Off the cut chain: the CNAMEs owned by n16..n38 (23) and n39's A.
    assert_eq!(message.unsolicited, 24);
}

#[test]
fn an_address_takes_a_bounded_number_of_names_from_one_message() {
    let names = leaked_names(100);
    let questions: Vec<(&str, u16)> = names.iter().map(|name| (*name, 1)).collect();
    let answers: Vec<wire::Rr> = names
        .iter()
        .map(|name| a(name, 5, [192, 0, 2, 9]))
        .collect();
    let message = read(&message(2, RESPONSE, &questions, &answers));
    assert_eq!(message.resolved.len(), 1);
    assert_eq!(
        message.resolved[0].names,
        names[..MAX_NAMES_PER_ADDRESS]
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(message.dropped_names, 100 - MAX_NAMES_PER_ADDRESS);
}
