//! `flow-policy`, the policy commands for CI pipelines, builds with
//! `cargo install` and stable Rust alone, and answers as `flow-agent policy`
//! does.
//!
//! The build runs in a clean target directory with an environment that holds
//! nothing but the stable toolchain's own binaries and the system's: no
//! rustup, so no pinned nightly, and no bpf-linker. The test shows that the
//! nightly and bpf-linker are out of reach there before it builds, and that
//! nothing of the eBPF side (aya, flow-agent, flow-agent-ebpf) was built
//! after.

#![expect(clippy::unwrap_used, reason = "a test panics to report failure")]

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `bin` directory of rustup's stable toolchain.
fn stable_bin() -> PathBuf {
    let output = Command::new("rustup")
        .args(["which", "--toolchain", "stable", "cargo"])
        .output()
        .unwrap_or_else(|error| panic!("rustup: {error}; install Rust with rustup"));
    assert!(
        output.status.success(),
        "no stable toolchain: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cargo = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    cargo.parent().unwrap().to_owned()
}

/// A command with only the stable toolchain and the system on its PATH.
fn stable_only(program: impl AsRef<OsStr>, bin: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("HOME", std::env::var_os("HOME").unwrap())
        // The registry cache only: crates need not be downloaded again.
        .env(
            "CARGO_HOME",
            std::env::var_os("CARGO_HOME").map_or_else(
                || Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"),
                PathBuf::from,
            ),
        );
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Builds `flow-policy` as the CI templates do, into `root`.
fn install_on_stable(root: &Path, target: &Path) -> PathBuf {
    let bin = stable_bin();
    let nightly = stable_only(bin.join("cargo"), &bin)
        .args(["+nightly-2026-05-20", "--version"])
        .output()
        .unwrap();
    assert!(
        !nightly.status.success(),
        "nightly reachable: {}",
        text(&nightly)
    );
    let linker = stable_only("sh", &bin)
        .args(["-c", "command -v bpf-linker"])
        .output()
        .unwrap();
    assert!(
        !linker.status.success(),
        "bpf-linker reachable: {}",
        text(&linker)
    );
    let output = stable_only(bin.join("cargo"), &bin)
        .env("CARGO_TARGET_DIR", target)
        .args(["install", "--debug", "--locked", "--quiet", "--root"])
        .arg(root)
        .arg("--path")
        .arg(workspace().join("flow-policy"))
        .output()
        .unwrap();
    assert!(output.status.success(), "cargo install: {}", text(&output));
    root.join("bin/flow-policy")
}

/// The packages built in `target`, by their fingerprint directories.
fn built_packages(target: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(target.join("debug/.fingerprint"))
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            // `name-hash`: the hash never holds a dash.
            name.rsplit_once('-').unwrap().0.to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

fn flow(client: &str, server: &str, port: u16) -> String {
    format!(
        r#"{{"time":"2026-11-20T10:00:00Z","first_seen":"2026-11-20T10:00:00Z","source":{{"ip":"10.0.0.1","port":40000,"kind":"pod","namespace":"shop","pod":"{client}-1","workload":{{"kind":"Deployment","name":"{client}"}},"labels":{{"app":"{client}"}}}},"destination":{{"ip":"10.0.0.2","port":{port},"kind":"pod","namespace":"shop","pod":"{server}-1","workload":{{"kind":"Deployment","name":"{server}"}},"labels":{{"app":"{server}"}}}},"protocol":"TCP","packets":1,"bytes":60,"is_reply":false,"interface":"veth0","hook":"ingress","node":"n"}}"#
    )
}

/// Every file under `directory`, by relative path, with its bytes.
fn tree(directory: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path.strip_prefix(directory).unwrap().to_owned(), bytes));
            }
        }
    }
    files.sort();
    files
}

fn run(program: &Path, args: &[&OsStr]) -> (Option<i32>, String, String) {
    let output = Command::new(program).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn flow_policy_installs_on_stable_alone_and_answers_as_flow_agent_policy() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let flow_policy = install_on_stable(&dir.join("root"), &dir.join("target"));

    let built = built_packages(&dir.join("target"));
    for package in ["flow-policy", "flow-model", "flow-proto", "kube"] {
        assert!(
            built.iter().any(|name| name == package),
            "{package} not built: {built:?}"
        );
    }
    let ebpf: Vec<&String> = built
        .iter()
        .filter(|name| name.starts_with("aya") || name.starts_with("flow-agent"))
        .collect();
    assert!(ebpf.is_empty(), "the eBPF side was built: {ebpf:?}");

    let (code, help, _) = run(&flow_policy, &["--help".as_ref()]);
    assert_eq!(code, Some(0));
    for command in ["generate", "check"] {
        assert!(help.contains(&format!("\n  {command} ")), "{help}");
    }

    std::fs::create_dir(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/deny.yaml"), DENY).unwrap();
    let flows = [flow("web", "api", 8080), flow("api", "db", 5432)].join("\n") + "\n";
    std::fs::write(dir.join("flows.jsonl"), flows).unwrap();
    let flow_agent = Path::new(env!("CARGO_BIN_EXE_flow-agent"));
    let policies = dir.join("policies");
    let flows = dir.join("flows.jsonl");
    let check = [
        "check".as_ref(),
        "--policies".as_ref(),
        policies.as_os_str(),
        "--flows".as_ref(),
        flows.as_os_str(),
    ];
    let ours = run(&flow_policy, &check);
    let theirs = run(flow_agent, &[&["policy".as_ref()], &check[..]].concat());
    assert_eq!(ours.0, Some(1), "{ours:?}");
    assert!(
        ours.1.contains(
            "DENIED shop/web-1 -> shop/api-1 TCP/8080 (1 records; blocked by ingress of shop/api-1)"
        ),
        "{ours:?}"
    );
    assert_eq!(ours, theirs);

    for (program, out) in [(&flow_policy, "ours"), (&flow_agent.to_owned(), "theirs")] {
        let out = dir.join(out);
        let generate = [
            "generate".as_ref(),
            "--flows".as_ref(),
            flows.as_os_str(),
            "--output-dir".as_ref(),
            out.as_os_str(),
        ];
        let args = if program == &flow_policy {
            generate.to_vec()
        } else {
            [&["policy".as_ref()], &generate[..]].concat()
        };
        let (code, _, stderr) = run(program, &args);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let ours = tree(&dir.join("ours"));
    let names: Vec<&Path> = ours.iter().map(|(path, _)| path.as_path()).collect();
    assert!(
        names.contains(&Path::new("shop.allow-deployment-api.yaml")),
        "{names:?}"
    );
    assert_eq!(ours, tree(&dir.join("theirs")));

    let (code, _, stderr) = run(&flow_policy, &["check".as_ref(), "--flows".as_ref()]);
    assert_eq!(code, Some(2));
    assert!(stderr.starts_with("flow-policy: error: "), "{stderr}");
}
