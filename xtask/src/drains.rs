//! The real agent draining large intervals: 100,000 and then 1,000,000 UDP
//! flows sent from a lab pod in one flush interval each, with identities
//! from an inventory of 5,000 pods and records built, then also printed as
//! JSON lines (to /dev/null). Reports each drain's time as the agent measures it (the
//! kernel's part and the whole), per flow, the near-empty drain that
//! follows each, and the agent's peak resident memory. Prints figures;
//! asserts nothing.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use flow_lab::{
    LabProcess, Node,
    cluster::{Controller, Inventory},
};

/// Pods in the inventory: the lab node's two and 4,998 elsewhere.
const INVENTORY_PODS: usize = 5_000;

/// The flush interval: long enough for a million datagrams to go out
/// within one.
const FLUSH_INTERVAL: &str = "15s";

/// Capacity of each flow map: half of it (when the agent drains early) is
/// above a million flows.
const MAP_SIZE: &str = "2500000";

/// Source sockets per address family; each sends to every destination
/// port, so each (socket, port) is a flow of its own.
const SOCKETS: u16 = 8;

/// The node name the agent reports and the inventory places the lab pods on.
const NODE_NAME: &str = "bench-node";

/// One drain, from the agent's debug log.
#[derive(Clone, Copy, Debug)]
struct Drain {
    flows: u64,
    /// Moving the flows out of the kernel.
    kernel_us: u64,
    /// The whole drain: kernel, records, aggregates, sinks.
    elapsed_us: u64,
}

/// The inventory: the lab pods as a Deployment on this node, and the others
/// as Deployments of ten pods each on 49 other nodes, in 10.200.0.0/16.
fn inventory(node: &Node) -> String {
    let mut inventory = Inventory::new();
    inventory.namespace("bench", Some("tenant-a"));
    inventory.namespace("others", Some("tenant-b"));
    let lab: Vec<&flow_lab::Pod> = node.pods.iter().collect();
    inventory.workload(
        "bench",
        "lab",
        Controller::Deployment { hash: "5d8f9c" },
        &[("app", "lab")],
        &lab,
        NODE_NAME,
    );
    let mut items = String::new();
    for index in lab.len()..INVENTORY_PODS {
        let workload = index / 10;
        let address = Ipv4Addr::new(10, 200, (index / 256) as u8, (index % 256) as u8);
        let _ = write!(
            items,
            "- apiVersion: v1
  kind: Pod
  metadata: {{name: app-{workload}-{index:05}, namespace: others, uid: pod-{index}, labels: {{app: app-{workload}}}}}
  spec: {{nodeName: node-{}, containers: [{{name: main, image: app}}]}}
  status: {{phase: Running, startTime: '2026-01-01T00:00:00Z', podIP: '{address}', podIPs: [{{ip: '{address}'}}]}}
",
            1 + index % 49,
        );
    }
    inventory.raw(&items);
    inventory.yaml()
}

/// A numeric field of a log line (`flows=100002`).
fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The drains the agent has logged so far, in order.
fn drains(agent: &LabProcess) -> Vec<Drain> {
    agent
        .stderr()
        .iter()
        .filter(|line| line.contains(" drained "))
        .filter_map(|line| {
            Some(Drain {
                flows: field(line, "flows")?,
                kernel_us: field(line, "kernel_us")?,
                elapsed_us: field(line, "elapsed_us")?,
            })
        })
        .collect()
}

/// Waits for the drain after the first `seen` drains.
fn drain_after(agent: &LabProcess, seen: usize) -> Result<(usize, Drain)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(drain) = drains(agent).get(seen) {
            return Ok((seen + 1, *drain));
        }
        if Instant::now() > deadline {
            bail!("no drain after the first {seen} within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one datagram from each of [`SOCKETS`] sockets per family to each of
/// `ports` ports of `v4` and `v6`: `2 * SOCKETS * ports` flows.
fn send(node: &Node, v4: Ipv4Addr, v6: Ipv6Addr, ports: u16) -> Result<()> {
    let senders: Vec<_> = [IpAddr::V4(v4), IpAddr::V6(v6)]
        .into_iter()
        .map(|target| {
            node.pods[0].netns.spawn(move || -> std::io::Result<()> {
                // IPv6 sockets take IPv4's ports too: each family has its own.
                let (any, first_port): (IpAddr, u16) = match target {
                    IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED.into(), 40_000),
                    IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED.into(), 41_000),
                };
                for socket in 0..SOCKETS {
                    let socket = UdpSocket::bind(SocketAddr::new(any, first_port + socket))?;
                    for port in 1..=ports {
                        socket.send_to(&[0u8; 16], (target, port))?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for sender in senders {
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("a sender panicked"))???;
    }
    Ok(())
}

/// A `kB` field of a process's `/proc/PID/status`, `name` with its colon
/// (`VmRSS:`, `VmHWM:`).
pub(crate) fn status_kib(pid: u32, name: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .with_context(|| format!("{name} of the agent"))
}

/// One burst of `ports` ports (`2 * SOCKETS * ports` flows) sent right
/// after a drain, its drain and the next; returns the drains seen so far.
fn burst(
    agent: &LabProcess,
    node: &Node,
    ports: u16,
    seen: usize,
    target_ms: Option<f64>,
) -> Result<usize> {
    let flows = 2 * u64::from(SOCKETS) * u64::from(ports);
    send(node, node.pods[1].ipv4, node.pods[1].ipv6, ports)?;
    let (mut seen, mut drain) = drain_after(agent, seen)?;
    while drain.flows < flows {
        if drain.flows > 1_000 {
            bail!(
                "the burst of {flows} flows was split: a drain carried {} of them",
                drain.flows
            );
        }
        (seen, drain) = drain_after(agent, seen)?;
    }
    let (seen, next) = drain_after(agent, seen)?;
    println!(
        "  {flows:>9} flows in one interval: drain + records {:.0} ms{}, kernel {:.0} ms, {:.2} µs a flow in all, {:.2} in userspace (1.00); the next drain, of {} flows, {:.1} ms (10.0), kernel {:.1} ms",
        drain.elapsed_us as f64 / 1e3,
        target_ms.map_or(String::new(), |target| format!(" ({target:.0})")),
        drain.kernel_us as f64 / 1e3,
        drain.elapsed_us as f64 / drain.flows as f64,
        drain.elapsed_us.saturating_sub(drain.kernel_us) as f64 / drain.flows as f64,
        next.flows,
        next.elapsed_us as f64 / 1e3,
        next.kernel_us as f64 / 1e3,
    );
    Ok(seen)
}

/// Runs the agent through a 100k-flow and a 1M-flow interval, with records
/// built but not printed (`--output none`: they still go through aggregates
/// and the sinks' interface), then printed as JSON lines, and prints what
/// each drain cost, as "figure (target)".
pub(crate) fn large_drains(agent_binary: &Path) -> Result<()> {
    for output in ["none", "json"] {
        agent_draining(agent_binary, output)?;
    }
    Ok(())
}

fn agent_draining(agent_binary: &Path, output: &str) -> Result<()> {
    let node = Node::new(2)?;
    let inventory_path = std::env::temp_dir().join(format!("{}-inventory.yaml", node.netns.name));
    std::fs::write(&inventory_path, inventory(&node))?;
    let command = format!(
        "exec {} run -i '{}' --output {output} --flush-interval {FLUSH_INTERVAL} --map-size {MAP_SIZE} --inventory {} --node-name {NODE_NAME} --log-level flow_agent=debug > /dev/null",
        agent_binary.display(),
        node.glob(),
        inventory_path.display(),
    );
    let agent = LabProcess::start(&node.netns, Path::new("/bin/sh"), &["-c", &command], None)?;
    agent.wait_for_log("flow-agent started", Duration::from_secs(30))?;
    let idle_kib = status_kib(agent.pid(), "VmRSS:")?;
    println!(
        "flow-agent draining large intervals: UDP flows from a lab pod, identity from an inventory of {INVENTORY_PODS} pods, --output {output} (to /dev/null), flush interval {FLUSH_INTERVAL}, map size {MAP_SIZE}; figure (target):"
    );
    // Each burst starts right after a drain, so that it fits in one interval.
    let (seen, _) = drain_after(&agent, 0)?;
    let seen = burst(&agent, &node, 6_250, seen, None)?;
    burst(&agent, &node, 62_500, seen, Some(2_000.0))?;
    let peak_kib = status_kib(agent.pid(), "VmHWM:")?;
    let output = agent.stop()?;
    let _ = std::fs::remove_file(&inventory_path);
    if !output.success {
        bail!("flow-agent failed: {}", output.stderr.join("\n"));
    }
    println!(
        "  resident memory: {:.0} MiB idle, peak {:.0} MiB (300)",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    Ok(())
}
