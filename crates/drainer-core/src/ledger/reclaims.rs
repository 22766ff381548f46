//! Claims drainer deletes to give their storage back (Kubernetes mode's `drainer.io/reclaim-after`):
//! one row per claim, written *before* the delete (so the snapshot is pinned before the data's
//! last other copy goes), marked deleted once the API server accepted the delete, and removed
//! again if it refused. Every row pins its snapshot (the retention pass never prunes it) until
//! it is released: once the ordinal came back, its pod reported the restore of that snapshot
//! into its new claim, and that claim was drained again, the data lives on in the later snapshot ([`Ledger::release_superseded_pins`],
//! called by the retention pass). Released rows stay, for the record. The reclaimer decides;
//! this module only stores and reads.

use super::{Ledger, Result, on_pool, query_error};
use std::collections::{BTreeSet, HashMap};

/// A claim reclaimed (or about to be), as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Reclaim {
    /// The claim's UID.
    pub pvc_uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pvc: String,
    /// Its StatefulSet.
    pub statefulset: String,
    /// The drain that copied it.
    pub drain_id: String,
    /// The snapshot its data lives on (pinned against retention).
    pub snapshot: String,
    /// When drainer decided to delete it (ms since the epoch).
    pub decided: i64,
    /// When the API server accepted the delete (ms), `None` before.
    pub deleted: Option<i64>,
    /// The replica that reclaimed it.
    pub replica: String,
    /// When its pin was released (ms), `None` while the snapshot is pinned.
    pub released: Option<i64>,
    /// The later drain whose snapshot superseded the pinned one.
    pub released_by: Option<String>,
}

impl Reclaim {
    /// The volume, `namespace/pvc`.
    pub fn volume(&self) -> String {
        format!("{}/{}", self.namespace, self.pvc)
    }
}

impl Ledger {
    /// Records that claim `r.pvc_uid` is about to be deleted, pinning its snapshot (a row for
    /// the same claim from an earlier, refused attempt is replaced).
    pub async fn pin_reclaim(&self, r: &Reclaim) -> Result<()> {
        let r = Reclaim {
            deleted: None,
            released: None,
            released_by: None,
            ..r.clone()
        };
        self.write(move |l| async move {
            l.upsert_reclaim(&r, "pin a reclaimed claim's snapshot")
                .await
        })
        .await
    }

    /// Records that the API server accepted the delete of claim `r.pvc_uid` at `r.deleted`
    /// (written whole: the pin holds even if another replica's refused attempt took it off
    /// meanwhile).
    pub async fn reclaimed(&self, r: &Reclaim) -> Result<()> {
        let r = r.clone();
        self.write(move |l| async move { l.upsert_reclaim(&r, "record a reclaimed claim").await })
            .await
    }

    async fn upsert_reclaim(&self, r: &Reclaim, what: &'static str) -> Result<()> {
        const SQL: &str = "INSERT INTO reclaims (pvc_uid, namespace, pvc, statefulset, drain_id, \
                           snapshot, decided, deleted, replica) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                           ON CONFLICT (pvc_uid) DO UPDATE SET drain_id = excluded.drain_id, \
                           snapshot = excluded.snapshot, decided = excluded.decided, \
                           deleted = excluded.deleted, replica = excluded.replica";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(&r.pvc_uid)
            .bind(&r.namespace)
            .bind(&r.pvc)
            .bind(&r.statefulset)
            .bind(&r.drain_id)
            .bind(&r.snapshot)
            .bind(r.decided)
            .bind(r.deleted)
            .bind(&r.replica)
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error(what)))
    }

    /// Forgets the pin of claim `pvc_uid` whose delete did not happen (refused, or the claim
    /// came back into use); a claim deleted already keeps its pin.
    pub async fn unpin_reclaim(&self, pvc_uid: &str) -> Result<()> {
        const SQL: &str = "DELETE FROM reclaims WHERE pvc_uid = $1 AND deleted IS NULL";
        let uid = pvc_uid.to_owned();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&uid)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("unpin a claim not reclaimed")))
        })
        .await
    }

    /// Every reclaim recorded (released ones included), newest decision first.
    pub async fn reclaims(&self) -> Result<Vec<Reclaim>> {
        const SQL: &str = "SELECT pvc_uid, namespace, pvc, statefulset, drain_id, snapshot, \
                           decided, deleted, replica, released, released_by FROM reclaims \
                           ORDER BY decided DESC";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await
            .map_err(query_error("read reclaims")))
    }

    /// The snapshots reclaimed claims rely on, by volume (`namespace/pvc`): retention keeps them.
    pub async fn pinned_snapshots(&self) -> Result<HashMap<String, BTreeSet<String>>> {
        let mut pinned: HashMap<String, BTreeSet<String>> = HashMap::new();
        for r in self
            .reclaims()
            .await?
            .into_iter()
            .filter(|r| r.released.is_none())
        {
            pinned.entry(r.volume()).or_default().insert(r.snapshot);
        }
        Ok(pinned)
    }
}

impl Ledger {
    /// Releases, at `now` (ms), the pin of every deleted claim whose data lives on in a later
    /// snapshot: a drain of the same volume, in the same life of its namespace, of another
    /// claim (the ordinal's new one) created after the delete, completed with another
    /// snapshot, where a pod mounting the volume reported a restore of the pinned snapshot
    /// after the delete and before that drain was requested ([`Ledger::record_restore`]: the
    /// new claim was filled from the pinned snapshot, not started empty). Returns the rows
    /// released. A row whose drain is no longer in the ledger stays pinned.
    pub async fn release_superseded_pins(&self, now: i64) -> Result<Vec<Reclaim>> {
        let mut released = Vec::new();
        for r in self.reclaims().await? {
            let Some(deleted) = r.deleted.filter(|_| r.released.is_none()) else {
                continue;
            };
            let Some(later) = self.superseding_drain(&r, deleted).await? else {
                continue;
            };
            if self.mark_released(&r.pvc_uid, now, &later).await? {
                released.push(Reclaim {
                    released: Some(now),
                    released_by: Some(later),
                    ..r
                });
            }
        }
        Ok(released)
    }

    /// Records that pod `pod_uid` (by `principal`), which mounts `namespace/pvc`, restored
    /// `snapshot` into it at `at` (ms); a second report of the same restore changes nothing.
    pub async fn record_restore(
        &self,
        volume: &crate::volume::VolumeId,
        snapshot: &str,
        pod_uid: &str,
        principal: &str,
        at: i64,
    ) -> Result<()> {
        const SQL: &str = "INSERT INTO restores \
             (namespace, pvc, snapshot_id, pod_uid, restored_at, restored_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
        let (namespace, pvc) = (volume.namespace.clone(), volume.name.clone());
        let (snapshot, pod_uid, principal) = (
            snapshot.to_owned(),
            pod_uid.to_owned(),
            principal.to_owned(),
        );
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&namespace)
                .bind(&pvc)
                .bind(&snapshot)
                .bind(&pod_uid)
                .bind(at)
                .bind(&principal)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record a restore into a claim")))
        })
        .await
    }

    /// The first completed drain that supersedes reclaim `r` (claim deleted at `deleted`).
    async fn superseding_drain(&self, r: &Reclaim, deleted: i64) -> Result<Option<String>> {
        const SQL: &str = "SELECT d.id FROM drains d, drains pinned \
             WHERE pinned.id = $1 AND d.namespace = pinned.namespace AND d.pvc = pinned.pvc \
             AND d.state = 'completed' AND d.snapshot_id IS NOT NULL AND d.snapshot_id <> $2 \
             AND d.pvc_uid IS NOT NULL AND d.pvc_uid <> $3 AND d.created_at > $4 \
             AND (pinned.namespace_uid IS NULL OR d.namespace_uid = pinned.namespace_uid) \
             AND EXISTS (SELECT 1 FROM restores x WHERE x.namespace = d.namespace \
                 AND x.pvc = d.pvc AND x.snapshot_id = $2 \
                 AND x.restored_at >= $4 AND x.restored_at <= d.created_at) \
             ORDER BY d.finished_at, d.id LIMIT 1";
        on_pool!(self, |pool, DB| sqlx::query_scalar::<_, String>(SQL)
            .bind(&r.drain_id)
            .bind(&r.snapshot)
            .bind(&r.pvc_uid)
            .bind(deleted)
            .fetch_optional(pool)
            .await
            .map_err(query_error(
                "find the drain that supersedes a pinned snapshot"
            )))
    }

    /// Marks the pin of claim `pvc_uid` released by drain `later`; false if another replica
    /// did first.
    async fn mark_released(&self, pvc_uid: &str, now: i64, later: &str) -> Result<bool> {
        const SQL: &str = "UPDATE reclaims SET released = $1, released_by = $2 \
                           WHERE pvc_uid = $3 AND released IS NULL";
        let (uid, later) = (pvc_uid.to_owned(), later.to_owned());
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(now)
                .bind(&later)
                .bind(&uid)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
                .map_err(query_error("release a reclaimed claim's pin")))
        })
        .await
    }
}
