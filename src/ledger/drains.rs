//! Drains in the ledger: intake of handoffs, the durable queue, leases, and history.
//!
//! Every function here is one transaction that moves drains along the lifecycle
//! ([`crate::lifecycle`]) and appends to their history. Claims take the oldest claimable drain
//! (queued and due, or copying with an expired lease) with a lease; on PostgreSQL the row is
//! locked with `FOR UPDATE SKIP LOCKED`, so replicas never claim the same drain. Writes that
//! act for a lease holder check the owner, so a replica that lost its lease changes nothing.

use super::{Error, Ledger, Pool, Result, Urgency, now_ms, on_pool, query_error};
use crate::lifecycle::{AfterFailure, DrainState};
use crate::volume::VolumeId;
use serde::Serialize;
use sqlx::{QueryBuilder, Row};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A drain as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drain {
    /// The drain's id.
    pub id: String,
    /// Namespace of the volume.
    pub namespace: String,
    /// PVC name of the volume.
    pub pvc: String,
    /// The pod that announced it, if any.
    pub pod: Option<String>,
    /// Why it was requested (`handoff`, `sweep`, or the caller's reason).
    pub reason: String,
    /// Where it is in the lifecycle.
    pub state: DrainState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed before it is `failed`.
    pub max_attempts: u32,
    /// Not to be attempted before this time (ms since the epoch).
    pub not_before_ms: i64,
    /// The replica holding the lease, while copying.
    pub lease_owner: Option<String>,
    /// When the lease expires (ms since the epoch).
    pub lease_expires_ms: Option<i64>,
    /// The snapshot written, once completed.
    pub snapshot: Option<String>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Created at (ms since the epoch).
    pub created_ms: i64,
    /// Last changed at (ms since the epoch).
    pub updated_ms: i64,
    /// Ended at (ms since the epoch).
    pub finished_ms: Option<i64>,
}

impl Drain {
    /// The drained volume.
    pub fn volume(&self) -> VolumeId {
        VolumeId {
            namespace: self.namespace.clone(),
            name: self.pvc.clone(),
        }
    }
}

/// One entry of a drain's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainEvent {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The state entered.
    pub state: DrainState,
    /// The replica that made the change, if any.
    pub owner: Option<String>,
    /// What happened.
    pub message: Option<String>,
}

/// Which drains to list.
#[derive(Debug, Clone, Default)]
pub struct DrainFilter {
    /// Only drains in this state.
    pub state: Option<DrainState>,
    /// Only drains in this namespace.
    pub namespace: Option<String>,
    /// Only drains of this PVC name.
    pub pvc: Option<String>,
}

/// A new drain to record.
#[derive(Debug, Clone)]
pub struct NewDrain {
    /// The volume.
    pub volume: VolumeId,
    /// The announcing pod.
    pub pod: Option<String>,
    /// Why.
    pub reason: String,
    /// Attempts allowed.
    pub max_attempts: u32,
}

/// Why a requested change of a drain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No drain has that id.
    #[error("drain {0} does not exist")]
    NotFound(String),
    /// The drain is not in a state that allows the change.
    #[error("drain {id} is {state}; it cannot be {action}")]
    Conflict {
        /// The drain.
        id: String,
        /// Its state.
        state: DrainState,
        /// What was asked.
        action: &'static str,
    },
}

const COLUMNS: &str = "id, namespace, pvc, pod, reason, state, attempts, max_attempts, not_before, \
                       lease_owner, lease_expires, snapshot_id, last_error, created_at, updated_at, finished_at";

fn drain_from_row<R: Row>(row: &R) -> Result<Drain, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    Ok(Drain {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        pvc: row.try_get("pvc")?,
        pod: row.try_get("pod")?,
        reason: row.try_get("reason")?,
        state: state
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        not_before_ms: row.try_get("not_before")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_ms: row.try_get("lease_expires")?,
        snapshot: row.try_get("snapshot_id")?,
        last_error: row.try_get("last_error")?,
        created_ms: row.try_get("created_at")?,
        updated_ms: row.try_get("updated_at")?,
        finished_ms: row.try_get("finished_at")?,
    })
}

/// A new drain id: time-ordered and unique across replicas.
fn new_drain_id() -> String {
    format!(
        "d-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S%3f"),
        rand::random::<u32>()
    )
}

/// The states in which a drain is active: a volume has at most one active drain.
const ACTIVE_STATES: &str = "('requested', 'awaiting_release', 'queued', 'copying')";
/// Times a handoff transaction is tried when a concurrent one created a drain it meant to.
const HANDOFF_ATTEMPTS: u32 = 5;
/// Rows per bulk statement, well under both databases' limits on bound parameters.
const BULK_ROWS: usize = 200;

/// The drains a batch of handoff requests creates, with their new ids: one for each volume
/// named that has no active drain, for its first mention.
fn new_drains<'a>(
    groups: &'a [Vec<NewDrain>],
    active: &HashMap<VolumeId, Drain>,
) -> Vec<(String, &'a NewDrain)> {
    let mut seen = HashSet::new();
    groups
        .iter()
        .flatten()
        .filter(|new| !active.contains_key(&new.volume) && seen.insert(&new.volume))
        .map(|new| (new_drain_id(), new))
        .collect()
}

/// Each request's answer, in the order of its volumes: the drain, and whether this request
/// created it (only the first request in the batch that names a new drain did).
fn answers(
    groups: &[Vec<NewDrain>],
    active: &HashMap<VolumeId, Drain>,
    inserted: &HashMap<VolumeId, Drain>,
) -> Vec<Vec<(Drain, bool)>> {
    let mut announced = HashSet::new();
    groups
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|new| match active.get(&new.volume) {
                    Some(drain) => (drain.clone(), false),
                    None => {
                        let drain = &inserted[&new.volume];
                        (drain.clone(), announced.insert(drain.id.clone()))
                    }
                })
                .collect()
        })
        .collect()
}

/// What a claim takes, in order: a drain whose holder's lease expired (its holder died), else
/// the queued drain that has been due longest.
const CLAIM_PICKS: [&str; 2] = [
    "SELECT id FROM drains WHERE state = 'copying' AND lease_expires < $1 \
     ORDER BY lease_expires LIMIT 1",
    "SELECT id FROM drains WHERE state = 'queued' AND not_before <= $1 \
     ORDER BY not_before, created_at LIMIT 1",
];

macro_rules! event {
    ($conn:expr, $id:expr, $state:expr, $owner:expr, $message:expr) => {
        sqlx::query("INSERT INTO drain_events (drain_id, at, state, owner, message) VALUES ($1, $2, $3, $4, $5)")
            .bind($id)
            .bind(now_ms())
            .bind($state.as_str())
            .bind($owner)
            .bind($message)
            .execute($conn)
            .await
            .map_err(query_error("record history"))
    };
}

impl Ledger {
    /// Records drains for `volumes` (one transaction, shared with the handoffs that arrive at
    /// the same time): an active drain of a volume is returned as it is (`false`), otherwise a
    /// new queued drain is created (`true`).
    pub async fn request_drains(&self, drains: &[NewDrain]) -> Result<Vec<(Drain, bool)>> {
        match &self.intake {
            Some(intake) => intake.record(drains.to_vec()).await,
            None => Ok(self
                .request_drain_groups(vec![drains.to_vec()])
                .await?
                .pop()
                .expect("one answer per group")),
        }
    }

    /// Records several groups of drains in one transaction, one answer per group.
    pub(super) async fn request_drain_groups(
        &self,
        groups: Vec<Vec<NewDrain>>,
    ) -> Result<Vec<Vec<(Drain, bool)>>> {
        let groups = std::sync::Arc::new(groups);
        for attempt in 1..=HANDOFF_ATTEMPTS {
            let owned = std::sync::Arc::clone(&groups);
            match self
                .write_as(Urgency::Intake, move |l| async move {
                    l.try_request_drains(&owned).await
                })
                .await
            {
                Err(e) if attempt < HANDOFF_ATTEMPTS && is_unique_violation(&e) => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    async fn try_request_drains(
        &self,
        groups: &[Vec<NewDrain>],
    ) -> Result<Vec<Vec<(Drain, bool)>>> {
        let volumes: Vec<&VolumeId> = groups
            .iter()
            .flatten()
            .map(|new| &new.volume)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let now = now_ms();
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("record handoff"))?;
            let mut active = HashMap::new();
            for chunk in volumes.chunks(BULK_ROWS) {
                let mut find = QueryBuilder::<DB>::new(format!(
                    "SELECT {COLUMNS} FROM drains WHERE state IN {ACTIVE_STATES} AND ("
                ));
                let mut any = find.separated(" OR ");
                for volume in chunk {
                    any.push("(namespace = ")
                        .push_bind_unseparated(volume.namespace.as_str())
                        .push_unseparated(" AND pvc = ")
                        .push_bind_unseparated(volume.name.as_str())
                        .push_unseparated(")");
                }
                find.push(")");
                for row in find
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query_error("record handoff"))?
                {
                    let drain = drain_from_row(&row).map_err(query_error("read drain"))?;
                    active.insert(drain.volume(), drain);
                }
            }
            let wanted = new_drains(groups, &active);
            let mut inserted = HashMap::new();
            for chunk in wanted.chunks(BULK_ROWS) {
                let mut insert = QueryBuilder::<DB>::new(
                    "INSERT INTO drains (id, namespace, pvc, pod, reason, state, attempts, \
                     max_attempts, not_before, created_at, updated_at) ",
                );
                insert.push_values(chunk, |mut row, (id, new)| {
                    row.push_bind(id.as_str())
                        .push_bind(new.volume.namespace.as_str())
                        .push_bind(new.volume.name.as_str())
                        .push_bind(new.pod.as_deref())
                        .push_bind(new.reason.as_str())
                        .push_bind(DrainState::Queued.as_str())
                        .push_bind(0_i64)
                        .push_bind(i64::from(new.max_attempts))
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now);
                });
                insert.push(format!(" RETURNING {COLUMNS}"));
                for row in insert
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query_error("record handoff"))?
                {
                    let drain = drain_from_row(&row).map_err(query_error("read drain"))?;
                    inserted.insert(drain.volume(), drain);
                }
                let mut history = QueryBuilder::<DB>::new(
                    "INSERT INTO drain_events (drain_id, at, state, owner, message) ",
                );
                history.push_values(chunk, |mut row, (id, new)| {
                    row.push_bind(id.as_str())
                        .push_bind(now)
                        .push_bind(DrainState::Queued.as_str())
                        .push_bind(None::<&str>)
                        .push_bind(new.reason.as_str());
                });
                history
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("record history"))?;
            }
            if inserted.len() != wanted.len() {
                let lost = format!(
                    "{} of {} new drains came back",
                    inserted.len(),
                    wanted.len()
                );
                return Err(query_error("record handoff")(sqlx::Error::Protocol(lost)));
            }
            tx.commit().await.map_err(query_error("record handoff"))?;
            Ok(answers(groups, &active, &inserted))
        })
    }

    /// One drain by id.
    pub async fn drain(&self, id: &str) -> Result<Option<Drain>> {
        let sql = format!("SELECT {COLUMNS} FROM drains WHERE id = $1");
        on_pool!(self, |pool, DB| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(query_error("read drain"))?;
            row.map(|r| drain_from_row(&r))
                .transpose()
                .map_err(query_error("read drain"))
        })
    }

    /// Drains matching `filter`, newest first (at most `limit`).
    pub async fn drains(&self, filter: &DrainFilter, limit: u32) -> Result<Vec<Drain>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM drains WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR namespace = $2) \
             AND ($3 IS NULL OR pvc = $3) ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        on_pool!(self, |pool, DB| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(filter.state.map(DrainState::as_str))
                .bind(filter.namespace.as_deref())
                .bind(filter.pvc.as_deref())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(query_error("list drains"))?;
            rows.iter()
                .map(drain_from_row)
                .collect::<Result<_, _>>()
                .map_err(query_error("list drains"))
        })
    }

    /// The history of a drain, oldest first.
    pub async fn drain_events(&self, id: &str) -> Result<Vec<DrainEvent>> {
        const SQL: &str =
            "SELECT at, state, owner, message FROM drain_events WHERE drain_id = $1 ORDER BY seq";
        on_pool!(self, |pool, DB| {
            let rows = sqlx::query(SQL)
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(query_error("read history"))?;
            rows.iter()
                .map(|r| {
                    let state: String = r.try_get("state")?;
                    Ok(DrainEvent {
                        at_ms: r.try_get("at")?,
                        state: state
                            .parse()
                            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                        owner: r.try_get("owner")?,
                        message: r.try_get("message")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(query_error("read history"))
        })
    }

    /// How many drains are in each state.
    pub async fn drain_counts(&self) -> Result<Vec<(DrainState, i64)>> {
        const SQL: &str = "SELECT state, COUNT(*) AS n FROM drains GROUP BY state";
        on_pool!(self, |pool, DB| {
            let rows = sqlx::query(SQL)
                .fetch_all(pool)
                .await
                .map_err(query_error("count drains"))?;
            rows.iter()
                .map(|r| {
                    let state: String = r.try_get("state")?;
                    let n: i64 = r.try_get("n")?;
                    Ok((
                        state
                            .parse()
                            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                        n,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(query_error("count drains"))
        })
    }

    /// Moves a drain by hand: `retry` (failed → queued, attempts reset) or `cancel` (any
    /// active state → cancelled). Returns the drain after the change, or why it was refused.
    pub async fn change_drain(&self, id: &str, to: DrainState) -> Result<Result<Drain, Refused>> {
        let action = if to == DrainState::Queued {
            "retried"
        } else {
            "cancelled"
        };
        let Some(drain) = self.drain(id).await? else {
            return Ok(Err(Refused::NotFound(id.to_owned())));
        };
        let allowed = match to {
            DrainState::Queued => drain.state == DrainState::Failed,
            DrainState::Cancelled => drain.state.is_active(),
            _ => false,
        };
        if !allowed {
            return Ok(Err(Refused::Conflict {
                id: id.to_owned(),
                state: drain.state,
                action,
            }));
        }
        let (owned_id, from) = (id.to_owned(), drain.state);
        let changed = self
            .write(move |l| async move { l.change_drain_tx(&owned_id, to, from, action).await })
            .await?;
        if !changed {
            // It moved under us; report what it is now.
            return Box::pin(self.change_drain(id, to)).await;
        }
        Ok(Ok(self.drain(id).await?.expect("the drain exists")))
    }

    /// Claims the oldest claimable drain for `owner` with a lease of `lease`: a queued drain
    /// that is due, or a copying drain whose lease has expired (its owner died).
    pub async fn claim_drain(&self, owner: &str, lease: Duration) -> Result<Option<Drain>> {
        let owner = owner.to_owned();
        self.write_redoable(move |l| async move { l.claim_drain_tx(&owner, lease).await })
            .await
    }

    /// Extends `owner`'s lease of drain `id`; `false` when the lease is no longer held (it
    /// expired and was taken over, or the drain was cancelled).
    pub async fn renew_lease(&self, id: &str, owner: &str, lease: Duration) -> Result<bool> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.write_redoable(move |l| async move { l.renew_lease_tx(&id, &owner, lease).await })
            .await
    }

    /// Ends `owner`'s attempt of drain `id`: `Completed` with its snapshot, queued again after
    /// a failure, `Failed`, or released (queued again, the attempt not counted) on shutdown.
    /// Returns `false` when `owner` no longer held the lease (nothing is changed then).
    pub async fn end_attempt(
        &self,
        id: &str,
        owner: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool> {
        let (id, owner, outcome) = (id.to_owned(), owner.to_owned(), outcome.clone());
        self.write_redoable(move |l| async move { l.end_attempt_tx(&id, &owner, &outcome).await })
            .await
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The snapshot is complete.
    Completed {
        /// Its id.
        snapshot: String,
    },
    /// The attempt failed.
    Failed {
        /// The error, one line.
        error: String,
        /// Retry later or give up.
        after: AfterFailure,
    },
    /// Stopped at shutdown; to be taken up again, the attempt not counted.
    Released,
}

fn is_unique_violation(e: &Error) -> bool {
    match e {
        Error::Query {
            source: sqlx::Error::Database(db),
            ..
        } => db.is_unique_violation(),
        _ => false,
    }
}

/// Transactions run through [`Ledger::write`].
impl Ledger {
    async fn claim_drain_tx(&self, owner: &str, lease: Duration) -> Result<Option<Drain>> {
        let now = now_ms();
        let lock = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        // Two picks, each served by the (state, not_before) index, rather than one with an OR
        // that sorts every queued drain on each claim.
        let claims = CLAIM_PICKS.map(|pick| {
            format!(
                "UPDATE drains SET state = 'copying', attempts = attempts + 1, lease_owner = $2, \
                 lease_expires = $3, updated_at = $1 WHERE id = ({pick}{lock}) RETURNING {COLUMNS}"
            )
        });
        let expires = now + lease.as_millis() as i64;
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("claim drain"))?;
            let mut row = None;
            for claim in &claims {
                row = sqlx::query(sqlx::AssertSqlSafe(claim.as_str()))
                    .bind(now)
                    .bind(owner)
                    .bind(expires)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_error("claim drain"))?;
                if row.is_some() {
                    break;
                }
            }
            let drain = row
                .map(|r| drain_from_row(&r))
                .transpose()
                .map_err(query_error("claim drain"))?;
            if let Some(d) = &drain {
                let message = format!("attempt {} of {}", d.attempts, d.max_attempts);
                event!(
                    &mut *tx,
                    &d.id,
                    DrainState::Copying,
                    Some(owner),
                    Some(message)
                )?;
            }
            tx.commit().await.map_err(query_error("claim drain"))?;
            Ok(drain)
        })
    }

    async fn renew_lease_tx(&self, id: &str, owner: &str, lease: Duration) -> Result<bool> {
        const SQL: &str = "UPDATE drains SET lease_expires = $3, updated_at = $4 \
                           WHERE id = $1 AND lease_owner = $2 AND state = 'copying'";
        let now = now_ms();
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(id)
            .bind(owner)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(query_error("renew lease")))
    }

    async fn change_drain_tx(
        &self,
        id: &str,
        to: DrainState,
        from: DrainState,
        action: &'static str,
    ) -> Result<bool> {
        let now = now_ms();
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("change drain"))?;
            let done = sqlx::query(
                "UPDATE drains SET state = $2, attempts = CASE WHEN $2 = 'queued' THEN 0 ELSE attempts END, \
                 not_before = $3, lease_owner = NULL, lease_expires = NULL, updated_at = $3, \
                 finished_at = CASE WHEN $2 = 'cancelled' THEN $3 ELSE NULL END \
                 WHERE id = $1 AND state = $4",
            )
            .bind(id)
            .bind(to.as_str())
            .bind(now)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(query_error("change drain"))?
            .rows_affected();
            if done == 1 {
                event!(
                    &mut *tx,
                    id,
                    to,
                    None::<&str>,
                    Some(format!("{action} by hand"))
                )?;
            }
            tx.commit().await.map_err(query_error("change drain"))?;
            Ok::<_, Error>(done == 1)
        })
    }

    async fn end_attempt_tx(
        &self,
        id: &str,
        owner: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool> {
        let now = now_ms();
        let (state, not_before, uncount, snapshot, error, message) = match outcome {
            AttemptOutcome::Completed { snapshot } => (
                DrainState::Completed,
                now,
                0,
                Some(snapshot.as_str()),
                None,
                format!("snapshot {snapshot}"),
            ),
            AttemptOutcome::Failed {
                error,
                after: AfterFailure::RetryAfter(delay),
            } => (
                DrainState::Queued,
                now + delay.as_millis() as i64,
                0,
                None,
                Some(error.as_str()),
                format!("retry in {} s: {error}", delay.as_secs()),
            ),
            AttemptOutcome::Failed {
                error,
                after: AfterFailure::GiveUp,
            } => (
                DrainState::Failed,
                now,
                0,
                None,
                Some(error.as_str()),
                error.clone(),
            ),
            AttemptOutcome::Released => (
                DrainState::Queued,
                now,
                1,
                None,
                None,
                "released at shutdown".to_owned(),
            ),
        };
        let finished = state.is_final().then_some(now);
        const SQL: &str = "UPDATE drains SET state = $3, not_before = $4, attempts = attempts - $5, \
                           snapshot_id = COALESCE($6, snapshot_id), last_error = COALESCE($7, last_error), \
                           lease_owner = NULL, lease_expires = NULL, updated_at = $8, finished_at = $9 \
                           WHERE id = $1 AND lease_owner = $2 AND state = 'copying'";
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("end attempt"))?;
            let done = sqlx::query(SQL)
                .bind(id)
                .bind(owner)
                .bind(state.as_str())
                .bind(not_before)
                .bind(uncount)
                .bind(snapshot)
                .bind(error)
                .bind(now)
                .bind(finished)
                .execute(&mut *tx)
                .await
                .map_err(query_error("end attempt"))?
                .rows_affected()
                == 1;
            if done {
                event!(&mut *tx, id, state, Some(owner), Some(message))?;
            }
            tx.commit().await.map_err(query_error("end attempt"))?;
            Ok(done)
        })
    }
}
