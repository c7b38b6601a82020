//! The service maps of REVIEW.md, AUDIT.md and the `policy diff` summary,
//! rendered by Mermaid's own tooling: mermaid-cli (`mmdc`) with Debian's
//! chromium, as `cargo xtask setup` installs them. Each report is made from
//! one small cluster, each of its Mermaid blocks rendered to SVG, and each
//! SVG must hold exactly one node per workload and outside peer drawn.
//!
//! Without mmdc or chromium the test fails: it never skips. mmdc is
//! `FLOW_AGENT_TEST_MMDC`, else `target/mermaid-cli/node_modules/.bin/mmdc`
//! under the workspace. `FLOW_AGENT_TEST_MERMAID_PNG=DIR` also writes each
//! report's first diagram as PNG there, to look at.
#![expect(clippy::expect_used, reason = "a test panics to report failure")]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use flow_model::{
    identity::PeerKind,
    record::{Protocol, Timestamp},
};
use flow_policy::{
    audit::{self, report::Inputs},
    cluster::ClusterView,
    diff::{self, report},
    export::export,
    generate::{GenerateOptions, PolicyFormat, propose},
    graph::{Change, Edge, EdgeKey, EdgeStats, Graph, Party, WorkloadInfo, WorkloadRef},
    load::load_all,
};

const CHROMIUM: &str = "/usr/bin/chromium";

fn mmdc() -> PathBuf {
    std::env::var_os("FLOW_AGENT_TEST_MMDC").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/mermaid-cli/node_modules/.bin/mmdc")
        },
        PathBuf::from,
    )
}

fn workload(namespace: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: namespace.to_owned(),
        kind: "Deployment".to_owned(),
        name: name.to_owned(),
    }
}

const WORLD: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

/// shop (tenant a): web → api → db, api → api.example.com; api → data's
/// store (tenant b: cross-tenant); every workload's DNS to kube-system.
fn cluster() -> (Graph, ClusterView) {
    let time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let mut graph = Graph::new();
    let workloads = [
        (workload("shop", "web"), "a"),
        (workload("shop", "api"), "a"),
        (workload("shop", "db"), "a"),
        (workload("data", "store"), "b"),
        (workload("kube-system", "coredns"), "platform"),
    ];
    for (workload, tenant) in workloads {
        let labels = BTreeMap::from([("app".to_owned(), workload.name.clone())]);
        graph.apply(Change::Workload {
            workload,
            info: WorkloadInfo {
                tenant: Some(tenant.to_owned()),
                labels,
                last_seen: time,
            },
        });
    }
    let stats = |bytes, names: &[&str]| EdgeStats {
        first_seen: time,
        last_seen: time,
        connections: 20,
        packets: 100,
        bytes,
        cross_tenant: false,
        services: BTreeSet::new(),
        days: flow_policy::graph::DaysSeen::on(time),
        names: names.iter().map(|name| (*name).to_owned()).collect(),
    };
    let shop = |name| Party::Workload(workload("shop", name));
    let edges = [
        (shop("web"), shop("api"), 6, 8080, stats(9_000, &[])),
        (shop("api"), shop("db"), 6, 5432, stats(7_000, &[])),
        (
            shop("api"),
            Party::Workload(workload("data", "store")),
            6,
            6379,
            stats(5_000, &[]),
        ),
        (
            shop("api"),
            Party::Address {
                ip: WORLD,
                kind: PeerKind::World,
            },
            6,
            443,
            stats(3_000, &["api.example.com"]),
        ),
    ];
    let dns = Party::Workload(workload("kube-system", "coredns"));
    let dns_edges =
        ["web", "api", "db"].map(|name| (shop(name), dns.clone(), 17, 53, stats(100, &[])));
    for (client, server, protocol, port, stats) in edges.into_iter().chain(dns_edges) {
        graph.apply(Change::Edge(Edge {
            key: EdgeKey {
                client,
                server,
                protocol: Protocol(protocol),
                port,
            },
            stats,
        }));
    }
    // The workloads as flows alone give them: one pod each, with the
    // tenant the graph knows.
    let mut cluster = ClusterView::new();
    cluster.add_graph(&graph);
    (graph, cluster)
}

/// Exports the proposal (cross-tenant edges allowed or not) into
/// `directory`, returning REVIEW.md.
fn export_review(directory: &Path, graph: &Graph, cluster: &ClusterView, cross: bool) -> String {
    let options = GenerateOptions {
        allow_cross_tenant: cross,
        ..GenerateOptions::default()
    };
    let proposal = propose(graph, cluster, &options);
    export(directory, &proposal, PolicyFormat::Networkpolicy).expect("the export is written");
    std::fs::read_to_string(directory.join("REVIEW.md")).expect("REVIEW.md is there")
}

/// The three reports, by name.
fn reports(directory: &Path) -> Vec<(&'static str, String)> {
    let (graph, cluster) = cluster();
    let (open, closed) = (directory.join("open"), directory.join("closed"));
    let review = export_review(&open, &graph, &cluster, true);
    export_review(&closed, &graph, &cluster, false);
    let platform = ["kube-system".to_owned()];
    // The closed policies deny the cross-tenant edge; the open ones allow
    // it, which the diff of the two tells as a cross-tenant path opened.
    let closed_policies = load_all(&closed).expect("the policies load").policies;
    let mut audited = cluster.clone();
    let audit = audit::audit(&closed_policies, &graph, &mut audited, &platform);
    assert_eq!(audit.denied.len(), 1, "{audit:#?}");
    let audit_md = audit::report::markdown(
        &audit,
        &Inputs {
            judged_against: "the fixture",
            errors: &[],
            skipped: &[],
            proposal: None,
        },
    );
    let plain = |path: &Path| -> Vec<_> {
        load_all(path)
            .expect("the policies load")
            .policies
            .into_iter()
            .map(|loaded| loaded.policy)
            .collect()
    };
    let mut diffed = cluster.clone();
    let change = diff::diff(
        &plain(&closed),
        &plain(&open),
        &graph,
        &mut diffed,
        &platform,
    );
    assert_eq!(
        change
            .opened
            .iter()
            .map(|path| path.kind)
            .collect::<Vec<_>>(),
        [diff::PathKind::CrossTenant],
        "{change:#?}"
    );
    let diff_md = report::markdown(&change, &[], "the fixture");
    vec![("review", review), ("audit", audit_md), ("diff", diff_md)]
}

/// The Mermaid blocks of a Markdown page.
fn blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("```mermaid\n") {
        let body = &rest[start + "```mermaid\n".len()..];
        let end = body.find("```").expect("each block is closed");
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

/// The labels of a block's nodes, as written (escaped).
fn node_labels(block: &str) -> Vec<String> {
    block
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = line.strip_prefix('n')?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let shape = rest[digits..].chars().next()?;
            if digits == 0 || !"[({>".contains(shape) {
                return None;
            }
            let start = line.find('"')? + 1;
            let end = line.rfind('"')?;
            Some(line[start..end].to_owned())
        })
        .collect()
}

/// Renders `block` with mmdc into `output` (`.svg` or `.png`).
fn render(block: &str, directory: &Path, output: &Path) {
    let input = output.with_extension("mmd");
    std::fs::write(&input, block).expect("the block is written");
    let config = directory.join("puppeteer.json");
    std::fs::write(
        &config,
        format!(r#"{{"executablePath": "{CHROMIUM}", "args": ["--no-sandbox"]}}"#),
    )
    .expect("the puppeteer config is written");
    let run = Command::new(mmdc())
        .arg("--puppeteerConfigFile")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(output)
        .args(["--quiet", "--backgroundColor", "white", "--scale", "2"])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}): run `cargo xtask setup`",
                mmdc().display()
            )
        });
    assert!(
        run.status.success(),
        "mmdc failed on {}: {}\n{}",
        input.display(),
        String::from_utf8_lossy(&run.stderr),
        block
    );
}

/// `<g class="node ..." id="...-n3-...">` elements of an SVG: Mermaid's
/// node groups, by the node id each carries.
fn svg_node_ids(svg: &str) -> Vec<usize> {
    let mut ids = Vec::new();
    for (start, _) in svg.match_indices("<g class=\"node ") {
        let element = &svg[start..start + svg[start..].find('>').expect("a closed tag")];
        let id = element
            .split("id=\"")
            .nth(1)
            .and_then(|id| id.split("flowchart-n").nth(1))
            .and_then(|id| id.split('-').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("a node group without a node id: {element}"));
        ids.push(id);
    }
    ids.sort_unstable();
    ids
}

#[test]
fn every_report_map_renders_one_node_per_workload() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `cargo xtask setup`"
    );
    assert!(
        mmdc().exists(),
        "{} is missing: run `cargo xtask setup`",
        mmdc().display()
    );
    let directory = tempfile::tempdir().expect("a temporary directory");
    let png = std::env::var_os("FLOW_AGENT_TEST_MERMAID_PNG").map(PathBuf::from);
    let mut expected: BTreeMap<&str, Vec<Vec<&str>>> = BTreeMap::new();
    // Per report, each block's node labels in order of first use: the
    // workloads of the namespace, then the outside peers.
    expected.insert(
        "review",
        vec![
            vec!["shop/Deployment/api", "Deployment/store"],
            // shop: the cross-tenant edge first, then by bytes.
            vec![
                "Deployment/api",
                "data/Deployment/store",
                "Deployment/web",
                "Deployment/db",
                "api.example.com #40;203.0.113.5#41;",
                "kube-system/Deployment/coredns",
            ],
        ],
    );
    // The audit of the policies without the cross-tenant edge: that edge
    // denied, and TCP 53 (allowed with UDP 53) never used.
    expected.insert(
        "audit",
        vec![
            vec!["shop/Deployment/api", "Deployment/store"],
            vec![
                "shop/Deployment/api",
                "Deployment/coredns",
                "shop/Deployment/db",
                "shop/Deployment/web",
            ],
            vec![
                "Deployment/api",
                "data/Deployment/store",
                "kube-system/Deployment/coredns",
                "Deployment/db",
                "Deployment/web",
            ],
        ],
    );
    expected.insert(
        "diff",
        vec![
            vec!["shop/Deployment/api", "Deployment/store"],
            vec!["Deployment/api", "data/Deployment/store"],
        ],
    );
    for (name, markdown) in reports(directory.path()) {
        let blocks = blocks(&markdown);
        let labels: Vec<Vec<String>> = blocks.iter().map(|block| node_labels(block)).collect();
        assert_eq!(labels, expected[name], "{name}:\n{markdown}");
        for (index, block) in blocks.iter().enumerate() {
            let output = directory.path().join(format!("{name}-{index}.svg"));
            render(block, directory.path(), &output);
            let svg = std::fs::read_to_string(&output).expect("mmdc wrote the SVG");
            let count = labels[index].len();
            assert_eq!(
                svg_node_ids(&svg),
                (0..count).collect::<Vec<_>>(),
                "{name} block {index}:\n{block}"
            );
            if let (Some(png), 0) = (&png, index) {
                std::fs::create_dir_all(png).expect("the PNG directory");
                render(block, directory.path(), &png.join(format!("{name}.png")));
            }
        }
    }
}
