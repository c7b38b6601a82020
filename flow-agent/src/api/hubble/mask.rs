//! GetFlows' `field_mask`: only the fields a client asks for (the hubble CLI
//! asks for a dozen by default for its table output).
//!
//! Paths name Flow fields by their protobuf names, nested with dots:
//! `source.pod_name`, `IP`, `l4`. A path into an endpoint (`source.*`,
//! `destination.*`) keeps just those endpoint fields; a path into any other
//! message keeps that whole message. A path naming a field flow-agent never
//! fills (`l7`, `ethernet`, `Summary`) selects nothing, as it would select
//! nothing on a Cilium flow without it.

use std::collections::BTreeSet;

use flow_proto::hubble::flow::{Endpoint, Flow};

/// A compiled field mask; the empty mask keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowMask {
    /// Top-level fields kept whole.
    whole: BTreeSet<String>,
    /// Endpoint fields kept of `source` and `destination` (when not whole).
    source: BTreeSet<String>,
    destination: BTreeSet<String>,
}

/// A mask path that is not a field path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field_mask.paths[{index}]: {path:?} is not a field path (names joined by `.`)")]
pub struct MaskError {
    /// Position in `paths`.
    pub index: usize,
    /// The path.
    pub path: String,
}

impl FlowMask {
    /// Compiles `paths`; an empty list keeps every field.
    pub fn compile(paths: &[String]) -> Result<Self, MaskError> {
        let mut mask = Self::default();
        for (index, path) in paths.iter().enumerate() {
            let mut parts = path.split('.');
            let valid = path.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            let (Some(top), true) = (parts.next(), valid) else {
                return Err(MaskError {
                    index,
                    path: path.clone(),
                });
            };
            match (top, parts.next()) {
                ("source", Some(field)) => {
                    mask.source.insert(field.to_owned());
                }
                ("destination", Some(field)) => {
                    mask.destination.insert(field.to_owned());
                }
                _ => {
                    mask.whole.insert(top.to_owned());
                }
            }
        }
        Ok(mask)
    }

    fn is_empty(&self) -> bool {
        self.whole.is_empty() && self.source.is_empty() && self.destination.is_empty()
    }

    /// Clears what the mask leaves out.
    pub fn apply(&self, flow: &mut Flow) {
        if self.is_empty() {
            return;
        }
        let keep = |name: &str| self.whole.contains(name);
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
        clear_unless(keep("time"), time);
        clear_unless(keep("uuid"), uuid);
        clear_unless(keep("verdict"), verdict);
        clear_unless(keep("IP"), ip);
        clear_unless(keep("l4"), l4);
        clear_unless(keep("l7"), l7);
        clear_unless(keep("Type"), r#type);
        clear_unless(keep("node_name"), node_name);
        clear_unless(keep("source_names"), source_names);
        clear_unless(keep("destination_names"), destination_names);
        clear_unless(keep("event_type"), event_type);
        clear_unless(keep("source_service"), source_service);
        clear_unless(keep("destination_service"), destination_service);
        clear_unless(keep("traffic_direction"), traffic_direction);
        clear_unless(keep("trace_observation_point"), trace_observation_point);
        clear_unless(keep("is_reply"), is_reply);
        clear_unless(keep("interface"), interface);
        clear_unless(keep("emitter"), emitter);
        endpoint(keep("source"), &self.source, source);
        endpoint(keep("destination"), &self.destination, destination);
    }
}

fn clear_unless<T: Default>(keep: bool, field: &mut T) {
    if !keep {
        *field = T::default();
    }
}

fn endpoint(whole: bool, fields: &BTreeSet<String>, endpoint: &mut Option<Endpoint>) {
    if whole {
        return;
    }
    if fields.is_empty() {
        *endpoint = None;
        return;
    }
    let Some(Endpoint {
        identity,
        cluster_name,
        namespace,
        labels,
        pod_name,
        workloads,
    }) = endpoint
    else {
        return;
    };
    let keep = |name: &str| fields.contains(name);
    clear_unless(keep("identity"), identity);
    clear_unless(keep("cluster_name"), cluster_name);
    clear_unless(keep("namespace"), namespace);
    clear_unless(keep("labels"), labels);
    clear_unless(keep("pod_name"), pod_name);
    clear_unless(keep("workloads"), workloads);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        let endpoint = Endpoint {
            identity: 0,
            cluster_name: String::new(),
            namespace: "shop-a".into(),
            labels: vec!["k8s:app=cart".into()],
            pod_name: "cart-1".into(),
            workloads: vec![flow_proto::hubble::flow::Workload {
                name: "cart".into(),
                kind: "Deployment".into(),
            }],
        };
        Flow {
            uuid: "u".into(),
            node_name: "node-1".into(),
            verdict: 1,
            is_reply: Some(false),
            source: Some(endpoint.clone()),
            destination: Some(endpoint),
            ..Flow::default()
        }
    }

    #[test]
    fn the_hubble_cli_default_mask_keeps_exactly_its_fields() {
        let paths: Vec<String> = [
            "time",
            "verdict",
            "ethernet",
            "IP",
            "l4",
            "source.identity",
            "source.namespace",
            "source.pod_name",
            "destination.identity",
            "destination.namespace",
            "destination.pod_name",
            "Type",
            "node_name",
            "l7",
            "event_type",
            "source_service",
            "destination_service",
            "is_reply",
            "Summary",
            "ip_trace_id",
        ]
        .map(str::to_owned)
        .to_vec();
        let mask = FlowMask::compile(&paths).unwrap();
        let mut masked = flow();
        mask.apply(&mut masked);
        assert_eq!(masked.uuid, "");
        assert_eq!(masked.node_name, "node-1");
        assert_eq!(masked.verdict, 1);
        assert_eq!(masked.is_reply, Some(false));
        let source = masked.source.unwrap();
        assert_eq!(
            (source.namespace.as_str(), source.pod_name.as_str()),
            ("shop-a", "cart-1")
        );
        assert!(source.labels.is_empty() && source.workloads.is_empty());
    }

    #[test]
    fn no_mask_keeps_everything_and_a_whole_endpoint_stays_whole() {
        let mut unmasked = flow();
        FlowMask::compile(&[]).unwrap().apply(&mut unmasked);
        assert_eq!(unmasked, flow());
        let mut whole = flow();
        FlowMask::compile(&["source".to_owned(), "source.pod_name".to_owned()])
            .unwrap()
            .apply(&mut whole);
        assert_eq!(whole.source, flow().source);
        assert_eq!(whole.destination, None);
        assert_eq!(whole.node_name, "");
    }

    #[test]
    fn malformed_paths_are_named() {
        for bad in ["", "source.", ".time", "source..pod_name", "time-x"] {
            let error = FlowMask::compile(&["time".to_owned(), bad.to_owned()]).unwrap_err();
            assert_eq!(error.index, 1, "{bad:?}");
        }
    }
}
