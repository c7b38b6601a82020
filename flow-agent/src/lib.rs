//! flow-agent: an eBPF flow observer for Kubernetes nodes.
//!
//! Data flows one way through the modules:
//!
//! 1. [`datapath`] loads the TC classifiers, attaches them to interfaces and
//!    drains their per-CPU flow maps without racing the kernel;
//! 2. [`interfaces`] selects interfaces by glob and follows them over rtnetlink;
//! 3. [`drain`] sums per-CPU slots and spill events into one sample per flow;
//! 4. [`flows`] tracks connections to tell requests from replies;
//! 5. [`flow_model::record`] is the flow record and its JSON form, with the
//!    identity [`flow_model::identity`] resolves;
//! 6. [`output`] writes records to local sinks;
//! 7. [`api`] keeps recent records and streams them to gRPC subscribers;
//! 8. [`agent`] ties them together for `flow-agent run`.
//!
//! [`observe`] is the client side: `flow-agent observe` and `flow-agent status`.
//! [`flow_policy`] learns the connection graph (in the agent, crash-safe),
//! proposes least-privilege NetworkPolicies from it, checks policies against
//! flows and flags violations in monitor mode; `flow-agent policy` runs its
//! commands, as the stable-only `flow-policy` binary does.
#![deny(missing_docs)]

pub mod agent;
pub mod aggregate;
pub mod api;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod drain;
pub mod enrich;
pub mod flows;
pub mod interfaces;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod output;
