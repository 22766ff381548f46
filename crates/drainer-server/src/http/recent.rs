//! Answers of the public endpoints kept for a moment: `/readyz` and `/metrics` are
//! unauthenticated, so what they read from the ledger (a ping, whether it commits, the drain
//! counts by state) is computed at most once per [`MAX_AGE`], by one request at a time; the
//! requests that arrive meanwhile wait for that answer and share it. The store and the
//! service's tasks are already kept by their probes ([`drainer_core::health::Health`]). This module
//! only keeps values; it decides nothing about them.

use drainer_core::health::LedgerCheck;
use drainer_core::ledger::StateSummary;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a computed answer is reused.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

/// A value computed at most once per [`MAX_AGE`].
#[derive(Debug)]
pub struct Recent<T> {
    kept: Mutex<Option<(Instant, T)>>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self {
            kept: Mutex::new(None),
        }
    }
}

impl<T: Clone> Recent<T> {
    /// The kept value if it is recent, else what `compute` gives (kept for the next callers).
    pub async fn get<F: Future<Output = T>>(&self, compute: impl FnOnce() -> F) -> T {
        let mut kept = self.kept.lock().await;
        if let Some((at, value)) = kept.as_ref()
            && at.elapsed() < MAX_AGE
        {
            return value.clone();
        }
        let value = compute().await;
        *kept = Some((Instant::now(), value.clone()));
        value
    }

    /// Drops the kept value: the next caller computes it again (a caller that just saw the
    /// ledger fail must not be answered from a check made before).
    pub async fn forget(&self) {
        *self.kept.lock().await = None;
    }
}

/// What the public endpoints read from the ledger.
#[derive(Debug, Default)]
pub struct Kept {
    /// Whether the ledger answers and commits, for `/readyz` and `drainer_ready`.
    pub ledger: Recent<LedgerCheck>,
    /// Drains by state, for `/metrics` (`None`: the ledger did not answer).
    pub summary: Recent<Option<Vec<StateSummary>>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn computed_once_per_max_age_however_many_ask() {
        let recent = std::sync::Arc::new(Recent::<usize>::default());
        let computed = std::sync::Arc::new(AtomicUsize::new(0));
        let ask = || {
            let (recent, computed) = (recent.clone(), computed.clone());
            async move {
                recent
                    .get(|| async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        computed.fetch_add(1, Ordering::SeqCst)
                    })
                    .await
            }
        };
        let answers = futures::future::join_all((0..500).map(|_| tokio::spawn(ask()))).await;
        assert!(answers.into_iter().all(|a| a.unwrap() == 0));
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        tokio::time::sleep(MAX_AGE).await;
        assert_eq!(ask().await, 1, "computed again once old");
        recent.forget().await;
        assert_eq!(ask().await, 2, "computed again once forgotten");
    }
}
