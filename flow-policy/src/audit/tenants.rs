//! Openings across tenants: workload pairs of different tenants the
//! policies let talk, and workloads nothing isolates for ingress.

use std::collections::BTreeSet;

use super::{Auditor, Candidates, CrossTenant, tenant};
use crate::{cluster::ClusterView, diff::describe_reach, graph::WorkloadRef, load::LoadedPolicy};

/// The namespaces the policies are in.
pub(super) fn covered(policies: &[LoadedPolicy]) -> BTreeSet<String> {
    policies
        .iter()
        .filter_map(|loaded| loaded.policy.metadata.namespace.clone())
        .collect()
}

/// Indexes of the pods some policy isolates for ingress: each policy is
/// compared with its own namespace's pods only.
pub(super) fn ingress_isolated(
    cluster: &ClusterView,
    policies: &[LoadedPolicy],
) -> BTreeSet<usize> {
    let mut isolated = BTreeSet::new();
    for loaded in policies {
        let namespace = loaded
            .policy
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        for index in cluster.namespace_pod_indexes(namespace) {
            if crate::evaluate::applies(&loaded.policy, &cluster.pods()[*index], false) {
                isolated.insert(*index);
            }
        }
    }
    isolated
}

impl Auditor<'_> {
    /// Whether some pod of a workload is not isolated for ingress.
    pub(super) fn ingress_open(&self, pods: &[usize]) -> bool {
        pods.iter().any(|index| {
            !self.cluster.pods()[*index].host_network && !self.ingress_isolated.contains(index)
        })
    }
}

/// Workload pairs of different tenants with some port allowed, where the
/// server is in a namespace the policies cover. A server isolated for
/// ingress is reached only by the peers of its rules; an open one by all.
pub(super) fn cross_tenant(
    auditor: &Auditor<'_>,
    policies: &[LoadedPolicy],
    candidates: &Candidates,
) -> Vec<CrossTenant> {
    let covered = covered(policies);
    let cluster = auditor.cluster;
    let first_pod = |workload: &WorkloadRef| {
        let view = cluster.workload(workload)?;
        cluster.pods().get(*view.pods.first()?)
    };
    let every: BTreeSet<WorkloadRef> = cluster.workloads().map(|(w, _)| w.clone()).collect();
    let no_clients = BTreeSet::new();
    let mut found = Vec::new();
    for (server, view) in cluster.workloads() {
        let Some(server_tenant) = tenant(cluster, server, auditor.platform) else {
            continue;
        };
        let Some(server_pod) = first_pod(server) else {
            continue;
        };
        if !covered.contains(&server.namespace) {
            continue;
        }
        let clients = if auditor.ingress_open(&view.pods) {
            &every
        } else {
            candidates.get(server).unwrap_or(&no_clients)
        };
        for client in clients {
            let Some(client_tenant) = tenant(cluster, client, auditor.platform) else {
                continue;
            };
            let Some(client_pod) = first_pod(client) else {
                continue;
            };
            if client_tenant == server_tenant {
                continue;
            }
            let reach = auditor.evaluator.reach(client_pod, server_pod);
            if reach.is_empty() {
                continue;
            }
            found.push(CrossTenant {
                client: client.to_string(),
                server: server.to_string(),
                tenants: (client_tenant, server_tenant.clone()),
                ports: describe_reach(&reach),
                observed: auditor
                    .pairs
                    .get(client)
                    .is_some_and(|servers| servers.contains_key(server)),
            });
        }
    }
    found
}

/// Workloads of covered namespaces no policy isolates for ingress.
pub(super) fn open_to_all(auditor: &Auditor<'_>, policies: &[LoadedPolicy]) -> Vec<String> {
    let covered = covered(policies);
    auditor
        .cluster
        .workloads()
        .filter(|(workload, view)| {
            covered.contains(&workload.namespace) && auditor.ingress_open(&view.pods)
        })
        .map(|(workload, _)| workload.to_string())
        .collect()
}
