//! Pinning under bpffs, so that a restarted or upgraded agent takes over
//! without losing a packet.
//!
//! Layout under the pin directory (`/sys/fs/bpf/flow-agent` in the
//! DaemonSet):
//!
//! - `maps/<NAME>`: the flow maps and each CPU's held flows, the epoch, the
//!   counters, the counted interfaces, the spill ring and the fragment table.
//!   A new agent's programs use the same maps, so what was counted while no
//!   agent ran is drained by the next one, exactly once (the epoch lives in
//!   the pinned control map).
//! - `links/if<INDEX>-<ingress|egress>`: TCX links (Linux 6.6+). A pinned
//!   link stays attached when the agent exits; the next agent swaps its own
//!   program in with `BPF_LINK_UPDATE`, atomically. clsact filters need no
//!   pin: they outlive their process, and are replaced in place by netlink.
//!
//! `flow-agent cleanup` removes all of it.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapInfo, MapType},
    programs::{TcAttachType, tc},
};
use flow_common::{
    CONTROL, COUNTED_BITS, COUNTED_INTERFACES, COUNTERS, FLOWS_EVEN, FLOWS_ODD, FRAGMENTS,
    HELD_FLOWS, NEW_FLOW_LOG, PROGRAM_EGRESS, PROGRAM_INGRESS, SPILL,
};
use thiserror::Error;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;

/// Maps that are pinned, and so shared between successive agents.
pub const PINNED_MAPS: [&str; 10] = [
    FLOWS_EVEN,
    FLOWS_ODD,
    CONTROL,
    COUNTERS,
    COUNTED_BITS,
    COUNTED_INTERFACES,
    SPILL,
    HELD_FLOWS,
    NEW_FLOW_LOG,
    FRAGMENTS,
];

/// Errors of pinning.
#[derive(Debug, Error)]
pub enum PinError {
    /// The directory is not on bpffs.
    #[error("{0} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// A file operation failed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process holds the pin directory.
    #[error(
        "{0} is in use by another flow-agent on this node (one agent per pin directory); stop it first"
    )]
    InUse(PathBuf),
    /// A pinned map was made by an incompatible agent.
    #[error(
        "pinned map {path} does not fit this agent ({problem}): run `flow-agent cleanup --pin-dir {dir}` first (what it holds is then lost)"
    )]
    Incompatible {
        /// The pin.
        path: PathBuf,
        /// The pin directory.
        dir: PathBuf,
        /// What differs.
        problem: String,
    },
}

fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

/// The pin directory and its layout. Holds the directory's lock while it
/// lives: two agents draining the same maps would race on the epoch.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    _lock: std::sync::Arc<std::fs::File>,
}

/// Takes the exclusive `flock` of the pin directory itself (bpffs holds no
/// regular files to lock), without waiting.
fn lock(root: &Path) -> Result<std::fs::File, PinError> {
    use std::os::fd::AsRawFd as _;
    let directory = std::fs::File::open(root).map_err(io_error("open", root))?;
    // SAFETY: a valid descriptor; flock has no other preconditions.
    if unsafe { libc::flock(directory.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(PinError::InUse(root.to_owned()));
        }
        return Err(PinError::Io {
            operation: "lock",
            path: root.to_owned(),
            source,
        });
    }
    Ok(directory)
}

/// What a pinned map must look like for this agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    /// Map type.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
}

impl PinDir {
    /// Opens (creating) the pin directory; it must be on bpffs.
    pub fn open(root: &Path) -> Result<Self, PinError> {
        for directory in [root.to_owned(), root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&directory).map_err(io_error("create", &directory))?;
        }
        let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| PinError::NotBpffs(root.to_owned()))?;
        // SAFETY: a zeroed statfs is valid; statfs writes into it.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid statfs.
        if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(PinError::Io {
                operation: "statfs",
                path: root.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        if stat.f_type != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs(root.to_owned()));
        }
        Ok(Self {
            root: root.to_owned(),
            _lock: std::sync::Arc::new(lock(root)?),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a map is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Where an interface's TCX link is pinned.
    pub fn link(&self, index: u32, attach_type: TcAttachType) -> PathBuf {
        let direction = match attach_type {
            TcAttachType::Egress => "egress",
            _ => "ingress",
        };
        self.root
            .join("links")
            .join(format!("if{index}-{direction}"))
    }

    /// Interfaces (by index) with a pinned link.
    pub fn linked_interfaces(&self) -> Vec<u32> {
        let mut indexes: Vec<u32> = std::fs::read_dir(self.root.join("links"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.strip_prefix("if")?.split('-').next()?.parse().ok()
            })
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
    }

    /// The capacity of a pinned map, when it is pinned and has `shape`; an
    /// error when it is pinned with another shape.
    pub fn pinned_capacity(&self, name: &str, shape: MapShape) -> Result<Option<u32>, PinError> {
        let path = self.map(name);
        if !path.exists() {
            return Ok(None);
        }
        let incompatible = |problem: String| PinError::Incompatible {
            path: path.clone(),
            dir: self.root.clone(),
            problem,
        };
        let info = MapInfo::from_pin(&path).map_err(|error| incompatible(error.to_string()))?;
        let map_type = info
            .map_type()
            .map_err(|error| incompatible(error.to_string()))?;
        let MapShape {
            map_type: wanted_type,
            key_size,
            value_size,
        } = shape;
        if map_type != wanted_type {
            return Err(incompatible(format!(
                "type {map_type:?}, wanted {wanted_type:?}"
            )));
        }
        if info.key_size() != key_size || info.value_size() != value_size {
            return Err(incompatible(format!(
                "key and value of {} and {} bytes, wanted {key_size} and {value_size}",
                info.key_size(),
                info.value_size()
            )));
        }
        Ok(Some(info.max_entries()))
    }
}

/// What `flow-agent cleanup` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Pinned TCX links removed (detached).
    pub links: usize,
    /// clsact filters of ours removed, by interface.
    pub filters: Vec<String>,
    /// Pinned maps removed.
    pub maps: usize,
}

/// Removes everything the agent pinned under `root` and every clsact filter
/// of ours on `interfaces`. Safe to run twice; never touches anything else.
pub fn cleanup(root: &Path, interfaces: &[String]) -> Result<Cleanup, PinError> {
    // Refused while an agent uses the directory; held until the end.
    let _lock = match lock(root) {
        Ok(lock) => Some(lock),
        Err(PinError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let mut removed = Cleanup::default();
    for interface in interfaces {
        for (attach_type, program) in [
            (TcAttachType::Egress, PROGRAM_EGRESS),
            (TcAttachType::Ingress, PROGRAM_INGRESS),
        ] {
            if tc::qdisc_detach_program(interface, attach_type, program).is_ok() {
                removed.filters.push(format!("{interface} {program}"));
            }
        }
    }
    let links = root.join("links");
    // Egress links first, so no packet is counted twice on the way out.
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&links)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    paths.sort_by_key(|path| !path.to_string_lossy().ends_with("-egress"));
    for path in paths {
        std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
        removed.links += 1;
    }
    for name in PINNED_MAPS {
        let path = root.join("maps").join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.maps += 1,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PinError::Io {
                    operation: "remove",
                    path,
                    source,
                });
            }
        }
    }
    for directory in [links, root.join("maps"), root.to_owned()] {
        match std::fs::remove_dir(&directory) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PinError::Io {
                    operation: "remove",
                    path: directory,
                    source,
                });
            }
        }
    }
    Ok(removed)
}
