//! flow-agent's gRPC schemas: its own (`proto/flowagent/v1/flow.proto`) and
//! the part of Hubble's it serves (`proto/hubble/`), generated at build time.
#![expect(
    missing_docs,
    reason = "generated code documents what the .proto documents"
)]

/// `flowagent.v1`.
pub mod v1 {
    tonic::include_proto!("flowagent.v1");
}

/// Hubble's API, in the upstream packages: `flow`, `observer`, `peer` and
/// `relay`. The modules are siblings, as the generated code expects.
pub mod hubble {
    /// `flow`: Flow, FlowFilter and their parts.
    pub mod flow {
        tonic::include_proto!("flow");
    }
    /// `observer`: the Observer service.
    pub mod observer {
        tonic::include_proto!("observer");
    }
    /// `peer`: the Peer service.
    pub mod peer {
        tonic::include_proto!("peer");
    }
    /// `relay`: node states that observer.proto refers to.
    pub mod relay {
        tonic::include_proto!("relay");
    }
}
