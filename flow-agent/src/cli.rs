//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use flow_model::client::ConnectArgs;
pub use flow_policy::cli::{
    CheckArgs, GenerateArgs, GraphSources, NamespacedName, PolicyCommand, ReportFormat,
};

use crate::config::{RunOptions, parse_duration};

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
    /// The flag and environment layer of the configuration.
    #[command(flatten)]
    pub options: RunOptions,
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
    use crate::datapath::AttachMode;

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
        let options = args.options;
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
            args.options
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

    /// The defaults are stated twice, as code where the configuration is
    /// resolved and as prose in `run --help`: this keeps the prose true.
    #[test]
    fn the_defaults_the_help_states_are_the_ones_that_take_effect() {
        let effective = |text: &str| {
            let options = RunOptions::parse(text, std::path::Path::new("agent.yaml")).unwrap();
            let config = crate::config::RunConfig::resolve(options).unwrap();
            serde_json::to_value(config.effective()).unwrap()
        };
        // Everything on, so that every option takes effect; the cache TTL
        // only with the cluster's authorization.
        let on = "interfaces: [x]\nkubernetes: true\ngrpc-listen: 127.0.0.1:4245\nhubble-listen: 127.0.0.1:4244\noutput-file: /tmp/flows.jsonl\nstate-dir: /tmp/state\nmetrics-listen: 127.0.0.1:9090\n";
        let file_authz = effective(on);
        let kubernetes_authz = effective(&format!("{on}grpc-authz: kubernetes\n"));
        // Defaults that depend on the node, or that are no value.
        let prose = ["map-size", "node-name", "graph-expiry"];
        let command = Cli::command();
        let run = command.find_subcommand("run").unwrap();
        let mut checked = Vec::new();
        for arg in run.get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some((_, stated)) = help.split_once("[default: ") else {
                continue;
            };
            let key = arg.get_id().as_str().replace('_', "-");
            if prose.contains(&key.as_str()) {
                continue;
            }
            let value = [&file_authz, &kubernetes_authz]
                .into_iter()
                .find_map(|effective| effective.get(&key))
                .unwrap_or_else(|| panic!("{key} is not in the effective configuration"));
            let stated = stated.split(']').next().unwrap();
            if let serde_json::Value::Array(values) = value {
                let mut stated: Vec<&str> = stated.split(", ").collect();
                stated.sort_unstable();
                let values: Vec<_> = values.iter().filter_map(|value| value.as_str()).collect();
                assert_eq!(stated, values, "{key}");
            } else {
                let value = match value {
                    serde_json::Value::String(text) => text.clone(),
                    value => value.to_string(),
                };
                assert_eq!(
                    stated.split([',', ';']).next(),
                    Some(value.as_str()),
                    "{key}"
                );
            }
            checked.push(key);
        }
        assert_eq!(
            checked,
            [
                "flush-interval",
                "spill-size",
                "flow-idle-timeout",
                "attach-mode",
                "output",
                "dns",
                "dns-max-entries",
                "dns-flows",
                "tenant-label",
                "platform-namespaces",
                "identity-grace",
                "grpc-authz",
                "authz-cache-ttl",
                "grpc-buffer",
                "grpc-subscriber-queue",
                "grpc-max-subscribers",
                "hubble-tls-server-name",
                "output-file-max-size",
                "output-file-keep",
                "graph-max-edges",
                "metrics-workload-pairs",
            ]
        );
    }
}
