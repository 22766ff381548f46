//! Small objects travel together: while [`BATCHES_IN_FLIGHT`] batches are on their way, the
//! puts that arrive wait and leave together in the next one (one request instead of dozens),
//! in the [`crate::protocol::batch`] format.

use crate::client::Api;
use crate::protocol::{BatchAnswer, batch};
use bytes::Bytes;
use object_store::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Batches of small objects on their way at once.
const BATCHES_IN_FLIGHT: usize = 2;

/// A small object waiting to travel in a batch, and where its outcome goes.
#[derive(Debug)]
struct PendingPut {
    key: String,
    data: Bytes,
    stored: oneshot::Sender<Result<(), String>>,
}

/// The queue of small objects for the batch sender task.
#[derive(Debug, Clone)]
pub(super) struct PutBatches {
    queue: mpsc::Sender<PendingPut>,
}

impl PutBatches {
    /// Starts the task that sends batches through `api`.
    pub(super) fn start(api: Api) -> Self {
        let (queue, pending) = mpsc::channel(batch::MAX_OBJECTS * BATCHES_IN_FLIGHT);
        tokio::spawn(send_batches(api, pending));
        Self { queue }
    }

    /// Stores one small object in the next batch.
    pub(super) async fn put(&self, key: &Path, data: Bytes) -> Result<(), String> {
        let (stored, outcome) = oneshot::channel();
        let pending = PendingPut {
            key: key.to_string(),
            data,
            stored,
        };
        let stopped = || "the batch sender stopped".to_owned();
        self.queue.send(pending).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn send_batches(api: Api, mut pending: mpsc::Receiver<PendingPut>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut next = Vec::with_capacity(batch::MAX_OBJECTS);
        if pending.recv_many(&mut next, batch::MAX_OBJECTS).await == 0 {
            return;
        }
        let api = api.clone();
        tokio::spawn(async move {
            let outcome = send_batch(&api, &next).await;
            drop(slot);
            for (put, result) in next.into_iter().zip(outcome) {
                let _ = put.stored.send(result);
            }
        });
    }
}

/// Sends one batch (again while the failure may pass: writing the same objects twice is
/// harmless); one outcome per object.
async fn send_batch(api: &Api, puts: &[PendingPut]) -> Vec<Result<(), String>> {
    let body = batch::encode(puts.iter().map(|p| (p.key.as_str(), p.data.as_ref())));
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
