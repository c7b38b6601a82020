//! `cargo xtask bench`: the datapath benchmarks (`cargo bench`) and TCP
//! throughput between two lab pods with and without flow-agent attached.
//! Prints figures; asserts nothing.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use flow_lab::{AgentProcess, Node};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let Self(child) = self;
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One iperf3 run from pod 1 to pod 2; returns received bits per second.
fn iperf(node: &Node, seconds: u32) -> Result<f64> {
    let server = node.pods[1].ipv4.to_string();
    let output = flow_lab::run_in(
        &node.pods[0].netns.name,
        "iperf3",
        &["-c", &server, "-t", &seconds.to_string(), "-J"],
    )?;
    let json: serde_json::Value = serde_json::from_str(&output).context("iperf3 -J output")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn throughput(agent_binary: &Path) -> Result<()> {
    const ROUNDS: usize = 5;
    const SECONDS: u32 = 4;
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
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.push(iperf(&node, SECONDS)?);
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
        with.push(iperf(&node, SECONDS)?);
        let output = agent.stop()?;
        if !output.success {
            bail!("flow-agent failed: {}", output.stderr.join("\n"));
        }
    }
    let gbps = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{:.2}", v / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (base, agent) = (median(without.clone()), median(with.clone()));
    println!(
        "TCP throughput pod to pod over veth, iperf3 -t {SECONDS}, {ROUNDS} alternating rounds:"
    );
    println!(
        "  without flow-agent: {} Gbit/s (median {:.2})",
        gbps(&without),
        base / 1e9
    );
    println!(
        "  with flow-agent:    {} Gbit/s (median {:.2})",
        gbps(&with),
        agent / 1e9
    );
    println!("  ratio (with / without, medians): {:.3}", agent / base);
    Ok(())
}

pub(crate) fn bench(agent_binary: &Path) -> Result<()> {
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "datapath"])?;
    throughput(agent_binary)
}
