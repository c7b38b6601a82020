//! Turns what the kernel counted (per-CPU slots, spill events) into one total per
//! flow for one drain.

use std::hash::BuildHasher as _;

use flow_common::{Direction, FlowEvent, FlowKey, FlowStats};
use hashbrown::{DefaultHashBuilder, HashTable};

/// What one flow did during one drain interval, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSample {
    /// The flow.
    pub key: FlowKey,
    /// Packets (GSO super-packets count as their segments).
    pub packets: u64,
    /// Bytes of the IP datagrams.
    pub bytes: u64,
    /// CLOCK_MONOTONIC of the first packet, in nanoseconds.
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC of the last packet, in nanoseconds.
    pub last_seen_ns: u64,
    /// Union of TCP flags, see [`flow_common::tcp_flag`].
    pub tcp_flags: u16,
    /// Interface of the first packet.
    pub first_ifindex: u32,
    /// Hook of the first packet.
    pub first_direction: Direction,
    /// Union of the kinds of ICMP errors counted, see
    /// [`flow_common::icmp_error`].
    pub icmp_error_kinds: u8,
    /// How many of `packets` were ICMP errors (folded into the connection
    /// they quote, or under their own key when the quote was unreadable).
    pub icmp_errors: u64,
}

/// Reads a kernel record of plain-data type `T` from the start of `bytes`
/// (unaligned), or `None` when `bytes` is shorter than a `T`.
pub fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    let bytes = bytes.get(..size_of::<T>())?;
    // SAFETY: `bytes` holds a whole `T`, read unaligned; `T` is Pod, so any
    // bytes are a value.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

impl FlowSample {
    /// The sample of a spill record (a [`FlowEvent`] the programs wrote to
    /// their ring when a flow map was full), `None` when it is too short.
    pub fn from_event(record: &[u8]) -> Option<Self> {
        let FlowEvent { key, stats } = read_record(record)?;
        Some(Self::from_stats(key, &stats))
    }

    /// A sample from one slot (or one spill event).
    pub fn from_stats(key: FlowKey, stats: &FlowStats) -> Self {
        let FlowStats {
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            epoch: _,
            first_ifindex,
            tcp_flags,
            first_direction,
            icmp_error_kinds,
            icmp_errors,
        } = *stats;
        Self {
            key,
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            tcp_flags,
            first_ifindex,
            first_direction: Direction::from_u8(first_direction).unwrap_or(Direction::Ingress),
            icmp_error_kinds,
            icmp_errors: u64::from(icmp_errors),
        }
    }

    /// Adds another sample of the same flow. The counts saturate at their
    /// maximum, whatever the slots held.
    pub fn merge(&mut self, other: &Self) {
        let Self {
            key: _,
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            tcp_flags,
            first_ifindex,
            first_direction,
            icmp_error_kinds,
            icmp_errors,
        } = *other;
        // Counts the programs wrote are not trusted to stay small: a
        // corrupt or stale slot saturates the total instead of panicking.
        self.packets = self.packets.saturating_add(packets);
        self.icmp_errors = self.icmp_errors.saturating_add(icmp_errors);
        self.icmp_error_kinds |= icmp_error_kinds;
        self.bytes = self.bytes.saturating_add(bytes);
        if first_seen_ns < self.first_seen_ns {
            self.first_seen_ns = first_seen_ns;
            self.first_ifindex = first_ifindex;
            self.first_direction = first_direction;
        }
        self.last_seen_ns = self.last_seen_ns.max(last_seen_ns);
        self.tcp_flags |= tcp_flags;
    }
}

/// The flows of one drain.
///
/// The samples sit in one vector, in the order they arrived, and a table of
/// positions finds a flow's sample by its key: a million flows take the
/// samples' 88 bytes each and 5 for the table, where a map from key to sample
/// would hold each key twice, and its growth would copy the lot.
#[derive(Default)]
pub struct DrainedFlows {
    samples: Vec<FlowSample>,
    /// Positions in `samples`, hashed by the sample's key.
    positions: HashTable<u32>,
    hasher: DefaultHashBuilder,
    stale_slots: u64,
}

impl std::fmt::Debug for DrainedFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainedFlows")
            .field("flows", &self.samples.len())
            .field("stale_slots", &self.stale_slots)
            .finish_non_exhaustive()
    }
}

impl DrainedFlows {
    /// Adds the per-CPU slots of one map entry written during `epoch`. Slots
    /// from another epoch are leftovers of a previous life of the element and are
    /// skipped (and counted, see [`DrainedFlows::stale_slots`]).
    pub fn add_slots(&mut self, key: FlowKey, slots: &[FlowStats], epoch: u32) {
        for slot in slots {
            if slot.packets == 0 {
                continue;
            }
            if slot.epoch != epoch {
                self.stale_slots += 1;
                continue;
            }
            self.add_sample(FlowSample::from_stats(key, slot));
        }
    }

    /// Adds one sample, merging it into the flow's total.
    pub fn add_sample(&mut self, sample: FlowSample) {
        let Self {
            samples,
            positions,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(sample.key);
        let entry = positions.entry(
            hash,
            |&position| samples[position as usize].key == sample.key,
            |&position| hasher.hash_one(samples[position as usize].key),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(entry) => {
                samples[*entry.get() as usize].merge(&sample);
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                // A flow map holds at most 2^32 - 1 entries (BPF's u32
                // max_entries), and a drain reads two maps and a ring.
                let position = u32::try_from(samples.len()).unwrap_or(u32::MAX);
                entry.insert(position);
                samples.push(sample);
            }
        }
    }

    /// Number of distinct flows.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No flow had traffic.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Slots that carried counts from another epoch and were ignored.
    pub fn stale_slots(&self) -> u64 {
        self.stale_slots
    }

    /// Merges another drain's flows into this one.
    pub fn extend(&mut self, other: Self) {
        let Self {
            samples,
            stale_slots,
            ..
        } = other;
        self.stale_slots += stale_slots;
        for sample in samples {
            self.add_sample(sample);
        }
    }

    /// The samples, ordered by first packet (then key), so that the earlier
    /// direction of a connection comes first.
    pub fn into_samples(self) -> Vec<FlowSample> {
        let Self {
            mut samples,
            positions,
            ..
        } = self;
        drop(positions);
        // Sorting 16-byte (first packet, position) pairs, then moving each
        // 88-byte sample once, costs less than sorting the samples.
        let mut order: Vec<(u64, u32)> = samples
            .iter()
            .zip(0..)
            .map(|(sample, position)| (sample.first_seen_ns, position))
            .collect();
        order.sort_unstable_by(|(a_seen, a), (b_seen, b)| {
            a_seen
                .cmp(b_seen)
                .then_with(|| samples[*a as usize].key.cmp(&samples[*b as usize].key))
        });
        let mut sources: Vec<u32> = order.into_iter().map(|(_, position)| position).collect();
        permute(&mut samples, &mut sources);
        samples
    }
}

/// Reorders `items` so that the item at `sources[i]` ends at `i`, moving
/// each item once: each cycle of the permutation is walked with one item
/// held aside. `sources` is used up (each visited entry points at itself).
fn permute<T: Copy>(items: &mut [T], sources: &mut [u32]) {
    for start in 0..items.len() {
        if sources[start] as usize == start {
            continue;
        }
        let held = items[start];
        let mut hole = start;
        loop {
            let source = sources[hole] as usize;
            sources[hole] = hole as u32;
            if source == start {
                items[hole] = held;
                break;
            }
            items[hole] = items[source];
            hole = source;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            src_port,
            dst_port: 80,
            protocol: 6,
            ..FlowKey::default()
        }
    }

    fn slot(epoch: u32, packets: u64, first: u64, last: u64, ifindex: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            epoch,
            first_ifindex: ifindex,
            tcp_flags: 0,
            first_direction: Direction::Egress as u8,
            icmp_error_kinds: 0,
            icmp_errors: 0,
        }
    }

    /// Found by the `kernel_records` fuzz target: two slots whose packet
    /// counts sum past u64::MAX overflowed the merge.
    #[test]
    fn merge_of_huge_counts_saturates_instead_of_overflowing() {
        let huge = FlowStats {
            packets: u64::MAX - 1,
            bytes: u64::MAX,
            epoch: 1,
            icmp_errors: u32::MAX,
            ..FlowStats::default()
        };
        let mut flows = DrainedFlows::default();
        flows.add_slots(key(1), &[huge, huge], 1);
        let samples = flows.into_samples();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].packets, u64::MAX);
        assert_eq!(samples[0].bytes, u64::MAX);
        assert_eq!(samples[0].icmp_errors, 2 * u64::from(u32::MAX));
    }

    #[test]
    fn a_spill_record_shorter_than_an_event_is_none() {
        let event = [0_u8; size_of::<FlowEvent>()];
        assert!(FlowSample::from_event(&event[..size_of::<FlowEvent>() - 1]).is_none());
        let sample = FlowSample::from_event(&event).unwrap();
        assert_eq!(sample.key, FlowKey::default());
        assert_eq!(sample.packets, 0);
    }

    #[test]
    fn a_sample_takes_the_88_bytes_the_drain_counts_on() {
        assert_eq!(size_of::<FlowSample>(), 88);
    }

    #[test]
    fn icmp_errors_are_summed_and_their_kinds_joined_across_cpus() {
        use flow_common::icmp_error::{TIME_EXCEEDED, UNREACHABLE};
        let mut flows = DrainedFlows::default();
        let errors = |packets, errors, kinds| FlowStats {
            icmp_errors: errors,
            icmp_error_kinds: kinds,
            ..slot(4, packets, 10, 20, 1)
        };
        flows.add_slots(
            key(1),
            &[errors(3, 1, UNREACHABLE), errors(2, 2, TIME_EXCEEDED)],
            4,
        );
        let sample = flows.into_samples()[0];
        assert_eq!(
            (sample.packets, sample.icmp_errors, sample.icmp_error_kinds),
            (5, 3, UNREACHABLE | TIME_EXCEEDED)
        );
    }

    #[test]
    fn slots_of_one_epoch_are_summed_across_cpus() {
        let mut flows = DrainedFlows::default();
        flows.add_slots(key(1), &[slot(4, 2, 50, 60, 7), slot(4, 3, 40, 90, 9)], 4);
        let samples = flows.into_samples();
        assert_eq!(samples.len(), 1);
        let sample = samples[0];
        assert_eq!(sample.packets, 5);
        assert_eq!(sample.bytes, 500);
        assert_eq!(sample.first_seen_ns, 40);
        assert_eq!(sample.last_seen_ns, 90);
        // The interface of the earliest packet wins.
        assert_eq!(sample.first_ifindex, 9);
    }

    #[test]
    fn slots_from_another_epoch_are_stale_and_ignored() {
        let mut flows = DrainedFlows::default();
        flows.add_slots(
            key(1),
            &[
                slot(4, 2, 50, 60, 7),
                slot(2, 99, 1, 2, 7),
                slot(0, 0, 0, 0, 0),
            ],
            4,
        );
        assert_eq!(flows.stale_slots(), 1);
        let samples = flows.into_samples();
        assert_eq!(samples[0].packets, 2);
    }

    #[test]
    fn a_permutation_moves_each_item_to_its_place() {
        let mut items = ['a', 'b', 'c', 'd', 'e'];
        let mut sources = [3, 0, 4, 1, 2];
        permute(&mut items, &mut sources);
        assert_eq!(items, ['d', 'a', 'e', 'b', 'c']);
    }

    #[test]
    fn samples_come_out_by_first_packet_then_key() {
        let mut flows = DrainedFlows::default();
        for (port, first) in [(5, 30), (4, 10), (3, 30), (2, 20), (1, 10)] {
            flows.add_slots(key(port), &[slot(1, 1, first, first, 7)], 1);
        }
        let order: Vec<(u64, u16)> = flows
            .into_samples()
            .iter()
            .map(|sample| (sample.first_seen_ns, sample.key.src_port))
            .collect();
        assert_eq!(order, [(10, 1), (10, 4), (20, 2), (30, 3), (30, 5)]);
    }

    #[test]
    fn spill_samples_merge_with_map_entries() {
        let mut flows = DrainedFlows::default();
        flows.add_slots(key(1), &[slot(1, 2, 50, 60, 7)], 1);
        flows.add_sample(FlowSample::from_stats(key(1), &slot(1, 1, 70, 70, 7)));
        flows.add_sample(FlowSample::from_stats(key(2), &slot(1, 1, 10, 10, 7)));
        let samples = flows.into_samples();
        assert_eq!(samples.len(), 2);
        // Ordered by first packet.
        assert_eq!(samples[0].key, key(2));
        assert_eq!(samples[1].packets, 3);
        assert_eq!(samples[1].last_seen_ns, 70);
    }
}
