//! A network lab on one Linux machine: network namespaces play a Kubernetes node
//! and its pods, veth pairs join them, and the node routes between its pods the
//! way a CNI in routing mode does (Azure CNI transparent mode, Calico).
//!
//! Used by flow-agent's kernel tests, the demo and the benchmarks. Every
//! namespace is removed when its guard drops, so an interrupted test or demo
//! leaves nothing behind. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2.
//!
//! Only addresses inside namespaces created here are ever used.
#![deny(missing_docs)]

pub mod cluster;

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use thiserror::Error;

/// Errors from building or using the lab.
#[derive(Debug, Error)]
pub enum LabError {
    /// A command could not be started.
    #[error("cannot run {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A system call or file operation failed.
    #[error("{operation} failed")]
    Io {
        /// What was attempted.
        operation: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A thread running inside a namespace panicked.
    #[error("a thread inside namespace {0} panicked")]
    ThreadPanicked(String),
    /// A kernel table did not have the expected shape.
    #[error("unexpected format in {0}")]
    Format(String),
}

/// Result type of the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Runs a command and fails with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .trim()
            .to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside a namespace (`ip netns exec NAME ...`).
pub fn run_in(netns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A short id unique to this process and call, for namespace and interface
/// names (interface names are limited to 15 bytes).
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:02x}", std::process::id() % 0xffff, n % 0xff)
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let file = File::open(path).map_err(|source| LabError::Io {
        operation: format!("open {path}"),
        source,
    })?;
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::Io {
            operation: format!("setns {path}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with loopback up and IPv6 duplicate address detection
    /// off: a link-local address under detection cannot source neighbour
    /// solicitations, so the first packet to a new neighbour would wait a second.
    pub fn new(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        Ok(netns)
    }

    /// `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_in(&self.name, "ip", args)
    }

    /// Sets a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run_in(&self.name, "sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }

    /// Path of the namespace file.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a new thread inside this namespace; sockets it opens live here.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path)?;
            Ok(f())
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)
            .join()
            .map_err(|_| LabError::ThreadPanicked(self.name.clone()))?
    }

    /// Waits until a device reports `state UP`: until linkwatch marks it
    /// operational (up to a second after `ip link set up`) it drops what it sends.
    pub fn wait_until_up(&self, interface: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .ip(&["-o", "link", "show", "dev", interface])?
                .contains("state UP")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!(
                    "{interface} in {} to come up",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod: its own namespace with `eth0`, the other end of the veth in the node.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace.
    pub netns: Netns,
    /// Host-side veth name, in the node namespace.
    pub host_interface: String,
    /// The pod's IPv4 address (10.N.0.2/24, gateway 10.N.0.1).
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address (fd00:N::2/64, gateway fd00:N::1).
    pub ipv6: Ipv6Addr,
}

/// A node namespace with routed pods: each pod has a /24 and a /64 with the host
/// side of its veth as gateway.
#[derive(Debug)]
pub struct Node {
    /// Pods, in the order they were added. Declared first so they drop first.
    pub pods: Vec<Pod>,
    /// The node's namespace.
    pub netns: Netns,
    /// Prefix of this node's pod interfaces: the glob `{prefix}*` selects them.
    pub prefix: String,
}

impl Node {
    /// A node with `pods` pods.
    pub fn new(pods: usize) -> Result<Self> {
        let id = unique_id();
        let netns = Netns::new(format!("fa-{id}-node"))?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let mut node = Self {
            pods: Vec::new(),
            netns,
            prefix: format!("fa{id}"),
        };
        for _ in 0..pods {
            node.add_pod()?;
        }
        Ok(node)
    }

    /// Adds a pod; the n-th pod (from 1) gets 10.n.0.2 and fd00:n::2.
    pub fn add_pod(&mut self) -> Result<&Pod> {
        let index = self.pods.len() + 1;
        let octet =
            u8::try_from(index).map_err(|_| LabError::Format("more than 255 pods".into()))?;
        let netns = Netns::new(format!("{}-p{index}", self.netns.name))?;
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
        )?;
        let gateway4 = format!("10.{index}.0.1");
        let gateway6 = format!("fd00:{index:x}::1");
        let ipv4 = Ipv4Addr::new(10, octet, 0, 2);
        let ipv6 = Ipv6Addr::new(0xfd00, u16::from(octet), 0, 0, 0, 0, 0, 2);
        let node = &self.netns;
        node.ip(&[
            "addr",
            "add",
            &format!("{gateway4}/24"),
            "dev",
            &host_interface,
        ])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{gateway6}/64"),
            "dev",
            &host_interface,
            "nodad",
        ])?;
        node.ip(&["link", "set", &host_interface, "up"])?;
        netns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
        netns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", "default", "via", &gateway4])?;
        netns.ip(&["-6", "route", "add", "default", "via", &gateway6])?;
        // Keep IPv6 router solicitations out of the flows.
        netns.sysctl("net.ipv6.conf.all.router_solicitations", "0")?;
        netns.sysctl("net.ipv6.conf.eth0.router_solicitations", "0")?;
        node.wait_until_up(&host_interface)?;
        netns.wait_until_up("eth0")?;
        self.pods.push(Pod {
            netns,
            host_interface,
            ipv4,
            ipv6,
        });
        self.pods
            .last()
            .ok_or_else(|| LabError::Format("pod list".into()))
    }

    /// Links the node to the calling thread's namespace (the host, where a
    /// relay or a `policy generate` runs) with a veth pair on 100.64.S.0/30:
    /// the node's end (`host0`, which no pod glob selects) gets 100.64.S.2 and
    /// the host's end 100.64.S.1. Returns the node's address. `subnet` must
    /// differ between the nodes of one test.
    pub fn link_to_host(&self, subnet: u8) -> Result<Ipv4Addr> {
        let host_end = format!("h{}", self.prefix);
        run(
            "ip",
            &[
                "link",
                "add",
                &host_end,
                "type",
                "veth",
                "peer",
                "name",
                "host0",
                "netns",
                &self.netns.name,
            ],
        )?;
        let (host, node) = (
            Ipv4Addr::new(100, 64, subnet, 1),
            Ipv4Addr::new(100, 64, subnet, 2),
        );
        run(
            "ip",
            &["addr", "add", &format!("{host}/30"), "dev", &host_end],
        )?;
        run("ip", &["link", "set", &host_end, "up"])?;
        self.netns
            .ip(&["addr", "add", &format!("{node}/30"), "dev", "host0"])?;
        self.netns.ip(&["link", "set", "host0", "up"])?;
        self.netns.wait_until_up("host0")?;
        Ok(node)
    }

    /// Glob selecting this node's pod interfaces.
    pub fn glob(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// Interface index of a device in the node namespace.
    pub fn ifindex(&self, interface: &str) -> Result<u32> {
        let name = std::ffi::CString::new(interface)
            .map_err(|_| LabError::Format(format!("interface name {interface:?}")))?;
        // SAFETY: a valid C string.
        let index = self
            .netns
            .run(move || unsafe { libc::if_nametoindex(name.as_ptr()) })?;
        if index == 0 {
            return Err(LabError::Format(format!("no interface {interface}")));
        }
        Ok(index)
    }

    /// Gives a pod a permanent neighbour entry for its IPv4 gateway, so it can
    /// send even when something drops its ARP requests on the host side.
    pub fn pin_gateway_neighbour(&self, pod: usize) -> Result<()> {
        let pod = self
            .pods
            .get(pod)
            .ok_or_else(|| LabError::Format(format!("no pod {pod}")))?;
        let link = self
            .netns
            .ip(&["-o", "link", "show", "dev", &pod.host_interface])?;
        let mac = link
            .split("link/ether ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| LabError::Format(format!("ip link show {}", pod.host_interface)))?;
        let octets = pod.ipv4.octets();
        let gateway = format!("10.{}.0.1", octets[1]);
        pod.netns
            .ip(&[
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .map(drop)
    }
}

/// Kernel IP counters of the calling thread's namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpCounters {
    /// IPv4 datagrams received (`Ip: InReceives`).
    pub in_receives: u64,
    /// IPv4 octets received (`IpExt: InOctets`).
    pub in_octets: u64,
    /// TCP segments sent: new data and ACKs (`OutSegs`) plus retransmissions.
    pub tcp_segments_sent: u64,
}

fn table(path: &str, prefix: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        operation: format!("read {path}"),
        source,
    })?;
    let mut lines = text.lines().filter(|line| line.starts_with(prefix));
    let format = || LabError::Format(format!("{path} {prefix} {field}"));
    let names: Vec<&str> = lines
        .next()
        .ok_or_else(format)?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = lines
        .next()
        .ok_or_else(format)?
        .split_whitespace()
        .collect();
    let index = names
        .iter()
        .position(|name| *name == field)
        .ok_or_else(format)?;
    values
        .get(index)
        .and_then(|value| value.parse().ok())
        .ok_or_else(format)
}

/// Reads the IPv4 and TCP counters of the calling thread's namespace.
pub fn ip_counters() -> Result<IpCounters> {
    const SNMP: &str = "/proc/thread-self/net/snmp";
    Ok(IpCounters {
        in_receives: table(SNMP, "Ip:", "InReceives")?,
        in_octets: table("/proc/thread-self/net/netstat", "IpExt:", "InOctets")?,
        tcp_segments_sent: table(SNMP, "Tcp:", "OutSegs")? + table(SNMP, "Tcp:", "RetransSegs")?,
    })
}

/// What an interface of the calling thread's namespace transmitted, from
/// /proc/net/dev.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transmitted {
    /// Packets handed on (for a veth: accepted by the peer).
    pub packets: u64,
    /// Their bytes, Ethernet header included.
    pub bytes: u64,
    /// Packets dropped on the way out (for a veth: the peer's backlog was full).
    pub dropped: u64,
}

/// Transmit counters of an interface of the calling thread's namespace.
pub fn transmitted(interface: &str) -> Result<Transmitted> {
    const DEV: &str = "/proc/thread-self/net/dev";
    let text = std::fs::read_to_string(DEV).map_err(|source| LabError::Io {
        operation: format!("read {DEV}"),
        source,
    })?;
    let prefix = format!("{interface}:");
    let fields: Vec<u64> = text
        .lines()
        .find(|line| line.trim_start().starts_with(&prefix))
        .and_then(|line| line.split(':').nth(1))
        .map(|values| {
            values
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // Receive: bytes packets errs drop fifo frame compressed multicast; then
    // transmit: bytes packets errs drop ...
    match (fields.get(8), fields.get(9), fields.get(11)) {
        (Some(&bytes), Some(&packets), Some(&dropped)) => Ok(Transmitted {
            packets,
            bytes,
            dropped,
        }),
        _ => Err(LabError::Format(format!("{DEV} {interface}"))),
    }
}

/// Turns TCP segmentation offload and generic segmentation off on a device of
/// the calling thread's namespace (ETHTOOL_STSO / ETHTOOL_SGSO), so the host
/// sees wire-sized packets rather than GSO super-packets.
pub fn disable_segmentation_offload(interface: &str) -> Result<()> {
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
    if interface.len() >= 16 {
        return Err(LabError::Format(format!("interface name {interface:?}")));
    }
    // SAFETY: a plain socket, closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if socket < 0 {
        return Err(LabError::Io {
            operation: "socket".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut result = Ok(());
    for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO] {
        let mut value = EthtoolValue { cmd, data: 0 };
        let mut request = IfReq {
            name: [0; 16],
            data: &mut value,
            _pad: [0; 16],
        };
        request.name[..interface.len()].copy_from_slice(interface.as_bytes());
        // SAFETY: a valid ifreq pointing at a valid ethtool_value.
        if unsafe { libc::ioctl(socket, SIOCETHTOOL, &mut request) } != 0 {
            result = Err(LabError::Io {
                operation: format!("ethtool {cmd:#x} on {interface}"),
                source: std::io::Error::last_os_error(),
            });
            break;
        }
    }
    // SAFETY: closing our own socket.
    unsafe { libc::close(socket) };
    result
}

/// A process inside a namespace (`ip netns exec`, which execs it: the pid is
/// the program's), collecting its stdout and stderr lines. Killed on drop.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    label: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Set when stderr closes: the process has exited.
    exited: Arc<std::sync::atomic::AtomicBool>,
    readers: Vec<JoinHandle<()>>,
}

/// What a process printed, after it stopped.
#[derive(Debug)]
pub struct ProcessOutput {
    /// Stdout lines.
    pub stdout: Vec<String>,
    /// Stderr lines.
    pub stderr: Vec<String>,
    /// Exited with status zero.
    pub success: bool,
    /// The exit status, `None` when a signal ended the process.
    pub code: Option<i32>,
}

/// What an agent printed, after it stopped: flow records as JSON on stdout,
/// logs on stderr.
pub type AgentOutput = ProcessOutput;

fn lock(lines: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    // A poisoned list is still a list of lines.
    lines
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LabProcess {
    /// Starts `PROGRAM ARGS` in `netns`. With `echo`, stderr lines are also
    /// printed, prefixed `echo:`.
    pub fn start(netns: &Netns, program: &Path, args: &[&str], echo: Option<&str>) -> Result<Self> {
        let command = format!("{} {}", program.display(), args.join(" "));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn { command, source })?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            let lines = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(std::io::Result::ok) {
                    lock(&lines).push(line);
                }
            }));
        }
        let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(pipe) = child.stderr.take() {
            let lines = Arc::clone(&stderr);
            let closed = Arc::clone(&exited);
            let echo = echo.map(str::to_owned);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(std::io::Result::ok) {
                    if let Some(prefix) = &echo {
                        eprintln!("{prefix}: {line}");
                    }
                    lock(&lines).push(line);
                }
                closed.store(true, Ordering::SeqCst);
            }));
        }
        let label = program.file_name().map_or_else(
            || "process".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        Ok(Self {
            child,
            label,
            stdout,
            stderr,
            exited,
            readers,
        })
    }

    /// The process's id (`ip netns exec` replaces itself with the program).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stderr line contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> Result<()> {
        self.wait_for_stderr(
            |lines| lines.iter().any(|line| line.contains(text)),
            timeout,
        )
        .map_err(|_| {
            LabError::Timeout(format!(
                "{} to log {text:?}; it logged:\n{}",
                self.label,
                lock(&self.stderr).join("\n")
            ))
        })
    }

    fn wait(
        &self,
        lines: &Mutex<Vec<String>>,
        done: impl Fn(&[String]) -> bool,
        timeout: Duration,
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&lock(lines)) {
                return Ok(());
            }
            let exited = self.exited.load(Ordering::SeqCst);
            if exited || Instant::now() > deadline {
                let ended = if exited { " (it exited)" } else { "" };
                return Err(LabError::Timeout(format!(
                    "{} {what}{ended}; its stderr:\n{}",
                    self.label,
                    lock(&self.stderr).join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the stderr lines so far satisfy `done`.
    pub fn wait_for_stderr(
        &self,
        done: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Result<()> {
        self.wait(&self.stderr, done, timeout, "to log what was expected")
    }

    /// Waits until the stdout lines so far satisfy `done`.
    pub fn wait_for_stdout(
        &self,
        done: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Result<()> {
        self.wait(&self.stdout, done, timeout, "to print what was expected")
    }

    /// Stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        lock(&self.stderr).clone()
    }

    /// Takes the stdout lines received since the last call.
    pub fn take_stdout(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.stdout))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and returns at once.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends `signal`, waits for the exit (up to `timeout`, then SIGKILL),
    /// returns everything printed.
    pub fn signal_and_wait(mut self, signal: i32, timeout: Duration) -> Result<ProcessOutput> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    return Err(LabError::Timeout(format!(
                        "{} to exit after signal {signal}; its stderr:\n{}",
                        self.label,
                        lock(&self.stderr).join("\n")
                    )));
                }
                Err(source) => {
                    return Err(LabError::Io {
                        operation: format!("wait for {}", self.label),
                        source,
                    });
                }
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(ProcessOutput {
            stdout: lock(&self.stdout).clone(),
            stderr: lock(&self.stderr).clone(),
            success: status.success(),
            code: status.code(),
        })
    }

    /// Waits for the process to exit by itself (up to `timeout`).
    pub fn wait_for_exit(self, timeout: Duration) -> Result<ProcessOutput> {
        self.signal_and_wait(0, timeout)
    }

    /// Sends SIGTERM, waits for the exit, returns everything printed.
    pub fn stop(self) -> Result<ProcessOutput> {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        // A failed test or interrupted demo must not leave a process behind
        // (an agent would stay attached).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `flow-agent run` process inside a namespace.
#[derive(Debug)]
pub struct AgentProcess(LabProcess);

impl std::ops::Deref for AgentProcess {
    type Target = LabProcess;

    fn deref(&self) -> &LabProcess {
        &self.0
    }
}

impl AgentProcess {
    /// Starts `BINARY run ARGS` in `netns` and waits for "flow-agent started".
    /// With `echo_stderr`, log lines are also printed (prefixed `agent:`).
    pub fn start(binary: &Path, netns: &Netns, args: &[&str], echo_stderr: bool) -> Result<Self> {
        Self::start_with_env(binary, netns, &[], args, echo_stderr)
    }

    /// As [`AgentProcess::start`], with `env` (`NAME=value` each) set for
    /// the agent, through env(1).
    pub fn start_with_env(
        binary: &Path,
        netns: &Netns,
        env: &[&str],
        args: &[&str],
        echo_stderr: bool,
    ) -> Result<Self> {
        let binary_text = binary.to_string_lossy();
        let mut all: Vec<&str> = env.to_vec();
        let program = if env.is_empty() {
            binary
        } else {
            all.push(&binary_text);
            Path::new("env")
        };
        all.push("run");
        all.extend_from_slice(args);
        let process = LabProcess::start(netns, program, &all, echo_stderr.then_some("agent"))?;
        process.wait_for_log("flow-agent started", Duration::from_secs(30))?;
        Ok(Self(process))
    }

    /// Sends SIGTERM, waits for the exit, returns everything printed.
    pub fn stop(self) -> Result<AgentOutput> {
        self.0.stop()
    }

    /// Sends `signal`, waits for the exit (up to `timeout`, then SIGKILL),
    /// returns everything printed.
    pub fn signal_and_wait(self, signal: i32, timeout: Duration) -> Result<AgentOutput> {
        self.0.signal_and_wait(signal, timeout)
    }
}
