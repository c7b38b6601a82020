//! Small packets between two lab pods with and without flow-agent attached:
//! 64-byte UDP datagrams as fast as iperf3 sends them, where the per-packet
//! cost shows (TSO hides it from TCP). Interleaved rounds, medians.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use flow_lab::{AgentProcess, LabProcess, Node};

/// iperf3's server in a pod, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let Self(child) = self;
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Packets per second the receiver got in one iperf3 UDP run of 64-byte
/// datagrams at full speed from pod 1 to pod 2.
fn udp_pps(node: &Node, seconds: u32) -> Result<f64> {
    let server = node.pods[1].ipv4.to_string();
    let output = flow_lab::run_in(
        &node.pods[0].netns.name,
        "iperf3",
        &[
            "-c",
            &server,
            "-u",
            "-b",
            "0",
            "-l",
            "64",
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )?;
    let json: serde_json::Value = serde_json::from_str(&output).context("iperf3 -J output")?;
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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

/// Received 64-byte UDP packets per second, in alternating rounds: bare veth,
/// an empty program attached at both hooks (the floor any program pays), and
/// flow-agent attached; prints all three and the ratios of medians.
pub(crate) fn small_packets(agent_binary: &Path) -> Result<()> {
    let empty_binary = empty_program_binary()?;
    const ROUNDS: usize = 7;
    const SECONDS: u32 = 3;
    let node = Node::new(2)?;
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &node.pods[1].netns.name, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let interfaces: Vec<&str> = node
        .pods
        .iter()
        .map(|pod| pod.host_interface.as_str())
        .collect();
    let (mut without, mut with, mut empty) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.push(udp_pps(&node, SECONDS)?);
        let floor = LabProcess::start(&node.netns, &empty_binary, &interfaces, None)?;
        floor.wait_for_log("attached", Duration::from_secs(10))?;
        empty.push(udp_pps(&node, SECONDS)?);
        drop(floor);
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
        with.push(udp_pps(&node, SECONDS)?);
        let output = agent.stop()?;
        if !output.success {
            bail!("flow-agent failed: {}", output.stderr.join("\n"));
        }
    }
    let kpps = |values: &[f64]| {
        values
            .iter()
            .map(|value| format!("{:.0}", value / 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (base, agent) = (median(without.clone()), median(with.clone()));
    println!(
        "UDP 64-byte datagrams pod to pod over veth, iperf3 -u -b 0 -l 64 -t {SECONDS}, {ROUNDS} alternating rounds, received packets/s:"
    );
    println!(
        "  without flow-agent: {} kpps (median {:.0})",
        kpps(&without),
        base / 1e3
    );
    println!(
        "  with flow-agent:    {} kpps (median {:.0})",
        kpps(&with),
        agent / 1e3
    );
    let floor = median(empty.clone());
    println!(
        "  an empty program:   {} kpps (median {:.0}), attached with TCX at both hooks of every pod's interface",
        kpps(&empty),
        floor / 1e3
    );
    println!("  ratio (with / without, medians): {:.3}", agent / base);
    println!(
        "  ratio (empty program / without): {:.3}, (with / empty program): {:.3}",
        floor / base,
        agent / floor
    );
    Ok(())
}
