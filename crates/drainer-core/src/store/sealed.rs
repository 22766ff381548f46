//! The encryption layer: an `ObjectStore` (and `MultipartStore`) that seals what it writes
//! and opens what it reads, with the format of [`crate::encryption`], over the store that
//! holds the bytes. Everything above it sees plain objects under plain keys.
//!
//! Keys: a file's name (what follows `volumes/NS/PVC/snapshots/ID/files/`) is sealed; every
//! other key is kept (the store's layout stays browsable: volumes, snapshots, their times).
//! Listing is offered down to a snapshot's `files/` and opens the names it finds; listing
//! inside `files/` is refused. Copies and renames are refused (a sealed object is bound to
//! its key). Sizes and ranges are mapped chunk by chunk (see [`crate::encryption`]); a part of
//! a multipart upload must start at a chunk boundary, which every part size drainer allows
//! does.
//!
//! Errors of sealing are `object_store` errors of the store `"encryption"`, never transient
//! (see [`super::Error::is_transient`]): retrying cannot make a wrong key right.

use crate::encryption::{self, KeyRing, Keys, OpenError};
use crate::snapshot::BufferPool;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartId,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, UploadPart,
};
use std::sync::Arc;

/// The `store` name of the layer's errors.
pub(crate) const STORE: &str = "encryption";

/// Payloads from this size up are sealed off the async runtime's threads.
const SEAL_INLINE_MAX: usize = 256 * 1024;

/// The encryption layer over `inner` (objects) and `parts` (its multipart API).
#[derive(Clone)]
pub(crate) struct SealedStore {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) parts: Arc<dyn MultipartStore>,
    pub(crate) keys: KeyRing,
    /// The store URL's prefix: keys are bound relative to it.
    pub(crate) root: Path,
    /// Buffers of sealed parts, reused once sent (fresh ones per part made the allocator keep
    /// freed ones per thread, doubling the memory of a large copy).
    pub(crate) buffers: Arc<BufferPool>,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedStore({}, keys {:?})", self.inner, self.keys)
    }
}

impl std::fmt::Display for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "encrypted({})", self.inner)
    }
}

fn error(location: &Path, reason: impl std::fmt::Display) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: format!("object {location}: {reason}").into(),
    }
}

fn not_sealed_size(size: u64) -> String {
    format!("it is not sealed by drainer's encryption ({size} bytes cannot be a sealed object)")
}

fn not_supported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what} in an encrypted store").into(),
    }
}

/// A key split where a file's name starts: `(volumes/NS/PVC/snapshots/ID/files, NAME)`.
fn file_name(relative: &str) -> Option<(&str, &str)> {
    let mut slashes = relative.match_indices('/').map(|(i, _)| i);
    let context_end = slashes.nth(5)?;
    let context = &relative[..context_end];
    let segments: Vec<&str> = context.split('/').collect();
    let is_file = segments[0] == "volumes" && segments[3] == "snapshots" && segments[5] == "files";
    is_file.then(|| (context, &relative[context_end + 1..]))
}

impl SealedStore {
    /// `location` relative to the root (the associated data of its chunks).
    fn relative<'a>(&self, location: &'a Path) -> &'a str {
        let text = location.as_ref();
        let root = self.root.as_ref();
        if root.is_empty() {
            return text;
        }
        text.strip_prefix(root)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(text)
    }

    /// Where the store keeps `location`: the file's name sealed, other keys as they are.
    fn sealed_location(&self, location: &Path) -> object_store::Result<Path> {
        let relative = self.relative(location);
        let Some((context, name)) = file_name(relative) else {
            return Ok(location.clone());
        };
        let sealed = format!("{context}/{}", self.keys.current().seal_name(context, name));
        self.under_root(location, &sealed)
    }

    /// The plain key of a key the store listed.
    fn plain_location(&self, sealed: &Path) -> object_store::Result<Path> {
        let relative = self.relative(sealed);
        let Some((context, name)) = file_name(relative) else {
            return Ok(sealed.clone());
        };
        let name = self
            .keys
            .current()
            .open_name(context, name)
            .map_err(|e| error(sealed, format!("its name does not open: {e}")))?;
        self.under_root(sealed, &format!("{context}/{name}"))
    }

    /// `relative` (already in a key's encoding) under the root.
    fn under_root(&self, about: &Path, relative: &str) -> object_store::Result<Path> {
        let full = match self.root.as_ref() {
            "" => relative.to_owned(),
            root => format!("{root}/{relative}"),
        };
        Path::parse(full).map_err(|e| error(about, e))
    }

    /// A listed object's plain key and size.
    fn plain_meta(&self, meta: ObjectMeta) -> object_store::Result<ObjectMeta> {
        let size = encryption::plain_len(meta.size)
            .ok_or_else(|| error(&meta.location, not_sealed_size(meta.size)))?;
        Ok(ObjectMeta {
            location: self.plain_location(&meta.location)?,
            size,
            ..meta
        })
    }

    /// Refuses a listing inside a snapshot's `files/`, whose names are sealed as a whole.
    fn check_prefix(&self, prefix: Option<&Path>) -> object_store::Result<()> {
        let Some(prefix) = prefix else { return Ok(()) };
        match file_name(&format!("{}/", self.relative(prefix))) {
            Some((_, "")) | None => Ok(()),
            Some(_) => Err(not_supported("listing inside a snapshot's files")),
        }
    }

    /// Seals `data` for `location` (off the runtime's threads when it is large).
    async fn seal(&self, location: &Path, data: PutPayload) -> object_store::Result<PutPayload> {
        let sealer = Sealer {
            keys: self.keys.current(),
            object: self.relative(location).to_owned(),
            buffers: Arc::clone(&self.buffers),
        };
        sealer.seal_payload(data).await
    }
}

/// Seals the payloads of one object.
#[derive(Debug)]
struct Sealer {
    keys: Arc<Keys>,
    /// The object's key relative to the store's root (bound into each chunk).
    object: String,
    buffers: Arc<BufferPool>,
}

impl Sealer {
    /// Seals `data` (off the runtime's threads when it is large).
    async fn seal_payload(self, data: PutPayload) -> object_store::Result<PutPayload> {
        let plain: Bytes = data.into();
        if plain.len() < SEAL_INLINE_MAX {
            return Ok(self.seal_bytes(plain));
        }
        tokio::task::spawn_blocking(move || self.seal_bytes(plain))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: STORE,
                source: e.into(),
            })
    }

    /// Seals `plain` in its own buffer when nothing else holds it, else into a pooled one (no
    /// fresh allocation of a part's size per part).
    fn seal_bytes(&self, plain: Bytes) -> PutPayload {
        match plain.try_into_mut() {
            Ok(mut buffer) => {
                self.keys.seal_in_place(&self.object, &mut buffer);
                buffer.freeze().into()
            }
            Err(shared) => {
                let sealed_len = encryption::sealed_len(shared.len() as u64) as usize;
                let mut buffer = self.buffers.take(sealed_len);
                buffer.extend_from_slice(&shared);
                drop(shared);
                self.keys.seal_in_place(&self.object, &mut buffer);
                let sealed = buffer.split().freeze();
                self.buffers.give(buffer);
                sealed.into()
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for SealedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let sealed = self.seal(location, payload).await?;
        self.inner
            .put_opts(&self.sealed_location(location)?, sealed, opts)
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self
            .inner
            .put_multipart_opts(&self.sealed_location(location)?, opts)
            .await?;
        Ok(Box::new(SealedUpload {
            inner,
            sealer: Sealer {
                keys: self.keys.current(),
                object: self.relative(location).to_owned(),
                buffers: Arc::clone(&self.buffers),
            },
            location: location.clone(),
            ended: false,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let sealed_location = self.sealed_location(location)?;
        if options.head {
            let got = self.inner.get_opts(&sealed_location, options).await?;
            return self.opened(location, got, 0..u64::MAX);
        }
        let plain = match &options.range {
            None => 0..u64::MAX,
            Some(GetRange::Bounded(r)) => r.clone(),
            Some(GetRange::Offset(start)) => *start..u64::MAX,
            Some(GetRange::Suffix(n)) => {
                let size = self.head_size(location, &sealed_location).await?;
                size.saturating_sub(*n)..size
            }
        };
        let options = GetOptions {
            range: match plain.end {
                u64::MAX if plain.start == 0 => None,
                u64::MAX => Some(GetRange::Offset(
                    encryption::sealed_range(plain.start..plain.start).start,
                )),
                end => Some(GetRange::Bounded(encryption::sealed_range(
                    plain.start..end,
                ))),
            },
            ..options
        };
        let got = self.inner.get_opts(&sealed_location, options).await?;
        self.opened(location, got, plain)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let layer = self.cloned();
        let sealed = locations.and_then({
            let layer = layer.clone();
            move |location| std::future::ready(layer.sealed_location(&location))
        });
        self.inner
            .delete_stream(sealed.boxed())
            .and_then(move |sealed| std::future::ready(layer.plain_location(&sealed)))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check_prefix(prefix) {
            return futures::stream::once(async { Err(e) }).boxed();
        }
        let layer = self.cloned();
        self.inner
            .list(prefix)
            .and_then(move |meta| std::future::ready(layer.plain_meta(meta)))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check_prefix(prefix)?;
        let listed = self.inner.list_with_delimiter(prefix).await?;
        if let Some(inside) = listed.common_prefixes.iter().find(|p| {
            file_name(&format!("{}/", self.relative(p))).is_some_and(|(_, n)| !n.is_empty())
        }) {
            return Err(error(inside, "a listing inside a snapshot's files"));
        }
        Ok(ListResult {
            common_prefixes: listed.common_prefixes,
            extensions: listed.extensions,
            objects: listed
                .objects
                .into_iter()
                .map(|meta| self.plain_meta(meta))
                .collect::<object_store::Result<_>>()?,
        })
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(not_supported("copying an object (it is sealed to its key)"))
    }
}

impl SealedStore {
    fn cloned(&self) -> Arc<Self> {
        Arc::new(self.clone())
    }

    async fn head_size(&self, location: &Path, sealed: &Path) -> object_store::Result<u64> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let got = self.inner.get_opts(sealed, options).await?;
        encryption::plain_len(got.meta.size)
            .ok_or_else(|| error(location, not_sealed_size(got.meta.size)))
    }

    /// The plain answer to a read of `plain` (clipped to the object) from the sealed `got`.
    fn opened(
        &self,
        location: &Path,
        got: GetResult,
        plain: std::ops::Range<u64>,
    ) -> object_store::Result<GetResult> {
        let size = encryption::plain_len(got.meta.size)
            .ok_or_else(|| error(location, not_sealed_size(got.meta.size)))?;
        let range = plain.start.min(size)..plain.end.min(size);
        let first_chunk = encryption::plain_offset(got.range.start);
        let meta = ObjectMeta {
            location: location.clone(),
            size,
            ..got.meta.clone()
        };
        let opener = Opener {
            keys: self.keys.current(),
            object: self.relative(location).to_owned(),
            location: location.clone(),
            skip: (range.start - first_chunk.min(range.start)) as usize,
            left: range.end - range.start,
        };
        let attributes = got.attributes.clone();
        let extensions = got.extensions.clone();
        let stream = opener.open(got.into_stream());
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
            extensions,
        })
    }
}

/// Opens a stream of sealed chunks into the plain bytes of a range.
struct Opener {
    keys: Arc<Keys>,
    object: String,
    location: Path,
    /// Plain bytes of the first chunk before the range.
    skip: usize,
    /// Plain bytes of the range still to give.
    left: u64,
}

impl Opener {
    fn open(
        self,
        sealed: BoxStream<'static, object_store::Result<Bytes>>,
    ) -> BoxStream<'static, object_store::Result<Bytes>> {
        futures::stream::try_unfold(
            (self, sealed.fuse(), BytesMut::new()),
            |(mut opener, mut sealed, mut pending)| async move {
                loop {
                    if opener.left == 0 {
                        return Ok(None);
                    }
                    if pending.len() >= encryption::SEALED_CHUNK_LEN {
                        let chunk = pending.split_to(encryption::SEALED_CHUNK_LEN);
                        let plain = opener.chunk(chunk)?;
                        return Ok(Some((plain, (opener, sealed, pending))));
                    }
                    match sealed.next().await {
                        Some(bytes) => pending.extend_from_slice(&bytes?),
                        None if pending.is_empty() => {
                            return Err(error(&opener.location, "it ends before the range read"));
                        }
                        None => {
                            let chunk = pending.split();
                            let plain = opener.chunk(chunk)?;
                            return Ok(Some((plain, (opener, sealed, pending))));
                        }
                    }
                }
            },
        )
        .boxed()
    }

    /// Opens one sealed chunk and keeps the part of it in the range.
    fn chunk(&mut self, mut chunk: BytesMut) -> object_store::Result<Bytes> {
        let plain = self
            .keys
            .open(&self.object, &mut chunk)
            .map_err(|e| open_error(&self.location, e))?;
        let start = self.skip.min(plain.len());
        let end = (start as u64 + self.left).min(plain.len() as u64) as usize;
        let kept = Bytes::copy_from_slice(&plain[start..end]);
        self.skip = 0;
        self.left -= kept.len() as u64;
        Ok(kept)
    }
}

fn open_error(location: &Path, e: OpenError) -> object_store::Error {
    error(location, format!("cannot decrypt: {e}"))
}

#[async_trait::async_trait]
impl MultipartStore for SealedStore {
    async fn create_multipart(&self, path: &Path) -> object_store::Result<MultipartId> {
        self.parts
            .create_multipart(&self.sealed_location(path)?)
            .await
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let sealed = self.seal(path, data).await?;
        self.parts
            .put_part(&self.sealed_location(path)?, id, part_idx, sealed)
            .await
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        self.parts
            .complete_multipart(&self.sealed_location(path)?, id, parts)
            .await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> object_store::Result<()> {
        self.parts
            .abort_multipart(&self.sealed_location(path)?, id)
            .await
    }
}

/// A sealed `put_multipart` upload: each part sealed on its own. Every part but the last
/// must be whole chunks, so a part after a shorter one is refused.
#[derive(Debug)]
struct SealedUpload {
    inner: Box<dyn MultipartUpload>,
    sealer: Sealer,
    location: Path,
    /// A part that was not whole chunks was given: it must have been the last.
    ended: bool,
}

#[async_trait::async_trait]
impl MultipartUpload for SealedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if self.ended {
            let e = error(&self.location, "a part after one that was not whole chunks");
            return Box::pin(async move { Err(e) });
        }
        self.ended = !(data.content_length() as u64).is_multiple_of(encryption::CHUNK);
        let sealed = self.sealer.seal_bytes(data.into());
        self.inner.put_part(sealed)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use crate::encryption::{CHUNK, Keys};
    use crate::store::{Store, StoreOptions};
    use bytes::Bytes;
    use futures::TryStreamExt;
    use object_store::path::Path;
    use object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};
    use std::sync::Arc;
    use std::time::Duration;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    const PART: u64 = 2 * CHUNK;

    fn store(dir: &std::path::Path, keys: &str) -> Store {
        let options = StoreOptions {
            timeout: Duration::from_secs(10),
            create: true,
            part_size: PART,
        };
        let url = format!("file://{}", dir.display());
        Store::open(&url, &options)
            .unwrap()
            .encrypted(Arc::new(Keys::parse(keys).unwrap()))
    }

    fn data(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    /// Every file under `dir`, relative, with its bytes.
    fn stored(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let name = e.path().strip_prefix(dir).unwrap().display().to_string();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    const FILE: &str = "volumes/ns/pvc/snapshots/20261207T000000000Z-ab/files/payroll/secret.csv";

    #[tokio::test]
    async fn objects_are_stored_sealed_under_sealed_names_and_read_back_plain() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), KEY_A);
        let objects = store.objects();
        let plain = data(3 * CHUNK + 5);
        let key = Path::parse(FILE).unwrap();
        objects.put(&key, plain.clone().into()).await.unwrap();
        let latest = Path::parse("volumes/ns/pvc/latest").unwrap();
        objects
            .put(&latest, "{\"snapshot\":1}".into())
            .await
            .unwrap();

        let on_disk = stored(dir.path());
        assert_eq!(on_disk.len(), 2);
        for (name, bytes) in &on_disk {
            assert!(
                !name.contains("payroll") && !name.contains("secret"),
                "{name}"
            );
            assert!(
                !bytes.windows(16).any(|w| w == &plain[..16]),
                "{name} shows its bytes"
            );
            assert!(
                !bytes.windows(8).any(|w| w == b"snapshot"),
                "{name} shows its bytes"
            );
        }
        assert!(on_disk.iter().any(|(n, _)| n == "volumes/ns/pvc/latest"));

        let got = objects.get(&key).await.unwrap();
        assert_eq!(got.meta.size, plain.len() as u64);
        assert_eq!(got.bytes().await.unwrap(), plain);
        assert_eq!(objects.head(&key).await.unwrap().size, plain.len() as u64);
        let listed: Vec<_> = objects
            .list(Some(&Path::parse("volumes/ns/pvc").unwrap()))
            .try_collect()
            .await
            .unwrap();
        let mut names: Vec<_> = listed
            .iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                (latest.to_string(), 14),
                (FILE.to_owned(), plain.len() as u64)
            ]
        );
        objects.delete(&key).await.unwrap();
        assert_eq!(stored(dir.path()).len(), 1, "the sealed object is deleted");
    }

    #[tokio::test]
    async fn every_range_reads_exactly_its_plain_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), KEY_A);
        let plain = data(4 * CHUNK + 1000);
        let key = Path::parse(FILE).unwrap();
        store
            .objects()
            .put(&key, plain.clone().into())
            .await
            .unwrap();
        let len = plain.len() as u64;
        let ranges = [
            GetRange::Bounded(0..1),
            GetRange::Bounded(CHUNK - 3..CHUNK + 3),
            GetRange::Bounded(2 * CHUNK..3 * CHUNK),
            GetRange::Bounded(len - 10..len),
            GetRange::Bounded(100..len + 500),
            GetRange::Offset(CHUNK + 17),
            GetRange::Suffix(70_000),
        ];
        for range in ranges {
            let expected = match &range {
                GetRange::Bounded(r) => &plain[r.start as usize..(r.end.min(len)) as usize],
                GetRange::Offset(o) => &plain[*o as usize..],
                GetRange::Suffix(n) => &plain[(len - n) as usize..],
            };
            let options = GetOptions {
                range: Some(range.clone()),
                ..GetOptions::default()
            };
            let got = store.objects().get_opts(&key, options).await.unwrap();
            assert_eq!(
                got.range.end - got.range.start,
                expected.len() as u64,
                "{range:?}"
            );
            assert_eq!(got.bytes().await.unwrap(), expected, "{range:?}");
        }
    }

    #[tokio::test]
    async fn parts_uploaded_out_of_order_and_streamed_uploads_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), KEY_A);
        let plain = data(3 * PART + 12_345);
        let key = Path::parse(FILE).unwrap();
        let parts = store.multipart();
        let id = parts.create_multipart(&key).await.unwrap();
        let mut ids = Vec::new();
        for index in [3, 1, 0, 2] {
            let start = index * PART as usize;
            let end = (start + PART as usize).min(plain.len());
            let part = Bytes::copy_from_slice(&plain[start..end]);
            ids.push((
                index,
                parts.put_part(&key, &id, index, part.into()).await.unwrap(),
            ));
        }
        ids.sort_by_key(|(index, _)| *index);
        let ids = ids.into_iter().map(|(_, id)| id).collect();
        parts.complete_multipart(&key, &id, ids).await.unwrap();
        let got = store
            .objects()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got, plain);

        let streamed = Path::parse("volumes/ns/pvc/snapshots/x/manifest.jsonl").unwrap();
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(store.objects()),
            streamed.clone(),
            PART as usize,
        );
        use tokio::io::AsyncWriteExt;
        writer.write_all(&plain).await.unwrap();
        writer.shutdown().await.unwrap();
        let got = store
            .objects()
            .get(&streamed)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got, plain);
    }

    #[tokio::test]
    async fn a_missing_key_or_a_plain_object_is_a_permanent_error_naming_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let key = Path::parse("volumes/ns/pvc/latest").unwrap();
        store(dir.path(), KEY_A)
            .put_bytes(&key, PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        let other = store(dir.path(), KEY_B);
        let error = other.get_bytes(&key).await.unwrap_err();
        assert!(!error.is_transient(), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("volumes/ns/pvc/latest") && text.contains("not in the key file"),
            "{text}"
        );

        let plain_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(plain_dir.path().join("volumes/ns/pvc")).unwrap();
        std::fs::write(
            plain_dir.path().join("volumes/ns/pvc/latest"),
            b"{\"snapshot\":\"x\"}",
        )
        .unwrap();
        let error = store(plain_dir.path(), KEY_A)
            .get_bytes(&key)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not sealed"), "{error}");
        assert!(!error.is_transient());
    }

    #[tokio::test]
    async fn listing_inside_a_snapshots_files_and_copying_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), KEY_A);
        let inside = Path::parse("volumes/ns/pvc/snapshots/x/files/dir").unwrap();
        let listed: Result<Vec<_>, _> = store.objects().list(Some(&inside)).try_collect().await;
        assert!(listed.is_err());
        let files = Path::parse("volumes/ns/pvc/snapshots/x/files").unwrap();
        let listed: Vec<_> = store
            .objects()
            .list(Some(&files))
            .try_collect()
            .await
            .unwrap();
        assert!(listed.is_empty());
        let copied = store.objects().copy(&files, &inside).await;
        assert!(copied.is_err());
    }
}
