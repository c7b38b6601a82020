//! Configuration of `flow-agent run`: command-line flags, environment variables
//! and a YAML file. All three fill the same [`RunOptions`], where each option
//! is declared once; flags win over the environment (clap reads both), which
//! wins over the file. [`RunConfig::resolve`] validates the merged options up
//! front, with errors that name the offending key, and fills in defaults.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod options;
mod resolve;

use flow_policy::learner::LearnerSettings;

pub use self::options::RunOptions;
use crate::{
    api::{hub::HubSettings, server::ApiSettings},
    datapath::DatapathConfig,
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
    /// The options as resolved: every one that takes effect, defaults
    /// filled in.
    effective: RunOptions,
}

impl RunConfig {
    /// Every setting as it takes effect, defaults filled in, in the file's
    /// form: `flow-agent config print`. Read back, it resolves to the same
    /// configuration.
    pub fn effective(&self) -> RunOptions {
        self.effective.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::api::server::{Authz, AuthzMode};

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
