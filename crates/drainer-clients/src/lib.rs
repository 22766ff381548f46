//! drainer's clients: the programs that talk to a drainer's HTTP API from elsewhere, built on
//! the core and nothing above it.
//!
//! [`client`] (the API client they share: timeouts, bounded retries), [`handoff`] (`drainer
//! handoff`, from a terminating pod or a Job), [`mover`] (`drainer mover`, the client side of
//! the mover protocol: a volume streamed into one drain, with a remote checkpoint and a
//! relayed store), [`remote`] (a volume's snapshots read through a drainer: `restore
//! --drainer`, `snapshots --drainer`), [`install`] (`drainer install`: a copy of the binary
//! for other images, or the kubectl plugin's link), [`kubectl`] (`kubectl drainer`: the
//! operator's view with the kubeconfig's identity), [`batching`] (small requests sent
//! together) and [`args`] (their flags).
//!
//! The server's side of the same protocol lives in the server; the two meet only in the wire
//! types of `drainer_core::protocol`.

pub mod args;
pub(crate) mod batching;
pub mod client;
pub mod handoff;
pub mod install;
pub mod kubectl;
pub mod mover;
pub mod remote;
