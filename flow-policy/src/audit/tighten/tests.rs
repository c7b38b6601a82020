//! The tightening of a hand-written policy set with known flaws, checked
//! rule by rule, as files, and by the evaluator over every pod pair.

use std::{collections::BTreeMap, path::PathBuf, time::SystemTime};

use flow_model::{
    identity::PeerKind,
    record::{Protocol, Timestamp},
};

use super::*;
use crate::{
    audit::{
        files::proposed_files,
        report::{Inputs, Proposal, markdown},
        rewrite::How,
        tests::{edge, workload},
    },
    evaluate::{Evaluator, Subject},
    graph::{Change, WorkloadInfo},
};

const WORLD: &str = "203.0.113.5";

/// Tenant a: `a/web`, `a/api`, `a/batch`; tenant b: `b/web`; the
/// platform's `kube-system/dns`. `a/web` calls `a/api` on TCP 8080 and
/// 8081, dns on UDP 53 and 203.0.113.5 on TCP 443; `a/batch` calls
/// `a/api` on TCP 9000, which the policies deny.
fn fixture() -> (Graph, ClusterView) {
    let mut graph = Graph::new();
    for (namespace, name, tenant) in [
        ("a", "web", "a"),
        ("a", "api", "a"),
        ("a", "batch", "a"),
        ("b", "web", "b"),
        ("kube-system", "dns", "b"),
    ] {
        graph.apply(Change::Workload {
            workload: workload(namespace, name),
            info: WorkloadInfo {
                tenant: Some(tenant.into()),
                labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
                last_seen: Timestamp(SystemTime::UNIX_EPOCH),
            },
        });
    }
    let web = || Party::Workload(workload("a", "web"));
    let api = || Party::Workload(workload("a", "api"));
    edge(&mut graph, web(), api(), 6, 8080);
    edge(&mut graph, web(), api(), 6, 8081);
    let dns = Party::Workload(workload("kube-system", "dns"));
    edge(&mut graph, web(), dns, 17, 53);
    let world = Party::Address {
        ip: WORLD.parse().unwrap(),
        kind: PeerKind::World,
    };
    edge(&mut graph, web(), world, 6, 443);
    edge(
        &mut graph,
        Party::Workload(workload("a", "batch")),
        api(),
        6,
        9000,
    );
    let mut cluster = ClusterView::new();
    cluster.add_graph(&graph);
    (graph, cluster)
}

/// The flaws: `namespaceSelector: {}` (api ingress[0]), a cross-tenant
/// allow never used (api ingress[1]), a rule without ports whose peers
/// used different ports (web egress[0], split), `0.0.0.0/0` (web
/// egress[1]), a rule never used that leaves batch without egress rules,
/// and batch → api TCP 9000 denied.
const FLAWED: &str = r#"# team a's policies, by hand
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api
  namespace: a
spec:
  podSelector:
    matchLabels:
      app: api
  policyTypes:
  - Ingress
  ingress:
  # every namespace may call the api
  - from:
    - namespaceSelector: {}
    ports:
    - port: 8080
    - port: 8081
  - from: # b's web, never seen
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: b
    ports:
    - port: 8080
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: a
spec:
  podSelector:
    matchLabels:
      app: web
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: api
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}] # the world
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: batch, namespace: a}
spec:
  podSelector:
    matchLabels:
      app: batch
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: 80
"#;

/// FLAWED tightened: comments, key order and untouched rules as they were.
const TIGHTENED: &str = r#"# team a's policies, by hand
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api
  namespace: a
spec:
  podSelector:
    matchLabels:
      app: api
  policyTypes:
  - Ingress
  ingress:
  # every namespace may call the api
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: 8080
    - port: 8081
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: a
spec:
  podSelector:
    matchLabels:
      app: web
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: api
    ports:
    - port: 8080
      protocol: TCP
    - port: 8081
      protocol: TCP
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
    ports:
    - port: 53
      protocol: UDP
  - to: [{ipBlock: {cidr: 203.0.113.5/32}}] # the world
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: batch, namespace: a}
spec:
  podSelector:
    matchLabels:
      app: batch
  policyTypes: [Ingress, Egress]
  egress: []
"#;

fn loaded(yaml: &str) -> Vec<LoadedPolicy> {
    let mut loaded = crate::load::read_text(&PathBuf::from("p.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    for policy in &mut loaded.policies {
        policy.file = PathBuf::from("p.yaml");
    }
    loaded.policies
}

fn run(yaml: &str) -> (Tightening, Graph, ClusterView) {
    let (graph, mut cluster) = fixture();
    let tightening = tighten(&loaded(yaml), &graph, &mut cluster);
    (tightening, graph, cluster)
}

fn report(tightening: &Tightening, files: &[(String, How)]) -> String {
    let inputs = Inputs {
        judged_against: "the fixture",
        errors: &[],
        skipped: &[],
        proposal: Some(Proposal {
            tightening,
            files,
            output_dir: Some("out"),
        }),
    };
    let text = markdown(&super::super::Audit::default(), &inputs);
    text[text.find("## Tightening").unwrap()..].to_owned()
}

#[test]
fn each_flaw_is_tightened_rule_by_rule() {
    let (tightening, _, _) = run(FLAWED);
    let files = vec![("p.yaml".to_owned(), How::InPlace)];
    assert_eq!(
        report(&tightening, &files),
        "## Tightening

The smallest change that keeps every observed connection the policies allow and removes every allowance none used: 3 of 3 policies change, in 1 files (1 rewritten in place, 0 proposed whole).
The changed files are written under `out` at their relative paths, each with a `.diff`; unchanged files are not written.

## Tightened files

| file | written |
| --- | --- |
| p.yaml | in place: only the changed rules rewritten |

## Tightened rules

| rule | change |
| --- | --- |
| `a/api ingress[0]` | from `[{namespaceSelector: {}}]` → `[{podSelector: {matchLabels: {app: web}}}]` |
| `a/api ingress[1]` | removed: no observed connection used it |
| `a/web egress[0]` | split in 2: 1) to `[{podSelector: {matchLabels: {app: api}}}, {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]` → `[{podSelector: {matchLabels: {app: api}}}]`; ports every port → `[{port: 8080, protocol: TCP}, {port: 8081, protocol: TCP}]`; 2) to `[{podSelector: {matchLabels: {app: api}}}, {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]` → `[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]`; ports every port → `[{port: 53, protocol: UDP}]` |
| `a/web egress[1]` | to `[{ipBlock: {cidr: 0.0.0.0/0}}]` → `[{ipBlock: {cidr: 203.0.113.5/32}}]` |
| `a/batch egress[0]` | removed: no observed connection used it |

## Policies that keep isolating with no rule left (`policyTypes` written)

- `a/batch`: `policyTypes: [Ingress, Egress]`

A policy that selects several workloads keeps the union of what they used.
"
    );
}

#[test]
fn the_rewrite_keeps_comments_key_order_and_untouched_rules() {
    let (tightening, _, _) = run(FLAWED);
    let policies: Vec<&PolicyTightening> = tightening.policies.iter().collect();
    let rewritten =
        crate::audit::rewrite::rewrite_file(&PathBuf::from("p.yaml"), FLAWED, &policies);
    assert_eq!(rewritten.how, How::InPlace);
    assert_eq!(rewritten.text, TIGHTENED);
}

#[test]
fn the_diff_of_a_tightened_file_is_exact() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("p.yaml");
    std::fs::write(&file, FLAWED).unwrap();
    let (graph, mut cluster) = fixture();
    let mut policies = loaded(FLAWED);
    for policy in &mut policies {
        policy.file = file.clone();
    }
    let tightening = tighten(&policies, &graph, &mut cluster);
    let files = proposed_files(directory.path(), &tightening);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].relative, "p.yaml");
    assert_eq!(files[0].rewritten.text, TIGHTENED);
    assert_eq!(
        files[0].diff,
        r#"--- a/p.yaml
+++ b/p.yaml
@@ -13,16 +13,12 @@
   ingress:
   # every namespace may call the api
   - from:
-    - namespaceSelector: {}
-    ports:
-    - port: 8080
-    - port: 8081
-  - from: # b's web, never seen
-    - namespaceSelector:
+    - podSelector:
         matchLabels:
-          kubernetes.io/metadata.name: b
+          app: web
     ports:
     - port: 8080
+    - port: 8081
 ---
 apiVersion: networking.k8s.io/v1
 kind: NetworkPolicy
@@ -38,10 +34,19 @@
     - podSelector:
         matchLabels:
           app: api
+    ports:
+    - port: 8080
+      protocol: TCP
+    - port: 8081
+      protocol: TCP
+  - to:
     - namespaceSelector:
         matchLabels:
           kubernetes.io/metadata.name: kube-system
-  - to: [{ipBlock: {cidr: 0.0.0.0/0}}] # the world
+    ports:
+    - port: 53
+      protocol: UDP
+  - to: [{ipBlock: {cidr: 203.0.113.5/32}}] # the world
     ports: [{port: 443}]
 ---
 apiVersion: networking.k8s.io/v1
@@ -51,10 +56,5 @@
   podSelector:
     matchLabels:
       app: batch
-  egress:
-  - to:
-    - podSelector:
-        matchLabels:
-          app: web
-    ports:
-    - port: 80
+  policyTypes: [Ingress, Egress]
+  egress: []
"#
    );
}

/// Observed ports per (client workload, server workload).
fn observed_reach(graph: &Graph) -> BTreeMap<(WorkloadRef, WorkloadRef), Reach> {
    let mut observed: BTreeMap<(WorkloadRef, WorkloadRef), Reach> = BTreeMap::new();
    for (key, _) in graph.edges() {
        if let (Party::Workload(client), Party::Workload(server)) = (&key.client, &key.server) {
            let index = PROTOCOLS.iter().position(|p| *p == key.protocol).unwrap();
            let reach = observed
                .entry((client.clone(), server.clone()))
                .or_default();
            reach.0[index] = reach.0[index].union(&PortSet::single(key.port));
        }
    }
    observed
}

#[test]
fn the_tightened_set_allows_exactly_the_observed_connections_the_originals_allowed() {
    let (tightening, graph, cluster) = run(FLAWED);
    let before: Vec<NetworkPolicy> = tightening
        .policies
        .iter()
        .map(|policy| policy.original.clone())
        .collect();
    let after: Vec<NetworkPolicy> = tightening
        .policies
        .iter()
        .map(|policy| policy.tightened.clone())
        .collect();
    let (before, after) = (
        Evaluator::new(&cluster, &before),
        Evaluator::new(&cluster, &after),
    );
    let observed = observed_reach(&graph);
    let (mut pairs, mut restricted) = (0, 0);
    for source in cluster.pods() {
        for destination in cluster.pods() {
            if std::ptr::eq(source, destination) {
                continue;
            }
            let seen = observed
                .get(&(source.workload.clone(), destination.workload.clone()))
                .cloned()
                .unwrap_or_default();
            let allowed = before.reach(source, destination);
            let now = after.reach(source, destination);
            // Pairs no policy restricts stay open: a policy cannot close them.
            let expected = if allowed == Reach::all() && now == Reach::all() {
                allowed
            } else {
                restricted += 1;
                allowed.zip(&seen, PortSet::intersection)
            };
            assert_eq!(
                now, expected,
                "{} -> {}",
                source.workload, destination.workload
            );
            pairs += 1;
        }
    }
    assert_eq!((pairs, restricted), (20, 16));
    // batch → api TCP 9000 was denied and stays denied; web reaches the
    // world's address it used, and no other.
    let web = cluster.pod("a", "(web)").unwrap();
    let address = |ip: &str| Subject::Address {
        ip: ip.parse().unwrap(),
        resident_node: false,
        kind: flow_model::identity::PeerKind::World,
        names: &[],
    };
    let tcp = Protocol(6);
    assert!(
        after
            .check(Subject::Pod(web), address(WORLD), tcp, 443)
            .allowed()
    );
    assert!(
        before
            .check(Subject::Pod(web), address("198.51.100.1"), tcp, 443)
            .allowed()
    );
    assert!(
        !after
            .check(Subject::Pod(web), address("198.51.100.1"), tcp, 443)
            .allowed()
    );
}

#[test]
fn flow_style_rule_lists_and_anchors_are_proposed_whole() {
    let flow = FLAWED.replace(
        "  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          app: web\n    ports:\n    - port: 80\n",
        "  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]\n",
    );
    assert_ne!(flow, FLAWED);
    let (tightening, _, _) = run(&flow);
    let policies: Vec<&PolicyTightening> = tightening.policies.iter().collect();
    let rewritten = crate::audit::rewrite::rewrite_file(&PathBuf::from("p.yaml"), &flow, &policies);
    assert_eq!(
        rewritten.how,
        How::Whole("a/batch: `egress` is written in flow style".to_owned())
    );
    assert!(rewritten.text.starts_with(
        "# Proposed whole by `policy audit`: the original could not be rewritten in place.\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: api\n  namespace: a\nspec:\n  podSelector:\n    matchLabels:\n      app: api\n  policyTypes:\n  - Ingress\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: web\n    ports:\n    - port: 8080\n    - port: 8081\n---\n"
    ), "{}", rewritten.text);
    // What is proposed whole reads back as the tightened policies.
    let read = crate::load::read_text(&PathBuf::from("p.yaml"), &rewritten.text);
    let read: Vec<NetworkPolicy> = read
        .policies
        .into_iter()
        .map(|loaded| loaded.policy)
        .collect();
    let intended: Vec<NetworkPolicy> = tightening
        .policies
        .iter()
        .map(|policy| policy.tightened.clone())
        .collect();
    assert_eq!(read, intended);

    let anchored = FLAWED.replace(
        "    ports:\n    - port: 80\n",
        "    ports: &web\n    - port: 80\n",
    );
    let (tightening, _, _) = run(&anchored);
    let policies: Vec<&PolicyTightening> = tightening.policies.iter().collect();
    let rewritten =
        crate::audit::rewrite::rewrite_file(&PathBuf::from("p.yaml"), &anchored, &policies);
    assert_eq!(
        rewritten.how,
        How::Whole("it uses anchors or aliases".to_owned())
    );
}

#[test]
fn policies_already_tight_are_left_alone() {
    let (tightening, _, _) = run(TIGHTENED);
    assert!(tightening.policies.iter().all(|policy| !policy.changed()));
    assert!(
        tightening
            .policies
            .iter()
            .all(|policy| policy.original == policy.tightened)
    );
}
