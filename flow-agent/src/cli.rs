//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use flow_model::client::ConnectArgs;
pub use flow_policy::cli::{
    CheckArgs, GenerateArgs, GraphSources, NamespacedName, PolicyCommand, ReportFormat,
};

use crate::{
    api::server::AuthzMode,
    config::{OutputFormat, RunOptions, parse_duration},
    datapath::AttachMode,
};

/// eBPF flow observer and network-policy learner for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "flow-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FLOW_AGENT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `flow_agent=debug`).
    #[arg(long, global = true, default_value = "info", env = "FLOW_AGENT_LOG")]
    pub log_level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and report every flow.
    Run(Box<RunArgs>),
    /// Stream flows from an agent's gRPC API.
    Observe(Box<ObserveArgs>),
    /// Show an agent's state and counters.
    Status(ConnectArgs),
    /// Propose least-privilege policies from learned traffic, and check
    /// policies against it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The agent's configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Remove everything the agent pinned or attached: pinned links and maps,
    /// and its clsact filters. Run after uninstalling.
    Cleanup(CleanupArgs),
}

/// `flow-agent cleanup` flags.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The pin directory the agent used.
    #[arg(
        long,
        value_name = "DIR",
        env = "FLOW_AGENT_PIN_DIR",
        default_value = "/sys/fs/bpf/flow-agent"
    )]
    pub pin_dir: PathBuf,
    /// Interfaces to remove our clsact filters from (glob, repeatable) [default: all].
    #[arg(
        long = "interface",
        short = 'i',
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
}

/// `flow-agent config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration `run` would use with these flags, environment
    /// and file, defaults included, as a YAML file `--config` accepts.
    Print(Box<RunArgs>),
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// `flow-agent run` flags. Each may also come from the environment or the
/// configuration file (flags win, then environment, then the file).
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// YAML configuration file (keys as the long flags: `flush-interval: 5s`).
    #[arg(long, env = "FLOW_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Interfaces to watch (glob, repeatable): e.g. 'azv*', 'cali*', 'lxc*', 'veth*'.
    #[arg(
        long = "interface",
        short = 'i',
        value_name = "GLOB",
        env = "FLOW_AGENT_INTERFACES",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// Interfaces to leave alone even if they match (glob, repeatable).
    #[arg(
        long = "exclude-interface",
        value_name = "GLOB",
        env = "FLOW_AGENT_EXCLUDE_INTERFACES",
        value_delimiter = ','
    )]
    pub exclude_interfaces: Vec<String>,
    /// Start even if no interface matches yet; attach when one appears.
    #[arg(
        long,
        env = "FLOW_AGENT_WAIT_FOR_INTERFACES",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub wait_for_interfaces: Option<bool>,
    /// How often the kernel maps are drained and records emitted [default: 5s].
    #[arg(long, value_parser = duration, env = "FLOW_AGENT_FLUSH_INTERVAL")]
    pub flush_interval: Option<Duration>,
    /// Capacity of each of the two flow maps, in flows [default: what fits 64 MiB
    /// for both on this node's CPUs: 65536 up to 8 CPUs, about 10000 at 64].
    #[arg(long, env = "FLOW_AGENT_MAP_SIZE")]
    pub map_size: Option<u32>,
    /// Spill ring buffer size in bytes, used when a flow map is full [default: 262144].
    #[arg(long, env = "FLOW_AGENT_SPILL_SIZE")]
    pub spill_size: Option<u32>,
    /// Forget which end opened a connection after this much quiet [default: 2m].
    #[arg(long, value_parser = duration, env = "FLOW_AGENT_FLOW_IDLE_TIMEOUT")]
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
        value_parser = clap::builder::BoolishValueParser::new()
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
        value_parser = clap::builder::BoolishValueParser::new()
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
        value_parser = clap::builder::BoolishValueParser::new()
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
        value_parser = clap::builder::BoolishValueParser::new()
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
    pub platform_namespaces: Vec<String>,
    /// How long a deleted pod keeps its identity for flows seen before [default: 2m].
    #[arg(long, value_parser = duration, env = "FLOW_AGENT_IDENTITY_GRACE")]
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
    #[arg(long, value_parser = duration, value_name = "DURATION", env = "FLOW_AGENT_AUTHZ_CACHE_TTL")]
    pub authz_cache_ttl: Option<Duration>,
    /// Serve plaintext gRPC on a network address (loopback is always allowed).
    #[arg(
        long,
        env = "FLOW_AGENT_GRPC_ALLOW_PLAINTEXT",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
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
    #[arg(long, value_parser = duration, value_name = "DURATION", env = "FLOW_AGENT_GRAPH_EXPIRY")]
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

impl RunArgs {
    /// The flag and environment layer of the configuration.
    pub fn options(&self) -> RunOptions {
        let Self {
            config: _,
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
        let list = |values: &Vec<String>| (!values.is_empty()).then(|| values.clone());
        RunOptions {
            interfaces: list(interfaces),
            exclude_interfaces: list(exclude_interfaces),
            wait_for_interfaces: *wait_for_interfaces,
            flush_interval: *flush_interval,
            map_size: *map_size,
            spill_size: *spill_size,
            flow_idle_timeout: *flow_idle_timeout,
            attach_mode: *attach_mode,
            output: *output,
            ebpf_debug: *ebpf_debug,
            dns: *dns,
            dns_max_entries: *dns_max_entries,
            dns_flows: *dns_flows,
            node_name: node_name.clone(),
            inventory: inventory.clone(),
            kubernetes: *kubernetes,
            tenant_label: tenant_label.clone(),
            platform_namespaces: list(platform_namespaces),
            identity_grace: *identity_grace,
            grpc_listen: *grpc_listen,
            grpc_tls_cert: grpc_tls_cert.clone(),
            grpc_tls_key: grpc_tls_key.clone(),
            grpc_client_ca: grpc_client_ca.clone(),
            grpc_access: grpc_access.clone(),
            grpc_authz: *grpc_authz,
            authz_cache_ttl: *authz_cache_ttl,
            grpc_allow_plaintext: *grpc_allow_plaintext,
            grpc_buffer: *grpc_buffer,
            grpc_subscriber_queue: *grpc_subscriber_queue,
            grpc_max_subscribers: *grpc_max_subscribers,
            hubble_listen: *hubble_listen,
            hubble_tls_server_name: hubble_tls_server_name.clone(),
            output_file: output_file.clone(),
            output_file_max_size: *output_file_max_size,
            output_file_keep: *output_file_keep,
            state_dir: state_dir.clone(),
            graph_expiry: *graph_expiry,
            graph_max_edges: *graph_max_edges,
            policies: policies.clone(),
            metrics_listen: *metrics_listen,
            metrics_workload_pairs: *metrics_workload_pairs,
            pin_dir: pin_dir.clone(),
        }
    }
}

/// How `observe` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ObserveFormat {
    /// An aligned, readable table.
    #[default]
    Table,
    /// One JSON object per line, the agent's own record schema.
    Json,
    /// One JSON object per line in the shape `hubble observe -o json` prints.
    HubbleJson,
}

/// A connection direction, for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// The initiator's side.
    Request,
    /// The responder's side.
    Reply,
}

/// `flow-agent observe` flags.
#[derive(Debug, Default, Args)]
pub struct ObserveArgs {
    /// Where the agent is.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Keep streaming new flows.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The last N flows [default: 20 when neither --since nor --follow is given].
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// Flows since this long ago (e.g. 30s, 5m).
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub since: Option<Duration>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ObserveFormat::Table)]
    pub output: ObserveFormat,
    /// Per-interval workload aggregates instead of flows (json and table only).
    #[arg(long)]
    pub aggregates: bool,
    /// Either end in this namespace (repeatable).
    #[arg(long, value_name = "NS")]
    pub namespace: Vec<String>,
    /// Source in this namespace.
    #[arg(long, value_name = "NS")]
    pub from_namespace: Vec<String>,
    /// Destination in this namespace.
    #[arg(long, value_name = "NS")]
    pub to_namespace: Vec<String>,
    /// Either end in this tenant.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Vec<String>,
    /// Source in this tenant.
    #[arg(long, value_name = "TENANT")]
    pub from_tenant: Vec<String>,
    /// Destination in this tenant.
    #[arg(long, value_name = "TENANT")]
    pub to_tenant: Vec<String>,
    /// Either end of this workload (`name` or `Kind/name`).
    #[arg(long, value_name = "WORKLOAD")]
    pub workload: Vec<String>,
    /// Source workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub from_workload: Vec<String>,
    /// Destination workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub to_workload: Vec<String>,
    /// Either end is this pod.
    #[arg(long, value_name = "POD")]
    pub pod: Vec<String>,
    /// Source pod.
    #[arg(long, value_name = "POD")]
    pub from_pod: Vec<String>,
    /// Destination pod.
    #[arg(long, value_name = "POD")]
    pub to_pod: Vec<String>,
    /// Either end's address in this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub ip: Vec<String>,
    /// Source address in this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub from_ip: Vec<String>,
    /// Destination address in this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub to_ip: Vec<String>,
    /// Either end resolved by its peer from a DNS name matching this
    /// pattern (`*` for any run of name characters: `*.vault.azure.net`).
    #[arg(long, value_name = "PATTERN")]
    pub fqdn: Vec<String>,
    /// Source resolved from a matching DNS name.
    #[arg(long, value_name = "PATTERN")]
    pub from_fqdn: Vec<String>,
    /// Destination resolved from a matching DNS name.
    #[arg(long, value_name = "PATTERN")]
    pub to_fqdn: Vec<String>,
    /// Either end's port.
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u32>,
    /// Source port.
    #[arg(long, value_name = "PORT")]
    pub from_port: Vec<u32>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    pub to_port: Vec<u32>,
    /// Either end has this label (`key=value`, repeatable: all must hold).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Protocol: TCP, UDP, SCTP, ICMP, ICMPv6 (repeatable).
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Vec<String>,
    /// Only requests or only replies.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Only flows between different tenants.
    #[arg(long)]
    pub cross_tenant: bool,
    /// Only connections the approved policies would deny (an agent in
    /// monitor mode, `run --policies`).
    #[arg(long)]
    pub violations: bool,
    /// Leave out flows with either end in this namespace.
    #[arg(long, value_name = "NS")]
    pub not_namespace: Vec<String>,
    /// Leave out flows with either end of this workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub not_workload: Vec<String>,
    /// Leave out flows with either end in this IP or CIDR.
    #[arg(long, value_name = "IP|CIDR")]
    pub not_ip: Vec<String>,
    /// Leave out flows with either end on this port.
    #[arg(long, value_name = "PORT")]
    pub not_port: Vec<u32>,
    /// Leave out flows of this protocol.
    #[arg(long, value_name = "PROTOCOL")]
    pub not_protocol: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "flow-agent",
            "run",
            "-i",
            "veth*",
            "--interface",
            "fa-*,cali*",
            "--flush-interval",
            "250ms",
            "--map-size",
            "1024",
            "--attach-mode",
            "tc",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        let options = args.options();
        assert_eq!(options.interfaces.unwrap(), ["veth*", "fa-*", "cali*"]);
        assert_eq!(options.flush_interval, Some(Duration::from_millis(250)));
        assert_eq!(options.map_size, Some(1024));
        assert_eq!(options.attach_mode, Some(AttachMode::Tc));
        assert_eq!(options.wait_for_interfaces, None);
    }

    #[test]
    fn a_switch_set_in_the_file_can_be_turned_off_by_a_flag() {
        let run = |args: &[&str]| {
            let mut all = vec!["flow-agent", "run"];
            all.extend_from_slice(args);
            let Command::Run(args) = Cli::try_parse_from(all).unwrap().command else {
                panic!("run expected");
            };
            args.options()
        };
        let file = RunOptions::parse(
            "interfaces: [veth*]\nwait-for-interfaces: true\nebpf-debug: true\ngrpc-allow-plaintext: true\n",
            std::path::Path::new("agent.yaml"),
        )
        .unwrap();
        let off = run(&[
            "--wait-for-interfaces=false",
            "--ebpf-debug=no",
            "--grpc-allow-plaintext=0",
            "--kubernetes=false",
        ]);
        assert_eq!(
            (
                off.wait_for_interfaces,
                off.ebpf_debug,
                off.grpc_allow_plaintext,
                off.kubernetes
            ),
            (Some(false), Some(false), Some(false), Some(false))
        );
        let layered = off.over(file.clone());
        assert_eq!(layered.wait_for_interfaces, Some(false));
        assert_eq!(layered.grpc_allow_plaintext, Some(false));
        // A bare switch still means true; absent leaves the file's value.
        assert_eq!(
            run(&["--wait-for-interfaces"]).wait_for_interfaces,
            Some(true)
        );
        assert_eq!(run(&[]).over(file).ebpf_debug, Some(true));
        // `--switch value` is not taken as a value: `=` is needed.
        assert!(Cli::try_parse_from(["flow-agent", "run", "--kubernetes", "false"]).is_err());
    }

    #[test]
    fn agent_flags_parse_and_contradictions_are_refused() {
        let parse = |args: &[&str]| {
            let mut all = vec!["flow-agent", "policy", "generate", "--output-dir", "out"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        let Command::Policy(PolicyCommand::Generate(args)) = parse(&[
            "--kubernetes",
            "--agents-service",
            "monitoring/agents",
            "--concurrency",
            "256",
            "--agent-timeout",
            "3s",
            "--require-all-nodes",
        ])
        .unwrap()
        .command
        else {
            panic!("generate expected");
        };
        let GraphSources {
            kubernetes,
            agents_service,
            concurrency,
            agent_timeout,
            require_all_nodes,
            ..
        } = &args.sources;
        assert_eq!(
            (
                *kubernetes,
                agents_service.as_ref().map(ToString::to_string),
                *concurrency,
                *agent_timeout,
                *require_all_nodes
            ),
            (
                true,
                Some("monitoring/agents".to_owned()),
                Some(256),
                Some(Duration::from_secs(3)),
                true
            )
        );
        let refused = |args: &[&str], naming: &str| {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(naming), "{args:?}: {error}");
        };
        refused(
            &[
                "--kubernetes",
                "--agents-selector",
                "a=b",
                "--agents-port-name",
                "grpc",
            ],
            "'--agents-selector <LABELS>' cannot be used with '--agents-port-name <NAME>'",
        );
        refused(
            &["--kubernetes", "--concurrency", "0"],
            "0 is not in 1..=256",
        );
        refused(
            &["--kubernetes", "--concurrency", "257"],
            "257 is not in 1..=256",
        );
        refused(
            &["--kubernetes", "--agents-service", "flow-agent"],
            "expected NAMESPACE/NAME, got \"flow-agent\"",
        );
        // `policy check` takes the same sources.
        assert!(
            Cli::try_parse_from([
                "flow-agent",
                "policy",
                "check",
                "--policies",
                "p",
                "--kubernetes",
                "--agents-selector",
                "app=flow-agent",
                "--agents-port",
                "4250"
            ])
            .is_ok()
        );
    }

    #[test]
    fn bad_flags_are_rejected_with_the_flag_named() {
        let error =
            Cli::try_parse_from(["flow-agent", "run", "--flush-interval", "soon"]).unwrap_err();
        assert!(error.to_string().contains("--flush-interval"), "{error}");
        let error = Cli::try_parse_from(["flow-agent", "run", "--attach-mode", "xdp"]).unwrap_err();
        assert!(error.to_string().contains("xdp"), "{error}");
        let error = Cli::try_parse_from(["flow-agent", "observe", "--last=-5"]).unwrap_err();
        assert!(error.to_string().contains("--last"), "{error}");
    }
}
