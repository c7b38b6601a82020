//! What a Kubernetes cluster would say about the lab: an inventory of objects
//! in the YAML `kubectl get ... -o yaml` prints, and kube-proxy's Service DNAT
//! as nftables rules in the node.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use crate::{LabError, Node, Pod, Result};

/// The controller of a lab workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// A Deployment, through a ReplicaSet named `<name>-<hash>`.
    Deployment {
        /// The pod-template-hash.
        hash: &'static str,
    },
    /// A StatefulSet; pods are `<name>-0`, `<name>-1`, ...
    StatefulSet,
}

/// A `kind: List` of objects, built up call by call.
#[derive(Debug, Default)]
pub struct Inventory {
    items: String,
}

fn labels_inline(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}: '{value}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A namespace, with a `tenant` label when given.
    pub fn namespace(&mut self, name: &str, tenant: Option<&str>) -> &mut Self {
        let tenant = tenant.map_or(String::new(), |tenant| format!(", tenant: {tenant}"));
        let _ = write!(
            self.items,
            "- apiVersion: v1\n  kind: Namespace\n  metadata: {{name: {name}, labels: {{kubernetes.io/metadata.name: {name}{tenant}}}}}\n"
        );
        self
    }

    /// A workload and its pods (each running in one lab pod), on `node`.
    pub fn workload(
        &mut self,
        namespace: &str,
        name: &str,
        controller: Controller,
        labels: &[(&str, &str)],
        pods: &[&Pod],
        node: &str,
    ) -> &mut Self {
        let template = labels_inline(labels);
        let (owner_kind, owner_name, churn) = match controller {
            Controller::Deployment { hash } => {
                let _ = write!(
                    self.items,
                    "- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: {name}, namespace: {namespace}}}
  spec:
    selector: {{matchLabels: {{{template}}}}}
    template:
      metadata: {{labels: {{{template}}}}}
      spec: {{containers: [{{name: main, image: registry.example/{name}:1}}]}}
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: {name}-{hash}
    namespace: {namespace}
    ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {name}, uid: d-{namespace}-{name}, controller: true}}]
  spec:
    selector: {{matchLabels: {{{template}}}}}
    template:
      metadata: {{labels: {{{template}, pod-template-hash: '{hash}'}}}}
      spec: {{containers: [{{name: main, image: registry.example/{name}:1}}]}}
"
                );
                (
                    "ReplicaSet",
                    format!("{name}-{hash}"),
                    format!("pod-template-hash: '{hash}'"),
                )
            }
            Controller::StatefulSet => {
                let _ = write!(
                    self.items,
                    "- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {{name: {name}, namespace: {namespace}}}
  spec:
    serviceName: {name}
    selector: {{matchLabels: {{{template}}}}}
    template:
      metadata: {{labels: {{{template}}}}}
      spec: {{containers: [{{name: main, image: registry.example/{name}:1}}]}}
"
                );
                (
                    "StatefulSet",
                    name.to_owned(),
                    format!("controller-revision-hash: {name}-7b9"),
                )
            }
        };
        for (index, pod) in pods.iter().enumerate() {
            let pod_name = match controller {
                Controller::Deployment { hash } => format!("{name}-{hash}-p{index:03}"),
                Controller::StatefulSet => format!("{name}-{index}"),
            };
            let index_label = match controller {
                Controller::StatefulSet => {
                    format!(", statefulset.kubernetes.io/pod-name: {pod_name}")
                }
                Controller::Deployment { .. } => String::new(),
            };
            let _ = write!(
                self.items,
                "- apiVersion: v1
  kind: Pod
  metadata:
    name: {pod_name}
    namespace: {namespace}
    uid: {namespace}-{pod_name}
    labels: {{{template}, {churn}{index_label}}}
    ownerReferences: [{{apiVersion: apps/v1, kind: {owner_kind}, name: {owner_name}, uid: o-{namespace}-{owner_name}, controller: true}}]
  spec:
    nodeName: {node}
    containers: [{{name: main, image: registry.example/{name}:1, ports: [{{name: http, containerPort: 8080}}]}}]
  status:
    phase: Running
    startTime: '2026-01-01T00:00:00Z'
    podIP: {v4}
    podIPs: [{{ip: {v4}}}, {{ip: '{v6}'}}]
",
                v4 = pod.ipv4,
                v6 = pod.ipv6
            );
        }
        self
    }

    /// A ClusterIP Service with one port whose `targetPort` is `target` (a
    /// number or a container port name), resolving to `backend_port` on the
    /// `backends` (pod name, address).
    #[expect(clippy::too_many_arguments, reason = "a Service has this many parts")]
    pub fn service(
        &mut self,
        namespace: &str,
        name: &str,
        cluster_ip: Ipv4Addr,
        port: (&str, u16, &str),
        target: &str,
        backend_port: u16,
        backends: &[(String, IpAddr)],
    ) -> &mut Self {
        let (port_name, port_number, protocol) = port;
        let _ = write!(
            self.items,
            "- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: {namespace}}}
  spec:
    type: ClusterIP
    clusterIP: {cluster_ip}
    clusterIPs: [{cluster_ip}]
    ports: [{{name: {port_name}, port: {port_number}, protocol: {protocol}, targetPort: {target}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: {name}-x9z8
    namespace: {namespace}
    labels: {{kubernetes.io/service-name: {name}}}
  addressType: IPv4
  ports: [{{name: {port_name}, port: {backend_port}, protocol: {protocol}}}]
  endpoints:
"
        );
        for (pod, address) in backends {
            let _ = write!(
                self.items,
                "  - addresses: [{address}]\n    conditions: {{ready: true}}\n    targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}\n"
            );
        }
        self
    }

    /// Any other object, as YAML list items (`- apiVersion: ...`).
    pub fn raw(&mut self, items: &str) -> &mut Self {
        self.items.push_str(items);
        self
    }

    /// The inventory as `kubectl get -o yaml` prints it.
    pub fn yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n{}",
            self.items
        )
    }
}

impl Node {
    /// Adds a kube-proxy style DNAT rule in the node: `cluster_ip:port` over
    /// `protocol` (`tcp` or `udp`) goes to `backend:backend_port`. Needs nft.
    pub fn dnat(
        &self,
        cluster_ip: Ipv4Addr,
        port: u16,
        protocol: &str,
        backend: Ipv4Addr,
        backend_port: u16,
    ) -> Result<()> {
        let rules = format!(
            "add table ip lab-proxy\n\
             add chain ip lab-proxy prerouting {{ type nat hook prerouting priority dstnat; }}\n\
             add rule ip lab-proxy prerouting ip daddr {cluster_ip} {protocol} dport {port} dnat to {backend}:{backend_port}\n"
        );
        let path =
            std::env::temp_dir().join(format!("{}-{cluster_ip}-{port}.nft", self.netns.name));
        std::fs::write(&path, rules).map_err(|source| LabError::Io {
            operation: format!("write {}", path.display()),
            source,
        })?;
        let result = crate::run_in(
            &self.netns.name,
            "nft",
            &["-f", &path.display().to_string()],
        );
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }
}
