//! flow-model: what flow-agent's node agent and its offline tools (the
//! policy commands that run in CI) share, all of it buildable on stable Rust
//! without the eBPF toolchain:
//!
//! - [`record`]: the flow record and its JSON form;
//! - [`identity`]: who an address is (pod, workload, namespace, tenant),
//!   from an inventory file or the Kubernetes API;
//! - [`cidr`]: address blocks;
//! - [`client`]: reaching an agent's gRPC API, and [`wire`]: shared parts
//!   of its protobuf form.
#![deny(missing_docs)]

use std::time::Duration;

pub mod cidr;
pub mod client;
pub mod identity;
pub mod record;
pub mod wire;

/// An error and its sources on one line: `outer: inner: root`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Transparent wrappers repeat their source's message.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text.replace('\n', " ")
}

/// Parses a duration written as `500ms`, `5s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (use a duration such as 500ms, 5s or 2m)"))
}
