//! The one place that decides retry policy, built on the `backoff` crate: the delay before a
//! drain's next attempt, and bounded retries of idempotent client calls.
//!
//! Every retry here is bounded (by attempts or by a deadline) and jittered, and only errors
//! whose type says `is_transient()` are retried.

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use std::time::Duration;

/// First delay between drain attempts.
const DRAIN_INITIAL: Duration = Duration::from_secs(2);
/// Longest delay between drain attempts.
const DRAIN_MAX: Duration = Duration::from_secs(300);

fn drain_policy() -> ExponentialBackoff {
    ExponentialBackoff {
        initial_interval: DRAIN_INITIAL,
        current_interval: DRAIN_INITIAL,
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_interval: DRAIN_MAX,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// How long to wait after the `attempts`-th failed attempt of a drain (exponential, jittered,
/// capped). Computed from the attempt count so it survives restarts.
pub fn drain_delay(attempts: u32) -> Duration {
    let mut policy = drain_policy();
    let mut delay = DRAIN_INITIAL;
    for _ in 0..attempts.clamp(1, 32) {
        delay = policy.next_backoff().unwrap_or(DRAIN_MAX);
    }
    delay
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

/// Runs `op` until it succeeds, fails permanently, or the policy's deadline passes.
pub async fn with_retries<T, E, F, Fut>(
    policy: ExponentialBackoff,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    backoff::future::retry(policy, || {
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
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_delays_grow_and_stay_capped() {
        let first = drain_delay(1);
        assert!(
            first >= Duration::from_millis(1400) && first <= Duration::from_millis(2600),
            "{first:?}"
        );
        let fifth = drain_delay(5);
        assert!(fifth >= Duration::from_secs(20), "{fifth:?}");
        assert!(drain_delay(30) <= DRAIN_MAX.mul_f64(1.31));
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
