//! Telling people what happened to a drain where they look: the [`Notifier`] hears every
//! milestone of a drain (accepted, copy started, completed, not needed, failed, failing,
//! stalled waiting for its release, abandoned, protection removed by someone). Local mode
//! logs them; Kubernetes mode also records Events on the claim (and the pod while it exists)
//! and annotates the claim with its last snapshot (`kube::events`). A notifier never fails the
//! work it reports on: it logs its own errors.

use drainer_core::ledger::Drain;

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
    /// The drain failed for good (its volume is gone), or an attempt failed and will be
    /// retried.
    Failed {
        /// Why.
        why: String,
        /// Whether another attempt follows.
        retrying: bool,
    },
    /// The drain's attempts ran out (or its error is not transient): it keeps its claim and
    /// is tried again on a slow backoff until the cause is gone or an operator abandons it.
    Failing {
        /// Why the last attempt failed.
        why: String,
        /// When the next attempt may start.
        next: std::time::Duration,
    },
    /// The drain's pod still holds the volume past the release timeout; still waiting.
    ReleaseStalled {
        /// Who holds it, and for how long.
        why: String,
    },
    /// An operator abandoned the drain: the claim's owners now decide what happens to it.
    Abandoned {
        /// Who.
        by: String,
        /// Why.
        why: String,
    },
    /// Someone else removed drainer's protection of the claim (a hold or guard).
    ProtectionRemoved {
        /// What was removed, and what drainer did about it.
        what: String,
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
