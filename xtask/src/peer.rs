//! `cargo xtask bench --peer-netobserv DIR`: flow-agent's ingress classifier
//! beside NetObserv's TC program in the shared BPF_PROG_TEST_RUN harness
//! (`../shared/bench/peer-netobserv`, or `--peer-harness`), which interleaves
//! an empty classifier, the peer built from its own sources with its own
//! flags, and our program pinned in a bpffs.
//!
//! Neither the peer's sources nor the harness are part of this repository;
//! the harness's README says how to get the peer at a fixed commit.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Where the harness is, relative to the workspace, unless `--peer-harness`.
const DEFAULT_HARNESS: &str = "../shared/bench/peer-netobserv";

/// The largest existing-flow cost we accept, as a share of the peer's.
const TARGET_RATIO: f64 = 0.75;

/// The peer's sources and the harness that builds and runs them.
pub(crate) struct PeerBench {
    /// NetObserv's `bpf/` folder (with `flows.c` and `headers/`).
    sources: PathBuf,
    /// The folder with the harness's `run.sh`.
    harness: PathBuf,
}

impl PeerBench {
    /// Checks both folders. `dir` is NetObserv's `bpf/` folder or the
    /// repository that holds it.
    pub(crate) fn new(dir: &Path, harness: Option<PathBuf>) -> Result<Self> {
        let sources = [dir.join("bpf"), dir.to_path_buf()]
            .into_iter()
            .find(|candidate| candidate.join("flows.c").is_file())
            .with_context(|| {
                format!(
                    "{} has neither flows.c nor bpf/flows.c: point --peer-netobserv at netobserv-ebpf-agent's bpf/ folder",
                    dir.display()
                )
            })?;
        let harness = harness.unwrap_or_else(|| crate::workspace_root().join(DEFAULT_HARNESS));
        if !harness.join("run.sh").is_file() {
            bail!(
                "no harness at {}: pass --peer-harness with the folder that holds run.sh",
                harness.display()
            );
        }
        Ok(Self { sources, harness })
    }

    /// Where the harness builds the peer's object and its packets.
    fn out_dir() -> PathBuf {
        crate::workspace_root()
            .join("target")
            .join("peer-netobserv")
    }

    /// The peer's object once [`Self::existing_flow`] has built it.
    pub(crate) fn object() -> PathBuf {
        Self::out_dir().join("flows_v1.o")
    }

    /// Pins our classifier, runs the harness with it, prints the harness's
    /// output and our ratio to the peer for every packet.
    pub(crate) fn existing_flow(&self) -> Result<()> {
        ensure_bpffs()?;
        ensure_harness_tools()?;
        let pin = Pin(PathBuf::from(format!(
            "/sys/fs/bpf/flow-agent-bench-ingress-{}",
            std::process::id()
        )));
        let _ = std::fs::remove_file(&pin.0);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        crate::setup::status(
            &cargo,
            &["bench", "--package", "flow-agent", "--bench", "datapath"],
            &[("FLOW_AGENT_BENCH_PIN", &pin.0.to_string_lossy())],
        )?;
        let output = self.run_harness(&pin.0)?;
        print!("{output}");
        report(&parse(&output)?)
    }

    fn run_harness(&self, pin: &Path) -> Result<String> {
        eprintln!("+ {}/run.sh", self.harness.display());
        let output = Command::new("bash")
            .arg(self.harness.join("run.sh"))
            .env("PEER_SRC", &self.sources)
            .env("OUT_DIR", Self::out_dir())
            .env("EXTRA", format!("-P ours=@{}", pin.display()))
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run the peer harness")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            print!("{stdout}");
            bail!("the peer harness failed with {}", output.status);
        }
        Ok(stdout)
    }
}

/// A pinned program, unpinned (and so unloaded) on drop.
struct Pin(PathBuf);

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the harness's README asks for: clang 22 and llvm-strip for the
/// peer's object, gcc and libbpf for the runner, python3 for the packets.
fn ensure_harness_tools() -> Result<()> {
    for (program, package) in [
        ("clang-22", "clang-22"),
        ("llvm-strip-22", "llvm-22"),
        ("gcc", "gcc"),
        ("python3", "python3"),
    ] {
        crate::setup::ensure_program(program, package)?;
    }
    crate::setup::ensure_file("/usr/include/bpf/libbpf.h", "libbpf-dev")?;
    crate::setup::ensure_file("/usr/include/libelf.h", "libelf-dev")
}

fn ensure_bpffs() -> Result<()> {
    let mounted = Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .context("cannot run mountpoint")?
        .success();
    if !mounted {
        crate::setup::status("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])?;
    }
    Ok(())
}

/// Median ns above the empty program, by (program, packet), from the
/// harness's `result prog=... pkt=... minus_floor=...` lines.
type Results = HashMap<(String, String), i64>;

fn parse(output: &str) -> Result<Results> {
    let mut results = Results::new();
    for line in output.lines().filter(|line| line.starts_with("result ")) {
        let fields: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .collect();
        let (Some(program), Some(packet), Some(cost)) = (
            fields.get("prog"),
            fields.get("pkt"),
            fields.get("minus_floor"),
        ) else {
            bail!("unexpected harness line: {line}");
        };
        let cost = cost
            .parse()
            .with_context(|| format!("minus_floor in {line}"))?;
        results.insert((program.to_string(), packet.to_string()), cost);
    }
    if results.is_empty() {
        bail!("the peer harness printed no results");
    }
    Ok(results)
}

fn report(results: &Results) -> Result<()> {
    let mut packets: Vec<&str> = results.keys().map(|(_, packet)| packet.as_str()).collect();
    packets.sort_unstable();
    packets.dedup();
    println!(
        "existing-flow cost per packet above an empty classifier, flow-agent / NetObserv (target <= {TARGET_RATIO}):"
    );
    for packet in packets {
        let cost = |program: &str| {
            results
                .get(&(program.to_owned(), packet.to_owned()))
                .copied()
                .with_context(|| format!("no result for {program} on {packet}"))
        };
        let (ours, tc, tcx) = (cost("ours")?, cost("peer_tc")?, cost("peer_tcx")?);
        println!(
            "  {packet}: flow-agent {ours} ns, NetObserv tc {tc} ns / tcx {tcx} ns: {:.2} / {:.2}",
            ours as f64 / tc as f64,
            ours as f64 / tcx as f64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_by_program_and_packet() {
        let output = "# results: ...\n\
            result prog=empty                pkt=a_ipv4_tcp         ns_per_pkt=16,17,16       median=16 minus_floor=0\n\
            result prog=ours                 pkt=a_ipv4_tcp         ns_per_pkt=66,65,70       median=66 minus_floor=50\n";
        let results = parse(output).unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[&("ours".into(), "a_ipv4_tcp".into())], 50);
        assert_eq!(results[&("empty".into(), "a_ipv4_tcp".into())], 0);
    }

    #[test]
    fn output_without_results_is_an_error() {
        let error = parse("# measured time: 0.3 s\n").unwrap_err();
        assert_eq!(error.to_string(), "the peer harness printed no results");
        let error = parse("result prog=ours pkt=a\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unexpected harness line: result prog=ours pkt=a"
        );
    }
}
