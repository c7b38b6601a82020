//! Reading NetworkPolicies (and, for `policy check` and monitor mode,
//! Cilium's policies) from a directory or a file, going on past bad
//! documents: each problem names its file, document and field, and the
//! rest is still read.

use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::{
    cilium::{self, CLUSTERWIDE, NAMESPACED},
    evaluate::{PolicyLoadError, validate},
};

/// A policy and where it was read.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    /// The policy.
    pub policy: NetworkPolicy,
    /// Its file.
    pub file: PathBuf,
    /// Its 1-based document in the file.
    pub document: usize,
}

/// A Cilium policy and where it was read.
#[derive(Clone, Debug)]
pub struct LoadedCilium {
    /// The policy.
    pub policy: cilium::Policy,
    /// Its file.
    pub file: PathBuf,
    /// Its 1-based document in the file.
    pub document: usize,
}

/// A document of another kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its file.
    pub file: PathBuf,
    /// Its 1-based document.
    pub document: usize,
    /// Its kind, empty when it has none.
    pub kind: String,
}

/// Kinds that are policies, but not ones NetworkPolicy semantics judge.
const UNSUPPORTED: [&str; 2] = [NAMESPACED, CLUSTERWIDE];

/// What a directory holds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid NetworkPolicies, in file and document order.
    pub policies: Vec<LoadedPolicy>,
    /// Valid Cilium policies, when they were asked for.
    pub cilium: Vec<LoadedCilium>,
    /// Documents that are not valid, and policies of kinds that cannot be
    /// judged.
    pub errors: Vec<PolicyLoadError>,
    /// Documents of other kinds (a kustomization, ConfigMaps, other CRDs).
    pub skipped: Vec<Skipped>,
}

/// The `.yaml`, `.yml` and `.json` files of `path`, or `path` itself.
fn files(path: &Path) -> Result<Vec<PathBuf>, PolicyLoadError> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let read_error = |source| PolicyLoadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|file| {
            file.extension().is_some_and(|extension| {
                extension == "yaml" || extension == "yml" || extension == "json"
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every NetworkPolicy of `path` (a directory or one file):
/// multi-document files and `List`s are read. Only a directory that cannot
/// be listed is an error; everything else wrong is in [`Loaded::errors`].
/// Cilium's policies are errors: what reads these judges NetworkPolicies
/// alone.
pub fn load_all(path: &Path) -> Result<Loaded, PolicyLoadError> {
    load(path, false)
}

/// Reads every NetworkPolicy, CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy of `path`, as [`load_all`] reads.
pub fn load_all_kinds(path: &Path) -> Result<Loaded, PolicyLoadError> {
    load(path, true)
}

fn load(path: &Path, with_cilium: bool) -> Result<Loaded, PolicyLoadError> {
    let mut loaded = Loaded::default();
    for file in files(path)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => read_file(&file, &text, with_cilium, &mut loaded),
            Err(source) => loaded
                .errors
                .push(PolicyLoadError::Read { path: file, source }),
        }
    }
    Ok(loaded)
}

/// What the text of `file` holds, read as [`load_all`] reads a file.
pub fn read_text(file: &Path, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    read_file(file, text, false, &mut loaded);
    loaded
}

fn read_file(file: &Path, text: &str, with_cilium: bool, loaded: &mut Loaded) {
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let invalid = |message: String| PolicyLoadError::Invalid {
            path: file.to_owned(),
            document: document_number,
            message,
        };
        let value = match <yaml_serde::Value as serde::Deserialize>::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                // Past a syntax error the parser has no footing: it would
                // report the same error for ever.
                loaded.errors.push(invalid(error.to_string()));
                break;
            }
        };
        let kind = value
            .get("kind")
            .and_then(yaml_serde::Value::as_str)
            .unwrap_or_default();
        let items = match kind {
            "NetworkPolicy" => vec![value],
            "List" | "NetworkPolicyList" => list_items(&value),
            NAMESPACED | CLUSTERWIDE if with_cilium => {
                match cilium::Policy::from_value(value) {
                    Ok(policy) => loaded.cilium.push(LoadedCilium {
                        policy,
                        file: file.to_owned(),
                        document: document_number,
                    }),
                    Err(error) => loaded.errors.push(invalid(error.to_string())),
                }
                continue;
            }
            unsupported if UNSUPPORTED.contains(&unsupported) => {
                loaded.errors.push(invalid(format!(
                    "{unsupported} cannot be judged with NetworkPolicy semantics: only policy check and monitor mode judge Cilium's policies"
                )));
                continue;
            }
            other => {
                loaded.skipped.push(Skipped {
                    file: file.to_owned(),
                    document: document_number,
                    kind: other.to_owned(),
                });
                continue;
            }
        };
        for item in items {
            match policy(item) {
                Ok(policy) => loaded.policies.push(LoadedPolicy {
                    policy,
                    file: file.to_owned(),
                    document: document_number,
                }),
                Err(message) => loaded.errors.push(invalid(message)),
            }
        }
    }
}

fn list_items(value: &yaml_serde::Value) -> Vec<yaml_serde::Value> {
    value
        .get("items")
        .and_then(yaml_serde::Value::as_sequence)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|item| {
            item.get("kind").and_then(yaml_serde::Value::as_str) == Some("NetworkPolicy")
        })
        .collect()
}

/// A valid NetworkPolicy, or what is wrong with it, naming the field.
fn policy(item: yaml_serde::Value) -> Result<NetworkPolicy, String> {
    let policy: NetworkPolicy = serde_path_to_error::deserialize(item).map_err(|error| {
        let field = error.path().to_string();
        format!("{field}: {}", error.into_inner())
    })?;
    let problems = validate(&policy);
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(format!(
            "NetworkPolicy {}: {}",
            policy.metadata.name.as_deref().unwrap_or("?"),
            problems.join("; ")
        ))
    }
}
