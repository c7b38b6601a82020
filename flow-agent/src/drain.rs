//! Turns what the kernel counted (per-CPU slots, spill events) into one total per
//! flow for one drain.

use flow_common::{Direction, FlowKey, FlowStats};
use hashbrown::HashMap;

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
}

impl FlowSample {
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
            _pad,
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
        }
    }

    /// Adds another sample of the same flow.
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
        } = *other;
        self.packets += packets;
        self.bytes += bytes;
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
#[derive(Debug, Default)]
pub struct DrainedFlows {
    flows: HashMap<FlowKey, FlowSample>,
    stale_slots: u64,
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
        self.flows
            .entry(sample.key)
            .and_modify(|total| total.merge(&sample))
            .or_insert(sample);
    }

    /// Number of distinct flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// No flow had traffic.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Slots that carried counts from another epoch and were ignored.
    pub fn stale_slots(&self) -> u64 {
        self.stale_slots
    }

    /// Merges another drain's flows into this one.
    pub fn extend(&mut self, other: Self) {
        let Self { flows, stale_slots } = other;
        self.stale_slots += stale_slots;
        for sample in flows.into_values() {
            self.add_sample(sample);
        }
    }

    /// The samples, ordered by first packet (then key), so that the earlier
    /// direction of a connection comes first.
    pub fn into_samples(self) -> Vec<FlowSample> {
        let mut samples: Vec<FlowSample> = self.flows.into_values().collect();
        samples.sort_unstable_by_key(|sample| (sample.first_seen_ns, sample.key));
        samples
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
            _pad: [0; 5],
        }
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
