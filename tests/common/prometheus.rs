//! A real Prometheus server (Debian's `prometheus`, which `cargo xtask setup`
//! installs) inside a lab namespace, scraping an agent and evaluating rule
//! files, and the parts of its HTTP API the tests read.
//!
//! The server runs with a fresh storage directory and is killed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use flow_lab::{LabProcess, Netns};
use serde_json::Value;

/// Scrape and rule evaluation interval of the test server.
pub const INTERVAL: &str = "1s";

/// The scrape job's name, the `job` label of every scraped series.
pub const JOB: &str = "flow-agent";

/// A running `prometheus` in a namespace.
pub struct Prometheus<'a> {
    netns: &'a Netns,
    address: SocketAddr,
    process: LabProcess,
    _storage: tempfile::TempDir,
}

/// The `prometheus` binary's version line; panics when it is missing: a test
/// that needs it must fail, not skip.
pub fn version() -> String {
    let output = std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run prometheus ({error}): `cargo xtask setup` installs Debian's prometheus"
            )
        });
    assert!(output.status.success(), "prometheus --version failed");
    // Go's flag library prints the version on stdout (older ones on stderr).
    let text = [output.stdout, output.stderr].concat();
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A local port nothing in `netns` listens on.
fn free_port(netns: &Netns) -> u16 {
    netns
        .run(|| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .unwrap()
}

/// Percent-encodes a query parameter (RFC 3986: all but unreserved bytes).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `GET path` on `address` from inside `netns` over HTTP/1.0 (no chunked
/// bodies): status and body.
pub fn http_get(netns: &Netns, address: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(netns, address, path)
        .unwrap_or_else(|error| panic!("GET {path} from {address}: {error}"))
}

/// [`http_get`], or why it could not connect or read.
pub fn try_http_get(
    netns: &Netns,
    address: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    netns
        .run(move || {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let status = response
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default();
            Ok((status, body))
        })
        .unwrap()
}

impl<'a> Prometheus<'a> {
    /// Starts `prometheus` in `netns` on a free local port, scraping
    /// `target` (job [`JOB`], `honor_labels` as deploy/README.md advises)
    /// and evaluating `rules` every [`INTERVAL`]; returns once it serves
    /// its API.
    pub fn start(netns: &'a Netns, target: SocketAddr, rules: &Path) -> Self {
        version();
        let storage = tempfile::tempdir().unwrap();
        let config = storage.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {INTERVAL}\n  scrape_timeout: {INTERVAL}\n  evaluation_interval: {INTERVAL}\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display(),
            ),
        )
        .unwrap();
        let address = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port(netns));
        let data = storage.path().join("data");
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={address}"),
            "--log.level=warn".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = LabProcess::start(netns, Path::new("prometheus"), &args, None).unwrap();
        let prometheus = Self {
            netns,
            address,
            process,
            _storage: storage,
        };
        prometheus.wait_until("its API answers ready", Duration::from_secs(60), |p| {
            try_http_get(p.netns, p.address, "/-/ready").is_ok_and(|(status, _)| status == 200)
        });
        prometheus
    }

    /// Polls `done` every 100 ms until it holds; fails after `timeout`,
    /// with Prometheus's log.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for Prometheus: {what}; its log:\n{}",
                self.process.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `data` of a successful API answer at `path`.
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.netns, self.address, path);
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("GET {path}: {status} {error}: {body}"));
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("success")),
            "GET {path}: {answer}"
        );
        answer["data"].clone()
    }

    /// The result of the instant query `expr`, which must be a vector.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)));
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().unwrap().clone()
    }

    /// The raw samples of `selector` over the last `range` (a range vector
    /// selector), one array of `[time, value]` per series.
    pub fn samples(&self, selector: &str, range: &str) -> Vec<Value> {
        let data = self.api(&format!(
            "/api/v1/query?query={}",
            percent_encode(&format!("{selector}[{range}]"))
        ));
        assert_eq!(data["resultType"], "matrix", "{selector}: {data}");
        data["result"].as_array().unwrap().clone()
    }

    /// Values of `label` over the series of `metric` (what Grafana's
    /// `label_values(metric, label)` lists).
    pub fn label_values(&self, metric: &str, label: &str) -> Vec<String> {
        let data = self.api(&format!(
            "/api/v1/label/{label}/values?{}",
            percent_encode_pair("match[]", metric)
        ));
        data.as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_str().unwrap().to_owned())
            .collect()
    }

    /// The alerts, pending and firing.
    pub fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The rule groups as loaded: each with its `file`, `name` and `rules`.
    pub fn rule_groups(&self) -> Vec<Value> {
        self.api("/api/v1/rules")["groups"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Evaluations the server has started of rule group `group` of `file`
    /// (its own `prometheus_rule_group_iterations_total`), `None` before the
    /// group's first.
    pub fn iterations(&self, file: &Path, group: &str) -> Option<u64> {
        let (status, text) = http_get(self.netns, self.address, "/metrics");
        assert_eq!(status, 200, "{text}");
        let series = format!(
            "prometheus_rule_group_iterations_total{{rule_group=\"{};{group}\"}} ",
            file.display()
        );
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map(|value| value.trim().parse::<f64>().unwrap() as u64)
    }

    /// Scrapes of the agent stored so far (samples of its `up`).
    pub fn scrapes(&self) -> u64 {
        let result = self.query(&format!("count_over_time(up{{job=\"{JOB}\"}}[1h])"));
        result.first().map_or(0, |series| {
            series["value"][1].as_str().unwrap().parse().unwrap()
        })
    }

    /// Waits until the scrape target is up.
    pub fn wait_for_target(&self) {
        self.wait_until("the agent scraped", Duration::from_secs(30), |p| {
            p.query(&format!("up{{job=\"{JOB}\"}} == 1")).len() == 1
        });
    }

    /// What it logged so far.
    pub fn log(&self) -> Vec<String> {
        self.process.stderr()
    }
}

/// `name=value`, both percent-encoded.
fn percent_encode_pair(name: &str, value: &str) -> String {
    format!("{}={}", percent_encode(name), percent_encode(value))
}
