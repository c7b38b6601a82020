//! Builds the eBPF programs (flow-agent-ebpf) with aya-build: nightly cargo,
//! `-Z build-std=core`, target bpfel-unknown-none, linked by bpf-linker. The
//! objects land in OUT_DIR and are embedded with `include_bytes_aligned!`.
//!
//! The nightly is the one pinned in `flow-agent-ebpf/rust-toolchain.toml`;
//! `cargo xtask setup` installs it with rust-src, LLVM and bpf-linker.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "flow-agent-ebpf")
        .ok_or_else(|| anyhow!("flow-agent-ebpf package not found in the workspace"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{manifest_path} has no parent directory"))?
        .as_str();
    let toolchain_file = format!("{root_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let toolchain = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("read {toolchain_file}"))?;
    let channel = pinned_channel(&toolchain)
        .ok_or_else(|| anyhow!("{toolchain_file} names no `channel = \"...\"`"))?;
    aya_build::build_ebpf(
        [Package {
            name: name.as_str(),
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(channel),
    )
}

/// The value of `channel = "..."` in a rust-toolchain.toml.
fn pinned_channel(toolchain: &str) -> Option<&str> {
    toolchain.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "channel").then(|| value.trim().trim_matches('"'))
    })
}
