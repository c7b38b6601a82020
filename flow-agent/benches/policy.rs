//! The policy generator at scale: 10,000 workloads and 200,000 learned edges
//! (plus DNS) in 10 tenants: time and memory to propose, render and export.
//! Then the quality of a proposal on a smaller cluster, judged by the
//! evaluator over every workload pair. Prints figures; asserts nothing.
//!
//! `cargo bench -p flow-agent --bench policy` (no root needed). With
//! `FLOW_AGENT_POLICY_BENCH_KEEP=DIR` the big graph's exports are kept in
//! `DIR` (see [`keep_exports`]), to compare byte for byte (`diff -r`) with
//! another build's.
//!
//! The export creates 10,203 files in the temporary directory. On ext4
//! without a journal the kernel skips inodes freed in the last minutes when
//! it allocates one, so creating them there costs more, up to several times
//! the export's own work, after many files were deleted on that file system
//! (by a previous run's clean-up, too). `TMPDIR=/dev/shm` measures the
//! program alone.

use std::{path::Path, time::Instant};

use flow_policy::{
    export::export,
    generate::{GenerateOptions, PolicyFormat, propose, render},
    synthetic::{Shape, Synthetic, generate, quality},
};

/// A `kB` field of `/proc/self/status`: `VmRSS` (now) or `VmHWM` (the peak).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn resident_kib() -> u64 {
    status_kib("VmRSS")
}

/// Exports `big` into `directory`, for `diff -r` with another build's: in
/// both formats (`networkpolicy`, `cilium`); as NetworkPolicy over an export
/// without its cross-tenant edges (`changed`: REVIEW.md lists what is allowed
/// now), over one with them (`narrowed`: what no longer is), and over the
/// export of another graph (`replaced`: the files removed too).
fn keep_exports(big: &Synthetic, directory: &Path) {
    let other = generate(Shape {
        tenants: 2,
        namespaces: 3,
        workloads: 60,
        edges_per_workload: 5,
        seed: 7,
    });
    let runs = [
        (big, PolicyFormat::Networkpolicy, false, "networkpolicy"),
        (big, PolicyFormat::Cilium, false, "cilium"),
        (big, PolicyFormat::Networkpolicy, false, "changed"),
        (big, PolicyFormat::Networkpolicy, true, "changed"),
        (big, PolicyFormat::Networkpolicy, true, "narrowed"),
        (big, PolicyFormat::Networkpolicy, false, "narrowed"),
        (&other, PolicyFormat::Networkpolicy, true, "replaced"),
        (big, PolicyFormat::Networkpolicy, false, "replaced"),
    ];
    for (_, _, _, name) in runs {
        let _ = std::fs::remove_dir_all(directory.join(name));
    }
    for (synthetic, format, allow_cross_tenant, name) in runs {
        let options = GenerateOptions {
            format,
            allow_cross_tenant,
            ..GenerateOptions::default()
        };
        let proposal = propose(&synthetic.graph, &synthetic.cluster, &options);
        let target = directory.join(name);
        if let Err(error) = export(&target, &proposal, format) {
            eprintln!(
                "cannot keep the {name} export in {}: {error}",
                target.display()
            );
        }
    }
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
    let peak_graph = status_kib("VmHWM");
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
    let peak_proposal = status_kib("VmHWM");
    let began = Instant::now();
    let files = render(&proposal, PolicyFormat::Networkpolicy);
    let rendered = began.elapsed();
    let bytes: usize = files.values().map(String::len).sum();
    let file_count = files.len();
    // As `policy generate` does, the export renders on its own, file by
    // file: the rendered map measured above is not kept alongside.
    drop(files);
    let peak_render = status_kib("VmHWM");
    let directory =
        std::env::temp_dir().join(format!("flow-agent-policy-bench-{}", std::process::id()));
    let began = Instant::now();
    let _ = export(&directory, &proposal, PolicyFormat::Networkpolicy);
    let exported = began.elapsed();
    let peak_export = status_kib("VmHWM");
    let _ = std::fs::remove_dir_all(&directory);
    println!(
        "propose: {:.0} ms ({} policies, {} namespaces, {} rules, {} allowed entries, {} notes); render: {:.0} ms ({} files, {:.1} MB of YAML); export with REVIEW.md: {:.0} ms; the three: {:.0} ms",
        proposed.as_secs_f64() * 1e3,
        proposal.policies.len(),
        proposal.namespaces.len(),
        proposal.rules(),
        proposal.allowed.len(),
        proposal.notes.len(),
        rendered.as_secs_f64() * 1e3,
        file_count,
        bytes as f64 / 1e6,
        exported.as_secs_f64() * 1e3,
        (proposed + rendered + exported).as_secs_f64() * 1e3,
    );
    println!(
        "peak resident (VmHWM) after the graph {} MiB, propose {} MiB, render {} MiB, export {} MiB",
        peak_graph / 1024,
        peak_proposal / 1024,
        peak_render / 1024,
        peak_export / 1024,
    );
    if let Some(directory) = std::env::var_os("FLOW_AGENT_POLICY_BENCH_KEEP") {
        keep_exports(&big, Path::new(&directory));
    }

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
