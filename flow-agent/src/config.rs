//! Configuration of `flow-agent run`: command-line flags, environment variables
//! and a YAML file. All three fill the same [`RunOptions`]; flags win over the
//! environment (clap reads both), which wins over the file. The merged options
//! are validated up front with errors that name the offending key.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

mod resolve;

use flow_policy::learner::LearnerSettings;

use crate::{
    api::{
        hub::HubSettings,
        server::{ApiSettings, Authz, AuthzMode},
    },
    datapath::{AttachMode, DatapathConfig},
    flows::TrackerConfig,
    interfaces::{InterfaceError, InterfaceSelector},
    output::FileSinkSettings,
};

/// Where flow records go on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per flow record and line.
    #[default]
    Json,
    /// One JSON object per workload-to-workload aggregate and interval.
    Aggregates,
    /// No local output.
    None,
}

/// Where identity comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// The Kubernetes API (in-cluster service account or kubeconfig).
    Kubernetes,
    /// A file of Kubernetes objects, reread when it changes.
    Inventory(PathBuf),
}

/// Identity settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySettings {
    /// Source of objects.
    pub source: IdentitySource,
    /// Namespace label naming the tenant.
    pub tenant_label: String,
    /// Namespaces of the platform, whose flows never cross tenants.
    pub platform_namespaces: BTreeSet<String>,
    /// How long deleted pods keep their identity.
    pub grace: Duration,
}

/// Names from DNS answers: how many are kept, and how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// The cache of names each pod resolved.
    pub cache: flow_dns::NameCacheConfig,
    /// Queries are copied too, and every message is a Hubble L7 DNS flow.
    pub flows: bool,
}

/// Most names the DNS cache may be asked to keep (some 200 bytes each).
const MAX_DNS_ENTRIES: usize = 10_000_000;

/// Default flush interval.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Default connection idle timeout.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A TCP connection that saw FIN or RST is forgotten after this much quiet.
pub const CLOSED_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default namespace label naming the tenant.
pub const DEFAULT_TENANT_LABEL: &str = "tenant";
/// Default time a deleted pod keeps its identity.
pub const DEFAULT_IDENTITY_GRACE: Duration = Duration::from_secs(120);
/// Default number of flow records the API keeps for replay.
pub const DEFAULT_GRPC_BUFFER: usize = 10_000;
/// Default queue length of each following API subscriber: one full drain of
/// the default flow map fits, so a consumer that keeps up between drains loses
/// nothing to bursts. Slots are allocated as used (16 bytes per queued record).
pub const DEFAULT_GRPC_SUBSCRIBER_QUEUE: usize = 65_536;
/// Longest `flow-idle-timeout` and `identity-grace`.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Default time `--grpc-authz kubernetes` keeps users and decisions.
pub const DEFAULT_AUTHZ_CACHE_TTL: Duration = Duration::from_secs(30);
/// Shortest and longest `authz-cache-ttl`: every stream asks the API server
/// again each TTL, and a revoked grant lasts at most one TTL.
const AUTHZ_CACHE_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Default number of following subscribers served at once (each may hold up
/// to a queue of records).
pub const DEFAULT_GRPC_MAX_SUBSCRIBERS: usize = 256;
/// Default TLS server name of a node's Hubble API: Cilium's, so that one
/// wildcard certificate (`*.default.hubble-grpc.cilium.io`) serves every node
/// and the name hubble-relay expects of the peer service.
pub const DEFAULT_HUBBLE_TLS_SERVER_NAME: &str = "{node}.default.hubble-grpc.cilium.io";
/// Default size at which the output file is rotated.
pub const DEFAULT_OUTPUT_FILE_MAX_SIZE: u64 = 100 << 20;
/// Default number of rotated output files kept.
pub const DEFAULT_OUTPUT_FILE_KEEP: u32 = 5;
/// Default bound of the learned graph.
pub const DEFAULT_GRAPH_MAX_EDGES: usize = 200_000;

const MAX_MAP_SIZE: u32 = 1 << 24;
const MIN_SPILL_SIZE: u32 = 4096;
const MAX_SPILL_SIZE: u32 = 1 << 30;

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid {key} {value}: {expected}")]
    Invalid {
        /// The flag or key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// The interface patterns are invalid.
    #[error(transparent)]
    Interfaces(#[from] InterfaceError),
}

pub use flow_model::parse_duration;

#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with passes a reference to the field"
)]
fn write_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
        None => serializer.serialize_none(),
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|text| parse_duration(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// Every setting of `flow-agent run`, each optional: one layer (flags and
/// environment, or the file). Keys in the file are the long flags' names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunOptions {
    /// Interface globs to watch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Interface globs to leave alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_interfaces: Option<Vec<String>>,
    /// Start even when no interface matches yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for_interfaces: Option<bool>,
    /// How often to drain the kernel maps.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub flush_interval: Option<Duration>,
    /// Capacity of each flow map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_size: Option<u32>,
    /// Spill ring buffer size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_size: Option<u32>,
    /// Forget a connection's direction after this much quiet.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub flow_idle_timeout: Option<Duration>,
    /// `auto`, `tcx` or `tc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_mode: Option<AttachMode>,
    /// `json`, `aggregates` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputFormat>,
    /// Log from the eBPF programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebpf_debug: Option<bool>,
    /// Copy DNS answers to name addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<bool>,
    /// Names kept at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_max_entries: Option<usize>,
    /// DNS queries and answers as Hubble L7 flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_flows: Option<bool>,
    /// Name reported as the observing node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Inventory file of Kubernetes objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<PathBuf>,
    /// Watch the Kubernetes API for identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<bool>,
    /// Namespace label naming the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_label: Option<String>,
    /// Namespaces of the platform, not of a tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_namespaces: Option<Vec<String>>,
    /// How long deleted pods keep their identity.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub identity_grace: Option<Duration>,
    /// Address of the gRPC API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<SocketAddr>,
    /// Server certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA of client certificates (PEM): mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_client_ca: Option<PathBuf>,
    /// Access policy mapping clients to tenants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_access: Option<PathBuf>,
    /// Who decides what callers see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_authz: Option<AuthzMode>,
    /// How long Kubernetes access answers are kept.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub authz_cache_ttl: Option<Duration>,
    /// Serve plaintext on a network address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_allow_plaintext: Option<bool>,
    /// Flow records kept for replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_buffer: Option<usize>,
    /// Queue length of each following subscriber.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_subscriber_queue: Option<usize>,
    /// Following subscribers served at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_max_subscribers: Option<usize>,
    /// Address of Hubble's Observer and Peer APIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hubble_listen: Option<SocketAddr>,
    /// TLS server name template of each node's Hubble API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hubble_tls_server_name: Option<String>,
    /// JSON lines file of flow records, rotated by size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file: Option<PathBuf>,
    /// Rotate the output file at this size, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file_max_size: Option<u64>,
    /// Rotated output files kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file_keep: Option<u32>,
    /// Learn the connection graph into this directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Forget graph edges without traffic for this long.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub graph_expiry: Option<Duration>,
    /// Most graph edges kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_max_edges: Option<usize>,
    /// Approved NetworkPolicies: report flows outside them (monitor mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<PathBuf>,
    /// Address of the Prometheus and health endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Workload-pair traffic series to keep (0: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_workload_pairs: Option<usize>,
    /// Pin maps and links here (bpffs) so restarts lose nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
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

    /// This layer over `lower`: a setting given here wins.
    pub fn over(self, lower: Self) -> Self {
        let Self {
            interfaces,
            exclude_interfaces,
            wait_for_interfaces,
            flush_interval,
            map_size,
            spill_size,
            flow_idle_timeout,
            attach_mode,
            output,
            ebpf_debug,
            dns,
            dns_max_entries,
            dns_flows,
            node_name,
            inventory,
            kubernetes,
            tenant_label,
            platform_namespaces,
            identity_grace,
            grpc_listen,
            grpc_tls_cert,
            grpc_tls_key,
            grpc_client_ca,
            grpc_access,
            grpc_authz,
            authz_cache_ttl,
            grpc_allow_plaintext,
            grpc_buffer,
            grpc_subscriber_queue,
            grpc_max_subscribers,
            hubble_listen,
            hubble_tls_server_name,
            output_file,
            output_file_max_size,
            output_file_keep,
            state_dir,
            graph_expiry,
            graph_max_edges,
            policies,
            metrics_listen,
            metrics_workload_pairs,
            pin_dir,
        } = self;
        Self {
            interfaces: interfaces.or(lower.interfaces),
            exclude_interfaces: exclude_interfaces.or(lower.exclude_interfaces),
            wait_for_interfaces: wait_for_interfaces.or(lower.wait_for_interfaces),
            flush_interval: flush_interval.or(lower.flush_interval),
            map_size: map_size.or(lower.map_size),
            spill_size: spill_size.or(lower.spill_size),
            flow_idle_timeout: flow_idle_timeout.or(lower.flow_idle_timeout),
            attach_mode: attach_mode.or(lower.attach_mode),
            output: output.or(lower.output),
            ebpf_debug: ebpf_debug.or(lower.ebpf_debug),
            dns: dns.or(lower.dns),
            dns_max_entries: dns_max_entries.or(lower.dns_max_entries),
            dns_flows: dns_flows.or(lower.dns_flows),
            node_name: node_name.or(lower.node_name),
            inventory: inventory.or(lower.inventory),
            kubernetes: kubernetes.or(lower.kubernetes),
            tenant_label: tenant_label.or(lower.tenant_label),
            platform_namespaces: platform_namespaces.or(lower.platform_namespaces),
            identity_grace: identity_grace.or(lower.identity_grace),
            grpc_listen: grpc_listen.or(lower.grpc_listen),
            grpc_tls_cert: grpc_tls_cert.or(lower.grpc_tls_cert),
            grpc_tls_key: grpc_tls_key.or(lower.grpc_tls_key),
            grpc_client_ca: grpc_client_ca.or(lower.grpc_client_ca),
            grpc_access: grpc_access.or(lower.grpc_access),
            grpc_authz: grpc_authz.or(lower.grpc_authz),
            authz_cache_ttl: authz_cache_ttl.or(lower.authz_cache_ttl),
            grpc_allow_plaintext: grpc_allow_plaintext.or(lower.grpc_allow_plaintext),
            grpc_buffer: grpc_buffer.or(lower.grpc_buffer),
            grpc_subscriber_queue: grpc_subscriber_queue.or(lower.grpc_subscriber_queue),
            grpc_max_subscribers: grpc_max_subscribers.or(lower.grpc_max_subscribers),
            hubble_listen: hubble_listen.or(lower.hubble_listen),
            hubble_tls_server_name: hubble_tls_server_name.or(lower.hubble_tls_server_name),
            output_file: output_file.or(lower.output_file),
            output_file_max_size: output_file_max_size.or(lower.output_file_max_size),
            output_file_keep: output_file_keep.or(lower.output_file_keep),
            state_dir: state_dir.or(lower.state_dir),
            graph_expiry: graph_expiry.or(lower.graph_expiry),
            graph_max_edges: graph_max_edges.or(lower.graph_max_edges),
            policies: policies.or(lower.policies),
            metrics_listen: metrics_listen.or(lower.metrics_listen),
            metrics_workload_pairs: metrics_workload_pairs.or(lower.metrics_workload_pairs),
            pin_dir: pin_dir.or(lower.pin_dir),
        }
    }
}

impl RunConfig {
    /// Every setting as it takes effect, defaults filled in, in the file's
    /// form: `flow-agent config print`.
    pub fn effective(&self) -> RunOptions {
        let Self {
            interfaces,
            wait_for_interfaces,
            flush_interval,
            datapath,
            tracker,
            output,
            node_name,
            identity,
            dns,
            api,
            file,
            learner,
            policies,
            metrics,
        } = self;
        let strings = |patterns: Vec<&str>| Some(patterns.into_iter().map(str::to_owned).collect());
        let (api, hub) = match api {
            Some((api, hub)) => (Some(api), Some(hub)),
            None => (None, None),
        };
        RunOptions {
            interfaces: strings(interfaces.patterns()),
            exclude_interfaces: strings(interfaces.excludes()),
            wait_for_interfaces: Some(*wait_for_interfaces),
            flush_interval: Some(*flush_interval),
            map_size: Some(datapath.map_entries),
            spill_size: Some(datapath.spill_bytes),
            flow_idle_timeout: Some(Duration::from_nanos(tracker.idle_timeout_ns)),
            attach_mode: Some(datapath.attach_mode),
            output: Some(*output),
            ebpf_debug: Some(datapath.ebpf_debug),
            dns: Some(dns.is_some()),
            dns_max_entries: dns.as_ref().map(|dns| dns.cache.max_entries),
            dns_flows: Some(dns.is_some_and(|dns| dns.flows)),
            node_name: Some(node_name.clone()),
            inventory: identity
                .as_ref()
                .and_then(|identity| match &identity.source {
                    IdentitySource::Inventory(path) => Some(path.clone()),
                    IdentitySource::Kubernetes => None,
                }),
            kubernetes: Some(
                identity
                    .as_ref()
                    .is_some_and(|identity| identity.source == IdentitySource::Kubernetes),
            ),
            tenant_label: identity
                .as_ref()
                .map(|identity| identity.tenant_label.clone()),
            platform_namespaces: identity
                .as_ref()
                .map(|identity| identity.platform_namespaces.iter().cloned().collect()),
            identity_grace: identity.as_ref().map(|identity| identity.grace),
            grpc_listen: api.and_then(|api| api.grpc),
            grpc_tls_cert: api.and_then(|api| api.tls.as_ref().map(|(cert, _)| cert.clone())),
            grpc_tls_key: api.and_then(|api| api.tls.as_ref().map(|(_, key)| key.clone())),
            grpc_client_ca: api.and_then(|api| api.client_ca.clone()),
            grpc_access: api.and_then(|api| api.access.clone()),
            grpc_authz: api.map(|api| match api.authz {
                Authz::File => AuthzMode::File,
                Authz::Kubernetes { .. } => AuthzMode::Kubernetes,
            }),
            authz_cache_ttl: api.and_then(|api| match api.authz {
                Authz::File => None,
                Authz::Kubernetes { cache_ttl } => Some(cache_ttl),
            }),
            grpc_allow_plaintext: api.map(|api| api.allow_plaintext),
            grpc_buffer: hub.map(|hub| hub.buffer),
            grpc_subscriber_queue: hub.map(|hub| hub.subscriber_queue),
            grpc_max_subscribers: hub.map(|hub| hub.max_subscribers),
            hubble_listen: api.and_then(|api| api.hubble.as_ref().map(|hubble| hubble.listen)),
            hubble_tls_server_name: api.and_then(|api| {
                api.hubble
                    .as_ref()
                    .map(|hubble| hubble.tls_server_name.clone())
            }),
            output_file: file.as_ref().map(|file| file.path.clone()),
            output_file_max_size: file.as_ref().map(|file| file.max_bytes),
            output_file_keep: file.as_ref().map(|file| file.keep),
            state_dir: learner.as_ref().map(|learner| learner.state_dir.clone()),
            graph_expiry: learner.as_ref().and_then(|learner| learner.expiry),
            graph_max_edges: learner.as_ref().map(|learner| learner.max_edges),
            policies: policies.clone(),
            metrics_listen: metrics.map(|(listen, _)| listen),
            metrics_workload_pairs: metrics.map(|(_, pairs)| pairs),
            pin_dir: datapath.pin_dir.clone(),
        }
    }
}

/// The validated configuration of `flow-agent run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Which interfaces to watch.
    pub interfaces: InterfaceSelector,
    /// Start even when no interface matches yet.
    pub wait_for_interfaces: bool,
    /// How often the kernel maps are drained.
    pub flush_interval: Duration,
    /// Datapath settings.
    pub datapath: DatapathConfig,
    /// Connection tracking settings.
    pub tracker: TrackerConfig,
    /// Local output.
    pub output: OutputFormat,
    /// Name reported as the observing node.
    pub node_name: String,
    /// Identity, if a source is configured.
    pub identity: Option<IdentitySettings>,
    /// Names from DNS answers, unless `--dns=false`.
    pub dns: Option<DnsSettings>,
    /// The gRPC API, if listening.
    pub api: Option<(ApiSettings, HubSettings)>,
    /// The rotating JSON lines file, if any.
    pub file: Option<FileSinkSettings>,
    /// Learning, if a state directory is given.
    pub learner: Option<LearnerSettings>,
    /// Approved policies to monitor against.
    pub policies: Option<PathBuf>,
    /// Metrics and health endpoints: address and workload-pair series kept.
    pub metrics: Option<(SocketAddr, usize)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(interfaces: &[&str]) -> RunOptions {
        RunOptions {
            interfaces: Some(interfaces.iter().map(|s| (*s).to_owned()).collect()),
            ..RunOptions::default()
        }
    }

    fn file(text: &str) -> RunOptions {
        RunOptions::parse(text, Path::new("agent.yaml")).unwrap()
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let layered = RunOptions {
            map_size: Some(4096),
            ..options(&["veth*"])
        }
        .over(file(
            "interfaces: [\"cali*\"]\nflush-interval: 2s\nmap-size: 1024\nnode-name: n1\n",
        ));
        let config = RunConfig::resolve(layered).unwrap();
        assert!(config.interfaces.matches("veth0"));
        assert!(!config.interfaces.matches("cali0"));
        assert_eq!(config.flush_interval, Duration::from_secs(2));
        assert_eq!(config.datapath.map_entries, 4096);
        assert_eq!(config.node_name, "n1");
        assert_eq!(
            config.datapath.spill_bytes,
            flow_common::DEFAULT_SPILL_BYTES
        );
        assert_eq!(config.output, OutputFormat::Json);
        assert!(config.api.is_none() && config.file.is_none() && config.identity.is_none());
    }

    #[test]
    fn a_file_that_sets_nothing_is_an_error() {
        for text in ["", "\n", "# only a comment\n", "{}\n", "---\n"] {
            let error = RunOptions::parse(text, Path::new("agent.yaml"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                "invalid config file agent.yaml: it sets nothing (empty, or only comments): remove --config to run with defaults",
                "{text:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let message = RunOptions::parse("flush_intervall: 5s\n", Path::new("agent.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("agent.yaml") && message.contains("flush_intervall"),
            "{message}"
        );
        let message = RunOptions::parse("map-size: lots\n", Path::new("agent.yaml"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("map-size"), "{message}");
        let message = RunOptions::parse("flush-interval: soon\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("flush-interval") && message.contains("5s"),
            "{message}"
        );
        let message = RunOptions::parse("grpc-listen: here\n", Path::new("a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("grpc-listen"), "{message}");
    }

    #[test]
    fn dns_is_on_by_default_and_off_with_dns_false() {
        let on = RunConfig::resolve(options(&["x"])).unwrap();
        assert_eq!(on.datapath.dns.copy, flow_common::DnsCopy::Answers);
        assert_eq!(
            on.dns.map(|dns| dns.cache.max_entries),
            Some(flow_dns::NameCacheConfig::default().max_entries)
        );
        let sized = RunConfig::resolve(RunOptions {
            dns_max_entries: Some(500),
            ..options(&["x"])
        })
        .unwrap();
        assert_eq!(sized.dns.map(|dns| dns.cache.max_entries), Some(500));
        let off = RunConfig::resolve(RunOptions {
            dns: Some(false),
            ..options(&["x"])
        })
        .unwrap();
        assert_eq!(off.datapath.dns.copy, flow_common::DnsCopy::Off);
        assert_eq!(off.dns, None);
        assert_eq!(off.effective().dns, Some(false));
    }

    #[test]
    fn kubernetes_authz_resolves_with_its_ttl_and_excludes_the_access_file() {
        let listen = Some("127.0.0.1:4245".parse().unwrap());
        let api = |options: RunOptions| {
            RunConfig::resolve(RunOptions {
                grpc_listen: listen,
                ..options
            })
            .map(|config| config.api.unwrap().0.authz)
            .map_err(|error| error.to_string())
        };
        assert_eq!(api(options(&["x"])), Ok(Authz::File));
        assert_eq!(
            api(RunOptions {
                grpc_authz: Some(AuthzMode::Kubernetes),
                ..options(&["x"])
            }),
            Ok(Authz::Kubernetes {
                cache_ttl: Duration::from_secs(30)
            })
        );
        assert_eq!(
            api(RunOptions {
                grpc_authz: Some(AuthzMode::Kubernetes),
                authz_cache_ttl: Some(Duration::from_secs(5)),
                ..options(&["x"])
            }),
            Ok(Authz::Kubernetes {
                cache_ttl: Duration::from_secs(5)
            })
        );
        let refusals = [
            (
                RunOptions {
                    authz_cache_ttl: Some(Duration::from_secs(5)),
                    ..options(&["x"])
                },
                "invalid authz-cache-ttl 5s: --grpc-authz kubernetes as well: it is how long the cluster's answers are kept",
            ),
            (
                RunOptions {
                    grpc_authz: Some(AuthzMode::Kubernetes),
                    grpc_access: Some("access.yaml".into()),
                    ..options(&["x"])
                },
                "invalid grpc-access with --grpc-authz kubernetes: one of them: the access file or the cluster's RBAC",
            ),
            (
                RunOptions {
                    grpc_authz: Some(AuthzMode::Kubernetes),
                    authz_cache_ttl: Some(Duration::from_millis(500)),
                    ..options(&["x"])
                },
                "invalid authz-cache-ttl 500ms: from 1s to 1h",
            ),
        ];
        for (options, expected) in refusals {
            assert_eq!(api(options), Err(expected.to_owned()));
        }
        let file = RunOptions::parse(
            "grpc-authz: kubernetes\nauthz-cache-ttl: 45s\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        assert_eq!(
            (file.grpc_authz, file.authz_cache_ttl),
            (Some(AuthzMode::Kubernetes), Some(Duration::from_secs(45)))
        );
    }

    #[test]
    fn dns_flows_copy_queries_too_and_need_dns() {
        let on = RunConfig::resolve(options(&["x"])).unwrap();
        assert_eq!(on.dns.map(|dns| dns.flows), Some(false));
        assert_eq!(on.effective().dns_flows, Some(false));
        let flows = RunConfig::resolve(RunOptions {
            dns_flows: Some(true),
            ..options(&["x"])
        })
        .unwrap();
        assert_eq!(
            flows.datapath.dns.copy,
            flow_common::DnsCopy::AnswersAndQueries
        );
        assert_eq!(flows.dns.map(|dns| dns.flows), Some(true));
        assert_eq!(flows.effective().dns_flows, Some(true));
        let parsed = RunOptions::parse("dns-flows: true\n", Path::new("a.yaml")).unwrap();
        assert_eq!(parsed.dns_flows, Some(true));
        let message = RunConfig::resolve(RunOptions {
            dns: Some(false),
            dns_flows: Some(true),
            ..options(&["x"])
        })
        .unwrap_err()
        .to_string();
        assert!(message.contains("dns-flows"), "{message}");
        // Turned off explicitly with DNS off: nothing to refuse.
        let off = RunConfig::resolve(RunOptions {
            dns: Some(false),
            dns_flows: Some(false),
            ..options(&["x"])
        })
        .unwrap();
        assert_eq!(off.datapath.dns.copy, flow_common::DnsCopy::Off);
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let listen = || Some("127.0.0.1:4245".parse().unwrap());
        let cases: [(RunOptions, &str); 20] = [
            (
                RunOptions {
                    map_size: Some(0),
                    ..options(&["x"])
                },
                "map-size",
            ),
            (
                RunOptions {
                    dns_max_entries: Some(0),
                    ..options(&["x"])
                },
                "dns-max-entries",
            ),
            (
                RunOptions {
                    dns_max_entries: Some(10_000_001),
                    ..options(&["x"])
                },
                "dns-max-entries",
            ),
            (
                RunOptions {
                    dns: Some(false),
                    dns_max_entries: Some(5),
                    ..options(&["x"])
                },
                "dns-max-entries",
            ),
            (
                RunOptions {
                    spill_size: Some(5000),
                    ..options(&["x"])
                },
                "spill-size",
            ),
            (
                RunOptions {
                    flush_interval: Some(Duration::from_millis(10)),
                    ..options(&["x"])
                },
                "flush-interval",
            ),
            (
                RunOptions {
                    flush_interval: Some(Duration::from_secs(10)),
                    flow_idle_timeout: Some(Duration::from_secs(5)),
                    ..options(&["x"])
                },
                "flow-idle-timeout",
            ),
            (RunOptions::default(), "--interface"),
            (
                RunOptions {
                    grpc_tls_cert: Some("cert.pem".into()),
                    grpc_listen: listen(),
                    ..options(&["x"])
                },
                "grpc-tls-cert",
            ),
            (
                RunOptions {
                    grpc_client_ca: Some("ca.pem".into()),
                    grpc_listen: listen(),
                    ..options(&["x"])
                },
                "grpc-client-ca",
            ),
            (
                RunOptions {
                    grpc_subscriber_queue: Some(0),
                    grpc_listen: listen(),
                    ..options(&["x"])
                },
                "grpc-subscriber-queue",
            ),
            (
                RunOptions {
                    output_file_max_size: Some(10),
                    output_file: Some("/tmp/flows.jsonl".into()),
                    ..options(&["x"])
                },
                "output-file-max-size",
            ),
            // Settings that would be ignored without what they configure.
            (
                RunOptions {
                    output_file_keep: Some(3),
                    ..options(&["x"])
                },
                "invalid output-file-keep 3: --output-file PATH as well",
            ),
            (
                RunOptions {
                    grpc_buffer: Some(100),
                    ..options(&["x"])
                },
                "invalid grpc-buffer without --grpc-listen",
            ),
            (
                RunOptions {
                    grpc_allow_plaintext: Some(false),
                    ..options(&["x"])
                },
                "invalid grpc-allow-plaintext without --grpc-listen",
            ),
            (
                RunOptions {
                    tenant_label: Some("team".into()),
                    ..options(&["x"])
                },
                "tenant-label",
            ),
            (
                RunOptions {
                    identity_grace: Some(Duration::from_secs(60)),
                    ..options(&["x"])
                },
                "identity-grace",
            ),
            (
                RunOptions {
                    platform_namespaces: Some(vec!["dns".into()]),
                    ..options(&["x"])
                },
                "invalid platform-namespace dns: --inventory FILE or --kubernetes as well",
            ),
            (
                RunOptions {
                    flow_idle_timeout: Some(Duration::from_secs(25 * 3600)),
                    ..options(&["x"])
                },
                "flow-idle-timeout",
            ),
            (
                RunOptions {
                    inventory: Some("/tmp/inventory.yaml".into()),
                    identity_grace: Some(Duration::from_secs(25 * 3600)),
                    ..options(&["x"])
                },
                "at most 24h",
            ),
        ];
        for (options, key) in cases {
            let error = RunConfig::resolve(options).unwrap_err();
            assert!(error.to_string().contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn identity_settings_come_from_flags_or_file_and_one_source_only() {
        let config = RunConfig::resolve(options(&["x"]).over(file(
            "inventory: /tmp/inv.yaml\ntenant-label: team\nidentity-grace: 5m\n",
        )))
        .unwrap();
        let identity = config.identity.unwrap();
        assert_eq!(
            identity.source,
            IdentitySource::Inventory("/tmp/inv.yaml".into())
        );
        assert_eq!(identity.tenant_label, "team");
        assert_eq!(identity.grace, Duration::from_secs(300));
        assert_eq!(
            identity.platform_namespaces,
            BTreeSet::from(["kube-node-lease", "kube-public", "kube-system"].map(str::to_owned))
        );
        let config = RunConfig::resolve(options(&["x"]).over(file(
            "kubernetes: true\nplatform-namespaces: [kube-system, dns]\n",
        )))
        .unwrap();
        assert_eq!(
            config.identity.unwrap().platform_namespaces,
            BTreeSet::from(["dns", "kube-system"].map(str::to_owned))
        );
        let empty_name = RunOptions {
            kubernetes: Some(true),
            platform_namespaces: Some(vec![String::new()]),
            ..options(&["x"])
        };
        let error = RunConfig::resolve(empty_name).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid platform-namespace \"\": a namespace name, such as kube-system"
        );

        let both = RunOptions {
            inventory: Some("/tmp/x".into()),
            kubernetes: Some(true),
            ..options(&["x"])
        };
        let error = RunConfig::resolve(both).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("--inventory FILE or --kubernetes"),
            "{error}"
        );

        let short_grace = RunOptions {
            kubernetes: Some(true),
            identity_grace: Some(Duration::from_secs(1)),
            ..options(&["x"])
        };
        let error = RunConfig::resolve(short_grace).unwrap_err();
        assert!(error.to_string().contains("identity-grace"), "{error}");
    }

    #[test]
    fn the_effective_configuration_is_a_file_that_gives_the_same_configuration() {
        let layered = RunOptions {
            map_size: Some(4096),
            ..options(&["veth*", "azv*"])
        }
        .over(file(
            "exclude-interfaces: [veth0]\nflush-interval: 2s\ninventory: /tmp/inventory.yaml\ngrpc-listen: 127.0.0.1:4245\nstate-dir: /var/lib/flow-agent\ngraph-expiry: 30days\nmetrics-listen: 0.0.0.0:9090\n",
        ));
        let effective = RunConfig::resolve(layered).unwrap().effective();
        let text = yaml_serde::to_string(&effective).unwrap();
        for line in [
            "interfaces:\n- veth*\n- azv*\n",
            "exclude-interfaces:\n- veth0\n",
            "flush-interval: 2s\n",
            "map-size: 4096\n",
            "flow-idle-timeout: 2m\n",
            "attach-mode: auto\n",
            "inventory: /tmp/inventory.yaml\n",
            "kubernetes: false\n",
            "tenant-label: tenant\n",
            "platform-namespaces:\n- kube-node-lease\n- kube-public\n- kube-system\n",
            "grpc-buffer: 10000\n",
            "graph-expiry: 30days\n",
            "graph-max-edges: 200000\n",
            "metrics-listen: 0.0.0.0:9090\n",
            "metrics-workload-pairs: 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let again =
            RunConfig::resolve(RunOptions::parse(&text, Path::new("printed.yaml")).unwrap())
                .unwrap()
                .effective();
        assert_eq!(again, effective);
    }

    #[test]
    fn api_and_file_settings_resolve_with_defaults() {
        let config = RunConfig::resolve(options(&["x"]).over(file(
            "grpc-listen: 127.0.0.1:4245\noutput-file: /var/log/flows.jsonl\n",
        )))
        .unwrap();
        let (api, hub) = config.api.unwrap();
        assert_eq!(api.grpc, Some("127.0.0.1:4245".parse().unwrap()));
        assert_eq!(api.hubble, None);
        assert_eq!(
            (api.tls, api.client_ca, api.allow_plaintext),
            (None, None, false)
        );
        assert_eq!(
            (hub.buffer, hub.subscriber_queue),
            (DEFAULT_GRPC_BUFFER, DEFAULT_GRPC_SUBSCRIBER_QUEUE)
        );
        let file = config.file.unwrap();
        assert_eq!(
            (file.max_bytes, file.keep),
            (DEFAULT_OUTPUT_FILE_MAX_SIZE, DEFAULT_OUTPUT_FILE_KEEP)
        );
    }

    #[test]
    fn hubble_alone_is_an_api_sharing_the_grpc_settings() {
        let config = RunConfig::resolve(
            options(&["x"]).over(file("hubble-listen: 127.0.0.1:4244\ngrpc-buffer: 500\n")),
        )
        .unwrap();
        let (api, hub) = config.api.clone().unwrap();
        assert_eq!(api.grpc, None);
        let hubble = api.hubble.unwrap();
        assert_eq!(hubble.listen, "127.0.0.1:4244".parse().unwrap());
        assert_eq!(hubble.tls_server_name, DEFAULT_HUBBLE_TLS_SERVER_NAME);
        assert_eq!(hub.buffer, 500);
        let printed = yaml_serde::to_string(&config.effective()).unwrap();
        assert!(
            printed.contains("hubble-listen: 127.0.0.1:4244\n"),
            "{printed}"
        );
        assert!(
            printed.contains("hubble-tls-server-name: '{node}.default.hubble-grpc.cilium.io'\n"),
            "{printed}"
        );
        for (options, expected) in [
            (
                RunOptions {
                    hubble_tls_server_name: Some("{node}.x".into()),
                    ..options(&["x"])
                },
                "hubble-tls-server-name {node}.x: --hubble-listen ADDR as well",
            ),
            (
                RunOptions {
                    hubble_listen: Some("127.0.0.1:4244".parse().unwrap()),
                    hubble_tls_server_name: Some("hubble.example".into()),
                    ..options(&["x"])
                },
                "a DNS name containing {node}",
            ),
            (
                RunOptions {
                    hubble_listen: Some("127.0.0.1:4244".parse().unwrap()),
                    hubble_tls_server_name: Some("{node}..example".into()),
                    ..options(&["x"])
                },
                "a DNS name containing {node}",
            ),
        ] {
            let error = RunConfig::resolve(options).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
