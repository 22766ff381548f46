//! A volume's snapshots read through a drainer's API, as `drainer restore --drainer` and
//! `drainer snapshots --drainer` read them: the listing (`GET /v1/volumes/NS/PVC/snapshots`)
//! and an `ObjectStore` over `GET /v1/volumes/NS/PVC/objects?key=…` with ranged reads, so the
//! snapshot engine restores through the API with the same code that restores from a store.
//! The caller's token decides which volumes it may read; the store and its credentials stay
//! with the drainer.
//!
//! Small reads (a small file's whole object, in one range) travel together in batches
//! (`POST …/objects/batch`, [`crate::batching`]): twenty thousand small files are a few
//! hundred requests, not twenty thousand. A drainer without that route is read one object at
//! a time.
//!
//! Large reads go straight to the store where the drainer offers it: it signs a URL for the
//! object (`GET …/objects/url`, short-lived, after the same checks as a read), the bytes come
//! store → here, and a read the store does not answer as asked, or whose body breaks off, goes
//! on through the drainer ([`DirectReads`]).
//!
//! Client side only (the drainer's side is `http::volumes`). Every request has the client's
//! timeout; failures that may pass (the drainer restarting, a `503`) are retried for
//! [`RETRY_FOR`]; a ranged read whose body breaks off midway is asked again for the rest.

use crate::args::ClientArgs;
use crate::batching::Batcher;
use crate::client::{Api, CallError};
use bytes::Bytes;
use drainer_core::protocol::batch::{self, ReadBatch, ReadOutcome, ReadRequest};
use drainer_core::protocol::{Listing, SignedUrl};
use drainer_core::snapshot::{self, Listed, SnapshotSelector, SnapshotSummary};
use drainer_core::store::{Barrier, Store, StoreOptions};
use drainer_core::volume::VolumeId;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions as ObjectCopyOptions, GetOptions, GetRange, GetResult, GetResultPayload,
    ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a request that may succeed later is sent again.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(120);
/// Batches of small reads on their way at once.
const READ_BATCHES_IN_FLIGHT: usize = 4;
/// Files a restore through the API writes at once when `--concurrency` is not given: enough
/// small files to fill every batch in flight (with 64, the batches held about 16 reads each,
/// and 20,000 small files took 8% longer).
pub const RESTORE_CONCURRENCY: usize = batch::MAX_OBJECTS * READ_BATCHES_IN_FLIGHT;

/// One volume on a drainer, read through its API.
#[derive(Debug, Clone)]
pub struct RemoteVolume {
    api: Api,
    volume: VolumeId,
    /// The query every request carries: `?earlier=true` for an operator's read of an earlier
    /// namespace's snapshots, else nothing.
    query: &'static str,
}

/// The query of an operator's explicit read of an earlier namespace's snapshots.
const EARLIER: &str = "?earlier=true";

impl RemoteVolume {
    /// The volume `volume` on the drainer `client` names; each request times out after
    /// `timeout`.
    pub fn new(client: &ClientArgs, volume: &VolumeId, timeout: Duration) -> anyhow::Result<Self> {
        let base = format!(
            "{}/v1/volumes/{}/{}",
            client.url.trim_end_matches('/'),
            volume.namespace,
            volume.name
        );
        Ok(Self {
            api: Api::new(
                &base,
                client.token()?,
                timeout,
                RETRY_FOR,
                client.trust.roots()?,
            )?,
            volume: volume.clone(),
            query: "",
        })
    }

    /// The volume `volume` on the drainer at `url`, asked through `http` (a client its caller
    /// made, with its timeouts and trust) with `token`.
    pub(crate) fn through(
        http: reqwest::Client,
        url: &str,
        token: String,
        volume: &VolumeId,
    ) -> Self {
        let base = format!(
            "{}/v1/volumes/{}/{}",
            url.trim_end_matches('/'),
            volume.namespace,
            volume.name
        );
        Self {
            api: Api::with_client(http, &base, token, RETRY_FOR),
            volume: volume.clone(),
            query: "",
        }
    }

    /// The same volume, read as an operator who asks for the snapshots of earlier namespaces
    /// of its namespace's name too (`earlier`; the drainer records each such read), or not.
    pub fn earlier_namespace(self, earlier: bool) -> Self {
        Self {
            query: if earlier { EARLIER } else { "" },
            ..self
        }
    }

    /// The volume's snapshots.
    pub async fn listing(&self) -> Result<Listing, CallError> {
        let url = format!("{}{}", self.api.url("/snapshots"), self.query);
        self.api.json(|http| http.get(&url)).await
    }

    /// Reports that `snapshot` was restored (every file in place): drainer records it as a
    /// restore into the claim when the caller is a pod that mounts it; whether it did.
    pub(crate) async fn report_restored(&self, snapshot: &str) -> Result<bool, CallError> {
        #[derive(serde::Deserialize)]
        struct Report {
            recorded: bool,
        }
        let url = self.api.url(&format!("/snapshots/{snapshot}/restored"));
        let report: Report = self.api.json(|http| http.post(&url)).await?;
        Ok(report.recorded)
    }

    /// The snapshot `selector` names, from the listing.
    pub async fn resolve(&self, selector: &SnapshotSelector) -> anyhow::Result<SnapshotSummary> {
        let listing = self.listing().await?;
        Ok(choose(&listing, &self.volume, self.api.base(), selector)?)
    }

    /// The volume's objects as a store the snapshot engine reads (and cannot write).
    pub fn store(&self, options: &StoreOptions) -> Store {
        let objects = Arc::new(ApiObjects {
            direct: DirectReads::new(options.timeout),
            api: self.api.clone(),
            prefix: format!("volumes/{}/{}/", self.volume.namespace, self.volume.name),
            batches: OnceLock::new(),
            batches_served: AtomicBool::new(true),
            query: self.query,
        });
        Store::relayed(
            Arc::clone(&objects) as Arc<dyn ObjectStore>,
            objects as Arc<dyn MultipartStore>,
            Arc::new(ReadOnly),
            format!("drainer+{}", self.api.base()),
            options,
        )
    }
}

/// The snapshot `selector` names in `listing`, or why there is none (the errors of a store).
pub fn choose(
    listing: &Listing,
    volume: &VolumeId,
    source: &str,
    selector: &SnapshotSelector,
) -> snapshot::Result<SnapshotSummary> {
    let volume_text = volume.to_string();
    let find = |id: &str| listing.snapshots.iter().find(|l| l.snapshot() == id);
    match selector {
        SnapshotSelector::Latest => listing
            .latest
            .as_deref()
            .and_then(find)
            .and_then(|l| l.complete().cloned())
            .ok_or_else(|| snapshot::Error::NoSnapshot {
                volume: volume_text,
                store: source.to_owned(),
            }),
        SnapshotSelector::Id(id) => match find(id.as_str()) {
            Some(Listed::Complete(summary)) => Ok(summary.clone()),
            Some(Listed::Damaged { damaged, .. }) => Err(snapshot::Error::Damaged {
                volume: volume_text,
                snapshot: id.to_string(),
                reason: damaged.clone(),
            }),
            None => Err(snapshot::Error::SnapshotNotFound {
                volume: volume_text,
                snapshot: id.to_string(),
                store: source.to_owned(),
            }),
        },
        SnapshotSelector::Before(time) => {
            snapshot::select::before(&volume_text, source, &listing.snapshots, *time)
        }
    }
}

/// The volume's objects through the API: reads only (ranged or whole, and heads).
#[derive(Debug)]
struct ApiObjects {
    api: Api,
    /// The volume's prefix in the drainer's store, which keys are relative to on the wire.
    prefix: String,
    /// Small reads on their way in batches (started at the first one).
    batches: OnceLock<Batcher<ReadRequest, BatchRead>>,
    /// Whether the drainer serves batches of reads (it has answered `404`/`405` if not).
    batches_served: AtomicBool,
    /// The query every request carries (see [`RemoteVolume`]).
    query: &'static str,
    /// Large reads straight from the store, where the drainer offers them.
    direct: DirectReads,
}

/// Large reads straight from the store, with URLs the drainer signs.
#[derive(Debug)]
struct DirectReads {
    /// The client for the store (`None` if it could not be built: every read is relayed).
    store: Option<reqwest::Client>,
    /// Whether the drainer offers them (cleared at its first refusal).
    offered: AtomicBool,
}

impl DirectReads {
    /// Direct reads whose connections and reads time out after `timeout` (a whole large
    /// body may take longer).
    fn new(timeout: Duration) -> Self {
        let store = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(timeout)
            .build()
            .ok();
        Self {
            offered: AtomicBool::new(store.is_some()),
            store,
        }
    }

    /// The store's answer to a read of `asked` (and the object's size), straight from the
    /// store with a URL the drainer signs; `None` to read through the drainer: it does not
    /// offer direct reads, or the store did not answer exactly what was asked.
    async fn read(
        &self,
        reads: &ObjectReads,
        query: &str,
        asked: &std::ops::Range<u64>,
    ) -> Option<(reqwest::Response, u64)> {
        let store = self.store.as_ref()?;
        if !self.offered.load(Ordering::Relaxed) {
            return None;
        }
        let url = format!("{}{query}", reads.api.url("/objects/url"));
        let key = [("key", reads.key.as_str())];
        let signed: SignedUrl = match reads.api.json(|http| http.get(&url).query(&key)).await {
            Ok(signed) => signed,
            Err(e) => {
                // 409: not offered; 404/405: a drainer older than direct reads.
                if matches!(e.status(), Some(404 | 405 | 409)) {
                    self.offered.store(false, Ordering::Relaxed);
                }
                tracing::debug!(key = %reads.key, error = %e, "reading through the drainer");
                return None;
            }
        };
        let range = range_header(&GetRange::Bounded(asked.clone()));
        let answer = store
            .get(&signed.url)
            .header(reqwest::header::RANGE, range)
            .send()
            .await;
        let refused = |why: String| {
            tracing::warn!(key = %reads.key, why, "the store did not answer a direct read; reading through the drainer");
            None
        };
        let response = match answer {
            Ok(response) if response.status().as_u16() == 206 => response,
            Ok(response) => return refused(format!("status {}", response.status())),
            Err(e) => return refused(e.to_string()),
        };
        let span = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        match span {
            Some((span, size)) if span == *asked => Some((response, size)),
            other => refused(format!("asked for {asked:?}, answered {other:?}")),
        }
    }
}

/// One read of a batch: what the drainer found, or why the whole batch failed.
type BatchRead = Result<ReadOutcome, BatchFailed>;

/// Why a whole batch of reads failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
struct BatchFailed {
    /// The status of the batch's answer, if there was one.
    status: Option<u16>,
    message: String,
}

impl std::fmt::Display for ApiObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiObjects({})", self.api.base())
    }
}

fn not_supported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what} through a drainer's restore API").into(),
    }
}

/// An API error as the store error it stands for: 404 not found, 401 and 403 refused, the
/// rest generic (whose transience the store's caller judges).
fn store_error(location: &Path, e: CallError) -> object_store::Error {
    let status = e.status();
    error_for(location, status, Box::new(e))
}

/// The store error of an answer with `status` (if any) about `location`.
fn error_for(
    location: &Path,
    status: Option<u16>,
    source: Box<dyn std::error::Error + Send + Sync>,
) -> object_store::Error {
    let path = location.to_string();
    match status {
        Some(404) => object_store::Error::NotFound { path, source },
        Some(401) => object_store::Error::Unauthenticated { path, source },
        Some(403) => object_store::Error::PermissionDenied { path, source },
        _ => object_store::Error::Generic {
            store: "drainer",
            source,
        },
    }
}

/// Sends one batch of reads (again, body and all, while the failure may pass); one result
/// per read, in order.
async fn send_read_batch(api: &Api, query: &str, reads: Vec<ReadRequest>) -> Vec<BatchRead> {
    let url = format!("{}{query}", api.url("/objects/batch"));
    let count = reads.len();
    let body = ReadBatch { reads };
    let answer = api.bytes(|http| http.post(&url).json(&body)).await;
    let outcomes = match answer {
        Ok(answer) => batch::decode_reads(answer, count).map_err(|why| BatchFailed {
            status: None,
            message: format!("the drainer answered a malformed batch: {why}"),
        }),
        Err(e) => Err(BatchFailed {
            status: e.status(),
            message: e.to_string(),
        }),
    };
    match outcomes {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(failed) => vec![Err(failed); count],
    }
}

/// The `Range` header of a ranged read.
fn range_header(range: &GetRange) -> String {
    match range {
        GetRange::Bounded(r) => format!("bytes={}-{}", r.start, r.end.saturating_sub(1)),
        GetRange::Offset(start) => format!("bytes={start}-"),
        GetRange::Suffix(n) => format!("bytes=-{n}"),
    }
}

/// `Content-Range: bytes START-END/SIZE` → (START..END+1, SIZE).
fn parse_content_range(value: &str) -> Option<(std::ops::Range<u64>, u64)> {
    let rest = value.strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end, size) = (
        start.parse().ok()?,
        end.parse::<u64>().ok()?,
        size.parse().ok()?,
    );
    (start <= end && end < size).then_some((start..end + 1, size))
}

impl ApiObjects {
    fn relative<'a>(&self, location: &'a Path) -> object_store::Result<&'a str> {
        location
            .as_ref()
            .strip_prefix(&self.prefix)
            .ok_or_else(|| object_store::Error::NotFound {
                path: location.to_string(),
                source: "not an object of this volume".into(),
            })
    }

    /// What a read of `location` needs, owned (a body that breaks off is asked for again
    /// from a stream that outlives the call).
    fn reads(&self, location: &Path) -> ObjectReads {
        ObjectReads {
            api: self.api.clone(),
            url: format!("{}{}", self.api.url("/objects"), self.query),
            key: self.relative(location).unwrap_or_default().to_owned(),
            location: location.clone(),
        }
    }

    fn result(
        location: &Path,
        range: std::ops::Range<u64>,
        size: u64,
        payload: GetResultPayload,
    ) -> GetResult {
        GetResult {
            payload,
            meta: ObjectMeta {
                location: location.clone(),
                last_modified: chrono::Utc::now(),
                size,
                e_tag: None,
                version: None,
            },
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        }
    }

    /// A small ranged read in the next batch; `None` if this drainer serves no batches.
    async fn batched(
        &self,
        location: &Path,
        range: std::ops::Range<u64>,
    ) -> Option<object_store::Result<GetResult>> {
        let key = self.relative(location).ok()?.to_owned();
        let batches = self.batches.get_or_init(|| {
            let (api, query) = (self.api.clone(), self.query);
            Batcher::start(batch::MAX_OBJECTS, READ_BATCHES_IN_FLIGHT, move |reads| {
                let api = api.clone();
                async move { send_read_batch(&api, query, reads).await }
            })
        });
        let read = ReadRequest {
            key,
            start: range.start,
            end: range.end,
        };
        let outcome = batches.submit(read).await.unwrap_or_else(|| {
            Err(BatchFailed {
                status: None,
                message: "the batch sender stopped".into(),
            })
        });
        let fail = |status, why: String| Some(Err(error_for(location, status, why.into())));
        let (size, bytes) = match outcome {
            Ok(ReadOutcome::Data { size, bytes }) => (size, bytes),
            Ok(ReadOutcome::NotFound(why)) => return fail(Some(404), why),
            Ok(ReadOutcome::Failed(why)) => return fail(None, why),
            Err(e) if matches!(e.status, Some(404 | 405)) => {
                self.batches_served.store(false, Ordering::Relaxed);
                return None;
            }
            Err(e) => return fail(e.status, e.message),
        };
        let span = range.start..range.start + bytes.len() as u64;
        let stream = futures::stream::once(async move { Ok::<Bytes, object_store::Error>(bytes) });
        Some(Ok(Self::result(
            location,
            span,
            size,
            GetResultPayload::Stream(stream.boxed()),
        )))
    }

    /// A ranged read, whose body goes on where it broke off ([`ObjectReads::resuming`]).
    async fn ranged(&self, location: &Path, range: &GetRange) -> object_store::Result<GetResult> {
        let reads = self.reads(location);
        if let GetRange::Bounded(asked) = range
            && let Some((response, size)) = self.direct.read(&reads, self.query, asked).await
        {
            let body = reads.resuming(response, asked.clone(), size);
            return Ok(Self::result(
                location,
                asked.clone(),
                size,
                GetResultPayload::Stream(body),
            ));
        }
        let (response, span, size) = reads
            .send(Some(range), false)
            .await
            .map_err(|e| store_error(location, e))?;
        let body = reads.resuming(response, span.clone(), size);
        Ok(Self::result(
            location,
            span,
            size,
            GetResultPayload::Stream(body),
        ))
    }
}

/// Broken-off bodies of one ranged read asked for again, at most.
const RESUMES: u32 = 8;

/// The reads of one object: the client, the route and the object's key.
#[derive(Clone)]
struct ObjectReads {
    api: Api,
    url: String,
    /// The key relative to the volume, as the route takes it.
    key: String,
    /// The store key, for errors.
    location: Path,
}

impl ObjectReads {
    /// Sends a read of `range` (all of the object when `None`; only the headers when `head`),
    /// again while it may pass; returns the answer, the span it holds and the object's size.
    async fn send(
        &self,
        range: Option<&GetRange>,
        head: bool,
    ) -> Result<(reqwest::Response, std::ops::Range<u64>, u64), CallError> {
        let range = range.map(range_header);
        let response = self
            .api
            .call(|http| {
                let request = if head {
                    http.head(&self.url)
                } else {
                    http.get(&self.url)
                };
                let request = request.query(&[("key", self.key.as_str())]);
                match &range {
                    Some(range) => request.header(reqwest::header::RANGE, range),
                    None => request,
                }
            })
            .await?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let length: u64 = header(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (span, size) = match header(reqwest::header::CONTENT_RANGE) {
            Some(value) if response.status().as_u16() == 206 => {
                parse_content_range(&value).unwrap_or((0..length, length))
            }
            _ => (0..length, length),
        };
        Ok((response, span, size))
    }

    /// The body of a new read of `rest`, the bytes of an object of `size` bytes not received
    /// yet.
    async fn rest(
        &self,
        rest: std::ops::Range<u64>,
        size: u64,
    ) -> object_store::Result<BoxStream<'static, reqwest::Result<Bytes>>> {
        let asked = GetRange::Bounded(rest.clone());
        let answer = self.send(Some(&asked), false).await;
        let (response, span, answered_size) = answer.map_err(|e| store_error(&self.location, e))?;
        if span != rest || answered_size != size {
            let why = format!(
                "asked again for bytes {}..{} of {size} bytes, the drainer answered bytes \
                 {}..{} of {answered_size}",
                rest.start, rest.end, span.start, span.end
            );
            return Err(error_for(&self.location, None, why.into()));
        }
        Ok(response.bytes_stream().boxed())
    }

    /// The body of `first`, the answer to a ranged read of `span` of an object of `size`
    /// bytes, as it arrives. When it breaks off midway, the rest (from the first byte not
    /// received) is asked for again, at most [`RESUMES`] times, each with the client's
    /// retries; an answer for another span or size is an error. The bytes are never gathered:
    /// a restore writes them as they come.
    fn resuming(
        self,
        first: reqwest::Response,
        span: std::ops::Range<u64>,
        size: u64,
    ) -> BoxStream<'static, object_store::Result<Bytes>> {
        let state = Resuming {
            body: first.bytes_stream().boxed(),
            next: span.start,
            end: span.end,
            size,
            resumes: 0,
            reads: self,
        };
        futures::stream::try_unfold(state, |mut state| async move {
            loop {
                match state.body.next().await {
                    Some(Ok(piece)) => {
                        state.next += piece.len() as u64;
                        return Ok(Some((piece, state)));
                    }
                    None => return Ok(None),
                    Some(Err(e)) if state.next < state.end && state.resumes < RESUMES => {
                        state.resumes += 1;
                        tracing::warn!(key = %state.reads.key, at = state.next, error = %e,
                            "a ranged read broke off; asking for the rest");
                        let rest = state.next..state.end;
                        state.body = state.reads.rest(rest, state.size).await?;
                    }
                    Some(Err(e)) => {
                        let url = state.reads.url.clone();
                        let e = CallError::Transport { url, source: e };
                        return Err(store_error(&state.reads.location, e));
                    }
                }
            }
        })
        .boxed()
    }
}

/// A ranged read's body on its way: where it has got to and what it must end with.
struct Resuming {
    reads: ObjectReads,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    next: u64,
    end: u64,
    size: u64,
    resumes: u32,
}

#[async_trait::async_trait]
impl ObjectStore for ApiObjects {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(not_supported("writing"))
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(not_supported("writing"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.relative(location)?;
        if let (Some(GetRange::Bounded(range)), false) = (&options.range, options.head)
            && range.end.saturating_sub(range.start) <= batch::SMALL_OBJECT as u64
            && self.batches_served.load(Ordering::Relaxed)
            && let Some(read) = self.batched(location, range.clone()).await
        {
            return read;
        }
        if let (Some(range), false) = (&options.range, options.head) {
            return self.ranged(location, range).await;
        }
        let (response, range, size) = self
            .reads(location)
            .send(options.range.as_ref(), options.head)
            .await
            .map_err(|e| store_error(location, e))?;
        let stream = response
            .bytes_stream()
            .map_err(|e| object_store::Error::Generic {
                store: "drainer",
                source: Box::new(e),
            })
            .boxed();
        Ok(Self::result(
            location,
            range,
            size,
            GetResultPayload::Stream(stream),
        ))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| Err(not_supported("deleting"))).boxed()
    }

    fn list(&self, _prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        futures::stream::once(async { Err(not_supported("listing")) }).boxed()
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&Path>,
    ) -> object_store::Result<ListResult> {
        Err(not_supported("listing"))
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: ObjectCopyOptions,
    ) -> object_store::Result<()> {
        Err(not_supported("copying"))
    }
}

#[async_trait::async_trait]
impl MultipartStore for ApiObjects {
    async fn create_multipart(&self, _location: &Path) -> object_store::Result<MultipartId> {
        Err(not_supported("writing"))
    }

    async fn put_part(
        &self,
        _location: &Path,
        _id: &MultipartId,
        _part_idx: usize,
        _data: PutPayload,
    ) -> object_store::Result<PartId> {
        Err(not_supported("writing"))
    }

    async fn complete_multipart(
        &self,
        _location: &Path,
        _id: &MultipartId,
        _parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        Err(not_supported("writing"))
    }

    async fn abort_multipart(
        &self,
        _location: &Path,
        _id: &MultipartId,
    ) -> object_store::Result<()> {
        Err(not_supported("writing"))
    }
}

/// Nothing is written through a restore's store, so there is nothing to flush.
struct ReadOnly;

#[async_trait::async_trait]
impl Barrier for ReadOnly {
    async fn flush(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A restore through a drainer's API (`drainer restore --drainer`): the snapshot is chosen
/// from the volume's listing, then restored by the engine from the drainer's store as the API
/// serves it, each request bounded by `timeout`.
pub async fn restore(
    remote: &RemoteVolume,
    selector: &SnapshotSelector,
    dest: &std::path::Path,
    options: &snapshot::RestoreOptions,
    timeout: Duration,
) -> anyhow::Result<snapshot::RestoreSummary> {
    let progress = snapshot::Progress::default();
    restore_with_progress(remote, selector, dest, options, timeout, &progress).await
}

/// [`restore`], counting the files and bytes in place into `progress` against the
/// snapshot's totals (`kubectl drainer restore` draws them as a bar).
pub async fn restore_with_progress(
    remote: &RemoteVolume,
    selector: &SnapshotSelector,
    dest: &std::path::Path,
    options: &snapshot::RestoreOptions,
    timeout: Duration,
    progress: &snapshot::Progress,
) -> anyhow::Result<snapshot::RestoreSummary> {
    let volume = &remote.volume;
    let selector = match selector {
        SnapshotSelector::Id(id) => SnapshotSelector::Id(id.clone()),
        other => {
            let summary = remote.resolve(other).await?;
            SnapshotSelector::Id(summary.snapshot.parse().map_err(anyhow::Error::msg)?)
        }
    };
    let store = remote.store(&StoreOptions {
        timeout,
        create: false,
        part_size: options.part_size,
    });
    let summary =
        snapshot::restore_with_progress(&store, volume, &selector, dest, options, progress).await?;
    report_restored(remote, &summary.snapshot).await;
    Ok(summary)
}

/// Tells drainer the restore of `snapshot` is done (what lets a reclaimed claim's pinned
/// snapshot go once the claim is drained again). Best effort: the files are in place
/// whatever the answer, and a report that does not arrive only keeps that pin.
async fn report_restored(remote: &RemoteVolume, snapshot: &str) {
    if remote.query == EARLIER {
        // An earlier namespace's snapshot, read by an operator: nothing of this life.
        return;
    }
    match remote.report_restored(snapshot).await {
        Ok(recorded) => {
            tracing::debug!(volume = %remote.volume, %snapshot, recorded, "restore reported")
        }
        Err(e) => {
            tracing::warn!(volume = %remote.volume, %snapshot, error = %e, "cannot report the restore to drainer; a reclaimed claim's snapshot stays pinned")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read_and_written_as_http_says() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0..10, 100)));
        assert_eq!(parse_content_range("bytes 90-99/100"), Some((90..100, 100)));
        assert_eq!(parse_content_range("bytes 90-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(range_header(&GetRange::Bounded(0..10)), "bytes=0-9");
        assert_eq!(range_header(&GetRange::Offset(5)), "bytes=5-");
        assert_eq!(range_header(&GetRange::Suffix(5)), "bytes=-5");
    }

    /// The objects of the volume `ns/pvc` on a drainer made of `app`.
    async fn objects_on(app: axum::Router) -> ApiObjects {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!(
            "http://{}/v1/volumes/ns/pvc",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let timeout = Duration::from_secs(10);
        ApiObjects {
            api: Api::new(&base, "token".into(), timeout, timeout, Vec::new()).unwrap(),
            prefix: "volumes/ns/pvc/".into(),
            batches: OnceLock::new(),
            batches_served: AtomicBool::new(true),
            query: "",
            direct: DirectReads::new(timeout),
        }
    }

    /// `bytes=START-END` → START..END+1.
    fn asked_range(headers: &axum::http::HeaderMap) -> std::ops::Range<usize> {
        let range = headers["range"].to_str().unwrap();
        let (start, end) = range["bytes=".len()..].split_once('-').unwrap();
        start.parse().unwrap()..end.parse::<usize>().unwrap() + 1
    }

    /// A `206` answer holding `span` of `data`, whose body breaks off after `cut` bytes if
    /// given (its `Content-Length` still promises the whole span).
    fn partial(
        data: &[u8],
        span: std::ops::Range<usize>,
        cut: Option<usize>,
    ) -> axum::response::Response {
        let content_range = format!("bytes {}-{}/{}", span.start, span.end - 1, data.len());
        let length = span.len();
        let sent = Bytes::copy_from_slice(&data[span.start..span.start + cut.unwrap_or(length)]);
        let mut pieces = vec![Ok(sent)];
        if cut.is_some() {
            pieces.push(Err(std::io::Error::other("the drainer stopped")));
        }
        // The failure comes once the bytes before it have been sent.
        let pieces = futures::stream::iter(pieces).then(|piece| async move {
            if piece.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            piece
        });
        axum::response::Response::builder()
            .status(206)
            .header("content-range", content_range)
            .header("content-length", length)
            .body(axum::body::Body::from_stream(pieces))
            .unwrap()
    }

    /// A drainer of before the batch route: its `404` turns batches off, and every small read
    /// is one request of its own, with the same bytes.
    #[tokio::test]
    async fn a_drainer_without_batches_is_read_one_object_at_a_time() {
        async fn object(headers: axum::http::HeaderMap) -> axum::response::Response {
            partial(b"hello world", asked_range(&headers), None)
        }
        let app =
            axum::Router::new().route("/v1/volumes/ns/pvc/objects", axum::routing::get(object));
        let objects = objects_on(app).await;
        let key = Path::from("volumes/ns/pvc/snapshots/s/files/a");
        for (range, expected) in [(2..7, "llo w"), (0..5, "hello")] {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..GetOptions::default()
            };
            let got = objects.get_opts(&key, options).await.unwrap();
            assert_eq!(got.meta.size, 11);
            assert_eq!(got.bytes().await.unwrap(), expected.as_bytes());
            assert!(!objects.batches_served.load(Ordering::Relaxed));
        }
    }

    /// How a test drainer answers ranged reads: the first `breaks` answers break off halfway;
    /// with `wrong_span`, an answer to a resumed read holds the whole object instead.
    struct Flaky {
        data: Vec<u8>,
        breaks: std::sync::atomic::AtomicUsize,
        wrong_span: bool,
        asked: std::sync::Mutex<Vec<std::ops::Range<usize>>>,
    }

    /// Reads bytes 1000.. of a 1 MiB object from a drainer answering as `flaky` says; returns
    /// what the read gave and the ranges the drainer was asked for.
    async fn read_from(flaky: Flaky) -> (object_store::Result<Bytes>, Vec<std::ops::Range<usize>>) {
        async fn object(
            axum::extract::State(flaky): axum::extract::State<Arc<Flaky>>,
            headers: axum::http::HeaderMap,
        ) -> axum::response::Response {
            let mut span = asked_range(&headers);
            flaky.asked.lock().unwrap().push(span.clone());
            let resumed = flaky.asked.lock().unwrap().len() > 1;
            if resumed && flaky.wrong_span {
                span = 0..flaky.data.len();
            }
            let breaks = flaky.breaks.load(Ordering::SeqCst);
            flaky
                .breaks
                .store(breaks.saturating_sub(1), Ordering::SeqCst);
            let cut = (breaks > 0).then_some(span.len() / 2);
            partial(&flaky.data, span, cut)
        }
        let flaky = Arc::new(flaky);
        let app = axum::Router::new()
            .route("/v1/volumes/ns/pvc/objects", axum::routing::get(object))
            .with_state(Arc::clone(&flaky));
        let objects = objects_on(app).await;
        let key = Path::from("volumes/ns/pvc/snapshots/s/files/a");
        let options = GetOptions {
            range: Some(GetRange::Bounded(1000..flaky.data.len() as u64)),
            ..GetOptions::default()
        };
        let got = match objects.get_opts(&key, options).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let asked = flaky.asked.lock().unwrap().clone();
        (got, asked)
    }

    fn flaky(breaks: usize, wrong_span: bool) -> Flaky {
        Flaky {
            data: (0..1 << 20).map(|i: u32| (i % 251) as u8).collect(),
            breaks: breaks.into(),
            wrong_span,
            asked: Default::default(),
        }
    }

    /// A ranged read whose body breaks off goes on from the first byte not received, as
    /// often as it breaks (within [`RESUMES`]), and gives exactly the range's bytes.
    #[tokio::test]
    async fn a_ranged_read_that_breaks_off_goes_on_where_it_stopped() {
        let whole = 1000..1 << 20;
        let mut expected_asks = Vec::new();
        expected_asks.push(whole);
        for breaks in 0..4 {
            let (got, asked) = read_from(flaky(breaks, false)).await;
            assert_eq!(
                got.unwrap(),
                flaky(0, false).data[1000..],
                "{breaks} breaks"
            );
            assert_eq!(asked, expected_asks);
            let last = expected_asks.last().unwrap();
            expected_asks.push(last.start + last.len() / 2..last.end);
        }
    }

    /// A read that breaks off more often than [`RESUMES`], or whose resumption answers other
    /// bytes than asked for, fails with a message that says so.
    #[tokio::test]
    async fn a_ranged_read_that_cannot_go_on_fails() {
        let (got, asked) = read_from(flaky(RESUMES as usize + 1, false)).await;
        assert!(got.is_err());
        assert_eq!(asked.len(), RESUMES as usize + 1);
        let (got, asked) = read_from(flaky(1, true)).await;
        let message = got.unwrap_err().to_string();
        assert!(
            message.contains("the drainer answered bytes 0..1048576"),
            "{message}"
        );
        assert_eq!(asked.len(), 2);
    }
}
