//! The restore routes, under `/v1/volumes/{namespace}/{pvc}/`: a volume's snapshots (the
//! listing, with what `latest` means) and its objects (`GET` or `HEAD …/objects?key=K`, with
//! one `Range: bytes=…` answered `206`, and `POST …/objects/batch` for many small reads in
//! one request), which is everything `drainer restore --drainer` needs: the summary, the
//! manifest and the files' objects. The guard has checked that the
//! caller may restore this volume (`Action::Restore`).
//!
//! Keys are relative to the volume (`latest`, `snapshots/ID/…`) and must stay inside it: no
//! other volume's object, nothing outside `snapshots/` but the `latest` pointer. Reads only;
//! the store's credentials never leave the drainer.

use super::file_body::{self, read_at};
use super::guard::{Granted, VolumeAccess};
use super::lives;
use super::{AppState, Error, Json, Query};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drainer_core::protocol::{Listing, batch};
use drainer_core::volume::VolumeId;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ObjectStore, ObjectStoreExt,
};

/// Reads of one batch made at once.
const BATCH_READS_AT_ONCE: usize = 16;

/// `GET /v1/volumes/{ns}/{pvc}/snapshots`.
pub(super) async fn snapshots(
    State(state): State<AppState>,
    volume: Granted<VolumeAccess>,
) -> Result<axum::Json<Listing>, Error> {
    let VolumeAccess { volume, bound } = volume.into_inner();
    let store = &state.shared().store;
    let mut snapshots = drainer_core::snapshot::list_snapshots(store, &volume).await?;
    let mut latest = drainer_core::snapshot::catalog::latest(store, &volume)
        .await?
        .map(|s| s.snapshot);
    let all = snapshots.len();
    snapshots.retain(|s| bound.lists(s));
    if snapshots.len() < all {
        latest = latest
            .filter(|id| snapshots.iter().any(|s| s.snapshot() == id))
            .or_else(|| newest_complete(&snapshots));
    }
    Ok(axum::Json(Listing {
        volume: volume.to_string(),
        snapshots,
        latest,
    }))
}

/// What `POST …/snapshots/{snapshot}/restored` made of the report.
#[derive(Debug, serde::Serialize)]
pub(crate) struct RestoreReport {
    /// Whether the restore was recorded as one into the volume's claim.
    pub recorded: bool,
    /// Why not, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<&'static str>,
}

/// `POST /v1/volumes/{ns}/{pvc}/snapshots/{snapshot}/restored`: the caller restored
/// `snapshot` (a complete snapshot it may read, else `404`). Recorded only when the caller is
/// a pod that mounts the volume's claim (the restore went into the claim: what lets a
/// reclaimed claim's pin go, see `Ledger::release_superseded_pins`); anyone else is told it
/// was not recorded, and why. Reporting the same restore again changes nothing.
pub(super) async fn restored(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    volume: Granted<VolumeAccess>,
    super::Path((_, _, snapshot)): super::Path<(String, String, String)>,
) -> Result<axum::Json<RestoreReport>, Error> {
    let VolumeAccess { volume, bound } = volume.into_inner();
    let store = &state.shared().store;
    let listed = drainer_core::snapshot::list_snapshots(store, &volume).await?;
    let known = listed
        .iter()
        .filter(|s| bound.lists(s))
        .any(|s| s.snapshot() == snapshot && s.complete().is_some());
    if !known {
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            "snapshot_not_found",
            format!("{volume} has no complete snapshot {snapshot:?} the caller may read"),
        ));
    }
    let pod = match &caller {
        crate::auth::Caller::Workload(w) => w.pod.as_ref(),
        _ => None,
    };
    let Some(pod) = pod.filter(|p| p.mounts.contains(&volume.name)) else {
        let why = "only a pod that mounts the claim restores into it";
        return Ok(axum::Json(RestoreReport {
            recorded: false,
            why: Some(why),
        }));
    };
    let principal = caller.principal();
    let now = drainer_core::ledger::now_ms();
    state
        .shared()
        .ledger
        .record_restore(&volume, &snapshot, &pod.uid, &principal, now)
        .await?;
    tracing::info!(%volume, %snapshot, pod = %pod.name, pod_uid = %pod.uid, "restore into the claim reported");
    Ok(axum::Json(RestoreReport {
        recorded: true,
        why: None,
    }))
}

/// The newest complete snapshot of a listing (oldest first).
fn newest_complete(snapshots: &[drainer_core::snapshot::Listed]) -> Option<String> {
    snapshots
        .iter()
        .rev()
        .find_map(|s| s.complete().map(|c| c.snapshot.clone()))
}

/// The store key of `key` for a caller with `access`: see [`volume_key`]; and only keys of
/// snapshots its bound admits (see [`lives::admit`]: an operator's read of an earlier life is
/// recorded). A bound to the current life does not read the `latest` pointer, which may name
/// another life's snapshot (the listing says what `latest` means for the caller).
async fn key_for(state: &AppState, access: &VolumeAccess, key: &str) -> Result<Key, Error> {
    let VolumeAccess { volume, bound } = access;
    let found = volume_key(state, volume, key)?;
    let snapshot = key
        .strip_prefix("snapshots/")
        .and_then(|k| k.split('/').next());
    match snapshot {
        Some(id) => lives::admit(state, volume, bound, id).await?,
        None if bound.reads_pointer() => {}
        None => {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                "earlier_namespace",
                format!(
                    "{key:?} of {volume} may name a snapshot of an earlier namespace of that name: list the snapshots instead"
                ),
            ));
        }
    }
    Ok(found)
}

/// The query of `GET|HEAD …/objects`: the key, and whether an operator reads an earlier
/// namespace's snapshot (the guard has read that).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectQuery {
    /// The key, relative to the volume.
    key: String,
    /// See [`lives::earlier_asked`].
    #[serde(default, rename = "earlier")]
    _earlier: bool,
}

/// The store key of `key`, relative to the volume: the `latest` pointer or anything under
/// `snapshots/`.
fn volume_key(state: &AppState, volume: &VolumeId, key: &str) -> Result<Key, Error> {
    let relative = Key::parse(key)
        .ok()
        .filter(|k| k.as_ref() == key)
        .ok_or_else(|| Error::invalid(format!("{key:?} is not a valid key")))?;
    let first = relative.parts().next();
    let inside = match first.as_ref().map(|p| p.as_ref()) {
        Some("latest") => relative.parts().count() == 1,
        Some("snapshots") => relative.parts().count() > 1,
        _ => false,
    };
    if !inside {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{key:?} is not an object of a snapshot of {volume}"),
        ));
    }
    let layout = drainer_core::snapshot::VolumeLayout::new(state.shared().store.root(), volume);
    Ok(layout.prefix().parts().chain(relative.parts()).collect())
}

/// `POST /v1/volumes/{ns}/{pvc}/objects/batch`: up to 64 ranges of at most 256 KiB each
/// ([`batch::ReadBatch`]), every key checked before anything is read; answers each read's
/// bytes and object size, or its error, in the [`drainer_core::protocol::batch`] format.
/// The answer streams, in order, as the reads come back ([`BATCH_READS_AT_ONCE`] ahead of
/// the reader at most), so a slow reader holds a few reads' bytes, not the whole batch.
pub(super) async fn get_objects(
    State(state): State<AppState>,
    volume: Granted<VolumeAccess>,
    Json(asked): Json<batch::ReadBatch>,
) -> Result<Response, Error> {
    let access = volume.into_inner();
    if asked.reads.len() > batch::MAX_OBJECTS {
        return Err(Error::invalid(format!(
            "a batch holds at most {} reads",
            batch::MAX_OBJECTS
        )));
    }
    let mut reads = Vec::with_capacity(asked.reads.len());
    for read in asked.reads {
        let len = read.end.checked_sub(read.start);
        if len.is_none_or(|len| len > batch::SMALL_OBJECT as u64) {
            return Err(Error::invalid(format!(
                "the read of {:?} must be a range of at most {} bytes",
                read.key,
                batch::SMALL_OBJECT
            )));
        }
        reads.push((key_for(&state, &access, &read.key).await?, read));
    }
    let store = state.shared().store.clone();
    let answers = futures::stream::iter(reads)
        .map(move |(key, read)| read_one(store.clone(), key, read))
        .buffered(BATCH_READS_AT_ONCE)
        .flat_map(|outcome| futures::stream::iter(batch::encode_read(outcome)))
        .map(Ok::<_, std::convert::Infallible>);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(answers))
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// One read of a batch.
async fn read_one(
    store: drainer_core::store::Store,
    key: Key,
    read: batch::ReadRequest,
) -> batch::ReadOutcome {
    if let Some(path) = store.local_file(&key) {
        return read_local(path, read).await;
    }
    let objects = store.objects().clone();
    let range = read.start..read.end;
    let reading = async {
        if range.is_empty() {
            // No bytes asked for: the object's size only (a read without a range is all of it).
            return Ok((objects.head(&key).await?.size, Bytes::new()));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let got = objects.get_opts(&key, options).await?;
        let size = got.meta.size;
        Ok((size, got.bytes().await?))
    };
    match store.call("get", &key, reading).await {
        Ok((size, bytes)) => batch::ReadOutcome::Data { size, bytes },
        Err(e) if e.is_not_found() => {
            batch::ReadOutcome::NotFound(format!("no object {}", read.key))
        }
        Err(e) => batch::ReadOutcome::Failed(e.to_string()),
    }
}

/// One read of a batch from a local-directory store, in one blocking call (open, size, the
/// range read into a buffer that is not zeroed first) rather than the `ObjectStore` layer's
/// two. Answers as that layer would: a missing file (or a directory) is not found, a range is
/// cut at the object's end, and one that starts past the end fails.
async fn read_local(path: std::path::PathBuf, read: batch::ReadRequest) -> batch::ReadOutcome {
    let range = read.start..read.end;
    let read_file = move || -> std::io::Result<Option<(u64, Bytes)>> {
        let file = match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            opened => opened?,
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        let size = meta.len();
        if range.is_empty() {
            return Ok(Some((size, Bytes::new())));
        }
        if range.start >= size {
            return Err(std::io::Error::other(format!(
                "the range starts at byte {}, past the object's {size} bytes",
                range.start
            )));
        }
        let bytes = read_at(&file, range.start, range.end.min(size) - range.start)?;
        Ok(Some((size, bytes)))
    };
    let found = tokio::task::spawn_blocking(read_file)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match found {
        Ok(Some((size, bytes))) => batch::ReadOutcome::Data { size, bytes },
        Ok(None) => batch::ReadOutcome::NotFound(format!("no object {}", read.key)),
        Err(e) => batch::ReadOutcome::Failed(format!("cannot read {}: {e}", read.key)),
    }
}

/// Parses one `Range: bytes=…` (`a-b`, `a-`, `-n`); several ranges are not served.
fn parse_range(value: &HeaderValue) -> Result<GetRange, Error> {
    let bad = || {
        Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            "Range must be one range of bytes: bytes=START-END, bytes=START- or bytes=-SUFFIX",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    match (start.trim().is_empty(), end.trim().is_empty()) {
        (false, true) => Ok(GetRange::Offset(number(start)?)),
        (true, false) => match number(end)? {
            0 => Err(bad()),
            n => Ok(GetRange::Suffix(n)),
        },
        (false, false) => {
            let (start, end) = (number(start)?, number(end)?);
            if end < start {
                return Err(bad());
            }
            Ok(GetRange::Bounded(start..end.saturating_add(1)))
        }
        (true, true) => Err(bad()),
    }
}

/// `GET|HEAD /v1/volumes/{ns}/{pvc}/objects?key=K`, with one optional `Range`.
pub(super) async fn get_object(
    State(state): State<AppState>,
    volume: Granted<VolumeAccess>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<ObjectQuery>,
) -> Result<Response, Error> {
    let access = volume.into_inner();
    let key = key_for(&state, &access, &q.key).await?;
    let VolumeAccess { volume, .. } = access;
    let range = headers.get(header::RANGE).map(parse_range).transpose()?;
    let ranged = range.is_some();
    let options = GetOptions {
        range: range.clone(),
        head: method == Method::HEAD,
        ..GetOptions::default()
    };
    let store = &state.shared().store;
    let objects = store.objects().clone();
    match store
        .call("get", &key, objects.get_opts(&key, options))
        .await
    {
        Ok(found) => respond(found, ranged, method == Method::HEAD),
        Err(e) if e.is_not_found() => Err(Error::new(
            StatusCode::NOT_FOUND,
            "object_not_found",
            format!("{volume} has no object {}", q.key),
        )),
        Err(e) if ranged => unsatisfiable(&state, &key, range.as_ref(), e).await,
        Err(e) => Err(Error::from(drainer_core::snapshot::Error::Store(e))),
    }
}

/// A ranged read the store refused: `416` with the object's size when the range is outside
/// it, else the store's error.
async fn unsatisfiable(
    state: &AppState,
    key: &Key,
    range: Option<&GetRange>,
    refused: drainer_core::store::Error,
) -> Result<Response, Error> {
    let store = &state.shared().store;
    let objects = store.objects().clone();
    let outside = |size: u64| match range {
        Some(GetRange::Bounded(r)) => r.start >= size,
        Some(GetRange::Offset(start)) => *start >= size,
        Some(GetRange::Suffix(_)) | None => false,
    };
    match store.call("head", key, objects.head(key)).await {
        Ok(meta) if outside(meta.size) => {
            let mut response = Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the object holds {} bytes", meta.size),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            Ok(response)
        }
        _ => Err(Error::from(drainer_core::snapshot::Error::Store(refused))),
    }
}

/// How long a signed read URL stays valid: enough to start a large file's read, short enough
/// that a URL that leaks is soon worth nothing (a read that breaks off later goes on through
/// the drainer).
const READ_URL_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// `GET …/objects/url?key=K`: a URL, valid for a few minutes, with which the caller reads the
/// object straight from the store (a `GET` with a `Range`; the store's credentials stay
/// here), where this drainer offers direct reads (`--mover-data-path` not `relay`, a store
/// that can sign: S3, not encrypted); `409 direct_reads_not_offered` otherwise. The same
/// checks as `GET …/objects`: the key must be the volume's, of a snapshot the caller may read.
pub(super) async fn sign_object(
    State(state): State<AppState>,
    volume: Granted<VolumeAccess>,
    Query(q): Query<ObjectQuery>,
) -> Result<axum::Json<drainer_core::protocol::SignedUrl>, Error> {
    let not_offered = || {
        Error::new(
            StatusCode::CONFLICT,
            "direct_reads_not_offered",
            "this drainer relays every read: GET …/objects",
        )
    };
    if !state.shared().direct_parts {
        return Err(not_offered());
    }
    let access = volume.into_inner();
    let key = key_for(&state, &access, &q.key).await?;
    let url = state
        .shared()
        .store
        .signed_get_url(&key, READ_URL_TTL)
        .await
        .map_err(|e| Error::from(drainer_core::snapshot::Error::Store(e)))?
        .ok_or_else(not_offered)?;
    tracing::debug!(volume = %access.volume, key = %key, "signed a read URL");
    Ok(axum::Json(drainer_core::protocol::SignedUrl {
        url: url.to_string(),
        expires_in_s: READ_URL_TTL.as_secs(),
    }))
}

/// The answer to a read: `206` with `Content-Range` for a ranged one, else `200`.
fn respond(found: GetResult, ranged: bool, head: bool) -> Result<Response, Error> {
    let (range, size) = (found.range.clone(), found.meta.size);
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, range.end - range.start)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if ranged {
        builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{size}",
                range.start,
                range.end.saturating_sub(1)
            ),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(body_of(found))
    };
    builder
        .body(body)
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// The bytes of a read: a remote store's stream as it comes; a local file in large chunks,
/// read directly where possible ([`file_body`]; object_store's own stream of a file reads
/// 8 KiB at a time, one blocking task each).
fn body_of(found: GetResult) -> BoxStream<'static, std::io::Result<Bytes>> {
    match found.payload {
        GetResultPayload::File(file, path) => file_body::body(file, &path, found.range),
        GetResultPayload::Stream(stream) => stream.map_err(std::io::Error::other).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_one_span_of_bytes() {
        let range = |text: &str| parse_range(&HeaderValue::from_str(text).unwrap());
        assert_eq!(range("bytes=0-9").unwrap(), GetRange::Bounded(0..10));
        assert_eq!(range("bytes=5-").unwrap(), GetRange::Offset(5));
        assert_eq!(range("bytes=-5").unwrap(), GetRange::Suffix(5));
        for bad in [
            "bytes=9-0",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=-",
            "bytes=-0",
            "0-1",
        ] {
            assert_eq!(
                range(bad).unwrap_err().status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{bad}"
            );
        }
    }
}
