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

/// The test virtualenv's Python (`cargo xtask setup` makes it), or `None`
/// with a message; under `cargo xtask test` a missing one is a failure.
pub fn python() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("FLOW_AGENT_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-grpc/bin/python"),
        std::path::PathBuf::from,
    );
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("FLOW_AGENT_TEST_STRICT").is_none(),
        "{} is missing: `cargo xtask setup` creates it",
        python.display()
    );
    eprintln!(
        "skipping: no test Python at {}; `cargo xtask setup` creates it",
        python.display()
    );
    None
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

/// Edges the agent at `server` has learned (and made durable), per its
/// status; `extra` as for [`status`].
pub fn learned_edges(node: &Node, server: &str, extra: &[&str]) -> usize {
    let state = status(node, server, extra);
    let learning = &state["learning"];
    learning
        .strip_prefix("yes, ")
        .and_then(|rest| rest.strip_suffix(" edges"))
        .unwrap_or_else(|| panic!("{}: not learning: {learning}", node.netns.name))
        .parse()
        .unwrap()
}
