//! Identity from a file: the Kubernetes objects exactly as
//! `kubectl get namespaces,pods,replicasets,deployments,statefulsets,daemonsets,jobs,cronjobs,services,endpointslices -A -o yaml`
//! prints them (a `List`), or as a multi-document YAML stream, or JSON.
//!
//! Every object goes through the same conversion and cache as objects from the
//! API server. A malformed document or object is reported with its document
//! number, line and field, and everything else still loads. The file is read
//! again whenever it changes.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    CacheEvent,
    model::{self, Object, ObjectError, ObjectKind},
};

/// The inventory file could not be read.
#[derive(Debug, Error)]
#[error("cannot read inventory {path}")]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The inventory cannot be used at start. Later rereads that fail keep the
/// last good inventory instead; at start there is none, and an agent that
/// knows no pod would emit flows without identity as if all were well.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The file cannot be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The file holds nothing identity can use, or a document that is not
    /// YAML (see [`Inventory::incomplete`]).
    #[error("inventory {} cannot be used: {reason}{}", path.display(), first_problem(problems))]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
        /// Every problem found in it.
        problems: Vec<InventoryError>,
    },
}

fn first_problem(problems: &[InventoryError]) -> String {
    match problems {
        [] => String::new(),
        [only] => format!(" ({only})"),
        [first, rest @ ..] => format!(" ({first}; and {} more)", rest.len()),
    }
}

/// A problem in an inventory file: one document or object that did not load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InventoryError {
    /// A document is not valid YAML.
    #[error("{source_name}: document {document} (line {line}): {message}")]
    Syntax {
        /// The file.
        source_name: String,
        /// 1-based document number.
        document: usize,
        /// Line where the document starts.
        line: usize,
        /// The parser's message, with its position inside the document.
        message: String,
    },
    /// An object does not match its kind's schema.
    #[error("{source_name}: document {document}{item} ({kind} {name}): {field}: {message}")]
    Schema {
        /// The file.
        source_name: String,
        /// 1-based document number.
        document: usize,
        /// `, item N` inside a List, or empty.
        item: String,
        /// Object kind.
        kind: String,
        /// `namespace/name` or `?`.
        name: String,
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An object parsed but a field cannot be used.
    #[error("{source_name}: document {document}{item}: {error}")]
    Object {
        /// The file.
        source_name: String,
        /// 1-based document number.
        document: usize,
        /// `, item N` inside a List, or empty.
        item: String,
        /// The field error.
        error: ObjectError,
    },
}

/// What a file holds: the objects that loaded and the errors of those that did not.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Objects the identity cache keeps.
    pub objects: Vec<Object>,
    /// Objects of kinds identity does not use (ConfigMaps, ...), skipped.
    pub skipped: usize,
    /// Problems, each naming its document and field.
    pub errors: Vec<InventoryError>,
}

impl Inventory {
    /// Why this reading must not replace the cache's contents, if it must
    /// not: a file read while it was being rewritten (`kubectl get ... >
    /// FILE` truncates it first) is empty or ends in the middle of a
    /// document, and a resync with it would delete every pod.
    pub fn incomplete(&self) -> Option<&'static str> {
        if self
            .errors
            .iter()
            .any(|error| matches!(error, InventoryError::Syntax { .. }))
        {
            return Some("a document is not valid YAML");
        }
        self.objects
            .is_empty()
            .then_some("the file holds no object identity uses")
    }

    /// The events that replace the cache's contents with this inventory: a
    /// resync of every kind, so objects no longer in the file are deleted.
    pub fn into_events(self) -> Vec<CacheEvent> {
        let mut events: Vec<CacheEvent> = ObjectKind::ALL
            .into_iter()
            .map(CacheEvent::ResyncStart)
            .collect();
        events.extend(self.objects.into_iter().map(CacheEvent::Apply));
        events.extend(ObjectKind::ALL.into_iter().map(CacheEvent::ResyncDone));
        events
    }
}

/// Splits a YAML stream into documents at `---` lines, keeping each one's
/// starting line so errors point into the file. Splitting first means a
/// syntax error in one document does not hide the others.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (index, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker {
            if !current.trim().is_empty() {
                documents.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = index + 2;
            // `--- {...}`: content on the marker line.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
                start = index + 1;
            }
            continue;
        }
        if line == "..." {
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    if !current.trim().is_empty() {
        documents.push((start, current));
    }
    documents
}

fn object_name(value: &Value) -> String {
    let metadata = &value["metadata"];
    match (metadata["namespace"].as_str(), metadata["name"].as_str()) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "?".to_owned(),
    }
}

enum ConvertError {
    /// The object does not match its kind's schema: field path and message.
    Schema(String, String),
    /// A field parsed but cannot be used.
    Object(ObjectError),
}

/// Deserializes an object of kind `T` (reporting the path of a bad field) and
/// converts it with `to`.
fn convert_with<T: DeserializeOwned>(
    value: Value,
    to: impl FnOnce(&T) -> Result<Object, ObjectError>,
) -> Result<Object, ConvertError> {
    let object: T = serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        ConvertError::Schema(
            if path == "." {
                "(object)".to_owned()
            } else {
                path
            },
            message,
        )
    })?;
    to(&object).map_err(ConvertError::Object)
}

/// Converts an object of a kind identity uses; `None` for other kinds.
fn convert(value: Value) -> Option<Result<Object, ConvertError>> {
    use k8s_openapi::api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
    };
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    Some(match kind.as_str() {
        "Namespace" => convert_with(value, |o: &Namespace| {
            model::namespace(o).map(Object::Namespace)
        }),
        "Pod" => convert_with(value, |o: &Pod| model::pod(o).map(Object::Pod)),
        "Service" => convert_with(value, |o: &Service| model::service(o).map(Object::Service)),
        "EndpointSlice" => convert_with(value, |o: &EndpointSlice| {
            model::endpoint_slice(o).map(Object::EndpointSlice)
        }),
        "Node" => convert_with(value, |o: &Node| model::node(o).map(Object::Node)),
        "ReplicaSet" => convert_with(value, |o: &ReplicaSet| {
            model::replica_set(o).map(Object::Owner)
        }),
        "Deployment" => convert_with(value, |o: &Deployment| {
            model::deployment(o).map(Object::Owner)
        }),
        "StatefulSet" => convert_with(value, |o: &StatefulSet| {
            model::stateful_set(o).map(Object::Owner)
        }),
        "DaemonSet" => convert_with(value, |o: &DaemonSet| {
            model::daemon_set(o).map(Object::Owner)
        }),
        "Job" => convert_with(value, |o: &Job| model::job(o).map(Object::Owner)),
        "CronJob" => convert_with(value, |o: &CronJob| model::cron_job(o).map(Object::Owner)),
        _ => return None,
    })
}

/// Parses an inventory. `source_name` names the file in errors.
pub fn parse(text: &str, source_name: &str) -> Inventory {
    let mut inventory = Inventory::default();
    for (index, (line, document)) in documents(text).into_iter().enumerate() {
        let document_number = index + 1;
        let value: Value = match yaml_serde::from_str::<Value>(&document) {
            Ok(value) => value,
            Err(error) => {
                inventory.errors.push(InventoryError::Syntax {
                    source_name: source_name.to_owned(),
                    document: document_number,
                    line,
                    message: error.to_string(),
                });
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default();
        let items: Vec<(String, Value)> =
            if kind == "List" || (kind.ends_with("List") && value["items"].is_array()) {
                match value["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .enumerate()
                        .map(|(position, item)| (format!(", item {}", position + 1), item.clone()))
                        .collect(),
                    None => Vec::new(),
                }
            } else {
                vec![(String::new(), value)]
            };
        for (item, value) in items {
            let kind = value["kind"].as_str().unwrap_or("(no kind)").to_owned();
            let name = object_name(&value);
            match convert(value) {
                Some(Ok(object)) => inventory.objects.push(object),
                None => inventory.skipped += 1,
                Some(Err(ConvertError::Schema(field, message))) => {
                    inventory.errors.push(InventoryError::Schema {
                        source_name: source_name.to_owned(),
                        document: document_number,
                        item,
                        kind,
                        name,
                        field,
                        message,
                    })
                }
                Some(Err(ConvertError::Object(error))) => {
                    inventory.errors.push(InventoryError::Object {
                        source_name: source_name.to_owned(),
                        document: document_number,
                        item,
                        error,
                    })
                }
            }
        }
    }
    inventory
}

/// Reads and parses an inventory file.
pub fn load(path: &Path) -> Result<Inventory, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse(&text, &path.display().to_string()))
}

/// The file's identity and size: a change means it was rewritten.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

fn report(path: &Path, inventory: &Inventory) {
    for error in &inventory.errors {
        warn!(%error, "inventory object skipped");
    }
    info!(
        file = %path.display(),
        objects = inventory.objects.len(),
        skipped_kinds = inventory.skipped,
        errors = inventory.errors.len(),
        "inventory loaded"
    );
}

/// Watches an inventory file: sends its objects now, and again each time the
/// file changes (checked every `poll`). Ends when the receiver is dropped.
#[derive(Debug)]
pub struct InventorySource {
    path: PathBuf,
    poll: Duration,
    /// The file's stamp before the first load: a rewrite between that load
    /// and the first poll is not missed.
    loaded: Option<(SystemTime, u64, u64)>,
}

impl InventorySource {
    /// Loads `path` once to check it, then returns the source and the first
    /// events. An inventory that [`Inventory::incomplete`] refuses is an
    /// error here, where a reread would keep the previous one.
    pub fn open(path: PathBuf, poll: Duration) -> Result<(Self, Vec<CacheEvent>), OpenError> {
        let loaded = stamp(&path);
        let inventory = load(&path)?;
        if let Some(reason) = inventory.incomplete() {
            return Err(OpenError::Unusable {
                path,
                reason,
                problems: inventory.errors,
            });
        }
        report(&path, &inventory);
        Ok((Self { path, poll, loaded }, inventory.into_events()))
    }

    /// Runs until the receiver goes away. Each look at the file (a stat, and
    /// when it changed a read and a parse) blocks, so it runs through
    /// `spawn_blocking`, off the runtime's workers.
    pub async fn run(mut self, events: mpsc::Sender<Vec<CacheEvent>>) {
        let mut ticker = tokio::time::interval(self.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let looked = tokio::task::spawn_blocking(move || {
                let reload = self.check();
                (self, reload)
            })
            .await;
            let reload = match looked {
                Ok((source, reload)) => {
                    self = source;
                    reload
                }
                Err(error) => {
                    warn!(%error, "inventory file no longer watched: its reader failed");
                    return;
                }
            };
            match reload {
                Reload::Unchanged => {}
                Reload::Incomplete(reason) => warn!(
                    file = %self.path.display(),
                    reason,
                    "inventory not reloaded (being rewritten?); keeping the previous one until the file changes again"
                ),
                Reload::Failed(error) => warn!(
                    error = %crate::error_chain(&error),
                    "inventory not reloaded; keeping the previous one"
                ),
                Reload::Changed(inventory) => {
                    report(&self.path, &inventory);
                    if events.send(inventory.into_events()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One look at the file: whether it changed since the last look, and
    /// whether what it holds now may replace the cache's contents.
    fn check(&mut self) -> Reload {
        let current = stamp(&self.path);
        if current == self.loaded || current.is_none() {
            return Reload::Unchanged;
        }
        self.loaded = current;
        match load(&self.path) {
            Ok(inventory) => match inventory.incomplete() {
                Some(reason) => Reload::Incomplete(reason),
                None => Reload::Changed(inventory),
            },
            Err(error) => Reload::Failed(error),
        }
    }
}

/// What one look at the inventory file found.
#[derive(Debug)]
enum Reload {
    Unchanged,
    Incomplete(&'static str),
    Failed(ReadError),
    Changed(Inventory),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_caught_while_being_rewritten_is_not_applied() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("inventory.yaml");
        let full = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop}\n";
        std::fs::write(&path, full).unwrap();
        let (mut source, first) =
            InventorySource::open(path.clone(), Duration::from_secs(1)).unwrap();
        assert!(!first.is_empty());
        assert!(matches!(source.check(), Reload::Unchanged));
        // Truncated, then half written (a valid List with a broken item):
        // neither replaces the cache.
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            source.check(),
            Reload::Incomplete("the file holds no object identity uses")
        ));
        std::fs::write(&path, &full[..40]).unwrap();
        assert!(matches!(source.check(), Reload::Incomplete(_)));
        std::fs::write(&path, "apiVersion: v1\nkind: List\nitems: [").unwrap();
        assert!(matches!(
            source.check(),
            Reload::Incomplete("a document is not valid YAML")
        ));
        // Complete again: applied, once.
        std::fs::write(&path, full.replace("shop", "shop2")).unwrap();
        let Reload::Changed(inventory) = source.check() else {
            panic!("the complete file is applied");
        };
        assert!(inventory.into_events().iter().any(|event| matches!(event, CacheEvent::Apply(Object::Namespace(namespace)) if namespace.name == "shop2")));
        assert!(matches!(source.check(), Reload::Unchanged));
    }

    #[test]
    fn an_inventory_with_nothing_usable_is_refused_at_start() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("inventory.yaml");
        let refusal = |text: &str| {
            std::fs::write(&path, text).unwrap();
            match InventorySource::open(path.clone(), Duration::from_secs(1)) {
                Ok(_) => panic!("{text:?} is refused"),
                Err(error) => error.to_string(),
            }
        };
        let file = path.display();
        assert_eq!(
            refusal(""),
            format!("inventory {file} cannot be used: the file holds no object identity uses")
        );
        assert_eq!(
            refusal("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: b}\n"),
            format!("inventory {file} cannot be used: the file holds no object identity uses")
        );
        let only_document = refusal("apiVersion: v1\nkind: List\nitems: [\n");
        assert!(
            only_document.starts_with(&format!(
                "inventory {file} cannot be used: a document is not valid YAML ({file}: document 1 (line 1): "
            )),
            "{only_document}"
        );
        let two_bad = refusal(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: b}\nstatus: {podIP: nope}\n---\nkind: [\n",
        );
        assert!(two_bad.ends_with("; and 1 more)"), "{two_bad}");
        let missing = directory.path().join("missing.yaml");
        let error = InventorySource::open(missing.clone(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&error, OpenError::Read(ReadError { path, .. }) if *path == missing));
    }

    #[test]
    fn documents_split_at_markers_and_keep_their_lines() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- # comment\n---\nd: 4\n...\n";
        let documents = documents(text);
        assert_eq!(
            documents,
            [
                (1, "a: 1\n".to_owned()),
                (3, "b: 2\nc: 3\n".to_owned()),
                (7, "d: 4\n".to_owned()),
            ]
        );
    }

    #[test]
    fn a_bad_document_or_field_is_reported_and_the_rest_loads() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop-a}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop-a
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: ok, namespace: shop-a}
  status: {podIP: 10.0.0.5}
- apiVersion: v1
  kind: Pod
  metadata: {name: bad-ip, namespace: shop-a}
  status: {podIPs: [{ip: 10.0.0}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: bad-type, namespace: shop-a}
  spec: {containers: nope}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings, namespace: shop-a}
";
        let inventory = parse(text, "inventory.yaml");
        assert_eq!(inventory.objects.len(), 2, "{:?}", inventory.errors);
        assert_eq!(inventory.skipped, 1);
        let errors: Vec<String> = inventory.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with("inventory.yaml: document 2 (line 5): "),
            "{}",
            errors[0]
        );
        assert_eq!(
            errors[1],
            "inventory.yaml: document 3, item 2: Pod shop-a/bad-ip: status.podIPs[0].ip: \"10.0.0\" is not an IP address"
        );
        assert!(
            errors[2].starts_with("inventory.yaml: document 3, item 3 (Pod shop-a/bad-type): spec.containers: invalid type"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn json_lists_parse_too() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a","labels":{"tenant":"acme"}}}]}"#;
        let inventory = parse(text, "inventory.json");
        assert!(inventory.errors.is_empty(), "{:?}", inventory.errors);
        assert_eq!(inventory.objects.len(), 1);
    }
}
