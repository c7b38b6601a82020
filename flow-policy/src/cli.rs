//! The policy commands' flags, shared by the `flow-policy` binary and
//! `flow-agent policy`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use flow_model::client::ConnectArgs;

/// Learn least-privilege NetworkPolicies from observed traffic, and judge
/// policies and changes to them against it. Builds on stable Rust alone, for
/// CI pipelines; `flow-agent policy` offers the same commands.
#[derive(Debug, Parser)]
#[command(name = "flow-policy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `flow_policy=debug`).
    #[arg(long, global = true, default_value = "info", env = "FLOW_POLICY_LOG")]
    pub log_level: String,
}

/// The policy commands, as `flow-policy COMMAND` and `flow-agent policy COMMAND`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Merge learned graphs (from agents, graph files or flow files) and write
    /// a default deny per namespace and one policy per workload, with a
    /// kustomization.yaml and a REVIEW.md.
    Generate(Box<GenerateArgs>),
    /// Report every observed connection a set of NetworkPolicies would deny
    /// (exit status 1 when there is one).
    Check(Box<CheckArgs>),
    /// Judge a change from one set of NetworkPolicies to another against
    /// observed traffic: the observed connections it breaks, the paths it
    /// opens (cross-tenant first, then never observed) and closes, as a
    /// Markdown summary for a pull request and a JUnit report.
    Diff(Box<DiffArgs>),
    /// Judge existing NetworkPolicies (ours or anyone's) against observed
    /// traffic, rule by rule: observed connections denied, allowances never
    /// used, over-broad constructs and cross-tenant openings, as AUDIT.md.
    Audit(Box<AuditArgs>),
}

/// Where learned traffic comes from.
///
/// Flags that only some sources use are refused without them, by the
/// policy commands (clap's `requires` errors span lines that the binary's
/// one-line errors would cut).
#[derive(Debug, Default, Args)]
pub struct GraphSources {
    /// An agent's gRPC address (repeatable): its learned graph.
    #[arg(long = "server", value_name = "ADDR")]
    pub servers: Vec<String>,
    /// Every agent of the cluster, found through the Kubernetes API
    /// (in-cluster service account or kubeconfig): the ready endpoints of
    /// their headless Service, or their pods with --agents-selector.
    #[arg(long)]
    pub kubernetes: bool,
    /// The agents' headless Service [default: flow-agent/flow-agent].
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        conflicts_with = "agents_selector"
    )]
    pub agents_service: Option<NamespacedName>,
    /// The name of the Service's gRPC port [default: grpc].
    #[arg(long, value_name = "NAME", conflicts_with = "agents_selector")]
    pub agents_port_name: Option<String>,
    /// Find the agents as the running pods with these labels (`key=value,...`)
    /// instead of through their Service.
    #[arg(long, value_name = "LABELS")]
    pub agents_selector: Option<String>,
    /// Namespace of the --agents-selector pods [default: flow-agent].
    #[arg(long, value_name = "NAMESPACE")]
    pub agents_namespace: Option<String>,
    /// gRPC port of the --agents-selector pods [default: 4245].
    #[arg(long, value_name = "PORT")]
    pub agents_port: Option<u16>,
    /// Agents asked at once; each graph is merged as it arrives and dropped,
    /// so memory holds at most this many graphs [default: 16, at most 256].
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub concurrency: Option<u16>,
    /// How long one agent may take to connect and send its graph [default: 10s].
    #[arg(long, value_parser = flow_model::parse_duration, value_name = "DURATION")]
    pub agent_timeout: Option<Duration>,
    /// Fail (exit status 2) when an agent does not answer, instead of
    /// finishing with the others (exit status 3).
    #[arg(long)]
    pub require_all_nodes: bool,
    /// A graph file saved with --save-graph (repeatable).
    #[arg(long = "graph", value_name = "FILE")]
    pub graphs: Vec<PathBuf>,
    /// A flow file (repeatable): our JSON lines or `hubble observe -o json`.
    #[arg(long = "flows", value_name = "FILE")]
    pub flows: Vec<PathBuf>,
    /// CA (PEM) to verify the agents' certificates.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", env = "FLOW_AGENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the agents' certificates; with --kubernetes, `{node}`
    /// stands for each agent's node name with dots as dashes
    /// (`{node}.flow-agent.example`), so one template fits every agent.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Bearer token.
    #[arg(long, env = "FLOW_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Kubernetes objects (`kubectl get namespaces,pods,replicasets,deployments,
    /// statefulsets,daemonsets,jobs,cronjobs -A -o yaml`): full pod labels,
    /// container ports and namespace labels.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Namespace label whose value names the tenant.
    #[arg(long, value_name = "KEY", default_value = "tenant")]
    pub tenant_label: String,
    /// A namespace of the platform, not of a tenant (repeatable): nothing
    /// with an end in one crosses tenants [default: kube-system,
    /// kube-public, kube-node-lease].
    #[arg(long = "platform-namespace", value_name = "NS")]
    pub platform_namespaces: Vec<String>,
}

/// A namespaced object's name, `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacedName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::str::FromStr for NamespacedName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
        }
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl GraphSources {
    /// Connection flags for one server, under `timeout`.
    pub fn connect(&self, server: &str, timeout: Duration) -> ConnectArgs {
        ConnectArgs {
            server: server.to_owned(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_server_name: self.tls_server_name.clone(),
            token: self.token.clone(),
            connect_timeout: timeout,
        }
    }
}

/// `policy generate` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 with every agent's graph, 3 when some agents did not \
answer (named on stderr and in REVIEW.md; the policies lack their nodes' traffic), 2 on \
an error: bad input, no agent answering at all, or any agent missing with --require-all-nodes."
)]
pub struct GenerateArgs {
    /// Where traffic comes from.
    #[command(flatten)]
    pub sources: GraphSources,
    /// Directory to write the policies into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
    /// Policy API.
    #[arg(long, value_enum, default_value = "networkpolicy")]
    pub format: crate::generate::PolicyFormat,
    /// Include edges between tenants (otherwise listed in REVIEW.md only).
    #[arg(long)]
    pub allow_cross_tenant: bool,
    /// Namespaces that get no policies (repeatable) [default: kube-system,
    /// kube-public, kube-node-lease].
    #[arg(long = "exclude-namespace", value_name = "NS")]
    pub exclude_namespaces: Vec<String>,
    /// Also write the merged graph to this file.
    #[arg(long, value_name = "FILE")]
    pub save_graph: Option<PathBuf>,
    /// Leave out edges seen on fewer than N connections (a UDP flow, or a
    /// connection open before the agent started, counts as one); REVIEW.md
    /// lists every edge left out.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub min_connections: Option<u64>,
    /// Leave out edges last seen more than DURATION (`12h`, `7d`, `2weeks`)
    /// before the newest edge of the graph (not before now: a saved graph
    /// gives the same policies whenever it is read); REVIEW.md lists every
    /// edge left out.
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub since: Option<Duration>,
    /// The address of a DNS resolver on every node that the inventory does
    /// not reveal, e.g. AKS LocalDNS's 169.254.10.11 (repeatable): DNS to it
    /// is allowed by address on UDP and TCP 53.
    #[arg(long = "node-local-dns", value_name = "ADDR")]
    pub node_local_dns: Vec<std::net::IpAddr>,
    /// With `--format cilium`: more than N names under one parent domain
    /// (below a registered domain, never a public suffix) become one
    /// `toFQDNs` `matchPattern`; fewer stay `matchName`s.
    #[arg(long, value_name = "N", default_value_t = crate::generate::fqdn::DEFAULT_PATTERN_THRESHOLD)]
    pub fqdn_pattern_threshold: usize,
}

/// Parses an age such as `12h`, `7d` or `2weeks`.
fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (use a duration such as 12h, 7d or 2weeks)"))
}

/// How `policy check` prints its report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A summary and one line per denied connection.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// `policy check` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when everything checked is allowed, 1 when anything \
would be denied, 3 when nothing is denied but some agents did not answer (named on \
stderr), 2 on an error: bad input, no agent answering at all, or any agent missing with \
--require-all-nodes."
)]
pub struct CheckArgs {
    /// NetworkPolicy files (a directory or one file).
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// What to check: every request in flow files, every edge agents learned.
    #[command(flatten)]
    pub sources: GraphSources,
    /// Report format on stdout.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: ReportFormat,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// `policy diff` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when the change keeps every observed connection allowed, \
opens no cross-tenant path and meets no --fail-on condition; 1 when it does not; 3 when it \
is clean but some agents did not answer; 2 on an error (bad input: a policy that does not \
parse, a missing graph)."
)]
pub struct DiffArgs {
    /// The policies before the change: a directory or one file. A path that
    /// does not exist stands for no policies (the change adds the first).
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The policies after the change. A path that does not exist stands for
    /// no policies (the change removes them all).
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// The observed traffic to judge the change against.
    #[command(flatten)]
    pub sources: GraphSources,
    /// Also write the Markdown summary to this file.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Write a JUnit report to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Fail also when a count exceeds a bound (repeatable): METRIC>N or
    /// METRIC>=N, METRIC one of broken-connections, cross-tenant-paths,
    /// unobserved-paths, opened-paths, closed-paths.
    #[arg(long = "fail-on", value_name = "CONDITION")]
    pub fail_on: Vec<crate::diff::FailCondition>,
}

/// `policy audit` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when the policies allow every observed connection and open \
nothing across tenants; 1 when they deny an observed connection or open a cross-tenant path; \
3 when neither but some agents did not answer; 2 on an error, and when some documents could \
not be read (the rest is still audited and reported)."
)]
pub struct AuditArgs {
    /// NetworkPolicy files (a directory or one file).
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// The observed traffic to audit against.
    #[command(flatten)]
    pub sources: GraphSources,
    /// Write AUDIT.md into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Also write everything found as one JSON document to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}
