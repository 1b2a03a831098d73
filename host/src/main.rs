//! The `inboxd` command: parses the CLI, loads the config, installs logging and signal
//! handling, and runs the daemon. Errors are printed with their whole chain.

mod cli;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use inboxd::config::Config;
use inboxd::policy::AcceptAll;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("inboxd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if let Some(format) = args.log_format {
        env.insert("INBOXD_LOG_FORMAT".into(), format);
    }
    let config = Config::load(args.config.as_deref(), &env)?;
    inboxd::telemetry::init(&config.log.level, config.log.format).context("setting up logging")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        inboxd::run(config, Arc::new(AcceptAll), shutdown).await
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    Ok(())
}
