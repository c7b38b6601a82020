//! Over-broad constructs: peers and ports wider than the traffic that went
//! through them.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::NetworkPolicyPort,
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{Broad, Rule};
use crate::ports::{PROTOCOLS, PortSet, Reach};

/// The over-broad constructs of one rule.
pub(super) fn broad_rule(rule: &Rule<'_>, observed_ports: &Reach, out: &mut Vec<Broad>) {
    let mut push = |construct: String| {
        out.push(Broad {
            policy: rule.reference.policy.clone(),
            rule: Some(rule.reference.clone()),
            construct,
        });
    };
    let side = if rule.egress { "to" } else { "from" };
    match rule.peers {
        Some(peers) if !peers.is_empty() => {
            for peer in peers {
                if peer
                    .namespace_selector
                    .as_ref()
                    .is_some_and(is_empty_selector)
                {
                    push(format!(
                        "`namespaceSelector: {{}}` in `{side}`: every namespace"
                    ));
                }
                if peer.namespace_selector.is_none()
                    && peer.ip_block.is_none()
                    && peer.pod_selector.as_ref().is_none_or(is_empty_selector)
                {
                    push(format!(
                        "`podSelector: {{}}` in `{side}`: every pod of the namespace"
                    ));
                }
                if let Some(block) = &peer.ip_block
                    && (block.cidr == "0.0.0.0/0" || block.cidr == "::/0")
                {
                    push(format!("`ipBlock` {}: every address", block.cidr));
                }
            }
        }
        _ => push(format!("no `{side}`: every source and destination")),
    }
    match rule.ports {
        Some(ports) if !ports.is_empty() => {
            for port in ports {
                broad_range(port, observed_ports, &mut push);
            }
        }
        _ => push("no `ports`: every port of every protocol".to_owned()),
    }
}

/// A port range wider than what was observed through it.
fn broad_range(port: &NetworkPolicyPort, observed: &Reach, push: &mut impl FnMut(String)) {
    let (Some(IntOrString::Int(first)), Some(last)) = (&port.port, port.end_port) else {
        return;
    };
    let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(last)) else {
        return;
    };
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let Some(index) = PROTOCOLS
        .iter()
        .position(|known| known.name() == Some(protocol))
    else {
        return;
    };
    let range = PortSet::range(first, last);
    let used = range.intersection(&observed.0[index]);
    if used.len() < range.len() {
        let seen = if used.is_empty() {
            "none".to_owned()
        } else {
            used.to_string()
        };
        push(format!(
            "`{protocol} {first}-{last}` allows {} ports; observed: {seen}",
            range.len()
        ));
    }
}

fn is_empty_selector(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}
