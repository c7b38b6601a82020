//! Draining: the epoch switch, and the flow maps and spill ring buffer
//! emptied into [`DrainedFlows`].
//!
//! # Draining without losing a packet
//!
//! The programs count into the flow map of the current epoch (see
//! [`flow_common`]). [`Datapath::drain`] switches the epoch, waits one RCU grace
//! period so that no program can still be adding to the previous epoch's map,
//! then moves every entry out of that map (read keys and values, delete), and
//! every CPU's held flows of that epoch (read, then zero; see
//! [`flow_common::HeldFlows`]). Because nothing writes the drained map and
//! held flows any more, reading and deleting cannot race with a packet: each
//! packet is in exactly one drain.

use std::io;

use aya::maps::{MapData, MapError, PerCpuHashMap, PerCpuValues};
use flow_common::{
    CONTROL, DatapathControl, FLOWS_EVEN, FLOWS_ODD, FlowEvent, FlowKey, FlowStats, HELD_FLOWS,
    HeldFlows,
};
use tracing::{debug, warn};

use super::{
    Datapath, DatapathError,
    sys::{self, BatchMap},
};
use crate::drain::{DrainedFlows, FlowSample};

/// Entries moved out per batched call.
const BATCH: usize = 4096;

/// A drain with at most this many new flows listed moves out just those keys
/// (two system calls each); with more it walks the map, which costs the same
/// whatever the map holds but grows with its capacity.
const KEYED_DRAIN_LIMIT: usize = 1024;

/// How a flow map was emptied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainStrategy {
    /// Every bucket walked (batched, or key by key on old kernels).
    Walked,
    /// Just the keys the programs listed in `NEW_FLOW_LOG`: this many.
    Keyed(usize),
}

/// What the drain knows of the flow maps' keys from `NEW_FLOW_LOG`.
///
/// Every flow the programs create is listed in its CPU's log for the epoch,
/// unless that log overflowed (see [`flow_common::NewFlowLog`]). A map whose
/// drained epoch has no unlisted flow and few listed ones is emptied key by
/// key: an almost empty drain then costs the same at 65,536 entries as at 16
/// million.
#[derive(Debug)]
pub(super) struct FlowLog {
    /// Per epoch parity: the map may hold keys no log lists. True at start
    /// (pinned maps carry an earlier agent's flows) and after a drain of that
    /// map failed part-way: it is walked then.
    unlisted: [bool; 2],
    /// How the last drain emptied its map.
    last: DrainStrategy,
}

impl Default for FlowLog {
    fn default() -> Self {
        Self {
            unlisted: [true, true],
            last: DrainStrategy::Walked,
        }
    }
}

/// Which of the two maps, and of the two `NEW_FLOW_LOG` entries, an epoch
/// uses.
fn parity(epoch: u32) -> usize {
    (epoch & 1) as usize
}

/// Buffers for batched draining, kept across drains.
#[derive(Debug, Default)]
pub(super) struct BatchBuffers {
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Datapath {
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
    /// First empties the inactive map and held flows of what an interrupted
    /// drain left there (an agent killed in the middle of one, or a drain that
    /// failed), when they may hold any: those slots carry the previous epoch,
    /// and become the active ones at the switch, where the programs would
    /// reset them. Then switches the epoch, waits for programs still using the
    /// old one, and empties the old epoch's map (see [`FlowLog`]), its held
    /// flows and the spill ring buffer.
    ///
    /// A map that fails part-way is logged, not returned as an error: what was
    /// moved out is kept, and the rest is picked up by the next drain.
    pub fn drain(&mut self) -> Result<DrainedFlows, DatapathError> {
        let mut flows = DrainedFlows::default();
        let inactive = self.epoch.wrapping_sub(1);
        if self.flow_log.unlisted[parity(inactive)] {
            match self.drain_map(inactive, &mut flows) {
                Ok(()) => self.flow_log.unlisted[parity(inactive)] = false,
                Err(error) => interrupted(inactive, &error),
            }
        }
        if let Err(error) = self.drain_held(inactive, &mut flows) {
            interrupted(inactive, &error);
        }
        let drained_epoch = self.epoch;
        self.advance_epoch()?;
        self.inserted_at_flip = self.inserted()?;
        self.drain_epoch(drained_epoch, &mut flows);
        self.drain_spill(&mut flows);
        Ok(flows)
    }

    /// How the last drain emptied its map.
    pub fn last_drain(&self) -> DrainStrategy {
        self.flow_log.last
    }

    /// Empties a quiescent epoch's map (just the keys the programs listed, or
    /// the whole map when it may hold others or the list is long), then its
    /// held flows. A failure is logged; the map is walked next time, and the
    /// held flows are read again before the next switch.
    ///
    /// The map comes first: on one CPU, what a flow has there was counted
    /// before what it has in its held slot, so on a tie of the coarse clock the
    /// flow keeps its first packet's hook and interface.
    fn drain_epoch(&mut self, epoch: u32, flows: &mut DrainedFlows) {
        let listed = match self.flow_log.unlisted[parity(epoch)] {
            true => None,
            false => self.listed_keys(epoch),
        };
        let result = match listed {
            Some(keys) => self
                .drain_keys(epoch, &keys, flows)
                .map(|()| DrainStrategy::Keyed(keys.len())),
            None => self.drain_map(epoch, flows).map(|()| DrainStrategy::Walked),
        };
        match result {
            Ok(strategy) => {
                self.flow_log.last = strategy;
                self.flow_log.unlisted[parity(epoch)] = false;
            }
            Err(error) => {
                self.flow_log.unlisted[parity(epoch)] = true;
                interrupted(epoch, &error);
            }
        }
        if let Err(error) = self.drain_held(epoch, flows) {
            interrupted(epoch, &error);
        }
    }

    /// Adds the flows every CPU holds for `epoch`, then zeroes them when there
    /// were any (one read, and at most one write, of the whole per-CPU
    /// element). Call only once no program uses `epoch`'s parity. Zeroed slots
    /// are free for the programs; slots left as they were (a failed write) are
    /// read again before the parity is used, as leftovers of the epoch before.
    fn drain_held(&mut self, epoch: u32, flows: &mut DrainedFlows) -> Result<(), DatapathError> {
        let index = parity(epoch) as u32;
        let failed = |operation, source| DatapathError::Map {
            operation,
            map: HELD_FLOWS,
            source: Box::new(source),
        };
        let held = self
            .held_flows
            .get(&index, 0)
            .map_err(|source| failed("read", source))?;
        let mut found = false;
        for FlowEvent { key, stats } in held.iter().flat_map(|cpu| cpu.flows.iter()) {
            if stats.packets != 0 {
                found = true;
                flows.add_slots(*key, std::slice::from_ref(stats), epoch);
            }
        }
        if found {
            let empty = PerCpuValues::try_from(vec![HeldFlows::default(); held.len()])
                .map_err(|source| failed("zero", source.into()))?;
            self.held_flows
                .set(index, empty, 0)
                .map_err(|source| failed("zero", source))?;
        }
        Ok(())
    }

    /// Every key `epoch` created, from each CPU's log, when there are at most
    /// [`KEYED_DRAIN_LIMIT`]; `None` when there are more, a CPU's log
    /// overflowed, or the logs cannot be read: the map is walked then. Call
    /// only once no program uses `epoch` (a CPU's log is rewritten at the next
    /// epoch of the same parity).
    fn listed_keys(&self, epoch: u32) -> Option<Vec<FlowKey>> {
        let logs = match self.new_flow_log.get(&(parity(epoch) as u32), 0) {
            Ok(logs) => logs,
            Err(error) => {
                warn!(%error, "cannot read the new-flow log; walking the map");
                return None;
            }
        };
        let mut keys = Vec::new();
        for log in logs.iter() {
            keys.extend_from_slice(log.keys_of(epoch)?);
            if keys.len() > KEYED_DRAIN_LIMIT {
                return None;
            }
        }
        Some(keys)
    }

    /// Drains both flow maps and the spill ring buffer. Call after
    /// [`Datapath::detach_all`] so that nothing is counted afterwards.
    pub fn drain_final(&mut self) -> Result<DrainedFlows, DatapathError> {
        let mut flows = self.drain()?;
        let current = self.epoch;
        self.barrier.wait().map_err(DatapathError::Barrier)?;
        self.drain_epoch(current, &mut flows);
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
                Err(error) if batch_ops_unsupported(&error) => {
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
        let Self {
            flows_even,
            flows_odd,
            batch_buffers,
            ..
        } = self;
        let map = if epoch & 1 == 0 {
            &*flows_even
        } else {
            &*flows_odd
        };
        drain_batched(&BatchMap::per_cpu_hash(map)?, epoch, batch_buffers, flows)
    }

    /// Walks a map key by key (kernels without batch operations).
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
        self.drain_keys(epoch, &keys, flows)
    }

    /// Moves these keys' entries out of `epoch`'s map: read, then delete.
    fn drain_keys(
        &mut self,
        epoch: u32,
        keys: &[FlowKey],
        flows: &mut DrainedFlows,
    ) -> Result<(), DatapathError> {
        let (name, map) = self.flows_map(epoch);
        let failed = |operation, source| DatapathError::Map {
            operation,
            map: name,
            source: Box::new(source),
        };
        for key in keys {
            match map.get(key, 0) {
                Ok(values) => flows.add_slots(*key, &values, epoch),
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(failed("read", source)),
            }
            if let Err(source) = map.remove(key)
                && !matches!(source, MapError::KeyNotFound)
            {
                return Err(failed("delete from", source));
            }
        }
        Ok(())
    }

    fn drain_spill(&mut self, flows: &mut DrainedFlows) {
        while let Some(item) = self.spill.next() {
            let Some(sample) = FlowSample::from_event(&item) else {
                warn!(len = item.len(), "short spill record ignored");
                continue;
            };
            flows.add_sample(sample);
        }
    }
}

/// Logs a drain that stopped part-way: what it moved out is kept, the rest
/// is drained next time.
fn interrupted(epoch: u32, error: &DatapathError) {
    warn!(
        epoch,
        error = %error,
        "drain interrupted; what is left in the map is drained next time"
    );
}

/// Whether a batched drain failed because the kernel has no batch operations
/// for the map: then the map is drained key by key.
fn batch_ops_unsupported(error: &io::Error) -> bool {
    // 524 is ENOTSUPP: the kernel predates batch operations (5.6).
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// Moves every entry out of a flow map, [`BATCH`] entries per call.
fn drain_batched(
    map: &BatchMap<'_, FlowKey, FlowStats>,
    epoch: u32,
    buffers: &mut BatchBuffers,
    flows: &mut DrainedFlows,
) -> io::Result<()> {
    let cpus = map.cpus();
    let stride = BatchMap::<FlowKey, FlowStats>::value_stride();
    let key_size = size_of::<FlowKey>();
    let BatchBuffers { keys, values } = buffers;
    keys.resize(BATCH * key_size, 0);
    values.resize(BATCH * stride * cpus, 0);
    let mut token = None;
    let mut slots = Vec::with_capacity(cpus);
    loop {
        let sys::Batch { count, done } =
            sys::lookup_and_delete_batch(map, &mut token, keys, values, BATCH as u32)?;
        for entry in 0..count.min(BATCH) {
            // SAFETY: `keys` holds BATCH keys and entry < BATCH, so the slice
            // holds a whole FlowKey; FlowKey is Pod: any bytes are a value.
            let key: FlowKey =
                unsafe { std::ptr::read_unaligned(keys[entry * key_size..].as_ptr().cast()) };
            slots.clear();
            for cpu in 0..cpus {
                let offset = (entry * cpus + cpu) * stride;
                // SAFETY: as above, `values` holds `cpus` FlowStats slots per entry.
                slots.push(unsafe { std::ptr::read_unaligned(values[offset..].as_ptr().cast()) });
            }
            flows.add_slots(key, &slots, epoch);
        }
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;
    use crate::datapath::{DatapathConfig, sys::fake};

    const CPUS: usize = 2;
    const EPOCH: u32 = 7;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_port: port,
            ..FlowKey::default()
        }
    }

    fn slot(packets: u64, epoch: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_seen_ns: 1_000 + packets,
            last_seen_ns: 2_000,
            epoch,
            ..FlowStats::default()
        }
    }

    fn drain_with(fake: fake::Bpf) -> (io::Result<()>, DrainedFlows) {
        let _fake = fake::replace(fake);
        let stdin = io::stdin();
        // SAFETY: the fake kernels write per-CPU FlowKey -> FlowStats entries
        // of CPUS slots (sys::fake::answer_batch), within the capacity asked.
        let map = unsafe { BatchMap::from_raw(stdin.as_fd(), CPUS) };
        let mut flows = DrainedFlows::default();
        let result = drain_batched(&map, EPOCH, &mut BatchBuffers::default(), &mut flows);
        (result, flows)
    }

    #[test]
    fn a_kernel_without_batch_operations_sends_the_drain_key_by_key() {
        let unsupported: [fake::Bpf; 3] = [
            // ENOTSUPP: before Linux 5.6.
            |_, _| fake::errno(524),
            |_, _| fake::errno(libc::EINVAL),
            |_, _| fake::errno(libc::EOPNOTSUPP),
        ];
        for kernel in unsupported {
            let (result, flows) = drain_with(kernel);
            let error = result.err().unwrap();
            assert!(batch_ops_unsupported(&error), "{error}");
            assert!(flows.is_empty());
        }
        // Any other errno is a failed drain, and keeps its errno.
        let (result, _) = drain_with(|_, _| fake::errno(libc::EFAULT));
        let error = result.err().unwrap();
        assert!(!batch_ops_unsupported(&error));
        assert_eq!(error.raw_os_error(), Some(libc::EFAULT));
    }

    #[test]
    fn batches_are_drained_to_the_end_summing_each_flows_cpu_slots() {
        let (result, flows) = drain_with(|command, attr| {
            assert_eq!(command, sys::BpfCmd::MapLookupAndDeleteBatch);
            if attr.batch().in_batch == 0 {
                // SAFETY: from drain_batched, on CPUS CPUs.
                unsafe {
                    fake::answer_batch(
                        attr,
                        &[
                            (key(1), &[slot(2, EPOCH), slot(3, EPOCH)]),
                            (key(2), &[slot(1, EPOCH), slot(0, 0)]),
                        ],
                    );
                }
                Ok(0)
            } else {
                // The second call goes on from the first call's token and
                // reaches the end.
                // SAFETY: as above.
                unsafe {
                    fake::answer_batch(attr, &[(key(3), &[slot(4, EPOCH - 1), slot(5, EPOCH)])])
                };
                fake::errno(libc::ENOENT)
            }
        });
        result.unwrap();
        assert_eq!(flows.stale_slots(), 1);
        let totals: Vec<(u16, u64, u64)> = flows
            .into_samples()
            .into_iter()
            .map(|sample| (sample.key.src_port, sample.packets, sample.bytes))
            .collect();
        assert_eq!(totals, [(2, 1, 100), (1, 5, 500), (3, 5, 500)]);
    }

    /// Batched calls the fake kernel below refused.
    static REFUSED_BATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// A kernel before Linux 5.6: `BPF_MAP_LOOKUP_AND_DELETE_BATCH` is
    /// EINVAL, every other command is the real kernel's.
    fn kernel_without_batch_operations(
        command: sys::BpfCmd,
        attr: &mut sys::BpfAttr,
    ) -> io::Result<libc::c_long> {
        if command == sys::BpfCmd::MapLookupAndDeleteBatch {
            REFUSED_BATCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return fake::errno(libc::EINVAL);
        }
        fake::kernel(command, attr)
    }

    #[test]
    fn without_batch_operations_the_real_maps_are_drained_key_by_key_exactly() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none(),
                "needs root (BPF) and cannot be skipped under FLOW_AGENT_TEST_STRICT"
            );
            eprintln!("skipping: needs root (BPF)");
            return;
        }
        let _fake = fake::replace(kernel_without_batch_operations);
        let mut datapath = Datapath::load(&DatapathConfig {
            map_entries: 4096,
            ..DatapathConfig::default()
        })
        .unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        let active = datapath.epoch();
        let inactive = active.wrapping_sub(1);
        // Flows left in the inactive map (as by a killed agent) and flows of
        // the active epoch; one CPU slot of the last flow is stale.
        let fill = |datapath: &mut Datapath, epoch: u32, ports: std::ops::Range<u16>| {
            let (_, map) = datapath.flows_map(epoch);
            for port in ports {
                let slots: Vec<FlowStats> = (0..cpus)
                    .map(|cpu| {
                        let stale = port == 1_299 && cpu == 0;
                        slot(
                            u64::from(port) + cpu as u64,
                            if stale { epoch.wrapping_sub(2) } else { epoch },
                        )
                    })
                    .collect();
                let values = aya::maps::PerCpuValues::try_from(slots).unwrap();
                map.insert(key(port), values, 0).unwrap();
            }
        };
        fill(&mut datapath, inactive, 1..301);
        fill(&mut datapath, active, 1_000..1_300);

        let flows = datapath.drain().unwrap();
        // One refused batch: the first map, then the second, were walked
        // key by key.
        assert_eq!(REFUSED_BATCHES.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!datapath.batch_supported);
        assert_eq!(datapath.last_drain(), DrainStrategy::Walked);
        assert_eq!(flows.stale_slots(), 1);
        let mut drained: Vec<(u16, u64, u64)> = flows
            .into_samples()
            .into_iter()
            .map(|sample| (sample.key.src_port, sample.packets, sample.bytes))
            .collect();
        drained.sort_unstable();
        let cpus = cpus as u64;
        let expected: Vec<(u16, u64, u64)> = (1..301)
            .chain(1_000..1_300)
            .map(|port: u16| {
                let first_cpu = if port == 1_299 { 1 } else { 0 };
                let packets: u64 = (first_cpu..cpus).map(|cpu| u64::from(port) + cpu).sum();
                (port, packets, packets * 100)
            })
            .collect();
        assert_eq!(drained, expected);
        for epoch in [active, inactive] {
            let (_, map) = datapath.flows_map(epoch);
            assert_eq!(map.keys().count(), 0, "epoch {epoch} left entries");
        }

        // Later walks go key by key at once.
        let epoch = datapath.epoch();
        fill(&mut datapath, epoch, 7..9);
        let mut flows = DrainedFlows::default();
        datapath.drain_map(epoch, &mut flows).unwrap();
        assert_eq!(flows.len(), 2);
        assert_eq!(REFUSED_BATCHES.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
