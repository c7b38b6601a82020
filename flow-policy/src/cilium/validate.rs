//! The checks of a Cilium policy the types cannot make, each failing with
//! the path of the field and what would be valid.

use flow_model::cidr::Cidr;

use super::{
    CLUSTERWIDE, CidrRule, ENTITIES, NAMESPACED, PROTOCOLS, Policy, PortRule, Rule, Selector, Spec,
};

/// A field's path and what is wrong with it.
type Problem = (String, String);

/// Label key prefix of the labels Cilium gives an endpoint from its
/// service account and cluster: flow-agent's identities do not carry them.
const POLICY_LABELS: &str = "io.cilium.k8s.policy.";

pub(super) fn policy(policy: &Policy) -> Result<(), Problem> {
    if policy.api_version != "cilium.io/v2" || ![NAMESPACED, CLUSTERWIDE].contains(&&*policy.kind) {
        return Err((
            "apiVersion".to_owned(),
            format!(
                "{}/{} is not cilium.io/v2 {NAMESPACED} or {CLUSTERWIDE}",
                policy.api_version, policy.kind
            ),
        ));
    }
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    match (policy.is_clusterwide(), namespace.is_empty()) {
        (false, true) => return Err(problem("metadata.namespace", "missing")),
        (true, false) => {
            return Err(problem(
                "metadata.namespace",
                "a cluster-wide policy has no namespace",
            ));
        }
        _ => {}
    }
    if policy.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(problem("metadata.name", "missing"));
    }
    if policy.spec.is_none() && policy.specs.as_ref().is_none_or(Vec::is_empty) {
        return Err(problem("spec", "missing (neither spec nor specs)"));
    }
    for (at, spec) in policy.rules() {
        rules(spec, &at)?;
    }
    Ok(())
}

fn problem(path: &str, message: &str) -> Problem {
    (path.to_owned(), message.to_owned())
}

fn rules(spec: &Spec, at: &str) -> Result<(), Problem> {
    selector(&spec.endpoint_selector, &format!("{at}.endpointSelector"))?;
    for (egress, section) in [(false, &spec.ingress), (true, &spec.egress)] {
        let direction = if egress { "egress" } else { "ingress" };
        for (index, rule) in section.iter().flatten().enumerate() {
            let at = format!("{at}.{direction}[{index}]");
            sides(rule, egress, &at)?;
            peers(rule, &at)?;
            for (place, ports) in rule.to_ports.iter().flatten().enumerate() {
                port_rule(ports, &format!("{at}.toPorts[{place}]"))?;
            }
        }
    }
    Ok(())
}

/// Ingress rules name their peers with `from*`, egress rules with `to*`
/// (and only egress has `toFQDNs`): Cilium's schema has no other field.
fn sides(rule: &Rule, egress: bool, at: &str) -> Result<(), Problem> {
    let ingress_fields = [
        ("fromEndpoints", rule.from_endpoints.is_some()),
        ("fromCIDR", rule.from_cidr.is_some()),
        ("fromCIDRSet", rule.from_cidr_set.is_some()),
        ("fromEntities", rule.from_entities.is_some()),
    ];
    let egress_fields = [
        ("toEndpoints", rule.to_endpoints.is_some()),
        ("toCIDR", rule.to_cidr.is_some()),
        ("toCIDRSet", rule.to_cidr_set.is_some()),
        ("toEntities", rule.to_entities.is_some()),
        ("toFQDNs", rule.to_fqdns.is_some()),
    ];
    let (wrong, direction): (&[(&str, bool)], _) = if egress {
        (&ingress_fields, "an egress")
    } else {
        (&egress_fields, "an ingress")
    };
    match wrong.iter().find(|(_, present)| *present) {
        Some((field, _)) => Err((
            format!("{at}.{field}"),
            format!("not a field of {direction} rule"),
        )),
        None => Ok(()),
    }
}

fn peers(rule: &Rule, at: &str) -> Result<(), Problem> {
    for (field, selectors) in [
        ("fromEndpoints", &rule.from_endpoints),
        ("toEndpoints", &rule.to_endpoints),
    ] {
        for (index, each) in selectors.iter().flatten().enumerate() {
            selector(each, &format!("{at}.{field}[{index}]"))?;
        }
    }
    for (field, entities) in [
        ("fromEntities", &rule.from_entities),
        ("toEntities", &rule.to_entities),
    ] {
        for (index, entity) in entities.iter().flatten().enumerate() {
            if !ENTITIES.contains(&entity.as_str()) {
                return Err((
                    format!("{at}.{field}[{index}]"),
                    format!(
                        "entity {entity:?} cannot be judged: flow-agent tells only {}",
                        ENTITIES.join(", ")
                    ),
                ));
            }
        }
    }
    for (field, blocks) in [("fromCIDR", &rule.from_cidr), ("toCIDR", &rule.to_cidr)] {
        for (index, block) in blocks.iter().flatten().enumerate() {
            cidr(block, &format!("{at}.{field}[{index}]"))?;
        }
    }
    for (field, sets) in [
        ("fromCIDRSet", &rule.from_cidr_set),
        ("toCIDRSet", &rule.to_cidr_set),
    ] {
        for (index, set) in sets.iter().flatten().enumerate() {
            cidr_rule(set, &format!("{at}.{field}[{index}]"))?;
        }
    }
    for (index, name) in rule.to_fqdns.iter().flatten().enumerate() {
        name.check()
            .map_err(|message| (format!("{at}.toFQDNs[{index}]"), message))?;
    }
    Ok(())
}

fn cidr(text: &str, at: &str) -> Result<Cidr, Problem> {
    text.contains('/')
        .then(|| Cidr::parse(text))
        .flatten()
        .ok_or_else(|| (at.to_owned(), format!("{text:?} is not a CIDR")))
}

fn cidr_rule(rule: &CidrRule, at: &str) -> Result<(), Problem> {
    let block = cidr(&rule.cidr, &format!("{at}.cidr"))?;
    for (index, except) in rule.except.iter().flatten().enumerate() {
        let at = format!("{at}.except[{index}]");
        let inner = cidr(except, &at)?;
        if !block.contains_block(&inner) {
            return Err((at, format!("{except} is not inside {}", rule.cidr)));
        }
    }
    Ok(())
}

/// A label key as Cilium reads it: an optional source before a `:`
/// (`k8s:` and `any:` both match the pod's Kubernetes labels), then the
/// key. Another source (`reserved:`, `cidr:`, `container:`) is refused.
pub(crate) fn label_key(key: &str) -> Result<&str, String> {
    let bare = match key.split_once(':') {
        None => key,
        Some(("k8s" | "any", bare)) => bare,
        Some((source, _)) => {
            return Err(format!(
                "label source {source:?} of {key:?} cannot be judged: only k8s: and any:"
            ));
        }
    };
    if bare.starts_with(POLICY_LABELS) {
        return Err(format!(
            "{key:?} cannot be judged: flow-agent does not know endpoints' service accounts and clusters"
        ));
    }
    Ok(bare)
}

fn selector(selector: &Selector, at: &str) -> Result<(), Problem> {
    for key in selector.match_labels.iter().flatten().map(|(key, _)| key) {
        label_key(key).map_err(|message| (format!("{at}.matchLabels"), message))?;
    }
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{at}.matchExpressions[{index}]");
        label_key(&requirement.key).map_err(|message| (format!("{at}.key"), message))?;
        let values = requirement.values.as_ref().map_or(0, Vec::len);
        let valid = match requirement.operator.as_str() {
            "In" | "NotIn" => values > 0,
            "Exists" | "DoesNotExist" => values == 0,
            _ => false,
        };
        if !valid {
            return Err((
                format!("{at}.operator"),
                format!(
                    "{:?} with {values} values: In and NotIn take values, Exists and DoesNotExist none",
                    requirement.operator
                ),
            ));
        }
    }
    Ok(())
}

fn port_rule(rule: &PortRule, at: &str) -> Result<(), Problem> {
    for (index, port) in rule.ports.iter().enumerate() {
        let path = format!("{at}.ports[{index}]");
        if !PROTOCOLS.contains(&port.protocol.as_str()) {
            return Err((
                format!("{path}.protocol"),
                format!("{:?} is not one of {}", port.protocol, PROTOCOLS.join(", ")),
            ));
        }
        let number = match port.port.parse::<u16>() {
            Ok(0) => {
                return Err((
                    format!("{path}.port"),
                    "port 0 (every port) is not judged: list the ports".to_owned(),
                ));
            }
            Ok(number) => number,
            Err(_) => {
                return Err((
                    format!("{path}.port"),
                    format!(
                        "{:?} is not a port number (named ports are not judged)",
                        port.port
                    ),
                ));
            }
        };
        if let Some(end) = port.end_port
            && end < number
        {
            return Err((
                format!("{path}.endPort"),
                format!("{end} is below port {number}"),
            ));
        }
    }
    for (index, selector) in rule.rules.iter().flat_map(|rules| &rules.dns).enumerate() {
        selector
            .check()
            .map_err(|message| (format!("{at}.rules.dns[{index}]"), message))?;
    }
    Ok(())
}
