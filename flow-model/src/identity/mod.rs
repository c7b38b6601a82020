//! Who an address belongs to: pods, their workloads and tenants, Services,
//! nodes, the API server, or the world.
//!
//! One [`IdentityCache`] is fed by either source through the same
//! [`CacheEvent`]s: the Kubernetes API ([`kubernetes`]) or an inventory file
//! ([`inventory`]) in the format `kubectl get ... -o yaml` prints.
//!
//! Pods are short-lived and their addresses are reused, so an address maps to a
//! history of *tenures* (which pod held it, from when until when), and a flow is
//! attributed to the pod that held the address when the flow was seen. A
//! deleted pod is remembered for a grace period so that flows drained after the
//! delete still resolve.

pub mod inventory;
pub mod kubernetes;
pub mod model;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

// hashbrown's default hasher (foldhash): every flow's ends are looked up
// here, several times, and SipHash made that the larger part of a lookup.
use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};

use self::model::{
    EndpointSliceInfo, NamespaceInfo, NodeInfo, OwnerInfo, OwnerRef, PodInfo, ServiceInfo,
    TargetPort,
};
pub use self::model::{Object, ObjectError, ObjectKey, ObjectKind};
use crate::record::Protocol;

/// Labels that differ between pods of one workload or between its revisions:
/// never part of a workload's identity (or of a policy's selector).
pub const CHURN_LABELS: [&str; 11] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
    "job-index",
];

/// A flow and its pod may be seen this far apart on clocks that disagree
/// (kubelet's start time, the agent's packet time).
const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// What kind of peer an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// A pod (with its own address).
    Pod,
    /// This node (its own addresses, also used by its hostNetwork pods).
    Host,
    /// Another node of the cluster.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// A Service's virtual address that could not be translated to a backend.
    Service,
    /// Anything outside the cluster.
    World,
}

impl PeerKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Pod,
        Self::Host,
        Self::RemoteNode,
        Self::KubeApiserver,
        Self::Service,
        Self::World,
    ];

    /// The name used in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Host => "host",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Service => "service",
            Self::World => "world",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// A workload: the top controller of a pod, or the pod itself when bare.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`, `Pod`, or
    /// another controller's kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// Who an address is, at the moment a flow was seen. Serialized flat into a
/// record's `source` or `destination`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// What kind of peer; absent when identity is not configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PeerKind>,
    /// Namespace (pods and Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Tenant: the namespace's tenant label, or the namespace itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The workload's stable labels (churn labels removed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node (of a pod, or the node itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What could not be told apart, e.g. the hostNetwork pods sharing a node's
    /// address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The Service a flow's destination address and port belong to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The virtual address the client used.
    pub ip: IpAddr,
    /// The Service port the client used.
    pub port: u16,
    /// The port on the backends (`targetPort`, resolved when named), when
    /// every backend agrees on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// A Service port and where it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    /// The Service, with its target port when every backend agrees on one.
    pub service: ServiceRef,
    /// Ready backends: address and target port.
    pub backends: Vec<(IpAddr, u16)>,
}

/// Who an address belonged to at some moment, as [`IdentityCache::holder`]
/// finds it: enough to tell two answers apart without building them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// The pod of one of the address's tenures (its position in the history).
    Pod {
        /// The address.
        ip: IpAddr,
        /// Position of the tenure.
        tenure: u32,
    },
    /// The API server.
    KubeApiserver,
    /// A Service's virtual address.
    Service(IpAddr),
    /// This node.
    Host,
    /// Another node's address.
    RemoteNode(IpAddr),
    /// Outside the cluster.
    World,
}

/// Settings of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Namespace label whose value names the tenant.
    pub tenant_label: String,
    /// This node's name (`spec.nodeName` of the pods on it).
    pub node_name: String,
    /// This node's own addresses, whatever the API says.
    pub local_addresses: Vec<IpAddr>,
    /// How long a deleted pod keeps its identity for late flows.
    pub grace: Duration,
    /// Namespaces of the platform rather than of a tenant (by default
    /// [`DEFAULT_PLATFORM_NAMESPACES`]). Their pods keep their namespace's
    /// tenant for access and filters, but a flow with an end in one never
    /// crosses tenants: DNS to kube-system is every tenant's.
    pub platform_namespaces: BTreeSet<String>,
}

/// The namespaces Kubernetes itself runs in, which belong to no tenant.
pub const DEFAULT_PLATFORM_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", "kube-node-lease"];

/// `given`, or [`DEFAULT_PLATFORM_NAMESPACES`] when it is empty.
pub fn platform_namespaces<I: IntoIterator<Item = String>>(given: I) -> BTreeSet<String> {
    let given: BTreeSet<String> = given.into_iter().collect();
    match given.is_empty() {
        true => DEFAULT_PLATFORM_NAMESPACES.map(str::to_owned).into(),
        false => given,
    }
}

/// A change from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectKey),
    /// A full listing of a kind begins.
    ResyncStart(ObjectKind),
    /// A full listing of a kind ended: objects of that kind it did not list
    /// are gone.
    ResyncDone(ObjectKind),
}

/// Sizes of the cache, for metrics and memory checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Pods known, deleted ones in their grace period included.
    pub pods: usize,
    /// Addresses with at least one tenure.
    pub addresses: usize,
    /// Tenures over all addresses.
    pub tenures: usize,
    /// Services.
    pub services: usize,
    /// EndpointSlices.
    pub endpoint_slices: usize,
    /// Workload controllers.
    pub owners: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Nodes.
    pub nodes: usize,
}

#[derive(Clone, Debug)]
struct PodEntry {
    info: PodInfo,
    deleted_at: Option<SystemTime>,
}

/// One pod's hold on one address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tenure {
    uid: String,
    start: SystemTime,
    end: Option<SystemTime>,
}

impl Tenure {
    /// Whether `t` lies inside this tenure ([`Tenure::distance`] is zero).
    fn contains(&self, t: SystemTime) -> bool {
        t >= self.start && self.end.is_none_or(|end| t < end)
    }

    /// How far `t` lies outside this tenure (zero inside).
    fn distance(&self, t: SystemTime) -> Duration {
        if t < self.start {
            self.start.duration_since(t).unwrap_or_default()
        } else {
            match self.end {
                Some(end) if t >= end => t.duration_since(end).unwrap_or_default(),
                _ => Duration::ZERO,
            }
        }
    }
}

type NamespacedName = (String, String);

/// The identity cache.
#[derive(Debug)]
pub struct IdentityCache {
    config: IdentityConfig,
    namespaces: HashMap<String, NamespaceInfo>,
    pods: HashMap<String, PodEntry>,
    pod_uids: HashMap<NamespacedName, String>,
    owners: HashMap<ObjectKey, OwnerInfo>,
    /// Namespaces and owners deleted, kept like deleted pods for the grace
    /// period: a pod's last flows, drained after its ReplicaSet, Job or
    /// namespace went, still name its workload and tenant.
    retired: HashMap<ObjectKey, SystemTime>,
    services: HashMap<NamespacedName, ServiceInfo>,
    slices: HashMap<NamespacedName, EndpointSliceInfo>,
    nodes: HashMap<String, NodeInfo>,
    tenures: HashMap<IpAddr, Vec<Tenure>>,
    service_ports: HashMap<(IpAddr, u16, Protocol), (NamespacedName, String)>,
    service_ips: HashMap<IpAddr, NamespacedName>,
    node_ips: HashMap<IpAddr, String>,
    /// EndpointSlice names per Service.
    slices_of: HashMap<NamespacedName, BTreeSet<String>>,
    /// The API server's addresses: the `default/kubernetes` Service and its endpoints.
    apiserver_ips: HashSet<IpAddr>,
    /// This node's hostNetwork pods, as `namespace/name`.
    host_network_pods: BTreeSet<String>,
    resync: HashMap<ObjectKind, HashSet<ObjectKey>>,
    /// Changes so far: answers (and [`Holder`]s) found at one generation
    /// hold until it changes.
    generation: u64,
}

impl IdentityCache {
    /// An empty cache.
    pub fn new(config: IdentityConfig) -> Self {
        Self {
            config,
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            pod_uids: HashMap::new(),
            owners: HashMap::new(),
            retired: HashMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            nodes: HashMap::new(),
            tenures: HashMap::new(),
            service_ports: HashMap::new(),
            service_ips: HashMap::new(),
            node_ips: HashMap::new(),
            slices_of: HashMap::new(),
            apiserver_ips: HashSet::new(),
            host_network_pods: BTreeSet::new(),
            resync: HashMap::new(),
            generation: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// Sizes, for metrics and memory checks.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            pods: self.pods.len(),
            addresses: self.tenures.len(),
            tenures: self.tenures.values().map(Vec::len).sum(),
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            owners: self.owners.len(),
            namespaces: self.namespaces.len(),
            nodes: self.nodes.len(),
        }
    }

    /// The cluster's nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    /// Replaces this node's own addresses (they change with interfaces).
    pub fn set_local_addresses(&mut self, addresses: Vec<IpAddr>) {
        if addresses != self.config.local_addresses {
            self.generation += 1;
            self.config.local_addresses = addresses;
        }
    }

    /// Changes so far: what was looked up at one generation still holds
    /// while it is the same (callers that remember answers check it).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies a change observed at `now`.
    pub fn apply(&mut self, event: CacheEvent, now: SystemTime) {
        self.generation += 1;
        match event {
            CacheEvent::Apply(object) => {
                let key = object.key();
                if let Some(seen) = self.resync.get_mut(&key.kind) {
                    seen.insert(key);
                }
                self.apply_object(object, now);
            }
            CacheEvent::Delete(key) => self.delete(&key, now),
            CacheEvent::ResyncStart(kind) => {
                self.resync.insert(kind, HashSet::new());
            }
            CacheEvent::ResyncDone(kind) => {
                let Some(seen) = self.resync.remove(&kind) else {
                    return;
                };
                for key in self.keys(kind) {
                    if !seen.contains(&key) {
                        self.delete(&key, now);
                    }
                }
            }
        }
    }

    fn keys(&self, kind: ObjectKind) -> Vec<ObjectKey> {
        let key = |namespace: &str, name: &str| ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match kind {
            ObjectKind::Namespace => self
                .namespaces
                .keys()
                .map(|name| key("", name))
                .filter(|key| !self.retired.contains_key(key))
                .collect(),
            ObjectKind::Node => self.nodes.keys().map(|name| key("", name)).collect(),
            ObjectKind::Pod => self
                .pod_uids
                .keys()
                .map(|(namespace, name)| key(namespace, name))
                .collect(),
            ObjectKind::Service => self
                .services
                .keys()
                .map(|(namespace, name)| key(namespace, name))
                .collect(),
            ObjectKind::EndpointSlice => self
                .slices
                .keys()
                .map(|(namespace, name)| key(namespace, name))
                .collect(),
            _ => self
                .owners
                .keys()
                .filter(|key| key.kind == kind && !self.retired.contains_key(*key))
                .cloned()
                .collect(),
        }
    }

    fn apply_object(&mut self, object: Object, now: SystemTime) {
        match object {
            Object::Namespace(info) => {
                self.retired.remove(&ObjectKey {
                    kind: ObjectKind::Namespace,
                    namespace: String::new(),
                    name: info.name.clone(),
                });
                self.namespaces.insert(info.name.clone(), info);
            }
            Object::Pod(info) => self.apply_pod(info, now),
            Object::Owner(info) => {
                let key = ObjectKey {
                    kind: info.kind,
                    namespace: info.namespace.clone(),
                    name: info.name.clone(),
                };
                self.retired.remove(&key);
                self.owners.insert(key, info);
            }
            Object::Service(info) => {
                let name = (info.namespace.clone(), info.name.clone());
                self.services.insert(name.clone(), info);
                self.index_service(&name);
            }
            Object::EndpointSlice(info) => {
                let name = (info.namespace.clone(), info.name.clone());
                self.unindex_slice(&name);
                if let Some(service) = &info.service {
                    self.slices_of
                        .entry((info.namespace.clone(), service.clone()))
                        .or_default()
                        .insert(info.name.clone());
                }
                self.slices.insert(name, info);
                self.index_apiserver();
            }
            Object::Node(info) => {
                self.node_ips.retain(|_, node| *node != info.name);
                for address in &info.addresses {
                    self.node_ips.insert(*address, info.name.clone());
                }
                self.nodes.insert(info.name.clone(), info);
            }
        }
    }

    fn apply_pod(&mut self, info: PodInfo, now: SystemTime) {
        let name = (info.namespace.clone(), info.name.clone());
        // Same name, new UID: the old pod (a StatefulSet replica) is gone.
        if let Some(old) = self.pod_uids.insert(name, info.uid.clone())
            && old != info.uid
        {
            self.end_pod(&old, now);
        }
        let start = info.since.unwrap_or(now);
        let end = info.terminal.then(|| info.finished_at.unwrap_or(now));
        if let Some(previous) = self.pods.get(&info.uid) {
            for ip in previous.info.ips.clone() {
                if !info.ips.contains(&ip) {
                    self.close_tenure(ip, &info.uid, now);
                }
            }
        }
        for ip in &info.ips {
            let tenures = self.tenures.entry(*ip).or_default();
            match tenures.iter_mut().find(|tenure| tenure.uid == info.uid) {
                Some(tenure) => {
                    tenure.start = tenure.start.min(start);
                    tenure.end = match end {
                        Some(end) => Some(tenure.end.map_or(end, |old| old.min(end))),
                        // A live pod holds its address: a tenure closed by a
                        // delete it came back from (a relist, an inventory
                        // rewritten in two steps) or by an address that
                        // dropped out of its status and returned is open
                        // again.
                        None => None,
                    };
                }
                None => tenures.push(Tenure {
                    uid: info.uid.clone(),
                    start,
                    end,
                }),
            }
        }
        let pod_name = format!("{}/{}", info.namespace, info.name);
        if info.host_network
            && info.node.as_deref() == Some(self.config.node_name.as_str())
            && !info.terminal
        {
            self.host_network_pods.insert(pod_name);
        } else {
            self.host_network_pods.remove(&pod_name);
        }
        self.pods.insert(
            info.uid.clone(),
            PodEntry {
                info,
                deleted_at: None,
            },
        );
    }

    fn close_tenure(&mut self, ip: IpAddr, uid: &str, now: SystemTime) {
        if let Some(tenure) = self
            .tenures
            .get_mut(&ip)
            .and_then(|tenures| tenures.iter_mut().find(|tenure| tenure.uid == uid))
        {
            tenure.end = Some(tenure.end.map_or(now, |end| end.min(now)));
        }
    }

    fn end_pod(&mut self, uid: &str, now: SystemTime) {
        let Some(entry) = self.pods.get_mut(uid) else {
            return;
        };
        entry.deleted_at.get_or_insert(now);
        self.host_network_pods
            .remove(&format!("{}/{}", entry.info.namespace, entry.info.name));
        for ip in entry.info.ips.clone() {
            self.close_tenure(ip, uid, now);
        }
    }

    fn delete(&mut self, key: &ObjectKey, now: SystemTime) {
        let name = (key.namespace.clone(), key.name.clone());
        match key.kind {
            ObjectKind::Namespace => {
                self.retired
                    .entry(ObjectKey {
                        kind: ObjectKind::Namespace,
                        namespace: String::new(),
                        name: key.name.clone(),
                    })
                    .or_insert(now);
            }
            ObjectKind::Pod => {
                if let Some(uid) = self.pod_uids.remove(&name) {
                    self.end_pod(&uid, now);
                }
            }
            ObjectKind::Service => {
                self.services.remove(&name);
                self.index_service(&name);
            }
            ObjectKind::EndpointSlice => {
                self.unindex_slice(&name);
                self.slices.remove(&name);
                self.index_apiserver();
            }
            ObjectKind::Node => {
                self.nodes.remove(&key.name);
                self.node_ips.retain(|_, node| *node != key.name);
            }
            _ => {
                if self.owners.contains_key(key) {
                    self.retired.entry(key.clone()).or_insert(now);
                }
            }
        }
    }

    fn unindex_slice(&mut self, name: &NamespacedName) {
        let Some(service) = self
            .slices
            .get(name)
            .and_then(|slice| slice.service.clone())
        else {
            return;
        };
        let key = (name.0.clone(), service);
        if let Some(names) = self.slices_of.get_mut(&key) {
            names.remove(&name.1);
            if names.is_empty() {
                self.slices_of.remove(&key);
            }
        }
    }

    /// The EndpointSlices of a Service.
    fn slices_of(&self, service: &NamespacedName) -> impl Iterator<Item = &EndpointSliceInfo> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(&(service.0.clone(), slice.clone())))
    }

    /// Recomputes the API server's addresses from `default/kubernetes`.
    fn index_apiserver(&mut self) {
        let kubernetes = ("default".to_owned(), "kubernetes".to_owned());
        let mut ips: HashSet<IpAddr> = self
            .services
            .get(&kubernetes)
            .map(|service| service.cluster_ips.iter().copied().collect())
            .unwrap_or_default();
        for slice in self.slices_of(&kubernetes) {
            for endpoint in &slice.endpoints {
                ips.extend(endpoint.addresses.iter().copied());
            }
        }
        self.apiserver_ips = ips;
    }

    fn index_service(&mut self, name: &NamespacedName) {
        self.service_ports.retain(|_, (service, _)| service != name);
        self.service_ips.retain(|_, service| service != name);
        if name.0 == "default" && name.1 == "kubernetes" {
            self.index_apiserver();
        }
        let Some(service) = self.services.get(name) else {
            return;
        };
        for ip in &service.cluster_ips {
            self.service_ips.insert(*ip, name.clone());
            for port in &service.ports {
                self.service_ports.insert(
                    (*ip, port.port, port.protocol),
                    (name.clone(), port.name.clone()),
                );
            }
        }
        if name.0 == "default" && name.1 == "kubernetes" {
            self.index_apiserver();
        }
    }

    /// Forgets deleted pods and ended tenures older than the grace period.
    /// Returns how many pods were forgotten.
    pub fn evict(&mut self, now: SystemTime) -> usize {
        let grace = self.config.grace;
        let expired = |end: SystemTime| now.duration_since(end).is_ok_and(|age| age > grace);
        let mut changed = false;
        self.tenures.retain(|_, tenures| {
            let before = tenures.len();
            tenures.retain(|tenure| !tenure.end.is_some_and(expired));
            changed |= tenures.len() != before;
            !tenures.is_empty()
        });
        let retired: Vec<ObjectKey> = self
            .retired
            .iter()
            .filter(|(_, deleted_at)| expired(**deleted_at))
            .map(|(key, _)| key.clone())
            .collect();
        changed |= !retired.is_empty();
        for key in retired {
            self.retired.remove(&key);
            if key.kind == ObjectKind::Namespace {
                self.namespaces.remove(&key.name);
            } else {
                self.owners.remove(&key);
            }
        }
        let before = self.pods.len();
        self.pods
            .retain(|_, entry| !entry.deleted_at.is_some_and(expired));
        let forgotten = before - self.pods.len();
        if changed || forgotten > 0 {
            self.generation += 1;
        }
        forgotten
    }

    /// The pod that held `ip` at time `at`.
    fn pod_at(&self, ip: IpAddr, at: SystemTime) -> Option<&PodInfo> {
        let tenure = self.tenure_at(ip, at)?;
        self.tenure_pod(ip, tenure)
    }

    /// Which of `ip`'s tenures covers `at` (its position in the address's
    /// history), if its pod is still known.
    fn tenure_at(&self, ip: IpAddr, at: SystemTime) -> Option<u32> {
        let position = self.nearest_tenure(ip, at)?;
        self.tenure_pod(ip, position)?;
        Some(position)
    }

    /// Which of `ip`'s tenures covers `at`, or is nearest within the clock
    /// slack, whether or not its pod is still known: with a holder already
    /// resolved for this tenure ([`Holder::Pod`]), the pod is known, and
    /// [`IdentityCache::holder`] would find the same.
    pub fn nearest_tenure(&self, ip: IpAddr, at: SystemTime) -> Option<u32> {
        let tenures = self.tenures.get(&ip)?;
        let inside = tenures
            .iter()
            .enumerate()
            .filter(|(_, tenure)| tenure.contains(at))
            .max_by_key(|(_, tenure)| tenure.start);
        let (position, _) = match inside {
            Some(found) => found,
            // Clocks disagree a little: take the nearest tenure within the slack.
            None => tenures
                .iter()
                .enumerate()
                .filter(|(_, tenure)| tenure.distance(at) <= CLOCK_SLACK)
                .min_by_key(|(_, tenure)| tenure.distance(at))?,
        };
        u32::try_from(position).ok()
    }

    /// The pod of one of `ip`'s tenures.
    fn tenure_pod(&self, ip: IpAddr, tenure: u32) -> Option<&PodInfo> {
        let tenure = self.tenures.get(&ip)?.get(tenure as usize)?;
        self.pods.get(&tenure.uid).map(|entry| &entry.info)
    }

    /// The pod that held `ip` at `at`, with its full labels and declared
    /// ports (monitor mode evaluates policies against them).
    pub fn pod_info_at(&self, ip: IpAddr, at: SystemTime) -> Option<&PodInfo> {
        self.pod_at(ip, at)
    }

    /// A known namespace's labels.
    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace).map(|info| &info.labels)
    }

    /// Whether `namespace` belongs to the platform, not to a tenant.
    pub fn is_platform(&self, namespace: &str) -> bool {
        self.config.platform_namespaces.contains(namespace)
    }

    /// The tenant of a namespace: its tenant label, or the namespace itself.
    pub fn tenant(&self, namespace: &str) -> String {
        self.namespaces
            .get(namespace)
            .and_then(|info| info.labels.get(&self.config.tenant_label))
            .cloned()
            .unwrap_or_else(|| namespace.to_owned())
    }

    /// A pod's workload and that workload's stable labels.
    pub fn workload(&self, pod: &PodInfo) -> (Workload, BTreeMap<String, String>) {
        let mut workload = Workload {
            kind: "Pod".to_owned(),
            name: pod.name.clone(),
        };
        let mut template_labels = None;
        let mut owner = pod.owner.clone();
        // ReplicaSet → Deployment, Job → CronJob: a short chain.
        for _ in 0..4 {
            let Some(OwnerRef { kind, name }) = owner.take() else {
                break;
            };
            let known = ObjectKind::from_name(&kind).and_then(|kind| {
                self.owners.get(&ObjectKey {
                    kind,
                    namespace: pod.namespace.clone(),
                    name: name.clone(),
                })
            });
            match known {
                Some(info) => {
                    if info.template_labels.is_some() {
                        template_labels.clone_from(&info.template_labels);
                    }
                    owner.clone_from(&info.owner);
                    workload = Workload { kind, name };
                }
                None if kind == "Job" => {
                    // A Job not seen (yet, or deleted while its pods linger)
                    // of a known CronJob: `<cronjob>-<scheduled minute>`.
                    let cronjob = name
                        .rsplit_once('-')
                        .filter(|(_, minute)| {
                            !minute.is_empty() && minute.bytes().all(|b| b.is_ascii_digit())
                        })
                        .map(|(cronjob, _)| cronjob.to_owned())
                        .filter(|cronjob| {
                            self.owners.contains_key(&ObjectKey {
                                kind: ObjectKind::CronJob,
                                namespace: pod.namespace.clone(),
                                name: cronjob.clone(),
                            })
                        });
                    if let Some(cronjob) = cronjob {
                        owner = Some(OwnerRef {
                            kind: "CronJob".to_owned(),
                            name: cronjob,
                        });
                    }
                    workload = Workload { kind, name };
                }
                None => {
                    // A ReplicaSet we have not seen (yet) is named after its
                    // Deployment plus the pod-template-hash.
                    workload = match pod.labels.get("pod-template-hash") {
                        Some(hash) if kind == "ReplicaSet" => {
                            match name.strip_suffix(&format!("-{hash}")) {
                                Some(deployment) => Workload {
                                    kind: "Deployment".to_owned(),
                                    name: deployment.to_owned(),
                                },
                                None => Workload { kind, name },
                            }
                        }
                        _ => Workload { kind, name },
                    };
                }
            }
        }
        let mut labels = template_labels.unwrap_or_else(|| pod.labels.clone());
        labels.retain(|key, _| !CHURN_LABELS.contains(&key.as_str()));
        (workload, labels)
    }

    fn pod_identity(&self, pod: &PodInfo) -> Identity {
        let (workload, labels) = self.workload(pod);
        Identity {
            kind: Some(PeerKind::Pod),
            namespace: Some(pod.namespace.clone()),
            pod: Some(pod.name.clone()),
            workload: Some(workload),
            tenant: Some(self.tenant(&pod.namespace)),
            labels,
            node: pod.node.clone(),
            note: None,
        }
    }

    /// Who held `ip` at time `at`.
    pub fn identify(&self, ip: IpAddr, at: SystemTime) -> Identity {
        self.holder_identity(self.holder(ip, at))
    }

    /// What [`IdentityCache::identify`] would answer for `ip` at `at`, as a
    /// small key: two addresses and times with the same holder get equal
    /// identities, as long as the cache does not change. Finding the holder
    /// costs a few lookups and no allocation; callers that resolve many
    /// flows keep the identity of each holder.
    pub fn holder(&self, ip: IpAddr, at: SystemTime) -> Holder {
        if let Some(tenure) = self.tenure_at(ip, at) {
            return Holder::Pod { ip, tenure };
        }
        if self.apiserver_ips.contains(&ip) {
            return Holder::KubeApiserver;
        }
        // Before this node's addresses: kube-proxy in IPVS mode binds every
        // ClusterIP to kube-ipvs0, so they are local addresses too.
        if self.service_ips.contains_key(&ip) {
            return Holder::Service(ip);
        }
        let node = self.node_ips.get(&ip);
        if self.config.local_addresses.contains(&ip) || node == Some(&self.config.node_name) {
            return Holder::Host;
        }
        if node.is_some() {
            return Holder::RemoteNode(ip);
        }
        Holder::World
    }

    /// The identity of a holder found by [`IdentityCache::holder`] since the
    /// cache last changed.
    pub fn holder_identity(&self, holder: Holder) -> Identity {
        match holder {
            Holder::Pod { ip, tenure } => match self.tenure_pod(ip, tenure) {
                Some(pod) => self.pod_identity(pod),
                None => Identity::default(),
            },
            Holder::KubeApiserver => Identity {
                kind: Some(PeerKind::KubeApiserver),
                ..Identity::default()
            },
            Holder::Service(ip) => match self.service_ips.get(&ip) {
                Some((namespace, name)) => Identity {
                    kind: Some(PeerKind::Service),
                    namespace: Some(namespace.clone()),
                    tenant: Some(self.tenant(namespace)),
                    workload: Some(Workload {
                        kind: "Service".to_owned(),
                        name: name.clone(),
                    }),
                    ..Identity::default()
                },
                None => Identity::default(),
            },
            Holder::Host => {
                let host_network: Vec<&str> =
                    self.host_network_pods.iter().map(String::as_str).collect();
                Identity {
                    kind: Some(PeerKind::Host),
                    node: Some(self.config.node_name.clone()),
                    note: (!host_network.is_empty()).then(|| {
                        format!(
                            "this node's address, shared by its hostNetwork pods: {}",
                            host_network.join(", ")
                        )
                    }),
                    ..Identity::default()
                }
            }
            Holder::RemoteNode(ip) => Identity {
                kind: Some(PeerKind::RemoteNode),
                node: self.node_ips.get(&ip).cloned(),
                note: Some("a node's address, also used by its hostNetwork pods".to_owned()),
                ..Identity::default()
            },
            Holder::World => Identity {
                kind: Some(PeerKind::World),
                ..Identity::default()
            },
        }
    }

    /// Whether `ip` is a Service's virtual address: most are not, and this
    /// tells so without building a key of address, port and protocol.
    pub fn is_service_address(&self, ip: IpAddr) -> bool {
        self.service_ips.contains_key(&ip)
    }

    /// The Service behind a virtual address and port, with its backends.
    pub fn service_target(
        &self,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<ServiceTarget> {
        let (name, port_name) = self.service_ports.get(&(ip, port, protocol))?;
        let service = self.services.get(name)?;
        let service_port = service
            .ports
            .iter()
            .find(|candidate| candidate.name == *port_name && candidate.protocol == protocol)?;
        let mut backends = Vec::new();
        let mut target_ports = BTreeSet::new();
        for slice in self.slices_of(name) {
            let Some(slice_port) = slice
                .ports
                .iter()
                .find(|candidate| candidate.name == *port_name && candidate.protocol == protocol)
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|endpoint| endpoint.ready) {
                for address in &endpoint.addresses {
                    if address.is_ipv4() == ip.is_ipv4() {
                        backends.push((*address, slice_port.port));
                        target_ports.insert(slice_port.port);
                    }
                }
            }
        }
        let target_port = match &service_port.target_port {
            TargetPort::Number(number) => Some(*number),
            // Named: each slice resolved it; use it when all agree.
            TargetPort::Name(_) => (target_ports.len() == 1)
                .then(|| target_ports.first().copied())
                .flatten(),
        };
        Some(ServiceTarget {
            service: ServiceRef {
                namespace: name.0.clone(),
                name: name.1.clone(),
                ip,
                port,
                target_port,
            },
            backends,
        })
    }

    /// The identity shared by every backend of a Service target at `at`, when
    /// they all belong to one workload (the pod is left out: which one served
    /// the flow is not known from the Service alone).
    pub fn common_backend(&self, target: &ServiceTarget, at: SystemTime) -> Option<Identity> {
        let mut common: Option<Identity> = None;
        for (address, _) in &target.backends {
            let mut identity = self.identify(*address, at);
            identity.pod = None;
            identity.node = None;
            match &common {
                None => common = Some(identity),
                Some(existing) if *existing == identity => {}
                Some(_) => return None,
            }
        }
        common
    }
}

#[cfg(test)]
mod tests;
