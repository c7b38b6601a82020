//! Reaching an agent's gRPC API: the flags every client shares, and a
//! connection with TLS, mutual TLS or a bearer token.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use flow_proto::v1::flow_service_client::FlowServiceClient;
use thiserror::Error;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint as GrpcEndpoint, Identity},
};

/// How to reach an agent's gRPC API.
#[derive(Debug, Default, Args)]
pub struct ConnectArgs {
    /// The agent's gRPC address: host:port, or http(s)://host:port.
    #[arg(long, env = "FLOW_AGENT_SERVER", default_value = "127.0.0.1:4245")]
    pub server: String,
    /// CA (PEM) to verify the agent's certificate: connect with TLS.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the agent's certificate [default: the server's host].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Bearer token (instead of a client certificate).
    #[arg(long, env = "FLOW_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up connecting after this long.
    #[arg(long, value_parser = crate::parse_duration, default_value = "10s", value_name = "DURATION")]
    pub connect_timeout: Duration,
}

/// Why an agent's API cannot be used.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The flags do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// `--server` is not an address.
    #[error("invalid --server {server:?}: {message}")]
    InvalidServer {
        /// What was given.
        server: String,
        /// What is wrong.
        message: String,
    },
    /// A TLS file cannot be read.
    #[error("cannot read {path}")]
    ReadTls {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The agent cannot be reached.
    #[error("cannot connect to {server}")]
    Connect {
        /// The address.
        server: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent refused or failed the request.
    #[error("{server} answered {code:?}: {message}", code = .status.code(), message = .status.message())]
    Rpc {
        /// The address.
        server: String,
        /// The answer.
        status: Box<Status>,
    },
}

/// Adds `authorization: Bearer <token>` to every request, when a token is set.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Self(Some(value)) = self {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected flow API client.
pub type Client = FlowServiceClient<InterceptedService<Channel, Bearer>>;

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadTls {
        path: path.to_owned(),
        source,
    })
}

/// Connects to the agent named by `args`.
pub async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
    let ConnectArgs {
        server,
        tls_ca,
        tls_cert,
        tls_key,
        tls_server_name,
        token,
        connect_timeout,
    } = args;
    let invalid = |message: &str| ClientError::InvalidServer {
        server: server.clone(),
        message: message.to_owned(),
    };
    let tls = tls_ca.is_some() || tls_cert.is_some();
    let uri = if server.contains("://") {
        server.clone()
    } else if tls {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    };
    let https = uri.starts_with("https://");
    if !https && !uri.starts_with("http://") {
        return Err(invalid(
            "use host:port, http://host:port or https://host:port",
        ));
    }
    if https && tls_ca.is_none() {
        return Err(ClientError::Usage(
            "TLS needs --tls-ca FILE, the CA that signed the agent's certificate".into(),
        ));
    }
    if !https && tls {
        return Err(ClientError::Usage(format!(
            "--tls-ca and --tls-cert need TLS, but --server is {server}"
        )));
    }
    let mut endpoint = GrpcEndpoint::from_shared(uri.clone())
        .map_err(|error| invalid(&error.to_string()))?
        .connect_timeout(*connect_timeout);
    if https {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = tls_ca {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Usage(
                    "mutual TLS needs both --tls-cert and --tls-key".into(),
                ));
            }
        }
        if let Some(name) = tls_server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|source| ClientError::Connect {
                server: server.clone(),
                source,
            })?;
    }
    let bearer = token
        .as_ref()
        .map(|token| {
            format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| ClientError::Usage("--token must be printable ASCII".into()))
        })
        .transpose()?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            server: server.clone(),
            source,
        })?;
    Ok(FlowServiceClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(16 << 20))
}

impl ClientError {
    /// `server` answered a request with `status`.
    pub fn rpc(server: &str, status: Status) -> Self {
        Self::Rpc {
            server: server.to_owned(),
            status: Box::new(status),
        }
    }
}

/// The TLS server name of `node` by `template`: `{node}` stands for the
/// node's name with dots as dashes, so one wildcard certificate fits all.
pub fn server_name(template: &str, node: &str) -> String {
    template.replace("{node}", &node.replace('.', "-"))
}
