//! The drain lifecycle: states, the events that move a drain, and the one table of
//! transitions between them. No I/O here: the ledger applies each transition in a
//! transaction whose `WHERE` names the state this table started from, so a writer acting on a
//! stale view changes nothing and is told so.
//!
//! ```text
//! awaiting_release ─► queued ─► copying ─► completed
//!   │     │             ▲   ▲      │ │ │
//!   │     └─► not_needed│   └──────┘ │ └─► failed ─► queued (retry by hand)
//!   └─► failed          └── retry ◄──┘   (backoff; after max attempts: failed)
//!   (release timeout, or the volume deleted before it could be held)
//! any active state ─► cancelled (by hand)
//! ```
//!
//! A handoff that waits for its pod's release starts in `awaiting_release`; one that does not
//! (local mode, sweeps) starts in `queued`. `requested` is kept for drains that arrive with
//! nothing decided yet. At most one drain per volume is active (`requested`,
//! `awaiting_release`, `queued`, `copying`); repeating a handoff returns it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The state of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Announced; nothing decided yet.
    Requested,
    /// The announcing pod still exists; waiting until it is gone.
    AwaitingRelease,
    /// Ready to copy, at or after its `not_before` time.
    Queued,
    /// A replica holds the lease and is copying.
    Copying,
    /// A snapshot of the volume is complete.
    Completed,
    /// The pod came back (same ordinal): nothing to copy.
    NotNeeded,
    /// Every attempt failed, or the volume was never released; can be retried by hand.
    Failed,
    /// Cancelled by hand.
    Cancelled,
}

/// Every state, in lifecycle order (for metrics and listings).
pub const ALL_STATES: [DrainState; 8] = [
    DrainState::Requested,
    DrainState::AwaitingRelease,
    DrainState::Queued,
    DrainState::Copying,
    DrainState::Completed,
    DrainState::NotNeeded,
    DrainState::Failed,
    DrainState::Cancelled,
];

/// What happens to a drain. Each event names the one transition it causes from each state
/// where it may happen ([`DrainState::after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The volume was let go and is orphaned: copy it.
    Orphaned,
    /// The volume was let go but is still wanted (the pod came back): nothing to copy.
    StillInUse,
    /// The volume was not let go within the release timeout.
    ReleaseTimedOut,
    /// The volume was deleted before its data could be copied.
    VolumeGone,
    /// A replica claimed the queued drain with a lease.
    Claimed,
    /// A replica took over a drain whose holder's lease expired.
    TakenOver,
    /// The copy finished: its snapshot is complete.
    Completed,
    /// The attempt failed; try again after a backoff.
    Retry,
    /// The attempt failed and no attempt is left (or the error is permanent).
    GaveUp,
    /// The holder stopped (shutdown); the attempt does not count.
    Released,
    /// An operator asked for another try of a failed drain.
    RetriedByHand,
    /// An operator cancelled the drain.
    Cancelled,
}

/// Every event (for exhaustive tests).
pub const ALL_EVENTS: [Event; 12] = [
    Event::Orphaned,
    Event::StillInUse,
    Event::ReleaseTimedOut,
    Event::VolumeGone,
    Event::Claimed,
    Event::TakenOver,
    Event::Completed,
    Event::Retry,
    Event::GaveUp,
    Event::Released,
    Event::RetriedByHand,
    Event::Cancelled,
];

impl DrainState {
    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::AwaitingRelease => "awaiting_release",
            Self::Queued => "queued",
            Self::Copying => "copying",
            Self::Completed => "completed",
            Self::NotNeeded => "not_needed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state a new drain starts in: waiting for its pod's release, or queued at once.
    pub fn initial(wait_for_release: bool) -> Self {
        if wait_for_release {
            Self::AwaitingRelease
        } else {
            Self::Queued
        }
    }

    /// Whether the drain still has work ahead (at most one active drain per volume).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Requested | Self::AwaitingRelease | Self::Queued | Self::Copying
        )
    }

    /// Whether the drain has ended (completed, not needed, failed or cancelled).
    pub fn is_final(self) -> bool {
        !self.is_active()
    }

    /// The transition table: the state `event` moves a drain in `self` to, or `None` when the
    /// event cannot happen in this state.
    pub fn after(self, event: Event) -> Option<DrainState> {
        use DrainState::*;
        use Event as E;
        let next = match (self, event) {
            (Requested | AwaitingRelease, E::Orphaned) => Queued,
            (Requested | AwaitingRelease, E::StillInUse) => NotNeeded,
            (Requested | AwaitingRelease, E::ReleaseTimedOut | E::VolumeGone) => Failed,
            (Queued, E::Claimed) => Copying,
            (Copying, E::TakenOver) => Copying,
            (Copying, E::Completed) => Completed,
            (Copying, E::Retry | E::Released) => Queued,
            (Copying, E::GaveUp) => Failed,
            (Failed, E::RetriedByHand) => Queued,
            (state, E::Cancelled) if state.is_active() => Cancelled,
            _ => return None,
        };
        Some(next)
    }

    /// Whether some event moves a drain from `self` to `next`.
    pub fn can_become(self, next: DrainState) -> bool {
        ALL_EVENTS.iter().any(|e| self.after(*e) == Some(next))
    }
}

impl fmt::Display for DrainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DrainState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .iter()
            .copied()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown drain state {s:?}"))
    }
}

/// The state of a copy run in the ledger: `running` until its snapshot is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started, resumable.
    Running,
    /// Its snapshot is complete.
    Completed,
}

impl RunState {
    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Running, Self::Completed]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queue the drain again, not before `delay` from now.
    RetryAfter(std::time::Duration),
    /// Give up: the drain is `failed`.
    GiveUp,
}

impl AfterFailure {
    /// The lifecycle event this decision is.
    pub fn event(self) -> Event {
        match self {
            Self::RetryAfter(_) => Event::Retry,
            Self::GiveUp => Event::GaveUp,
        }
    }
}

/// Decides what follows a failed attempt: permanent errors and exhausted attempts give up;
/// transient errors retry after the backoff for this attempt.
pub fn after_failure(attempts: u32, max_attempts: u32, transient: bool) -> AfterFailure {
    if !transient || attempts >= max_attempts {
        AfterFailure::GiveUp
    } else {
        AfterFailure::RetryAfter(crate::retry::drain_delay(attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::DrainState::*;
    use super::*;

    #[test]
    fn transitions_follow_the_diagram() {
        let allowed = [
            (Requested, AwaitingRelease, false),
            (Requested, Queued, true),
            (AwaitingRelease, Queued, true),
            (AwaitingRelease, NotNeeded, true),
            (AwaitingRelease, Failed, true),
            (Queued, Copying, true),
            (Copying, Completed, true),
            (Copying, Queued, true),
            (Copying, Failed, true),
            (Copying, Copying, true), // a lease taken over after its owner died
            (Failed, Queued, true),
            (Queued, Cancelled, true),
            (AwaitingRelease, Cancelled, true),
            (Copying, Cancelled, true),
            (Completed, Queued, false),
            (Completed, Copying, false),
            (NotNeeded, Queued, false),
            (Cancelled, Queued, false),
            (Queued, Completed, false),
            (Failed, Copying, false),
            (Requested, Copying, false),
            (Failed, Cancelled, false),
            (Queued, Queued, false),
        ];
        for (from, to, expected) in allowed {
            assert_eq!(from.can_become(to), expected, "{from} -> {to}");
        }
    }

    #[test]
    fn every_event_has_one_meaning_per_state() {
        for state in ALL_STATES {
            for event in ALL_EVENTS {
                if let Some(next) = state.after(event) {
                    assert!(
                        state.is_active() || event == Event::RetriedByHand,
                        "{state} {event:?}"
                    );
                    assert!(state.can_become(next));
                }
            }
            // Final states move only by hand.
            if state.is_final() {
                let moves: Vec<_> = ALL_EVENTS.iter().filter_map(|e| state.after(*e)).collect();
                assert!(moves.iter().all(|s| *s == Queued), "{state}: {moves:?}");
            }
        }
    }

    #[test]
    fn new_drains_wait_for_release_or_queue() {
        assert_eq!(DrainState::initial(true), AwaitingRelease);
        assert_eq!(DrainState::initial(false), Queued);
    }

    #[test]
    fn names_round_trip_and_activity_is_exact() {
        for state in ALL_STATES {
            assert_eq!(state.as_str().parse::<DrainState>().unwrap(), state);
            assert_eq!(state.is_active(), !state.is_final());
        }
        let active: Vec<_> = ALL_STATES.iter().filter(|s| s.is_active()).collect();
        assert_eq!(active, [&Requested, &AwaitingRelease, &Queued, &Copying]);
        assert!("copied".parse::<DrainState>().is_err());
        for run in [RunState::Running, RunState::Completed] {
            assert_eq!(run.as_str().parse::<RunState>().unwrap(), run);
        }
        assert!("done".parse::<RunState>().is_err());
    }

    #[test]
    fn failures_retry_until_attempts_run_out() {
        assert!(matches!(
            after_failure(1, 5, true),
            AfterFailure::RetryAfter(_)
        ));
        assert!(matches!(
            after_failure(4, 5, true),
            AfterFailure::RetryAfter(_)
        ));
        assert_eq!(after_failure(5, 5, true), AfterFailure::GiveUp);
        assert_eq!(
            after_failure(1, 5, false),
            AfterFailure::GiveUp,
            "permanent errors are not retried"
        );
        assert_eq!(after_failure(5, 5, true).event(), Event::GaveUp);
    }
}
