//! Monitoring end to end: a real Prometheus (Debian's `prometheus`) scrapes a
//! real agent in monitor mode, evaluates the alert rules of
//! `deploy/monitoring/prometheus/`, and answers every query of the Grafana
//! dashboards of `deploy/monitoring/dashboards/`.
//!
//! The dashboard checks need `promtool`; the live tests need root, nft and
//! `prometheus`. A missing `prometheus` or `promtool` fails the tests
//! (`cargo xtask setup` installs Debian's `prometheus`, which has both).

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    cli::cli,
    dashboards::{self, Dashboard, PanelQuery, substitute, substitute_selected},
    netns::Agent,
    prometheus::{JOB, Prometheus, http_get},
    shop::{Cluster, cluster, tcp_client, tcp_server, traffic},
};
use flow_lab::Node;
use flow_proto::v1::{GetFlowsRequest, flow_service_client::FlowServiceClient};
use serde_json::{Value, json};

/// The agent's gRPC API, in the node's namespace.
const API: &str = "127.0.0.1:4245";

/// The agent's metrics endpoint, in the node's namespace.
const METRICS: &str = "127.0.0.1:9090";

/// The alert of policy violations.
const VIOLATIONS_ALERT: &str = "FlowAgentPolicyViolations";

/// The dashboards and the filter variables each declares (besides
/// `datasource`): namespace and tenant filter traffic and policy; the health
/// of agents is per agent, not per namespace.
const DASHBOARDS: [(&str, &[&str]); 3] = [
    ("flow-agent-health.json", &["instance"]),
    ("flow-agent-policy.json", &["tenant", "namespace"]),
    ("flow-agent-traffic.json", &["tenant", "namespace"]),
];

/// Panel queries allowed to return nothing in the live test, as (dashboard,
/// panel, why). None: the test makes every one of them return data (it
/// makes a client fall behind for the lost-records panel, and a violation
/// across tenants for the violation and cross-tenant edge panels).
const OPTIONAL: &[(&str, &str, &str)] = &[];

/// The rules file Prometheus loads, as committed.
fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring/prometheus/flow-agent.rules.yml")
        .canonicalize()
        .unwrap()
}

fn path(directory: &Path, name: &str) -> String {
    directory.join(name).to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// The dashboards as files.

fn dashboard_named(dashboards: &[Dashboard], file: &str) -> usize {
    dashboards
        .iter()
        .position(|dashboard| dashboard.file == file)
        .unwrap_or_else(|| panic!("no dashboard {file}"))
}

/// Every panel query of every dashboard, with its variables substituted.
fn substituted_queries(dashboards: &[Dashboard]) -> Vec<(PanelQuery, String)> {
    dashboards
        .iter()
        .flat_map(|dashboard| {
            let filters = dashboard.filters().unwrap();
            let names: Vec<&str> = filters.iter().map(|filter| filter.name.as_str()).collect();
            dashboard
                .queries()
                .unwrap()
                .into_iter()
                .map(|query| {
                    let expr = substitute(&query.expr, &names).unwrap_or_else(|error| {
                        panic!("{} / {}: {error}", query.dashboard, query.panel)
                    });
                    (query, expr)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dashboards_query_the_chosen_prometheus_through_declared_variables_in_valid_promql() {
    let dashboards = dashboards::load();
    assert_eq!(
        dashboards
            .iter()
            .map(|dashboard| dashboard.file.as_str())
            .collect::<Vec<_>>(),
        DASHBOARDS.map(|(file, _)| file)
    );
    let mut uids = BTreeSet::new();
    for (file, expected) in DASHBOARDS {
        let dashboard = &dashboards[dashboard_named(&dashboards, file)];
        let json = &dashboard.json;
        assert_eq!(json["schemaVersion"], 39, "{file}");
        let uid = json["uid"].as_str().unwrap();
        assert!(uid.starts_with("flow-agent-"), "{file}: uid {uid}");
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} taken");
        assert!(!json["title"].as_str().unwrap().is_empty());
        dashboard.check_datasource_variable().unwrap();
        let filters = dashboard.filters().unwrap();
        let names: Vec<&str> = filters.iter().map(|filter| filter.name.as_str()).collect();
        assert_eq!(names, expected, "{file}");
        let queries = dashboard.queries().unwrap();
        assert!(!queries.is_empty(), "{file}");
        for name in names {
            assert!(
                queries
                    .iter()
                    .any(|query| query.expr.contains(&format!("=~\"${name}\""))),
                "{file}: no query filters by ${name}"
            );
        }
        // Panels have distinct ids and fit Grafana's 24 columns.
        let panels = json["panels"].as_array().unwrap();
        let ids: BTreeSet<u64> = panels
            .iter()
            .map(|panel| panel["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), panels.len(), "{file}: panel ids repeat");
        for panel in panels {
            // Panel types Grafana ships (no plugin to install).
            assert!(
                ["timeseries", "stat", "table", "bargauge"]
                    .contains(&panel["type"].as_str().unwrap()),
                "{file}: {}",
                panel["type"]
            );
            let ref_ids: BTreeSet<&str> = panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|target| target["refId"].as_str().unwrap())
                .collect();
            assert_eq!(
                ref_ids.len(),
                panel["targets"].as_array().unwrap().len(),
                "{file}: {}: refIds repeat",
                panel["title"]
            );
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(w > 0 && x + w <= 24, "{file}: {}", panel["title"]);
            assert!(!panel["description"].as_str().unwrap().is_empty());
        }
    }
    // Every query, substituted, is PromQL that promtool accepts, as the
    // expression of a recording rule.
    let queries = substituted_queries(&dashboards);
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(index, (_, expr))| json!({"record": format!("dashboard_query_{index}"), "expr": expr}))
        .collect();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("dashboards.rules.json");
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboards", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let output = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): `cargo xtask setup` installs Debian's prometheus"
            )
        });
    let said = String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned();
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{said}"
    );
}

#[test]
fn substitution_sends_all_as_a_regex_and_refuses_any_other_use_of_a_variable() {
    let filters = ["namespace", "tenant"];
    let ok = |expr: &str| substitute(expr, &filters).unwrap();
    assert_eq!(
        ok(r#"sum(rate(x{namespace=~"$namespace", tenant=~"$tenant"}[$__rate_interval]))"#),
        r#"sum(rate(x{namespace=~".*", tenant=~".*"}[1m]))"#
    );
    assert_eq!(
        ok(r#"label_replace(x, "b", "$1", "a", "(.+)")"#),
        r#"label_replace(x, "b", "$1", "a", "(.+)")"#
    );
    assert_eq!(ok("up"), "up");
    assert_eq!(
        substitute_selected(
            r#"x{namespace=~"$namespace", tenant=~"$tenant"}"#,
            &filters,
            &[("tenant", "globex")]
        )
        .unwrap(),
        r#"x{namespace=~".*", tenant=~"globex"}"#
    );
    assert_eq!(
        substitute_selected(r#"x{tenant=~"$tenant"}"#, &filters, &[("tenant", "a.b")]).unwrap_err(),
        r#"$tenant: "a.b" is not a plain value"#
    );
    let refused = |expr: &str| substitute(expr, &filters).unwrap_err();
    assert_eq!(
        refused(r#"x{namespace="$namespace"}"#),
        r#"$namespace is used other than as a whole regex matcher label=~"$namespace" in x{namespace="$namespace"}"#
    );
    assert!(refused(r#"x{namespace=~"$namespace|kube-system"}"#).contains("whole regex matcher"));
    assert!(refused(r#"x{namespace=~"kube-.*$namespace"}"#).contains("whole regex matcher"));
    assert_eq!(
        refused(r#"x{node=~"$node"}"#),
        r#"unknown variable $node in x{node=~"$node"}"#
    );
    assert!(refused(r#"x{namespace=~"${namespace}"}"#).contains("not followed by a variable name"));
    assert!(refused("x offset $").contains("not followed by a variable name"));
    assert_eq!(
        dashboards::label_values("label_values(flowagent_build_info, instance)"),
        Some(("flowagent_build_info".to_owned(), "instance".to_owned()))
    );
    assert_eq!(dashboards::label_values("label_values(instance)"), None);
    assert_eq!(dashboards::label_values("query_result(up)"), None);
    assert_eq!(
        dashboards::label_values("label_values(up{job=\"a\"}, instance)"),
        None
    );
}

// ---------------------------------------------------------------------------
// The live lab.

/// Learns the shop's traffic into `dir/state` and approves the generated
/// policies into `dir/approved`, as an operator would.
fn approve(cluster: &Cluster, dir: &Path) {
    let node = &cluster.node;
    let agent = Agent::on(
        node,
        "200ms",
        &[
            "--inventory",
            cluster.inventory.to_str().unwrap(),
            "--grpc-listen",
            API,
            "--state-dir",
            &path(dir, "state"),
        ],
    );
    agent.wait_for_log("gRPC API listening", Duration::from_secs(5));
    traffic(node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::cli::learned_edges(node, API, &[]) < 3 {
        assert!(
            Instant::now() < deadline,
            "the shop's edges were not learned"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = cli(
        node,
        &[
            "policy",
            "generate",
            "--server",
            API,
            "--inventory",
            cluster.inventory.to_str().unwrap(),
            "--allow-cross-tenant",
            "--output-dir",
            &path(dir, "approved"),
        ],
    );
    assert!(output.success, "{:?}", output.stderr);
    assert!(agent.stop().success);
}

/// The agent in monitor mode with the approved policies, learning on into
/// the same graph, serving metrics with workload pairs.
fn monitor(cluster: &Cluster, dir: &Path, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--inventory",
        cluster.inventory.to_str().unwrap(),
        "--grpc-listen",
        API,
        "--metrics-listen",
        METRICS,
        "--metrics-workload-pairs",
        "64",
    ];
    let approved = path(dir, "approved");
    let state = path(dir, "state");
    args.extend_from_slice(&["--policies", &approved, "--state-dir", &state]);
    args.extend_from_slice(extra);
    let agent = Agent::on(&cluster.node, "200ms", &args);
    agent.wait_for_log("monitor mode", Duration::from_secs(5));
    agent.wait_for_log(
        "metrics and health endpoints listening",
        Duration::from_secs(5),
    );
    agent
}

/// The agent's `/metrics` text.
fn agent_metrics(node: &Node) -> String {
    let (status, text) = http_get(&node.netns, METRICS.parse().unwrap(), "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of `series` in a metrics text, if there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rule group holding the violations alert, and the alert's rule as
/// loaded; every rule of the group must have evaluated without error (a
/// failing rule would fire nothing, and prove nothing).
fn violations_rule(prometheus: &Prometheus<'_>, rules: &Path) -> (String, Value) {
    let groups = prometheus.rule_groups();
    let group = groups
        .iter()
        .find(|group| {
            group["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|rule| rule["name"] == VIOLATIONS_ALERT)
        })
        .unwrap_or_else(|| panic!("no rule {VIOLATIONS_ALERT} loaded: {groups:?}"));
    assert_eq!(group["file"], rules.to_str().unwrap());
    for rule in group["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let rule = group["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["name"] == VIOLATIONS_ALERT)
        .unwrap()
        .clone();
    (group["name"].as_str().unwrap().to_owned(), rule)
}

/// The alerts named `name` in state `state` (any state when `None`).
fn alerts(prometheus: &Prometheus<'_>, name: Option<&str>, state: Option<&str>) -> Vec<Value> {
    prometheus
        .alerts()
        .into_iter()
        .filter(|alert| name.is_none_or(|name| alert["labels"]["alertname"] == name))
        .filter(|alert| state.is_none_or(|state| alert["state"] == state))
        .collect()
}

/// Once the agent's `/metrics` shows the violation `selector` selects,
/// checks that the violations alert fires within two intervals, both counted
/// from Prometheus's own counts rather than timed:
///
/// - one scrape: the violation is stored by the time the second scrape
///   after now is (the first may have read `/metrics` before the violation);
/// - one evaluation: the alert fires at the first evaluation that starts
///   once the violation is stored (with a `for`, that many evaluations
///   later). `prometheus_rule_group_iterations_total` counts an evaluation as
///   it starts: once two more have started, the first of them has ended.
///
/// Returns the firing alerts.
fn fires_within_two_intervals(
    prometheus: &Prometheus<'_>,
    rules: &Path,
    selector: &str,
) -> Vec<Value> {
    let scraped = prometheus.scrapes();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrapes = prometheus.scrapes();
        if !prometheus.query(selector).is_empty() {
            break;
        }
        assert!(
            scrapes < scraped + 2,
            "the violation was not stored by the second scrape ({scraped} scrapes then, {scrapes} now)"
        );
        assert!(Instant::now() < deadline, "Prometheus stopped scraping");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (group, rule) = violations_rule(prometheus, rules);
    // The test's evaluation interval is one second.
    let pending_evaluations = rule["duration"].as_f64().unwrap().ceil() as u64;
    let started = prometheus.iterations(rules, &group).unwrap();
    loop {
        let iterations = prometheus.iterations(rules, &group).unwrap();
        let firing = alerts(prometheus, Some(VIOLATIONS_ALERT), Some("firing"));
        if !firing.is_empty() {
            return firing;
        }
        assert!(
            iterations < started + 2 + pending_evaluations,
            "{VIOLATIONS_ALERT} did not fire at the evaluation after the violation was stored ({started} evaluations then, {iterations} now): {:?}",
            prometheus.alerts()
        );
        assert!(Instant::now() < deadline, "Prometheus stopped evaluating");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Subscribes to every flow with a small HTTP/2 window and reads nothing
/// until told, so that the agent counts records it could not deliver; then
/// drops the stream.
fn client_that_falls_behind(subscribed: mpsc::Sender<()>, done: mpsc::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:4245")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let request = GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        };
        let stream = FlowServiceClient::new(channel)
            .get_flows(request)
            .await
            .unwrap()
            .into_inner();
        subscribed.send(()).unwrap();
        // Told, or the test ended.
        let _ = tokio::task::spawn_blocking(move || done.recv()).await;
        drop(stream);
    });
}

/// A thousand datagrams from fresh sockets (a thousand flows) from api to
/// db's UDP 9999, which the approved policies allow; returns once the agent
/// printed them.
fn allowed_udp_flows(agent: &Agent, node: &Node) {
    let db = SocketAddr::new(IpAddr::V4(node.pods[2].ipv4), 9999);
    let to_db = |agent: &Agent| -> u64 {
        agent
            .records()
            .iter()
            .filter(|record| record.destination.ip == db.ip() && record.destination.port == 9999)
            .map(|record| record.packets)
            .sum()
    };
    let before = to_db(agent);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (bound_tx, bound_rx) = mpsc::channel();
    let sink = node.pods[2].netns.spawn(move || {
        let socket = UdpSocket::bind(db).unwrap();
        bound_tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(socket);
    });
    bound_rx.recv().unwrap();
    node.pods[3]
        .netns
        .run(move || {
            for _ in 0..1_000 {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.send_to(&[7u8; 32], db).unwrap();
            }
        })
        .unwrap();
    wait_until("the datagrams' records", || to_db(agent) >= before + 1_000);
    stop_tx.send(()).unwrap();
    sink.join().unwrap().unwrap();
}

/// The label sets of a query's result, restricted to `labels`.
fn label_sets(result: &[Value], labels: &[&str]) -> BTreeSet<Vec<String>> {
    result
        .iter()
        .map(|series| {
            labels
                .iter()
                .map(|label| series["metric"][label].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .collect()
}

fn panel_expr<'a>(queries: &'a [(PanelQuery, String)], panel: &str) -> &'a str {
    &queries
        .iter()
        .find(|(query, _)| query.panel == panel)
        .unwrap_or_else(|| panic!("no panel {panel:?}"))
        .1
}

/// Every panel query returns data (or is [`OPTIONAL`]), with the labels its
/// legend names; every filter variable lists values.
fn every_query_returns_data(prometheus: &Prometheus<'_>, queries: &[(PanelQuery, String)]) {
    for (query, expr) in queries {
        let optional = OPTIONAL
            .iter()
            .find(|(dashboard, panel, _)| *dashboard == query.dashboard && *panel == query.panel);
        if let Some((_, _, why)) = optional {
            let result = prometheus.query(expr);
            eprintln!(
                "{} / {}: {} series (optional: {why})",
                query.dashboard,
                query.panel,
                result.len()
            );
            continue;
        }
        // A rate needs two scrapes of a series born a moment ago.
        let mut result = Vec::new();
        prometheus.wait_until(
            &format!(
                "{} / {} {} to return data: {expr}",
                query.dashboard, query.panel, query.ref_id
            ),
            Duration::from_secs(30),
            |p| {
                result = p.query(expr);
                !result.is_empty()
            },
        );
        for label in &query.legend_labels {
            assert!(
                result
                    .iter()
                    .any(|series| series["metric"].get(label).is_some()),
                "{} / {}: no series has the legend's label {label}: {result:?}",
                query.dashboard,
                query.panel
            );
        }
    }
}

/// The filter variables list exactly the lab's values.
fn variables_list_the_lab(prometheus: &Prometheus<'_>, dashboards: &[Dashboard]) {
    let expected: [(&str, &str, &[&str]); 5] = [
        ("flow-agent-health.json", "instance", &[METRICS]),
        ("flow-agent-policy.json", "tenant", &["acme"]),
        ("flow-agent-policy.json", "namespace", &["shop-a"]),
        ("flow-agent-traffic.json", "tenant", &["acme", "globex"]),
        (
            "flow-agent-traffic.json",
            "namespace",
            &["shop-a", "shop-b"],
        ),
    ];
    for (file, name, values) in expected {
        let dashboard = &dashboards[dashboard_named(dashboards, file)];
        let filters = dashboard.filters().unwrap();
        let filter = filters.iter().find(|filter| filter.name == name).unwrap();
        assert_eq!(
            prometheus.label_values(&filter.metric, &filter.label),
            values,
            "{file}: ${name}"
        );
    }
}

#[test]
fn a_violation_fires_its_alert_by_namespace_and_tenant_and_every_dashboard_query_returns_data() {
    require_root!();
    common::prometheus::version();
    let dashboards = dashboards::load();
    let queries = substituted_queries(&dashboards);
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let directory = tempfile::tempdir().unwrap();
    approve(&cluster, directory.path());
    let agent = monitor(
        &cluster,
        directory.path(),
        &["--grpc-subscriber-queue", "100"],
    );
    let rules = rules_file();
    let prometheus = Prometheus::start(&node.netns, METRICS.parse().unwrap(), &rules);
    prometheus.wait_for_target();
    let (subscribed_tx, subscribed_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let behind = node
        .netns
        .spawn(move || client_that_falls_behind(subscribed_tx, done_rx));
    subscribed_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The approved traffic, then api (shop-b, tenant globex) → cart (shop-a,
    // tenant acme), which cart's approved ingress denies.
    traffic(node);
    let server = tcp_server(node, 1, 8080, 10, 10);
    tcp_client(
        node,
        3,
        SocketAddr::new(IpAddr::V4(node.pods[1].ipv4), 8080),
        10,
        10,
    );
    server.join().unwrap().unwrap();
    let series = r#"flowagent_policy_violations_total{namespace="shop-a",tenant="acme"}"#;
    wait_until("the violation in the agent's /metrics", || {
        value(&agent_metrics(node), series).is_some_and(|count| count > 0.0)
    });
    let firing = fires_within_two_intervals(
        &prometheus,
        &rules,
        r#"flowagent_policy_violations_total{namespace="shop-a", tenant="acme"}"#,
    );
    let (_, rule) = violations_rule(&prometheus, &rules);
    let severity = rule["labels"]["severity"].as_str().unwrap();
    assert!(!severity.is_empty());
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(
        firing[0]["labels"],
        json!({
            "alertname": VIOLATIONS_ALERT,
            "namespace": "shop-a",
            "tenant": "acme",
            "severity": severity,
        })
    );

    // A client that fell behind: records lost.
    allowed_udp_flows(&agent, node);
    wait_until("records lost to the client", || {
        value(
            &agent_metrics(node),
            r#"flowagent_api_lost_records_total{client="local"}"#,
        )
        .is_some_and(|lost| lost > 0.0)
    });

    every_query_returns_data(&prometheus, &queries);
    variables_list_the_lab(&prometheus, &dashboards);
    // What some panels show, exactly.
    let tenants = ["source_tenant", "destination_tenant"];
    let pairs = |panel: &str| label_sets(&prometheus.query(panel_expr(&queries, panel)), &tenants);
    let pair = |source: &str, destination: &str| vec![source.to_owned(), destination.to_owned()];
    assert_eq!(
        pairs("Cross-tenant bytes per second"),
        BTreeSet::from([pair("acme", "globex"), pair("globex", "acme")])
    );
    assert_eq!(
        pairs("Bytes per second between tenants"),
        BTreeSet::from([
            pair("acme", "acme"),
            pair("acme", "globex"),
            pair("globex", "acme"),
            pair("globex", "globex"),
        ])
    );
    // One tenant selected: the pairs with an end in it.
    let raw = |panel: &str| {
        &queries
            .iter()
            .find(|(query, _)| query.panel == panel)
            .unwrap()
            .0
            .expr
    };
    let selected = |panel: &str, variable: &str, value: &str| {
        let expr = substitute_selected(raw(panel), &["tenant", "namespace"], &[(variable, value)])
            .unwrap();
        prometheus.query(&expr)
    };
    assert_eq!(
        label_sets(
            &selected("Bytes per second between tenants", "tenant", "globex"),
            &tenants
        ),
        BTreeSet::from([
            pair("acme", "globex"),
            pair("globex", "acme"),
            pair("globex", "globex"),
        ])
    );
    assert_eq!(
        selected("Violations since each agent started", "namespace", "shop-b"),
        Vec::<Value>::new(),
        "the violation is shop-a's"
    );
    let edges = prometheus.query(panel_expr(
        &queries,
        "Cross-tenant edges learned since each agent started",
    ));
    assert_eq!(
        label_sets(&edges, &tenants),
        BTreeSet::from([pair("globex", "acme")])
    );
    assert_eq!(edges[0]["value"][1], "1");
    // The violations panel counts the violating records the agent printed.
    let printed = agent
        .records()
        .iter()
        .filter(|record| record.violation)
        .count();
    let counted = prometheus.query(panel_expr(&queries, "Violations since each agent started"));
    assert_eq!(
        label_sets(&counted, &["namespace", "tenant"]),
        BTreeSet::from([vec!["shop-a".to_owned(), "acme".to_owned()]])
    );
    assert_eq!(counted[0]["value"][1], printed.to_string());
    assert_eq!(
        prometheus.query(&format!("up{{job=\"{JOB}\"}}")).len(),
        1,
        "one agent scraped"
    );

    done_tx.send(()).unwrap();
    behind.join().unwrap().unwrap();
    assert!(agent.stop().success);
}

#[test]
fn approved_traffic_alone_fires_no_alert() {
    require_root!();
    common::prometheus::version();
    let Some(cluster) = cluster() else { return };
    let node = &cluster.node;
    let directory = tempfile::tempdir().unwrap();
    approve(&cluster, directory.path());
    let agent = monitor(&cluster, directory.path(), &[]);
    let rules = rules_file();
    let prometheus = Prometheus::start(&node.netns, METRICS.parse().unwrap(), &rules);
    prometheus.wait_for_target();
    traffic(node);
    // Every record of the traffic is out, counted, and scraped.
    let mut records = 0;
    wait_until("the records counted in /metrics", || {
        let before = agent.records().len();
        let counted = value(&agent_metrics(node), "flowagent_flow_records_total");
        records = agent.records().len();
        before == records && records > 0 && counted == Some(records as f64)
    });
    prometheus.wait_until("the records scraped", Duration::from_secs(30), |p| {
        p.query(&format!("flowagent_flow_records_total >= {records}"))
            .len()
            == 1
    });
    // One whole evaluation of the rules over that data.
    let (group, _) = violations_rule(&prometheus, &rules);
    let started = prometheus.iterations(&rules, &group).unwrap();
    prometheus.wait_until("two more evaluations", Duration::from_secs(30), |p| {
        p.iterations(&rules, &group).unwrap() >= started + 2
    });
    violations_rule(&prometheus, &rules);
    assert_eq!(
        alerts(&prometheus, None, Some("firing")),
        Vec::<Value>::new()
    );
    assert_eq!(
        alerts(&prometheus, Some(VIOLATIONS_ALERT), None),
        Vec::<Value>::new()
    );
    assert_eq!(
        prometheus.query("flowagent_policy_violations_total > 0"),
        Vec::<Value>::new()
    );
    let output = agent.stop();
    assert!(output.success);
    assert!(output.records.len() >= records);
    assert!(output.records.iter().all(|record| !record.violation));
}
