//! One test per resolver: the CoreDNS pods behind kube-dns, NodeLocal
//! DNSCache revealed by its DaemonSet (on its link-local address and on the
//! untranslated kube-dns address), AKS LocalDNS configured by address.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use flow_model::{
    identity::{Identity, PeerKind, ServiceRef, Workload, inventory},
    record::{Endpoint, FlowRecord, Hook, Protocol, Timestamp},
};

use super::super::{
    GenerateOptions, PolicyFormat, Proposal, network_policy, propose, render, serialized_policy,
};
use crate::{
    check,
    cluster::{ClusterView, local_ips},
    export::{ExportSummary, review},
    graph::Graph,
};

const INVENTORY: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, uid: w1, labels: {app: web}}
spec: {nodeName: n}
status: {podIPs: [{ip: 10.0.0.1}], phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{port: 53, protocol: UDP, targetPort: 53}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-local-dns, namespace: kube-system}
spec:
  template:
    metadata: {labels: {k8s-app: node-local-dns}}
    spec:
      hostNetwork: true
      containers:
      - name: node-cache
        args: [-localip, '169.254.20.10,10.96.0.10', -conf, /etc/Corefile]
";

fn identity(kind: PeerKind, namespace: &str, workload: (&str, &str)) -> Arc<Identity> {
    Arc::new(Identity {
        kind: Some(kind),
        namespace: Some(namespace.into()),
        pod: (kind == PeerKind::Pod).then(|| format!("{}-1", workload.1)),
        workload: Some(Workload {
            kind: workload.0.into(),
            name: workload.1.into(),
        }),
        tenant: Some(namespace.into()),
        labels: [("app".to_owned(), workload.1.to_owned())].into(),
        ..Identity::default()
    })
}

fn web() -> Endpoint {
    let mut web = Endpoint::new("10.0.0.1".parse().unwrap(), 40_000);
    web.identity = identity(PeerKind::Pod, "shop", ("Deployment", "web"));
    web
}

fn query(destination: Endpoint) -> FlowRecord {
    let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    FlowRecord {
        time,
        first_seen: time,
        cross_tenant: Some(false),
        source: web(),
        destination,
        protocol: Protocol(17),
        icmp: None,
        packets: 1,
        bytes: 80,
        tcp_flags: Vec::new(),
        icmp_errors: None,
        is_reply: false,
        interface: "veth0".into(),
        interface_index: 0,
        hook: Hook::Ingress,
        node: "n".into(),
        new_connection: true,
        violation: false,
    }
}

fn address(ip: &str, kind: PeerKind) -> Endpoint {
    let mut endpoint = Endpoint::new(ip.parse().unwrap(), 53);
    endpoint.identity = Arc::new(Identity {
        kind: Some(kind),
        ..Identity::default()
    });
    endpoint
}

fn cluster() -> ClusterView {
    let inventory = inventory::parse(INVENTORY, "inventory.yaml");
    assert!(inventory.errors.is_empty(), "{:?}", inventory.errors);
    ClusterView::from_objects(inventory.objects, "tenant")
}

/// The proposal for `records`, web's policy in both formats (each checked
/// against the serializer), and the REVIEW.md resolver lines.
fn generate(
    records: &[FlowRecord],
    configured: &[&str],
) -> (Proposal, String, String, Vec<String>) {
    let mut graph = Graph::new();
    for record in records {
        graph.observe(record);
    }
    let mut view = cluster();
    view.add_graph(&graph);
    let mut options = GenerateOptions {
        node_local_dns: configured.iter().map(|ip| ip.parse().unwrap()).collect(),
        ..GenerateOptions::default()
    };
    let mut texts = Vec::new();
    let mut proposal = None;
    for format in [PolicyFormat::Networkpolicy, PolicyFormat::Cilium] {
        options.format = format;
        let made = propose(&graph, &view, &options);
        let file = render(&made, format)
            .remove("shop.allow-deployment-web.yaml")
            .expect("web's policy");
        assert_eq!(file, serialized_policy(&made.policies[0], format));
        texts.push(file);
        proposal = Some(made);
    }
    let proposal = proposal.unwrap();
    let page = review(
        &proposal,
        PolicyFormat::Networkpolicy,
        &ExportSummary::default(),
        &[],
    );
    let lines = page
        .split("\n## DNS resolvers\n")
        .nth(1)
        .expect("a resolver section")
        .split("\n## ")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("- "))
        .map(str::to_owned)
        .collect();
    let cilium = texts.pop().unwrap();
    let networkpolicy = texts.pop().unwrap();
    (proposal, networkpolicy, cilium, lines)
}

/// `policy check` of the proposal's NetworkPolicies on the same records
/// denies nothing.
fn assert_nothing_denied(proposal: &Proposal, records: &[FlowRecord]) {
    let policies: Vec<_> = proposal.policies.iter().map(network_policy).collect();
    let report = check::check(records, &mut cluster(), &policies.into());
    assert_eq!(report.denied, Vec::new(), "{report:#?}");
    assert_eq!(report.checked, records.len(), "{report:#?}");
}

/// The policy's body after its metadata.
fn spec(text: &str) -> &str {
    &text[text.find("spec:").expect("a spec")..]
}

#[test]
fn kube_dns_through_its_service_to_the_coredns_pods_keeps_the_pod_rule() {
    let mut coredns = Endpoint::new("10.0.9.1".parse().unwrap(), 53);
    coredns.identity = identity(PeerKind::Pod, "kube-system", ("Deployment", "coredns"));
    coredns.service = Some(ServiceRef {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        ip: "10.96.0.10".parse().unwrap(),
        port: 53,
        target_port: Some(53),
    });
    let records = [query(coredns)];
    let (proposal, networkpolicy, cilium, lines) = generate(&records, &[]);
    assert_eq!(
        spec(&networkpolicy),
        "spec:\n  egress:\n  - ports:\n    - port: 53\n      protocol: TCP\n    - port: 53\n      protocol: UDP\n    to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: kube-system\n      podSelector:\n        matchLabels:\n          app: coredns\n  podSelector:\n    matchLabels:\n      app: web\n  policyTypes:\n  - Ingress\n  - Egress\n"
    );
    assert_eq!(
        spec(&cilium),
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  egress:\n  - toEndpoints:\n    - matchLabels:\n        app: coredns\n        k8s:io.kubernetes.pod.namespace: kube-system\n    toPorts:\n    - ports:\n      - port: '53'\n        protocol: TCP\n      - port: '53'\n        protocol: UDP\n"
    );
    assert_eq!(
        lines,
        ["- `shop/Deployment/web`: DNS pods kube-system/Deployment/coredns"]
    );
    assert_nothing_denied(&proposal, &records);
}

#[test]
fn nodelocal_dnscache_revealed_by_its_daemon_set_on_its_address_and_the_untranslated_kube_dns_address()
 {
    let mut service = Endpoint::new("10.96.0.10".parse().unwrap(), 53);
    service.identity = identity(PeerKind::Service, "kube-system", ("Service", "kube-dns"));
    let records = [
        query(address("169.254.20.10", PeerKind::Host)),
        query(service),
    ];
    let (proposal, networkpolicy, cilium, lines) = generate(&records, &[]);
    assert_eq!(
        spec(&networkpolicy),
        "spec:\n  egress:\n  - ports:\n    - port: 53\n      protocol: TCP\n    - port: 53\n      protocol: UDP\n    to:\n    - ipBlock:\n        cidr: 10.96.0.10/32\n    - ipBlock:\n        cidr: 169.254.20.10/32\n  podSelector:\n    matchLabels:\n      app: web\n  policyTypes:\n  - Ingress\n  - Egress\n"
    );
    assert_eq!(
        spec(&cilium),
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  egress:\n  - toCIDR:\n    - 10.96.0.10/32\n    - 169.254.20.10/32\n    toPorts:\n    - ports:\n      - port: '53'\n        protocol: TCP\n      - port: '53'\n        protocol: UDP\n  - toEntities:\n    - host\n    toPorts:\n    - ports:\n      - port: '53'\n        protocol: TCP\n      - port: '53'\n        protocol: UDP\n"
    );
    assert_eq!(
        lines,
        [
            "- `shop/Deployment/web`: Service address 10.96.0.10 of kube-system/Service/kube-dns, answered on the node (DaemonSet kube-system/node-local-dns); node-local resolver 169.254.20.10 (DaemonSet kube-system/node-local-dns)"
        ]
    );
    // The Service end is no longer "not told apart".
    assert!(
        !proposal
            .notes
            .iter()
            .any(|note| format!("{note:?}").contains("backends were not told apart")),
        "{:?}",
        proposal.notes
    );
    assert_nothing_denied(&proposal, &records[..1]);
}

#[test]
fn aks_localdns_configured_by_address_and_an_unnamed_link_local_resolver() {
    let records = [
        query(address("169.254.10.11", PeerKind::World)),
        query(address("169.254.99.1", PeerKind::World)),
    ];
    let (proposal, networkpolicy, cilium, lines) = generate(&records, &["169.254.10.11"]);
    assert_eq!(
        spec(&networkpolicy),
        "spec:\n  egress:\n  - ports:\n    - port: 53\n      protocol: TCP\n    - port: 53\n      protocol: UDP\n    to:\n    - ipBlock:\n        cidr: 169.254.99.1/32\n    - ipBlock:\n        cidr: 169.254.10.11/32\n  podSelector:\n    matchLabels:\n      app: web\n  policyTypes:\n  - Ingress\n  - Egress\n"
    );
    assert_eq!(
        spec(&cilium),
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  egress:\n  - toCIDR:\n    - 169.254.99.1/32\n    - 169.254.10.11/32\n    toPorts:\n    - ports:\n      - port: '53'\n        protocol: TCP\n      - port: '53'\n        protocol: UDP\n  - toEntities:\n    - host\n    toPorts:\n    - ports:\n      - port: '53'\n        protocol: TCP\n      - port: '53'\n        protocol: UDP\n"
    );
    assert_eq!(
        lines,
        [
            "- `shop/Deployment/web`: link-local 169.254.99.1: looks like a node-local resolver that neither the inventory nor the configuration names; allowed by address, name it with --node-local-dns 169.254.99.1; node-local resolver 169.254.10.11 (--node-local-dns)"
        ]
    );
    assert_nothing_denied(&proposal, &records);
}

#[test]
fn local_ips_are_read_after_the_flag_in_both_spellings_and_bad_words_are_skipped() {
    let words =
        |words: &[&str]| -> Vec<String> { words.iter().map(|word| (*word).to_owned()).collect() };
    assert_eq!(
        local_ips(&words(&[
            "-localip",
            "169.254.20.10,10.96.0.10",
            "-conf",
            "x"
        ])),
        [
            "169.254.20.10".parse::<std::net::IpAddr>().unwrap(),
            "10.96.0.10".parse().unwrap()
        ]
    );
    assert_eq!(
        local_ips(&words(&["--localip=fd00::a, nonsense", "-localip"])),
        ["fd00::a".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        local_ips(&words(&["-conf", "169.254.20.10"])),
        Vec::<std::net::IpAddr>::new()
    );
}
