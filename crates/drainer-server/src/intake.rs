//! What the service's mode adds to a handoff: the [`Intake`] fills in what the mode knows
//! of each new drain before it is recorded (whether it waits for its pod's release, the
//! claim's identity), and acts on the recorded drains before the handoff is answered (holding
//! claims that would otherwise be deleted). Local mode adds nothing; Kubernetes mode
//! implements it in `drainer_kube::intake`. A mode that holds claims names, by its
//! [`ClaimHold`], the fact it records on a drain that holds one: the service knows no fact
//! names of its own.

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

    /// The fact by which this mode's drains hold their claims, if they can (local mode has
    /// none).
    fn claim_hold(&self) -> Option<ClaimHold> {
        None
    }
}

/// A platform fact that, recorded on an active drain, means the drain holds its claim: keeps
/// it from being deleted (in Kubernetes mode, from the garbage collector). Such
/// a drain is not cancelled: letting the claim go would delete it with its data uncopied, which
/// takes the explicit, recorded abandon. `/metrics` counts the claims kept
/// (`drainer_held_claims`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimHold {
    /// The fact's name (its value names what keeps the claim).
    pub fact: &'static str,
    /// What the claim is kept from, as a refusal says it (e.g. "the garbage collector").
    pub held_from: &'static str,
}

impl ClaimHold {
    /// Why cancelling `drain` is refused, if it is: it is active and has this fact. `how` says
    /// how to abandon it where it was asked. Pure.
    pub fn cancel_refused(&self, drain: &Drain, how: &str) -> Option<String> {
        let holder = drain
            .facts
            .get(self.fact)
            .filter(|_| drain.state.is_active())?;
        Some(format!(
            "drain {} holds claim {}/{} from {} ({holder}): cancelling would let the claim be deleted with its data uncopied; abandon it instead ({how})",
            drain.id, drain.namespace, drain.pvc, self.held_from
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use drainer_core::lifecycle::DrainState;

    const KEEPER: ClaimHold = ClaimHold {
        fact: "keeper",
        held_from: "the sweeper",
    };

    fn drain(state: DrainState, keeper: Option<&str>) -> Drain {
        Drain {
            id: "d-1".into(),
            namespace: "shop".into(),
            pvc: "data-web-2".into(),
            pod: None,
            reason: "handoff".into(),
            state,
            attempts: 0,
            max_attempts: 3,
            not_before_ms: 0,
            lease_owner: None,
            lease_expires_ms: None,
            snapshot: None,
            last_error: None,
            created_ms: 0,
            updated_ms: 0,
            finished_ms: None,
            facts: drainer_core::ledger::Facts::default().with(KEEPER.fact, keeper),
        }
    }

    #[test]
    fn only_an_active_drain_having_the_hold_fact_refuses_a_cancel() {
        let why = KEEPER
            .cancel_refused(&drain(DrainState::Copying, Some("keeper-d-1")), "say why")
            .unwrap();
        assert_eq!(
            why,
            "drain d-1 holds claim shop/data-web-2 from the sweeper (keeper-d-1): cancelling \
             would let the claim be deleted with its data uncopied; abandon it instead (say why)"
        );
        let no_fact = drain(DrainState::Copying, None);
        assert_eq!(KEEPER.cancel_refused(&no_fact, "x"), None);
        let ended = drain(DrainState::Completed, Some("keeper-d-1"));
        assert_eq!(KEEPER.cancel_refused(&ended, "x"), None);
    }

    #[test]
    fn local_mode_holds_nothing() {
        assert_eq!(Local.claim_hold(), None);
    }
}
