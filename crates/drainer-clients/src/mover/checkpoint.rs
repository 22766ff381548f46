//! Checkpoints kept by the drainer: the mover's copy records its progress, its unfinished
//! uploads and its end through the drain's API, into the drainer's ledger.

use super::direct::{DirectParts, send_reports};
use crate::client::{Api, CallError};
use drainer_core::protocol::{
    Interrupted, PathParam, RunPartial, RunTotals, WirePartial, WireRun, WireStoredFile,
};
use drainer_core::snapshot::{
    Checkpoint, CheckpointError, CheckpointResult, PartialUpload, Progress, Run, SnapshotId,
    SnapshotSummary, StoredFile,
};
use drainer_core::store::Store;
use drainer_core::volume::VolumeId;
use futures::TryFutureExt;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The drainer's ledger, reached through the drain's API.
pub(super) struct RemoteCheckpoint {
    pub(super) api: Api,
    /// The copy's progress, whose totals the drainer is told once the copy has counted them.
    pub(super) progress: Arc<Progress>,
    /// Whether the totals are told (or being waited for) already.
    pub(super) totals_told: AtomicBool,
    /// Parts straight into the store, if the drainer offers them: their reports go with the
    /// record of an upload's progress.
    pub(super) direct: Option<Arc<DirectParts>>,
    /// Whether the drainer records an upload's progress with the barrier's report of parts
    /// (`StoreInfo::parts_with_progress`): one request instead of two.
    pub(super) parts_with_progress: bool,
}

/// An answer the mover cannot use (a malformed body): not going away by itself.
fn remote_error(op: &'static str, error: impl ToString) -> CheckpointError {
    CheckpointError::permanent(op, error.to_string())
}

/// A failed call: transient for 5xx answers, timeouts and connection errors (the client has
/// already retried them, boundedly), permanent for 4xx.
fn call_error(op: &'static str) -> impl Fn(CallError) -> CheckpointError {
    move |e| {
        if e.is_transient() {
            CheckpointError::transient(op, e)
        } else {
            CheckpointError::permanent(op, e)
        }
    }
}

impl RemoteCheckpoint {
    /// Tells the drainer the size of the volume once the copy has counted it, once, so that it
    /// shows the copy against its total. Nothing else depends on it: a failure (a drainer too
    /// old for the call, say) is logged and the copy goes on.
    fn tell_totals_once_counted(&self, run: &Run) {
        if self.totals_told.swap(true, Ordering::Relaxed) {
            return;
        }
        let (api, progress) = (self.api.clone(), Arc::clone(&self.progress));
        let url = self.run_url(run, "totals");
        tokio::spawn(async move {
            while !progress.totals_known.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            let view = progress.view();
            let totals = RunTotals {
                files: view.files_total.unwrap_or_default(),
                bytes: view.bytes_total.unwrap_or_default(),
            };
            if let Err(e) = api.call(|http| http.put(&url).json(&totals)).await {
                tracing::info!(error = %e, "the drainer was not told the volume's totals");
            }
        });
    }

    fn run_url(&self, run: &Run, action: &str) -> String {
        self.api.url(&format!("/run/{}/{action}", run.id))
    }

    /// Posts `body` to the run's `action` endpoint (`record`, `finish`, `interrupted`).
    async fn post_run(
        &self,
        run: &Run,
        action: &str,
        body: &impl Serialize,
        op: &'static str,
    ) -> CheckpointResult<()> {
        let url = self.run_url(run, action);
        self.api
            .call(|http| http.post(&url).json(body))
            .await
            .map(drop)
            .map_err(call_error(op))
    }
}

#[async_trait::async_trait]
impl Checkpoint for RemoteCheckpoint {
    async fn begin(
        &self,
        _store: &str,
        _volume: &VolumeId,
        _fresh: &SnapshotId,
    ) -> CheckpointResult<Run> {
        let url = self.api.url("/run");
        let run: WireRun = self
            .api
            .json(|http| http.post(&url))
            .await
            .map_err(call_error("begin run"))?;
        let run = Run {
            id: run.id,
            snapshot: run
                .snapshot
                .parse()
                .map_err(|e: String| remote_error("begin run", e))?,
            resumed: run.resumed,
        };
        self.tell_totals_once_counted(&run);
        Ok(run)
    }

    fn stored_files<'a>(&'a self, run: &'a Run) -> BoxStream<'a, CheckpointResult<StoredFile>> {
        let url = self.run_url(run, "stored");
        async move {
            let response = self
                .api
                .call(|http| http.get(&url))
                .await
                .map_err(call_error("read progress"))?;
            let body = response.bytes_stream().map_err(std::io::Error::other);
            let reader = tokio::io::BufReader::new(tokio_util::io::StreamReader::new(body));
            Ok::<_, CheckpointError>(lines(reader).map(|line| {
                let line = line.map_err(|e| remote_error("read progress", e))?;
                let wire: WireStoredFile =
                    serde_json::from_str(&line).map_err(|e| remote_error("read progress", e))?;
                StoredFile::try_from(wire).map_err(|e| remote_error("read progress", e))
            }))
        }
        .try_flatten_stream()
        .boxed()
    }

    async fn record(&self, run: &Run, files: &[StoredFile]) -> CheckpointResult<()> {
        let wire: Vec<WireStoredFile> = files.iter().map(WireStoredFile::from).collect();
        self.post_run(run, "record", &wire, "record progress").await
    }

    /// A record of nothing renews the run's lease on the drainer.
    async fn renew(&self, run: &Run) -> CheckpointResult<()> {
        let nothing: [WireStoredFile; 0] = [];
        self.post_run(run, "record", &nothing, "renew run").await
    }

    async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> CheckpointResult<()> {
        self.post_run(run, "finish", summary, "finish run").await
    }

    async fn interrupted(&self, run: &Run, error: &str) -> CheckpointResult<()> {
        let body = Interrupted {
            error: error.to_owned(),
        };
        self.post_run(run, "interrupted", &body, "note error").await
    }

    async fn partial_upload(
        &self,
        run: &Run,
        path: &[u8],
    ) -> CheckpointResult<Option<PartialUpload>> {
        let url = self.run_url(run, "partial");
        let query = PathParam::of(path);
        match self
            .api
            .json::<WirePartial>(|http| http.get(&url).query(&query))
            .await
        {
            Ok(wire) => PartialUpload::try_from(wire)
                .map(Some)
                .map_err(|e| remote_error("read upload", e)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(remote_error("read upload", e)),
        }
    }

    async fn record_partial(&self, run: &Run, upload: &PartialUpload) -> CheckpointResult<()> {
        let url = self.run_url(run, "partial");
        let body = WirePartial::from(upload);
        self.api
            .call(|http| http.put(&url).json(&body))
            .await
            .map(drop)
            .map_err(call_error("record upload"))
    }

    /// The barrier (parts reported, the drainer's store flushed) and the record of the
    /// upload's progress in one request where the drainer takes it.
    async fn flush_and_record_partial(
        &self,
        store: &Store,
        run: &Run,
        upload: &PartialUpload,
    ) -> drainer_core::snapshot::Result<()> {
        if !self.parts_with_progress {
            store.flush().await?;
            return Ok(self.record_partial(run, upload).await?);
        }
        let progress = Some(RunPartial {
            run: run.id.clone(),
            upload: WirePartial::from(upload),
        });
        match &self.direct {
            Some(direct) => direct.report(&self.api, progress).await.map(drop),
            None => send_reports(&self.api, &[], progress).await,
        }
        .map_err(call_error("record upload"))?;
        Ok(())
    }

    async fn forget_partial(&self, run: &Run, path: &[u8]) -> CheckpointResult<()> {
        let url = self.run_url(run, "partial");
        let query = PathParam::of(path);
        self.api
            .call(|http| http.delete(&url).query(&query))
            .await
            .map(drop)
            .map_err(call_error("forget upload"))
    }

    async fn commit(
        &self,
        _store: &drainer_core::store::Store,
        _layout: &drainer_core::snapshot::VolumeLayout,
        _summary: &SnapshotSummary,
    ) -> drainer_core::snapshot::Result<()> {
        // The drainer commits the snapshot itself when the run finishes, after its own checks.
        Ok(())
    }
}

fn lines<R: tokio::io::AsyncBufRead + Send + Unpin + 'static>(
    reader: R,
) -> BoxStream<'static, std::io::Result<String>> {
    use tokio::io::AsyncBufReadExt;
    futures::stream::try_unfold(reader.lines(), |mut lines| async move {
        Ok(lines.next_line().await?.map(|line| (line, lines)))
    })
    .boxed()
}
