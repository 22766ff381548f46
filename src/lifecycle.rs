//! The drain lifecycle: states, the transitions allowed between them, and the pure decisions
//! that move a drain along. No I/O here: the ledger applies these decisions in transactions.
//!
//! ```text
//! requested ─► awaiting_release ─► queued ─► copying ─► completed
//!                   │                  ▲         │
//!                   └─► not_needed     └─ retry ◄┘ (backoff; after max attempts: failed)
//! any active state ─► cancelled (by hand);  failed ─► queued (retry by hand)
//! ```
//!
//! At most one drain per volume is active (`requested`, `awaiting_release`, `queued`,
//! `copying`); repeating a handoff returns it. In local mode there is no pod to wait for, so a
//! handoff goes straight to `queued`.

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
    /// Every attempt failed; can be retried by hand.
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

    /// Whether a transition from `self` to `next` is part of the lifecycle.
    pub fn can_become(self, next: DrainState) -> bool {
        use DrainState::*;
        matches!(
            (self, next),
            (Requested, AwaitingRelease | Queued | NotNeeded | Cancelled)
                | (AwaitingRelease, Queued | NotNeeded | Cancelled)
                | (Queued, Copying | Cancelled)
                | (Copying, Completed | Queued | Failed | Cancelled | Copying)
                | (Failed, Queued)
        )
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

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queue the drain again, not before `delay` from now.
    RetryAfter(std::time::Duration),
    /// Give up: the drain is `failed`.
    GiveUp,
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
            (Requested, AwaitingRelease),
            (Requested, Queued),
            (AwaitingRelease, Queued),
            (AwaitingRelease, NotNeeded),
            (Queued, Copying),
            (Copying, Completed),
            (Copying, Queued),
            (Copying, Failed),
            (Copying, Copying), // a lease taken over after its owner died
            (Failed, Queued),
            (Queued, Cancelled),
        ];
        for (from, to) in allowed {
            assert!(from.can_become(to), "{from} -> {to}");
        }
        let refused = [
            (Completed, Queued),
            (Completed, Copying),
            (NotNeeded, Queued),
            (Cancelled, Queued),
            (Queued, Completed),
            (Failed, Copying),
            (Requested, Copying),
            (Failed, Cancelled),
        ];
        for (from, to) in refused {
            assert!(!from.can_become(to), "{from} -> {to}");
        }
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
    }
}
