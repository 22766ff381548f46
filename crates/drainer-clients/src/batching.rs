//! Small requests travel together: while a few batches are on their way, the items that
//! arrive wait and leave together in the next one (one request instead of dozens). Nothing
//! waits on a timer: alone, an item leaves at once; under load, batches fill by themselves.
//! The mover's small uploads and a restore's small reads through a drainer's API use it.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// A queue of items for a task that sends them in batches, each item answered on its own.
#[derive(Debug)]
pub(crate) struct Batcher<T, R> {
    queue: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the task that sends batches of at most `max` items, `in_flight` batches at once,
    /// with `send`, which answers one result per item, in order.
    pub(crate) fn start<F, Fut>(max: usize, in_flight: usize, send: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, pending) = mpsc::channel(max * in_flight);
        tokio::spawn(send_batches(max, in_flight, send, pending));
        Self { queue }
    }

    /// Sends `item` in the next batch and waits for its result; `None` if the sender stopped
    /// (or answered a batch with fewer results than items).
    pub(crate) async fn submit(&self, item: T) -> Option<R> {
        let (answer, result) = oneshot::channel();
        self.queue.send((item, answer)).await.ok()?;
        result.await.ok()
    }
}

async fn send_batches<T, R, F, Fut>(
    max: usize,
    in_flight: usize,
    send: F,
    mut pending: mpsc::Receiver<(T, oneshot::Sender<R>)>,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut next = Vec::with_capacity(max);
        if pending.recv_many(&mut next, max).await == 0 {
            return;
        }
        let (items, answers): (Vec<T>, Vec<_>) = next.into_iter().unzip();
        let sending = send(items);
        tokio::spawn(async move {
            let results = sending.await;
            drop(slot);
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn items_waiting_together_leave_in_one_batch_each_answered_in_order() {
        let batches = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&batches);
        let batcher = Batcher::start(8, 1, move |items: Vec<u32>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 10).collect::<Vec<_>>()
            }
        });
        let results = futures::future::join_all((0..20u32).map(|i| {
            let b = batcher.clone();
            async move { b.submit(i).await }
        }))
        .await;
        let expected: Vec<Option<u32>> = (0..20).map(|i| Some(i * 10)).collect();
        assert_eq!(results, expected);
        let sent = batches.load(Ordering::SeqCst);
        assert!(
            (3..=5).contains(&sent),
            "20 items, 8 at most a batch: {sent} batches"
        );
    }

    #[tokio::test]
    async fn a_batch_answered_short_leaves_its_missing_items_unanswered() {
        let batcher = Batcher::start(4, 1, |items: Vec<u32>| async move {
            items.into_iter().take(0).collect::<Vec<u32>>()
        });
        assert_eq!(batcher.submit(1).await, None);
    }
}
