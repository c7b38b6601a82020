//! The datapath's errors, and how a BPF syscall's errno becomes advice.

use std::io;

use aya::{EbpfError, maps::MapError, programs::ProgramError};
use thiserror::Error;

use super::pin::PinError;

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
    pub(super) fn from_syscall(error: io::Error) -> Option<Self> {
        match error.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Some(Self::NotPermitted { source: error }),
            Some(libc::ENOSYS) => Some(Self::NoKernelSupport { source: error }),
            _ => None,
        }
    }
}

/// Finds the first `io::Error` in an error's source chain.
pub(super) fn root_io_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a io::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            return Some(io_error);
        }
        current = error.source();
    }
    None
}

pub(super) fn classify(error: DatapathError) -> DatapathError {
    let errno = root_io_error(&error).and_then(io::Error::raw_os_error);
    match errno {
        Some(errno @ (libc::EPERM | libc::EACCES | libc::ENOSYS)) => {
            DatapathError::from_syscall(io::Error::from_raw_os_error(errno)).unwrap_or(error)
        }
        _ => error,
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
}
