//! Network namespaces as test nodes and pods, joined by veth pairs, and the
//! `flow-agent` binary running inside a node namespace.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use flow_agent::record::FlowRecord;

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `ip` inside a namespace.
pub fn ip_in(netns: &str, args: &[&str]) {
    let mut full = vec!["netns", "exec", netns, "ip"];
    full.extend_from_slice(args);
    run("ip", &full);
}

/// A short id unique to this process and call, for namespace and interface names.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Interface names are limited to 15 bytes: keep ids short.
    format!("{:x}{:02x}", std::process::id() % 0xffff, n % 0xff)
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        ip_in(&netns.name, &["link", "set", "lo", "up"]);
        // Link-local addresses under duplicate address detection cannot source
        // neighbour solicitations: the first packet to a new neighbour would
        // wait a second for a retransmission. Devices created here inherit this.
        netns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        netns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        netns
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
        );
    }

    /// Runs `f` on a thread inside this namespace; sockets it opens live here.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in namespace panicked")
    }
}

/// Moves the calling thread into a network namespace.
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|error| panic!("open {path}: {error}"));
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod: its own namespace, `eth0` inside, the other end of the veth in the node.
#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    /// Host-side veth name, in the node namespace.
    pub host_interface: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// A node namespace with routed pods, like a CNI in routing mode (Azure CNI
/// transparent mode, Calico): each pod has a /24 and a /64 with the host side of
/// its veth as gateway.
#[derive(Debug)]
pub struct Node {
    pub netns: Netns,
    /// Prefix of every interface this node's pods get: a glob `{prefix}*` selects them.
    pub prefix: String,
    pub pods: Vec<Pod>,
}

impl Node {
    pub fn new(pods: usize) -> Self {
        let id = unique_id();
        let netns = Netns::new(format!("fa-{id}-node"));
        netns.sysctl("net.ipv4.ip_forward", "1");
        netns.sysctl("net.ipv6.conf.all.forwarding", "1");
        let mut node = Self {
            netns,
            prefix: format!("fa{id}"),
            pods: Vec::new(),
        };
        for _ in 0..pods {
            node.add_pod();
        }
        node
    }

    /// Adds a pod (index = number of pods so far).
    pub fn add_pod(&mut self) -> &Pod {
        let index = self.pods.len() as u8 + 1;
        let netns = Netns::new(format!("{}-p{index}", self.netns.name));
        let host_interface = format!("{}p{index}", self.prefix);
        run(
            "ip",
            &[
                "link",
                "add",
                &host_interface,
                "netns",
                &self.netns.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns.name,
            ],
        );
        // Different subnets per node id would not matter: nodes are separate namespaces.
        let gateway4 = format!("10.{index}.0.1");
        let ipv4 = Ipv4Addr::new(10, index, 0, 2);
        let gateway6 = format!("fd00:{index}::1");
        let ipv6: Ipv6Addr = format!("fd00:{index}::2").parse().unwrap();
        let node = &self.netns.name;
        ip_in(
            node,
            &[
                "addr",
                "add",
                &format!("{gateway4}/24"),
                "dev",
                &host_interface,
            ],
        );
        ip_in(
            node,
            &[
                "addr",
                "add",
                &format!("{gateway6}/64"),
                "dev",
                &host_interface,
                "nodad",
            ],
        );
        ip_in(node, &["link", "set", &host_interface, "up"]);
        ip_in(
            &netns.name,
            &["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"],
        );
        ip_in(
            &netns.name,
            &["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"],
        );
        ip_in(&netns.name, &["link", "set", "eth0", "up"]);
        ip_in(&netns.name, &["route", "add", "default", "via", &gateway4]);
        ip_in(
            &netns.name,
            &["-6", "route", "add", "default", "via", &gateway6],
        );
        // Keep IPv6 router solicitations out of the flows.
        netns.sysctl("net.ipv6.conf.eth0.router_solicitations", "0");
        netns.sysctl("net.ipv6.conf.all.router_solicitations", "0");
        // Until linkwatch marks both ends operationally up (up to a second after
        // `ip link set up`), the devices drop what they are asked to send.
        wait_until_up(node, &host_interface);
        wait_until_up(&netns.name, "eth0");
        self.pods.push(Pod {
            netns,
            host_interface,
            ipv4,
            ipv6,
        });
        self.pods.last().unwrap()
    }

    /// Gives a pod a permanent neighbour entry for its gateway, so it can send
    /// even when something drops its ARP requests on the host side.
    pub fn pin_gateway_neighbour(&self, pod: usize) {
        // /sys shows the caller's namespace: read the address from inside the node.
        let path = format!("/run/netns/{}", self.netns.name);
        let interface = self.pods[pod].host_interface.clone();
        let mac = std::thread::spawn(move || {
            enter(&path);
            std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
                .or_else(|_| {
                    let output = Command::new("ip")
                        .args(["-o", "link", "show", &interface])
                        .output()?;
                    let text = String::from_utf8_lossy(&output.stdout).into_owned();
                    Ok::<_, std::io::Error>(
                        text.split("link/ether ")
                            .nth(1)
                            .unwrap_or("")
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_owned(),
                    )
                })
                .unwrap()
        })
        .join()
        .unwrap();
        let gateway = format!("10.{}.0.1", pod + 1);
        ip_in(
            &self.pods[pod].netns.name,
            &[
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                mac.trim(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        );
    }

    /// Glob selecting this node's pod interfaces.
    pub fn glob(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// Interface index of a host-side veth.
    pub fn ifindex(&self, interface: &str) -> u32 {
        let path = format!("/run/netns/{}", self.netns.name);
        let interface = interface.to_owned();
        std::thread::spawn(move || {
            enter(&path);
            let name = std::ffi::CString::new(interface).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })
        .join()
        .unwrap()
    }
}

/// Waits until a device reports `state UP`.
pub fn wait_until_up(netns: &str, interface: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("ip")
            .args([
                "netns", "exec", netns, "ip", "-o", "link", "show", "dev", interface,
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&output.stdout).contains("state UP") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{interface} in {netns} never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kernel IP counters of the calling thread's namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpCounters {
    pub in_receives: u64,
    pub in_octets: u64,
    /// Segments TCP sent: new data and ACKs (OutSegs) plus retransmissions.
    pub tcp_segments_sent: u64,
}

fn table(path: &str, prefix: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().filter(|line| line.starts_with(prefix));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let index = names.iter().position(|name| *name == field).unwrap();
    values[index].parse().unwrap()
}

/// Reads the IPv4 and TCP counters of the calling thread's namespace.
pub fn ip_counters() -> IpCounters {
    IpCounters {
        in_receives: table("/proc/thread-self/net/snmp", "Ip:", "InReceives"),
        in_octets: table("/proc/thread-self/net/netstat", "IpExt:", "InOctets"),
        tcp_segments_sent: table("/proc/thread-self/net/snmp", "Tcp:", "OutSegs")
            + table("/proc/thread-self/net/snmp", "Tcp:", "RetransSegs"),
    }
}

/// Packets and bytes an interface of the calling thread's namespace handed to
/// its peer (from /proc/net/dev; bytes include the Ethernet header).
pub fn transmitted(interface: &str) -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{interface}:")))
        .unwrap_or_else(|| panic!("{interface} not in /proc/net/dev"));
    let fields: Vec<u64> = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|field| field.parse().unwrap())
        .collect();
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
    (fields[9], fields[8])
}

/// Turns TCP segmentation offload and generic segmentation off on a device of
/// the calling thread's namespace (ETHTOOL_STSO / ETHTOOL_SGSO), so the host
/// sees wire-sized packets rather than GSO super-packets.
pub fn disable_segmentation_offload(interface: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STSO: u32 = 0x1f;
    const ETHTOOL_SGSO: u32 = 0x24;
    // SAFETY: plain socket; closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(socket >= 0);
    for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO] {
        let mut value = EthtoolValue { cmd, data: 0 };
        let mut request = IfReq {
            name: [0; 16],
            data: &mut value,
            _pad: [0; 16],
        };
        request.name[..interface.len()].copy_from_slice(interface.as_bytes());
        // SAFETY: a valid ifreq pointing at a valid ethtool_value.
        let ret = unsafe { libc::ioctl(socket, SIOCETHTOOL, &mut request) };
        assert_eq!(
            ret,
            0,
            "ethtool {cmd:#x} on {interface}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: closing our own socket.
    unsafe { libc::close(socket) };
}

/// A `flow-agent run` process inside a node namespace, collecting its records.
pub struct Agent {
    child: Child,
    records: Arc<Mutex<Vec<FlowRecord>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What the agent printed, after it stopped.
#[derive(Debug)]
pub struct AgentOutput {
    pub records: Vec<FlowRecord>,
    pub stderr: Vec<String>,
    pub success: bool,
}

impl Agent {
    /// Starts `flow-agent run ARGS` in `netns` and waits until it has attached.
    pub fn start(netns: &Netns, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.name,
                env!("CARGO_BIN_EXE_flow-agent"),
                "run",
            ])
            .args(args)
            .args(["--output", "json", "--node-name", "test-node"])
            .env("FLOW_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flow-agent");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout_pipe = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let out = Arc::clone(&records);
        let err = Arc::clone(&stderr);
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(stdout_pipe).lines() {
                    let line = line.unwrap();
                    let record: FlowRecord = serde_json::from_str(&line)
                        .unwrap_or_else(|error| panic!("bad record {line}: {error}"));
                    out.lock().unwrap().push(record);
                }
            }),
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let line = line.unwrap();
                    eprintln!("agent: {line}");
                    err.lock().unwrap().push(line);
                }
            }),
        ];
        let agent = Self {
            child,
            records,
            stderr,
            readers,
        };
        agent.wait_for_log("flow-agent started", Duration::from_secs(20));
        agent
    }

    /// Waits until a stderr line contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(text))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent did not log {text:?} within {timeout:?}; stderr:\n{}",
            self.stderr.lock().unwrap().join("\n")
        );
    }

    /// Records received so far.
    pub fn records(&self) -> Vec<FlowRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Sends SIGTERM, waits for exit, returns everything it printed.
    pub fn stop(mut self) -> AgentOutput {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        AgentOutput {
            records: self.records.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
            success: status.success(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A panicking test must not leave an agent attached.
        let _ = self.child.kill();
        let _ = self.child.wait();
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
