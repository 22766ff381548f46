//! The drainer's store, as a mover sees it through the drain's API: small objects in batches,
//! larger ones on their own, large files as relayed multipart uploads whose parts carry their
//! index (several travel at once; any drainer replica accepts any part) or, where the drainer
//! offers it, go straight into the store ([`super::direct`]), and the drainer's durability
//! barrier. Listing and copying are not offered: the engine does not need them.

use super::batch::PutBatches;
use super::direct::DirectParts;
use crate::client::{Api, CallError};
use bytes::Bytes;
use drainer_core::protocol::{CreatedUpload, KeyParam, batch};
use drainer_core::store::Barrier;
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions as ObjectCopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartId, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, UploadPart,
};
use std::sync::Arc;

/// The drainer's store, through the drain's API.
#[derive(Debug)]
pub(super) struct RelayedStore {
    pub(super) api: Api,
    pub(super) batches: PutBatches,
    /// Parts straight into the store, if the drainer offers it.
    pub(super) direct: Option<Arc<DirectParts>>,
}

fn store_error(e: impl ToString) -> object_store::Error {
    object_store::Error::Generic {
        store: "drainer",
        source: e.to_string().into(),
    }
}

/// The error of a call on a relayed upload: `404` (the drainer does not know the upload: it
/// was completed, aborted or refused by the store) is "not found", so the engine starts the
/// file's upload again; anything else as [`store_error`].
fn upload_error(location: &Path) -> impl Fn(CallError) -> object_store::Error + '_ {
    move |e| {
        if e.status() == Some(404) {
            object_store::Error::NotFound {
                path: location.to_string(),
                source: e.to_string().into(),
            }
        } else {
            store_error(e)
        }
    }
}

fn not_supported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what} through a drainer relay").into(),
    }
}

fn key(location: &Path) -> KeyParam {
    KeyParam {
        key: location.to_string(),
    }
}

impl std::fmt::Display for RelayedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayedStore({})", self.api.base())
    }
}

impl RelayedStore {
    fn upload_url(&self, upload: &str, rest: &str) -> String {
        self.api.url(&format!("/uploads/{upload}{rest}"))
    }

    async fn create_upload(&self, location: &Path) -> object_store::Result<String> {
        let url = self.api.url("/uploads");
        let query = key(location);
        let created: CreatedUpload = self
            .api
            .json(|http| http.post(&url).query(&query))
            .await
            .map_err(store_error)?;
        Ok(created.upload)
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
        if body.len() <= batch::SMALL_OBJECT {
            self.batches
                .put(location, body)
                .await
                .map_err(store_error)?;
        } else {
            let url = self.api.url("/objects");
            let query = key(location);
            self.api
                .call(|http| http.put(&url).query(&query).body(body.clone()))
                .await
                .map_err(store_error)?;
        }
        Ok(drainer_core::store::stored())
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.create_upload(location).await?;
        Ok(Box::new(RelayedUpload {
            api: self.api.clone(),
            location: location.clone(),
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
        let url = self.api.url("/objects");
        let query = key(location);
        let response = match self.api.call(|http| http.get(&url).query(&query)).await {
            Ok(response) => response,
            Err(e) if e.status() == Some(404) => {
                return Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "not in the drainer's store".into(),
                });
            }
            Err(e) => return Err(store_error(e)),
        };
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
                    let url = api.url("/objects");
                    let query = key(&location);
                    api.call(|http| http.delete(&url).query(&query))
                        .await
                        .map_err(store_error)?;
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

/// Part by part, with explicit indexes: what the engine uses for large files, writing several
/// parts of a file at once and flushing every few. Any drainer replica takes any part: the
/// upload is recorded in the drainer's ledger.
#[async_trait::async_trait]
impl MultipartStore for RelayedStore {
    async fn create_multipart(&self, location: &Path) -> object_store::Result<MultipartId> {
        self.create_upload(location).await
    }

    async fn put_part(
        &self,
        location: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let body: Bytes = data.into();
        let query = key(location);
        if let Some(direct) = &self.direct {
            let stored = direct
                .put_part(&self.api, &query, id, part_idx, &body)
                .await
                .map_err(upload_error(location))?;
            if stored {
                return Ok(PartId {
                    content_id: part_idx.to_string(),
                });
            }
        }
        let url = self.upload_url(id, &format!("/{part_idx}"));
        self.api
            .call(|http| http.put(&url).query(&query).body(body.clone()))
            .await
            .map_err(upload_error(location))?;
        Ok(PartId {
            content_id: part_idx.to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        location: &Path,
        id: &MultipartId,
        _parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        if let Some(direct) = &self.direct {
            // The drainer completes the upload from the parts its ledger holds.
            direct
                .report_stored(&self.api)
                .await
                .map_err(upload_error(location))?;
            direct.forget(id).await;
        }
        let url = self.upload_url(id, "/complete");
        let query = key(location);
        self.api
            .call(|http| http.post(&url).query(&query))
            .await
            .map_err(upload_error(location))?;
        Ok(drainer_core::store::stored())
    }

    async fn abort_multipart(&self, location: &Path, id: &MultipartId) -> object_store::Result<()> {
        if let Some(direct) = &self.direct {
            direct.forget(id).await;
        }
        let url = self.upload_url(id, "");
        let query = key(location);
        match self.api.call(|http| http.delete(&url).query(&query)).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()), // already gone
            Err(e) => Err(store_error(e)),
        }
    }
}

/// A multipart upload relayed to the drainer (the `put_multipart` interface). Each part
/// carries its index, so several travel at once.
struct RelayedUpload {
    api: Api,
    location: Path,
    upload: String,
    next: usize,
}

impl std::fmt::Debug for RelayedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayedUpload({})", self.upload)
    }
}

impl RelayedUpload {
    fn url(&self, rest: &str) -> String {
        self.api.url(&format!("/uploads/{}{rest}", self.upload))
    }
}

#[async_trait::async_trait]
impl MultipartUpload for RelayedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let api = self.api.clone();
        let url = self.url(&format!("/{}", self.next));
        let query = key(&self.location);
        self.next += 1;
        let location = self.location.clone();
        async move {
            let body: Bytes = data.into();
            api.call(|http| http.put(&url).query(&query).body(body.clone()))
                .await
                .map(drop)
                .map_err(upload_error(&location))
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let url = self.url("/complete");
        let query = key(&self.location);
        self.api
            .call(|http| http.post(&url).query(&query))
            .await
            .map_err(upload_error(&self.location))?;
        Ok(drainer_core::store::stored())
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let url = self.url("");
        let query = key(&self.location);
        self.api
            .call(|http| http.delete(&url).query(&query))
            .await
            .map(drop)
            .map_err(store_error)
    }
}

/// The durability barrier is the drainer's: it records the parts stored straight into the
/// store that it was not told of yet and flushes its store (one request, `…/parts/stored`,
/// if there are such parts; else `…/flush`).
pub(super) struct RelayedBarrier {
    pub(super) api: Api,
    /// Parts straight into the store, if the drainer offers it.
    pub(super) direct: Option<Arc<DirectParts>>,
}

#[async_trait::async_trait]
impl Barrier for RelayedBarrier {
    async fn flush(&self) -> Result<(), String> {
        if let Some(direct) = &self.direct {
            let flushed = direct
                .report_stored(&self.api)
                .await
                .map_err(|e| e.to_string())?;
            if flushed {
                return Ok(());
            }
        }
        let url = self.api.url("/flush");
        self.api
            .call(|http| http.post(&url))
            .await
            .map(drop)
            .map_err(|e: CallError| e.to_string())
    }
}
