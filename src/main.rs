//! kubesync binary: parse flags, set up telemetry, hand over to the library.
use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any thread exists, so that every thread shares the few arenas.
    kubesync::memory::limit_arenas(2);
    let cli = kubesync::cli::Cli::parse();
    kubesync::telemetry::init(cli.log_format);
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(kubesync::cli::run(cli)),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
