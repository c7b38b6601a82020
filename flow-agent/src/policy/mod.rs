//! The policy learner: a connection graph learned from flows, kept crash-safe
//! on disk, merged across nodes, and turned into least-privilege
//! NetworkPolicies that allow exactly what was observed.

pub mod agents;
pub mod check;
pub mod cluster;
pub mod command;
pub mod evaluate;
pub mod export;
pub mod fetch;
pub mod flowfile;
pub mod generate;
pub mod graph;
pub mod learner;
pub mod store;
pub mod synthetic;
