//! drainer's server: `drainer serve` without any one cluster in mind. The HTTP API ([`http`]:
//! handoffs, drains, the mover protocol's drainer side, restores, its guard and limits), who
//! may call what ([`auth`], with [`review_gate`] bounding the checks that cost an API call),
//! the scheduler that claims drains and runs their attempts ([`scheduler`]), the seams a mode
//! plugs into ([`intake`], [`notify`], [`sweep`], `scheduler::Executor`,
//! `auth::Authority`), the retention pass ([`pruning`]), the one path of drain requests and
//! changes by hand ([`requests`]), the metrics ([`metrics`]), the shutdown signals
//! ([`shutdown`]), and the wiring of it all ([`service`]) with local mode built in. Its flags
//! are [`args`].
//!
//! Built on `drainer_core`; Kubernetes mode (`drainer_kube`) is built on this crate and plugs
//! in through [`service::MakeMode`], so nothing here can name the cluster's types.

pub mod args;
pub mod auth;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod notify;
pub mod pruning;
pub mod requests;
pub mod review_gate;
pub mod scheduler;
pub mod service;
pub mod shutdown;
pub mod sweep;
