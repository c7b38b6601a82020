//! A Hubble `GetFlowsRequest`, decoded from protobuf bytes, and its
//! whitelist and blacklist compiled as the Hubble observer compiles them:
//! a filter that cannot be used is a clean error naming its field, never a
//! panic; a compiled matcher runs on a record without panicking.
#![no_main]

use flow_agent::api::{hub::StoredFlow, hubble::filter::HubbleMatcher};
use flow_model::record::FlowRecord;
use flow_proto::hubble::observer::GetFlowsRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const RECORD: &str = r#"{"time":"2026-11-20T10:00:00Z","first_seen":"2026-11-20T10:00:00Z","source":{"ip":"10.0.0.1","port":1234,"namespace":"shop","pod":"web-1","labels":{"app":"web"}},"destination":{"ip":"10.0.0.2","port":80,"names":["api.shop.svc.cluster.local"]},"protocol":"TCP","packets":1,"bytes":60,"is_reply":false,"interface":"veth0","hook":"ingress","node":"n"}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = GetFlowsRequest::decode(data) else {
        return;
    };
    match HubbleMatcher::compile(&request.whitelist, &request.blacklist, 1) {
        Ok(matcher) => {
            let record: FlowRecord = serde_json::from_str(RECORD).expect("the record parses");
            let _ = matcher.matches(&StoredFlow {
                record,
                sequence: 7,
                dns: None,
            });
        }
        Err(error) => assert!(!error.field.is_empty()),
    }
});
