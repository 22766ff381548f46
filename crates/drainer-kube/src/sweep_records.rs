//! What sweeps remember between runs, in the ledger's tables `known_statefulsets` and
//! `claim_sightings`: the StatefulSets they saw (so the claims of one that was deleted are
//! still recognised, after a restart too), and what they saw each claim of a StatefulSet do
//! (when a pod last mounted it, since when it is orphaned). Kubernetes mode's own tables, kept
//! through the ledger's seam for a mode's tables (their schema is in drainer-core's one
//! migration stream). The sweep decides what to write; this module only stores and reads it,
//! in bulk statements.

use drainer_core::ledger::{BULK_ROWS, Dialect, Ledger, Result, now_ms, query_error};
use sqlx::QueryBuilder;

/// A StatefulSet a sweep saw: enough to recognise its claims after it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedSet {
    /// Its UID.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The names of its claim templates.
    pub templates: Vec<String>,
    /// Whether it said `drainer.io/drain: "false"` when last seen.
    pub opted_out: bool,
}

/// A remembered StatefulSet as stored.
#[derive(sqlx::FromRow)]
struct SetRow {
    uid: String,
    namespace: String,
    name: String,
    templates: String,
    opted_out: i64,
}

impl From<SetRow> for RememberedSet {
    fn from(row: SetRow) -> Self {
        Self {
            uid: row.uid,
            namespace: row.namespace,
            name: row.name,
            templates: serde_json::from_str(&row.templates).unwrap_or_default(),
            opted_out: row.opted_out != 0,
        }
    }
}

/// What sweeps saw of one claim of a StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimSighting {
    /// The claim's UID.
    pub pvc_uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pvc: String,
    /// The StatefulSet it belongs to.
    pub statefulset: Option<String>,
    /// When a sweep last saw a pod mount it (ms since the epoch). Written as `None`, the
    /// stored time is kept.
    #[sqlx(rename = "last_mounted")]
    pub last_mounted_ms: Option<i64>,
    /// Since when it is orphaned (ms since the epoch). Written as `Some`, an earlier stored
    /// time is kept; written as `None`, it is cleared (the claim is wanted again).
    #[sqlx(rename = "orphaned_since")]
    pub orphaned_since_ms: Option<i64>,
    /// When a sweep last wrote it.
    #[sqlx(rename = "last_seen")]
    pub last_seen_ms: i64,
}

/// What sweeps remember, in the ledger.
#[async_trait::async_trait]
pub trait SweepRecords {
    /// Every StatefulSet sweeps remember.
    async fn remembered_sets(&self) -> Result<Vec<RememberedSet>>;
    /// Remembers `sets` (new ones, or what changed of known ones), in one transaction.
    async fn remember_sets(&self, sets: &[RememberedSet]) -> Result<()>;
    /// Everything sweeps saw of claims.
    async fn claim_sightings(&self) -> Result<Vec<ClaimSighting>>;
    /// Records `seen` (merged into what is stored, see [`ClaimSighting`]) and forgets the
    /// claims in `forget` (UIDs of claims that no longer exist), in one transaction.
    async fn record_sightings(&self, seen: &[ClaimSighting], forget: &[String]) -> Result<()>;
}

#[async_trait::async_trait]
impl SweepRecords for Ledger {
    async fn remembered_sets(&self) -> Result<Vec<RememberedSet>> {
        const SQL: &str =
            "SELECT uid, namespace, name, templates, opted_out FROM known_statefulsets";
        drainer_core::on_ledger_pool!(self, |pool, DB| sqlx::query_as::<_, SetRow>(SQL)
            .fetch_all(pool)
            .await
            .map(|rows| rows.into_iter().map(RememberedSet::from).collect())
            .map_err(query_error("read remembered StatefulSets")))
    }

    async fn remember_sets(&self, sets: &[RememberedSet]) -> Result<()> {
        if sets.is_empty() {
            return Ok(());
        }
        let sets = sets.to_vec();
        self.write(move |l| async move { remember_sets_tx(&l, &sets).await })
            .await
    }

    async fn claim_sightings(&self) -> Result<Vec<ClaimSighting>> {
        const SQL: &str = "SELECT pvc_uid, namespace, pvc, statefulset, last_mounted, \
                           orphaned_since, last_seen FROM claim_sightings";
        drainer_core::on_ledger_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await
            .map_err(query_error("read claim sightings")))
    }

    async fn record_sightings(&self, seen: &[ClaimSighting], forget: &[String]) -> Result<()> {
        if seen.is_empty() && forget.is_empty() {
            return Ok(());
        }
        let (seen, forget) = (seen.to_vec(), forget.to_vec());
        self.write(move |l| async move { record_sightings_tx(&l, &seen, &forget).await })
            .await
    }
}

/// Writes `sets` in one transaction (see [`SweepRecords::remember_sets`]).
async fn remember_sets_tx(ledger: &Ledger, sets: &[RememberedSet]) -> Result<()> {
    let now = now_ms();
    drainer_core::on_ledger_pool!(ledger, |pool, DB| {
        let mut tx = pool
            .begin_with(<DB as Dialect>::BEGIN_WRITE)
            .await
            .map_err(query_error("remember StatefulSets"))?;
        for chunk in sets.chunks(BULK_ROWS) {
            let mut insert = QueryBuilder::<DB>::new(
                "INSERT INTO known_statefulsets \
                 (uid, namespace, name, templates, opted_out, first_seen, updated_at) ",
            );
            insert.push_values(chunk, |mut row, set| {
                let templates =
                    serde_json::to_string(&set.templates).unwrap_or_else(|_| "[]".into());
                row.push_bind(set.uid.as_str())
                    .push_bind(set.namespace.as_str())
                    .push_bind(set.name.as_str())
                    .push_bind(templates)
                    .push_bind(i64::from(set.opted_out))
                    .push_bind(now)
                    .push_bind(now);
            });
            insert.push(
                " ON CONFLICT (uid) DO UPDATE SET namespace = excluded.namespace, \
                 name = excluded.name, templates = excluded.templates, \
                 opted_out = excluded.opted_out, updated_at = excluded.updated_at",
            );
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(query_error("remember StatefulSets"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("remember StatefulSets"))
    })
}

/// Writes `seen` and forgets `forget` in one transaction (see [`SweepRecords::record_sightings`]).
async fn record_sightings_tx(
    ledger: &Ledger,
    seen: &[ClaimSighting],
    forget: &[String],
) -> Result<()> {
    drainer_core::on_ledger_pool!(ledger, |pool, DB| {
        let mut tx = pool
            .begin_with(<DB as Dialect>::BEGIN_WRITE)
            .await
            .map_err(query_error("record claim sightings"))?;
        for chunk in seen.chunks(BULK_ROWS) {
            let mut upsert = QueryBuilder::<DB>::new(
                "INSERT INTO claim_sightings (pvc_uid, namespace, pvc, statefulset, \
                 last_mounted, orphaned_since, last_seen) ",
            );
            upsert.push_values(chunk, |mut row, s| {
                row.push_bind(s.pvc_uid.as_str())
                    .push_bind(s.namespace.as_str())
                    .push_bind(s.pvc.as_str())
                    .push_bind(s.statefulset.as_deref())
                    .push_bind(s.last_mounted_ms)
                    .push_bind(s.orphaned_since_ms)
                    .push_bind(s.last_seen_ms);
            });
            upsert.push(
                " ON CONFLICT (pvc_uid) DO UPDATE SET namespace = excluded.namespace, \
                 pvc = excluded.pvc, statefulset = excluded.statefulset, \
                 last_mounted = COALESCE(excluded.last_mounted, claim_sightings.last_mounted), \
                 orphaned_since = CASE WHEN excluded.orphaned_since IS NULL THEN NULL \
                   ELSE COALESCE(claim_sightings.orphaned_since, excluded.orphaned_since) END, \
                 last_seen = excluded.last_seen",
            );
            upsert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(query_error("record claim sightings"))?;
        }
        for chunk in forget.chunks(BULK_ROWS) {
            let mut delete =
                QueryBuilder::<DB>::new("DELETE FROM claim_sightings WHERE pvc_uid IN (");
            let mut uids = delete.separated(", ");
            for uid in chunk {
                uids.push_bind(uid.as_str());
            }
            delete.push(")");
            delete
                .build()
                .execute(&mut *tx)
                .await
                .map_err(query_error("forget claim sightings"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("record claim sightings"))
    })
}
