//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{FlagConfig, OutputFormat},
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
    Run(RunArgs),
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (use a duration such as 500ms, 5s or 2m)"))
}

/// `flow-agent run` flags. Each may also come from the environment or the
/// configuration file (flags win, then environment, then the file).
#[derive(Debug, Args)]
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
    #[arg(long, env = "FLOW_AGENT_WAIT_FOR_INTERFACES")]
    pub wait_for_interfaces: bool,
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
    #[arg(long, env = "FLOW_AGENT_EBPF_DEBUG")]
    pub ebpf_debug: bool,
    /// Node name in records [default: $NODE_NAME, else the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Identity from a file of Kubernetes objects, as `kubectl get namespaces,pods,
    /// replicasets,deployments,statefulsets,daemonsets,jobs,cronjobs,services,
    /// endpointslices,nodes -A -o yaml` prints them; reread when it changes.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// Identity from the Kubernetes API (in-cluster service account or kubeconfig).
    #[arg(long, env = "FLOW_AGENT_KUBERNETES")]
    pub kubernetes: bool,
    /// Namespace label whose value names the tenant [default: tenant]; a
    /// namespace without it is its own tenant.
    #[arg(long, value_name = "KEY", env = "FLOW_AGENT_TENANT_LABEL")]
    pub tenant_label: Option<String>,
    /// How long a deleted pod keeps its identity for flows seen before [default: 2m].
    #[arg(long, value_parser = duration, env = "FLOW_AGENT_IDENTITY_GRACE")]
    pub identity_grace: Option<Duration>,
}

impl RunArgs {
    /// The flag layer of the configuration.
    pub fn flags(&self) -> FlagConfig {
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
            node_name,
            inventory,
            kubernetes,
            tenant_label,
            identity_grace,
        } = self;
        FlagConfig {
            interfaces: interfaces.clone(),
            exclude_interfaces: exclude_interfaces.clone(),
            wait_for_interfaces: *wait_for_interfaces,
            flush_interval: *flush_interval,
            map_size: *map_size,
            spill_size: *spill_size,
            flow_idle_timeout: *flow_idle_timeout,
            attach_mode: *attach_mode,
            output: *output,
            ebpf_debug: *ebpf_debug,
            node_name: node_name.clone(),
            inventory: inventory.clone(),
            kubernetes: *kubernetes,
            tenant_label: tenant_label.clone(),
            identity_grace: *identity_grace,
        }
    }
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
        let Command::Run(args) = cli.command;
        let flags = args.flags();
        assert_eq!(flags.interfaces, ["veth*", "fa-*", "cali*"]);
        assert_eq!(flags.flush_interval, Some(Duration::from_millis(250)));
        assert_eq!(flags.map_size, Some(1024));
        assert_eq!(flags.attach_mode, Some(AttachMode::Tc));
    }

    #[test]
    fn bad_flags_are_rejected_with_the_flag_named() {
        let error =
            Cli::try_parse_from(["flow-agent", "run", "--flush-interval", "soon"]).unwrap_err();
        assert!(error.to_string().contains("--flush-interval"), "{error}");
        let error = Cli::try_parse_from(["flow-agent", "run", "--attach-mode", "xdp"]).unwrap_err();
        assert!(error.to_string().contains("xdp"), "{error}");
    }
}
