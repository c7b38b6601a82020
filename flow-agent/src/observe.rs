//! `flow-agent observe` and `flow-agent status`: a client of the flow API that
//! prints flows as an aligned table, as the agent's own JSON records, or in the
//! JSON shape `hubble observe -o json` prints, so tools built for Hubble flow
//! logs can read ours.

use std::{
    future::Future,
    io::{self, Write},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use flow_model::client::{ClientError, ConnectArgs, connect};
use flow_proto::v1::{
    self as proto, Direction, EndpointFilter, FlowFilter, GetAggregatesRequest, GetFlowsRequest,
    ServerStatusRequest, get_aggregates_response, get_flows_response,
};
use serde_json::{Value, json};
use thiserror::Error;
use tonic::Status;

use flow_proto::hubble::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

use flow_model::identity::{Identity as EndpointIdentity, PeerKind, Workload};

use flow_model::record::{Endpoint, FlowRecord, Timestamp};

use crate::{
    aggregate::{AggregateRecord, Peer},
    api::{convert, hubble},
    cli::{DirectionArg, ObserveArgs, ObserveFormat},
};

/// Flows replayed when neither `--last`, `--since` nor `--follow` is given.
pub const DEFAULT_LAST: u64 = 20;

/// Errors of `observe` and `status`.
#[derive(Debug, Error)]
pub enum ObserveError {
    /// The agent cannot be reached or refused a request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The flags do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// Printing failed.
    #[error("cannot write output")]
    Output(#[source] io::Error),
}

fn endpoint_filter(
    namespace: &[String],
    tenant: &[String],
    workload: &[String],
    pod: &[String],
    ip: &[String],
    port: &[u32],
    fqdn: &[String],
) -> Option<EndpointFilter> {
    let filter = EndpointFilter {
        namespace: namespace.to_vec(),
        tenant: tenant.to_vec(),
        workload: workload.to_vec(),
        pod: pod.to_vec(),
        ip: ip.to_vec(),
        port: port.to_vec(),
        label: Vec::new(),
        fqdn: fqdn.to_vec(),
    };
    (filter != EndpointFilter::default()).then_some(filter)
}

/// The GetFlows request `args` ask for, at `now`.
///
/// Flags of one kind are alternatives (`--namespace a --namespace b`); flags of
/// different kinds must all hold. Each `--not-*` flag leaves out what it
/// names, whatever the other flags say.
pub fn flows_request(args: &ObserveArgs, now: SystemTime) -> GetFlowsRequest {
    let ObserveArgs {
        follow,
        last,
        since,
        namespace,
        from_namespace,
        to_namespace,
        tenant,
        from_tenant,
        to_tenant,
        workload,
        from_workload,
        to_workload,
        pod,
        from_pod,
        to_pod,
        ip,
        from_ip,
        to_ip,
        fqdn,
        from_fqdn,
        to_fqdn,
        port,
        from_port,
        to_port,
        label,
        protocol,
        direction,
        cross_tenant,
        violations,
        not_namespace,
        not_workload,
        not_ip,
        not_port,
        not_protocol,
        ..
    } = args;
    let mut either = endpoint_filter(namespace, tenant, workload, pod, ip, port, fqdn);
    if !label.is_empty() {
        either.get_or_insert_with(EndpointFilter::default).label = label.clone();
    }
    let allow = FlowFilter {
        either,
        source: endpoint_filter(
            from_namespace,
            from_tenant,
            from_workload,
            from_pod,
            from_ip,
            from_port,
            from_fqdn,
        ),
        destination: endpoint_filter(
            to_namespace,
            to_tenant,
            to_workload,
            to_pod,
            to_ip,
            to_port,
            to_fqdn,
        ),
        protocol: protocol.clone(),
        direction: match direction {
            None => Direction::Unspecified,
            Some(DirectionArg::Request) => Direction::Request,
            Some(DirectionArg::Reply) => Direction::Reply,
        }
        .into(),
        cross_tenant_only: *cross_tenant,
        violation_only: *violations,
    };
    let none: &[String] = &[];
    let deny = [
        endpoint_filter(not_namespace, none, none, none, none, &[], none),
        endpoint_filter(none, none, not_workload, none, none, &[], none),
        endpoint_filter(none, none, none, none, not_ip, &[], none),
        endpoint_filter(none, none, none, none, none, not_port, none),
    ]
    .into_iter()
    .flatten()
    .map(|either| FlowFilter {
        either: Some(either),
        ..FlowFilter::default()
    })
    .chain((!not_protocol.is_empty()).then(|| FlowFilter {
        protocol: not_protocol.clone(),
        ..FlowFilter::default()
    }))
    .collect();
    let number = last.unwrap_or(if since.is_none() && !follow {
        DEFAULT_LAST
    } else {
        0
    });
    GetFlowsRequest {
        number: i64::try_from(number).unwrap_or(i64::MAX),
        since: since.map(|ago| {
            prost_types::Timestamp::from(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH))
        }),
        follow: *follow,
        allow: if allow == FlowFilter::default() {
            Vec::new()
        } else {
            vec![allow]
        },
        deny,
    }
}

/// The GetAggregates request `args` ask for: only `--tenant` filters apply.
pub fn aggregates_request(
    args: &ObserveArgs,
    now: SystemTime,
) -> Result<GetAggregatesRequest, ObserveError> {
    let flows = flows_request(args, now);
    let only_tenant = flows.deny.is_empty()
        && flows.allow.iter().all(|filter| {
            filter.source.is_none()
                && filter.destination.is_none()
                && filter.protocol.is_empty()
                && filter.direction == 0
                && !filter.cross_tenant_only
                && !filter.violation_only
                && filter.either.as_ref().is_none_or(|either| {
                    either
                        == &EndpointFilter {
                            tenant: either.tenant.clone(),
                            ..EndpointFilter::default()
                        }
                })
        });
    if !only_tenant {
        return Err(ObserveError::Usage(
            "with --aggregates, only --tenant filters apply".into(),
        ));
    }
    if args.output == ObserveFormat::HubbleJson {
        return Err(ObserveError::Usage(
            "--aggregates prints table or json: Hubble has no aggregate format".into(),
        ));
    }
    Ok(GetAggregatesRequest {
        number: flows.number,
        since: flows.since,
        follow: flows.follow,
        tenant: args.tenant.clone(),
    })
}

/// Streams what `args` ask for to `out` until the stream ends or `interrupt`
/// resolves. Returns the number of records printed.
pub async fn observe(
    args: &ObserveArgs,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<u64, ObserveError> {
    let server = args.connect.server.clone();
    let rpc = |status: Status| ObserveError::from(ClientError::rpc(&server, status));
    let now = SystemTime::now();
    let aggregates = args
        .aggregates
        .then(|| aggregates_request(args, now))
        .transpose()?;
    let mut client = connect(&args.connect).await?;
    let mut printer = Printer::new(args.output);
    let mut printed = 0;
    tokio::pin!(interrupt);
    let result: Result<(), ObserveError> = async {
        if let Some(request) = aggregates {
            let mut stream = client
                .get_aggregates(request)
                .await
                .map_err(rpc)?
                .into_inner();
            loop {
                let message = tokio::select! {
                    () = &mut interrupt => return Ok(()),
                    message = stream.message() => message.map_err(rpc)?,
                };
                let Some(proto::GetAggregatesResponse { response }) = message else {
                    return Ok(());
                };
                match response {
                    Some(get_aggregates_response::Response::Aggregate(aggregate)) => {
                        printer
                            .aggregate(out, &aggregate)
                            .map_err(ObserveError::Output)?;
                        printed += 1;
                    }
                    Some(get_aggregates_response::Response::LostRecords(lost)) => {
                        printer
                            .lost(out, lost.count)
                            .map_err(ObserveError::Output)?;
                    }
                    None => {}
                }
                if args.follow {
                    out.flush().map_err(ObserveError::Output)?;
                }
            }
        }
        let request = flows_request(args, now);
        let mut stream = client.get_flows(request).await.map_err(rpc)?.into_inner();
        loop {
            let message = tokio::select! {
                () = &mut interrupt => return Ok(()),
                message = stream.message() => message.map_err(rpc)?,
            };
            let Some(proto::GetFlowsResponse { response }) = message else {
                return Ok(());
            };
            match response {
                Some(get_flows_response::Response::Flow(flow)) => {
                    printer.flow(out, &flow).map_err(ObserveError::Output)?;
                    printed += 1;
                }
                Some(get_flows_response::Response::LostRecords(lost)) => {
                    printer
                        .lost(out, lost.count)
                        .map_err(ObserveError::Output)?;
                }
                None => {}
            }
            if args.follow {
                out.flush().map_err(ObserveError::Output)?;
            }
        }
    }
    .await;
    let flushed = out.flush().map_err(ObserveError::Output);
    match result.and(flushed) {
        // The reader went away (`| head`): not an error.
        Err(ObserveError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            Ok(printed)
        }
        other => other.map(|()| printed),
    }
}

/// Prints the agent's ServerStatus.
pub async fn status(args: &ConnectArgs, out: &mut impl Write) -> Result<(), ObserveError> {
    let mut client = connect(args).await?;
    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .map_err(|status| ClientError::rpc(&args.server, status))?
        .into_inner();
    let proto::ServerStatusResponse {
        node_name,
        version,
        uptime_seconds,
        flows_seen,
        flows_in_buffer,
        buffer_capacity,
        interfaces,
        map_full,
        spilled,
        lost_packets,
        lost_records,
        subscribers,
        graph_edges,
        violations,
        learning,
        monitoring,
    } = status;
    let uptime = humantime::format_duration(Duration::from_secs(uptime_seconds));
    let lines = [
        ("node", node_name),
        ("version", version),
        ("uptime", uptime.to_string()),
        ("flows seen", flows_seen.to_string()),
        (
            "flows in buffer",
            format!("{flows_in_buffer} / {buffer_capacity}"),
        ),
        (
            "interfaces",
            format!("{} ({})", interfaces.len(), interfaces.join(", ")),
        ),
        ("subscribers", subscribers.to_string()),
        ("map full", map_full.to_string()),
        ("spilled", spilled.to_string()),
        ("lost packets", lost_packets.to_string()),
        ("lost records", lost_records.to_string()),
        (
            "learning",
            if learning {
                format!("yes, {graph_edges} edges")
            } else {
                "no".to_owned()
            },
        ),
        (
            "monitoring",
            if monitoring {
                format!("yes, {violations} violations")
            } else {
                "no".to_owned()
            },
        ),
    ];
    let write = |out: &mut dyn Write| -> io::Result<()> {
        for (key, value) in lines {
            writeln!(out, "{:<16} {value}", format!("{key}:"))?;
        }
        out.flush()
    };
    write(out).map_err(ObserveError::Output)
}

/// Prints records in one of the output formats.
#[derive(Debug)]
pub struct Printer {
    format: ObserveFormat,
    /// Column widths of the table so far: they only grow.
    widths: Vec<usize>,
    /// The header above the next row matches the widths.
    header: bool,
}

const FLOW_COLUMNS: [&str; 9] = [
    "TIME",
    "SOURCE",
    "DESTINATION",
    "PROTO",
    "TYPE",
    "PACKETS",
    "BYTES",
    "FLAGS",
    "TENANTS",
];
const AGGREGATE_COLUMNS: [&str; 11] = [
    "INTERVAL END",
    "CLIENT",
    "SERVER",
    "PROTO",
    "PORT",
    "CONNS",
    "PACKETS",
    "BYTES",
    "REPLY PKTS",
    "REPLY BYTES",
    "TENANTS",
];
/// Columns printed right-aligned (numbers).
const RIGHT_ALIGNED: [&str; 7] = [
    "PACKETS",
    "BYTES",
    "PORT",
    "CONNS",
    "REPLY PKTS",
    "REPLY BYTES",
    "SEQ",
];

impl Printer {
    /// A printer for `format`.
    pub fn new(format: ObserveFormat) -> Self {
        Self {
            format,
            widths: Vec::new(),
            header: false,
        }
    }

    fn row(&mut self, out: &mut impl Write, names: &[&str], cells: &[String]) -> io::Result<()> {
        if self.widths.len() != names.len() {
            // Room for typical values from the start.
            self.widths = names
                .iter()
                .map(|name| match *name {
                    "TIME" | "INTERVAL END" => 24,
                    "SOURCE" | "DESTINATION" | "CLIENT" | "SERVER" => 40,
                    "TYPE" => 7,
                    "FLAGS" => 11,
                    _ => name.len(),
                })
                .collect();
            self.header = false;
        }
        // A wider value widens its column for good; the header is repeated so
        // the rows below line up with it.
        let last = cells.len().saturating_sub(1);
        for (index, cell) in cells.iter().enumerate().take(last) {
            let width = cell.chars().count();
            if width > self.widths[index] {
                self.widths[index] = width;
                self.header = false;
            }
        }
        if !self.header {
            self.header = true;
            let header: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            self.write_row(out, names, &header)?;
        }
        self.write_row(out, names, cells)
    }

    fn write_row(&self, out: &mut impl Write, names: &[&str], cells: &[String]) -> io::Result<()> {
        let mut line = String::new();
        for (index, (name, cell)) in names.iter().zip(cells).enumerate() {
            let width = self.widths[index];
            if index + 1 == cells.len() {
                line.push_str(cell);
                break;
            }
            if RIGHT_ALIGNED.contains(name) {
                line.push_str(&format!("{cell:>width$}  "));
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())
    }

    /// Prints one flow.
    pub fn flow(&mut self, out: &mut impl Write, flow: &proto::Flow) -> io::Result<()> {
        let record = convert::from_flow(flow);
        match self.format {
            ObserveFormat::Json => {
                serde_json::to_writer(&mut *out, &record)?;
                out.write_all(b"\n")
            }
            ObserveFormat::HubbleJson => {
                serde_json::to_writer(&mut *out, &hubble_flow(&record))?;
                out.write_all(b"\n")
            }
            ObserveFormat::Table => {
                let cells = flow_cells(&record);
                self.row(out, &FLOW_COLUMNS, &cells)
            }
        }
    }

    /// Prints one aggregate.
    pub fn aggregate(
        &mut self,
        out: &mut impl Write,
        aggregate: &proto::Aggregate,
    ) -> io::Result<()> {
        let record = convert::from_aggregate(aggregate);
        match self.format {
            ObserveFormat::Table => {
                let cells = aggregate_cells(&record);
                self.row(out, &AGGREGATE_COLUMNS, &cells)
            }
            ObserveFormat::Json | ObserveFormat::HubbleJson => {
                serde_json::to_writer(&mut *out, &record)?;
                out.write_all(b"\n")
            }
        }
    }

    /// Says that `count` records were lost because this client fell behind.
    pub fn lost(&mut self, out: &mut impl Write, count: u64) -> io::Result<()> {
        let now = Timestamp(SystemTime::now());
        match self.format {
            ObserveFormat::Json => {
                serde_json::to_writer(&mut *out, &json!({"lost_records": count, "time": now}))?;
                out.write_all(b"\n")
            }
            ObserveFormat::HubbleJson => {
                let time = humantime::format_rfc3339_nanos(now.0).to_string();
                let event = json!({
                    "lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": count},
                    "time": time,
                });
                serde_json::to_writer(&mut *out, &event)?;
                out.write_all(b"\n")
            }
            ObserveFormat::Table => writeln!(
                out,
                "--- {count} records lost: this client fell behind the agent (a larger --grpc-subscriber-queue helps) ---"
            ),
        }
    }
}

fn address(ip: IpAddr, port: u16) -> String {
    match (ip, port) {
        (ip, 0) => ip.to_string(),
        (IpAddr::V4(ip), port) => format!("{ip}:{port}"),
        (IpAddr::V6(ip), port) => format!("[{ip}]:{port}"),
    }
}

/// An endpoint for the table: `namespace/pod:port`, or the address with what
/// it is (`10.0.0.1:443 (world)`), and the Service it was reached through.
fn endpoint_cell(endpoint: &Endpoint) -> String {
    let Endpoint {
        ip,
        port,
        identity,
        service,
        names,
    } = endpoint;
    let EndpointIdentity {
        kind,
        namespace,
        pod,
        node,
        ..
    } = &**identity;
    let mut cell = match (namespace, pod) {
        (Some(namespace), Some(pod)) if *port == 0 => format!("{namespace}/{pod}"),
        (Some(namespace), Some(pod)) => format!("{namespace}/{pod}:{port}"),
        _ => match (kind, node) {
            (Some(PeerKind::Host | PeerKind::RemoteNode), Some(node)) => {
                format!("{} (node {node})", address(*ip, *port))
            }
            (Some(kind), _) if *kind != PeerKind::Pod => {
                format!("{} ({})", address(*ip, *port), kind.as_str())
            }
            _ => address(*ip, *port),
        },
    };
    if let Some(service) = service {
        cell.push_str(&format!(" via {}/{}", service.namespace, service.name));
    }
    if !names.is_empty() {
        cell.push_str(&format!(" [{}]", names.join(" ")));
    }
    cell
}

fn tenants(source: Option<&String>, destination: Option<&String>) -> String {
    match (source, destination) {
        (None, None) => String::new(),
        (Some(one), Some(other)) if one == other => one.clone(),
        (one, other) => format!(
            "{} -> {}",
            one.map_or("-", String::as_str),
            other.map_or("-", String::as_str)
        ),
    }
}

fn flow_cells(record: &FlowRecord) -> Vec<String> {
    let FlowRecord {
        time,
        source,
        destination,
        protocol,
        icmp,
        packets,
        bytes,
        tcp_flags,
        is_reply,
        new_connection,
        ..
    } = record;
    let kind = match (is_reply, new_connection) {
        (true, _) => "reply",
        (false, true) => "new",
        (false, false) => "request",
    };
    let flags = match icmp {
        Some(icmp) => format!("type {} code {}", icmp.icmp_type, icmp.code),
        None => tcp_flags.join(","),
    };
    vec![
        humantime::format_rfc3339_millis(time.0).to_string(),
        endpoint_cell(source),
        endpoint_cell(destination),
        protocol.to_string(),
        kind.to_owned(),
        packets.to_string(),
        bytes.to_string(),
        flags,
        tenants(
            source.identity.tenant.as_ref(),
            destination.identity.tenant.as_ref(),
        ),
    ]
}

fn peer_cell(peer: &Peer) -> String {
    let Peer {
        kind,
        namespace,
        workload,
        node,
        ip,
        ..
    } = peer;
    match (namespace, workload, node, ip) {
        (Some(namespace), Some(Workload { kind, name }), _, _) => {
            format!("{namespace}/{kind}/{name}")
        }
        (Some(namespace), None, _, _) => format!("{namespace}/?"),
        (None, _, Some(node), _) => format!("node {node}"),
        (None, _, None, Some(ip)) => match kind {
            Some(kind) => format!("{ip} ({})", kind.as_str()),
            None => ip.to_string(),
        },
        _ => kind.map_or("?", PeerKind::as_str).to_owned(),
    }
}

fn aggregate_cells(record: &AggregateRecord) -> Vec<String> {
    let AggregateRecord {
        interval_end,
        source,
        destination,
        protocol,
        port,
        service,
        connections,
        packets,
        bytes,
        reply_packets,
        reply_bytes,
        ..
    } = record;
    let mut server = peer_cell(destination);
    if let Some(service) = service {
        server.push_str(&format!(" via {service}"));
    }
    vec![
        humantime::format_rfc3339_millis(interval_end.0).to_string(),
        peer_cell(source),
        server,
        protocol.to_string(),
        port.to_string(),
        connections.to_string(),
        packets.to_string(),
        bytes.to_string(),
        reply_packets.to_string(),
        reply_bytes.to_string(),
        tenants(source.tenant.as_ref(), destination.tenant.as_ref()),
    ]
}

/// A flow record in the shape of one line of `hubble observe -o json`: the
/// Flow the agent's Hubble API sends for it (without the UUID, which only the
/// agent knows), with the node's name and the time.
pub fn hubble_flow(record: &FlowRecord) -> Value {
    let flow = hubble::convert::flow(record, None);
    hubble::json::response(&GetFlowsResponse {
        time: flow.time,
        node_name: record.node.clone(),
        response_types: Some(ResponseTypes::Flow(flow)),
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};
    use flow_model::identity::ServiceRef;
    use flow_model::record::{Hook, Icmp, Protocol};

    fn observe_args(args: &[&str]) -> ObserveArgs {
        let cli = Cli::try_parse_from(["flow-agent", "observe"].iter().chain(args)).unwrap();
        let Command::Observe(args) = cli.command else {
            panic!("observe expected");
        };
        *args
    }

    fn pod(ip: &str, port: u16, namespace: &str, name: &str, tenant: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            identity: Arc::new(EndpointIdentity {
                kind: Some(PeerKind::Pod),
                namespace: Some(namespace.into()),
                pod: Some(name.into()),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: name.split('-').next().unwrap().into(),
                }),
                tenant: Some(tenant.into()),
                labels: BTreeMap::from([(
                    "app".to_owned(),
                    name.split('-').next().unwrap().to_owned(),
                )]),
                node: Some("node-1".into()),
                note: None,
            }),
            service: None,
            names: Vec::new(),
        }
    }

    fn record() -> FlowRecord {
        let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
        let mut destination = pod("10.0.0.2", 8080, "shop-a", "cart-5c8b-p000", "acme");
        destination.service = Some(ServiceRef {
            namespace: "shop-a".into(),
            name: "cart".into(),
            ip: "10.96.0.20".parse().unwrap(),
            port: 80,
            target_port: Some(8080),
        });
        FlowRecord {
            time,
            first_seen: time,
            source: pod("10.0.0.1", 43210, "shop-a", "frontend-6f7d-p000", "acme"),
            destination,
            protocol: Protocol(6),
            icmp: None,
            packets: 3,
            bytes: 180,
            tcp_flags: vec!["syn".into(), "ack".into()],
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "node-1".into(),
            cross_tenant: Some(false),
            new_connection: true,
            violation: false,
        }
    }

    #[test]
    fn hubble_json_has_the_shape_hubble_observe_prints() {
        let value = hubble_flow(&record());
        let expected = json!({
            "flow": {
                "time": "2023-11-14T22:13:20.123456789Z",
                "verdict": "FORWARDED",
                "IP": {"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"},
                "l4": {"TCP": {"source_port": 43210, "destination_port": 8080, "flags": {"SYN": true, "ACK": true}}},
                "source": {
                    "namespace": "shop-a",
                    "labels": ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop-a"],
                    "pod_name": "frontend-6f7d-p000",
                    "workloads": [{"name": "frontend", "kind": "Deployment"}],
                },
                "destination": {
                    "namespace": "shop-a",
                    "labels": ["k8s:app=cart", "k8s:io.kubernetes.pod.namespace=shop-a"],
                    "pod_name": "cart-5c8b-p000",
                    "workloads": [{"name": "cart", "kind": "Deployment"}],
                },
                "Type": "L3_L4",
                "node_name": "node-1",
                "event_type": {"type": 4},
                "traffic_direction": "EGRESS",
                "trace_observation_point": "FROM_ENDPOINT",
                "is_reply": false,
                "interface": {"name": "veth0"},
                "destination_service": {"name": "cart", "namespace": "shop-a"},
                "emitter": {"name": "flow-agent", "version": env!("CARGO_PKG_VERSION")},
            },
            "node_name": "node-1",
            "time": "2023-11-14T22:13:20.123456789Z",
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn hubble_direction_follows_the_connection_and_icmp_and_world_are_named() {
        let mut reply = record();
        std::mem::swap(&mut reply.source, &mut reply.destination);
        reply.is_reply = true;
        // The reply leaves the server pod: the server's ingress connection.
        assert_eq!(hubble_flow(&reply)["flow"]["traffic_direction"], "INGRESS");
        reply.hook = Hook::Egress;
        assert_eq!(hubble_flow(&reply)["flow"]["traffic_direction"], "EGRESS");

        let mut ping = record();
        ping.protocol = Protocol(1);
        ping.icmp = Some(Icmp {
            icmp_type: 8,
            code: 0,
        });
        ping.source.port = 0;
        ping.destination = Endpoint::new("2.2.2.2".parse().unwrap(), 0);
        Arc::make_mut(&mut ping.destination.identity).kind = Some(PeerKind::World);
        let value = hubble_flow(&ping);
        assert_eq!(value["flow"]["l4"], json!({"ICMPv4": {"type": 8}}));
        assert_eq!(
            value["flow"]["destination"],
            json!({"identity": 2, "labels": ["reserved:world"]})
        );
        assert!(value["flow"].get("destination_service").is_none());
    }

    #[test]
    fn flags_become_one_allow_filter_and_one_deny_filter_per_kind() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let args = observe_args(&[
            "--namespace",
            "shop-a",
            "--namespace",
            "shop-b",
            "--to-port",
            "8080",
            "--from-tenant",
            "acme",
            "--label",
            "app=cart",
            "--protocol",
            "tcp",
            "--direction",
            "request",
            "--cross-tenant",
            "--not-ip",
            "10.0.0.0/8",
            "--not-protocol",
            "udp",
            "--since",
            "30s",
            "--follow",
        ]);
        let request = flows_request(&args, now);
        assert_eq!(
            request.number, 0,
            "--since without --last replays everything since"
        );
        assert_eq!(
            request.since,
            Some(prost_types::Timestamp {
                seconds: 970,
                nanos: 0
            })
        );
        assert!(request.follow);
        assert_eq!(
            request.allow,
            [FlowFilter {
                either: Some(EndpointFilter {
                    namespace: vec!["shop-a".into(), "shop-b".into()],
                    label: vec!["app=cart".into()],
                    ..EndpointFilter::default()
                }),
                source: Some(EndpointFilter {
                    tenant: vec!["acme".into()],
                    ..EndpointFilter::default()
                }),
                destination: Some(EndpointFilter {
                    port: vec![8080],
                    ..EndpointFilter::default()
                }),
                protocol: vec!["tcp".into()],
                direction: Direction::Request.into(),
                cross_tenant_only: true,
                violation_only: false,
            }]
        );
        assert_eq!(
            request.deny,
            [
                FlowFilter {
                    either: Some(EndpointFilter {
                        ip: vec!["10.0.0.0/8".into()],
                        ..EndpointFilter::default()
                    }),
                    ..FlowFilter::default()
                },
                FlowFilter {
                    protocol: vec!["udp".into()],
                    ..FlowFilter::default()
                },
            ]
        );
    }

    #[test]
    fn without_last_since_or_follow_the_last_twenty_are_replayed() {
        let now = SystemTime::now();
        let request = flows_request(&observe_args(&[]), now);
        assert_eq!(
            (request.number, request.since, request.follow),
            (20, None, false)
        );
        assert!(request.allow.is_empty() && request.deny.is_empty());
        let request = flows_request(&observe_args(&["--follow"]), now);
        assert_eq!((request.number, request.follow), (0, true));
        let request = flows_request(&observe_args(&["--last", "5", "--follow"]), now);
        assert_eq!((request.number, request.follow), (5, true));
    }

    #[test]
    fn aggregates_take_only_tenant_filters() {
        let now = SystemTime::now();
        let request = aggregates_request(
            &observe_args(&["--aggregates", "--tenant", "acme", "--last", "3"]),
            now,
        )
        .unwrap();
        assert_eq!(
            (request.number, request.tenant),
            (3, vec!["acme".to_owned()])
        );
        for flags in [
            ["--aggregates", "--namespace", "x"].as_slice(),
            ["--aggregates", "--violations"].as_slice(),
        ] {
            let error = aggregates_request(&observe_args(flags), now).unwrap_err();
            assert!(
                error.to_string().contains("only --tenant"),
                "{flags:?}: {error}"
            );
        }
        let error = aggregates_request(&observe_args(&["--aggregates", "-o", "hubble-json"]), now)
            .unwrap_err();
        assert!(error.to_string().contains("Hubble"), "{error}");
    }

    #[test]
    fn the_table_stays_aligned_and_reports_losses() {
        let mut printer = Printer::new(ObserveFormat::Table);
        let mut out = Vec::new();
        let flow = convert::flow(&record(), 0);
        printer.flow(&mut out, &flow).unwrap();
        let mut long = record();
        Arc::make_mut(&mut long.source.identity).pod =
            Some("a-very-long-pod-name-that-is-wider-than-the-column".into());
        printer.flow(&mut out, &convert::flow(&long, 1)).unwrap();
        printer.flow(&mut out, &flow).unwrap();
        printer.lost(&mut out, 7).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Header, row, header again (SOURCE widened), two rows, the loss.
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[0].starts_with("TIME") && lines[2].starts_with("TIME"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("2023-11-14T22:13:20.123Z  shop-a/frontend-6f7d-p000:43210"),
            "{text}"
        );
        assert!(
            lines[1].contains("shop-a/cart-5c8b-p000:8080 via shop-a/cart"),
            "{text}"
        );
        assert!(
            lines[1].contains("TCP") && lines[1].contains("new") && lines[1].contains("syn,ack"),
            "{text}"
        );
        assert!(lines[1].ends_with("acme"), "{text}");
        for (header, row) in [(0, 1), (2, 3), (2, 4)] {
            for (column, value) in [
                ("DESTINATION", "shop-a/cart"),
                ("PROTO", "TCP"),
                ("FLAGS", "syn,ack"),
            ] {
                assert_eq!(
                    lines[header].find(column),
                    lines[row].find(value),
                    "{column} of row {row}:\n{text}"
                );
            }
        }
        // Right-aligned numbers end under the end of their header.
        let end = |line: &str, text: &str| line.find(text).unwrap() + text.len();
        assert_eq!(end(lines[0], "BYTES"), end(lines[1], "180"));
        assert_eq!(
            lines[5],
            "--- 7 records lost: this client fell behind the agent (a larger --grpc-subscriber-queue helps) ---"
        );
    }

    #[test]
    fn json_output_is_the_agents_record_schema() {
        let mut printer = Printer::new(ObserveFormat::Json);
        let mut out = Vec::new();
        printer
            .flow(&mut out, &convert::flow(&record(), 42))
            .unwrap();
        printer.lost(&mut out, 3).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let parsed: FlowRecord = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(parsed, record());
        let lost: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(lost["lost_records"], 3);
    }
}
