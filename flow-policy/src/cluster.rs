//! What the generator and the checker know of the cluster: namespaces and
//! their labels, pods with their full labels, container ports and workload,
//! and each workload's stable labels. Built from an inventory (`kubectl get
//! -o yaml`), completed with what flows said about workloads the inventory
//! does not have.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::graph::{Graph, WorkloadRef};
use flow_model::identity::{
    CHURN_LABELS, CacheEvent, IdentityCache, IdentityConfig, Object,
    model::{ContainerPort, ObjectKind, PodInfo},
};

/// The label every namespace carries with its own name (Kubernetes 1.22+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels preferred in selectors, in order: the conventional identity labels.
const PREFERRED_LABELS: [&str; 9] = [
    "app.kubernetes.io/name",
    "app",
    "k8s-app",
    "name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "component",
    "tier",
    "role",
];

/// Labels that change with upgrades: used in a selector only when nothing
/// else tells the workload apart.
const VOLATILE_LABELS: [&str; 5] = [
    "version",
    "app.kubernetes.io/version",
    "helm.sh/chart",
    "chart",
    "release",
];

/// Most labels tried in combination when looking for the smallest selector.
const MAX_SELECTOR_SEARCH: usize = 12;

/// A pod as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Declared container ports (for named ports).
    pub ports: Vec<ContainerPort>,
    /// Uses its node's network: NetworkPolicy does not apply to it.
    pub host_network: bool,
    /// Its workload.
    pub workload: WorkloadRef,
}

/// A workload as policies see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadView {
    /// Stable labels of its pods (its template's, without per-revision ones).
    pub labels: BTreeMap<String, String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Indexes of its pods in [`ClusterView::pods`].
    pub pods: Vec<usize>,
    /// Its pods use the node's network.
    pub host_network: bool,
}

/// The labels that select a workload's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// `matchLabels`.
    pub labels: BTreeMap<String, String>,
    /// Other workloads' pods these labels also select (empty when exact).
    pub also_selects: Vec<WorkloadRef>,
}

/// Namespaces, pods and workloads.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<PodView>,
    /// namespace → name → index in `pods` (looked up by `&str`, without
    /// allocating, once per record end in monitor mode).
    pod_index: HashMap<String, HashMap<String, usize>>,
    /// namespace → indexes in `pods`, ascending: a selector is compared with
    /// its namespace's pods only, not with every pod of the cluster.
    namespace_pods: HashMap<String, Vec<usize>>,
    workloads: BTreeMap<WorkloadRef, WorkloadView>,
    /// Addresses a kube-system DaemonSet's containers listen on for DNS
    /// (`-localip`, as NodeLocal DNSCache's `node-cache` takes them) → the
    /// DaemonSet's name.
    node_local_dns: BTreeMap<IpAddr, String>,
    /// (namespace, name) of each Service → its cluster addresses.
    service_ips: BTreeMap<(String, String), Vec<IpAddr>>,
}

/// The flag (less its dashes) NodeLocal DNSCache's `node-cache` takes its
/// listen addresses from, comma-separated.
const LOCAL_IP_FLAG: &str = "localip";

/// The addresses a container's command and args name after `-localip`
/// (`-localip A,B` or `-localip=A,B`); words that are no address are skipped.
pub(crate) fn local_ips(args: &[String]) -> Vec<IpAddr> {
    let mut values = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let flag = word.trim_start_matches('-');
        if flag == LOCAL_IP_FLAG {
            values.extend(words.next().map(String::as_str));
        } else if let Some(value) = flag
            .strip_prefix(LOCAL_IP_FLAG)
            .and_then(|rest| rest.strip_prefix('='))
        {
            values.push(value);
        }
    }
    values
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(|address| address.trim().parse().ok())
        .collect()
}

impl ClusterView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// The view of an inventory's objects; `tenant_label` names tenants.
    pub fn from_objects(objects: Vec<Object>, tenant_label: &str) -> Self {
        let mut view = Self::new();
        let mut pods: Vec<PodInfo> = Vec::new();
        let mut cache = IdentityCache::new(IdentityConfig {
            tenant_label: tenant_label.to_owned(),
            node_name: String::new(),
            local_addresses: Vec::new(),
            grace: Duration::from_secs(0),
            platform_namespaces: flow_model::identity::platform_namespaces([]),
        });
        let now = SystemTime::now();
        for object in objects {
            match &object {
                Object::Namespace(namespace) => {
                    let mut labels = namespace.labels.clone();
                    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace.name.clone());
                    view.namespaces.insert(namespace.name.clone(), labels);
                }
                Object::Pod(pod) if !pod.terminal => pods.push(pod.clone()),
                Object::Owner(owner)
                    if owner.kind == ObjectKind::DaemonSet && owner.namespace == "kube-system" =>
                {
                    for ip in local_ips(&owner.template_args) {
                        view.node_local_dns.insert(ip, owner.name.clone());
                    }
                }
                Object::Service(service) => {
                    view.service_ips.insert(
                        (service.namespace.clone(), service.name.clone()),
                        service.cluster_ips.clone(),
                    );
                }
                _ => {}
            }
            cache.apply(CacheEvent::Apply(object), now);
        }
        for pod in pods {
            let (workload, labels) = cache.workload(&pod);
            let key = WorkloadRef {
                namespace: pod.namespace.clone(),
                kind: workload.kind,
                name: workload.name,
            };
            view.namespace_entry(&pod.namespace);
            let index = view.pods.len();
            let entry = view.workloads.entry(key.clone()).or_default();
            entry.labels = labels;
            entry.tenant = Some(cache.tenant(&pod.namespace));
            entry.pods.push(index);
            entry.host_network |= pod.host_network;
            view.index_pod(&pod.namespace, &pod.name, index);
            view.pods.push(PodView {
                namespace: pod.namespace,
                name: pod.name,
                labels: pod.labels,
                ips: pod.ips,
                ports: pod.ports,
                host_network: pod.host_network,
                workload: key,
            });
        }
        view
    }

    fn namespace_entry(&mut self, namespace: &str) -> &mut BTreeMap<String, String> {
        self.namespaces
            .entry(namespace.to_owned())
            .or_insert_with(|| {
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())])
            })
    }

    /// Adds the workloads flows saw that the inventory does not have, as one
    /// pod each carrying the workload's stable labels.
    pub fn add_graph(&mut self, graph: &Graph) {
        for (workload, info) in graph.workloads() {
            if workload.kind == "Service" || self.workloads.contains_key(workload) {
                continue;
            }
            self.namespace_entry(&workload.namespace);
            let index = self.pods.len();
            self.index_pod(&workload.namespace, &format!("({})", workload.name), index);
            self.pods.push(PodView {
                namespace: workload.namespace.clone(),
                name: format!("({})", workload.name),
                labels: info.labels.clone(),
                ips: Vec::new(),
                ports: Vec::new(),
                host_network: false,
                workload: workload.clone(),
            });
            self.workloads.insert(
                workload.clone(),
                WorkloadView {
                    labels: info.labels.clone(),
                    tenant: info.tenant.clone(),
                    pods: vec![index],
                    host_network: false,
                },
            );
        }
    }

    /// A namespace's labels (at least its name label).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces.get(namespace).cloned().unwrap_or_else(|| {
            BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())])
        })
    }

    /// The kube-system DaemonSet that listens for DNS on `ip` on every
    /// node (NodeLocal DNSCache), if the inventory has one.
    pub fn node_local_dns(&self, ip: IpAddr) -> Option<&str> {
        self.node_local_dns.get(&ip).map(String::as_str)
    }

    /// A Service's cluster addresses, if the inventory has the Service.
    pub fn service_ips(&self, namespace: &str, name: &str) -> Option<&[IpAddr]> {
        self.service_ips
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(Vec::as_slice)
    }

    /// Known namespaces.
    pub fn namespaces(&self) -> impl Iterator<Item = &String> {
        self.namespaces.keys()
    }

    /// Indexes in [`Self::pods`] of the pods of `namespace`, ascending.
    pub fn namespace_pod_indexes(&self, namespace: &str) -> &[usize] {
        self.namespace_pods
            .get(namespace)
            .map_or(&[], Vec::as_slice)
    }

    /// The pods of `namespace`.
    pub fn namespace_pods(&self, namespace: &str) -> impl Iterator<Item = &PodView> {
        let indexes = self.namespace_pods.get(namespace).into_iter().flatten();
        indexes.map(|index| &self.pods[*index])
    }

    /// All pods.
    pub fn pods(&self) -> &[PodView] {
        &self.pods
    }

    /// A workload.
    pub fn workload(&self, workload: &WorkloadRef) -> Option<&WorkloadView> {
        self.workloads.get(workload)
    }

    /// All workloads.
    pub fn workloads(&self) -> impl Iterator<Item = (&WorkloadRef, &WorkloadView)> {
        self.workloads.iter()
    }

    /// The pod with this address, if one (not hostNetwork) has it.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodView> {
        self.pods.iter().find(|pod| pod.ips.contains(&ip))
    }

    /// The pod of this namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodView> {
        self.pod_index(namespace, name)
            .map(|index| &self.pods[index])
    }

    /// Adds a pod (for checks of flows whose pods the inventory lacks).
    pub fn add_pod(&mut self, pod: PodView) -> usize {
        self.namespace_entry(&pod.namespace);
        let index = self.pods.len();
        let entry = self.workloads.entry(pod.workload.clone()).or_default();
        entry.pods.push(index);
        entry.host_network |= pod.host_network;
        if entry.labels.is_empty() {
            entry.labels = pod
                .labels
                .iter()
                .filter(|(key, _)| !CHURN_LABELS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
        }
        self.index_pod(&pod.namespace, &pod.name, index);
        self.pods.push(pod);
        index
    }

    /// Where the pod of this namespace and name is in [`Self::pods`].
    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pod_index.get(namespace)?.get(name).copied()
    }

    /// Indexes the pod about to be pushed at `index`; every push goes
    /// through here.
    fn index_pod(&mut self, namespace: &str, name: &str, index: usize) {
        self.pod_index
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned(), index);
        self.namespace_pods
            .entry(namespace.to_owned())
            .or_default()
            .push(index);
    }

    /// Sets a namespace's labels (its name label is kept).
    pub fn set_namespace_labels(&mut self, namespace: &str, labels: &BTreeMap<String, String>) {
        let mut labels = labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned());
        self.namespaces.insert(namespace.to_owned(), labels);
    }

    /// The smallest set of the workload's stable labels that selects its pods
    /// and no other workload's pods in its namespace. Conventional identity
    /// labels are preferred, version-like labels avoided. When no subset is
    /// exact, all stable labels, and the workloads they also select.
    pub fn selector(&self, workload: &WorkloadRef) -> Option<Selection> {
        let view = self.workloads.get(workload)?;
        if view.labels.is_empty() {
            return None;
        }
        let others: Vec<&PodView> = self
            .namespace_pods
            .get(&workload.namespace)
            .into_iter()
            .flatten()
            .map(|index| &self.pods[*index])
            .filter(|pod| pod.workload != *workload)
            .collect();
        let own: Vec<&PodView> = view.pods.iter().map(|index| &self.pods[*index]).collect();
        let rank = |key: &str| {
            let volatile = VOLATILE_LABELS.contains(&key);
            let preferred = PREFERRED_LABELS
                .iter()
                .position(|label| *label == key)
                .unwrap_or(PREFERRED_LABELS.len());
            (volatile, preferred)
        };
        let mut candidates: Vec<(&String, &String)> = view
            .labels
            .iter()
            // Only labels every pod of the workload carries select them all.
            .filter(|(key, value)| own.iter().all(|pod| pod.labels.get(*key) == Some(*value)))
            .collect();
        candidates.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        candidates.truncate(MAX_SELECTOR_SEARCH);
        let selects = |labels: &[(&String, &String)], pod: &PodView| {
            labels
                .iter()
                .all(|(key, value)| pod.labels.get(*key) == Some(*value))
        };
        for size in 1..=candidates.len() {
            let mut chosen: Option<Vec<(&String, &String)>> = None;
            for_each_combination(candidates.len(), size, &mut |indexes| {
                let labels: Vec<(&String, &String)> =
                    indexes.iter().map(|index| candidates[*index]).collect();
                if others.iter().all(|pod| !selects(&labels, pod)) {
                    chosen = Some(labels);
                    return true;
                }
                false
            });
            if let Some(labels) = chosen {
                return Some(Selection {
                    labels: labels
                        .into_iter()
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect(),
                    also_selects: Vec::new(),
                });
            }
        }
        let labels: Vec<(&String, &String)> = if candidates.is_empty() {
            view.labels.iter().collect()
        } else {
            candidates
        };
        let also_selects: BTreeSet<WorkloadRef> = others
            .iter()
            .filter(|pod| selects(&labels, pod))
            .map(|pod| pod.workload.clone())
            .collect();
        Some(Selection {
            labels: labels
                .into_iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            also_selects: also_selects.into_iter().collect(),
        })
    }
}

/// Calls `visit` with each `size`-combination of `0..count` in lexicographic
/// order until it returns true.
fn for_each_combination(count: usize, size: usize, visit: &mut dyn FnMut(&[usize]) -> bool) {
    if size == 0 || size > count {
        return;
    }
    let mut indexes: Vec<usize> = (0..size).collect();
    loop {
        if visit(&indexes) {
            return;
        }
        // Advance the rightmost index that can move.
        let mut position = size;
        while position > 0 {
            position -= 1;
            if indexes[position] < count - size + position {
                indexes[position] += 1;
                for next in position + 1..size {
                    indexes[next] = indexes[next - 1] + 1;
                }
                break;
            }
            if position == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(namespace: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            namespace: namespace.into(),
            kind: "Deployment".into(),
            name: name.into(),
        }
    }

    /// Namespace, workload name, labels.
    type TestPod<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    fn view(pods: &[TestPod<'_>]) -> ClusterView {
        let mut view = ClusterView::new();
        for (namespace, name, labels) in pods {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect();
            view.add_pod(PodView {
                namespace: (*namespace).into(),
                name: format!("{name}-1"),
                labels,
                ips: Vec::new(),
                ports: Vec::new(),
                host_network: false,
                workload: workload(namespace, name),
            });
        }
        view
    }

    #[test]
    fn combinations_come_in_lexicographic_order() {
        let mut seen = Vec::new();
        for_each_combination(4, 2, &mut |indexes| {
            seen.push(indexes.to_vec());
            false
        });
        assert_eq!(seen, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]);
    }

    #[test]
    fn the_smallest_exact_selector_prefers_identity_labels_and_avoids_versions() {
        let view = view(&[
            (
                "shop",
                "web",
                &[
                    ("app", "web"),
                    ("tier", "front"),
                    ("version", "v3"),
                    ("pod-template-hash", "abc"),
                ],
            ),
            (
                "shop",
                "web-canary",
                &[
                    ("app", "web"),
                    ("tier", "front"),
                    ("track", "canary"),
                    ("version", "v4"),
                ],
            ),
            (
                "shop",
                "api",
                &[("app", "api"), ("tier", "back"), ("version", "v3")],
            ),
            ("other", "web", &[("app", "web")]),
        ]);
        // `app=api` alone is unique in shop (the other namespace does not count).
        assert_eq!(
            view.selector(&workload("shop", "api")).unwrap().labels,
            BTreeMap::from([("app".to_owned(), "api".to_owned())])
        );
        // web and web-canary share app and tier: web needs its version, the
        // only label the canary does not share. Churn labels never appear.
        let web = view.selector(&workload("shop", "web")).unwrap();
        assert_eq!(
            web.labels,
            BTreeMap::from([
                ("app".to_owned(), "web".to_owned()),
                ("version".to_owned(), "v3".to_owned())
            ])
        );
        assert!(web.also_selects.is_empty());
        assert_eq!(
            view.selector(&workload("shop", "web-canary"))
                .unwrap()
                .labels,
            BTreeMap::from([("track".to_owned(), "canary".to_owned())])
        );
    }

    #[test]
    fn a_workload_whose_labels_another_has_too_reports_the_overlap() {
        let view = view(&[
            ("shop", "a", &[("app", "shared")]),
            ("shop", "b", &[("app", "shared"), ("extra", "x")]),
            ("shop", "bare", &[]),
        ]);
        let a = view.selector(&workload("shop", "a")).unwrap();
        assert_eq!(a.also_selects, [workload("shop", "b")]);
        assert_eq!(
            view.selector(&workload("shop", "b")).unwrap().labels,
            BTreeMap::from([("extra".to_owned(), "x".to_owned())])
        );
        assert!(view.selector(&workload("shop", "bare")).is_none());
    }
}
