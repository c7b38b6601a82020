//! Flow files for offline learning and checking: the agent's own JSON lines
//! (`flow-agent run --output json`, `--output-file`, `observe -o json`) and
//! Hubble's (`hubble observe -o json`), one object per line, told apart line
//! by line.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::Value;
use thiserror::Error;

use flow_model::{
    identity::{CHURN_LABELS, Identity, PeerKind, ServiceRef, Workload},
    record::{Endpoint, FlowRecord, Hook, Icmp, IcmpErrors, Protocol, Timestamp},
};

/// Errors reading a flow file.
#[derive(Debug, Error)]
pub enum FlowFileError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a flow.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// What a flow file held.
#[derive(Debug, Default)]
pub struct FlowFile {
    /// The flows, in file order.
    pub records: Vec<FlowRecord>,
    /// Lines that are no flow to learn from: loss markers, Hubble flows that
    /// were dropped or are L7 duplicates.
    pub skipped: usize,
}

/// How the ends of flows read from files are told apart into tenants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenancy {
    /// The namespace label that says the tenant in Hubble flows (Cilium
    /// copies namespace labels onto endpoints).
    pub label: String,
    /// Platform namespaces: a flow with an end in one never crosses tenants.
    pub platform: BTreeSet<String>,
}

impl Tenancy {
    /// Tenants named by `label`, and the default platform namespaces.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            platform: flow_model::identity::platform_namespaces([]),
        }
    }

    /// Whether a flow between these two ends crosses tenants: both have a
    /// tenant, they differ, and neither is in a platform namespace.
    pub fn crosses(&self, source: &Identity, destination: &Identity) -> bool {
        let platform = |identity: &Identity| {
            identity
                .namespace
                .as_ref()
                .is_some_and(|namespace| self.platform.contains(namespace))
        };
        match (&source.tenant, &destination.tenant) {
            (Some(a), Some(b)) => a != b && !platform(source) && !platform(destination),
            _ => false,
        }
    }
}

/// Reads a flow file. Each record says whether it crosses tenants as
/// `tenancy` decides, also a record of ours that an agent with other
/// platform namespaces wrote.
pub fn read(path: &Path, tenancy: &Tenancy) -> Result<FlowFile, FlowFileError> {
    let file = std::fs::File::open(path).map_err(|source| FlowFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    read_from(BufReader::new(file), path, tenancy)
}

/// Reads a flow file's lines from `reader`, as [`read`] does; `path` only
/// names the file in errors.
pub fn read_from(
    reader: impl BufRead,
    path: &Path,
    tenancy: &Tenancy,
) -> Result<FlowFile, FlowFileError> {
    let mut flows = FlowFile::default();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| FlowFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| FlowFileError::Invalid {
            path: path.to_owned(),
            line: index + 1,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|error| invalid(error.to_string()))?;
        if value.get("lost_records").is_some() || value.get("lost_events").is_some() {
            flows.skipped += 1;
        } else if let Some(flow) = value.get("flow") {
            match hubble(flow, &tenancy.label).map_err(invalid)? {
                Some(record) => flows.records.push(record),
                None => flows.skipped += 1,
            }
        } else {
            let record: FlowRecord = serde_path_to_error::deserialize(value).map_err(|error| {
                let field = error.path().to_string();
                invalid(format!("{field}: {}", error.into_inner()))
            })?;
            flows.records.push(record);
        }
    }
    for record in &mut flows.records {
        let crosses = tenancy.crosses(&record.source.identity, &record.destination.identity);
        record.cross_tenant = Some(crosses);
    }
    Ok(flows)
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value
        .get(field)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

fn port(value: &Value, field: &str) -> Result<u16, String> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(number) => number
            .as_u64()
            .and_then(|number| u16::try_from(number).ok())
            .ok_or_else(|| format!("{field}: {number} is not a port")),
    }
}

/// One end of a Hubble flow as an endpoint with identity.
fn hubble_endpoint(value: Option<&Value>, ip: IpAddr, port: u16, tenant_label: &str) -> Endpoint {
    let empty = Value::Null;
    let value = value.unwrap_or(&empty);
    let labels: Vec<&str> = value
        .get("labels")
        .and_then(Value::as_array)
        .map(|labels| labels.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let namespace = text(value, "namespace").map(str::to_owned);
    let pod = text(value, "pod_name").map(str::to_owned);
    let reserved = |name: &str| labels.contains(&format!("reserved:{name}").as_str());
    let kind = if pod.is_some() {
        PeerKind::Pod
    } else if reserved("host") {
        PeerKind::Host
    } else if reserved("remote-node") {
        PeerKind::RemoteNode
    } else if reserved("kube-apiserver") {
        PeerKind::KubeApiserver
    } else {
        PeerKind::World
    };
    let namespace_label_prefix = "io.cilium.k8s.namespace.labels.";
    let mut pod_labels = BTreeMap::new();
    let mut tenant = None;
    for label in &labels {
        let Some((key, label_value)) = label
            .strip_prefix("k8s:")
            .and_then(|label| label.split_once('='))
        else {
            continue;
        };
        if let Some(namespace_key) = key.strip_prefix(namespace_label_prefix) {
            if namespace_key == tenant_label {
                tenant = Some(label_value.to_owned());
            }
            continue;
        }
        // Cilium's own labels (namespace, service account, cluster) are not
        // the pod's.
        if key.starts_with("io.kubernetes.pod.")
            || key.starts_with("io.cilium.")
            || CHURN_LABELS.contains(&key)
        {
            continue;
        }
        pod_labels.insert(key.to_owned(), label_value.to_owned());
    }
    let workload = value
        .get("workloads")
        .and_then(Value::as_array)
        .and_then(|workloads| workloads.first())
        .and_then(|workload| {
            Some(Workload {
                kind: text(workload, "kind")?.to_owned(),
                name: text(workload, "name")?.to_owned(),
            })
        })
        .or_else(|| {
            pod.as_ref().map(|pod| Workload {
                kind: "Pod".to_owned(),
                name: pod.clone(),
            })
        });
    let is_pod = kind == PeerKind::Pod;
    Endpoint {
        ip,
        port,
        identity: Arc::new(Identity {
            kind: Some(kind),
            tenant: if is_pod {
                tenant.or_else(|| namespace.clone())
            } else {
                None
            },
            namespace,
            pod,
            workload: workload.filter(|_| is_pod),
            labels: if is_pod { pod_labels } else { BTreeMap::new() },
            node: None,
            note: None,
        }),
        service: None,
        names: Vec::new(),
    }
}

/// Hubble's `source_names` or `destination_names`: the DNS names Cilium's
/// DNS proxy saw resolve to that end's address, sorted and distinct like a
/// record's; an entry that is no string or is empty is skipped.
fn hubble_names(flow: &Value, field: &str) -> Vec<Arc<str>> {
    let names: BTreeSet<&str> = flow
        .get(field)
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(|name| name.trim_end_matches('.'))
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default();
    names.into_iter().map(Arc::from).collect()
}

/// A `hubble observe -o json` flow as a record; `None` for flows that teach
/// nothing (not forwarded, L7 duplicates, no IP layer).
fn hubble(flow: &Value, tenant_label: &str) -> Result<Option<FlowRecord>, String> {
    // AUDIT: audit mode let through what policy would drop (flow-agent's
    // monitor-mode violations): the traffic happened.
    if text(flow, "verdict").is_some_and(|verdict| !matches!(verdict, "FORWARDED" | "AUDIT")) {
        return Ok(None);
    }
    if text(flow, "Type").is_some_and(|kind| kind != "L3_L4") {
        return Ok(None);
    }
    let Some(ip) = flow.get("IP") else {
        return Ok(None);
    };
    let address = |field: &str| -> Result<IpAddr, String> {
        text(ip, field)
            .ok_or_else(|| format!("flow.IP.{field}: missing"))?
            .parse()
            .map_err(|_| format!("flow.IP.{field}: not an address"))
    };
    let (source_ip, destination_ip) = (address("source")?, address("destination")?);
    let l4 = flow.get("l4").cloned().unwrap_or(Value::Null);
    let (protocol, ports, icmp, flags) = if let Some(tcp) = l4.get("TCP") {
        let flags: Vec<String> = tcp
            .get("flags")
            .and_then(Value::as_object)
            .map(|flags| {
                flags
                    .iter()
                    .filter(|(_, set)| set.as_bool() == Some(true))
                    .map(|(name, _)| name.to_ascii_uppercase())
                    .collect()
            })
            .unwrap_or_default();
        (6, Some(tcp), None, flags)
    } else if let Some(udp) = l4.get("UDP") {
        (17, Some(udp), None, Vec::new())
    } else if let Some(sctp) = l4.get("SCTP") {
        (132, Some(sctp), None, Vec::new())
    } else if let Some(icmp) = l4
        .get("ICMPv4")
        .map(|icmp| (1, icmp))
        .or_else(|| l4.get("ICMPv6").map(|icmp| (58, icmp)))
    {
        let (number, fields) = icmp;
        let field = |name: &str| {
            fields
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|value| u8::try_from(value).ok())
                .unwrap_or(0)
        };
        (
            number,
            None,
            Some(Icmp {
                icmp_type: field("type"),
                code: field("code"),
            }),
            Vec::new(),
        )
    } else {
        return Ok(None);
    };
    let (source_port, destination_port) = match ports {
        Some(ports) => (
            port(ports, "source_port")?,
            port(ports, "destination_port")?,
        ),
        None => (0, 0),
    };
    let time: Timestamp = serde_json::from_value(flow.get("time").cloned().unwrap_or(Value::Null))
        .map_err(|error| format!("flow.time: {error}"))?;
    let mut source = hubble_endpoint(flow.get("source"), source_ip, source_port, tenant_label);
    let mut destination = hubble_endpoint(
        flow.get("destination"),
        destination_ip,
        destination_port,
        tenant_label,
    );
    source.names = hubble_names(flow, "source_names");
    destination.names = hubble_names(flow, "destination_names");
    if let Some(service) = flow.get("destination_service")
        && let (Some(name), Some(namespace)) = (text(service, "name"), text(service, "namespace"))
    {
        destination.service = Some(ServiceRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip: destination_ip,
            port: destination_port,
            target_port: Some(destination_port),
        });
    }
    // Hubble leaves `is_reply` out when it does not know. Then only the
    // packet itself can tell: a TCP SYN, SYN-ACK, or an ICMP echo. Anything
    // else is skipped: taken for a request, a reply would become an edge
    // from the server to the client's ephemeral port.
    let has = |flag: &str| flags.iter().any(|set| set == flag);
    let is_reply = match flow.get("is_reply").and_then(Value::as_bool) {
        Some(known) => known,
        None => match (protocol, icmp.map(|Icmp { icmp_type, .. }| icmp_type)) {
            (6, _) if has("SYN") => has("ACK"),
            (1, Some(8)) | (58, Some(128)) => false,
            (1, Some(0)) | (58, Some(129)) => true,
            _ => return Ok(None),
        },
    };
    let new_connection = !is_reply
        && match protocol {
            6 => flags.iter().any(|flag| flag == "SYN") && !flags.iter().any(|flag| flag == "ACK"),
            _ => true,
        };
    let node = text(flow, "node_name").unwrap_or_default().to_owned();
    // Hubble names the node `cluster/node`; keep the node.
    let node = node.rsplit('/').next().unwrap_or_default().to_owned();
    // The node that observed the flow holds the host end, and the local end
    // of the direction: the destination of INGRESS, the source of EGRESS
    // (so the checker knows the node's own probes of its pods).
    let direction = text(flow, "traffic_direction");
    for (end, local) in [
        (&mut source, direction == Some("EGRESS")),
        (&mut destination, direction == Some("INGRESS")),
    ] {
        let is_pod = end.identity.kind == Some(PeerKind::Pod);
        if end.identity.kind == Some(PeerKind::Host) || (local && is_pod && !node.is_empty()) {
            Arc::make_mut(&mut end.identity).node = Some(node.clone());
        }
    }
    Ok(Some(FlowRecord {
        time,
        first_seen: time,
        source,
        destination,
        protocol: Protocol(protocol),
        icmp,
        packets: 1,
        bytes: 0,
        tcp_flags: flags,
        // An ICMP error flow in Hubble's export is one error packet, which
        // belongs to the connection it quotes: it teaches nothing.
        icmp_errors: icmp
            .and_then(|Icmp { icmp_type, .. }| {
                flow_common::icmp_error::kind_of(
                    protocol == flow_common::protocol::ICMPV6,
                    icmp_type,
                )
            })
            .and_then(|kind| IcmpErrors::from_counts(1, kind)),
        is_reply,
        interface: flow
            .get("interface")
            .and_then(|interface| text(interface, "name"))
            .unwrap_or_default()
            .to_owned(),
        interface_index: flow
            .get("interface")
            .and_then(|interface| interface.get("index"))
            .and_then(Value::as_u64)
            .and_then(|index| u32::try_from(index).ok())
            .unwrap_or(0),
        // What the pod sends is EGRESS for a request and INGRESS for a reply.
        hook: if (direction == Some("EGRESS")) != is_reply {
            Hook::Ingress
        } else {
            Hook::Egress
        },
        node,
        // Decided by `read`, for our records and Hubble's alike.
        cross_tenant: None,
        new_connection,
        violation: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUBBLE: &str = r#"{"flow":{"time":"2026-11-20T10:00:00.123456789Z","verdict":"FORWARDED","IP":{"source":"10.0.1.5","destination":"10.0.2.7","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":51234,"destination_port":8080,"flags":{"SYN":true}}},"source":{"ID":123,"identity":4567,"namespace":"shop","labels":["k8s:app=web","k8s:io.cilium.k8s.namespace.labels.tenant=acme","k8s:io.cilium.k8s.policy.serviceaccount=web","k8s:io.kubernetes.pod.namespace=shop","k8s:pod-template-hash=abc"],"pod_name":"web-abc-x1","workloads":[{"name":"web","kind":"Deployment"}]},"destination":{"namespace":"shop","labels":["k8s:app=api","k8s:io.kubernetes.pod.namespace=shop"],"pod_name":"api-def-y2","workloads":[{"name":"api","kind":"Deployment"}]},"Type":"L3_L4","node_name":"kind/node-1","traffic_direction":"EGRESS","is_reply":false,"destination_service":{"name":"api","namespace":"shop"},"Summary":"TCP Flags: SYN"},"node_name":"kind/node-1","time":"2026-11-20T10:00:00.123456789Z"}"#;

    fn file(lines: &[&str]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), lines.join("\n") + "\n").unwrap();
        file
    }

    #[test]
    fn flows_with_an_end_in_a_platform_namespace_never_cross_tenants() {
        let dns = HUBBLE
            .replace(r#""namespace":"shop","labels":["k8s:app=api","k8s:io.kubernetes.pod.namespace=shop"]"#, r#""namespace":"kube-system","labels":["k8s:k8s-app=kube-dns","k8s:io.kubernetes.pod.namespace=kube-system"]"#);
        assert_ne!(dns, HUBBLE);
        // Ours, written by an agent that took kube-system for a tenant.
        let ours = {
            let flows = read(file(&[&dns]).path(), &Tenancy::new("tenant")).unwrap();
            let mut record = flows.records[0].clone();
            record.cross_tenant = Some(true);
            serde_json::to_string(&record).unwrap()
        };
        let crossing = |tenancy: &Tenancy| {
            let flows = read(file(&[HUBBLE, &dns, &ours]).path(), tenancy).unwrap();
            flows
                .records
                .iter()
                .map(|record| record.cross_tenant)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            crossing(&Tenancy::new("tenant")),
            [Some(true), Some(false), Some(false)]
        );
        let no_platform = Tenancy {
            platform: BTreeSet::new(),
            ..Tenancy::new("tenant")
        };
        assert_eq!(crossing(&no_platform), [Some(true), Some(true), Some(true)]);
        let shop_is_platform = Tenancy {
            platform: BTreeSet::from(["shop".to_owned()]),
            ..Tenancy::new("tenant")
        };
        assert_eq!(
            crossing(&shop_is_platform),
            [Some(false), Some(false), Some(false)]
        );
    }

    #[test]
    fn hubble_icmp_errors_are_marked_as_errors_and_teach_nothing() {
        let error = |l4: &str| {
            format!(
                r#"{{"flow":{{"time":"2026-11-20T10:00:01Z","verdict":"FORWARDED","IP":{{"source":"10.0.2.7","destination":"10.0.1.5"}},"l4":{l4},"source":{{"namespace":"shop","labels":["k8s:app=api"],"pod_name":"api-def-y2"}},"destination":{{"namespace":"shop","labels":["k8s:app=web"],"pod_name":"web-abc-x1"}},"Type":"L3_L4","is_reply":false}}}}"#
            )
        };
        let flows = read(
            file(&[
                &error(r#"{"ICMPv4":{"type":3,"code":3}}"#),
                &error(r#"{"ICMPv6":{"type":3,"code":0}}"#),
                &error(r#"{"ICMPv4":{"type":8,"code":0}}"#),
                "",
            ])
            .path(),
            &Tenancy::new("tenant"),
        )
        .unwrap();
        let errors: Vec<_> = flows
            .records
            .iter()
            .map(|record| (record.icmp_errors.clone(), record.is_outside_policy()))
            .collect();
        let kind = |name: &str| {
            Some(IcmpErrors {
                packets: 1,
                kinds: vec![name.to_owned()],
            })
        };
        assert_eq!(
            errors,
            [
                (kind("unreachable"), true),
                (kind("time_exceeded"), true),
                (None, false),
            ]
        );
    }

    #[test]
    fn hubble_lines_become_records_with_identity_and_tenant() {
        let dropped = HUBBLE.replace("FORWARDED", "DROPPED");
        let world = r#"{"flow":{"time":"2026-11-20T10:00:01Z","verdict":"FORWARDED","IP":{"source":"10.0.1.5","destination":"203.0.113.9"},"l4":{"UDP":{"source_port":40000,"destination_port":53}},"source":{"namespace":"shop","labels":["k8s:app=web"],"pod_name":"web-abc-x1"},"destination":{"labels":["reserved:world"]},"Type":"L3_L4","is_reply":false}}"#;
        let lost = r#"{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":3}}"#;
        let flows = read(
            file(&[HUBBLE, &dropped, world, lost, ""]).path(),
            &Tenancy::new("tenant"),
        )
        .unwrap();
        assert_eq!((flows.records.len(), flows.skipped), (2, 2));
        let record = &flows.records[0];
        assert_eq!(record.source.ip, "10.0.1.5".parse::<IpAddr>().unwrap());
        assert_eq!((record.source.port, record.destination.port), (51234, 8080));
        assert_eq!(record.protocol, Protocol(6));
        assert_eq!(record.source.identity.tenant.as_deref(), Some("acme"));
        assert_eq!(
            record.source.identity.labels,
            BTreeMap::from([("app".to_owned(), "web".to_owned())])
        );
        assert_eq!(
            record.source.identity.workload.as_ref().unwrap().name,
            "web"
        );
        // No tenant label on the destination: its namespace is its tenant.
        assert_eq!(record.destination.identity.tenant.as_deref(), Some("shop"));
        assert_eq!(record.cross_tenant, Some(true));
        assert_eq!(record.destination.service.as_ref().unwrap().name, "api");
        assert!(record.new_connection && !record.is_reply);
        assert_eq!(record.node, "node-1");
        let world = &flows.records[1];
        assert_eq!(world.destination.identity.kind, Some(PeerKind::World));
        assert_eq!(world.source.identity.workload.as_ref().unwrap().kind, "Pod");
        assert_eq!(world.protocol, Protocol(17));
    }

    #[test]
    fn hubble_flows_without_is_reply_are_told_by_the_packet_or_skipped() {
        let unknown =
            |from: &str, to: &str| HUBBLE.replace(",\"is_reply\":false", "").replace(from, to);
        let syn = unknown("", "");
        let syn_ack = unknown("{\"SYN\":true}", "{\"SYN\":true,\"ACK\":true}");
        let ack = unknown("{\"SYN\":true}", "{\"ACK\":true}");
        let echo = |icmp_type: u8| {
            unknown(
                "\"TCP\":{\"source_port\":51234,\"destination_port\":8080,\"flags\":{\"SYN\":true}}",
                &format!("\"ICMPv4\":{{\"type\":{icmp_type},\"code\":0}}"),
            )
        };
        let flows = read(
            file(&[&syn, &syn_ack, &ack, &echo(8), &echo(0), &echo(3)]).path(),
            &Tenancy::new("tenant"),
        )
        .unwrap();
        let replies: Vec<bool> = flows.records.iter().map(|record| record.is_reply).collect();
        assert_eq!(replies, [false, true, false, true]);
        assert_eq!(
            flows
                .records
                .iter()
                .map(|r| r.protocol.0)
                .collect::<Vec<_>>(),
            [6, 6, 1, 1]
        );
        assert_eq!(
            flows.skipped, 2,
            "a bare ACK and an unreachable say nothing"
        );
    }

    #[test]
    fn the_observing_node_holds_the_local_end_of_a_hubble_flow() {
        // EGRESS: observed where the source runs.
        let flows = read(file(&[HUBBLE]).path(), &Tenancy::new("tenant")).unwrap();
        let record = &flows.records[0];
        assert_eq!(record.source.identity.node.as_deref(), Some("node-1"));
        assert_eq!(record.destination.identity.node, None);
        // INGRESS: where the destination runs.
        let ingress = HUBBLE.replace("\"EGRESS\"", "\"INGRESS\"");
        let flows = read(file(&[&ingress]).path(), &Tenancy::new("tenant")).unwrap();
        let record = &flows.records[0];
        assert_eq!(record.source.identity.node, None);
        assert_eq!(record.destination.identity.node.as_deref(), Some("node-1"));
    }

    #[test]
    fn our_own_lines_read_back_and_bad_lines_name_file_and_line() {
        let record = r#"{"time":"2026-11-20T10:00:00Z","first_seen":"2026-11-20T10:00:00Z","source":{"ip":"10.0.0.1","port":1234},"destination":{"ip":"10.0.0.2","port":80},"protocol":"TCP","packets":1,"bytes":60,"is_reply":false,"interface":"veth0","hook":"ingress","node":"n"}"#;
        let flows = read(
            file(&[
                record,
                r#"{"lost_records":2,"time":"2026-11-20T10:00:00Z"}"#,
            ])
            .path(),
            &Tenancy::new("tenant"),
        )
        .unwrap();
        assert_eq!((flows.records.len(), flows.skipped), (1, 1));
        let error = read(file(&[record, "{not json"]).path(), &Tenancy::new("tenant"))
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(":2: key must be a string at line 1 column 2"),
            "{error}"
        );
        let error = read(
            file(&[r#"{"time":"2026-11-20T10:00:00Z","protocol":"TCP"}"#]).path(),
            &Tenancy::new("tenant"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(":1: ") && error.contains("first_seen"),
            "{error}"
        );
        let error = read(
            file(&[&HUBBLE.replace("\"10.0.2.7\"", "\"nowhere\"")]).path(),
            &Tenancy::new("tenant"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("flow.IP.destination"), "{error}");
        let error = read(
            Path::new("/nonexistent/flows.jsonl"),
            &Tenancy::new("tenant"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("cannot read /nonexistent/flows.jsonl"),
            "{error}"
        );
    }
}
