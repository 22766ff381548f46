//! What the service's retention pass (`drainer::pruning`) reads and records: which volumes are
//! busy (an unfinished copy run, an active drain), when each volume's claim was last seen,
//! and every prune it did. The pass decides; this module only stores and reads.

use super::drains::{BULK_ROWS, active_states_sql};
use super::{Ledger, Result, now_ms, on_pool, query_error};
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;

/// One volume pruned by a pass, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PruneRecord {
    /// `namespace/pvc`.
    pub volume: String,
    /// When (ms since the epoch).
    pub at: i64,
    /// The policy, as text (`last=3,daily=7`).
    pub policy: String,
    /// Where the policy came from (`flags`, `claim annotation`, `StatefulSet annotation`).
    pub source: String,
    /// The snapshots deleted, space-separated, oldest first.
    pub deleted: String,
    /// How many snapshots were deleted.
    pub snapshots: i64,
    /// How many objects were deleted.
    pub objects: i64,
    /// The replica that pruned.
    pub replica: String,
}

impl Ledger {
    /// The volumes of store `store_url` that are busy, each with why: an unfinished copy run
    /// (running, or interrupted and waiting to be resumed), or an active drain.
    pub async fn busy_volumes(&self, store_url: &str) -> Result<HashMap<String, String>> {
        const RUNS: &str =
            "SELECT volume, id FROM copy_runs WHERE state = 'running' AND store_url = $1";
        let drains = format!(
            "SELECT namespace, pvc, id, state FROM drains WHERE state IN {}",
            active_states_sql()
        );
        let mut busy = HashMap::new();
        on_pool!(self, |pool, DB| {
            let runs = sqlx::query(RUNS)
                .bind(store_url)
                .fetch_all(pool)
                .await
                .map_err(query_error("read unfinished copy runs"))?;
            for row in runs {
                let (volume, id): (String, String) = (row.get(0), row.get(1));
                busy.insert(volume, format!("copy run {id} is unfinished"));
            }
            let active = sqlx::query(sqlx::AssertSqlSafe(drains))
                .fetch_all(pool)
                .await
                .map_err(query_error("read active drains"))?;
            for row in active {
                let (ns, pvc, id, state): (String, String, String, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                busy.entry(format!("{ns}/{pvc}"))
                    .or_insert_with(|| format!("drain {id} is {state}"));
            }
        });
        Ok(busy)
    }

    /// Records that the claims of `volumes` exist now.
    pub async fn record_volume_sightings(&self, volumes: &[String]) -> Result<()> {
        if volumes.is_empty() {
            return Ok(());
        }
        let (volumes, now) = (volumes.to_vec(), now_ms());
        self.write_redoable(move |l| async move {
            on_pool!(l, |pool, DB| {
                let mut tx = pool
                    .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                    .await
                    .map_err(query_error("record volume sightings"))?;
                for chunk in volumes.chunks(BULK_ROWS) {
                    let mut upsert = QueryBuilder::<DB>::new(
                        "INSERT INTO volume_sightings (volume, last_seen) ",
                    );
                    upsert.push_values(chunk, |mut row, v| {
                        row.push_bind(v.as_str()).push_bind(now);
                    });
                    upsert
                        .push(" ON CONFLICT (volume) DO UPDATE SET last_seen = excluded.last_seen");
                    upsert
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(query_error("record volume sightings"))?;
                }
                tx.commit()
                    .await
                    .map_err(query_error("record volume sightings"))
            })
        })
        .await
    }

    /// When each volume's claim was last seen (ms since the epoch).
    pub async fn volume_sightings(&self) -> Result<HashMap<String, i64>> {
        const SQL: &str = "SELECT volume, last_seen FROM volume_sightings";
        on_pool!(self, |pool, DB| {
            let rows: Vec<(String, i64)> = sqlx::query_as(SQL)
                .fetch_all(pool)
                .await
                .map_err(query_error("read volume sightings"))?;
            Ok(rows.into_iter().collect())
        })
    }

    /// Records a volume pruned.
    pub async fn record_prune(&self, record: &PruneRecord) -> Result<()> {
        const SQL: &str = "INSERT INTO prunes (volume, at, policy, source, deleted, snapshots, \
                           objects, replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let r = record.clone();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&r.volume)
                .bind(r.at)
                .bind(&r.policy)
                .bind(&r.source)
                .bind(&r.deleted)
                .bind(r.snapshots)
                .bind(r.objects)
                .bind(&r.replica)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record prune")))
        })
        .await
    }

    /// The newest `limit` prunes, newest first.
    pub async fn prunes(&self, limit: u32) -> Result<Vec<PruneRecord>> {
        const SQL: &str = "SELECT volume, at, policy, source, deleted, snapshots, objects, replica \
                           FROM prunes ORDER BY at DESC, id DESC LIMIT $1";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(query_error("read prunes")))
    }
}
