//! Finding every agent of a cluster through the Kubernetes API, so that
//! `policy generate --kubernetes` needs no list of servers: the ready
//! endpoints of the agents' headless Service (the agents run with
//! hostNetwork, so each endpoint is a node's address and names its node), or
//! the running pods with the agents' labels.
//!
//! A node whose agent is not ready is not asked but named, like an agent that
//! does not answer: its traffic is missing from the result.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv6Addr,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::Pod,
        discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice},
    },
};
use kube::{Api, Client, Resource, api::ListParams};
use serde::de::DeserializeOwned;
use thiserror::Error;

use flow_model::identity::kubernetes::{self, KubernetesError};

use crate::cli::NamespacedName;

/// The agents' headless Service in deploy/base.
pub const DEFAULT_SERVICE: (&str, &str) = ("flow-agent", "flow-agent");
/// Its gRPC port's name.
pub const DEFAULT_PORT_NAME: &str = "grpc";
/// The agents' namespace, for pods found by label.
pub const DEFAULT_NAMESPACE: &str = "flow-agent";
/// The agents' gRPC port, for pods found by label.
pub const DEFAULT_PORT: u16 = 4245;

/// The label the EndpointSlice controller puts on a Service's slices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Objects asked for per list call; bigger clusters take several.
const PAGE_SIZE: u32 = 500;

/// An agent to ask for its graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Agent {
    /// Its gRPC address: `host:port` (`[v6]:port`), or as `--server` gave it.
    pub address: String,
    /// The node it runs on, when the API says.
    pub node: Option<String>,
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { address, node } = self;
        match node {
            Some(node) => write!(f, "{address} (node {node})"),
            None => f.write_str(address),
        }
    }
}

/// An agent whose graph is missing, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Missing {
    /// The agent.
    pub agent: Agent,
    /// Why: the error chain, or its state in the API.
    pub reason: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent {}: {}", self.agent, self.reason)
    }
}

/// The agents to ask, and those known to be missing already.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// Agents to ask, sorted by node and address, each address once.
    pub agents: Vec<Agent>,
    /// Nodes whose agent is not ready, sorted.
    pub missing: Vec<Missing>,
}

impl Roster {
    /// Adds `other`'s agents and missing nodes, keeping the order and each
    /// address once (with its node name, when one of them has it).
    pub fn extend(&mut self, other: Self) {
        let mut by_address: BTreeMap<String, Agent> = BTreeMap::new();
        for agent in self.agents.drain(..).chain(other.agents) {
            match by_address.get(&agent.address) {
                Some(known) if known.node.is_some() || agent.node.is_none() => {}
                _ => {
                    by_address.insert(agent.address.clone(), agent);
                }
            }
        }
        self.agents = by_address.into_values().collect();
        self.agents
            .sort_by(|a, b| (&a.node, &a.address).cmp(&(&b.node, &b.address)));
        self.missing.extend(other.missing);
        self.missing.sort();
        self.missing.dedup();
    }

    /// Agents asked and missing.
    pub fn len(&self) -> usize {
        self.agents.len() + self.missing.len()
    }

    /// Whether there is no agent at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the agents are listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The EndpointSlices of their headless Service.
    Service {
        /// The Service.
        service: NamespacedName,
        /// The name of its gRPC port.
        port_name: String,
    },
    /// Their pods, by label.
    Pods {
        /// The pods' namespace.
        namespace: String,
        /// A label selector (`key=value,...`).
        selector: String,
        /// Their gRPC port.
        port: u16,
    },
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { service, .. } => write!(
                f,
                "the EndpointSlices of Service {service} ({SERVICE_NAME_LABEL}={})",
                service.name
            ),
            Self::Pods {
                namespace,
                selector,
                ..
            } => write!(f, "pods with labels {selector} in namespace {namespace}"),
        }
    }
}

/// Errors finding the agents.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    /// No client configuration.
    #[error(
        "--kubernetes has no cluster to ask: no in-cluster service account and no usable kubeconfig (KUBECONFIG or ~/.kube/config); name the agents with --server instead"
    )]
    Client(#[source] kube::Error),
    /// The API server refused or failed the list.
    #[error("cannot list {lookup}{hint}")]
    List {
        /// What was listed.
        lookup: String,
        /// What to do about it, for refusals.
        hint: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// A slice has ready endpoints but not the port asked for.
    #[error(
        "EndpointSlice {slice} has no port named {port_name:?} (it has {ports}): give the Service's gRPC port with --agents-port-name"
    )]
    MissingPort {
        /// `namespace/name` of the slice.
        slice: String,
        /// The port name looked for.
        port_name: String,
        /// The names it has.
        ports: String,
    },
    /// Nothing found.
    #[error(
        "no agents found in {lookup}: is the DaemonSet running, and do --agents-service or --agents-selector name it?"
    )]
    NoAgents {
        /// What was listed.
        lookup: String,
    },
}

/// `host:port`, with an IPv6 address in brackets.
fn socket_address(host: &str, port: u16) -> String {
    match host.parse::<Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

/// A client of the API server (in-cluster or kubeconfig), as the agent's
/// identity source makes it.
pub async fn client() -> Result<Client, DiscoveryError> {
    kubernetes::client()
        .await
        .map_err(|KubernetesError::Config(source)| DiscoveryError::Client(source))
}

/// Finds the agents `lookup` lists.
pub async fn discover(client: &Client, lookup: &Lookup) -> Result<Roster, DiscoveryError> {
    let roster = match lookup {
        Lookup::Service { service, port_name } => {
            let selector = format!("{SERVICE_NAME_LABEL}={}", service.name);
            let slices: Vec<EndpointSlice> =
                list(client, &service.namespace, &selector, lookup).await?;
            from_slices(&slices, port_name)?
        }
        Lookup::Pods {
            namespace,
            selector,
            port,
        } => from_pods(&list(client, namespace, selector, lookup).await?, *port),
    };
    if roster.is_empty() {
        return Err(DiscoveryError::NoAgents {
            lookup: lookup.to_string(),
        });
    }
    Ok(roster)
}

/// Every object of a namespace with `selector`, page by page.
async fn list<K>(
    client: &Client,
    namespace: &str,
    selector: &str,
    lookup: &Lookup,
) -> Result<Vec<K>, DiscoveryError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut objects = Vec::new();
    let mut page = ListParams::default().labels(selector).limit(PAGE_SIZE);
    loop {
        let list = api
            .list(&page)
            .await
            .map_err(|source| list_error(lookup, namespace, source))?;
        objects.extend(list.items);
        match list.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => page = page.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

/// The error of a failed list, with a hint when the API server refused who
/// we are or what we asked.
fn list_error(lookup: &Lookup, namespace: &str, source: kube::Error) -> DiscoveryError {
    let resource = match lookup {
        Lookup::Service { .. } => "endpointslices (discovery.k8s.io)",
        Lookup::Pods { .. } => "pods",
    };
    let hint = match &source {
        kube::Error::Api(status) if status.code == 401 => {
            ": the API server did not accept the credentials (kubeconfig user or service account token)".to_owned()
        }
        kube::Error::Api(status) if status.code == 403 => format!(
            ": the caller may not list {resource} in namespace {namespace}; grant it list, as deploy/base's ClusterRole does for the agents' service account"
        ),
        _ => String::new(),
    };
    DiscoveryError::List {
        lookup: lookup.to_string(),
        hint,
        source,
    }
}

/// Ready by the API's rule: a missing condition means ready.
fn is_ready(endpoint: &SliceEndpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|conditions| conditions.ready)
        .unwrap_or(true)
}

/// The port named `port_name` of a slice, if it has one.
fn named_port(slice: &EndpointSlice, port_name: &str) -> Option<u16> {
    slice
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref().unwrap_or("") == port_name)
        .and_then(|port| port.port)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port != 0)
}

/// The agents in a Service's EndpointSlices: one per ready endpoint, at its
/// first address (an endpoint's addresses are one pod's, and Kubernetes says
/// any will do) and the port named `port_name`. An agent in two slices (one
/// per address family) is asked once. Nodes that only have endpoints that
/// are not ready are missing.
pub fn from_slices(slices: &[EndpointSlice], port_name: &str) -> Result<Roster, DiscoveryError> {
    let mut ready: Vec<(Option<String>, Agent)> = Vec::new();
    let mut not_ready: Vec<Agent> = Vec::new();
    for slice in slices {
        let port = named_port(slice, port_name);
        for endpoint in &slice.endpoints {
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let Some(port) = port else {
                if is_ready(endpoint) {
                    return Err(missing_port(slice, port_name));
                }
                continue;
            };
            let agent = Agent {
                address: socket_address(address, port),
                node: endpoint.node_name.clone(),
            };
            if is_ready(endpoint) {
                let pod = endpoint.target_ref.as_ref().and_then(|target| {
                    Some(format!(
                        "{}/{}",
                        target.namespace.as_deref().unwrap_or(""),
                        target.name.as_deref()?
                    ))
                });
                ready.push((pod, agent));
            } else {
                not_ready.push(agent);
            }
        }
    }
    Ok(roster(one_per_pod(ready), not_ready, "not ready"))
}

fn missing_port(slice: &EndpointSlice, port_name: &str) -> DiscoveryError {
    let ports: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .map(|port| format!("{:?}", port.name.as_deref().unwrap_or("")))
        .collect();
    DiscoveryError::MissingPort {
        slice: format!(
            "{}/{}",
            slice.metadata.namespace.as_deref().unwrap_or(""),
            slice.metadata.name.as_deref().unwrap_or("")
        ),
        port_name: port_name.to_owned(),
        ports: if ports.is_empty() {
            "none".to_owned()
        } else {
            ports.join(", ")
        },
    }
}

/// One agent per pod (a dual-stack pod is in an IPv4 and an IPv6 slice):
/// the one whose address sorts first, IPv4 before IPv6.
fn one_per_pod(ready: Vec<(Option<String>, Agent)>) -> Vec<Agent> {
    let mut by_pod: BTreeMap<String, Agent> = BTreeMap::new();
    let mut agents = Vec::new();
    for (pod, agent) in ready {
        let Some(pod) = pod else {
            agents.push(agent);
            continue;
        };
        let first = |agent: &Agent| (agent.address.starts_with('['), agent.address.clone());
        match by_pod.get(&pod) {
            Some(known) if first(known) <= first(&agent) => {}
            _ => {
                by_pod.insert(pod, agent);
            }
        }
    }
    agents.extend(by_pod.into_values());
    agents
}

/// The roster of `ready` agents; the `others` on nodes (or addresses) that
/// have no ready agent are missing, for `reason`.
fn roster(ready: Vec<Agent>, others: Vec<Agent>, reason: &str) -> Roster {
    let nodes: BTreeSet<&String> = ready
        .iter()
        .filter_map(|agent| agent.node.as_ref())
        .collect();
    let addresses: BTreeSet<&String> = ready.iter().map(|agent| &agent.address).collect();
    let missing: Vec<Missing> = others
        .into_iter()
        .filter(|agent| match &agent.node {
            Some(node) => !nodes.contains(node),
            None => !addresses.contains(&agent.address),
        })
        .map(|agent| Missing {
            agent,
            reason: reason.to_owned(),
        })
        .collect();
    let mut roster = Roster::default();
    roster.extend(Roster {
        agents: ready,
        missing,
    });
    roster
}

/// The agents among pods found by label: each running pod with an address,
/// on `port`. Nodes whose pods are all elsewhere in their life (pending,
/// failed) are missing.
pub fn from_pods(pods: &[Pod], port: u16) -> Roster {
    let mut running = Vec::new();
    let mut others = Vec::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let phase = status
            .and_then(|status| status.phase.as_deref())
            .unwrap_or("Unknown");
        let address = status.and_then(|status| status.pod_ip.as_deref());
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
        match address {
            Some(address) if phase == "Running" => running.push(Agent {
                address: socket_address(address, port),
                node,
            }),
            _ => others.push(Agent {
                address: address.map_or_else(
                    || {
                        format!(
                            "pod {}/{}",
                            pod.metadata.namespace.as_deref().unwrap_or(""),
                            pod.metadata.name.as_deref().unwrap_or("")
                        )
                    },
                    |address| socket_address(address, port),
                ),
                node,
            }),
        }
    }
    roster(running, others, "its pod is not running")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(name: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "flow-agent",
                "labels": {"kubernetes.io/service-name": "flow-agent"}},
            "addressType": if name.ends_with("v6") { "IPv6" } else { "IPv4" },
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn endpoint(address: &str, node: &str, pod: &str, ready: Option<bool>) -> serde_json::Value {
        let mut endpoint = json!({
            "addresses": [address],
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": "flow-agent", "name": pod},
        });
        if let Some(ready) = ready {
            endpoint["conditions"] = json!({"ready": ready, "terminating": !ready});
        }
        endpoint
    }

    fn ports() -> serde_json::Value {
        json!([{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 4245}])
    }

    fn agent(address: &str, node: &str) -> Agent {
        Agent {
            address: address.to_owned(),
            node: Some(node.to_owned()),
        }
    }

    #[test]
    fn ready_endpoints_are_agents_on_the_named_port_and_nodes_without_one_are_missing() {
        let slices = [
            slice(
                "flow-agent-abc",
                ports(),
                json!([
                    endpoint("10.0.0.6", "aks-2", "flow-agent-b", Some(true)),
                    endpoint("10.0.0.5", "aks-1", "flow-agent-a", None),
                    // A rollout: the old pod on aks-1 terminates.
                    endpoint("10.0.0.5", "aks-1", "flow-agent-old", Some(false)),
                    endpoint("10.0.0.7", "aks-3", "flow-agent-c", Some(false)),
                ]),
            ),
            // The same pods' IPv6 addresses: asked once, over IPv4.
            slice(
                "flow-agent-v6",
                ports(),
                json!([
                    endpoint("fd00::6", "aks-2", "flow-agent-b", Some(true)),
                    endpoint("fd00::8", "aks-4", "flow-agent-d", Some(true)),
                ]),
            ),
        ];
        let roster = from_slices(&slices, "grpc").unwrap();
        assert_eq!(
            roster.agents,
            [
                agent("10.0.0.5:4245", "aks-1"),
                agent("10.0.0.6:4245", "aks-2"),
                agent("[fd00::8]:4245", "aks-4"),
            ]
        );
        assert_eq!(
            roster
                .missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["agent 10.0.0.7:4245 (node aks-3): not ready"]
        );
        assert_eq!(roster.len(), 4);
    }

    #[test]
    fn a_slice_without_the_named_port_is_an_error_naming_the_ports_it_has() {
        let slices = [slice(
            "flow-agent-abc",
            json!([{"name": "metrics", "port": 9090}]),
            json!([endpoint("10.0.0.5", "aks-1", "flow-agent-a", Some(true))]),
        )];
        let error = from_slices(&slices, "grpc").unwrap_err();
        assert_eq!(
            error.to_string(),
            "EndpointSlice flow-agent/flow-agent-abc has no port named \"grpc\" (it has \"metrics\"): give the Service's gRPC port with --agents-port-name"
        );
        // The placeholder slice of a Service without endpoints has no ports:
        // nothing to ask, and no error.
        let empty = [slice("flow-agent-empty", json!(null), json!([]))];
        assert_eq!(from_slices(&empty, "grpc").unwrap(), Roster::default());
        // A port named as asked, on the same endpoints, works.
        let renamed = [slice(
            "flow-agent-abc",
            json!([{"name": "api", "port": 4300}]),
            json!([endpoint("10.0.0.5", "aks-1", "flow-agent-a", Some(true))]),
        )];
        assert_eq!(
            from_slices(&renamed, "api").unwrap().agents,
            [agent("10.0.0.5:4300", "aks-1")]
        );
    }

    #[test]
    fn running_pods_with_an_address_are_agents() {
        let pod = |name: &str, node: &str, phase: &str, ip: Option<&str>| -> Pod {
            let mut status = json!({"phase": phase});
            if let Some(ip) = ip {
                status["podIP"] = json!(ip);
            }
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "flow-agent"},
                "spec": {"nodeName": node, "containers": []},
                "status": status,
            }))
            .unwrap()
        };
        let roster = from_pods(
            &[
                pod("flow-agent-b", "aks-2", "Running", Some("10.0.0.6")),
                pod("flow-agent-a", "aks-1", "Running", Some("10.0.0.5")),
                pod("flow-agent-evicted", "aks-1", "Failed", None),
                pod("flow-agent-c", "aks-3", "Pending", None),
                pod("flow-agent-d", "aks-4", "Running", None),
            ],
            4250,
        );
        assert_eq!(
            roster.agents,
            [
                agent("10.0.0.5:4250", "aks-1"),
                agent("10.0.0.6:4250", "aks-2")
            ]
        );
        assert_eq!(
            roster
                .missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "agent pod flow-agent/flow-agent-c (node aks-3): its pod is not running",
                "agent pod flow-agent/flow-agent-d (node aks-4): its pod is not running",
            ]
        );
    }

    #[test]
    fn servers_and_discovered_agents_merge_once_per_address_in_a_stable_order() {
        let mut roster = Roster {
            agents: vec![Agent {
                address: "10.0.0.6:4245".to_owned(),
                node: None,
            }],
            missing: Vec::new(),
        };
        roster.extend(Roster {
            agents: vec![
                agent("10.0.0.6:4245", "aks-2"),
                agent("10.0.0.5:4245", "aks-1"),
            ],
            missing: Vec::new(),
        });
        assert_eq!(
            roster.agents,
            [
                agent("10.0.0.5:4245", "aks-1"),
                agent("10.0.0.6:4245", "aks-2")
            ]
        );
    }
}
