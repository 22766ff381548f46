//! The drainer's side of the mover protocol, under `/v1/drains/{id}/…`: a mover streams its
//! volume into the drainer's store and records progress in the drainer's ledger, for one drain
//! that is being copied (the route guard checks that, and that the caller is its mover).
//!
//! What a mover may touch: it reads anything of its drain's volume (the engine reads the
//! previous snapshot to copy incrementally), and writes only its own run's snapshot, files and
//! manifest — never another snapshot, never a `snapshot.json` or `latest`. The drainer commits
//! the snapshot itself when the run finishes, after checking the manifest against the summary
//! and every object it names against the store. Relayed multipart uploads are recorded in the
//! ledger, so any replica accepts any part and completes any upload. Where the store can sign
//! (`Shared::direct_parts`), a mover stores parts itself with a URL signed for that part
//! alone and reports each (`…/url`, `…/stored`); the ledger records them as relayed parts, and
//! the completion checks what the store holds against what was reported. The drainer hashes
//! each object it relays ([`relay_hash`]: small objects, manifests, every part where the
//! store cannot sign) and refuses to commit a manifest that does not describe what arrived.

use super::guard::{Granted, Streaming};
use super::relay_hash;
use super::{AppState, Error, Json, Path, Query};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use drainer_core::ledger::{RelayPart, RelayRecord, RelayedObject, RunRecord, RunState};
use drainer_core::protocol::{
    BatchAnswer, CreatedUpload, DirectPart, Interrupted, KeyParam, MAX_REPORTED_PER_REQUEST,
    MAX_SIGNED_PER_REQUEST, PartUrlParam, PartUrlsParam, PathParam, RunPartial, RunTotals,
    SignedUrl, SignedUrls, StoreInfo, StoredParts, WirePartial, WireRun, WireStoredFile, batch,
};
use drainer_core::snapshot::{
    PartialUpload, Run, SnapshotId, SnapshotSummary, StoredFile, VolumeLayout,
};
use drainer_core::volume::VolumeId;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use std::collections::HashSet;
use std::sync::Arc;

use drainer_core::protocol::OWNER_HEADER;

/// The checkpoint of drain `id`'s copy by the mover that sent `headers`.
fn mover_checkpoint(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    id: &str,
) -> drainer_core::ledger::RunCheckpoint {
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
pub(super) const MAX_MOVER_BODY: usize = 64 * 1024 * 1024;

/// The runs of `volume`, read once for the checks that follow ([`running_in`],
/// [`writable_in`]).
async fn runs_of(state: &AppState, volume: &VolumeId) -> Result<Vec<RunRecord>, Error> {
    Ok(state.shared().ledger.runs(volume).await?)
}

/// The run `run` of this volume on this drainer's store, if it is still running.
async fn running(state: &AppState, volume: &VolumeId, run: &str) -> Result<Run, Error> {
    running_in(state, volume, &runs_of(state, volume).await?, run)
}

/// [`running`] among `runs`, the volume's runs.
fn running_in(
    state: &AppState,
    volume: &VolumeId,
    runs: &[RunRecord],
    run: &str,
) -> Result<Run, Error> {
    let store_url = state.shared().store.url();
    let record = runs
        .iter()
        .find(|r| r.id == run && r.store_url == store_url && r.state == RunState::Running)
        .ok_or_else(|| no_run(&format!("run {run} of {volume} is not running")))?;
    Ok(Run {
        id: record.id.clone(),
        snapshot: record
            .snapshot
            .parse()
            .map_err(|_| Error::invalid("bad snapshot id"))?,
        resumed: true,
    })
}

fn no_run(message: &str) -> Error {
    Error::new(StatusCode::CONFLICT, "run_not_running", message)
}

/// The snapshot the running run of `volume` writes: the only one a mover may write into.
async fn writable_snapshot(state: &AppState, volume: &VolumeId) -> Result<SnapshotId, Error> {
    writable_in(state, volume, &runs_of(state, volume).await?)
}

/// [`writable_snapshot`] among `runs`, the volume's runs.
fn writable_in(
    state: &AppState,
    volume: &VolumeId,
    runs: &[RunRecord],
) -> Result<SnapshotId, Error> {
    let store_url = state.shared().store.url();
    let run = runs
        .iter()
        .find(|r| r.store_url == store_url && r.state == RunState::Running)
        .ok_or_else(|| no_run(&format!("{volume} has no running copy: start one first")))?;
    run.snapshot
        .parse()
        .map_err(|_| Error::invalid("bad snapshot id"))
}

fn forbidden_key(volume: &VolumeId, key: &str, why: &str) -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("a mover for {volume} may not {why} {key:?}"),
    )
}

fn parse_key(key: &str) -> Result<Key, Error> {
    Key::parse(key).map_err(|_| Error::invalid(format!("{key:?} is not a valid key")))
}

fn is_probe(relative: &Key, key: &str) -> bool {
    relative.parts().count() == 1 && key.starts_with(PROBE_PREFIX)
}

/// The name of every write probe (`Store::probe_writable`), at the store's root.
pub(crate) const PROBE_PREFIX: &str = ".drainer-probe-";

/// The largest write probe a mover may store: a probe proves the store takes writes and holds
/// no data (the engine's is 5 bytes), so a mover's token cannot park data outside any run.
const MAX_PROBE_BYTES: usize = 64;

/// Refuses a write probe larger than [`MAX_PROBE_BYTES`] (`413 probe_too_large`).
fn check_probe_size(key: &str, len: usize) -> Result<(), Error> {
    let is_probe = parse_key(key).is_ok_and(|relative| is_probe(&relative, key));
    if is_probe && len > MAX_PROBE_BYTES {
        return Err(Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "probe_too_large",
            format!("write probe {key:?} has {len} bytes; a probe holds at most {MAX_PROBE_BYTES}"),
        ));
    }
    Ok(())
}

/// The store key for reading `key`: anything of the drain's volume.
fn readable_key(state: &AppState, volume: &VolumeId, key: &str) -> Result<Key, Error> {
    let relative = parse_key(key)?;
    let prefix = format!("volumes/{}/{}/", volume.namespace, volume.name);
    if !is_probe(&relative, key) && !key.starts_with(&prefix) {
        return Err(forbidden_key(volume, key, "read"));
    }
    Ok(absolute(state, &relative))
}

/// The store keys for writing `keys`: only the files and the manifest of the snapshot the
/// volume's running copy writes (or write probes, which come before any run).
async fn writable_keys(
    state: &AppState,
    volume: &VolumeId,
    keys: &[&str],
) -> Result<Vec<Key>, Error> {
    let mut snapshot = None;
    let mut writable = Vec::with_capacity(keys.len());
    for key in keys {
        let relative = parse_key(key)?;
        if !is_probe(&relative, key) {
            if snapshot.is_none() {
                snapshot = Some(writable_snapshot(state, volume).await?);
            }
            if let Some(snapshot) = &snapshot {
                writable_relative(volume, snapshot, key)?;
            }
        }
        writable.push(absolute(state, &relative));
    }
    Ok(writable)
}

/// [`writable_keys`] for one key.
async fn writable_key(state: &AppState, volume: &VolumeId, key: &str) -> Result<Key, Error> {
    let mut keys = writable_keys(state, volume, &[key]).await?;
    keys.pop().ok_or_else(|| Error::invalid("no key"))
}

/// [`writable_key`] relative to the store's root.
fn writable_relative(volume: &VolumeId, snapshot: &SnapshotId, key: &str) -> Result<Key, Error> {
    let relative = parse_key(key)?;
    if is_probe(&relative, key) {
        return Ok(relative);
    }
    let own = format!(
        "volumes/{}/{}/snapshots/{snapshot}/",
        volume.namespace, volume.name
    );
    let allowed = key
        .strip_prefix(&own)
        .is_some_and(|rest| rest.starts_with("files/") || rest == "manifest.jsonl");
    if !allowed {
        return Err(forbidden_key(
            volume,
            key,
            &format!("write (only snapshot {snapshot}'s files and manifest)"),
        ));
    }
    Ok(relative)
}

fn absolute(state: &AppState, relative: &Key) -> Key {
    state
        .shared()
        .store
        .root()
        .parts()
        .chain(relative.parts())
        .collect()
}

fn store_failure(e: drainer_core::store::Error) -> Error {
    Error::from(drainer_core::snapshot::Error::Store(e))
}

pub(super) async fn begin(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<WireRun>, Error> {
    let Streaming { drain: id, volume } = streaming.into_inner();
    let shared = state.shared();
    let run = mover_checkpoint(&state, &headers, &id)
        .begin(shared.store.url(), &volume, &SnapshotId::generate())
        .await?;
    tracing::info!(drain = %id, run = %run.id, resumed = run.resumed, "mover started");
    Ok(axum::Json(WireRun {
        id: run.id,
        snapshot: run.snapshot.to_string(),
        resumed: run.resumed,
    }))
}

pub(super) async fn stored(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, run)): Path<(String, String)>,
) -> Result<Body, Error> {
    let Streaming { volume, .. } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    let ledger = state.shared().ledger.clone();
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut tx = tx;
        let mut files = ledger.stored_files(&run);
        while let Some(file) = files.next().await {
            let line = file.map_err(std::io::Error::other).and_then(|f| {
                let mut line =
                    serde_json::to_vec(&WireStoredFile::from(&f)).map_err(std::io::Error::other)?;
                line.push(b'\n');
                Ok(Bytes::from(line))
            });
            let failed = line.is_err();
            if futures::SinkExt::send(&mut tx, line).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Body::from_stream(rx))
}

pub(super) async fn record(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    headers: axum::http::HeaderMap,
    Path((_, run)): Path<(String, String)>,
    Json(files): Json<Vec<WireStoredFile>>,
) -> Result<StatusCode, Error> {
    let Streaming { drain: id, volume } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    let files: Vec<StoredFile> = files
        .into_iter()
        .map(StoredFile::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::invalid(format!("bad stored file: {e}")))?;
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

/// `POST …/run/{run}/finish`: the mover's copy is complete. The drainer checks the manifest
/// and what it names, records the drain in the summary (whatever the mover said), commits the
/// snapshot (summary, then `latest`) and marks the run finished.
pub(super) async fn finish(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, run)): Path<(String, String)>,
    Json(body): Json<FinishBody>,
) -> Result<StatusCode, Error> {
    let mut summary = body.known()?;
    let Streaming { drain: id, volume } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    if summary.snapshot != run.snapshot.as_str() || summary.volume != volume.to_string() {
        return Err(Error::invalid("the summary is not this run's"));
    }
    let shared = state.shared();
    summary.drain = shared
        .ledger
        .drain(&id)
        .await?
        .map(|d| Box::new(d.origin()));
    let layout = VolumeLayout::new(shared.store.root(), &volume);
    check_snapshot(&state, &layout, (&id, &run), &summary).await?;
    drainer_core::snapshot::catalog::commit(&shared.store, &layout, &summary).await?;
    shared.ledger.finish(&run, &summary).await?;
    abort_leftover_relays(&state, &id).await;
    if let Err(e) = shared.ledger.forget_relayed_objects_of(&id).await {
        tracing::warn!(drain = %id, error = %e, "cannot forget what was relayed for a committed drain");
    }
    tracing::info!(drain = %id, snapshot = %summary.snapshot, files = summary.files, "mover finished; snapshot committed");
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `…/finish`: a snapshot summary with no field it does not know. The summary type
/// itself keeps reading unknown fields (a `snapshot.json` written by a later drainer stays
/// readable), so the fields it leaves are caught here.
#[derive(serde::Deserialize)]
pub(super) struct FinishBody {
    #[serde(flatten)]
    summary: SnapshotSummary,
    #[serde(flatten)]
    unknown: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

impl FinishBody {
    /// The summary, or `400 invalid_json` naming the fields it does not have.
    fn known(self) -> Result<SnapshotSummary, Error> {
        if self.unknown.is_empty() {
            return Ok(self.summary);
        }
        let names: Vec<String> = self.unknown.keys().map(|k| format!("`{k}`")).collect();
        Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("unknown field {} in the snapshot summary", names.join(", ")),
        ))
    }
}

/// `400 bad_snapshot`: what the mover wrote is not the snapshot its summary describes.
fn bad_snapshot(snapshot: &SnapshotId, why: impl std::fmt::Display) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "bad_snapshot",
        format!("snapshot {snapshot} cannot be committed: {why}"),
    )
}

/// The drainer's own checks before it commits a mover's snapshot: the manifest is the one the
/// summary hashes, its totals are the summary's, every file's object is either one this run
/// stored or one the parent snapshot (already checked) names, and every object the relay
/// received for this drain is the one the manifest describes (see [`Mismatches`]).
async fn check_snapshot(
    state: &AppState,
    layout: &VolumeLayout,
    (drain, run): (&str, &Run),
    summary: &SnapshotSummary,
) -> Result<(), Error> {
    let snapshot = &run.snapshot;
    let store = &state.shared().store;
    let manifest = drainer_core::snapshot::catalog::CheckedManifest::open(store, layout, summary)
        .await
        .map_err(|e| bad_snapshot(snapshot, e))?;
    let stored = stored_objects(state, layout, snapshot).await?;
    let parent = parent_objects(state, layout, summary).await?;
    let mut mismatches = Mismatches::of(state, layout, drain).await?;
    let mut entries = manifest.entries().map_err(|e| bad_snapshot(snapshot, e))?;
    let (mut count, mut files, mut bytes) = (0_u64, 0_u64, 0_u64);
    let own = format!("snapshots/{snapshot}/");
    while let Some(entry) = entries
        .try_next()
        .await
        .map_err(|e| bad_snapshot(snapshot, e))?
    {
        count += 1;
        let Some(content) = &entry.content else {
            continue;
        };
        files += 1;
        bytes += entry.size;
        let known = if content.object.starts_with(&own) {
            mismatches.check(entry.size, content);
            stored.contains(&content.object)
        } else {
            parent.contains(&content.object)
        };
        if !known {
            return Err(bad_snapshot(
                snapshot,
                format!(
                    "object {} is neither stored by this run nor in its parent",
                    content.object
                ),
            ));
        }
    }
    if (count, files, bytes) != (summary.entries, summary.files, summary.bytes) {
        return Err(bad_snapshot(
            snapshot,
            "the summary's totals are not the manifest's",
        ));
    }
    mismatches.refuse(state, drain, run).await
}

/// What the relay received for a drain's objects, and the manifest's entries found not to
/// describe it: a plain object must have the entry's size and BLAKE3, a compressed one the
/// entry's stored size. An object the relay holds no record of (a part stored directly, or
/// stored before this drainer kept records) is not checked.
struct Mismatches {
    /// What was received, by object key relative to the volume.
    received: std::collections::HashMap<String, RelayedObject>,
    /// `(object, why)` of each entry that does not match.
    found: Vec<(String, String)>,
}

impl Mismatches {
    /// What the relay received for `drain`'s objects of this volume.
    async fn of(state: &AppState, layout: &VolumeLayout, drain: &str) -> Result<Self, Error> {
        let mut received = std::collections::HashMap::new();
        let prefix = layout.prefix().to_string();
        for (key, object) in state.shared().ledger.relayed_objects(drain).await? {
            if let Some(rest) = key.strip_prefix(&prefix) {
                received.insert(rest.trim_start_matches('/').to_owned(), object);
            }
        }
        Ok(Self {
            received,
            found: Vec::new(),
        })
    }

    /// Checks a manifest entry of `size` bytes stored as `content`.
    fn check(&mut self, size: u64, content: &drainer_core::snapshot::manifest::Content) {
        let Some(got) = self.received.get(&content.object) else {
            return;
        };
        let why = match &content.compressed {
            None if got.size != size || got.blake3 != content.blake3 => format!(
                "the manifest says {size} bytes with BLAKE3 {}, the relay received {} bytes with BLAKE3 {}",
                content.blake3, got.size, got.blake3
            ),
            Some(c) if got.size != c.stored_size => format!(
                "the manifest says {} bytes stored, the relay received {}",
                c.stored_size, got.size
            ),
            _ => return,
        };
        self.found.push((content.object.clone(), why));
    }

    /// Nothing to refuse, or `400 bad_snapshot` naming the first mismatch, after forgetting
    /// that the run stored those files, so that its next attempt stores them again.
    async fn refuse(self, state: &AppState, drain: &str, run: &Run) -> Result<(), Error> {
        let Some((object, why)) = self.found.first() else {
            return Ok(());
        };
        let objects: Vec<String> = self.found.iter().map(|(o, _)| o.clone()).collect();
        tracing::warn!(drain, run = %run.id, mismatched = objects.len(), object = %object, why = %why, "refusing to commit a manifest that does not describe what the relay received");
        state
            .shared()
            .ledger
            .forget_stored_objects(&run.id, &objects)
            .await?;
        Err(bad_snapshot(
            &run.snapshot,
            format!(
                "object {object} is not what the manifest describes ({why}); {} such object(s), to be stored again",
                objects.len()
            ),
        ))
    }
}

/// Every object stored under `snapshot`'s prefix, relative to the volume.
async fn stored_objects(
    state: &AppState,
    layout: &VolumeLayout,
    snapshot: &SnapshotId,
) -> Result<HashSet<String>, Error> {
    let store = &state.shared().store;
    let prefix = layout.snapshot(snapshot);
    let volume_prefix = layout.prefix().to_string();
    let listed: Vec<object_store::ObjectMeta> = store
        .call(
            "list",
            &prefix,
            store.objects().list(Some(&prefix)).try_collect(),
        )
        .await
        .map_err(store_failure)?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let key = meta.location.to_string();
            key.strip_prefix(&volume_prefix)
                .map(|rest| rest.trim_start_matches('/').to_owned())
        })
        .collect())
}

/// The objects the parent snapshot names (it was checked when it was committed).
async fn parent_objects(
    state: &AppState,
    layout: &VolumeLayout,
    summary: &SnapshotSummary,
) -> Result<HashSet<String>, Error> {
    let Some(parent) = &summary.parent else {
        return Ok(HashSet::new());
    };
    let store = &state.shared().store;
    let id: SnapshotId = parent
        .parse()
        .map_err(|e: String| Error::invalid(format!("parent: {e}")))?;
    let volume: VolumeId = summary
        .volume
        .parse()
        .map_err(|e: drainer_core::volume::InvalidName| Error::invalid(e.to_string()))?;
    let selector = drainer_core::snapshot::SnapshotSelector::Id(id);
    let complete = drainer_core::snapshot::resolve(store, &volume, &selector)
        .await
        .map_err(|e| Error::invalid(format!("parent snapshot {parent}: {e}")))?;
    let manifest =
        drainer_core::snapshot::catalog::CheckedManifest::open(store, layout, &complete).await?;
    Ok(manifest
        .entries()?
        .try_filter_map(|e| async move { Ok(e.content.map(|c| c.object)) })
        .try_collect()
        .await?)
}

pub(super) async fn interrupted(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    headers: axum::http::HeaderMap,
    Path((_, run)): Path<(String, String)>,
    Json(body): Json<Interrupted>,
) -> Result<StatusCode, Error> {
    let Streaming { drain: id, volume } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    let error: String = body.error.chars().take(2000).collect();
    mover_checkpoint(&state, &headers, &id)
        .interrupted(&run, &error)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT …/run/{run}/totals`: the size of the volume the mover copies, shown with the drain's
/// progress.
pub(super) async fn put_totals(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, run)): Path<(String, String)>,
    Json(totals): Json<RunTotals>,
) -> Result<StatusCode, Error> {
    let Streaming { volume, .. } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    state
        .shared()
        .ledger
        .set_run_totals(&run.id, totals.files, totals.bytes)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET …/run/{run}/partial?path_b64=`: the unfinished upload of a file, to resume it, if its
/// relayed upload is still open.
pub(super) async fn get_partial(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, run)): Path<(String, String)>,
    Query(path): Query<PathParam>,
) -> Result<axum::Json<WirePartial>, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    let path = path.decode().map_err(Error::invalid)?;
    let ledger = &state.shared().ledger;
    let none = || {
        Error::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no unfinished upload of that file",
        )
    };
    let Some(upload) = ledger.partial_upload(&run, &path).await? else {
        return Err(none());
    };
    // A record that outlived its relayed upload (completed or aborted, and forgotten) is
    // forgotten too: the mover starts the file's upload again instead of sending parts to it.
    if relayed(&state, &drain, &upload.upload_id, None)
        .await?
        .is_none()
    {
        tracing::info!(drain = %drain, upload = %upload.upload_id, "the record of an unfinished upload outlived it; forgetting it");
        ledger.forget_partial(&run, &path).await?;
        return Err(none());
    }
    Ok(axum::Json(WirePartial::from(&upload)))
}

/// `PUT …/run/{run}/partial`: records the stored parts of an unfinished upload.
pub(super) async fn put_partial(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, run)): Path<(String, String)>,
    Json(wire): Json<WirePartial>,
) -> Result<StatusCode, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    let upload = PartialUpload::try_from(wire).map_err(Error::invalid)?;
    let relay = state.shared().ledger.relay(&upload.upload_id).await?;
    if relay.is_none_or(|r| r.drain_id != drain) {
        return Err(upload_not_found(&upload.upload_id));
    }
    state.shared().ledger.record_partial(&run, &upload).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE …/run/{run}/partial?path_b64=`: forgets an upload completed or abandoned.
pub(super) async fn delete_partial(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, run)): Path<(String, String)>,
    Query(path): Query<PathParam>,
) -> Result<StatusCode, Error> {
    let Streaming { volume, .. } = streaming.into_inner();
    let run = running(&state, &volume, &run).await?;
    let path = path.decode().map_err(Error::invalid)?;
    state.shared().ledger.forget_partial(&run, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Small objects written at once for one batch.
const BATCH_PUTS_AT_ONCE: usize = 8;

/// `POST …/objects/batch`: small objects in one request ([`drainer_core::protocol::batch`]); every
/// key is checked before anything is written. Answers each object's error, or `null`.
pub(super) async fn put_objects(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    body: Bytes,
) -> Result<axum::Json<BatchAnswer>, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    let objects = batch::decode(body).map_err(Error::invalid)?;
    for (key, data) in &objects {
        check_probe_size(key, data.len())?;
    }
    let names: Vec<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
    let keys = writable_keys(&state, &volume, &names).await?;
    let keyed: Vec<_> = keys
        .into_iter()
        .zip(objects.into_iter().map(|(_, data)| data))
        .collect();
    let store = &state.shared().store;
    let written: Vec<Result<RelayedObject, String>> = futures::stream::iter(keyed)
        .map(|(key, data)| async move {
            let received = received(&key, &data);
            let stored = store.put_bytes(&key, PutPayload::from(data)).await;
            stored.map(|_| received).map_err(|e| e.to_string())
        })
        .buffered(BATCH_PUTS_AT_ONCE)
        .collect()
        .await;
    let (errors, objects) = errors_and_received(written);
    state
        .shared()
        .ledger
        .record_relayed_objects(&drain, &objects)
        .await?;
    Ok(axum::Json(BatchAnswer { errors }))
}

pub(super) async fn put_object(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Query(q): Query<KeyParam>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    check_probe_size(&q.key, body.len())?;
    let key = writable_key(&state, &volume, &q.key).await?;
    let received = received(&key, &body);
    state
        .shared()
        .store
        .put_bytes(&key, PutPayload::from(body))
        .await
        .map_err(store_failure)?;
    state
        .shared()
        .ledger
        .record_relayed_objects(&drain, &[received])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_object(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Query(q): Query<KeyParam>,
) -> Result<axum::response::Response, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    let key = readable_key(&state, &volume, &q.key)?;
    if q.key == format!("volumes/{}/{}/latest", volume.namespace, volume.name)
        && latest_of_another_claim(&state, &drain, &volume).await?
    {
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no object {}: the latest snapshot is of an earlier claim of this name",
                q.key
            ),
        ));
    }
    let store = &state.shared().store;
    let objects = store.objects().clone();
    match store.call("get", &key, objects.get(&key)).await {
        Ok(found) => {
            let size = found.meta.size;
            let body = Body::from_stream(found.into_stream().map_err(std::io::Error::other));
            axum::response::Response::builder()
                .header(axum::http::header::CONTENT_LENGTH, size)
                .body(body)
                .map_err(|e| Error::invalid(e.to_string()))
        }
        Err(e) if e.is_not_found() => Err(Error::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no object {}", q.key),
        )),
        Err(e) => Err(store_failure(e)),
    }
}

/// Whether the volume's latest snapshot copied another claim than drain `id`'s (both UIDs
/// known and different): a claim deleted and made again under the same name. Its mover then
/// finds no `latest` and copies without a parent, never referring to the earlier claim's
/// objects (which may belong to an earlier life of the namespace, see `auth::NamespaceLife`).
async fn latest_of_another_claim(
    state: &AppState,
    id: &str,
    volume: &VolumeId,
) -> Result<bool, Error> {
    let shared = state.shared();
    let Some(claim) = shared
        .ledger
        .drain(id)
        .await?
        .and_then(|d| d.origin().claim_uid)
    else {
        return Ok(false);
    };
    let latest = drainer_core::snapshot::catalog::latest(&shared.store, volume).await?;
    Ok(latest.is_some_and(|s| s.of_another_claim(&claim)))
}

pub(super) async fn delete_object(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Query(q): Query<KeyParam>,
) -> Result<StatusCode, Error> {
    let Streaming { volume, .. } = streaming.into_inner();
    let key = writable_key(&state, &volume, &q.key).await?;
    let store = &state.shared().store;
    store
        .call("delete", &key, store.objects().delete(&key))
        .await
        .map_err(store_failure)?;
    state
        .shared()
        .ledger
        .forget_relayed_object(key.as_ref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the relay received for `key`: `data`'s size and BLAKE3.
fn received(key: &Key, data: &[u8]) -> RelayedObject {
    RelayedObject {
        key: key.to_string(),
        size: data.len() as u64,
        blake3: blake3::hash(data).to_hex().to_string(),
    }
}

/// A batch's answer (each object's error, or `None`) and what was received for the objects
/// it stored.
fn errors_and_received(
    written: Vec<Result<RelayedObject, String>>,
) -> (Vec<Option<String>>, Vec<RelayedObject>) {
    let mut objects = Vec::new();
    let errors = written
        .into_iter()
        .map(|result| match result {
            Ok(received) => {
                objects.push(received);
                None
            }
            Err(e) => Some(e),
        })
        .collect();
    (errors, objects)
}

fn relay_parts(state: &AppState) -> Arc<dyn MultipartStore> {
    Arc::clone(state.shared().store.multipart())
}

/// `GET …/store`: what a mover needs to know of the store it writes through this drainer.
pub(super) async fn store_info(
    State(state): State<AppState>,
    _: Granted<Streaming>,
) -> axum::Json<StoreInfo> {
    axum::Json(StoreInfo {
        part_size: state.shared().store.part_size(),
        compression: Some(state.shared().compression.to_string()),
        direct_parts: Some(state.shared().direct_parts),
        direct_batches: Some(state.shared().direct_parts),
        parts_with_progress: Some(true),
    })
}

pub(super) async fn create_upload(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Query(q): Query<KeyParam>,
) -> Result<axum::Json<CreatedUpload>, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    if parse_key(&q.key).is_ok_and(|relative| is_probe(&relative, &q.key)) {
        return Err(forbidden_key(&volume, &q.key, "upload in parts"));
    }
    let key = writable_key(&state, &volume, &q.key).await?;
    let store = &state.shared().store;
    let parts = relay_parts(&state);
    let store_upload_id = store
        .call(
            "create multipart upload",
            &key,
            parts.create_multipart(&key),
        )
        .await
        .map_err(store_failure)?;
    let relay = RelayRecord {
        id: format!("u-{:016x}", rand::random::<u64>()),
        drain_id: drain,
        object_key: key.to_string(),
        store_upload_id,
    };
    state.shared().ledger.create_relay(&relay).await?;
    Ok(axum::Json(CreatedUpload {
        upload: relay.id,
        part_size: store.part_size(),
    }))
}

fn upload_not_found(upload: &str) -> Error {
    Error::new(
        StatusCode::NOT_FOUND,
        "upload_not_found",
        format!("upload {upload} does not exist (completed, aborted, or never started)"),
    )
}

/// The relayed upload `upload` of drain `drain`, written at `key` if the caller names one.
async fn relayed(
    state: &AppState,
    drain: &str,
    upload: &str,
    key: Option<&str>,
) -> Result<Option<RelayRecord>, Error> {
    let relay = state.shared().ledger.relay(upload).await?;
    match relay {
        Some(r) if r.drain_id == drain => {
            if let Some(key) = key
                && absolute(state, &parse_key(key)?).to_string() != r.object_key
            {
                return Err(Error::invalid(format!(
                    "upload {upload} does not write {key:?}"
                )));
            }
            Ok(Some(r))
        }
        _ => Ok(None),
    }
}

/// The `?key=` of upload requests (optional for older movers).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MaybeKey {
    key: Option<String>,
}

pub(super) async fn put_part(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, upload, part)): Path<(String, String, usize)>,
    Query(q): Query<MaybeKey>,
    body: Body,
) -> Result<StatusCode, Error> {
    let drain = streaming.into_inner().drain;
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
    let relay = relayed(&state, &drain, &upload, q.key.as_deref())
        .await?
        .ok_or_else(|| upload_not_found(&upload))?;
    let key = Key::from(relay.object_key.as_str());
    let hashing = part_hash(&state, part as u64, chunks.clone());
    let parts = relay_parts(&state);
    let store = &state.shared().store;
    let put = parts.put_part(
        &key,
        &relay.store_upload_id,
        part,
        PutPayload::from_iter(chunks),
    );
    // The part is hashed on a blocking thread while the store writes it.
    let (hash, stored) = tokio::join!(hashing, store.call("upload part", &key, put));
    let stored = match stored {
        Ok(stored) => stored,
        Err(e) => return Err(relay_failure(&state, &relay, &key, e).await),
    };
    let hash = hash?;
    let part = RelayPart {
        idx: part as u64,
        part_id: stored.content_id,
        len,
        cv: hash.as_ref().map(|h| h.cv.clone()),
        alone: hash.and_then(|h| h.alone),
    };
    state
        .shared()
        .ledger
        .record_relay_part(&upload, &part)
        .await?;
    count_part_bytes(&state, "relay", len);
    Ok(StatusCode::NO_CONTENT)
}

/// The hash of a relayed part, taken off the async workers (a part is megabytes).
async fn part_hash(
    state: &AppState,
    idx: u64,
    chunks: Vec<Bytes>,
) -> Result<Option<relay_hash::PartHash>, Error> {
    let part_size = state.shared().store.part_size();
    tokio::task::spawn_blocking(move || relay_hash::hash_part(part_size, idx, &chunks))
        .await
        .map_err(|e| {
            Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("hashing part {idx}: {e}"),
            )
        })
}

/// Counts `len` bytes of parts stored `via` the relay or directly.
fn count_part_bytes(state: &AppState, via: &'static str, len: u64) {
    state
        .shared()
        .metrics
        .mover_part_bytes
        .get_or_create(&crate::metrics::ViaLabel { via })
        .inc_by(len);
}

/// How long a signed part URL stays valid: enough to send one part on a slow link, short
/// enough that a URL that leaks is soon worth nothing.
const PART_URL_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The most parts an upload has (S3's limit).
const MAX_PARTS: usize = 10_000;

/// `409 direct_parts_not_offered`: this drainer relays every part.
fn direct_not_offered() -> Error {
    Error::new(
        StatusCode::CONFLICT,
        "direct_parts_not_offered",
        "this drainer relays every part: send it with PUT …/uploads/{upload}/{part}",
    )
}

/// The relayed upload `upload` of drain `drain` that a direct part of `key` belongs to, if
/// this drainer offers direct parts: `409` if it does not, `403` for a key that is not the
/// running copy's, `404` for an upload that is not the drain's, `400` for a part number
/// beyond the store's limit.
async fn direct_upload(
    state: &AppState,
    streaming: &Streaming,
    upload: &str,
    part: usize,
    key: &str,
) -> Result<RelayRecord, Error> {
    direct_upload_in(state, streaming, upload, (part, key), None).await
}

/// [`direct_upload`], with the volume's runs if they were read already.
async fn direct_upload_in(
    state: &AppState,
    streaming: &Streaming,
    upload: &str,
    (part, key): (usize, &str),
    runs: Option<&[RunRecord]>,
) -> Result<RelayRecord, Error> {
    if !state.shared().direct_parts {
        return Err(direct_not_offered());
    }
    if part >= MAX_PARTS {
        return Err(Error::invalid(format!(
            "part {part}: an upload has at most {MAX_PARTS} parts"
        )));
    }
    match runs {
        Some(runs) => {
            let relative = parse_key(key)?;
            if !is_probe(&relative, key) {
                let snapshot = writable_in(state, &streaming.volume, runs)?;
                writable_relative(&streaming.volume, &snapshot, key)?;
            }
        }
        None => {
            writable_key(state, &streaming.volume, key).await?;
        }
    }
    relayed(state, &streaming.drain, upload, Some(key))
        .await?
        .ok_or_else(|| upload_not_found(upload))
}

/// `POST …/uploads/{upload}/{part}/url?key=`: a URL, valid for a few minutes, with which the
/// mover `PUT`s part `part` of its upload straight into the store (the store's credentials
/// stay here). The mover then reports the part with `…/stored`.
pub(super) async fn sign_part(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, upload, part)): Path<(String, String, usize)>,
    Query(q): Query<PartUrlParam>,
) -> Result<axum::Json<SignedUrl>, Error> {
    let streaming = streaming.into_inner();
    let relay = direct_upload(&state, &streaming, &upload, part, &q.key).await?;
    let key = Key::from(relay.object_key.as_str());
    let store = &state.shared().store;
    let url = store
        .signed_part_url(&key, &relay.store_upload_id, part, PART_URL_TTL)
        .await
        .map_err(store_failure)?
        .ok_or_else(direct_not_offered)?;
    tracing::debug!(drain = %streaming.drain, upload = %upload, part, key = %key, "signed a part URL");
    Ok(axum::Json(SignedUrl {
        url: url.to_string(),
        expires_in_s: PART_URL_TTL.as_secs(),
    }))
}

/// `POST …/uploads/{upload}/{part}/stored?key=`: a part the mover stored with a signed URL,
/// recorded as a relayed part is. What the mover claims is checked when the upload completes:
/// the store refuses a part it does not hold (by its `ETag`), and the completed object must
/// have the size of the parts reported.
pub(super) async fn record_direct_part(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, upload, part)): Path<(String, String, usize)>,
    Query(q): Query<PartUrlParam>,
    Json(reported): Json<DirectPart>,
) -> Result<StatusCode, Error> {
    check_reported(&state, part, &reported)?;
    let streaming = streaming.into_inner();
    direct_upload(&state, &streaming, &upload, part, &q.key).await?;
    let recorded = RelayPart {
        idx: part as u64,
        part_id: reported.etag,
        len: reported.len,
        cv: None,
        alone: None,
    };
    state
        .shared()
        .ledger
        .record_relay_part(&upload, &recorded)
        .await?;
    count_part_bytes(&state, "direct", reported.len);
    Ok(StatusCode::NO_CONTENT)
}

/// A reported part's length must be 1 to the store's part size, its `ETag` 1 to 200
/// characters: else `400`.
fn check_reported(state: &AppState, part: usize, reported: &DirectPart) -> Result<(), Error> {
    let part_size = state.shared().store.part_size();
    if reported.len == 0 || reported.len > part_size {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "bad_part_size",
            format!(
                "part {part} has {} bytes; parts have 1 to {part_size}",
                reported.len
            ),
        ));
    }
    if reported.etag.is_empty() || reported.etag.len() > 200 {
        return Err(Error::invalid(format!(
            "part {part}: the ETag must have 1 to 200 characters"
        )));
    }
    Ok(())
}

/// `POST …/uploads/{upload}/urls?key=&first=&count=`: URLs for parts `first .. first +
/// count` of the upload at once, each as `…/{part}/url` signs it, so that a mover asking
/// ahead costs drainer one request (and one look at the ledger) per
/// [`MAX_SIGNED_PER_REQUEST`] parts rather than one per part.
pub(super) async fn sign_parts(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, upload)): Path<(String, String)>,
    Query(q): Query<PartUrlsParam>,
) -> Result<axum::Json<SignedUrls>, Error> {
    if q.count == 0 || q.count > MAX_SIGNED_PER_REQUEST {
        return Err(Error::invalid(format!(
            "count {}: sign 1 to {MAX_SIGNED_PER_REQUEST} parts per request",
            q.count
        )));
    }
    let last = q.first.saturating_add(q.count - 1);
    let streaming = streaming.into_inner();
    let relay = direct_upload(&state, &streaming, &upload, last, &q.key).await?;
    let key = Key::from(relay.object_key.as_str());
    let store = &state.shared().store;
    let mut urls = Vec::with_capacity(q.count);
    for part in q.first..=last {
        let url = store
            .signed_part_url(&key, &relay.store_upload_id, part, PART_URL_TTL)
            .await
            .map_err(store_failure)?
            .ok_or_else(direct_not_offered)?;
        urls.push(url.to_string());
    }
    tracing::debug!(drain = %streaming.drain, upload = %upload, first = q.first, count = q.count, key = %key, "signed part URLs");
    Ok(axum::Json(SignedUrls {
        first: q.first,
        urls,
        expires_in_s: PART_URL_TTL.as_secs(),
    }))
}

/// `POST …/parts/stored`: parts the mover stored with signed URLs, of one or more of its
/// uploads, each checked as `…/{part}/stored` checks one, and, if the mover sends it, the
/// progress of one of its unfinished uploads, checked as `PUT …/run/{run}/partial` checks it;
/// the store is flushed as `…/flush` does, then the parts and the progress are recorded in one
/// ledger transaction (all or none). A mover reports its parts as its durability barrier,
/// with the progress that counts on them, so resumption stays exact and the barrier and the
/// record cost one request.
pub(super) async fn record_direct_parts(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Json(report): Json<StoredParts>,
) -> Result<StatusCode, Error> {
    let fewest = usize::from(report.progress.is_none());
    if report.parts.len() < fewest || report.parts.len() > MAX_REPORTED_PER_REQUEST {
        return Err(Error::invalid(format!(
            "{} parts: report {fewest} to {MAX_REPORTED_PER_REQUEST} per request",
            report.parts.len()
        )));
    }
    let streaming = streaming.into_inner();
    let runs = runs_of(&state, &streaming.volume).await?;
    let (recorded, uploads) = checked_direct_parts(&state, &streaming, &runs, report.parts).await?;
    let progress = match report.progress {
        Some(progress) => {
            Some(checked_progress(&state, &streaming, &runs, progress, &uploads).await?)
        }
        None => None,
    };
    state.shared().store.flush().await.map_err(store_failure)?;
    state
        .shared()
        .ledger
        .record_relay_parts_and_partial(&recorded, progress.as_ref().map(|(r, u)| (r, u)))
        .await?;
    count_part_bytes(&state, "direct", recorded.iter().map(|(_, p)| p.len).sum());
    Ok(StatusCode::NO_CONTENT)
}

/// The reported parts, each checked as `…/{part}/stored` checks one, as the ledger records
/// them; and the uploads they belong to (each checked to be the drain's once). `runs`: the
/// volume's.
async fn checked_direct_parts(
    state: &AppState,
    streaming: &Streaming,
    runs: &[RunRecord],
    parts: Vec<drainer_core::protocol::StoredPart>,
) -> Result<(Vec<(String, RelayPart)>, HashSet<String>), Error> {
    let mut checked = HashSet::new();
    let mut recorded = Vec::with_capacity(parts.len());
    for p in parts {
        let reported = DirectPart {
            etag: p.etag,
            len: p.len,
        };
        check_reported(state, p.part, &reported)?;
        if p.part >= MAX_PARTS {
            return Err(Error::invalid(format!(
                "part {}: an upload has at most {MAX_PARTS} parts",
                p.part
            )));
        }
        if !checked.contains(&(p.upload.clone(), p.key.clone())) {
            direct_upload_in(state, streaming, &p.upload, (p.part, &p.key), Some(runs)).await?;
            checked.insert((p.upload.clone(), p.key));
        }
        let part = RelayPart {
            idx: p.part as u64,
            part_id: reported.etag,
            len: reported.len,
            cv: None,
            alone: None,
        };
        recorded.push((p.upload, part));
    }
    let uploads = checked.into_iter().map(|(upload, _)| upload).collect();
    Ok((recorded, uploads))
}

/// The progress a mover reports with its parts, checked as `PUT …/run/{run}/partial` checks
/// it: its run is running, its upload is the drain's (known already if it is one of
/// `uploads`, the reported parts' own). `runs`: the volume's.
async fn checked_progress(
    state: &AppState,
    streaming: &Streaming,
    runs: &[RunRecord],
    progress: RunPartial,
    uploads: &HashSet<String>,
) -> Result<(Run, PartialUpload), Error> {
    let run = running_in(state, &streaming.volume, runs, &progress.run)?;
    let upload = PartialUpload::try_from(progress.upload).map_err(Error::invalid)?;
    if !uploads.contains(&upload.upload_id) {
        let relay = state.shared().ledger.relay(&upload.upload_id).await?;
        if relay.is_none_or(|r| r.drain_id != streaming.drain) {
            return Err(upload_not_found(&upload.upload_id));
        }
    }
    Ok((run, upload))
}

/// The parts in order, if they are exactly parts 0..n, all of the store's part size but the
/// last: what a local store needs to have written every byte at its place.
fn complete_parts(parts: &[RelayPart], part_size: u64) -> Result<Vec<PartId>, String> {
    let last = parts.len().saturating_sub(1);
    for (expected, part) in parts.iter().enumerate() {
        if part.idx != expected as u64 {
            return Err(format!("part {expected} is missing"));
        }
        if expected < last && part.len != part_size {
            return Err(format!(
                "part {} has {} bytes; every part but the last has {part_size}",
                part.idx, part.len
            ));
        }
    }
    Ok(parts
        .iter()
        .map(|p| PartId {
            content_id: p.part_id.clone(),
        })
        .collect())
}

pub(super) async fn complete_upload(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, upload)): Path<(String, String)>,
    Query(q): Query<MaybeKey>,
) -> Result<StatusCode, Error> {
    let Streaming { drain, volume } = streaming.into_inner();
    let Some(relay) = relayed(&state, &drain, &upload, q.key.as_deref()).await? else {
        return already_completed(&state, &volume, &upload, q.key.as_deref()).await;
    };
    let store = &state.shared().store;
    let key = Key::from(relay.object_key.as_str());
    let recorded = state.shared().ledger.relay_parts(&upload).await?;
    let ordered = match complete_parts(&recorded, store.part_size()) {
        Ok(ordered) => ordered,
        Err(reason) => {
            abort_relay(&state, &relay).await;
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                "incomplete_upload",
                format!("upload {upload}: {reason}"),
            ));
        }
    };
    let parts = relay_parts(&state);
    let complete = parts.complete_multipart(&key, &relay.store_upload_id, ordered);
    if let Err(e) = store
        .call("complete multipart upload", &key, complete)
        .await
    {
        return Err(relay_failure(&state, &relay, &key, e).await);
    }
    if store.signs_parts() {
        check_completed_size(&state, &relay, &key, &recorded).await?;
    }
    let received = relay_hash::object_hash(&recorded).map(|blake3| RelayedObject {
        key: relay.object_key.clone(),
        size: recorded.iter().map(|p| p.len).sum(),
        blake3,
    });
    let received = received.map(|object| (relay.drain_id.as_str(), object));
    state
        .shared()
        .ledger
        .complete_relay(&upload, &relay.object_key, received)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// On a store whose parts movers may store themselves: the completed object has the size of
/// the parts reported, else it is deleted and the completion refused (`400
/// incomplete_upload`), so a part stored short (or long) never becomes a snapshot's file.
async fn check_completed_size(
    state: &AppState,
    relay: &RelayRecord,
    key: &Key,
    parts: &[RelayPart],
) -> Result<(), Error> {
    let store = &state.shared().store;
    let reported: u64 = parts.iter().map(|p| p.len).sum();
    let meta = store
        .call("head", key, store.objects().head(key))
        .await
        .map_err(store_failure)?;
    if meta.size == reported {
        return Ok(());
    }
    tracing::warn!(upload = %relay.id, drain = %relay.drain_id, key = %key, stored = meta.size, reported, "a completed upload does not have the size of its parts; deleting it");
    if let Err(e) = store.call("delete", key, store.objects().delete(key)).await {
        tracing::warn!(key = %key, error = %e, "cannot delete an upload of the wrong size");
    }
    state.shared().ledger.forget_relay(&relay.id).await?;
    Err(Error::new(
        StatusCode::BAD_REQUEST,
        "incomplete_upload",
        format!(
            "upload {}: the store holds {} bytes, but its parts were reported as {reported}",
            relay.id, meta.size
        ),
    ))
}

/// The answer to a store call on a relayed upload that failed: if the store refuses the upload
/// itself (unknown, aborted, or completed already: see [`drainer_core::store::Store::upload_refused`]),
/// the relay is abandoned and forgotten and the mover told `404 upload_not_found`, so it starts
/// the file again; otherwise (the store does not answer) the store's error, and the relay
/// stays for a later attempt.
async fn relay_failure(
    state: &AppState,
    relay: &RelayRecord,
    key: &Key,
    error: drainer_core::store::Error,
) -> Error {
    if !state.shared().store.upload_refused(key, &error).await {
        return store_failure(error);
    }
    tracing::warn!(upload = %relay.id, drain = %relay.drain_id, key = %key, error = %error, "the store refuses a relayed upload (completed or unknown); forgetting it");
    abort_relay(state, relay).await;
    upload_not_found(&relay.id)
}

/// A completion asked again (its answer was lost): done if the object is in place.
async fn already_completed(
    state: &AppState,
    volume: &VolumeId,
    upload: &str,
    key: Option<&str>,
) -> Result<StatusCode, Error> {
    let Some(key) = key else {
        return Err(upload_not_found(upload));
    };
    let key = writable_key(state, volume, key).await?;
    let store = &state.shared().store;
    match store.call("head", &key, store.objects().head(&key)).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e) if e.is_not_found() => Err(upload_not_found(upload)),
        Err(e) => Err(store_failure(e)),
    }
}

pub(super) async fn abort_upload(
    State(state): State<AppState>,
    streaming: Granted<Streaming>,
    Path((_, upload)): Path<(String, String)>,
    Query(q): Query<MaybeKey>,
) -> Result<StatusCode, Error> {
    let drain = streaming.into_inner().drain;
    let relay = relayed(&state, &drain, &upload, q.key.as_deref())
        .await?
        .ok_or_else(|| upload_not_found(&upload))?;
    abort_relay(&state, &relay).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Abandons a relayed upload in the store and forgets it (best effort: an abandoned upload
/// only costs space until the store expires it).
async fn abort_relay(state: &AppState, relay: &RelayRecord) {
    let store = &state.shared().store;
    let key = Key::from(relay.object_key.as_str());
    let parts = relay_parts(state);
    let abort = parts.abort_multipart(&key, &relay.store_upload_id);
    let _ = store.call("abort multipart upload", &key, abort).await;
    if let Err(e) = state.shared().ledger.forget_relay(&relay.id).await {
        tracing::warn!(upload = %relay.id, error = %e, "cannot forget an aborted upload");
    }
}

/// Aborts the uploads a drain's movers started and never completed (a mover that died for
/// good), once the drain's snapshot is committed.
async fn abort_leftover_relays(state: &AppState, drain: &str) {
    match state.shared().ledger.relays_of(drain).await {
        Ok(left) => {
            for relay in left {
                abort_relay(state, &relay).await;
            }
        }
        Err(e) => tracing::warn!(drain, error = %e, "cannot list leftover uploads"),
    }
}

pub(super) async fn flush(
    State(state): State<AppState>,
    _: Granted<Streaming>,
) -> Result<StatusCode, Error> {
    state.shared().store.flush().await.map_err(store_failure)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_by_index(parts: &[(u64, u64)]) -> Vec<RelayPart> {
        parts
            .iter()
            .map(|&(idx, len)| RelayPart {
                idx,
                part_id: idx.to_string(),
                len,
                cv: None,
                alone: None,
            })
            .collect()
    }

    #[test]
    fn a_relayed_upload_completes_only_with_every_part_in_place() {
        let whole = complete_parts(&parts_by_index(&[(0, 10), (1, 10), (2, 3)]), 10).unwrap();
        let order: Vec<_> = whole.iter().map(|p| p.content_id.as_str()).collect();
        assert_eq!(order, ["0", "1", "2"]);
        assert_eq!(
            complete_parts(&parts_by_index(&[(0, 4)]), 10)
                .unwrap()
                .len(),
            1
        );
        let gap = complete_parts(&parts_by_index(&[(0, 10), (2, 10)]), 10).unwrap_err();
        assert!(gap.contains("part 1 is missing"), "{gap}");
        let short = complete_parts(&parts_by_index(&[(0, 10), (1, 9), (2, 10)]), 10).unwrap_err();
        assert!(short.contains("part 1 has 9 bytes"), "{short}");
        assert!(complete_parts(&[], 10).unwrap().is_empty());
    }

    #[test]
    fn a_finish_body_is_a_summary_with_no_unknown_field() {
        let summary = serde_json::json!({
            "snapshot": "20261201T120000123Z-abcd", "volume": "shop/data-web-4", "parent": null,
            "created": "2026-12-01T12:00:00Z", "completed": "2026-12-01T12:00:01Z",
            "entries": 3, "files": 2, "bytes": 18_446_744_073_709_551_615_u64, "skipped": 0,
            "uploaded_files": 2, "uploaded_bytes": 10, "manifest_blake3": "ab", "manifest_size": 9,
        });
        let known: FinishBody = serde_json::from_value(summary.clone()).unwrap();
        let known = known.known().unwrap();
        assert_eq!(known.bytes, u64::MAX);
        assert_eq!(known.snapshot, "20261201T120000123Z-abcd");
        let mut extra = summary.clone();
        extra["commit"] = serde_json::json!(false);
        extra["dry_run"] = serde_json::json!(true);
        let body: FinishBody = serde_json::from_value(extra).unwrap();
        let refusal = body.known().unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(
            refusal.message.contains("`commit`") && refusal.message.contains("`dry_run`"),
            "{}",
            refusal.message
        );
        let mut missing = summary;
        missing.as_object_mut().unwrap().remove("files");
        assert!(serde_json::from_value::<FinishBody>(missing).is_err());
    }

    #[test]
    fn movers_write_only_their_own_snapshot() {
        let volume: VolumeId = "shop/data-web-4".parse().unwrap();
        let own: SnapshotId = "20261201T120000123Z-abcd".parse().unwrap();
        let prefix = "volumes/shop/data-web-4/snapshots";
        let allowed = [
            format!("{prefix}/{own}/files/a.txt"),
            format!("{prefix}/{own}/files/dir/b"),
            format!("{prefix}/{own}/manifest.jsonl"),
        ];
        let refused = [
            format!("{prefix}/{own}/snapshot.json"),
            format!("{prefix}/20261101T000000000Z-0000/files/a.txt"),
            format!("{prefix}/20261101T000000000Z-0000/snapshot.json"),
            "volumes/shop/data-web-4/latest".to_owned(),
            "volumes/shop/data-web-3/snapshots/x/files/a".to_owned(),
            format!("{prefix}/{own}/other"),
        ];
        for key in allowed {
            assert!(writable_relative(&volume, &own, &key).is_ok(), "{key}");
        }
        for key in refused {
            let refusal = writable_relative(&volume, &own, &key).unwrap_err();
            assert_eq!(refusal.status, StatusCode::FORBIDDEN, "{key}");
        }
        assert!(writable_relative(&volume, &own, ".drainer-probe-1").is_ok());
    }
}
