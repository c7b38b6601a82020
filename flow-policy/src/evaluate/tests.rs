//! NetworkPolicy semantics, case by case, in the style of the upstream
//! conformance tests: namespaces x and y, pods a and b in each.

use std::collections::BTreeMap;

use super::*;
use flow_model::identity::model::ContainerPort;

use crate::{cluster::PodView, graph::WorkloadRef};

const TCP: Protocol = Protocol(6);
const UDP: Protocol = Protocol(17);

pub(super) fn cluster() -> ClusterView {
    let mut view = ClusterView::from_objects(Vec::new(), "tenant");
    for (namespace, name, ip) in [
        ("x", "a", "10.0.1.1"),
        ("x", "b", "10.0.1.2"),
        ("y", "a", "10.0.2.1"),
        ("y", "b", "10.0.2.2"),
    ] {
        view.add_pod(PodView {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::from([("pod".to_owned(), name.to_owned())]),
            ips: vec![ip.parse().unwrap()],
            ports: vec![
                ContainerPort {
                    name: Some("serve-80-tcp".into()),
                    port: 80,
                    protocol: TCP,
                },
                ContainerPort {
                    name: Some("serve-81-udp".into()),
                    port: 81,
                    protocol: UDP,
                },
            ],
            host_network: false,
            workload: WorkloadRef {
                namespace: namespace.into(),
                kind: "Pod".into(),
                name: name.into(),
            },
        });
    }
    view
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("policies.yaml"), yaml).unwrap();
    load_policies(directory.path()).unwrap()
}

/// The truth table of TCP `port` between the four pods: "x/a->y/b" lines for
/// the allowed pairs (loopback left out, as upstream does).
fn reachable(
    view: &ClusterView,
    policies: &[NetworkPolicy],
    protocol: Protocol,
    port: u16,
) -> Vec<String> {
    allowed_pairs(view, &Evaluator::new(view, policies), protocol, port)
}

/// The pairs of distinct pods of `view` that `evaluator` allows on
/// `protocol`/`port`, as "x/a->y/b" lines.
pub(super) fn allowed_pairs(
    view: &ClusterView,
    evaluator: &Evaluator<'_>,
    protocol: Protocol,
    port: u16,
) -> Vec<String> {
    let mut allowed = Vec::new();
    for from in view.pods() {
        for to in view.pods() {
            if from.name == to.name && from.namespace == to.namespace {
                continue;
            }
            if evaluator
                .check(Subject::Pod(from), Subject::Pod(to), protocol, port)
                .allowed()
            {
                allowed.push(format!(
                    "{}/{}->{}/{}",
                    from.namespace, from.name, to.namespace, to.name
                ));
            }
        }
    }
    allowed
}

const ALL: [&str; 12] = [
    "x/a->x/b", "x/a->y/a", "x/a->y/b", "x/b->x/a", "x/b->y/a", "x/b->y/b", "y/a->x/a", "y/a->x/b",
    "y/a->y/b", "y/b->x/a", "y/b->x/b", "y/b->y/a",
];

#[test]
fn without_policies_everything_is_allowed_and_default_deny_isolates_one_namespace() {
    let view = cluster();
    assert_eq!(reachable(&view, &[], TCP, 80), ALL);
    let deny = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    );
    assert_eq!(reachable(&view, &deny, TCP, 80), ["y/a->y/b", "y/b->y/a"]);
}

#[test]
fn peers_in_one_entry_and_while_separate_entries_or() {
    let view = cluster();
    let and = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: and, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n      podSelector: {matchLabels: {pod: b}}\n",
    );
    let into_xa = |list: Vec<String>| {
        list.into_iter()
            .filter(|pair| pair.ends_with("->x/a"))
            .collect::<Vec<_>>()
    };
    assert_eq!(into_xa(reachable(&view, &and, TCP, 80)), ["y/b->x/a"]);
    let or = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: or, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n    - podSelector: {matchLabels: {pod: b}}\n",
    );
    assert_eq!(
        into_xa(reachable(&view, &or, TCP, 80)),
        ["x/b->x/a", "y/a->x/a", "y/b->x/a"]
    );
    // podSelector alone: the policy's namespace only.
    let local = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: local, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}\n",
    );
    assert_eq!(into_xa(reachable(&view, &local, TCP, 80)), ["x/b->x/a"]);
}

#[test]
fn named_ports_resolve_on_the_destination_and_end_port_makes_a_range() {
    let view = cluster();
    let named = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]\n",
    );
    let evaluator = Evaluator::new(&view, &named);
    let (from, to) = (Subject::Pod(&view.pods()[2]), Subject::Pod(&view.pods()[0]));
    assert!(evaluator.check(from, to, TCP, 80).allowed());
    assert!(!evaluator.check(from, to, TCP, 81).allowed());
    assert!(evaluator.check(from, to, UDP, 81).allowed());
    // The name with the wrong protocol matches nothing.
    assert!(!evaluator.check(from, to, UDP, 80).allowed());
    let range = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: range, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 8000, endPort: 8002}]\n",
    );
    let evaluator = Evaluator::new(&view, &range);
    let allowed: Vec<u16> = (7999..=8003)
        .filter(|port| evaluator.check(from, to, TCP, *port).allowed())
        .collect();
    assert_eq!(allowed, [8000, 8001, 8002]);
    // SCTP is not TCP.
    assert!(!evaluator.check(from, to, Protocol(132), 8000).allowed());
}

#[test]
fn ip_blocks_match_addresses_minus_except_and_never_pods() {
    let view = cluster();
    let egress = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}\n",
    );
    let evaluator = Evaluator::new(&view, &egress);
    let xa = Subject::Pod(&view.pods()[0]);
    let address = |ip: &str| Subject::Address {
        ip: ip.parse().unwrap(),
        resident_node: false,
        kind: flow_model::identity::PeerKind::World,
        names: &[],
    };
    assert!(evaluator.check(xa, address("10.5.0.1"), TCP, 443).allowed());
    assert!(!evaluator.check(xa, address("10.9.0.1"), TCP, 443).allowed());
    assert!(
        !evaluator
            .check(xa, address("192.0.2.1"), TCP, 443)
            .allowed()
    );
    // y/a's address is inside 10.0.0.0/8, but it is a pod.
    assert!(
        !evaluator
            .check(xa, Subject::Pod(&view.pods()[2]), TCP, 443)
            .allowed()
    );
    // Ingress isolation was not asked for: anyone may still reach x/a.
    assert!(evaluator.check(address("192.0.2.1"), xa, TCP, 80).allowed());
}

#[test]
fn an_empty_policy_types_list_is_defaulted_like_a_missing_one() {
    let view = cluster();
    let (xa, ya) = (Subject::Pod(&view.pods()[0]), Subject::Pod(&view.pods()[2]));
    // No rules and `policyTypes: []`: the API server makes it [Ingress].
    let empty = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: []\n",
    );
    let evaluator = Evaluator::new(&view, &empty);
    assert!(
        !evaluator.check(ya, xa, TCP, 80).allowed(),
        "ingress isolated"
    );
    assert!(evaluator.check(xa, ya, TCP, 80).allowed(), "egress is not");
    // With egress rules it becomes [Ingress, Egress].
    let with_egress = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: []\n  egress:\n  - ports: [{port: 443}]\n",
    );
    let evaluator = Evaluator::new(&view, &with_egress);
    assert!(!evaluator.check(xa, ya, TCP, 80).allowed());
    assert!(evaluator.check(xa, ya, TCP, 443).allowed());
}

#[test]
fn omitted_policy_types_policies_union_and_icmp_needs_a_portless_rule() {
    let view = cluster();
    let only_ingress_rules = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
    );
    let evaluator = Evaluator::new(&view, &only_ingress_rules);
    let (xa, xb, ya) = (
        Subject::Pod(&view.pods()[0]),
        Subject::Pod(&view.pods()[1]),
        Subject::Pod(&view.pods()[2]),
    );
    assert!(
        evaluator.check(xa, ya, TCP, 80).allowed(),
        "egress is not isolated"
    );
    assert!(!evaluator.check(ya, xa, TCP, 80).allowed());
    let two = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n    ports: [{port: 443}]\n",
    );
    let evaluator = Evaluator::new(&view, &two);
    assert!(evaluator.check(xb, xa, TCP, 80).allowed());
    assert!(
        evaluator.check(ya, xa, TCP, 443).allowed(),
        "the union of both policies"
    );
    assert!(!evaluator.check(ya, xa, TCP, 80).allowed());
    assert!(
        !evaluator.check(xb, xa, Protocol(1), 0).allowed(),
        "ICMP passes no rule with ports"
    );
    let portless = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n",
    );
    let evaluator = Evaluator::new(&view, &portless);
    assert!(evaluator.check(xb, xa, Protocol(1), 0).allowed());
    // The pod's own node is always let in.
    let node = Subject::Address {
        ip: "192.168.0.10".parse().unwrap(),
        resident_node: true,
        kind: flow_model::identity::PeerKind::Host,
        names: &[],
    };
    assert!(evaluator.check(node, xa, TCP, 80).allowed());
}

#[test]
fn invalid_policies_are_refused_naming_file_document_and_field() {
    let cases = [
        (
            "spec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
            "spec.ingress[0].peers[0]: ipBlock cannot be combined",
        ),
        (
            "spec:\n  podSelector: {}\n  egress:\n  - ports: [{port: http, endPort: 90}]\n",
            "spec.egress[0].ports[0].endPort",
        ),
        (
            "spec:\n  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]\n",
            "except[0]: 192.168.0.0/16 is not strictly inside",
        ),
        (
            "spec:\n  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]\n",
            "except[0]: 10.0.0.0/8 is not strictly inside",
        ),
        (
            "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80, protocol: ICMP}]\n",
            "is not TCP, UDP or SCTP",
        ),
        (
            "spec:\n  podSelector: {}\n  policyTypes: [Inbound]\n",
            "spec.policyTypes[0]",
        ),
        (
            "spec:\n  podSelector: {matchExpressions: [{key: a, operator: In}]}\n",
            "spec.podSelector.matchExpressions[0]",
        ),
        (
            "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endPort: 70}]\n",
            "must be between port and 65535",
        ),
    ];
    for (spec, expected) in cases {
        let directory = tempfile::tempdir().unwrap();
        let text = format!(
            "kind: Kustomization\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\n{spec}"
        );
        std::fs::write(directory.path().join("bad.yaml"), text).unwrap();
        let error = load_policies(directory.path()).unwrap_err().to_string();
        assert!(
            error.contains("bad.yaml: document 2") && error.contains(expected),
            "{expected}: {error}"
        );
    }
    // A List is read item by item.
    let list = policies(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: a, namespace: x}\n  spec: {podSelector: {}}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n",
    );
    assert_eq!(list.len(), 1);
}

/// Policies of every kind above, side by side, to hold `reach` to `check`.
const REACH_CASES: [&str; 5] = [
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}, {port: 8000, endPort: 8002}, {protocol: SCTP}]\n",
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: or, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n    - podSelector: {matchLabels: {pod: b}}\n    ports: [{port: 443}, {port: 1000, endPort: 1200, protocol: UDP}]\n",
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {}}]\n    ports: [{port: 443}, {port: serve-81-udp, protocol: UDP}]\n  - to: [{podSelector: {matchLabels: {pod: a}}}]\n",
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8}\n  - to: [{podSelector: {}}]\n    ports: [{port: 53, protocol: UDP}, {port: 53}]\n",
];

#[test]
fn reach_agrees_with_check_on_every_port_of_every_pair() {
    let view = cluster();
    let ports: Vec<u16> = (1..=1300).chain(7990..=8010).chain(65530..=65535).collect();
    for case in REACH_CASES {
        let policies = policies(case);
        let evaluator = Evaluator::new(&view, &policies);
        for from in view.pods() {
            for to in view.pods() {
                let reach = evaluator.reach(from, to);
                for protocol in crate::ports::PROTOCOLS {
                    let set = reach.ports(protocol);
                    for port in &ports {
                        let checked = evaluator
                            .check(Subject::Pod(from), Subject::Pod(to), protocol, *port)
                            .allowed();
                        assert_eq!(
                            set.contains(*port),
                            checked,
                            "{}/{} -> {}/{} {protocol}/{port} under {case}",
                            from.namespace,
                            from.name,
                            to.namespace,
                            to.name
                        );
                    }
                }
            }
        }
    }
    // One pair spelled out: y/b -> x/a under the named-port policy.
    let named = policies(REACH_CASES[1]);
    let reach = Evaluator::new(&view, &named).reach(&view.pods()[3], &view.pods()[0]);
    let text: Vec<String> = crate::ports::PROTOCOLS
        .iter()
        .map(|protocol| format!("{protocol} {}", reach.ports(*protocol)))
        .collect();
    assert_eq!(text, ["TCP 80, 8000-8002", "UDP 81", "SCTP any"]);
}
