//! The gRPC server: the FlowService, the standard health service, TLS and
//! mutual TLS (rustls), and the access policy.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::SystemTime};

use flow_proto::v1::{
    self as proto, GetAggregatesRequest, GetAggregatesResponse, GetFlowsRequest, GetFlowsResponse,
    GetGraphRequest, GetGraphResponse, ServerStatusRequest, ServerStatusResponse,
    flow_service_server::{FlowService, FlowServiceServer},
    get_aggregates_response, get_flows_response,
};
use futures::{Stream, StreamExt as _, stream};
use thiserror::Error;
use tonic::{
    Request, Response, Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};
use tracing::{info, warn};

use super::{
    access::{Access, AccessError, AccessPolicy},
    convert,
    filter::{FlowMatcher, Scope},
    hub::{Delivery, Feed, Hub},
};

/// Where and how to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Server certificate and key (PEM): TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CA that signs client certificates (PEM): mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Access policy file.
    pub access: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address.
    pub allow_plaintext: bool,
}

/// Errors starting the API.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Plaintext on a network address without an explicit opt-in.
    #[error(
        "refusing plaintext gRPC on {0}: flows reveal tenants' topology; give --grpc-tls-cert and --grpc-tls-key (and --grpc-client-ca for mTLS), or --grpc-allow-plaintext"
    )]
    PlaintextRefused(SocketAddr),
    /// A network address needs an access policy.
    #[error(
        "gRPC on {0} needs --grpc-access FILE, mapping client certificates or tokens to tenants"
    )]
    PolicyRequired(SocketAddr),
    /// A TLS file cannot be read.
    #[error("cannot read {path}")]
    ReadTls {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The access policy is invalid.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Binding or serving failed.
    #[error("gRPC server on {address} failed")]
    Serve {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::ReadTls {
        path: path.clone(),
        source,
    })
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The FlowService implementation.
#[derive(Debug)]
pub struct FlowApi {
    hub: Arc<Hub>,
    access: Access,
}

fn number(number: i64) -> Result<u64, Status> {
    u64::try_from(number).map_err(|_| {
        Status::invalid_argument(format!("number: must not be negative (got {number})"))
    })
}

fn since(timestamp: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Status> {
    timestamp
        .map(|timestamp| {
            SystemTime::try_from(timestamp)
                .map_err(|_| Status::invalid_argument("since: not a valid time"))
        })
        .transpose()
}

/// Replay then live deliveries, as a response stream.
fn responses<T: Send + Sync + 'static, R: Send + 'static>(
    replay: Vec<Arc<T>>,
    live: Option<Feed<T>>,
    record: fn(&T) -> R,
    lost: fn(u64) -> R,
) -> ResponseStream<R> {
    let replay = stream::iter(replay).map(move |item| Ok(record(&item)));
    let live = stream::unfold(live, move |live| async move {
        let mut receiver = live?;
        let delivery = receiver.next().await?;
        let response = match delivery {
            Delivery::Record(item) => record(&item),
            Delivery::Lost(count) => lost(count),
        };
        Some((Ok(response), Some(receiver)))
    });
    Box::pin(replay.chain(live))
}

#[tonic::async_trait]
impl FlowService for FlowApi {
    type GetFlowsStream = ResponseStream<GetFlowsResponse>;
    type GetAggregatesStream = ResponseStream<GetAggregatesResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let (scope, client) = self.access.caller(&request)?;
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
            .subscribe_flows(
                number(count)?,
                since(from)?,
                follow,
                &client,
                move |stored| scope.allows(&stored.record) && matcher.matches(&stored.record),
            )
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        Ok(Response::new(responses(
            subscription.replay,
            subscription.live,
            |stored| GetFlowsResponse {
                response: Some(get_flows_response::Response::Flow(stored.message())),
            },
            |count| GetFlowsResponse {
                response: Some(get_flows_response::Response::LostRecords(
                    proto::LostRecords { count },
                )),
            },
        )))
    }

    async fn get_aggregates(
        &self,
        request: Request<GetAggregatesRequest>,
    ) -> Result<Response<Self::GetAggregatesStream>, Status> {
        let (scope, client) = self.access.caller(&request)?;
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
            .subscribe_aggregates(
                number(count)?,
                since(from)?,
                follow,
                &client,
                move |stored| {
                    let aggregate = &stored.record;
                    scope.allows_aggregate(aggregate)
                        && (tenant.is_empty()
                            || [&aggregate.source.tenant, &aggregate.destination.tenant]
                                .into_iter()
                                .any(|end| end.as_ref().is_some_and(|end| tenant.contains(end))))
                },
            )
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        Ok(Response::new(responses(
            subscription.replay,
            subscription.live,
            |stored| GetAggregatesResponse {
                response: Some(get_aggregates_response::Response::Aggregate(
                    stored.message.clone(),
                )),
            },
            |count| GetAggregatesResponse {
                response: Some(get_aggregates_response::Response::LostRecords(
                    proto::LostRecords { count },
                )),
            },
        )))
    }

    async fn get_graph(
        &self,
        request: Request<GetGraphRequest>,
    ) -> Result<Response<GetGraphResponse>, Status> {
        let scope = self.access.scope(&request)?;
        let graph = self.hub.graph().ok_or_else(|| {
            Status::failed_precondition("this agent is not learning: run it with --state-dir")
        })?;
        let graph = graph
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let response = convert::graph(&graph, |party, _| match &scope {
            Scope::Admin => true,
            Scope::Tenant(tenant) => party
                .workload()
                .and_then(|workload| graph.workload(workload))
                .and_then(|info| info.tenant.as_ref())
                .is_some_and(|owner| owner == tenant),
        });
        Ok(Response::new(response))
    }

    async fn server_status(
        &self,
        request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let (scope, client) = self.access.caller(&request)?;
        let mut status = self.hub.status(env!("CARGO_PKG_VERSION"));
        if let Scope::Tenant(_) = scope {
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

/// Checks the settings, binds, and returns the server future: it serves until
/// `shutdown` resolves. Binding happens here, so a bad address fails at start.
pub async fn start<F: Future<Output = ()> + Send + 'static>(
    settings: &ApiSettings,
    hub: Arc<Hub>,
    shutdown: F,
) -> Result<impl Future<Output = Result<(), ApiError>> + Send + use<F>, ApiError> {
    let ApiSettings {
        listen,
        tls,
        client_ca,
        access,
        allow_plaintext,
    } = settings.clone();
    let loopback = listen.ip().is_loopback();
    if !loopback && tls.is_none() && !allow_plaintext {
        return Err(ApiError::PlaintextRefused(listen));
    }
    let access = match access {
        Some(path) => Access::Policy(AccessPolicy::load(&path)?),
        None if !loopback || client_ca.is_some() => return Err(ApiError::PolicyRequired(listen)),
        None => Access::Open,
    };
    let mut builder = Server::builder();
    if let Some((cert, key)) = &tls {
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder
            .tls_config(config)
            .map_err(|source| ApiError::Serve {
                address: listen,
                source: Box::new(source),
            })?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ApiError::Serve {
            address: listen,
            source: Box::new(source),
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<FlowServiceServer<FlowApi>>()
        .await;
    let service =
        FlowServiceServer::new(FlowApi { hub, access }).max_encoding_message_size(16 << 20);
    let mode = match (&tls, &client_ca) {
        (None, _) => "plaintext",
        (Some(_), None) => "tls",
        (Some(_), Some(_)) => "mtls",
    };
    info!(address = %bound, mode, "gRPC API listening");
    if !loopback && tls.is_none() {
        warn!(address = %bound, "gRPC API is plaintext on a network address");
    }
    let router = builder.add_service(health_service).add_service(service);
    Ok(async move {
        router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
            .await
            .map_err(|source| ApiError::Serve {
                address: bound,
                source: Box::new(source),
            })
    })
}
