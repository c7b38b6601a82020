//! Rates between two lab pods with and without flow-agent attached, in
//! alternating rounds, reported as medians: 64-byte UDP datagrams as fast as
//! iperf3 sends them, where the per-packet cost shows (with a third arm, an
//! empty program held attached, the floor any program pays), and TCP
//! throughput, where TSO hides it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use flow_lab::{AgentProcess, LabProcess, Node};

/// iperf3's server in a pod, killed on drop.
struct Server(Child);

impl Server {
    /// Starts `iperf3 -s` in the second pod and gives it time to listen.
    fn start(node: &Node) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &node.pods[1].netns.name, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Self(child) = self;
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// iperf3's JSON report of one run from pod 1 to pod 2 with `options`.
fn iperf(node: &Node, options: &[&str], seconds: u32) -> Result<serde_json::Value> {
    let server = node.pods[1].ipv4.to_string();
    let seconds = seconds.to_string();
    let mut args = vec!["-c", &server, "-t", &seconds, "-J"];
    args.extend_from_slice(options);
    let output = flow_lab::run_in(&node.pods[0].netns.name, "iperf3", &args)?;
    serde_json::from_str(&output).context("iperf3 -J output")
}

/// Packets per second the receiver got in one UDP run of 64-byte datagrams
/// at full speed.
fn udp_pps(node: &Node, seconds: u32) -> Result<f64> {
    let json = iperf(node, &["-u", "-b", "0", "-l", "64"], seconds)?;
    let sum = &json["end"]["sum"];
    let (packets, lost, elapsed) = (
        sum["packets"]
            .as_f64()
            .context("iperf3 reported no packets")?,
        sum["lost_packets"].as_f64().unwrap_or(0.0),
        sum["seconds"]
            .as_f64()
            .context("iperf3 reported no duration")?,
    );
    Ok((packets - lost) / elapsed)
}

/// Received bits per second of one TCP run.
fn tcp_bps(node: &Node, seconds: u32) -> Result<f64> {
    iperf(node, &[], seconds)?["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")
}

/// `measure` with flow-agent attached to the node's pods, then the agent
/// stopped; an agent that failed is an error.
fn with_agent<T>(
    agent_binary: &Path,
    node: &Node,
    measure: impl FnOnce(&AgentProcess) -> Result<T>,
) -> Result<T> {
    let agent = AgentProcess::start(
        agent_binary,
        &node.netns,
        &[
            "-i",
            &node.glob(),
            "--output",
            "none",
            "--flush-interval",
            "1s",
        ],
        false,
    )?;
    let value = measure(&agent)?;
    let output = agent.stop()?;
    if !output.success {
        bail!("flow-agent failed: {}", output.stderr.join("\n"));
    }
    Ok(value)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One arm's rounds, in `unit` divided by `scale` with `decimals`, and their
/// median: `  LABEL 1 2 3 UNIT (median 2)`.
fn print_arm(label: &str, values: &[f64], scale: f64, decimals: usize, unit: &str) {
    let rounds: Vec<String> = values
        .iter()
        .map(|value| format!("{:.decimals$}", value / scale))
        .collect();
    println!(
        "  {label} {} {unit} (median {:.decimals$})",
        rounds.join(" "),
        median(values.to_vec()) / scale
    );
}

/// Builds the `attach_empty` example (an empty classifier held attached).
fn empty_program_binary() -> Result<PathBuf> {
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "flow-agent",
        "--example",
        "attach_empty",
    ])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    Ok(target.join("release").join("examples").join("attach_empty"))
}

/// One measurement's three arms, in alternating rounds: bare veth, an empty
/// program attached at both hooks (the floor any program pays), and
/// flow-agent attached.
#[derive(Default)]
struct Arms {
    without: Vec<f64>,
    empty: Vec<f64>,
    with: Vec<f64>,
}

impl Arms {
    /// `rounds` rounds of `measure` on a fresh two-pod lab.
    fn measure(
        agent_binary: &Path,
        rounds: usize,
        measure: impl Fn(&Node) -> Result<f64>,
    ) -> Result<Self> {
        let empty_binary = empty_program_binary()?;
        let node = Node::new(2)?;
        let _server = Server::start(&node)?;
        let interfaces: Vec<&str> = node
            .pods
            .iter()
            .map(|pod| pod.host_interface.as_str())
            .collect();
        let mut arms = Self::default();
        for _ in 0..rounds {
            arms.without.push(measure(&node)?);
            let floor = LabProcess::start(&node.netns, &empty_binary, &interfaces, None)?;
            floor.wait_for_log("attached", Duration::from_secs(10))?;
            arms.empty.push(measure(&node)?);
            drop(floor);
            arms.with
                .push(with_agent(agent_binary, &node, |_| measure(&node))?);
        }
        Ok(arms)
    }

    /// Prints each arm's rounds and the ratios of their medians.
    fn print(self, scale: f64, decimals: usize, unit: &str) {
        print_arm("without flow-agent:", &self.without, scale, decimals, unit);
        print_arm("with flow-agent:   ", &self.with, scale, decimals, unit);
        print_arm("an empty program:  ", &self.empty, scale, decimals, unit);
        println!(
            "    (the empty program is attached with TCX at both hooks of every pod's interface)"
        );
        let paired = |arm: &[f64]| {
            median(
                arm.iter()
                    .zip(&self.without)
                    .map(|(value, base)| value / base)
                    .collect(),
            )
        };
        // Rounds next to each other share the machine's slower swings, so a
        // round's own ratio is the steadier figure on a shared machine.
        let (agent_paired, floor_paired) = (paired(&self.with), paired(&self.empty));
        let (base, agent, floor) = (median(self.without), median(self.with), median(self.empty));
        println!("  ratio (with / without, medians): {:.3}", agent / base);
        println!(
            "  ratio (with / without, median of each round's own): {agent_paired:.3}; empty program: {floor_paired:.3}"
        );
        println!(
            "  ratio (empty program / without): {:.3}, (with / empty program): {:.3}",
            floor / base,
            agent / floor
        );
    }
}

/// Runs and nanoseconds of one classifier, summed over its loaded copies.
#[derive(Clone, Copy, Default)]
struct Runs {
    count: u64,
    nanos: u64,
}

/// flow-agent's two classifiers' run-time statistics (kept by the kernel
/// while `kernel.bpf_stats_enabled` is on).
fn classifier_runs() -> Result<[Runs; 2]> {
    let mut runs = [Runs::default(); 2];
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the loaded BPF programs")?;
        let slot = match info.name_as_str() {
            Some(flow_common::PROGRAM_INGRESS) => &mut runs[0],
            Some(flow_common::PROGRAM_EGRESS) => &mut runs[1],
            _ => continue,
        };
        slot.count += info.run_count();
        slot.nanos += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
    }
    Ok(runs)
}

/// CPU time a process has used, user and system, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields 14 and 15 (utime, stime), counted after the command's ")".
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", index + 3))
    };
    Ok(tick(11)? + tick(12)?)
}

/// One more UDP round, outside the medians, that says where flow-agent's
/// cost lies: each classifier's time per run on this traffic, from the
/// kernel's run-time statistics (which add two clock reads to every run, so
/// they are on for this round only), and the agent process's own CPU time.
fn udp_breakdown(agent_binary: &Path, seconds: u32) -> Result<()> {
    let node = Node::new(2)?;
    let _server = Server::start(&node)?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's BPF run-time statistics")?;
    let (pps, runs_before, runs_after, ticks) = with_agent(agent_binary, &node, |agent| {
        let (runs_before, ticks_before) = (classifier_runs()?, cpu_ticks(agent.id())?);
        let pps = udp_pps(&node, seconds)?;
        let (runs_after, ticks_after) = (classifier_runs()?, cpu_ticks(agent.id())?);
        Ok((pps, runs_before, runs_after, ticks_after - ticks_before))
    })?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let agent_ms = ticks as f64 * 1e3 / ticks_per_second;
    println!(
        "  where flow-agent's time goes, one more round ({:.0} kpps) with the kernel's run-time statistics on:",
        pps / 1e3
    );
    for (name, (before, after)) in [flow_common::PROGRAM_INGRESS, flow_common::PROGRAM_EGRESS]
        .into_iter()
        .zip(runs_before.into_iter().zip(runs_after))
    {
        let count = after.count.saturating_sub(before.count);
        let nanos = after.nanos.saturating_sub(before.nanos);
        println!(
            "    {name}: {count} runs, {:.0} ns a run",
            nanos as f64 / count.max(1) as f64
        );
    }
    println!(
        "    the agent process: {agent_ms:.0} ms of CPU in {seconds} s ({:.1}% of one core)",
        agent_ms / 10.0 / f64::from(seconds)
    );
    Ok(())
}

/// Received 64-byte UDP packets per second, bare, under an empty program and
/// under flow-agent ([`Arms`]).
pub(crate) fn small_packets(agent_binary: &Path) -> Result<()> {
    const ROUNDS: usize = 9;
    const SECONDS: u32 = 3;
    let arms = Arms::measure(agent_binary, ROUNDS, |node| udp_pps(node, SECONDS))?;
    println!(
        "UDP 64-byte datagrams pod to pod over veth, iperf3 -u -b 0 -l 64 -t {SECONDS}, {ROUNDS} alternating rounds, received packets/s:"
    );
    arms.print(1e3, 0, "kpps");
    udp_breakdown(agent_binary, SECONDS)
}

/// TCP throughput, bare, under an empty program and under flow-agent
/// ([`Arms`]).
pub(crate) fn throughput(agent_binary: &Path) -> Result<()> {
    const ROUNDS: usize = 5;
    const SECONDS: u32 = 4;
    let arms = Arms::measure(agent_binary, ROUNDS, |node| tcp_bps(node, SECONDS))?;
    println!(
        "TCP throughput pod to pod over veth, iperf3 -t {SECONDS}, {ROUNDS} alternating rounds:"
    );
    arms.print(1e9, 2, "Gbit/s");
    Ok(())
}
