//! A policy command to its exit status, the same for `flow-policy` and
//! `flow-agent policy`, since CI gates read it: 0 for a complete result,
//! 1 when the policies would deny something checked (or a diff fails), 2 for an error (bad
//! input is not a verdict), 3 for a result without some agents' graphs.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use flow_model::error_chain;

use crate::{
    cli::PolicyCommand,
    command::{self, PolicyCommandError},
};

/// How a policy command ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// With every source.
    Complete,
    /// Without some agents' graphs.
    Partial,
    /// The policies would deny something checked, or a change fails.
    Failed,
}

impl Ending {
    /// The exit status that tells this ending.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Self::Complete => ExitCode::SUCCESS,
            Self::Failed => ExitCode::from(1),
            Self::Partial => ExitCode::from(3),
        }
    }
}

/// Runs `command` on a single-threaded runtime, with its report on stdout
/// and warnings on stderr; an error is one line on stderr, after `program: `.
pub fn run(command: &PolicyCommand, program: &str) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(dispatch(command, program)),
        Err(error) => Err(PolicyCommandError::Runtime(error)),
    };
    match result {
        Ok(ending) => ending.exit_code(),
        Err(error) => {
            // Nothing more can be said when stderr itself fails.
            let _ = writeln!(io::stderr(), "{program}: error: {}", error_chain(&error));
            ExitCode::from(2)
        }
    }
}

/// Stderr with `program: ` before every line, so a warning says who wrote
/// it whichever binary runs the command.
struct Prefixed<'a> {
    program: &'a str,
    line_start: bool,
}

impl Write for Prefixed<'_> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let mut stderr = io::stderr().lock();
        for line in buffer.split_inclusive(|byte| *byte == b'\n') {
            if self.line_start {
                write!(stderr, "{}: ", self.program)?;
            }
            stderr.write_all(line)?;
            self.line_start = line.ends_with(b"\n");
        }
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

async fn dispatch(command: &PolicyCommand, program: &str) -> Result<Ending, PolicyCommandError> {
    let mut out = io::stdout().lock();
    let mut warnings = Prefixed {
        program,
        line_start: true,
    };
    match command {
        PolicyCommand::Generate(args) => {
            let missing = command::generate(args, &mut out, &mut warnings).await?;
            Ok(if missing.is_empty() {
                Ending::Complete
            } else {
                Ending::Partial
            })
        }
        // A denial outranks missing agents: what was checked already fails.
        PolicyCommand::Check(args) => {
            let outcome = command::run_check(args, &mut out, &mut warnings).await?;
            Ok(if outcome.denies() {
                Ending::Failed
            } else if outcome.missing_agents.is_empty() {
                Ending::Complete
            } else {
                Ending::Partial
            })
        }
        PolicyCommand::Audit(args) => {
            let outcome = command::run_audit(args, &mut out, &mut warnings).await?;
            if outcome.bad_input {
                return Err(PolicyCommandError::BadInput);
            }
            Ok(if outcome.findings {
                Ending::Failed
            } else if outcome.missing_agents.is_empty() {
                Ending::Complete
            } else {
                Ending::Partial
            })
        }
        PolicyCommand::Diff(args) => {
            let outcome = command::run_diff(args, &mut out, &mut warnings).await?;
            Ok(if outcome.fails {
                Ending::Failed
            } else if outcome.missing_agents.is_empty() {
                Ending::Complete
            } else {
                Ending::Partial
            })
        }
    }
}
