//! Multipart uploads relayed for movers (`http::mover_protocol`): recorded here rather than in one
//! replica's memory, so any replica behind the drainer's Service accepts any part of any
//! upload and completes it, and an upload outlives the replica that started it.

use super::RelayedObject;
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
    /// The BLAKE3 chaining value of its bytes as a subtree of the object (hex), when the
    /// drainer received them (a relayed part, not one the mover stored itself).
    pub cv: Option<String>,
    /// For part 0 received by the drainer: the BLAKE3 of the part alone (hex), which is the
    /// object's when it has no other part.
    pub alone: Option<String>,
}

/// Records one part of an upload; a part stored again replaces the earlier (the last write of
/// a part wins, as in the store).
const RECORD_PART: &str = "INSERT INTO relay_parts (upload_id, idx, part_id, len, cv, alone) VALUES ($1, $2, $3, $4, $5, $6) \
                           ON CONFLICT (upload_id, idx) DO UPDATE SET part_id = excluded.part_id, len = excluded.len, \
                           cv = excluded.cv, alone = excluded.alone";

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
                .bind(&part.cv)
                .bind(&part.alone)
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
        const SQL: &str = "SELECT idx, part_id, len, cv, alone FROM relay_parts WHERE upload_id = $1 ORDER BY idx";
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

    /// Forgets relayed upload `upload`, completed at `key`, and records what the relay
    /// received for its object (`None`: not every part passed through the drainer, so any
    /// earlier record of the key goes), in one transaction.
    pub async fn complete_relay(
        &self,
        upload: &str,
        key: &str,
        received: Option<(&str, RelayedObject)>,
    ) -> Result<()> {
        const FORGET_OBJECT: &str = "DELETE FROM relayed_objects WHERE object_key = $1";
        const RECORD_OBJECT: &str = "INSERT INTO relayed_objects (object_key, drain_id, size, blake3, recorded_at) \
                                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (object_key) DO UPDATE SET \
                                     drain_id = excluded.drain_id, size = excluded.size, blake3 = excluded.blake3, \
                                     recorded_at = excluded.recorded_at";
        let (upload, key) = (upload.to_owned(), key.to_owned());
        let received = received.map(|(drain, object)| (drain.to_owned(), object));
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| {
                let failed = query_error("complete upload");
                let mut tx = pool.begin().await.map_err(&failed)?;
                for sql in [
                    "DELETE FROM relay_parts WHERE upload_id = $1",
                    "DELETE FROM relay_uploads WHERE id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(&upload)
                        .execute(&mut *tx)
                        .await
                        .map_err(&failed)?;
                }
                let object = match &received {
                    Some((drain, object)) => sqlx::query(RECORD_OBJECT)
                        .bind(&key)
                        .bind(drain)
                        .bind(object.size as i64)
                        .bind(&object.blake3)
                        .bind(now_ms()),
                    None => sqlx::query(FORGET_OBJECT).bind(&key),
                };
                object.execute(&mut *tx).await.map_err(&failed)?;
                tx.commit().await.map_err(&failed)
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
