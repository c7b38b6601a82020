//! Hubble flows as `hubble observe -o json` prints them: protobuf's JSON
//! mapping with the protobuf field names, enums by name, and fields at their
//! zero value left out.

use flow_proto::hubble::{
    flow::{
        CiliumEventType, Dns, Emitter, Endpoint, Flow, FlowType, Ip, IpVersion, L7FlowType, Layer4,
        Layer7, NetworkInterface, Service, TcpFlags, TraceObservationPoint, TrafficDirection,
        Verdict, Workload, layer4, layer7,
    },
    observer::{GetFlowsResponse, get_flows_response::ResponseTypes},
};
use serde_json::{Map, Value, json};

/// Adds `key` unless `value` is a zero value (null, false, 0, "", [] or {}).
fn put(object: &mut Map<String, Value>, key: &str, value: Value) {
    let zero = match &value {
        Value::Null => true,
        Value::Bool(set) => !set,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
    };
    if !zero {
        object.insert(key.to_owned(), value);
    }
}

fn object(fields: &[(&str, Value)]) -> Value {
    let mut map = Map::new();
    for (key, value) in fields {
        put(&mut map, key, value.clone());
    }
    Value::Object(map)
}

/// An enum value by name, or by number when it has none here.
fn name<E: TryFrom<i32>>(value: i32, as_str: impl Fn(&E) -> &'static str) -> Value {
    if value == 0 {
        return Value::Null;
    }
    E::try_from(value).map_or_else(|_| json!(value), |known| json!(as_str(&known)))
}

fn timestamp(time: Option<&prost_types::Timestamp>) -> Value {
    time.map_or(Value::Null, |time| {
        let time = std::time::SystemTime::try_from(*time).unwrap_or(std::time::UNIX_EPOCH);
        json!(humantime::format_rfc3339_nanos(time).to_string())
    })
}

fn endpoint(endpoint: Option<&Endpoint>) -> Value {
    endpoint.map_or(Value::Null, |endpoint| {
        let Endpoint {
            identity,
            cluster_name,
            namespace,
            labels,
            pod_name,
            workloads,
        } = endpoint;
        let workloads: Vec<Value> = workloads
            .iter()
            .map(|Workload { name, kind }| object(&[("name", json!(name)), ("kind", json!(kind))]))
            .collect();
        object(&[
            ("identity", json!(identity)),
            ("cluster_name", json!(cluster_name)),
            ("namespace", json!(namespace)),
            ("labels", json!(labels)),
            ("pod_name", json!(pod_name)),
            ("workloads", json!(workloads)),
        ])
    })
}

fn flags(flags: Option<&TcpFlags>) -> Value {
    flags.map_or(Value::Null, |flags| {
        let TcpFlags {
            fin,
            syn,
            rst,
            psh,
            ack,
            urg,
            ece,
            cwr,
            ns,
        } = *flags;
        object(&[
            ("FIN", json!(fin)),
            ("SYN", json!(syn)),
            ("RST", json!(rst)),
            ("PSH", json!(psh)),
            ("ACK", json!(ack)),
            ("URG", json!(urg)),
            ("ECE", json!(ece)),
            ("CWR", json!(cwr)),
            ("NS", json!(ns)),
        ])
    })
}

fn layer4(l4: Option<&Layer4>) -> Value {
    let Some(protocol) = l4.and_then(|l4| l4.protocol.as_ref()) else {
        return Value::Null;
    };
    let ports = |source: u32, destination: u32| {
        [
            ("source_port", json!(source)),
            ("destination_port", json!(destination)),
        ]
    };
    match protocol {
        layer4::Protocol::Tcp(tcp) => {
            let [source, destination] = ports(tcp.source_port, tcp.destination_port);
            json!({"TCP": object(&[source, destination, ("flags", flags(tcp.flags.as_ref()))])})
        }
        layer4::Protocol::Udp(udp) => {
            json!({"UDP": object(&ports(udp.source_port, udp.destination_port))})
        }
        layer4::Protocol::Sctp(sctp) => {
            json!({"SCTP": object(&ports(sctp.source_port, sctp.destination_port))})
        }
        layer4::Protocol::IcmPv4(icmp) => json!({"ICMPv4": object(&[
            ("type", json!(icmp.r#type)),
            ("code", json!(icmp.code)),
        ])}),
        layer4::Protocol::IcmPv6(icmp) => json!({"ICMPv6": object(&[
            ("type", json!(icmp.r#type)),
            ("code", json!(icmp.code)),
        ])}),
    }
}

fn layer7(l7: Option<&Layer7>) -> Value {
    let Some(Layer7 {
        r#type,
        latency_ns,
        record,
    }) = l7
    else {
        return Value::Null;
    };
    let record = match record {
        Some(layer7::Record::Dns(Dns {
            query,
            ips,
            ttl,
            cnames,
            observation_source,
            rcode,
            qtypes,
            rrtypes,
        })) => object(&[
            ("query", json!(query)),
            ("ips", json!(ips)),
            ("ttl", json!(ttl)),
            ("cnames", json!(cnames)),
            ("observation_source", json!(observation_source)),
            ("rcode", json!(rcode)),
            ("qtypes", json!(qtypes)),
            ("rrtypes", json!(rrtypes)),
        ]),
        None => Value::Null,
    };
    object(&[
        ("type", name(*r#type, L7FlowType::as_str_name)),
        ("latency_ns", json!(latency_ns)),
        ("dns", record),
    ])
}

/// One Flow as JSON.
pub fn flow(flow: &Flow) -> Value {
    let Flow {
        time,
        uuid,
        verdict,
        ip,
        l4,
        l7,
        source,
        destination,
        r#type,
        node_name,
        source_names,
        destination_names,
        event_type,
        source_service,
        destination_service,
        traffic_direction,
        trace_observation_point,
        is_reply,
        interface,
        emitter,
    } = flow;
    let ip = ip.as_ref().map_or(
        Value::Null,
        |Ip {
             source,
             destination,
             ip_version,
             encrypted,
         }| {
            object(&[
                ("source", json!(source)),
                ("destination", json!(destination)),
                ("ipVersion", name(*ip_version, IpVersion::as_str_name)),
                ("encrypted", json!(encrypted)),
            ])
        },
    );
    let service = |service: &Option<Service>| {
        service
            .as_ref()
            .map_or(Value::Null, |Service { name, namespace }| {
                object(&[("name", json!(name)), ("namespace", json!(namespace))])
            })
    };
    let mut object = Map::new();
    let fields = [
        ("time", timestamp(time.as_ref())),
        ("uuid", json!(uuid)),
        ("verdict", name(*verdict, Verdict::as_str_name)),
        ("IP", ip),
        ("l4", layer4(l4.as_ref())),
        ("l7", layer7(l7.as_ref())),
        ("source", endpoint(source.as_ref())),
        ("destination", endpoint(destination.as_ref())),
        ("Type", name(*r#type, FlowType::as_str_name)),
        ("node_name", json!(node_name)),
        ("source_names", json!(source_names)),
        ("destination_names", json!(destination_names)),
        (
            "event_type",
            event_type
                .as_ref()
                .map_or(Value::Null, |CiliumEventType { r#type, sub_type }| {
                    self::object(&[("type", json!(r#type)), ("sub_type", json!(sub_type))])
                }),
        ),
        ("source_service", service(source_service)),
        ("destination_service", service(destination_service)),
        (
            "traffic_direction",
            name(*traffic_direction, TrafficDirection::as_str_name),
        ),
        (
            "trace_observation_point",
            name(*trace_observation_point, TraceObservationPoint::as_str_name),
        ),
        (
            "interface",
            interface
                .as_ref()
                .map_or(Value::Null, |NetworkInterface { index, name }| {
                    self::object(&[("index", json!(index)), ("name", json!(name))])
                }),
        ),
        (
            "emitter",
            emitter
                .as_ref()
                .map_or(Value::Null, |Emitter { name, version }| {
                    self::object(&[("name", json!(name)), ("version", json!(version))])
                }),
        ),
    ];
    for (key, value) in fields {
        put(&mut object, key, value);
    }
    // A wrapper is printed when set, even at false.
    if let Some(is_reply) = is_reply {
        object.insert("is_reply".to_owned(), json!(is_reply));
    }
    Value::Object(object)
}

/// One GetFlows response as `hubble observe -o json` prints it: the flow or
/// the lost events, with the node's name and the time.
pub fn response(response: &GetFlowsResponse) -> Value {
    let GetFlowsResponse {
        response_types,
        node_name,
        time,
    } = response;
    let mut object = Map::new();
    match response_types {
        Some(ResponseTypes::Flow(flow)) => {
            object.insert("flow".to_owned(), self::flow(flow));
        }
        Some(ResponseTypes::LostEvents(lost)) => {
            object.insert(
                "lost_events".to_owned(),
                self::object(&[
                    (
                        "source",
                        name(
                            lost.source,
                            flow_proto::hubble::flow::LostEventSource::as_str_name,
                        ),
                    ),
                    ("num_events_lost", json!(lost.num_events_lost)),
                ]),
            );
        }
        Some(ResponseTypes::NodeStatus(_)) | None => {}
    }
    put(&mut object, "node_name", json!(node_name));
    put(&mut object, "time", timestamp(time.as_ref()));
    Value::Object(object)
}
