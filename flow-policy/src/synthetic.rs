//! Synthetic clusters for measuring the generator: tenants, namespaces and
//! workloads with realistic labels, a learned graph of their connections, and
//! the quality of proposed policies judged by the evaluator: observed
//! connections denied (must be none), and connections allowed that were never
//! observed (least privilege: none beyond the documented DNS-over-TCP rule).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    cluster::{ClusterView, PodView},
    evaluate::{Evaluator, Subject},
    generate::{PolicyFormat, Proposal, render},
    graph::{Change, Edge, EdgeKey, EdgeStats, Graph, Party, WorkloadInfo, WorkloadRef},
};
use flow_model::{
    identity::PeerKind,
    record::{Protocol, Timestamp},
};

/// Shape of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Tenants.
    pub tenants: usize,
    /// Namespaces per tenant.
    pub namespaces: usize,
    /// Workloads per namespace.
    pub workloads: usize,
    /// Edges each workload opens.
    pub edges_per_workload: usize,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
}

/// A deterministic xorshift generator: the same seed gives the same cluster.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        let Self(state) = self;
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// A generated cluster: its view (one pod per workload) and learned graph.
#[derive(Debug)]
pub struct Synthetic {
    /// Namespaces, pods and workloads.
    pub cluster: ClusterView,
    /// What was "observed".
    pub graph: Graph,
}

const PORTS: [(u8, u16); 8] = [
    (6, 80),
    (6, 443),
    (6, 5432),
    (6, 6379),
    (6, 8080),
    (6, 9090),
    (17, 8125),
    (6, 3000),
];

fn workload(tenant: usize, namespace: usize, index: usize) -> WorkloadRef {
    WorkloadRef {
        namespace: format!("t{tenant}-ns{namespace}"),
        kind: if index % 5 == 4 {
            "StatefulSet"
        } else {
            "Deployment"
        }
        .to_owned(),
        name: format!("svc{index}"),
    }
}

/// Builds a cluster of `shape`: most edges stay in the namespace, some cross
/// namespaces of the same tenant, a few cross tenants or leave the cluster,
/// and every workload resolves names through kube-system's DNS.
pub fn generate(shape: Shape) -> Synthetic {
    let Shape {
        tenants,
        namespaces,
        workloads,
        edges_per_workload,
        seed,
    } = shape;
    let mut random = Random(seed | 1);
    let mut cluster = ClusterView::new();
    let mut graph = Graph::new();
    let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let mut address = 0u32;
    let mut add =
        |cluster: &mut ClusterView, graph: &mut Graph, workload: WorkloadRef, tenant: String| {
            address += 1;
            let app = format!("{}-{}", workload.namespace, workload.name);
            let labels = BTreeMap::from([
                ("app".to_owned(), app),
                ("team".to_owned(), tenant.clone()),
                ("version".to_owned(), format!("v{}", address % 3)),
            ]);
            cluster.add_pod(PodView {
                namespace: workload.namespace.clone(),
                name: format!("{}-0", workload.name),
                labels: labels.clone(),
                ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + address))],
                ports: Vec::new(),
                host_network: false,
                workload: workload.clone(),
            });
            graph.apply(Change::Workload {
                workload,
                info: WorkloadInfo {
                    tenant: Some(tenant),
                    labels,
                    last_seen: time,
                },
            });
        };
    let dns = WorkloadRef {
        namespace: "kube-system".into(),
        kind: "Deployment".into(),
        name: "coredns".into(),
    };
    add(&mut cluster, &mut graph, dns.clone(), "kube-system".into());
    for tenant in 0..tenants {
        for namespace in 0..namespaces {
            for index in 0..workloads {
                add(
                    &mut cluster,
                    &mut graph,
                    workload(tenant, namespace, index),
                    format!("tenant{tenant}"),
                );
            }
        }
    }
    let stats = EdgeStats {
        first_seen: time,
        last_seen: time,
        connections: 1,
        packets: 10,
        bytes: 1_000,
        cross_tenant: false,
        services: BTreeSet::new(),
        days: crate::graph::DaysSeen::on(time),
        names: BTreeSet::new(),
    };
    for tenant in 0..tenants {
        for namespace in 0..namespaces {
            for index in 0..workloads {
                let client = Party::Workload(workload(tenant, namespace, index));
                let mut edge = |server: Party, (protocol, port): (u8, u16), cross_tenant: bool| {
                    graph.apply(Change::Edge(Edge {
                        key: EdgeKey {
                            client: client.clone(),
                            server,
                            protocol: Protocol(protocol),
                            port,
                        },
                        stats: EdgeStats {
                            cross_tenant,
                            ..stats.clone()
                        },
                    }));
                };
                edge(Party::Workload(dns.clone()), (17, 53), false);
                for _ in 1..edges_per_workload {
                    let roll = random.below(100);
                    let port = PORTS[random.below(PORTS.len())];
                    let (server, cross) = if roll < 70 {
                        (workload(tenant, namespace, random.below(workloads)), false)
                    } else if roll < 90 {
                        (
                            workload(tenant, random.below(namespaces), random.below(workloads)),
                            false,
                        )
                    } else if roll < 95 {
                        let other =
                            (tenant + 1 + random.below(tenants.max(2) - 1)) % tenants.max(1);
                        (
                            workload(other, random.below(namespaces), random.below(workloads)),
                            other != tenant,
                        )
                    } else {
                        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, random.below(250) as u8));
                        edge(
                            Party::Address {
                                ip,
                                kind: PeerKind::World,
                            },
                            (6, 443),
                            false,
                        );
                        continue;
                    };
                    if Party::Workload(server.clone()) == client {
                        continue;
                    }
                    edge(Party::Workload(server), port, cross);
                }
            }
        }
    }
    // Compacted: most of the graph's memory is its edge map, which inserts
    // leave half full.
    Synthetic {
        cluster,
        graph: graph.compacted(),
    }
}

/// How well a proposal fits what was observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quality {
    /// Observed connections (workload pair, protocol, port) the proposal
    /// should allow.
    pub observed: usize,
    /// Of those, denied: must be 0.
    pub false_denies: usize,
    /// Probes: every ordered workload pair on every observed port and
    /// protocol, plus TCP 53.
    pub probes: usize,
    /// Probes allowed that were never observed (over-permission).
    pub over_permitted: usize,
    /// Of those, TCP 53 to a resolver that served UDP 53: the documented
    /// DNS rule.
    pub dns_over_tcp: usize,
}

/// Judges `proposal` (rendered as NetworkPolicies) by the evaluator over
/// every pair of `cluster`'s workloads. `include_cross_tenant` says whether
/// cross-tenant edges count as observed (they are when the proposal allows
/// them).
pub fn quality(synthetic: &Synthetic, proposal: &Proposal, include_cross_tenant: bool) -> Quality {
    let files = render(proposal, PolicyFormat::Networkpolicy);
    let policies: Vec<NetworkPolicy> = files
        .iter()
        .filter(|(name, _)| *name != "kustomization.yaml")
        .filter_map(|(_, text)| yaml_serde::from_str(text).ok())
        .collect();
    let Synthetic { cluster, graph } = synthetic;
    let evaluator = Evaluator::new(cluster, &policies);
    let pod_of = |workload: &WorkloadRef| {
        cluster
            .workload(workload)
            .and_then(|view| view.pods.first())
            .map(|index| &cluster.pods()[*index])
    };
    let mut observed: BTreeSet<(WorkloadRef, WorkloadRef, Protocol, u16)> = BTreeSet::new();
    let mut ports: BTreeSet<(Protocol, u16)> = [(Protocol(6), 53)].into();
    let mut dns_servers: BTreeSet<(WorkloadRef, WorkloadRef)> = BTreeSet::new();
    for (key, stats) in graph.edges() {
        let (Party::Workload(client), Party::Workload(server)) = (&key.client, &key.server) else {
            continue;
        };
        ports.insert((key.protocol, key.port));
        if stats.cross_tenant && !include_cross_tenant {
            continue;
        }
        observed.insert((client.clone(), server.clone(), key.protocol, key.port));
        if key.port == 53 {
            dns_servers.insert((client.clone(), server.clone()));
        }
    }
    let mut quality = Quality {
        observed: observed.len(),
        ..Quality::default()
    };
    for (client, server, protocol, port) in &observed {
        let (Some(from), Some(to)) = (pod_of(client), pod_of(server)) else {
            continue;
        };
        if !evaluator
            .check(Subject::Pod(from), Subject::Pod(to), *protocol, *port)
            .allowed()
        {
            quality.false_denies += 1;
        }
    }
    let workloads: Vec<&WorkloadRef> = cluster.workloads().map(|(workload, _)| workload).collect();
    for client in &workloads {
        for server in &workloads {
            if client == server {
                continue;
            }
            let (Some(from), Some(to)) = (pod_of(client), pod_of(server)) else {
                continue;
            };
            for (protocol, port) in &ports {
                quality.probes += 1;
                let key = ((*client).clone(), (*server).clone(), *protocol, *port);
                if observed.contains(&key) {
                    continue;
                }
                if evaluator
                    .check(Subject::Pod(from), Subject::Pod(to), *protocol, *port)
                    .allowed()
                {
                    quality.over_permitted += 1;
                    if *port == 53 && dns_servers.contains(&((*client).clone(), (*server).clone()))
                    {
                        quality.dns_over_tcp += 1;
                    }
                }
            }
        }
    }
    quality
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenerateOptions, propose};

    const SMALL: Shape = Shape {
        tenants: 3,
        namespaces: 2,
        workloads: 8,
        edges_per_workload: 6,
        seed: 7,
    };

    #[test]
    fn proposals_deny_nothing_observed_and_allow_nothing_else_but_dns_over_tcp() {
        let synthetic = generate(SMALL);
        for allow_cross_tenant in [false, true] {
            let options = GenerateOptions {
                allow_cross_tenant,
                ..GenerateOptions::default()
            };
            let proposal = propose(&synthetic.graph, &synthetic.cluster, &options);
            let quality = quality(&synthetic, &proposal, allow_cross_tenant);
            assert!(quality.observed > 200, "{quality:?}");
            assert_eq!(quality.false_denies, 0, "{quality:?}");
            // The only connections allowed beyond the observed ones: DNS
            // over TCP to the resolver each workload used over UDP.
            assert_eq!(quality.over_permitted, quality.dns_over_tcp, "{quality:?}");
            assert_eq!(quality.dns_over_tcp, 3 * 2 * 8, "{quality:?}");
            // One policy per workload and a default deny per namespace.
            assert_eq!(proposal.policies.len(), 3 * 2 * 8);
            assert_eq!(proposal.namespaces.len(), 3 * 2);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_cluster() {
        let (one, two) = (generate(SMALL), generate(SMALL));
        assert_eq!(one.graph, two.graph);
        assert_ne!(generate(Shape { seed: 8, ..SMALL }).graph, one.graph);
    }
}
