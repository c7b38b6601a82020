//! Writes a proposal into a directory for a GitOps pull request: one file per
//! policy, `kustomization.yaml`, `REVIEW.md`, and a manifest that the next
//! export compares with (what is newly allowed, what no longer is) and uses
//! to remove the files of policies that went away. Files flow-agent did not
//! write are never touched.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::generate::{Note, PolicyFormat, Proposal, render};

/// The manifest's file name.
pub const MANIFEST: &str = ".flow-agent-export.json";

/// Errors writing an export.
#[derive(Debug, Error)]
pub enum ExportError {
    /// A file operation failed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A policy's file name is not a plain file name (a workload or
    /// namespace name that was not checked).
    #[error("refusing to write {name:?}: not a plain file name")]
    FileName {
        /// The name.
        name: String,
    },
    /// The previous export's manifest is damaged.
    #[error(
        "the previous export's manifest {path} is invalid ({message}); remove it to start afresh"
    )]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A name flow-agent may write or remove in the output directory: no
/// directory part, not hidden, no control characters.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    files: Vec<String>,
    allowed: Vec<String>,
}

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Files written (policies and kustomization).
    pub files: usize,
    /// Files of the previous export removed.
    pub removed: Vec<String>,
    /// Allowed lines new since the previous export.
    pub added: Vec<String>,
    /// Allowed lines gone since the previous export.
    pub dropped: Vec<String>,
    /// There was a previous export.
    pub had_previous: bool,
}

fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ExportError> {
    let temporary = path.with_extension("tmp-flow-agent");
    std::fs::write(&temporary, text).map_err(io_error("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error("replace", path))
}

/// Writes `proposal`, learned from every source, into `directory`.
pub fn export(
    directory: &Path,
    proposal: &Proposal,
    format: PolicyFormat,
) -> Result<ExportSummary, ExportError> {
    export_partial(directory, proposal, format, &[])
}

/// Writes `proposal` into `directory`; `missing` names the agents whose
/// graphs it lacks (`agent ADDR (node NODE): why`), which REVIEW.md lists
/// first: their nodes' traffic is not allowed unless other nodes saw it too.
pub fn export_partial(
    directory: &Path,
    proposal: &Proposal,
    format: PolicyFormat,
    missing: &[String],
) -> Result<ExportSummary, ExportError> {
    std::fs::create_dir_all(directory).map_err(io_error("create", directory))?;
    let manifest_path = directory.join(MANIFEST);
    let previous: Option<Manifest> = match std::fs::read(&manifest_path) {
        Ok(bytes) => {
            Some(
                serde_json::from_slice(&bytes).map_err(|error| ExportError::Manifest {
                    path: manifest_path.clone(),
                    message: error.to_string(),
                })?,
            )
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ExportError::Io {
                operation: "read",
                path: manifest_path,
                source,
            });
        }
    };
    let files = render(proposal, format);
    if let Some(name) = files.keys().find(|name| !is_plain_file_name(name)) {
        return Err(ExportError::FileName { name: name.clone() });
    }
    for (name, text) in &files {
        write_file(&directory.join(name), text)?;
    }
    let mut summary = ExportSummary {
        files: files.len(),
        had_previous: previous.is_some(),
        ..ExportSummary::default()
    };
    if let Some(previous) = &previous {
        for name in &previous.files {
            // Only plain names flow-agent wrote; never a path elsewhere.
            if files.contains_key(name) || !is_plain_file_name(name) {
                continue;
            }
            let path = directory.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => summary.removed.push(name.clone()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ExportError::Io {
                        operation: "remove",
                        path,
                        source,
                    });
                }
            }
        }
        let before: BTreeSet<&String> = previous.allowed.iter().collect();
        let after: BTreeSet<&String> = proposal.allowed.iter().collect();
        summary.added = after
            .difference(&before)
            .map(|line| (*line).clone())
            .collect();
        summary.dropped = before
            .difference(&after)
            .map(|line| (*line).clone())
            .collect();
    }
    write_file(
        &directory.join("REVIEW.md"),
        &review(proposal, format, &summary, missing),
    )?;
    let manifest = Manifest {
        version: 1,
        files: files.keys().cloned().collect(),
        allowed: proposal.allowed.clone(),
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|error| ExportError::Io {
        operation: "encode",
        path: manifest_path.clone(),
        source: io::Error::other(error),
    })?;
    write_file(&manifest_path, &(text + "\n"))?;
    Ok(summary)
}

fn section(out: &mut String, title: &str, lines: &[String], empty: &str) {
    out.push_str(&format!("\n## {title}\n\n"));
    if lines.is_empty() {
        out.push_str(empty);
        out.push('\n');
    }
    for line in lines {
        out.push_str(&format!("- `{line}`\n"));
    }
}

/// The reviewer's page: which agents' graphs are missing, what changed, what
/// needs a decision, and per workload what is allowed. Deterministic for a
/// given proposal, previous export and list of missing agents.
pub fn review(
    proposal: &Proposal,
    format: PolicyFormat,
    summary: &ExportSummary,
    missing: &[String],
) -> String {
    let mut out = String::from("# Proposed network policies\n\n");
    out.push_str(&format!(
        "Generated by flow-agent from {} observed edges: {} namespaces get a default deny, {} workloads a policy with {} rules ({}).\n",
        proposal.edges,
        proposal.namespaces.len(),
        proposal.policies.len(),
        proposal.rules(),
        match format {
            PolicyFormat::Networkpolicy => "networking.k8s.io/v1 NetworkPolicy",
            PolicyFormat::Cilium => "cilium.io/v2 CiliumNetworkPolicy",
        }
    ));
    if !missing.is_empty() {
        // Only when there are some: a complete run's page is the same
        // whichever sources it merged.
        section(
            &mut out,
            "Agents that did not answer (their nodes' traffic is missing: review before merging)",
            missing,
            "",
        );
    }
    out.push_str("\n## Changes since the previous export\n\n");
    if !summary.had_previous {
        out.push_str("First export into this directory.\n");
    } else if summary.added.is_empty() && summary.dropped.is_empty() && summary.removed.is_empty() {
        out.push_str("None: the same connections are allowed.\n");
    } else {
        for line in &summary.added {
            out.push_str(&format!("- allowed now: `{line}`\n"));
        }
        for line in &summary.dropped {
            out.push_str(&format!("- no longer allowed: `{line}`\n"));
        }
        for file in &summary.removed {
            out.push_str(&format!("- removed file: `{file}`\n"));
        }
    }
    let pick = |wanted: fn(&Note) -> Option<&String>| -> Vec<String> {
        proposal.notes.iter().filter_map(wanted).cloned().collect()
    };
    section(
        &mut out,
        "Cross-tenant edges left out (need a decision; `--allow-cross-tenant` includes them)",
        &pick(|note| match note {
            Note::CrossTenantExcluded(text) => Some(text),
            _ => None,
        }),
        "None.",
    );
    section(
        &mut out,
        "Cross-tenant edges included (`--allow-cross-tenant`)",
        &pick(|note| match note {
            Note::CrossTenantIncluded(text) => Some(text),
            _ => None,
        }),
        "None.",
    );
    section(
        &mut out,
        "Edges with addresses outside the workloads (ipBlock /32 or /128)",
        &pick(|note| match note {
            Note::External(text) => Some(text),
            _ => None,
        }),
        "None.",
    );
    section(
        &mut out,
        "Not allowed: NetworkPolicy cannot express them",
        &pick(|note| match note {
            Note::Unexpressible(text) | Note::Unselectable(text) => Some(text),
            _ => None,
        }),
        "None.",
    );
    section(
        &mut out,
        "Selectors that also select other workloads",
        &pick(|note| match note {
            Note::Overlap(text) => Some(text),
            _ => None,
        }),
        "None: every selector selects exactly one workload's pods.",
    );
    out.push_str("\n## Per workload\n");
    // Allowed lines start with the workload (which has no spaces): group them
    // in one pass.
    let mut by_workload: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in &proposal.allowed {
        if let Some((workload, rest)) = line.split_once(' ') {
            by_workload.entry(workload).or_default().push(rest);
        }
    }
    for policy in &proposal.policies {
        let labels: Vec<String> = policy
            .selection
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        out.push_str(&format!(
            "\n### {} (`{}`, selects `{}`)\n\n",
            policy.workload,
            policy.name,
            labels.join(",")
        ));
        let workload = policy.workload.to_string();
        for line in by_workload.get(workload.as_str()).into_iter().flatten() {
            out.push_str(&format!("- {line}\n"));
        }
    }
    out
}
