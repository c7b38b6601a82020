//! Learning and checking across a cluster with no list of servers: three lab
//! nodes, each running its own agent with its own inventory (pod addresses
//! repeat from node to node, as pod CIDRs are per node), linked to the
//! test's namespace; a fake API server lists the agents' EndpointSlice.
//! `policy generate --kubernetes` must write exactly what `policy generate
//! --flows` writes from the agents' own flow records; an agent that is gone
//! makes a partial result (exit status 3) that names it, or an error with
//! `--require-all-nodes`; `policy check --kubernetes` judges every edge.
//!
//! The cluster test needs root; the API refusal test does not.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    kube_api::KubeApi,
    shop::{tcp_client, tcp_server, udp_exchange},
};
use flow_lab::{
    AgentProcess, Node,
    cluster::{Controller, Inventory},
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The agents' EndpointSlices, as the API serves them for namespace
/// flow-agent.
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/flow-agent/endpointslices";
const TOKEN: &str = "policy-reader";
const GRPC: &str = "127.0.0.1:4245";

/// What a `flow-agent` command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `flow-agent ARGS` in the test's namespace with `kubeconfig`.
fn flow_agent(args: &[&str], kubeconfig: &Path) -> Run {
    let output = Command::new(common::cli::binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A kubeconfig pointing at the fake API server.
fn kubeconfig(directory: &Path, api: &KubeApi) -> PathBuf {
    let path = directory.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"{}\"}}\nusers:\n- name: tester\n  user: {{}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: tester}}\ncurrent-context: lab\n",
            api.url
        ),
    )
    .unwrap();
    path
}

/// Every file of a directory (the manifest too), by name.
fn tree(directory: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(entry.path()).unwrap(),
            )
        })
        .collect()
}

/// An endpoint of the agents' headless Service: a hostNetwork agent, so a
/// node's address.
fn endpoint(address: Ipv4Addr, node: &str) -> Value {
    json!({
        "addresses": [address.to_string()],
        "conditions": {"ready": true, "serving": true, "terminating": false},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": "flow-agent", "name": format!("flow-agent-{node}")},
    })
}

fn slice(endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "flow-agent-7xk2p", "namespace": "flow-agent",
            "labels": {"kubernetes.io/service-name": "flow-agent"}},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"},
                  {"name": "grpc", "port": 4245, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// One lab node: its pods, its agent and what the agent wrote.
struct ClusterNode {
    name: String,
    node: Node,
    address: Ipv4Addr,
    flows: PathBuf,
    agent: Option<AgentProcess>,
}

impl ClusterNode {
    /// A node of two pods running `workloads` (namespace, name, controller,
    /// app label: one per pod), linked to the host on `subnet`, with an
    /// agent that knows only this node's pods.
    fn start(
        name: &str,
        subnet: u8,
        workloads: [(&str, &str, Controller); 2],
        directory: &Path,
        access: &Path,
    ) -> Self {
        let node = Node::new(2).unwrap();
        let address = node.link_to_host(subnet).unwrap();
        let mut inventory = Inventory::new();
        inventory
            .namespace("shop-a", Some("acme"))
            .namespace("shop-b", Some("acme"));
        for ((namespace, workload, controller), pod) in workloads.iter().zip(&node.pods) {
            inventory.workload(
                namespace,
                workload,
                *controller,
                &[("app", workload)],
                &[pod],
                name,
            );
        }
        let file = |suffix: &str| directory.join(format!("{name}-{suffix}"));
        let (inventory_file, state) = (file("inventory.yaml"), file("state"));
        std::fs::write(&inventory_file, inventory.yaml()).unwrap();
        let flows = file("flows.jsonl");
        let glob = node.glob();
        let args = [
            "-i",
            glob.as_str(),
            "--flush-interval",
            "200ms",
            "--node-name",
            name,
            "--inventory",
            inventory_file.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--output-file",
            flows.to_str().unwrap(),
            "--output",
            "none",
            "--grpc-listen",
            "0.0.0.0:4245",
            "--grpc-allow-plaintext",
            "--grpc-access",
            access.to_str().unwrap(),
        ];
        let agent = AgentProcess::start(common::cli::binary(), &node.netns, &args, true).unwrap();
        agent
            .wait_for_log("gRPC API listening", Duration::from_secs(5))
            .unwrap();
        Self {
            name: name.to_owned(),
            node,
            address,
            flows,
            agent: Some(agent),
        }
    }

    /// Edges the agent has learned, per its status.
    fn learned_edges(&self) -> usize {
        common::cli::learned_edges(&self.node, GRPC, &["--token", TOKEN])
    }

    /// Waits for `at_least` edges, then for the count to hold still.
    fn wait_for_edges(&self, at_least: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (0, Instant::now());
        loop {
            let edges = self.learned_edges();
            if edges != last.0 {
                last = (edges, Instant::now());
            } else if edges >= at_least && last.1.elapsed() > Duration::from_millis(600) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {edges} edges learned",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent (SIGTERM: its flow file is complete).
    fn stop(&mut self) {
        if let Some(agent) = self.agent.take() {
            assert!(agent.stop().unwrap().success, "{} failed", self.name);
        }
    }

    fn grpc(&self) -> String {
        format!("{}:4245", self.address)
    }
}

/// The same REVIEW.md without the section naming missing agents.
fn without_missing_agents(review: &str) -> String {
    let start = review
        .find("\n## Agents that did not answer")
        .unwrap_or_else(|| panic!("no missing agents in {review}"));
    let end = start + 1 + review[start + 1..].find("\n## ").unwrap();
    format!("{}{}", &review[..start], &review[end..])
}

#[test]
fn generate_and_check_find_every_agent_through_the_api_and_name_the_missing() {
    require_root!();
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let access = dir.join("access.yaml");
    std::fs::write(
        &access,
        format!(
            "tokens:\n- {{sha256: {:x}, admin: true}}\n",
            Sha256::digest(TOKEN.as_bytes())
        ),
    )
    .unwrap();

    // Subnets on the host side: apart from other test processes' nodes.
    let subnet = 100 + (std::process::id() % 40) as u8 * 3;
    let frontend = Controller::Deployment { hash: "6f7d" };
    let cart = Controller::Deployment { hash: "5c8b" };
    let api = Controller::Deployment { hash: "77aa" };
    let mut nodes = [
        ClusterNode::start(
            "node-1",
            subnet,
            [("shop-a", "frontend", frontend), ("shop-a", "cart", cart)],
            dir,
            &access,
        ),
        ClusterNode::start(
            "node-2",
            subnet + 1,
            [("shop-a", "frontend", frontend), ("shop-b", "api", api)],
            dir,
            &access,
        ),
        ClusterNode::start(
            "node-3",
            subnet + 2,
            [
                ("shop-a", "cart", cart),
                ("shop-b", "db", Controller::StatefulSet),
            ],
            dir,
            &access,
        ),
    ];
    // Traffic inside each node: frontend -> cart, frontend -> api, and
    // cart -> db over TCP and UDP.
    let exchange = |node: &Node, port: u16| {
        let server = tcp_server(node, 1, port, 200, 1_000);
        tcp_client(
            node,
            0,
            std::net::SocketAddr::from((node.pods[1].ipv4, port)),
            200,
            1_000,
        );
        server.join().unwrap().unwrap();
    };
    exchange(&nodes[0].node, 8080);
    exchange(&nodes[1].node, 9000);
    exchange(&nodes[2].node, 5432);
    udp_exchange(&nodes[2].node, 0, 1, 8125);
    for (node, edges) in nodes.iter().zip([1, 1, 2]) {
        node.wait_for_edges(edges);
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kube = runtime.block_on(KubeApi::start());
    kube.add(SLICES, "discovery.k8s.io/v1", "EndpointSliceList");
    kube.set(
        SLICES,
        vec![slice(
            nodes
                .iter()
                .map(|node| endpoint(node.address, &node.name))
                .collect(),
        )],
    );
    let kubeconfig = kubeconfig(dir, &kube);
    let generate = |output: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "generate",
            "--kubernetes",
            "--token",
            TOKEN,
            "--output-dir",
            output,
        ];
        args.extend_from_slice(extra);
        flow_agent(&args, &kubeconfig)
    };

    // (a) Every agent answers.
    let complete = generate(&path("complete"), &[]);
    assert_eq!(complete.code, 0, "{complete:?}");
    assert!(
        complete.stdout.ends_with("\ngraphs from 3 of 3 agents\n"),
        "{complete:?}"
    );
    assert_eq!(complete.stderr, "");
    let queries = kube.queries(SLICES);
    assert_eq!(queries.len(), 1);
    let parameters: Vec<&str> = queries[0]
        .split('&')
        .filter(|parameter| !parameter.is_empty())
        .collect();
    assert_eq!(
        parameters,
        [
            "labelSelector=kubernetes.io%2Fservice-name%3Dflow-agent",
            "limit=500"
        ]
    );

    // (d) The generated policies allow every edge the agents learned.
    let check = flow_agent(
        &[
            "policy",
            "check",
            "--kubernetes",
            "--token",
            TOKEN,
            "--policies",
            &path("complete"),
            "-o",
            "json",
        ],
        &kubeconfig,
    );
    assert_eq!(check.code, 0, "{check:?}");
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    let edges = &report["edges"];
    assert_eq!(
        (
            &edges["checked"],
            &edges["allowed"],
            &edges["unresolved"],
            &edges["denied"]
        ),
        (&json!(4), &json!(4), &json!(0), &json!([])),
        "{report:#}"
    );
    assert_eq!(
        edges["edges"].as_u64().unwrap(),
        4 + edges["unexpressible"].as_u64().unwrap(),
        "{report:#}"
    );
    assert!(report.get("missing_agents").is_none(), "{report:#}");

    // (b) node-3's agent is gone: the others' graphs, and it is named.
    nodes[2].stop();
    let gone = format!("agent {} (node node-3): cannot connect to", nodes[2].grpc());
    let partial = generate(&path("partial"), &[]);
    assert_eq!(partial.code, 3, "{partial:?}");
    assert!(
        partial
            .stderr
            .starts_with(&format!("flow-agent: warning: {gone}")),
        "{partial:?}"
    );
    assert_eq!(partial.stderr.lines().count(), 1, "{partial:?}");
    assert!(
        partial.stdout.ends_with(
            "\ngraphs from 2 of 3 agents; 1 did not answer (listed in REVIEW.md): the policies lack their nodes' traffic\n"
        ),
        "{partial:?}"
    );
    let review = std::fs::read_to_string(dir.join("partial/REVIEW.md")).unwrap();
    assert!(
        review.contains(&format!(
            "\n## Agents that did not answer (their nodes' traffic is missing: review before merging)\n\n- `{gone}"
        )),
        "{review}"
    );
    let check = flow_agent(
        &[
            "policy",
            "check",
            "--kubernetes",
            "--token",
            TOKEN,
            "--policies",
            &path("complete"),
        ],
        &kubeconfig,
    );
    assert_eq!(check.code, 3, "{check:?}");
    assert!(
        check
            .stdout
            .ends_with("1 agents did not answer: their nodes' edges were not checked\n"),
        "{check:?}"
    );

    // (c) Unless every node is required.
    let required = generate(&path("required"), &["--require-all-nodes"]);
    assert_eq!(required.code, 2, "{required:?}");
    let lines: Vec<&str> = required.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{required:?}");
    assert!(lines[0].starts_with(&format!("flow-agent: warning: {gone}")));
    assert_eq!(
        lines[1],
        "flow-agent: error: 1 of 3 agents did not answer (--require-all-nodes)"
    );
    assert!(!dir.join("required").exists());

    // The same policies from the agents' own flow records, byte for byte:
    // all three, and the two that answered.
    for node in &mut nodes {
        node.stop();
    }
    let flows = |nodes: &[ClusterNode], output: &str| {
        let mut args = vec!["policy", "generate", "--output-dir", output];
        for node in nodes {
            args.extend_from_slice(&["--flows", node.flows.to_str().unwrap()]);
        }
        let run = flow_agent(&args, &kubeconfig);
        assert_eq!(run.code, 0, "{run:?}");
    };
    flows(&nodes, &path("from-flows"));
    flows(&nodes[..2], &path("from-two"));
    let complete = tree(&dir.join("complete"));
    assert_eq!(complete.len(), 9, "{:?}", complete.keys());
    assert_eq!(complete, tree(&dir.join("from-flows")));
    let mut partial = tree(&dir.join("partial"));
    let review = without_missing_agents(&partial["REVIEW.md"]);
    partial.insert("REVIEW.md".to_owned(), review);
    assert_eq!(partial, tree(&dir.join("from-two")));
    assert_ne!(partial, complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_refusal_is_an_error_with_a_hint_and_no_agents_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let kube = KubeApi::start().await;
    kube.add(SLICES, "discovery.k8s.io/v1", "EndpointSliceList");
    let kubeconfig = kubeconfig(directory.path(), &kube);
    let output = directory.path().join("policies");
    let generate = || {
        flow_agent(
            &[
                "policy",
                "generate",
                "--kubernetes",
                "--output-dir",
                output.to_str().unwrap(),
            ],
            &kubeconfig,
        )
    };
    let none = generate();
    assert_eq!(none.code, 2, "{none:?}");
    assert_eq!(
        none.stderr,
        "flow-agent: error: no agents found in the EndpointSlices of Service flow-agent/flow-agent (kubernetes.io/service-name=flow-agent): is the DaemonSet running, and do --agents-service or --agents-selector name it?\n"
    );
    kube.fail(SLICES, Some(403));
    let refused = generate();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.starts_with(
            "flow-agent: error: cannot list the EndpointSlices of Service flow-agent/flow-agent (kubernetes.io/service-name=flow-agent): the caller may not list endpointslices (discovery.k8s.io) in namespace flow-agent; grant it list, as deploy/base's ClusterRole does for the agents' service account: "
        ),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("the test refuses"), "{refused:?}");
    assert!(!output.exists());
}
