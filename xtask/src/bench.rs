//! `cargo xtask bench`: the datapath, API, agents, pipeline, policy and
//! audit benchmarks (`cargo bench`), large drains of a real agent ([`crate::drains`]), the
//! agent's memory per Hubble follower, and packet rates and TCP throughput
//! between two lab pods with and without flow-agent ([`crate::rates`]).
//! Prints figures; asserts nothing.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use flow_lab::{AgentProcess, Node};

use crate::{drains::status_kib, peer::PeerBench};

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
    let idle_kib = status_kib(agent.pid(), "VmRSS:")?;
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
    let following_kib = status_kib(agent.pid(), "VmRSS:")?;
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
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "dns"])?;
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "api"])?;
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "agents"])?;
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "pipeline"])?;
    crate::cargo(&["bench", "--package", "flow-agent", "--bench", "policy"])?;
    crate::cargo(&["bench", "--package", "flow-policy", "--bench", "audit"])?;
    crate::drains::large_drains(agent_binary)?;
    hubble_followers(agent_binary)?;
    rates(agent_binary)
}

/// 64-byte UDP packets a second, then TCP throughput, with and without the
/// agent.
pub(crate) fn rates(agent_binary: &Path) -> Result<()> {
    crate::rates::small_packets(agent_binary)?;
    crate::rates::throughput(agent_binary)
}
