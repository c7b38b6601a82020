//! The soak: an agent with 64 API followers (one of them never reading while
//! traffic flows) as pods come and go. Its memory stays flat, and every
//! follower's records plus the losses it was told of equal what the agent
//! emitted.
//!
//! Runs for `FLOW_AGENT_SOAK_MINUTES` (default 1: the suite's short version;
//! `cargo xtask soak --minutes N` runs it longer).
//!
//! Needs root; skipped with a message otherwise.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics to report failure"
)]

mod common;

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{cli::binary, netns::Agent};
use flow_lab::Node;
use flow_model::record::FlowRecord;

const API: &str = "127.0.0.1:4245";
const FOLLOWERS: usize = 64;
/// The port every soak datagram goes to: followers follow exactly these.
const PORT: u16 = 7000;
/// Each follower's queue in the agent: small, so the follower that does not
/// read overflows it within seconds.
const SUBSCRIBER_QUEUE: &str = "5000";

/// What a follower received: records (and the digest of each line) and the
/// losses it was told of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Received {
    records: u64,
    digests: Vec<u64>,
    lost: u64,
}

/// A line's hash.
fn digest_of(line: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    line.hash(&mut hasher);
    hasher.finish()
}

/// `flow-agent observe --follow -o json` for the soak's datagrams; counts
/// what it prints without keeping it.
struct Follower {
    child: std::process::Child,
    received: Arc<Mutex<Received>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    fn start(node: &Node) -> Self {
        let port = PORT.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.netns.name])
            .arg(binary())
            .args(["observe", "--server", API, "--follow", "-o", "json"])
            .args(["--protocol", "UDP", "--to-port", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let counts = Arc::clone(&received);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                let mut counts = counts.lock().unwrap();
                match value.get("lost_records") {
                    Some(lost) => counts.lost += lost.as_u64().unwrap(),
                    None => {
                        counts.records += 1;
                        counts.digests.push(digest_of(&line));
                    }
                }
            }
        });
        Self {
            child,
            received,
            reader: Some(reader),
        }
    }

    fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the end of its stream (the agent stopped).
    fn finish(mut self) -> Received {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a follower did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reader.take().unwrap().join().unwrap();
        self.received()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends one datagram from a fresh socket (a flow of its own) from each of
/// `pods` to the sink.
fn datagrams(node: &Node, pods: &[usize], sink: SocketAddr) {
    for &pod in pods {
        node.pods[pod]
            .netns
            .run(move || {
                for _ in 0..60 {
                    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                    socket.send_to(&[7u8; 64], sink).unwrap();
                }
            })
            .unwrap();
    }
}

fn soak_minutes() -> f64 {
    std::env::var("FLOW_AGENT_SOAK_MINUTES")
        .map(|minutes| minutes.parse().expect("FLOW_AGENT_SOAK_MINUTES: minutes"))
        .unwrap_or(1.0)
}

#[test]
fn sixty_four_followers_while_pods_churn_lose_nothing_untold_and_memory_stays_flat() {
    require_root!();
    let duration = Duration::from_secs_f64(soak_minutes() * 60.0);
    let mut node = Node::new(2).unwrap();
    let agent = Agent::on(
        &node,
        "500ms",
        &[
            "--grpc-listen",
            API,
            "--grpc-subscriber-queue",
            SUBSCRIBER_QUEUE,
            "--grpc-buffer",
            "1000",
        ],
    );
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));
    let pid = agent.pid();
    let followers: Vec<Follower> = (0..FOLLOWERS).map(|_| Follower::start(&node)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::cli::status(&node, API, &[])["subscribers"] != FOLLOWERS.to_string() {
        assert!(Instant::now() < deadline, "the followers never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last one never reads while traffic flows.
    let stopped = &followers[FOLLOWERS - 1];
    stopped.signal(libc::SIGSTOP);

    // The sink: pod 1 takes every datagram.
    let sink = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), PORT);
    let open = Arc::new(AtomicBool::new(true));
    let keep = Arc::clone(&open);
    let receiver = node.pods[1].netns.spawn(move || {
        let socket = UdpSocket::bind(sink).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buffer = [0u8; 128];
        while keep.load(Ordering::SeqCst) {
            let _ = socket.recv(&mut buffer);
        }
    });

    // Pods come and go: one added every `churn`, the oldest churned pod's
    // interface deleted once three are up; all of them send.
    let churn = (duration / 120).max(Duration::from_secs(2));
    let started = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut next_churn = started;
    let mut live: Vec<usize> = vec![0];
    while started.elapsed() < duration {
        if Instant::now() >= next_churn && node.pods.len() < 250 {
            node.add_pod().unwrap();
            live.push(node.pods.len() - 1);
            if live.len() > 4 {
                let gone = live.remove(1);
                node.netns
                    .ip(&["link", "del", &node.pods[gone].host_interface])
                    .unwrap();
            }
            next_churn += churn;
        }
        datagrams(&node, &live, sink);
        samples.push((started.elapsed(), rss_kib(pid)));
        std::thread::sleep(Duration::from_millis(250));
    }
    // The last flush interval reports the last datagrams.
    std::thread::sleep(Duration::from_secs(1));
    stopped.signal(libc::SIGCONT);
    let lines = agent.stop_raw();
    open.store(false, Ordering::SeqCst);
    receiver.join().unwrap().unwrap();

    let emitted: Vec<&String> = lines
        .iter()
        .filter(|line| {
            let record: FlowRecord = serde_json::from_str(line).unwrap();
            record.protocol.to_string() == "UDP" && record.destination.port == PORT
        })
        .collect();
    let emitted_digests: std::collections::HashSet<u64> =
        emitted.iter().map(|line| digest_of(line)).collect();
    let emitted = emitted.len() as u64;
    let results: Vec<Received> = followers.into_iter().map(Follower::finish).collect();
    for (index, received) in results.iter().enumerate() {
        assert_eq!(
            received.records + received.lost,
            emitted,
            "follower {index}: {} records and {} told lost, of {emitted} emitted",
            received.records,
            received.lost,
        );
        // Only emitted records, each once: with the losses told, exactly
        // what the agent emitted. A reading follower loses records only
        // when the agent stops waiting for it at shutdown, and is told.
        let unique: std::collections::HashSet<u64> = received.digests.iter().copied().collect();
        assert_eq!(
            unique.len(),
            received.digests.len(),
            "follower {index}: a record twice"
        );
        assert!(
            unique.is_subset(&emitted_digests),
            "follower {index}: a record the agent never emitted"
        );
    }
    let stopped = &results[FOLLOWERS - 1];
    assert!(
        stopped.lost > 0,
        "the follower that never read lost nothing"
    );

    // Memory: after the first quarter (warm-up), the last quarter's peak
    // stays within 20% (plus 4 MiB of allocator slack) of the second's.
    let quarter = |q: u32| -> u64 {
        let from = duration * q / 4;
        let to = duration * (q + 1) / 4;
        samples
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, rss)| *rss)
            .max()
            .unwrap()
    };
    let (second, last) = (quarter(1), quarter(3));
    let pods = node.pods.len();
    eprintln!(
        "soak: {:.1} min, {pods} pods, {emitted} records emitted, the stopped follower received {} and was told of {} lost; agent RSS {} KiB at start, {second} KiB peak in the second quarter, {last} KiB in the last",
        duration.as_secs_f64() / 60.0,
        stopped.records,
        stopped.lost,
        samples[0].1,
    );
    assert!(
        last * 5 <= second * 6 + 5 * 4096,
        "RSS grew: {second} KiB -> {last} KiB"
    );
}
