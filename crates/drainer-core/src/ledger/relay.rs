//! Multipart uploads relayed for movers (`http::mover`): recorded here rather than in one
//! replica's memory, so any replica behind the drainer's Service accepts any part of any
//! upload and completes it, and an upload outlives the replica that started it.

use super::{Ledger, Result, Urgency, now_ms, on_pool, query_error};
use crate::snapshot::{PartialUpload, Run};

/// A relayed upload as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RelayRecord {
    /// The relay's id (what the mover names).
    pub id: String,
    /// The drain it belongs to.
    pub drain_id: String,
    /// The store key it writes.
    pub object_key: String,
    /// The store's id of the multipart upload.
    pub store_upload_id: String,
}

/// One stored part of a relayed upload.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RelayPart {
    /// Its index.
    #[sqlx(try_from = "i64")]
    pub idx: u64,
    /// The store's id of the part.
    pub part_id: String,
    /// Its length in bytes.
    #[sqlx(try_from = "i64")]
    pub len: u64,
}

/// Records one part of an upload; a part stored again replaces the earlier (the last write of
/// a part wins, as in the store).
const RECORD_PART: &str = "INSERT INTO relay_parts (upload_id, idx, part_id, len) VALUES ($1, $2, $3, $4) \
                           ON CONFLICT (upload_id, idx) DO UPDATE SET part_id = excluded.part_id, len = excluded.len";

impl Ledger {
    /// Records a new relayed upload.
    pub async fn create_relay(&self, relay: &RelayRecord) -> Result<()> {
        const SQL: &str = "INSERT INTO relay_uploads (id, drain_id, object_key, store_upload_id, created_at) \
                           VALUES ($1, $2, $3, $4, $5)";
        let relay = relay.clone();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&relay.id)
                .bind(&relay.drain_id)
                .bind(&relay.object_key)
                .bind(&relay.store_upload_id)
                .bind(now_ms())
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record upload")))
        })
        .await
    }

    /// A relayed upload by id.
    pub async fn relay(&self, id: &str) -> Result<Option<RelayRecord>> {
        const SQL: &str =
            "SELECT id, drain_id, object_key, store_upload_id FROM relay_uploads WHERE id = $1";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(query_error("read upload")))
    }

    /// Records a part stored (again: the last write of a part wins, as in the store).
    pub async fn record_relay_part(&self, upload: &str, part: &RelayPart) -> Result<()> {
        let (upload, part) = (upload.to_owned(), part.clone());
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(RECORD_PART)
                .bind(&upload)
                .bind(part.idx as i64)
                .bind(&part.part_id)
                .bind(part.len as i64)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record part")))
        })
        .await
    }

    /// Records parts stored, each of its upload (by the upload's id), and then, if given, the
    /// progress of an unfinished upload of a run (as [`Ledger::record_partial`]), in one
    /// transaction: all or none, so that a durability barrier and the progress that counts on
    /// it cost one commit. Flushed to disk when it records parts; progress alone is
    /// redoable work, as [`Ledger::record_partial`] records it.
    pub async fn record_relay_parts_and_partial(
        &self,
        parts: &[(String, RelayPart)],
        partial: Option<(&Run, &PartialUpload)>,
    ) -> Result<()> {
        let parts = parts.to_vec();
        let partial = partial.map(|(run, upload)| (run.clone(), upload.clone()));
        let urgency = if parts.is_empty() {
            Urgency::Redoable
        } else {
            Urgency::Background
        };
        self.write_as(urgency, move |l| async move {
            l.save_parts_and_partial(&parts, partial.as_ref()).await
        })
        .await
    }

    /// The stored parts of a relayed upload, by index.
    pub async fn relay_parts(&self, upload: &str) -> Result<Vec<RelayPart>> {
        const SQL: &str =
            "SELECT idx, part_id, len FROM relay_parts WHERE upload_id = $1 ORDER BY idx";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(upload)
            .fetch_all(pool)
            .await
            .map_err(query_error("read parts")))
    }

    /// Forgets a relayed upload that was completed or aborted.
    pub async fn forget_relay(&self, upload: &str) -> Result<()> {
        let upload = upload.to_owned();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| {
                let mut tx = pool.begin().await.map_err(query_error("forget upload"))?;
                for sql in [
                    "DELETE FROM relay_parts WHERE upload_id = $1",
                    "DELETE FROM relay_uploads WHERE id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(&upload)
                        .execute(&mut *tx)
                        .await
                        .map_err(query_error("forget upload"))?;
                }
                tx.commit().await.map_err(query_error("forget upload"))
            })
        })
        .await
    }

    /// The relayed uploads of a drain that were never completed (to abort when it ends).
    pub async fn relays_of(&self, drain: &str) -> Result<Vec<RelayRecord>> {
        const SQL: &str = "SELECT id, drain_id, object_key, store_upload_id FROM relay_uploads \
                           WHERE drain_id = $1";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(drain)
            .fetch_all(pool)
            .await
            .map_err(query_error("read uploads")))
    }
}
