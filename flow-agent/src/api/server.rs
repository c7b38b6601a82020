//! The gRPC listeners: flow-agent's FlowService (`--grpc-listen`) and Hubble's
//! Observer and Peer (`--hubble-listen`), each with the standard health
//! service, sharing TLS and mutual TLS (rustls) and the access policy. Both
//! serve the same hub, so the same flows, scoped the same way.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use flow_proto::{
    hubble::{observer::observer_server::ObserverServer, peer::peer_server::PeerServer},
    v1::flow_service_server::FlowServiceServer,
};
use futures::{FutureExt as _, StreamExt as _};
use thiserror::Error;
use tonic::{
    service::Routes,
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use super::{
    access::{Access, AccessError, AccessPolicy},
    flow_service::FlowApi,
    hub::Hub,
    hubble::{
        observer::ObserverService,
        peer::{PeerAddressing, PeerService, PeerSet},
    },
    rbac::KubernetesAccess,
    sent::SentBytes,
};

/// The health service name `hubble status` checks (Cilium's
/// `hubble.server.Observer`, not the gRPC service's name).
pub const HUBBLE_HEALTH_SERVICE: &str = "hubble.server.Observer";

/// Where and how to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// Address of flow-agent's own API.
    pub grpc: Option<SocketAddr>,
    /// Hubble's API.
    pub hubble: Option<HubbleSettings>,
    /// Server certificate and key (PEM): TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CA that signs client certificates (PEM): mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Access policy file.
    pub access: Option<PathBuf>,
    /// Who decides what callers see.
    pub authz: Authz,
    /// Serve plaintext on a non-loopback address.
    pub allow_plaintext: bool,
}

/// Who decides what callers see (`--grpc-authz`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthzMode {
    /// The access file (`--grpc-access`), or nobody on loopback.
    File,
    /// The cluster: TokenReview and SubjectAccessReview ([`super::rbac`]).
    Kubernetes,
}

/// How callers are authorized, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authz {
    /// The access file (`--grpc-access`), or open on loopback without one.
    File,
    /// The cluster's RBAC, answers cached this long.
    Kubernetes {
        /// `--authz-cache-ttl`.
        cache_ttl: std::time::Duration,
    },
}

impl ApiSettings {
    /// The addresses listened on.
    fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.grpc
            .into_iter()
            .chain(self.hubble.as_ref().map(|hubble| hubble.listen))
    }
}

/// Hubble's Observer and Peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubbleSettings {
    /// Listen address; its port is every node's Hubble port.
    pub listen: SocketAddr,
    /// TLS server name of a node's Observer, `{node}` for its name: what the
    /// Peer service announces and relays verify certificates against.
    pub tls_server_name: String,
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
    /// `--grpc-authz kubernetes` without a way to reach the API server.
    #[error("--grpc-authz kubernetes needs the API server")]
    Kubernetes(#[source] flow_model::identity::kubernetes::KubernetesError),
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

/// The services one listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Serves {
    flows: bool,
    hubble: bool,
}

/// What the listeners serve: the hub, and the nodes for the Peer service.
#[derive(Clone, Debug)]
pub struct Served {
    /// Flows and status.
    pub hub: Arc<Hub>,
    /// The cluster's nodes.
    pub peers: Arc<PeerSet>,
    /// Counts what every listener writes to its clients.
    pub sent: SentBytes,
}

/// Checks the settings, binds every listener, and returns the future that
/// serves them until `shutdown` resolves. Binding happens here, so a bad
/// address or a taken port fails at start.
pub async fn start<F: Future<Output = ()> + Send + 'static>(
    settings: &ApiSettings,
    served: Served,
    shutdown: F,
) -> Result<impl Future<Output = Result<(), ApiError>> + Send + use<F>, ApiError> {
    let access = access(settings).await?;
    let mut listeners: Vec<(SocketAddr, Serves)> = Vec::new();
    for (address, serves) in settings
        .grpc
        .map(|address| {
            (
                address,
                Serves {
                    flows: true,
                    hubble: false,
                },
            )
        })
        .into_iter()
        .chain(settings.hubble.as_ref().map(|hubble| {
            (
                hubble.listen,
                Serves {
                    flows: false,
                    hubble: true,
                },
            )
        }))
    {
        // The same address for both: one listener serving everything.
        match listeners.iter_mut().find(|(listen, _)| *listen == address) {
            Some((_, both)) => both.hubble |= serves.hubble,
            None => listeners.push((address, serves)),
        }
    }
    let shutdown = shutdown.shared();
    let mut servers = Vec::new();
    for (address, serves) in listeners {
        let routes = routes(settings, &served, &access, serves).await;
        servers.push(
            listen(
                settings,
                address,
                routes,
                served.sent.clone(),
                shutdown.clone(),
            )
            .await?,
        );
    }
    Ok(async move {
        futures::future::try_join_all(servers).await?;
        Ok(())
    })
}

/// The access policy, after checking that each listener may run without one
/// or in plaintext.
async fn access(settings: &ApiSettings) -> Result<Access, ApiError> {
    for address in settings.addresses() {
        if !address.ip().is_loopback() && settings.tls.is_none() && !settings.allow_plaintext {
            return Err(ApiError::PlaintextRefused(address));
        }
    }
    if let Authz::Kubernetes { cache_ttl } = settings.authz {
        let client = flow_model::identity::kubernetes::client()
            .await
            .map_err(ApiError::Kubernetes)?;
        return Ok(Access::Kubernetes(Arc::new(KubernetesAccess::new(
            client, cache_ttl,
        ))));
    }
    match &settings.access {
        Some(path) => Ok(Access::Policy(AccessPolicy::load(path)?)),
        None => match settings
            .addresses()
            .find(|address| !address.ip().is_loopback() || settings.client_ca.is_some())
        {
            Some(address) => Err(ApiError::PolicyRequired(address)),
            None => Ok(Access::Open),
        },
    }
}

/// The services of one listener, with a health service reporting them.
async fn routes(
    settings: &ApiSettings,
    served: &Served,
    access: &Access,
    serves: Serves,
) -> Routes {
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut routes = Routes::new(health_service);
    if serves.flows {
        health.set_serving::<FlowServiceServer<FlowApi>>().await;
        routes = routes.add_service(
            FlowServiceServer::new(FlowApi::new(Arc::clone(&served.hub), access.clone()))
                .max_encoding_message_size(16 << 20),
        );
    }
    if let (true, Some(hubble)) = (serves.hubble, &settings.hubble) {
        let addressing = PeerAddressing {
            port: hubble.listen.port(),
            tls_server_name: settings
                .tls
                .as_ref()
                .map(|_| hubble.tls_server_name.clone()),
        };
        for name in [HUBBLE_HEALTH_SERVICE, "observer.Observer", "peer.Peer"] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        routes = routes
            .add_service(ObserverServer::new(ObserverService::new(
                Arc::clone(&served.hub),
                access.clone(),
                Arc::clone(&served.peers),
                addressing.clone(),
            )))
            .add_service(PeerServer::new(PeerService::new(
                Arc::clone(&served.peers),
                addressing,
                access.clone(),
            )));
    }
    routes
}

/// Binds `address` and returns the future serving `routes` on it.
async fn listen<S: Future<Output = ()> + Send + 'static>(
    settings: &ApiSettings,
    address: SocketAddr,
    routes: Routes,
    sent: SentBytes,
    shutdown: S,
) -> Result<impl Future<Output = Result<(), ApiError>> + Send + use<S>, ApiError> {
    let serve_error = |address, source: Box<dyn std::error::Error + Send + Sync>| ApiError::Serve {
        address,
        source,
    };
    let mut builder = Server::builder();
    if let Some((cert, key)) = &settings.tls {
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &settings.client_ca {
            // A certificate, when presented, must come from this CA; a client
            // without one may still prove itself with a bearer token. The
            // access layer refuses a caller with neither: with a client CA
            // there is always an access policy or the cluster's RBAC.
            config = config
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(true);
        }
        builder = builder
            .tls_config(config)
            .map_err(|source| serve_error(address, Box::new(source)))?;
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| serve_error(address, Box::new(source)))?;
    let bound = listener.local_addr().unwrap_or(address);
    let mode = match (&settings.tls, &settings.client_ca) {
        (None, _) => "plaintext",
        (Some(_), None) => "tls",
        (Some(_), Some(_)) => "mtls",
    };
    info!(address = %bound, mode, "gRPC API listening");
    if !bound.ip().is_loopback() && settings.tls.is_none() {
        warn!(address = %bound, "gRPC API is plaintext on a network address");
    }
    let router = builder.add_routes(routes);
    let incoming =
        TcpIncoming::from(listener).map(move |accepted| accepted.map(|stream| sent.count(stream)));
    Ok(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|source| serve_error(bound, Box::new(source)))
    })
}
