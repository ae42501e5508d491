//! The `sluice` binary: parse the command line, install logging, dispatch.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => {
            // Both touch process-wide state, so they run while this is the
            // only thread (the environment is unsafe to change later).
            let inherited = sluice::daemon::Inherited::take_from_env();
            sluice::conn::raise_open_file_limit();
            runtime().and_then(|rt| rt.block_on(sluice::daemon::run(config, inherited)))
        }
        Command::Demo => runtime().and_then(|rt| rt.block_on(sluice::demo::run())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = sluice::config::Config::load(path)?;
    let snapshot = sluice::shared::Snapshot::build(config)?;
    if let Some(acme) = snapshot.sites.as_ref().and_then(|s| s.acme()) {
        println!("{}", acme.describe(std::time::SystemTime::now()));
    }
    println!("config ok");
    Ok(())
}

/// One worker per CPU sluice may run on. With a single CPU (a container
/// limit, or `taskset`), the current-thread scheduler does the same work
/// without the cross-thread wakeups of a work-stealing pool.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    Ok(builder.enable_all().build()?)
}

/// `error: cause: cause` on one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
