//! The drain lifecycle: states, the events that move a drain, and the one table of
//! transitions between them. No I/O here: the ledger applies each transition in a
//! transaction whose `WHERE` names the state this table started from, so a writer acting on a
//! stale view changes nothing and is told so.
//!
//! ```text
//! awaiting_release ─► queued ─► copying ─► completed
//!   │     │             ▲   ▲     │ │ │
//!   │     └─► not_needed│   └─────┘ │ └─► failing ─► copying … (retried on a slow, capped
//!   │                   └─ retry ◄──┘        │         backoff, for as long as it takes)
//!   └─► failed (the volume is gone: nothing left to copy) ◄── copying
//! any active state ─► cancelled (by hand; refused while the drain holds a claim)
//! any active state, cancelled ─► abandoned (by hand, with a reason: drainer lets go of the
//!                                 claim, its owners decide)
//! failing, failed ─► queued (retry by hand, attempts counted afresh)
//! ```
//!
//! A handoff that waits for its pod's release starts in `awaiting_release`; one that does not
//! (local mode, sweeps) starts in `queued`. `requested` is kept for drains that arrive with
//! nothing decided yet. At most one drain per volume is active (`requested`,
//! `awaiting_release`, `queued`, `copying`, `failing`); repeating a handoff returns it.
//!
//! Giving up never costs data: a drain ends by itself only when its data is safe
//! (`completed`), not needed (`not_needed`) or no longer exists (`failed`). A drain whose
//! attempts ran out, or whose error will not go away by itself, is `failing`: still active,
//! still holding its claim, retried on a slow capped backoff until the cause is gone or an
//! operator abandons it. A drain still waiting for its pod's release past the release timeout
//! keeps waiting (the timeout is recorded once, as a warning).

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
    /// Its attempts ran out (or its error is not transient): still active, retried on a slow,
    /// capped backoff, at or after its `not_before` time.
    Failing,
    /// A snapshot of the volume is complete.
    Completed,
    /// The pod came back (same ordinal): nothing to copy.
    NotNeeded,
    /// The volume no longer exists (deleted before its data could be copied); can be
    /// retried by hand.
    Failed,
    /// Cancelled by hand.
    Cancelled,
    /// Given up by hand, with a reason: the claim's owners decide what happens to it.
    Abandoned,
}

/// Every state, in lifecycle order (for metrics and listings).
pub const ALL_STATES: [DrainState; 10] = [
    DrainState::Requested,
    DrainState::AwaitingRelease,
    DrainState::Queued,
    DrainState::Copying,
    DrainState::Failing,
    DrainState::Completed,
    DrainState::NotNeeded,
    DrainState::Failed,
    DrainState::Cancelled,
    DrainState::Abandoned,
];

/// What happens to a drain. Each event names the one transition it causes from each state
/// where it may happen ([`DrainState::after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The volume was let go and is orphaned: copy it.
    Orphaned,
    /// The volume was let go but is still wanted (the pod came back): nothing to copy.
    StillInUse,
    /// The volume was not let go within the release timeout: recorded, and still waited for.
    ReleaseTimedOut,
    /// The volume was deleted before its data could be copied.
    VolumeGone,
    /// A replica claimed the queued (or failing) drain with a lease.
    Claimed,
    /// A replica took over a drain whose holder's lease expired.
    TakenOver,
    /// The copy finished: its snapshot is complete.
    Completed,
    /// The attempt failed; try again after a backoff.
    Retry,
    /// The attempt failed and no attempt is left (or the error is permanent): the drain is
    /// `failing`, retried on a slow backoff.
    GaveUp,
    /// The attempt found the volume gone: nothing is left to copy.
    DataGone,
    /// The holder stopped (shutdown); the attempt does not count.
    Released,
    /// An operator asked for another try of a failed drain.
    RetriedByHand,
    /// An operator cancelled the drain.
    Cancelled,
    /// An operator abandoned the drain (and with it the claim's protection), with a reason.
    Abandoned,
}

/// Every event (for exhaustive tests).
pub(crate) const ALL_EVENTS: [Event; 14] = [
    Event::Orphaned,
    Event::StillInUse,
    Event::ReleaseTimedOut,
    Event::VolumeGone,
    Event::Claimed,
    Event::TakenOver,
    Event::Completed,
    Event::Retry,
    Event::GaveUp,
    Event::DataGone,
    Event::Released,
    Event::RetriedByHand,
    Event::Cancelled,
    Event::Abandoned,
];

impl DrainState {
    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::AwaitingRelease => "awaiting_release",
            Self::Queued => "queued",
            Self::Copying => "copying",
            Self::Failing => "failing",
            Self::Completed => "completed",
            Self::NotNeeded => "not_needed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
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
            Self::Requested | Self::AwaitingRelease | Self::Queued | Self::Copying | Self::Failing
        )
    }

    /// Whether the drain has ended (completed, not needed, failed, cancelled or abandoned).
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
            (waiting @ (Requested | AwaitingRelease), E::ReleaseTimedOut) => waiting,
            (Requested | AwaitingRelease, E::VolumeGone) => Failed,
            (Queued | Failing, E::Claimed) => Copying,
            (Copying, E::TakenOver) => Copying,
            (Copying, E::Completed) => Completed,
            (Copying, E::Retry | E::Released) => Queued,
            (Copying, E::GaveUp) => Failing,
            (Copying, E::DataGone) => Failed,
            (Failed | Failing, E::RetriedByHand) => Queued,
            (state, E::Cancelled) if state.is_active() => Cancelled,
            (state, E::Abandoned) if state.is_active() || state == Cancelled => Abandoned,
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
    /// Its attempts ran out or the error is not transient: the drain is `failing`, tried
    /// again not before `delay` from now (a slow, capped backoff), for as long as it takes.
    Failing(std::time::Duration),
    /// The volume is gone: nothing is left to copy, the drain is `failed`.
    GiveUp,
}

impl AfterFailure {
    /// The lifecycle event this decision is.
    pub fn event(self) -> Event {
        match self {
            Self::RetryAfter(_) => Event::Retry,
            Self::Failing(_) => Event::GaveUp,
            Self::GiveUp => Event::DataGone,
        }
    }

    /// When the next attempt may start, if one follows.
    pub fn delay(self) -> Option<std::time::Duration> {
        match self {
            Self::RetryAfter(delay) | Self::Failing(delay) => Some(delay),
            Self::GiveUp => None,
        }
    }
}

/// What kind of failure an attempt ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// May go away by itself (an outage, a timeout, a file that kept changing).
    Transient,
    /// Will not go away by itself (a mover the namespace refuses, unreadable files): the
    /// cause must change, which drainer keeps checking for.
    Permanent,
    /// The volume no longer exists.
    VolumeGone,
}

/// Decides what follows a failed attempt: a gone volume gives up; transient errors retry
/// after the backoff for this attempt until the attempts run out; after that, and for errors
/// that are not transient, the drain is `failing` and tried again on the same backoff, at
/// least a minute apart, and never further apart than `cap`.
pub fn after_failure(
    attempts: u32,
    max_attempts: u32,
    kind: FailureKind,
    cap: std::time::Duration,
) -> AfterFailure {
    match kind {
        FailureKind::VolumeGone => AfterFailure::GiveUp,
        FailureKind::Transient if attempts < max_attempts => {
            AfterFailure::RetryAfter(crate::retry::drain_delay(attempts, cap))
        }
        _ => AfterFailure::Failing(crate::retry::failing_delay(attempts, cap)),
    }
}

#[cfg(test)]
mod tests {
    use super::DrainState::*;
    use super::*;
    use std::time::Duration;

    #[test]
    fn transitions_follow_the_diagram() {
        let allowed = [
            (Requested, AwaitingRelease, false),
            (Requested, Requested, true), // a release timeout is recorded, still waiting
            (Requested, Queued, true),
            (AwaitingRelease, AwaitingRelease, true),
            (AwaitingRelease, Queued, true),
            (AwaitingRelease, NotNeeded, true),
            (AwaitingRelease, Failed, true),
            (Queued, Copying, true),
            (Copying, Completed, true),
            (Copying, Queued, true),
            (Copying, Failing, true),
            (Copying, Failed, true),
            (Copying, Copying, true), // a lease taken over after its owner died
            (Failing, Copying, true),
            (Failing, Queued, true),
            (Failed, Queued, true),
            (Queued, Cancelled, true),
            (AwaitingRelease, Cancelled, true),
            (Copying, Cancelled, true),
            (Failing, Cancelled, true),
            (Failing, Abandoned, true),
            (AwaitingRelease, Abandoned, true),
            (Copying, Abandoned, true),
            (Completed, Queued, false),
            (Completed, Copying, false),
            (Completed, Abandoned, false),
            (NotNeeded, Queued, false),
            (Cancelled, Queued, false),
            (Cancelled, Abandoned, true),
            (Abandoned, Queued, false),
            (Queued, Completed, false),
            (Queued, Failing, false),
            (Failing, Completed, false),
            (Failing, Failed, false),
            (Failed, Copying, false),
            (Requested, Copying, false),
            (Failed, Cancelled, false),
            (Failed, Abandoned, false),
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
                        state.is_active()
                            || matches!(event, Event::RetriedByHand | Event::Abandoned),
                        "{state} {event:?}"
                    );
                    assert!(state.can_become(next));
                }
            }
            // Final states move only by hand: retried, or (cancelled) abandoned.
            if state.is_final() {
                let moves: Vec<_> = ALL_EVENTS.iter().filter_map(|e| state.after(*e)).collect();
                assert!(
                    moves.iter().all(|s| *s == Queued || *s == Abandoned),
                    "{state}: {moves:?}"
                );
            }
        }
    }

    #[test]
    fn no_event_ends_a_drain_by_itself_but_safety_or_a_gone_volume() {
        // What lets a hold go: the events that end a drain. Only these may happen without an
        // operator: the data is safe, not needed, or no longer exists.
        let by_hand = [Event::Cancelled, Event::Abandoned, Event::RetriedByHand];
        for state in ALL_STATES.into_iter().filter(|s| s.is_active()) {
            for event in ALL_EVENTS.into_iter().filter(|e| !by_hand.contains(e)) {
                if let Some(next) = state.after(event).filter(|n| n.is_final()) {
                    assert!(
                        matches!(next, Completed | NotNeeded | Failed),
                        "{state} --{event:?}--> {next}"
                    );
                    if next == Failed {
                        assert!(
                            matches!(event, Event::VolumeGone | Event::DataGone),
                            "{state} fails only when the volume is gone, not on {event:?}"
                        );
                    }
                }
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
        assert_eq!(
            active,
            [&Requested, &AwaitingRelease, &Queued, &Copying, &Failing]
        );
        assert!("copied".parse::<DrainState>().is_err());
        for run in [RunState::Running, RunState::Completed] {
            assert_eq!(run.as_str().parse::<RunState>().unwrap(), run);
        }
        assert!("done".parse::<RunState>().is_err());
    }

    #[test]
    fn failures_retry_then_keep_failing_slowly_and_give_up_only_on_a_gone_volume() {
        let cap = Duration::from_secs(600);
        let transient = FailureKind::Transient;
        assert!(matches!(
            after_failure(1, 5, transient, cap),
            AfterFailure::RetryAfter(_)
        ));
        assert!(matches!(
            after_failure(4, 5, transient, cap),
            AfterFailure::RetryAfter(_)
        ));
        let AfterFailure::Failing(delay) = after_failure(5, 5, transient, cap) else {
            panic!("attempts ran out: failing, not given up");
        };
        assert!(delay >= Duration::from_secs(42), "{delay:?}");
        let AfterFailure::Failing(later) = after_failure(40, 5, transient, cap) else {
            panic!("still failing");
        };
        assert!(later <= cap && later >= cap / 2, "capped: {later:?}");
        assert!(
            matches!(
                after_failure(1, 5, FailureKind::Permanent, cap),
                AfterFailure::Failing(_)
            ),
            "permanent errors are retried slowly, not given up"
        );
        assert_eq!(
            after_failure(1, 5, FailureKind::VolumeGone, cap),
            AfterFailure::GiveUp
        );
        assert_eq!(AfterFailure::GiveUp.event(), Event::DataGone);
        assert_eq!(
            after_failure(5, 5, transient, cap).event(),
            Event::GaveUp,
            "gave up the fast retries"
        );
        assert_eq!(Copying.after(Event::GaveUp), Some(Failing));
        // A short cap (tests) wins over the floor of a minute.
        let short = Duration::from_secs(5);
        let AfterFailure::Failing(d) = after_failure(9, 5, transient, short) else {
            panic!()
        };
        assert!(d <= short, "{d:?}");
    }
}
