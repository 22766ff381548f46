//! Verifying a stored snapshot: re-read every object and check it against the manifest.
//!
//! Verification reads only; it reports each missing object and each size or hash mismatch
//! instead of stopping at the first. The manifest goes through exactly the checks `restore`
//! applies before it writes anything ([`CheckedManifest`]: size and hash against the summary,
//! every entry validated), so "verify OK" means "restore will accept this snapshot and find
//! every object as recorded"; a manifest problem is reported as one problem of the manifest.

use super::catalog::CheckedManifest;
use super::compress::Inflater;
use super::layout::VolumeLayout;
use super::manifest::Entry;
use super::{Error, Result, SnapshotSelector, catalog, sparse};
use crate::store::Store;
use crate::volume::VolumeId;
use futures::stream::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::Serialize;

/// One thing wrong with a snapshot.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The entry's path (lossily decoded) or the manifest key.
    pub path: String,
    /// The object concerned.
    pub object: String,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The snapshot verified.
    pub snapshot: String,
    /// Files checked.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
    /// Files the snapshot lists without content because they could not be read at copy
    /// time (the snapshot is incomplete, and says so; not a fault of the store).
    pub unreadable: Vec<Problem>,
}

/// Re-reads every object of the snapshot and checks it against the manifest.
#[tracing::instrument(skip_all, fields(volume = %volume))]
pub async fn verify(
    store: &Store,
    volume: &VolumeId,
    selector: &SnapshotSelector,
    concurrency: usize,
) -> Result<VerifyReport> {
    let summary = catalog::resolve(store, volume, selector).await?;
    let layout = VolumeLayout::new(store.root(), volume);
    let mut report = VerifyReport {
        snapshot: summary.snapshot.clone(),
        ..VerifyReport::default()
    };
    let manifest_problem = |e: Error| Problem {
        path: "(manifest)".into(),
        object: summary.snapshot.clone(),
        problem: e.to_string(),
    };
    let manifest = match CheckedManifest::open(store, &layout, &summary).await {
        Ok(manifest) => manifest,
        Err(Error::Store(e)) if !e.is_not_found() => return Err(Error::Store(e)),
        Err(e) => {
            report.problems.push(manifest_problem(e));
            return Ok(report);
        }
    };
    let mut unreadable = Vec::new();
    {
        let checks = manifest
            .entries()?
            .try_filter(|e| {
                if let Some(reason) = &e.unreadable {
                    unreadable.push(Problem {
                        path: String::from_utf8_lossy(&e.path).into_owned(),
                        object: String::new(),
                        problem: format!("not in the snapshot: unreadable at copy time ({reason})"),
                    });
                }
                futures::future::ready(e.content.is_some())
            })
            .map_ok(|entry| check_file(store, &layout, entry))
            .try_buffered(concurrency);
        futures::pin_mut!(checks);
        while let Some((size, problem)) = checks.try_next().await? {
            report.files += 1;
            report.bytes += size;
            if let Some(problem) = problem {
                tracing::warn!(path = %problem.path, object = %problem.object, problem = %problem.problem, "verify");
                report.problems.push(problem);
            }
        }
    }
    report.unreadable = unreadable;
    Ok(report)
}

async fn check_file(
    store: &Store,
    layout: &VolumeLayout,
    entry: Entry,
) -> Result<(u64, Option<Problem>)> {
    let Some(content) = entry.content else {
        return Ok((0, None));
    };
    let path = String::from_utf8_lossy(&entry.path).into_owned();
    let problem = |object: String, text: String| Problem {
        path: path.clone(),
        object,
        problem: text,
    };
    let Some(key) = layout.object(&content.object) else {
        return Ok((
            0,
            Some(problem(
                content.object.clone(),
                "object key outside the volume".into(),
            )),
        ));
    };
    let objects = store.objects().clone();
    let extents = entry.extents.clone();
    let stored_len = match (content.compressed, extents.as_deref()) {
        (Some(compressed), _) => compressed.stored_size,
        (None, Some(extents)) => sparse::stored_len(extents),
        (None, None) => entry.size,
    };
    // A compressed object is decoded as it is read and its raw content hashed; a decoding
    // failure is a problem of that object, reported like a hash that differs.
    let mut inflater = match content.compressed {
        Some(c) => match Inflater::new(c.codec, entry.size) {
            Ok(inflater) => Some(inflater),
            Err(e) => return Err(Error::read(std::path::Path::new(&path), e)),
        },
        None => None,
    };
    let read = async {
        let mut body = objects.get(&key).await?.into_stream();
        let mut dense = blake3::Hasher::new();
        let mut sparse_hasher = extents.as_deref().map(sparse::LogicalHasher::new);
        let (mut size, mut undecodable) = (0u64, None);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            match (&mut inflater, &mut sparse_hasher) {
                (Some(inflater), _) if undecodable.is_none() => {
                    let fed = inflater.feed(&chunk, &mut |raw| {
                        dense.update(raw);
                        Ok(())
                    });
                    undecodable = fed.err();
                }
                (Some(_), _) => {}
                (None, Some(h)) => {
                    h.data(&chunk);
                }
                (None, None) => {
                    dense.update(&chunk);
                }
            }
        }
        if let (Some(inflater), None) = (&inflater, &undecodable) {
            undecodable = match inflater.finish() {
                Ok(raw) if raw != entry.size => Some(std::io::Error::other(format!(
                    "it decompresses to {raw} bytes, the manifest says {}",
                    entry.size
                ))),
                Ok(_) => None,
                Err(e) => Some(e),
            };
        }
        let hash = match sparse_hasher {
            Some(h) => h.finalize(entry.size),
            None => dense.finalize(),
        };
        Ok((size, hash.to_hex().to_string(), undecodable))
    };
    let outcome = match store.call("read", &key, read).await {
        Ok((size, _, _)) if size != stored_len && content.compressed.is_some() => Some(problem(
            key.to_string(),
            format!(
                "the compressed object holds {size} bytes, the manifest says {stored_len} bytes"
            ),
        )),
        Ok((_, _, Some(e))) => Some(problem(
            key.to_string(),
            format!("the compressed object does not decode: {e}"),
        )),
        Ok((size, _, _)) if size != stored_len => Some(problem(
            key.to_string(),
            format!(
                "the object holds {size} bytes, the manifest says {stored_len} bytes{}",
                if entry.extents.is_some() {
                    " (the data of a sparse file)"
                } else {
                    ""
                }
            ),
        )),
        Ok((_, hash, _)) if hash != content.blake3 => Some(problem(
            key.to_string(),
            format!(
                "same size, but the content's hash is {hash}, the manifest says {}",
                content.blake3
            ),
        )),
        Ok(_) => None,
        Err(e) if e.is_not_found() => Some(problem(key.to_string(), "object is missing".into())),
        Err(e) => return Err(Error::Store(e)),
    };
    Ok((entry.size, outcome))
}
