//! What a drainer that relays every byte received for each object (`http::mover_protocol`): its size
//! and BLAKE3, recorded before the write is acknowledged and kept until the drain's snapshot
//! is committed, so that the commit can refuse a manifest that does not describe what arrived
//! (a mover's bug, or a stolen mover token rewriting an object after the fact). A later write
//! of a key replaces its record; a key written or deleted in a way the drainer cannot hash
//! loses it (an object without a record is not checked).

use super::{Ledger, Result, now_ms, on_pool, query_error};
use std::collections::HashMap;

/// An object as the relay received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedObject {
    /// The store key it was written at.
    pub key: String,
    /// The bytes received.
    pub size: u64,
    /// Their BLAKE3, lower-case hex.
    pub blake3: String,
}

/// Rows per multi-row statement (well under SQLite's limit of bound parameters).
const OBJECTS_PER_STATEMENT: usize = 500;

impl Ledger {
    /// Records objects drain `drain` wrote through the relay (a key written again replaces
    /// its record), in one transaction that does not wait for the disk.
    pub async fn record_relayed_objects(
        &self,
        drain: &str,
        objects: &[RelayedObject],
    ) -> Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let (drain, objects) = (drain.to_owned(), dedup_last(objects));
        // Redoable: a record lost to a power cut leaves its object unchecked (or, if the key
        // had an earlier record, refused and stored again), never a bad snapshot committed.
        self.write_redoable(move |l| async move {
            on_pool!(l, |pool, DB| {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(query_error("record relayed objects"))?;
                let now = now_ms();
                for chunk in objects.chunks(OBJECTS_PER_STATEMENT) {
                    let mut insert = sqlx::QueryBuilder::<DB>::new(
                        "INSERT INTO relayed_objects (object_key, drain_id, size, blake3, recorded_at) ",
                    );
                    insert.push_values(chunk, |mut row, object| {
                        row.push_bind(object.key.as_str())
                            .push_bind(drain.as_str())
                            .push_bind(object.size as i64)
                            .push_bind(object.blake3.as_str())
                            .push_bind(now);
                    });
                    insert.push(
                        " ON CONFLICT (object_key) DO UPDATE SET drain_id = excluded.drain_id, \
                         size = excluded.size, blake3 = excluded.blake3, recorded_at = excluded.recorded_at",
                    );
                    insert
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(query_error("record relayed objects"))?;
                }
                tx.commit()
                    .await
                    .map_err(query_error("record relayed objects"))
            })
        })
        .await
    }

    /// Forgets what the relay received for `key` (written or deleted in a way the drainer
    /// cannot hash).
    pub async fn forget_relayed_object(&self, key: &str) -> Result<()> {
        const SQL: &str = "DELETE FROM relayed_objects WHERE object_key = $1";
        let key = key.to_owned();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&key)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("forget a relayed object")))
        })
        .await
    }

    /// What the relay received for drain `drain`'s objects, by store key.
    pub async fn relayed_objects(&self, drain: &str) -> Result<HashMap<String, RelayedObject>> {
        const SQL: &str =
            "SELECT object_key, size, blake3 FROM relayed_objects WHERE drain_id = $1";
        let rows: Vec<(String, i64, String)> = on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(drain)
            .fetch_all(pool)
            .await
            .map_err(query_error("read relayed objects")))?;
        Ok(rows
            .into_iter()
            .map(|(key, size, blake3)| {
                let object = RelayedObject {
                    key: key.clone(),
                    size: size as u64,
                    blake3,
                };
                (key, object)
            })
            .collect())
    }

    /// Forgets what the relay received for drain `drain` (its snapshot is committed).
    pub async fn forget_relayed_objects_of(&self, drain: &str) -> Result<()> {
        const SQL: &str = "DELETE FROM relayed_objects WHERE drain_id = $1";
        let drain = drain.to_owned();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&drain)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("forget relayed objects")))
        })
        .await
    }

    /// Forgets the files of run `run` stored in `objects` (keys relative to the volume, as
    /// the manifest names them), so that the run's next attempt stores them again; the run's
    /// progress counters lose them too.
    pub async fn forget_stored_objects(&self, run: &str, objects: &[String]) -> Result<()> {
        const SQL: &str = "DELETE FROM copy_files WHERE run_id = $1 AND object = $2 RETURNING size";
        const COUNT: &str = "UPDATE copy_runs SET files_done = files_done - $2, \
                             bytes_done = bytes_done - $3 WHERE id = $1";
        let (run, objects) = (run.to_owned(), objects.to_vec());
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(query_error("forget stored files"))?;
                let (mut files, mut bytes) = (0i64, 0i64);
                for object in &objects {
                    let sizes: Vec<i64> = sqlx::query_scalar(SQL)
                        .bind(&run)
                        .bind(object)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(query_error("forget stored files"))?;
                    files += sizes.len() as i64;
                    bytes += sizes.iter().sum::<i64>();
                }
                sqlx::query(COUNT)
                    .bind(&run)
                    .bind(files)
                    .bind(bytes)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("forget stored files"))?;
                tx.commit()
                    .await
                    .map_err(query_error("forget stored files"))
            })
        })
        .await
    }
}

/// `objects` with only the last record of each key (a row that one statement would change
/// twice is an error on PostgreSQL).
fn dedup_last(objects: &[RelayedObject]) -> Vec<RelayedObject> {
    let mut last = HashMap::new();
    for (i, object) in objects.iter().enumerate() {
        last.insert(object.key.as_str(), i);
    }
    objects
        .iter()
        .enumerate()
        .filter(|(i, object)| last.get(object.key.as_str()) == Some(i))
        .map(|(_, object)| object.clone())
        .collect()
}
