//! Durable storage: opening a `STORE_URL` and the few guarantees drainer adds on top of
//! `object_store`.
//!
//! Everything that touches object storage goes through [`Store`], which wraps an
//! `ObjectStore` with the URL's prefix, bounded timeouts and retries, and a [`Store::flush`]
//! barrier: for a local directory it calls `syncfs(2)` so every file and directory written so far
//! is on disk (object_store's local backend does not fsync by itself); for remote stores an
//! acknowledged request is already durable. An S3 store whose objects are not sealed also
//! signs short-lived URLs for one request each (a part of an upload, a read of an object), so
//! that movers and restores move bytes to and from the store without its credentials. This
//! module knows nothing of snapshots.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, PutResult, RetryConfig,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod sealed;

/// Errors opening or using a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL could not be parsed or names an unsupported scheme.
    #[error("store URL {url:?} is not valid: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The store could not be opened or answered with an error.
    #[error("store {url}: {source}")]
    Backend {
        /// The store URL.
        url: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// A request took longer than the configured timeout.
    #[error("store {url}: {op} {key} timed out after {seconds} s")]
    Timeout {
        /// The store URL.
        url: String,
        /// The operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// The timeout.
        seconds: u64,
    },
    /// A local store directory could not be created or synced.
    #[error("store directory {path}: {source}")]
    LocalIo {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the store said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InvalidUrl { .. } | Error::LocalIo { .. } => false,
            Error::Timeout { .. } => true,
            Error::Backend {
                source: object_store::Error::Generic { store, .. },
                ..
            } if *store == sealed::STORE => false,
            Error::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Timeout of one request.
    pub timeout: Duration,
    /// Create a missing local directory (for writers) instead of failing (for readers).
    pub create: bool,
    /// Part size of resumable uploads (a local directory writes part N at N × this offset).
    pub part_size: u64,
}

/// An opened store: an `ObjectStore`, the prefix the URL named, and durability helpers.
#[derive(Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// The same store's low-level multipart API, where it has one (S3, GCS, Azure): uploads
    /// that can be continued part by part after a crash.
    multipart: Arc<dyn MultipartStore>,
    root: Path,
    local_dir: Option<PathBuf>,
    local_fs: Option<Arc<LocalFileSystem>>,
    barrier: Option<Arc<dyn Barrier>>,
    url: String,
    timeout: Duration,
    part_size: u64,
    calls: Arc<CallCounts>,
    /// Objects are sealed (see [`Store::encrypted`]).
    sealed: bool,
    /// Signs requests others send to the store itself (S3 and S3-compatible stores, not
    /// sealed): a mover's direct parts, a restore's direct reads.
    signer: Option<Arc<dyn Signer>>,
}

/// Requests made through [`Store::call`], by kind (reads of a response body's chunks are not
/// requests and are not counted).
#[derive(Debug, Default)]
struct CallCounts(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl CallCounts {
    fn count(&self, op: &'static str) {
        if op.starts_with("read") {
            return;
        }
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(op).or_default() += 1;
    }
}

impl Store {
    /// Opens `url` (`file:///abs/dir`, `s3://bucket/prefix`, `gs://…`, `az://…`).
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = check_url(url)?;
        let backend = |source| Error::Backend {
            url: url.to_owned(),
            source,
        };
        let remote = |store: Arc<dyn RemoteStore>| -> Result<_> {
            Ok((
                Arc::clone(&store) as Arc<dyn ObjectStore>,
                store as Arc<dyn MultipartStore>,
                url_prefix(&parsed)?,
                None,
            ))
        };
        let mut local_fs = None;
        let mut signer: Option<Arc<dyn Signer>> = None;
        let (objects, multipart, root, local_dir) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("a file URL needs an absolute path"))?;
                open_local_dir(&dir, options.create)?;
                let fs = Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(backend)?);
                local_fs = Some(Arc::clone(&fs));
                let parts = LocalParts {
                    fs: Arc::clone(&fs),
                    part_size: options.part_size,
                };
                (
                    fs as Arc<dyn ObjectStore>,
                    Arc::new(parts) as Arc<dyn MultipartStore>,
                    Path::default(),
                    Some(dir),
                )
            }
            "s3" | "s3a" => {
                let s3 = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        seconds(options.timeout),
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        "10s",
                    )
                    .with_retry(retry_config(options.timeout))
                    .build()
                    .map_err(backend)?;
                let s3 = Arc::new(s3);
                signer = Some(Arc::clone(&s3) as Arc<dyn Signer>);
                remote(s3)?
            }
            "gs" => {
                let gcs = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_config(
                        GoogleConfigKey::Client(ClientConfigKey::Timeout),
                        seconds(options.timeout),
                    )
                    .with_config(
                        GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        "10s",
                    )
                    .with_retry(retry_config(options.timeout))
                    .build()
                    .map_err(backend)?;
                remote(Arc::new(gcs))?
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let az = MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_config(
                        AzureConfigKey::Client(ClientConfigKey::Timeout),
                        seconds(options.timeout),
                    )
                    .with_config(
                        AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        "10s",
                    )
                    .with_retry(retry_config(options.timeout))
                    .build()
                    .map_err(backend)?;
                remote(Arc::new(az))?
            }
            other => return Err(invalid(&format!("unsupported scheme {other:?}"))),
        };
        Ok(Self {
            objects,
            multipart,
            root,
            local_dir,
            local_fs,
            barrier: None,
            url: redact(&parsed),
            timeout: options.timeout,
            part_size: options.part_size,
            calls: Arc::default(),
            sealed: false,
            signer,
        })
    }

    /// Copies of a part in memory while it is being stored, for memory budgets: two for a
    /// sealed store (the part read, and the sealed part being sent, in a buffer of the
    /// store's own pool while the read buffer waits in the engine's), one otherwise.
    pub(crate) fn buffer_copies(&self) -> u64 {
        if self.sealed { 2 } else { 1 }
    }

    /// This store with its objects sealed by `keys` (see [`crate::encryption`]): what is
    /// written is encrypted, what is read decrypted, and a file's name is stored sealed. Reads
    /// go through the object API only (no local fast path), and a local directory's parts are
    /// laid out at their sealed size.
    pub fn encrypted(mut self, keys: impl Into<crate::encryption::KeyRing>) -> Self {
        if let Some(fs) = self.local_fs.take() {
            self.multipart = Arc::new(LocalParts {
                fs,
                part_size: crate::encryption::sealed_len(self.part_size),
            });
        }
        let layer = Arc::new(sealed::SealedStore {
            inner: Arc::clone(&self.objects),
            parts: Arc::clone(&self.multipart),
            keys: keys.into(),
            root: self.root.clone(),
            buffers: Arc::default(),
        });
        self.objects = Arc::clone(&layer) as Arc<dyn ObjectStore>;
        self.multipart = layer;
        self.sealed = true;
        // The keys never leave drainer: nobody else may write this store's objects.
        self.signer = None;
        self
    }

    /// A store owned by another process and reached through `objects` (a mover's view of its
    /// drainer's store); `barrier` makes what was written durable there.
    pub fn relayed(
        objects: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        barrier: Arc<dyn Barrier>,
        url: String,
        options: &StoreOptions,
    ) -> Self {
        Self {
            objects,
            multipart,
            root: Path::default(),
            local_dir: None,
            local_fs: None,
            barrier: Some(barrier),
            url,
            timeout: options.timeout,
            part_size: options.part_size,
            calls: Arc::default(),
            sealed: false,
            signer: None,
        }
    }

    /// The store URL, without any credentials it may have carried.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The prefix every key of this store lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The underlying object store.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Where the object `key` of a local-directory store is on disk (`None` for other stores,
    /// or a key that cannot be a file there), for readers that copy its bytes straight into
    /// a file rather than through the `ObjectStore` layer's buffers.
    pub fn local_file(&self, key: &Path) -> Option<PathBuf> {
        self.local_fs.as_ref()?.path_to_filesystem(key).ok()
    }

    /// The size of every part of a multipart upload but the last (a local directory writes
    /// part N at N × this offset).
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The store's multipart API with explicit part numbers: uploads that can be continued
    /// part by part after a crash, several parts at a time.
    pub fn multipart(&self) -> &Arc<dyn MultipartStore> {
        &self.multipart
    }

    /// Whether others can be given signed URLs to store parts of this store's multipart
    /// uploads themselves ([`Store::signed_part_url`]): an S3 store whose objects are not
    /// sealed (a sealed store needs the keys, which never leave drainer; a local directory or
    /// a relay cannot sign; GCS and Azure are not offered yet).
    pub fn signs_parts(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL, valid for `expires_in`, with which whoever holds it can `PUT` part `part_idx`
    /// (from 0) of the multipart upload `upload_id` of `key`, and nothing else; `None` if this
    /// store cannot sign ([`Store::signs_parts`]). The store's credentials stay here.
    pub async fn signed_part_url(
        &self,
        key: &Path,
        upload_id: &str,
        part_idx: usize,
        expires_in: Duration,
    ) -> Result<Option<url::Url>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let options = SignedUrlOptions::default().with_query(part_query(upload_id, part_idx));
        let sign =
            signer.signed_url_opts(object_store::signer::Method::PUT, key, expires_in, &options);
        self.call("sign part url", key, sign).await.map(Some)
    }

    /// A URL, valid for `expires_in`, with which whoever holds it can `GET` the object `key`
    /// (ranges too), and nothing else; `None` if this store cannot sign
    /// ([`Store::signs_parts`]: a sealed object would be of no use to the reader anyway).
    pub async fn signed_get_url(
        &self,
        key: &Path,
        expires_in: Duration,
    ) -> Result<Option<url::Url>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let sign = signer.signed_url(object_store::signer::Method::GET, key, expires_in);
        self.call("sign get url", key, sign).await.map(Some)
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one store request under the configured timeout, mapping its error.
    pub async fn call<T>(
        &self,
        op: &'static str,
        key: &Path,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        self.calls.count(op);
        // The outer bound covers a request with all its retries (and local calls, which have
        // no timeout of their own).
        match tokio::time::timeout(self.timeout * (RETRIES + 1), request).await {
            Ok(result) => result.map_err(|source| self.backend_error(source)),
            Err(_) => Err(Error::Timeout {
                url: self.url.clone(),
                op,
                key: key.to_string(),
                seconds: (self.timeout * (RETRIES + 1)).as_secs(),
            }),
        }
    }

    /// How many requests of each kind (`list`, `get`, `get manifest`, `delete`, …) this store
    /// (and its clones) made so far, for benchmarks and debug logs.
    pub fn calls(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.calls
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `error`, the failure of a call on a multipart upload of `key` (a part, or its
    /// completion), means the store refuses that upload itself, so the upload is over: it is
    /// unknown, aborted, expired, or already completed (its record outlived it). The store says
    /// so with `404 NoSuchUpload` (S3) or, some stores, a `500`; to tell a refusal from an
    /// outage, the store is asked for the object: if it answers either way, the store is up
    /// and the upload is what it refuses (after the client's own retries); if it does not
    /// answer (or cannot be asked: a relay), the upload is kept for a later attempt. A local
    /// directory's failure other than "not found" (a full disk) never refuses the upload.
    pub async fn upload_refused(&self, key: &Path, error: &Error) -> bool {
        if error.is_not_found() {
            return true;
        }
        if self.local_dir.is_some() {
            // A local directory says an upload is over with "not found"; anything else (a
            // full disk, a permission) is the disk's failure, and the upload's parts stay.
            tracing::info!(key = %key, error = %error, "a multipart upload call to a local store failed; the upload is kept");
            return false;
        }
        let head = self.call("head", key, self.objects.head(key)).await;
        let answer = match &head {
            Ok(_) => Head::Exists,
            Err(e) if e.is_not_found() => Head::Missing,
            Err(_) => Head::NoAnswer,
        };
        let refused = upload_over(false, answer);
        tracing::info!(key = %key, error = %error, object = ?answer, refused, "a multipart upload call failed; is the upload over?");
        refused
    }

    /// Wraps an `object_store` error with this store's URL.
    pub(crate) fn backend_error(&self, source: object_store::Error) -> Error {
        Error::Backend {
            url: self.url.clone(),
            source,
        }
    }

    /// Reads a whole (small) object.
    /// An object sealed by drainer's encryption read by a store opened without keys is an
    /// error saying so (not a damaged object).
    pub(crate) async fn get_bytes(&self, key: &Path) -> Result<bytes::Bytes> {
        let get = async { self.objects.get(key).await?.bytes().await };
        let bytes = self.call("get", key, get).await?;
        if !self.sealed && crate::encryption::looks_sealed(&bytes) {
            return Err(self.backend_error(object_store::Error::Generic {
                store: sealed::STORE,
                source: format!("object {key} is encrypted: give the store's key file with --encryption-keys (DRAINER_ENCRYPTION_KEYS)").into(),
            }));
        }
        Ok(bytes)
    }

    /// Writes a whole (small) object.
    pub async fn put_bytes(&self, key: &Path, data: impl Into<PutPayload>) -> Result<()> {
        let put = self.objects.put(key, data.into());
        self.call("put", key, put).await.map(drop)
    }

    /// Checks that the store answers and accepts writes, by writing and deleting a probe object.
    pub(crate) async fn probe_writable(&self) -> Result<()> {
        let key = self
            .root
            .clone()
            .join(format!(".drainer-probe-{:016x}", rand::random::<u64>()));
        self.put_bytes(&key, bytes::Bytes::from_static(b"probe"))
            .await?;
        self.call("delete", &key, self.objects.delete(&key)).await
    }

    /// Makes everything written so far durable: `syncfs(2)` for a local directory; nothing to
    /// do for remote stores, whose acknowledged writes are already durable.
    pub async fn flush(&self) -> Result<()> {
        if let Some(barrier) = &self.barrier {
            return barrier.flush().await.map_err(|reason| Error::Backend {
                url: self.url.clone(),
                source: object_store::Error::Generic {
                    store: "relay",
                    source: reason.into(),
                },
            });
        }
        let Some(dir) = self.local_dir.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            let handle = std::fs::File::open(&dir).map_err(|source| Error::LocalIo {
                path: dir.clone(),
                source,
            })?;
            rustix::fs::syncfs(&handle).map_err(|errno| Error::LocalIo {
                path: dir,
                source: errno.into(),
            })
        })
        .await
        .expect("syncfs task panicked")
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Checks a `STORE_URL` without opening anything, so that every URL that would be read as
/// something other than what it says is refused before it is used: `file:relative` (read as
/// `/relative`), `file://` and `file:///` (the filesystem root), `file://host/path` (a host
/// this machine is not), a query or fragment (object_store ignores them), `s3://` without a
/// bucket, and unknown schemes.
pub fn check_url(url: &str) -> Result<url::Url> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "a query ('?') or fragment ('#') is not part of a store URL (escape them as %3F and %23 in a path)",
        ));
    }
    match parsed.scheme() {
        "file" => check_file_url(url, &parsed).map_err(|reason| invalid(&reason))?,
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
            if parsed.host_str().unwrap_or_default().is_empty() {
                return Err(invalid(&format!(
                    "a {}:// URL needs a bucket or container: {}://NAME/prefix",
                    parsed.scheme(),
                    parsed.scheme()
                )));
            }
        }
        other => {
            return Err(invalid(&format!(
                "unsupported scheme {other:?} (use file:///abs/dir, s3://, gs:// or az://)"
            )));
        }
    }
    Ok(parsed)
}

/// A local store is `file:///abs/dir` (or `file:/abs/dir`): no host, an absolute path, not `/`.
fn check_file_url(text: &str, parsed: &url::Url) -> std::result::Result<(), String> {
    let after_scheme = text.get("file:".len()..).unwrap_or_default();
    let no_authority = after_scheme.starts_with('/') && !after_scheme.starts_with("//");
    if !no_authority && !after_scheme.starts_with("///") {
        return Err(match parsed.host_str() {
            Some(host) if !host.is_empty() => format!(
                "a file URL cannot name a host ({host:?}); use file:///abs/dir (three slashes)"
            ),
            _ => "a file URL needs an absolute path: file:///abs/dir (three slashes)".into(),
        });
    }
    let dir = parsed
        .to_file_path()
        .map_err(|()| "a file URL needs an absolute path: file:///abs/dir".to_owned())?;
    if dir.parent().is_none() {
        return Err("a file URL must name a directory, not the filesystem root".into());
    }
    Ok(())
}

/// The query of an S3 `UploadPart` request for part `part_idx` (from 0; S3 numbers parts
/// from 1, as object_store's own uploads do).
fn part_query(upload_id: &str, part_idx: usize) -> [(&'static str, String); 2] {
    [
        ("partNumber", (part_idx + 1).to_string()),
        ("uploadId", upload_id.to_owned()),
    ]
}

/// Makes writes durable in a store owned by another process.
#[async_trait::async_trait]
pub trait Barrier: Send + Sync {
    /// Flushes; the error is a one-line reason.
    async fn flush(&self) -> std::result::Result<(), String>;
}

/// A remote store: both the high-level and the part-by-part multipart API.
trait RemoteStore: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> RemoteStore for T {}

fn open_local_dir(dir: &std::path::Path, create: bool) -> Result<()> {
    let io_error = |source| Error::LocalIo {
        path: dir.to_owned(),
        source,
    };
    if create {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let meta = std::fs::metadata(dir).map_err(io_error)?;
    if !meta.is_dir() {
        return Err(io_error(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    if create {
        probe_local_dir(dir).map_err(io_error)?;
    }
    Ok(())
}

/// Creates and removes a file in a local store directory with plain system calls. object_store's
/// local backend answers "not found" on creating a file by creating the parent directories and
/// trying again, forever, so a directory that exists but cannot hold files (`/proc`, `/sys`)
/// would spin; this finds out first and fails with the reason.
fn probe_local_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".drainer-probe-{:016x}", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"probe"));
    let removed = std::fs::remove_file(&probe);
    written
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create a file in it: {e}")))?;
    removed
}

fn url_prefix(url: &url::Url) -> Result<Path> {
    Path::from_url_path(url.path()).map_err(|source| Error::InvalidUrl {
        url: url.to_string(),
        reason: source.to_string(),
    })
}

/// A duration as object_store's configuration parses it; applied on top of what the builders
/// read from the environment (replacing their `ClientOptions` would drop `AWS_ALLOW_HTTP`).
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// Retries inside `object_store` of one request.
const RETRIES: u32 = 4;

/// The result of a write that has no ETag or version to report (relayed and local uploads).
pub fn stored() -> PutResult {
    PutResult {
        e_tag: None,
        version: None,
        extensions: Default::default(),
    }
}

/// Retries inside `object_store` are bounded in count and in total time: each try has the
/// request timeout, and all of them together a little more than that many timeouts.
fn retry_config(timeout: Duration) -> RetryConfig {
    RetryConfig {
        max_retries: RETRIES as usize,
        retry_timeout: timeout * RETRIES,
        ..RetryConfig::default()
    }
}

fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    shown.to_string()
}

/// Resumable multipart uploads into a local directory: part N is written at offset
/// N × part size of a staging file next to the object, which is renamed into place on
/// completion. object_store's own local uploads cannot be continued by another process.
#[derive(Debug)]
struct LocalParts {
    fs: Arc<LocalFileSystem>,
    part_size: u64,
}

impl std::fmt::Display for LocalParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalParts({})", self.fs)
    }
}

impl LocalParts {
    fn staging(&self, location: &Path, id: &str) -> object_store::Result<PathBuf> {
        let mut path = self.fs.path_to_filesystem(location)?.into_os_string();
        path.push(format!(".part-{id}"));
        Ok(PathBuf::from(path))
    }
}

/// A local upload's error; a missing staging file is "not found", like an upload a remote
/// store no longer has, so the engine starts the upload again.
fn local_error(e: std::io::Error) -> object_store::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        return object_store::Error::NotFound {
            path: "LocalParts staging file".into(),
            source: Box::new(e),
        };
    }
    object_store::Error::Generic {
        store: "LocalParts",
        source: Box::new(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("local upload task panicked")
        .map_err(local_error)
}

#[async_trait::async_trait]
impl MultipartStore for LocalParts {
    async fn create_multipart(
        &self,
        location: &Path,
    ) -> object_store::Result<object_store::MultipartId> {
        let id = format!("{:016x}", rand::random::<u64>());
        let staging = self.staging(location, &id)?;
        blocking(move || {
            if let Some(dir) = staging.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::File::create(&staging).map(drop)
        })
        .await?;
        Ok(id)
    }

    async fn put_part(
        &self,
        location: &Path,
        id: &object_store::MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<object_store::multipart::PartId> {
        use std::os::unix::fs::FileExt;
        let staging = self.staging(location, id)?;
        let offset = part_idx as u64 * self.part_size;
        blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&staging)?;
            let mut at = offset;
            for chunk in data.iter() {
                file.write_all_at(chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok(())
        })
        .await?;
        Ok(object_store::multipart::PartId {
            content_id: part_idx.to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        location: &Path,
        id: &object_store::MultipartId,
        _parts: Vec<object_store::multipart::PartId>,
    ) -> object_store::Result<PutResult> {
        let staging = self.staging(location, id)?;
        let target = self.fs.path_to_filesystem(location)?;
        blocking(move || std::fs::rename(&staging, &target)).await?;
        Ok(stored())
    }

    async fn abort_multipart(
        &self,
        location: &Path,
        id: &object_store::MultipartId,
    ) -> object_store::Result<()> {
        let staging = self.staging(location, id)?;
        blocking(move || match std::fs::remove_file(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

/// What the store answered when asked for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// It exists.
    Exists,
    /// It does not.
    Missing,
    /// No answer (an outage, or a store that cannot be asked).
    NoAnswer,
}

/// Whether a multipart upload whose call failed is over (see [`Store::upload_refused`]): the
/// store said the upload is unknown (`not_found`), or it answered for the object, so it is up
/// and refuses the upload.
fn upload_over(not_found: bool, object: Head) -> bool {
    not_found || object != Head::NoAnswer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unsealed_s3_store_signs_part_urls() {
        let options = StoreOptions {
            timeout: Duration::from_secs(5),
            create: true,
            part_size: 8 * 1024 * 1024,
        };
        let s3 = Store::open("s3://bucket/prefix", &options).unwrap();
        assert!(s3.signs_parts());
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let keys = crate::encryption::Keys::parse(key).unwrap();
        let sealed = s3.encrypted(Arc::new(keys));
        assert!(
            !sealed.signs_parts(),
            "a sealed store's keys never leave drainer"
        );
        let dir = tempfile::tempdir().unwrap();
        let local = Store::open(&format!("file://{}", dir.path().display()), &options).unwrap();
        assert!(!local.signs_parts(), "a local directory cannot sign");
    }

    #[test]
    fn a_signed_part_is_numbered_from_one_as_s3_numbers_parts() {
        let [number, upload] = part_query("up-1", 2);
        assert_eq!(number, ("partNumber", "3".to_owned()));
        assert_eq!(upload, ("uploadId", "up-1".to_owned()));
    }

    #[test]
    fn an_upload_is_over_when_the_store_refuses_it_and_answers() {
        let cases = [
            (true, Head::NoAnswer, true),
            (true, Head::Missing, true),
            (false, Head::Exists, true),
            (false, Head::Missing, true),
            (false, Head::NoAnswer, false),
        ];
        for (not_found, object, over) in cases {
            assert_eq!(
                upload_over(not_found, object),
                over,
                "{not_found} {object:?}"
            );
        }
    }

    #[test]
    fn store_urls_that_would_mean_something_else_are_refused() {
        for (url, says) in [
            ("file:relative", "absolute path"),
            ("file:", "absolute path"),
            ("file://", "absolute path"),
            ("file:///", "filesystem root"),
            ("file://host/path", "cannot name a host"),
            ("file:///tmp/x?versioned=1", "query"),
            ("file:///tmp/x#frag", "fragment"),
            ("s3://", "needs a bucket"),
            ("s3:///prefix", "needs a bucket"),
            ("gs://", "needs a bucket"),
            ("az://", "needs a bucket"),
            ("s3://bucket/p?x=1", "query"),
            ("gopher://x/y", "unsupported scheme"),
            ("ftp://example/x", "unsupported scheme"),
            ("::not a url", "not valid"),
            ("/abs/dir", "not valid"),
        ] {
            let err = check_url(url).expect_err(url).to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        for url in [
            "file:///tmp/store",
            "file:/tmp/store",
            "file:///tmp/with%20space",
            "s3://bucket",
            "s3://bucket/prefix",
            "gs://bucket/p",
            "az://container/p",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_local_store_that_cannot_hold_files_fails_at_once() {
        let err = open_local_dir(std::path::Path::new("/proc"), true)
            .expect_err("/proc holds no files")
            .to_string();
        assert!(
            err.contains("/proc") && err.contains("cannot create a file"),
            "{err}"
        );
    }
}
