//! The flow APIs: a bounded buffer of recent records and aggregates, streamed
//! to gRPC subscribers with filters, tenant scoping and exact loss accounting,
//! through flow-agent's own FlowService and through Hubble's Observer.

use std::time::SystemTime;

use tonic::Status;

pub mod access;
pub mod convert;
pub mod filter;
pub mod flow_service;
pub mod fqdn;
pub mod hub;
pub mod hubble;
pub mod rbac;
pub mod sent;
pub mod server;

/// A request's time, or INVALID_ARGUMENT naming `field`.
pub(crate) fn request_time(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<SystemTime>, Status> {
    timestamp
        .map(|timestamp| {
            SystemTime::try_from(timestamp)
                .map_err(|_| Status::invalid_argument(format!("{field}: not a valid time")))
        })
        .transpose()
}
