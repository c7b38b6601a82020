//! Builds the eBPF programs (flow-agent-ebpf) with aya-build: nightly cargo,
//! `-Z build-std=core`, target bpfel-unknown-none, linked by bpf-linker. The
//! objects land in OUT_DIR and are embedded with `include_bytes_aligned!`.
//!
//! `cargo xtask setup` installs what this needs (nightly rust-src, LLVM, bpf-linker).
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
    aya_build::build_ebpf(
        [Package {
            name: name.as_str(),
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
