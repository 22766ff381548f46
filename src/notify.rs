//! Telling people what happened to a drain where they look: the [`Notifier`] hears every
//! milestone of a drain (accepted, copy started, completed, not needed, failed). Local mode
//! logs them; Kubernetes mode also records Events on the claim (and the pod while it exists)
//! and annotates the claim with its last snapshot (`kube::events`). A notifier never fails the
//! work it reports on: it logs its own errors.

use crate::ledger::Drain;

/// A milestone of a drain.
#[derive(Debug, Clone, PartialEq)]
pub enum Milestone {
    /// A handoff (or a sweep, or a condemned pod seen terminating) created the drain.
    Accepted,
    /// An attempt started copying.
    CopyStarted {
        /// Which attempt.
        attempt: u32,
    },
    /// The snapshot is complete.
    Completed {
        /// Its id.
        snapshot: String,
        /// Regular files in it.
        files: u64,
        /// Bytes in them.
        bytes: u64,
        /// How long the attempt took.
        seconds: f64,
    },
    /// Nothing to copy: the volume is still in use.
    NotNeeded {
        /// Why.
        why: String,
    },
    /// The drain failed for good (or an attempt failed and will be retried).
    Failed {
        /// Why.
        why: String,
        /// Whether another attempt follows.
        retrying: bool,
    },
}

/// Hears the milestones of drains.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// `drain` reached `milestone`.
    async fn notify(&self, drain: &Drain, milestone: &Milestone);
}

/// Local mode: the milestones are in the log (and the drain's history).
#[derive(Debug, Default)]
pub struct Log;

#[async_trait::async_trait]
impl Notifier for Log {
    async fn notify(&self, drain: &Drain, milestone: &Milestone) {
        tracing::debug!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, ?milestone, "drain milestone");
    }
}
