//! The ledger: drainer's durable record of work, in SQL through sqlx.
//!
//! SQLite (a file in the data directory) is the embedded default; PostgreSQL serves several
//! replicas. Both run the same queries, written once with the `on_pool!` macro; migrations live in
//! `migrations/sqlite` and `migrations/postgres`, are embedded, and run at start-up. Every
//! write that the rest of drainer relies on is committed before it is acknowledged, and flushed
//! to disk unless it only records work that is redone if lost (`Urgency::Redoable`). This
//! module owns SQL; it never touches files or the object store.
//!
//! A platform mode keeps the query code of its own tables (Kubernetes mode: what sweeps
//! remember) beside the rest of that mode, through a narrow seam: the pool
//! ([`Ledger::pool`], [`on_ledger_pool!`](crate::on_ledger_pool)), [`Ledger::write`],
//! [`Dialect`], [`query_error`] and [`BULK_ROWS`]. Their schema stays in the one migration
//! stream here: one schema history per database.

mod drains;
mod earlier_reads;
mod facts;
mod intake;
mod reclaims;
mod relay;
mod relayed;
mod retention;
mod runs;
mod sweeps;

pub use drains::BULK_ROWS;

pub use drains::{
    AttemptOutcome, Drain, DrainEvent, DrainFilter, NewDrain, PageCursor, Refused, StateSummary,
    Transition, Writer,
};
pub use earlier_reads::EarlierRead;
pub use facts::Facts;
pub use reclaims::Reclaim;
pub use relay::{RelayPart, RelayRecord};
pub use relayed::RelayedObject;
pub use retention::PruneRecord;
pub use runs::{CopiedSoFar, RUN_LEASE, RunCheckpoint, RunRecord, RunState, process_owner};
pub use sweeps::ClaimKey;

use crate::supervisor::Supervisor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgPool, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Timeout for taking a connection from the pool: a PostgreSQL that is down shows as `503`
/// after this long.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// SQLite cannot be down, only busy (a copy holds a reading connection for its whole length,
/// writers queue behind each other); give it longer.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or opened.
    #[error("cannot open ledger {url}: {source}")]
    Connect {
        /// The database URL, without password.
        url: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("ledger {op} failed: {source}")]
    Query {
        /// What was being done.
        op: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Another live copy holds the volume's copy run.
    #[error(
        "volume {volume} is already being copied into {store} by {holder} (run {run}, its lease runs until {lease_until}): one copy of a volume at a time; run again when it has ended"
    )]
    RunBusy {
        /// `namespace/pvc`.
        volume: String,
        /// The store URL.
        store: String,
        /// The run.
        run: String,
        /// Who holds it.
        holder: String,
        /// Until when (RFC 3339), unless renewed.
        lease_until: String,
    },
    /// This copy no longer holds its run: its lease expired and another copy took it over.
    #[error("copy run {run} was taken over by {holder} (this copy's lease had expired); stopping")]
    RunLost {
        /// The run.
        run: String,
        /// Who holds it now, if anyone.
        holder: String,
    },
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying may succeed: lost connections, pool timeouts, busy or restarting
    /// databases, serialization failures, a full disk (space may come back).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { source, .. } | Error::Query { source, .. } => {
                is_transient_sqlx(source) || is_full_sqlx(source)
            }
            Error::RunBusy { .. } | Error::RunLost { .. } => true,
            Error::Migrate(_) | Error::DataDir { .. } => false,
        }
    }

    /// Whether the database's disk is full: nothing can be committed until space comes back.
    pub fn is_full(&self) -> bool {
        match self {
            Error::Connect { source, .. } | Error::Query { source, .. } => is_full_sqlx(source),
            Error::Migrate(_)
            | Error::DataDir { .. }
            | Error::RunBusy { .. }
            | Error::RunLost { .. } => false,
        }
    }
}

/// The engine's view of a ledger error: transient as the ledger says, and whether the run was
/// lost to another copy.
impl From<Error> for crate::snapshot::CheckpointError {
    fn from(e: Error) -> Self {
        let (transient, run_lost) = (e.is_transient(), matches!(e, Error::RunLost { .. }));
        Self {
            op: "ledger",
            transient,
            run_lost,
            source: Box::new(e),
        }
    }
}

/// SQLite's `SQLITE_FULL` (13, with extended codes), PostgreSQL's `disk_full` (53100).
fn is_full_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code == "53100" || matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(13))
        }
        sqlx::Error::Io(io) => io.raw_os_error() == Some(28), // ENOSPC
        _ => false,
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions, shutdown, serialization, deadlock.
            // SQLite: BUSY (5) and LOCKED (6), with extended codes.
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
                || matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6))
        }
        _ => false,
    }
}

/// Stores a lifecycle enum as its name (`as_str`/`FromStr`), the one mapping between the
/// enum and the text in the database, on every backend.
macro_rules! text_enum {
    ($ty:ty) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $ty
        where
            &'q str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&'q str as sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&'r str as sqlx::Decode<'r, DB>>::decode(value)?.parse()?)
            }
        }
    };
}

text_enum!(crate::lifecycle::DrainState);
text_enum!(crate::lifecycle::RunState);

/// Result alias for ledger operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection pool to one of the supported databases.
#[derive(Debug, Clone)]
pub enum Pool {
    /// The embedded SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL server, shared by replicas.
    Postgres(PgPool),
}

/// Runs the same code against whichever pool the ledger has; inside, `$db` names the
/// database type (for `QueryBuilder::<$db>`).
macro_rules! on_pool {
    ($ledger:expr, |$pool:ident, $db:ident| $body:expr) => {
        $crate::on_ledger_pool!($ledger, |$pool, $db| $body)
    };
}
pub(crate) use on_pool;

/// [`on_pool!`] for query code outside drainer-core (a platform mode's own tables): runs the
/// same code against whichever pool ledger `$ledger` has; inside, `$db` names the database
/// type. The code must keep to the two databases' common SQL.
#[macro_export]
macro_rules! on_ledger_pool {
    ($ledger:expr, |$pool:ident, $db:ident| $body:expr) => {
        match $ledger.pool() {
            $crate::ledger::Pool::Sqlite($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::ledger::Pool::Postgres($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}

/// How a write waits for its turn on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Urgency {
    /// Handoff intake: a client is waiting for the answer.
    Intake,
    /// Everything else that is acknowledged or that later writes rely on (drain changes asked
    /// through the API, a finished copy run): flushed to disk before the commit returns.
    Background,
    /// Work that is redone if it is lost (claims, leases, attempt outcomes, copy progress):
    /// on SQLite committed without waiting for the disk. It survives drainer's own death (the
    /// write-ahead log is in the kernel's cache); a power cut may lose the last of it, and
    /// then the work runs again. The next flushed commit makes it durable too.
    Redoable,
}

/// SQLite's writer locks. Its busy handler would sleep in steps of up to 100 ms while another
/// writer of this process holds the database lock, so writers queue here instead; background
/// writers first queue among themselves, so intake is never behind more than one of them.
#[derive(Debug, Default)]
struct Writers {
    writer: Arc<tokio::sync::Mutex<()>>,
    background: tokio::sync::Mutex<()>,
    /// The same database with commits that do not wait for the disk, for [`Urgency::Redoable`].
    relaxed: Option<SqlitePool>,
    /// Set when a write failed because the disk is full; cleared only when the readiness
    /// probe ([`Ledger::can_commit`]) commits a handoff burst's worth again. Readiness fails
    /// while it is set.
    full: AtomicBool,
    /// Writes committed through [`Ledger::write_as`] since the ledger was opened.
    committed: AtomicU64,
    /// Counts the copy runs finished through this ledger handle's process (see
    /// [`Ledger::runs_finished`]).
    runs_finished: tokio::sync::watch::Sender<u64>,
}

/// The ledger: a migrated pool.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub(crate) pool: Pool,
    /// One writer at a time on SQLite.
    writers: Arc<Writers>,
    /// Group commit of handoffs; `None` in the intake task's own handle.
    intake: Option<intake::Intake>,
}

impl Ledger {
    /// Opens the ledger `url` (`postgres://…` or `sqlite://FILE`), or by default the SQLite
    /// file `drainer.db` in `data_dir`, and runs the migrations. Its background tasks (group
    /// commit of handoffs, SQLite's checkpoints) run under a supervisor of their own.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Self> {
        Self::open_under(url, data_dir, &Supervisor::unattended()).await
    }

    /// [`Ledger::open`], with the background tasks reported to `supervisor`'s health (in a
    /// scope of their own: they stop when the last handle of the ledger is dropped, not when
    /// the service starts shutting down).
    pub async fn open_under(
        url: Option<&str>,
        data_dir: &Path,
        supervisor: &Supervisor,
    ) -> Result<Self> {
        let ledger = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::open_postgres(url).await?
            }
            Some(url) => {
                let options =
                    SqliteConnectOptions::from_str(url).map_err(|source| Error::Connect {
                        url: url.to_owned(),
                        source,
                    })?;
                Self::open_sqlite(options, url).await?
            }
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
                    path: data_dir.to_owned(),
                    source,
                })?;
                let file = data_dir.join("drainer.db");
                let options = SqliteConnectOptions::new().filename(&file);
                Self::open_sqlite(options, &file.display().to_string()).await?
            }
        };
        ledger.migrate().await?;
        let scope = supervisor.scope();
        if let Pool::Sqlite(pool) = &ledger.pool {
            let pool = pool.clone();
            scope.spawn("ledger-checkpoint", move |stop| {
                checkpoint_wal(pool.clone(), stop)
            });
        }
        let intake = intake::Intake::start(ledger.clone(), &scope);
        Ok(Self {
            intake: Some(intake),
            ..ledger
        })
    }

    async fn open_sqlite(options: SqliteConnectOptions, url: &str) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .max_connections(8)
            .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|source| Error::Connect {
                url: url.to_owned(),
                source,
            })?;
        let relaxed = SqlitePoolOptions::new()
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .max_connections(2)
            .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(|source| Error::Connect {
                url: url.to_owned(),
                source,
            })?;
        let writers = Arc::new(Writers {
            relaxed: Some(relaxed),
            ..Writers::default()
        });
        Ok(Self {
            pool: Pool::Sqlite(pool),
            writers,
            intake: None,
        })
    }

    async fn open_postgres(url: &str) -> Result<Self> {
        let shown = redact(url);
        let options = PgConnectOptions::from_str(url).map_err(|source| Error::Connect {
            url: shown.clone(),
            source,
        })?;
        let pool = PgPoolOptions::new()
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| Error::Connect { url: shown, source })?;
        Ok(Self {
            pool: Pool::Postgres(pool),
            writers: Default::default(),
            intake: None,
        })
    }

    /// The pool, for a platform mode's own tables (see [`on_ledger_pool!`](crate::on_ledger_pool)).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs every migration, those of a platform mode's tables included: one stream per
    /// backend, because a database has one schema history (sqlx's migrator refuses a database
    /// where migrations it does not know were applied, so a second stream could not share it).
    async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Runs one write transaction to its end in a task of its own, so a caller that stops
    /// waiting (a client that hung up, a copy stopped at shutdown) can never leave a
    /// transaction half-done on a pooled connection; on SQLite, one at a time.
    pub async fn write<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(Ledger) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.write_as(Urgency::Background, op).await
    }

    /// [`Ledger::write`] for work that is redone if it is lost ([`Urgency::Redoable`]).
    pub(crate) async fn write_redoable<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(Ledger) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.write_as(Urgency::Redoable, op).await
    }

    /// [`Ledger::write`], where on SQLite an [`Urgency::Intake`] write waits for at most one
    /// background write: background writers queue for the writer lock one at a time.
    pub(crate) async fn write_as<T, F, Fut>(&self, urgency: Urgency, op: F) -> Result<T>
    where
        F: FnOnce(Ledger) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let ledger = self.clone();
        tokio::spawn(async move {
            let _one_writer = match ledger.pool {
                Pool::Sqlite(_) => {
                    let _background_turn = match urgency {
                        Urgency::Intake => None,
                        _ => Some(ledger.writers.background.lock().await),
                    };
                    Some(Arc::clone(&ledger.writers.writer).lock_owned().await)
                }
                Pool::Postgres(_) => None,
            };
            let writers = Arc::clone(&ledger.writers);
            let ledger = match (&ledger.writers.relaxed, urgency) {
                (Some(relaxed), Urgency::Redoable) => Ledger {
                    pool: Pool::Sqlite(relaxed.clone()),
                    ..ledger
                },
                _ => ledger,
            };
            let result = op(ledger).await;
            if result.is_ok() {
                writers.committed.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = &result
                && e.is_full()
                && !writers.full.swap(true, Ordering::Relaxed)
            {
                tracing::error!(error = %e, "the ledger's disk is full: nothing can be committed until space comes back");
            }
            result
        })
        .await
        .unwrap_or_else(|panicked| {
            Err(query_error("write")(sqlx::Error::Protocol(format!(
                "the ledger write stopped unexpectedly: {panicked}"
            ))))
        })
    }

    /// Writes (each one transaction: a handoff burst, a transition, a run's checkpoint…)
    /// committed by this process since the ledger was opened: `drainer_ledger_writes_total`.
    pub fn writes_committed(&self) -> u64 {
        self.writers.committed.load(Ordering::Relaxed)
    }

    /// Whether the ledger can commit: `false` after a write failed for a full disk, until this
    /// probe commits a burst of handoffs' worth of bytes again. A smaller write that happens
    /// to fit (one handoff, in the space another freed) does not count: the next handoff may
    /// not fit, and readiness must not say otherwise.
    pub async fn can_commit(&self) -> bool {
        if !self.writers.full.load(Ordering::Relaxed) {
            return true;
        }
        let pad = vec![0u8; PROBE_BYTES];
        let padded = self
            .write_as(Urgency::Intake, move |l| async move {
                l.probe_write(Some(pad)).await
            })
            .await;
        let cleared = self
            .write(|l| async move { l.probe_write(None).await })
            .await;
        let fits = padded.is_ok() && cleared.is_ok();
        if fits {
            self.writers.full.store(false, Ordering::Relaxed);
        }
        fits
    }

    /// Rewrites the probe row, with `pad` as its padding.
    async fn probe_write(&self, pad: Option<Vec<u8>>) -> Result<()> {
        const SQL: &str = "UPDATE ledger_probe SET at = $1, pad = $2 WHERE id = 1";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(now_ms())
            .bind(pad.as_deref())
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("probe write")))
    }

    /// Which database this ledger runs on (`sqlite` or `postgres`).
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }
}

/// How much a readiness probe writes after the disk was full: about a burst of handoffs.
const PROBE_BYTES: usize = 64 * 1024;

/// How often SQLite's write-ahead log is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints SQLite's WAL in the background until `stop` (the ledger is dropped), instead
/// of in whichever commit crosses SQLite's threshold: that commit would wait for the database
/// file to be written and flushed. A passive checkpoint never blocks writers or readers.
async fn checkpoint_wal(pool: SqlitePool, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let checkpoint = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool);
        match tokio::time::timeout(SQLITE_ACQUIRE_TIMEOUT, checkpoint).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "ledger checkpoint failed; trying again"),
            Err(_) => tracing::warn!("ledger checkpoint timed out; trying again"),
        }
    }
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(unparseable database URL)".to_owned(),
    }
}

/// Maps a driver error of operation `op` into a ledger error.
pub fn query_error(op: &'static str) -> impl Fn(sqlx::Error) -> Error + Copy {
    move |source| Error::Query { op, source }
}

/// Milliseconds since the Unix epoch, the ledger's timestamp unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Ledger {
    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, |pool, DB| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop)
            .map_err(|source| Error::Query { op: "ping", source }))
    }
}

/// What differs between the SQL dialects in how writes are made.
pub trait Dialect {
    /// Starts a transaction that will write. SQLite takes the write lock at once, so two
    /// writers wait for each other (busy timeout) instead of failing on a lock upgrade.
    const BEGIN_WRITE: &'static str;
    /// Whether `SELECT … FOR UPDATE` is needed to lock a row read in a write transaction
    /// (PostgreSQL); SQLite's write transaction already excludes every other writer.
    const LOCKS_ROWS: bool;
    /// Merges a JSON object (`$2`) into drain `$1`'s facts: its `null`s remove facts.
    const PATCH_FACTS: &'static str;
    /// The expression of fact `name` in the facts column `column` (`facts`, or `d.facts` for
    /// a table named `d`; `name` checked by [`facts::fact_sql`]).
    fn fact(column: &str, name: &str) -> String;
}

impl Dialect for sqlx::Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCKS_ROWS: bool = false;
    const PATCH_FACTS: &'static str =
        "UPDATE drains SET facts = json_patch(facts, $2) WHERE id = $1";
    fn fact(column: &str, name: &str) -> String {
        format!("({column} ->> '{name}')")
    }
}

impl Dialect for sqlx::Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCKS_ROWS: bool = true;
    const PATCH_FACTS: &'static str = "UPDATE drains SET facts = jsonb_strip_nulls(facts::jsonb || $2::jsonb)::text WHERE id = $1";
    fn fact(column: &str, name: &str) -> String {
        format!("({column}::jsonb ->> '{name}')")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::VolumeId;

    #[tokio::test]
    async fn the_ledgers_tasks_outlive_the_service_and_stop_with_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = Supervisor::unattended();
        let health = supervisor.health().clone();
        let ledger = Ledger::open_under(None, dir.path(), &supervisor)
            .await
            .unwrap();
        let names = |h: &crate::health::Health| -> Vec<String> {
            h.snapshot().tasks.keys().cloned().collect()
        };
        assert_eq!(names(&health), ["ledger-checkpoint", "ledger-intake"]);
        // The service shuts down: handoffs still commit through the intake.
        supervisor.stop_token().cancel();
        supervisor.stopped().await;
        let handoff = NewDrain {
            volume: "shop/data-web-4".parse::<VolumeId>().unwrap(),
            pod: None,
            reason: "test".into(),
            max_attempts: 3,
            wait_for_release: false,
            requested_by: None,
            facts: Default::default(),
        };
        let recorded = ledger.request_drains(&[handoff]).await.unwrap();
        assert!(recorded[0].1, "recorded through the intake");
        // The last handle goes: its tasks stop, and are not started again.
        let copy = ledger.clone();
        drop(ledger);
        assert_eq!(names(&health).len(), 2, "a copy still holds the ledger");
        drop(copy);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !names(&health).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                health.snapshot().tasks
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
