//! Cilium's semantics case by case: namespaces x and y, pods a and b in
//! each, and addresses outside with the names the pod resolved to them.

use std::{collections::BTreeMap, sync::Arc};

use flow_model::{identity::PeerKind, record::Protocol};

use crate::{
    cluster::ClusterView,
    evaluate::{Evaluator, PolicySet, Subject, load_policy_set},
};

const TCP: Protocol = Protocol(6);
const UDP: Protocol = Protocol(17);

/// The four pods of the NetworkPolicy cases, with namespace y labelled
/// `team: blue`.
fn cluster() -> ClusterView {
    let mut view = crate::evaluate::tests::cluster();
    view.set_namespace_labels(
        "y",
        &BTreeMap::from([("team".to_owned(), "blue".to_owned())]),
    );
    view
}

fn set(yaml: &str) -> PolicySet {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("policies.yaml"), yaml).unwrap();
    load_policy_set(directory.path()).unwrap()
}

/// The allowed ordered pairs among the four pods on TCP `port`, as
/// "x/a->y/b".
fn reachable(
    view: &ClusterView,
    policies: &PolicySet,
    protocol: Protocol,
    port: u16,
) -> Vec<String> {
    crate::evaluate::tests::allowed_pairs(
        view,
        &Evaluator::with_set(view, policies),
        protocol,
        port,
    )
}

fn world<'a>(ip: &str, names: &'a [Arc<str>]) -> Subject<'a> {
    Subject::Address {
        ip: ip.parse().unwrap(),
        resident_node: false,
        kind: PeerKind::World,
        names,
    }
}

const HEADER: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\n";

#[test]
fn a_namespaced_policy_selects_and_admits_in_its_own_namespace_unless_a_selector_names_one() {
    let view = cluster();
    let policies = set(&format!(
        "{HEADER}spec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{'k8s:pod': b}}}}]\n"
    ));
    // Only x/a is isolated, and only x/b gets in.
    let mut expected = vec![
        "x/a->x/b", "x/a->y/a", "x/a->y/b", "x/b->x/a", "x/b->y/a", "x/b->y/b", "y/a->x/b",
        "y/a->y/b", "y/b->x/b", "y/b->y/a",
    ];
    assert_eq!(reachable(&view, &policies, TCP, 80), expected);
    let policies = set(&format!(
        "{HEADER}spec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {{k8s:io.kubernetes.pod.namespace: y, pod: b}}\n    - matchExpressions: [{{key: io.cilium.k8s.namespace.labels.team, operator: In, values: [blue]}}, {{key: pod, operator: NotIn, values: [b]}}]\n"
    ));
    // Now y/b and y/a (by its namespace's label) get in, x/b no more.
    expected.retain(|pair| *pair != "x/b->x/a");
    expected.extend(["y/a->x/a", "y/b->x/a"]);
    expected.sort();
    let mut got = reachable(&view, &policies, TCP, 80);
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn a_clusterwide_policy_selects_and_admits_in_every_namespace() {
    let view = cluster();
    let policies = set(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {pod: a}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {pod: b}}]\n    toPorts: [{ports: [{port: '80', endPort: 81}]}]\n",
    );
    assert_eq!(
        reachable(&view, &policies, TCP, 81),
        [
            "x/a->x/b", "x/a->y/b", "x/b->x/a", "x/b->y/a", "x/b->y/b", "y/a->x/b", "y/a->y/b",
            "y/b->x/a", "y/b->x/b", "y/b->y/a"
        ]
    );
    // ANY (the protocol left out) is TCP, UDP and SCTP; 82 is outside.
    assert!(reachable(&view, &policies, UDP, 80).contains(&"y/b->x/a".to_owned()));
    assert!(!reachable(&view, &policies, TCP, 82).contains(&"y/b->x/a".to_owned()));
}

#[test]
fn to_fqdns_allow_an_outside_address_under_a_name_the_pod_resolved() {
    let view = cluster();
    let policies = set(&format!(
        "{HEADER}spec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  egress:\n  - toFQDNs: [{{matchName: api.example.com.}}, {{matchPattern: '*.cdn.example.com'}}, {{matchPattern: '**.deep.example.com'}}]\n    toPorts: [{{ports: [{{port: '443', protocol: TCP}}]}}]\n  - toEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: y}}}}]\n    toPorts:\n    - ports: [{{port: '53', protocol: UDP}}]\n      rules:\n        dns: [{{matchPattern: '*'}}]\n"
    ));
    let evaluator = Evaluator::with_set(&view, &policies);
    let xa = Subject::Pod(&view.pods()[0]);
    let judge = |names: &[&str], port: u16| {
        let names: Vec<Arc<str>> = names.iter().map(|name| Arc::from(*name)).collect();
        evaluator
            .check(xa, world("203.0.113.5", &names), TCP, port)
            .allowed()
    };
    assert!(judge(&["api.example.com"], 443));
    assert!(judge(&["API.Example.com"], 443));
    assert!(judge(&["other.example.com", "api.example.com"], 443));
    assert!(judge(&["img.cdn.example.com"], 443));
    assert!(judge(&["a.b.deep.example.com"], 443));
    // Without the name, under another, on another port: denied.
    assert!(!judge(&[], 443));
    assert!(!judge(&["other.example.com"], 443));
    assert!(!judge(&["a.b.cdn.example.com"], 443));
    assert!(!judge(&["cdn.example.com"], 443));
    assert!(!judge(&["deep.example.com"], 443));
    assert!(!judge(&["api.example.com"], 80));
    // Names select outside addresses only.
    let names: Vec<Arc<str>> = vec![Arc::from("api.example.com")];
    let node = Subject::Address {
        ip: "192.168.0.2".parse().unwrap(),
        resident_node: false,
        kind: PeerKind::RemoteNode,
        names: &names,
    };
    assert!(!evaluator.check(xa, node, TCP, 443).allowed());
    // The DNS rule allows port 53 to the peer it names, at layer 4.
    let ya = Subject::Pod(&view.pods()[2]);
    assert!(evaluator.check(xa, ya, UDP, 53).allowed());
    assert!(!evaluator.check(xa, ya, TCP, 53).allowed());
}

#[test]
fn entities_and_cidr_sets_select_what_they_name() {
    let view = cluster();
    let policies = set(&format!(
        "{HEADER}spec:\n  endpointSelector: {{}}\n  egress:\n  - toEntities: [host, kube-apiserver]\n  - toCIDRSet: [{{cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]\n  - toCIDR: [192.168.0.0/16]\n"
    ));
    let evaluator = Evaluator::with_set(&view, &policies);
    let xa = Subject::Pod(&view.pods()[0]);
    let address = |ip: &str, kind: PeerKind| Subject::Address {
        ip: ip.parse().unwrap(),
        resident_node: false,
        kind,
        names: &[],
    };
    let allowed = |to| evaluator.check(xa, to, TCP, 8443).allowed();
    assert!(allowed(address("192.168.0.1", PeerKind::Host)));
    assert!(allowed(address("10.96.0.1", PeerKind::KubeApiserver)));
    // A CIDR does not select a node, even inside it.
    assert!(!allowed(address("192.168.0.2", PeerKind::RemoteNode)));
    assert!(allowed(address("192.168.7.7", PeerKind::World)));
    assert!(allowed(address("198.51.100.1", PeerKind::World)));
    assert!(!allowed(address("198.51.100.200", PeerKind::World)));
    // Pods of the namespace, now isolated, reach no pod.
    assert!(!allowed(Subject::Pod(&view.pods()[1])));
    let cluster_wide = set(&format!(
        "{HEADER}spec:\n  endpointSelector: {{}}\n  egress:\n  - toEntities: [cluster]\n"
    ));
    let evaluator = Evaluator::with_set(&view, &cluster_wide);
    assert!(
        evaluator
            .check(xa, Subject::Pod(&view.pods()[3]), TCP, 1)
            .allowed()
    );
    assert!(
        evaluator
            .check(xa, address("192.168.0.2", PeerKind::RemoteNode), TCP, 1)
            .allowed()
    );
    assert!(
        !evaluator
            .check(xa, address("8.8.8.8", PeerKind::World), TCP, 1)
            .allowed()
    );
}

#[test]
fn empty_rules_peers_and_default_deny_follow_cilium() {
    let view = cluster();
    let policy = |egress: &str| {
        set(&format!(
            "{HEADER}spec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n{egress}"
        ))
    };
    let from_xa = |policies: &PolicySet| {
        reachable(&view, policies, TCP, 80)
            .into_iter()
            .filter(|pair| pair.starts_with("x/a->"))
            .collect::<Vec<_>>()
    };
    // The empty rule only isolates.
    assert_eq!(from_xa(&policy("  egress: [{}]\n")), Vec::<String>::new());
    // Ports alone: every peer on them.
    assert_eq!(
        from_xa(&policy(
            "  egress: [{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]\n"
        )),
        ["x/a->x/b", "x/a->y/a", "x/a->y/b"]
    );
    // A peer field given empty matches nothing.
    assert_eq!(
        from_xa(&policy(
            "  egress: [{toEndpoints: [], toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]\n"
        )),
        Vec::<String>::new()
    );
    // enableDefaultDeny false: the rules only add, nothing is isolated.
    assert_eq!(
        from_xa(&policy(
            "  enableDefaultDeny: {egress: false}\n  egress: [{toEndpoints: [{matchLabels: {pod: b}}]}]\n"
        )),
        ["x/a->x/b", "x/a->y/a", "x/a->y/b"]
    );
    // enableDefaultDeny true isolates even without a section.
    assert_eq!(
        from_xa(&policy(
            "  enableDefaultDeny: {egress: true}\n  ingress: [{fromEntities: [all]}]\n"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn networkpolicies_and_cilium_policies_are_one_set() {
    let view = cluster();
    // The NetworkPolicy isolates x/a and lets x/b in; the Cilium policy
    // lets y/b in: both get in, y/a does not.
    let policies = set(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]\n---\n{HEADER}spec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  enableDefaultDeny: {{ingress: false}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: y, pod: b}}}}]\n"
    ));
    assert_eq!((policies.network.len(), policies.cilium.len()), (1, 1));
    let into_xa: Vec<String> = reachable(&view, &policies, TCP, 80)
        .into_iter()
        .filter(|pair| pair.ends_with("->x/a"))
        .collect();
    assert_eq!(into_xa, ["x/b->x/a", "y/b->x/a"]);
}

#[test]
fn what_cannot_be_judged_exactly_is_refused_by_its_path() {
    let refused = |spec: &str| {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("p.yaml"),
            format!("{HEADER}spec:\n  endpointSelector: {{}}\n{spec}"),
        )
        .unwrap();
        let error = load_policy_set(directory.path()).unwrap_err().to_string();
        error
            .split_once("document 1: ")
            .map(|(_, message)| message.to_owned())
            .unwrap_or(error)
    };
    let unknown = refused("  egressDeny: [{toEntities: [world]}]\n");
    assert!(
        unknown.starts_with(
            "not a Cilium policy flow-agent can judge: spec.egressDeny: unknown field `egressDeny`"
        ),
        "{unknown}"
    );
    let http = refused(
        "  egress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{method: GET}]}}]}]\n",
    );
    assert!(
        http.starts_with(
            "not a Cilium policy flow-agent can judge: spec.egress[0].toPorts[0].rules.http: unknown field `http`"
        ),
        "{http}"
    );
    for (spec, expected) in [
        (
            "  egress: [{toEntities: [health]}]\n",
            "spec.egress[0].toEntities[0]: entity \"health\" cannot be judged: flow-agent tells only all, none, world, cluster, host, remote-node, kube-apiserver",
        ),
        (
            "  ingress: [{toEndpoints: [{}]}]\n",
            "spec.ingress[0].toEndpoints: not a field of an ingress rule",
        ),
        (
            "  egress: [{toFQDNs: [{matchName: a.example}], fromCIDR: [10.0.0.0/8]}]\n",
            "spec.egress[0].fromCIDR: not a field of an egress rule",
        ),
        (
            "  egress: [{toEndpoints: [{matchLabels: {'reserved:host': ''}}]}]\n",
            "spec.egress[0].toEndpoints[0].matchLabels: label source \"reserved\" of \"reserved:host\" cannot be judged: only k8s: and any:",
        ),
        (
            "  egress: [{toEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: x}}]}]\n",
            "spec.egress[0].toEndpoints[0].matchLabels: \"io.cilium.k8s.policy.serviceaccount\" cannot be judged: flow-agent does not know endpoints' service accounts and clusters",
        ),
        (
            "  egress: [{toPorts: [{ports: [{port: http, protocol: TCP}]}]}]\n",
            "spec.egress[0].toPorts[0].ports[0].port: \"http\" is not a port number (named ports are not judged)",
        ),
        (
            "  egress: [{toCIDRSet: [{cidr: 10.0.0.0/16, except: [10.1.0.0/24]}]}]\n",
            "spec.egress[0].toCIDRSet[0].except[0]: 10.1.0.0/24 is not inside 10.0.0.0/16",
        ),
    ] {
        assert_eq!(refused(spec), expected);
    }
    let clusterwide = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {endpointSelector: {}, egress: [{}]}\n";
    assert_eq!(
        crate::cilium::Policy::from_yaml(clusterwide)
            .unwrap_err()
            .to_string(),
        "metadata.namespace: a cluster-wide policy has no namespace"
    );
}
