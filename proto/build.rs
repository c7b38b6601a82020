//! Generates the Rust code for flow-agent's own API (`flowagent/v1`) and for
//! the part of Hubble's API it serves (`hubble/`), with a vendored protoc:
//! nothing to install, and the generated code is never edited by hand.
use anyhow::Context as _;

/// Hubble's files import each other as `flow/flow.proto`, as upstream does, so
/// they are compiled with `hubble/` as their root.
const HUBBLE: [&str; 2] = ["hubble/observer/observer.proto", "hubble/peer/peer.proto"];

fn main() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("vendored protoc")?;
    // SAFETY: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .compile_protos(&["flowagent/v1/flow.proto"], &["."])
        .context("compiling flowagent/v1/flow.proto")?;
    tonic_prost_build::configure()
        .compile_protos(&HUBBLE, &["hubble"])
        .context("compiling hubble/")?;
    println!("cargo:rerun-if-changed=flowagent");
    println!("cargo:rerun-if-changed=hubble");
    Ok(())
}
