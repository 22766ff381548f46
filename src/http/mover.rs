//! The drainer's side of the mover protocol, under `/v1/drains/{id}/…`: a mover streams its
//! volume into the drainer's store and records progress in the drainer's ledger, for one drain
//! that is being copied, and only under that drain's volume.

use super::{AppState, Error, allow};
use crate::auth::{Action, Caller};
use crate::mover::{WireRun, WireStoredFile};
use crate::snapshot::{Checkpoint, Run, SnapshotSummary, StoredFile};
use crate::volume::VolumeId;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{MultipartId, ObjectStoreExt, PutPayload};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The header in which a mover names itself as the owner of its copy run (see
/// `ledger::runs`): a second mover of the same drain gets `409 run_busy` while the first holds
/// the run. Movers that do not send it share the owner `mover-of-DRAIN`.
pub const OWNER_HEADER: &str = "x-drainer-run-owner";

/// The checkpoint of drain `id`'s copy by the mover that sent `headers`.
fn mover_checkpoint(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    id: &str,
) -> crate::ledger::RunCheckpoint {
    let owner = headers
        .get(OWNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map_or_else(|| format!("mover-of-{id}"), str::to_owned);
    state
        .shared()
        .ledger
        .run_checkpoint(Some(owner), Some(id.to_owned()))
}

/// Largest body a mover sends (one part, or one batch of progress).
const MAX_MOVER_BODY: usize = 64 * 1024 * 1024;

/// A multipart upload relayed for a mover: parts arrive by index, several at a time, and are
/// written at their index in the store's own upload.
pub struct RelayUpload {
    drain: String,
    key: Key,
    upload_id: MultipartId,
    /// Stored parts by index: the store's part id and the part's length.
    parts: BTreeMap<usize, (PartId, u64)>,
}

impl RelayUpload {
    /// The parts in order, if they are exactly parts 0..n, all of the store's part size but
    /// the last: what a local store needs to have written every byte at its place.
    fn complete_parts(&self, part_size: u64) -> Result<Vec<PartId>, String> {
        let last = self.parts.len().saturating_sub(1);
        for (expected, (index, (_, len))) in self.parts.iter().enumerate() {
            if *index != expected {
                return Err(format!("part {expected} is missing"));
            }
            if expected < last && *len != part_size {
                return Err(format!(
                    "part {index} has {len} bytes; every part but the last has {part_size}"
                ));
            }
        }
        Ok(self.parts.values().map(|(id, _)| id.clone()).collect())
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/drains/{id}/run", post(begin))
        .route("/drains/{id}/run/{run}/stored", get(stored))
        .route("/drains/{id}/run/{run}/record", post(record))
        .route("/drains/{id}/run/{run}/finish", post(finish))
        .route("/drains/{id}/run/{run}/interrupted", post(interrupted))
        .route(
            "/drains/{id}/objects",
            put(put_object).get(get_object).delete(delete_object),
        )
        .route("/drains/{id}/objects/batch", post(put_objects))
        .route("/drains/{id}/uploads", post(create_upload))
        .route("/drains/{id}/uploads/{upload}/{part}", put(put_part))
        .route(
            "/drains/{id}/uploads/{upload}/complete",
            post(complete_upload),
        )
        .route(
            "/drains/{id}/uploads/{upload}",
            axum::routing::delete(abort_upload),
        )
        .route("/drains/{id}/flush", post(flush))
        .route("/drains/{id}/store", get(store_info))
        .layer(DefaultBodyLimit::max(MAX_MOVER_BODY))
}

/// How long a drain found copying is trusted without asking the ledger again (a mover sends
/// one request per small file; a cancelled drain stops accepting data within this time).
const DRAIN_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The volume of drain `id`, if the caller may stream into it and it is being copied.
async fn streaming(state: &AppState, caller: &Caller, id: &str) -> Result<VolumeId, Error> {
    allow(caller, &Action::Stream(id))?;
    let cached = state
        .shared()
        .copying
        .lock()
        .expect("cache lock")
        .get(id)
        .cloned();
    if let Some((volume, checked)) = cached
        && checked.elapsed() < DRAIN_CHECK_TTL
    {
        return Ok(volume);
    }
    let drain = state.shared().ledger.drain(id).await?.ok_or_else(|| {
        Error::new(
            StatusCode::NOT_FOUND,
            "drain_not_found",
            format!("drain {id} does not exist"),
        )
    })?;
    if drain.state != crate::lifecycle::DrainState::Copying {
        return Err(Error::new(
            StatusCode::CONFLICT,
            "drain_not_copying",
            format!("drain {id} is {}", drain.state),
        ));
    }
    let volume = drain.volume();
    let mut cache = state.shared().copying.lock().expect("cache lock");
    cache.retain(|_, (_, checked)| checked.elapsed() < DRAIN_CHECK_TTL);
    cache.insert(id.to_owned(), (volume.clone(), std::time::Instant::now()));
    Ok(volume)
}

/// The run `run` of this volume on this drainer's store, if it is still running.
async fn running(state: &AppState, volume: &VolumeId, run: &str) -> Result<Run, Error> {
    let shared = state.shared();
    let record = shared
        .ledger
        .runs(volume)
        .await?
        .into_iter()
        .find(|r| r.id == run && r.store_url == shared.store.url() && r.state == "running")
        .ok_or_else(|| {
            Error::new(
                StatusCode::CONFLICT,
                "run_not_running",
                format!("run {run} of {volume} is not running"),
            )
        })?;
    Ok(Run {
        id: record.id,
        snapshot: record
            .snapshot
            .parse()
            .map_err(|_| Error::invalid("bad snapshot id"))?,
        resumed: true,
    })
}

#[derive(Deserialize)]
struct KeyParam {
    key: String,
}

/// The store key for a mover's key: only under the drain's volume, or a write probe.
fn key_for(state: &AppState, volume: &VolumeId, key: &str) -> Result<Key, Error> {
    let relative =
        Key::parse(key).map_err(|_| Error::invalid(format!("{key:?} is not a valid key")))?;
    let prefix = format!("volumes/{}/{}/", volume.namespace, volume.name);
    let probe = relative.parts().count() == 1 && key.starts_with(".drainer-probe-");
    if !probe && !key.starts_with(&prefix) {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a mover for {volume} may not write {key:?}"),
        ));
    }
    Ok(state
        .shared()
        .store
        .root()
        .parts()
        .chain(relative.parts())
        .collect())
}

/// The store key a mover of drain `id` may use for `key`.
async fn object_key(state: &AppState, caller: &Caller, id: &str, key: &str) -> Result<Key, Error> {
    let volume = streaming(state, caller, id).await?;
    key_for(state, &volume, key)
}

fn store_failure(e: crate::store::Error) -> Error {
    Error::from(crate::snapshot::Error::Store(e))
}

async fn begin(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<WireRun>, Error> {
    let volume = streaming(&state, &caller, &id).await?;
    let shared = state.shared();
    let run = mover_checkpoint(&state, &headers, &id)
        .begin(
            shared.store.url(),
            &volume,
            &crate::snapshot::SnapshotId::generate(),
        )
        .await?;
    tracing::info!(drain = %id, run = %run.id, resumed = run.resumed, "mover started");
    Ok(Json(WireRun {
        id: run.id,
        snapshot: run.snapshot.to_string(),
        resumed: run.resumed,
    }))
}

async fn stored(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, run)): Path<(String, String)>,
) -> Result<Body, Error> {
    let volume = streaming(&state, &caller, &id).await?;
    let run = running(&state, &volume, &run).await?;
    let ledger = state.shared().ledger.clone();
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut tx = tx;
        let mut files = ledger.stored_files(&run);
        while let Some(file) = files.next().await {
            let line = file.map(|f| {
                let mut line = serde_json::to_vec(&WireStoredFile::from(&f)).expect("serializes");
                line.push(b'\n');
                Bytes::from(line)
            });
            let failed = line.is_err();
            if futures::SinkExt::send(&mut tx, line.map_err(std::io::Error::other))
                .await
                .is_err()
                || failed
            {
                return;
            }
        }
    });
    Ok(Body::from_stream(rx))
}

async fn record(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path((id, run)): Path<(String, String)>,
    Json(files): Json<Vec<WireStoredFile>>,
) -> Result<StatusCode, Error> {
    let volume = streaming(&state, &caller, &id).await?;
    let run = running(&state, &volume, &run).await?;
    let files: Vec<StoredFile> = files
        .into_iter()
        .map(StoredFile::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::invalid(format!("bad path: {e}")))?;
    if let Some(bad) = files
        .iter()
        .find(|f| !f.content.object.starts_with("snapshots/"))
    {
        return Err(Error::invalid(format!(
            "object {:?} is not a snapshot object",
            bad.content.object
        )));
    }
    mover_checkpoint(&state, &headers, &id)
        .record(&run, &files)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn finish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, run)): Path<(String, String)>,
    Json(summary): Json<SnapshotSummary>,
) -> Result<StatusCode, Error> {
    let volume = streaming(&state, &caller, &id).await?;
    let run = running(&state, &volume, &run).await?;
    if summary.snapshot != run.snapshot.as_str() || summary.volume != volume.to_string() {
        return Err(Error::invalid("the summary is not this run's"));
    }
    state.shared().ledger.finish(&run, &summary).await?;
    tracing::info!(drain = %id, snapshot = %summary.snapshot, "mover finished");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Interrupted {
    error: String,
}

async fn interrupted(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path((id, run)): Path<(String, String)>,
    Json(body): Json<Interrupted>,
) -> Result<StatusCode, Error> {
    let volume = streaming(&state, &caller, &id).await?;
    let run = running(&state, &volume, &run).await?;
    let error: String = body.error.chars().take(2000).collect();
    mover_checkpoint(&state, &headers, &id)
        .interrupted(&run, &error)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Small objects written at once for one batch.
const BATCH_PUTS_AT_ONCE: usize = 8;

/// `POST …/objects/batch`: small objects in one request ([`crate::object_batch`]); every key
/// is checked before anything is written. Answers each object's error, or `null`.
async fn put_objects(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    let volume = streaming(&state, &caller, &id).await?;
    let objects = crate::object_batch::decode(body).map_err(Error::invalid)?;
    let keyed = objects
        .into_iter()
        .map(|(key, data)| Ok((key_for(&state, &volume, &key)?, data)))
        .collect::<Result<Vec<_>, Error>>()?;
    let store = &state.shared().store;
    let errors: Vec<Option<String>> = futures::stream::iter(keyed)
        .map(|(key, data)| async move {
            let stored = store.put_bytes(&key, PutPayload::from(data)).await;
            stored.err().map(|e| e.to_string())
        })
        .buffered(BATCH_PUTS_AT_ONCE)
        .collect()
        .await;
    Ok(Json(serde_json::json!({ "errors": errors })))
}

async fn put_object(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KeyParam>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let key = object_key(&state, &caller, &id, &q.key).await?;
    state
        .shared()
        .store
        .put_bytes(&key, PutPayload::from(body))
        .await
        .map_err(store_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_object(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KeyParam>,
) -> Result<axum::response::Response, Error> {
    let key = object_key(&state, &caller, &id, &q.key).await?;
    let store = &state.shared().store;
    let objects = store.objects().clone();
    match store.call("get", &key, objects.get(&key)).await {
        Ok(found) => {
            let size = found.meta.size;
            let body = Body::from_stream(found.into_stream().map_err(std::io::Error::other));
            Ok(axum::response::Response::builder()
                .header(axum::http::header::CONTENT_LENGTH, size)
                .body(body)
                .expect("valid response"))
        }
        Err(e) if e.is_not_found() => Err(Error::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no object {}", q.key),
        )),
        Err(e) => Err(store_failure(e)),
    }
}

async fn delete_object(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KeyParam>,
) -> Result<StatusCode, Error> {
    let key = object_key(&state, &caller, &id, &q.key).await?;
    let store = &state.shared().store;
    store
        .call("delete", &key, store.objects().delete(&key))
        .await
        .map_err(store_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

fn relay_parts(state: &AppState) -> Arc<dyn MultipartStore> {
    Arc::clone(state.shared().store.multipart())
}

/// `GET …/store`: what a mover needs to know of the store it writes through this drainer.
async fn store_info(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    streaming(&state, &caller, &id).await?;
    Ok(Json(
        serde_json::json!({ "part_size": state.shared().store.part_size() }),
    ))
}

async fn create_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<KeyParam>,
) -> Result<Json<serde_json::Value>, Error> {
    let key = object_key(&state, &caller, &id, &q.key).await?;
    let parts = relay_parts(&state);
    let store = &state.shared().store;
    let upload_id = store
        .call(
            "create multipart upload",
            &key,
            parts.create_multipart(&key),
        )
        .await
        .map_err(store_failure)?;
    let relay_id = format!("u-{:016x}", rand::random::<u64>());
    state.shared().uploads.lock().expect("uploads lock").insert(
        relay_id.clone(),
        RelayUpload {
            drain: id,
            key,
            upload_id,
            parts: BTreeMap::new(),
        },
    );
    Ok(Json(
        serde_json::json!({ "upload": relay_id, "part_size": store.part_size() }),
    ))
}

fn upload_not_found(upload: &str) -> Error {
    Error::new(
        StatusCode::NOT_FOUND,
        "upload_not_found",
        format!("upload {upload} does not exist (the drainer may have restarted)"),
    )
}

/// The key and store upload id of relayed upload `upload` of drain `id`.
fn relayed(state: &AppState, id: &str, upload: &str) -> Result<(Key, MultipartId), Error> {
    let uploads = state.shared().uploads.lock().expect("uploads lock");
    uploads
        .get(upload)
        .filter(|u| u.drain == id)
        .map(|u| (u.key.clone(), u.upload_id.clone()))
        .ok_or_else(|| upload_not_found(upload))
}

async fn put_part(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, upload, part)): Path<(String, String, usize)>,
    body: Body,
) -> Result<StatusCode, Error> {
    streaming(&state, &caller, &id).await?;
    let part_size = state.shared().store.part_size();
    let bad_size = |len: u64| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "bad_part_size",
            format!("part {part} has {len} bytes or more; parts have 1 to {part_size}"),
        )
    };
    // The body's frames are kept as they came, not copied into one buffer.
    let mut frames = body.into_data_stream();
    let (mut chunks, mut len) = (Vec::new(), 0_u64);
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| Error::invalid(format!("reading part {part}: {e}")))?;
        len += frame.len() as u64;
        if len > part_size {
            return Err(bad_size(len));
        }
        chunks.push(frame);
    }
    if len == 0 {
        return Err(bad_size(0));
    }
    let (key, upload_id) = relayed(&state, &id, &upload)?;
    let parts = relay_parts(&state);
    let store = &state.shared().store;
    let put = parts.put_part(&key, &upload_id, part, PutPayload::from_iter(chunks));
    let stored = match store.call("upload part", &key, put).await {
        Ok(stored) => stored,
        Err(e) => {
            let mut uploads = state.shared().uploads.lock().expect("uploads lock");
            uploads.remove(&upload);
            return Err(store_failure(e));
        }
    };
    let mut uploads = state.shared().uploads.lock().expect("uploads lock");
    let relay = uploads
        .get_mut(&upload)
        .ok_or_else(|| upload_not_found(&upload))?;
    relay.parts.insert(part, (stored, len));
    Ok(StatusCode::NO_CONTENT)
}

fn take_upload(state: &AppState, id: &str, upload: &str) -> Result<RelayUpload, Error> {
    let mut uploads = state.shared().uploads.lock().expect("uploads lock");
    match uploads.get(upload) {
        Some(relay) if relay.drain == id => Ok(uploads.remove(upload).expect("present")),
        _ => Err(upload_not_found(upload)),
    }
}

async fn complete_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, upload)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    streaming(&state, &caller, &id).await?;
    let relay = take_upload(&state, &id, &upload)?;
    let parts = relay_parts(&state);
    let store = &state.shared().store;
    let complete = match relay.complete_parts(store.part_size()) {
        Ok(ordered) => parts.complete_multipart(&relay.key, &relay.upload_id, ordered),
        Err(reason) => {
            abort_relay(&state, &relay).await;
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                "incomplete_upload",
                format!("upload {upload}: {reason}"),
            ));
        }
    };
    store
        .call("complete multipart upload", &relay.key, complete)
        .await
        .map_err(store_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn abort_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, upload)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    streaming(&state, &caller, &id).await?;
    let relay = take_upload(&state, &id, &upload)?;
    abort_relay(&state, &relay).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Abandons a relayed upload in the store (best effort: an abandoned upload only costs space).
async fn abort_relay(state: &AppState, relay: &RelayUpload) {
    let store = &state.shared().store;
    let parts = relay_parts(state);
    let abort = parts.abort_multipart(&relay.key, &relay.upload_id);
    let _ = store
        .call("abort multipart upload", &relay.key, abort)
        .await;
}

async fn flush(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    streaming(&state, &caller, &id).await?;
    state.shared().store.flush().await.map_err(store_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(parts: &[(usize, u64)]) -> RelayUpload {
        RelayUpload {
            drain: "d".into(),
            key: Key::from("k"),
            upload_id: "u".into(),
            parts: parts
                .iter()
                .map(|&(i, len)| {
                    let id = PartId {
                        content_id: i.to_string(),
                    };
                    (i, (id, len))
                })
                .collect(),
        }
    }

    #[test]
    fn a_relayed_upload_completes_only_with_every_part_in_place() {
        let whole = relay(&[(2, 3), (0, 10), (1, 10)])
            .complete_parts(10)
            .unwrap();
        let order: Vec<_> = whole.iter().map(|p| p.content_id.as_str()).collect();
        assert_eq!(order, ["0", "1", "2"], "parts that arrived out of order");
        assert_eq!(relay(&[(0, 4)]).complete_parts(10).unwrap().len(), 1);
        let gap = relay(&[(0, 10), (2, 10)]).complete_parts(10).unwrap_err();
        assert!(gap.contains("part 1 is missing"), "{gap}");
        let short = relay(&[(0, 10), (1, 9), (2, 10)])
            .complete_parts(10)
            .unwrap_err();
        assert!(short.contains("part 1 has 9 bytes"), "{short}");
        assert!(relay(&[]).complete_parts(10).unwrap().is_empty());
    }
}
