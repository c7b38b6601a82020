//! The generator's policy documents written directly as YAML, byte for byte
//! what `yaml_serde` writes for the k8s-openapi and Cilium objects, several
//! times faster: rendering through the serializer was most of the time of an
//! export.
//!
//! The documents have a fixed shape (block mappings and sequences, integers
//! and strings), so the one choice the serializer makes is how to write each
//! string. Strings it writes plain ([`is_plain`]) are written here; a
//! document holding any other string comes back `None`, and the caller
//! renders that one through the serializer.
//!
//! Each document's content hash annotation ([`super::content_hash`]) is
//! written with zeros and filled in once the document is complete.

use std::{collections::BTreeMap, ops::Bound};

use super::{
    MANAGED_BY, PeerSpec, PortSpec, RuleSpec, WorkloadPolicy, content_hash, network_rules,
    push_decimal,
};
use flow_model::record::Protocol;

use crate::cluster::NAMESPACE_NAME_LABEL;

/// The label Cilium selects a pod's namespace by.
pub(super) const CILIUM_NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

/// Longest scalar libyaml writes as a simple `key: value` key; longer keys
/// take the `? key` form, so longer strings are left to the serializer.
const SIMPLE_KEY_MAX: usize = 128;

/// Plain strings the serializer would read back as null or a boolean, and
/// so quotes.
const KEYWORDS: [&str; 9] = [
    "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE",
];

/// Whether `yaml_serde` writes `text` plain, both as a mapping key and as a
/// value in block context. Conservative: a few plain strings (numbers' look-
/// alikes such as `10.0.0.1`) answer false and go through the serializer.
///
/// The serializer quotes a string that would read back as something else
/// (null, a boolean, an integer in any base, a float); libyaml then quotes
/// what is not plain-safe (indicators, `: `, ` #`, spaces, line breaks,
/// non-ASCII) and keys longer than [`SIMPLE_KEY_MAX`].
pub(crate) fn is_plain(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    let safe = |byte: &u8| matches!(byte, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' | b':');
    if bytes.len() > SIMPLE_KEY_MAX
        || !first.is_ascii_alphanumeric()
        || *last == b':'
        || !bytes.iter().all(safe)
    {
        return false;
    }
    if first.is_ascii_digit() {
        // Numbers are made of digits, `.`, `-`, `+`, hexadecimal digits
        // (with `e`/`E`), and the `x`, `o`, `b` of a base prefix: any other
        // byte makes the string a string.
        bytes
            .iter()
            .any(|byte| matches!(byte, b'/' | b':' | b'_' | b'g'..=b'n' | b'p'..=b'w' | b'y' | b'z' | b'G'..=b'Z'))
    } else {
        // Starting with a letter, only the keywords are not strings: `inf`
        // and `nan` parse as floats that are not finite, which the
        // serializer reads as strings.
        !KEYWORDS.contains(&text)
    }
}

/// A block-style document in the serializer's layout: two spaces per level,
/// a sequence's items at the indentation of its key. Field names are our own
/// `'static` strings, all plain; every other string is checked.
struct Document<'a> {
    text: &'a mut String,
    /// The next line goes on after a `- ` instead of starting indented.
    after_dash: bool,
    /// Every string written so far is plain.
    plain: bool,
    /// Where the content hash annotation's lines start, once written.
    hash_lines: Option<usize>,
}

impl<'a> Document<'a> {
    /// A document in `text` (cleared: its capacity is reused).
    fn new(text: &'a mut String, api_version: &str, kind: &str) -> Self {
        text.clear();
        let mut document = Self {
            text,
            after_dash: false,
            plain: true,
            hash_lines: None,
        };
        document.entry(0, "apiVersion", api_version);
        document.entry(0, "kind", kind);
        document
    }

    /// Fills in the content hash; returns whether the serializer would
    /// have written the same (if not, the text is thrown away unsealed).
    fn finish(self) -> bool {
        if let (true, Some(start)) = (self.plain, self.hash_lines) {
            content_hash::seal(self.text, start);
        }
        self.plain
    }

    /// Starts a line at `indent`, or goes on after a `- `.
    fn line(&mut self, indent: usize) {
        if !std::mem::take(&mut self.after_dash) {
            self.text.extend(std::iter::repeat_n(' ', indent));
        }
    }

    fn string(&mut self, text: &str) {
        self.plain &= is_plain(text);
        self.text.push_str(text);
    }

    /// `key:`, its value a block below.
    fn key(&mut self, indent: usize, key: &'static str) {
        self.line(indent);
        self.text.push_str(key);
        self.text.push_str(":\n");
    }

    /// `key: value`.
    fn entry(&mut self, indent: usize, key: &'static str, value: &str) {
        self.line(indent);
        self.text.push_str(key);
        self.text.push_str(": ");
        self.string(value);
        self.text.push('\n');
    }

    /// `label: value`, both checked.
    fn label(&mut self, indent: usize, label: &str, value: &str) {
        self.line(indent);
        self.string(label);
        self.text.push_str(": ");
        self.string(value);
        self.text.push('\n');
    }

    /// `key: 8080`; `quoted` writes `key: '8080'`, as the serializer writes
    /// a string of digits.
    fn number(&mut self, indent: usize, key: &'static str, value: u16, quoted: bool) {
        self.line(indent);
        self.text.push_str(key);
        self.text.push_str(if quoted { ": '" } else { ": " });
        push_decimal(self.text, value);
        self.text.push_str(if quoted { "'\n" } else { "\n" });
    }

    /// `key: {}`.
    fn empty_mapping(&mut self, indent: usize, key: &'static str) {
        self.line(indent);
        self.text.push_str(key);
        self.text.push_str(": {}\n");
    }

    /// `- {}`.
    fn empty_mapping_item(&mut self, indent: usize) {
        self.line(indent);
        self.text.push_str("- {}\n");
    }

    /// `key:` for a sequence, or `key: []` when it is empty.
    fn sequence(&mut self, indent: usize, key: &'static str, empty: bool) {
        if empty {
            self.line(indent);
            self.text.push_str(key);
            self.text.push_str(": []\n");
        } else {
            self.key(indent, key);
        }
    }

    /// A sequence item whose mapping continues on this line.
    fn item(&mut self, indent: usize) {
        self.line(indent);
        self.text.push_str("- ");
        self.after_dash = true;
    }

    /// `- value`.
    fn string_item(&mut self, indent: usize, value: &str) {
        self.line(indent);
        self.text.push_str("- ");
        self.string(value);
        self.text.push('\n');
    }

    fn metadata(&mut self, namespace: &str, name: &str) {
        self.key(0, "metadata");
        self.hash_lines = Some(content_hash::open(self.text));
        self.key(2, "labels");
        self.entry(4, MANAGED_BY.0, MANAGED_BY.1);
        self.entry(2, "name", name);
        self.entry(2, "namespace", namespace);
    }

    /// `key:` and a `LabelSelector` with these `matchLabels` (`key: {}`
    /// when there are none).
    fn selector<'l>(
        &mut self,
        indent: usize,
        key: &'static str,
        labels: impl Iterator<Item = (&'l str, &'l str)>,
    ) {
        let mut labels = labels.peekable();
        if labels.peek().is_none() {
            self.empty_mapping(indent, key);
            return;
        }
        self.key(indent, key);
        self.match_labels(indent + 2, labels);
    }

    /// A `LabelSelector`'s `matchLabels`.
    fn match_labels<'l>(
        &mut self,
        indent: usize,
        labels: impl Iterator<Item = (&'l str, &'l str)>,
    ) {
        self.key(indent, "matchLabels");
        for (label, value) in labels {
            self.label(indent + 2, label, value);
        }
    }

    fn protocol(&mut self, indent: usize, protocol: Protocol) {
        match protocol.name() {
            Some(name) => self.entry(indent, "protocol", name),
            None => self.entry(indent, "protocol", &protocol.to_string()),
        }
    }
}

fn pairs(labels: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    labels
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
}

/// A namespace's default deny NetworkPolicy ([`super::default_deny`]).
pub(super) fn default_deny(text: &mut String, namespace: &str) -> bool {
    let mut document = Document::new(text, "networking.k8s.io/v1", "NetworkPolicy");
    document.metadata(namespace, "default-deny");
    document.key(0, "spec");
    document.empty_mapping(2, "podSelector");
    policy_types(&mut document);
    document.finish()
}

fn policy_types(document: &mut Document<'_>) {
    document.key(2, "policyTypes");
    document.string_item(2, "Ingress");
    document.string_item(2, "Egress");
}

/// A workload's NetworkPolicy ([`super::network_policy`]).
pub(super) fn network_policy(text: &mut String, policy: &WorkloadPolicy) -> bool {
    let WorkloadPolicy {
        workload,
        name,
        selection,
        ingress,
        egress,
    } = policy;
    let namespace = workload.namespace.as_str();
    let (ingress, egress) = (network_rules(ingress), network_rules(egress));
    let mut document = Document::new(text, "networking.k8s.io/v1", "NetworkPolicy");
    document.metadata(namespace, name);
    document.key(0, "spec");
    if !egress.is_empty() {
        document.key(2, "egress");
        for RuleSpec { peers, ports } in egress.iter() {
            document.item(2);
            network_ports(&mut document, ports);
            network_peers(&mut document, "to", peers, namespace);
        }
    }
    if !ingress.is_empty() {
        document.key(2, "ingress");
        for RuleSpec { peers, ports } in ingress.iter() {
            document.item(2);
            network_peers(&mut document, "from", peers, namespace);
            network_ports(&mut document, ports);
        }
    }
    document.selector(2, "podSelector", pairs(&selection.labels));
    policy_types(&mut document);
    document.finish()
}

/// A rule's `ports`, at the indentation of a rule's fields.
fn network_ports(document: &mut Document<'_>, ports: &[PortSpec]) {
    document.sequence(4, "ports", ports.is_empty());
    for PortSpec {
        protocol,
        port,
        end_port,
    } in ports
    {
        document.item(4);
        if let Some(end_port) = end_port {
            document.number(6, "endPort", *end_port, false);
        }
        document.number(6, "port", *port, false);
        document.protocol(6, *protocol);
    }
}

/// A rule's `from` or `to` ([`super::network_peer`]).
fn network_peers(
    document: &mut Document<'_>,
    key: &'static str,
    peers: &[PeerSpec],
    namespace: &str,
) {
    document.sequence(4, key, peers.is_empty());
    for peer in peers {
        document.item(4);
        match peer {
            PeerSpec::Pods {
                namespace: peer_namespace,
                labels,
            } => {
                if **peer_namespace != *namespace {
                    document.selector(
                        6,
                        "namespaceSelector",
                        std::iter::once((NAMESPACE_NAME_LABEL, &**peer_namespace)),
                    );
                }
                document.selector(6, "podSelector", pairs(labels));
            }
            PeerSpec::Cidr(cidr)
            | PeerSpec::Entity { cidr, .. }
            | PeerSpec::NodeLocalResolver(cidr) => {
                document.key(6, "ipBlock");
                document.entry(8, "cidr", cidr);
            }
            // Left out before ([`super::network_rules`]).
            PeerSpec::Fqdn(_) => {}
        }
    }
}

/// A namespace's default deny CiliumNetworkPolicy
/// ([`super::cilium_default_deny`]).
pub(super) fn cilium_default_deny(text: &mut String, namespace: &str) -> bool {
    let mut document = Document::new(text, "cilium.io/v2", "CiliumNetworkPolicy");
    document.metadata(namespace, "default-deny");
    document.key(0, "spec");
    document.empty_mapping(2, "endpointSelector");
    for direction in ["ingress", "egress"] {
        document.key(2, direction);
        document.empty_mapping_item(2);
    }
    document.finish()
}

/// A workload's CiliumNetworkPolicy ([`super::cilium_policy`]).
pub(super) fn cilium_policy(text: &mut String, policy: &WorkloadPolicy) -> bool {
    let WorkloadPolicy {
        workload,
        name,
        selection,
        ingress,
        egress,
    } = policy;
    // DNS names and the DNS proxy rule go through the serializer.
    if super::has_fqdns(policy) {
        return false;
    }
    let mut document = Document::new(text, "cilium.io/v2", "CiliumNetworkPolicy");
    document.metadata(&workload.namespace, name);
    document.key(0, "spec");
    document.selector(2, "endpointSelector", pairs(&selection.labels));
    for (direction, rules) in [("ingress", ingress), ("egress", egress)] {
        if !rules.is_empty() {
            // Rules without peers make no Cilium rule.
            let empty = rules.iter().all(|rule| rule.peers.is_empty());
            document.sequence(2, direction, empty);
            for rule in rules {
                cilium_rules(&mut document, rule, direction == "ingress");
            }
        }
    }
    document.finish()
}

/// One RuleSpec as Cilium rules ([`super::cilium_rules`]): one per kind of
/// peer, endpoints, then CIDRs, then entities (sorted, once each).
fn cilium_rules(document: &mut Document<'_>, rule: &RuleSpec, ingress: bool) {
    let RuleSpec { peers, ports } = rule;
    let (endpoints, cidrs, entities) = if ingress {
        ("fromEndpoints", "fromCIDR", "fromEntities")
    } else {
        ("toEndpoints", "toCIDR", "toEntities")
    };
    let pods: Vec<(&str, &BTreeMap<String, String>)> = peers
        .iter()
        .filter_map(|peer| match peer {
            PeerSpec::Pods { namespace, labels } => Some((&**namespace, &**labels)),
            _ => None,
        })
        .collect();
    if !pods.is_empty() {
        document.item(2);
        document.key(4, endpoints);
        for (namespace, labels) in pods {
            // Never empty: the namespace label is always there.
            document.item(4);
            document.match_labels(6, with_namespace(labels, namespace));
        }
        cilium_ports(document, ports);
    }
    let cidr_list: Vec<&str> = peers
        .iter()
        .filter_map(|peer| match peer {
            PeerSpec::Cidr(cidr) => Some(cidr.as_str()),
            PeerSpec::NodeLocalResolver(cidr) => Some(super::resolver::cilium_node_local(cidr).0),
            _ => None,
        })
        .collect();
    cilium_list_rule(document, cidrs, &cidr_list, ports);
    let mut entity_list: Vec<&str> = peers
        .iter()
        .filter_map(|peer| match peer {
            PeerSpec::Entity { entity, .. } => Some(entity.as_str()),
            PeerSpec::NodeLocalResolver(cidr) => Some(super::resolver::cilium_node_local(cidr).1),
            _ => None,
        })
        .collect();
    entity_list.sort_unstable();
    entity_list.dedup();
    cilium_list_rule(document, entities, &entity_list, ports);
}

/// A Cilium rule whose peers are a list of strings under `key` (CIDRs,
/// entities), unless there are none.
fn cilium_list_rule(
    document: &mut Document<'_>,
    key: &'static str,
    values: &[&str],
    ports: &[PortSpec],
) {
    if values.is_empty() {
        return;
    }
    document.item(2);
    document.key(4, key);
    for value in values {
        document.string_item(4, value);
    }
    cilium_ports(document, ports);
}

/// A pod's labels with its namespace's, as Cilium selects it: the namespace
/// label in its sorted place, replacing one the workload might carry.
fn with_namespace<'l>(
    labels: &'l BTreeMap<String, String>,
    namespace: &'l str,
) -> impl Iterator<Item = (&'l str, &'l str)> {
    let key = CILIUM_NAMESPACE_LABEL;
    let before = labels.range::<str, _>((Bound::Unbounded, Bound::Excluded(key)));
    let after = labels.range::<str, _>((Bound::Excluded(key), Bound::Unbounded));
    before
        .map(|(label, value)| (label.as_str(), value.as_str()))
        .chain(std::iter::once((key, namespace)))
        .chain(after.map(|(label, value)| (label.as_str(), value.as_str())))
}

/// A Cilium rule's `toPorts`: one entry holding every port.
fn cilium_ports(document: &mut Document<'_>, ports: &[PortSpec]) {
    document.key(4, "toPorts");
    document.item(4);
    document.sequence(6, "ports", ports.is_empty());
    for PortSpec {
        protocol,
        port,
        end_port,
    } in ports
    {
        document.item(6);
        document.number(8, "port", *port, true);
        if let Some(end_port) = end_port {
            document.number(8, "endPort", *end_port, false);
        }
        document.protocol(8, *protocol);
    }
}

#[cfg(test)]
mod tests;
