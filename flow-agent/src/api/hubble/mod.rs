//! Hubble's API (`observer.Observer` and `peer.Peer`), so that the stock
//! hubble-relay, hubble CLI and Hubble UI see flow-agent's flows on every
//! node. One `flow.Flow` is sent per flow record; the schema is our own
//! definition of the part of Cilium's `api/v1` we fill (`proto/hubble/`).

pub mod convert;
pub mod dns;
pub mod filter;
pub mod json;
pub mod mask;
pub mod observer;
pub mod peer;
pub mod selector;
