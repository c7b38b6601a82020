//! The part of Kubernetes objects identity needs, converted once from the API
//! types (k8s-openapi) whichever source they came from: the API server's
//! watches or an inventory file. Conversion errors name the field.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use thiserror::Error;

use crate::record::Protocol;

/// A field of an object that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{kind} {name}: {field}: {problem}")]
pub struct ObjectError {
    /// Object kind.
    pub kind: &'static str,
    /// `namespace/name`, or `name` for cluster-scoped objects, or `?`.
    pub name: String,
    /// Path of the offending field, e.g. `status.podIPs[1].ip`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// Kinds of objects the identity cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Node.
    Node,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
}

impl ObjectKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 11] = [
        Self::Namespace,
        Self::Pod,
        Self::Service,
        Self::EndpointSlice,
        Self::Node,
        Self::ReplicaSet,
        Self::Deployment,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::Job,
        Self::CronJob,
    ];

    /// The Kubernetes kind name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
            Self::ReplicaSet => "ReplicaSet",
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
        }
    }

    /// The kind for a Kubernetes kind name.
    pub fn from_name(kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == kind)
    }
}

/// Identifies an object: kind, namespace (empty for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: ObjectKind,
    /// Namespace, empty for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A controller reference (`metadata.ownerReferences` with `controller: true`,
/// or the first owner).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerRef {
    /// Owner kind, e.g. `ReplicaSet`.
    pub kind: String,
    /// Owner name, same namespace.
    pub name: String,
}

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels (the tenant label among them).
    pub labels: BTreeMap<String, String>,
}

/// A pod, reduced to what identifies it and when it held its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (a recreated pod with the same name is a different pod).
    pub uid: String,
    /// `status.podIPs` (IPv4 and IPv6). Empty for hostNetwork pods.
    pub ips: Vec<IpAddr>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Controller.
    pub owner: Option<OwnerRef>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `spec.hostNetwork`: the pod uses its node's addresses.
    pub host_network: bool,
    /// Since when it holds its addresses: `status.startTime`, else
    /// `metadata.creationTimestamp`.
    pub since: Option<SystemTime>,
    /// The pod is Succeeded or Failed: it no longer holds its addresses, though
    /// its object (with `status.podIPs`) may linger while the IP is reused.
    pub terminal: bool,
    /// When a terminal pod's last container finished, if the status says.
    pub finished_at: Option<SystemTime>,
    /// Declared container ports, for named ports in NetworkPolicies.
    pub ports: Vec<ContainerPort>,
}

/// A port a pod's container declares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    /// `name`, if given.
    pub name: Option<String>,
    /// `containerPort`.
    pub port: u16,
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
}

/// A workload controller: ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerInfo {
    /// Kind.
    pub kind: ObjectKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its own controller (ReplicaSet → Deployment, Job → CronJob).
    pub owner: Option<OwnerRef>,
    /// Labels of its pod template: what every pod of the workload carries.
    pub template_labels: Option<BTreeMap<String, String>>,
    /// A DaemonSet's pod template's container `command` and `args`, in
    /// order, containers one after another (empty for the other kinds): a
    /// node-local DNS cache names the addresses it listens on there.
    pub template_args: Vec<String>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Port name ("" when unnamed): EndpointSlice ports carry the same name.
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// `targetPort`: a number, or the name of a container port.
    pub target_port: TargetPort,
}

/// A Service's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port, resolved per pod (EndpointSlices carry the number).
    Name(String),
}

/// A Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.clusterIPs` (empty for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePortInfo>,
}

/// One port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Name, matching the Service port's name.
    pub name: String,
    /// The backend (target) port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// Ready (unset means ready, as the API says).
    pub ready: bool,
    /// The pod behind it (`targetRef` of kind Pod).
    pub pod: Option<String>,
}

/// An EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name` label).
    pub service: Option<String>,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// Endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// A node and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub addresses: Vec<IpAddr>,
    /// The InternalIP other nodes reach it at (IPv4 first, as Cilium
    /// announces its Hubble peers).
    pub internal_ip: Option<IpAddr>,
}

/// Any object the cache keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A namespace.
    Namespace(NamespaceInfo),
    /// A pod.
    Pod(PodInfo),
    /// A workload controller.
    Owner(OwnerInfo),
    /// A Service.
    Service(ServiceInfo),
    /// An EndpointSlice.
    EndpointSlice(EndpointSliceInfo),
    /// A node.
    Node(NodeInfo),
}

impl Object {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Self::Namespace(NamespaceInfo { name, .. }) => (ObjectKind::Namespace, "", name),
            Self::Pod(PodInfo {
                namespace, name, ..
            }) => (ObjectKind::Pod, namespace.as_str(), name),
            Self::Owner(OwnerInfo {
                kind,
                namespace,
                name,
                ..
            }) => (*kind, namespace.as_str(), name),
            Self::Service(ServiceInfo {
                namespace, name, ..
            }) => (ObjectKind::Service, namespace.as_str(), name),
            Self::EndpointSlice(EndpointSliceInfo {
                namespace, name, ..
            }) => (ObjectKind::EndpointSlice, namespace.as_str(), name),
            Self::Node(NodeInfo { name, .. }) => (ObjectKind::Node, "", name),
        };
        ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
        }
    }
}

/// Field-level context while converting one object.
struct Fields {
    kind: &'static str,
    name: String,
}

impl Fields {
    fn new(kind: &'static str, meta: &ObjectMeta) -> Self {
        let name = match (&meta.namespace, &meta.name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => "?".to_owned(),
        };
        Self { kind, name }
    }

    fn error(&self, field: impl Into<String>, problem: impl Into<String>) -> ObjectError {
        ObjectError {
            kind: self.kind,
            name: self.name.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn required<'b>(
        &self,
        value: Option<&'b String>,
        field: &str,
    ) -> Result<&'b String, ObjectError> {
        match value {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(self.error(field, "missing")),
        }
    }

    fn ip(&self, text: &str, field: String) -> Result<IpAddr, ObjectError> {
        text.parse()
            .map_err(|_| self.error(field, format!("{text:?} is not an IP address")))
    }

    fn port(&self, value: i32, field: String) -> Result<u16, ObjectError> {
        u16::try_from(value)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| self.error(field, format!("{value} is not a port (1-65535)")))
    }

    fn protocol(&self, value: Option<&String>, field: String) -> Result<Protocol, ObjectError> {
        match value.map(String::as_str) {
            None | Some("TCP") => Ok(Protocol(flow_common::protocol::TCP)),
            Some("UDP") => Ok(Protocol(flow_common::protocol::UDP)),
            Some("SCTP") => Ok(Protocol(flow_common::protocol::SCTP)),
            Some(other) => Err(self.error(field, format!("{other:?} is not TCP, UDP or SCTP"))),
        }
    }
}

fn time(
    value: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Option<SystemTime> {
    value.map(|time| SystemTime::from(time.0))
}

/// The controller among the owner references: the one marked `controller`, or the first.
fn controller(meta: &ObjectMeta) -> Option<OwnerRef> {
    let owners = meta.owner_references.as_ref()?;
    let owner = owners
        .iter()
        .find(|owner| owner.controller == Some(true))
        .or_else(|| owners.first())?;
    Some(OwnerRef {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

fn namespaced<'a>(
    fields: &Fields,
    meta: &'a ObjectMeta,
) -> Result<(&'a String, &'a String), ObjectError> {
    Ok((
        fields.required(meta.namespace.as_ref(), "metadata.namespace")?,
        fields.required(meta.name.as_ref(), "metadata.name")?,
    ))
}

/// Converts a Namespace.
pub fn namespace(object: &Namespace) -> Result<NamespaceInfo, ObjectError> {
    let fields = Fields::new("Namespace", &object.metadata);
    Ok(NamespaceInfo {
        name: fields
            .required(object.metadata.name.as_ref(), "metadata.name")?
            .clone(),
        labels: object.metadata.labels.clone().unwrap_or_default(),
    })
}

/// Converts a Pod.
pub fn pod(object: &Pod) -> Result<PodInfo, ObjectError> {
    let meta = &object.metadata;
    let fields = Fields::new("Pod", meta);
    let (namespace, name) = namespaced(&fields, meta)?;
    let spec = object.spec.as_ref();
    let status = object.status.as_ref();
    let host_network = spec.and_then(|spec| spec.host_network).unwrap_or(false);
    let mut ips = Vec::new();
    if let Some(status) = status {
        match &status.pod_ips {
            Some(pod_ips) if !pod_ips.is_empty() => {
                for (index, pod_ip) in pod_ips.iter().enumerate() {
                    ips.push(fields.ip(&pod_ip.ip, format!("status.podIPs[{index}].ip"))?);
                }
            }
            _ => {
                if let Some(ip) = &status.pod_ip {
                    ips.push(fields.ip(ip, "status.podIP".to_owned())?);
                }
            }
        }
    }
    if host_network {
        // The node's own addresses: they identify the node, not this pod.
        ips.clear();
    }
    let terminal = matches!(
        status.and_then(|status| status.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let finished_at = status
        .filter(|_| terminal)
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|statuses| {
            statuses
                .iter()
                .filter_map(|status| {
                    time(
                        status
                            .state
                            .as_ref()?
                            .terminated
                            .as_ref()?
                            .finished_at
                            .as_ref(),
                    )
                })
                .max()
        });
    Ok(PodInfo {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: meta
            .uid
            .clone()
            .unwrap_or_else(|| format!("{namespace}/{name}")),
        ips,
        labels: meta.labels.clone().unwrap_or_default(),
        owner: controller(meta),
        node: spec.and_then(|spec| spec.node_name.clone()),
        host_network,
        since: time(status.and_then(|status| status.start_time.as_ref()))
            .or_else(|| time(meta.creation_timestamp.as_ref())),
        terminal,
        finished_at,
        ports: container_ports(&fields, spec)?,
    })
}

fn container_ports(
    fields: &Fields,
    spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
) -> Result<Vec<ContainerPort>, ObjectError> {
    let mut ports = Vec::new();
    let Some(spec) = spec else {
        return Ok(ports);
    };
    for (index, container) in spec.containers.iter().enumerate() {
        for (port_index, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{index}].ports[{port_index}]");
            let number = fields.port(port.container_port, format!("{field}.containerPort"))?;
            let protocol = fields.protocol(port.protocol.as_ref(), format!("{field}.protocol"))?;
            ports.push(ContainerPort {
                name: port.name.clone(),
                port: number,
                protocol,
            });
        }
    }
    ports.sort_unstable();
    Ok(ports)
}

fn owner_info(
    kind: ObjectKind,
    meta: &ObjectMeta,
    template_labels: Option<&BTreeMap<String, String>>,
    template_args: Vec<String>,
) -> Result<OwnerInfo, ObjectError> {
    let fields = Fields::new(kind.as_str(), meta);
    let (namespace, name) = namespaced(&fields, meta)?;
    Ok(OwnerInfo {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
        owner: controller(meta),
        template_labels: template_labels.cloned(),
        template_args,
    })
}

/// Converts a ReplicaSet.
pub fn replica_set(object: &ReplicaSet) -> Result<OwnerInfo, ObjectError> {
    let labels = object
        .spec
        .as_ref()
        .and_then(|spec| spec.template.as_ref()?.metadata.as_ref()?.labels.as_ref());
    owner_info(ObjectKind::ReplicaSet, &object.metadata, labels, Vec::new())
}

/// Converts a Deployment.
pub fn deployment(object: &Deployment) -> Result<OwnerInfo, ObjectError> {
    let labels = object
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref()?.labels.as_ref());
    owner_info(ObjectKind::Deployment, &object.metadata, labels, Vec::new())
}

/// Converts a StatefulSet.
pub fn stateful_set(object: &StatefulSet) -> Result<OwnerInfo, ObjectError> {
    let labels = object
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref()?.labels.as_ref());
    owner_info(
        ObjectKind::StatefulSet,
        &object.metadata,
        labels,
        Vec::new(),
    )
}

/// Converts a DaemonSet.
pub fn daemon_set(object: &DaemonSet) -> Result<OwnerInfo, ObjectError> {
    let labels = object
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref()?.labels.as_ref());
    let args = object
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .map(|pod| {
            let containers = pod.containers.iter();
            let words = containers.flat_map(|container| {
                let command = container.command.iter().flatten();
                command.chain(container.args.iter().flatten())
            });
            words.cloned().collect()
        })
        .unwrap_or_default();
    owner_info(ObjectKind::DaemonSet, &object.metadata, labels, args)
}

/// Converts a Job.
pub fn job(object: &Job) -> Result<OwnerInfo, ObjectError> {
    let labels = object
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref()?.labels.as_ref());
    owner_info(ObjectKind::Job, &object.metadata, labels, Vec::new())
}

/// Converts a CronJob.
pub fn cron_job(object: &CronJob) -> Result<OwnerInfo, ObjectError> {
    let labels = object.spec.as_ref().and_then(|spec| {
        spec.job_template
            .spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .labels
            .as_ref()
    });
    owner_info(ObjectKind::CronJob, &object.metadata, labels, Vec::new())
}

/// Converts a Service.
pub fn service(object: &Service) -> Result<ServiceInfo, ObjectError> {
    let meta = &object.metadata;
    let fields = Fields::new("Service", meta);
    let (namespace, name) = namespaced(&fields, meta)?;
    let spec = object.spec.as_ref();
    let mut cluster_ips = Vec::new();
    let listed = spec
        .and_then(|spec| spec.cluster_ips.clone())
        .unwrap_or_default();
    let single = spec.and_then(|spec| spec.cluster_ip.clone());
    let (texts, field): (Vec<String>, &str) = if listed.is_empty() {
        (single.into_iter().collect(), "spec.clusterIP")
    } else {
        (listed, "spec.clusterIPs")
    };
    for (index, text) in texts.iter().enumerate() {
        if text == "None" || text.is_empty() {
            continue;
        }
        cluster_ips.push(fields.ip(text, format!("{field}[{index}]"))?);
    }
    let mut ports = Vec::new();
    for (index, port) in spec
        .and_then(|spec| spec.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let number = fields.port(port.port, format!("spec.ports[{index}].port"))?;
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(target)) => {
                TargetPort::Number(fields.port(*target, format!("spec.ports[{index}].targetPort"))?)
            }
            Some(IntOrString::String(target)) => match target.parse::<i32>() {
                Ok(target) => TargetPort::Number(
                    fields.port(target, format!("spec.ports[{index}].targetPort"))?,
                ),
                Err(_) => TargetPort::Name(target.clone()),
            },
        };
        ports.push(ServicePortInfo {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol: fields.protocol(
                port.protocol.as_ref(),
                format!("spec.ports[{index}].protocol"),
            )?,
            target_port,
        });
    }
    Ok(ServiceInfo {
        namespace: namespace.clone(),
        name: name.clone(),
        cluster_ips,
        ports,
    })
}

/// Converts an EndpointSlice.
pub fn endpoint_slice(object: &EndpointSlice) -> Result<EndpointSliceInfo, ObjectError> {
    let meta = &object.metadata;
    let fields = Fields::new("EndpointSlice", meta);
    let (namespace, name) = namespaced(&fields, meta)?;
    let mut ports = Vec::new();
    for (index, port) in object.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports"; it says nothing useful here.
        let Some(number) = port.port else { continue };
        ports.push(SlicePort {
            name: port.name.clone().unwrap_or_default(),
            port: fields.port(number, format!("ports[{index}].port"))?,
            protocol: fields
                .protocol(port.protocol.as_ref(), format!("ports[{index}].protocol"))?,
        });
    }
    let mut endpoints = Vec::new();
    for (index, endpoint) in object.endpoints.iter().enumerate() {
        if object.address_type == "FQDN" {
            continue;
        }
        let mut addresses = Vec::new();
        for (position, address) in endpoint.addresses.iter().enumerate() {
            addresses
                .push(fields.ip(address, format!("endpoints[{index}].addresses[{position}]"))?);
        }
        endpoints.push(SliceEndpoint {
            addresses,
            ready: endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                .unwrap_or(true),
            pod: endpoint
                .target_ref
                .as_ref()
                .filter(|target| target.kind.as_deref() == Some("Pod"))
                .and_then(|target| target.name.clone()),
        });
    }
    Ok(EndpointSliceInfo {
        namespace: namespace.clone(),
        name: name.clone(),
        service: meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get("kubernetes.io/service-name").cloned()),
        ports,
        endpoints,
    })
}

/// Converts a Node.
pub fn node(object: &Node) -> Result<NodeInfo, ObjectError> {
    let fields = Fields::new("Node", &object.metadata);
    let name = fields.required(object.metadata.name.as_ref(), "metadata.name")?;
    let mut addresses = Vec::new();
    let mut internal = Vec::new();
    for (index, address) in object
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
            let ip = fields.ip(
                &address.address,
                format!("status.addresses[{index}].address"),
            )?;
            addresses.push(ip);
            if address.type_ == "InternalIP" {
                internal.push(ip);
            }
        }
    }
    let internal_ip = internal
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(internal.first())
        .copied();
    Ok(NodeInfo {
        name: name.clone(),
        addresses,
        internal_ip,
    })
}
