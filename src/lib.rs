//! drainer rescues the data that scaled-down stateful pods leave behind in their
//! PersistentVolumeClaims, and keeps it safe in durable storage until someone needs it back.
//!
//! The crate is organised by responsibility: [`config`] (the command line), [`volume`]
//! (identifiers), [`store`] (durable object storage), [`snapshot`] (the copy/restore engine),
//! [`ledger`] (the SQL record of progress), [`cli`] (the one-shot commands) and
//! [`telemetry`] (logging). `main.rs` only parses the configuration and calls [`run`].

pub mod cli;
pub mod config;
pub mod ledger;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod volume;

pub use cli::one_line;
pub use config::{Command, Config};
pub use ledger::Ledger;
pub use store::{Store, StoreOptions};
pub use volume::VolumeId;

/// Runs the command the configuration names.
pub async fn run(config: Config) -> anyhow::Result<()> {
    match config.command {
        Command::Copy(args) => cli::copy(args).await,
        Command::Restore(args) => cli::restore(args).await,
        Command::Snapshots(args) => cli::snapshots(args).await,
        Command::Prune(args) => cli::prune(args).await,
        Command::Verify(args) => cli::verify(args).await,
    }
}
