//! Large files stored compressed, resumably.
//!
//! Whether a large file is compressed is decided on its first part (compressed on its own, it
//! must save an eighth); an interrupted upload is continued the way it was started. Each raw
//! part of the file becomes one zstd frame; the frames, back to back, form the object (one
//! zstd stream, so `zstd -d` reads it), which is cut into parts of exactly the part size (the
//! last shorter), as stores and the drainer's relay require. A part's record is the BLAKE3
//! hash of its stored bytes. A rerun continues an interrupted upload by compressing the file
//! again from its start: parts already stored are not sent again, only checked against their
//! recorded hash (the same bytes at the same level give the same frames); a part that differs
//! (another zstd version, another level) makes the upload start again from the beginning.
//! The raw content's hash is computed on the way, over every byte.
//!
//! Memory: one acquisition from the copy's budget covers the raw part read, its frame, the
//! bytes waiting to fill a part and the parts in flight, so files never wait on each other
//! while holding some of it.

use super::{
    Codec, Compressed, Compression, Error, Failed, Key, PARTS_IN_FLIGHT, Result, Resume, Stat,
    Stored, Uploader, compress, read_full, task_failed,
};
use crate::snapshot::checkpoint::{PartialUpload, UploadedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Where a packed upload goes and records its progress.
pub(super) struct Packed<'a> {
    pub key: &'a Key,
    pub resume: Resume<'a>,
    pub rel: &'a [u8],
}

/// Reading and compressing a file part by part: the open file, the raw content's hasher, the
/// read buffer, and the offset of the next part.
struct Reader {
    file: File,
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
    offset: u64,
}

type InFlight = FuturesOrdered<tokio::task::JoinHandle<Result<(UploadedPart, u64)>>>;

impl Uploader {
    /// How a large file is stored: raw when compression is off (without a look at the
    /// checkpoint: an interrupted compressed upload is then replaced by a raw one); else the
    /// way its interrupted upload was started, if it has one with stored parts; else
    /// compressed when its first part shrinks by an eighth.
    pub(super) async fn large_compression(
        &self,
        path: &std::path::Path,
        resume: Resume<'_>,
        rel: &[u8],
    ) -> Result<Compression> {
        if self.compression == Compression::Off {
            return Ok(Compression::Off);
        }
        let earlier = resume.checkpoint.partial_upload(resume.run, rel).await?;
        if let Some(upload) = earlier
            && upload.part_size == self.part_size
            && !upload.parts.is_empty()
        {
            return Ok(upload.compression);
        }
        let _permit = self.reserve(2 * self.part_size).await;
        let (owned, size, compression) = (path.to_owned(), self.part_size, self.compression);
        tokio::task::spawn_blocking(move || {
            let file = File::open(&owned).map_err(|e| Error::read(&owned, e))?;
            let mut first = vec![0; size as usize];
            let n = read_at_full(&file, &mut first, 0).map_err(|e| Error::read(&owned, e))?;
            let shrinks = compress::shrink(&first[..n], compression).is_some();
            Ok(if shrinks {
                compression
            } else {
                Compression::Off
            })
        })
        .await
        .map_err(|e| task_failed(path, e))?
    }

    /// One attempt at a compressed multipart upload of `path` (see the module); `None` when
    /// the file changed during the attempt, or the parts an earlier attempt stored are not
    /// the ones this one makes (the upload is then dropped and the next attempt starts anew).
    pub(super) async fn try_store_packed(
        &self,
        parts_api: &Arc<dyn MultipartStore>,
        path: &std::path::Path,
        at: Packed<'_>,
        level: i32,
    ) -> Result<Option<Stored>, Failed> {
        let Packed { key, resume, rel } = at;
        let file = File::open(path).map_err(|e| Error::read(path, e))?;
        let before = Stat::of(&file, path)?;
        let compression = Compression::Zstd { level };
        let (mut upload, continued) = self
            .start_or_continue(parts_api.as_ref(), key, resume, rel, (before, compression))
            .await?;
        let id = upload.upload_id.clone();
        let failed = |e: crate::store::Error| {
            if continued {
                Failed::Continued(id.clone(), e)
            } else {
                Failed::Upload(id.clone(), e)
            }
        };
        let recorded = std::mem::take(&mut upload.parts);
        let part_size = self.part_size;
        // The raw part read, its frame, the bytes waiting to fill a part, the parts in flight.
        let _permit = self.reserve(part_size * (3 + PARTS_IN_FLIGHT as u64)).await;
        let mut reader = Reader {
            file,
            hasher: blake3::Hasher::new(),
            buffer: vec![0; part_size as usize],
            offset: 0,
        };
        let (mut pending, mut index, mut stored) = (BytesMut::new(), 0_usize, 0_u64);
        let mut inflight = InFlight::new();
        loop {
            let (next, frame) = next_frame(reader, path, level).await?;
            reader = next;
            let end = frame.is_none();
            if let Some(frame) = frame {
                pending.extend_from_slice(&frame);
            }
            while pending.len() as u64 >= part_size || (end && !pending.is_empty()) {
                let cut = (part_size as usize).min(pending.len());
                let part = pending.split_to(cut).freeze();
                stored += part.len() as u64;
                let hash = *blake3::hash(&part).as_bytes();
                if let Some(earlier) = recorded.get(index) {
                    if earlier.chaining_value != hash {
                        tracing::warn!(path = %path.display(), key = %key, part = index, "a stored part of the interrupted compressed upload is not what this copy makes; starting it again");
                        return self
                            .drop_upload(parts_api, at_of(key, resume, rel), &upload)
                            .await;
                    }
                    upload.parts.push(earlier.clone());
                    index += 1;
                    continue;
                }
                while inflight.len() >= PARTS_IN_FLIGHT {
                    if let Some(done) = inflight.next().await {
                        self.part_stored(&mut upload, done, resume, path, &failed)
                            .await?;
                    }
                }
                inflight.push_back(self.send_part(
                    parts_api,
                    key,
                    &upload.upload_id,
                    index,
                    part,
                    hash,
                ));
                index += 1;
            }
            if end {
                break;
            }
        }
        while let Some(done) = inflight.next().await {
            self.part_stored(&mut upload, done, resume, path, &failed)
                .await?;
        }
        let unchanged = Stat::of(&reader.file, path)? == before && reader.offset == before.size;
        self.finish_upload(parts_api, key, &upload, unchanged, &failed)
            .await?;
        resume
            .checkpoint
            .forget_partial(resume.run, rel)
            .await
            .map_err(Error::from)?;
        Ok(unchanged.then(|| Stored {
            hash: reader.hasher.finalize(),
            stat: before,
            extents: None,
            compressed: Some(Compressed {
                codec: Codec::Zstd,
                stored_size: stored,
            }),
        }))
    }

    /// Sends part `index` of an upload on its own task, so parts travel while the next is
    /// compressed.
    fn send_part(
        &self,
        parts_api: &Arc<dyn MultipartStore>,
        key: &Key,
        upload_id: &str,
        index: usize,
        part: Bytes,
        hash: [u8; 32],
    ) -> tokio::task::JoinHandle<Result<(UploadedPart, u64)>> {
        let (store, parts, key) = (self.store.clone(), Arc::clone(parts_api), key.clone());
        let id = upload_id.to_owned();
        tokio::spawn(async move {
            let sent = part.len() as u64;
            let put = parts.put_part(&key, &id, index, PutPayload::from(part));
            let stored: Result<PartId> = store
                .call("upload part", &key, put)
                .await
                .map_err(Error::from);
            Ok((
                UploadedPart {
                    id: stored?.content_id,
                    chaining_value: hash,
                },
                sent,
            ))
        })
    }

    /// Aborts and forgets an upload whose stored parts this attempt cannot continue; the next
    /// attempt starts a new one.
    async fn drop_upload(
        &self,
        parts_api: &Arc<dyn MultipartStore>,
        at: Packed<'_>,
        upload: &PartialUpload,
    ) -> Result<Option<Stored>, Failed> {
        let abort = parts_api.abort_multipart(at.key, &upload.upload_id);
        let _ = self
            .store
            .call("abort multipart upload", at.key, abort)
            .await;
        at.resume
            .checkpoint
            .forget_partial(at.resume.run, at.rel)
            .await
            .map_err(Error::from)?;
        Ok(None)
    }
}

fn at_of<'a>(key: &'a Key, resume: Resume<'a>, rel: &'a [u8]) -> Packed<'a> {
    Packed { key, resume, rel }
}

/// Reads the next raw part on a blocking thread, hashes it into the content's hash and
/// compresses it into one frame; `None` at the end of the file.
async fn next_frame(
    mut reader: Reader,
    path: &std::path::Path,
    level: i32,
) -> Result<(Reader, Option<Vec<u8>>)> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let n =
            read_full(&mut reader.file, &mut reader.buffer).map_err(|e| Error::read(&owned, e))?;
        if n == 0 {
            return Ok((reader, None));
        }
        let raw = &reader.buffer[..n];
        reader.hasher.update(raw);
        reader.offset += n as u64;
        let frame = compress::frame(raw, level).map_err(|e| Error::read(&owned, e))?;
        Ok((reader, Some(frame)))
    })
    .await
    .map_err(|e| task_failed(path, e))?
}

/// Fills `buf` from `offset` as far as the file allows; returns how many bytes were read.
fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
