//! [`RunConfig::resolve`]: merged options validated and filled with defaults,
//! one group of related options at a time.
//!
//! Each group borrows its options and fills in, as it resolves them, the
//! values that take effect: the options so filled are the effective
//! configuration `flow-agent config print` writes, with each default stated
//! once, here. The options are destructured without `..`, so that an option
//! added to [`RunOptions`] and not resolved here fails to compile. A setting
//! that only means something beside another (TLS without an API, a rotation
//! size without a file) is refused rather than ignored, and left unset.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use super::{
    AUTHZ_CACHE_TTL_RANGE, CLOSED_CONNECTION_TIMEOUT, ConfigError, DEFAULT_AUTHZ_CACHE_TTL,
    DEFAULT_FLOW_IDLE_TIMEOUT, DEFAULT_FLUSH_INTERVAL, DEFAULT_GRAPH_MAX_EDGES,
    DEFAULT_GRPC_BUFFER, DEFAULT_GRPC_MAX_SUBSCRIBERS, DEFAULT_GRPC_SUBSCRIBER_QUEUE,
    DEFAULT_HUBBLE_TLS_SERVER_NAME, DEFAULT_IDENTITY_GRACE, DEFAULT_OUTPUT_FILE_KEEP,
    DEFAULT_OUTPUT_FILE_MAX_SIZE, DEFAULT_TENANT_LABEL, DnsSettings, IdentitySettings,
    IdentitySource, MAX_DNS_ENTRIES, MAX_MAP_SIZE, MAX_SPILL_SIZE, MAX_TIMEOUT, MIN_SPILL_SIZE,
    OutputFormat, RunConfig, RunOptions,
};
use crate::{
    api::{
        hub::HubSettings,
        server::{ApiSettings, Authz, AuthzMode, HubbleSettings},
    },
    datapath::{AttachMode, DatapathConfig, DnsCopySettings},
    flows::TrackerConfig,
    interfaces::InterfaceSelector,
    output::FileSinkSettings,
};
use flow_common::DnsCopy;
use flow_dns::NameCacheConfig;
use flow_policy::learner::LearnerSettings;

impl RunConfig {
    /// Validates merged options and fills in defaults. The options, filled
    /// in as each group resolves, are kept as the effective configuration.
    pub fn resolve(mut options: RunOptions) -> Result<Self, ConfigError> {
        let RunOptions {
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
        } = &mut options;
        let flush_interval = resolve_flush_interval(flush_interval)?;
        let tracker = resolve_tracker(flow_idle_timeout, flush_interval)?;
        let dns = resolve_dns(dns, dns_max_entries, dns_flows)?;
        let mut datapath = DatapathOptions {
            map_size,
            spill_size,
            attach_mode,
            ebpf_debug,
            pin_dir,
        }
        .resolve()?;
        datapath.dns.copy = match dns {
            None => DnsCopy::Off,
            Some(DnsSettings { flows: false, .. }) => DnsCopy::Answers,
            Some(DnsSettings { flows: true, .. }) => DnsCopy::AnswersAndQueries,
        };
        let identity = IdentityOptions {
            inventory,
            kubernetes,
            tenant_label,
            platform_namespaces,
            identity_grace,
        }
        .resolve(flush_interval)?;
        let api = ApiOptions {
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
        }
        .resolve()?;
        let file = FileOptions {
            output_file,
            output_file_max_size,
            output_file_keep,
        }
        .resolve()?;
        let learner = LearnerOptions {
            state_dir,
            graph_expiry,
            graph_max_edges,
        }
        .resolve(flush_interval)?;
        let interfaces = InterfaceSelector::new(
            &fill(interfaces, Vec::new),
            &fill(exclude_interfaces, Vec::new),
        )?;
        let metrics = resolve_metrics(*metrics_listen, metrics_workload_pairs)?;
        let wait_for_interfaces = fill(wait_for_interfaces, || false);
        let output = fill(output, OutputFormat::default);
        // An empty name (NODE_NAME set to nothing) is no name.
        node_name.take_if(|name| name.is_empty());
        let node_name = fill(node_name, hostname);
        let policies = policies.clone();
        Ok(Self {
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
            effective: options,
        })
    }
}

/// The option's value, or `default` written into it: resolving fills the
/// options in, and they become the effective configuration.
fn fill<T: Clone>(option: &mut Option<T>, default: impl FnOnce() -> T) -> T {
    option.get_or_insert_with(default).clone()
}

/// DNS copying, on unless `dns` is false; DNS flows only when asked for.
fn resolve_dns(
    dns: &mut Option<bool>,
    max_entries: &mut Option<usize>,
    flows: &mut Option<bool>,
) -> Result<Option<DnsSettings>, ConfigError> {
    if !fill(dns, || true) {
        if let Some(max_entries) = *max_entries {
            return Err(invalid(
                "dns-max-entries",
                max_entries,
                "unset when --dns=false",
            ));
        }
        if fill(flows, || false) {
            return Err(invalid("dns-flows", true, "unset when --dns=false"));
        }
        return Ok(None);
    }
    let defaults = NameCacheConfig::default();
    let max_entries = fill(max_entries, || defaults.max_entries);
    if !(1..=MAX_DNS_ENTRIES).contains(&max_entries) {
        return Err(invalid(
            "dns-max-entries",
            max_entries,
            "between 1 and 10000000",
        ));
    }
    Ok(Some(DnsSettings {
        cache: NameCacheConfig {
            max_entries,
            ..defaults
        },
        flows: fill(flows, || false),
    }))
}

fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn resolve_flush_interval(flush_interval: &mut Option<Duration>) -> Result<Duration, ConfigError> {
    let flush_interval = fill(flush_interval, || DEFAULT_FLUSH_INTERVAL);
    if flush_interval < Duration::from_millis(50) || flush_interval > Duration::from_secs(3600) {
        return Err(invalid(
            "flush-interval",
            human(flush_interval),
            "between 50ms and 1h",
        ));
    }
    Ok(flush_interval)
}

/// Without an explicit idle timeout, connections are remembered for at least
/// two flush intervals, so that long intervals keep their direction.
fn resolve_tracker(
    flow_idle_timeout: &mut Option<Duration>,
    flush_interval: Duration,
) -> Result<TrackerConfig, ConfigError> {
    let idle_timeout = fill(flow_idle_timeout, || {
        DEFAULT_FLOW_IDLE_TIMEOUT.max(2 * flush_interval)
    });
    if idle_timeout < flush_interval || idle_timeout > MAX_TIMEOUT {
        return Err(invalid(
            "flow-idle-timeout",
            human(idle_timeout),
            "at least the flush interval and at most 24h",
        ));
    }
    Ok(TrackerConfig {
        idle_timeout_ns: idle_timeout.as_nanos() as u64,
        closed_timeout_ns: CLOSED_CONNECTION_TIMEOUT.as_nanos() as u64,
    })
}

struct DatapathOptions<'a> {
    map_size: &'a mut Option<u32>,
    spill_size: &'a mut Option<u32>,
    attach_mode: &'a mut Option<AttachMode>,
    ebpf_debug: &'a mut Option<bool>,
    pin_dir: &'a mut Option<PathBuf>,
}

impl DatapathOptions<'_> {
    fn resolve(self) -> Result<DatapathConfig, ConfigError> {
        let map_entries = fill(self.map_size, crate::datapath::auto_map_entries);
        if map_entries == 0 || map_entries > MAX_MAP_SIZE {
            return Err(invalid(
                "map-size",
                map_entries,
                "between 1 and 16777216 flows",
            ));
        }
        let spill_bytes = fill(self.spill_size, || flow_common::DEFAULT_SPILL_BYTES);
        if !spill_bytes.is_power_of_two()
            || !(MIN_SPILL_SIZE..=MAX_SPILL_SIZE).contains(&spill_bytes)
        {
            return Err(invalid(
                "spill-size",
                spill_bytes,
                "a power of two between 4096 and 1073741824 bytes",
            ));
        }
        Ok(DatapathConfig {
            map_entries,
            spill_bytes,
            attach_mode: fill(self.attach_mode, AttachMode::default),
            ebpf_debug: fill(self.ebpf_debug, || false),
            paged_reads_only: false,
            precise_clock: false,
            pin_dir: self.pin_dir.clone(),
            dns: DnsCopySettings::default(),
        })
    }
}

struct IdentityOptions<'a> {
    inventory: &'a mut Option<PathBuf>,
    kubernetes: &'a mut Option<bool>,
    tenant_label: &'a mut Option<String>,
    platform_namespaces: &'a mut Option<Vec<String>>,
    identity_grace: &'a mut Option<Duration>,
}

impl IdentityOptions<'_> {
    fn resolve(
        mut self,
        flush_interval: Duration,
    ) -> Result<Option<IdentitySettings>, ConfigError> {
        let Some(source) = self.source()? else {
            return self.without_source().map(|()| None);
        };
        let platform_namespaces = self.platform_namespaces()?;
        *self.platform_namespaces = Some(platform_namespaces.iter().cloned().collect());
        let tenant_label = fill(self.tenant_label, || DEFAULT_TENANT_LABEL.to_owned());
        if tenant_label.is_empty() {
            return Err(invalid(
                "tenant-label",
                "\"\"",
                "a namespace label key, such as tenant",
            ));
        }
        // At least two flush intervals, so late flows still resolve.
        let grace = fill(self.identity_grace, || {
            DEFAULT_IDENTITY_GRACE.max(2 * flush_interval)
        });
        if grace < 2 * flush_interval || grace > MAX_TIMEOUT {
            return Err(invalid(
                "identity-grace",
                human(grace),
                "at least two flush intervals (so late flows still resolve) and at most 24h",
            ));
        }
        Ok(Some(IdentitySettings {
            source,
            tenant_label,
            platform_namespaces,
            grace,
        }))
    }

    /// The one source of identity, if any; `kubernetes` is filled in.
    fn source(&mut self) -> Result<Option<IdentitySource>, ConfigError> {
        match (&*self.inventory, fill(self.kubernetes, || false)) {
            (Some(_), true) => Err(invalid(
                "inventory",
                "together with kubernetes",
                "one identity source: --inventory FILE or --kubernetes",
            )),
            (Some(path), false) => Ok(Some(IdentitySource::Inventory(path.clone()))),
            (None, true) => Ok(Some(IdentitySource::Kubernetes)),
            (None, false) => Ok(None),
        }
    }

    /// The platform namespaces given, or the default ones. An empty name is
    /// refused: it would name no namespace.
    fn platform_namespaces(&self) -> Result<BTreeSet<String>, ConfigError> {
        let given = self.platform_namespaces.clone().unwrap_or_default();
        if given.iter().any(String::is_empty) {
            return Err(invalid(
                "platform-namespace",
                "\"\"",
                "a namespace name, such as kube-system",
            ));
        }
        Ok(flow_model::identity::platform_namespaces(given))
    }

    /// Identity settings without an identity source would be ignored.
    fn without_source(&self) -> Result<(), ConfigError> {
        if let Some(namespaces) = &self.platform_namespaces {
            return Err(invalid(
                "platform-namespace",
                namespaces.join(","),
                "--inventory FILE or --kubernetes as well: namespaces come from the identity",
            ));
        }
        if let Some(label) = &self.tenant_label {
            return Err(invalid(
                "tenant-label",
                label,
                "--inventory FILE or --kubernetes as well: tenants come from the identity",
            ));
        }
        if let Some(grace) = *self.identity_grace {
            return Err(invalid(
                "identity-grace",
                human(grace),
                "--inventory FILE or --kubernetes as well: it keeps deleted pods' identities",
            ));
        }
        Ok(())
    }
}

struct ApiOptions<'a> {
    grpc_listen: &'a mut Option<SocketAddr>,
    grpc_tls_cert: &'a mut Option<PathBuf>,
    grpc_tls_key: &'a mut Option<PathBuf>,
    grpc_client_ca: &'a mut Option<PathBuf>,
    grpc_access: &'a mut Option<PathBuf>,
    grpc_authz: &'a mut Option<AuthzMode>,
    authz_cache_ttl: &'a mut Option<Duration>,
    grpc_allow_plaintext: &'a mut Option<bool>,
    grpc_buffer: &'a mut Option<usize>,
    grpc_subscriber_queue: &'a mut Option<usize>,
    grpc_max_subscribers: &'a mut Option<usize>,
    hubble_listen: &'a mut Option<SocketAddr>,
    hubble_tls_server_name: &'a mut Option<String>,
}

impl ApiOptions<'_> {
    fn resolve(mut self) -> Result<Option<(ApiSettings, HubSettings)>, ConfigError> {
        self.without_listener()?;
        let hubble_tls_server_name = self.hubble_tls_server_name()?;
        // Without a listener, every other API setting is unset (checked
        // above) and stays so.
        if self.grpc_listen.is_none() && self.hubble_listen.is_none() {
            return Ok(None);
        }
        let authz = self.authz()?;
        let tls = self.tls()?;
        let hub = self.hub()?;
        let hubble =
            self.hubble_listen
                .zip(hubble_tls_server_name)
                .map(|(listen, tls_server_name)| HubbleSettings {
                    listen,
                    tls_server_name,
                });
        let api = ApiSettings {
            grpc: *self.grpc_listen,
            hubble,
            tls,
            client_ca: self.grpc_client_ca.clone(),
            access: self.grpc_access.clone(),
            authz,
            allow_plaintext: fill(self.grpc_allow_plaintext, || false),
        };
        Ok(Some((api, hub)))
    }

    /// Who authorizes: the file, or the cluster with its cache TTL. The two
    /// exclude each other, and a TTL means nothing for the file.
    fn authz(&mut self) -> Result<Authz, ConfigError> {
        match (
            fill(self.grpc_authz, || AuthzMode::File),
            *self.authz_cache_ttl,
        ) {
            (AuthzMode::File, None) => Ok(Authz::File),
            (AuthzMode::File, Some(ttl)) => Err(invalid(
                "authz-cache-ttl",
                human(ttl),
                "--grpc-authz kubernetes as well: it is how long the cluster's answers are kept",
            )),
            (AuthzMode::Kubernetes, _) if self.grpc_access.is_some() => Err(invalid(
                "grpc-access",
                "with --grpc-authz kubernetes".to_owned(),
                "one of them: the access file or the cluster's RBAC",
            )),
            (AuthzMode::Kubernetes, _) => {
                let cache_ttl = fill(self.authz_cache_ttl, || DEFAULT_AUTHZ_CACHE_TTL);
                if !AUTHZ_CACHE_TTL_RANGE.contains(&cache_ttl) {
                    return Err(invalid(
                        "authz-cache-ttl",
                        human(cache_ttl),
                        "from 1s to 1h",
                    ));
                }
                Ok(Authz::Kubernetes { cache_ttl })
            }
        }
    }

    /// API settings without an API would be ignored.
    fn without_listener(&self) -> Result<(), ConfigError> {
        if self.grpc_listen.is_some() || self.hubble_listen.is_some() {
            return Ok(());
        }
        let given = [
            ("grpc-tls-cert", self.grpc_tls_cert.is_some()),
            ("grpc-tls-key", self.grpc_tls_key.is_some()),
            ("grpc-client-ca", self.grpc_client_ca.is_some()),
            ("grpc-access", self.grpc_access.is_some()),
            ("grpc-authz", self.grpc_authz.is_some()),
            ("authz-cache-ttl", self.authz_cache_ttl.is_some()),
            ("grpc-allow-plaintext", self.grpc_allow_plaintext.is_some()),
            ("grpc-buffer", self.grpc_buffer.is_some()),
            (
                "grpc-subscriber-queue",
                self.grpc_subscriber_queue.is_some(),
            ),
            ("grpc-max-subscribers", self.grpc_max_subscribers.is_some()),
        ];
        match given.into_iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(invalid(
                key,
                "without --grpc-listen or --hubble-listen",
                "--grpc-listen ADDR or --hubble-listen ADDR as well: it configures the API",
            )),
            None => Ok(()),
        }
    }

    /// The Hubble API's server name template, filled in when it listens.
    fn hubble_tls_server_name(&mut self) -> Result<Option<String>, ConfigError> {
        if self.hubble_listen.is_none() {
            return match &self.hubble_tls_server_name {
                Some(template) => Err(invalid(
                    "hubble-tls-server-name",
                    template,
                    "--hubble-listen ADDR as well: it names the Hubble API's certificate",
                )),
                None => Ok(None),
            };
        }
        let name = fill(self.hubble_tls_server_name, || {
            DEFAULT_HUBBLE_TLS_SERVER_NAME.to_owned()
        });
        if !name.contains("{node}") || !valid_server_name(&name.replace("{node}", "node")) {
            return Err(invalid(
                "hubble-tls-server-name",
                &name,
                "a DNS name containing {node}, such as {node}.default.hubble-grpc.cilium.io",
            ));
        }
        Ok(Some(name))
    }

    fn tls(&self) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
        let tls = match (&*self.grpc_tls_cert, &*self.grpc_tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "grpc-tls-cert",
                    "without its key",
                    "both --grpc-tls-cert and --grpc-tls-key",
                ));
            }
        };
        if self.grpc_client_ca.is_some() && tls.is_none() {
            return Err(invalid(
                "grpc-client-ca",
                "without TLS",
                "--grpc-tls-cert and --grpc-tls-key as well: client certificates need TLS",
            ));
        }
        Ok(tls)
    }

    fn hub(&mut self) -> Result<HubSettings, ConfigError> {
        let buffer = fill(self.grpc_buffer, || DEFAULT_GRPC_BUFFER);
        if buffer > 10_000_000 {
            return Err(invalid("grpc-buffer", buffer, "at most 10000000 records"));
        }
        let subscriber_queue = fill(self.grpc_subscriber_queue, || DEFAULT_GRPC_SUBSCRIBER_QUEUE);
        if subscriber_queue == 0 || subscriber_queue > 1_000_000 {
            return Err(invalid(
                "grpc-subscriber-queue",
                subscriber_queue,
                "between 1 and 1000000",
            ));
        }
        let max_subscribers = fill(self.grpc_max_subscribers, || DEFAULT_GRPC_MAX_SUBSCRIBERS);
        if max_subscribers == 0 || max_subscribers > 10_000 {
            return Err(invalid(
                "grpc-max-subscribers",
                max_subscribers,
                "between 1 and 10000",
            ));
        }
        Ok(HubSettings {
            buffer,
            aggregate_buffer: (buffer / 10).max(100),
            subscriber_queue,
            max_subscribers,
        })
    }
}

struct FileOptions<'a> {
    output_file: &'a mut Option<PathBuf>,
    output_file_max_size: &'a mut Option<u64>,
    output_file_keep: &'a mut Option<u32>,
}

impl FileOptions<'_> {
    fn resolve(self) -> Result<Option<FileSinkSettings>, ConfigError> {
        let Some(path) = self.output_file.clone() else {
            if let Some(size) = self.output_file_max_size {
                return Err(invalid(
                    "output-file-max-size",
                    size,
                    "--output-file PATH as well",
                ));
            }
            if let Some(keep) = self.output_file_keep {
                return Err(invalid(
                    "output-file-keep",
                    keep,
                    "--output-file PATH as well",
                ));
            }
            return Ok(None);
        };
        let max_bytes = fill(self.output_file_max_size, || DEFAULT_OUTPUT_FILE_MAX_SIZE);
        if max_bytes < 4096 {
            return Err(invalid(
                "output-file-max-size",
                max_bytes,
                "at least 4096 bytes",
            ));
        }
        let keep = fill(self.output_file_keep, || DEFAULT_OUTPUT_FILE_KEEP);
        if keep > 1000 {
            return Err(invalid("output-file-keep", keep, "at most 1000 files"));
        }
        Ok(Some(FileSinkSettings {
            path,
            max_bytes,
            keep,
        }))
    }
}

struct LearnerOptions<'a> {
    state_dir: &'a mut Option<PathBuf>,
    graph_expiry: &'a mut Option<Duration>,
    graph_max_edges: &'a mut Option<usize>,
}

impl LearnerOptions<'_> {
    fn resolve(self, flush_interval: Duration) -> Result<Option<LearnerSettings>, ConfigError> {
        let max_edges = self.graph_max_edges.unwrap_or(DEFAULT_GRAPH_MAX_EDGES);
        if max_edges == 0 || max_edges > 10_000_000 {
            return Err(invalid(
                "graph-max-edges",
                max_edges,
                "between 1 and 10000000",
            ));
        }
        if let Some(expiry) = *self.graph_expiry
            && expiry < flush_interval
        {
            return Err(invalid(
                "graph-expiry",
                human(expiry),
                "at least the flush interval",
            ));
        }
        let Some(state_dir) = self.state_dir.clone() else {
            if self.graph_expiry.is_some() || self.graph_max_edges.is_some() {
                return Err(invalid(
                    "graph-expiry",
                    "without --state-dir",
                    "--state-dir DIR as well: the graph is learned there",
                ));
            }
            return Ok(None);
        };
        // Checked above, filled in only where it takes effect.
        *self.graph_max_edges = Some(max_edges);
        Ok(Some(LearnerSettings {
            state_dir,
            expiry: *self.graph_expiry,
            max_edges,
        }))
    }
}

/// Workload-pair series count only beside the metrics endpoint: filled in
/// there, refused without it unless zero.
fn resolve_metrics(
    metrics_listen: Option<SocketAddr>,
    metrics_workload_pairs: &mut Option<usize>,
) -> Result<Option<(SocketAddr, usize)>, ConfigError> {
    let pairs = metrics_workload_pairs.unwrap_or(0);
    if pairs > 100_000 {
        return Err(invalid(
            "metrics-workload-pairs",
            pairs,
            "at most 100000 series",
        ));
    }
    match metrics_listen {
        None if pairs > 0 => Err(invalid(
            "metrics-workload-pairs",
            "without --metrics-listen",
            "--metrics-listen ADDR as well",
        )),
        None => {
            *metrics_workload_pairs = None;
            Ok(None)
        }
        Some(listen) => {
            *metrics_workload_pairs = Some(pairs);
            Ok(Some((listen, pairs)))
        }
    }
}

fn invalid(key: &'static str, value: impl ToString, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        expected,
    }
}

/// Dot-separated labels of letters, digits and dashes.
fn valid_server_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
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
