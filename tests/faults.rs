//! Faults and edge cases of running the agent binary: JSON logs, the printed
//! configuration, SIGINT and a second signal during shutdown.
//!
//! Needs root; skipped with a message otherwise.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    cli::binary,
    netns::{Agent, flow, totals},
};
use flow_lab::Node;
use serde_json::{Map, Value};

/// Sends `count` datagrams of `size` bytes from pod 0 to pod 1 (which has a
/// socket bound, so no ICMP error answers them); returns the sender's port.
fn udp_to_pod_one(node: &Node, port: u16, count: usize, size: usize) -> u16 {
    let server = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), port);
    let receiver = node.pods[1]
        .netns
        .run(move || UdpSocket::bind(server).unwrap())
        .unwrap();
    let sender_port = node.pods[0]
        .netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..count {
                socket.send_to(&vec![7u8; size], server).unwrap();
            }
            socket.local_addr().unwrap().port()
        })
        .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; 2048];
    for _ in 0..count {
        receiver.recv(&mut buffer).unwrap();
    }
    sender_port
}

/// Every line parsed as a JSON object; panics naming a line that is not one.
fn json_objects(lines: &[String]) -> Vec<Map<String, Value>> {
    lines
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("log line is not a JSON object ({other:?}): {line}"),
        })
        .collect()
}

/// The one object whose message is `message`.
fn with_message<'a>(objects: &'a [Map<String, Value>], message: &str) -> &'a Map<String, Value> {
    let found: Vec<_> = objects
        .iter()
        .filter(|object| object["message"] == message)
        .collect();
    assert_eq!(found.len(), 1, "{message:?} in {objects:?}");
    found[0]
}

#[test]
fn json_logs_are_one_object_per_line_with_level_message_and_fields() {
    require_root!();
    let node = Node::new(2).unwrap();
    let agent = Agent::on(&node, "1h", &["--log-format", "json"]);
    let port = udp_to_pod_one(&node, 9000, 5, 100);
    let output = agent.stop();
    assert!(output.success, "{:?}", output.stderr);

    let objects = json_objects(&output.stderr);
    assert!(objects.len() >= 4, "{:?}", output.stderr);
    for object in &objects {
        assert!(
            ["INFO", "WARN"].contains(&object["level"].as_str().unwrap()),
            "{object:?}"
        );
        assert!(!object["message"].as_str().unwrap().is_empty());
        assert!(object["target"].as_str().unwrap().starts_with("flow_agent"));
        // RFC 3339 in UTC, e.g. 2026-12-03T11:25:36.123456Z.
        let timestamp = object["timestamp"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339_weak(timestamp.trim_end_matches('Z')).is_ok(),
            "{timestamp}"
        );
    }
    // Fields are keys of the line, with their types.
    let started = with_message(&objects, "flow-agent started");
    assert_eq!(started["interfaces"], 2);
    assert_eq!(started["node"], "test-node");
    assert_eq!(started["identity"], "none");
    assert_eq!(started["flush_interval"], "1h");
    assert!(started["map_size"].as_u64().unwrap() > 0);
    with_message(&objects, "SIGTERM received, shutting down");
    let stopped = with_message(
        &objects,
        "flow-agent stopped; every counted packet was reported",
    );
    let flows = totals(&output.records);
    let (sent, _) = flow(
        &flows,
        node.pods[0].ipv4,
        port,
        node.pods[1].ipv4,
        9000,
        "UDP",
    );
    assert_eq!((sent.packets, sent.bytes), (5, 5 * 128));
    let packets: u64 = output.records.iter().map(|record| record.packets).sum();
    assert_eq!(stopped["packets"], packets);
    assert_eq!(stopped["records"], output.records.len());
    assert_eq!(stopped["lost"], 0);
}

/// Runs the binary in `netns` (or outside any, with `None`) with only `env`
/// set; returns (exit code, stdout, stderr lines).
fn run(netns: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> (i32, String, Vec<String>) {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(binary());
            command
        }
        None => Command::new(binary()),
    };
    let output = command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn a_bad_log_format_exits_2_and_a_fatal_error_is_a_json_line_too() {
    require_root!();
    let (code, _, stderr) = run(None, &[], &["run", "-i", "x", "--log-format", "yaml"]);
    assert_eq!((code, stderr.len()), (2, 1), "{stderr:?}");
    assert!(
        stderr[0].contains("'yaml'") && stderr[0].contains("--log-format"),
        "{stderr:?}"
    );
    let (code, _, stderr) = run(None, &[("FLOW_AGENT_LOG_FORMAT", "JSON ")], &["run"]);
    assert_eq!((code, stderr.len()), (2, 1), "{stderr:?}");
    assert!(stderr[0].contains("--log-format"), "{stderr:?}");

    // An error after logging started: every line, the last one included,
    // is an object.
    let node = Node::new(1).unwrap();
    let (code, _, stderr) = run(
        Some(&node.netns.name),
        &[],
        &["--log-format", "json", "run", "-i", "nosuch*"],
    );
    assert_eq!(code, 1, "{stderr:?}");
    let objects = json_objects(&stderr);
    let last = objects.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["target"], "flow_agent");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.starts_with("flow-agent: error: ")
            && message.contains("no interface matches \"nosuch*\""),
        "{message}"
    );
}

#[test]
fn config_print_layers_flags_over_environment_over_file_and_reads_back_the_same() {
    require_root!();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("agent.yaml");
    std::fs::write(
        &file,
        "interfaces: [veth*]\nflush-interval: 10s\nmap-size: 1024\nflow-idle-timeout: 30s\nnode-name: from-file\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let environment = [
        ("FLOW_AGENT_FLUSH_INTERVAL", "3s"),
        ("FLOW_AGENT_MAP_SIZE", "4096"),
        ("NODE_NAME", "from-env"),
    ];
    let (code, printed, stderr) = run(
        None,
        &environment,
        &["config", "print", "--config", file, "--map-size", "2048"],
    );
    assert_eq!(code, 0, "{stderr:?}");
    assert!(stderr.is_empty(), "{stderr:?}");
    let value: Value = yaml_serde::from_str(&printed).unwrap();
    let expected = [
        // The file alone.
        ("interfaces", serde_json::json!(["veth*"])),
        ("flow-idle-timeout", serde_json::json!("30s")),
        // The environment over the file.
        ("flush-interval", serde_json::json!("3s")),
        ("node-name", serde_json::json!("from-env")),
        // A flag over both.
        ("map-size", serde_json::json!(2048)),
        // Defaults.
        ("exclude-interfaces", serde_json::json!([])),
        ("wait-for-interfaces", serde_json::json!(false)),
        ("attach-mode", serde_json::json!("auto")),
        ("output", serde_json::json!("json")),
        ("dns", serde_json::json!(true)),
        ("kubernetes", serde_json::json!(false)),
    ];
    for (key, value_expected) in &expected {
        assert_eq!(&value[key], value_expected, "{key} in\n{printed}");
    }

    // The printed file alone, without the flags and environment, gives the
    // same configuration: printed again, the same text.
    let again = directory.path().join("printed.yaml");
    std::fs::write(&again, &printed).unwrap();
    let (code, reprinted, stderr) = run(
        None,
        &[],
        &["config", "print", "--config", again.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr:?}");
    assert_eq!(reprinted, printed);

    // A bad value in the environment is named.
    let (code, _, stderr) = run(
        None,
        &[("FLOW_AGENT_MAP_SIZE", "many")],
        &["config", "print", "--config", file],
    );
    assert_eq!((code, stderr.len()), (2, 1), "{stderr:?}");
    assert!(
        stderr[0].contains("'many'") && stderr[0].contains("--map-size"),
        "{stderr:?}"
    );
}

#[test]
fn sigint_shuts_down_like_sigterm_and_reports_every_packet() {
    require_root!();
    let node = Node::new(2).unwrap();
    // No flush while the agent runs: every record comes from the final drain.
    let agent = Agent::on(&node, "1h", &[]);
    let port = udp_to_pod_one(&node, 9000, 7, 300);
    assert!(agent.records().is_empty());
    let output = agent.stop_with(libc::SIGINT);
    assert!(output.success, "{:?}", output.stderr);
    let flows = totals(&output.records);
    let (sent, _) = flow(
        &flows,
        node.pods[0].ipv4,
        port,
        node.pods[1].ipv4,
        9000,
        "UDP",
    );
    assert_eq!((sent.packets, sent.bytes), (7, 7 * 328));
    let has = |text: &str| output.stderr.iter().any(|line| line.contains(text));
    assert!(has("SIGINT received, shutting down"), "{:?}", output.stderr);
    let summary = output
        .stderr
        .iter()
        .find(|line| line.contains("flow-agent stopped; every counted packet was reported"))
        .unwrap_or_else(|| panic!("no summary in {:?}", output.stderr));
    let packets: u64 = output.records.iter().map(|record| record.packets).sum();
    assert!(
        summary.contains(&format!(" packets={packets} ")) && summary.contains(" lost=0 "),
        "{summary}"
    );
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_signal_during_shutdown_exits_at_once_with_status_130() {
    require_root!();
    let node = Node::new(2).unwrap();
    // Stdout is a pipe nobody reads: once it is full the final drain blocks
    // on its write, and the shutdown cannot finish by itself.
    let mut child = Child(
        Command::new("ip")
            .args(["netns", "exec", &node.netns.name])
            .arg(binary())
            .args(["run", "-i", &node.glob(), "--flush-interval", "1h"])
            .args(["--output", "json", "--node-name", "test-node"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = Arc::new(Mutex::new(Vec::<String>::new()));
    let pipe = child.0.stderr.take().unwrap();
    let lines = Arc::clone(&stderr);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let wait_for = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stderr
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
        {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in {:?}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("flow-agent started");
    // 3000 flows (a fresh socket each): far more records than the pipe holds.
    let target = SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 9000);
    node.pods[0]
        .netns
        .run(move || {
            for _ in 0..3_000 {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.send_to(&[7u8; 32], target).unwrap();
            }
        })
        .unwrap();
    let pid = child.0.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    wait_for("SIGINT received, shutting down");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the shutdown should be stuck on the full pipe: {:?}",
        stderr.lock().unwrap()
    );
    let sent = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // Stuck on the pipe, the first shutdown would never end: exiting at
    // all, with 130, is the second signal's doing. The deadline only keeps
    // a broken agent from hanging the suite.
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "still running after the second signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130));
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap();
    assert!(
        stderr
            .last()
            .unwrap()
            .contains("second signal: exiting without finishing the shutdown"),
        "{stderr:?}"
    );
    assert!(
        !stderr
            .iter()
            .any(|line| line.contains("flow-agent stopped")),
        "{stderr:?}"
    );
}

/// Runs `ip -batch` with `commands` (one a line) in `netns`.
fn ip_batch(netns: &flow_lab::Netns, commands: &[String]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), commands.join("\n") + "\n").unwrap();
    flow_lab::run_in(
        &netns.name,
        "ip",
        &["-batch", file.path().to_str().unwrap()],
    )
    .unwrap();
}

/// Interface name to index in `netns`.
fn link_indexes(netns: &flow_lab::Netns) -> std::collections::HashMap<String, u64> {
    let links: Value = serde_json::from_str(&netns.ip(&["-j", "link", "show"]).unwrap()).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|link| {
            (
                link["ifname"].as_str().unwrap().to_owned(),
                link["ifindex"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The interfaces (by index) an agent logging JSON says it holds attached.
fn attached_indexes(stderr: &[String]) -> std::collections::BTreeSet<u64> {
    let mut attached = std::collections::BTreeSet::new();
    for line in stderr {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let index = object.get("index").and_then(Value::as_u64);
        match (object["message"].as_str(), index) {
            (Some("attached"), Some(index)) => {
                attached.insert(index);
            }
            (Some("detached (interface removed)"), Some(index)) => {
                attached.remove(&index);
            }
            _ => {}
        }
    }
    attached
}

#[test]
fn a_link_notification_overrun_resyncs_to_exactly_the_selected_links() {
    require_root!();
    let netns = flow_lab::Netns::new(format!("ovr-{}", flow_lab::unique_id())).unwrap();
    let pair = |name: &str, peer: &str| format!("link add {name} type veth peer name {peer}");
    let mut before = vec![pair("ovr-base", "ovq-base")];
    for i in 0..5 {
        before.push(pair(&format!("ovrk{i}"), &format!("ovqk{i}")));
        before.push(pair(&format!("ovrd{i}"), &format!("ovqd{i}")));
    }
    ip_batch(&netns, &before);
    let agent = Agent::start(
        &netns,
        &[
            "-i",
            "ovr*",
            "--flush-interval",
            "1h",
            "--log-format",
            "json",
        ],
    );
    assert_eq!(attached_indexes(&agent.stderr()).len(), 11);

    // While the agent is stopped, the kernel queues its notifications until
    // the socket's buffer is full, then drops them.
    agent.signal(libc::SIGSTOP);
    let mut during = Vec::new();
    for i in 0..5 {
        // New, renamed out of the selection once the buffer is full.
        during.push(pair(&format!("ovrn{i}"), &format!("ovqn{i}")));
        // New, deleted once the buffer is full.
        during.push(pair(&format!("ovrx{i}"), &format!("ovqx{i}")));
    }
    // Not selected: only their notifications matter.
    for i in 0..2_000 {
        during.push(pair(&format!("ovf{i}"), &format!("ovg{i}")));
    }
    for i in 0..5 {
        during.push(format!("link set ovrn{i} name outn{i}"));
        during.push(format!("link del ovrx{i}"));
        // Attached before, deleted.
        during.push(format!("link del ovrd{i}"));
        // Attached before, renamed within the selection.
        during.push(format!("link set ovrk{i} name ovrr{i}"));
        // New and kept.
        during.push(pair(&format!("ovrs{i}"), &format!("ovqs{i}")));
    }
    ip_batch(&netns, &during);
    agent.signal(libc::SIGCONT);
    agent.wait_for_log(
        "link notifications overran; re-listing interfaces",
        Duration::from_secs(30),
    );

    let indexes = link_indexes(&netns);
    let expected: std::collections::BTreeSet<u64> = std::iter::once("ovr-base".to_owned())
        .chain((0..5).map(|i| format!("ovrr{i}")))
        .chain((0..5).map(|i| format!("ovrs{i}")))
        .map(|name| indexes[&name])
        .collect();
    // Let the agent read everything that is queued, then compare.
    let deadline = Instant::now() + Duration::from_secs(20);
    while attached_indexes(&agent.stderr()) != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = agent.stop();
    assert!(output.success);
    let attached = attached_indexes(&output.stderr);
    let name_of = |index: &u64| {
        indexes
            .iter()
            .find(|(_, i)| *i == index)
            .map_or("(gone)", |(name, _)| name.as_str())
    };
    assert_eq!(
        attached,
        expected,
        "attached {:?}, expected {:?}",
        attached.iter().map(name_of).collect::<Vec<_>>(),
        expected.iter().map(name_of).collect::<Vec<_>>()
    );
}

#[test]
fn a_connection_to_an_ipv6_cluster_ip_names_the_backend_pod_and_the_service() {
    use flow_lab::cluster::{Controller, Inventory};
    use std::io::{Read as _, Write as _};
    require_root!();
    if flow_lab::run("nft", &["--version"]).is_err() {
        skip!("nft (nftables) is not installed");
    }
    let node = Node::new(2).unwrap();
    let cluster_ip: std::net::Ipv6Addr = "fd00:96::20".parse().unwrap();
    let backend = node.pods[1].ipv6;
    // kube-proxy's part, for IPv6.
    let rules = format!(
        "add table ip6 lab-proxy6\n\
         add chain ip6 lab-proxy6 prerouting {{ type nat hook prerouting priority dstnat; }}\n\
         add rule ip6 lab-proxy6 prerouting ip6 daddr {cluster_ip} tcp dport 80 dnat to [{backend}]:8080\n"
    );
    let directory = tempfile::tempdir().unwrap();
    let rules_path = directory.path().join("proxy.nft");
    std::fs::write(&rules_path, rules).unwrap();
    flow_lab::run_in(
        &node.netns.name,
        "nft",
        &["-f", rules_path.to_str().unwrap()],
    )
    .unwrap();
    let mut inventory = Inventory::new();
    inventory
        .namespace("shop", Some("acme"))
        .workload("shop", "frontend", Controller::Deployment { hash: "6f7d" }, &[("app", "frontend")], &[&node.pods[0]], "test-node")
        .workload("shop", "cart", Controller::Deployment { hash: "5c8b" }, &[("app", "cart")], &[&node.pods[1]], "test-node")
        .raw(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: cart, namespace: shop}}\n  spec:\n    type: ClusterIP\n    ipFamilies: [IPv6]\n    clusterIP: '{cluster_ip}'\n    clusterIPs: ['{cluster_ip}']\n    ports: [{{name: web, port: 80, protocol: TCP, targetPort: 8080}}]\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: cart-v6, namespace: shop, labels: {{kubernetes.io/service-name: cart}}}}\n  addressType: IPv6\n  ports: [{{name: web, port: 8080, protocol: TCP}}]\n  endpoints:\n  - addresses: ['{backend}']\n    conditions: {{ready: true}}\n    targetRef: {{kind: Pod, name: cart-5c8b-p000, namespace: shop}}\n"
        ));
    let inventory_path = directory.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory.yaml()).unwrap();
    let agent = Agent::on(
        &node,
        "200ms",
        &["--inventory", inventory_path.to_str().unwrap()],
    );
    agent.wait_for_log("inventory loaded", Duration::from_secs(5));

    let listen = SocketAddr::new(IpAddr::V6(backend), 8080);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = node.pods[1].netns.spawn(move || {
        let listener = std::net::TcpListener::bind(listen).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 300];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(&[1u8; 2_000]).unwrap();
    });
    ready_rx.recv().unwrap();
    let service = SocketAddr::new(IpAddr::V6(cluster_ip), 80);
    let client_port = node.pods[0]
        .netns
        .run(move || {
            let mut stream =
                std::net::TcpStream::connect_timeout(&service, Duration::from_secs(3)).unwrap();
            stream.write_all(&[2u8; 300]).unwrap();
            let mut answer = [0u8; 2_000];
            stream.read_exact(&mut answer).unwrap();
            stream.local_addr().unwrap().port()
        })
        .unwrap();
    server.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let output = agent.stop();
    assert!(output.success);

    let requests: Vec<_> = output
        .records
        .iter()
        .filter(|record| record.source.port == client_port && !record.is_reply)
        .collect();
    assert!(!requests.is_empty(), "{:#?}", output.records);
    for record in &requests {
        assert_eq!(record.source.ip, IpAddr::V6(node.pods[0].ipv6));
        assert_eq!(
            record.source.identity.pod.as_deref(),
            Some("frontend-6f7d-p000")
        );
        assert_eq!(
            (record.destination.ip, record.destination.port),
            (IpAddr::V6(backend), 8080),
            "{record:?}"
        );
        assert_eq!(
            record.destination.identity.pod.as_deref(),
            Some("cart-5c8b-p000")
        );
        assert_eq!(
            record
                .destination
                .identity
                .workload
                .as_ref()
                .map(|workload| (workload.kind.as_str(), workload.name.as_str())),
            Some(("Deployment", "cart"))
        );
        let named = record.destination.service.as_ref().unwrap();
        assert_eq!(
            (
                named.namespace.as_str(),
                named.name.as_str(),
                named.ip,
                named.port,
                named.target_port
            ),
            ("shop", "cart", IpAddr::V6(cluster_ip), 80, Some(8080))
        );
    }
    // The request carried 300 bytes of payload; TCP/IPv6 headers aside.
    let sent: u64 = requests.iter().map(|record| record.bytes).sum();
    assert!(sent >= 300, "{sent}");
    let replies: Vec<_> = output
        .records
        .iter()
        .filter(|record| record.destination.port == client_port)
        .collect();
    assert!(!replies.is_empty());
    for record in &replies {
        assert!(record.is_reply, "{record:?}");
        assert_eq!(
            (record.source.ip, record.source.port),
            (IpAddr::V6(backend), 8080)
        );
        assert_eq!(
            record.source.identity.pod.as_deref(),
            Some("cart-5c8b-p000")
        );
    }
}
