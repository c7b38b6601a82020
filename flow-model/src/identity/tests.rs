//! Identity cache tests. Objects are written as the YAML `kubectl get -o yaml`
//! prints and go through the inventory parser and the model conversion: the same
//! path as objects from the API server's watches.

use std::time::{Duration, SystemTime};

use super::*;
use crate::identity::inventory;

const T0: u64 = 1_800_000_000;

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + seconds)
}

fn rfc3339(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(at(seconds)).to_string()
}

fn config() -> IdentityConfig {
    IdentityConfig {
        tenant_label: "tenant".to_owned(),
        node_name: "node-a".to_owned(),
        local_addresses: vec!["192.168.0.10".parse().unwrap()],
        grace: Duration::from_secs(60),
        platform_namespaces: platform_namespaces([]),
    }
}

fn load(cache: &mut IdentityCache, yaml: &str, now: SystemTime) {
    let inventory = inventory::parse(yaml, "test.yaml");
    assert!(inventory.errors.is_empty(), "{:?}", inventory.errors);
    for object in inventory.objects {
        cache.apply(CacheEvent::Apply(object), now);
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn pod_yaml(
    namespace: &str,
    name: &str,
    uid: &str,
    ip: &str,
    started: u64,
    extra_meta: &str,
) -> String {
    format!(
        "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  uid: {uid}
{extra_meta}
spec:
  nodeName: node-a
  containers: [{{name: main, image: app}}]
status:
  phase: Running
  startTime: \"{started}\"
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
",
        started = rfc3339(started)
    )
}

const NAMESPACES: &str = "
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop-a, labels: {tenant: acme, kubernetes.io/metadata.name: shop-a}}
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop-b, labels: {tenant: globex}}
- apiVersion: v1
  kind: Namespace
  metadata: {name: tools}
";

const DEPLOYMENT: &str = "
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend, namespace: shop-a}
spec:
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend, tier: web}}
    spec: {containers: [{name: main, image: app}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: frontend-5d8f9c
  namespace: shop-a
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: frontend, uid: d1, controller: true}]
spec:
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend, tier: web, pod-template-hash: 5d8f9c}}
    spec: {containers: [{name: main, image: app}]}
";

#[test]
fn pod_resolves_through_its_replica_set_to_the_deployment() {
    let mut cache = IdentityCache::new(config());
    load(&mut cache, NAMESPACES, at(0));
    load(&mut cache, DEPLOYMENT, at(0));
    load(
        &mut cache,
        &pod_yaml(
            "shop-a",
            "frontend-5d8f9c-x7k2p",
            "u1",
            "10.1.0.2",
            10,
            "  labels: {app: frontend, tier: web, pod-template-hash: 5d8f9c}\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: frontend-5d8f9c, uid: r1, controller: true}]",
        ),
        at(10),
    );
    let identity = cache.identify(ip("10.1.0.2"), at(20));
    assert_eq!(identity.kind, Some(PeerKind::Pod));
    assert_eq!(identity.namespace.as_deref(), Some("shop-a"));
    assert_eq!(identity.pod.as_deref(), Some("frontend-5d8f9c-x7k2p"));
    assert_eq!(
        identity.workload,
        Some(Workload {
            kind: "Deployment".into(),
            name: "frontend".into()
        })
    );
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    assert_eq!(identity.node.as_deref(), Some("node-a"));
    // The Deployment's template labels: no pod-template-hash.
    assert_eq!(
        identity.labels,
        BTreeMap::from([
            ("app".into(), "frontend".into()),
            ("tier".into(), "web".into())
        ])
    );
}

#[test]
fn unknown_replica_set_is_read_as_its_deployment_by_the_pod_template_hash() {
    let mut cache = IdentityCache::new(config());
    load(
        &mut cache,
        &pod_yaml(
            "shop-a",
            "cart-7c9f-abcde",
            "u1",
            "10.1.0.3",
            0,
            "  labels: {app: cart, pod-template-hash: 7c9f}\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cart-7c9f, uid: r1, controller: true}]",
        ),
        at(0),
    );
    let identity = cache.identify(ip("10.1.0.3"), at(1));
    assert_eq!(
        identity.workload,
        Some(Workload {
            kind: "Deployment".into(),
            name: "cart".into()
        })
    );
    assert_eq!(
        identity.labels,
        BTreeMap::from([("app".into(), "cart".into())])
    );
    // No namespace object: the namespace is its own tenant.
    assert_eq!(identity.tenant.as_deref(), Some("shop-a"));
}

#[test]
fn statefulset_daemonset_cronjob_and_bare_pods_name_their_workload_without_churn_labels() {
    let mut cache = IdentityCache::new(config());
    load(
        &mut cache,
        "
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: tools}
spec:
  schedule: '@hourly'
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: report}}
        spec: {containers: [{name: main, image: app}], restartPolicy: Never}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: report-2900000
  namespace: tools
  ownerReferences: [{apiVersion: batch/v1, kind: CronJob, name: report, uid: c1, controller: true}]
spec:
  template:
    metadata: {labels: {app: report, job-name: report-2900000, batch.kubernetes.io/controller-uid: j1}}
    spec: {containers: [{name: main, image: app}], restartPolicy: Never}
",
        at(0),
    );
    let pods = [
        (
            "db-0",
            "10.1.0.4",
            "  labels: {app: db, controller-revision-hash: db-6d4, statefulset.kubernetes.io/pod-name: db-0, apps.kubernetes.io/pod-index: '0'}\n  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: s1, controller: true}]",
        ),
        (
            "agent-x1",
            "10.1.0.5",
            "  labels: {app: agent, controller-revision-hash: '77', pod-template-generation: '3'}\n  ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: ds1, controller: true}]",
        ),
        (
            "report-2900000-qq",
            "10.1.0.6",
            "  labels: {app: report, job-name: report-2900000, batch.kubernetes.io/job-name: report-2900000, controller-uid: j1}\n  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: report-2900000, uid: j1, controller: true}]",
        ),
        ("debug", "10.1.0.7", "  labels: {run: debug}"),
        // Its Job already deleted (concurrencyPolicy: Replace) or not listed
        // yet: the CronJob is found by the Job's name.
        (
            "report-29610000-zz",
            "10.1.0.8",
            "  labels: {app: report, job-name: report-29610000}\n  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: report-29610000, uid: j2, controller: true}]",
        ),
        // A Job of no known CronJob stays a Job.
        (
            "migrate-20261127-aa",
            "10.1.0.9",
            "  labels: {app: migrate}\n  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: migrate-20261127, uid: j3, controller: true}]",
        ),
    ];
    for (index, (name, address, meta)) in pods.iter().enumerate() {
        load(
            &mut cache,
            &pod_yaml("tools", name, &format!("u{index}"), address, 0, meta),
            at(0),
        );
    }
    let workload = |address| {
        let identity = cache.identify(ip(address), at(1));
        let Workload { kind, name } = identity.workload.unwrap();
        (kind, name, identity.labels)
    };
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        workload("10.1.0.4"),
        ("StatefulSet".into(), "db".into(), labels(&[("app", "db")]))
    );
    assert_eq!(
        workload("10.1.0.5"),
        (
            "DaemonSet".into(),
            "agent".into(),
            labels(&[("app", "agent")])
        )
    );
    assert_eq!(
        workload("10.1.0.6"),
        (
            "CronJob".into(),
            "report".into(),
            labels(&[("app", "report")])
        )
    );
    assert_eq!(
        workload("10.1.0.7"),
        ("Pod".into(), "debug".into(), labels(&[("run", "debug")]))
    );
    assert_eq!(
        workload("10.1.0.8"),
        (
            "CronJob".into(),
            "report".into(),
            labels(&[("app", "report")])
        )
    );
    assert_eq!(
        workload("10.1.0.9"),
        (
            "Job".into(),
            "migrate-20261127".into(),
            labels(&[("app", "migrate")])
        )
    );
}

#[test]
fn tenant_comes_from_a_configurable_namespace_label() {
    let mut cache = IdentityCache::new(config());
    load(&mut cache, NAMESPACES, at(0));
    assert_eq!(cache.tenant("shop-a"), "acme");
    assert_eq!(cache.tenant("shop-b"), "globex");
    assert_eq!(cache.tenant("tools"), "tools");
    assert_eq!(cache.tenant("unknown"), "unknown");
    let mut cache = IdentityCache::new(IdentityConfig {
        tenant_label: "kubernetes.io/metadata.name".to_owned(),
        ..config()
    });
    load(&mut cache, NAMESPACES, at(0));
    assert_eq!(cache.tenant("shop-a"), "shop-a");
}

#[test]
fn a_deleted_namespace_and_owner_keep_naming_their_pods_for_the_grace_period() {
    let mut cache = IdentityCache::new(config());
    load(&mut cache, NAMESPACES, at(0));
    load(&mut cache, DEPLOYMENT, at(0));
    load(
        &mut cache,
        &pod_yaml(
            "shop-a",
            "frontend-5d8f9c-x7k2p",
            "u1",
            "10.1.0.2",
            0,
            "  labels: {app: frontend, tier: web, pod-template-hash: 5d8f9c}\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: frontend-5d8f9c, uid: r1, controller: true}]",
        ),
        at(0),
    );
    // The whole namespace goes: pod, ReplicaSet, Deployment, namespace.
    let delete = |cache: &mut IdentityCache, kind, namespace: &str, name: &str| {
        cache.apply(
            CacheEvent::Delete(ObjectKey {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            }),
            at(100),
        );
    };
    delete(
        &mut cache,
        ObjectKind::Pod,
        "shop-a",
        "frontend-5d8f9c-x7k2p",
    );
    delete(
        &mut cache,
        ObjectKind::ReplicaSet,
        "shop-a",
        "frontend-5d8f9c",
    );
    delete(&mut cache, ObjectKind::Deployment, "shop-a", "frontend");
    delete(&mut cache, ObjectKind::Namespace, "", "shop-a");
    // A flow of the pod's last seconds, drained after all that.
    let identity = cache.identify(ip("10.1.0.2"), at(99));
    assert_eq!(
        identity.workload,
        Some(Workload {
            kind: "Deployment".into(),
            name: "frontend".into()
        })
    );
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    // A relist that no longer has them does not cut the grace short.
    cache.apply(CacheEvent::ResyncStart(ObjectKind::Namespace), at(110));
    cache.apply(CacheEvent::ResyncDone(ObjectKind::Namespace), at(110));
    assert_eq!(cache.tenant("shop-a"), "acme");
    // After the grace period they are gone.
    cache.evict(at(100 + 61));
    assert_eq!(cache.tenant("shop-a"), "shop-a");
    assert_eq!(cache.stats().namespaces, 2);
}

#[test]
fn a_pod_deleted_and_applied_again_holds_its_address_again() {
    let mut cache = IdentityCache::new(config());
    let yaml = pod_yaml("shop-a", "web", "u-web", "10.1.0.7", 0, "");
    load(&mut cache, &yaml, at(0));
    cache.apply(
        CacheEvent::Delete(ObjectKey {
            kind: ObjectKind::Pod,
            namespace: "shop-a".into(),
            name: "web".into(),
        }),
        at(10),
    );
    // Back within the grace period (same UID): a relist, or an inventory
    // file read while it was being rewritten.
    load(&mut cache, &yaml, at(20));
    let pod = |cache: &IdentityCache, t| cache.identify(ip("10.1.0.7"), at(t)).pod;
    assert_eq!(pod(&cache, 15).as_deref(), Some("web"));
    assert_eq!(pod(&cache, 500).as_deref(), Some("web"));
    // And it is not forgotten when the grace period of the delete ends.
    assert_eq!(cache.evict(at(10 + 61)), 0);
    assert_eq!(pod(&cache, 500).as_deref(), Some("web"));
}

#[test]
fn deleted_pod_keeps_its_identity_for_flows_seen_before_and_during_the_grace_period() {
    let mut cache = IdentityCache::new(config());
    load(
        &mut cache,
        &pod_yaml("shop-a", "old", "u-old", "10.1.0.9", 0, ""),
        at(0),
    );
    cache.apply(
        CacheEvent::Delete(ObjectKey {
            kind: ObjectKind::Pod,
            namespace: "shop-a".into(),
            name: "old".into(),
        }),
        at(100),
    );
    // The IP goes to a new pod.
    load(
        &mut cache,
        &pod_yaml("shop-b", "new", "u-new", "10.1.0.9", 130, ""),
        at(130),
    );
    let pod = |cache: &IdentityCache, t| cache.identify(ip("10.1.0.9"), at(t)).pod;
    // A flow seen while the old pod held the IP, drained after its delete.
    assert_eq!(pod(&cache, 50).as_deref(), Some("old"));
    assert_eq!(pod(&cache, 99).as_deref(), Some("old"));
    // Never the old pod after the new one took the address.
    assert_eq!(pod(&cache, 131).as_deref(), Some("new"));
    // Between the two, only within clock slack of either.
    assert_eq!(pod(&cache, 103).as_deref(), Some("old"));
    assert_eq!(pod(&cache, 127).as_deref(), Some("new"));
    assert_eq!(
        cache.identify(ip("10.1.0.9"), at(115)).kind,
        Some(PeerKind::World)
    );

    // After the grace period the old pod is forgotten; the new one stays.
    assert_eq!(cache.evict(at(100 + 59)), 0);
    assert_eq!(cache.evict(at(100 + 61)), 1);
    assert_eq!(pod(&cache, 50), None);
    assert_eq!(pod(&cache, 200).as_deref(), Some("new"));
    assert_eq!(cache.stats().pods, 1);
    assert_eq!(cache.stats().tenures, 1);
}

#[test]
fn completed_pod_releases_its_ip_although_its_object_remains() {
    let mut cache = IdentityCache::new(config());
    let completed = format!(
        "{}  containerStatuses:\n  - name: main\n    ready: false\n    restartCount: 0\n    image: app\n    imageID: ''\n    state: {{terminated: {{exitCode: 0, finishedAt: \"{}\"}}}}\n",
        pod_yaml("tools", "job-1", "u-job", "10.1.0.12", 0, "")
            .replace("phase: Running", "phase: Succeeded"),
        rfc3339(40)
    );
    load(&mut cache, &completed, at(60));
    load(
        &mut cache,
        &pod_yaml("shop-a", "web", "u-web", "10.1.0.12", 50, ""),
        at(60),
    );
    assert_eq!(
        cache.identify(ip("10.1.0.12"), at(20)).pod.as_deref(),
        Some("job-1")
    );
    assert_eq!(
        cache.identify(ip("10.1.0.12"), at(55)).pod.as_deref(),
        Some("web")
    );
}

#[test]
fn recreated_statefulset_pod_with_the_same_name_is_a_new_pod() {
    let mut cache = IdentityCache::new(config());
    load(
        &mut cache,
        &pod_yaml("shop-a", "db-0", "u1", "10.1.0.20", 0, ""),
        at(0),
    );
    load(
        &mut cache,
        &pod_yaml("shop-a", "db-0", "u2", "10.1.0.21", 70, ""),
        at(70),
    );
    // The first incarnation's address is closed when the second appears.
    assert_eq!(
        cache.identify(ip("10.1.0.20"), at(30)).pod.as_deref(),
        Some("db-0")
    );
    assert_eq!(
        cache.identify(ip("10.1.0.20"), at(90)).kind,
        Some(PeerKind::World)
    );
    assert_eq!(
        cache.identify(ip("10.1.0.21"), at(90)).pod.as_deref(),
        Some("db-0")
    );
}

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop-a}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, 'fd00:96::20']
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: grpc, port: 9000, targetPort: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: cart-abc12
  namespace: shop-a
  labels: {kubernetes.io/service-name: cart}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: grpc, port: 9090, protocol: TCP}
endpoints:
- addresses: [10.1.0.30]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: cart-1, namespace: shop-a}
- addresses: [10.1.0.31]
  targetRef: {kind: Pod, name: cart-2, namespace: shop-a}
- addresses: [10.1.0.32]
  conditions: {ready: false}
";

#[test]
fn a_cluster_ip_bound_to_this_node_by_ipvs_is_the_service_not_the_host() {
    let mut cache = IdentityCache::new(config());
    load(&mut cache, SERVICE, at(0));
    // kube-proxy in IPVS mode puts every ClusterIP on kube-ipvs0.
    cache.set_local_addresses(vec![ip("192.168.0.10"), ip("10.96.0.20")]);
    let identity = cache.identify(ip("10.96.0.20"), at(1));
    assert_eq!(identity.kind, Some(PeerKind::Service));
    assert_eq!(
        identity.workload,
        Some(Workload {
            kind: "Service".into(),
            name: "cart".into()
        })
    );
    assert_eq!(
        cache.identify(ip("192.168.0.10"), at(1)).kind,
        Some(PeerKind::Host)
    );
}

#[test]
fn service_address_and_port_lead_to_the_target_port_and_backends() {
    let mut cache = IdentityCache::new(config());
    load(&mut cache, SERVICE, at(0));
    let tcp = Protocol(flow_common::protocol::TCP);
    let target = cache.service_target(ip("10.96.0.20"), 80, tcp).unwrap();
    assert_eq!(
        target.service,
        ServiceRef {
            namespace: "shop-a".into(),
            name: "cart".into(),
            ip: ip("10.96.0.20"),
            port: 80,
            target_port: Some(8080),
        }
    );
    // The not-ready endpoint is left out.
    assert_eq!(
        target.backends,
        [(ip("10.1.0.30"), 8080), (ip("10.1.0.31"), 8080)]
    );
    // A named targetPort resolves through the EndpointSlice.
    let named = cache.service_target(ip("10.96.0.20"), 9000, tcp).unwrap();
    assert_eq!(named.service.target_port, Some(9090));
    // Other ports and protocols are not the Service's.
    assert!(cache.service_target(ip("10.96.0.20"), 81, tcp).is_none());
    assert!(
        cache
            .service_target(ip("10.96.0.20"), 80, Protocol(flow_common::protocol::UDP))
            .is_none()
    );
    // No IPv6 endpoints in the slice: the IPv6 address has no backends.
    assert!(
        cache
            .service_target(ip("fd00:96::20"), 80, tcp)
            .unwrap()
            .backends
            .is_empty()
    );
}

#[test]
fn backends_of_one_workload_give_the_service_its_destination_identity() {
    let mut cache = IdentityCache::new(config());
    load(&mut cache, SERVICE, at(0));
    let owner = "  labels: {app: cart, pod-template-hash: '11'}\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cart-11, uid: r, controller: true}]";
    load(
        &mut cache,
        &pod_yaml("shop-a", "cart-1", "u1", "10.1.0.30", 0, owner),
        at(0),
    );
    load(
        &mut cache,
        &pod_yaml("shop-a", "cart-2", "u2", "10.1.0.31", 0, owner),
        at(0),
    );
    let tcp = Protocol(flow_common::protocol::TCP);
    let target = cache.service_target(ip("10.96.0.20"), 80, tcp).unwrap();
    let common = cache.common_backend(&target, at(5)).unwrap();
    assert_eq!(common.workload.unwrap().name, "cart");
    assert_eq!(common.pod, None);
    // A backend of another workload makes the destination ambiguous.
    load(
        &mut cache,
        &pod_yaml(
            "shop-a",
            "cart-2",
            "u2",
            "10.1.0.31",
            0,
            "  labels: {app: other}",
        ),
        at(6),
    );
    assert!(cache.common_backend(&target, at(7)).is_none());
}

#[test]
fn nodes_apiserver_host_network_and_the_world() {
    let mut cache = IdentityCache::new(config());
    load(
        &mut cache,
        "
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 10.224.0.4}, {type: Hostname, address: node-a}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status: {addresses: [{type: InternalIP, address: 10.224.0.5}]}
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
ports: [{name: https, port: 6443}]
endpoints: [{addresses: [172.16.0.1]}]
---
apiVersion: v1
kind: Pod
metadata: {name: kube-proxy-1, namespace: kube-system, uid: kp}
spec: {nodeName: node-a, hostNetwork: true, containers: [{name: p, image: i}]}
status: {phase: Running, podIP: 10.224.0.4, podIPs: [{ip: 10.224.0.4}]}
",
        at(0),
    );
    let kind = |address| cache.identify(ip(address), at(1)).kind;
    let host = cache.identify(ip("10.224.0.4"), at(1));
    assert_eq!(host.kind, Some(PeerKind::Host));
    assert_eq!(host.node.as_deref(), Some("node-a"));
    assert_eq!(
        host.note.as_deref(),
        Some("this node's address, shared by its hostNetwork pods: kube-system/kube-proxy-1")
    );
    assert_eq!(kind("192.168.0.10"), Some(PeerKind::Host));
    let remote = cache.identify(ip("10.224.0.5"), at(1));
    assert_eq!(
        (remote.kind, remote.node.as_deref()),
        (Some(PeerKind::RemoteNode), Some("node-b"))
    );
    assert_eq!(kind("10.96.0.1"), Some(PeerKind::KubeApiserver));
    assert_eq!(kind("172.16.0.1"), Some(PeerKind::KubeApiserver));
    assert_eq!(kind("8.8.8.8"), Some(PeerKind::World));
}

#[test]
fn a_resync_deletes_what_it_did_not_list_and_keeps_the_rest() {
    let mut cache = IdentityCache::new(config());
    load(
        &mut cache,
        &pod_yaml("shop-a", "a", "ua", "10.1.0.40", 0, ""),
        at(0),
    );
    load(
        &mut cache,
        &pod_yaml("shop-a", "b", "ub", "10.1.0.41", 0, ""),
        at(0),
    );
    let relisted = inventory::parse(&pod_yaml("shop-a", "a", "ua", "10.1.0.40", 0, ""), "relist");
    cache.apply(CacheEvent::ResyncStart(ObjectKind::Pod), at(50));
    for object in relisted.objects {
        cache.apply(CacheEvent::Apply(object), at(50));
    }
    cache.apply(CacheEvent::ResyncDone(ObjectKind::Pod), at(50));
    assert_eq!(
        cache.identify(ip("10.1.0.40"), at(60)).pod.as_deref(),
        Some("a")
    );
    // b was not relisted: deleted at the resync, still known for earlier flows.
    assert_eq!(
        cache.identify(ip("10.1.0.41"), at(40)).pod.as_deref(),
        Some("b")
    );
    assert_eq!(
        cache.identify(ip("10.1.0.41"), at(60)).kind,
        Some(PeerKind::World)
    );
}

#[test]
fn a_daemon_sets_container_command_and_args_are_kept_and_other_kinds_have_none() {
    let yaml = "\
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
        command: [/node-cache]
        args: [-localip, '169.254.20.10,10.0.0.10', -conf, /etc/Corefile]
      - name: sidecar
        args: [--verbose]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system}
spec:
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      containers:
      - {name: coredns, args: [-conf, /etc/coredns/Corefile]}
";
    let inventory = inventory::parse(yaml, "test.yaml");
    assert!(inventory.errors.is_empty(), "{:?}", inventory.errors);
    let args: Vec<(String, Vec<String>)> = inventory
        .objects
        .iter()
        .filter_map(|object| match object {
            Object::Owner(owner) => Some((owner.name.clone(), owner.template_args.clone())),
            _ => None,
        })
        .collect();
    let words = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect();
    assert_eq!(
        args,
        vec![
            (
                "node-local-dns".to_owned(),
                words(&[
                    "/node-cache",
                    "-localip",
                    "169.254.20.10,10.0.0.10",
                    "-conf",
                    "/etc/Corefile",
                    "--verbose"
                ])
            ),
            ("coredns".to_owned(), Vec::new()),
        ]
    );
}
