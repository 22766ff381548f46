//! Logging: structured `tracing` events to stderr, as text or JSON lines.

use crate::config::{LogFormat, TelemetryArgs};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, at start-up.
pub fn init(args: &TelemetryArgs) {
    let mut filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // The certificate verifier logs each refused certificate at ERROR, which the client's own
    // one-line error already says (naming the URL and what to do): off unless asked for.
    if !args.log.contains("rustls_platform_verifier")
        && let Ok(quiet) = "rustls_platform_verifier=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match args.log_format {
        LogFormat::Text => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
