//! flow-agent's own API, `flowagent.v1.FlowService`: flow records with their
//! packet and byte counts, per-interval aggregates, the learned graph and the
//! agent's status.

use std::{pin::Pin, sync::Arc};

use flow_proto::v1::{
    self as proto, GetAggregatesRequest, GetAggregatesResponse, GetFlowsRequest, GetFlowsResponse,
    GetGraphRequest, GetGraphResponse, ServerStatusRequest, ServerStatusResponse,
    flow_service_server::FlowService, get_aggregates_response, get_flows_response,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert,
    filter::FlowMatcher,
    hub::{Hub, Replay},
    rbac::Verb,
    request_time,
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The FlowService implementation.
#[derive(Debug)]
pub struct FlowApi {
    hub: Arc<Hub>,
    access: Access,
}

impl FlowApi {
    /// Serves `hub` to the callers `access` admits.
    pub fn new(hub: Arc<Hub>, access: Access) -> Self {
        Self { hub, access }
    }
}

fn number(number: i64) -> Result<u64, Status> {
    u64::try_from(number).map_err(|_| {
        Status::invalid_argument(format!("number: must not be negative (got {number})"))
    })
}

/// FlowService's replay: the last `number` (of those since `since`), or with
/// `since` alone every record since then.
fn replay(count: i64, from: Option<prost_types::Timestamp>) -> Result<Replay, Status> {
    let count = number(count)?;
    let since = request_time(from, "since")?;
    Ok(Replay {
        limit: (count > 0 || since.is_none()).then_some(count),
        since,
        ..Replay::default()
    })
}

#[tonic::async_trait]
impl FlowService for FlowApi {
    type GetFlowsStream = ResponseStream<GetFlowsResponse>;
    type GetAggregatesStream = ResponseStream<GetAggregatesResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let verb = Verb::reading(request.get_ref().follow);
        let (scope, client) = self.access.caller(&request, verb).await?;
        let GetFlowsRequest {
            number: count,
            since: from,
            follow,
            allow,
            deny,
        } = request.into_inner();
        let matcher = FlowMatcher::compile(&allow, &deny)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let subscription = self
            .hub
            .subscribe_flows(replay(count, from)?, follow, &client, move |stored| {
                // DNS flows are Hubble's L7 flows: this API has no such kind.
                stored.dns.is_none()
                    && scope.allows(&stored.record)
                    && matcher.matches(&stored.record)
            })
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        let responses = subscription.into_stream(
            |stored| {
                Some(Ok(GetFlowsResponse {
                    response: Some(get_flows_response::Response::Flow(stored.message())),
                }))
            },
            |count| {
                Ok(GetFlowsResponse {
                    response: Some(get_flows_response::Response::LostRecords(
                        proto::LostRecords { count },
                    )),
                })
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_aggregates(
        &self,
        request: Request<GetAggregatesRequest>,
    ) -> Result<Response<Self::GetAggregatesStream>, Status> {
        let verb = Verb::reading(request.get_ref().follow);
        let (scope, client) = self.access.caller(&request, verb).await?;
        let GetAggregatesRequest {
            number: count,
            since: from,
            follow,
            tenant,
        } = request.into_inner();
        if tenant.len() > super::filter::MAX_FILTER_VALUES {
            return Err(Status::invalid_argument(format!(
                "tenant: {} values; at most {}",
                tenant.len(),
                super::filter::MAX_FILTER_VALUES
            )));
        }
        let subscription = self
            .hub
            .subscribe_aggregates(replay(count, from)?, follow, &client, move |stored| {
                let aggregate = &stored.record;
                scope.allows_aggregate(aggregate)
                    && (tenant.is_empty()
                        || [&aggregate.source.tenant, &aggregate.destination.tenant]
                            .into_iter()
                            .any(|end| end.as_ref().is_some_and(|end| tenant.contains(end))))
            })
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        let responses = subscription.into_stream(
            |stored| {
                Some(Ok(GetAggregatesResponse {
                    response: Some(get_aggregates_response::Response::Aggregate(
                        stored.message.clone(),
                    )),
                }))
            },
            |count| {
                Ok(GetAggregatesResponse {
                    response: Some(get_aggregates_response::Response::LostRecords(
                        proto::LostRecords { count },
                    )),
                })
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_graph(
        &self,
        request: Request<GetGraphRequest>,
    ) -> Result<Response<GetGraphResponse>, Status> {
        let scope = self.access.scope(&request, Verb::List).await?;
        let graph = self.hub.graph().ok_or_else(|| {
            Status::failed_precondition("this agent is not learning: run it with --state-dir")
        })?;
        let durable = graph.durable();
        let graph = graph.read();
        let mut response = convert::graph(&graph, |party, _| {
            scope.is_admin()
                || party.workload().is_some_and(|workload| {
                    let tenant = graph
                        .workload(workload)
                        .and_then(|info| info.tenant.as_deref());
                    scope.allows_namespace(&workload.namespace, tenant)
                })
        });
        response.in_memory_only = !durable;
        Ok(Response::new(response))
    }

    async fn server_status(
        &self,
        request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let (scope, client) = self.access.caller(&request, Verb::Get).await?;
        let mut status = self.hub.status(env!("CARGO_PKG_VERSION"));
        if !scope.is_admin() {
            // Node-wide figures tell of other tenants' pods and traffic: a
            // tenant sees the node's health and its own losses only.
            status.interfaces.clear();
            status.flows_seen = 0;
            status.flows_in_buffer = 0;
            status.subscribers = 0;
            status.graph_edges = 0;
            status.violations = 0;
            status.lost_records = self.hub.lost_by_client().get(&client).copied().unwrap_or(0);
        }
        Ok(Response::new(status))
    }
}
