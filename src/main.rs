//! kubesync binary: parse flags, set up telemetry, hand over to the library.
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = kubesync::cli::Cli::parse();
    kubesync::telemetry::init(cli.log_format);
    kubesync::cli::run(cli).await
}
