//! Loads the eBPF programs, attaches them to interfaces and drains their maps.
//!
//! # Draining without losing a packet
//!
//! The programs count into the flow map of the current epoch (see
//! [`flow_common`]). [`Datapath::drain`] switches the epoch, waits one RCU grace
//! period so that no program can still be adding to the previous epoch's map,
//! then moves every entry out of that map (read keys and values, delete). Because
//! nothing writes the drained map any more, reading and deleting cannot race with
//! a packet: each packet is in exactly one drain.
//!
//! # Counting a packet once
//!
//! Each interface gets an ingress and an egress classifier. A packet between two
//! watched pods on one node enters the node through the sender's host-side veth
//! (ingress, counted) and leaves through the receiver's (egress). The egress
//! program skips packets whose `ingress_ifindex` is in `COUNTED_INTERFACES`, the
//! set of interfaces whose ingress program is attached, so that packet is counted
//! once. The set is updated after an ingress program is attached and before it is
//! detached, so a change can at worst count a packet twice, never lose it.

pub mod pin;
mod sys;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::AsFd as _,
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, MapType, PerCpuArray, PerCpuHashMap,
        RingBuf,
    },
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle,
        },
    },
    util::KernelVersion,
};
use flow_common::{
    CONTROL, COUNTED_INTERFACES, COUNTERS, Counter, DEBUG_LOG, DatapathControl, Direction,
    FLOWS_EVEN, FLOWS_ODD, FRAGMENTS, FlowEvent, FlowKey, FlowStats, FragmentKey, FragmentPorts,
    PAGED_READS_ONLY, PROGRAM_EGRESS, PROGRAM_INGRESS, SPILL,
};
use pin::{MapShape, PINNED_MAPS, PinDir, PinError};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::drain::{DrainedFlows, FlowSample};

/// The compiled flow-agent eBPF object (TC classifiers and maps).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flow-agent-ebpf"));

/// Test and benchmark classifiers: `drop_all` (drops every packet, like a CNI
/// program that redirects) and `pass_through` (does nothing).
pub static TESTKIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flow-agent-testkit"));

/// How programs are attached to an interface.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX on Linux 6.6 and later, clsact (netlink) before.
    #[default]
    Auto,
    /// TCX links (Linux 6.6+), placed at the head of the chain.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc (any kernel with BPF).
    Tc,
}

/// Settings for [`Datapath::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Capacity of each of the two flow maps, in flows.
    pub map_entries: u32,
    /// Size of the spill ring buffer in bytes (power of two, multiple of the page size).
    pub spill_bytes: u32,
    /// How programs are attached.
    pub attach_mode: AttachMode,
    /// Log from the eBPF programs (aya-log). Costs a branch per packet when on.
    pub ebpf_debug: bool,
    /// Read every header through `bpf_skb_load_bytes`, the path normally taken
    /// only by packets whose headers lie in paged data: for tests, slower.
    pub paged_reads_only: bool,
    /// Pin maps and links under this bpffs directory, and take over what an
    /// earlier agent pinned there: restarts lose nothing (see [`pin`]).
    pub pin_dir: Option<PathBuf>,
}

/// Memory the two flow maps may take by default, in bytes.
pub const DEFAULT_FLOW_MAP_BUDGET: u64 = 64 << 20;

/// Kernel memory of one preallocated flow map entry: the element with its key
/// (measured: about 120 bytes) plus one [`FlowStats`] per possible CPU.
pub fn bytes_per_map_entry(cpus: u64) -> u64 {
    120 + size_of::<FlowStats>() as u64 * cpus
}

/// Default capacity of each flow map: what fits [`DEFAULT_FLOW_MAP_BUDGET`] for
/// both maps on this machine's possible CPUs, between 4096 and 65536 entries.
/// Per-CPU maps cost memory per CPU, so big nodes get fewer entries; the agent
/// drains early when the active map is half full, and a full map spills to the
/// ring buffer.
pub fn auto_map_entries() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(64, |cpus| cpus as u64);
    let entries = DEFAULT_FLOW_MAP_BUDGET / 2 / bytes_per_map_entry(cpus);
    entries.clamp(4096, 65_536) as u32
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            map_entries: auto_map_entries(),
            spill_bytes: flow_common::DEFAULT_SPILL_BYTES,
            attach_mode: AttachMode::Auto,
            ebpf_debug: false,
            paged_reads_only: false,
            pin_dir: None,
        }
    }
}

/// Errors from loading, attaching and draining the eBPF programs.
#[derive(Debug, Error)]
pub enum DatapathError {
    /// The process lacks the privileges to use BPF.
    #[error(
        "not permitted to use BPF ({source}): run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    NotPermitted {
        /// The refused call.
        #[source]
        source: io::Error,
    },
    /// The kernel has no BPF support.
    #[error(
        "this kernel does not support BPF ({source}): flow-agent needs Linux 5.8+ built with CONFIG_BPF_SYSCALL"
    )]
    NoKernelSupport {
        /// The failed call.
        #[source]
        source: io::Error,
    },
    /// Loading the eBPF object failed.
    #[error("failed to load the eBPF programs")]
    Load(#[source] Box<EbpfError>),
    /// A program could not be loaded into the kernel.
    #[error("the kernel rejected program {program}")]
    LoadProgram {
        /// Program name.
        program: &'static str,
        /// The error, with the verifier log.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map the programs need is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map operation failed.
    #[error("{operation} on map {map} failed")]
    Map {
        /// What was being done.
        operation: &'static str,
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: Box<MapError>,
    },
    /// Attaching a program failed.
    #[error("failed to attach {program} to {interface} ({mode})")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        interface: String,
        /// `tcx` or `tc`.
        mode: &'static str,
        /// The error.
        #[source]
        source: Box<ProgramError>,
    },
    /// TCX was requested on a kernel without it.
    #[error("TCX needs Linux 6.6 or later (this kernel is {0}); use --attach-mode tc")]
    TcxUnsupported(String),
    /// Waiting for running programs failed.
    #[error("waiting for running BPF programs failed")]
    Barrier(#[source] io::Error),
    /// Pinning failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// Draining a flow map failed.
    #[error("draining map {map} failed")]
    Drain {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl DatapathError {
    /// Classifies an error from a BPF syscall: privilege and missing-kernel-support
    /// errors get their own variants so the user is told what to do.
    fn from_syscall(error: io::Error) -> Option<Self> {
        match error.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Some(Self::NotPermitted { source: error }),
            Some(libc::ENOSYS) => Some(Self::NoKernelSupport { source: error }),
            _ => None,
        }
    }
}

/// Finds the first `io::Error` in an error's source chain.
fn root_io_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            return Some(io_error);
        }
        current = error.source();
    }
    None
}

fn classify(error: DatapathError) -> DatapathError {
    let errno = root_io_error(&error).and_then(io::Error::raw_os_error);
    match errno {
        Some(errno @ (libc::EPERM | libc::EACCES | libc::ENOSYS)) => {
            DatapathError::from_syscall(io::Error::from_raw_os_error(errno)).unwrap_or(error)
        }
        _ => error,
    }
}

/// Datapath counters, summed over CPUs. See [`Counter`] for their meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathCounters(pub [u64; Counter::COUNT as usize]);

impl DatapathCounters {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        let Self(values) = self;
        values[counter as usize]
    }

    /// What each counter added since `baseline` (pinned counters carry an
    /// earlier agent's totals).
    pub fn since(&self, baseline: &Self) -> Self {
        let mut values = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            values[counter as usize] = self.get(counter).saturating_sub(baseline.get(counter));
        }
        Self(values)
    }

    /// Counters that grew since `earlier`, with the increase.
    pub fn increase_since(&self, earlier: &Self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .filter_map(|&counter| {
                let delta = self.get(counter).saturating_sub(earlier.get(counter));
                (delta > 0).then_some((counter, delta))
            })
            .collect()
    }
}

/// How a program is attached to one hook.
enum Hook {
    /// Owned by the program object: detached when the agent exits.
    Owned(SchedClassifierLinkId),
    /// A TCX link pinned in bpffs: attached until the pin is removed.
    Pinned(PathBuf),
    /// A clsact filter kept when the agent exits (pinning on).
    Filter(SchedClassifierLink),
}

struct Attachment {
    name: String,
    ingress: Hook,
    egress: Option<Hook>,
}

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    flows_even: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    flows_odd: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    control: Array<MapData, DatapathControl>,
    counters: PerCpuArray<MapData, u64>,
    counted_interfaces: BpfHashMap<MapData, u32, u8>,
    /// Bridges whose every port is attached: in the counted set too (see
    /// [`Datapath::set_bridges`]).
    bridges: BTreeSet<u32>,
    spill: RingBuf<MapData>,
    barrier: sys::RcuBarrier,
    epoch: u32,
    attach_mode: AttachMode,
    pins: Option<PinDir>,
    attachments: BTreeMap<u32, Attachment>,
    batch_supported: bool,
    map_entries: u32,
    /// `Counter::Inserted` when the active map was last emptied.
    inserted_at_flip: u64,
    /// Buffers for batched draining, kept across drains.
    batch_keys: Vec<u8>,
    batch_values: Vec<u8>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("epoch", &self.epoch)
            .field("attach_mode", &self.attach_mode)
            .field("interfaces", &self.attachments.len())
            .finish_non_exhaustive()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn typed<T>(map: aya::maps::Map, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| DatapathError::Map {
        operation: "open",
        map: name,
        source: Box::new(source),
    })
}

/// Takes over a pinned TCX link: swaps `classifier` in with `BPF_LINK_UPDATE`
/// and leaves the link pinned.
fn take_over_link(classifier: &mut SchedClassifier, path: &std::path::Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|error| error.to_string())?;
    let link =
        SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|error| error.to_string())?;
    let link = classifier
        .attach_to_link(link)
        .map_err(|error| error.to_string())?;
    // The pin holds the link; our descriptor can go.
    let link = classifier
        .take_link(link)
        .map_err(|error| error.to_string())?;
    drop(FdLink::try_from(link).map_err(|error| error.to_string())?);
    Ok(())
}

/// Checks the pinned maps' shapes and returns the flow map capacity and
/// spill size to use: those of the pinned maps when they are pinned (a
/// different configured size takes effect after `flow-agent cleanup`).
fn pinned_sizes(
    pins: &PinDir,
    map_entries: u32,
    spill_bytes: u32,
) -> Result<(u32, u32), DatapathError> {
    let shape = |map_type, key: usize, value: usize| MapShape {
        map_type,
        key_size: key as u32,
        value_size: value as u32,
    };
    let flows = shape(
        MapType::PerCpuHash,
        size_of::<FlowKey>(),
        size_of::<FlowStats>(),
    );
    let mut entries = map_entries;
    for name in [FLOWS_EVEN, FLOWS_ODD] {
        if let Some(pinned) = pins.pinned_capacity(name, flows)? {
            if pinned != map_entries {
                warn!(
                    map = name,
                    pinned,
                    configured = map_entries,
                    "using the pinned flow map's size; run flow-agent cleanup to change it"
                );
            }
            entries = pinned;
        }
    }
    pins.pinned_capacity(
        CONTROL,
        shape(MapType::Array, 4, size_of::<DatapathControl>()),
    )?;
    // A pinned counter array of another length (an agent with fewer or more
    // counters) would drop increments or fail every read.
    if let Some(pinned) = pins.pinned_capacity(COUNTERS, shape(MapType::PerCpuArray, 4, 8))?
        && pinned != Counter::COUNT
    {
        return Err(DatapathError::Pin(PinError::Incompatible {
            path: pins.map(COUNTERS),
            dir: pins.root().to_owned(),
            problem: format!(
                "{pinned} counters pinned, this agent keeps {}",
                Counter::COUNT
            ),
        }));
    }
    pins.pinned_capacity(COUNTED_INTERFACES, shape(MapType::Hash, 4, 1))?;
    pins.pinned_capacity(
        FRAGMENTS,
        shape(
            MapType::LruHash,
            size_of::<FragmentKey>(),
            size_of::<FragmentPorts>(),
        ),
    )?;
    let spill = pins
        .pinned_capacity(SPILL, shape(MapType::RingBuf, 0, 0))?
        .unwrap_or(spill_bytes);
    Ok((entries, spill))
}

/// Raises RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps against it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Checks that BPF is available and permitted by creating (and dropping) a map,
/// so the user gets a precise error before anything else happens.
fn probe_bpf() -> Result<(), DatapathError> {
    match Array::<MapData, u32>::create(1, 0) {
        Ok(_) => Ok(()),
        Err(error) => {
            let io_error = root_io_error(&error)
                .and_then(io::Error::raw_os_error)
                .map(io::Error::from_raw_os_error);
            Err(io_error
                .and_then(DatapathError::from_syscall)
                .unwrap_or(DatapathError::Map {
                    operation: "create a probe",
                    map: "probe",
                    source: Box::new(error),
                }))
        }
    }
}

impl Datapath {
    /// Loads and verifies the programs and opens their maps; attaches nothing.
    pub fn load(config: &DatapathConfig) -> Result<Self, DatapathError> {
        let DatapathConfig {
            mut map_entries,
            mut spill_bytes,
            attach_mode,
            ebpf_debug,
            paged_reads_only,
            ref pin_dir,
        } = *config;
        raise_memlock_limit();
        probe_bpf()?;
        if attach_mode == AttachMode::Tcx && !tcx_supported() {
            return Err(DatapathError::TcxUnsupported(kernel_version_string()));
        }

        let pins = pin_dir.as_deref().map(PinDir::open).transpose()?;
        if let Some(pins) = &pins {
            (map_entries, spill_bytes) = pinned_sizes(pins, map_entries, spill_bytes)?;
        }
        let debug_flag = u8::from(ebpf_debug);
        let paged_flag = u8::from(paged_reads_only);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(FLOWS_EVEN, map_entries)
            .map_max_entries(FLOWS_ODD, map_entries)
            .map_max_entries(SPILL, spill_bytes)
            .override_global(DEBUG_LOG, &debug_flag, true)
            .override_global(PAGED_READS_ONLY, &paged_flag, true);
        if let Some(pins) = &pins {
            // Open the pinned maps, or create and pin them.
            for name in PINNED_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|error| classify(DatapathError::Load(Box::new(error))))?;

        if ebpf_debug {
            start_ebpf_logger(&mut ebpf);
        }
        for program in [PROGRAM_INGRESS, PROGRAM_EGRESS] {
            classifier(&mut ebpf, program)?.load().map_err(|source| {
                classify(DatapathError::LoadProgram {
                    program,
                    source: Box::new(source),
                })
            })?;
        }

        let flows_even = typed(take_map(&mut ebpf, FLOWS_EVEN)?, FLOWS_EVEN)?;
        let flows_odd = typed(take_map(&mut ebpf, FLOWS_ODD)?, FLOWS_ODD)?;
        let control: Array<MapData, DatapathControl> =
            typed(take_map(&mut ebpf, CONTROL)?, CONTROL)?;
        let counters = typed(take_map(&mut ebpf, COUNTERS)?, COUNTERS)?;
        let counted_interfaces =
            typed(take_map(&mut ebpf, COUNTED_INTERFACES)?, COUNTED_INTERFACES)?;
        let spill = typed(take_map(&mut ebpf, SPILL)?, SPILL)?;
        let DatapathControl { epoch, .. } =
            control.get(&0, 0).map_err(|source| DatapathError::Map {
                operation: "read",
                map: CONTROL,
                source: Box::new(source),
            })?;
        let barrier = sys::RcuBarrier::new().map_err(DatapathError::Barrier)?;
        let mut datapath = Self {
            ebpf,
            flows_even,
            flows_odd,
            control,
            counters,
            counted_interfaces,
            bridges: BTreeSet::new(),
            spill,
            barrier,
            epoch,
            attach_mode,
            pins,
            attachments: BTreeMap::new(),
            batch_supported: true,
            map_entries,
            inserted_at_flip: 0,
            batch_keys: Vec::new(),
            batch_values: Vec::new(),
        };
        // Pinned counters carry an earlier agent's totals.
        datapath.inserted_at_flip = datapath.inserted()?;
        Ok(datapath)
    }

    /// Maps and links are pinned: they outlive this agent.
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// The classifier for one direction, for tests and benchmarks that run it
    /// with `BPF_PROG_TEST_RUN`.
    pub fn classifier_mut(
        &mut self,
        direction: Direction,
    ) -> Result<&mut SchedClassifier, DatapathError> {
        let name = match direction {
            Direction::Ingress => PROGRAM_INGRESS,
            Direction::Egress => PROGRAM_EGRESS,
        };
        classifier(&mut self.ebpf, name)
    }

    /// The effective attach mode on this kernel.
    pub fn effective_attach_mode(&self) -> AttachMode {
        match self.attach_mode {
            AttachMode::Auto if tcx_supported() => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Tc,
            mode => mode,
        }
    }

    /// Interfaces (index and name) with programs attached.
    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attachments
            .iter()
            .map(|(index, Attachment { name, .. })| (*index, name.as_str()))
    }

    /// Records an attached interface's new name (a rename within the
    /// selection: the programs stay).
    pub fn rename(&mut self, index: u32, name: &str) {
        if let Some(attachment) = self.attachments.get_mut(&index) {
            name.clone_into(&mut attachment.name);
        }
    }

    /// Attaches both programs to each interface. All ingress programs go first,
    /// then the interfaces join the counted set, then the egress programs: no
    /// packet between two of these interfaces is counted twice or missed.
    /// With pinning, a link or filter an earlier agent left is taken over by
    /// swapping this agent's program in, atomically.
    ///
    /// Returns the interfaces that failed, with why; the others stay attached.
    pub fn attach_all(&mut self, interfaces: &[(u32, String)]) -> Vec<(String, DatapathError)> {
        let mut failures = Vec::new();
        let mut ready = Vec::new();
        for (index, name) in interfaces {
            if self.attachments.contains_key(index) {
                continue;
            }
            match self.attach_one(*index, name, TcAttachType::Ingress) {
                Ok(ingress) => {
                    self.attachments.insert(
                        *index,
                        Attachment {
                            name: name.clone(),
                            ingress,
                            egress: None,
                        },
                    );
                    ready.push((*index, name.clone()));
                }
                Err(error) => failures.push((name.clone(), error)),
            }
        }
        for (index, name) in ready {
            let result = self
                .counted_interfaces
                .insert(index, 1, 0)
                .map_err(|source| DatapathError::Map {
                    operation: "insert",
                    map: COUNTED_INTERFACES,
                    source: Box::new(source),
                })
                .and_then(|()| self.attach_one(index, &name, TcAttachType::Egress));
            match result {
                Ok(egress) => {
                    if let Some(attachment) = self.attachments.get_mut(&index) {
                        attachment.egress = Some(egress);
                    }
                }
                Err(error) => {
                    self.detach(index);
                    failures.push((name, error));
                }
            }
        }
        failures
    }

    fn attach_one(
        &mut self,
        index: u32,
        interface: &str,
        attach_type: TcAttachType,
    ) -> Result<Hook, DatapathError> {
        let program = match attach_type {
            TcAttachType::Egress => PROGRAM_EGRESS,
            _ => PROGRAM_INGRESS,
        };
        let mode = self.effective_attach_mode();
        let pin_path = self.pins.as_ref().map(|pins| pins.link(index, attach_type));
        let classifier = classifier(&mut self.ebpf, program)?;
        let error = |mode, source| DatapathError::Attach {
            program,
            interface: interface.to_owned(),
            mode,
            source: Box::new(source),
        };
        if mode == AttachMode::Tcx {
            if let Some(path) = &pin_path
                && path.exists()
            {
                match take_over_link(classifier, path) {
                    Ok(()) => {
                        debug!(interface, program, "took over the pinned link");
                        remove_our_filters(interface, attach_type, program);
                        return Ok(Hook::Pinned(path.clone()));
                    }
                    Err(takeover) => {
                        // The interface it was attached to is gone (the index
                        // was reused): start afresh.
                        info!(interface, error = %takeover, "pinned link unusable; attaching anew");
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            // Head of the chain: a CNI program that redirects or drops (Cilium)
            // must not hide packets from us.
            let link = classifier
                .attach_with_options(
                    interface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|source| error("tcx", source))?;
            // A clsact filter of ours from an agent that ran in tc mode (or
            // was killed) would count every packet a second time.
            remove_our_filters(interface, attach_type, program);
            let Some(path) = pin_path else {
                return Ok(Hook::Owned(link));
            };
            let link = classifier
                .take_link(link)
                .map_err(|source| error("tcx", source))?;
            let link = FdLink::try_from(link).map_err(|source| {
                DatapathError::Pin(PinError::Io {
                    operation: "take the link to pin at",
                    path: path.clone(),
                    source: io::Error::other(source.to_string()),
                })
            })?;
            link.pin(&path).map_err(|source| {
                DatapathError::Pin(PinError::Io {
                    operation: "pin",
                    path: path.clone(),
                    source: io::Error::other(source.to_string()),
                })
            })?;
            return Ok(Hook::Pinned(path));
        }
        // Add clsact if missing; an existing qdisc (EEXIST) is left untouched and
        // is never deleted, since other programs may hang off it.
        if let Err(qdisc_error) = tc::qdisc_add_clsact(interface) {
            debug!(interface, error = %qdisc_error, "clsact not added (usually: it already exists)");
        }
        // Priority 1 runs before any filter a CNI adds at a higher number; our
        // own handle keeps a CNI that replaces "prio 1 handle 1" from replacing us.
        let preferred = NlOptions {
            priority: 1,
            handle: TcHandle::new(0, 0xfa),
            classid: None,
        };
        if self.pins.is_some() {
            // Our filter from an earlier agent: replace its program in place,
            // atomically, so counting never stops.
            if let Ok(existing) = SchedClassifierLink::attached(
                interface,
                attach_type,
                preferred.priority,
                preferred.handle,
                None,
            ) && let Ok(link) = classifier.attach_to_link(existing)
            {
                debug!(interface, program, "took over the filter in place");
                release_pinned_link(pin_path.as_deref(), interface, program);
                let link = classifier
                    .take_link(link)
                    .map_err(|source| error("tc", source))?;
                return Ok(Hook::Filter(link));
            }
        } else {
            // A filter of ours left by an agent that was killed (netlink
            // filters, unlike TCX links, outlive their process) would keep
            // running: remove filters whose program carries our name, and
            // nothing else.
            remove_our_filters(interface, attach_type, program);
        }
        let link = match classifier.attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::Netlink(preferred),
        ) {
            Ok(link) => link,
            Err(first_error) => {
                // Priority 1 is taken by a filter of another kind, and nothing
                // runs ahead of priority 1: the kernel's automatic priority
                // (49152 on an empty chain position) puts us behind it. What
                // that filter redirects or drops is not seen; TCX (6.6+)
                // avoids this.
                warn!(interface, error = %first_error, "priority 1 is held by another filter; attaching behind it, packets it steers away are not counted");
                classifier
                    .attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .map_err(|source| error("tc", source))?
            }
        };
        release_pinned_link(pin_path.as_deref(), interface, program);
        if self.pins.is_some() {
            let link = classifier
                .take_link(link)
                .map_err(|source| error("tc", source))?;
            return Ok(Hook::Filter(link));
        }
        Ok(Hook::Owned(link))
    }

    fn detach_hook(&mut self, hook: Hook, program: &'static str, interface: &str) {
        let result = match hook {
            Hook::Owned(link) => classifier(&mut self.ebpf, program)
                .map_err(|error| error.to_string())
                .and_then(|classifier| classifier.detach(link).map_err(|error| error.to_string())),
            // Removing the pin releases the link: the kernel detaches it.
            Hook::Pinned(path) => std::fs::remove_file(&path).map_err(|error| error.to_string()),
            Hook::Filter(link) => {
                use aya::programs::Link as _;
                link.detach().map_err(|error| error.to_string())
            }
        };
        if let Err(error) = result {
            debug!(interface, program, %error, "detach failed (interface probably gone)");
        }
    }

    /// Detaches both programs from an interface (which may already be gone).
    pub fn detach(&mut self, index: u32) {
        let Some(Attachment {
            name,
            ingress,
            egress,
        }) = self.attachments.remove(&index)
        else {
            return;
        };
        if let Some(egress) = egress {
            self.detach_hook(egress, PROGRAM_EGRESS, &name);
        }
        if let Err(error) = self.counted_interfaces.remove(&index) {
            debug!(interface = name, %error, "interface was not in the counted set");
        }
        self.detach_hook(ingress, PROGRAM_INGRESS, &name);
    }

    /// Detaches from every interface: egress programs first, then the counted
    /// set, then ingress programs, the reverse of [`Datapath::attach_all`].
    pub fn detach_all(&mut self) {
        let indexes: Vec<u32> = self.attachments.keys().copied().collect();
        for index in &indexes {
            let egress = self
                .attachments
                .get_mut(index)
                .and_then(|attachment| attachment.egress.take());
            let name = self
                .attachments
                .get(index)
                .map(|attachment| attachment.name.clone())
                .unwrap_or_default();
            if let Some(egress) = egress {
                self.detach_hook(egress, PROGRAM_EGRESS, &name);
            }
        }
        for index in indexes {
            self.detach(index);
        }
    }

    /// Leaves every program attached for the next agent (pinning on): pinned
    /// links stay in bpffs, clsact filters stay on their qdisc. Without
    /// pinning, detaches.
    pub fn release_all(&mut self) {
        if self.pins.is_none() {
            self.detach_all();
            return;
        }
        for (_, attachment) in std::mem::take(&mut self.attachments) {
            let Attachment {
                ingress, egress, ..
            } = attachment;
            for hook in [Some(ingress), egress].into_iter().flatten() {
                match hook {
                    // Dropping the link would detach the filter.
                    Hook::Filter(link) => std::mem::forget(link),
                    Hook::Pinned(_) | Hook::Owned(_) => {}
                }
            }
        }
    }

    /// Bridges in the counted set.
    pub fn bridges(&self) -> &BTreeSet<u32> {
        &self.bridges
    }

    /// Marks bridges whose every port is attached as counted, and unmarks the
    /// others.
    ///
    /// A packet a pod sends to its gateway's address on a bridge (a routed
    /// or DNATed connection: another subnet, a Service) is counted on the
    /// port's ingress, passed up to the bridge device, which becomes its
    /// ingress interface, routed, and sent out through another port: that
    /// port's egress program skips it only if the bridge is in the counted
    /// set. Only bridges without unwatched ports qualify, or packets of an
    /// unwatched port would be skipped without ever being counted.
    pub fn set_bridges(&mut self, bridges: &BTreeSet<u32>) {
        for &index in self.bridges.difference(bridges) {
            if !self.attachments.contains_key(&index)
                && let Err(error) = self.counted_interfaces.remove(&index)
            {
                debug!(index, %error, "bridge was not in the counted set");
            }
        }
        let mut kept = BTreeSet::new();
        for &index in bridges {
            if self.bridges.contains(&index) {
                kept.insert(index);
                continue;
            }
            match self.counted_interfaces.insert(index, 2, 0) {
                Ok(()) => {
                    kept.insert(index);
                }
                Err(error) => {
                    warn!(index, %error, "cannot mark a bridge as counted; packets it routes between pods are counted twice")
                }
            }
        }
        self.bridges = kept;
    }

    /// After the first attach with pinning: removes the pins and counted-set
    /// entries of interfaces this agent does not attach to (gone, renamed out
    /// of the selection), so nothing is left counting for nobody and no
    /// interface is skipped as counted elsewhere.
    pub fn reconcile_pins(&mut self) {
        let Some(pins) = self.pins.clone() else {
            return;
        };
        for index in pins.linked_interfaces() {
            if self.attachments.contains_key(&index) {
                continue;
            }
            // The counted set first, then the egress hook, then ingress.
            let _ = self.counted_interfaces.remove(&index);
            for attach_type in [TcAttachType::Egress, TcAttachType::Ingress] {
                let path = pins.link(index, attach_type);
                if std::fs::remove_file(&path).is_ok() {
                    info!(index, path = %path.display(), "removed the pinned link of an interface no longer watched");
                }
            }
        }
        let stale: Vec<u32> = self
            .counted_interfaces
            .keys()
            .filter_map(Result::ok)
            .filter(|index| !self.attachments.contains_key(index) && !self.bridges.contains(index))
            .collect();
        for index in stale {
            let _ = self.counted_interfaces.remove(&index);
        }
    }

    /// Datapath counters summed over CPUs.
    pub fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        let mut totals = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let values =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        operation: "read",
                        map: COUNTERS,
                        source: Box::new(source),
                    })?;
            totals[counter as usize] = values.iter().sum();
        }
        Ok(DatapathCounters(totals))
    }

    fn inserted(&self) -> Result<u64, DatapathError> {
        let values = self
            .counters
            .get(&(Counter::Inserted as u32), 0)
            .map_err(|source| DatapathError::Map {
                operation: "read",
                map: COUNTERS,
                source: Box::new(source),
            })?;
        Ok(values.iter().sum())
    }

    /// Capacity of each flow map.
    pub fn map_entries(&self) -> u32 {
        self.map_entries
    }

    /// Whether the active flow map is at least half full: time to drain early
    /// rather than let new flows spill. One map read; cheap to poll.
    pub fn needs_early_drain(&self) -> Result<bool, DatapathError> {
        let filled = self.inserted()?.saturating_sub(self.inserted_at_flip);
        Ok(filled >= u64::from(self.map_entries / 2))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Moves every flow counted since the previous drain out of the kernel.
    ///
    /// First empties the inactive map of what an interrupted drain left there
    /// (an agent killed in the middle of one, or a drain that failed): those
    /// slots carry the previous epoch, and the map becomes the active one at
    /// the switch, where the programs would reset them. Normally it is empty
    /// and this costs one system call. Then switches the epoch, waits for
    /// programs still using the old one, and empties the old epoch's map and
    /// the spill ring buffer.
    ///
    /// A map that fails part-way is logged, not returned as an error: what was
    /// moved out is kept, and the rest is picked up by the next drain.
    pub fn drain(&mut self) -> Result<DrainedFlows, DatapathError> {
        let mut flows = DrainedFlows::default();
        let leftover_epoch = self.epoch.wrapping_sub(1);
        self.drain_map_keeping(leftover_epoch, &mut flows);
        let drained_epoch = self.epoch;
        self.advance_epoch()?;
        self.inserted_at_flip = self.inserted()?;
        self.drain_map_keeping(drained_epoch, &mut flows);
        self.drain_spill(&mut flows);
        Ok(flows)
    }

    /// [`Self::drain_map`], logging a failure: flows already moved stay in
    /// `flows`, the rest stays in the map for the next drain.
    fn drain_map_keeping(&mut self, epoch: u32, flows: &mut DrainedFlows) {
        if let Err(error) = self.drain_map(epoch, flows) {
            warn!(
                epoch,
                error = %error,
                "drain interrupted; what is left in the map is drained next time"
            );
        }
    }

    /// Drains both flow maps and the spill ring buffer. Call after
    /// [`Datapath::detach_all`] so that nothing is counted afterwards.
    pub fn drain_final(&mut self) -> Result<DrainedFlows, DatapathError> {
        let mut flows = self.drain()?;
        let current = self.epoch;
        self.barrier.wait().map_err(DatapathError::Barrier)?;
        self.drain_map_keeping(current, &mut flows);
        self.drain_spill(&mut flows);
        Ok(flows)
    }

    fn advance_epoch(&mut self) -> Result<(), DatapathError> {
        let next = self.epoch.wrapping_add(1);
        self.control
            .set(
                0,
                DatapathControl {
                    epoch: next,
                    _pad: 0,
                },
                0,
            )
            .map_err(|source| DatapathError::Map {
                operation: "write",
                map: CONTROL,
                source: Box::new(source),
            })?;
        self.epoch = next;
        self.barrier.wait().map_err(DatapathError::Barrier)
    }

    fn drain_map(&mut self, epoch: u32, flows: &mut DrainedFlows) -> Result<(), DatapathError> {
        let name = if epoch & 1 == 0 {
            FLOWS_EVEN
        } else {
            FLOWS_ODD
        };
        if self.batch_supported {
            match self.drain_map_batched(epoch, flows) {
                Ok(()) => return Ok(()),
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
                    ) =>
                {
                    // 524 is ENOTSUPP: the kernel predates batch operations (5.6).
                    debug!(%error, "batched drain unsupported, draining key by key");
                    self.batch_supported = false;
                }
                Err(source) => return Err(DatapathError::Drain { map: name, source }),
            }
        }
        self.drain_map_by_key(epoch, flows)
    }

    fn flows_map(
        &mut self,
        epoch: u32,
    ) -> (
        &'static str,
        &mut PerCpuHashMap<MapData, FlowKey, FlowStats>,
    ) {
        if epoch & 1 == 0 {
            (FLOWS_EVEN, &mut self.flows_even)
        } else {
            (FLOWS_ODD, &mut self.flows_odd)
        }
    }

    fn drain_map_batched(&mut self, epoch: u32, flows: &mut DrainedFlows) -> io::Result<()> {
        const BATCH: usize = 4096;
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        // Per-CPU values come as one slot per possible CPU, each rounded up to 8 bytes.
        let stride = size_of::<FlowStats>().next_multiple_of(8);
        let key_size = size_of::<FlowKey>();
        let mut keys = std::mem::take(&mut self.batch_keys);
        let mut values = std::mem::take(&mut self.batch_values);
        keys.resize(BATCH * key_size, 0);
        values.resize(BATCH * stride * cpus, 0);
        let (_, map) = self.flows_map(epoch);
        let fd = aya::maps::IterableMap::map(&*map).fd().as_fd();
        let mut token = None;
        let mut slots = Vec::with_capacity(cpus);
        let result = loop {
            let sys::Batch { count, done } = match sys::lookup_and_delete_batch(
                fd,
                &mut token,
                &mut keys,
                &mut values,
                BATCH as u32,
            ) {
                Ok(batch) => batch,
                Err(error) => break Err(error),
            };
            for entry in 0..count.min(BATCH) {
                // SAFETY: the kernel wrote `count` keys of FlowKey's exact size.
                let key: FlowKey =
                    unsafe { std::ptr::read_unaligned(keys[entry * key_size..].as_ptr().cast()) };
                slots.clear();
                for cpu in 0..cpus {
                    let offset = (entry * cpus + cpu) * stride;
                    // SAFETY: as above, one FlowStats per CPU slot.
                    slots.push(unsafe {
                        std::ptr::read_unaligned(values[offset..].as_ptr().cast())
                    });
                }
                flows.add_slots(key, &slots, epoch);
            }
            if done {
                break Ok(());
            }
        };
        self.batch_keys = keys;
        self.batch_values = values;
        result
    }

    fn drain_map_by_key(
        &mut self,
        epoch: u32,
        flows: &mut DrainedFlows,
    ) -> Result<(), DatapathError> {
        let (name, map) = self.flows_map(epoch);
        let keys = map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DatapathError::Map {
                operation: "list keys of",
                map: name,
                source: Box::new(source),
            })?;
        for key in keys {
            match map.get(&key, 0) {
                Ok(values) => flows.add_slots(key, &values, epoch),
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(DatapathError::Map {
                        operation: "read",
                        map: name,
                        source: Box::new(source),
                    });
                }
            }
            if let Err(source) = map.remove(&key)
                && !matches!(source, MapError::KeyNotFound)
            {
                return Err(DatapathError::Map {
                    operation: "delete from",
                    map: name,
                    source: Box::new(source),
                });
            }
        }
        Ok(())
    }

    fn drain_spill(&mut self, flows: &mut DrainedFlows) {
        while let Some(item) = self.spill.next() {
            if item.len() < size_of::<FlowEvent>() {
                warn!(len = item.len(), "short spill record ignored");
                continue;
            }
            // SAFETY: the record holds a FlowEvent written by the programs.
            let FlowEvent { key, stats } =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
            flows.add_sample(FlowSample::from_stats(key, &stats));
        }
    }
}

/// Releases a TCX link pinned by an agent that ran in tcx mode, once a filter
/// counts in its place: both would count every packet.
fn release_pinned_link(path: Option<&std::path::Path>, interface: &str, program: &'static str) {
    let Some(path) = path.filter(|path| path.exists()) else {
        return;
    };
    match std::fs::remove_file(path) {
        Ok(()) => info!(interface, program, "released a TCX link pinned in tcx mode"),
        Err(error) => {
            warn!(interface, %error, path = %path.display(), "cannot release a pinned TCX link");
        }
    }
}

/// Removes clsact filters whose program carries our name from one hook of an
/// interface: left by an agent in tc mode, or by one that was killed.
fn remove_our_filters(interface: &str, attach_type: TcAttachType, program: &'static str) {
    match tc::qdisc_detach_program(interface, attach_type, program) {
        Ok(()) => info!(
            interface,
            program, "removed a filter left by an earlier agent"
        ),
        Err(tc::TcError::IoError(error)) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => debug!(interface, %error, "could not look for earlier filters"),
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(program)
        .ok_or(DatapathError::MissingProgram(program))?
        .try_into()
        .map_err(|source| DatapathError::LoadProgram {
            program,
            source: Box::new(source),
        })
}

/// TCX links need Linux 6.6.
fn tcx_supported() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

fn kernel_version_string() -> String {
    match KernelVersion::current() {
        Ok(version) => format!("{version:?}"),
        Err(error) => format!("unknown: {error}"),
    }
}

fn start_ebpf_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                warn!("eBPF debug logging needs a tokio runtime; logs will not be read");
                return;
            };
            handle.spawn(async move {
                // SAFETY: the logger owns its ring buffer fd for as long as it
                // lives, and the AsyncFd owns the logger.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                let mut logger = match registered {
                    Ok(logger) => logger,
                    Err(error) => {
                        let (_, error) = error.into_parts();
                        warn!(%error, "cannot poll the eBPF log buffer");
                        return;
                    }
                };
                loop {
                    let Ok(mut guard) = logger.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(error) => warn!(%error, "eBPF debug logging unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_and_missing_bpf_errors_say_what_to_do() {
        let error = DatapathError::from_syscall(io::Error::from_raw_os_error(libc::EPERM)).unwrap();
        let message = error.to_string();
        assert!(
            message.contains("run as root") && message.contains("CAP_BPF"),
            "{message}"
        );
        let error =
            DatapathError::from_syscall(io::Error::from_raw_os_error(libc::ENOSYS)).unwrap();
        assert!(error.to_string().contains("CONFIG_BPF_SYSCALL"), "{error}");
        assert!(DatapathError::from_syscall(io::Error::from_raw_os_error(libc::EINVAL)).is_none());
    }

    #[test]
    fn errors_deep_in_a_chain_are_classified_by_their_errno() {
        let wrapped = DatapathError::Barrier(io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(
            classify(wrapped),
            DatapathError::NotPermitted { .. }
        ));
        let other = DatapathError::Barrier(io::Error::from_raw_os_error(libc::EBADF));
        assert!(matches!(classify(other), DatapathError::Barrier(_)));
    }

    #[test]
    fn counter_increases_are_reported_per_counter() {
        let mut earlier = [0u64; Counter::COUNT as usize];
        earlier[Counter::MapFull as usize] = 5;
        let mut now = earlier;
        now[Counter::MapFull as usize] = 8;
        now[Counter::Lost as usize] = 1;
        let increases = DatapathCounters(now).increase_since(&DatapathCounters(earlier));
        assert_eq!(increases, [(Counter::MapFull, 3), (Counter::Lost, 1)]);
        // Since a pinned baseline: this agent's share only, never negative.
        let since = DatapathCounters(now).since(&DatapathCounters(earlier));
        assert_eq!(
            (
                since.get(Counter::MapFull),
                since.get(Counter::Lost),
                since.get(Counter::Inserted)
            ),
            (3, 1, 0)
        );
        assert_eq!(
            DatapathCounters(earlier)
                .since(&DatapathCounters(now))
                .get(Counter::MapFull),
            0
        );
    }
}
