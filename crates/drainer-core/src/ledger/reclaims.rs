//! Claims drainer deletes to give their storage back (Kubernetes mode's `drainer.io/reclaim-after`):
//! one row per claim, written *before* the delete (so the snapshot is pinned before the data's
//! last other copy goes), marked deleted once the API server accepted the delete, and removed
//! again if it refused. Every row pins its snapshot: the retention pass never prunes it. The
//! reclaimer decides; this module only stores and reads.

use super::{Ledger, Result, on_pool, query_error};
use std::collections::{BTreeSet, HashMap};

/// A claim reclaimed (or about to be), as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

    /// Every reclaim recorded, newest decision first.
    pub async fn reclaims(&self) -> Result<Vec<Reclaim>> {
        const SQL: &str = "SELECT pvc_uid, namespace, pvc, statefulset, drain_id, snapshot, \
                           decided, deleted, replica FROM reclaims ORDER BY decided DESC";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await
            .map_err(query_error("read reclaims")))
    }

    /// The snapshots reclaimed claims rely on, by volume (`namespace/pvc`): retention keeps them.
    pub async fn pinned_snapshots(&self) -> Result<HashMap<String, BTreeSet<String>>> {
        let mut pinned: HashMap<String, BTreeSet<String>> = HashMap::new();
        for r in self.reclaims().await? {
            pinned.entry(r.volume()).or_default().insert(r.snapshot);
        }
        Ok(pinned)
    }
}
