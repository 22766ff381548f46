//! The `drainer` binary (also `kubectl-drainer`): parse the command line, set up telemetry, hand over to the library.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Installed as kubectl-drainer, it is `drainer kubectl`.
    let config = drainer::Config::parse_from(drainer::plugin_args(std::env::args_os().collect()));
    drainer::telemetry::init(&config.telemetry);
    match drainer::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("drainer: {}", drainer::one_line(&err));
            drainer::exit_code(&err)
        }
    }
}
