//! Loads the eBPF programs, attaches them to interfaces and drains their maps.
//!
//! One concern per module: `load` (the object, its programs and maps),
//! `attach` (which interfaces, and counting a packet once), `counted` (the
//! set of interfaces counted at ingress), `hook` (one
//! program on one hook: TCX or clsact), `drain` (the epoch switch and draining
//! without losing a packet), `counters`, `error`, `logger` (aya-log), [`pin`]
//! (what outlives the agent) and `sys` (the raw bpf(2) calls aya lacks).

mod attach;
mod counted;
mod counters;
mod dns;
mod drain;
mod error;
mod hook;
mod load;
mod logger;
pub mod pin;
mod sys;

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use flow_common::{DatapathControl, FlowKey, FlowStats, HeldFlows, NewFlowLog};
use pin::PinDir;

pub use self::{
    attach::AttachMode,
    counters::DatapathCounters,
    dns::DnsFrameRef,
    drain::DrainStrategy,
    error::DatapathError,
    load::{
        DEFAULT_FLOW_MAP_BUDGET, DatapathConfig, DnsCopySettings, auto_map_entries,
        bytes_per_map_entry,
    },
};

/// The compiled flow-agent eBPF object (TC classifiers and maps).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flow-agent-ebpf"));

/// Test and benchmark classifiers: `drop_all` (drops every packet, like a CNI
/// program that redirects) and `pass_through` (does nothing).
pub static TESTKIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flow-agent-testkit"));

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    flows_even: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    flows_odd: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    control: Array<MapData, DatapathControl>,
    counters: PerCpuArray<MapData, u64>,
    counted: counted::CountedSet,
    /// Bridges whose every port is attached: in the counted set too (see
    /// [`Datapath::set_bridges`]).
    bridges: BTreeSet<u32>,
    spill: RingBuf<MapData>,
    /// DNS frames the programs copied (see [`dns`]).
    dns_frames: RingBuf<MapData>,
    /// The flows each CPU counted most recently, per epoch parity.
    held_flows: PerCpuArray<MapData, HeldFlows>,
    /// The flows each CPU created in each epoch.
    new_flow_log: PerCpuArray<MapData, NewFlowLog>,
    /// What the drain knows of each map's keys from it.
    flow_log: drain::FlowLog,
    barrier: sys::RcuBarrier,
    epoch: u32,
    attach_mode: AttachMode,
    pins: Option<PinDir>,
    attachments: BTreeMap<u32, attach::Attachment>,
    batch_supported: bool,
    map_entries: u32,
    /// `Counter::Inserted` when the active map was last emptied.
    inserted_at_flip: u64,
    /// Buffers for batched draining, kept across drains.
    batch_buffers: drain::BatchBuffers,
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
