//! Flow filters of the API, compiled once per request and checked against
//! records. Invalid values are reported with the path of the field.

use std::{
    collections::BTreeSet,
    sync::{Arc, PoisonError, RwLock, Weak},
};

use flow_proto::v1::{self as proto, Direction};

pub use flow_model::cidr::Cidr;

use flow_model::identity::Identity;

use flow_model::record::{Endpoint, FlowRecord, Protocol};

use crate::{aggregate::AggregateRecord, api::fqdn::FqdnPattern};

/// A filter value that cannot be used: `field` is its path in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FilterError {
    /// Path of the field, e.g. `allow[0].either.ip[1]`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub problem: String,
}

#[derive(Clone, Debug, Default)]
struct EndpointMatcher {
    namespace: Vec<String>,
    tenant: Vec<String>,
    workload: Vec<(Option<String>, String)>,
    pod: Vec<String>,
    ip: Vec<Cidr>,
    port: Vec<u16>,
    label: Vec<(String, String)>,
    fqdn: Vec<FqdnPattern>,
}

impl EndpointMatcher {
    fn compile(filter: Option<&proto::EndpointFilter>, path: &str) -> Result<Self, FilterError> {
        let Some(proto::EndpointFilter {
            namespace,
            tenant,
            workload,
            pod,
            ip,
            port,
            label,
            fqdn,
        }) = filter
        else {
            return Ok(Self::default());
        };
        let error = |field: String, problem: String| FilterError { field, problem };
        let ip = ip
            .iter()
            .enumerate()
            .map(|(index, text)| {
                Cidr::parse(text).ok_or_else(|| {
                    error(
                        format!("{path}.ip[{index}]"),
                        format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let port = port
            .iter()
            .enumerate()
            .map(|(index, port)| {
                u16::try_from(*port)
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| {
                        error(
                            format!("{path}.port[{index}]"),
                            format!("{port} is not a port (1-65535)"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let label = label
            .iter()
            .enumerate()
            .map(|(index, text)| {
                text.split_once('=')
                    .filter(|(key, _)| !key.is_empty())
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .ok_or_else(|| {
                        error(
                            format!("{path}.label[{index}]"),
                            format!("{text:?} is not key=value"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let workload = workload
            .iter()
            .enumerate()
            .map(|(index, text)| match text.split_once('/') {
                Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                    Ok((Some(kind.to_owned()), name.to_owned()))
                }
                None if !text.is_empty() => Ok((None, text.clone())),
                _ => Err(error(
                    format!("{path}.workload[{index}]"),
                    format!("{text:?} is not a workload name or Kind/name"),
                )),
            })
            .collect::<Result<_, _>>()?;
        let fqdn = fqdn
            .iter()
            .enumerate()
            .map(|(index, text)| {
                FqdnPattern::parse(text)
                    .map_err(|problem| error(format!("{path}.fqdn[{index}]"), problem))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            namespace: namespace.clone(),
            tenant: tenant.clone(),
            workload,
            pod: pod.clone(),
            ip,
            port,
            label,
            fqdn,
        })
    }

    fn is_empty(&self) -> bool {
        let Self {
            namespace,
            tenant,
            workload,
            pod,
            ip,
            port,
            label,
            fqdn,
        } = self;
        namespace.is_empty()
            && tenant.is_empty()
            && workload.is_empty()
            && pod.is_empty()
            && ip.is_empty()
            && port.is_empty()
            && label.is_empty()
            && fqdn.is_empty()
    }

    fn matches(&self, endpoint: &Endpoint) -> bool {
        let Endpoint {
            ip,
            port,
            identity,
            names,
            ..
        } = endpoint;
        let Identity {
            namespace,
            pod,
            workload,
            tenant,
            labels,
            ..
        } = &**identity;
        let one_of = |values: &[String], value: &Option<String>| {
            values.is_empty() || value.as_ref().is_some_and(|value| values.contains(value))
        };
        one_of(&self.namespace, namespace)
            && one_of(&self.tenant, tenant)
            && one_of(&self.pod, pod)
            && (self.workload.is_empty()
                || workload.as_ref().is_some_and(|workload| {
                    self.workload.iter().any(|(kind, name)| {
                        *name == workload.name
                            && kind.as_ref().is_none_or(|kind| *kind == workload.kind)
                    })
                }))
            && (self.ip.is_empty() || self.ip.iter().any(|cidr| cidr.contains(*ip)))
            && (self.port.is_empty() || self.port.contains(port))
            && self
                .label
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
            && (self.fqdn.is_empty() || self.fqdn.iter().any(|fqdn| fqdn.matches_any(names)))
    }
}

#[derive(Clone, Debug, Default)]
struct Matcher {
    either: EndpointMatcher,
    source: EndpointMatcher,
    destination: EndpointMatcher,
    protocol: Vec<Protocol>,
    direction: Option<bool>,
    cross_tenant_only: bool,
    violation_only: bool,
}

impl Matcher {
    fn compile(filter: &proto::FlowFilter, path: &str) -> Result<Self, FilterError> {
        let proto::FlowFilter {
            either,
            source,
            destination,
            protocol,
            direction,
            cross_tenant_only,
            violation_only,
        } = filter;
        let protocol = protocol
            .iter()
            .enumerate()
            .map(|(index, text)| {
                text.parse::<Protocol>().map_err(|problem| FilterError {
                    field: format!("{path}.protocol[{index}]"),
                    problem,
                })
            })
            .collect::<Result<_, _>>()?;
        let direction = match Direction::try_from(*direction) {
            Ok(Direction::Unspecified) => None,
            Ok(Direction::Request) => Some(false),
            Ok(Direction::Reply) => Some(true),
            Err(_) => {
                return Err(FilterError {
                    field: format!("{path}.direction"),
                    problem: format!("{direction} is not a direction (0, 1 request, 2 reply)"),
                });
            }
        };
        Ok(Self {
            either: EndpointMatcher::compile(either.as_ref(), &format!("{path}.either"))?,
            source: EndpointMatcher::compile(source.as_ref(), &format!("{path}.source"))?,
            destination: EndpointMatcher::compile(
                destination.as_ref(),
                &format!("{path}.destination"),
            )?,
            protocol,
            direction,
            cross_tenant_only: *cross_tenant_only,
            violation_only: *violation_only,
        })
    }

    fn matches(&self, record: &FlowRecord) -> bool {
        (self.either.is_empty()
            || self.either.matches(&record.source)
            || self.either.matches(&record.destination))
            && self.source.matches(&record.source)
            && self.destination.matches(&record.destination)
            && (self.protocol.is_empty() || self.protocol.contains(&record.protocol))
            && self
                .direction
                .is_none_or(|is_reply| record.is_reply == is_reply)
            && (!self.cross_tenant_only || record.cross_tenant == Some(true))
            && (!self.violation_only || record.violation)
    }
}

/// A request's allow and deny filters.
#[derive(Clone, Debug, Default)]
pub struct FlowMatcher {
    allow: Vec<Matcher>,
    deny: Vec<Matcher>,
}

impl FlowMatcher {
    /// Compiles a request's filters, or names the first invalid field.
    pub fn compile(
        allow: &[proto::FlowFilter],
        deny: &[proto::FlowFilter],
    ) -> Result<Self, FilterError> {
        // Filters run on every published record, under the hub's lock: a
        // request cannot make that arbitrarily expensive.
        for (filters, list) in [(allow, "allow"), (deny, "deny")] {
            if filters.len() > MAX_FILTERS {
                return Err(FilterError {
                    field: list.to_owned(),
                    problem: format!("{} filters; at most {MAX_FILTERS}", filters.len()),
                });
            }
        }
        let values: usize = allow.iter().chain(deny).map(filter_values).sum();
        if values > MAX_FILTER_VALUES {
            return Err(FilterError {
                field: "allow, deny".to_owned(),
                problem: format!("{values} values in all; at most {MAX_FILTER_VALUES}"),
            });
        }
        let compile = |filters: &[proto::FlowFilter], list: &str| {
            filters
                .iter()
                .enumerate()
                .map(|(index, filter)| Matcher::compile(filter, &format!("{list}[{index}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow: compile(allow, "allow")?,
            deny: compile(deny, "deny")?,
        })
    }

    /// Whether a record passes.
    pub fn matches(&self, record: &FlowRecord) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|matcher| matcher.matches(record)))
            && !self.deny.iter().any(|matcher| matcher.matches(record))
    }
}

/// Most filters in `allow` or in `deny`.
pub const MAX_FILTERS: usize = 64;

/// Most values (namespaces, addresses, ports, ...) in all filters of a request.
pub const MAX_FILTER_VALUES: usize = 1024;

fn filter_values(filter: &proto::FlowFilter) -> usize {
    let endpoint = |endpoint: Option<&proto::EndpointFilter>| {
        endpoint.map_or(0, |endpoint| {
            let proto::EndpointFilter {
                namespace,
                tenant,
                workload,
                pod,
                ip,
                port,
                label,
                fqdn,
            } = endpoint;
            namespace.len()
                + tenant.len()
                + workload.len()
                + pod.len()
                + ip.len()
                + port.len()
                + label.len()
                + fqdn.len()
        })
    };
    endpoint(filter.either.as_ref())
        + endpoint(filter.source.as_ref())
        + endpoint(filter.destination.as_ref())
        + filter.protocol.len()
}

/// What a caller may see: everything, flows with one end in its tenant, or
/// flows with one end in the namespaces RBAC grants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A cluster administrator: every flow.
    Admin,
    /// A tenant: flows where the source or the destination belongs to it.
    Tenant(String),
    /// What the cluster's RBAC grants, kept up to date while it is held.
    Granted(NamespaceGrant),
}

impl Scope {
    /// Whether a flow record is visible.
    pub fn allows(&self, record: &FlowRecord) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(tenant) => {
                record.source.identity.tenant.as_ref() == Some(tenant)
                    || record.destination.identity.tenant.as_ref() == Some(tenant)
            }
            Self::Granted(grant) => grant.either(
                record.source.identity.namespace.as_deref(),
                record.destination.identity.namespace.as_deref(),
            ),
        }
    }

    /// Whether an aggregate is visible.
    pub fn allows_aggregate(&self, aggregate: &AggregateRecord) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(tenant) => {
                aggregate.source.tenant.as_ref() == Some(tenant)
                    || aggregate.destination.tenant.as_ref() == Some(tenant)
            }
            Self::Granted(grant) => grant.either(
                aggregate.source.namespace.as_deref(),
                aggregate.destination.namespace.as_deref(),
            ),
        }
    }

    /// Whether a workload or namespace of `namespace` (owned by `tenant`) is
    /// visible: the learned graph's and GetNamespaces' test.
    pub fn allows_namespace(&self, namespace: &str, tenant: Option<&str>) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(own) => tenant == Some(own.as_str()),
            Self::Granted(grant) => grant.either(Some(namespace), None),
        }
    }

    /// Whether node-wide figures (every tenant's traffic) may be shown.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(_) => false,
            Self::Granted(grant) => *grant.current() == Granted::All,
        }
    }
}

/// What RBAC grants a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Granted {
    /// Every flow (a ClusterRoleBinding).
    All,
    /// Flows with an end in one of these namespaces (RoleBindings); none
    /// when the grant was revoked or cannot be checked.
    Namespaces(BTreeSet<String>),
}

/// A caller's grant, shared between its request and the task that asks the
/// API server again as it expires.
#[derive(Clone, Debug)]
pub struct NamespaceGrant(Arc<RwLock<Arc<Granted>>>);

/// A [`NamespaceGrant`] that does not keep its request's grant alive.
#[derive(Clone, Debug)]
pub struct WeakGrant(Weak<RwLock<Arc<Granted>>>);

impl NamespaceGrant {
    /// A grant of `granted`.
    pub fn new(granted: Granted) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(granted))))
    }

    /// What is granted now.
    pub fn current(&self) -> Arc<Granted> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Grants `granted` from now on.
    pub fn replace(&self, granted: Granted) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(granted);
    }

    /// A handle that lets the grant go with its request.
    pub fn downgrade(&self) -> WeakGrant {
        WeakGrant(Arc::downgrade(&self.0))
    }

    /// Whether either namespace is granted.
    fn either(&self, one: Option<&str>, other: Option<&str>) -> bool {
        match self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Granted::All => true,
            Granted::Namespaces(namespaces) => [one, other]
                .into_iter()
                .flatten()
                .any(|namespace| namespaces.contains(namespace)),
        }
    }
}

impl PartialEq for NamespaceGrant {
    fn eq(&self, other: &Self) -> bool {
        self.current() == other.current()
    }
}

impl Eq for NamespaceGrant {}

impl WeakGrant {
    /// The grant, while its request holds it.
    pub fn upgrade(&self) -> Option<NamespaceGrant> {
        self.0.upgrade().map(NamespaceGrant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_model::identity::Workload;
    use flow_model::record::{Hook, Timestamp};

    fn endpoint(ip: &str, port: u16, namespace: &str, tenant: &str, workload: &str) -> Endpoint {
        let mut endpoint = Endpoint::new(ip.parse().unwrap(), port);
        endpoint.identity = std::sync::Arc::new(Identity {
            namespace: Some(namespace.into()),
            tenant: Some(tenant.into()),
            workload: Some(Workload {
                kind: "Deployment".into(),
                name: workload.into(),
            }),
            labels: [("app".to_owned(), workload.to_owned())].into(),
            ..Identity::default()
        });
        endpoint
    }

    fn record(source: Endpoint, destination: Endpoint, protocol: u8, is_reply: bool) -> FlowRecord {
        let cross = source.identity.tenant != destination.identity.tenant;
        FlowRecord {
            time: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            first_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            source,
            destination,
            protocol: Protocol(protocol),
            icmp: None,
            packets: 1,
            bytes: 60,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "node".into(),
            cross_tenant: Some(cross),
            new_connection: false,
            violation: false,
        }
    }

    fn sample() -> FlowRecord {
        record(
            endpoint("10.1.0.2", 40000, "shop-a", "acme", "frontend"),
            endpoint("10.2.0.2", 8080, "shop-b", "globex", "cart"),
            6,
            false,
        )
    }

    fn filter(build: impl FnOnce(&mut proto::FlowFilter)) -> proto::FlowFilter {
        let mut filter = proto::FlowFilter::default();
        build(&mut filter);
        filter
    }

    fn either(build: impl FnOnce(&mut proto::EndpointFilter)) -> Option<proto::EndpointFilter> {
        let mut endpoint = proto::EndpointFilter::default();
        build(&mut endpoint);
        Some(endpoint)
    }

    #[test]
    fn allow_filters_are_alternatives_and_fields_within_one_all_hold() {
        let record = sample();
        let matches = |allow: Vec<proto::FlowFilter>, deny: Vec<proto::FlowFilter>| {
            FlowMatcher::compile(&allow, &deny)
                .unwrap()
                .matches(&record)
        };
        assert!(matches(vec![], vec![]));
        let shop_b = filter(|f| f.either = either(|e| e.namespace = vec!["shop-b".into()]));
        assert!(matches(vec![shop_b.clone()], vec![]));
        let shop_b_source = filter(|f| f.source = either(|e| e.namespace = vec!["shop-b".into()]));
        assert!(!matches(vec![shop_b_source.clone()], vec![]));
        assert!(matches(vec![shop_b_source, shop_b.clone()], vec![]));
        // All fields of one filter must hold.
        let port_and_udp = filter(|f| {
            f.destination = either(|e| e.port = vec![8080]);
            f.protocol = vec!["UDP".into()];
        });
        assert!(!matches(vec![port_and_udp], vec![]));
        let to_cart = filter(|f| {
            f.destination = either(|e| {
                e.workload = vec!["Deployment/cart".into()];
                e.label = vec!["app=cart".into()];
                e.ip = vec!["10.2.0.0/16".into()];
            });
            f.direction = Direction::Request as i32;
            f.cross_tenant_only = true;
        });
        assert!(matches(vec![to_cart.clone()], vec![]));
        // Deny wins.
        assert!(!matches(vec![to_cart], vec![shop_b]));
        let replies = filter(|f| f.direction = Direction::Reply as i32);
        assert!(!matches(vec![replies], vec![]));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (
                filter(|f| {
                    f.either = either(|e| e.ip = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()])
                }),
                "allow[0].either.ip[1]",
            ),
            (
                filter(|f| f.protocol = vec!["HTTP".into()]),
                "allow[0].protocol[0]",
            ),
            (
                filter(|f| f.source = either(|e| e.port = vec![70000])),
                "allow[0].source.port[0]",
            ),
            (
                filter(|f| f.destination = either(|e| e.label = vec!["app".into()])),
                "allow[0].destination.label[0]",
            ),
            (
                filter(|f| f.either = either(|e| e.workload = vec!["Deployment/".into()])),
                "allow[0].either.workload[0]",
            ),
            (filter(|f| f.direction = 7), "allow[0].direction"),
        ];
        for (bad, field) in cases {
            let error = FlowMatcher::compile(&[bad], &[]).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
        let error = FlowMatcher::compile(
            &[],
            &[
                proto::FlowFilter::default(),
                filter(|f| f.protocol = vec!["x".into()]),
            ],
        )
        .unwrap_err();
        assert_eq!(error.field, "deny[1].protocol[0]");
    }

    #[test]
    fn a_request_cannot_make_filtering_arbitrarily_expensive() {
        let many = vec![proto::FlowFilter::default(); MAX_FILTERS + 1];
        let error = FlowMatcher::compile(&[], &many).unwrap_err();
        assert_eq!(error.field, "deny");
        assert!(error.problem.contains("at most 64"), "{error}");
        let ports =
            |count: usize| filter(|f| f.either = either(|e| e.port = (1..=count as u32).collect()));
        assert!(FlowMatcher::compile(&[ports(MAX_FILTER_VALUES)], &[]).is_ok());
        let error = FlowMatcher::compile(&[ports(MAX_FILTER_VALUES)], &[ports(1)]).unwrap_err();
        assert!(error.problem.contains("1025 values"), "{error}");
    }

    #[test]
    fn a_tenant_sees_flows_with_one_end_in_it_only() {
        let record = sample();
        assert!(Scope::Admin.allows(&record));
        assert!(Scope::Tenant("acme".into()).allows(&record));
        assert!(Scope::Tenant("globex".into()).allows(&record));
        assert!(!Scope::Tenant("initech".into()).allows(&record));
        let no_identity = record_without_identity();
        assert!(!Scope::Tenant("acme".into()).allows(&no_identity));
    }

    #[test]
    fn an_rbac_grant_shows_flows_with_one_end_in_its_namespaces_as_it_changes() {
        let record = sample();
        let namespaces = |names: &[&str]| {
            Granted::Namespaces(names.iter().map(|name| (*name).to_owned()).collect())
        };
        let grant = NamespaceGrant::new(namespaces(&["shop-b"]));
        let scope = Scope::Granted(grant.clone());
        assert!(scope.allows(&record));
        assert!(!scope.is_admin());
        assert!(scope.allows_namespace("shop-b", None));
        assert!(!scope.allows_namespace("shop-a", Some("acme")));
        // The request's scope follows the grant the refresher replaces.
        grant.replace(namespaces(&["shop-c"]));
        assert!(!scope.allows(&record));
        grant.replace(namespaces(&[]));
        assert!(!scope.allows(&record));
        grant.replace(Granted::All);
        assert!(scope.allows(&record) && scope.is_admin());
        assert!(scope.allows(&record_without_identity()));
        // The refresher's handle does not keep a finished request's grant.
        let weak = grant.downgrade();
        drop((grant, scope));
        assert!(weak.upgrade().is_none());
    }

    fn record_without_identity() -> FlowRecord {
        record(
            Endpoint::new("10.1.0.2".parse().unwrap(), 1),
            Endpoint::new("10.1.0.3".parse().unwrap(), 2),
            17,
            false,
        )
    }
}
