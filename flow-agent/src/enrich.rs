//! Gives flow records their identities: Service translation (with conntrack),
//! then who each end was when the flow was seen.

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use hashbrown::{Equivalent, HashMap};
use tracing::{debug, warn};

use flow_model::identity::{Holder, Identity, IdentityCache, PeerKind, ServiceTarget, Workload};

use flow_model::record::{FlowRecord, Protocol, ip_from_key, key_address};

use crate::{
    conntrack::{Conntrack, LOOKUP_TIMEOUT, Tuple},
    drain::FlowSample,
};

/// How a sample addressed to a Service was translated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The Service and its backends (shared by the samples sent to it).
    pub target: Arc<ServiceTarget>,
    /// The backend conntrack says the connection went to, if it knows.
    pub backend: Option<(IpAddr, u16)>,
}

/// The translations of one drain's samples, by the samples' positions. Most
/// samples are not addressed to a Service: only those that are have one.
#[derive(Debug, Default)]
pub struct Translations {
    /// Ordered by position.
    by_sample: Vec<(usize, Translation)>,
}

impl Translations {
    /// The translations and the positions of their samples, in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Translation)> {
        self.by_sample
            .iter()
            .map(|(position, translation)| (*position, translation))
    }

    /// Samples with a translation.
    pub fn len(&self) -> usize {
        self.by_sample.len()
    }

    /// No sample was addressed to a Service.
    pub fn is_empty(&self) -> bool {
        self.by_sample.is_empty()
    }
}

/// Interned identities kept at most: past this the set starts afresh (records
/// already made keep theirs).
const MAX_INTERNED: usize = 65_536;

/// Holds the identity cache and resolves records against it.
#[derive(Debug)]
pub struct Enricher {
    cache: IdentityCache,
    conntrack: Option<Conntrack>,
    /// Lookups that failed or were skipped (see [`Enricher::backend`]):
    /// their records keep the Service address.
    conntrack_failures: u64,
    /// A lookup of the current [`Enricher::translate`] went unanswered: the
    /// rest of it asks no more, so a conntrack that stopped answering costs
    /// one [`LOOKUP_TIMEOUT`] per drain, not one per Service flow.
    conntrack_stalled: bool,
    /// One shared copy per distinct identity, so the records of a pod (in the
    /// API's buffer, the aggregator, the sinks) do not each own one.
    interned: RefCell<HashSet<Arc<Identity>>>,
    /// The cache's generation the memos below were made at: they hold
    /// until it changes.
    generation: Cell<u64>,
    /// The identity of each holder met since the cache last changed: the
    /// records of one pod resolve it once, not once each.
    resolved: RefCell<HashMap<Holder, Resolved>>,
    /// Who is behind a Service whose backend is unknown, by the Service's
    /// address and the holders of its backends, since the cache last
    /// changed.
    untranslated: RefCell<HashMap<(IpAddr, Vec<Holder>), Resolved>>,
    /// A number for each tenant met since the cache last changed.
    tenants: RefCell<HashMap<String, u32>>,
    /// The Service ports met since the cache last changed, by address, port
    /// and protocol (`None`: a Service address, not one of its ports).
    targets: RefCell<HashMap<ServicePort, Option<Arc<ServiceTarget>>>>,
    /// The backends' holders of the Service being resolved (kept to spare
    /// an allocation per record).
    holders: RefCell<Vec<Holder>>,
}

/// A virtual address, port and protocol that may be a Service's.
type ServicePort = (IpAddr, u16, Protocol);

/// An identity, shared, and the number of its tenant: whether a flow crosses
/// tenants is then told without reading either identity.
#[derive(Clone, Debug)]
struct Resolved {
    identity: Arc<Identity>,
    /// None outside tenants: no namespace, or a platform namespace.
    tenant: Option<u32>,
}

/// A key of [`Enricher::untranslated`] looked up without building it.
#[derive(Hash)]
struct UntranslatedKey<'a>(IpAddr, &'a [Holder]);

impl Equivalent<(IpAddr, Vec<Holder>)> for UntranslatedKey<'_> {
    fn equivalent(&self, key: &(IpAddr, Vec<Holder>)) -> bool {
        self.0 == key.0 && self.1 == key.1.as_slice()
    }
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
        Self::with_conntrack(cache, conntrack)
    }

    /// Uses `cache` and never asks conntrack: connections to Services
    /// resolve to their workload. For benchmarks, whose figures should not
    /// depend on the host's conntrack table.
    pub fn without_conntrack(cache: IdentityCache) -> Self {
        Self::with_conntrack(cache, None)
    }

    fn with_conntrack(cache: IdentityCache, conntrack: Option<Conntrack>) -> Self {
        Self {
            generation: Cell::new(cache.generation()),
            cache,
            conntrack,
            conntrack_failures: 0,
            conntrack_stalled: false,
            interned: RefCell::new(HashSet::new()),
            resolved: RefCell::default(),
            untranslated: RefCell::default(),
            tenants: RefCell::default(),
            targets: RefCell::default(),
            holders: RefCell::default(),
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

    /// The cache, to apply source events to. What was resolved against it
    /// is forgotten once it changes ([`IdentityCache::generation`]).
    pub fn cache_mut(&mut self) -> &mut IdentityCache {
        &mut self.cache
    }

    /// Forgets what was resolved if the cache changed since.
    fn check_generation(&self) {
        let generation = self.cache.generation();
        if self.generation.replace(generation) != generation {
            self.resolved.borrow_mut().clear();
            self.untranslated.borrow_mut().clear();
            self.tenants.borrow_mut().clear();
            self.targets.borrow_mut().clear();
        }
    }

    /// The Service behind a virtual address and port, shared.
    fn service_target(
        &self,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<Arc<ServiceTarget>> {
        if !self.cache.is_service_address(ip) {
            return None;
        }
        let key = (ip, port, protocol);
        if let Some(target) = self.targets.borrow().get(&key) {
            return target.clone();
        }
        let target = self.cache.service_target(ip, port, protocol).map(Arc::new);
        self.targets.borrow_mut().insert(key, target.clone());
        target
    }

    /// `identity` shared, with its tenant's number (none in a platform
    /// namespace, whose flows never cross tenants).
    fn resolve(&self, identity: Identity) -> Resolved {
        let platform = identity
            .namespace
            .as_ref()
            .is_some_and(|namespace| self.cache.is_platform(namespace));
        let tenant = identity
            .tenant
            .as_ref()
            .filter(|_| !platform)
            .map(|tenant| {
                let mut tenants = self.tenants.borrow_mut();
                let next = u32::try_from(tenants.len()).unwrap_or(u32::MAX);
                *tenants.entry_ref(tenant.as_str()).or_insert(next)
            });
        Resolved {
            identity: self.intern(identity),
            tenant,
        }
    }

    /// Who held `ip` at `at`.
    fn identity_of(&self, ip: IpAddr, at: SystemTime) -> Resolved {
        // Most ends are pods met before in this drain: their tenure finds
        // them without the rest of the holder's lookups.
        if let Some(tenure) = self.cache.nearest_tenure(ip, at)
            && let Some(resolved) = self.resolved.borrow().get(&Holder::Pod { ip, tenure })
        {
            return resolved.clone();
        }
        let holder = self.cache.holder(ip, at);
        if let Some(resolved) = self.resolved.borrow().get(&holder) {
            return resolved.clone();
        }
        let resolved = self.resolve(self.cache.holder_identity(holder));
        self.resolved.borrow_mut().insert(holder, resolved.clone());
        resolved
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
    pub fn translate(&mut self, samples: &mut [FlowSample]) -> Translations {
        self.check_generation();
        self.conntrack_stalled = false;
        let by_sample = samples
            .iter_mut()
            .enumerate()
            .filter_map(|(position, sample)| {
                let key = &mut sample.key;
                let protocol = Protocol(key.protocol);
                let destination = ip_from_key(key.dst_addr);
                let Some(target) = self.service_target(destination, key.dst_port, protocol) else {
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
                Some((position, Translation { target, backend }))
            })
            .collect();
        Translations { by_sample }
    }

    /// A sample whose source is a Service address: a reply un-DNATed by the
    /// node. Its connection's original tuple is the client's request to the
    /// Service; conntrack's reply source for it is the backend.
    fn translate_reply_source(&mut self, key: &mut flow_common::FlowKey, protocol: Protocol) {
        let source = ip_from_key(key.src_addr);
        if self
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
    ///
    /// A failed lookup leaves the record untranslated (it names the Service
    /// and the workload its backends share) and is counted; the first is
    /// logged as a warning. After one that timed out, the rest of this
    /// translation asks no more.
    fn backend(&mut self, original: &Tuple) -> Option<(IpAddr, u16)> {
        let conntrack = self.conntrack.as_mut()?;
        if self.conntrack_stalled {
            self.conntrack_failures += 1;
            return None;
        }
        match conntrack.reply_source(original) {
            Ok(backend) => {
                backend.filter(|&(ip, port)| (ip, port) != (original.dst, original.dst_port))
            }
            Err(error) => {
                self.conntrack_failures += 1;
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    self.conntrack_stalled = true;
                }
                if self.conntrack_failures == 1 {
                    warn!(%error, timeout = ?LOOKUP_TIMEOUT, "conntrack lookup failed: records to Services keep the Service address until it answers again");
                } else {
                    debug!(%error, "conntrack lookup failed");
                }
                None
            }
        }
    }

    /// Conntrack lookups that failed or were skipped after one timed out
    /// (their records name the Service, not the backend pod).
    pub fn conntrack_failures(&self) -> u64 {
        self.conntrack_failures
    }

    /// Who is behind a Service address whose backend is unknown: the
    /// workload all backends share, else the Service itself. Shared.
    fn untranslated(&self, target: &ServiceTarget, at: SystemTime) -> Resolved {
        // The answer depends on who held the backends' addresses, and on the
        // Service (its address names it).
        let mut holders = self.holders.borrow_mut();
        holders.clear();
        holders.extend(
            target
                .backends
                .iter()
                .map(|(ip, _)| self.cache.holder(*ip, at)),
        );
        let key = UntranslatedKey(target.service.ip, &holders);
        if let Some(resolved) = self.untranslated.borrow().get(&key) {
            return resolved.clone();
        }
        let resolved = self.resolve(self.untranslated_identity(target, at));
        self.untranslated
            .borrow_mut()
            .insert((target.service.ip, holders.clone()), resolved.clone());
        resolved
    }

    fn untranslated_identity(&self, target: &ServiceTarget, at: SystemTime) -> Identity {
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
        self.check_generation();
        let source =
            match self.service_target(record.source.ip, record.source.port, record.protocol) {
                // A reply still from the Service address (no conntrack, or its
                // lookup missed): the same Service and backend identity as its
                // request, so both fold into one aggregate.
                Some(target) => {
                    let identity = self.untranslated(&target, at);
                    record.source.service = Some(target.service.clone());
                    identity
                }
                None => self.identity_of(record.source.ip, at),
            };
        record.source.identity = source.identity;
        let destination = match translation {
            None => self.identity_of(record.destination.ip, at),
            Some(Translation {
                target,
                backend: Some(_),
            }) => {
                record.destination.service = Some(target.service.clone());
                self.identity_of(record.destination.ip, at)
            }
            Some(Translation {
                target,
                backend: None,
            }) => {
                record.destination.service = Some(target.service.clone());
                self.untranslated(target, at)
            }
        };
        record.destination.identity = destination.identity;
        record.cross_tenant = match (source.tenant, destination.tenant) {
            (Some(source), Some(destination)) => Some(source != destination),
            _ => Some(false),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use flow_model::identity::{CacheEvent, IdentityConfig, inventory};
    use flow_model::record::Endpoint;

    /// A cache of node-a, with these platform namespaces, holding the
    /// objects of `yaml` applied at `now`.
    fn cache_of(yaml: &str, platform: &[&str], now: SystemTime) -> IdentityCache {
        let mut cache = IdentityCache::new(IdentityConfig {
            tenant_label: "tenant".to_owned(),
            node_name: "node-a".to_owned(),
            local_addresses: Vec::new(),
            grace: Duration::from_secs(60),
            platform_namespaces: flow_model::identity::platform_namespaces(
                platform.iter().map(|namespace| (*namespace).to_owned()),
            ),
        });
        let parsed = inventory::parse(yaml, "test.yaml");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        for object in parsed.objects {
            cache.apply(CacheEvent::Apply(object), now);
        }
        cache
    }

    /// A one-packet request of `protocol` from `source` to `destination` at
    /// `now`, seen at ingress of veth0 on node-a, not yet annotated.
    fn request(
        source: Endpoint,
        destination: Endpoint,
        protocol: Protocol,
        now: SystemTime,
    ) -> FlowRecord {
        let time = flow_model::record::Timestamp(now);
        FlowRecord {
            time,
            first_seen: time,
            source,
            destination,
            protocol,
            icmp: None,
            packets: 1,
            bytes: 60,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: flow_model::record::Hook::Ingress,
            node: "node-a".into(),
            cross_tenant: None,
            new_connection: false,
            violation: false,
        }
    }

    #[test]
    fn a_reply_still_from_the_service_address_folds_into_its_requests_aggregate() {
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
        let now = SystemTime::now();
        let cache = cache_of(&yaml, &[], now);
        let enricher = Enricher::new(cache);
        let time = flow_model::record::Timestamp(now);
        let record = |source: Endpoint, destination: Endpoint, is_reply: bool| FlowRecord {
            packets: 2,
            bytes: 100,
            is_reply,
            new_connection: !is_reply,
            ..request(source, destination, Protocol(6), now)
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
            target: Arc::new(target),
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
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, uid: u1, labels: {app: web}}\nspec: {nodeName: node-a, containers: [{name: main, image: app}]}\nstatus: {podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}], startTime: '2020-01-01T00:00:00Z'}\n";
        let now = SystemTime::now();
        let cache = cache_of(yaml, &[], now);
        let enricher = Enricher::new(cache);
        let record = |port| {
            let mut record = request(
                Endpoint::new("10.1.0.2".parse().unwrap(), port),
                Endpoint::new("10.9.9.9".parse().unwrap(), 443),
                Protocol(6),
                now,
            );
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

    #[test]
    fn flows_to_and_from_platform_namespaces_never_cross_tenants() {
        let namespace = |name: &str, tenant: &str| {
            format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{tenant: {tenant}}}}}\n"
            )
        };
        let pod = |namespace: &str, name: &str, ip: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, uid: {name}, labels: {{app: {name}}}}}\nspec: {{nodeName: node-a, containers: [{{name: main, image: app}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}], startTime: '2020-01-01T00:00:00Z'}}\n"
            )
        };
        // The platform namespace has a tenant label of its own: the platform
        // list still wins, and kube-system is not a platform namespace here.
        let yaml = [
            namespace("shop-a", "acme"),
            namespace("shop-b", "globex"),
            namespace("dns", "infra"),
            pod("shop-a", "web", "10.1.0.2"),
            pod("shop-b", "api", "10.1.0.3"),
            pod("dns", "coredns", "10.1.0.53"),
            pod("kube-system", "agent", "10.1.0.9"),
        ]
        .concat();
        let now = SystemTime::now();
        let cache = cache_of(&yaml, &["dns"], now);
        let enricher = Enricher::without_conntrack(cache);
        let crossing = |source: &str, destination: &str, is_reply: bool| {
            let mut record = FlowRecord {
                is_reply,
                new_connection: !is_reply,
                ..request(
                    Endpoint::new(source.parse().unwrap(), 40_000),
                    Endpoint::new(destination.parse().unwrap(), 53),
                    Protocol(17),
                    now,
                )
            };
            enricher.annotate(&mut record, None, now);
            record.cross_tenant
        };
        assert_eq!(crossing("10.1.0.2", "10.1.0.53", false), Some(false));
        assert_eq!(crossing("10.1.0.53", "10.1.0.2", true), Some(false));
        assert_eq!(crossing("10.1.0.3", "10.1.0.53", false), Some(false));
        assert_eq!(crossing("10.1.0.2", "10.1.0.3", false), Some(true));
        assert_eq!(crossing("10.1.0.2", "10.1.0.9", false), Some(true));
        // The platform pod keeps its namespace's tenant for access and filters.
        assert_eq!(enricher.cache().tenant("dns"), "infra");
    }

    #[test]
    fn a_conntrack_that_never_answers_leaves_records_naming_the_service_and_is_counted() {
        use std::os::fd::{FromRawFd as _, OwnedFd};
        let yaml = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, uid: web, labels: {app: web}}\nspec: {nodeName: node-a, containers: [{name: main, image: app}]}\nstatus: {podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}], startTime: '2020-01-01T00:00:00Z'}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cart-1, namespace: shop, uid: cart-1, labels: {app: cart}}\nspec: {nodeName: node-b, containers: [{name: main, image: app}]}\nstatus: {podIP: 10.2.0.30, podIPs: [{ip: 10.2.0.30}], startTime: '2020-01-01T00:00:00Z'}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: cart-1, namespace: shop, labels: {kubernetes.io/service-name: cart}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints: [{addresses: [10.2.0.30], conditions: {ready: true}}]\n";
        let now = SystemTime::now();
        let cache = cache_of(yaml, &[], now);
        // A datagram socket whose peer takes every request and never
        // answers: each lookup waits for its deadline.
        let mut pair = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: two new descriptors we own.
        let (ours, silent_peer) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let mut enricher = Enricher::with_conntrack(cache, Some(Conntrack::with_socket(ours)));
        let (client, service): (IpAddr, IpAddr) =
            ("10.1.0.2".parse().unwrap(), "10.96.0.20".parse().unwrap());
        let sample = |port: u16| {
            let key = flow_common::FlowKey {
                src_addr: key_address(client),
                dst_addr: key_address(service),
                src_port: port,
                dst_port: 80,
                protocol: 6,
                ..flow_common::FlowKey::default()
            };
            FlowSample::from_stats(key, &flow_common::FlowStats::default())
        };
        let mut samples = [sample(40_000), sample(40_001), sample(40_002)];
        let translations = enricher.translate(&mut samples);
        // One lookup was sent and waited for its deadline; the two after it
        // were not asked: the silent peer holds exactly one request.
        let mut requests = 0;
        let mut buffer = [0u8; 1024];
        // SAFETY: a descriptor we own and a buffer of the length given.
        while unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&silent_peer),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {
            requests += 1;
        }
        assert_eq!(requests, 1);
        assert_eq!(enricher.conntrack_failures(), 3);
        let translations: Vec<_> = translations.iter().collect();
        assert_eq!(translations.len(), 3);
        for (position, (translated, translation)) in translations.iter().enumerate() {
            assert_eq!(*translated, position);
            assert_eq!(translation.backend, None);
            assert_eq!(ip_from_key(samples[position].key.dst_addr), service);
            assert_eq!(samples[position].key.dst_port, 80);
        }
        // The record is still made: to the Service, named, without a pod.
        let mut record = FlowRecord {
            new_connection: true,
            ..request(
                flow_model::record::Endpoint::new(client, 40_000),
                flow_model::record::Endpoint::new(service, 80),
                Protocol(6),
                now,
            )
        };
        enricher.annotate(&mut record, Some(translations[0].1), now);
        let destination = &record.destination;
        assert_eq!((destination.ip, destination.port), (service, 80));
        assert_eq!(destination.identity.pod, None);
        assert_eq!(
            destination
                .identity
                .workload
                .as_ref()
                .map(|w| w.name.as_str()),
            Some("cart-1")
        );
        let named = destination.service.as_ref().unwrap();
        assert_eq!(
            (
                named.name.as_str(),
                named.namespace.as_str(),
                named.port,
                named.target_port
            ),
            ("cart", "shop", 80, Some(8080))
        );
        assert_eq!(record.source.identity.pod.as_deref(), Some("web"));

        // The next drain asks again (and waits again): conntrack may be back.
        let mut samples = [sample(40_003)];
        enricher.translate(&mut samples);
        assert_eq!(enricher.conntrack_failures(), 4);
    }
}
