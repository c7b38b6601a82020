//! `--node-local-dns` through the binary: a bad address names the flag and
//! exits with status 2 before anything is read or written.

use std::process::Command;

#[test]
fn a_bad_node_local_dns_address_names_the_flag_with_status_2() {
    let output_dir = std::env::temp_dir().join("flow-policy-node-local-dns-never-written");
    let output = Command::new(env!("CARGO_BIN_EXE_flow-policy"))
        .args(["generate", "--flows", "flows.jsonl", "--output-dir"])
        .arg(&output_dir)
        .args([
            "--node-local-dns",
            "169.254.10.11",
            "--node-local-dns",
            "169.254.10",
        ])
        .output()
        .expect("the flow-policy binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value '169.254.10' for '--node-local-dns <ADDR>'"),
        "{stderr}"
    );
    assert!(!output_dir.exists());
}
