//! The `flow-policy` binary: the policy commands alone, for CI pipelines that
//! have stable Rust at most.

use std::process::ExitCode;

use clap::Parser as _;
use flow_policy::{cli::Cli, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage(&error),
    };
    let filter = match EnvFilter::try_new(&cli.log_level) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "flow-policy: invalid --log-level {:?}: {error}",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    run::run(&cli.command, "flow-policy")
}

/// Help and version go to stdout with status 0; anything else is one line
/// on stderr with status 2, like every other error of a policy command.
fn usage(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    eprintln!("flow-policy: {first} (see flow-policy --help)");
    ExitCode::from(2)
}
