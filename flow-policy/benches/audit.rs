//! `policy audit` at scale, as a user runs it: about 2,000 NetworkPolicies
//! (those proposed for whole namespaces of a synthetic cluster of 10,000
//! workloads) against its 200,000 learned edges, saved as a graph file. Runs the real `flow-policy` binary three times printing the
//! report only, then three times also writing the tightened files
//! (`--output-dir`; every single port of the policies is first widened to
//! a range up to 65535, so every file has rules to narrow), and prints each run's wall time and the children's
//! peak resident set so far (`ru_maxrss`, which only grows).
//! Asserts nothing.
//!
//! `cargo bench -p flow-policy --bench audit` (no root needed).

#![expect(clippy::unwrap_used, reason = "a benchmark aborts on failure")]

use std::{path::Path, process::Command, time::Instant};

use flow_policy::{
    export::export,
    generate::{GenerateOptions, PolicyFormat, propose},
    synthetic::{Shape, generate},
};

/// Policies kept for the audit.
const POLICIES: usize = 2_000;

/// Keeps the policy files of whole namespaces, in name order, while they
/// add up to at most `keep` policies, and removes the rest: the audited set
/// covers its namespaces as a team's repository would. Returns how many
/// were kept.
fn keep_policies(directory: &Path, keep: usize) -> usize {
    let mut by_namespace: std::collections::BTreeMap<String, Vec<std::path::PathBuf>> =
        std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            let namespace = name.split('.').next().unwrap().to_owned();
            by_namespace.entry(namespace).or_default().push(path);
        }
    }
    let _ = std::fs::remove_file(directory.join("kustomization.yaml"));
    let mut kept = 0;
    for files in by_namespace.values() {
        let fits = kept + files.len() <= keep;
        if fits {
            kept += files.len();
        } else {
            files
                .iter()
                .for_each(|path| std::fs::remove_file(path).unwrap());
        }
    }
    kept
}

/// Widens every single-port entry of the kept files to a range up to
/// 65535 (`endPort`), so that the tightening has a rule to narrow and
/// rewrite in every file. Returns how many entries were widened.
fn loosen(directory: &Path) -> usize {
    let mut widened = 0;
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = String::with_capacity(text.len() * 2);
        for (index, line) in lines.iter().enumerate() {
            out.push_str(line);
            out.push('\n');
            let single = index > 0
                && lines[index - 1].trim_start().starts_with("- port: ")
                && line.trim_start().starts_with("protocol: ");
            if single {
                let indent = line.len() - line.trim_start().len();
                out.push_str(&format!("{}endPort: 65535\n", " ".repeat(indent)));
                widened += 1;
            }
        }
        std::fs::write(&path, out).unwrap();
    }
    widened
}

fn peak_children_mib() -> i64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct it is given;
    // RUSAGE_CHILDREN covers every child waited for.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage) };
    usage.ru_maxrss / 1024
}

fn main() {
    let big = generate(Shape {
        tenants: 10,
        namespaces: 20,
        workloads: 50,
        edges_per_workload: 21,
        seed: 42,
    });
    let scratch = tempfile::tempdir().unwrap();
    let policies = scratch.path().join("policies");
    let proposal = propose(&big.graph, &big.cluster, &GenerateOptions::default());
    export(&policies, &proposal, PolicyFormat::Networkpolicy).unwrap();
    drop(proposal);
    let kept = keep_policies(&policies, POLICIES);
    let widened = loosen(&policies);
    let graph = scratch.path().join("graph.json");
    std::fs::write(&graph, serde_json::to_vec(&big.graph.to_file()).unwrap()).unwrap();
    println!(
        "audit: {kept} policy files ({widened} port entries widened to ranges), {} workloads, {} edges",
        big.graph.workloads().count(),
        big.graph.len()
    );
    let report = scratch.path().join("report.json");

    // Rounds 1-3 print the report only (the tightening is still worked out
    // for AUDIT.md); rounds 4-6 also write the tightened files and diffs.
    let out = scratch.path().join("out");
    for round in 1..=6 {
        let write_files = round > 3;
        let _ = std::fs::remove_dir_all(&out);
        let mut command = Command::new(env!("CARGO_BIN_EXE_flow-policy"));
        command
            .arg("audit")
            .arg("--policies")
            .arg(&policies)
            .arg("--graph")
            .arg(&graph)
            .arg("--report")
            .arg(&report);
        if write_files {
            command.arg("--output-dir").arg(&out);
        }
        let began = Instant::now();
        let output = command.output().unwrap();
        let took = began.elapsed();
        let found: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let count = |key: &str| found[key].as_array().map_or(0, Vec::len);
        let written = std::fs::read_dir(&out).map_or(0, Iterator::count);
        println!(
            "round {round}{}: {:.0} ms, exit {:?}, peak resident {} MiB; {} policies, {} denied, {} unused, {} broad, {} cross-tenant; {written} files written",
            if write_files { " (--output-dir)" } else { "" },
            took.as_secs_f64() * 1e3,
            output.status.code(),
            peak_children_mib(),
            found["policies"],
            count("denied"),
            count("unused"),
            count("broad"),
            count("cross_tenant"),
        );
    }
    // With FLOW_POLICY_AUDIT_BENCH_KEEP set, the inputs stay, for profiling.
    if std::env::var_os("FLOW_POLICY_AUDIT_BENCH_KEEP").is_some() {
        println!("inputs kept in {}", scratch.keep().display());
    }
}
