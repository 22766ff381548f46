//! Drains in the ledger: intake of handoffs, the durable queue, leases, and history.
//!
//! Every state change goes through [`Ledger::transition`]: the lifecycle's table
//! ([`DrainState::after`]) names the next state, the `UPDATE` names the state it starts from
//! (and, for a lease holder, the holder), and the history row is written in the same
//! transaction. A writer whose view is stale changes nothing and gets [`Refused::Stale`].
//! Claims take the oldest claimable drain (queued and due, or copying with an expired lease)
//! with a lease; on PostgreSQL the row is locked with `FOR UPDATE SKIP LOCKED`, so replicas
//! never claim the same drain.

use super::facts::fact_sql;
use super::{Error, Facts, Ledger, Pool, Result, Urgency, now_ms, on_pool, query_error};
use crate::lifecycle::{AfterFailure, DrainState, Event};
use crate::volume::VolumeId;
use serde::Serialize;
use sqlx::QueryBuilder;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The drains of one state, summed up for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateSummary {
    /// The state.
    pub state: DrainState,
    /// Drains in it.
    pub drains: i64,
    /// When the oldest of them was created (ms since the epoch).
    pub oldest_created_ms: Option<i64>,
    /// Those having the fact the summary counts (see [`Ledger::drain_summary`]).
    pub with_fact: i64,
    /// When the oldest of those having it was created (ms since the epoch).
    pub oldest_with_fact_ms: Option<i64>,
}

/// A drain as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
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
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    /// Attempts allowed before it is `failed`.
    #[sqlx(try_from = "i64")]
    pub max_attempts: u32,
    /// Not to be attempted before this time (ms since the epoch).
    #[sqlx(rename = "not_before")]
    pub not_before_ms: i64,
    /// The replica holding the lease, while copying.
    pub lease_owner: Option<String>,
    /// When the lease expires (ms since the epoch).
    #[sqlx(rename = "lease_expires")]
    pub lease_expires_ms: Option<i64>,
    /// The snapshot written, once completed.
    #[sqlx(rename = "snapshot_id")]
    pub snapshot: Option<String>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Created at (ms since the epoch).
    #[sqlx(rename = "created_at")]
    pub created_ms: i64,
    /// Last changed at (ms since the epoch).
    #[sqlx(rename = "updated_at")]
    pub updated_ms: i64,
    /// Ended at (ms since the epoch).
    #[sqlx(rename = "finished_at")]
    pub finished_ms: Option<i64>,
    /// What the platform that requested and executes it recorded on it (see [`Facts`]); as
    /// JSON, each fact is a field of the drain, absent when not recorded.
    #[sqlx(try_from = "String")]
    #[serde(flatten)]
    pub facts: Facts,
}

impl Drain {
    /// The drained volume.
    pub fn volume(&self) -> VolumeId {
        VolumeId {
            namespace: self.namespace.clone(),
            name: self.pvc.clone(),
        }
    }

    /// The drain as its snapshot records it: id, pod, reason, when it was requested, and the
    /// facts named as the origin's lineage fields.
    pub fn origin(&self) -> crate::snapshot::DrainOrigin {
        let requested = chrono::DateTime::from_timestamp_millis(self.created_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        crate::snapshot::DrainOrigin::new(&self.id, self.pod.as_deref(), &self.reason, requested)
            .with_lineage(|field| self.facts.get(field))
    }
}

/// One entry of a drain's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DrainEvent {
    /// When (ms since the epoch).
    #[sqlx(rename = "at")]
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
    /// Only drains this principal requested (see [`NewDrain::requested_by`]).
    pub requested_by: Option<String>,
    /// Only drains listed after this one (the previous page's last), newest first.
    pub after: Option<PageCursor>,
}

/// Where a page of drains ends: the last drain's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    /// The drain's creation time (ms since the epoch).
    pub created_ms: i64,
    /// The drain's id.
    pub id: String,
}

impl PageCursor {
    /// The cursor that continues after `drain`.
    pub fn after(drain: &Drain) -> Self {
        Self {
            created_ms: drain.created_ms,
            id: drain.id.clone(),
        }
    }
}

impl std::fmt::Display for PageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_ms, self.id)
    }
}

impl std::str::FromStr for PageCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a page cursor (use the `next` of the previous page)");
        let (created, id) = s.split_once('.').ok_or_else(bad)?;
        let created_ms = created.parse().map_err(|_| bad())?;
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
        Ok(Self {
            created_ms,
            id: id.to_owned(),
        })
    }
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
    /// Start in `awaiting_release` (the announcing pod still holds the volume) rather than
    /// `queued`.
    pub wait_for_release: bool,
    /// Who asked (`pod:NS/NAME`, `user:NAME`, …); a requester may read the drains it asked
    /// for, whether its request created them or found them active.
    pub requested_by: Option<String>,
    /// What the requesting platform knows of the drain's volume now (recorded with it).
    pub facts: Facts,
}

/// Why a requested change of a drain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No drain has that id.
    #[error("drain {0} does not exist")]
    NotFound(String),
    /// The lifecycle does not allow the event in the drain's state.
    #[error("drain {id} is {state}; it cannot be {action}")]
    Conflict {
        /// The drain.
        id: String,
        /// Its state.
        state: DrainState,
        /// What was asked.
        action: &'static str,
    },
    /// Another drain of the same volume is active (a retry by hand of an older drain).
    #[error("drain {id} cannot become active: drain {active} of {volume} is")]
    VolumeBusy {
        /// The drain.
        id: String,
        /// Its volume.
        volume: String,
        /// The volume's active drain.
        active: String,
    },
    /// The drain moved on (or its lease went to another holder) since the writer looked.
    #[error("drain {id} is no longer {expected}{holder}; nothing was changed")]
    Stale {
        /// The drain.
        id: String,
        /// The state the writer expected.
        expected: DrainState,
        /// The holder the writer expected, as text (`" held by X"` or empty).
        holder: String,
    },
}

/// One state change of one drain: the event, what the writer expects, and the fields that
/// change with it.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The drain.
    pub id: String,
    /// The state the writer saw; the change happens only if the drain is still in it.
    pub from: DrainState,
    /// What happened.
    pub event: Event,
    /// Who writes: the lease holder for events of an attempt (checked), or an operator.
    pub by: Writer,
    /// The history message.
    pub message: String,
    /// Not to be attempted before this time (ms since the epoch), if it changes.
    pub not_before_ms: Option<i64>,
    /// The snapshot written (completions).
    pub snapshot: Option<String>,
    /// The error that caused it (failures).
    pub error: Option<String>,
}

/// Who makes a change, and what the ledger checks about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// Anyone: the state alone is checked (operators, release decisions).
    Anyone,
    /// The holder of the drain's lease: the holder is checked too.
    Holder(String),
    /// A replica taking a drain with a lease until the given time (claims and take-overs).
    Claimant {
        /// The new holder.
        owner: String,
        /// When its lease expires (ms since the epoch).
        lease_expires_ms: i64,
    },
}

pub(super) const COLUMNS: &str = "id, namespace, pvc, pod, reason, state, attempts, max_attempts, not_before, \
                       lease_owner, lease_expires, snapshot_id, last_error, created_at, updated_at, finished_at, facts";

/// A new drain id: time-ordered and unique across replicas.
fn new_drain_id() -> String {
    format!(
        "d-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S%3f"),
        rand::random::<u32>()
    )
}

/// The states in which a drain is active (a volume has at most one active drain), as SQL.
pub(super) fn active_states_sql() -> String {
    let names: Vec<String> = crate::lifecycle::ALL_STATES
        .iter()
        .filter(|s| s.is_active())
        .map(|s| format!("'{s}'"))
        .collect();
    format!("({})", names.join(", "))
}

/// Times a handoff transaction is tried when a concurrent one created a drain it meant to.
const HANDOFF_ATTEMPTS: u32 = 5;
/// Rows per bulk statement, well under both databases' limits on bound parameters.
pub const BULK_ROWS: usize = 200;

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

/// The (drain, requester) pairs a batch records: who asked for which drain.
fn requests<'a>(
    groups: &'a [Vec<NewDrain>],
    answers: &'a [Vec<(Drain, bool)>],
) -> HashSet<(&'a str, &'a str)> {
    groups
        .iter()
        .zip(answers)
        .flat_map(|(group, answer)| group.iter().zip(answer))
        .filter_map(|(new, (drain, _))| Some((drain.id.as_str(), new.requested_by.as_deref()?)))
        .collect()
}

/// What a claim takes, in order: a drain whose holder's lease expired (its holder died), else
/// the queued drain that has been due longest, else the failing drain due longest. Each pick
/// is served by the (state, not_before) or lease index, rather than one query with an OR that
/// sorts every queued drain.
fn claim_picks() -> [(DrainState, Event, &'static str); 3] {
    [
        (
            DrainState::Copying,
            Event::TakenOver,
            "SELECT id FROM drains WHERE state = $1 AND lease_expires < $2 \
             ORDER BY lease_expires LIMIT 1",
        ),
        (
            DrainState::Queued,
            Event::Claimed,
            "SELECT id FROM drains WHERE state = $1 AND not_before <= $2 \
             ORDER BY not_before, created_at LIMIT 1",
        ),
        (
            DrainState::Failing,
            Event::Claimed,
            "SELECT id FROM drains WHERE state = $1 AND not_before <= $2 \
             ORDER BY not_before, created_at LIMIT 1",
        ),
    ]
}

impl Ledger {
    /// Records drains for `volumes` (one transaction, shared with the handoffs that arrive at
    /// the same time): an active drain of a volume is returned as it is (`false`), otherwise a
    /// new drain is created (`true`) in `awaiting_release` or `queued`.
    pub async fn request_drains(&self, drains: &[NewDrain]) -> Result<Vec<(Drain, bool)>> {
        match &self.intake {
            Some(intake) => intake.record(drains.to_vec()).await,
            None => Ok(self
                .request_drain_groups(vec![drains.to_vec()])
                .await?
                .pop()
                .unwrap_or_default()),
        }
    }

    /// Records several groups of drains in one transaction, one answer per group.
    pub(super) async fn request_drain_groups(
        &self,
        groups: Vec<Vec<NewDrain>>,
    ) -> Result<Vec<Vec<(Drain, bool)>>> {
        let groups = std::sync::Arc::new(groups);
        let mut attempt = 1;
        loop {
            let owned = std::sync::Arc::clone(&groups);
            match self
                .write_as(Urgency::Intake, move |l| async move {
                    l.try_request_drains(&owned).await
                })
                .await
            {
                Err(e) if attempt < HANDOFF_ATTEMPTS && is_unique_violation(&e) => attempt += 1,
                other => return other,
            }
        }
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
        let active_states = active_states_sql();
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("record handoff"))?;
            let mut active = HashMap::new();
            for chunk in volumes.chunks(BULK_ROWS) {
                let mut find = QueryBuilder::<DB>::new(format!(
                    "SELECT {COLUMNS} FROM drains WHERE state IN {active_states} AND ("
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
                let found: Vec<Drain> = find
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query_error("record handoff"))?;
                active.extend(found.into_iter().map(|d| (d.volume(), d)));
            }
            let wanted = new_drains(groups, &active);
            let mut inserted = HashMap::new();
            for chunk in wanted.chunks(BULK_ROWS) {
                let mut insert = QueryBuilder::<DB>::new(
                    "INSERT INTO drains (id, namespace, pvc, pod, reason, state, attempts, \
                     max_attempts, not_before, created_at, updated_at, facts) ",
                );
                insert.push_values(chunk, |mut row, (id, new)| {
                    row.push_bind(id.as_str())
                        .push_bind(new.volume.namespace.as_str())
                        .push_bind(new.volume.name.as_str())
                        .push_bind(new.pod.as_deref())
                        .push_bind(new.reason.as_str())
                        .push_bind(DrainState::initial(new.wait_for_release))
                        .push_bind(0_i64)
                        .push_bind(i64::from(new.max_attempts))
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(new.facts.to_json());
                });
                insert.push(format!(" RETURNING {COLUMNS}"));
                let created: Vec<Drain> = insert
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query_error("record handoff"))?;
                inserted.extend(created.into_iter().map(|d| (d.volume(), d)));
                let mut history = QueryBuilder::<DB>::new(
                    "INSERT INTO drain_events (drain_id, at, state, owner, message) ",
                );
                history.push_values(chunk, |mut row, (id, new)| {
                    row.push_bind(id.as_str())
                        .push_bind(now)
                        .push_bind(DrainState::initial(new.wait_for_release))
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
            let answered = answers(groups, &active, &inserted);
            let asked: Vec<_> = requests(groups, &answered).into_iter().collect();
            for chunk in asked.chunks(BULK_ROWS) {
                let mut record = QueryBuilder::<DB>::new(
                    "INSERT INTO drain_requests (drain_id, principal, at) ",
                );
                record.push_values(chunk, |mut row, (drain, principal)| {
                    row.push_bind(*drain).push_bind(*principal).push_bind(now);
                });
                record.push(" ON CONFLICT (drain_id, principal) DO NOTHING");
                record
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("record requester"))?;
            }
            tx.commit().await.map_err(query_error("record handoff"))?;
            Ok(answered)
        })
    }

    /// One drain by id.
    pub async fn drain(&self, id: &str) -> Result<Option<Drain>> {
        let sql = format!("SELECT {COLUMNS} FROM drains WHERE id = $1");
        on_pool!(self, |pool, DB| sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(query_error("read drain")))
    }

    /// Drains still active, or ended at or after `ended_since_ms` (ms since the epoch), in
    /// `namespaces` (all when empty).
    pub async fn drains_active_or_ended_since(
        &self,
        ended_since_ms: i64,
        namespaces: &[String],
    ) -> Result<Vec<Drain>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM drains WHERE finished_at IS NULL OR finished_at >= $1 \
             ORDER BY created_at, id"
        );
        let drains: Vec<Drain> = on_pool!(self, |pool, DB| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(ended_since_ms)
        .fetch_all(pool)
        .await
        .map_err(query_error("list drains to show")))?;
        Ok(drains
            .into_iter()
            .filter(|d| namespaces.is_empty() || namespaces.contains(&d.namespace))
            .collect())
    }

    /// The first principal that asked for drain `id`, if a caller asked (sweeps do not).
    pub async fn first_requester(&self, id: &str) -> Result<Option<String>> {
        const SQL: &str = "SELECT principal FROM drain_requests WHERE drain_id = $1 \
                           ORDER BY at, principal LIMIT 1";
        on_pool!(self, |pool, DB| sqlx::query_scalar(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(query_error("read requester")))
    }

    /// Whether `principal` asked for drain `id` (its request created it or found it active).
    pub async fn requested_by(&self, id: &str, principal: &str) -> Result<bool> {
        const SQL: &str =
            "SELECT COUNT(*) FROM drain_requests WHERE drain_id = $1 AND principal = $2";
        on_pool!(self, |pool, DB| sqlx::query_scalar::<_, i64>(SQL)
            .bind(id)
            .bind(principal)
            .fetch_one(pool)
            .await
            .map(|n| n > 0)
            .map_err(query_error("read requester")))
    }

    /// Drains matching `filter`, newest first (at most `limit`).
    pub async fn drains(&self, filter: &DrainFilter, limit: u32) -> Result<Vec<Drain>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM drains WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR namespace = $2) \
             AND ($3 IS NULL OR pvc = $3) \
             AND ($4 IS NULL OR id IN (SELECT drain_id FROM drain_requests WHERE principal = $4)) \
             AND ($5 IS NULL OR created_at < $5 OR (created_at = $5 AND id < $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        );
        let (after_ms, after_id) = match &filter.after {
            Some(c) => (Some(c.created_ms), Some(c.id.as_str())),
            None => (None, None),
        };
        on_pool!(self, |pool, DB| sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(filter.state)
            .bind(filter.namespace.as_deref())
            .bind(filter.pvc.as_deref())
            .bind(filter.requested_by.as_deref())
            .bind(after_ms)
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(query_error("list drains")))
    }

    /// The history of a drain, oldest first.
    pub async fn drain_events(&self, id: &str) -> Result<Vec<DrainEvent>> {
        const SQL: &str =
            "SELECT at, state, owner, message FROM drain_events WHERE drain_id = $1 ORDER BY seq";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(id)
            .fetch_all(pool)
            .await
            .map_err(query_error("read history")))
    }

    /// Per state: how many drains, the oldest one's creation time, and how many have fact
    /// `counted` (none when there is no such fact; for `/metrics`; one grouped scan).
    pub async fn drain_summary(&self, counted: Option<&str>) -> Result<Vec<StateSummary>> {
        on_pool!(self, |pool, DB| {
            let fact = match counted {
                Some(name) => fact_sql::<DB>(name)?,
                None => "NULL".to_owned(),
            };
            let sql = format!(
                "SELECT state, COUNT(*) AS drains, MIN(created_at) AS oldest_created_ms, \
                 COUNT({fact}) AS with_fact, \
                 MIN(CASE WHEN {fact} IS NOT NULL THEN created_at END) AS oldest_with_fact_ms \
                 FROM drains GROUP BY state"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .map_err(query_error("summarise drains"))
        })
    }

    /// Moves a drain by hand, for operator `by`: `RetriedByHand` (failed or failing → queued,
    /// attempts counted afresh), `Cancelled` (any active state → cancelled) or `Abandoned`
    /// (any active state → abandoned, `why` required). The history names who and why.
    /// Returns the drain after the change, or why it was refused. A drain that moves while
    /// this runs is read again and the event re-checked.
    pub async fn change_drain(
        &self,
        id: &str,
        event: Event,
        by: &str,
        why: Option<&str>,
    ) -> Result<Result<Drain, Refused>> {
        let action = match event {
            Event::RetriedByHand => "retried",
            Event::Cancelled => "cancelled",
            Event::Abandoned => "abandoned",
            _ => "changed by hand",
        };
        let by_hand = matches!(
            event,
            Event::RetriedByHand | Event::Cancelled | Event::Abandoned
        );
        let message = match why {
            Some(why) => format!("{action} by {by}: {why}"),
            None => format!("{action} by {by}"),
        };
        for _ in 0..HANDOFF_ATTEMPTS {
            let Some(drain) = self.drain(id).await? else {
                return Ok(Err(Refused::NotFound(id.to_owned())));
            };
            if !by_hand || drain.state.after(event).is_none() {
                return Ok(Err(Refused::Conflict {
                    id: id.to_owned(),
                    state: drain.state,
                    action,
                }));
            }
            let change = Transition {
                not_before_ms: Some(now_ms()),
                ..Transition::new(id, drain.state, event, Writer::Anyone, message.clone())
            };
            match self.transition(change).await? {
                Ok(drain) => return Ok(Ok(drain)),
                Err(Refused::Stale { .. }) => continue, // it moved under us: look again
                Err(other) => return Ok(Err(other)),
            }
        }
        Err(query_error("change drain")(sqlx::Error::Protocol(format!(
            "drain {id} kept changing; try again"
        ))))
    }

    /// Claims the oldest claimable drain for `owner` with a lease of `lease`: a queued drain
    /// that is due, or a copying drain whose lease has expired (its owner died).
    pub async fn claim_drain(&self, owner: &str, lease: Duration) -> Result<Option<Drain>> {
        self.claim_drain_except(owner, lease, &[]).await
    }

    /// [`Ledger::claim_drain`], never taking over one of `busy`: drains this replica is still
    /// running (a lease that ran out while its attempt goes on, its renewals late on a loaded
    /// machine, must not start a second attempt of the same drain in the same replica).
    pub async fn claim_drain_except(
        &self,
        owner: &str,
        lease: Duration,
        busy: &[String],
    ) -> Result<Option<Drain>> {
        let (owner, busy) = (owner.to_owned(), busy.to_vec());
        self.write_redoable(move |l| async move { l.claim_drain_tx(&owner, lease, &busy).await })
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
    /// a failure, `Failing` (retried slowly), `Failed` (the volume is gone), or released (queued again, the attempt not counted) on shutdown.
    /// Returns `false` when `owner` no longer held the lease (nothing is changed then).
    pub async fn end_attempt(
        &self,
        id: &str,
        owner: &str,
        outcome: &AttemptOutcome,
    ) -> Result<bool> {
        let change = outcome.transition(id, owner, now_ms());
        let (ledger, flushed) = (self.clone(), outcome.is_flushed());
        let write = move |l: Ledger| async move { l.transition_tx(&change).await };
        let done = if flushed {
            ledger.write(write).await?
        } else {
            ledger.write_redoable(write).await?
        };
        Ok(done.is_ok())
    }

    /// Adds `message` to drain `id`'s history without changing its state (something happened
    /// to it that an operator should see, such as its protection removed by someone else).
    pub async fn note(&self, id: &str, message: &str) -> Result<()> {
        const SQL: &str = "INSERT INTO drain_events (drain_id, at, state, owner, message) \
                           SELECT id, $2, state, NULL, $3 FROM drains WHERE id = $1";
        let (id, message) = (id.to_owned(), message.to_owned());
        self.write_redoable(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&id)
                .bind(now_ms())
                .bind(&message)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record history")))
        })
        .await
    }

    /// Adds `note` to the history entry that started `owner`'s current attempt of drain `id`
    /// (its last entry, `copying`, recorded by `owner`), e.g. how the attempt's mover runs;
    /// `false` when that entry is not the last (the attempt ended, or was taken over).
    pub async fn note_attempt(&self, id: &str, owner: &str, note: &str) -> Result<bool> {
        const SQL: &str = "UPDATE drain_events \
             SET message = CASE WHEN message IS NULL OR message = '' THEN $3 \
                 ELSE message || '; ' || $3 END \
             WHERE seq = (SELECT MAX(seq) FROM drain_events WHERE drain_id = $1) \
               AND drain_id = $1 AND state = $4 AND owner = $2";
        let (id, owner, note) = (id.to_owned(), owner.to_owned(), note.to_owned());
        // Only information: if a power cut loses it, the attempt is not worse off.
        self.write_redoable(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&id)
                .bind(&owner)
                .bind(&note)
                .bind(DrainState::Copying)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
                .map_err(query_error("note the attempt")))
        })
        .await
    }

    /// Applies one lifecycle transition (see the module doc); `Ok(Err(Refused::Stale))` when
    /// the drain was no longer as the writer saw it, and nothing was changed.
    pub async fn transition(&self, change: Transition) -> Result<Result<Drain, Refused>> {
        let outcome = self
            .write(move |l| async move { l.transition_tx(&change).await })
            .await?;
        match outcome {
            Err(Refused::VolumeBusy { id, .. }) => Ok(Err(self.busy(id).await?)),
            other => Ok(other),
        }
    }

    /// Why drain `id` cannot become active: its volume's active drain.
    async fn busy(&self, id: String) -> Result<Refused> {
        let drain = self.drain(&id).await?;
        let filter = DrainFilter {
            namespace: drain.as_ref().map(|d| d.namespace.clone()),
            pvc: drain.as_ref().map(|d| d.pvc.clone()),
            ..DrainFilter::default()
        };
        let active = self
            .drains(&filter, 1000)
            .await?
            .into_iter()
            .find(|d| d.state.is_active());
        Ok(Refused::VolumeBusy {
            id,
            volume: drain.map(|d| d.volume().to_string()).unwrap_or_default(),
            active: active.map(|d| d.id).unwrap_or_else(|| "another".to_owned()),
        })
    }
}

impl Transition {
    /// A transition with no fields besides the state changing.
    pub fn new(
        id: &str,
        from: DrainState,
        event: Event,
        by: Writer,
        message: impl Into<String>,
    ) -> Self {
        Self {
            id: id.to_owned(),
            from,
            event,
            by,
            message: message.into(),
            not_before_ms: None,
            snapshot: None,
            error: None,
        }
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

impl AttemptOutcome {
    /// Whether this outcome's record is flushed to disk before the attempt ends: a completed
    /// drain's (the platform may let go of what protected the volume once it is recorded). Every other
    /// outcome is redone if a power loss takes its record: the drain's lease expires and the
    /// next attempt fails, or gives up, again. (Flushing every failure made each failing drain
    /// an fsync on SQLite's one writer, beside the handoffs'.)
    fn is_flushed(&self) -> bool {
        matches!(self, Self::Completed { .. })
    }

    /// The transition that records this outcome for the lease holder `owner`.
    fn transition(&self, id: &str, owner: &str, now: i64) -> Transition {
        let by = Writer::Holder(owner.to_owned());
        let from = DrainState::Copying;
        match self {
            Self::Completed { snapshot } => Transition {
                snapshot: Some(snapshot.clone()),
                ..Transition::new(
                    id,
                    from,
                    Event::Completed,
                    by,
                    format!("snapshot {snapshot}"),
                )
            },
            Self::Failed { error, after } => {
                let (not_before, message) = match after {
                    AfterFailure::RetryAfter(delay) => (
                        now + delay.as_millis() as i64,
                        format!("retry in {} s: {error}", delay.as_secs()),
                    ),
                    AfterFailure::Failing(delay) => (
                        now + delay.as_millis() as i64,
                        format!(
                            "failing; tried again in {} s (and on, until it succeeds or is abandoned): {error}",
                            delay.as_secs()
                        ),
                    ),
                    AfterFailure::GiveUp => (now, error.clone()),
                };
                Transition {
                    not_before_ms: Some(not_before),
                    error: Some(error.clone()),
                    ..Transition::new(id, from, after.event(), by, message)
                }
            }
            Self::Released => Transition {
                not_before_ms: Some(now),
                ..Transition::new(id, from, Event::Released, by, "released at shutdown")
            },
        }
    }
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

/// How an event changes the attempt counter: a claim starts an attempt, a take-over starts
/// another, a release at shutdown gives its attempt back, and a retry by hand starts afresh.
fn attempts_sql(event: Event) -> &'static str {
    match event {
        Event::Claimed | Event::TakenOver => "attempts + 1",
        Event::Released => "attempts - 1",
        Event::RetriedByHand => "0",
        _ => "attempts",
    }
}

/// Transactions run through [`Ledger::write`].
impl Ledger {
    async fn claim_drain_tx(
        &self,
        owner: &str,
        lease: Duration,
        busy: &[String],
    ) -> Result<Option<Drain>> {
        let now = now_ms();
        let lock = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let by = Writer::Claimant {
            owner: owner.to_owned(),
            lease_expires_ms: now + lease.as_millis() as i64,
        };
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("claim drain"))?;
            for (from, event, pick) in claim_picks() {
                // One past the busy drains, so one that is not busy is among them if any is.
                let limit = busy.len() + 1;
                let sql = format!("{} {limit}{lock}", pick.trim_end_matches(" 1"));
                let picked: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(from)
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query_error("claim drain"))?;
                let Some(id) = picked.into_iter().find(|id| !busy.contains(id)) else {
                    continue;
                };
                let change = Transition::new(&id, from, event, by.clone(), String::new());
                if let Ok(drain) = apply(&mut tx, &change, now).await? {
                    tx.commit().await.map_err(query_error("claim drain"))?;
                    return Ok(Some(drain));
                }
            }
            tx.commit().await.map_err(query_error("claim drain"))?;
            Ok(None)
        })
    }

    async fn renew_lease_tx(&self, id: &str, owner: &str, lease: Duration) -> Result<bool> {
        const SQL: &str = "UPDATE drains SET lease_expires = $3, updated_at = $4 \
                           WHERE id = $1 AND lease_owner = $2 AND state = $5";
        let now = now_ms();
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(id)
            .bind(owner)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(DrainState::Copying)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(query_error("renew lease")))
    }

    async fn transition_tx(&self, change: &Transition) -> Result<Result<Drain, Refused>> {
        let now = now_ms();
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("change drain"))?;
            let outcome = apply(&mut tx, change, now).await?;
            tx.commit().await.map_err(query_error("change drain"))?;
            Ok(outcome)
        })
    }
}

/// The one place a drain's state changes: checks the event against the lifecycle, updates the
/// row only if it is still in `change.from` (and held as `change.by` says), and records the
/// history row, inside the caller's transaction.
async fn apply<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    change: &Transition,
    now: i64,
) -> Result<Result<Drain, Refused>>
where
    DB: sqlx::Database + super::Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'r> Drain: sqlx::FromRow<'r, DB::Row>,
    for<'q> DrainState: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let Some(to) = change.from.after(change.event) else {
        return Ok(Err(Refused::Conflict {
            id: change.id.clone(),
            state: change.from,
            action: "moved that way",
        }));
    };
    let (owner_check, lease_owner, lease_expires, holder) = match &change.by {
        Writer::Anyone => (None, None, None, String::new()),
        Writer::Holder(owner) => (
            Some(owner.as_str()),
            None,
            None,
            format!(" held by {owner}"),
        ),
        Writer::Claimant {
            owner,
            lease_expires_ms,
        } => (
            None,
            Some(owner.as_str()),
            Some(*lease_expires_ms),
            String::new(),
        ),
    };
    let taking_over = change.event == Event::TakenOver;
    let sql = format!(
        "UPDATE drains SET state = $3, attempts = {attempts}, not_before = COALESCE($4, not_before), \
         lease_owner = $5, lease_expires = $6, snapshot_id = COALESCE($7, snapshot_id), \
         last_error = COALESCE($8, last_error), updated_at = $9, finished_at = $10 \
         WHERE id = $1 AND state = $2 AND ($11 IS NULL OR lease_owner = $11){expired} \
         RETURNING {COLUMNS}",
        attempts = attempts_sql(change.event),
        expired = if taking_over {
            " AND lease_expires < $9"
        } else {
            ""
        },
    );
    let updated: Result<Option<Drain>, sqlx::Error> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(change.id.as_str())
        .bind(change.from)
        .bind(to)
        .bind(change.not_before_ms)
        .bind(lease_owner)
        .bind(lease_expires)
        .bind(change.snapshot.as_deref())
        .bind(change.error.as_deref())
        .bind(now)
        .bind(to.is_final().then_some(now))
        .bind(owner_check)
        .fetch_optional(&mut **tx)
        .await;
    let updated = match updated {
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            // Only one drain per volume is active: the caller's transaction is rolled back,
            // and `Ledger::transition` names the active drain.
            return Ok(Err(Refused::VolumeBusy {
                id: change.id.clone(),
                volume: String::new(),
                active: String::new(),
            }));
        }
        other => other.map_err(query_error("change drain"))?,
    };
    let Some(drain) = updated else {
        return Ok(Err(Refused::Stale {
            id: change.id.clone(),
            expected: change.from,
            holder,
        }));
    };
    let message = match (change.event, change.message.is_empty()) {
        (Event::Claimed | Event::TakenOver, true) => {
            format!("attempt {} of {}", drain.attempts, drain.max_attempts)
        }
        _ => change.message.clone(),
    };
    let recorder = lease_owner.or(owner_check);
    sqlx::query("INSERT INTO drain_events (drain_id, at, state, owner, message) VALUES ($1, $2, $3, $4, $5)")
        .bind(change.id.as_str())
        .bind(now)
        .bind(to)
        .bind(recorder)
        .bind(Some(message.as_str()))
        .execute(&mut **tx)
        .await
        .map_err(query_error("record history"))?;
    Ok(Ok(drain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_cursors_round_trip_and_refuse_junk() {
        let cursor = PageCursor {
            created_ms: 1_700_000_000_123,
            id: "d-20261201-0a".into(),
        };
        assert_eq!(cursor.to_string().parse::<PageCursor>().unwrap(), cursor);
        for bad in ["", "x.d-1", "12.", "12.a b", "12"] {
            assert!(bad.parse::<PageCursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn active_states_are_the_lifecycles() {
        assert_eq!(
            active_states_sql(),
            "('requested', 'awaiting_release', 'queued', 'copying', 'failing')"
        );
    }

    #[test]
    fn claim_picks_are_lifecycle_transitions() {
        for (from, event, _) in claim_picks() {
            assert_eq!(from.after(event), Some(DrainState::Copying));
        }
    }
}
