//! `flow-agent policy generate` and `flow-agent policy check`.

use std::{
    io::{self, Write},
    path::PathBuf,
};

use thiserror::Error;

use super::{
    check::{CheckReport, check},
    cluster::ClusterView,
    evaluate::{PolicyLoadError, load_policies},
    export::{ExportError, export},
    flowfile::{self, FlowFileError},
    generate::{DEFAULT_EXCLUDED_NAMESPACES, GenerateOptions, propose},
    graph::{Graph, GraphFile},
};
use crate::{
    api::convert,
    cli::{CheckArgs, GenerateArgs, GraphSources, ReportFormat},
    identity::inventory::{self, ReadError},
    observe::{self, ObserveError},
};

/// Errors of the policy commands.
#[derive(Debug, Error)]
pub enum PolicyCommandError {
    /// No traffic source was given.
    #[error("give at least one --server, --graph or --flows")]
    NoSource,
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
    /// An agent cannot be reached or refused.
    #[error(transparent)]
    Agent(#[from] ObserveError),
    /// An agent sent a graph that does not decode.
    #[error("{server} sent an invalid graph: {message}")]
    AgentGraph {
        /// The agent.
        server: String,
        /// What is wrong.
        message: String,
    },
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

/// Merges the graphs of every source.
pub async fn collect(sources: &GraphSources) -> Result<Graph, PolicyCommandError> {
    let GraphSources {
        servers,
        graphs,
        flows,
        tenant_label,
        ..
    } = sources;
    if servers.is_empty() && graphs.is_empty() && flows.is_empty() {
        return Err(PolicyCommandError::NoSource);
    }
    let mut merged = Graph::new();
    for server in servers {
        let mut client = observe::connect(&sources.connect(server)).await?;
        let response = client
            .get_graph(flow_proto::v1::GetGraphRequest {})
            .await
            .map_err(|status| ObserveError::Rpc {
                server: server.clone(),
                status: Box::new(status),
            })?
            .into_inner();
        let graph =
            convert::from_graph(&response).map_err(|message| PolicyCommandError::AgentGraph {
                server: server.clone(),
                message,
            })?;
        check_names(&graph, server)?;
        merged.merge(&graph);
    }
    for path in graphs {
        let invalid = |message: String| PolicyCommandError::GraphFile {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|error| invalid(error.to_string()))?;
        let file: GraphFile =
            serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
        let graph = Graph::from_file(file).map_err(invalid)?;
        check_names(&graph, &path.display().to_string())?;
        merged.merge(&graph);
    }
    for path in flows {
        let flows = flowfile::read(path, tenant_label)?;
        let mut graph = Graph::new();
        for record in &flows.records {
            graph.observe(record);
        }
        check_names(&graph, &path.display().to_string())?;
        merged.merge(&graph);
    }
    Ok(merged)
}

/// `policy generate`: prints a summary to `out`.
pub async fn generate(args: &GenerateArgs, out: &mut impl Write) -> Result<(), PolicyCommandError> {
    let GenerateArgs {
        sources,
        output_dir,
        format,
        allow_cross_tenant,
        exclude_namespaces,
        save_graph,
    } = args;
    let graph = collect(sources).await?;
    let mut cluster = cluster_view(sources.inventory.as_ref(), &sources.tenant_label)?;
    cluster.add_graph(&graph);
    if let Some(path) = save_graph {
        let text = serde_json::to_string_pretty(&graph.to_file()).map_err(|error| {
            PolicyCommandError::Write {
                path: path.clone(),
                source: io::Error::other(error),
            }
        })?;
        std::fs::write(path, text + "\n").map_err(write_error(path))?;
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
    };
    let proposal = propose(&graph, &cluster, &options);
    let summary = export(output_dir, &proposal, *format)?;
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
    writeln!(
        out,
        "wrote {} files and REVIEW.md to {}",
        summary.files,
        output_dir.display()
    )
    .map_err(write_error("-"))?;
    Ok(())
}

/// `policy check`: returns the report (the caller exits non-zero when it
/// denies anything).
pub fn run_check(
    args: &CheckArgs,
    out: &mut impl Write,
) -> Result<CheckReport, PolicyCommandError> {
    let CheckArgs {
        policies,
        flows,
        inventory,
        tenant_label,
        output,
        report: report_path,
    } = args;
    let policies = load_policies(policies)?;
    let mut cluster = cluster_view(inventory.as_ref(), tenant_label)?;
    let mut records = Vec::new();
    for path in flows {
        records.extend(flowfile::read(path, tenant_label)?.records);
    }
    let report = check(&records, &mut cluster, &policies);
    let json =
        serde_json::to_string_pretty(&report).map_err(|error| PolicyCommandError::Write {
            path: "-".into(),
            source: io::Error::other(error),
        })?;
    if let Some(path) = report_path {
        std::fs::write(path, format!("{json}\n")).map_err(write_error(path))?;
    }
    match output {
        ReportFormat::Json => writeln!(out, "{json}"),
        ReportFormat::Text => {
            let result = writeln!(
                out,
                "{} records, {} connections checked: {} allowed, {} denied ({} distinct); not judged: {} without identity, {} ICMP or other portless protocols",
                report.records,
                report.checked,
                report.allowed,
                report.denied_records(),
                report.denied.len(),
                report.unresolved,
                report.unexpressible,
            );
            report.denied.iter().try_fold((), |(), denial| {
                writeln!(
                    out,
                    "DENIED {} -> {} {}/{} ({} records; blocked by {})",
                    denial.source,
                    denial.destination,
                    denial.protocol,
                    denial.port,
                    denial.records,
                    denial.blocked_by.join(", ")
                )
            })
            .and(result)
        }
    }
    .map_err(write_error("-"))?;
    Ok(report)
}
