//! [`RunOptions`]: every option of `flow-agent run`, declared once. The one
//! declaration gives the flag and its environment variable (clap), the key
//! of the YAML file (serde), the layering of flags and environment over the
//! file ([`RunOptions::over`]) and the key `flow-agent config print` writes.
//! Defaults are not declared here: [`RunConfig::resolve`] fills them in,
//! and the help only states them (a test of `cli` holds the two together).
//! Adding an option is a field here and its resolution there.
//!
//! [`RunConfig::resolve`]: super::RunConfig::resolve

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::builder::BoolishValueParser;
use serde::{Deserialize, Serialize};

use super::{ConfigError, OutputFormat, parse_duration};
use crate::{api::server::AuthzMode, datapath::AttachMode};

/// Declares a struct of `Option` fields as written, and adds what derives do
/// not give: an unset field is left out when serialized, and `over` layers
/// one value of the struct over another, field by field.
macro_rules! layered {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $type:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: $type,
            )*
        }

        impl $name {
            /// This layer over `lower`: a setting given here wins.
            pub fn over(self, lower: Self) -> Self {
                Self {
                    $($field: self.$field.or(lower.$field),)*
                }
            }
        }
    };
}

layered! {
    /// Every setting of `flow-agent run`, each optional: one layer of the
    /// configuration (flags and environment, or the file). The doc comments
    /// are the flags' help; the file's keys are the fields' names in
    /// kebab-case, plural for the repeatable flags.
    #[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct RunOptions {
        /// Interfaces to watch (glob, repeatable): e.g. 'azv*', 'cali*', 'lxc*', 'veth*'.
        #[arg(
            long = "interface",
            short = 'i',
            value_name = "GLOB",
            env = "FLOW_AGENT_INTERFACES",
            value_delimiter = ','
        )]
        pub interfaces: Option<Vec<String>>,
        /// Interfaces to leave alone even if they match (glob, repeatable).
        #[arg(
            long = "exclude-interface",
            value_name = "GLOB",
            env = "FLOW_AGENT_EXCLUDE_INTERFACES",
            value_delimiter = ','
        )]
        pub exclude_interfaces: Option<Vec<String>>,
        /// Start even if no interface matches yet; attach when one appears.
        #[arg(
            long,
            env = "FLOW_AGENT_WAIT_FOR_INTERFACES",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = BoolishValueParser::new()
        )]
        pub wait_for_interfaces: Option<bool>,
        /// How often the kernel maps are drained and records emitted [default: 5s].
        #[arg(long, value_parser = parse_duration, env = "FLOW_AGENT_FLUSH_INTERVAL")]
        #[serde(default, with = "human_duration")]
        pub flush_interval: Option<Duration>,
        /// Capacity of each of the two flow maps, in flows [default: what fits 64 MiB
        /// for both on this node's CPUs: 65536 up to 8 CPUs, about 10000 at 64].
        #[arg(long, env = "FLOW_AGENT_MAP_SIZE")]
        pub map_size: Option<u32>,
        /// Spill ring buffer size in bytes, used when a flow map is full [default: 262144].
        #[arg(long, env = "FLOW_AGENT_SPILL_SIZE")]
        pub spill_size: Option<u32>,
        /// Forget which end opened a connection after this much quiet [default: 2m].
        #[arg(long, value_parser = parse_duration, env = "FLOW_AGENT_FLOW_IDLE_TIMEOUT")]
        #[serde(default, with = "human_duration")]
        pub flow_idle_timeout: Option<Duration>,
        /// How to attach: tcx (Linux 6.6+), tc (clsact) or auto [default: auto].
        #[arg(long, value_enum, env = "FLOW_AGENT_ATTACH_MODE")]
        pub attach_mode: Option<AttachMode>,
        /// Local output on stdout: flow records, per-interval aggregates, or none
        /// [default: json].
        #[arg(long, value_enum, env = "FLOW_AGENT_OUTPUT")]
        pub output: Option<OutputFormat>,
        /// Log from the eBPF programs (malformed packets, map pressure).
        #[arg(
            long,
            env = "FLOW_AGENT_EBPF_DEBUG",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = BoolishValueParser::new()
        )]
        pub ebpf_debug: Option<bool>,
        /// Copy DNS answers pods receive (UDP and TCP port 53) to name the
        /// addresses on their flows [default: true; --dns=false turns it off].
        #[arg(
            long,
            env = "FLOW_AGENT_DNS",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = BoolishValueParser::new()
        )]
        pub dns: Option<bool>,
        /// Names kept at most, as (pod, address, name) entries; the oldest goes
        /// first [default: 100000].
        #[arg(long, env = "FLOW_AGENT_DNS_MAX_ENTRIES")]
        pub dns_max_entries: Option<usize>,
        /// Also copy DNS queries, and serve every query and answer as a Hubble
        /// L7 DNS flow [default: false; needs --dns].
        #[arg(
            long,
            env = "FLOW_AGENT_DNS_FLOWS",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = BoolishValueParser::new()
        )]
        pub dns_flows: Option<bool>,
        /// Node name in records [default: $NODE_NAME, else the hostname].
        #[arg(long, env = "NODE_NAME")]
        pub node_name: Option<String>,
        /// Identity from a file of Kubernetes objects, as `kubectl get namespaces,pods,
        /// replicasets,deployments,statefulsets,daemonsets,jobs,cronjobs,services,
        /// endpointslices,nodes -A -o yaml` prints them; reread when it changes.
        #[arg(long, value_name = "FILE", env = "FLOW_AGENT_INVENTORY")]
        pub inventory: Option<PathBuf>,
        /// Identity from the Kubernetes API (in-cluster service account or kubeconfig).
        #[arg(
            long,
            env = "FLOW_AGENT_KUBERNETES",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = BoolishValueParser::new()
        )]
        pub kubernetes: Option<bool>,
        /// Namespace label whose value names the tenant [default: tenant]; a
        /// namespace without it is its own tenant.
        #[arg(long, value_name = "KEY", env = "FLOW_AGENT_TENANT_LABEL")]
        pub tenant_label: Option<String>,
        /// A namespace of the platform, not of a tenant (repeatable): flows with
        /// an end in one never cross tenants [default: kube-system, kube-public,
        /// kube-node-lease].
        #[arg(
            long = "platform-namespace",
            value_name = "NS",
            env = "FLOW_AGENT_PLATFORM_NAMESPACES",
            value_delimiter = ','
        )]
        pub platform_namespaces: Option<Vec<String>>,
        /// How long a deleted pod keeps its identity for flows seen before [default: 2m].
        #[arg(long, value_parser = parse_duration, env = "FLOW_AGENT_IDENTITY_GRACE")]
        #[serde(default, with = "human_duration")]
        pub identity_grace: Option<Duration>,
        /// Serve the gRPC flow API on this address (e.g. 127.0.0.1:4245).
        #[arg(long, value_name = "ADDR", env = "FLOW_AGENT_GRPC_LISTEN")]
        pub grpc_listen: Option<SocketAddr>,
        /// Server certificate (PEM) for the gRPC API.
        #[arg(long, value_name = "FILE", env = "FLOW_AGENT_GRPC_TLS_CERT")]
        pub grpc_tls_cert: Option<PathBuf>,
        /// Server key (PEM) for the gRPC API.
        #[arg(long, value_name = "FILE", env = "FLOW_AGENT_GRPC_TLS_KEY")]
        pub grpc_tls_key: Option<PathBuf>,
        /// CA (PEM) that signs client certificates: clients must present one (mTLS).
        #[arg(long, value_name = "FILE", env = "FLOW_AGENT_GRPC_CLIENT_CA")]
        pub grpc_client_ca: Option<PathBuf>,
        /// Access policy (YAML) mapping client certificates and tokens to tenants;
        /// needed on any address but loopback.
        #[arg(long, value_name = "FILE", env = "FLOW_AGENT_GRPC_ACCESS")]
        pub grpc_access: Option<PathBuf>,
        /// Who decides what callers see: `file` (--grpc-access) or `kubernetes`
        /// (the API server's TokenReview and SubjectAccessReview on
        /// `flows.flow-agent.io`, per namespace) [default: file].
        #[arg(long, value_name = "MODE", env = "FLOW_AGENT_GRPC_AUTHZ")]
        pub grpc_authz: Option<AuthzMode>,
        /// How long `--grpc-authz kubernetes` keeps users and decisions; a
        /// following stream's grant is asked again this often [default: 30s].
        #[arg(
            long,
            value_parser = parse_duration,
            value_name = "DURATION",
            env = "FLOW_AGENT_AUTHZ_CACHE_TTL"
        )]
        #[serde(default, with = "human_duration")]
        pub authz_cache_ttl: Option<Duration>,
        /// Serve plaintext gRPC on a network address (loopback is always allowed).
        #[arg(
            long,
            env = "FLOW_AGENT_GRPC_ALLOW_PLAINTEXT",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = BoolishValueParser::new()
        )]
        pub grpc_allow_plaintext: Option<bool>,
        /// Flow records the API keeps for replay [default: 10000].
        #[arg(long, value_name = "N", env = "FLOW_AGENT_GRPC_BUFFER")]
        pub grpc_buffer: Option<usize>,
        /// Records queued per following subscriber before it starts losing them
        /// (and is told how many); make it hold one drain's records [default: 65536].
        #[arg(long, value_name = "N", env = "FLOW_AGENT_GRPC_SUBSCRIBER_QUEUE")]
        pub grpc_subscriber_queue: Option<usize>,
        /// Following subscribers (flows and aggregates) served at once; more are
        /// refused with RESOURCE_EXHAUSTED [default: 256].
        #[arg(long, value_name = "N", env = "FLOW_AGENT_GRPC_MAX_SUBSCRIBERS")]
        pub grpc_max_subscribers: Option<usize>,
        /// Serve Hubble's Observer and Peer APIs on this address (4244 in the
        /// manifests), for hubble-relay, the hubble CLI and Hubble UI; TLS, the
        /// access policy and the buffers are the --grpc-* ones.
        #[arg(long, value_name = "ADDR", env = "FLOW_AGENT_HUBBLE_LISTEN")]
        pub hubble_listen: Option<SocketAddr>,
        /// TLS server name of each node's Hubble API, announced to hubble-relay;
        /// `{node}` is the node's name with dots as dashes [default:
        /// {node}.default.hubble-grpc.cilium.io, which hubble-relay's peer-service
        /// name shares a wildcard certificate with].
        #[arg(
            long,
            value_name = "TEMPLATE",
            env = "FLOW_AGENT_HUBBLE_TLS_SERVER_NAME"
        )]
        pub hubble_tls_server_name: Option<String>,
        /// Also write flow records as JSON lines to this file (rotated by size,
        /// never blocking the agent: for log shippers).
        #[arg(long, value_name = "FILE", env = "FLOW_AGENT_OUTPUT_FILE")]
        pub output_file: Option<PathBuf>,
        /// Rotate the output file at this many bytes [default: 104857600].
        #[arg(long, value_name = "BYTES", env = "FLOW_AGENT_OUTPUT_FILE_MAX_SIZE")]
        pub output_file_max_size: Option<u64>,
        /// Rotated output files kept [default: 5].
        #[arg(long, value_name = "N", env = "FLOW_AGENT_OUTPUT_FILE_KEEP")]
        pub output_file_keep: Option<u32>,
        /// Learn the connection graph (for `policy generate`) into this
        /// directory, crash-safe; served by the API's GetGraph.
        #[arg(long, value_name = "DIR", env = "FLOW_AGENT_STATE_DIR")]
        pub state_dir: Option<PathBuf>,
        /// Forget learned edges without traffic for this long [default: never].
        #[arg(
            long,
            value_parser = parse_duration,
            value_name = "DURATION",
            env = "FLOW_AGENT_GRAPH_EXPIRY"
        )]
        #[serde(default, with = "human_duration")]
        pub graph_expiry: Option<Duration>,
        /// Most learned edges kept; the least recently seen go first [default: 200000].
        #[arg(long, value_name = "N", env = "FLOW_AGENT_GRAPH_MAX_EDGES")]
        pub graph_max_edges: Option<usize>,
        /// Approved NetworkPolicies (a directory of YAML): flag every connection
        /// they would deny (`violation` on records, a log line, a counter).
        #[arg(long, value_name = "DIR", env = "FLOW_AGENT_POLICIES")]
        pub policies: Option<PathBuf>,
        /// Serve Prometheus metrics on /metrics and probes on /healthz and
        /// /readyz at this address (e.g. 0.0.0.0:9090).
        #[arg(long, value_name = "ADDR", env = "FLOW_AGENT_METRICS_LISTEN")]
        pub metrics_listen: Option<SocketAddr>,
        /// Also export per-workload-pair traffic, keeping at most this many series
        /// (the rest fold into `_other_`); they reveal topology [default: 0, off].
        #[arg(long, value_name = "N", env = "FLOW_AGENT_METRICS_WORKLOAD_PAIRS")]
        pub metrics_workload_pairs: Option<usize>,
        /// Pin maps and links under this bpffs directory (e.g.
        /// /sys/fs/bpf/flow-agent): programs stay attached when the agent exits
        /// and the next agent reports what they counted meanwhile, exactly once.
        /// `flow-agent cleanup` removes it all.
        #[arg(long, value_name = "DIR", env = "FLOW_AGENT_PIN_DIR")]
        pub pin_dir: Option<PathBuf>,
    }
}

impl RunOptions {
    /// Reads and parses a YAML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses YAML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        // Syntax first (with line and column), then the schema, with the key.
        let value: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|error| invalid(error.to_string()))?;
        // A file that sets nothing is a mistake (the wrong file, or one
        // truncated by a failed write), never a way to ask for defaults.
        let sets_nothing = match &value {
            yaml_serde::Value::Null => true,
            yaml_serde::Value::Mapping(mapping) => mapping.is_empty(),
            _ => false,
        };
        if sets_nothing {
            return Err(invalid(
                "it sets nothing (empty, or only comments): remove --config to run with defaults"
                    .to_owned(),
            ));
        }
        serde_path_to_error::deserialize(value).map_err(|error| {
            let key = error.path().to_string();
            let message = error.into_inner().to_string();
            invalid(if key == "." {
                message
            } else {
                format!("{key}: {message}")
            })
        })
    }
}

/// Durations in the file as the flags take them: `500ms`, `5s`, `2m`.
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::parse_duration;

    #[expect(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
