//! Writes a proposal into a directory for a GitOps pull request: one file per
//! policy, `kustomization.yaml`, `REVIEW.md`, and a manifest that the next
//! export compares with (what is newly allowed, what no longer is) and uses
//! to remove the files of policies that went away. Files flow-agent did not
//! write are never touched, and neither are its files a person edited since
//! ([`handedit`]): REVIEW.md lists those, and flow-agent's proposal for each
//! goes next to it.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::generate::{
    Note, PolicyFormat, Proposal, file_names, kustomization,
    rarity::{RARE_AGE, RARE_MAX_CONNECTIONS},
    rendered_policies,
};

mod handedit;

pub use handedit::{HandEditReason, HandEdited, PROPOSED_SUFFIX, ProposalPlace};

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

/// [`Manifest`] as written: borrowed, not a copy of every allowed line.
#[derive(Serialize)]
struct ManifestRef<'a> {
    version: u32,
    files: &'a BTreeSet<String>,
    allowed: &'a [String],
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
    /// Files a person edited or wrote, left as they are, sorted by name.
    pub hand_edited: Vec<HandEdited>,
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

/// [`write_file`] for large files, streamed through `write` rather than
/// held whole in memory first.
fn stream_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), ExportError> {
    let temporary = path.with_extension("tmp-flow-agent");
    let written = File::create(&temporary).and_then(|file| {
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        writer.flush()
    });
    written.map_err(io_error("write", &temporary))?;
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
    let previous = read_manifest(&manifest_path)?;
    let mut files = file_names(proposal);
    files.insert("kustomization.yaml".to_owned());
    if let Some(name) = files.iter().find(|name| !is_plain_file_name(name)) {
        return Err(ExportError::FileName { name: name.clone() });
    }
    let mut placement = handedit::Placement::new(directory)?;
    // Each file written as it is rendered: never all of them in memory.
    for (name, text) in rendered_policies(proposal, format) {
        placement.write(&name, &text)?;
    }
    let mut summary = ExportSummary {
        files: files.len(),
        had_previous: previous.is_some(),
        ..ExportSummary::default()
    };
    // What this export's kustomization and manifest list: its files, its
    // proposals, and the previous export's files a person kept.
    let mut listed = files.clone();
    listed.extend(placement.proposals.iter().cloned());
    if let Some(previous) = &previous {
        summary.removed = remove_stale_files(&mut placement, previous, &listed)?;
        (summary.added, summary.dropped) = changes(&previous.allowed, &proposal.allowed);
    }
    let mut resources = files.clone();
    resources.remove("kustomization.yaml");
    for kept in &placement.hand_edited {
        resources.insert(kept.file.clone());
        listed.insert(kept.file.clone());
    }
    write_file(
        &directory.join("kustomization.yaml"),
        &kustomization(resources.iter().map(String::as_str)),
    )?;
    summary.hand_edited = placement.hand_edited;
    summary.hand_edited.sort_by(|a, b| a.file.cmp(&b.file));
    stream_file(&directory.join("REVIEW.md"), |out| {
        write_review(out, proposal, format, &summary, missing)
    })?;
    let manifest = ManifestRef {
        version: 1,
        files: &listed,
        allowed: &proposal.allowed,
    };
    stream_file(&manifest_path, |out| {
        serde_json::to_writer_pretty(&mut *out, &manifest)?;
        out.write_all(b"\n")
    })?;
    Ok(summary)
}

/// The previous export's manifest, if there was one.
fn read_manifest(path: &Path) -> Result<Option<Manifest>, ExportError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| ExportError::Manifest {
                    path: path.to_owned(),
                    message: error.to_string(),
                })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ExportError::Io {
            operation: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The allowed lines `after` has and `before` has not (added), and the
/// other way round (dropped): each sorted, once each.
fn changes(before: &[String], after: &[String]) -> (Vec<String>, Vec<String>) {
    let before: BTreeSet<&String> = before.iter().collect();
    let after: BTreeSet<&String> = after.iter().collect();
    let only = |these: &BTreeSet<&String>, those: &BTreeSet<&String>| {
        these
            .difference(those)
            .map(|line| (*line).clone())
            .collect()
    };
    (only(&after, &before), only(&before, &after))
}

/// Removes the previous export's files that this one does not have, unless
/// a person edited them; returns the names of those removed.
fn remove_stale_files(
    placement: &mut handedit::Placement<'_>,
    previous: &Manifest,
    files: &BTreeSet<String>,
) -> Result<Vec<String>, ExportError> {
    let mut removed = Vec::new();
    for name in &previous.files {
        // Only plain names flow-agent wrote; never a path elsewhere.
        if files.contains(name) || !is_plain_file_name(name) {
            continue;
        }
        if placement.remove(name)? {
            removed.push(name.clone());
        }
    }
    Ok(removed)
}

fn section<'a>(
    out: &mut impl Write,
    title: &str,
    lines: impl IntoIterator<Item = &'a String>,
    empty: &str,
) -> io::Result<()> {
    write!(out, "\n## {title}\n\n")?;
    let mut none = true;
    for line in lines {
        none = false;
        writeln!(out, "- `{line}`")?;
    }
    if none {
        writeln!(out, "{empty}")?;
    }
    Ok(())
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
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and writes only UTF-8.
    let _ = write_review(&mut out, proposal, format, summary, missing);
    String::from_utf8_lossy(&out).into_owned()
}

/// [`review`], written to `out` as it is made (a large proposal's page is
/// tens of megabytes).
fn write_review(
    out: &mut impl Write,
    proposal: &Proposal,
    format: PolicyFormat,
    summary: &ExportSummary,
    missing: &[String],
) -> io::Result<()> {
    writeln!(
        out,
        "# Proposed network policies\n\nGenerated by flow-agent from {} observed edges: {} namespaces get a default deny, {} workloads a policy with {} rules ({}).",
        proposal.edges,
        proposal.namespaces.len(),
        proposal.policies.len(),
        proposal.rules(),
        match format {
            PolicyFormat::Networkpolicy => "networking.k8s.io/v1 NetworkPolicy",
            PolicyFormat::Cilium => "cilium.io/v2 CiliumNetworkPolicy",
        }
    )?;
    if !missing.is_empty() {
        // Only when there are some: a complete run's page is the same
        // whichever sources it merged.
        section(
            out,
            "Agents that did not answer (their nodes' traffic is missing: review before merging)",
            missing,
            "",
        )?;
    }
    write_changes(out, summary)?;
    write_hand_edited(out, &summary.hand_edited)?;
    write_notes(out, &proposal.notes)?;
    write_left_out(out, proposal)?;
    write_rare(out, &proposal.rare)?;
    write_resolvers(out, proposal)?;
    write_named_addresses(out, proposal, format)?;
    write_names_without_dns(out, proposal, format)?;
    out.write_all(crate::mermaid::reports::review_section(proposal).as_bytes())?;
    write_per_workload(out, proposal)
}

fn write_changes(out: &mut impl Write, summary: &ExportSummary) -> io::Result<()> {
    out.write_all(b"\n## Changes since the previous export\n\n")?;
    if !summary.had_previous {
        writeln!(out, "First export into this directory.")?;
    } else if summary.added.is_empty() && summary.dropped.is_empty() && summary.removed.is_empty() {
        writeln!(out, "None: the same connections are allowed.")?;
    } else {
        for line in &summary.added {
            writeln!(out, "- allowed now: `{line}`")?;
        }
        for line in &summary.dropped {
            writeln!(out, "- no longer allowed: `{line}`")?;
        }
        for file in &summary.removed {
            writeln!(out, "- removed file: `{file}`")?;
        }
    }
    Ok(())
}

/// The hand-edited files, only when there are some: an export into a
/// directory of flow-agent's own untouched files writes the same page as
/// before such files existed.
fn write_hand_edited(out: &mut impl Write, hand_edited: &[HandEdited]) -> io::Result<()> {
    if hand_edited.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n## Hand-edited policies left as they are\n\nflow-agent neither replaces nor removes these files, and `kustomization.yaml` keeps them. To take a proposal, move the `{PROPOSED_SUFFIX}` file over the policy's (or remove the policy's file): the next export manages it again.\n"
    )?;
    for file in hand_edited {
        writeln!(out, "- {file}")?;
    }
    Ok(())
}

fn write_notes(out: &mut impl Write, notes: &[Note]) -> io::Result<()> {
    let pick = |wanted: fn(&Note) -> Option<&String>| notes.iter().filter_map(wanted);
    section(
        out,
        "Cross-tenant edges left out (need a decision; `--allow-cross-tenant` includes them)",
        pick(|note| match note {
            Note::CrossTenantExcluded(text) => Some(text),
            _ => None,
        }),
        "None.",
    )?;
    section(
        out,
        "Cross-tenant edges included (`--allow-cross-tenant`)",
        pick(|note| match note {
            Note::CrossTenantIncluded(text) => Some(text),
            _ => None,
        }),
        "None.",
    )?;
    section(
        out,
        "Edges with addresses outside the workloads (ipBlock /32 or /128)",
        pick(|note| match note {
            Note::External(text) => Some(text),
            _ => None,
        }),
        "None.",
    )?;
    section(
        out,
        "Not allowed: NetworkPolicy cannot express them",
        pick(|note| match note {
            Note::Unexpressible(text) | Note::Unselectable(text) => Some(text),
            _ => None,
        }),
        "None.",
    )?;
    section(
        out,
        "Selectors that also select other workloads",
        pick(|note| match note {
            Note::Overlap(text) => Some(text),
            _ => None,
        }),
        "None: every selector selects exactly one workload's pods.",
    )
}

/// The edges `--min-connections` and `--since` left out, only when one was
/// given: without them the page is the same as before they existed.
fn write_left_out(out: &mut impl Write, proposal: &Proposal) -> io::Result<()> {
    let thresholds = &proposal.thresholds;
    if !thresholds.is_set() {
        return Ok(());
    }
    writeln!(
        out,
        "\n## Edges left out by --min-connections / --since\n\nNot allowed (`{thresholds}`; ages count from the newest edge): `policy check` reports their traffic as denied.\n"
    )?;
    if proposal.left_out.is_empty() {
        writeln!(out, "None.")?;
    }
    for left_out in &proposal.left_out {
        writeln!(out, "- {}", left_out.line(thresholds))?;
    }
    Ok(())
}

/// Edges allowed but seen rarely: a connection made once may be a probe or a
/// mistake rather than how the workload works.
fn write_rare(out: &mut impl Write, rare: &[super::generate::Sighting]) -> io::Result<()> {
    writeln!(
        out,
        "\n## Rarely seen edges\n\nAllowed, but seen on at most {RARE_MAX_CONNECTIONS} connections, on one day only of a graph that spans several, or last seen {} days or more before the newest edge: a probe or a mistake rather than how the workload works? `--min-connections` and `--since` leave such edges out.\n",
        RARE_AGE.as_secs() / 86_400
    )?;
    if rare.is_empty() {
        writeln!(out, "None.")?;
    }
    for sighting in rare {
        writeln!(out, "- {sighting}")?;
    }
    Ok(())
}

/// Per workload, the resolvers its DNS went to; only when some workload
/// queried DNS.
fn write_resolvers(out: &mut impl Write, proposal: &Proposal) -> io::Result<()> {
    if proposal.resolvers.is_empty() {
        return Ok(());
    }
    out.write_all(b"\n## DNS resolvers\n\nWhere each workload's DNS queries went. A node-local resolver (NodeLocal DNSCache, AKS LocalDNS) is allowed by address on UDP and TCP 53.\n\n")?;
    for (workload, resolvers) in &proposal.resolvers {
        let resolvers: Vec<&str> = resolvers.iter().map(String::as_str).collect();
        writeln!(out, "- `{workload}`: {}", resolvers.join("; "))?;
    }
    Ok(())
}

/// The outside addresses workloads resolved names to: what a reviewer needs
/// to read an ipBlock, and which ones break when their names move.
fn write_named_addresses(
    out: &mut impl Write,
    proposal: &Proposal,
    format: PolicyFormat,
) -> io::Result<()> {
    if proposal.named_addresses.is_empty() {
        return Ok(());
    }
    out.write_all(b"\n## Outside addresses by name\n\n")?;
    let changed = proposal
        .named_addresses
        .iter()
        .any(|address| address.changed);
    match format {
        PolicyFormat::Networkpolicy => {
            out.write_all(b"NetworkPolicy cannot name hosts: each address is allowed as itself (/32 or /128), here with the names the workloads resolved to it.")?;
            if changed {
                out.write_all(b" Addresses marked *changed* had a name that also resolved to another address during the window: their rules break when the name moves. `--format cilium` (Azure CNI powered by Cilium) allows them by name (`toFQDNs`).")?;
            }
        }
        PolicyFormat::Cilium => out.write_all(
            b"Allowed by name (`toFQDNs`), not by address; addresses marked *changed* show why.",
        )?,
    }
    out.write_all(b"\n\n")?;
    for address in &proposal.named_addresses {
        let names: Vec<&str> = address.names.iter().map(String::as_str).collect();
        let changed = if address.changed { " (*changed*)" } else { "" };
        writeln!(
            out,
            "- `{}`: {}{changed}",
            address.address,
            names.join(", ")
        )?;
    }
    Ok(())
}

/// The workloads whose rules by name cannot work in Cilium: no DNS edge was
/// learned for them, so no DNS rule sends their queries through Cilium's
/// proxy.
fn write_names_without_dns(
    out: &mut impl Write,
    proposal: &Proposal,
    format: PolicyFormat,
) -> io::Result<()> {
    if proposal.names_without_dns.is_empty() || format != PolicyFormat::Cilium {
        return Ok(());
    }
    out.write_all(b"\n## Warning: names without DNS\n\nThese workloads reached outside addresses by name, but no DNS edge of theirs was learned (it was left out, or their queries went where the agents do not see). Their policies get no DNS rule, so Cilium's DNS proxy never sees their answers and their `toFQDNs` rules never match: allow their DNS (or learn longer) before applying.\n\n")?;
    for workload in &proposal.names_without_dns {
        writeln!(out, "- `{workload}`")?;
    }
    Ok(())
}

fn write_per_workload(out: &mut impl Write, proposal: &Proposal) -> io::Result<()> {
    out.write_all(b"\n## Per workload\n")?;
    // Allowed lines start with the workload (which has no spaces): group them
    // in one pass.
    let mut by_workload: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in &proposal.allowed {
        if let Some((workload, rest)) = line.split_once(' ') {
            by_workload.entry(workload).or_default().push(rest);
        }
    }
    let mut workload = String::new();
    for policy in &proposal.policies {
        write!(
            out,
            "\n### {} (`{}`, selects `",
            policy.workload, policy.name
        )?;
        for (index, (key, value)) in policy.selection.labels.iter().enumerate() {
            let comma = if index == 0 { "" } else { "," };
            write!(out, "{comma}{key}={value}")?;
        }
        out.write_all(b"`)\n\n")?;
        workload.clear();
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut workload, format_args!("{}", policy.workload));
        for line in by_workload.get(workload.as_str()).into_iter().flatten() {
            writeln!(out, "- {line}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
