//! What the service's mode adds to a handoff: the [`Intake`] fills in what the mode knows
//! of each new drain before it is recorded (whether it waits for its pod's release, the
//! claim's identity), and acts on the recorded drains before the handoff is answered (holding
//! claims that would otherwise be deleted). Local mode adds nothing; Kubernetes mode
//! implements it in `drainer_kube::intake`.

use crate::auth::Caller;
use drainer_core::ledger::{Drain, NewDrain};

/// Why a handoff cannot be admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A named claim does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The cluster could not be asked or changed now; the handoff may be repeated.
    #[error("{0}")]
    Unavailable(String),
}

/// Fills in and completes handoffs for the service's mode.
#[async_trait::async_trait]
pub trait Intake: Send + Sync {
    /// Completes the new drains `caller` asks for, before they are recorded.
    async fn prepare(&self, caller: &Caller, drains: &mut [NewDrain]) -> Result<(), Refusal>;

    /// Acts on the drains recorded (new or found active), before the caller is answered.
    async fn recorded(&self, drains: &[Drain]) -> Result<(), Refusal>;
}

/// Local mode: a handoff goes straight to `queued` as asked; nothing else to do.
#[derive(Debug, Default)]
pub(crate) struct Local;

#[async_trait::async_trait]
impl Intake for Local {
    async fn prepare(&self, _caller: &Caller, _drains: &mut [NewDrain]) -> Result<(), Refusal> {
        Ok(())
    }

    async fn recorded(&self, _drains: &[Drain]) -> Result<(), Refusal> {
        Ok(())
    }
}
