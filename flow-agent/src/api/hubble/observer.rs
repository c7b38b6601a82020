//! Hubble's `observer.Observer` over the agent's hub: the same buffer,
//! follow queues, loss accounting and tenant scoping as flow-agent's own API.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::SystemTime};

use flow_proto::hubble::{
    flow::{LostEvent, LostEventSource},
    observer::{
        GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest,
        GetDebugEventsResponse, GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest,
        GetNamespacesResponse, GetNodesRequest, GetNodesResponse, Namespace, Node,
        ServerStatusRequest, ServerStatusResponse, Tls, get_flows_response::ResponseTypes,
        observer_server::Observer,
    },
    relay::NodeState,
};
use futures::{Stream, stream};
use tonic::{Request, Response, Status};

use super::{
    convert::{self, FlowIdentity},
    dns,
    filter::HubbleMatcher,
    mask::FlowMask,
    peer::{PeerAddressing, PeerSet, server_name},
};
use crate::api::{
    access::Access,
    filter::Scope,
    hub::{Hub, Replay, StoredFlow},
    rbac::Verb,
    request_time,
};

/// The version Hubble clients print for this server.
pub fn version() -> String {
    format!("flow-agent {}", env!("CARGO_PKG_VERSION"))
}

/// The Observer service.
#[derive(Debug)]
pub struct ObserverService {
    hub: Arc<Hub>,
    access: Access,
    /// The cluster's nodes, this one among them: its address for GetNodes.
    peers: Arc<PeerSet>,
    addressing: PeerAddressing,
}

impl ObserverService {
    /// Serves `hub`; this node's address is its entry in `peers`.
    pub fn new(
        hub: Arc<Hub>,
        access: Access,
        peers: Arc<PeerSet>,
        addressing: PeerAddressing,
    ) -> Self {
        Self {
            hub,
            access,
            peers,
            addressing,
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A response carrying the node's name and the event's time, as the relay
/// orders by it.
fn response(node: &str, time: SystemTime, item: ResponseTypes) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(item),
        node_name: node.to_owned(),
        time: Some(prost_types::Timestamp::from(time)),
    }
}

/// What one GetFlows stream sends each stored flow as.
#[derive(Clone)]
struct Sender {
    node: Arc<str>,
    run: u64,
    mask: FlowMask,
}

impl Sender {
    fn flow(&self, stored: &StoredFlow) -> GetFlowsResponse {
        let id = FlowIdentity {
            run: self.run,
            sequence: stored.sequence,
        };
        let mut flow = convert::flow(&stored.record, Some(id));
        if let Some(message) = &stored.dns {
            dns::into_l7(&mut flow, message);
        }
        self.mask.apply(&mut flow);
        response(&self.node, stored.record.time.0, ResponseTypes::Flow(flow))
    }

    fn lost(&self, count: u64) -> GetFlowsResponse {
        response(
            &self.node,
            SystemTime::now(),
            ResponseTypes::LostEvents(LostEvent {
                source: LostEventSource::HubbleRingBuffer as i32,
                num_events_lost: count,
                cpu: None,
            }),
        )
    }
}

/// The replay window of a request: `number` the last N (with `first` the
/// earliest N) between `since` and `until`; no `number` means all of them,
/// except when following from now.
fn window(
    number: u64,
    first: bool,
    follow: bool,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Replay {
    let limit = match number {
        0 if follow && since.is_none() => Some(0),
        0 => None,
        number => Some(number),
    };
    Replay {
        limit,
        first,
        since,
        until,
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = ResponseStream<GetFlowsResponse>;
    type GetAgentEventsStream = ResponseStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = ResponseStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let verb = Verb::reading(request.get_ref().follow);
        let (scope, client) = self.access.caller(&request, verb).await?;
        let GetFlowsRequest {
            number,
            first,
            follow,
            blacklist,
            whitelist,
            since,
            until,
            field_mask,
            experimental: _,
        } = request.into_inner();
        if first && follow {
            return Err(Status::invalid_argument(
                "first: cannot be combined with follow",
            ));
        }
        let (since, until) = (request_time(since, "since")?, request_time(until, "until")?);
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(Status::invalid_argument("until: before since"));
        }
        let matcher = HubbleMatcher::compile(&whitelist, &blacklist, self.hub.run())
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let mask = FlowMask::compile(&field_mask.map(|mask| mask.paths).unwrap_or_default())
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let subscription = self
            .hub
            .subscribe_flows(
                window(number, first, follow, since, until),
                follow,
                &client,
                move |stored| scope.allows(&stored.record) && matcher.matches(stored),
            )
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        let sender = Sender {
            node: Arc::from(self.hub.node()),
            run: self.hub.run(),
            mask,
        };
        let lost = sender.clone();
        // A following stream with `until` ends at the first flow after it, as
        // Hubble's does; the replay holds none.
        let responses = subscription.into_stream(
            move |stored| {
                until
                    .is_none_or(|until| stored.record.time.0 <= until)
                    .then(|| Ok(sender.flow(stored)))
            },
            move |count| Ok(lost.lost(count)),
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_agent_events(
        &self,
        request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        self.access.caller(&request, Verb::Get).await?;
        Ok(Response::new(Box::pin(stream::empty())))
    }

    async fn get_debug_events(
        &self,
        request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        self.access.caller(&request, Verb::Get).await?;
        Ok(Response::new(Box::pin(stream::empty())))
    }

    async fn get_nodes(
        &self,
        request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let scope = self.access.scope(&request, Verb::Get).await?;
        let status = self.status(&scope);
        let name = self.hub.node();
        let address = self.peers.address(name).map_or_else(String::new, |ip| {
            SocketAddr::new(ip, self.addressing.port).to_string()
        });
        let server_name = self
            .addressing
            .tls_server_name
            .as_ref()
            .map(|template| server_name(template, name));
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: name.to_owned(),
                version: status.version,
                address,
                state: NodeState::NodeConnected as i32,
                tls: Some(Tls {
                    enabled: server_name.is_some(),
                    server_name: server_name.unwrap_or_default(),
                }),
                uptime_ns: status.uptime_ns,
                num_flows: status.num_flows,
                max_flows: status.max_flows,
                seen_flows: status.seen_flows,
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let scope = self.access.scope(&request, Verb::Get).await?;
        // A tenant sees the namespaces of its flows, the other ends'
        // included; an RBAC grant, those of its namespaces.
        let tenant = match &scope {
            Scope::Tenant(tenant) => Some(tenant.as_str()),
            Scope::Admin | Scope::Granted(_) => None,
        };
        let after = SystemTime::now() - crate::api::hub::NAMESPACE_WINDOW;
        let namespaces = self
            .hub
            .namespaces_since(after, tenant)
            .into_iter()
            .filter(|namespace| tenant.is_some() || scope.allows_namespace(namespace, None))
            .map(|namespace| Namespace {
                cluster: String::new(),
                namespace,
            })
            .collect();
        Ok(Response::new(GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let scope = self.access.scope(&request, Verb::Get).await?;
        Ok(Response::new(self.status(&scope)))
    }
}

impl ObserverService {
    /// The status; node-wide figures are left out for a tenant, as in
    /// flow-agent's own ServerStatus: they tell of other tenants' traffic.
    fn status(&self, scope: &Scope) -> ServerStatusResponse {
        let admin = scope.is_admin();
        let figure = |value: u64| if admin { value } else { 0 };
        ServerStatusResponse {
            num_flows: figure(self.hub.flows_buffered()),
            max_flows: self.hub.settings().buffer as u64,
            seen_flows: figure(self.hub.flows_seen()),
            uptime_ns: u64::try_from(self.hub.uptime().as_nanos()).unwrap_or(u64::MAX),
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: Vec::new(),
            version: version(),
            flows_rate: if admin { self.hub.flow_rate() } else { 0.0 },
        }
    }
}
