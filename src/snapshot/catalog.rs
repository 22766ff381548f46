//! The catalog of snapshots in a store: the `latest` pointer, summaries, manifests as streams,
//! listing, and pruning.
//!
//! A snapshot is complete when its `snapshot.json` summary exists; `latest` is written after
//! that. Pruning deletes a snapshot's manifest and the objects no kept snapshot refers to, and
//! its summary last, so an interrupted prune never leaves a listed snapshot that lies.

use super::layout::{SnapshotId, SnapshotSelector, VolumeLayout};
use super::manifest::{self, Entry, Line};
use super::{Error, Result};
use crate::store::Store;
use crate::volume::VolumeId;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
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
    /// Files whose bytes this snapshot uploaded (the rest refer to earlier objects).
    pub uploaded_files: u64,
    /// Bytes this snapshot uploaded.
    pub uploaded_bytes: u64,
    /// BLAKE3 of the manifest.
    pub manifest_blake3: String,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
}

#[derive(Serialize, Deserialize)]
struct Latest {
    snapshot: String,
}

fn manifest_error(key: &Key, reason: impl ToString) -> Error {
    Error::Manifest {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// The snapshot the volume's `latest` pointer names, if any.
pub async fn read_latest(store: &Store, layout: &VolumeLayout) -> Result<Option<SnapshotId>> {
    let key = layout.latest();
    match store.get_bytes(&key).await {
        Ok(bytes) => {
            let latest: Latest =
                serde_json::from_slice(&bytes).map_err(|e| manifest_error(&key, e))?;
            latest
                .snapshot
                .parse()
                .map(Some)
                .map_err(|e| manifest_error(&key, e))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the summary of snapshot `id`; `None` when it does not exist or is not complete.
pub async fn read_summary(
    store: &Store,
    layout: &VolumeLayout,
    id: &SnapshotId,
) -> Result<Option<SnapshotSummary>> {
    let key = layout.summary(id);
    match store.get_bytes(&key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| manifest_error(&key, e)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Finds the snapshot `selector` names, or says clearly that it does not exist.
pub async fn resolve(
    store: &Store,
    volume: &VolumeId,
    selector: &SnapshotSelector,
) -> Result<SnapshotSummary> {
    let layout = VolumeLayout::new(store.root(), volume);
    let id = match selector {
        SnapshotSelector::Id(id) => id.clone(),
        SnapshotSelector::Latest => {
            read_latest(store, &layout)
                .await?
                .ok_or_else(|| Error::NoSnapshot {
                    volume: volume.to_string(),
                    store: store.url().to_owned(),
                })?
        }
    };
    read_summary(store, &layout, &id)
        .await?
        .ok_or_else(|| Error::SnapshotNotFound {
            volume: volume.to_string(),
            snapshot: id.to_string(),
            store: store.url().to_owned(),
        })
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

/// Streams the entries of snapshot `id`'s manifest, checking its header and its end marker
/// (a truncated or mismatched manifest is an error, never a shorter snapshot).
pub async fn read_manifest(
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
    let state = ManifestReader {
        reader: Box::pin(reader),
        key,
        line_no: 0,
        expect_snapshot: id.to_string(),
        totals: manifest::Totals::default(),
        ended: false,
    };
    Ok(stream::try_unfold(state, ManifestReader::next).boxed())
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

/// The complete snapshots of a volume, oldest first.
pub async fn list_snapshots(store: &Store, volume: &VolumeId) -> Result<Vec<SnapshotSummary>> {
    let layout = VolumeLayout::new(store.root(), volume);
    let ids: Vec<SnapshotId> = list_children(store, &layout.snapshots())
        .await?
        .into_iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    let mut summaries: Vec<SnapshotSummary> = stream::iter(ids)
        .map(|id| {
            let layout = &layout;
            async move { read_summary(store, layout, &id).await }
        })
        .buffered(8)
        .try_filter_map(|s| async move { Ok(s) })
        .try_collect()
        .await?;
    summaries.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
    Ok(summaries)
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots kept.
    pub kept: Vec<String>,
    /// Snapshots deleted.
    pub deleted: Vec<String>,
    /// Objects deleted.
    pub objects_deleted: u64,
}

/// Deletes all but the newest `keep` snapshots of `volume` (never the latest), and every
/// object that no kept snapshot refers to.
pub async fn prune(store: &Store, volume: &VolumeId, keep: usize) -> Result<PruneReport> {
    let layout = VolumeLayout::new(store.root(), volume);
    let all = list_snapshots(store, volume).await?;
    let latest = read_latest(store, &layout).await?.map(|id| id.to_string());
    let split = all.len().saturating_sub(keep.max(1));
    let (old, newest) = all.split_at(split);
    let (doomed, kept_old): (Vec<_>, Vec<_>) = old
        .iter()
        .partition(|s| Some(&s.snapshot) != latest.as_ref());
    let mut report = PruneReport {
        kept: kept_old
            .iter()
            .map(|s| s.snapshot.clone())
            .chain(newest.iter().map(|s| s.snapshot.clone()))
            .collect(),
        deleted: doomed.iter().map(|s| s.snapshot.clone()).collect(),
        objects_deleted: 0,
    };
    if doomed.is_empty() {
        return Ok(report);
    }
    let doomed_ids: HashSet<&str> = report.deleted.iter().map(String::as_str).collect();
    let referenced = references_into(store, &layout, &report.kept, &doomed_ids).await?;
    for id in &report.deleted {
        report.objects_deleted += delete_snapshot(store, &layout, id, &referenced).await?;
    }
    Ok(report)
}

/// Objects under the doomed snapshots that the kept snapshots still refer to.
async fn references_into(
    store: &Store,
    layout: &VolumeLayout,
    kept: &[String],
    doomed: &HashSet<&str>,
) -> Result<HashSet<String>> {
    let mut referenced = HashSet::new();
    for id in kept {
        let id: SnapshotId = id.parse().expect("listed ids are valid");
        let mut entries = read_manifest(store, layout, &id).await?;
        while let Some(entry) = entries.try_next().await? {
            let Some(content) = entry.content else {
                continue;
            };
            let owner = content.object.split('/').nth(1).unwrap_or_default();
            if doomed.contains(owner) {
                referenced.insert(content.object);
            }
        }
    }
    Ok(referenced)
}

async fn delete_snapshot(
    store: &Store,
    layout: &VolumeLayout,
    id: &str,
    referenced: &HashSet<String>,
) -> Result<u64> {
    let id: SnapshotId = id.parse().expect("listed ids are valid");
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
    let deleted = keys.len() as u64 + 1;
    for key in keys.iter().chain(std::iter::once(&summary)) {
        match store.call("delete", key, objects.delete(key)).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    store.flush().await?;
    Ok(deleted)
}
