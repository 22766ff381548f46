//! The `drainer` binary: parse the command line, set up telemetry, hand over to the library.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = drainer::Config::parse();
    drainer::telemetry::init(&config.telemetry);
    match drainer::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("drainer: {}", drainer::one_line(&err));
            drainer::exit_code(&err)
        }
    }
}
