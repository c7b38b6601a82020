//! The learned graph on disk, crash-safe: a snapshot plus a log of changes.
//!
//! - `graph.json`: a snapshot, replaced atomically (written to a temporary
//!   file, fsynced, renamed over the old one, directory fsynced).
//! - `graph.log`: changes since the snapshot, one commit per line as
//!   `<crc32 hex> <json array of changes>`, appended and fsynced before
//!   [`Store::commit`] returns: a change is acknowledged once it is in the
//!   log, and a commit is applied whole or not at all.
//!
//! Each change carries the full new state of its entry, so replaying the log
//! over a snapshot that already contains some of it gives the same graph; a
//! crash between renaming a snapshot and emptying the log is harmless. A torn
//! last line (a crash in the middle of an append) fails its checksum and is
//! cut off on the next open; a bad line anywhere else means the file was
//! damaged from outside, and is an error rather than a silent loss.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::graph::{Change, Graph, GraphFile};

/// Log entries after which the snapshot is rewritten and the log emptied.
const COMPACT_AFTER: usize = 10_000;

/// Errors of the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{operation} {path}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The snapshot cannot be read.
    #[error("corrupt graph snapshot {path}: {message}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A log line other than the last is damaged.
    #[error(
        "corrupt graph log {path} at line {line}: {message}; move the file away to start from the snapshot"
    )]
    Log {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

/// What opening a store found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Edges in the snapshot.
    pub snapshot_edges: usize,
    /// Changes replayed from the log.
    pub replayed: usize,
    /// Bytes of a torn last log line that were cut off.
    pub truncated_bytes: u64,
}

/// The graph's files in a state directory.
#[derive(Debug)]
pub struct Store {
    directory: PathBuf,
    log: File,
    log_entries: usize,
}

fn encode(changes: &[Change]) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(changes)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn decode(line: &[u8]) -> Result<Vec<Change>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    let (checksum, json) = text.split_once(' ').ok_or("no checksum")?;
    let expected = u32::from_str_radix(checksum, 16).map_err(|_| "bad checksum field")?;
    if crc32fast::hash(json.as_bytes()) != expected {
        return Err("checksum mismatch".to_owned());
    }
    serde_json::from_str(json).map_err(|error| error.to_string())
}

fn sync_directory(directory: &Path) -> Result<(), StoreError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("sync directory", directory))
}

impl Store {
    fn snapshot_path(directory: &Path) -> PathBuf {
        directory.join("graph.json")
    }

    fn log_path(directory: &Path) -> PathBuf {
        directory.join("graph.log")
    }

    /// Opens (creating) the store in `directory` and returns the graph it
    /// holds: the snapshot with the log replayed over it.
    pub fn open(directory: &Path) -> Result<(Self, Graph, Recovery), StoreError> {
        std::fs::create_dir_all(directory).map_err(io_error("create", directory))?;
        let mut recovery = Recovery::default();
        let snapshot = Self::snapshot_path(directory);
        let mut graph = match std::fs::read(&snapshot) {
            Ok(bytes) => {
                let file: GraphFile =
                    serde_json::from_slice(&bytes).map_err(|error| StoreError::Snapshot {
                        path: snapshot.clone(),
                        message: error.to_string(),
                    })?;
                Graph::from_file(file).map_err(|message| StoreError::Snapshot {
                    path: snapshot.clone(),
                    message,
                })?
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Graph::new(),
            Err(source) => {
                return Err(StoreError::Io {
                    operation: "read",
                    path: snapshot,
                    source,
                });
            }
        };
        recovery.snapshot_edges = graph.len();

        let log_path = Self::log_path(directory);
        let mut valid_length = 0u64;
        let mut log_entries = 0;
        match File::open(&log_path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut line = Vec::new();
                let mut number = 0;
                let mut pending_error: Option<(usize, String)> = None;
                loop {
                    line.clear();
                    let read = reader
                        .read_until(b'\n', &mut line)
                        .map_err(io_error("read", &log_path))?;
                    if read == 0 {
                        break;
                    }
                    number += 1;
                    if let Some((line_number, message)) = pending_error.take() {
                        // A bad line followed by more lines: not a torn tail.
                        return Err(StoreError::Log {
                            path: log_path,
                            line: line_number,
                            message,
                        });
                    }
                    let complete = line.last() == Some(&b'\n');
                    match decode(line.strip_suffix(b"\n").unwrap_or(&line)) {
                        Ok(changes) if complete => {
                            log_entries += changes.len();
                            for change in changes {
                                graph.apply(change);
                            }
                            valid_length += read as u64;
                        }
                        Ok(_) => pending_error = Some((number, "no end of line".into())),
                        Err(message) => pending_error = Some((number, message)),
                    }
                }
                let total = std::fs::metadata(&log_path)
                    .map_err(io_error("stat", &log_path))?
                    .len();
                recovery.truncated_bytes = total - valid_length;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    operation: "read",
                    path: log_path,
                    source,
                });
            }
        }
        recovery.replayed = log_entries;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        if recovery.truncated_bytes > 0 {
            // Cut the torn tail so new entries start on a clean line.
            log.set_len(valid_length)
                .map_err(io_error("truncate", &log_path))?;
            log.sync_all().map_err(io_error("sync", &log_path))?;
        }
        Ok((
            Self {
                directory: directory.to_owned(),
                log,
                log_entries,
            },
            graph,
            recovery,
        ))
    }

    /// Appends changes and waits until they are on disk: once this returns,
    /// they survive a crash. Compacts when the log has grown.
    pub fn commit(&mut self, changes: &[Change], graph: &Graph) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let path = Self::log_path(&self.directory);
        let line = encode(changes).map_err(|error| StoreError::Io {
            operation: "encode changes for",
            path: path.clone(),
            source: io::Error::other(error),
        })?;
        let length = self.log.metadata().map_err(io_error("stat", &path))?.len();
        let appended = self
            .log
            .write_all(&line)
            .map_err(io_error("append to", &path))
            .and_then(|()| self.log.sync_data().map_err(io_error("sync", &path)));
        if let Err(error) = appended {
            // Cut a partial line (disk full, I/O error) so that the next
            // commit does not land behind it: a bad line followed by good
            // ones would make the log unreadable at the next start.
            if self.log.set_len(length).is_err() {
                tracing::warn!(path = %path.display(), "cannot cut a failed append off the graph log");
            }
            return Err(error);
        }
        self.log_entries += changes.len();
        if self.log_entries >= COMPACT_AFTER.max(graph.len()) {
            self.compact(graph)?;
        }
        Ok(())
    }

    /// Writes `graph` as the snapshot and empties the log.
    pub fn compact(&mut self, graph: &Graph) -> Result<(), StoreError> {
        let snapshot = Self::snapshot_path(&self.directory);
        let temporary = self.directory.join("graph.json.tmp");
        let bytes = serde_json::to_vec(&graph.to_file()).map_err(|error| StoreError::Io {
            operation: "encode",
            path: snapshot.clone(),
            source: io::Error::other(error),
        })?;
        let mut file = File::create(&temporary).map_err(io_error("create", &temporary))?;
        file.write_all(&bytes)
            .map_err(io_error("write", &temporary))?;
        file.sync_all().map_err(io_error("sync", &temporary))?;
        drop(file);
        std::fs::rename(&temporary, &snapshot).map_err(io_error("rename over", &snapshot))?;
        sync_directory(&self.directory)?;
        // Replaying the old log over the new snapshot changes nothing, so a
        // crash before this truncation is harmless.
        let log = Self::log_path(&self.directory);
        self.log.set_len(0).map_err(io_error("truncate", &log))?;
        self.log.sync_all().map_err(io_error("sync", &log))?;
        self.log_entries = 0;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{sync::Arc, time::Duration, time::SystemTime};

    use super::*;
    use flow_model::{
        identity::{Identity, PeerKind, Workload},
        record::{Endpoint, FlowRecord, Hook, Protocol, Timestamp},
    };

    /// A request record `web:client_port -> server:port` in namespace `shop`.
    pub(crate) fn record(client_port: u16, server: &str, port: u16) -> FlowRecord {
        let endpoint = |ip: &str, port: u16, workload: &str| Endpoint {
            ip: ip.parse().unwrap(),
            port,
            identity: Arc::new(Identity {
                kind: Some(PeerKind::Pod),
                namespace: Some("shop".into()),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: workload.into(),
                }),
                tenant: Some("acme".into()),
                ..Identity::default()
            }),
            service: None,
            names: Vec::new(),
        };
        let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        FlowRecord {
            time,
            first_seen: time,
            source: endpoint("10.0.0.1", client_port, "web"),
            destination: endpoint("10.0.0.2", port, server),
            protocol: Protocol(6),
            icmp: None,
            packets: 1,
            bytes: 60,
            tcp_flags: Vec::new(),
            icmp_errors: None,
            is_reply: false,
            interface: "veth0".into(),
            interface_index: 0,
            hook: Hook::Ingress,
            node: "n".into(),
            cross_tenant: Some(false),
            new_connection: true,
            violation: false,
        }
    }

    fn learn(store: &mut Store, graph: &mut Graph, server: &str, port: u16) {
        let changes = graph.observe(&record(40_000, server, port));
        store.commit(&changes, graph).unwrap();
    }

    #[test]
    fn committed_changes_survive_reopening_and_compaction() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut graph, recovery) = Store::open(directory.path()).unwrap();
        assert_eq!(recovery, Recovery::default());
        learn(&mut store, &mut graph, "api", 8080);
        learn(&mut store, &mut graph, "db", 5432);
        drop(store);
        let (mut store, reopened, recovery) = Store::open(directory.path()).unwrap();
        assert_eq!(reopened, graph);
        // web and api and their edge, then db and its edge.
        assert_eq!(
            (
                recovery.snapshot_edges,
                recovery.replayed,
                recovery.truncated_bytes
            ),
            (0, 5, 0)
        );
        store.compact(&reopened).unwrap();
        learn(&mut store, &mut graph, "cache", 6379);
        let (_, again, recovery) = Store::open(directory.path()).unwrap();
        assert_eq!(again, graph);
        assert_eq!((recovery.snapshot_edges, recovery.replayed), (2, 2));
    }

    #[test]
    fn a_store_written_before_days_were_kept_loads_with_the_days_of_its_times() {
        // 2027-01-15T08:00:00Z is day 20,833; 2027-01-17T20:00:00Z day 20,835.
        let edge = |server: &str, first: &str, last: &str| {
            format!(
                r#"{{"client":{{"type":"workload","namespace":"shop","kind":"Deployment","name":"web"}},"server":{{"type":"workload","namespace":"shop","kind":"Deployment","name":"{server}"}},"protocol":"TCP","port":8080,"first_seen":"{first}","last_seen":"{last}","connections":4,"packets":8,"bytes":480,"cross_tenant":false}}"#
            )
        };
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("graph.json"),
            format!(
                r#"{{"version":1,"edges":[{}],"workloads":[]}}"#,
                edge("api", "2027-01-15T08:00:00Z", "2027-01-17T20:00:00Z")
            ),
        )
        .unwrap();
        let change = format!(
            r#"[{{"change":"edge",{}]"#,
            &edge("db", "2027-01-17T08:00:00Z", "2027-01-17T09:00:00Z")[1..]
        );
        std::fs::write(
            directory.path().join("graph.log"),
            format!("{:08x} {change}\n", crc32fast::hash(change.as_bytes())),
        )
        .unwrap();
        let (_, graph, recovery) = Store::open(directory.path()).unwrap();
        assert_eq!((recovery.snapshot_edges, recovery.replayed), (1, 1));
        let days: Vec<(String, (u32, u64), u32, u64)> = graph
            .edges()
            .map(|(key, stats)| {
                (
                    key.server.workload().unwrap().name.clone(),
                    stats.days.parts(),
                    stats.days.count(),
                    stats.connection_count(),
                )
            })
            .collect();
        // The first and last days only: the ones between are unknown.
        assert_eq!(
            days,
            [
                ("api".to_owned(), (20_835, 0b101), 2, 4),
                ("db".to_owned(), (20_835, 0b1), 1, 4),
            ]
        );
        // Written again, the days are kept as they are.
        let text = serde_json::to_string(&graph.to_file()).unwrap();
        assert!(text.contains(r#""days":{"last":20835,"mask":5}"#), "{text}");
        let back = Graph::from_file(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, graph);
    }

    #[test]
    fn a_torn_last_commit_at_any_byte_is_cut_whole_and_everything_before_it_kept() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut graph, _) = Store::open(directory.path()).unwrap();
        learn(&mut store, &mut graph, "api", 8080);
        let before_last = graph.clone();
        let length_before = std::fs::metadata(directory.path().join("graph.log"))
            .unwrap()
            .len();
        learn(&mut store, &mut graph, "db", 5432);
        drop(store);
        let full = std::fs::read(directory.path().join("graph.log")).unwrap();
        // A crash can stop the last append after any byte.
        for cut in length_before..full.len() as u64 {
            let copy = tempfile::tempdir().unwrap();
            std::fs::write(copy.path().join("graph.log"), &full[..cut as usize]).unwrap();
            let (mut store, recovered, recovery) = Store::open(copy.path()).unwrap();
            assert_eq!(recovered, before_last, "cut at {cut}");
            assert_eq!(recovery.truncated_bytes, cut - length_before);
            // And the store goes on cleanly after the cut.
            let mut graph = recovered;
            learn(&mut store, &mut graph, "db", 5432);
            let (_, after, _) = Store::open(copy.path()).unwrap();
            assert_eq!(after, graph);
        }
    }

    /// A tmpfs mounted for one test, unmounted when dropped.
    pub(crate) struct Tmpfs(pub(crate) tempfile::TempDir);

    impl Tmpfs {
        /// A tmpfs of `size`, or `None` (skipping, which the strict test
        /// environment refuses) when not root.
        pub(crate) fn mount_as_root(size: &str) -> Option<Self> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                assert!(
                    std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none(),
                    "mounting a tmpfs needs root"
                );
                eprintln!("skipping: mounting a tmpfs needs root");
                return None;
            }
            Some(Self::mount(size))
        }

        fn mount(size: &str) -> Self {
            let directory = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(directory.path())
                .status()
                .unwrap();
            assert!(status.success());
            Self(directory)
        }

        pub(crate) fn resize(&self, size: &str) {
            let status = std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(self.0.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn an_append_that_fails_on_a_full_disk_is_cut_and_the_log_stays_readable() {
        let Some(disk) = Tmpfs::mount_as_root("16k") else {
            return;
        };
        let (mut store, mut graph, _) = Store::open(disk.0.path()).unwrap();
        // What was acknowledged: only the changes of commits that succeeded.
        let mut acknowledged = Graph::new();
        let long = "w".repeat(250);
        let mut failure = None;
        for port in 1..2_000 {
            let changes = graph.observe(&record(40_000, &long, port));
            match store.commit(&changes, &graph) {
                Ok(()) => changes.into_iter().for_each(|c| acknowledged.apply(c)),
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        let failure = failure.expect("a 16 KiB disk fills up");
        assert!(failure.contains("append to"), "{failure}");
        assert!(acknowledged.len() > 10, "{}", acknowledged.len());
        // Space comes back; the store goes on and the log opens again.
        disk.resize("1m");
        let changes = graph.observe(&record(40_000, "api", 8080));
        store.commit(&changes, &graph).unwrap();
        changes.into_iter().for_each(|c| acknowledged.apply(c));
        drop(store);
        let (_, reopened, recovery) = Store::open(disk.0.path()).unwrap();
        assert_eq!(recovery.truncated_bytes, 0);
        assert_eq!(reopened, acknowledged);
    }

    #[test]
    fn damage_before_the_last_line_is_an_error_not_a_silent_loss() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut graph, _) = Store::open(directory.path()).unwrap();
        learn(&mut store, &mut graph, "api", 8080);
        learn(&mut store, &mut graph, "db", 5432);
        drop(store);
        let path = directory.path().join("graph.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let error = Store::open(directory.path()).unwrap_err().to_string();
        assert!(
            error.contains("corrupt graph log") && error.contains("line 1"),
            "{error}"
        );
        std::fs::write(directory.path().join("graph.json"), "{not json").unwrap();
        let error = Store::open(directory.path()).unwrap_err().to_string();
        assert!(error.contains("corrupt graph snapshot"), "{error}");
    }

    /// The files a compaction leaves when the process dies after each of its
    /// steps, made by hand rather than by a well-timed kill: every state
    /// reopens to exactly the graph whose edges were all acknowledged before
    /// the compaction began, and the store goes on working.
    #[test]
    fn every_step_a_compaction_can_die_at_reopens_to_the_acknowledged_graph() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let (mut store, mut graph, _) = Store::open(root).unwrap();
        learn(&mut store, &mut graph, "api", 8080);
        learn(&mut store, &mut graph, "db", 5432);
        store.compact(&graph).unwrap();
        learn(&mut store, &mut graph, "cache", 6379);
        learn(&mut store, &mut graph, "queue", 5672);
        drop(store);
        let (snapshot, log) = (Store::snapshot_path(root), Store::log_path(root));
        let temporary = root.join("graph.json.tmp");
        let before = (
            std::fs::read(&snapshot).unwrap(),
            std::fs::read(&log).unwrap(),
        );
        let new = serde_json::to_vec(&graph.to_file()).unwrap();
        assert!(!before.1.is_empty(), "the last two edges are in the log");
        // What is on disk after each step: the temporary file, if any, the
        // snapshot and the log.
        struct Died<'a> {
            step: String,
            temporary: Option<&'a [u8]>,
            snapshot: &'a [u8],
            log: &'a [u8],
        }
        let died = |step: &str, temporary, snapshot, log| Died {
            step: step.to_owned(),
            temporary,
            snapshot,
            log,
        };
        let mut states = vec![
            died("created", Some(&[][..]), &before.0, &before.1),
            died("written", Some(&new), &before.0, &before.1),
            died("renamed", None, &new, &before.1),
            died("truncated", None, &new, &[]),
        ];
        for cut in [1, new.len() / 2, new.len() - 1] {
            states.push(died(
                &format!("written up to byte {cut}"),
                Some(&new[..cut]),
                &before.0,
                &before.1,
            ));
        }
        for Died {
            step,
            temporary: temporary_bytes,
            snapshot: snapshot_bytes,
            log: log_bytes,
        } in states
        {
            let _ = std::fs::remove_file(&temporary);
            if let Some(bytes) = temporary_bytes {
                std::fs::write(&temporary, bytes).unwrap();
            }
            std::fs::write(&snapshot, snapshot_bytes).unwrap();
            std::fs::write(&log, log_bytes).unwrap();
            let (mut store, mut reopened, _) =
                Store::open(root).unwrap_or_else(|error| panic!("died when {step}: {error}"));
            assert_eq!(reopened, graph, "died when {step}");
            // It goes on: a new edge and a whole compaction over the leftovers.
            learn(&mut store, &mut reopened, "mail", 25);
            store.compact(&reopened).unwrap();
            drop(store);
            assert!(!temporary.exists(), "died when {step}");
            let (_, again, _) = Store::open(root).unwrap();
            assert_eq!(again, reopened, "died when {step}");
        }
    }

    /// Edge `index` of the crash test: `web -> s<index / 500>` on its own port.
    fn crash_edge(index: usize) -> FlowRecord {
        let port = 1_000 + u16::try_from(index % 500).unwrap();
        record(40_000, &format!("s{}", index / 500), port)
    }

    /// Edges in the store before the first crash: a snapshot of some
    /// megabytes, so that a compaction takes a while.
    const CRASH_GRAPH_EDGES: usize = 20_000;
    /// Edges committed (one commit each) between two compactions.
    const CRASH_COMMITS_PER_COMPACTION: usize = 5;
    /// The environment variable that makes the child below run.
    const CRASH_CHILD_DIRECTORY: &str = "FLOW_POLICY_CRASH_CHILD_DIRECTORY";

    /// The process the crash test kills: opens the store in
    /// `$FLOW_POLICY_CRASH_CHILD_DIRECTORY` and, for ever, commits a few
    /// edges (printing `ack N` once edge N is committed) and compacts
    /// (printing `compact` first). Run only by the test below.
    #[test]
    #[ignore = "run by a_kill_at_any_point_of_compactions_loses_no_acknowledged_edge"]
    fn compaction_crash_child() {
        use std::io::Write as _;
        let directory = PathBuf::from(std::env::var_os(CRASH_CHILD_DIRECTORY).unwrap());
        let (mut store, mut graph, _) = Store::open(&directory).unwrap();
        let mut out = std::io::stdout().lock();
        for index in graph.len().. {
            let changes = graph.observe(&crash_edge(index));
            store.commit(&changes, &graph).unwrap();
            writeln!(out, "ack {index}").unwrap();
            if (index + 1) % CRASH_COMMITS_PER_COMPACTION == 0 {
                writeln!(out, "compact").unwrap();
                out.flush().unwrap();
                store.compact(&graph).unwrap();
            }
        }
    }

    /// A small xorshift generator: random enough for kill times.
    fn next_random(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn a_kill_at_any_point_of_compactions_loses_no_acknowledged_edge() {
        use std::{
            io::BufRead as _,
            process::{Command, Stdio},
            sync::mpsc,
            time::Instant,
        };
        const KILLS: usize = 20;
        let directory = tempfile::tempdir().unwrap();
        let mut expected = Graph::new();
        for index in 0..CRASH_GRAPH_EDGES {
            expected.observe(&crash_edge(index));
        }
        let (mut store, _, _) = Store::open(directory.path()).unwrap();
        store.compact(&expected).unwrap();
        drop(store);
        let mut seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        let mut killed_while_writing_the_snapshot = 0;
        for kill in 0..KILLS {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "store::tests::compaction_crash_child"])
                .args(["--ignored", "--nocapture", "--test-threads=1"])
                .env(CRASH_CHILD_DIRECTORY, directory.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let (lines, received) = mpsc::channel();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = lines.send(line);
                }
            });
            // Time the first compaction of this run (from its `compact` to
            // the next acknowledgement), then kill at a random point of the
            // second.
            let mut acknowledged = None;
            let mut first_compaction: Option<Instant> = None;
            let mut compaction_time = None;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let line = received
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .expect("the child stopped printing");
                // The test harness may start the first line with its own
                // words.
                if line.ends_with("compact") {
                    if compaction_time.is_some() {
                        break;
                    }
                    first_compaction = Some(Instant::now());
                } else if let Some((_, index)) = line.split_once("ack ") {
                    acknowledged = acknowledged.max(Some(index.parse::<usize>().unwrap()));
                    if compaction_time.is_none() {
                        compaction_time = first_compaction.map(|started| started.elapsed());
                    }
                }
            }
            let window = compaction_time.unwrap().as_micros().max(1) as u64;
            std::thread::sleep(Duration::from_micros(next_random(&mut seed) % window));
            child.kill().unwrap();
            child.wait().unwrap();
            reader.join().unwrap();
            // Acknowledgements printed before the kill but not yet read.
            for line in received.try_iter() {
                // A line cut by the kill is at worst a lower number.
                if let Some((_, index)) = line.split_once("ack ")
                    && let Ok(index) = index.parse::<usize>()
                {
                    acknowledged = acknowledged.max(Some(index));
                }
            }
            let acknowledged = acknowledged.unwrap() + 1;
            if directory.path().join("graph.json.tmp").exists() {
                killed_while_writing_the_snapshot += 1;
            }
            let (_, reopened, _) = Store::open(directory.path())
                .unwrap_or_else(|error| panic!("kill {kill}: the store is corrupt: {error}"));
            // Every acknowledged edge, and at most the one being committed.
            assert!(
                (acknowledged..=acknowledged + 1).contains(&reopened.len()),
                "kill {kill}: {} edges, {acknowledged} acknowledged",
                reopened.len()
            );
            for index in expected.len()..reopened.len() {
                expected.observe(&crash_edge(index));
            }
            assert_eq!(reopened, expected, "kill {kill}");
        }
        eprintln!(
            "{KILLS} kills, {killed_while_writing_the_snapshot} while the snapshot was written, {} edges",
            expected.len()
        );
    }
}
