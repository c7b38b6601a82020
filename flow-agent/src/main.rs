//! The `flow-agent` binary: parses flags, sets up logging, and turns every error
//! into one line on stderr.

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use flow_agent::{
    agent::{self, error_chain},
    cli::{Cli, Command, ConfigCommand, ConnectArgs, LogFormat, ObserveArgs, RunArgs},
    config::{OutputFormat, RunConfig, RunOptions},
    observe,
    output::{Discard, JsonContent, JsonLines, RecordSink},
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
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
            // clap's message spans several lines; keep the first and point at --help.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("flow-agent: {first} (see flow-agent --help)");
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        Command::Run(args) => run(&cli, args),
        Command::Observe(args) => observe(&cli, args),
        Command::Status(args) => status(&cli, args),
        Command::Config(ConfigCommand::Print(args)) => print_config(args),
        Command::Cleanup(args) => cleanup(&cli, args),
        Command::Policy(command) => {
            if let Err(error) = init_logging(&cli, false) {
                eprintln!("flow-agent: error: {}", error_chain(error.as_ref()));
                return ExitCode::from(2);
            }
            return flow_policy::run::run(command, "flow-agent");
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report_error(cli.log_format, &error);
            ExitCode::FAILURE
        }
    }
}

/// Prints the error that ends the program as one line on stderr: under
/// `--log-format json` a JSON object like the log lines before it (level
/// `ERROR`), so that a log pipeline parses the last line too.
fn report_error(format: LogFormat, error: &anyhow::Error) {
    let chain = error_chain(error.as_ref());
    match format {
        LogFormat::Text => eprintln!("flow-agent: error: {chain}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "level": "ERROR",
                "message": format!("flow-agent: error: {chain}"),
                "target": "flow_agent",
            })
        ),
    }
}

fn init_logging(cli: &Cli, ebpf_debug: bool) -> anyhow::Result<()> {
    let mut filter = EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("invalid --log-level {:?}", cli.log_level))?;
    if ebpf_debug {
        // The programs log at debug level under their crate's name.
        filter = filter.add_directive("flow_agent_ebpf=debug".parse()?);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn resolve(args: &RunArgs) -> anyhow::Result<RunConfig> {
    let file = match &args.config {
        Some(path) => RunOptions::load(path)?,
        None => RunOptions::default(),
    };
    Ok(RunConfig::resolve(args.options.clone().over(file))?)
}

fn cleanup(cli: &Cli, args: &flow_agent::cli::CleanupArgs) -> anyhow::Result<()> {
    use flow_agent::{
        datapath::pin,
        interfaces::{InterfaceSelector, list_links},
    };
    init_logging(cli, false)?;
    let globs = if args.interfaces.is_empty() {
        vec!["*".to_owned()]
    } else {
        args.interfaces.clone()
    };
    let selector = InterfaceSelector::new(&globs, &[])?;
    let interfaces: Vec<String> = list_links()?
        .into_iter()
        .map(|link| link.name)
        .filter(|name| selector.matches(name))
        .collect();
    let removed = pin::cleanup(&args.pin_dir, &interfaces)?;
    println!(
        "removed {} pinned links, {} pinned maps and {} filters{}",
        removed.links,
        removed.maps,
        removed.filters.len(),
        if removed.filters.is_empty() {
            String::new()
        } else {
            format!(" ({})", removed.filters.join(", "))
        }
    );
    Ok(())
}

fn print_config(args: &RunArgs) -> anyhow::Result<()> {
    let text = yaml_serde::to_string(&resolve(args)?.effective())
        .context("cannot print the configuration")?;
    print!("{text}");
    Ok(())
}

/// Records are written to stdout this many bytes at a time, not a line at a
/// time.
const STDOUT_BUFFER: usize = 64 * 1024;

fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let config = resolve(args)?;
    init_logging(cli, config.datapath.ebpf_debug)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        // Written from the agent's drain thread, a buffer at a time (the
        // sink flushes after each batch).
        let stdout = || std::io::BufWriter::with_capacity(STDOUT_BUFFER, std::io::stdout());
        let sink: Box<dyn RecordSink + Send> = match config.output {
            OutputFormat::Json => Box::new(JsonLines::new(stdout(), JsonContent::Flows)),
            OutputFormat::Aggregates => Box::new(JsonLines::new(stdout(), JsonContent::Aggregates)),
            OutputFormat::None => Box::new(Discard),
        };
        agent::run(&config, sink, shutdown).await?;
        Ok(())
    })
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn observe(cli: &Cli, args: &ObserveArgs) -> anyhow::Result<()> {
    init_logging(cli, false)?;
    client_runtime()?.block_on(async {
        let interrupt = shutdown_signal()?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        observe::observe(args, &mut out, interrupt).await?;
        Ok(())
    })
}

fn status(cli: &Cli, args: &ConnectArgs) -> anyhow::Result<()> {
    init_logging(cli, false)?;
    client_runtime()?.block_on(async {
        observe::status(args, &mut std::io::stdout().lock()).await?;
        Ok(())
    })
}

/// Resolves on the first SIGINT or SIGTERM. A second one while the agent
/// shuts down (a final drain, queued output, the API's grace period) exits
/// at once, with status 130: what was not yet reported stays in the maps
/// when they are pinned.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::warn!("second signal: exiting without finishing the shutdown");
            std::process::exit(130);
        });
    })
}
