//! The direct writer against the serializer: the same bytes for every kind
//! of document, and the serializer's own output wherever a string is odd.

use std::{collections::BTreeMap, sync::Arc};

use super::{
    super::{
        GenerateOptions, PeerSpec, PolicyFormat, PortSpec, RuleSpec, WorkloadPolicy, deny_yaml,
        policy_yaml, propose, render, serialized_deny, serialized_policy, to_yaml,
    },
    *,
};
use crate::{
    cluster::Selection,
    graph::WorkloadRef,
    synthetic::{Shape, generate},
};

/// Strings the serializer quotes, escapes, folds or reads as something
/// else, and some it writes plain that look as if it might not.
const ODD: [&str; 64] = [
    "",
    " ",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Yes",
    "true",
    "True",
    "TRUE",
    "false",
    "null",
    "Null",
    "~",
    "1",
    "0",
    "-1",
    "+1",
    "1.0",
    "1e3",
    "1E3",
    ".5",
    "0x1F",
    "0o17",
    "0b101",
    "0123",
    "1_000",
    "1:20",
    "inf",
    "nan",
    ".inf",
    "-.inf",
    ".nan",
    "NaN",
    "Infinity",
    ":",
    "a:",
    ":a",
    "a:b",
    "#",
    "a #b",
    "a#b",
    "-",
    "- a",
    "-a",
    "a b",
    "a\nb",
    "'",
    "\"",
    "@x",
    "`x",
    "%x",
    "!x",
    "&x",
    "*x",
    "?x",
    "[x]",
    "{x}",
    "a,b",
    "ünïcødé",
    "10.0.0.1/32",
    "2001:db8::1/128",
];

fn workload(namespace: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: namespace.to_owned(),
        kind: "Deployment".to_owned(),
        name: name.to_owned(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn pods(namespace: &str, pairs: &[(&str, &str)]) -> PeerSpec {
    PeerSpec::Pods {
        namespace: namespace.into(),
        labels: Arc::new(labels(pairs)),
    }
}

fn port(protocol: u8, port: u16, end_port: Option<u16>) -> PortSpec {
    PortSpec {
        protocol: Protocol(protocol),
        port,
        end_port,
    }
}

fn policy(
    namespace: &str,
    selector: &[(&str, &str)],
    ingress: Vec<RuleSpec>,
    egress: Vec<RuleSpec>,
) -> WorkloadPolicy {
    WorkloadPolicy {
        workload: workload(namespace, "web"),
        name: "allow-deployment-web".to_owned(),
        selection: Selection {
            labels: labels(selector),
            also_selects: Vec::new(),
        },
        ingress,
        egress,
    }
}

/// Every kind of peer, port and rule the generator makes, and some it
/// never makes (empty lists, unnamed protocols).
fn every_shape() -> Vec<WorkloadPolicy> {
    let every_peer = vec![
        pods("shop", &[("app", "api")]),
        pods("data", &[("app", "db"), ("tier", "back")]),
        pods("shop", &[]),
        PeerSpec::Cidr("203.0.113.9/32".to_owned()),
        PeerSpec::Cidr("2001:db8::1/128".to_owned()),
        PeerSpec::Entity {
            entity: "kube-apiserver".to_owned(),
            cidr: "20.1.2.3/32".to_owned(),
        },
        PeerSpec::Entity {
            entity: "host".to_owned(),
            cidr: "10.224.0.4/32".to_owned(),
        },
        PeerSpec::Entity {
            entity: "host".to_owned(),
            cidr: "10.224.0.5/32".to_owned(),
        },
    ];
    let every_port = vec![
        port(6, 53, None),
        port(17, 53, None),
        port(132, 9000, None),
        port(6, 8000, Some(8002)),
        port(6, 65535, None),
    ];
    let rule = |peers: Vec<PeerSpec>, ports: Vec<PortSpec>| RuleSpec { peers, ports };
    vec![
        policy("shop", &[("app", "web")], Vec::new(), Vec::new()),
        policy("shop", &[], Vec::new(), Vec::new()),
        policy(
            "shop",
            &[("app", "web"), ("tier", "front")],
            vec![rule(every_peer.clone(), every_port.clone())],
            vec![rule(every_peer.clone(), every_port.clone())],
        ),
        policy(
            "shop",
            &[("app", "web")],
            vec![
                rule(vec![pods("shop", &[("app", "a")])], vec![port(6, 80, None)]),
                rule(
                    vec![PeerSpec::Cidr("198.51.100.1/32".to_owned())],
                    vec![port(17, 8125, None)],
                ),
            ],
            Vec::new(),
        ),
        policy(
            "shop",
            &[("app", "web")],
            Vec::new(),
            vec![rule(
                vec![pods("kube-system", &[("k8s-app", "kube-dns")])],
                every_port,
            )],
        ),
        // Never generated, written the serializer's way all the same.
        policy(
            "shop",
            &[("app", "web")],
            vec![rule(Vec::new(), Vec::new())],
            vec![rule(every_peer.clone(), Vec::new())],
        ),
        policy(
            "shop",
            &[("app", "web")],
            Vec::new(),
            vec![rule(every_peer, vec![port(99, 7, None)])],
        ),
        // A selector that already has Cilium's namespace label.
        policy(
            "shop",
            &[("app", "web")],
            vec![rule(
                vec![pods(
                    "shop",
                    &[
                        ("app", "a"),
                        (CILIUM_NAMESPACE_LABEL, "elsewhere"),
                        ("zone", "z"),
                    ],
                )],
                vec![port(6, 80, None)],
            )],
            Vec::new(),
        ),
    ]
}

/// The same policy with `odd` in each place a string goes.
fn with_odd_string(odd: &str) -> Vec<WorkloadPolicy> {
    let rule = |peer: PeerSpec| RuleSpec {
        peers: vec![peer],
        ports: vec![port(6, 80, None)],
    };
    let mut named = policy("shop", &[("app", "web")], Vec::new(), Vec::new());
    named.name = odd.to_owned();
    named.workload.namespace = odd.to_owned();
    vec![
        named,
        policy("shop", &[(odd, "web")], Vec::new(), Vec::new()),
        policy("shop", &[("app", odd)], Vec::new(), Vec::new()),
        policy(
            "shop",
            &[("app", "web")],
            vec![rule(pods(odd, &[("app", "a")]))],
            Vec::new(),
        ),
        policy(
            "shop",
            &[("app", "web")],
            Vec::new(),
            vec![rule(pods("shop", &[(odd, odd)]))],
        ),
        policy(
            "shop",
            &[("app", "web")],
            vec![rule(PeerSpec::Cidr(odd.to_owned()))],
            Vec::new(),
        ),
        policy(
            "shop",
            &[("app", "web")],
            Vec::new(),
            vec![rule(PeerSpec::Entity {
                entity: odd.to_owned(),
                cidr: odd.to_owned(),
            })],
        ),
    ]
}

/// In both formats, asserts that the writer's text (where it takes the
/// document on) and the render's (directly or through the serializer) are
/// the serializer's bytes. Returns how many the writer took on.
fn assert_formats_as_serialized(
    what: &dyn std::fmt::Debug,
    serialized: impl Fn(PolicyFormat) -> String,
    write: impl Fn(PolicyFormat, &mut String) -> bool,
    render: impl Fn(PolicyFormat, &mut String) -> String,
) -> usize {
    let (mut text, mut scratch) = (String::new(), String::new());
    let mut direct = 0;
    for format in [PolicyFormat::Networkpolicy, PolicyFormat::Cilium] {
        let expected = serialized(format);
        if write(format, &mut text) {
            assert_eq!(text, expected, "{what:#?}");
            direct += 1;
        }
        assert_eq!(render(format, &mut scratch), expected, "{what:#?}");
    }
    direct
}

/// [`assert_formats_as_serialized`] for a workload's policy.
fn assert_written_as_serialized(policy: &WorkloadPolicy) -> usize {
    assert_formats_as_serialized(
        policy,
        |format| serialized_policy(policy, format),
        |format, text| match format {
            PolicyFormat::Networkpolicy => network_policy(text, policy),
            PolicyFormat::Cilium => cilium_policy(text, policy),
        },
        |format, scratch| policy_yaml(policy, format, scratch),
    )
}

/// [`assert_formats_as_serialized`] for a namespace's default deny.
fn assert_deny_written_as_serialized(namespace: &str) -> usize {
    assert_formats_as_serialized(
        &namespace,
        |format| serialized_deny(namespace, format),
        |format, text| match format {
            PolicyFormat::Networkpolicy => default_deny(text, namespace),
            PolicyFormat::Cilium => cilium_default_deny(text, namespace),
        },
        |format, scratch| deny_yaml(namespace, format, scratch),
    )
}

#[test]
fn every_kind_of_document_is_written_byte_for_byte_as_the_serializer_writes_it() {
    let shapes = every_shape();
    let direct: Vec<usize> = shapes.iter().map(assert_written_as_serialized).collect();
    // Only the unnamed protocol (`99`, quoted) is left to the serializer.
    assert_eq!(direct, [2, 2, 2, 2, 2, 2, 0, 2]);
    assert_eq!(assert_deny_written_as_serialized("shop"), 2);
}

#[test]
fn documents_with_odd_strings_are_the_serializers_own() {
    let mut direct = 0;
    for odd in ODD {
        for policy in with_odd_string(odd) {
            direct += assert_written_as_serialized(&policy);
        }
        direct += assert_deny_written_as_serialized(odd);
    }
    // Written directly: the documents of the odd strings that are plain
    // (`yes`, `inf`, `1_000`, `a:b`, addresses...), checked above to be
    // byte-identical, counted here so that a change in coverage shows.
    let plain = ODD.iter().filter(|odd| is_plain(odd)).count();
    assert_eq!(plain, 16);
    assert_eq!(direct, plain * (7 + 1) * 2);
}

#[test]
fn long_label_keys_fall_back_where_libyaml_writes_complex_keys() {
    let at_limit = "k".repeat(SIMPLE_KEY_MAX);
    let over = "k".repeat(SIMPLE_KEY_MAX + 1);
    let long_value = "v".repeat(300);
    assert!(is_plain(&at_limit) && !is_plain(&over) && !is_plain(&long_value));
    for (key, value, direct) in [
        (at_limit.as_str(), "x", 2),
        (over.as_str(), "x", 0),
        ("app", long_value.as_str(), 0),
    ] {
        let policy = policy("shop", &[(key, value)], Vec::new(), Vec::new());
        assert_eq!(assert_written_as_serialized(&policy), direct);
    }
    // Over the limit the serializer writes a `? key` entry.
    let over_policy = policy("shop", &[(over.as_str(), "x")], Vec::new(), Vec::new());
    assert!(to_yaml(&super::super::network_policy(&over_policy)).contains(&format!("? {over}\n")));
}

/// Every string of up to three characters from an alphabet of numbers'
/// characters, keywords' letters and YAML indicators.
fn short_strings() -> Vec<String> {
    let alphabet: Vec<char> = "019abefnoxyzTN.-_/:~ #'\",[]{}!&*?|>%@`".chars().collect();
    let mut strings = vec![String::new()];
    let mut last = vec![String::new()];
    for _ in 0..3 {
        last = last
            .iter()
            .flat_map(|prefix| alphabet.iter().map(move |c| format!("{prefix}{c}")))
            .collect();
        strings.extend(last.iter().cloned());
    }
    strings
}

#[test]
fn what_counts_as_plain_the_serializer_writes_plain_as_key_and_value() {
    let strings = short_strings();
    let mut plain = 0;
    for text in strings.iter().map(String::as_str).chain(ODD).chain([
        "k8s:io.kubernetes.pod.namespace",
        "app.kubernetes.io/managed-by",
    ]) {
        if !is_plain(text) {
            continue;
        }
        plain += 1;
        assert_eq!(yaml_serde::to_string(text).unwrap(), format!("{text}\n"));
        let mapping = BTreeMap::from([(text, text)]);
        assert_eq!(
            yaml_serde::to_string(&mapping).unwrap(),
            format!("{text}: {text}\n")
        );
    }
    assert_eq!(plain, 4_673);
    for (text, expected) in [
        ("yes", true),
        ("y", true),
        ("inf", true),
        ("1:20", true),
        ("10.0.0.1/32", true),
        ("2001:db8::1/128", true),
        ("k8s:io.kubernetes.pod.namespace", true),
        ("", false),
        ("true", false),
        ("1.0", false),
        ("0x1F", false),
        ("a:", false),
        ("a b", false),
        ("ünïcødé", false),
        // Plain for the serializer too, but left to it: looks like a number.
        ("10.0.0.1", false),
    ] {
        assert_eq!(is_plain(text), expected, "{text:?}");
    }
}

#[test]
fn rendered_proposals_are_the_serializers_bytes_in_both_formats() {
    let synthetic = generate(Shape {
        tenants: 3,
        namespaces: 2,
        workloads: 8,
        edges_per_workload: 6,
        seed: 7,
    });
    for format in [PolicyFormat::Networkpolicy, PolicyFormat::Cilium] {
        let options = GenerateOptions {
            format,
            allow_cross_tenant: true,
            ..GenerateOptions::default()
        };
        let proposal = propose(&synthetic.graph, &synthetic.cluster, &options);
        let files = render(&proposal, format);
        assert_eq!(files.len(), 6 + 48 + 1);
        let mut text = String::new();
        for namespace in &proposal.namespaces {
            let expected = serialized_deny(namespace, format);
            assert_eq!(files[&format!("{namespace}.default-deny.yaml")], expected);
        }
        for policy in &proposal.policies {
            let expected = serialized_policy(policy, format);
            let direct = match format {
                PolicyFormat::Networkpolicy => network_policy(&mut text, policy),
                PolicyFormat::Cilium => cilium_policy(&mut text, policy),
            };
            // Generated names and labels never need the serializer.
            assert!(direct, "{}", policy.name);
            let name = format!("{}.{}.yaml", policy.workload.namespace, policy.name);
            assert_eq!(files[&name], expected, "{name}");
        }
    }
}

#[test]
fn documents_carry_the_hash_of_their_content_without_it() {
    let mut text = String::new();
    assert!(default_deny(&mut text, "shop"));
    // `sha256sum` of the same document without the annotation's two lines.
    assert_eq!(
        text,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  annotations:\n    flow-agent.io/content-hash: sha256:db05f8eaf8bf29c06393bd1bd3698338b005ed40841f97d8bb145aae01237e3a\n  labels:\n    app.kubernetes.io/managed-by: flow-agent\n  name: default-deny\n  namespace: shop\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n  - Egress\n"
    );
    let mut scratch = String::new();
    for format in [PolicyFormat::Networkpolicy, PolicyFormat::Cilium] {
        assert_eq!(
            content_hash::check(&deny_yaml("shop", format, &mut scratch)),
            content_hash::Seal::Intact
        );
        for policy in every_shape() {
            // The serializer's documents too.
            let text = policy_yaml(&policy, format, &mut scratch);
            assert_eq!(
                content_hash::check(&text),
                content_hash::Seal::Intact,
                "{text}"
            );
        }
    }
}
