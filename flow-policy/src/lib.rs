//! flow-policy: the policy learner and the policy commands.
//!
//! A connection graph learned from flows, kept crash-safe on disk, merged
//! across nodes, and turned into least-privilege NetworkPolicies that allow
//! exactly what was observed; policies checked against flows.
//!
//! The node agent learns through this crate, and the `flow-policy` binary
//! runs the same `policy ...` commands as `flow-agent policy ...` in CI
//! pipelines: everything here builds on stable Rust, without the eBPF
//! toolchain the agent's build needs.
#![deny(missing_docs)]

pub mod agents;
pub mod audit;
pub mod check;
pub mod cilium;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod diff;
pub mod evaluate;
pub mod export;
pub mod fetch;
pub mod flowfile;
pub mod generate;
pub mod graph;
pub mod learner;
pub mod load;
pub mod mermaid;
pub mod ports;
pub mod run;
pub mod store;
pub mod synthetic;
pub mod wire;
