//! One supervisor for every long-lived task of the service: the watches, the release tracker,
//! the sweeps, the store prober, the ledger's intake and checkpointer.
//!
//! A task is a function that makes the task's future from the stop token, so it can be made
//! again. The supervisor runs each in a tokio task of its own; when it ends (returns or panics)
//! before its stop token is cancelled, the supervisor logs how (structured: `task`, `ended`,
//! `reason`), marks it down in [`Health`] (readiness fails while a task is down), waits a
//! bounded exponential backoff ([`crate::retry::restart_policy`]; reset once a run lasted
//! [`Restart::stable`]) and starts it again, counting the restart (too many make `/healthz`
//! fail, see [`crate::health`]). Once the stop token is cancelled nothing is started again: the
//! running tasks see the token and return, and [`Supervisor::stopped`] waits for them.
//!
//! The HTTP server and the scheduler are not supervised here: the service stops with an error
//! when either stops unexpectedly (`drainer::service`). This module never ends the process.

use crate::health::Health;
use backoff::backoff::Backoff;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How supervised tasks are started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restart {
    /// The first delay after a task ended.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A run at least this long starts the delays over from `initial`.
    pub stable: Duration,
}

impl Default for Restart {
    /// 1 s, doubling (jittered) up to 60 s; a run of a minute resets it.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(60),
        }
    }
}

/// Runs tasks, starts them again when they end, stops them all with one token.
#[derive(Debug, Clone)]
pub struct Supervisor {
    stop: CancellationToken,
    health: Health,
    tracker: TaskTracker,
    restart: Restart,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `stop` is cancelled, reporting to `health`.
    pub fn new(stop: CancellationToken, health: Health) -> Self {
        Self {
            stop,
            health,
            tracker: TaskTracker::new(),
            restart: Restart::default(),
        }
    }

    /// A supervisor of its own, for tasks whose owner nobody reports on (a ledger opened by a
    /// command or a test): they are still restarted, and stop with their owner.
    pub(crate) fn unattended() -> Self {
        Self::new(CancellationToken::new(), Health::default())
    }

    /// The same, starting tasks again with `restart`.
    #[cfg(test)]
    pub(crate) fn with_restart(self, restart: Restart) -> Self {
        Self { restart, ..self }
    }

    /// Where the tasks' states are reported.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The token that stops every task of this supervisor.
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// A supervisor that reports to the same [`Health`] but has a token of its own (not a
    /// child of this one: its tasks outlive this supervisor's shutdown) and is not waited for
    /// by [`Supervisor::stopped`]. For the tasks of a part that stop when it is dropped, such
    /// as the ledger's, which must keep committing while the service shuts down.
    pub fn scope(&self) -> Self {
        Self {
            stop: CancellationToken::new(),
            health: self.health.clone(),
            tracker: TaskTracker::new(),
            restart: self.restart,
        }
    }

    /// Runs the task made by `make` under `name` until the stop token is cancelled, making it
    /// again after each end. `make` gets the stop token; the task should return soon after it
    /// is cancelled.
    pub fn spawn<F, Fut>(&self, name: &str, make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = self.health.add_task(name);
        let keeper = Keeper {
            name,
            stop: self.stop.clone(),
            health: self.health.clone(),
            restart: self.restart,
        };
        self.tracker.spawn(keeper.run(make));
    }

    /// Waits until every task has stopped (once the stop token is cancelled).
    pub async fn stopped(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// How one run of a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// It returned although it was not asked to stop.
    Returned,
    /// It panicked, with this message.
    Panicked(String),
    /// It was cancelled from outside (the runtime is shutting down).
    Cancelled,
}

impl Ended {
    fn of(result: Result<(), tokio::task::JoinError>) -> Self {
        match result {
            Ok(()) => Self::Returned,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                Self::Panicked(message)
            }
            Err(_) => Self::Cancelled,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Returned => "returned",
            Self::Panicked(_) => "panicked",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Returned => f.write_str("returned unexpectedly"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
            Self::Cancelled => f.write_str("was cancelled"),
        }
    }
}

/// Aborts the task it holds when dropped (the supervisor's own task was aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one task running.
struct Keeper {
    name: String,
    stop: CancellationToken,
    health: Health,
    restart: Restart,
}

impl Keeper {
    async fn run<F, Fut>(self, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut delays = crate::retry::restart_policy(self.restart.initial, self.restart.max);
        loop {
            let started = Instant::now();
            let span = tracing::info_span!("task", task = %self.name);
            let mut run = AbortOnDrop(tokio::spawn(make(self.stop.clone()).instrument(span)));
            let ended = Ended::of((&mut run.0).await);
            if self.stop.is_cancelled() {
                tracing::debug!(task = %self.name, "supervised task stopped");
                self.health.remove_task(&self.name);
                return;
            }
            if started.elapsed() >= self.restart.stable {
                delays.reset();
            }
            let delay = delays.next_backoff().unwrap_or(self.restart.max);
            self.health.task_down(&self.name, &ended.to_string());
            tracing::error!(
                task = %self.name,
                ended = ended.kind(),
                reason = %ended,
                ran_ms = started.elapsed().as_millis() as u64,
                restart_in_ms = delay.as_millis() as u64,
                "supervised task ended; starting it again after a backoff"
            );
            tokio::select! {
                () = self.stop.cancelled() => {
                    self.health.remove_task(&self.name);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            self.health.task_restarted(&self.name, Instant::now());
            tracing::info!(task = %self.name, "supervised task started again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{LedgerCheck, RESTARTS_TOLERATED};
    use std::sync::{Arc, Mutex};

    const QUICK: Restart = Restart {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(80),
        stable: Duration::from_secs(60),
    };

    /// A supervisor with quick restarts and the instants at which its task started.
    fn supervisor() -> (Supervisor, Arc<Mutex<Vec<Instant>>>) {
        let supervisor = Supervisor::unattended().with_restart(QUICK);
        (supervisor, Arc::default())
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_task_that_returns_is_started_again() {
        let (supervisor, starts) = supervisor();
        let seen = Arc::clone(&starts);
        supervisor.spawn("returns", move |stop| {
            let n = {
                let mut starts = seen.lock().unwrap();
                starts.push(Instant::now());
                starts.len()
            };
            async move {
                if n < 3 {
                    return;
                }
                stop.cancelled().await;
            }
        });
        until("three starts", || starts.lock().unwrap().len() >= 3).await;
        let task = supervisor.health().snapshot().tasks["returns"].clone();
        assert_eq!(task.restarts, 2);
        assert!(task.up);
        assert_eq!(task.last_exit.as_deref(), Some("returned unexpectedly"));
        supervisor.stop_token().cancel();
        supervisor.stopped().await;
        assert_eq!(
            starts.lock().unwrap().len(),
            3,
            "not started again once stopped"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_started_again() {
        let (supervisor, starts) = supervisor();
        let seen = Arc::clone(&starts);
        supervisor.spawn("panics", move |stop| {
            let n = {
                let mut starts = seen.lock().unwrap();
                starts.push(Instant::now());
                starts.len()
            };
            async move {
                if n == 1 {
                    panic!("the first run panics");
                }
                stop.cancelled().await;
            }
        });
        until("a second start", || starts.lock().unwrap().len() >= 2).await;
        let task = supervisor.health().snapshot().tasks["panics"].clone();
        assert_eq!(
            task.last_exit.as_deref(),
            Some("panicked: the first run panics")
        );
        assert!(task.up && task.restarts == 1, "{task:?}");
        supervisor.stop_token().cancel();
        supervisor.stopped().await;
    }

    #[tokio::test]
    async fn delays_between_restarts_grow_and_stay_bounded() {
        let (supervisor, starts) = supervisor();
        let seen = Arc::clone(&starts);
        supervisor.spawn("fails", move |_| {
            seen.lock().unwrap().push(Instant::now());
            async {}
        });
        until("eight starts", || starts.lock().unwrap().len() >= 8).await;
        supervisor.stop_token().cancel();
        supervisor.stopped().await;
        let starts = starts.lock().unwrap().clone();
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        // Jitter is ±30 %: 10 ms, 20 ms, 40 ms, then capped at 80 ms.
        assert!(gaps[0] >= Duration::from_millis(7), "{gaps:?}");
        assert!(gaps[2] > gaps[0], "the delays grow: {gaps:?}");
        let cap = QUICK.max.mul_f64(1.3) + Duration::from_millis(40);
        assert!(
            gaps.iter().all(|g| *g <= cap),
            "bounded by {cap:?}: {gaps:?}"
        );
        assert!(
            gaps[5] >= QUICK.max.mul_f64(0.7),
            "capped, not reset: {gaps:?}"
        );
    }

    #[test]
    fn the_restart_policy_doubles_up_to_its_cap() {
        let mut policy = crate::retry::restart_policy(QUICK.initial, QUICK.max);
        let delays: Vec<Duration> = (0..10).map(|_| policy.next_backoff().unwrap()).collect();
        assert!(delays[0] <= Duration::from_millis(13), "{delays:?}");
        assert!(delays[3] >= Duration::from_millis(56), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= QUICK.max.mul_f64(1.3)),
            "{delays:?}"
        );
        policy.reset();
        assert!(policy.next_backoff().unwrap() <= Duration::from_millis(13));
    }

    #[tokio::test]
    async fn a_task_that_keeps_failing_makes_the_service_unhealthy_and_unready() {
        let (supervisor, starts) = supervisor();
        let seen = Arc::clone(&starts);
        supervisor.spawn("crashes", move |_| {
            seen.lock().unwrap().push(Instant::now());
            async { panic!("always") }
        });
        let health = supervisor.health().clone();
        assert!(health.snapshot().liveness().healthy());
        until("liveness failing", || {
            !health.snapshot().liveness().healthy()
        })
        .await;
        let liveness = health.snapshot().liveness();
        assert!(
            liveness.reasons[0].contains("task crashes was restarted")
                && liveness.reasons[0].contains("panicked: always"),
            "{liveness:?}"
        );
        assert!(starts.lock().unwrap().len() > RESTARTS_TOLERATED);
        supervisor.stop_token().cancel();
        supervisor.stopped().await;
    }

    #[tokio::test]
    async fn a_task_down_makes_the_service_unready_until_it_runs_again() {
        let supervisor = Supervisor::unattended().with_restart(Restart {
            initial: Duration::from_millis(300),
            ..QUICK
        });
        let runs = Arc::new(Mutex::new(0));
        let seen = Arc::clone(&runs);
        supervisor.spawn("once", move |stop| {
            *seen.lock().unwrap() += 1;
            let first = *seen.lock().unwrap() == 1;
            async move {
                if !first {
                    stop.cancelled().await;
                }
            }
        });
        let health = supervisor.health().clone();
        let ready = move || {
            health
                .snapshot()
                .readiness(true, LedgerCheck::Commits)
                .ready()
        };
        until("the task down", || !ready()).await;
        until("the task running again", || {
            *runs.lock().unwrap() == 2 && ready()
        })
        .await;
        supervisor.stop_token().cancel();
        supervisor.stopped().await;
    }

    #[tokio::test]
    async fn shutdown_stops_every_task_without_starting_any_again() {
        let supervisor = Supervisor::unattended().with_restart(Restart {
            initial: Duration::from_secs(30),
            ..QUICK
        });
        let starts = Arc::new(Mutex::new(Vec::new()));
        for name in ["waits", "fails"] {
            let seen = Arc::clone(&starts);
            supervisor.spawn(name, move |stop| {
                seen.lock().unwrap().push(name);
                async move {
                    if name == "waits" {
                        stop.cancelled().await;
                    }
                }
            });
        }
        let health = supervisor.health().clone();
        until("the failing task waiting to start again", || {
            health.snapshot().tasks.get("fails").is_some_and(|t| !t.up)
        })
        .await;
        supervisor.stop_token().cancel();
        tokio::time::timeout(Duration::from_secs(5), supervisor.stopped())
            .await
            .expect("stopped at once, not after the 30 s backoff");
        let mut starts = starts.lock().unwrap().clone();
        starts.sort();
        assert_eq!(starts, ["fails", "waits"], "each started once");
        assert!(
            health.snapshot().tasks.is_empty(),
            "stopped tasks are forgotten"
        );
    }

    #[tokio::test]
    async fn a_scope_outlives_its_parents_shutdown_and_stops_with_its_own_token() {
        let parent = Supervisor::unattended().with_restart(QUICK);
        let scope = parent.scope();
        scope.spawn("ledger", |stop| async move { stop.cancelled().await });
        parent.stop_token().cancel();
        parent.stopped().await;
        assert!(parent.health().snapshot().tasks.contains_key("ledger"));
        scope.stop_token().cancel();
        scope.stopped().await;
        assert!(parent.health().snapshot().tasks.is_empty());
    }
}
