//! What one pod may reach on another, for every port at once: the
//! [`Evaluator`]'s semantics over sets of ports rather than one probe, so a
//! change between two sets of policies can be told exactly, pair by pair.

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{Evaluator, Subject, types};
use crate::{
    cluster::PodView,
    ports::{PROTOCOLS, PortSet, Reach},
};

/// A rule's peers and ports, whichever its direction.
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// The ports of `entry`, with named ports resolved on `destination`.
fn entry_reach(entry: &NetworkPolicyPort, destination: &PodView) -> Reach {
    let wanted = entry.protocol.as_deref().unwrap_or("TCP");
    let mut reach = Reach::default();
    let Some(index) = PROTOCOLS
        .iter()
        .position(|protocol| protocol.name() == Some(wanted))
    else {
        return reach;
    };
    reach.0[index] = match &entry.port {
        None => PortSet::all(),
        Some(IntOrString::Int(first)) => {
            let last = entry.end_port.unwrap_or(*first);
            match (u16::try_from(*first), u16::try_from(last)) {
                (Ok(first), Ok(last)) => PortSet::range(first, last),
                _ => PortSet::empty(),
            }
        }
        Some(IntOrString::String(name)) => destination
            .ports
            .iter()
            .filter(|declared| {
                declared.name.as_deref() == Some(name.as_str())
                    && declared.protocol == PROTOCOLS[index]
            })
            .fold(PortSet::empty(), |set, declared| {
                set.union(&PortSet::single(declared.port))
            }),
    };
    reach
}

/// The ports a rule's `ports` allow: all of them when it lists none.
pub(crate) fn rule_reach(ports: Option<&Vec<NetworkPolicyPort>>, destination: &PodView) -> Reach {
    match ports {
        Some(ports) if !ports.is_empty() => ports.iter().fold(Reach::default(), |reach, entry| {
            reach.zip(&entry_reach(entry, destination), PortSet::union)
        }),
        _ => Reach::all(),
    }
}

impl Evaluator<'_> {
    fn peers_match(
        &self,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        namespace: &str,
        other: &PodView,
    ) -> bool {
        peers.is_none_or(|peers| {
            peers.is_empty()
                || peers
                    .iter()
                    .any(|peer| self.peer_matches(peer, namespace, Subject::Pod(other)))
        })
    }

    /// What `pod`'s own policies let it exchange with `other` in one
    /// direction, `destination` being the pod that serves.
    fn direction_reach(
        &self,
        pod: &PodView,
        other: &PodView,
        egress: bool,
        destination: &PodView,
    ) -> Reach {
        if pod.host_network {
            return Reach::all();
        }
        let mut isolated = false;
        let mut reach = Reach::default();
        for policy in self.policies.get(&pod.namespace).into_iter().flatten() {
            let (ingress_type, egress_type) = types(policy);
            if !(if egress { egress_type } else { ingress_type }) || !Self::selects(policy, pod) {
                continue;
            }
            isolated = true;
            let Some(spec) = &policy.spec else { continue };
            let namespace = pod.namespace.as_str();
            let rules: Vec<Rule<'_>> = if egress {
                let rules = spec.egress.iter().flatten();
                rules
                    .map(|rule| (rule.to.as_ref(), rule.ports.as_ref()))
                    .collect()
            } else {
                let rules = spec.ingress.iter().flatten();
                rules
                    .map(|rule| (rule.from.as_ref(), rule.ports.as_ref()))
                    .collect()
            };
            for (peers, ports) in rules {
                if self.peers_match(peers, namespace, other) {
                    reach = reach.zip(&rule_reach(ports, destination), PortSet::union);
                }
            }
        }
        if isolated { reach } else { Reach::all() }
    }

    /// The ports, per protocol, on which `source` may open connections to
    /// `destination`: what its egress and the destination's ingress both
    /// allow. Agrees with [`Evaluator::check`] port by port.
    pub fn reach(&self, source: &PodView, destination: &PodView) -> Reach {
        let egress = self.direction_reach(source, destination, true, destination);
        let ingress = self.direction_reach(destination, source, false, destination);
        egress.zip(&ingress, PortSet::intersection)
    }
}
