//! `cargo xtask bench`: the datapath, API, agents and pipeline benchmarks
//! (`cargo bench`), large drains of a real agent ([`crate::drains`]), and TCP
//! throughput between two lab pods with and without flow-agent attached.
//! Prints figures; asserts nothing.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use flow_lab::{AgentProcess, Node};

use crate::peer::PeerBench;

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

fn resident_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .context("VmRSS")
}

/// Hubble followers each on its own connection, as relays and CLIs follow:
/// the agent's resident memory per follower.
fn hubble_followers(agent_binary: &Path) -> Result<()> {
    use flow_proto::hubble::observer::{GetFlowsRequest, observer_client::ObserverClient};
    use sha2::Digest as _;
    const FOLLOWERS: usize = 200;
    const TOKEN: &str = "bench-admin";
    let node = Node::new(1)?;
    let address = node.link_to_host(60)?;
    let access = std::env::temp_dir().join(format!("{}-access.yaml", node.netns.name));
    let digest: String = sha2::Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    std::fs::write(
        &access,
        format!("tokens:\n- {{sha256: {digest}, admin: true}}\n"),
    )?;
    let agent = AgentProcess::start(
        agent_binary,
        &node.netns,
        &[
            "-i",
            &node.glob(),
            "--output",
            "none",
            "--hubble-listen",
            "0.0.0.0:4244",
            "--grpc-allow-plaintext",
            "--grpc-access",
            access.to_str().context("temporary path")?,
            "--grpc-max-subscribers",
            "1000",
        ],
        false,
    )?;
    let idle_kib = resident_kib(agent.pid())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let streams = runtime.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..FOLLOWERS {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{address}:4244"))?
                    .connect()
                    .await?;
            let mut request = tonic::Request::new(GetFlowsRequest {
                follow: true,
                ..GetFlowsRequest::default()
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse()?);
            streams.push(
                ObserverClient::new(channel)
                    .get_flows(request)
                    .await?
                    .into_inner(),
            );
        }
        anyhow::Ok(streams)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let following_kib = resident_kib(agent.pid())?;
    drop(streams);
    drop(runtime);
    agent.stop()?;
    let _ = std::fs::remove_file(&access);
    println!(
        "Hubble followers: agent resident memory {idle_kib} KiB idle, {following_kib} KiB with {FOLLOWERS} following GetFlows streams, each on its own connection: {:.1} KiB per follower",
        following_kib.saturating_sub(idle_kib) as f64 / FOLLOWERS as f64
    );
    Ok(())
}

/// Runs every benchmark; with `peer`, our classifier beside NetObserv's too.
pub(crate) fn bench(agent_binary: &Path, peer: Option<&PeerBench>) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let datapath = ["bench", "--package", "flow-agent", "--bench", "datapath"];
    match peer {
        Some(peer) => {
            peer.existing_flow()?;
            let object = PeerBench::object();
            crate::setup::status(
                &cargo,
                &datapath,
                &[("FLOW_AGENT_BENCH_PEER_OBJECT", &object.to_string_lossy())],
            )?;
        }
        None => crate::setup::status(&cargo, &datapath, &[])?,
    }
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "api"])?;
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "agents"])?;
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "pipeline"])?;
    crate::drains::large_drains(agent_binary)?;
    hubble_followers(agent_binary)?;
    rates(agent_binary)
}

/// 64-byte UDP packets a second, then TCP throughput, with and without the
/// agent.
pub(crate) fn rates(agent_binary: &Path) -> Result<()> {
    crate::packets::small_packets(agent_binary)?;
    throughput(agent_binary)
}
