//! Gives flow records their identities: Service translation (with conntrack),
//! then who each end was when the flow was seen.

use std::{net::IpAddr, time::SystemTime};

use tracing::{debug, warn};

use crate::{
    conntrack::{Conntrack, Tuple},
    drain::FlowSample,
    identity::{Identity, IdentityCache, PeerKind, ServiceTarget, Workload},
    record::{FlowRecord, Protocol, ip_from_key, key_address},
};

/// How a sample addressed to a Service was translated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The Service and its backends.
    pub target: ServiceTarget,
    /// The backend conntrack says the connection went to, if it knows.
    pub backend: Option<(IpAddr, u16)>,
}

/// Holds the identity cache and resolves records against it.
#[derive(Debug)]
pub struct Enricher {
    cache: IdentityCache,
    conntrack: Option<Conntrack>,
}

impl Enricher {
    /// Uses `cache`; looks connections up in conntrack when it can open it.
    pub fn new(cache: IdentityCache) -> Self {
        let conntrack = match Conntrack::open() {
            Ok(conntrack) => Some(conntrack),
            Err(error) => {
                warn!(%error, "conntrack unavailable: connections to Services resolve to their workload, not their pod");
                None
            }
        };
        Self { cache, conntrack }
    }

    /// The cache, to apply source events to.
    pub fn cache_mut(&mut self) -> &mut IdentityCache {
        &mut self.cache
    }

    /// The cache.
    pub fn cache(&self) -> &IdentityCache {
        &self.cache
    }

    /// Rewrites the destination of samples sent to a Service address to the
    /// backend conntrack reports, so that requests and replies (which come from
    /// the backend) pair up. Returns each sample's translation.
    pub fn translate(&mut self, samples: &mut [FlowSample]) -> Vec<Option<Translation>> {
        samples
            .iter_mut()
            .map(|sample| {
                let key = &mut sample.key;
                let protocol = Protocol(key.protocol);
                let destination = ip_from_key(key.dst_addr);
                let target = self
                    .cache
                    .service_target(destination, key.dst_port, protocol)?;
                let original = Tuple {
                    src: ip_from_key(key.src_addr),
                    src_port: key.src_port,
                    dst: destination,
                    dst_port: key.dst_port,
                    protocol,
                };
                let backend = self.conntrack.as_mut().and_then(|conntrack| {
                    match conntrack.reply_source(&original) {
                        Ok(backend) => backend,
                        Err(error) => {
                            debug!(%error, "conntrack lookup failed");
                            None
                        }
                    }
                });
                // Without DNAT (a Service address reached directly) the reply
                // source is the Service address itself: nothing to rewrite.
                let backend =
                    backend.filter(|(ip, port)| (*ip, *port) != (destination, key.dst_port));
                if let Some((ip, port)) = backend {
                    key.dst_addr = key_address(ip);
                    key.dst_port = port;
                }
                Some(Translation { target, backend })
            })
            .collect()
    }

    /// Fills in both ends' identities, the Service, and whether the flow
    /// crosses tenants. `at` is when the flow was seen.
    pub fn annotate(
        &self,
        record: &mut FlowRecord,
        translation: Option<&Translation>,
        at: SystemTime,
    ) {
        record.source.identity = self.cache.identify(record.source.ip, at);
        record.destination.identity = match translation {
            None => self.cache.identify(record.destination.ip, at),
            Some(Translation {
                target,
                backend: Some(_),
            }) => {
                record.destination.service = Some(target.service.clone());
                self.cache.identify(record.destination.ip, at)
            }
            Some(Translation {
                target,
                backend: None,
            }) => {
                record.destination.service = Some(target.service.clone());
                // Which backend served it is unknown; its workload is known when
                // all backends share one.
                self.cache
                    .common_backend(target, at)
                    .unwrap_or_else(|| Identity {
                        kind: Some(PeerKind::Service),
                        namespace: Some(target.service.namespace.clone()),
                        tenant: Some(self.cache.tenant(&target.service.namespace)),
                        workload: Some(Workload {
                            kind: "Service".to_owned(),
                            name: target.service.name.clone(),
                        }),
                        ..Identity::default()
                    })
            }
        };
        record.cross_tenant = match (
            &record.source.identity.tenant,
            &record.destination.identity.tenant,
        ) {
            (Some(source), Some(destination)) => Some(source != destination),
            _ => Some(false),
        };
    }
}
