//! Loading: the eBPF object, its programs into the kernel, its maps (pinned
//! or not) opened; nothing attached.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, MapType},
    programs::SchedClassifier,
    util::KernelVersion,
};
use flow_common::{
    COARSE_CLOCK, CONTROL, COUNTED_BITS, COUNTED_INTERFACES, COUNTERS, Counter, DEBUG_LOG,
    DEFAULT_DNS_BYTES_PER_SECOND, DEFAULT_DNS_RING_BYTES, DNS_BYTES_PER_SECOND, DNS_COPY,
    DNS_FRAMES, DatapathControl, Direction, DnsCopy, FLOWS_EVEN, FLOWS_ODD, FRAGMENTS, FlowKey,
    FlowStats, FragmentKey, FragmentPorts, HELD_FLOWS, HeldFlows, NEW_FLOW_LOG, NewFlowLog,
    PAGED_READS_ONLY, PROGRAM_EGRESS, PROGRAM_INGRESS, SPILL,
};
use tracing::{debug, warn};

use super::{
    AttachMode, Datapath, DatapathError, EBPF_OBJECT,
    attach::{kernel_version_string, tcx_supported},
    counted, drain,
    error::{classify, root_io_error},
    logger::start_ebpf_logger,
    pin::{MapShape, PINNED_MAPS, PinDir, PinError},
    sys,
};

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
    /// Time packets with the precise clock even where the coarse one exists
    /// (Linux 5.11+): the path older kernels take, for tests; slower.
    pub precise_clock: bool,
    /// Pin maps and links under this bpffs directory, and take over what an
    /// earlier agent pinned there: restarts lose nothing (see [`pin`](super::pin)).
    pub pin_dir: Option<PathBuf>,
    /// Which DNS frames the programs copy, and how many.
    pub dns: DnsCopySettings,
}

/// What the programs copy of DNS traffic (see the eBPF crate's `dns` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsCopySettings {
    /// Answers, answers and queries, or nothing.
    pub copy: DnsCopy,
    /// Size of the ring buffer in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Bytes each CPU may copy per second; frames past it are counted.
    pub bytes_per_second: u32,
}

impl Default for DnsCopySettings {
    fn default() -> Self {
        Self {
            copy: DnsCopy::Answers,
            ring_bytes: DEFAULT_DNS_RING_BYTES,
            bytes_per_second: DEFAULT_DNS_BYTES_PER_SECOND,
        }
    }
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
            precise_clock: false,
            pin_dir: None,
            dns: DnsCopySettings::default(),
        }
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
    pins.pinned_capacity(COUNTED_BITS, shape(MapType::Array, 4, 8))?;
    pins.pinned_capacity(COUNTED_INTERFACES, shape(MapType::Hash, 4, 1))?;
    pins.pinned_capacity(
        HELD_FLOWS,
        shape(MapType::PerCpuArray, 4, size_of::<HeldFlows>()),
    )?;
    pins.pinned_capacity(
        NEW_FLOW_LOG,
        shape(MapType::PerCpuArray, 4, size_of::<NewFlowLog>()),
    )?;
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

/// A program of the object, as a classifier.
pub(super) fn classifier<'a>(
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

/// What the loader writes into the eBPF object before loading it.
struct ObjectSettings<'a> {
    map_entries: u32,
    spill_bytes: u32,
    ebpf_debug: bool,
    paged_reads_only: bool,
    coarse_clock: bool,
    dns: DnsCopySettings,
    pins: Option<&'a PinDir>,
}

/// Whether `bpf_ktime_get_coarse_ns` exists: Linux 5.11+. A packet's time then
/// costs a few nanoseconds instead of about 25, at the kernel tick's
/// resolution (1-4 ms).
fn coarse_clock_supported() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(5, 11, 0))
}

/// Loads the eBPF object with the maps sized, its globals set and, with
/// pinning, the pinned maps opened (or created and pinned).
fn load_object(settings: ObjectSettings<'_>) -> Result<Ebpf, DatapathError> {
    let ObjectSettings {
        map_entries,
        spill_bytes,
        ebpf_debug,
        paged_reads_only,
        coarse_clock,
        dns,
        pins,
    } = settings;
    let dns_copy = dns.copy as u8;
    let debug_flag = u8::from(ebpf_debug);
    let paged_flag = u8::from(paged_reads_only);
    let clock_flag = u8::from(coarse_clock);
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(FLOWS_EVEN, map_entries)
        .map_max_entries(FLOWS_ODD, map_entries)
        .map_max_entries(SPILL, spill_bytes)
        .override_global(DEBUG_LOG, &debug_flag, true)
        .override_global(PAGED_READS_ONLY, &paged_flag, true)
        .override_global(COARSE_CLOCK, &clock_flag, true)
        .map_max_entries(DNS_FRAMES, dns.ring_bytes)
        .override_global(DNS_COPY, &dns_copy, true)
        .override_global(DNS_BYTES_PER_SECOND, &dns.bytes_per_second, true);
    if let Some(pins) = pins {
        // Open the pinned maps, or create and pin them.
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    loader
        .load(EBPF_OBJECT)
        .map_err(|error| classify(DatapathError::Load(Box::new(error))))
}

/// Loads both classifiers into the kernel (the verifier runs here).
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for program in [PROGRAM_INGRESS, PROGRAM_EGRESS] {
        classifier(ebpf, program)?.load().map_err(|source| {
            classify(DatapathError::LoadProgram {
                program,
                source: Box::new(source),
            })
        })?;
    }
    Ok(())
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
            precise_clock,
            ref pin_dir,
            dns,
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
        let mut ebpf = load_object(ObjectSettings {
            map_entries,
            spill_bytes,
            ebpf_debug,
            paged_reads_only,
            coarse_clock: !precise_clock && coarse_clock_supported(),
            dns,
            pins: pins.as_ref(),
        })?;
        if ebpf_debug {
            start_ebpf_logger(&mut ebpf);
        }
        load_programs(&mut ebpf)?;
        Self::open_maps(ebpf, attach_mode, pins, map_entries)
    }

    /// Takes the maps out of the loaded object and reads the current epoch
    /// (pinned, an earlier agent's).
    fn open_maps(
        mut ebpf: Ebpf,
        attach_mode: AttachMode,
        pins: Option<PinDir>,
        map_entries: u32,
    ) -> Result<Self, DatapathError> {
        let flows_even = typed(take_map(&mut ebpf, FLOWS_EVEN)?, FLOWS_EVEN)?;
        let flows_odd = typed(take_map(&mut ebpf, FLOWS_ODD)?, FLOWS_ODD)?;
        let control: Array<MapData, DatapathControl> =
            typed(take_map(&mut ebpf, CONTROL)?, CONTROL)?;
        let counters = typed(take_map(&mut ebpf, COUNTERS)?, COUNTERS)?;
        let counted = counted::CountedSet::new(
            typed(take_map(&mut ebpf, COUNTED_BITS)?, COUNTED_BITS)?,
            typed(take_map(&mut ebpf, COUNTED_INTERFACES)?, COUNTED_INTERFACES)?,
        )?;
        let spill = typed(take_map(&mut ebpf, SPILL)?, SPILL)?;
        let held_flows = typed(take_map(&mut ebpf, HELD_FLOWS)?, HELD_FLOWS)?;
        let new_flow_log = typed(take_map(&mut ebpf, NEW_FLOW_LOG)?, NEW_FLOW_LOG)?;
        let dns_frames = typed(take_map(&mut ebpf, DNS_FRAMES)?, DNS_FRAMES)?;
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
            counted,
            bridges: BTreeSet::new(),
            spill,
            dns_frames,
            held_flows,
            new_flow_log,
            flow_log: drain::FlowLog::default(),
            barrier,
            epoch,
            attach_mode,
            pins,
            attachments: BTreeMap::new(),
            batch_supported: true,
            map_entries,
            inserted_at_flip: 0,
            batch_buffers: Default::default(),
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

    /// Capacity of each flow map.
    pub fn map_entries(&self) -> u32 {
        self.map_entries
    }
}
