//! Shared helpers for the kernel tests: root checks, network namespaces as test
//! "pods" and "nodes", hand-built packets, and a running agent.
//!
//! Every namespace and interface gets a name unique to this process and test, and
//! is removed by a Drop guard, so tests can run in parallel and a failing test
//! leaves nothing behind.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

pub mod cli;
pub mod dashboards;
pub mod dns;
pub mod kube_api;
pub mod netns;
pub mod packet;
pub mod pki;
pub mod prometheus;
pub mod shop;

/// Returns early (passing the test) with a printed reason, or fails it under
/// `FLOW_AGENT_TEST_STRICT` (what `cargo xtask test` and CI set): there, every
/// test must run.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)*) => {{
        let reason = format!($($reason)*);
        assert!(
            std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none(),
            "{} cannot be skipped under FLOW_AGENT_TEST_STRICT: {reason}",
            module_path!()
        );
        eprintln!("skipping {}: {reason}", module_path!());
        return;
    }};
}

/// Skips (see [`skip!`]) when not root: the kernel tests need CAP_BPF,
/// CAP_NET_ADMIN and CAP_SYS_ADMIN.
#[macro_export]
macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            $crate::skip!("needs root (BPF, network namespaces)");
        }
    };
}

/// Pins the calling thread to one CPU; per-CPU maps are then written on that CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity work on it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let ret = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            ret,
            0,
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Number of CPUs this thread may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
