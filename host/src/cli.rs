//! Command-line interface: subcommands and the flags that locate or override the config.
//! Everything else lives in the config file and environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "inboxd", version, about = "The chat21 inbox observer for RabbitMQ, with Wasm policy plugins")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: consume outgoing chat traffic and deliver it to inboxes.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; without one, defaults plus environment variables are used.
    #[arg(long, env = "INBOXD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format, `human` or `json` (overrides `log.format`).
    #[arg(long)]
    pub log_format: Option<String>,
}
