//! Generates the Rust code for flow.proto with a vendored protoc: nothing to
//! install, and the generated code is never edited by hand.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("vendored protoc")?;
    // SAFETY: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .compile_protos(&["flowagent/v1/flow.proto"], &["."])
        .context("compiling flowagent/v1/flow.proto")?;
    println!("cargo:rerun-if-changed=flowagent/v1/flow.proto");
    Ok(())
}
