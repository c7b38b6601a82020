//! One program on one hook of one interface: a TCX link (Linux 6.6+) or a
//! clsact filter, attached anew or taken over from an earlier agent, and
//! detached.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle},
};
use flow_common::{PROGRAM_EGRESS, PROGRAM_INGRESS};
use tracing::{debug, info, warn};

use super::{AttachMode, Datapath, DatapathError, load::classifier, pin::PinError};

/// How a program is attached to one hook.
pub(super) enum Hook {
    /// Owned by the program object: detached when the agent exits.
    Owned(SchedClassifierLinkId),
    /// A TCX link pinned in bpffs: attached until the pin is removed.
    Pinned(PathBuf),
    /// A clsact filter kept when the agent exits (pinning on).
    Filter(SchedClassifierLink),
}

/// Where a program goes: one hook of one interface.
struct HookPoint<'a> {
    interface: &'a str,
    attach_type: TcAttachType,
    program: &'static str,
}

impl HookPoint<'_> {
    fn error(&self, mode: &'static str, source: ProgramError) -> DatapathError {
        let Self {
            interface, program, ..
        } = *self;
        DatapathError::Attach {
            program,
            interface: interface.to_owned(),
            mode,
            source: Box::new(source),
        }
    }
}

/// Priority 1 runs before any filter a CNI adds at a higher number; our own
/// handle keeps a CNI that replaces "prio 1 handle 1" from replacing us.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 0xfa);

/// Where our clsact filter goes: [`FILTER_PRIORITY`], [`FILTER_HANDLE`].
fn preferred_filter() -> NlOptions {
    NlOptions {
        priority: FILTER_PRIORITY,
        handle: FILTER_HANDLE,
        classid: None,
    }
}

impl Datapath {
    /// Attaches the program of `attach_type` to one interface, in the
    /// effective attach mode.
    pub(super) fn attach_one(
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
        let pinning = self.pins.is_some();
        let pin_path = self.pins.as_ref().map(|pins| pins.link(index, attach_type));
        let classifier = classifier(&mut self.ebpf, program)?;
        let point = HookPoint {
            interface,
            attach_type,
            program,
        };
        if mode == AttachMode::Tcx {
            attach_tcx(classifier, &point, pin_path)
        } else {
            attach_clsact(classifier, &point, pinning, pin_path.as_deref())
        }
    }

    pub(super) fn detach_hook(&mut self, hook: Hook, program: &'static str, interface: &str) {
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
}

/// Attaches a TCX link at the head of the chain, or takes over the one an
/// earlier agent pinned at `pin_path`; with pinning, a new link is pinned there.
fn attach_tcx(
    classifier: &mut SchedClassifier,
    point: &HookPoint<'_>,
    pin_path: Option<PathBuf>,
) -> Result<Hook, DatapathError> {
    let HookPoint {
        interface,
        attach_type,
        program,
    } = *point;
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
        .map_err(|source| point.error("tcx", source))?;
    // A clsact filter of ours from an agent that ran in tc mode (or
    // was killed) would count every packet a second time.
    remove_our_filters(interface, attach_type, program);
    let Some(path) = pin_path else {
        return Ok(Hook::Owned(link));
    };
    pin_link(classifier, point, link, path)
}

/// Pins a new TCX link at `path`, so that it outlives the agent.
fn pin_link(
    classifier: &mut SchedClassifier,
    point: &HookPoint<'_>,
    link: SchedClassifierLinkId,
    path: PathBuf,
) -> Result<Hook, DatapathError> {
    let link = classifier
        .take_link(link)
        .map_err(|source| point.error("tcx", source))?;
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
    Ok(Hook::Pinned(path))
}

/// Attaches a clsact filter, or (with pinning) swaps this agent's program
/// into the filter an earlier agent left.
fn attach_clsact(
    classifier: &mut SchedClassifier,
    point: &HookPoint<'_>,
    pinning: bool,
    pin_path: Option<&Path>,
) -> Result<Hook, DatapathError> {
    let HookPoint {
        interface,
        attach_type,
        program,
    } = *point;
    // Add clsact if missing; an existing qdisc (EEXIST) is left untouched and
    // is never deleted, since other programs may hang off it.
    if let Err(qdisc_error) = tc::qdisc_add_clsact(interface) {
        debug!(interface, error = %qdisc_error, "clsact not added (usually: it already exists)");
    }
    if pinning {
        if let Some(hook) = take_over_filter(classifier, point, pin_path)? {
            return Ok(hook);
        }
    } else {
        // A filter of ours left by an agent that was killed (netlink
        // filters, unlike TCX links, outlive their process) would keep
        // running: remove filters whose program carries our name, and
        // nothing else.
        remove_our_filters(interface, attach_type, program);
    }
    let link = attach_filter(classifier, point)?;
    release_pinned_link(pin_path, interface, program);
    if pinning {
        let link = classifier
            .take_link(link)
            .map_err(|source| point.error("tc", source))?;
        return Ok(Hook::Filter(link));
    }
    Ok(Hook::Owned(link))
}

/// Our filter from an earlier agent: replaces its program in place,
/// atomically, so counting never stops. `None` when there is none to take.
fn take_over_filter(
    classifier: &mut SchedClassifier,
    point: &HookPoint<'_>,
    pin_path: Option<&Path>,
) -> Result<Option<Hook>, DatapathError> {
    let HookPoint {
        interface,
        attach_type,
        program,
    } = *point;
    if let Ok(existing) =
        SchedClassifierLink::attached(interface, attach_type, FILTER_PRIORITY, FILTER_HANDLE, None)
        && let Ok(link) = classifier.attach_to_link(existing)
    {
        debug!(interface, program, "took over the filter in place");
        release_pinned_link(pin_path, interface, program);
        let link = classifier
            .take_link(link)
            .map_err(|source| point.error("tc", source))?;
        return Ok(Some(Hook::Filter(link)));
    }
    Ok(None)
}

/// Attaches a new filter at priority 1 with our handle, or behind the filter
/// that holds priority 1.
fn attach_filter(
    classifier: &mut SchedClassifier,
    point: &HookPoint<'_>,
) -> Result<SchedClassifierLinkId, DatapathError> {
    let HookPoint {
        interface,
        attach_type,
        ..
    } = *point;
    match classifier.attach_with_options(
        interface,
        attach_type,
        TcAttachOptions::Netlink(preferred_filter()),
    ) {
        Ok(link) => Ok(link),
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
                .map_err(|source| point.error("tc", source))
        }
    }
}

/// Takes over a pinned TCX link: swaps `classifier` in with `BPF_LINK_UPDATE`
/// and leaves the link pinned.
fn take_over_link(classifier: &mut SchedClassifier, path: &Path) -> Result<(), String> {
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

/// Releases a TCX link pinned by an agent that ran in tcx mode, once a filter
/// counts in its place: both would count every packet.
fn release_pinned_link(path: Option<&Path>, interface: &str, program: &'static str) {
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
