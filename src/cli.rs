//! Command-line interface. Every flag is a clap derive field; most have an environment fallback.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// kubesync keeps a Kubernetes cluster in step with manifests in Git, using server-side apply and
/// ApplySet-style pruning.
#[derive(Debug, Parser)]
#[command(name = "kubesync", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "KUBESYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version and exit.
    Version,
}

/// Runs the parsed command and maps its outcome to the process exit status.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Version => {
            println!("kubesync {}", crate::VERSION);
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
