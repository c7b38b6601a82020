//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (`cilium.io/v2`),
//! the fields the generator writes and those `policy check` can judge
//! exactly, read strictly: an unknown field (a deny section, an L7 HTTP
//! rule, `toServices`, a node selector, ...), a field on the wrong side of
//! a rule, a protocol outside Cilium's list, an entity whose members
//! flow-agent cannot tell, or an FQDN selector that is not a DNS name is an
//! error naming it. A policy that cannot be judged exactly is never judged.
//!
//! Written from Cilium's published CRD schema
//! (`pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml`)
//! and the API types it is made from (`pkg/policy/api`: `rule.go`,
//! `fqdn.go`, `l7.go`): field names and nesting, `port` as a string,
//! `protocol` one of `TCP`, `UDP`, `SCTP`, `VRRP`, `IGMP`, `ANY`
//! (omitted: `ANY`; ICMP is matched by `icmps`, never in `toPorts`),
//! FQDN selectors as `matchName` or `matchPattern` where `*` stands for
//! any run of DNS name characters within one label and a leading `**.` for
//! one or more labels,
//! `enableDefaultDeny`, `toCIDRSet` with `except`, a policy's rules in
//! `spec` or `specs`. Fields Cilium has and flow-agent does not judge (deny
//! sections, L7 HTTP and Kafka rules, `icmps`, `toGroups`, `toServices`,
//! `toNodes`, `cidrGroupRef`, node selectors, `authentication`, rule
//! labels, ...) are not here and so are rejected by their path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What is wrong with a CiliumNetworkPolicy document.
#[derive(Debug, Error)]
pub enum CiliumError {
    /// Not YAML of the expected shape (an unknown field, a missing one, a
    /// wrong type); the message names the field's path.
    #[error("not a Cilium policy flow-agent can judge: {0}")]
    Shape(String),
    /// A value the schema does not allow.
    #[error("{path}: {message}")]
    Value {
        /// Where, as a path of field names.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// Name, namespace, labels and annotations.
    pub metadata: Metadata,
    /// The rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
    /// More rules, judged as if each were a policy of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Spec>>,
}

/// The kind of a namespaced policy.
pub const NAMESPACED: &str = "CiliumNetworkPolicy";

/// The kind of a cluster-wide policy.
pub const CLUSTERWIDE: &str = "CiliumClusterwideNetworkPolicy";

/// The entities whose members flow-agent can tell from its identities:
/// `all`, `none`, `world`, `cluster`, `host` (the endpoint's own node),
/// `remote-node` and `kube-apiserver`. `init`, `health`, `ingress` and
/// `unmanaged` name Cilium-internal identities flow-agent never sees.
pub const ENTITIES: [&str; 7] = [
    "all",
    "none",
    "world",
    "cluster",
    "host",
    "remote-node",
    "kube-apiserver",
];

/// The object metadata the generator writes, in the order Kubernetes'
/// serializer writes it (fields sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Annotations (the content hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Labels (managed-by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A label selector; empty selects every endpoint (of the policy's
/// namespace, for a namespaced policy). Keys may carry Cilium's `k8s:` or
/// `any:` source prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Labels an endpoint must all have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements an endpoint must all meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<Requirement>>,
}

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// `enableDefaultDeny`: whether a policy with rules for a direction puts
/// its endpoints in default deny for it (the default) or only adds allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// For ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// For egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// A `toCIDRSet` or `fromCIDRSet` entry: a block less its exceptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    /// The block.
    pub cidr: String,
    /// Blocks inside it that are not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// The rule of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Free text, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The endpoints the rule applies to.
    pub endpoint_selector: Selector,
    /// Whether the sections put the endpoints in default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Allowed incoming traffic; present (even with one empty rule) puts
    /// the endpoints in default deny for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    /// Allowed outgoing traffic, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: peers (of one kind) on ports. Ingress rules
/// use the `from*` fields, egress rules the `to*` ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Pods sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<Selector>>,
    /// Addresses sending.
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    /// Address blocks sending, with exceptions.
    #[serde(
        rename = "fromCIDRSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Pods received by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<Selector>>,
    /// Addresses received by.
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    /// Address blocks received by, with exceptions.
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities sending (`host`, `kube-apiserver`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<String>>,
    /// Entities received by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<String>>,
    /// DNS names received by: the addresses they resolved to, as Cilium's
    /// DNS proxy saw.
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Ports (any of), with DNS rules for the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
}

/// Ports, and what the DNS proxy lets through on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    /// Ports (any of).
    pub ports: Vec<Port>,
    /// Layer 7 rules: DNS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

/// One port or range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// The port, as a decimal string.
    pub port: String,
    /// Last port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// One of [`PROTOCOLS`]; omitted means `ANY`.
    #[serde(default = "any_protocol")]
    pub protocol: String,
}

fn any_protocol() -> String {
    "ANY".to_owned()
}

/// The protocols Cilium's schema allows in `toPorts`.
pub const PROTOCOLS: [&str; 6] = ["TCP", "UDP", "SCTP", "VRRP", "IGMP", "ANY"];

/// Layer 7 rules of a port rule: DNS only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    /// The DNS questions the proxy lets through.
    pub dns: Vec<FqdnSelector>,
}

/// A DNS name or pattern: exactly one of the two fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "SelectorFields", into = "SelectorFields")]
pub enum FqdnSelector {
    /// This name only.
    MatchName(String),
    /// Names matching, `*` standing for any run of name characters within
    /// one label; `*` alone matches every name.
    MatchPattern(String),
}

impl FqdnSelector {
    /// Whether `name` (lower case, without the final dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            Self::MatchName(wanted) => wanted.trim_end_matches('.').eq_ignore_ascii_case(name),
            Self::MatchPattern(pattern) if pattern == "*" => true,
            Self::MatchPattern(pattern) => {
                let pattern = pattern.trim_end_matches('.');
                match pattern.strip_prefix("**.") {
                    // One or more whole labels, then the rest of the pattern.
                    Some(rest) => name.match_indices('.').any(|(dot, _)| {
                        dot > 0 && pattern_matches(rest.as_bytes(), &name.as_bytes()[dot + 1..])
                    }),
                    None => pattern_matches(pattern.as_bytes(), name.as_bytes()),
                }
            }
        }
    }

    /// Checks the name or pattern: labels of letters, digits, `-` and `_`
    /// (and `*` in a pattern) separated by dots, an optional final dot.
    pub fn check(&self) -> Result<(), String> {
        let (text, wildcard) = match self {
            Self::MatchName(name) => (name, false),
            Self::MatchPattern(pattern) if pattern == "*" => return Ok(()),
            Self::MatchPattern(pattern) => (pattern, true),
        };
        let body = text.strip_suffix('.').unwrap_or(text);
        let good = |byte: u8| {
            byte.is_ascii_alphanumeric()
                || byte == b'-'
                || byte == b'_'
                || (wildcard && byte == b'*')
        };
        if body.is_empty()
            || body.len() > 253
            || !body
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63 && label.bytes().all(good))
        {
            let what = if wildcard {
                "matchPattern"
            } else {
                "matchName"
            };
            return Err(format!("{what} {text:?} is not a DNS name"));
        }
        Ok(())
    }
}

/// An FQDN selector's fields as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_pattern: Option<String>,
}

impl TryFrom<SelectorFields> for FqdnSelector {
    type Error = String;

    fn try_from(fields: SelectorFields) -> Result<Self, String> {
        match (fields.match_name, fields.match_pattern) {
            (Some(name), None) => Ok(Self::MatchName(name)),
            (None, Some(pattern)) => Ok(Self::MatchPattern(pattern)),
            _ => Err("exactly one of matchName and matchPattern".to_owned()),
        }
    }
}

impl From<FqdnSelector> for SelectorFields {
    fn from(selector: FqdnSelector) -> Self {
        match selector {
            FqdnSelector::MatchName(name) => Self {
                match_name: Some(name),
                match_pattern: None,
            },
            FqdnSelector::MatchPattern(pattern) => Self {
                match_name: None,
                match_pattern: Some(pattern),
            },
        }
    }
}

/// `*` matches any run of bytes other than `.`; the rest case-insensitively.
fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len())
            .take_while(|&taken| taken == 0 || name[taken - 1] != b'.')
            .any(|taken| pattern_matches(rest, &name[taken..])),
        Some((first, rest)) => name.split_first().is_some_and(|(byte, name)| {
            byte.eq_ignore_ascii_case(first) && pattern_matches(rest, name)
        }),
    }
}

impl Policy {
    /// Reads one document strictly and checks its values.
    pub fn from_yaml(text: &str) -> Result<Self, CiliumError> {
        let deserializer = yaml_serde::Deserializer::from_str(text);
        Self::from_deserializer(deserializer)
    }

    /// Reads one parsed document strictly and checks its values.
    pub fn from_value(value: yaml_serde::Value) -> Result<Self, CiliumError> {
        Self::from_deserializer(value)
    }

    fn from_deserializer<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, CiliumError> {
        let policy: Self = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            CiliumError::Shape(format!("{path}: {}", error.into_inner()))
        })?;
        policy.check()?;
        Ok(policy)
    }

    /// Whether it is a CiliumClusterwideNetworkPolicy.
    pub fn is_clusterwide(&self) -> bool {
        self.kind == CLUSTERWIDE
    }

    /// Its rules, each with its path (`spec`, `specs[1]`).
    pub fn rules(&self) -> impl Iterator<Item = (String, &Spec)> {
        let spec = self.spec.iter().map(|spec| ("spec".to_owned(), spec));
        let specs = self
            .specs
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, spec)| (format!("specs[{index}]"), spec));
        spec.chain(specs)
    }

    /// Checks what the types alone do not: API version and kind,
    /// namespace, sides of rules, selectors, entities, CIDRs, protocols,
    /// ports, FQDN selectors.
    pub fn check(&self) -> Result<(), CiliumError> {
        validate::policy(self).map_err(|(path, message)| CiliumError::Value { path, message })
    }
}

pub(crate) mod validate;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-deployment-web
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: web
  egress:
  - toFQDNs:
    - matchName: api.example.com
    - matchPattern: '*.cdn.example.com'
    toPorts:
    - ports:
      - port: '443'
        protocol: TCP
";

    #[test]
    fn a_policy_with_fqdns_reads_back() {
        let policy = Policy::from_yaml(GOOD).unwrap();
        let egress = policy.spec.unwrap().egress.unwrap();
        assert_eq!(
            egress[0].to_fqdns.as_deref(),
            Some(
                &[
                    FqdnSelector::MatchName("api.example.com".into()),
                    FqdnSelector::MatchPattern("*.cdn.example.com".into())
                ][..]
            )
        );
    }

    #[test]
    fn an_unknown_field_is_rejected_by_its_path() {
        let text = GOOD.replace("  - toFQDNs:", "  - toGroups: []\n    toFQDNs:");
        let error = Policy::from_yaml(&text).unwrap_err().to_string();
        assert!(
            error
                .starts_with("not a Cilium policy flow-agent can judge: spec.egress[0].toGroups: ")
                && error.contains("unknown field `toGroups`"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_protocol_is_rejected_by_its_path() {
        let text = GOOD.replace("protocol: TCP", "protocol: tcp");
        let error = Policy::from_yaml(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "spec.egress[0].toPorts[0].ports[0].protocol: \"tcp\" is not one of TCP, UDP, SCTP, VRRP, IGMP, ANY"
        );
        // Cilium matches ICMP with `icmps`; its schema refuses it in toPorts.
        let text = GOOD.replace("protocol: TCP", "protocol: ICMP");
        let error = Policy::from_yaml(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "spec.egress[0].toPorts[0].ports[0].protocol: \"ICMP\" is not one of TCP, UDP, SCTP, VRRP, IGMP, ANY"
        );
    }

    #[test]
    fn a_bad_name_and_a_selector_with_both_fields_are_rejected() {
        let text = GOOD.replace("matchName: api.example.com", "matchName: 'api example.com'");
        let error = Policy::from_yaml(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "spec.egress[0].toFQDNs[0]: matchName \"api example.com\" is not a DNS name"
        );
        let text = GOOD.replace(
            "- matchName: api.example.com",
            "- matchName: api.example.com\n      matchPattern: '*'",
        );
        assert!(Policy::from_yaml(&text).is_err());
    }

    #[test]
    fn a_pattern_wildcard_stays_within_one_label() {
        let pattern = FqdnSelector::MatchPattern("*.example.com".into());
        assert!(pattern.matches("api.example.com"));
        assert!(pattern.matches("API.Example.com."));
        assert!(!pattern.matches("a.b.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(FqdnSelector::MatchPattern("*".into()).matches("anything.at.all"));
        assert!(FqdnSelector::MatchName("api.example.com.".into()).matches("api.example.com"));
    }
}
