//! DNS as flow-agent sees it: messages copied off the wire by the datapath,
//! read without trusting any length in them ([`message`]), and the names each
//! pod resolved to each address, kept for as long as the answers' TTLs allow
//! plus a grace period, in bounded memory ([`names`]).
//!
//! Stable Rust only, with no eBPF or Kubernetes dependency, so that the parser
//! can be fuzzed on its own (`fuzz/`).

pub mod frame;
pub mod message;
pub mod names;

pub use message::{DnsMessage, Kind, ReadError, Resolved};
pub use names::{NameCache, NameCacheConfig, NameCacheStats};
