//! Small objects travel together ([`crate::batching`]): [`BATCHES_IN_FLIGHT`] batches on
//! their way at once, in the [`drainer_core::protocol::batch`] format.

use crate::batching::Batcher;
use crate::client::Api;
use bytes::Bytes;
use drainer_core::protocol::{BatchAnswer, batch};
use object_store::path::Path;

/// Batches of small objects on their way at once.
const BATCHES_IN_FLIGHT: usize = 2;

/// The queue of small objects for the batch sender task.
#[derive(Debug, Clone)]
pub(super) struct PutBatches {
    batcher: Batcher<(String, Bytes), Result<(), String>>,
}

impl PutBatches {
    /// Starts the task that sends batches through `api`.
    pub(super) fn start(api: Api) -> Self {
        let batcher = Batcher::start(batch::MAX_OBJECTS, BATCHES_IN_FLIGHT, move |puts| {
            let api = api.clone();
            async move { send_batch(&api, &puts).await }
        });
        Self { batcher }
    }

    /// Stores one small object in the next batch.
    pub(super) async fn put(&self, key: &Path, data: Bytes) -> Result<(), String> {
        self.batcher
            .submit((key.to_string(), data))
            .await
            .unwrap_or_else(|| Err("the batch sender stopped".to_owned()))
    }
}

/// Sends one batch (again while the failure may pass: writing the same objects twice is
/// harmless); one outcome per object.
async fn send_batch(api: &Api, puts: &[(String, Bytes)]) -> Vec<Result<(), String>> {
    let body = batch::encode(puts.iter().map(|(key, data)| (key.as_str(), data.as_ref())));
    let url = api.url("/objects/batch");
    let answer: Result<BatchAnswer, String> = api
        .json(|http| http.post(&url).body(body.clone()))
        .await
        .map_err(|e| e.to_string());
    match answer {
        Ok(answer) if answer.errors.len() == puts.len() => answer
            .errors
            .into_iter()
            .map(|e| e.map_or(Ok(()), Err))
            .collect(),
        Ok(_) => vec![Err("the drainer answered a different batch".into()); puts.len()],
        Err(e) => vec![Err(e); puts.len()],
    }
}
