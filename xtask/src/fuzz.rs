//! `cargo xtask fuzz`: the fuzz targets under `fuzz/` (cargo-fuzz, libFuzzer
//! with AddressSanitizer), built with the pinned nightly. `cargo xtask test`
//! runs each for a short while from its committed seed corpus; a crash fails
//! the test and leaves its input under `fuzz/artifacts/`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

use crate::setup;

/// How long `cargo xtask test` runs each target: with the build, the nine
/// targets stay within a few minutes of CI.
pub(crate) const TIME_IN_TEST: Duration = Duration::from_secs(15);

/// Every fuzz target, with what it reads.
pub(crate) const TARGETS: [(&str, &str); 9] = [
    (
        "dns_frame",
        "frames copied by the datapath, down to DNS messages and the name cache",
    ),
    ("inventory", "an inventory file (--inventory)"),
    (
        "flow_file",
        "a flow file: our JSON records and Hubble's JSON",
    ),
    (
        "policy",
        "NetworkPolicy files, as check and monitor load them",
    ),
    ("rtnetlink", "rtnetlink link dumps and notifications"),
    ("ctnetlink", "ctnetlink answers to a conntrack GET"),
    (
        "filter",
        "GetFlows requests of our API and their compiled filters",
    ),
    (
        "hubble_filter",
        "Hubble GetFlows requests and their compiled filters",
    ),
    (
        "kernel_records",
        "records of the programs: DNS ring, spill ring, per-CPU flow map entries",
    ),
];

/// How the targets are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Build {
    /// Optimized: the most executions a second, for long runs. Building
    /// kube, k8s-openapi and tonic instrumented and optimized takes over
    /// half an hour from clean on 2 cores.
    Release,
    /// Unoptimized, debug assertions on: builds in a fraction of that, for
    /// the short runs of `cargo xtask test`.
    Dev,
}

/// Runs `targets` (all when empty) for `time` each. New inputs go to a
/// scratch corpus under the target directory, not to the committed seeds.
pub(crate) fn run(targets: &[String], time: Duration, build: Build) -> Result<()> {
    let toolchain = setup::ensure_fuzz_tools()?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.iter().map(|(name, _)| *name).collect()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let root = crate::workspace_root();
    for target in chosen {
        if !TARGETS.iter().any(|(name, _)| *name == target) {
            anyhow::bail!(
                "no fuzz target {target}; there are: {}",
                TARGETS.map(|(name, _)| name).join(", ")
            );
        }
        let scratch = scratch_corpus(target)?;
        let seeds = root.join("fuzz").join("corpus").join(target);
        let max_time = format!("-max_total_time={}", time.as_secs().max(1));
        let (toolchain, fuzz_dir) = (
            format!("+{toolchain}"),
            root.join("fuzz").to_string_lossy().into_owned(),
        );
        let (scratch, seeds) = (scratch.to_string_lossy(), seeds.to_string_lossy());
        let mut args = vec![toolchain.as_str(), "fuzz", "run"];
        if build == Build::Dev {
            args.push("--dev");
        }
        args.extend([
            "--fuzz-dir",
            &fuzz_dir,
            target,
            &scratch,
            &seeds,
            "--",
            &max_time,
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        setup::status("cargo", &args, &[]).with_context(|| {
            format!("fuzz target {target} failed: its input is under fuzz/artifacts/{target}/")
        })?;
    }
    Ok(())
}

/// An empty scratch corpus for `target`.
fn scratch_corpus(target: &str) -> Result<PathBuf> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    let dir = target_dir.join("fuzz-corpus").join(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
