//! Gives flow records their identities: Service translation (with conntrack),
//! then who each end was when the flow was seen.

use std::{cell::RefCell, collections::HashSet, net::IpAddr, sync::Arc, time::SystemTime};

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

/// Interned identities kept at most: past this the set starts afresh (records
/// already made keep theirs).
const MAX_INTERNED: usize = 65_536;

/// Holds the identity cache and resolves records against it.
#[derive(Debug)]
pub struct Enricher {
    cache: IdentityCache,
    conntrack: Option<Conntrack>,
    /// One shared copy per distinct identity, so the records of a pod (in the
    /// API's buffer, the aggregator, the sinks) do not each own one.
    interned: RefCell<HashSet<Arc<Identity>>>,
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
        Self {
            cache,
            conntrack,
            interned: RefCell::new(HashSet::new()),
        }
    }

    /// The shared copy of `identity`.
    fn intern(&self, identity: Identity) -> Arc<Identity> {
        let mut interned = self.interned.borrow_mut();
        if let Some(shared) = interned.get(&identity) {
            return Arc::clone(shared);
        }
        if interned.len() >= MAX_INTERNED {
            interned.clear();
        }
        let shared = Arc::new(identity);
        interned.insert(Arc::clone(&shared));
        shared
    }

    /// Distinct identities currently shared.
    pub fn interned(&self) -> usize {
        self.interned.borrow().len()
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
    ///
    /// Replies from a backend on another node enter through an interface that
    /// is not watched and are un-DNATed before a pod's veth sees them: their
    /// source is the Service address. Those get their source rewritten to the
    /// backend the same way, so they pair with the translated request.
    pub fn translate(&mut self, samples: &mut [FlowSample]) -> Vec<Option<Translation>> {
        samples
            .iter_mut()
            .map(|sample| {
                let key = &mut sample.key;
                let protocol = Protocol(key.protocol);
                let destination = ip_from_key(key.dst_addr);
                let Some(target) = self
                    .cache
                    .service_target(destination, key.dst_port, protocol)
                else {
                    self.translate_reply_source(key, protocol);
                    return None;
                };
                let original = Tuple {
                    src: ip_from_key(key.src_addr),
                    src_port: key.src_port,
                    dst: destination,
                    dst_port: key.dst_port,
                    protocol,
                };
                let backend = self.backend(&original);
                if let Some((ip, port)) = backend {
                    key.dst_addr = key_address(ip);
                    key.dst_port = port;
                }
                Some(Translation { target, backend })
            })
            .collect()
    }

    /// A sample whose source is a Service address: a reply un-DNATed by the
    /// node. Its connection's original tuple is the client's request to the
    /// Service; conntrack's reply source for it is the backend.
    fn translate_reply_source(&mut self, key: &mut flow_common::FlowKey, protocol: Protocol) {
        let source = ip_from_key(key.src_addr);
        if self
            .cache
            .service_target(source, key.src_port, protocol)
            .is_none()
        {
            return;
        }
        let original = Tuple {
            src: ip_from_key(key.dst_addr),
            src_port: key.dst_port,
            dst: source,
            dst_port: key.src_port,
            protocol,
        };
        if let Some((ip, port)) = self.backend(&original) {
            key.src_addr = key_address(ip);
            key.src_port = port;
        }
    }

    /// The backend conntrack says the connection with this original tuple
    /// (a client to a Service address) went to. Without DNAT (a Service
    /// address reached directly) the reply source is the Service address
    /// itself: no backend to rewrite to.
    fn backend(&mut self, original: &Tuple) -> Option<(IpAddr, u16)> {
        let conntrack = self.conntrack.as_mut()?;
        match conntrack.reply_source(original) {
            Ok(backend) => {
                backend.filter(|&(ip, port)| (ip, port) != (original.dst, original.dst_port))
            }
            Err(error) => {
                debug!(%error, "conntrack lookup failed");
                None
            }
        }
    }

    /// Who is behind a Service address whose backend is unknown: the
    /// workload all backends share, else the Service itself.
    fn untranslated(&self, target: &ServiceTarget, at: SystemTime) -> Identity {
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

    /// Fills in both ends' identities, the Service, and whether the flow
    /// crosses tenants. `at` is when the flow was seen.
    pub fn annotate(
        &self,
        record: &mut FlowRecord,
        translation: Option<&Translation>,
        at: SystemTime,
    ) {
        let source =
            match self
                .cache
                .service_target(record.source.ip, record.source.port, record.protocol)
            {
                // A reply still from the Service address (no conntrack, or its
                // lookup missed): the same Service and backend identity as its
                // request, so both fold into one aggregate.
                Some(target) => {
                    let identity = self.untranslated(&target, at);
                    record.source.service = Some(target.service);
                    identity
                }
                None => self.cache.identify(record.source.ip, at),
            };
        record.source.identity = self.intern(source);
        let destination = match translation {
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
                self.untranslated(target, at)
            }
        };
        record.destination.identity = self.intern(destination);
        record.cross_tenant = match (
            &record.source.identity.tenant,
            &record.destination.identity.tenant,
        ) {
            (Some(source), Some(destination)) => Some(source != destination),
            _ => Some(false),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        identity::{CacheEvent, IdentityConfig, inventory},
        record::Endpoint,
    };

    #[test]
    fn a_reply_still_from_the_service_address_folds_into_its_requests_aggregate() {
        let mut cache = IdentityCache::new(IdentityConfig {
            tenant_label: "tenant".to_owned(),
            node_name: "node-a".to_owned(),
            local_addresses: Vec::new(),
            grace: Duration::from_secs(60),
        });
        let pod = |name: &str, ip: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {name}, labels: {{app: {name}}}}}\nspec: {{nodeName: node-b, containers: [{{name: main, image: app}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}], startTime: '2020-01-01T00:00:00Z'}}\n"
            )
        };
        let yaml = [
            pod("web", "10.1.0.2"),
            pod("cart", "10.2.0.30"),
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: cart}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints: [{addresses: [10.2.0.30], conditions: {ready: true}}]\n".to_owned(),
        ]
        .concat();
        let parsed = inventory::parse(&yaml, "test.yaml");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let now = SystemTime::now();
        for object in parsed.objects {
            cache.apply(CacheEvent::Apply(object), now);
        }
        let enricher = Enricher::new(cache);
        let time = crate::record::Timestamp(now);
        let record = |source: Endpoint, destination: Endpoint, is_reply: bool| FlowRecord {
            time,
            first_seen: time,
            source,
            destination,
            protocol: Protocol(6),
            icmp: None,
            packets: 2,
            bytes: 100,
            tcp_flags: Vec::new(),
            is_reply,
            interface: "veth0".into(),
            interface_index: 0,
            hook: crate::record::Hook::Ingress,
            node: "node-a".into(),
            cross_tenant: None,
            new_connection: !is_reply,
            violation: false,
        };
        let (client, service) = (
            Endpoint::new("10.1.0.2".parse().unwrap(), 40_000),
            Endpoint::new("10.96.0.20".parse().unwrap(), 80),
        );
        // No conntrack answer: the request keeps the Service address...
        let mut request = record(client.clone(), service.clone(), false);
        let target = enricher
            .cache()
            .service_target(service.ip, 80, Protocol(6))
            .unwrap();
        let translation = Translation {
            target,
            backend: None,
        };
        enricher.annotate(&mut request, Some(&translation), now);
        // ...and so does the reply, un-DNATed by the node.
        let mut reply = record(service, client, true);
        enricher.annotate(&mut reply, None, now);
        assert_eq!(reply.source.identity.pod, None);
        assert_eq!(
            reply.source.identity.workload,
            request.destination.identity.workload
        );
        assert_eq!(
            reply.source.service.as_ref().unwrap().target_port,
            Some(8080)
        );
        let mut aggregator = crate::aggregate::Aggregator::new();
        aggregator.add(&request, time);
        aggregator.add(&reply, time);
        let aggregates = aggregator.finish(time);
        assert_eq!(aggregates.len(), 1, "{aggregates:#?}");
        let aggregate = &aggregates[0];
        assert_eq!(
            (
                aggregate.port,
                aggregate.connections,
                aggregate.bytes,
                aggregate.reply_bytes
            ),
            (8080, 1, 100, 100)
        );
    }

    #[test]
    fn records_of_one_pod_share_one_identity() {
        let mut cache = IdentityCache::new(IdentityConfig {
            tenant_label: "tenant".to_owned(),
            node_name: "node-a".to_owned(),
            local_addresses: Vec::new(),
            grace: Duration::from_secs(60),
        });
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, uid: u1, labels: {app: web}}\nspec: {nodeName: node-a, containers: [{name: main, image: app}]}\nstatus: {podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}], startTime: '2020-01-01T00:00:00Z'}\n";
        let parsed = inventory::parse(yaml, "test.yaml");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let now = SystemTime::now();
        for object in parsed.objects {
            cache.apply(CacheEvent::Apply(object), now);
        }
        let enricher = Enricher::new(cache);
        let record = |port| {
            let time = crate::record::Timestamp(now);
            let mut record = FlowRecord {
                time,
                first_seen: time,
                source: Endpoint::new("10.1.0.2".parse().unwrap(), port),
                destination: Endpoint::new("10.9.9.9".parse().unwrap(), 443),
                protocol: Protocol(6),
                icmp: None,
                packets: 1,
                bytes: 60,
                tcp_flags: Vec::new(),
                is_reply: false,
                interface: "veth0".into(),
                interface_index: 0,
                hook: crate::record::Hook::Ingress,
                node: "node-a".into(),
                cross_tenant: None,
                new_connection: false,
                violation: false,
            };
            enricher.annotate(&mut record, None, now);
            record
        };
        let (first, second) = (record(40_000), record(40_001));
        assert_eq!(first.source.identity.pod.as_deref(), Some("web-1"));
        assert!(Arc::ptr_eq(&first.source.identity, &second.source.identity));
        assert!(Arc::ptr_eq(
            &first.destination.identity,
            &second.destination.identity
        ));
        assert_eq!(first.destination.identity.kind, Some(PeerKind::World));
        assert_eq!(enricher.interned(), 2);
    }
}
