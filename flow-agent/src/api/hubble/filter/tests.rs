//! What each Hubble filter field selects, and what is refused.
use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use flow_proto::hubble::flow::{self as hubble, FlowFilter};

use super::*;
use flow_model::identity::{Identity, PeerKind, ServiceRef};
use flow_model::record::{Hook, Timestamp};

const RUN: u64 = 0x0123_4567_89ab_cdef;

/// Sets fields of a filter.
type Build = Box<dyn Fn(&mut FlowFilter)>;

fn pod(ip: &str, port: u16, namespace: &str, name: &str, app: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        identity: Arc::new(Identity {
            kind: Some(PeerKind::Pod),
            namespace: Some(namespace.into()),
            pod: Some(name.into()),
            workload: Some(Workload {
                kind: "Deployment".into(),
                name: app.into(),
            }),
            tenant: Some(namespace.into()),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            node: Some("aks-node-1".into()),
            note: None,
        }),
        service: None,
        names: Vec::new(),
    }
}

/// frontend (shop-a) -> cart (shop-a) through Service shop-a/cart, TCP
/// SYN, seen leaving the frontend pod on aks-node-1.
fn request() -> StoredFlow {
    let mut destination = pod("10.1.0.7", 8080, "shop-a", "cart-5c8b-x1", "cart");
    destination.service = Some(ServiceRef {
        namespace: "shop-a".into(),
        name: "cart".into(),
        ip: "10.96.0.20".parse().unwrap(),
        port: 80,
        target_port: Some(8080),
    });
    let time = Timestamp(SystemTime::UNIX_EPOCH);
    StoredFlow {
        record: FlowRecord {
            time,
            first_seen: time,
            source: pod("10.1.0.5", 43210, "shop-a", "frontend-6f7d-p1", "frontend"),
            destination,
            protocol: Protocol(6),
            icmp: None,
            packets: 1,
            bytes: 60,
            tcp_flags: vec!["SYN".into()],
            icmp_errors: None,
            is_reply: false,
            interface: "azv1234".into(),
            interface_index: 7,
            hook: Hook::Ingress,
            node: "aks-node-1".into(),
            cross_tenant: Some(false),
            new_connection: true,
            violation: false,
        },
        sequence: 42,
        dns: None,
    }
}

fn world_reply() -> StoredFlow {
    let mut stored = request();
    let mut world = Endpoint::new("203.0.113.9".parse().unwrap(), 443);
    Arc::make_mut(&mut world.identity).kind = Some(PeerKind::World);
    world.names = vec![
        "myvault.vault.azure.net".into(),
        "vault-edge.azure.example".into(),
    ];
    stored.record.source = world;
    stored.record.destination = pod("10.1.0.5", 43211, "shop-a", "frontend-6f7d-p1", "frontend");
    stored.record.is_reply = true;
    stored.record.hook = Hook::Egress;
    stored.record.tcp_flags = vec!["SYN".into(), "ACK".into()];
    stored.record.violation = true;
    stored.sequence = 43;
    stored
}

fn filter(build: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
    let mut filter = FlowFilter::default();
    build(&mut filter);
    filter
}

/// Which of request and world reply the whitelist filter selects.
fn selects(build: impl FnOnce(&mut FlowFilter)) -> (bool, bool) {
    let matcher = HubbleMatcher::compile(&[filter(build)], &[], RUN)
        .unwrap_or_else(|error| panic!("{error}"));
    (matcher.matches(&request()), matcher.matches(&world_reply()))
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

#[test]
fn each_supported_field_selects_what_hubble_would() {
    use hubble::{IpVersion, TrafficDirection, Verdict};
    let both = (true, true);
    let request_only = (true, false);
    let reply_only = (false, true);
    let neither = (false, false);
    let cases: Vec<(&str, Build, (bool, bool))> = vec![
        (
            "source_ip address",
            Box::new(|f| f.source_ip = strings(&["10.1.0.5"])),
            request_only,
        ),
        (
            "source_ip cidr",
            Box::new(|f| f.source_ip = strings(&["203.0.113.0/24"])),
            reply_only,
        ),
        (
            "destination_ip",
            Box::new(|f| f.destination_ip = strings(&["10.1.0.0/16"])),
            both,
        ),
        (
            "source_pod ns/prefix",
            Box::new(|f| f.source_pod = strings(&["shop-a/front"])),
            request_only,
        ),
        (
            "destination_pod ns/",
            Box::new(|f| f.destination_pod = strings(&["shop-a/"])),
            both,
        ),
        (
            "destination_pod /prefix",
            Box::new(|f| f.destination_pod = strings(&["/cart-"])),
            request_only,
        ),
        (
            "pod in default namespace",
            Box::new(|f| f.source_pod = strings(&["frontend"])),
            neither,
        ),
        (
            "other namespace",
            Box::new(|f| f.source_pod = strings(&["shop-b/"])),
            neither,
        ),
        (
            "source_label",
            Box::new(|f| f.source_label = strings(&["app=frontend"])),
            request_only,
        ),
        (
            "label set",
            Box::new(|f| f.destination_label = strings(&["k8s:app in (cart, frontend)"])),
            both,
        ),
        (
            "namespace label",
            Box::new(|f| f.source_label = strings(&["k8s:io.kubernetes.pod.namespace=shop-a"])),
            request_only,
        ),
        (
            "reserved label",
            Box::new(|f| f.source_label = strings(&["reserved:world"])),
            reply_only,
        ),
        (
            "negated label",
            Box::new(|f| f.source_label = strings(&["!app"])),
            reply_only,
        ),
        (
            "destination_service",
            Box::new(|f| f.destination_service = strings(&["shop-a/cart"])),
            request_only,
        ),
        (
            "source_service",
            Box::new(|f| f.source_service = strings(&["shop-a/"])),
            neither,
        ),
        (
            "destination_workload name",
            Box::new(|f| {
                f.destination_workload = vec![hubble::Workload {
                    name: "cart".into(),
                    kind: String::new(),
                }]
            }),
            request_only,
        ),
        (
            "source_workload kind",
            Box::new(|f| {
                f.source_workload = vec![hubble::Workload {
                    name: String::new(),
                    kind: "Deployment".into(),
                }]
            }),
            request_only,
        ),
        (
            "workload of another kind",
            Box::new(|f| {
                f.destination_workload = vec![hubble::Workload {
                    name: "cart".into(),
                    kind: "StatefulSet".into(),
                }]
            }),
            neither,
        ),
        (
            "destination_port",
            Box::new(|f| f.destination_port = strings(&["8080"])),
            request_only,
        ),
        (
            "source_port",
            Box::new(|f| f.source_port = strings(&["443"])),
            reply_only,
        ),
        (
            "protocol",
            Box::new(|f| f.protocol = strings(&["TCP"])),
            both,
        ),
        (
            "other protocol",
            Box::new(|f| f.protocol = strings(&["udp", "icmp"])),
            neither,
        ),
        (
            "verdict",
            Box::new(|f| f.verdict = vec![Verdict::Audit as i32]),
            reply_only,
        ),
        (
            "dropped",
            Box::new(|f| f.verdict = vec![Verdict::Dropped as i32]),
            neither,
        ),
        ("reply", Box::new(|f| f.reply = vec![false]), request_only),
        (
            "traffic_direction",
            Box::new(|f| f.traffic_direction = vec![TrafficDirection::Egress as i32]),
            both,
        ),
        (
            "ingress",
            Box::new(|f| f.traffic_direction = vec![TrafficDirection::Ingress as i32]),
            neither,
        ),
        (
            "ip_version",
            Box::new(|f| f.ip_version = vec![IpVersion::IPv6 as i32]),
            neither,
        ),
        (
            "node_name glob",
            Box::new(|f| f.node_name = strings(&["aks-*-1"])),
            both,
        ),
        (
            "node_name cluster",
            Box::new(|f| f.node_name = strings(&["default/aks-node-*"])),
            both,
        ),
        (
            "node_name other cluster",
            Box::new(|f| f.node_name = strings(&["prod/"])),
            neither,
        ),
        (
            "tcp_flags subset",
            Box::new(|f| {
                f.tcp_flags = vec![hubble::TcpFlags {
                    syn: true,
                    ..Default::default()
                }]
            }),
            both,
        ),
        (
            "tcp_flags both set",
            Box::new(|f| {
                f.tcp_flags = vec![hubble::TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                }]
            }),
            reply_only,
        ),
        (
            "uuid",
            Box::new(|f| {
                f.uuid = vec![
                    FlowIdentity {
                        run: RUN,
                        sequence: 42,
                    }
                    .uuid(),
                ]
            }),
            request_only,
        ),
        (
            "uuid of another run",
            Box::new(|f| {
                f.uuid = vec![
                    FlowIdentity {
                        run: RUN + 1,
                        sequence: 42,
                    }
                    .uuid(),
                ]
            }),
            neither,
        ),
        (
            "interface",
            Box::new(|f| {
                f.interface = vec![hubble::NetworkInterface {
                    index: 7,
                    name: String::new(),
                }]
            }),
            both,
        ),
        (
            "event_type trace",
            Box::new(|f| {
                f.event_type = vec![hubble::EventTypeFilter {
                    r#type: 4,
                    match_sub_type: false,
                    sub_type: 0,
                }]
            }),
            both,
        ),
        (
            "event_type drop",
            Box::new(|f| {
                f.event_type = vec![hubble::EventTypeFilter {
                    r#type: 1,
                    match_sub_type: false,
                    sub_type: 0,
                }]
            }),
            neither,
        ),
        (
            "drop reason",
            Box::new(|f| f.drop_reason_desc = vec![hubble::DropReason::PolicyDenied as i32]),
            neither,
        ),
        ("encrypted", Box::new(|f| f.encrypted = vec![true]), neither),
        (
            "cluster name",
            Box::new(|f| f.source_cluster_name = strings(&["default"])),
            neither,
        ),
        // Fields of one filter must all hold.
        (
            "and",
            Box::new(|f| {
                f.source_pod = strings(&["shop-a/"]);
                f.destination_port = strings(&["8080"]);
                f.reply = vec![false];
            }),
            request_only,
        ),
    ];
    for (name, build, expected) in cases {
        assert_eq!(selects(build), expected, "{name}");
    }
}

#[test]
fn whitelist_filters_are_alternatives_and_the_blacklist_wins() {
    let to_cart = filter(|f| f.destination_service = strings(&["shop-a/cart"]));
    let from_world = filter(|f| f.source_label = strings(&["reserved:world"]));
    let replies = filter(|f| f.reply = vec![true]);
    let matcher = HubbleMatcher::compile(&[to_cart.clone(), from_world], &[], RUN).unwrap();
    assert!(matcher.matches(&request()) && matcher.matches(&world_reply()));
    let matcher = HubbleMatcher::compile(&[], &[replies], RUN).unwrap();
    assert!(matcher.matches(&request()) && !matcher.matches(&world_reply()));
    let matcher = HubbleMatcher::compile(
        std::slice::from_ref(&to_cart),
        std::slice::from_ref(&to_cart),
        RUN,
    )
    .unwrap();
    assert!(!matcher.matches(&request()));
}

#[test]
fn hubble_uis_standing_filters_are_taken() {
    // What Hubble UI sends for a namespace (hubble-ui's
    // src/factories/proto): the fqdn blacklist leaves out flows to and from
    // cluster names.
    let whitelist = [
        filter(|f| {
            f.source_pod = strings(&["shop-a/"]);
            f.reply = vec![false];
        }),
        filter(|f| {
            f.destination_pod = strings(&["shop-a/"]);
            f.reply = vec![false];
        }),
    ];
    let blacklist = [
        filter(|f| f.source_label = strings(&["reserved:unknown"])),
        filter(|f| f.destination_label = strings(&["reserved:unknown"])),
        filter(|f| f.source_fqdn = strings(&["*.cluster.local*"])),
        filter(|f| f.destination_fqdn = strings(&["*.cluster.local*"])),
    ];
    let matcher = HubbleMatcher::compile(&whitelist, &blacklist, RUN).unwrap();
    assert!(matcher.matches(&request()));
    assert!(!matcher.matches(&world_reply()));
}

#[test]
fn fqdn_filters_match_the_names_an_end_was_resolved_from() {
    assert_eq!(
        selects(|f| f.source_fqdn = strings(&["*.azure.net"])),
        (false, true)
    );
    assert_eq!(
        selects(|f| f.source_fqdn = strings(&["MyVault.Vault.Azure.Net."])),
        (false, true)
    );
    assert_eq!(
        selects(|f| f.source_fqdn = strings(&["*.vault.azure"])),
        (false, false)
    );
    assert_eq!(
        selects(|f| f.destination_fqdn = strings(&["*"])),
        (false, false)
    );
    // Names on the blacklist leave a flow out.
    let blacklist = [filter(|f| f.source_fqdn = strings(&["*.azure.example"]))];
    let matcher = HubbleMatcher::compile(&[], &blacklist, RUN).unwrap();
    assert!(matcher.matches(&request()));
    assert!(!matcher.matches(&world_reply()));
}

#[test]
fn fields_that_cannot_be_honoured_are_refused_by_name() {
    let refused: Vec<(Build, &str)> = vec![
        (
            Box::new(|f| f.http_status_code = strings(&["5+"])),
            "whitelist[0].http_status_code",
        ),
        (
            Box::new(|f| f.http_method = strings(&["GET"])),
            "whitelist[0].http_method",
        ),
        (
            Box::new(|f| f.http_path = strings(&["/"])),
            "whitelist[0].http_path",
        ),
        (
            Box::new(|f| f.http_url = strings(&["/"])),
            "whitelist[0].http_url",
        ),
        (
            Box::new(|f| {
                f.http_header = vec![hubble::HttpHeader {
                    key: "a".into(),
                    value: "b".into(),
                }]
            }),
            "whitelist[0].http_header",
        ),
        (
            Box::new(|f| f.dns_query = strings(&["kube.*", "(unclosed"])),
            "whitelist[0].dns_query[1]",
        ),
        (
            Box::new(|f| f.source_fqdn = strings(&["*.azure.net/x"])),
            "whitelist[0].source_fqdn[0]",
        ),
        (
            Box::new(|f| f.destination_fqdn = strings(&["vault.azure.net", ""])),
            "whitelist[0].destination_fqdn[1]",
        ),
        (
            Box::new(|f| f.source_identity = vec![2]),
            "whitelist[0].source_identity",
        ),
        (
            Box::new(|f| f.destination_identity = vec![2]),
            "whitelist[0].destination_identity",
        ),
        (
            Box::new(|f| f.source_ip_xlated = strings(&["10.0.0.1"])),
            "whitelist[0].source_ip_xlated",
        ),
        (
            Box::new(|f| f.node_labels = strings(&["a=b"])),
            "whitelist[0].node_labels",
        ),
        (
            Box::new(|f| f.trace_id = strings(&["x"])),
            "whitelist[0].trace_id",
        ),
        (
            Box::new(|f| f.ip_trace_id = vec![1]),
            "whitelist[0].ip_trace_id",
        ),
        (
            Box::new(|f| {
                f.experimental = Some(hubble::flow_filter::Experimental {
                    cel_expression: strings(&["true"]),
                })
            }),
            "whitelist[0].experimental.cel_expression",
        ),
        (
            Box::new(|f| f.protocol = strings(&["tcp", "http"])),
            "whitelist[0].protocol[1]",
        ),
        (
            Box::new(|f| f.protocol = strings(&["gre"])),
            "whitelist[0].protocol[0]",
        ),
        (
            Box::new(|f| f.source_ip = strings(&["10.0.0.0/33"])),
            "whitelist[0].source_ip[0]",
        ),
        (
            Box::new(|f| f.destination_pod = strings(&[""])),
            "whitelist[0].destination_pod[0]",
        ),
        (
            Box::new(|f| f.destination_pod = strings(&["/"])),
            "whitelist[0].destination_pod[0]",
        ),
        (
            Box::new(|f| f.source_label = strings(&["app in cart"])),
            "whitelist[0].source_label[0]",
        ),
        (
            Box::new(|f| f.source_port = strings(&["http"])),
            "whitelist[0].source_port[0]",
        ),
        (
            Box::new(|f| f.destination_port = strings(&["70000"])),
            "whitelist[0].destination_port[0]",
        ),
        (
            Box::new(|f| f.node_name = strings(&["a/b/c"])),
            "whitelist[0].node_name[0]",
        ),
        (
            Box::new(|f| f.node_name = strings(&["node$"])),
            "whitelist[0].node_name[0]",
        ),
        (
            Box::new(|f| f.uuid = strings(&["not-a-uuid"])),
            "whitelist[0].uuid[0]",
        ),
        (
            Box::new(|f| f.verdict = vec![99]),
            "whitelist[0].verdict[0]",
        ),
        (
            Box::new(|f| f.source_workload = vec![hubble::Workload::default()]),
            "whitelist[0].source_workload[0]",
        ),
    ];
    for (build, field) in refused {
        let error = HubbleMatcher::compile(&[filter(build)], &[], RUN).unwrap_err();
        assert_eq!(error.field, field, "{error}");
    }
    // In the blacklist, L7 fields are refused all the same.
    let error = HubbleMatcher::compile(&[], &[filter(|f| f.http_method = strings(&["GET"]))], RUN)
        .unwrap_err();
    assert_eq!(error.field, "blacklist[0].http_method");
}

/// A DNS answer to the frontend, carried by a UDP packet from the resolver.
fn dns_answer() -> StoredFlow {
    let mut stored = request();
    stored.record.source = pod("10.1.0.53", 53, "kube-system", "coredns-1a2b-c3", "coredns");
    stored.record.destination = pod("10.1.0.5", 40000, "shop-a", "frontend-6f7d-p1", "frontend");
    stored.record.protocol = Protocol(17);
    stored.record.tcp_flags = Vec::new();
    stored.record.is_reply = true;
    stored.record.hook = Hook::Ingress;
    stored.dns = Some(Box::new(flow_dns::DnsMessage {
        id: 9,
        kind: flow_dns::Kind::Response,
        rcode: 0,
        questions: vec![flow_dns::message::Question {
            name: "myvault.vault.azure.net".into(),
            qtype: 1,
        }],
        resolved: Vec::new(),
        cnames: Vec::new(),
        rrtypes: Vec::new(),
        unsolicited: 0,
        dropped_names: 0,
    }));
    stored.sequence = 44;
    stored
}

#[test]
fn dns_flows_are_l7_flows_of_protocol_dns_selected_by_query() {
    let cases: Vec<(&str, FlowFilter, [bool; 2])> = vec![
        (
            "l7 type",
            filter(|f| {
                f.event_type = vec![EventTypeFilter {
                    r#type: 129,
                    ..Default::default()
                }]
            }),
            [false, true],
        ),
        (
            "trace type",
            filter(|f| {
                f.event_type = vec![EventTypeFilter {
                    r#type: 4,
                    ..Default::default()
                }]
            }),
            [true, false],
        ),
        (
            "dns",
            filter(|f| f.protocol = strings(&["DNS"])),
            [false, true],
        ),
        (
            "tcp or dns",
            filter(|f| f.protocol = strings(&["tcp", "dns"])),
            [true, true],
        ),
        // The packet's own protocol still matches, as in Hubble.
        (
            "udp",
            filter(|f| f.protocol = strings(&["udp"])),
            [false, true],
        ),
        (
            "query",
            filter(|f| f.dns_query = strings(&[r"vault\.azure\.net\.$"])),
            [false, true],
        ),
        (
            "other query",
            filter(|f| f.dns_query = strings(&["^kube"])),
            [false, false],
        ),
        // Cilium's DNS flows are the querier's egress.
        (
            "egress",
            filter(|f| f.traffic_direction = vec![TrafficDirection::Egress as i32]),
            [true, true],
        ),
        (
            "ingress",
            filter(|f| f.traffic_direction = vec![TrafficDirection::Ingress as i32]),
            [false, false],
        ),
    ];
    for (name, whitelist, expected) in cases {
        let matcher = HubbleMatcher::compile(&[whitelist], &[], RUN).unwrap();
        let got = [matcher.matches(&request()), matcher.matches(&dns_answer())];
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn a_request_cannot_make_filtering_arbitrarily_expensive() {
    let many = vec![FlowFilter::default(); MAX_FILTERS + 1];
    let error = HubbleMatcher::compile(&many, &[], RUN).unwrap_err();
    assert_eq!(error.field, "whitelist");
    let ports = filter(|f| {
        f.destination_port = (0..=MAX_FILTER_VALUES)
            .map(|port| port.to_string())
            .collect()
    });
    let error = HubbleMatcher::compile(&[], &[ports], RUN).unwrap_err();
    assert!(error.problem.contains("1025 values"), "{error}");
}
