//! The policy generator at scale: 10,000 workloads and 200,000 learned edges
//! (plus DNS) in 10 tenants: time and memory to propose, render and export.
//! Then the quality of a proposal on a smaller cluster, judged by the
//! evaluator over every workload pair. Prints figures; asserts nothing.
//!
//! `cargo bench -p flow-agent --bench policy` (no root needed).

use std::time::Instant;

use flow_agent::policy::{
    export::export,
    generate::{GenerateOptions, PolicyFormat, propose, render},
    synthetic::{Shape, generate, quality},
};

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rss_start = resident_kib();
    let began = Instant::now();
    let big = generate(Shape {
        tenants: 10,
        namespaces: 20,
        workloads: 50,
        edges_per_workload: 21,
        seed: 42,
    });
    let built = began.elapsed();
    let rss_graph = resident_kib();
    println!(
        "graph: {} workloads, {} edges, built in {:.0} ms; resident {} MiB (+{} MiB)",
        big.graph.workloads().count(),
        big.graph.len(),
        built.as_secs_f64() * 1e3,
        rss_graph / 1024,
        rss_graph.saturating_sub(rss_start) / 1024
    );
    let options = GenerateOptions::default();
    let began = Instant::now();
    let proposal = propose(&big.graph, &big.cluster, &options);
    let proposed = began.elapsed();
    let rss_proposal = resident_kib();
    let began = Instant::now();
    let files = render(&proposal, PolicyFormat::Networkpolicy);
    let rendered = began.elapsed();
    let bytes: usize = files.values().map(String::len).sum();
    let directory =
        std::env::temp_dir().join(format!("flow-agent-policy-bench-{}", std::process::id()));
    let began = Instant::now();
    let _ = export(&directory, &proposal, PolicyFormat::Networkpolicy);
    let exported = began.elapsed();
    let _ = std::fs::remove_dir_all(&directory);
    println!(
        "propose: {:.0} ms ({} policies, {} namespaces, {} rules, {} allowed entries, {} notes); render: {:.0} ms ({} files, {:.1} MB of YAML); export with REVIEW.md: {:.0} ms; peak resident {} MiB",
        proposed.as_secs_f64() * 1e3,
        proposal.policies.len(),
        proposal.namespaces.len(),
        proposal.rules(),
        proposal.allowed.len(),
        proposal.notes.len(),
        rendered.as_secs_f64() * 1e3,
        files.len(),
        bytes as f64 / 1e6,
        exported.as_secs_f64() * 1e3,
        rss_proposal.max(resident_kib()) / 1024,
    );

    let shape = Shape {
        tenants: 4,
        namespaces: 5,
        workloads: 20,
        edges_per_workload: 10,
        seed: 42,
    };
    let medium = generate(shape);
    for allow_cross_tenant in [false, true] {
        let options = GenerateOptions {
            allow_cross_tenant,
            ..GenerateOptions::default()
        };
        let proposal = propose(&medium.graph, &medium.cluster, &options);
        let began = Instant::now();
        let measured = quality(&medium, &proposal, allow_cross_tenant);
        println!(
            "quality ({} workloads, {} edges, cross-tenant {}): {} observed connections, {} denied; {} probes (every workload pair x observed ports + TCP/53), {} allowed but unobserved, all {} of them DNS over TCP; {} policies, {} rules; judged in {:.1} s",
            medium.graph.workloads().count(),
            medium.graph.len(),
            if allow_cross_tenant {
                "allowed"
            } else {
                "left out"
            },
            measured.observed,
            measured.false_denies,
            measured.probes,
            measured.over_permitted,
            measured.dns_over_tcp,
            proposal.policies.len(),
            proposal.rules(),
            began.elapsed().as_secs_f64()
        );
    }
}
