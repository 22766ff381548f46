//! drainer rescues the data that scaled-down stateful pods leave behind in their
//! PersistentVolumeClaims, and keeps it safe in durable storage until someone needs it back.
//!
//! The `drainer` binary, thin on top of the workspace's crates, one per layer, each built only
//! on those below it (the compiler enforces it: a crate cannot name one above):
//! - `drainer_core`: volume identifiers, the store, the snapshot engine, the ledger, the drain
//!   lifecycle, the wire protocol, and the supervisor and health of long-lived tasks;
//! - `drainer_server`: the HTTP API, who may call what, the scheduler, the seams a mode plugs
//!   into, retention, metrics and the service's wiring with local mode;
//! - `drainer_kube`: Kubernetes mode, plugged into the server's seams;
//! - `drainer_clients` (beside the server, on the core): `handoff`, `mover`, the API client
//!   and reads through a drainer.
//!
//! This crate holds the command line ([`config`], which flattens each crate's own flags), the
//! one-shot commands (`cli`), logging ([`telemetry`]) and [`run`], which `main.rs` calls.

pub(crate) mod cli;
pub mod config;
pub mod telemetry;

pub use cli::one_line;
pub use config::{Command, Config};
pub use drainer_clients::kubectl::plugin_args;
pub(crate) use drainer_clients::{handoff, install, mover};
pub use drainer_core::{Ledger, Store, StoreOptions, VolumeId, snapshot};

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
        Command::Serve(args) => serve(*args).await,
        Command::Handoff(args) => handoff::run(args).await,
        Command::Mover(args) => mover::run(args).await,
        Command::Copy(args) => cli::copy(args).await,
        Command::Restore(args) => cli::restore(args).await,
        Command::Snapshots(args) => cli::snapshots(args).await,
        Command::Prune(args) => cli::prune(args).await,
        Command::Verify(args) => cli::verify(args).await,
        Command::Install(args) => install::run(&args),
        Command::Sweep(args) => cli::sweep(args).await,
        Command::Orphans(args) => cli::orphans(args).await,
        Command::ReleaseGuards(args) => drainer_kube::guard::release_command(args).await,
        Command::Kubectl(args) => drainer_clients::kubectl::run(args).await,
    }
}

/// `drainer serve`: local mode, or Kubernetes mode with `--kubernetes`.
async fn serve(args: config::ServeCommand) -> anyhow::Result<()> {
    let kubernetes = args
        .kube
        .enabled
        .then(|| drainer_kube::mode::KubernetesMode::new(args.kube.clone()));
    let other = kubernetes
        .as_ref()
        .map(|mode| mode as &dyn drainer_server::service::MakeMode);
    drainer_server::service::serve(args.serve, other).await
}
