//! The one path by which drains are asked for and changed by hand, whoever asks: the HTTP
//! API (a handoff; an operator's retry, cancel or abandon) and, in Kubernetes mode, a `Drain`
//! object made or annotated by a user. [`Requests::request`] lets the mode's intake fill in
//! the new drains, records them (an active drain of a volume is joined, not doubled), lets the
//! intake protect their claims, and tells the notifier of the new ones; [`Requests::change`]
//! moves a drain through the ledger's by-hand transitions and stops this replica's attempt of
//! it at once. Authorisation is the caller's business (the HTTP guard, the API server's
//! RBAC): this module records who asked, it does not decide who may.

use crate::auth::Caller;
use crate::intake::{Intake, Refusal};
use crate::notify::{Milestone, Notifier};
use crate::scheduler::ProgressBoard;
use drainer_core::ledger::{self, Drain, Ledger, NewDrain, Refused};
use drainer_core::lifecycle::{DrainState, Event};
use std::sync::Arc;

/// Why a request was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mode refused it (a claim that does not exist) or could not admit it now.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
}

impl Error {
    /// Whether asking again may succeed: an unavailable cluster or a transient ledger error.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Refused(Refusal::Unavailable(_)) => true,
            Error::Refused(Refusal::NotFound(_)) => false,
            Error::Ledger(e) => e.is_transient(),
        }
    }
}

/// What requests and changes by hand need; cheap to clone.
#[derive(Clone)]
pub struct Requests {
    /// The ledger.
    pub ledger: Ledger,
    /// What the mode adds to a request.
    pub intake: Arc<dyn Intake>,
    /// Hears the new drains and the abandoned ones.
    pub notifier: Arc<dyn Notifier>,
    /// This replica's running attempts (a drain changed by hand stops its attempt).
    pub board: ProgressBoard,
}

impl Requests {
    /// Records the drains `wanted` by `caller` (each names its requester): the intake
    /// completes them first and acts on them once recorded; the new ones are told to the
    /// notifier after the answer (in Kubernetes mode an Event is two API calls, and the drains
    /// are safe in the ledger already). Returns each drain and whether this request made it;
    /// the caller logs them.
    pub async fn request(
        &self,
        caller: &Caller,
        wanted: &mut [NewDrain],
    ) -> Result<Vec<(Drain, bool)>, Error> {
        self.intake.prepare(caller, wanted).await?;
        let recorded = self.ledger.request_drains(wanted).await?;
        let drains: Vec<Drain> = recorded.iter().map(|(d, _)| d.clone()).collect();
        self.intake.recorded(&drains).await?;
        let accepted: Vec<Drain> = recorded
            .iter()
            .filter(|(_, new)| *new)
            .map(|(d, _)| d.clone())
            .collect();
        if !accepted.is_empty() {
            let notifier = Arc::clone(&self.notifier);
            tokio::spawn(async move {
                for drain in &accepted {
                    notifier.notify(drain, &Milestone::Accepted).await;
                }
            });
        }
        Ok(recorded)
    }

    /// Applies `event` (`RetriedByHand`, `Cancelled` or `Abandoned`) to drain `id` for `by`,
    /// `why` recorded with it in the drain's history; stops this replica's attempt of a drain
    /// that no longer copies, and tells the notifier of an abandoned one. The drain after the
    /// change, or why the ledger refused it.
    pub async fn change(
        &self,
        id: &str,
        event: Event,
        by: &str,
        why: Option<&str>,
    ) -> Result<Result<Drain, Refused>, ledger::Error> {
        let drain = match self.ledger.change_drain(id, event, by, why).await? {
            Ok(drain) => drain,
            Err(refused) => return Ok(Err(refused)),
        };
        self.stop_attempt(&drain);
        tracing::info!(drain = %id, ns = %drain.namespace, pvc = %drain.pvc, by, ?event, why, "drain changed by hand");
        if let (Event::Abandoned, Some(why)) = (event, why) {
            let milestone = Milestone::Abandoned {
                by: by.to_owned(),
                why: why.to_owned(),
            };
            let (notifier, told) = (Arc::clone(&self.notifier), drain.clone());
            tokio::spawn(async move { notifier.notify(&told, &milestone).await });
        }
        Ok(Ok(drain))
    }

    /// Stops this replica's attempt of `drain` at once if the drain, changed by hand, no
    /// longer copies (the attempt would notice within a second, time enough to commit a
    /// snapshot).
    fn stop_attempt(&self, drain: &Drain) {
        if drain.state == DrainState::Copying {
            return;
        }
        let running = self
            .board
            .lock()
            .ok()
            .and_then(|b| b.get(&drain.id).cloned());
        if let Some(running) = running {
            tracing::info!(drain = %drain.id, state = ?drain.state, "stopping the running attempt");
            running.stop.cancel();
        }
    }
}
