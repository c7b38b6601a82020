//! What the programs hand to userspace, decoded as a drain decodes it: the
//! bytes as a DNS ring record, as a spill record, and as one flow map entry
//! (a key, then per-CPU slots). Nothing panics, a record's bytes stay inside
//! it, and the drained totals are the sums of the current epoch's slots.
#![no_main]

use flow_agent::{
    datapath::DnsFrameRef,
    drain::{DrainedFlows, FlowSample, read_record},
};
use flow_common::{DnsFrameHeader, FlowKey, FlowStats};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(frame) = DnsFrameRef::read(data) {
        assert!(size_of::<DnsFrameHeader>() + frame.bytes.len() <= data.len());
    }
    let mut spilled = DrainedFlows::default();
    if let Some(sample) = FlowSample::from_event(data) {
        spilled.add_sample(sample);
        assert_eq!(spilled.len(), 1);
    }
    // One map entry: the epoch, a key, then up to 8 CPUs' slots.
    let Some((&epoch, rest)) = data.split_first() else {
        return;
    };
    let epoch = u32::from(epoch % 4);
    let Some(key) = read_record::<FlowKey>(rest) else {
        return;
    };
    let slots: Vec<FlowStats> = rest[size_of::<FlowKey>()..]
        .chunks(size_of::<FlowStats>())
        .take(8)
        .filter_map(read_record)
        .collect();
    let mut flows = DrainedFlows::default();
    flows.add_slots(key, &slots, epoch);
    let counted: Vec<&FlowStats> = slots.iter().filter(|slot| slot.packets != 0).collect();
    let current = counted.iter().filter(|slot| slot.epoch == epoch).count();
    assert_eq!(flows.stale_slots(), (counted.len() - current) as u64);
    let samples = flows.into_samples();
    assert_eq!(samples.len(), usize::from(current > 0));
    if let Some(sample) = samples.first() {
        let packets = counted
            .iter()
            .filter(|slot| slot.epoch == epoch)
            .fold(0u64, |sum, slot| sum.saturating_add(slot.packets));
        assert_eq!(sample.key, key);
        assert_eq!(sample.packets, packets);
    }
});
