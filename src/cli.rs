//! The command line, as fixed by the contract. No logic lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "TLS-terminating WebSocket and HTTP reverse proxy with frame-level policy"
)]
pub struct Cli {
    /// Log line format on stderr: `text` (key=value fields, logfmt-like) or
    /// `json` (one object per line). Also `SLUICE_LOG_FORMAT`.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run in the foreground until SIGTERM/SIGINT.
    Run {
        /// Path to the TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Parse and validate the config and load its certificates, then exit.
    Check {
        /// Path to the TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Proxy on https://127.0.0.1:8443 with a self-signed cert, a built-in
    /// echo backend and a browser page at `/`.
    Demo,
}
