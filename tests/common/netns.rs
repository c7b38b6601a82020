//! The lab (flow-lab) plus what only tests need: a running agent whose records
//! are parsed, and totals over records.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use flow_lab::AgentProcess;
use flow_lab::{Netns, Node};
use flow_model::record::FlowRecord;

/// A `flow-agent run` process inside a node namespace.
pub struct Agent(AgentProcess);

/// What the agent printed, after it stopped.
#[derive(Debug)]
pub struct AgentOutput {
    pub records: Vec<FlowRecord>,
    pub stderr: Vec<String>,
    pub success: bool,
}

fn parse(lines: &[String]) -> Vec<FlowRecord> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("bad record {line}: {error}"))
        })
        .collect()
}

impl Agent {
    /// Starts `flow-agent run -i <the node's pod glob> --flush-interval FLUSH
    /// EXTRA --output json` in the node's namespace, once attached.
    pub fn on(node: &Node, flush: &str, extra: &[&str]) -> Self {
        let glob = node.glob();
        let mut args = vec!["-i", glob.as_str(), "--flush-interval", flush];
        args.extend_from_slice(extra);
        Self::start(&node.netns, &args)
    }

    /// Starts `flow-agent run ARGS --output json` in `netns`, once attached.
    pub fn start(netns: &Netns, args: &[&str]) -> Self {
        Self::start_as(netns, "test-node", args)
    }

    /// As [`Agent::start`], for the node named `node_name`.
    pub fn start_as(netns: &Netns, node_name: &str, args: &[&str]) -> Self {
        Self::start_with_env(netns, node_name, &[], args)
    }

    /// As [`Agent::start_as`], with `env` (`NAME=value` each) set.
    pub fn start_with_env(netns: &Netns, node_name: &str, env: &[&str], args: &[&str]) -> Self {
        let mut all = args.to_vec();
        if !args.contains(&"--output") {
            all.extend_from_slice(&["--output", "json"]);
        }
        all.extend_from_slice(&["--node-name", node_name]);
        Self(
            AgentProcess::start_with_env(
                env!("CARGO_BIN_EXE_flow-agent").as_ref(),
                netns,
                env,
                &all,
                true,
            )
            .unwrap(),
        )
    }

    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        self.0.wait_for_log(text, timeout).unwrap();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT...) and returns at once.
    pub fn signal(&self, signal: i32) {
        self.0.signal(signal);
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.0.stderr()
    }

    /// Sends SIGTERM, waits for exit, returns stdout's lines unparsed.
    pub fn stop_raw(self) -> Vec<String> {
        self.0.stop().unwrap().stdout
    }

    /// Records received so far.
    pub fn records(&self) -> Vec<FlowRecord> {
        parse(&self.0.stdout())
    }

    /// Kills the agent with SIGKILL: no detach, no final drain.
    pub fn kill(self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.pid() as i32, libc::SIGKILL) };
        let _ = self.0.stop();
    }

    /// Sends SIGTERM, waits for exit, returns everything it printed.
    pub fn stop(self) -> AgentOutput {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM or SIGINT), waits for exit, returns
    /// everything it printed.
    pub fn stop_with(self, signal: i32) -> AgentOutput {
        let output = self
            .0
            .signal_and_wait(signal, Duration::from_secs(60))
            .unwrap();
        AgentOutput {
            records: parse(&output.stdout),
            stderr: output.stderr,
            success: output.success,
        }
    }
}

/// Totals per (source, destination, protocol, ports) over a set of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub records: usize,
}

pub type FlowId = (String, u16, String, u16, String);

pub fn totals(records: &[FlowRecord]) -> HashMap<FlowId, (Totals, Vec<bool>)> {
    let mut map: HashMap<FlowId, (Totals, Vec<bool>)> = HashMap::new();
    for record in records {
        let id = (
            record.source.ip.to_string(),
            record.source.port,
            record.destination.ip.to_string(),
            record.destination.port,
            record.protocol.to_string(),
        );
        let (totals, replies) = map.entry(id).or_default();
        totals.packets += record.packets;
        totals.bytes += record.bytes;
        totals.records += 1;
        replies.push(record.is_reply);
    }
    map
}

/// The totals and reply flags of one flow; panics naming the flows there are.
pub fn flow<'a>(
    flows: &'a HashMap<FlowId, (Totals, Vec<bool>)>,
    source: impl ToString,
    source_port: u16,
    destination: impl ToString,
    destination_port: u16,
    protocol: &str,
) -> &'a (Totals, Vec<bool>) {
    let id = (
        source.to_string(),
        source_port,
        destination.to_string(),
        destination_port,
        protocol.to_owned(),
    );
    flows.get(&id).unwrap_or_else(|| {
        panic!(
            "no flow {id:?}; flows: {:?}",
            flows.keys().collect::<Vec<_>>()
        )
    })
}

/// Sends `bursts` bursts of a thousand 32-byte datagrams, each from a fresh
/// socket (a flow of its own), from pod `from` to `target`; each burst starts
/// once the agent has printed the one before, so no drain holds more than
/// one burst.
pub fn udp_bursts(agent: &Agent, node: &Node, from: usize, target: SocketAddr, bursts: u64) {
    let to_target = |agent: &Agent| -> u64 {
        agent
            .records()
            .iter()
            .filter(|record| {
                record.destination.ip == target.ip() && record.destination.port == target.port()
            })
            .map(|record| record.packets)
            .sum()
    };
    for burst in 1..=bursts {
        node.pods[from]
            .netns
            .run(move || {
                for _ in 0..1_000 {
                    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                    socket.send_to(&[7u8; 32], target).unwrap();
                }
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while to_target(agent) != 1_000 * burst {
            assert!(Instant::now() < deadline, "burst {burst} never drained");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
