//! drainer's core: what a drain is made of, with nothing of how it is served or where it runs.
//!
//! [`volume`] (the identifiers of a claim and of a snapshot), [`store`] (durable object
//! storage behind `object_store`), [`encryption`] (the store's optional client-side
//! encryption), [`snapshot`] (the copy, verify and restore engine and the
//! snapshot format), [`ledger`] (the SQL record of progress, SQLite or PostgreSQL),
//! [`lifecycle`] (drain states and the one table of transitions), [`protocol`] (the wire types
//! of the mover protocol and of batch reads), and the runtime they share: [`supervisor`]
//! (long-lived tasks started again when they end), [`health`] (what those tasks and the ledger
//! say of themselves) and [`retry`] (bounded backoff policies).
//!
//! This crate knows nothing of HTTP routes, callers, Kubernetes or the command line: the
//! server, Kubernetes mode and the clients are built on it, and the compiler keeps it that way
//! (it cannot name them).

pub mod args;
pub mod encryption;
pub mod health;
pub mod ledger;
pub mod lifecycle;
pub mod protocol;
pub mod retry;
pub mod snapshot;
pub mod store;
pub mod supervisor;
pub mod volume;

pub use ledger::Ledger;
pub use store::{Store, StoreOptions};
pub use volume::VolumeId;
