//! Which resolver a workload's DNS went to, and the peer its rule needs.
//!
//! A pod's resolver is not always a CoreDNS pod:
//! - the kube-dns Service, translated to the CoreDNS pods: those pods, by
//!   selector (the rule of a plain DNS edge);
//! - NodeLocal DNSCache: a hostNetwork DaemonSet in kube-system
//!   (`node-local-dns`) listening on a link-local address (169.254.20.10 by
//!   default) given after `-localip`, in iptables mode also on the kube-dns
//!   Service address itself, which is then not translated;
//! - AKS LocalDNS: a proxy on every node, not a pod, at 169.254.10.11 for
//!   pods (169.254.10.10 for the node itself), configured with
//!   `--node-local-dns`.
//!
//! A node-local resolver's address (revealed by a kube-system DaemonSet's
//! `-localip`, or configured), and a Service address such a DaemonSet answers
//! on, get an address rule on UDP and TCP 53.

use std::{collections::BTreeSet, net::IpAddr};

use super::{PeerSpec, cidr};
use crate::{cluster::ClusterView, graph::Party};

/// What answered a DNS edge (port 53).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolver {
    /// A workload's pods (CoreDNS behind kube-dns, or any other).
    Pods,
    /// A resolver on every node at `ip`.
    NodeLocal {
        /// Its address.
        ip: IpAddr,
        /// The kube-system DaemonSet that listens there, if the inventory
        /// has one (else the address was configured).
        daemon_set: Option<String>,
    },
    /// A Service address, not translated, that a node-local resolver
    /// answers on.
    InterceptedService {
        /// The Service's cluster addresses.
        ips: Vec<IpAddr>,
        /// The kube-system DaemonSet that listens there, if revealed.
        daemon_set: Option<String>,
    },
    /// A Service address not translated, that no node-local resolver is
    /// known to answer on.
    Service,
    /// A link-local address neither configured nor revealed: probably a
    /// node-local resolver.
    UnrecognisedLinkLocal(IpAddr),
    /// Any other address.
    Address,
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_link_local(),
        IpAddr::V6(ip) => ip.is_unicast_link_local(),
    }
}

impl Resolver {
    /// What `server`, the server of a DNS edge, is, knowing the cluster and
    /// the configured node-local addresses.
    pub fn of(server: &Party, cluster: &ClusterView, configured: &BTreeSet<IpAddr>) -> Self {
        let revealed = |ip: IpAddr| cluster.node_local_dns(ip).map(str::to_owned);
        match server {
            Party::Address { ip, .. } => {
                let daemon_set = revealed(*ip);
                if daemon_set.is_some() || configured.contains(ip) {
                    Self::NodeLocal {
                        ip: *ip,
                        daemon_set,
                    }
                } else if is_link_local(*ip) {
                    Self::UnrecognisedLinkLocal(*ip)
                } else {
                    Self::Address
                }
            }
            Party::Workload(workload) if workload.kind == "Service" => {
                let ips = cluster
                    .service_ips(&workload.namespace, &workload.name)
                    .unwrap_or_default();
                let daemon_set = ips.iter().find_map(|ip| revealed(*ip));
                if !ips.is_empty()
                    && (daemon_set.is_some() || ips.iter().any(|ip| configured.contains(ip)))
                {
                    Self::InterceptedService {
                        ips: ips.to_vec(),
                        daemon_set,
                    }
                } else {
                    Self::Service
                }
            }
            Party::Workload(_) => Self::Pods,
        }
    }

    /// The peers the rule allows instead of the server's own peer, when the
    /// server is a node-local resolver.
    pub fn peers(&self) -> Option<Vec<PeerSpec>> {
        match self {
            Self::NodeLocal { ip, .. } => Some(vec![PeerSpec::NodeLocalResolver(cidr(*ip))]),
            Self::InterceptedService { ips, .. } => Some(
                ips.iter()
                    .map(|ip| PeerSpec::NodeLocalResolver(cidr(*ip)))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The resolver as REVIEW.md names it: its kind and address.
    pub fn text(&self, server: &Party) -> String {
        let source = |daemon_set: &Option<String>| match daemon_set {
            Some(name) => format!("DaemonSet kube-system/{name}"),
            None => "--node-local-dns".to_owned(),
        };
        match self {
            Self::Pods => format!("DNS pods {server}"),
            Self::NodeLocal { ip, daemon_set } => {
                format!("node-local resolver {ip} ({})", source(daemon_set))
            }
            Self::InterceptedService { ips, daemon_set } => {
                let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                format!(
                    "Service address {} of {server}, answered on the node ({})",
                    ips.join(", "),
                    source(daemon_set)
                )
            }
            Self::Service => format!(
                "Service address of {server}, not translated to its pods and not known to be answered on the node"
            ),
            Self::UnrecognisedLinkLocal(ip) => format!(
                "link-local {ip}: looks like a node-local resolver that neither the inventory nor the configuration names; allowed by address, name it with --node-local-dns {ip}"
            ),
            Self::Address => format!("address {server}"),
        }
    }
}

/// A node-local resolver's address block in Cilium's format: the `toCIDR`
/// entry and the entity of the rules that allow it, on UDP and TCP 53.
///
/// Both, because which one Cilium matches depends on how the node holds the
/// address. By default Cilium leaves link-scoped addresses out of the
/// host's identity, so a resolver on a dummy interface at a link-local
/// address (NodeLocal DNSCache, AKS LocalDNS) is outside the cluster to it
/// and only `toCIDR` matches; with `--local-max-addr-scope` widened, the
/// same address is the `host` entity, which `toCIDR` does not select. The
/// entity admits the pod's own node on port 53 only. When NodeLocal
/// DNSCache runs behind a Local Redirect Policy instead, the queries reach
/// its pods, which the agent sees and the rule selects as pods.
pub fn cilium_node_local(cidr: &str) -> (&str, &'static str) {
    (cidr, "host")
}

#[cfg(test)]
mod tests;
