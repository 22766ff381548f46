//! The scheduler: claims queued drains with a lease, runs up to N at once, keeps each lease
//! alive while its copy runs, and records how each attempt ended.
//!
//! It decides nothing about *whether* to copy (the lifecycle and the ledger do) and knows
//! nothing of how a copy is made (an [`Executor`] does: in local mode the snapshot engine
//! in-process, in a cluster a mover Job). On shutdown it stops claiming, releases its drains
//! (the copy has checkpointed its progress in the ledger), and returns within the grace period.

use crate::metrics::{Metrics, ReasonLabel};
use crate::notify::{Milestone, Notifier};
use drainer_core::ledger::{AttemptOutcome, Drain, Ledger, RunRecord};
use drainer_core::lifecycle::{self, AfterFailure};
use drainer_core::snapshot::{self, CopyOptions, Progress, SnapshotSummary};
use drainer_core::store::Store;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long the scheduler waits before looking for work again when there was none.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Makes the copy of one drain.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Copies the drain's volume into a snapshot, reporting progress.
    async fn execute(
        &self,
        drain: &Drain,
        progress: Arc<Progress>,
    ) -> snapshot::Result<SnapshotSummary>;
}

/// Local mode: volume `NS/PVC` is the directory `ROOT/NS/PVC`, copied by the engine in-process.
pub(crate) struct LocalExecutor {
    /// The volume root.
    pub volume_root: PathBuf,
    /// Where snapshots go.
    pub store: Store,
    /// Where progress is recorded.
    pub ledger: Ledger,
    /// Engine tuning.
    pub options: CopyOptions,
}

#[async_trait::async_trait]
impl Executor for LocalExecutor {
    async fn execute(
        &self,
        drain: &Drain,
        progress: Arc<Progress>,
    ) -> snapshot::Result<SnapshotSummary> {
        let volume = drain.volume();
        let source = self.volume_root.join(&volume.namespace).join(&volume.name);
        if matches!(std::fs::symlink_metadata(&source), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            return Err(snapshot::Error::Gone {
                volume: volume.to_string(),
                reason: format!("its directory {} does not exist", source.display()),
            });
        }
        let options = CopyOptions {
            origin: Some(drain.origin()),
            ..self.options.clone()
        };
        let summary = snapshot::copy(
            &source,
            &self.store,
            &volume,
            &self.ledger,
            &options,
            progress,
        )
        .await?;
        Ok(summary.snapshot)
    }
}

/// Copies are made by movers outside this process (`drainer mover`, run by hand, by a script or
/// as a Kubernetes Job): the attempt waits until the volume's copy run, begun by the mover
/// through the API, completes.
pub struct ExternalMovers {
    /// The ledger the movers' progress goes to.
    pub ledger: Ledger,
    /// The store the movers write through this drainer.
    pub store: Store,
    /// How long an attempt waits for its mover.
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl Executor for ExternalMovers {
    /// Waits for the mover's run with one read of the ledger per look (the run's state and
    /// progress together): at once when a run finishes through this replica, else every
    /// [`MOVER_PROGRESS_EVERY`] (a run finished through another replica, the progress).
    async fn execute(
        &self,
        drain: &Drain,
        progress: Arc<Progress>,
    ) -> snapshot::Result<SnapshotSummary> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut finished = self.ledger.runs_finished();
        loop {
            finished.borrow_and_update();
            if let Some(summary) = self.look(drain, &progress).await? {
                return Ok(summary);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(snapshot::Error::Executor {
                    drain: drain.id.clone(),
                    reason: format!("no mover finished within {} s", self.timeout.as_secs()),
                    transient: true,
                });
            }
            tokio::select! {
                woken = finished.changed() => {
                    if woken.is_err() {
                        tokio::time::sleep(MOVER_PROGRESS_EVERY.min(deadline - now)).await;
                    }
                }
                () = tokio::time::sleep(MOVER_PROGRESS_EVERY.min(deadline - now)) => {}
            }
        }
    }
}

impl ExternalMovers {
    /// One look at drain `drain`'s newest run: its snapshot if it has completed into this
    /// store, else its progress into `progress`.
    async fn look(
        &self,
        drain: &Drain,
        progress: &Progress,
    ) -> snapshot::Result<Option<SnapshotSummary>> {
        let found = self
            .ledger
            .follow_run(&drain.id)
            .await
            .map_err(|e| snapshot::Error::Checkpoint(e.into()))?;
        let Some((run, copied)) = found else {
            return Ok(None);
        };
        match run.state {
            drainer_core::ledger::RunState::Running => {
                show_progress(progress, copied);
                Ok(None)
            }
            drainer_core::ledger::RunState::Completed if run.store_url == self.store.url() => {
                completed_summary(&self.store, drain, &run).await.map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// How often the progress of a copy made by a mover is read from the ledger (and, for
/// [`ExternalMovers`], how late at most a run finished through another replica is seen).
pub(crate) const MOVER_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Puts what a mover's run has recorded into `progress`, against the totals once the mover
/// has counted its volume and said so.
fn show_progress(progress: &Progress, copied: drainer_core::ledger::CopiedSoFar) {
    progress.set_done(copied.files, copied.bytes);
    if let Some((files, bytes)) = copied.totals {
        progress.set_totals(files, bytes);
    }
}

/// Runs `work` (an attempt whose copy a mover makes) while reading what the mover's run of
/// drain `drain` has recorded into `progress` every [`MOVER_PROGRESS_EVERY`], so that the API
/// and the Drain objects show a mover's copy as they show one made in this process, against
/// the totals once the mover has counted its volume and said so.
pub async fn following_mover<T>(
    ledger: &Ledger,
    drain: &str,
    progress: &Progress,
    work: impl std::future::Future<Output = T>,
) -> T {
    let follow = async {
        loop {
            match ledger.copied_so_far(drain).await {
                Ok(Some(copied)) => show_progress(progress, copied),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the mover's progress"),
            }
            tokio::time::sleep(MOVER_PROGRESS_EVERY).await;
        }
    };
    tokio::select! {
        out = work => out,
        () = follow => unreachable!("the progress is followed until the copy ends"),
    }
}

/// The snapshot that drain `drain`'s mover completed in `store`, if its copy run has completed
/// (the mover API records the drain on the run: no comparison of clocks across replicas); an
/// error if that snapshot is stored but incomplete (files it could not read). Shared by every
/// executor whose copies are made by movers.
pub async fn completed_copy(
    ledger: &Ledger,
    store: &Store,
    drain: &Drain,
) -> snapshot::Result<Option<SnapshotSummary>> {
    let done = ledger
        .run_of_drain(&drain.id)
        .await
        .map_err(|e| snapshot::Error::Checkpoint(e.into()))?
        .filter(|r| {
            r.state == drainer_core::ledger::RunState::Completed && r.store_url == store.url()
        });
    match done {
        Some(run) => completed_summary(store, drain, &run).await.map(Some),
        None => Ok(None),
    }
}

/// The summary of the snapshot that `run`, completed for drain `drain`, stored in `store`;
/// an error if that snapshot is incomplete (files it could not read).
async fn completed_summary(
    store: &Store,
    drain: &Drain,
    run: &RunRecord,
) -> snapshot::Result<SnapshotSummary> {
    let id: snapshot::SnapshotId =
        run.snapshot
            .parse()
            .map_err(|reason| snapshot::Error::Executor {
                drain: drain.id.clone(),
                reason,
                transient: true,
            })?;
    let summary = snapshot::resolve(
        store,
        &drain.volume(),
        &snapshot::SnapshotSelector::Id(id.clone()),
    )
    .await?;
    if summary.unreadable > 0 {
        let named = snapshot::catalog::unreadable_files(
            store,
            &drain.volume(),
            &id,
            snapshot::UNREADABLE_NAMED,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, snapshot = %summary.snapshot, "cannot read which files the snapshot lists as unreadable");
            Vec::new()
        });
        return Err(snapshot::Error::Executor {
            drain: drain.id.clone(),
            reason: format!(
                "snapshot {} is stored but incomplete: {}",
                summary.snapshot,
                snapshot::unreadable_list(summary.unreadable, &named)
            ),
            transient: true,
        });
    }
    Ok(summary)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The drains this replica is running, by drain id: their live progress, and the token that
/// stops an attempt at once when its drain is changed by hand (cancelled or abandoned).
pub type ProgressBoard = Arc<Mutex<HashMap<String, Running>>>;

/// One running attempt on the [`ProgressBoard`].
#[derive(Clone)]
pub struct Running {
    /// Its live progress.
    pub progress: Arc<Progress>,
    /// Cancelled to stop the attempt now (its drain no longer needs it); without it the
    /// attempt notices within [`watch_every`], and a copy about to end could commit a
    /// snapshot of a cancelled drain meanwhile.
    pub stop: CancellationToken,
}

/// The scheduler's settings and collaborators.
pub(crate) struct Scheduler {
    /// The ledger.
    pub ledger: Ledger,
    /// How copies are made.
    pub executor: Arc<dyn Executor>,
    /// This replica's name in leases.
    pub owner: String,
    /// Lease length.
    pub lease: Duration,
    /// Drains run at once.
    pub concurrency: usize,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live progress, for the API.
    pub board: ProgressBoard,
    /// Hears when copies start and end.
    pub notifier: Arc<dyn Notifier>,
    /// The longest wait between two attempts of a drain (`--max-retry-delay`).
    pub retry_cap: Duration,
}

impl Scheduler {
    /// Claims and runs drains until `shutdown` is cancelled, then releases what it holds
    /// (waiting at most `grace`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        // The drains this replica is running: never claimed again while they run.
        let active: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
            };
            while running.try_join_next().is_some() {}
            let busy: Vec<String> = lock(&active).iter().cloned().collect();
            match self
                .ledger
                .claim_drain_except(&self.owner, self.lease, &busy)
                .await
            {
                Ok(Some(drain)) => {
                    let span = tracing::info_span!("drain", drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc);
                    let me = Arc::clone(&self);
                    let stop = shutdown.clone();
                    let active = Arc::clone(&active);
                    lock(&active).insert(drain.id.clone());
                    running.spawn(
                        async move {
                            let id = drain.id.clone();
                            me.attempt(drain, stop).await;
                            lock(&active).remove(&id);
                            drop(slot)
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    drop(slot);
                    sleep_or_cancel(IDLE_POLL, &shutdown).await;
                }
                Err(err) => {
                    drop(slot);
                    tracing::warn!(error = %err, "cannot claim work; trying again");
                    sleep_or_cancel(IDLE_POLL * 4, &shutdown).await;
                }
            }
        }
        if tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                "grace period over; abandoning in-flight drains (their leases will expire)"
            );
            running.abort_all();
        }
    }

    /// One attempt of one drain, from claim to the recorded outcome. The copy runs in a task
    /// of its own: if it panics, the attempt fails (and is retried like any other failure);
    /// if the lease is lost (taken over, or the drain cancelled) it stops at once when that
    /// happened through this replica, else within [`watch_every`].
    async fn attempt(&self, drain: Drain, shutdown: CancellationToken) {
        tracing::info!(attempt = drain.attempts, "copy starting");
        let started = std::time::Instant::now();
        let attempt = drain.attempts;
        self.notifier
            .notify(&drain, &Milestone::CopyStarted { attempt })
            .await;
        let progress = Arc::new(Progress::default());
        let lost = CancellationToken::new();
        if let Ok(mut board) = self.board.lock() {
            let running = Running {
                progress: Arc::clone(&progress),
                stop: lost.clone(),
            };
            board.insert(drain.id.clone(), running);
        }
        let keeper = AbortOnDrop(tokio::spawn(keep_lease(
            self.ledger.clone(),
            drain.id.clone(),
            self.owner.clone(),
            self.lease,
            lost.clone(),
        )));
        let copy = {
            let (executor, drain, progress) = (
                Arc::clone(&self.executor),
                drain.clone(),
                Arc::clone(&progress),
            );
            AbortOnDrop(tokio::spawn(
                async move { executor.execute(&drain, progress).await }.in_current_span(),
            ))
        };
        let outcome = tokio::select! {
            ended = copy.wait() => Some(self.outcome(&drain, ended, &progress, started)),
            () = shutdown.cancelled() => Some((AttemptOutcome::Released, None)),
            () = lost.cancelled() => None,
        };
        drop(keeper);
        if let Ok(mut board) = self.board.lock() {
            board.remove(&drain.id);
        }
        let Some((outcome, milestone)) = outcome else {
            tracing::warn!("lease lost (taken over or cancelled); stopped this attempt");
            return;
        };
        match self
            .ledger
            .end_attempt(&drain.id, &self.owner, &outcome)
            .await
        {
            Ok(true) => {
                tracing::info!(outcome = ?outcome, "attempt ended");
                if let Some(milestone) = milestone {
                    self.notifier.notify(&drain, &milestone).await;
                }
            }
            Ok(false) => tracing::warn!(
                "lease lost before the outcome was recorded; the drain is someone else's now"
            ),
            Err(err) => {
                tracing::error!(error = %err, "cannot record the outcome; the lease will expire and the drain be retried")
            }
        }
    }

    /// How an attempt ended, and the milestone to tell of it.
    fn outcome(
        &self,
        drain: &Drain,
        ended: Result<snapshot::Result<SnapshotSummary>, tokio::task::JoinError>,
        progress: &Progress,
        started: std::time::Instant,
    ) -> (AttemptOutcome, Option<Milestone>) {
        let result = ended.unwrap_or_else(|panicked| {
            tracing::error!(error = %panicked, "the copy panicked; ending the attempt");
            Err(snapshot::Error::Executor {
                drain: drain.id.clone(),
                reason: format!("the copy stopped unexpectedly ({panicked}); it is retried"),
                transient: true,
            })
        });
        self.metrics.bytes_copied.inc_by(
            progress
                .bytes_uploaded
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        match result {
            Ok(summary) => {
                self.metrics.files_copied.inc_by(summary.files);
                let waited_ms = (drainer_core::ledger::now_ms() - drain.created_ms).max(0);
                self.metrics
                    .drain_seconds
                    .observe(waited_ms as f64 / 1000.0);
                let milestone = Milestone::Completed {
                    snapshot: summary.snapshot.clone(),
                    files: summary.files,
                    bytes: summary.bytes,
                    seconds: started.elapsed().as_secs_f64(),
                };
                let outcome = AttemptOutcome::Completed {
                    snapshot: summary.snapshot,
                };
                (outcome, Some(milestone))
            }
            Err(err) => {
                let after = lifecycle::after_failure(
                    drain.attempts,
                    drain.max_attempts,
                    err.failure_kind(),
                    self.retry_cap,
                );
                let reason = failure_class(&err);
                self.metrics
                    .failures
                    .get_or_create(&ReasonLabel {
                        reason: reason.into(),
                    })
                    .inc();
                if matches!(after, AfterFailure::RetryAfter(_)) {
                    self.metrics.retries.inc();
                }
                tracing::warn!(error = %err, reason, ?after, "attempt failed");
                let why = err.to_string();
                let milestone = match after {
                    AfterFailure::RetryAfter(_) => Milestone::Failed {
                        why,
                        retrying: true,
                    },
                    AfterFailure::Failing(next) => Milestone::Failing { why, next },
                    AfterFailure::GiveUp => Milestone::Failed {
                        why,
                        retrying: false,
                    },
                };
                let outcome = AttemptOutcome::Failed {
                    error: err.to_string(),
                    after,
                };
                (outcome, Some(milestone))
            }
        }
    }
}

/// The class of an error, as a metric label.
fn failure_class(err: &snapshot::Error) -> &'static str {
    match err {
        snapshot::Error::Store(_) => "store",
        snapshot::Error::Checkpoint(_) => "ledger",
        snapshot::Error::Source { .. } | snapshot::Error::Read { .. } => "source",
        snapshot::Error::Gone { .. } => "gone",
        snapshot::Error::Changed { .. } => "changing_file",
        _ => "other",
    }
}

/// How often at most and at least a running attempt checks that its drain is still its own.
/// A change by hand through this replica stops the attempt at once (its [`Running::stop`]);
/// the check is for changes through another replica (a mover's requests are refused as soon
/// as its drain no longer copies, so its copy stops at its next request either way) and for a
/// takeover after an expired lease.
const WATCH_BETWEEN: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));

/// How often an attempt holding a lease of `lease` checks its drain: a sixth of the lease
/// (5 s for the default 30 s), within [`WATCH_BETWEEN`]; it renews every third, so a
/// renewal late by one check still leaves half the lease.
fn watch_every(lease: Duration) -> Duration {
    (lease / 6).clamp(WATCH_BETWEEN.0, WATCH_BETWEEN.1)
}

/// Keeps the attempt's lease: checks every [`watch_every`] that the drain is still copying
/// under this owner, and renews the lease every third of its length; cancels `lost` as soon
/// as the drain is no longer held (cancelled, or taken over after an expiry).
async fn keep_lease(
    ledger: Ledger,
    id: String,
    owner: String,
    lease: Duration,
    lost: CancellationToken,
) {
    let check_every = watch_every(lease);
    let renew_every = (lease / 3).max(check_every);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(check_every).await;
        let held = if renewed.elapsed() + check_every > renew_every {
            let held = ledger.renew_lease(&id, &owner, lease).await;
            if matches!(held, Ok(true)) {
                renewed = tokio::time::Instant::now();
            }
            held
        } else {
            ledger.drain(&id).await.map(|d| {
                d.is_some_and(|d| {
                    d.state == drainer_core::lifecycle::DrainState::Copying
                        && d.lease_owner.as_deref() == Some(owner.as_str())
                })
            })
        };
        match held {
            Ok(true) => {}
            Ok(false) => return lost.cancel(),
            Err(err) => {
                tracing::warn!(drain = %id, error = %err, "cannot check the lease; trying again")
            }
        }
    }
}

/// A task aborted when its handle is dropped, so no path leaves it running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task's end (a panic is an `Err`).
    async fn wait(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sleep_or_cancel(duration: Duration, token: &CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drainer_core::ledger::NewDrain;
    use drainer_core::lifecycle::DrainState;

    /// An executor whose copy panics, as a bug in the engine would.
    struct Panics;

    #[async_trait::async_trait]
    impl Executor for Panics {
        async fn execute(
            &self,
            _drain: &Drain,
            _progress: Arc<Progress>,
        ) -> snapshot::Result<SnapshotSummary> {
            panic!("offset 7 must be a chunk boundary");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_copy_ends_its_attempt_and_releases_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(None, dir.path()).await.unwrap();
        let new = NewDrain {
            volume: "shop/data-web-0".parse().unwrap(),
            pod: None,
            reason: "test".into(),
            max_attempts: 1,
            wait_for_release: false,
            requested_by: None,
            facts: Default::default(),
        };
        let id = ledger.request_drains(&[new]).await.unwrap()[0].0.id.clone();
        let scheduler = Arc::new(Scheduler {
            ledger: ledger.clone(),
            executor: Arc::new(Panics),
            owner: "replica".into(),
            lease: Duration::from_secs(60),
            concurrency: 1,
            metrics: Arc::default(),
            board: ProgressBoard::default(),
            notifier: Arc::new(crate::notify::Log),
            retry_cap: Duration::from_secs(600),
        });
        let stop = CancellationToken::new();
        let running =
            tokio::spawn(Arc::clone(&scheduler).run(stop.clone(), Duration::from_secs(5)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let drain = loop {
            let drain = ledger.drain(&id).await.unwrap().unwrap();
            if drain.state != DrainState::Queued && drain.state != DrainState::Copying {
                break drain;
            }
            assert!(tokio::time::Instant::now() < deadline, "still {drain:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.cancel();
        running.await.unwrap();
        // Its one attempt used up: failing (retried slowly), never given up.
        assert_eq!(drain.state, DrainState::Failing, "{drain:?}");
        assert!(
            drain.not_before_ms >= drain.updated_ms + 59_000,
            "the next attempt waits at least a minute: {drain:?}"
        );
        assert!(drain.lease_owner.is_none(), "{drain:?}");
        let error = drain.last_error.unwrap_or_default();
        assert!(error.contains("stopped unexpectedly"), "{error}");
    }
}
