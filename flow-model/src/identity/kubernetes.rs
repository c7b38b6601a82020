//! Identity from the Kubernetes API: one watch per kind (list, then watch; on a
//! watch error or an expired resourceVersion the watcher relists, with backoff).
//! A relist is a resync: objects it no longer lists are deleted, everything
//! else stays, so an API server restart never empties the cache.
//!
//! Needs read-only access (get, list, watch) to namespaces, pods, services,
//! nodes; endpointslices (discovery.k8s.io); replicasets, deployments,
//! statefulsets, daemonsets (apps); jobs, cronjobs (batch).

use std::fmt::Debug;

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    CacheEvent,
    model::{self, Object, ObjectError, ObjectKey, ObjectKind},
};

/// Errors connecting to the API server.
#[derive(Debug, Error)]
pub enum KubernetesError {
    /// No in-cluster configuration and no usable kubeconfig.
    #[error(
        "cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG): use --inventory FILE to run without a cluster"
    )]
    Config(#[source] kube::Error),
}

/// Connects with the in-cluster configuration or the kubeconfig.
pub async fn client() -> Result<Client, KubernetesError> {
    Client::try_default().await.map_err(KubernetesError::Config)
}

fn key_of<K: Resource>(kind: ObjectKind, object: &K) -> ObjectKey {
    let meta = object.meta();
    ObjectKey {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// One kind's watch, turned into cache events.
fn watch<K>(
    client: &Client,
    kind: ObjectKind,
    convert: fn(&K) -> Result<Object, ObjectError>,
) -> BoxStream<'static, Vec<CacheEvent>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let apply = move |object: &K| match convert(object) {
        Ok(object) => Some(CacheEvent::Apply(object)),
        Err(error) => {
            warn!(%error, "object from the API server skipped");
            None
        }
    };
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let events = match event {
                Ok(watcher::Event::Init) => vec![CacheEvent::ResyncStart(kind)],
                Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object)) => {
                    apply(&object).into_iter().collect()
                }
                Ok(watcher::Event::InitDone) => {
                    debug!(kind = kind.as_str(), "listed");
                    vec![CacheEvent::ResyncDone(kind)]
                }
                Ok(watcher::Event::Delete(object)) => {
                    vec![CacheEvent::Delete(key_of(kind, &object))]
                }
                Err(error) => {
                    // The watcher retries with backoff and relists as needed.
                    warn!(kind = kind.as_str(), %error, "watch failed; retrying");
                    Vec::new()
                }
            };
            futures::future::ready((!events.is_empty()).then_some(events))
        })
        .boxed()
}

/// Watches every kind identity uses and sends their events until the receiver
/// is dropped.
pub async fn run(client: Client, events: mpsc::Sender<Vec<CacheEvent>>) {
    let streams = vec![
        watch::<Namespace>(&client, ObjectKind::Namespace, |o| {
            model::namespace(o).map(Object::Namespace)
        }),
        watch::<Node>(&client, ObjectKind::Node, |o| {
            model::node(o).map(Object::Node)
        }),
        watch::<ReplicaSet>(&client, ObjectKind::ReplicaSet, |o| {
            model::replica_set(o).map(Object::Owner)
        }),
        watch::<Deployment>(&client, ObjectKind::Deployment, |o| {
            model::deployment(o).map(Object::Owner)
        }),
        watch::<StatefulSet>(&client, ObjectKind::StatefulSet, |o| {
            model::stateful_set(o).map(Object::Owner)
        }),
        watch::<DaemonSet>(&client, ObjectKind::DaemonSet, |o| {
            model::daemon_set(o).map(Object::Owner)
        }),
        watch::<Job>(&client, ObjectKind::Job, |o| {
            model::job(o).map(Object::Owner)
        }),
        watch::<CronJob>(&client, ObjectKind::CronJob, |o| {
            model::cron_job(o).map(Object::Owner)
        }),
        watch::<Service>(&client, ObjectKind::Service, |o| {
            model::service(o).map(Object::Service)
        }),
        watch::<EndpointSlice>(&client, ObjectKind::EndpointSlice, |o| {
            model::endpoint_slice(o).map(Object::EndpointSlice)
        }),
        watch::<Pod>(&client, ObjectKind::Pod, |o| model::pod(o).map(Object::Pod)),
    ];
    let mut merged = futures::stream::select_all(streams);
    while let Some(batch) = merged.next().await {
        if events.send(batch).await.is_err() {
            return;
        }
    }
}
