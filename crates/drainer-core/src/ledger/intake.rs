//! Group commit of handoffs: the requests that arrive while a commit is in flight are recorded
//! together, in one transaction, and each is answered once that transaction is committed.
//!
//! One commit costs a disk flush (SQLite's WAL, PostgreSQL's WAL alike); at hundreds of
//! handoffs a second, one flush per request queues requests behind each other's flushes. Here a
//! single task owns intake: it takes the first waiting request, everything queued behind it (up
//! to [`MAX_BATCH`]), records them in one transaction and answers them all, so a request waits
//! for at most the commit in flight plus its own (on PostgreSQL, a few batches are in flight).
//! A batch that fails is recorded again request by request, so one request's error is never
//! another's. The task runs under the service's supervisor: if it ends, the queue waits for
//! it to be started again (a request whose batch was lost is answered with a retryable error).

use super::drains::Drain;
use super::{Ledger, NewDrain, Pool, Result, query_error};
use crate::supervisor::Supervisor;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The most handoff requests recorded in one transaction.
const MAX_BATCH: usize = 256;
/// Requests waiting for the intake task before callers wait to queue.
const QUEUE: usize = 4096;
/// Batches being recorded at once on PostgreSQL.
const BATCHES_AT_ONCE_POSTGRES: usize = 3;

/// What one request recorded: each drain, and whether it is new.
pub(super) type Recorded = Vec<(Drain, bool)>;

/// One queued handoff request and where its answer goes.
struct Request {
    drains: Vec<NewDrain>,
    answer: oneshot::Sender<Result<Recorded>>,
}

/// The sending side of the intake task; dropping every copy stops the task (and the other
/// tasks of `scope`).
#[derive(Debug, Clone)]
pub(super) struct Intake {
    /// Cancels the scope's token with the last copy; declared first so that it is dropped
    /// before the last sender closes the queue (the task then stops, rather than ends).
    _scope: Arc<DropGuard>,
    queue: mpsc::Sender<Request>,
}

impl Intake {
    /// Starts the intake task for `ledger`, which must not itself send to an intake (it is the
    /// task's own, direct handle), under `scope`, whose token the last copy cancels.
    pub(super) fn start(ledger: Ledger, scope: &Supervisor) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        let requests = Arc::new(Mutex::new(requests));
        scope.spawn("ledger-intake", move |stop| {
            run(ledger.clone(), Arc::clone(&requests), stop)
        });
        Self {
            _scope: Arc::new(scope.stop_token().clone().drop_guard()),
            queue,
        }
    }

    /// Records `drains` in the next group commit.
    pub(super) async fn record(&self, drains: Vec<NewDrain>) -> Result<Recorded> {
        // The task only goes away with the ledger, or if recording panicked: a retryable error.
        let gone = || Err(query_error("record handoff")(sqlx::Error::WorkerCrashed));
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Request { drains, answer }).await.is_err() {
            return gone();
        }
        answered.await.unwrap_or_else(|_| gone())
    }
}

async fn run(
    ledger: Ledger,
    requests: Arc<Mutex<mpsc::Receiver<Request>>>,
    stop: CancellationToken,
) {
    // One run at a time takes requests; a run that ended left the queue to the next.
    let mut requests = requests.lock().await;
    // SQLite has one writer: a second batch would only wait for the first. PostgreSQL commits
    // several at once; two batches that name the same volume meet at its unique index, and the
    // later one is recorded again (it then finds the drain the earlier one created).
    let at_once = match ledger.pool {
        Pool::Sqlite(_) => 1,
        Pool::Postgres(_) => BATCHES_AT_ONCE_POSTGRES,
    };
    let slots = Arc::new(Semaphore::new(at_once));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("never closed");
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let received = tokio::select! {
            () = stop.cancelled() => return,
            n = requests.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if received == 0 {
            return;
        }
        let ledger = ledger.clone();
        tokio::spawn(async move {
            record_batch(&ledger, batch).await;
            drop(slot);
        });
    }
}

/// Records `batch` in one transaction and answers every request; if that fails, records each
/// request on its own.
async fn record_batch(ledger: &Ledger, batch: Vec<Request>) {
    let (groups, answers): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|r| (r.drains, r.answer)).unzip();
    if groups.len() > 1 {
        let started = std::time::Instant::now();
        if let Ok(recorded) = ledger.request_drain_groups(groups.clone()).await {
            tracing::debug!(
                requests = groups.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "group commit"
            );
            for (answer, one) in answers.into_iter().zip(recorded) {
                let _ = answer.send(Ok(one));
            }
            return;
        }
        tracing::debug!(
            requests = groups.len(),
            "group commit failed; recording each request on its own"
        );
    }
    for (answer, drains) in answers.into_iter().zip(groups) {
        let one = ledger
            .request_drain_groups(vec![drains])
            .await
            .map(|mut all| all.pop().expect("one answer per group"));
        let _ = answer.send(one);
    }
}
