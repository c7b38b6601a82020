//! The flow API: a bounded buffer of recent records and aggregates, streamed to
//! gRPC subscribers with filters, tenant scoping and exact loss accounting.

pub mod access;
pub mod convert;
pub mod filter;
pub mod hub;
pub mod server;
