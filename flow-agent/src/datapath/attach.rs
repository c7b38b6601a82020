//! Which interfaces the programs are attached to, and the counted set.
//!
//! # Counting a packet once
//!
//! Each interface gets an ingress and an egress classifier. A packet between two
//! watched pods on one node enters the node through the sender's host-side veth
//! (ingress, counted) and leaves through the receiver's (egress). The egress
//! program skips packets whose `ingress_ifindex` is in the counted set (`counted`), the
//! set of interfaces whose ingress program is attached, so that packet is counted
//! once. The set is updated after an ingress program is attached and before it is
//! detached, so a change can at worst count a packet twice, never lose it.

use std::collections::BTreeSet;

use aya::{programs::TcAttachType, util::KernelVersion};
use flow_common::{PROGRAM_EGRESS, PROGRAM_INGRESS};
use tracing::{debug, info, warn};

use super::{Datapath, DatapathError, hook::Hook};

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

/// The programs on one interface.
pub(super) struct Attachment {
    name: String,
    ingress: Hook,
    egress: Option<Hook>,
}

/// TCX links need Linux 6.6.
pub(super) fn tcx_supported() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

pub(super) fn kernel_version_string() -> String {
    match KernelVersion::current() {
        Ok(version) => format!("{version:?}"),
        Err(error) => format!("unknown: {error}"),
    }
}

impl Datapath {
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
                .counted
                .insert(index)
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
        if let Err(error) = self.counted.remove(index) {
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
                && let Err(error) = self.counted.remove(index)
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
            match self.counted.insert(index) {
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
            let _ = self.counted.remove(index);
            for attach_type in [TcAttachType::Egress, TcAttachType::Ingress] {
                let path = pins.link(index, attach_type);
                if std::fs::remove_file(&path).is_ok() {
                    info!(index, path = %path.display(), "removed the pinned link of an interface no longer watched");
                }
            }
        }
        let stale: Vec<u32> = self
            .counted
            .indexes()
            .into_iter()
            .filter(|index| !self.attachments.contains_key(index) && !self.bridges.contains(index))
            .collect();
        for index in stale {
            let _ = self.counted.remove(index);
        }
        self.counted.forget_low_keys();
    }
}
