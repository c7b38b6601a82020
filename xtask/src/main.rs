//! Developer tasks for flow-agent. `cargo xtask --help` lists them.

mod bench;
mod demo;
mod drains;
mod fuzz;
mod hubble_compat;
mod monitoring;
mod peer;
mod rates;
mod setup;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "flow-agent developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, LLVM, bpf-linker,
    /// iproute2); does nothing for what is present.
    Setup {
        /// Only what building needs (the toolchain, LLVM and bpf-linker): for
        /// container images.
        #[arg(long)]
        build_only: bool,
    },
    /// Set up, then run formatting and lint checks and every test (the kernel
    /// tests need root and skip with a message without it).
    Test,
    /// Formatting and clippy checks only.
    Lint,
    /// Run the fuzz targets under fuzz/ (cargo-fuzz with the pinned nightly;
    /// installs cargo-fuzz) for a while each, from their seed corpus.
    Fuzz {
        /// Targets to run (default: all).
        targets: Vec<String>,
        /// How long to run each target (seconds).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, build, then run flow-agent on a lab node with four pods and print
    /// a live flow table.
    Demo {
        /// How long to run (seconds).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Set up, then run the datapath, API and pipeline benchmarks, a real
    /// agent draining 100k and 1M flows and with 200 Hubble followers, and compare small-packet rates
    /// and TCP throughput with and without flow-agent (root; installs
    /// iperf3).
    Bench {
        /// NetObserv's eBPF sources (netobserv-ebpf-agent's bpf/ folder, or
        /// the repository): also measure our classifier beside NetObserv's
        /// program in the shared BPF_PROG_TEST_RUN harness, for a packet of an
        /// existing flow and one that creates a flow.
        #[arg(long, value_name = "DIR", value_parser = from_invocation_dir)]
        peer_netobserv: Option<PathBuf>,
        /// The harness's folder (with run.sh), if not
        /// ../shared/bench/peer-netobserv beside the workspace.
        #[arg(long, value_name = "DIR", value_parser = from_invocation_dir, requires = "peer_netobserv")]
        peer_harness: Option<PathBuf>,
        /// Only the real agent's large drains (100k and 1M flows).
        #[arg(long, conflicts_with_all = ["peer_netobserv", "rates"])]
        drains: bool,
        /// Only the packet rates and TCP throughput with and without the
        /// agent.
        #[arg(long, conflicts_with = "peer_netobserv")]
        rates: bool,
    },
    /// The soak (tests/soak.rs) for longer than the suite's minute: an agent
    /// with 64 API followers, one of them not reading, while pods churn;
    /// prints its figures (root).
    Soak {
        /// How long to run (minutes).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Check that proto/hubble is a wire-compatible subset of Cilium's Hubble
    /// API: every message, field, enum value, service and method it declares
    /// exists upstream with the same number, name, type, label and oneof, so
    /// Hubble clients decode flow-agent's answers with upstream's schema.
    /// Upstream's files are not in this repository: `git clone --depth 1
    /// https://github.com/cilium/cilium`, then `--upstream cilium/api/v1`.
    HubbleCompat {
        /// A directory with upstream's api/v1 layout: flow/flow.proto,
        /// observer/observer.proto, peer/peer.proto, relay/relay.proto.
        #[arg(long, value_name = "DIR", value_parser = from_invocation_dir)]
        upstream: PathBuf,
    },
    /// Write the alert rules, as a Prometheus rules file and as a
    /// PrometheusRule, from their source deploy/monitoring/alerts.yaml.
    Monitoring {
        /// Write nothing; fail if a written file differs from the source.
        #[arg(long)]
        check: bool,
    },
}

/// Resolves `path` against the directory the task was run from, as `main`
/// enters the workspace root before running it.
fn from_invocation_dir(path: &str) -> std::io::Result<PathBuf> {
    std::path::absolute(path)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn cargo(args: &[&str]) -> Result<()> {
    setup::status(
        &std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        args,
        &[],
    )
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "flow-agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn main() -> Result<()> {
    let Cli { command } = Cli::parse();
    std::env::set_current_dir(workspace_root()).context("cannot enter the workspace")?;
    match command {
        Task::Setup { build_only: false } => setup::setup(),
        Task::Setup { build_only: true } => setup::setup_build(),
        Task::Lint => lint(),
        Task::Fuzz { targets, seconds } => {
            fuzz::run(&targets, Duration::from_secs(seconds), fuzz::Build::Release)
        }
        Task::Test => {
            // The kernel tests are most of the suite; under the strict mode
            // set below they fail rather than skip without root.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!(
                    "cargo xtask test needs root (BPF, network namespaces): run it as root or with sudo -E"
                );
            }
            setup::setup()?;
            lint()?;
            // Every test that needs a tool setup installs must run, not skip.
            let python = setup::python_env().join("bin").join("python");
            let ci_venv = setup::ci_python_env();
            let mmdc = setup::mmdc();
            setup::status(
                &std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
                &[
                    "test",
                    "--workspace",
                    "--exclude",
                    "flow-agent-ebpf",
                    "--no-fail-fast",
                ],
                &[
                    ("FLOW_AGENT_TEST_PYTHON", &python.to_string_lossy()),
                    ("FLOW_AGENT_TEST_CI_VENV", &ci_venv.to_string_lossy()),
                    ("FLOW_AGENT_TEST_MMDC", &mmdc.to_string_lossy()),
                    ("FLOW_AGENT_TEST_STRICT", "1"),
                ],
            )?;
            // Each fuzz target, briefly, from its seeds: a crash fails the
            // suite. Unoptimized: the instrumented release build of the
            // dependencies alone would take most of CI's time.
            fuzz::run(&[], fuzz::TIME_IN_TEST, fuzz::Build::Dev)
        }
        Task::Demo { seconds } => {
            let binary = prepare_agent("debug")?;
            demo::demo(&binary, Duration::from_secs(seconds))
        }
        Task::Bench { drains: true, .. } => drains::large_drains(&prepare_agent("release")?),
        Task::Bench { rates: true, .. } => {
            setup::ensure_program("iperf3", "iperf3")?;
            bench::rates(&prepare_agent("release")?)
        }
        Task::Bench {
            peer_netobserv,
            peer_harness,
            ..
        } => {
            let peer = peer_netobserv
                .map(|dir| peer::PeerBench::new(&dir, peer_harness))
                .transpose()?;
            setup::ensure_program("iperf3", "iperf3")?;
            let binary = prepare_agent("release")?;
            bench::bench(&binary, peer.as_ref())
        }
        Task::HubbleCompat { upstream } => hubble_compat::run(&upstream),
        Task::Monitoring { check } => monitoring::run(check),
        Task::Soak { minutes } => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!("cargo xtask soak needs root (BPF, network namespaces)");
            }
            if !(minutes.is_finite() && minutes > 0.0) {
                bail!("--minutes must be a positive number of minutes, not {minutes}");
            }
            setup::status(
                &std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
                &[
                    "test",
                    "-p",
                    "flow-agent",
                    "--test",
                    "soak",
                    "--",
                    "--nocapture",
                ],
                &[
                    ("FLOW_AGENT_SOAK_MINUTES", &minutes.to_string()),
                    ("FLOW_AGENT_TEST_STRICT", "1"),
                ],
            )
        }
    }
}

/// Sets up, builds the agent binary in `profile`, and checks we are root.
fn prepare_agent(profile: &str) -> Result<PathBuf> {
    setup::setup()?;
    let mut args = vec!["build", "--package", "flow-agent", "--bin", "flow-agent"];
    if profile == "release" {
        args.push("--release");
    }
    cargo(&args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this creates network namespaces and loads BPF programs: run it as root");
    }
    // Where cargo put it: CARGO_TARGET_DIR, when set, is cargo's too.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let binary = target.join(profile).join("flow-agent");
    if !Command::new(&binary).arg("--version").status()?.success() {
        bail!("{} does not run", binary.display());
    }
    Ok(binary)
}
