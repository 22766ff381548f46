//! The one place that decides retry policy, built on the `backoff` crate: the delay before a
//! drain's next attempt, before a supervised task is started again, before a failed watch lists
//! again, and bounded retries of idempotent client calls.
//!
//! Every retry here is bounded (by attempts or by a deadline) and jittered, and only errors
//! whose type says `is_transient()` are retried.

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use std::time::Duration;

/// First delay between drain attempts.
const DRAIN_INITIAL: Duration = Duration::from_secs(2);
/// The shortest delay between two attempts of a `failing` drain (unless the cap is shorter).
const FAILING_FLOOR: Duration = Duration::from_secs(60);

fn drain_policy(cap: Duration) -> ExponentialBackoff {
    let initial = DRAIN_INITIAL.min(cap);
    ExponentialBackoff {
        initial_interval: initial,
        current_interval: initial,
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_interval: cap,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// How long to wait after the `attempts`-th failed attempt of a drain (exponential from 2 s,
/// jittered, never longer than `cap`). Computed from the attempt count so it survives
/// restarts.
pub(crate) fn drain_delay(attempts: u32, cap: Duration) -> Duration {
    let mut policy = drain_policy(cap);
    let mut delay = DRAIN_INITIAL.min(cap);
    for _ in 0..attempts.clamp(1, 32) {
        delay = policy.next_backoff().unwrap_or(cap);
    }
    delay.min(cap)
}

/// How long a `failing` drain waits after its `attempts`-th attempt: the same backoff, at
/// least a minute, never longer than `cap`.
pub(crate) fn failing_delay(attempts: u32, cap: Duration) -> Duration {
    drain_delay(attempts, cap).max(FAILING_FLOOR).min(cap)
}

/// Delays before a supervised task that ended is started again: `initial`, doubling
/// (jittered) up to `max`, for as long as it keeps ending (the supervisor resets it after a
/// run that lasted).
pub fn restart_policy(initial: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoff {
        initial_interval: initial,
        current_interval: initial,
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_interval: max,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// First delay before a failed watch lists again.
pub(crate) const RELIST_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay before a failed watch lists again.
pub const RELIST_MAX: Duration = Duration::from_secs(30);

/// Delays before a watch that failed lists again: 1 s doubling to 30 s, for as long as it
/// fails (reset when it has listed).
pub fn relist_policy() -> ExponentialBackoff {
    restart_policy(RELIST_INITIAL, RELIST_MAX)
}

/// A policy for client calls (the `handoff` command): fast first retries, gives up at the
/// deadline.
pub fn client_policy(deadline: Duration) -> ExponentialBackoff {
    ExponentialBackoff {
        initial_interval: Duration::from_millis(200),
        current_interval: Duration::from_millis(200),
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_interval: Duration::from_secs(5),
        max_elapsed_time: Some(deadline),
        ..ExponentialBackoff::default()
    }
}

/// Runs `op` until it succeeds, fails permanently, or the policy's deadline passes; each
/// transient failure that is retried is logged (a warning naming the error and the delay), so
/// a caller waiting on a service that is down says so instead of hanging silently.
pub async fn with_retries<T, E, F, Fut>(
    policy: ExponentialBackoff,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let notify = |error: E, delay: Duration| {
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "retrying");
    };
    backoff::future::retry_notify(
        policy,
        || {
            let attempt = op();
            let is_transient = &is_transient;
            async move {
                attempt.await.map_err(|e| {
                    if is_transient(&e) {
                        backoff::Error::transient(e)
                    } else {
                        backoff::Error::permanent(e)
                    }
                })
            }
        },
        notify,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default of `--max-retry-delay`.
    const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(600);

    #[test]
    fn drain_delays_grow_and_stay_capped() {
        let cap = DEFAULT_RETRY_CAP;
        let first = drain_delay(1, cap);
        assert!(
            first >= Duration::from_millis(1400) && first <= Duration::from_millis(2600),
            "{first:?}"
        );
        let fifth = drain_delay(5, cap);
        assert!(fifth >= Duration::from_secs(20), "{fifth:?}");
        assert!(drain_delay(30, cap) <= cap);
        assert!(drain_delay(30, Duration::from_secs(5)) <= Duration::from_secs(5));
    }

    #[test]
    fn failing_drains_wait_at_least_a_minute_and_at_most_the_cap() {
        let cap = DEFAULT_RETRY_CAP;
        assert_eq!(failing_delay(1, cap), FAILING_FLOOR);
        let late = failing_delay(30, cap);
        assert!(late > FAILING_FLOOR && late <= cap, "{late:?}");
        let short = Duration::from_secs(3);
        assert_eq!(failing_delay(1, short), short, "a shorter cap wins");
    }

    #[tokio::test]
    async fn retries_transient_errors_only_and_stops_at_the_deadline() {
        let mut calls = 0;
        let result: Result<(), &str> = with_retries(
            client_policy(Duration::from_millis(300)),
            |_| true,
            || {
                calls += 1;
                async { Err("down") }
            },
        )
        .await;
        assert!(result.is_err());
        assert!(calls >= 2, "{calls}");
        let mut calls = 0;
        let result: Result<(), &str> = with_retries(
            client_policy(Duration::from_secs(10)),
            |_| false,
            || {
                calls += 1;
                async { Err("bad request") }
            },
        )
        .await;
        assert_eq!(result, Err("bad request"));
        assert_eq!(calls, 1);
    }
}
