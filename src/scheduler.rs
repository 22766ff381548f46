//! The scheduler: claims queued drains with a lease, runs up to N at once, keeps each lease
//! alive while its copy runs, and records how each attempt ended.
//!
//! It decides nothing about *whether* to copy (the lifecycle and the ledger do) and knows
//! nothing of how a copy is made (an [`Executor`] does: in local mode the snapshot engine
//! in-process, in a cluster a mover Job). On shutdown it stops claiming, releases its drains
//! (the copy has checkpointed its progress in the ledger), and returns within the grace period.

use crate::ledger::{AttemptOutcome, Drain, Ledger};
use crate::lifecycle::{self, AfterFailure};
use crate::metrics::{Metrics, ReasonLabel};
use crate::snapshot::{self, CopyOptions, Progress, SnapshotSummary};
use crate::store::Store;
use std::collections::HashMap;
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
pub struct LocalExecutor {
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
        let summary = snapshot::copy(
            &source,
            &self.store,
            &volume,
            &self.ledger,
            &self.options,
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
    async fn execute(
        &self,
        drain: &Drain,
        _progress: Arc<Progress>,
    ) -> snapshot::Result<SnapshotSummary> {
        let volume = drain.volume();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            // The run the drain's mover began (the mover API records the drain on it): no
            // comparison of clocks across replicas.
            let done = self
                .ledger
                .run_of_drain(&drain.id)
                .await?
                .filter(|r| r.state == "completed" && r.store_url == self.store.url());
            if let Some(run) = done {
                let id = run
                    .snapshot
                    .parse()
                    .map_err(|reason| snapshot::Error::Mover {
                        drain: drain.id.clone(),
                        reason,
                    })?;
                let summary =
                    snapshot::resolve(&self.store, &volume, &snapshot::SnapshotSelector::Id(id))
                        .await?;
                if summary.unreadable > 0 {
                    return Err(snapshot::Error::Mover {
                        drain: drain.id.clone(),
                        reason: format!(
                            "snapshot {} is stored but incomplete: {} files could not be read (listed in its manifest)",
                            summary.snapshot, summary.unreadable
                        ),
                    });
                }
                return Ok(summary);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(snapshot::Error::Mover {
                    drain: drain.id.clone(),
                    reason: format!("no mover finished within {} s", self.timeout.as_secs()),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Live progress of the drains this replica is running, by drain id.
pub type ProgressBoard = Arc<Mutex<HashMap<String, Arc<Progress>>>>;

/// The scheduler's settings and collaborators.
pub struct Scheduler {
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
}

impl Scheduler {
    /// Claims and runs drains until `shutdown` is cancelled, then releases what it holds
    /// (waiting at most `grace`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        loop {
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
            };
            while running.try_join_next().is_some() {}
            match self.ledger.claim_drain(&self.owner, self.lease).await {
                Ok(Some(drain)) => {
                    let span = tracing::info_span!("drain", drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc);
                    let me = Arc::clone(&self);
                    let stop = shutdown.clone();
                    running.spawn(
                        async move {
                            me.attempt(drain, stop).await;
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

    /// One attempt of one drain, from claim to the recorded outcome.
    async fn attempt(&self, drain: Drain, shutdown: CancellationToken) {
        tracing::info!(attempt = drain.attempts, "copy starting");
        let progress = Arc::new(Progress::default());
        self.board
            .lock()
            .expect("board lock")
            .insert(drain.id.clone(), Arc::clone(&progress));
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_lease(
            self.ledger.clone(),
            drain.id.clone(),
            self.owner.clone(),
            self.lease,
            lost.clone(),
        ));
        let outcome = tokio::select! {
            result = self.executor.execute(&drain, Arc::clone(&progress)) => Some(self.outcome(&drain, result, &progress)),
            () = shutdown.cancelled() => Some(AttemptOutcome::Released),
            () = lost.cancelled() => None,
        };
        keeper.abort();
        self.board.lock().expect("board lock").remove(&drain.id);
        let Some(outcome) = outcome else {
            tracing::warn!("lease lost (taken over or cancelled); stopped this attempt");
            return;
        };
        match self
            .ledger
            .end_attempt(&drain.id, &self.owner, &outcome)
            .await
        {
            Ok(true) => tracing::info!(outcome = ?outcome, "attempt ended"),
            Ok(false) => tracing::warn!(
                "lease lost before the outcome was recorded; the drain is someone else's now"
            ),
            Err(err) => {
                tracing::error!(error = %err, "cannot record the outcome; the lease will expire and the drain be retried")
            }
        }
    }

    fn outcome(
        &self,
        drain: &Drain,
        result: snapshot::Result<SnapshotSummary>,
        progress: &Progress,
    ) -> AttemptOutcome {
        self.metrics.bytes_copied.inc_by(
            progress
                .bytes_uploaded
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        match result {
            Ok(summary) => {
                self.metrics.files_copied.inc_by(summary.files);
                AttemptOutcome::Completed {
                    snapshot: summary.snapshot,
                }
            }
            Err(err) => {
                let after = lifecycle::after_failure(
                    drain.attempts,
                    drain.max_attempts,
                    err.is_transient(),
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
                AttemptOutcome::Failed {
                    error: err.to_string(),
                    after,
                }
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
        snapshot::Error::Changed { .. } => "changing_file",
        _ => "other",
    }
}

/// Renews the lease every third of its length; cancels `lost` when it is no longer held.
async fn keep_lease(
    ledger: Ledger,
    id: String,
    owner: String,
    lease: Duration,
    lost: CancellationToken,
) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match ledger.renew_lease(&id, &owner, lease).await {
            Ok(true) => {}
            Ok(false) => return lost.cancel(),
            Err(err) => {
                tracing::warn!(drain = %id, error = %err, "cannot renew lease; trying again")
            }
        }
    }
}

async fn sleep_or_cancel(duration: Duration, token: &CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}
