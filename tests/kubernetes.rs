//! The Kubernetes identity source against a local server that speaks the list
//! and watch protocol: initial list, added/modified/deleted events, and a watch
//! error (410 Gone) that forces a relist, which is then applied as a resync.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use common::kube_api::KubeApi;
use flow_model::identity::{CacheEvent, IdentityCache, IdentityConfig, PeerKind, kubernetes};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";

fn namespace(name: &str, tenant: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "resourceVersion": "1", "labels": {"tenant": tenant}}
    })
}

fn pod(name: &str, uid: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop-a",
            "uid": uid,
            "resourceVersion": "1",
            "labels": {"app": name, "pod-template-hash": "abc"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-abc"), "uid": "rs", "controller": true}]
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

struct Harness {
    events: mpsc::Receiver<Vec<CacheEvent>>,
    cache: IdentityCache,
}

impl Harness {
    /// Applies events until `done` holds, for at most 15 s.
    async fn until(&mut self, what: &str, done: impl Fn(&IdentityCache) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(&self.cache) {
            let batch = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap();
            for event in batch {
                self.cache.apply(event, SystemTime::now());
            }
        }
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn pod_at(cache: &IdentityCache, address: &str, offset: Duration) -> Option<String> {
    cache.identify(ip(address), SystemTime::now() + offset).pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_follows_watch_events_and_resyncs_after_a_watch_error() {
    let api = KubeApi::start().await;
    api.set(NAMESPACES, vec![namespace("shop-a", "acme")]);
    api.set(PODS, vec![pod("web", "u1", "10.1.0.2")]);
    let config = kube::Config::new(api.url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (sender, events) = mpsc::channel(64);
    tokio::spawn(kubernetes::run(client, sender));
    let mut harness = Harness {
        events,
        cache: IdentityCache::new(IdentityConfig {
            tenant_label: "tenant".to_owned(),
            node_name: "node-a".to_owned(),
            local_addresses: Vec::new(),
            grace: Duration::from_secs(60),
            platform_namespaces: flow_model::identity::platform_namespaces([]),
        }),
    };

    // Initial list.
    harness
        .until("the initial list", |cache| {
            pod_at(cache, "10.1.0.2", Duration::ZERO).as_deref() == Some("web")
                && cache.tenant("shop-a") == "acme"
        })
        .await;
    let identity = harness.cache.identify(ip("10.1.0.2"), SystemTime::now());
    assert_eq!(
        identity.workload.unwrap().name,
        "web",
        "ReplicaSet web-abc read as Deployment web"
    );

    // Added, modified, deleted.
    api.watched(PODS, 1).await;
    api.watched(NAMESPACES, 1).await;
    api.event(PODS, "ADDED", pod("cart", "u2", "10.1.0.3"));
    harness
        .until("an added pod", |cache| {
            pod_at(cache, "10.1.0.3", Duration::ZERO).as_deref() == Some("cart")
        })
        .await;
    api.event(NAMESPACES, "MODIFIED", namespace("shop-a", "globex"));
    harness
        .until("a modified namespace", |cache| {
            cache.tenant("shop-a") == "globex"
        })
        .await;
    api.event(PODS, "DELETED", pod("cart", "u2", "10.1.0.3"));
    harness
        .until("a deleted pod", |cache| {
            cache
                .identify(ip("10.1.0.3"), SystemTime::now() + Duration::from_secs(10))
                .kind
                == Some(PeerKind::World)
        })
        .await;
    // Still itself for flows seen before the delete (grace period).
    assert_eq!(
        pod_at(&harness.cache, "10.1.0.3", Duration::ZERO).as_deref(),
        Some("cart")
    );

    // The watch fails with 410 Gone: the watcher lists again. The new list no
    // longer has "web" and has "db"; the resync deletes "web".
    api.set(PODS, vec![pod("db", "u3", "10.1.0.4")]);
    api.event(
        PODS,
        "ERROR",
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}),
    );
    harness
        .until("the relist after the watch error", |cache| {
            pod_at(cache, "10.1.0.4", Duration::ZERO).as_deref() == Some("db")
                && cache
                    .identify(ip("10.1.0.2"), SystemTime::now() + Duration::from_secs(10))
                    .kind
                    == Some(PeerKind::World)
        })
        .await;
    assert_eq!(api.lists_served(PODS), 2);
    // And it watches again from the new list.
    api.watched(PODS, 2).await;
    api.event(PODS, "ADDED", pod("cart", "u4", "10.1.0.5"));
    harness
        .until("an event on the new watch", |cache| {
            pod_at(cache, "10.1.0.5", Duration::ZERO).as_deref() == Some("cart")
        })
        .await;
    // The namespace was not relisted and kept its state.
    assert_eq!(harness.cache.tenant("shop-a"), "globex");
}
