//! The catalog of snapshots in a store: the `latest` pointer, summaries, manifests as streams,
//! listing, and pruning.
//!
//! A snapshot is complete when its `snapshot.json` summary exists; `latest` is written after
//! that. Pruning deletes a snapshot's manifest and the objects no kept snapshot refers to, and
//! its summary last, so an interrupted prune never leaves a listed snapshot that lies.
//!
//! Damage is contained to what is damaged. A `snapshot.json` that cannot be read as the summary
//! of that snapshot of that volume is listed as [`Listed::Damaged`] with the reason, beside the
//! others. A `latest` pointer that is damaged, or names a snapshot that is missing or damaged,
//! is not trusted: `latest` then means the newest complete snapshot, and a warning says so
//! (the next completed copy writes the pointer again). Naming a damaged snapshot by its id is
//! an error that says why. Pruning never deletes a damaged snapshot, and keeps every object its
//! manifest (if readable) refers to.

use super::layout::{SnapshotId, SnapshotSelector, VolumeLayout};
use super::manifest::{self, Entry, Line};
use super::retention::{self, Plan, Policy};
use super::validate::Validator;
use super::{Error, Result};
use crate::store::Store;
use crate::volume::VolumeId;
use futures::FutureExt;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use tokio::io::AsyncBufReadExt;

/// The summary of a complete snapshot (`snapshot.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// The snapshot id.
    pub snapshot: String,
    /// `namespace/pvc`.
    pub volume: String,
    /// The snapshot it was taken incrementally against.
    pub parent: Option<String>,
    /// When the copy started (RFC 3339).
    pub created: String,
    /// When the snapshot was completed (RFC 3339).
    pub completed: String,
    /// Entries of every kind, the root included.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Bytes in regular files.
    pub bytes: u64,
    /// Special files recorded but not copied.
    pub skipped: u64,
    /// Regular files that could not be read (permission denied): listed in the manifest
    /// without content. A snapshot with any is incomplete, and says so.
    #[serde(default)]
    pub unreadable: u64,
    /// Files whose bytes this snapshot uploaded (the rest refer to earlier objects).
    pub uploaded_files: u64,
    /// Bytes this snapshot uploaded.
    pub uploaded_bytes: u64,
    /// BLAKE3 of the manifest.
    pub manifest_blake3: String,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
    /// The drain that made the snapshot (none for `drainer copy`, and in summaries written
    /// before drainer recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Box<DrainOrigin>>,
}

/// The drain a snapshot was made for: who asked, why, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOrigin {
    /// The drain's id.
    pub id: String,
    /// The pod that announced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Why it was requested (`handoff`, `sweep`, the caller's reason).
    pub reason: String,
    /// When it was requested (RFC 3339).
    pub requested: String,
    /// The UID of the claim it copied (Kubernetes mode): a claim deleted and made again under
    /// the same name is another volume, whose copies never build on this one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_uid: Option<String>,
    /// The UID of the claim's namespace when the copy began (Kubernetes mode): which life of
    /// the namespace the snapshot belongs to. A namespace deleted and created again under
    /// the same name has another UID, and its workloads never read this snapshot. Absent in
    /// snapshots made before drainer recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_uid: Option<String>,
    /// The UID of the claim's StatefulSet when the copy began, if it had one (Kubernetes
    /// mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statefulset_uid: Option<String>,
}

impl DrainOrigin {
    /// The fields a platform may fill from what it recorded on the drain (see
    /// [`DrainOrigin::with_lineage`]).
    pub const LINEAGE: [&'static str; 3] = ["claim_uid", "namespace_uid", "statefulset_uid"];

    /// An origin without lineage: drain `id`, its pod, reason and request time (RFC 3339).
    pub(crate) fn new(id: &str, pod: Option<&str>, reason: &str, requested: String) -> Self {
        Self {
            id: id.to_owned(),
            pod: pod.map(str::to_owned),
            reason: reason.to_owned(),
            requested,
            claim_uid: None,
            namespace_uid: None,
            statefulset_uid: None,
        }
    }

    /// This origin with its lineage fields ([`DrainOrigin::LINEAGE`]) set from `fact`, which
    /// gives the drain's fact named as each field, copied verbatim.
    pub(crate) fn with_lineage<'a>(self, fact: impl Fn(&str) -> Option<&'a str>) -> Self {
        let [claim, namespace, statefulset] = Self::LINEAGE.map(|f| fact(f).map(str::to_owned));
        Self {
            claim_uid: claim,
            namespace_uid: namespace,
            statefulset_uid: statefulset,
            ..self
        }
    }
}

impl SnapshotSummary {
    /// Whether this snapshot records copying another claim than `claim` (a claim deleted and
    /// made again under the same name): copies of `claim` must not build on it. A snapshot
    /// that records no claim is not another's.
    pub fn of_another_claim(&self, claim: &str) -> bool {
        let theirs = self.drain.as_ref().and_then(|d| d.claim_uid.as_deref());
        theirs.is_some_and(|theirs| theirs != claim)
    }

    /// The UID of the namespace life the snapshot was made in, if it records one.
    pub fn namespace_uid(&self) -> Option<&str> {
        self.drain.as_ref()?.namespace_uid.as_deref()
    }
}

#[derive(Serialize, Deserialize)]
struct Latest {
    snapshot: String,
}

/// One snapshot as a listing shows it: complete, or damaged with the reason. As JSON, a
/// complete snapshot is its summary; a damaged one is `{"snapshot", "volume", "damaged"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Listed {
    /// A complete snapshot.
    Complete(SnapshotSummary),
    /// A snapshot whose summary cannot be trusted.
    Damaged {
        /// The snapshot id (from its key).
        snapshot: String,
        /// `namespace/pvc`.
        volume: String,
        /// What is wrong with it.
        damaged: String,
    },
}

impl Listed {
    /// The snapshot id.
    pub fn snapshot(&self) -> &str {
        match self {
            Listed::Complete(s) => &s.snapshot,
            Listed::Damaged { snapshot, .. } => snapshot,
        }
    }

    /// The summary, if the snapshot is complete.
    pub fn complete(&self) -> Option<&SnapshotSummary> {
        match self {
            Listed::Complete(s) => Some(s),
            Listed::Damaged { .. } => None,
        }
    }
}

/// What the `latest` pointer says, read without trusting it.
enum Pointer {
    Absent,
    Names(SnapshotId),
    Damaged(String),
}

fn manifest_error(key: &Key, reason: impl ToString) -> Error {
    Error::Manifest {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

async fn read_pointer(store: &Store, layout: &VolumeLayout) -> Result<Pointer> {
    let key = layout.latest();
    let bytes = match store.get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(Pointer::Absent),
        Err(e) => return Err(e.into()),
    };
    let named = serde_json::from_slice::<Latest>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|latest| latest.snapshot.parse::<SnapshotId>());
    Ok(match named {
        Ok(id) => Pointer::Names(id),
        Err(reason) => Pointer::Damaged(format!("{key}: {reason}")),
    })
}

/// The volume's latest complete snapshot: the one `latest` names, or, when that pointer is
/// damaged or names a snapshot that is missing or damaged, the newest complete snapshot (with
/// a warning). `None` when the volume has no `latest` pointer (no snapshot completed) or no
/// complete snapshot.
pub async fn latest(store: &Store, volume: &VolumeId) -> Result<Option<SnapshotSummary>> {
    let layout = VolumeLayout::new(store.root(), volume);
    let why = match read_pointer(store, &layout).await? {
        Pointer::Names(id) => match check_summary(store, &layout, volume, &id).await? {
            Some(Ok(summary)) => return Ok(Some(summary)),
            Some(Err(damage)) => format!("it names snapshot {id}, which is damaged: {damage}"),
            None => format!("it names snapshot {id}, which is not complete"),
        },
        Pointer::Damaged(why) => format!("it is damaged: {why}"),
        Pointer::Absent => return Ok(None),
    };
    let listed = match list_snapshots(store, volume).await {
        Ok(listed) => listed,
        Err(Error::Store(crate::store::Error::Backend {
            source: object_store::Error::NotSupported { .. },
            ..
        })) => {
            // A store that cannot list (a mover's relay): start without a parent.
            tracing::warn!(volume = %volume, "the latest pointer is not trusted ({why}); this store cannot be listed, so no earlier snapshot is used");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let newest = listed
        .into_iter()
        .rev()
        .find_map(|listed| listed.complete().cloned());
    if let Some(summary) = &newest {
        tracing::warn!(
            volume = %volume,
            snapshot = %summary.snapshot,
            "the latest pointer is not trusted ({why}); using the newest complete snapshot"
        );
    } else {
        tracing::warn!(volume = %volume, "the latest pointer is not trusted ({why}) and no complete snapshot is left");
    }
    Ok(newest)
}

/// The id of the volume's latest complete snapshot (see [`latest`]).
pub(crate) async fn read_latest(store: &Store, volume: &VolumeId) -> Result<Option<SnapshotId>> {
    Ok(latest(store, volume)
        .await?
        .and_then(|summary| summary.snapshot.parse().ok()))
}

/// Reads the summary of snapshot `id` of `volume`: `None` when it does not exist (not
/// complete), `Some(Err(why))` when it cannot be trusted (unreadable, or it describes another
/// snapshot or volume).
async fn check_summary(
    store: &Store,
    layout: &VolumeLayout,
    volume: &VolumeId,
    id: &SnapshotId,
) -> Result<Option<std::result::Result<SnapshotSummary, String>>> {
    let key = layout.summary(id);
    let bytes = match store.get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let summary = match serde_json::from_slice::<SnapshotSummary>(&bytes) {
        Ok(summary) => summary,
        Err(e) => return Ok(Some(Err(format!("{key}: {e}")))),
    };
    let checked = if summary.snapshot != id.as_str() {
        Err(format!("{key} describes snapshot {:?}", summary.snapshot))
    } else if summary.volume != volume.to_string() {
        Err(format!("{key} describes volume {:?}", summary.volume))
    } else {
        Ok(summary)
    };
    Ok(Some(checked))
}

/// Finds the snapshot `selector` names, or says clearly that it does not exist or is damaged.
pub async fn resolve(
    store: &Store,
    volume: &VolumeId,
    selector: &SnapshotSelector,
) -> Result<SnapshotSummary> {
    let layout = VolumeLayout::new(store.root(), volume);
    let id = match selector {
        SnapshotSelector::Id(id) => id.clone(),
        SnapshotSelector::Latest => {
            return latest(store, volume)
                .await?
                .ok_or_else(|| Error::NoSnapshot {
                    volume: volume.to_string(),
                    store: store.url().to_owned(),
                });
        }
        SnapshotSelector::Before(time) => {
            let listed = list_snapshots(store, volume).await?;
            return super::select::before(&volume.to_string(), store.url(), &listed, *time);
        }
    };
    match check_summary(store, &layout, volume, &id).await? {
        Some(Ok(summary)) => Ok(summary),
        Some(Err(reason)) => Err(Error::Damaged {
            volume: volume.to_string(),
            snapshot: id.to_string(),
            reason,
        }),
        None => Err(Error::SnapshotNotFound {
            volume: volume.to_string(),
            snapshot: id.to_string(),
            store: store.url().to_owned(),
        }),
    }
}

/// Makes a written snapshot complete and latest: summary, then pointer, each made durable.
pub async fn commit(store: &Store, layout: &VolumeLayout, summary: &SnapshotSummary) -> Result<()> {
    let id: SnapshotId = summary
        .snapshot
        .parse()
        .map_err(|e: String| Error::Manifest {
            key: summary.snapshot.clone(),
            reason: e,
        })?;
    let body = serde_json::to_vec_pretty(summary).expect("summary serializes");
    store.put_bytes(&layout.summary(&id), body).await?;
    store.flush().await?;
    let latest = serde_json::to_vec(&Latest {
        snapshot: summary.snapshot.clone(),
    })
    .expect("pointer serializes");
    store.put_bytes(&layout.latest(), latest).await?;
    store.flush().await?;
    Ok(())
}

/// A snapshot's manifest, downloaded whole into an unnamed temporary file, checked against
/// the size and hash its summary records, and validated entry by entry (see `validate::Validator`)
/// before anyone acts on it: what `restore` writes from and `verify` checks.
pub struct CheckedManifest {
    file: std::fs::File,
    key: Key,
    snapshot: SnapshotId,
    layout: VolumeLayout,
    /// The names of the root's entries (so a restore can pick a name none of them has).
    pub root_names: HashSet<Vec<u8>>,
}

impl CheckedManifest {
    /// Downloads, checks and validates the manifest of the complete snapshot `summary`.
    pub async fn open(
        store: &Store,
        layout: &VolumeLayout,
        summary: &SnapshotSummary,
    ) -> Result<Self> {
        let snapshot: SnapshotId = summary.snapshot.parse().map_err(|reason| Error::Manifest {
            key: summary.snapshot.clone(),
            reason,
        })?;
        let key = layout.manifest(&snapshot);
        let (file, size, hash) = spool(store, &key).await?;
        if size != summary.manifest_size || hash != summary.manifest_blake3 {
            return Err(manifest_error(
                &key,
                format!(
                    "it is not the manifest the snapshot was completed with: {size} bytes with hash {hash}, \
                     snapshot.json says {} bytes with hash {}",
                    summary.manifest_size, summary.manifest_blake3
                ),
            ));
        }
        let mut checked = Self {
            file,
            key,
            snapshot,
            layout: layout.clone(),
            root_names: HashSet::new(),
        };
        let mut entries = checked.entries()?;
        let mut names = HashSet::new();
        while let Some(entry) = entries.try_next().await? {
            if entry.path != b"." && !entry.path.contains(&b'/') {
                names.insert(entry.path);
            }
        }
        checked.root_names = names;
        Ok(checked)
    }

    /// The entries, validated again as they are read (the file is this process's own).
    pub fn entries(&self) -> Result<BoxStream<'static, Result<Entry>>> {
        let mut file = self
            .file
            .try_clone()
            .map_err(|e| manifest_error(&self.key, e))?;
        std::io::Seek::rewind(&mut file).map_err(|e| manifest_error(&self.key, e))?;
        let reader =
            tokio::io::BufReader::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
        let entries = parse_manifest(Box::pin(reader), self.key.clone(), &self.snapshot);
        let mut validator = Validator::new(self.layout.clone());
        Ok(entries
            .and_then(move |entry| futures::future::ready(validator.admit(&entry).map(|()| entry)))
            .boxed())
    }
}

/// Downloads `key` into an unnamed temporary file; returns it with its size and BLAKE3 hash.
async fn spool(store: &Store, key: &Key) -> Result<(std::fs::File, u64, String)> {
    use std::io::Write;
    let local = |e: std::io::Error| manifest_error(key, format!("cannot keep a local copy: {e}"));
    let objects = store.objects().clone();
    let get = store.call("get manifest", key, objects.get(key)).await?;
    let mut body = get.into_stream();
    let mut file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| local(std::io::Error::other(e)))?
        .map_err(local)?;
    let (mut hasher, mut size) = (blake3::Hasher::new(), 0u64);
    while let Some(chunk) = store
        .call("read manifest", key, body.next().map(Option::transpose))
        .await?
    {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file = tokio::task::spawn_blocking(move || file.write_all(&chunk).map(|()| file))
            .await
            .map_err(|e| local(std::io::Error::other(e)))?
            .map_err(local)?;
    }
    Ok((file, size, hasher.finalize().to_hex().to_string()))
}

/// The files snapshot `id` of `volume` lists as unreadable at copy time (path, lossily
/// decoded, and why), at most `limit` of them, in manifest order.
pub async fn unreadable_files(
    store: &Store,
    volume: &VolumeId,
    id: &SnapshotId,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let layout = VolumeLayout::new(store.root(), volume);
    let mut entries = read_manifest(store, &layout, id).await?;
    let mut found = Vec::new();
    while found.len() < limit {
        let Some(entry) = entries.try_next().await? else {
            break;
        };
        if let Some(reason) = entry.unreadable {
            found.push((String::from_utf8_lossy(&entry.path).into_owned(), reason));
        }
    }
    Ok(found)
}

/// Streams the entries of snapshot `id`'s manifest, checking its header and its end marker
/// (a truncated or mismatched manifest is an error, never a shorter snapshot).
pub(crate) async fn read_manifest(
    store: &Store,
    layout: &VolumeLayout,
    id: &SnapshotId,
) -> Result<BoxStream<'static, Result<Entry>>> {
    let key = layout.manifest(id);
    let objects = store.objects().clone();
    let get = store.call("get manifest", &key, objects.get(&key)).await?;
    let body = get.into_stream().map_err(std::io::Error::other);
    let reader =
        tokio::io::BufReader::with_capacity(256 * 1024, tokio_util::io::StreamReader::new(body));
    Ok(parse_manifest(Box::pin(reader), key, id))
}

fn parse_manifest(
    reader: std::pin::Pin<Box<dyn tokio::io::AsyncBufRead + Send>>,
    key: Key,
    id: &SnapshotId,
) -> BoxStream<'static, Result<Entry>> {
    let state = ManifestReader {
        reader,
        key,
        line_no: 0,
        expect_snapshot: id.to_string(),
        totals: manifest::Totals::default(),
        ended: false,
    };
    stream::try_unfold(state, ManifestReader::next).boxed()
}

struct ManifestReader {
    reader: std::pin::Pin<Box<dyn tokio::io::AsyncBufRead + Send>>,
    key: Key,
    line_no: u64,
    expect_snapshot: String,
    totals: manifest::Totals,
    ended: bool,
}

impl ManifestReader {
    async fn next(mut self) -> Result<Option<(Entry, Self)>> {
        loop {
            let mut line = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| manifest_error(&self.key, e))?;
            if n == 0 {
                return if self.ended {
                    Ok(None)
                } else {
                    Err(manifest_error(&self.key, "truncated: no end marker"))
                };
            }
            if self.ended {
                return Err(manifest_error(&self.key, "data after the end marker"));
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            self.line_no += 1;
            match manifest::decode_line(self.line_no, &line)
                .map_err(|e| manifest_error(&self.key, e))?
            {
                Line::Header(h) if h.snapshot == self.expect_snapshot => {}
                Line::Header(h) => {
                    return Err(manifest_error(
                        &self.key,
                        format!("header names snapshot {}", h.snapshot),
                    ));
                }
                Line::End(totals) if totals == self.totals => self.ended = true,
                Line::End(_) => {
                    return Err(manifest_error(
                        &self.key,
                        "end marker does not match the entries",
                    ));
                }
                Line::Entry(entry) => {
                    self.totals.add(&entry);
                    return Ok(Some((entry, self)));
                }
            }
        }
    }
}

/// Every volume that has anything in the store.
pub async fn list_volumes(store: &Store) -> Result<Vec<VolumeId>> {
    let mut volumes = Vec::new();
    for namespace in list_children(store, &store.root().clone().join("volumes")).await? {
        let prefix = store
            .root()
            .clone()
            .join("volumes")
            .join(namespace.as_str());
        for name in list_children(store, &prefix).await? {
            if let Ok(volume) = VolumeId::new(&namespace, &name) {
                volumes.push(volume);
            }
        }
    }
    volumes.sort();
    Ok(volumes)
}

async fn list_children(store: &Store, prefix: &Key) -> Result<Vec<String>> {
    let listing = store
        .call(
            "list",
            prefix,
            store.objects().list_with_delimiter(Some(prefix)),
        )
        .await?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .collect())
}

/// The snapshots of a volume, oldest first: every complete one, and every one whose summary
/// exists but cannot be trusted, as [`Listed::Damaged`]. Snapshots still being written (no
/// summary yet) are not listed.
pub async fn list_snapshots(store: &Store, volume: &VolumeId) -> Result<Vec<Listed>> {
    let layout = VolumeLayout::new(store.root(), volume);
    let ids: Vec<SnapshotId> = list_children(store, &layout.snapshots())
        .await?
        .into_iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    let mut listed: Vec<Listed> = stream::iter(ids)
        .map(|id| {
            let layout = &layout;
            async move {
                Ok::<_, Error>(match check_summary(store, layout, volume, &id).await? {
                    None => None,
                    Some(Ok(summary)) => Some(Listed::Complete(summary)),
                    Some(Err(damaged)) => {
                        tracing::warn!(volume = %volume, snapshot = %id, %damaged, "damaged snapshot");
                        Some(Listed::Damaged {
                            snapshot: id.to_string(),
                            volume: volume.to_string(),
                            damaged,
                        })
                    }
                })
            }
        })
        .buffered(8)
        .try_filter_map(|s| async move { Ok(s) })
        .try_collect()
        .await?;
    listed.sort_by(|a, b| a.snapshot().cmp(b.snapshot()));
    Ok(listed)
}

/// A complete snapshot `id` of volume `a/b`, completed at `completed` (tests of choosing
/// and keeping snapshots).
#[cfg(test)]
pub(crate) fn complete_at(id: &str, completed: &str) -> Listed {
    Listed::Complete(SnapshotSummary {
        snapshot: id.into(),
        volume: "a/b".into(),
        parent: None,
        created: completed.into(),
        completed: completed.into(),
        entries: 1,
        files: 0,
        bytes: 0,
        skipped: 0,
        unreadable: 0,
        uploaded_files: 0,
        uploaded_bytes: 0,
        manifest_blake3: String::new(),
        manifest_size: 0,
        drain: None,
    })
}

/// What a prune did (or, for a plan, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots kept.
    pub kept: Vec<String>,
    /// Snapshots deleted (for a plan: that a prune would delete).
    pub deleted: Vec<String>,
    /// Objects deleted (none for a plan).
    pub objects_deleted: u64,
    /// Every snapshot with the policy's decision and its reasons, newest first.
    pub plan: Plan,
}

/// Deletes all but the newest `keep` complete snapshots of `volume` (never the latest, never a
/// damaged one), and every object that no kept snapshot refers to.
pub async fn prune(store: &Store, volume: &VolumeId, keep: usize) -> Result<PruneReport> {
    let keep = u32::try_from(keep.max(1)).unwrap_or(u32::MAX);
    prune_by(store, volume, &Policy::last(keep), false).await
}

/// Decides which snapshots of `volume` `policy` keeps (see [`super::retention`]) and, unless
/// `plan_only`, deletes the others and every object of theirs that no kept snapshot refers to.
/// A plan reads the listing and the `latest` pointer only, and changes nothing.
pub async fn prune_by(
    store: &Store,
    volume: &VolumeId,
    policy: &Policy,
    plan_only: bool,
) -> Result<PruneReport> {
    let listed = list_snapshots(store, volume).await?;
    prune_listed(store, volume, listed, policy, &BTreeSet::new(), plan_only).await
}

/// [`prune_by`] on a listing of `volume` the caller has just read; the snapshots in `pinned`
/// stay whatever `policy` says ([`retention::decide_pinned`]).
pub async fn prune_listed(
    store: &Store,
    volume: &VolumeId,
    listed: Vec<Listed>,
    policy: &Policy,
    pinned: &BTreeSet<String>,
    plan_only: bool,
) -> Result<PruneReport> {
    let latest = read_latest(store, volume).await?.map(|id| id.to_string());
    let plan = retention::decide_pinned(&listed, latest.as_deref(), pinned, policy);
    let mut report = PruneReport {
        kept: plan.kept(),
        deleted: plan.deleted(),
        objects_deleted: 0,
        plan,
    };
    if plan_only || report.deleted.is_empty() {
        return Ok(report);
    }
    let damaged: Vec<String> = listed
        .iter()
        .filter(|l| l.complete().is_none())
        .map(|l| l.snapshot().to_owned())
        .collect();
    let layout = VolumeLayout::new(store.root(), volume);
    let deleted_ids: HashSet<&str> = report.deleted.iter().map(String::as_str).collect();
    let referenced = references_into(store, &layout, &report.kept, &deleted_ids, &damaged).await?;
    // Every deleted snapshot's objects first, then (once those deletions are durable) their
    // summaries. An interrupted prune leaves deleted snapshots still listed with some objects
    // gone (a restore of one fails on its first missing object, never restores wrong data);
    // the next pass lists them again, decides the same (they only get older) and finishes.
    // Summaries first would leave unlisted objects that no pass ever finds again. Kept
    // snapshots lose nothing either way. Two flushes per volume, not two per snapshot.
    let mut summaries = Vec::new();
    for id in &report.deleted {
        let (objects, summary) = delete_objects(store, &layout, id, &referenced).await?;
        report.objects_deleted += objects;
        summaries.push(summary);
    }
    store.flush().await?;
    for key in &summaries {
        delete_key(store, key).await?;
    }
    report.objects_deleted += summaries.len() as u64;
    store.flush().await?;
    Ok(report)
}

/// Objects under the deleted snapshots that the kept snapshots still refer to.
async fn references_into(
    store: &Store,
    layout: &VolumeLayout,
    kept: &[String],
    deleted: &HashSet<&str>,
    damaged: &[String],
) -> Result<HashSet<String>> {
    let mut referenced = HashSet::new();
    for text in kept {
        let Ok(id) = text.parse::<SnapshotId>() else {
            continue;
        };
        let entries = read_manifest(store, layout, &id).await;
        // A damaged snapshot's manifest may be unreadable too; then it cannot be restored
        // and refers to nothing. A complete snapshot's manifest must be readable.
        let mut entries = match entries {
            Err(e) if damaged.contains(text) => {
                tracing::warn!(snapshot = %id, error = %e, "the manifest of a damaged snapshot cannot be read");
                continue;
            }
            other => other?,
        };
        while let Some(entry) = entries.try_next().await? {
            let Some(content) = entry.content else {
                continue;
            };
            let owner = content.object.split('/').nth(1).unwrap_or_default();
            if deleted.contains(owner) {
                referenced.insert(content.object);
            }
        }
    }
    Ok(referenced)
}

/// Deletes the objects under snapshot `id` that are not `referenced`, except its summary;
/// returns how many, and the summary's key (for the caller to delete last).
async fn delete_objects(
    store: &Store,
    layout: &VolumeLayout,
    id: &str,
    referenced: &HashSet<String>,
) -> Result<(u64, Key)> {
    let id: SnapshotId = id.parse().map_err(|reason| Error::Manifest {
        key: id.to_owned(),
        reason,
    })?;
    let prefix = layout.snapshot(&id);
    let summary = layout.summary(&id);
    let volume_prefix = format!("{}/", layout.prefix());
    let objects = store.objects().clone();
    let keys: Vec<Key> = store
        .call(
            "list",
            &prefix,
            objects.list(Some(&prefix)).try_collect::<Vec<_>>(),
        )
        .await?
        .into_iter()
        .map(|meta| meta.location)
        .filter(|key| *key != summary)
        .filter(|key| {
            let relative = key
                .as_ref()
                .strip_prefix(&volume_prefix)
                .unwrap_or_default();
            !referenced.contains(relative)
        })
        .collect();
    let count = keys.len() as u64;
    stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move { delete_key(&store, &key).await }
        })
        .buffer_unordered(DELETES_AT_ONCE)
        .try_collect::<()>()
        .await?;
    Ok((count, summary))
}

/// Object deletions in flight at once while pruning.
const DELETES_AT_ONCE: usize = 16;

/// Deletes `key`; one already gone is fine.
async fn delete_key(store: &Store, key: &Key) -> Result<()> {
    match store.call("delete", key, store.objects().delete(key)).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
