//! Hubble's `FlowFilter`s, compiled once per request and checked against flow
//! records as Hubble checks them against its flows: a record is sent when it
//! matches one whitelist filter (or the whitelist is empty) and no blacklist
//! filter; within a filter every field set must match, and the values of one
//! field are alternatives.
//!
//! A field the agent cannot honour is refused with the field's path, never
//! dropped: HTTP and Kafka fields (`http_*`, `trace_id`), security
//! identities, translated sources, node labels, IP trace IDs and CEL. A
//! `*_fqdn` filter matches the names the flow's other end resolved the
//! address from (see [`crate::names`]); a flow without names matches none, as
//! in Hubble. DNS flows (`--dns-flows`) are L7 flows: event type 129,
//! protocol `dns` (and their transport's), and `dns_query` regular
//! expressions match their query name, final dot included.

use flow_proto::hubble::flow::{
    EventTypeFilter, FlowFilter, NetworkInterface, TcpFlags, TrafficDirection, Verdict,
    flow_filter::Experimental,
};

use super::{
    convert::{self, EVENT_TYPE_TRACE, FlowIdentity},
    dns::{self as l7_dns, EVENT_TYPE_L7},
    selector::{Label, Selector},
};
use crate::api::{
    filter::{Cidr, FilterError, MAX_FILTER_VALUES, MAX_FILTERS},
    fqdn::FqdnPattern,
    hub::StoredFlow,
};
use flow_dns::DnsMessage;
use flow_model::identity::Workload;
use flow_model::record::{Endpoint, FlowRecord, Protocol};
use regex::Regex;

/// The cluster a flow's node is in when the flow names none, as Cilium
/// assumes.
const DEFAULT_CLUSTER: &str = "default";

/// `namespace/prefix` as the pod and service filters take it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NameFilter {
    /// None: any namespace.
    namespace: Option<String>,
    prefix: String,
}

impl NameFilter {
    /// `ns/prefix`, `ns/`, `/prefix`, or `prefix` (in the default namespace).
    fn parse(text: &str) -> Result<Self, String> {
        let (namespace, prefix) = match text.split_once('/') {
            Some(("", prefix)) => (None, prefix),
            Some((namespace, prefix)) => (Some(namespace), prefix),
            None => (Some("default"), text),
        };
        if text.is_empty() || (namespace.is_none() && prefix.is_empty()) {
            return Err(format!(
                "{text:?}: give namespace/name-prefix, namespace/, /name-prefix or name-prefix"
            ));
        }
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            prefix: prefix.to_owned(),
        })
    }

    fn matches(&self, namespace: Option<&str>, name: Option<&str>) -> bool {
        let (Some(namespace), Some(name)) = (namespace, name) else {
            return false;
        };
        self.namespace
            .as_deref()
            .is_none_or(|wanted| wanted == namespace)
            && name.starts_with(&self.prefix)
    }
}

/// A `[cluster/]node` pattern, `*` matching any run of name characters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodePattern {
    cluster: Option<String>,
    node: Option<String>,
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or_default();
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

impl NodePattern {
    fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        if lower.is_empty() {
            return Err("empty pattern: give a node name or glob, e.g. aks-*".to_owned());
        }
        if let Some(bad) = lower
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '/')))
        {
            return Err(format!(
                "{text:?}: {bad:?} is not allowed (letters, digits, `-`, `_`, `.`, `*`, one `/`)"
            ));
        }
        let part = |part: &str| (!part.is_empty()).then(|| part.to_owned());
        match lower.split('/').collect::<Vec<_>>()[..] {
            [node] => Ok(Self {
                cluster: None,
                node: part(node),
            }),
            [cluster, node] => Ok(Self {
                cluster: part(cluster),
                node: part(node),
            }),
            _ => Err(format!("{text:?}: at most one `/` (cluster/node)")),
        }
    }

    fn matches(&self, node_name: &str) -> bool {
        if node_name.is_empty() {
            return false;
        }
        let name = node_name.to_ascii_lowercase();
        let (cluster, node) = name.split_once('/').unwrap_or((DEFAULT_CLUSTER, &name));
        self.cluster
            .as_deref()
            .is_none_or(|pattern| glob_matches(pattern, cluster))
            && self
                .node
                .as_deref()
                .is_none_or(|pattern| glob_matches(pattern, node))
    }
}

/// Conditions on one end of a flow.
#[derive(Debug, Default)]
struct EndMatcher {
    ip: Vec<Cidr>,
    pod: Vec<NameFilter>,
    label: Vec<Selector>,
    service: Vec<NameFilter>,
    workload: Vec<Workload>,
    cluster_name: Vec<String>,
    /// Name patterns, any of which one of the end's names must match.
    fqdn: Vec<FqdnPattern>,
}

impl EndMatcher {
    fn matches(&self, endpoint: &Endpoint, service: Option<(&str, &str)>) -> bool {
        let identity = &*endpoint.identity;
        let namespace = identity.namespace.as_deref();
        (self.fqdn.is_empty() || self.fqdn.iter().any(|fqdn| fqdn.matches_any(&endpoint.names)))
            && (self.ip.is_empty() || self.ip.iter().any(|cidr| cidr.contains(endpoint.ip)))
            && (self.pod.is_empty()
                || self
                    .pod
                    .iter()
                    .any(|pod| pod.matches(namespace, identity.pod.as_deref())))
            && (self.service.is_empty()
                || service.is_some_and(|(namespace, name)| {
                    self.service
                        .iter()
                        .any(|filter| filter.matches(Some(namespace), Some(name)))
                }))
            && (self.workload.is_empty()
                || identity.workload.as_ref().is_some_and(|workload| {
                    self.workload.iter().any(|wanted| {
                        (wanted.name.is_empty() || wanted.name == workload.name)
                            && (wanted.kind.is_empty() || wanted.kind == workload.kind)
                    })
                }))
            // Flows carry no cluster name.
            && self.cluster_name.is_empty()
            && (self.label.is_empty() || {
                let labels = hubble_labels(endpoint);
                self.label.iter().any(|selector| selector.matches(&labels))
            })
    }
}

/// An endpoint's labels as Hubble sees them (see [`convert::labels`]).
fn hubble_labels(endpoint: &Endpoint) -> Vec<Label<'_>> {
    let identity = &*endpoint.identity;
    let mut labels: Vec<Label<'_>> = identity
        .labels
        .iter()
        .map(|(key, value)| Label {
            source: "k8s",
            key,
            value,
        })
        .collect();
    if let (Some(namespace), Some(_)) = (&identity.namespace, &identity.pod) {
        labels.push(Label {
            source: "k8s",
            key: convert::NAMESPACE_LABEL,
            value: namespace,
        });
    }
    labels.extend(convert::reserved_label(identity.kind).map(|key| Label {
        source: "reserved",
        key,
        value: "",
    }));
    labels
}

/// One compiled FlowFilter.
#[derive(Debug, Default)]
struct Matcher {
    source: EndMatcher,
    destination: EndMatcher,
    uuid: Vec<[u8; 16]>,
    traffic_direction: Vec<i32>,
    verdict: Vec<i32>,
    /// Drop reasons: the agent never drops, so a filter on them matches none.
    drop_reason: bool,
    interface: Vec<NetworkInterface>,
    event_type: Vec<EventTypeFilter>,
    protocol: Vec<Protocol>,
    /// `protocol` named `dns`: DNS flows match.
    protocol_dns: bool,
    /// Query names a DNS flow's must match one of; only DNS flows can.
    dns_query: Vec<Regex>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    reply: Vec<bool>,
    tcp_flags: Vec<TcpFlags>,
    node_name: Vec<NodePattern>,
    ip_version: Vec<i32>,
    encrypted: Vec<bool>,
}

impl Matcher {
    fn matches(&self, record: &FlowRecord, dns: Option<&DnsMessage>, id: FlowIdentity) -> bool {
        let one_of = |values: &[i32], value: i32| values.is_empty() || values.contains(&value);
        let service = record
            .destination
            .service
            .as_ref()
            .map(|service| (service.namespace.as_str(), service.name.as_str()));
        let direction = match dns {
            Some(_) => l7_dns::TRAFFIC_DIRECTION,
            None => convert::traffic_direction(record.hook, record.is_reply),
        } as i32;
        let verdict = if record.violation {
            Verdict::Audit
        } else {
            Verdict::Forwarded
        } as i32;
        let ports = record.protocol.has_ports();
        self.source.matches(&record.source, None)
            && self.destination.matches(&record.destination, service)
            && (self.uuid.is_empty() || self.uuid.contains(&id.bytes()))
            && one_of(&self.traffic_direction, direction)
            && one_of(&self.verdict, verdict)
            && !self.drop_reason
            && (self.interface.is_empty()
                || self.interface.iter().any(|wanted| {
                    (wanted.index == 0 || wanted.index == record.interface_index)
                        && (wanted.name.is_empty() || wanted.name == record.interface)
                }))
            && (self.event_type.is_empty()
                || self.event_type.iter().any(|wanted| {
                    let event_type = if dns.is_some() {
                        EVENT_TYPE_L7
                    } else {
                        EVENT_TYPE_TRACE
                    };
                    (wanted.r#type == 0 || wanted.r#type == event_type)
                        && (!wanted.match_sub_type || wanted.sub_type == 0)
                }))
            && ((self.protocol.is_empty() && !self.protocol_dns)
                || self.protocol.contains(&record.protocol)
                || (self.protocol_dns && dns.is_some()))
            && (self.dns_query.is_empty()
                || dns.is_some_and(|message| {
                    let query = l7_dns::query(message);
                    self.dns_query.iter().any(|pattern| pattern.is_match(&query))
                }))
            && (self.source_port.is_empty()
                || ports && self.source_port.contains(&record.source.port))
            && (self.destination_port.is_empty()
                || ports && self.destination_port.contains(&record.destination.port))
            && (self.reply.is_empty() || self.reply.contains(&record.is_reply))
            && (self.tcp_flags.is_empty() || {
                let seen = convert::tcp_flag_bits(&record.tcp_flags);
                record.protocol == Protocol(flow_common::protocol::TCP)
                    && !record.tcp_flags.is_empty()
                    && self.tcp_flags.iter().any(|wanted| {
                        let wanted = convert::hubble_flag_bits(wanted);
                        seen & wanted == wanted
                    })
            })
            && (self.node_name.is_empty()
                || self.node_name.iter().any(|node| node.matches(&record.node)))
            && one_of(
                &self.ip_version,
                if record.source.ip.is_ipv4() { 1 } else { 2 },
            )
            // Flow-agent sees no encryption.
            && (self.encrypted.is_empty() || self.encrypted.contains(&false))
    }
}

/// Which list a filter is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Whitelist,
    Blacklist,
}

impl List {
    fn name(self) -> &'static str {
        match self {
            Self::Whitelist => "whitelist",
            Self::Blacklist => "blacklist",
        }
    }
}

/// Compiles one filter; `path` is its place in the request.
struct Compiler<'a> {
    path: &'a str,
}

impl Compiler<'_> {
    fn error(&self, field: &str, problem: impl Into<String>) -> FilterError {
        FilterError {
            field: format!("{}.{field}", self.path),
            problem: problem.into(),
        }
    }

    /// Each value through `parse`, errors naming `field[index]`.
    fn each<T, V>(
        &self,
        field: &str,
        values: &[V],
        parse: impl Fn(&V) -> Result<T, String>,
    ) -> Result<Vec<T>, FilterError> {
        values
            .iter()
            .enumerate()
            .map(|(index, value)| {
                parse(value).map_err(|problem| self.error(&format!("{field}[{index}]"), problem))
            })
            .collect()
    }

    fn refuse_if_set(&self, field: &str, set: bool, why: &str) -> Result<(), FilterError> {
        if set {
            return Err(self.error(field, format!("not supported by flow-agent: {why}")));
        }
        Ok(())
    }

    fn fqdn(&self, field: &str, values: &[String]) -> Result<Vec<FqdnPattern>, FilterError> {
        self.each(field, values, |text| FqdnPattern::parse(text))
    }

    fn ports(&self, field: &str, values: &[String]) -> Result<Vec<u16>, FilterError> {
        self.each(field, values, |text| {
            text.parse::<u16>()
                .map_err(|_| format!("{text:?} is not a port (0-65535)"))
        })
    }

    fn ip(&self, field: &str, values: &[String]) -> Result<Vec<Cidr>, FilterError> {
        self.each(field, values, |text| {
            Cidr::parse(text)
                .ok_or_else(|| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
        })
    }

    fn names(&self, field: &str, values: &[String]) -> Result<Vec<NameFilter>, FilterError> {
        self.each(field, values, |text| NameFilter::parse(text))
    }

    fn labels(&self, field: &str, values: &[String]) -> Result<Vec<Selector>, FilterError> {
        self.each(field, values, |text| {
            Selector::parse(text).map_err(|error| error.to_string())
        })
    }

    fn workloads(
        &self,
        field: &str,
        values: &[flow_proto::hubble::flow::Workload],
    ) -> Result<Vec<Workload>, FilterError> {
        self.each(field, values, |workload| {
            if workload.name.is_empty() && workload.kind.is_empty() {
                return Err("give a name, a kind, or both".to_owned());
            }
            Ok(Workload {
                kind: workload.kind.clone(),
                name: workload.name.clone(),
            })
        })
    }

    fn enums(
        &self,
        field: &str,
        values: &[i32],
        valid: impl Fn(i32) -> bool,
    ) -> Result<Vec<i32>, FilterError> {
        self.each(field, values, |value| {
            if valid(*value) {
                Ok(*value)
            } else {
                Err(format!("{value} is not a value of this enum"))
            }
        })
    }

    /// The L4 protocols named, and whether `dns` is among the names.
    fn protocols(&self, values: &[String]) -> Result<(Vec<Protocol>, bool), FilterError> {
        use flow_common::protocol::{ICMP, ICMPV6, SCTP, TCP, UDP};
        let mut protocols = Vec::new();
        let mut dns = false;
        for (index, name) in values.iter().enumerate() {
            let numbers: &[u8] = match name.to_ascii_lowercase().as_str() {
                "tcp" => &[TCP],
                "udp" => &[UDP],
                "sctp" => &[SCTP],
                "icmp" => &[ICMP, ICMPV6],
                "icmpv4" => &[ICMP],
                "icmpv6" => &[ICMPV6],
                "igmp" => &[2],
                "vrrp" => &[112],
                "dns" => {
                    dns = true;
                    &[]
                }
                "http" | "kafka" => {
                    return Err(self.error(
                        &format!("protocol[{index}]"),
                        format!("{name:?}: flow-agent's only L7 flows are DNS ones"),
                    ));
                }
                _ => {
                    return Err(self.error(
                        &format!("protocol[{index}]"),
                        format!(
                            "unknown protocol {name:?}: use tcp, udp, sctp, icmp, icmpv4, icmpv6, igmp, vrrp or dns"
                        ),
                    ));
                }
            };
            protocols.extend(numbers.iter().map(|number| Protocol(*number)));
        }
        Ok((protocols, dns))
    }

    /// `dns_query`: regular expressions, unanchored as in Hubble.
    fn dns_queries(&self, values: &[String]) -> Result<Vec<Regex>, FilterError> {
        self.each("dns_query", values, |pattern| {
            Regex::new(pattern)
                .map_err(|error| format!("{pattern:?} is not a regular expression: {error}"))
        })
    }

    fn uuids(&self, values: &[String]) -> Result<Vec<[u8; 16]>, FilterError> {
        self.each("uuid", values, |text| {
            parse_uuid(text)
                .ok_or_else(|| format!("{text:?} is not a UUID (8-4-4-4-12 hex digits)"))
        })
    }

    fn refuse_unsupported(&self, filter: &FlowFilter) -> Result<(), FilterError> {
        let l7 = "flow-agent's only L7 flows are DNS ones";
        for (field, set, why) in [
            (
                "source_ip_xlated",
                !filter.source_ip_xlated.is_empty(),
                "flows carry no translated source address",
            ),
            ("http_status_code", !filter.http_status_code.is_empty(), l7),
            ("http_method", !filter.http_method.is_empty(), l7),
            ("http_path", !filter.http_path.is_empty(), l7),
            ("http_url", !filter.http_url.is_empty(), l7),
            ("http_header", !filter.http_header.is_empty(), l7),
            ("trace_id", !filter.trace_id.is_empty(), l7),
            (
                "source_identity",
                !filter.source_identity.is_empty(),
                "flow-agent allocates no security identities; filter by label, pod or workload",
            ),
            (
                "destination_identity",
                !filter.destination_identity.is_empty(),
                "flow-agent allocates no security identities; filter by label, pod or workload",
            ),
            (
                "node_labels",
                !filter.node_labels.is_empty(),
                "flows carry no node labels; filter by node_name",
            ),
            (
                "ip_trace_id",
                !filter.ip_trace_id.is_empty(),
                "flow-agent reads no IP trace options",
            ),
            (
                "experimental.cel_expression",
                filter
                    .experimental
                    .as_ref()
                    .is_some_and(|Experimental { cel_expression }| !cel_expression.is_empty()),
                "CEL expressions are not evaluated",
            ),
        ] {
            self.refuse_if_set(field, set, why)?;
        }
        Ok(())
    }

    fn compile(&self, filter: &FlowFilter) -> Result<Matcher, FilterError> {
        self.refuse_unsupported(filter)?;
        let source = EndMatcher {
            ip: self.ip("source_ip", &filter.source_ip)?,
            pod: self.names("source_pod", &filter.source_pod)?,
            label: self.labels("source_label", &filter.source_label)?,
            service: self.names("source_service", &filter.source_service)?,
            workload: self.workloads("source_workload", &filter.source_workload)?,
            cluster_name: filter.source_cluster_name.clone(),
            fqdn: self.fqdn("source_fqdn", &filter.source_fqdn)?,
        };
        let destination = EndMatcher {
            ip: self.ip("destination_ip", &filter.destination_ip)?,
            pod: self.names("destination_pod", &filter.destination_pod)?,
            label: self.labels("destination_label", &filter.destination_label)?,
            service: self.names("destination_service", &filter.destination_service)?,
            workload: self.workloads("destination_workload", &filter.destination_workload)?,
            cluster_name: filter.destination_cluster_name.clone(),
            fqdn: self.fqdn("destination_fqdn", &filter.destination_fqdn)?,
        };
        let (protocol, protocol_dns) = self.protocols(&filter.protocol)?;
        Ok(Matcher {
            source,
            destination,
            uuid: self.uuids(&filter.uuid)?,
            traffic_direction: self.enums("traffic_direction", &filter.traffic_direction, |v| {
                TrafficDirection::try_from(v).is_ok()
            })?,
            verdict: self.enums("verdict", &filter.verdict, |v| Verdict::try_from(v).is_ok())?,
            drop_reason: !filter.drop_reason_desc.is_empty(),
            interface: filter.interface.clone(),
            event_type: filter.event_type.clone(),
            protocol,
            protocol_dns,
            dns_query: self.dns_queries(&filter.dns_query)?,
            source_port: self.ports("source_port", &filter.source_port)?,
            destination_port: self.ports("destination_port", &filter.destination_port)?,
            reply: filter.reply.clone(),
            tcp_flags: filter.tcp_flags.clone(),
            node_name: self.each("node_name", &filter.node_name, |text| {
                NodePattern::parse(text)
            })?,
            ip_version: self.enums("ip_version", &filter.ip_version, |v| {
                flow_proto::hubble::flow::IpVersion::try_from(v).is_ok()
            })?,
            encrypted: filter.encrypted.clone(),
        })
    }
}

/// The 16 bytes of a UUID in its text form (8-4-4-4-12 hex digits).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|group| group.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut bytes = [0u8; 16];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// Number of values a filter carries, to bound the cost of a request.
fn values(filter: &FlowFilter) -> usize {
    let FlowFilter {
        uuid,
        source_ip,
        source_pod,
        source_label,
        source_service,
        source_workload,
        destination_ip,
        destination_pod,
        destination_label,
        destination_service,
        destination_workload,
        node_name,
        protocol,
        source_port,
        destination_port,
        tcp_flags,
        interface,
        event_type,
        dns_query,
        ..
    } = filter;
    uuid.len()
        + source_ip.len()
        + source_pod.len()
        + source_label.len()
        + source_service.len()
        + source_workload.len()
        + destination_ip.len()
        + destination_pod.len()
        + destination_label.len()
        + destination_service.len()
        + destination_workload.len()
        + node_name.len()
        + protocol.len()
        + source_port.len()
        + destination_port.len()
        + tcp_flags.len()
        + interface.len()
        + event_type.len()
        + dns_query.len()
}

/// A GetFlows request's whitelist and blacklist.
#[derive(Debug, Default)]
pub struct HubbleMatcher {
    whitelist: Vec<Matcher>,
    blacklist: Vec<Matcher>,
    run: u64,
}

impl HubbleMatcher {
    /// Compiles the filters of a request to the agent run `run`, or names the
    /// first field that cannot be used.
    pub fn compile(
        whitelist: &[FlowFilter],
        blacklist: &[FlowFilter],
        run: u64,
    ) -> Result<Self, FilterError> {
        for (filters, list) in [(whitelist, List::Whitelist), (blacklist, List::Blacklist)] {
            if filters.len() > MAX_FILTERS {
                return Err(FilterError {
                    field: list.name().to_owned(),
                    problem: format!("{} filters; at most {MAX_FILTERS}", filters.len()),
                });
            }
        }
        let total: usize = whitelist.iter().chain(blacklist).map(values).sum();
        if total > MAX_FILTER_VALUES {
            return Err(FilterError {
                field: "whitelist, blacklist".to_owned(),
                problem: format!("{total} values in all; at most {MAX_FILTER_VALUES}"),
            });
        }
        let compile = |filters: &[FlowFilter], list: List| {
            filters
                .iter()
                .enumerate()
                .map(|(index, filter)| {
                    let path = format!("{}[{index}]", list.name());
                    Compiler { path: &path }.compile(filter)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            whitelist: compile(whitelist, List::Whitelist)?,
            blacklist: compile(blacklist, List::Blacklist)?,
            run,
        })
    }

    /// Whether a stored flow is sent.
    pub fn matches(&self, stored: &StoredFlow) -> bool {
        let id = FlowIdentity {
            run: self.run,
            sequence: stored.sequence,
        };
        let record = &stored.record;
        let dns = stored.dns.as_deref();
        (self.whitelist.is_empty()
            || self
                .whitelist
                .iter()
                .any(|matcher| matcher.matches(record, dns, id)))
            && !self
                .blacklist
                .iter()
                .any(|matcher| matcher.matches(record, dns, id))
    }
}

#[cfg(test)]
mod tests;
