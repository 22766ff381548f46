//! drainer rescues the data that scaled-down stateful pods leave behind in their
//! PersistentVolumeClaims, and keeps it safe in durable storage until someone needs it back.
//!
//! The crate is organised by responsibility. The core: [`volume`] (identifiers), [`store`]
//! (durable object storage), [`snapshot`] (the copy/restore engine), [`ledger`] (the SQL record
//! of progress), [`lifecycle`] (drain states and the one table of transitions). The service:
//! `service` (wiring and supervision), [`http`] (the API, its guard and the mover protocol's
//! drainer side), [`auth`] (callers and the policy), `scheduler` (claims, leases, attempts),
//! [`sweep`], [`admission`] and [`notify`] (the seams where a mode plugs in), [`supervisor`]
//! (every long-lived task, started again when it ends) and [`health`] (what `/readyz`,
//! `/healthz` and `/metrics` say of the service's own state), [`kube`]
//! (Kubernetes mode). The clients: `client`, `handoff`, `mover`, with the wire types in
//! [`protocol`]. Around them: [`config`] (the command line), `cli` (the one-shot commands),
//! `retry`, `metrics`, `shutdown`, [`telemetry`]. `main.rs` only parses the configuration
//! and calls [`run`].
//!
//! The public surface is what the binary, the integration tests and the benchmarks use: the
//! configuration, the engine, the ledger and the lifecycle, the HTTP router with its seams
//! (authority, admission, notifier, sweeper) and Kubernetes mode's parts. The commands, the
//! clients, the scheduler and the service's wiring are crate-private: they are reached through
//! [`run`] and the HTTP API.

pub mod admission;
pub mod auth;
pub(crate) mod cli;
pub mod config;
pub mod http;
pub mod kube;
pub(crate) mod metrics;
pub mod notify;
pub mod pruning;
pub mod review_gate;
pub(crate) mod scheduler;
pub(crate) mod service;
pub(crate) mod shutdown;
pub mod sweep;
pub mod telemetry;

pub use cli::one_line;
pub use config::{Command, Config};
pub(crate) use drainer_clients::{client, handoff, install, mover, remote};
pub use drainer_core::{
    Ledger, Store, StoreOptions, VolumeId, health, ledger, lifecycle, protocol, retry, snapshot,
    store, supervisor, volume,
};

/// The exit code of a command that failed: 3 when a copy stored its snapshot but some files
/// could not be read (the snapshot lists them), 2 for malformed arguments (most come from the
/// argument parser itself), 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> std::process::ExitCode {
    if err.downcast_ref::<cli::Usage>().is_some() {
        return std::process::ExitCode::from(2);
    }
    match err.downcast_ref::<snapshot::Error>() {
        Some(snapshot::Error::Incomplete { .. }) => std::process::ExitCode::from(3),
        _ => std::process::ExitCode::FAILURE,
    }
}

/// Runs the command the configuration names.
pub async fn run(config: Config) -> anyhow::Result<()> {
    match config.command {
        Command::Serve(args) => service::serve(*args).await,
        Command::Handoff(args) => handoff::run(args).await,
        Command::Mover(args) => mover::run(args).await,
        Command::Copy(args) => cli::copy(args).await,
        Command::Restore(args) => cli::restore(args).await,
        Command::Snapshots(args) => cli::snapshots(args).await,
        Command::Prune(args) => cli::prune(args).await,
        Command::Verify(args) => cli::verify(args).await,
        Command::Install(args) => install::run(&args.dir),
        Command::Sweep(args) => cli::sweep(args).await,
        Command::Orphans(args) => cli::orphans(args).await,
        Command::ReleaseGuards(args) => kube::guard::release_command(args).await,
    }
}
