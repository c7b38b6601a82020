//! Debug logging from the eBPF programs (aya-log), read on the tokio runtime.

use aya::Ebpf;
use tracing::warn;

/// Reads the programs' aya-log ring buffer on the current tokio runtime, when
/// there is one; without a runtime, or without the logger, logs are not read.
pub(super) fn start_ebpf_logger(ebpf: &mut Ebpf) {
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
