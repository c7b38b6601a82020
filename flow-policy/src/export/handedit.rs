//! Files a person edited or wrote under the names an export uses: never
//! overwritten, never removed.
//!
//! A file is flow-agent's own, and an export may replace or remove it, when
//! it carries the label `app.kubernetes.io/managed-by: flow-agent` and its
//! content is still what its `flow-agent.io/content-hash` annotation says
//! ([`content_hash`]). Any other file under a name the export would write or
//! remove is left as it is; where the export's proposal for it says
//! something else, the proposal goes to the file's name with
//! [`PROPOSED_SUFFIX`] added, which no tool applies: kustomize reads only the
//! resources `kustomization.yaml` lists, and `kubectl apply -f DIR`, Argo CD,
//! `policy check` and `policy diff` only `.yaml`, `.yml` and `.json` files.

use std::{fmt, io, path::Path};

use hashbrown::HashSet;

use super::{ExportError, io_error, write_file};
use crate::generate::{
    MANAGED_BY,
    content_hash::{self, CONTENT_HASH_ANNOTATION, Seal},
};

/// Added to a hand-edited file's name for the proposal that would have
/// replaced it: `shop.allow-deployment-web.yaml.proposed`. flow-agent
/// rewrites and removes these files as its proposals change.
pub const PROPOSED_SUFFIX: &str = ".proposed";

/// Why a file counts as a person's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandEditReason {
    /// Not one YAML document (a person broke it, or added documents).
    NotYaml(String),
    /// No `app.kubernetes.io/managed-by: flow-agent` label: a person wrote it.
    NoLabel,
    /// The label, but no content hash annotation: a person wrote it, or a
    /// flow-agent from before the annotation did and its content changed since.
    NoContentHash,
    /// Its content no longer matches its content hash: a person edited it.
    Edited,
}

impl fmt::Display for HandEditReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotYaml(error) => write!(formatter, "not one valid YAML document ({error})"),
            Self::NoLabel => write!(
                formatter,
                "no `{}: {}` label: written by a person",
                MANAGED_BY.0, MANAGED_BY.1
            ),
            Self::NoContentHash => write!(
                formatter,
                "no `{CONTENT_HASH_ANNOTATION}` annotation: written by a person or an older flow-agent"
            ),
            Self::Edited => write!(
                formatter,
                "edited since flow-agent wrote it: its content no longer matches its `{CONTENT_HASH_ANNOTATION}` annotation"
            ),
        }
    }
}

/// What became of flow-agent's proposal for a hand-edited file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalPlace {
    /// It differs from the file, and went to this file.
    Written(String),
    /// The file already says what it proposes (comments, order and the
    /// annotation aside).
    Same,
    /// flow-agent proposes no such policy any more; an untouched file
    /// would have been removed.
    NoneAnyMore,
}

/// A file an export left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandEdited {
    /// The file's name in the directory.
    pub file: String,
    /// Why it counts as a person's.
    pub reason: HandEditReason,
    /// Where the proposal for it went.
    pub proposal: ProposalPlace,
}

impl fmt::Display for HandEdited {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            file,
            reason,
            proposal,
        } = self;
        write!(formatter, "`{file}`: {reason}; ")?;
        match proposal {
            ProposalPlace::Written(proposed) => write!(formatter, "proposal in `{proposed}`"),
            ProposalPlace::Same => write!(formatter, "it already says what flow-agent proposes"),
            ProposalPlace::NoneAnyMore => write!(
                formatter,
                "flow-agent proposes no such policy any more: remove the file if it is not wanted"
            ),
        }
    }
}

/// Whose a file is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owner {
    /// flow-agent's, untouched.
    FlowAgent,
    /// A person's.
    Person(HandEditReason),
}

/// Whose `bytes` are: flow-agent's when the managed-by label is there and
/// the content hash matches (one SHA-256 over the file); otherwise the file
/// is parsed, only to say why it is a person's.
fn owner(bytes: &[u8]) -> Owner {
    let label = format!("\n    {}: {}\n", MANAGED_BY.0, MANAGED_BY.1);
    let text = match std::str::from_utf8(bytes) {
        Ok(text) if content_hash::check(text) == Seal::Intact && text.contains(&label) => {
            return Owner::FlowAgent;
        }
        Ok(text) => text,
        Err(error) => return Owner::Person(HandEditReason::NotYaml(error.to_string())),
    };
    let document = match yaml_serde::from_str::<yaml_serde::Value>(text) {
        Ok(document) => document,
        Err(error) => return Owner::Person(HandEditReason::NotYaml(error.to_string())),
    };
    let metadata = |field: &str, key: &str| {
        document
            .get("metadata")
            .and_then(|metadata| metadata.get(field))
            .and_then(|map| map.get(key))
            .and_then(yaml_serde::Value::as_str)
            .map(str::to_owned)
    };
    let reason = if metadata("labels", MANAGED_BY.0).as_deref() != Some(MANAGED_BY.1) {
        HandEditReason::NoLabel
    } else if metadata("annotations", CONTENT_HASH_ANNOTATION).is_none() {
        HandEditReason::NoContentHash
    } else {
        HandEditReason::Edited
    };
    Owner::Person(reason)
}

/// A policy document as compared: parsed, without the content hash
/// annotation (and without `annotations` if that was the only one).
fn comparable(text: &str) -> Option<yaml_serde::Value> {
    let mut document: yaml_serde::Value = yaml_serde::from_str(text).ok()?;
    let metadata = document.get_mut("metadata")?.as_mapping_mut()?;
    if let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(yaml_serde::Value::as_mapping_mut)
    {
        annotations.remove(CONTENT_HASH_ANNOTATION);
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
    Some(document)
}

/// Whether a person's file says what flow-agent proposes (`proposed`):
/// the same document once parsed, the content hash aside.
fn says_the_same(bytes: &[u8], proposed: &str) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    match (comparable(text), comparable(proposed)) {
        (Some(current), Some(proposed)) => current == proposed,
        _ => false,
    }
}

/// `path`'s content, or `None` when there is no such file.
fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, ExportError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error("read", path)(source)),
    }
}

/// Writes and removes an export's files in a directory, leaving a person's
/// files as they are.
#[derive(Debug)]
pub(super) struct Placement<'a> {
    directory: &'a Path,
    /// The names of the files in the directory before the export: only
    /// these are read before being written.
    existing: HashSet<String>,
    /// Files left as they are, in the order met.
    pub(super) hand_edited: Vec<HandEdited>,
    /// Proposals written next to hand-edited files.
    pub(super) proposals: Vec<String>,
}

impl<'a> Placement<'a> {
    /// For `directory`, which exists.
    pub(super) fn new(directory: &'a Path) -> Result<Self, ExportError> {
        let existing = std::fs::read_dir(directory)
            .map_err(io_error("list", directory))?
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        Ok(Self {
            directory,
            existing,
            hand_edited: Vec::new(),
            proposals: Vec::new(),
        })
    }

    /// Writes a policy document as `name`, unless a person's file is there:
    /// then the document goes to `name` + [`PROPOSED_SUFFIX`] if it says
    /// something else.
    pub(super) fn write(&mut self, name: &str, text: &str) -> Result<(), ExportError> {
        let path = self.directory.join(name);
        let current = if self.existing.contains(name) {
            read_existing(&path)?
        } else {
            None
        };
        let Some(current) = current else {
            return write_file(&path, text);
        };
        if current == text.as_bytes() {
            // Already there, byte for byte.
            return Ok(());
        }
        let reason = match owner(&current) {
            Owner::FlowAgent => return write_file(&path, text),
            // What flow-agent wrote before the annotation, unchanged since:
            // it gains the annotation and nothing else.
            Owner::Person(_)
                if std::str::from_utf8(&current)
                    .is_ok_and(|current| content_hash::is_without_annotation(text, current)) =>
            {
                return write_file(&path, text);
            }
            Owner::Person(reason) => reason,
        };
        let proposal = if says_the_same(&current, text) {
            ProposalPlace::Same
        } else {
            let proposed = format!("{name}{PROPOSED_SUFFIX}");
            write_file(&self.directory.join(&proposed), text)?;
            self.proposals.push(proposed.clone());
            ProposalPlace::Written(proposed)
        };
        self.hand_edited.push(HandEdited {
            file: name.to_owned(),
            reason,
            proposal,
        });
        Ok(())
    }

    /// Removes a file of the previous export that this one does not write:
    /// a proposal always, a policy only if it is flow-agent's untouched.
    /// Returns whether it was removed; a person's is kept and listed.
    pub(super) fn remove(&mut self, name: &str) -> Result<bool, ExportError> {
        let path = self.directory.join(name);
        if !name.ends_with(PROPOSED_SUFFIX) {
            let Some(current) = read_existing(&path)? else {
                return Ok(false);
            };
            if let Owner::Person(reason) = owner(&current) {
                self.hand_edited.push(HandEdited {
                    file: name.to_owned(),
                    reason,
                    proposal: ProposalPlace::NoneAnyMore,
                });
                return Ok(false);
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(io_error("remove", &path)(source)),
        }
    }
}
