//! `drainer mover`: streams a volume to the drainer over HTTP. It runs the same snapshot
//! engine as `drainer copy`, but its store and its checkpoints are the drainer's, reached
//! through the drain's API: the mover holds no storage credentials and no database, and may
//! write only under its own drain's volume. A killed mover that starts again resumes from what
//! the drainer has recorded.
//!
//! Client side only; the drainer's endpoints live in `http::mover`.

use crate::config::MoverArgs;
use crate::ledger;
use crate::object_batch;
use crate::snapshot::manifest::Content;
use crate::snapshot::{self, Checkpoint, Progress, Run, SnapshotId, SnapshotSummary, StoredFile};
use crate::store::{Barrier, Store, StoreOptions};
use crate::volume::VolumeId;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use futures::{FutureExt, TryFutureExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions as ObjectCopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartId, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, UploadPart,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A file stored by a run, as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStoredFile {
    /// The path, base64.
    pub path_b64: String,
    /// Size.
    pub size: u64,
    /// Modification time.
    pub mtime_ns: i64,
    /// Change time.
    pub ctime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// Content hash.
    pub blake3: String,
    /// Object key relative to the volume.
    pub object: String,
}

impl From<&StoredFile> for WireStoredFile {
    fn from(f: &StoredFile) -> Self {
        Self {
            path_b64: BASE64.encode(&f.path),
            size: f.size,
            mtime_ns: f.mtime_ns,
            ctime_ns: f.ctime_ns,
            ino: f.ino,
            blake3: f.content.blake3.clone(),
            object: f.content.object.clone(),
        }
    }
}

impl TryFrom<WireStoredFile> for StoredFile {
    type Error = base64::DecodeError;

    fn try_from(w: WireStoredFile) -> Result<Self, Self::Error> {
        Ok(Self {
            path: BASE64.decode(w.path_b64)?,
            size: w.size,
            mtime_ns: w.mtime_ns,
            ctime_ns: w.ctime_ns,
            ino: w.ino,
            content: Content {
                blake3: w.blake3,
                object: w.object,
            },
        })
    }
}

/// A run as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRun {
    /// Run id.
    pub id: String,
    /// Snapshot id.
    pub snapshot: String,
    /// Resumed?
    pub resumed: bool,
}

/// The drain's API, as the mover uses it.
#[derive(Debug, Clone)]
struct DrainApi {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl DrainApi {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let response = request
            .bearer_auth(&self.token)
            .header(crate::http::OWNER_HEADER, ledger::process_owner())
            .send()
            .await
            .map_err(|e| format!("cannot reach the drainer: {e}"))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            let status = response.status();
            Err(format!(
                "drainer answered {status}: {}",
                response.text().await.unwrap_or_default()
            ))
        }
    }
}

fn remote_ledger_error(op: &'static str, message: String) -> ledger::Error {
    ledger::Error::Query {
        op,
        source: sqlx::Error::Protocol(message),
    }
}

/// Checkpoints kept by the drainer.
struct RemoteCheckpoint {
    api: DrainApi,
}

impl RemoteCheckpoint {
    /// Posts `body` to the run's `action` endpoint (`record`, `finish`, `interrupted`).
    async fn post_run(
        &self,
        run: &Run,
        action: &str,
        body: &impl Serialize,
        op: &'static str,
    ) -> ledger::Result<()> {
        let url = self.api.url(&format!("/run/{}/{action}", run.id));
        self.api
            .send(self.api.client.post(url).json(body))
            .await
            .map(drop)
            .map_err(|e| remote_ledger_error(op, e))
    }
}

#[async_trait::async_trait]
impl Checkpoint for RemoteCheckpoint {
    async fn begin(
        &self,
        _store: &str,
        _volume: &VolumeId,
        _fresh: &SnapshotId,
    ) -> ledger::Result<Run> {
        let response = self
            .api
            .send(self.api.client.post(self.api.url("/run")))
            .await;
        let run: WireRun = match response {
            Ok(r) => r
                .json()
                .await
                .map_err(|e| remote_ledger_error("begin run", e.to_string()))?,
            Err(e) => return Err(remote_ledger_error("begin run", e)),
        };
        Ok(Run {
            id: run.id,
            snapshot: run
                .snapshot
                .parse()
                .map_err(|e: String| remote_ledger_error("begin run", e))?,
            resumed: run.resumed,
        })
    }

    fn stored_files<'a>(&'a self, run: &'a Run) -> BoxStream<'a, ledger::Result<StoredFile>> {
        let request = self
            .api
            .client
            .get(self.api.url(&format!("/run/{}/stored", run.id)));
        async move {
            let response = self
                .api
                .send(request)
                .await
                .map_err(|e| remote_ledger_error("read progress", e))?;
            let body = response.bytes_stream().map_err(std::io::Error::other);
            let reader = tokio::io::BufReader::new(tokio_util::io::StreamReader::new(body));
            let lines = tokio_stream_lines(reader);
            Ok::<_, ledger::Error>(lines.map(|line| {
                let line = line.map_err(|e| remote_ledger_error("read progress", e.to_string()))?;
                let wire: WireStoredFile = serde_json::from_str(&line)
                    .map_err(|e| remote_ledger_error("read progress", e.to_string()))?;
                StoredFile::try_from(wire)
                    .map_err(|e| remote_ledger_error("read progress", e.to_string()))
            }))
        }
        .try_flatten_stream()
        .boxed()
    }

    async fn record(&self, run: &Run, files: &[StoredFile]) -> ledger::Result<()> {
        let wire: Vec<WireStoredFile> = files.iter().map(WireStoredFile::from).collect();
        self.post_run(run, "record", &wire, "record progress").await
    }

    /// A record of nothing renews the run's lease on the drainer.
    async fn renew(&self, run: &Run) -> ledger::Result<()> {
        let nothing: [WireStoredFile; 0] = [];
        self.post_run(run, "record", &nothing, "renew run").await
    }

    async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> ledger::Result<()> {
        self.post_run(run, "finish", summary, "finish run").await
    }

    async fn interrupted(&self, run: &Run, error: &str) -> ledger::Result<()> {
        self.post_run(
            run,
            "interrupted",
            &serde_json::json!({ "error": error }),
            "note error",
        )
        .await
    }
}

fn tokio_stream_lines<R: tokio::io::AsyncBufRead + Send + Unpin + 'static>(
    reader: R,
) -> BoxStream<'static, std::io::Result<String>> {
    use tokio::io::AsyncBufReadExt;
    futures::stream::try_unfold(reader.lines(), |mut lines| async move {
        Ok(lines.next_line().await?.map(|line| (line, lines)))
    })
    .boxed()
}

/// The drainer's store, as seen through the drain's API.
#[derive(Debug)]
struct RelayedStore {
    api: DrainApi,
    batches: PutBatches,
}

/// A small object waiting to travel in a batch, and where its outcome goes.
#[derive(Debug)]
struct PendingPut {
    key: String,
    data: Bytes,
    stored: oneshot::Sender<Result<(), String>>,
}

/// Small objects travel together: while [`BATCHES_IN_FLIGHT`] batches are on their way, the
/// puts that arrive wait and leave together in the next one (one request instead of dozens).
#[derive(Debug, Clone)]
struct PutBatches {
    queue: mpsc::Sender<PendingPut>,
}

/// Batches of small objects on their way at once.
const BATCHES_IN_FLIGHT: usize = 2;

impl PutBatches {
    fn start(api: DrainApi) -> Self {
        let (queue, pending) = mpsc::channel(object_batch::MAX_OBJECTS * BATCHES_IN_FLIGHT);
        tokio::spawn(send_batches(api, pending));
        Self { queue }
    }

    async fn put(&self, key: &Path, data: Bytes) -> object_store::Result<()> {
        let (stored, outcome) = oneshot::channel();
        let pending = PendingPut {
            key: key.to_string(),
            data,
            stored,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| store_error("the batch sender stopped"))?;
        outcome
            .await
            .map_err(|_| store_error("the batch sender stopped"))?
            .map_err(store_error)
    }
}

async fn send_batches(api: DrainApi, mut pending: mpsc::Receiver<PendingPut>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("never closed");
        let mut batch = Vec::with_capacity(object_batch::MAX_OBJECTS);
        if pending
            .recv_many(&mut batch, object_batch::MAX_OBJECTS)
            .await
            == 0
        {
            return;
        }
        let api = api.clone();
        tokio::spawn(async move {
            let outcome = send_batch(&api, &batch).await;
            drop(slot);
            for (put, result) in batch.into_iter().zip(outcome) {
                let _ = put.stored.send(result);
            }
        });
    }
}

/// Sends one batch; one outcome per object.
async fn send_batch(api: &DrainApi, batch: &[PendingPut]) -> Vec<Result<(), String>> {
    let body = object_batch::encode(batch.iter().map(|p| (p.key.as_str(), p.data.as_ref())));
    let request = api.client.post(api.url("/objects/batch")).body(body);
    let answer = match api.send(request).await {
        Ok(response) => response
            .json::<BatchAnswer>()
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) if answer.errors.len() == batch.len() => answer
            .errors
            .into_iter()
            .map(|e| e.map_or(Ok(()), Err))
            .collect(),
        Ok(_) => vec![Err("the drainer answered a different batch".into()); batch.len()],
        Err(e) => vec![Err(e); batch.len()],
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    errors: Vec<Option<String>>,
}

impl std::fmt::Display for RelayedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayedStore({})", self.api.base)
    }
}

fn store_error(e: impl ToString) -> object_store::Error {
    object_store::Error::Generic {
        store: "drainer",
        source: e.to_string().into(),
    }
}

fn not_supported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what} through a drainer relay").into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for RelayedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let body: Bytes = payload.into();
        if body.len() <= object_batch::SMALL_OBJECT {
            self.batches.put(location, body).await?;
        } else {
            let request = self
                .api
                .client
                .put(self.api.url("/objects"))
                .query(&[("key", location.as_ref())])
                .body(body);
            self.api.send(request).await.map_err(store_error)?;
        }
        Ok(crate::store::stored())
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let request = self
            .api
            .client
            .post(self.api.url("/uploads"))
            .query(&[("key", location.as_ref())]);
        let response = self.api.send(request).await.map_err(store_error)?;
        let created: serde_json::Value = response.json().await.map_err(store_error)?;
        let upload = created["upload"]
            .as_str()
            .ok_or_else(|| store_error("no upload id"))?
            .to_owned();
        Ok(Box::new(RelayedUpload {
            api: self.api.clone(),
            upload,
            next: 0,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.range.is_some() || options.head {
            return Err(not_supported("ranged or head reads"));
        }
        let request = self
            .api
            .client
            .get(self.api.url("/objects"))
            .query(&[("key", location.as_ref())]);
        let response = request
            .bearer_auth(&self.api.token)
            .send()
            .await
            .map_err(store_error)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "not in the drainer's store".into(),
            });
        }
        if !response.status().is_success() {
            return Err(store_error(format!(
                "drainer answered {}",
                response.status()
            )));
        }
        let size = response.content_length().unwrap_or(0);
        let stream = response.bytes_stream().map_err(store_error).boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta: ObjectMeta {
                location: location.clone(),
                last_modified: chrono::Utc::now(),
                size,
                e_tag: None,
                version: None,
            },
            range: 0..size,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let api = self.api.clone();
        locations
            .and_then(move |location| {
                let api = api.clone();
                async move {
                    let request = api
                        .client
                        .delete(api.url("/objects"))
                        .query(&[("key", location.as_ref())]);
                    api.send(request).await.map_err(store_error)?;
                    Ok(location)
                }
            })
            .boxed()
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

impl RelayedStore {
    fn upload_url(&self, upload: &str, rest: &str) -> String {
        self.api.url(&format!("/uploads/{upload}{rest}"))
    }
}

/// Part by part, with explicit indexes: what the engine uses for large files, writing several
/// parts of a file at once and flushing every few.
#[async_trait::async_trait]
impl MultipartStore for RelayedStore {
    async fn create_multipart(&self, location: &Path) -> object_store::Result<MultipartId> {
        let request = self
            .api
            .client
            .post(self.api.url("/uploads"))
            .query(&[("key", location.as_ref())]);
        let response = self.api.send(request).await.map_err(store_error)?;
        let created: serde_json::Value = response.json().await.map_err(store_error)?;
        created["upload"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| store_error("no upload id"))
    }

    async fn put_part(
        &self,
        _location: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let body: Bytes = data.into();
        let url = self.upload_url(id, &format!("/{part_idx}"));
        self.api
            .send(self.api.client.put(url).body(body))
            .await
            .map_err(store_error)?;
        Ok(PartId {
            content_id: part_idx.to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        _location: &Path,
        id: &MultipartId,
        _parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        let request = self.api.client.post(self.upload_url(id, "/complete"));
        self.api.send(request).await.map_err(store_error)?;
        Ok(crate::store::stored())
    }

    async fn abort_multipart(
        &self,
        _location: &Path,
        id: &MultipartId,
    ) -> object_store::Result<()> {
        let request = self.api.client.delete(self.upload_url(id, ""));
        self.api.send(request).await.map(drop).map_err(store_error)
    }
}

/// A multipart upload relayed to the drainer. Each part carries its index, so several travel
/// at once; the drainer writes each at its place in its own upload.
struct RelayedUpload {
    api: DrainApi,
    upload: String,
    next: usize,
}

impl std::fmt::Debug for RelayedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayedUpload({})", self.upload)
    }
}

#[async_trait::async_trait]
impl MultipartUpload for RelayedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let api = self.api.clone();
        let url = self
            .api
            .url(&format!("/uploads/{}/{}", self.upload, self.next));
        self.next += 1;
        async move {
            let body: Bytes = data.into();
            api.send(api.client.put(url).body(body))
                .await
                .map(drop)
                .map_err(store_error)
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let request = self
            .api
            .client
            .post(self.api.url(&format!("/uploads/{}/complete", self.upload)));
        self.api.send(request).await.map_err(store_error)?;
        Ok(crate::store::stored())
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let request = self
            .api
            .client
            .delete(self.api.url(&format!("/uploads/{}", self.upload)));
        self.api.send(request).await.map(drop).map_err(store_error)
    }
}

/// The durability barrier is the drainer's: it flushes its store.
struct RelayedBarrier {
    api: DrainApi,
}

#[async_trait::async_trait]
impl Barrier for RelayedBarrier {
    async fn flush(&self) -> Result<(), String> {
        self.api
            .send(self.api.client.post(self.api.url("/flush")))
            .await
            .map(drop)
    }
}

#[derive(Deserialize)]
struct StoreInfo {
    part_size: u64,
}

#[derive(Deserialize)]
struct DrainInfo {
    volume: String,
    state: String,
}

/// Runs `drainer mover`.
pub async fn run(args: MoverArgs) -> anyhow::Result<()> {
    snapshot::check_source(&args.source)?;
    let token = args.drainer.token()?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(args.engine.store_timeout)
        .build()?;
    let base = format!(
        "{}/v1/drains/{}",
        args.drainer.url.trim_end_matches('/'),
        args.drain
    );
    let api = DrainApi {
        client,
        base: base.clone(),
        token,
    };
    let info: DrainInfo = api
        .send(api.client.get(base.clone()))
        .await
        .map_err(anyhow::Error::msg)?
        .json()
        .await?;
    if info.state != "copying" {
        anyhow::bail!(
            "drain {} is {}, not copying: nothing to stream",
            args.drain,
            info.state
        );
    }
    let volume: VolumeId = info.volume.parse()?;
    // Parts are written at their index in the drainer's store: they must have its part size.
    let store_info: StoreInfo = api
        .send(api.client.get(api.url("/store")))
        .await
        .map_err(anyhow::Error::msg)?
        .json()
        .await?;
    if !snapshot::part_hash::is_valid_part_size(store_info.part_size) {
        anyhow::bail!(
            "the drainer writes parts of {} bytes, which a mover cannot hash part by part",
            store_info.part_size
        );
    }
    let mut options = args.engine.copy_options(false);
    options.concurrency = args
        .engine
        .concurrency
        .unwrap_or(crate::config::DEFAULT_MOVER_CONCURRENCY)
        .into();
    if options.part_size != store_info.part_size {
        tracing::info!(
            part_size = store_info.part_size,
            "using the drainer's part size for large files"
        );
        options.part_size = store_info.part_size;
    }
    let store_options = StoreOptions {
        timeout: args.engine.store_timeout,
        create: false,
        part_size: store_info.part_size,
    };
    let relay = Arc::new(RelayedStore {
        api: api.clone(),
        batches: PutBatches::start(api.clone()),
    });
    let store = Store::relayed(
        Arc::clone(&relay) as Arc<dyn ObjectStore>,
        relay as Arc<dyn MultipartStore>,
        Arc::new(RelayedBarrier { api: api.clone() }),
        format!("drainer+{base}"),
        &store_options,
    );
    let checkpoint = RemoteCheckpoint { api };
    let summary = snapshot::copy(
        &args.source,
        &store,
        &volume,
        &checkpoint,
        &options,
        Arc::new(Progress::default()),
    )
    .await?;
    println!("mover: {summary}");
    Ok(())
}
