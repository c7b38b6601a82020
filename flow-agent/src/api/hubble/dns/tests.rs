use flow_dns::{DnsMessage, Kind, Resolved, message::Question};
use flow_proto::hubble::flow::{Dns, Flow, FlowType, L7FlowType, Layer7, layer7};

use super::*;

fn question(name: &str, qtype: u16) -> Question {
    Question {
        name: name.to_owned(),
        qtype,
    }
}

fn message(kind: Kind, rcode: u16, questions: Vec<Question>) -> DnsMessage {
    DnsMessage {
        id: 7,
        kind,
        rcode,
        questions,
        resolved: Vec::new(),
        cnames: Vec::new(),
        rrtypes: Vec::new(),
        unsolicited: 0,
        dropped_names: 0,
    }
}

fn l7(flow: &Flow) -> (L7FlowType, &Dns) {
    let Some(Layer7 {
        r#type,
        latency_ns: 0,
        record: Some(layer7::Record::Dns(dns)),
    }) = &flow.l7
    else {
        panic!("no L7 DNS in {flow:?}");
    };
    (L7FlowType::try_from(*r#type).unwrap(), dns)
}

#[test]
fn a_query_is_an_l7_request_with_its_name_fully_qualified() {
    let mut flow = Flow::default();
    into_l7(
        &mut flow,
        &message(Kind::Query, 0, vec![question("api.example.com", 1)]),
    );
    assert_eq!(flow.r#type, FlowType::L7 as i32);
    assert_eq!(flow.traffic_direction, TrafficDirection::Egress as i32);
    assert_eq!(flow.trace_observation_point, 0);
    assert_eq!(
        flow.event_type,
        Some(CiliumEventType {
            r#type: 129,
            sub_type: 0
        })
    );
    let (kind, dns) = l7(&flow);
    assert_eq!(kind, L7FlowType::Request);
    assert_eq!(
        *dns,
        Dns {
            query: "api.example.com.".into(),
            ips: Vec::new(),
            ttl: 0,
            cnames: Vec::new(),
            observation_source: "ebpf".into(),
            rcode: 0,
            qtypes: vec!["A".into()],
            rrtypes: Vec::new(),
        }
    );
}

#[test]
fn nxdomain_keeps_its_rcode_and_has_no_addresses() {
    let mut flow = Flow::default();
    into_l7(
        &mut flow,
        &message(Kind::Response, 3, vec![question("gone.example.com", 28)]),
    );
    let (kind, dns) = l7(&flow);
    assert_eq!(kind, L7FlowType::Response);
    assert_eq!(dns.rcode, 3);
    assert_eq!(dns.query, "gone.example.com.");
    assert_eq!(dns.qtypes, ["AAAA"]);
    assert!(dns.ips.is_empty());
    assert_eq!(dns.ttl, 0);
}

#[test]
fn a_cname_chain_gives_every_target_every_address_and_the_smallest_ttl() {
    let chain = vec![
        "www.example.com".to_owned(),
        "edge.cdn.example".to_owned(),
        "pop1.cdn.example".to_owned(),
    ];
    let mut answer = message(Kind::Response, 0, vec![question("www.example.com", 1)]);
    answer.cnames = chain[1..].to_vec();
    answer.rrtypes = vec![5, 5, 1, 1];
    answer.resolved = vec![
        Resolved {
            address: "192.0.2.10".parse().unwrap(),
            ttl: 300,
            names: chain.clone(),
        },
        Resolved {
            address: "192.0.2.11".parse().unwrap(),
            ttl: 60,
            names: chain,
        },
    ];
    let dns = dns(&answer);
    assert_eq!(dns.ips, ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(dns.ttl, 60);
    assert_eq!(dns.cnames, ["edge.cdn.example.", "pop1.cdn.example."]);
    assert_eq!(dns.rrtypes, ["CNAME", "CNAME", "A", "A"]);
    assert_eq!(dns.qtypes, ["A"]);
}

#[test]
fn aaaa_answers_give_ipv6_addresses() {
    let mut answer = message(Kind::Response, 0, vec![question("v6.example.com", 28)]);
    answer.rrtypes = vec![28];
    answer.resolved = vec![Resolved {
        address: "2001:db8::1".parse().unwrap(),
        ttl: 30,
        names: vec!["v6.example.com".into()],
    }];
    let dns = dns(&answer);
    assert_eq!(dns.ips, ["2001:db8::1"]);
    assert_eq!(dns.qtypes, ["AAAA"]);
    assert_eq!(dns.rrtypes, ["AAAA"]);
    assert_eq!(dns.ttl, 30);
}

#[test]
fn record_types_without_a_mnemonic_are_written_by_number() {
    assert_eq!(record_type(65), "HTTPS");
    assert_eq!(record_type(4242), "TYPE4242");
}

#[test]
fn a_message_without_a_question_has_an_empty_query() {
    assert_eq!(query(&message(Kind::Response, 2, Vec::new())), "");
}
