//! flow-agent's gRPC schema, generated from `proto/flowagent/v1/flow.proto`.
#![expect(
    missing_docs,
    reason = "generated code documents what the .proto documents"
)]

/// `flowagent.v1`.
pub mod v1 {
    tonic::include_proto!("flowagent.v1");
}
