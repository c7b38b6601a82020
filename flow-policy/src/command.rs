//! `policy generate` and `policy check`.

use std::{
    io::{self, Write},
    path::PathBuf,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use thiserror::Error;

use crate::{
    agents::{self, Agent, DiscoveryError, Lookup, Missing, Roster},
    audit,
    check::{CheckReport, EdgeCheckReport, check, check_edges},
    cli::{
        AuditArgs, CheckArgs, DiffArgs, GenerateArgs, GraphSources, NamespacedName, ReportFormat,
    },
    cluster::ClusterView,
    diff::{self, report},
    evaluate::{PolicyLoadError, load_policies, load_policy_set},
    export::{ExportError, export_partial},
    fetch::{self, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT},
    flowfile::{self, FlowFileError},
    generate::{DEFAULT_EXCLUDED_NAMESPACES, EdgeThresholds, GenerateOptions, propose},
    graph::{Graph, GraphFile},
};
use flow_model::{
    error_chain,
    identity::inventory::{self, ReadError},
};

/// Errors of the policy commands.
#[derive(Debug, Error)]
pub enum PolicyCommandError {
    /// Some documents could not be read; what could was reported.
    #[error("some policy documents could not be read (named above); the rest was audited")]
    BadInput,
    /// The async runtime cannot start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    /// No traffic source was given.
    #[error("give at least one --kubernetes, --server, --graph or --flows")]
    NoSource,
    /// Flags that do not work together.
    #[error("{0}")]
    Usage(String),
    /// The agents cannot be found.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Agents were asked and none answered.
    #[error("none of the {asked} agents answered")]
    NoAgentAnswered {
        /// Agents asked or known to be missing.
        asked: usize,
    },
    /// `--require-all-nodes`, and some agents did not answer.
    #[error("{missing} of {asked} agents did not answer (--require-all-nodes)")]
    Incomplete {
        /// Agents that did not.
        missing: usize,
        /// Agents asked or known to be missing.
        asked: usize,
    },
    /// A flow file is invalid.
    #[error(transparent)]
    Flows(#[from] FlowFileError),
    /// A graph file cannot be read or is invalid.
    #[error("invalid graph file {path}: {message}")]
    GraphFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The inventory cannot be read.
    #[error(transparent)]
    InventoryRead(#[from] ReadError),
    /// The inventory has invalid objects.
    #[error("invalid inventory: {0}")]
    Inventory(String),
    /// A source names a workload or namespace Kubernetes would not accept.
    #[error("{source_name}: {message}")]
    InvalidName {
        /// The agent or file.
        source_name: String,
        /// Which name and why.
        message: String,
    },
    /// Writing the policies failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The policies to check are invalid.
    #[error(transparent)]
    Policies(#[from] PolicyLoadError),
    /// Writing a file or the output failed.
    #[error("cannot write {path}")]
    Write {
        /// The file, or `-` for stdout.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn write_error(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PolicyCommandError {
    let path = path.into();
    move |source| PolicyCommandError::Write { path, source }
}

fn cluster_view(
    inventory_path: Option<&PathBuf>,
    tenant_label: &str,
) -> Result<ClusterView, PolicyCommandError> {
    let Some(path) = inventory_path else {
        return Ok(ClusterView::new());
    };
    let inventory = inventory::load(path)?;
    if !inventory.errors.is_empty() {
        let errors: Vec<String> = inventory.errors.iter().map(ToString::to_string).collect();
        return Err(PolicyCommandError::Inventory(errors.join("; ")));
    }
    Ok(ClusterView::from_objects(inventory.objects, tenant_label))
}

fn check_names(graph: &Graph, source_name: &str) -> Result<(), PolicyCommandError> {
    graph
        .check_names()
        .map_err(|message| PolicyCommandError::InvalidName {
            source_name: source_name.to_owned(),
            message,
        })
}

/// The merged graph, and which agents it lacks.
#[derive(Debug, Default)]
pub struct Collected {
    /// The merged graph.
    pub graph: Graph,
    /// Agents asked, or known to be missing.
    pub asked: usize,
    /// Agents whose graph is missing, sorted.
    pub missing: Vec<Missing>,
}

impl Collected {
    /// The missing agents as REVIEW.md and reports name them.
    pub fn missing_lines(&self) -> Vec<String> {
        self.missing.iter().map(ToString::to_string).collect()
    }
}

/// Refuses flags that the sources given would ignore.
fn check_usage(sources: &GraphSources) -> Result<(), PolicyCommandError> {
    let GraphSources {
        servers,
        kubernetes,
        agents_service,
        agents_port_name,
        agents_selector,
        agents_namespace,
        agents_port,
        concurrency,
        agent_timeout,
        require_all_nodes,
        graphs,
        flows,
        tls_server_name,
        ..
    } = sources;
    let agents = *kubernetes || !servers.is_empty();
    if !agents && graphs.is_empty() && flows.is_empty() {
        return Err(PolicyCommandError::NoSource);
    }
    let node_template = tls_server_name
        .as_ref()
        .is_some_and(|name| name.contains("{node}"));
    let ignored = [
        (
            !kubernetes
                && (agents_service.is_some()
                    || agents_port_name.is_some()
                    || agents_selector.is_some()),
            "--agents-service, --agents-port-name and --agents-selector need --kubernetes",
        ),
        (
            agents_selector.is_none() && (agents_namespace.is_some() || agents_port.is_some()),
            "--agents-namespace and --agents-port go with --agents-selector (a Service's endpoints say where its agents are)",
        ),
        (
            !agents && (concurrency.is_some() || agent_timeout.is_some() || *require_all_nodes),
            "--concurrency, --agent-timeout and --require-all-nodes need agents: --kubernetes or --server",
        ),
        (
            node_template && !kubernetes,
            "--tls-server-name with {node} needs --kubernetes, which says each agent's node",
        ),
    ];
    match ignored.iter().find(|(refused, _)| *refused) {
        Some((_, message)) => Err(PolicyCommandError::Usage((*message).to_owned())),
        None => Ok(()),
    }
}

/// Where `--kubernetes` finds the agents.
fn lookup(sources: &GraphSources) -> Lookup {
    let GraphSources {
        agents_service,
        agents_port_name,
        agents_selector,
        agents_namespace,
        agents_port,
        ..
    } = sources;
    match agents_selector {
        Some(selector) => Lookup::Pods {
            namespace: agents_namespace
                .clone()
                .unwrap_or_else(|| agents::DEFAULT_NAMESPACE.to_owned()),
            selector: selector.clone(),
            port: agents_port.unwrap_or(agents::DEFAULT_PORT),
        },
        None => Lookup::Service {
            service: agents_service.clone().unwrap_or_else(|| {
                let (namespace, name) = agents::DEFAULT_SERVICE;
                NamespacedName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
            }),
            port_name: agents_port_name
                .clone()
                .unwrap_or_else(|| agents::DEFAULT_PORT_NAME.to_owned()),
        },
    }
}

/// The agents of `--server` and `--kubernetes`.
async fn roster(sources: &GraphSources) -> Result<Roster, PolicyCommandError> {
    let mut roster = Roster::default();
    roster.extend(Roster {
        agents: sources
            .servers
            .iter()
            .map(|server| Agent {
                address: server.clone(),
                node: None,
            })
            .collect(),
        missing: Vec::new(),
    });
    if sources.kubernetes {
        let client = agents::client().await?;
        roster.extend(agents::discover(&client, &lookup(sources)).await?);
    }
    Ok(roster)
}

fn warn(warnings: &mut impl Write, missing: &Missing) {
    // Nowhere to report a failing stderr: the run goes on.
    let _ = writeln!(warnings, "warning: {missing}");
}

/// Merges the graphs of every agent (`--server`, `--kubernetes`), naming
/// each that does not answer on `warnings` as it fails.
async fn merge_agents(
    sources: &GraphSources,
    warnings: &mut impl Write,
) -> Result<Collected, PolicyCommandError> {
    let Roster { agents, missing } = roster(sources).await?;
    let asked = agents.len() + missing.len();
    if asked == 0 {
        return Ok(Collected::default());
    }
    missing.iter().for_each(|missing| warn(warnings, missing));
    let timeout = sources.agent_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut merged = Graph::new();
    let fetched = fetch::merge_agents(
        agents,
        sources.concurrency.map_or(DEFAULT_CONCURRENCY, usize::from),
        timeout,
        &mut merged,
        |agent| fetch::fetch_graph(sources, agent, timeout),
        |missing| warn(warnings, missing),
    )
    .await;
    let mut all_missing = missing;
    all_missing.extend(fetched.missing);
    all_missing.sort();
    if fetched.answered == 0 {
        return Err(PolicyCommandError::NoAgentAnswered { asked });
    }
    if sources.require_all_nodes && !all_missing.is_empty() {
        return Err(PolicyCommandError::Incomplete {
            missing: all_missing.len(),
            asked,
        });
    }
    Ok(Collected {
        graph: merged,
        asked,
        missing: all_missing,
    })
}

/// Merges `graph` into `merged`; the first graph is taken as it is, which
/// is what merging it into an empty one gives, without the copy.
fn merge_into(merged: &mut Graph, graph: Graph) {
    if merged.is_empty() && merged.workloads().next().is_none() {
        *merged = graph;
    } else {
        fetch::merge(merged, &graph);
    }
}

/// Merges the graphs of agents and graph files: what was learned, without
/// the flow files (which `policy check` judges record by record).
async fn collect_learned(
    sources: &GraphSources,
    warnings: &mut impl Write,
) -> Result<Collected, PolicyCommandError> {
    check_usage(sources)?;
    let mut collected = merge_agents(sources, warnings).await?;
    for path in &sources.graphs {
        let invalid = |message: String| PolicyCommandError::GraphFile {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|error| invalid(error.to_string()))?;
        let file: GraphFile =
            serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
        let graph = Graph::from_file(file).map_err(invalid)?;
        check_names(&graph, &path.display().to_string())?;
        merge_into(&mut collected.graph, graph);
    }
    Ok(collected)
}

/// Merges the graphs of every source; agents that do not answer are named
/// on `warnings` and in the result.
pub async fn collect(
    sources: &GraphSources,
    warnings: &mut impl Write,
) -> Result<Collected, PolicyCommandError> {
    let mut collected = collect_learned(sources, warnings).await?;
    for path in &sources.flows {
        let flows = flowfile::read(path, &tenancy(sources))?;
        let mut graph = Graph::new();
        for record in &flows.records {
            graph.observe(record);
        }
        check_names(&graph, &path.display().to_string())?;
        fetch::merge(&mut collected.graph, &graph);
    }
    // Complete: merged edge by edge, its maps are half empty.
    collected.graph = std::mem::take(&mut collected.graph).compacted();
    Ok(collected)
}

/// `policy generate`: prints a summary to `out` and each agent that did not
/// answer to `warnings`; returns those agents.
pub async fn generate(
    args: &GenerateArgs,
    out: &mut impl Write,
    warnings: &mut impl Write,
) -> Result<Vec<Missing>, PolicyCommandError> {
    let GenerateArgs {
        sources,
        output_dir,
        format,
        allow_cross_tenant,
        exclude_namespaces,
        save_graph,
        min_connections,
        since,
        node_local_dns,
        fqdn_pattern_threshold,
    } = args;
    let collected = collect(sources, warnings).await?;
    let graph = &collected.graph;
    let mut cluster = cluster_view(sources.inventory.as_ref(), &sources.tenant_label)?;
    cluster.add_graph(graph);
    if let Some(path) = save_graph {
        write_graph(path, graph)?;
    }
    let options = GenerateOptions {
        format: *format,
        allow_cross_tenant: *allow_cross_tenant,
        excluded_namespaces: if exclude_namespaces.is_empty() {
            DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|namespace| (*namespace).to_owned())
                .collect()
        } else {
            exclude_namespaces.iter().cloned().collect()
        },
        platform_namespaces: flow_model::identity::platform_namespaces(
            sources.platform_namespaces.iter().cloned(),
        ),
        thresholds: EdgeThresholds {
            min_connections: *min_connections,
            since: *since,
        },
        node_local_dns: node_local_dns.iter().copied().collect(),
        fqdn_pattern_threshold: *fqdn_pattern_threshold,
    };
    let proposal = propose(graph, &cluster, &options);
    let summary = export_partial(output_dir, &proposal, *format, &collected.missing_lines())?;
    let excluded = proposal
        .notes
        .iter()
        .filter(|note| matches!(note, super::generate::Note::CrossTenantExcluded(_)))
        .count();
    writeln!(
        out,
        "{} edges, {} workloads: {} namespaces with a default deny, {} workload policies, {} rules, {} allowed (workload, direction, peer, port) entries; {} cross-tenant edges left for review",
        graph.len(),
        graph.workloads().count(),
        proposal.namespaces.len(),
        proposal.policies.len(),
        proposal.rules(),
        proposal.allowed.len(),
        excluded,
    )
    .map_err(write_error("-"))?;
    if options.thresholds.is_set() {
        writeln!(
            out,
            "{} edges left out by {} (REVIEW.md lists them), {} rarely seen edges kept",
            proposal.left_out.len(),
            options.thresholds,
            proposal.rare.len(),
        )
        .map_err(write_error("-"))?;
    }
    if summary.had_previous {
        writeln!(
            out,
            "since the previous export: {} newly allowed, {} no longer allowed, {} files removed",
            summary.added.len(),
            summary.dropped.len(),
            summary.removed.len()
        )
        .map_err(write_error("-"))?;
    }
    if !summary.hand_edited.is_empty() {
        writeln!(
            out,
            "left {} hand-edited files as they are (REVIEW.md lists them)",
            summary.hand_edited.len()
        )
        .map_err(write_error("-"))?;
    }
    writeln!(
        out,
        "wrote {} files and REVIEW.md to {}",
        summary.files,
        output_dir.display()
    )
    .map_err(write_error("-"))?;
    print_coverage(&collected, out).map_err(write_error("-"))?;
    Ok(collected.missing)
}

fn write_graph(path: &PathBuf, graph: &Graph) -> Result<(), PolicyCommandError> {
    let text = serde_json::to_string_pretty(&graph.to_file()).map_err(|error| {
        PolicyCommandError::Write {
            path: path.clone(),
            source: io::Error::other(error),
        }
    })?;
    std::fs::write(path, text + "\n").map_err(write_error(path))
}

/// How many agents' graphs the result has, when agents were asked.
fn print_coverage(collected: &Collected, out: &mut impl Write) -> io::Result<()> {
    let Collected { asked, missing, .. } = collected;
    match (asked, missing.len()) {
        (0, _) => Ok(()),
        (asked, 0) => writeln!(out, "graphs from {asked} of {asked} agents"),
        (asked, missing) => writeln!(
            out,
            "graphs from {} of {asked} agents; {missing} did not answer (listed in REVIEW.md): the policies lack their nodes' traffic",
            asked - missing
        ),
    }
}

/// What `policy check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// The requests of the flow files.
    #[serde(flatten)]
    pub records: CheckReport,
    /// The edges of agents and graph files, when there were some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edges: Option<EdgeCheckReport>,
    /// Agents whose edges were not checked, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_agents: Vec<String>,
}

impl CheckOutcome {
    /// Whether the policies would deny anything checked.
    pub fn denies(&self) -> bool {
        !self.records.denied.is_empty()
            || self
                .edges
                .as_ref()
                .is_some_and(|edges| !edges.denied.is_empty())
    }
}

/// `policy check`: judges every request of the flow files and every edge
/// of the agents and graph files; prints the report to `out` and each agent
/// that did not answer to `warnings`. The caller exits non-zero when it
/// denies anything.
pub async fn run_check(
    args: &CheckArgs,
    out: &mut impl Write,
    warnings: &mut impl Write,
) -> Result<CheckOutcome, PolicyCommandError> {
    let CheckArgs {
        policies,
        sources,
        output,
        report: report_path,
    } = args;
    let policies = load_policy_set(policies)?;
    let learned = collect_learned(sources, warnings).await?;
    let mut cluster = cluster_view(sources.inventory.as_ref(), &sources.tenant_label)?;
    let mut records = Vec::new();
    for path in &sources.flows {
        records.extend(flowfile::read(path, &tenancy(sources))?.records);
    }
    let outcome = CheckOutcome {
        records: check(&records, &mut cluster, &policies),
        edges: (learned.asked > 0 || !sources.graphs.is_empty())
            .then(|| check_edges(&learned.graph, &mut cluster, &policies)),
        missing_agents: learned.missing_lines(),
    };
    let json =
        serde_json::to_string_pretty(&outcome).map_err(|error| PolicyCommandError::Write {
            path: "-".into(),
            source: io::Error::other(error),
        })?;
    if let Some(path) = report_path {
        std::fs::write(path, format!("{json}\n")).map_err(write_error(path))?;
    }
    match output {
        ReportFormat::Json => writeln!(out, "{json}"),
        ReportFormat::Text => print_check(&outcome, !sources.flows.is_empty(), out),
    }
    .map_err(write_error("-"))?;
    Ok(outcome)
}

/// The text report: a summary per kind of source, one line per denial.
fn print_check(outcome: &CheckOutcome, flows: bool, out: &mut impl Write) -> io::Result<()> {
    let CheckOutcome {
        records: report,
        edges,
        missing_agents,
    } = outcome;
    if flows {
        writeln!(
            out,
            "{} records, {} connections checked: {} allowed, {} denied ({} distinct); not judged: {} without identity, {} ICMP or other portless protocols",
            report.records,
            report.checked,
            report.allowed,
            report.denied_records(),
            report.denied.len(),
            report.unresolved,
            report.unexpressible,
        )?;
        for denial in &report.denied {
            writeln!(
                out,
                "DENIED {} -> {} {}/{} ({} records; blocked by {})",
                denial.source,
                denial.destination,
                denial.protocol,
                denial.port,
                denial.records,
                denial.blocked_by.join(", ")
            )?;
        }
    }
    if let Some(edges) = edges {
        writeln!(
            out,
            "{} learned edges, {} checked: {} allowed, {} denied; not judged: {} through untranslated Services, {} ICMP or other portless protocols",
            edges.edges,
            edges.checked,
            edges.allowed,
            edges.denied.len(),
            edges.unresolved,
            edges.unexpressible,
        )?;
        for denial in &edges.denied {
            writeln!(
                out,
                "DENIED {} -> {} {}/{} ({} connections; blocked by {})",
                denial.client,
                denial.server,
                denial.protocol,
                denial.port,
                denial.connections,
                denial.blocked_by.join(", ")
            )?;
        }
    }
    if !missing_agents.is_empty() {
        writeln!(
            out,
            "{} agents did not answer: their nodes' edges were not checked",
            missing_agents.len()
        )?;
    }
    Ok(())
}

/// What `policy diff` decided.
#[derive(Debug, PartialEq, Eq)]
pub struct DiffOutcome {
    /// The change breaks observed traffic, opens a cross-tenant path or meets
    /// a `--fail-on` condition.
    pub fails: bool,
    /// Agents whose edges were not judged.
    pub missing_agents: Vec<String>,
}

/// A policy directory or file; one that does not exist holds no policies.
fn policies_or_none(path: &std::path::Path) -> Result<Vec<NetworkPolicy>, PolicyCommandError> {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => Ok(load_policies(path)?),
    }
}

/// The observed traffic, named for the summary.
fn describe(sources: &GraphSources, collected: &Collected) -> String {
    let mut parts: Vec<String> = Vec::new();
    let agents = collected.asked - collected.missing.len();
    if collected.asked > 0 {
        parts.push(format!(
            "the graphs of {agents} of {} agents",
            collected.asked
        ));
    }
    parts.extend(
        sources
            .graphs
            .iter()
            .map(|path| format!("graph `{}`", path.display())),
    );
    parts.extend(
        sources
            .flows
            .iter()
            .map(|path| format!("flows `{}`", path.display())),
    );
    parts.join(", ")
}

/// `policy diff`: judges the change from `args.old` to `args.new`, prints
/// the Markdown summary to `out` and writes the files asked for.
pub async fn run_diff(
    args: &DiffArgs,
    out: &mut impl Write,
    warnings: &mut impl Write,
) -> Result<DiffOutcome, PolicyCommandError> {
    let DiffArgs {
        old,
        new,
        sources,
        summary,
        junit,
        fail_on,
    } = args;
    let (old, new) = (policies_or_none(old)?, policies_or_none(new)?);
    let collected = collect(sources, warnings).await?;
    let mut cluster = cluster_view(sources.inventory.as_ref(), &sources.tenant_label)?;
    let platform = platform(&sources.platform_namespaces);
    let judged = diff::diff(&old, &new, &collected.graph, &mut cluster, &platform);
    let markdown = report::markdown(&judged, fail_on, &describe(sources, &collected));
    if let Some(path) = summary {
        std::fs::write(path, &markdown).map_err(write_error(path))?;
    }
    if let Some(path) = junit {
        std::fs::write(path, report::junit(&judged, fail_on)).map_err(write_error(path))?;
    }
    out.write_all(markdown.as_bytes())
        .map_err(write_error("-"))?;
    Ok(DiffOutcome {
        fails: !report::failures(&judged, fail_on).is_empty(),
        missing_agents: collected.missing_lines(),
    })
}

/// How flow files' ends are told apart into tenants, by the flags.
fn tenancy(sources: &GraphSources) -> flowfile::Tenancy {
    flowfile::Tenancy {
        label: sources.tenant_label.clone(),
        platform: flow_model::identity::platform_namespaces(
            sources.platform_namespaces.iter().cloned(),
        ),
    }
}

/// The platform namespaces given, or the default ones.
fn platform(given: &[String]) -> Vec<String> {
    flow_model::identity::platform_namespaces(given.iter().cloned())
        .into_iter()
        .collect()
}

/// What `policy audit` decided.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditOutcome {
    /// The policies deny an observed connection or open a cross-tenant path.
    pub findings: bool,
    /// Some documents could not be read.
    pub bad_input: bool,
    /// Agents whose edges were not audited against.
    pub missing_agents: Vec<String>,
}

/// `policy audit`: prints AUDIT.md to `out`, writes it (and the JSON report)
/// where asked. Documents that cannot be read are named on `warnings`, and
/// the rest is audited.
pub async fn run_audit(
    args: &AuditArgs,
    out: &mut impl Write,
    warnings: &mut impl Write,
) -> Result<AuditOutcome, PolicyCommandError> {
    let AuditArgs {
        policies,
        sources,
        output_dir,
        report: report_path,
    } = args;
    let loaded = crate::load::load_all(policies)?;
    let errors: Vec<String> = loaded
        .errors
        .iter()
        .map(|error| error_chain(error))
        .collect();
    for error in &errors {
        // Nowhere to report a failing stderr: the audit goes on.
        let _ = writeln!(warnings, "warning: {error}");
    }
    let collected = collect(sources, warnings).await?;
    let mut cluster = cluster_view(sources.inventory.as_ref(), &sources.tenant_label)?;
    let platform = platform(&sources.platform_namespaces);
    let found = audit::audit(&loaded.policies, &collected.graph, &mut cluster, &platform);
    let tightening = audit::tighten::tighten(&loaded.policies, &collected.graph, &mut cluster);
    let files = audit::files::proposed_files(policies, &tightening);
    let how: Vec<(String, audit::rewrite::How)> = files
        .iter()
        .map(|file| (file.relative.clone(), file.rewritten.how.clone()))
        .collect();
    let written_to = output_dir
        .as_ref()
        .map(|directory| directory.display().to_string());
    let inputs = audit::report::Inputs {
        judged_against: &describe(sources, &collected),
        errors: &errors,
        skipped: &loaded.skipped,
        proposal: Some(audit::report::Proposal {
            tightening: &tightening,
            files: &how,
            output_dir: written_to.as_deref(),
        }),
    };
    let markdown = audit::report::markdown(&found, &inputs);
    if let Some(directory) = output_dir {
        std::fs::create_dir_all(directory).map_err(write_error(directory))?;
        audit::files::write_files(directory, &files)
            .map_err(|(path, source)| PolicyCommandError::Write { path, source })?;
        let path = directory.join("AUDIT.md");
        std::fs::write(&path, &markdown).map_err(write_error(&path))?;
    }
    if let Some(path) = report_path {
        let json =
            serde_json::to_string_pretty(&found).map_err(|error| PolicyCommandError::Write {
                path: path.clone(),
                source: io::Error::other(error),
            })?;
        std::fs::write(path, format!("{json}\n")).map_err(write_error(path))?;
    }
    out.write_all(markdown.as_bytes())
        .map_err(write_error("-"))?;
    Ok(AuditOutcome {
        findings: !found.denied.is_empty() || !found.cross_tenant.is_empty(),
        bad_input: !errors.is_empty(),
        missing_agents: collected.missing_lines(),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, PolicyCommand};

    fn usage(args: &[&str]) -> Result<(), String> {
        let mut all = vec!["flow-policy", "generate", "--output-dir", "out"];
        all.extend_from_slice(args);
        let PolicyCommand::Generate(args) = Cli::try_parse_from(all).unwrap().command else {
            panic!("generate expected");
        };
        check_usage(&args.sources).map_err(|error| error.to_string())
    }

    #[test]
    fn flags_the_sources_would_ignore_are_refused_naming_them() {
        for accepted in [
            &["--flows", "a.jsonl"][..],
            &["--server", "node-1:4245", "--concurrency", "2"],
            &[
                "--kubernetes",
                "--agents-service",
                "a/b",
                "--require-all-nodes",
            ],
            &[
                "--kubernetes",
                "--agents-selector",
                "app=a",
                "--agents-port",
                "1",
            ],
            &["--kubernetes", "--tls-server-name", "{node}.agents.example"],
        ] {
            assert_eq!(usage(accepted), Ok(()), "{accepted:?}");
        }
        let needs_kubernetes = Err(
            "--agents-service, --agents-port-name and --agents-selector need --kubernetes"
                .to_owned(),
        );
        assert_eq!(
            usage(&["--server", "x:1", "--agents-selector", "app=a"]),
            needs_kubernetes
        );
        assert_eq!(
            usage(&["--server", "x:1", "--agents-service", "a/b"]),
            needs_kubernetes
        );
        assert_eq!(
            usage(&["--kubernetes", "--agents-port", "4245"]),
            Err("--agents-namespace and --agents-port go with --agents-selector (a Service's endpoints say where its agents are)".to_owned())
        );
        let needs_agents = Err(
            "--concurrency, --agent-timeout and --require-all-nodes need agents: --kubernetes or --server"
                .to_owned(),
        );
        assert_eq!(usage(&["--flows", "a", "--concurrency", "4"]), needs_agents);
        assert_eq!(
            usage(&["--graph", "g", "--require-all-nodes"]),
            needs_agents
        );
        assert_eq!(
            usage(&["--server", "x:1", "--tls-server-name", "{node}.x"]),
            Err(
                "--tls-server-name with {node} needs --kubernetes, which says each agent's node"
                    .to_owned()
            )
        );
        assert_eq!(
            usage(&[]),
            Err("give at least one --kubernetes, --server, --graph or --flows".to_owned())
        );
    }
}
