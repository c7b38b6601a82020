//! Configuration of `flow-agent run`: command-line flags, environment variables
//! and a YAML file, merged in that order of precedence and validated up front
//! with errors that name the offending key.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    datapath::{AttachMode, DatapathConfig},
    flows::TrackerConfig,
    interfaces::{InterfaceError, InterfaceSelector},
};

/// Where flow records go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per flow record and line on stdout.
    #[default]
    Json,
    /// One JSON object per workload-to-workload aggregate and interval on stdout.
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
    /// How long deleted pods keep their identity.
    pub grace: Duration,
}

/// Default namespace label naming the tenant.
pub const DEFAULT_TENANT_LABEL: &str = "tenant";
/// Default time a deleted pod keeps its identity.
pub const DEFAULT_IDENTITY_GRACE: Duration = Duration::from_secs(120);

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

/// The `run` settings as they may appear in the YAML file; every key optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// Interface globs to watch.
    pub interfaces: Option<Vec<String>>,
    /// Interface globs to leave alone.
    pub exclude_interfaces: Option<Vec<String>>,
    /// Start even when no interface matches yet.
    pub wait_for_interfaces: Option<bool>,
    /// How often to drain the kernel maps, e.g. `5s`.
    pub flush_interval: Option<String>,
    /// Capacity of each flow map (default: what fits 64 MiB on this node).
    pub map_size: Option<u32>,
    /// Spill ring buffer size in bytes.
    pub spill_size: Option<u32>,
    /// Forget a connection's direction after this much quiet, e.g. `2m`
    /// (default: 2m, or two flush intervals if longer).
    pub flow_idle_timeout: Option<String>,
    /// `auto`, `tcx` or `tc`.
    pub attach_mode: Option<AttachMode>,
    /// `json` or `none`.
    pub output: Option<OutputFormat>,
    /// Log from the eBPF programs.
    pub ebpf_debug: Option<bool>,
    /// Name reported as the observing node.
    pub node_name: Option<String>,
    /// Inventory file of Kubernetes objects.
    pub inventory: Option<PathBuf>,
    /// Watch the Kubernetes API for identity.
    pub kubernetes: Option<bool>,
    /// Namespace label naming the tenant.
    pub tenant_label: Option<String>,
    /// How long deleted pods keep their identity, e.g. `2m`.
    pub identity_grace: Option<String>,
}

impl FileConfig {
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
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        yaml_serde::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }
}

/// The command-line and environment layer: `None` where not given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagConfig {
    /// `--interface`.
    pub interfaces: Vec<String>,
    /// `--exclude-interface`.
    pub exclude_interfaces: Vec<String>,
    /// `--wait-for-interfaces`.
    pub wait_for_interfaces: bool,
    /// `--flush-interval`.
    pub flush_interval: Option<Duration>,
    /// `--map-size`.
    pub map_size: Option<u32>,
    /// `--spill-size`.
    pub spill_size: Option<u32>,
    /// `--flow-idle-timeout`.
    pub flow_idle_timeout: Option<Duration>,
    /// `--attach-mode`.
    pub attach_mode: Option<AttachMode>,
    /// `--output`.
    pub output: Option<OutputFormat>,
    /// `--ebpf-debug`.
    pub ebpf_debug: bool,
    /// `--node-name` / `NODE_NAME`.
    pub node_name: Option<String>,
    /// `--inventory`.
    pub inventory: Option<PathBuf>,
    /// `--kubernetes`.
    pub kubernetes: bool,
    /// `--tenant-label`.
    pub tenant_label: Option<String>,
    /// `--identity-grace`.
    pub identity_grace: Option<Duration>,
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
}

/// Default flush interval.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Default connection idle timeout.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A TCP connection that saw FIN or RST is forgotten after this much quiet.
pub const CLOSED_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_MAP_SIZE: u32 = 1 << 24;
const MIN_SPILL_SIZE: u32 = 4096;
const MAX_SPILL_SIZE: u32 = 1 << 30;

fn duration(key: &'static str, text: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    text.map(|text| {
        humantime::parse_duration(text).map_err(|_| ConfigError::Invalid {
            key,
            value: text.to_owned(),
            expected: "a duration such as 500ms, 5s or 2m",
        })
    })
    .transpose()
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ret = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if ret != 0 {
        return "unknown".to_owned();
    }
    let end = buffer
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

impl RunConfig {
    /// Merges flags over the file over defaults, and validates the result.
    pub fn resolve(flags: FlagConfig, file: FileConfig) -> Result<Self, ConfigError> {
        let FlagConfig {
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
            node_name,
            inventory,
            kubernetes,
            tenant_label,
            identity_grace,
        } = flags;
        let FileConfig {
            interfaces: file_interfaces,
            exclude_interfaces: file_exclude_interfaces,
            wait_for_interfaces: file_wait_for_interfaces,
            flush_interval: file_flush_interval,
            map_size: file_map_size,
            spill_size: file_spill_size,
            flow_idle_timeout: file_flow_idle_timeout,
            attach_mode: file_attach_mode,
            output: file_output,
            ebpf_debug: file_ebpf_debug,
            node_name: file_node_name,
            inventory: file_inventory,
            kubernetes: file_kubernetes,
            tenant_label: file_tenant_label,
            identity_grace: file_identity_grace,
        } = file;

        let include = if interfaces.is_empty() {
            file_interfaces.unwrap_or_default()
        } else {
            interfaces
        };
        let exclude = if exclude_interfaces.is_empty() {
            file_exclude_interfaces.unwrap_or_default()
        } else {
            exclude_interfaces
        };
        let flush_interval = match flush_interval {
            Some(interval) => interval,
            None => duration("flush-interval", file_flush_interval.as_deref())?
                .unwrap_or(DEFAULT_FLUSH_INTERVAL),
        };
        if flush_interval < Duration::from_millis(50) || flush_interval > Duration::from_secs(3600)
        {
            return Err(ConfigError::Invalid {
                key: "flush-interval",
                value: humantime::format_duration(flush_interval).to_string(),
                expected: "between 50ms and 1h",
            });
        }
        let idle_timeout = match flow_idle_timeout {
            Some(timeout) => timeout,
            // Without an explicit value, remember connections for at least two
            // flush intervals so long intervals keep their direction.
            None => duration("flow-idle-timeout", file_flow_idle_timeout.as_deref())?
                .unwrap_or(DEFAULT_FLOW_IDLE_TIMEOUT.max(2 * flush_interval)),
        };
        if idle_timeout < flush_interval {
            return Err(ConfigError::Invalid {
                key: "flow-idle-timeout",
                value: humantime::format_duration(idle_timeout).to_string(),
                expected: "at least the flush interval",
            });
        }
        let map_entries = map_size
            .or(file_map_size)
            .unwrap_or_else(crate::datapath::auto_map_entries);
        if map_entries == 0 || map_entries > MAX_MAP_SIZE {
            return Err(ConfigError::Invalid {
                key: "map-size",
                value: map_entries.to_string(),
                expected: "between 1 and 16777216 flows",
            });
        }
        let spill_bytes = spill_size
            .or(file_spill_size)
            .unwrap_or(flow_common::DEFAULT_SPILL_BYTES);
        if !spill_bytes.is_power_of_two()
            || !(MIN_SPILL_SIZE..=MAX_SPILL_SIZE).contains(&spill_bytes)
        {
            return Err(ConfigError::Invalid {
                key: "spill-size",
                value: spill_bytes.to_string(),
                expected: "a power of two between 4096 and 1073741824 bytes",
            });
        }
        let node_name = node_name
            .or(file_node_name)
            .filter(|name| !name.is_empty())
            .unwrap_or_else(hostname);
        let inventory = inventory.or(file_inventory);
        let kubernetes = kubernetes || file_kubernetes.unwrap_or(false);
        let source = match (inventory, kubernetes) {
            (Some(_), true) => {
                return Err(ConfigError::Invalid {
                    key: "inventory",
                    value: "together with kubernetes".to_owned(),
                    expected: "one identity source: --inventory FILE or --kubernetes",
                });
            }
            (Some(path), false) => Some(IdentitySource::Inventory(path)),
            (None, true) => Some(IdentitySource::Kubernetes),
            (None, false) => None,
        };
        let tenant_label = tenant_label
            .or(file_tenant_label)
            .unwrap_or_else(|| DEFAULT_TENANT_LABEL.to_owned());
        if tenant_label.is_empty() {
            return Err(ConfigError::Invalid {
                key: "tenant-label",
                value: "\"\"".to_owned(),
                expected: "a namespace label key, such as tenant",
            });
        }
        let grace = match identity_grace {
            Some(grace) => grace,
            // Without an explicit value, at least two flush intervals.
            None => duration("identity-grace", file_identity_grace.as_deref())?
                .unwrap_or(DEFAULT_IDENTITY_GRACE.max(2 * flush_interval)),
        };
        if source.is_some() && grace < 2 * flush_interval {
            return Err(ConfigError::Invalid {
                key: "identity-grace",
                value: humantime::format_duration(grace).to_string(),
                expected: "at least two flush intervals, so late flows still resolve",
            });
        }

        Ok(Self {
            interfaces: InterfaceSelector::new(&include, &exclude)?,
            wait_for_interfaces: wait_for_interfaces || file_wait_for_interfaces.unwrap_or(false),
            flush_interval,
            datapath: DatapathConfig {
                map_entries,
                spill_bytes,
                attach_mode: attach_mode.or(file_attach_mode).unwrap_or_default(),
                ebpf_debug: ebpf_debug || file_ebpf_debug.unwrap_or(false),
                paged_reads_only: false,
            },
            tracker: TrackerConfig {
                idle_timeout_ns: idle_timeout.as_nanos() as u64,
                closed_timeout_ns: CLOSED_CONNECTION_TIMEOUT.as_nanos() as u64,
            },
            output: output.or(file_output).unwrap_or_default(),
            node_name,
            identity: source.map(|source| IdentitySettings {
                source,
                tenant_label,
                grace,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(interfaces: &[&str]) -> FlagConfig {
        FlagConfig {
            interfaces: interfaces.iter().map(|s| (*s).to_owned()).collect(),
            ..FlagConfig::default()
        }
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file = FileConfig::parse(
            "interfaces: [\"cali*\"]\nflush-interval: 2s\nmap-size: 1024\nnode-name: n1\n",
            Path::new("agent.yaml"),
        )
        .unwrap();
        let config = RunConfig::resolve(
            FlagConfig {
                map_size: Some(4096),
                ..flags(&["veth*"])
            },
            file,
        )
        .unwrap();
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
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let error =
            FileConfig::parse("flush_intervall: 5s\n", Path::new("agent.yaml")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("agent.yaml") && message.contains("flush_intervall"),
            "{message}"
        );

        let error = FileConfig::parse("map-size: lots\n", Path::new("agent.yaml")).unwrap_err();
        assert!(error.to_string().contains("map-size"), "{error}");

        let file = FileConfig::parse("flush-interval: soon\n", Path::new("a.yaml")).unwrap();
        let error = RunConfig::resolve(flags(&["x"]), file).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid flush-interval soon: a duration such as 500ms, 5s or 2m"
        );
    }

    #[test]
    fn identity_settings_come_from_flags_or_file_and_one_source_only() {
        let file = FileConfig::parse(
            "inventory: /tmp/inv.yaml\ntenant-label: team\nidentity-grace: 5m\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        let config = RunConfig::resolve(flags(&["x"]), file).unwrap();
        let identity = config.identity.unwrap();
        assert_eq!(
            identity.source,
            IdentitySource::Inventory("/tmp/inv.yaml".into())
        );
        assert_eq!(identity.tenant_label, "team");
        assert_eq!(identity.grace, Duration::from_secs(300));

        let config = RunConfig::resolve(flags(&["x"]), FileConfig::default()).unwrap();
        assert!(config.identity.is_none());

        let both = FlagConfig {
            inventory: Some("/tmp/x".into()),
            kubernetes: true,
            ..flags(&["x"])
        };
        let error = RunConfig::resolve(both, FileConfig::default()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("--inventory FILE or --kubernetes"),
            "{error}"
        );

        let short_grace = FlagConfig {
            kubernetes: true,
            identity_grace: Some(Duration::from_secs(1)),
            ..flags(&["x"])
        };
        let error = RunConfig::resolve(short_grace, FileConfig::default()).unwrap_err();
        assert!(error.to_string().contains("identity-grace"), "{error}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let cases: [(FlagConfig, &str); 5] = [
            (
                FlagConfig {
                    map_size: Some(0),
                    ..flags(&["x"])
                },
                "map-size",
            ),
            (
                FlagConfig {
                    spill_size: Some(5000),
                    ..flags(&["x"])
                },
                "spill-size",
            ),
            (
                FlagConfig {
                    flush_interval: Some(Duration::from_millis(10)),
                    ..flags(&["x"])
                },
                "flush-interval",
            ),
            (
                FlagConfig {
                    flush_interval: Some(Duration::from_secs(10)),
                    flow_idle_timeout: Some(Duration::from_secs(5)),
                    ..flags(&["x"])
                },
                "flow-idle-timeout",
            ),
            (flags(&[]), "--interface"),
        ];
        for (flags, key) in cases {
            let error = RunConfig::resolve(flags, FileConfig::default()).unwrap_err();
            assert!(error.to_string().contains(key), "{key}: {error}");
        }
    }
}
