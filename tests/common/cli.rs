//! Running `flow-agent` subcommands inside a lab node, as a user would.

use std::{collections::HashMap, path::Path, time::Duration};

use flow_lab::{LabProcess, Node, ProcessOutput};

/// The `flow-agent` binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flow-agent"))
}

/// Runs `flow-agent ARGS` in the node until it exits.
pub fn cli(node: &Node, args: &[&str]) -> ProcessOutput {
    LabProcess::start(&node.netns, binary(), args, None)
        .unwrap()
        .wait_for_exit(Duration::from_secs(60))
        .unwrap()
}

/// `flow-agent status --server SERVER EXTRA` as key/value pairs.
pub fn status(node: &Node, server: &str, extra: &[&str]) -> HashMap<String, String> {
    let output = cli(node, &[&["status", "--server", server], extra].concat());
    assert!(output.success, "status failed: {:?}", output.stderr);
    output
        .stdout
        .iter()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}
