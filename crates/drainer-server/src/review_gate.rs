//! What an unknown token may cost: the gate in front of a remote token review (Kubernetes
//! mode's TokenReview).
//!
//! A token that a review has just refused is remembered for [`REFUSED_TTL`] (by its BLAKE3
//! hash, never the token itself; at most [`REFUSED_MAX`] of them, the oldest forgotten first),
//! so sending it again costs no review; requests with a token under review wait for that one
//! review (at most [`FOLLOW_WAIT`]) and are refused with it, so the same bad token sent many
//! times at once costs one review too (when the review accepts the token, the requests that
//! waited go on to be reviewed each: the reviewer's cache is not the gate's). Reviews of
//! tokens not known either way are limited globally: a token bucket
//! ([`GateLimits::per_second`], bursts of [`GateLimits::burst`]) and at most
//! [`GateLimits::concurrent`] at once (a review waits at most [`SLOT_WAIT`] for its turn).
//! Over either limit the caller is refused with [`Denied::Throttled`] (`429` with
//! `Retry-After`), and nothing is reviewed. So N distinct bad tokens cost at most
//! `burst + per_second × seconds` reviews, whatever N.
//!
//! Each request that reaches the gate is counted by its [`Outcome`] in
//! `drainer_token_reviews_total{result}` (when the gate is [`ReviewGate::counted_in`] it):
//! reviews sent (`accepted`, `refused`, `error`) and requests answered without one
//! (`throttled`, `cached_refusal`).
//!
//! The gate decides nothing about who a token is: it only counts, remembers refusals, and
//! refuses to ask too often. Tokens already reviewed successfully are the reviewer's cache's
//! business and never reach the gate.

use crate::auth::Denied;
use crate::metrics::{ReviewCounts, ReviewLabel};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// How long a refused token is refused without a review.
pub(crate) const REFUSED_TTL: Duration = Duration::from_secs(5);
/// How many refused tokens are remembered at most.
pub(crate) const REFUSED_MAX: usize = 10_000;
/// How long a review waits for one of the [`GateLimits::concurrent`] slots.
pub(crate) const SLOT_WAIT: Duration = Duration::from_secs(1);
/// How long a request waits for the review of the same token under way (the review of
/// another request), after which it goes on as if there were none.
pub(crate) const FOLLOW_WAIT: Duration = Duration::from_secs(10);

/// How many reviews of unknown tokens the gate lets through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateLimits {
    /// Reviews per second, on average.
    pub per_second: f64,
    /// Reviews at once after a quiet spell.
    pub burst: u32,
    /// Reviews under way at once.
    pub concurrent: u32,
}

impl Default for GateLimits {
    fn default() -> Self {
        Self {
            per_second: 50.0,
            burst: 100,
            concurrent: 16,
        }
    }
}

/// What became of one request at the gate: the `result` of `drainer_token_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Reviewed: the token is someone's.
    Accepted,
    /// Reviewed: the token is no one's.
    Refused,
    /// Reviewed, with no answer (the API server failed or did not answer in time).
    Error,
    /// Not reviewed: over the rate or the concurrency limit (`429`).
    Throttled,
    /// Not reviewed: refused by a review within [`REFUSED_TTL`].
    CachedRefusal,
}

impl Outcome {
    /// Every outcome, each exported from the start at 0.
    pub const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Refused,
        Outcome::Error,
        Outcome::Throttled,
        Outcome::CachedRefusal,
    ];

    /// The outcome of a review that answered `answer`.
    fn of<T>(answer: &Result<T, Denied>) -> Self {
        match answer {
            Ok(_) => Outcome::Accepted,
            Err(Denied::Invalid) => Outcome::Refused,
            Err(_) => Outcome::Error,
        }
    }

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
            Outcome::Throttled => "throttled",
            Outcome::CachedRefusal => "cached_refusal",
        }
    }

    /// Its label in `drainer_token_reviews_total`.
    pub fn label(self) -> ReviewLabel {
        ReviewLabel {
            result: self.as_str(),
        }
    }
}

/// A token's identity in the gate: the BLAKE3 hash of the token.
pub(crate) type TokenKey = [u8; 32];

/// The key of `token`.
pub fn token_key(token: &str) -> TokenKey {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The negative cache and the rate limit; shared by every request.
#[derive(Debug)]
pub struct ReviewGate {
    limits: GateLimits,
    refused_ttl: Duration,
    refused: Mutex<HashMap<TokenKey, Instant>>,
    bucket: Mutex<Bucket>,
    slots: Semaphore,
    /// The tokens under review, each with the end of its review to wait for.
    under_review: Mutex<HashMap<TokenKey, tokio::sync::watch::Receiver<()>>>,
    /// Requests by [`Outcome`] (a family of the gate's own unless [`ReviewGate::counted_in`]).
    counts: ReviewCounts,
}

/// What a request does about its token, given the cache and the reviews under way.
enum Claim<'a> {
    /// Refused lately: refused again without a review.
    Refused,
    /// No review of it under way: this request reviews it.
    Lead(Leading<'a>),
    /// Another request reviews it: wait until that ends (the receiver sees the sender go).
    Follow(tokio::sync::watch::Receiver<()>),
}

/// The review of one token under way; dropped when it ends, which wakes its followers.
struct Leading<'a> {
    gate: &'a ReviewGate,
    key: TokenKey,
    _sender: tokio::sync::watch::Sender<()>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut under_review = self
            .gate
            .under_review
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        under_review.remove(&self.key);
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ReviewGate {
    /// A gate with these limits.
    pub fn new(limits: GateLimits) -> Self {
        Self {
            limits,
            refused_ttl: REFUSED_TTL,
            refused: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limits.burst),
                at: Instant::now(),
            }),
            slots: Semaphore::new(limits.concurrent.max(1) as usize),
            under_review: Mutex::default(),
            counts: ReviewCounts::default(),
        }
    }

    /// The same gate, counting its requests in `counts` (the service's
    /// [`crate::metrics::Metrics::token_reviews`]).
    pub fn counted_in(self, counts: ReviewCounts) -> Self {
        Self { counts, ..self }
    }

    /// Runs `review` for the token of `key` unless it was refused within [`REFUSED_TTL`], or
    /// by the review under way that this request waited for (then [`Denied::Invalid`]), or
    /// the limits are reached (then [`Denied::Throttled`]); remembers a [`Denied::Invalid`]
    /// answer. Counts the request by its [`Outcome`].
    pub async fn review<T, F>(&self, key: &TokenKey, review: F) -> Result<T, Denied>
    where
        F: Future<Output = Result<T, Denied>>,
    {
        let leading = match self.claim(key) {
            Claim::Refused => return Err(self.cached_refusal()),
            Claim::Lead(leading) => Some(leading),
            Claim::Follow(mut done) => {
                // Err: the leader's review ended (its guard dropped the sender).
                let _ = tokio::time::timeout(FOLLOW_WAIT, done.changed()).await;
                if self.recently_refused(key) {
                    return Err(self.cached_refusal());
                }
                None
            }
        };
        let _slot = self
            .take_turn()
            .await
            .inspect_err(|_| self.record(Outcome::Throttled))?;
        let answer = review.await;
        let outcome = Outcome::of(&answer);
        self.record(outcome);
        if outcome == Outcome::Refused {
            self.remember_refusal(*key);
        }
        drop(leading);
        answer
    }

    /// Whether the token of `key` is refused from the cache, reviewed by this request (the
    /// leader) or waits for the review under way of another request.
    fn claim(&self, key: &TokenKey) -> Claim<'_> {
        let mut under_review = self.under_review.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = under_review.get(key) {
            return Claim::Follow(done.clone());
        }
        // Checked under the lock: a leader remembers its refusal before it lets go of the key.
        if self.recently_refused(key) {
            return Claim::Refused;
        }
        let (sender, done) = tokio::sync::watch::channel(());
        under_review.insert(*key, done);
        Claim::Lead(Leading {
            gate: self,
            key: *key,
            _sender: sender,
        })
    }

    /// Counts and answers a refusal from the cache.
    fn cached_refusal(&self) -> Denied {
        self.record(Outcome::CachedRefusal);
        Denied::Invalid
    }

    /// Counts one request of `outcome`.
    fn record(&self, outcome: Outcome) {
        self.counts.get_or_create(&outcome.label()).inc();
    }

    /// A review's turn: one from the bucket and a concurrency slot (held until dropped), or
    /// [`Denied::Throttled`].
    async fn take_turn(&self) -> Result<SemaphorePermit<'_>, Denied> {
        self.take_from_bucket()?;
        let Ok(Ok(slot)) = tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await else {
            tracing::debug!("token reviews at their concurrency limit");
            return Err(Denied::Throttled { retry_after: 1 });
        };
        Ok(slot)
    }

    fn recently_refused(&self, key: &TokenKey) -> bool {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .get(key)
            .is_some_and(|at| at.elapsed() < self.refused_ttl)
    }

    fn remember_refusal(&self, key: TokenKey) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= REFUSED_MAX {
            refused.retain(|_, at| at.elapsed() < self.refused_ttl);
        }
        if refused.len() >= REFUSED_MAX {
            let oldest = refused.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                refused.remove(&oldest);
            }
        }
        refused.insert(key, Instant::now());
    }

    /// Takes one review from the bucket, or says when to retry.
    fn take_from_bucket(&self) -> Result<(), Denied> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.limits.per_second;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(self.limits.burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.limits.per_second.max(f64::MIN_POSITIVE);
        let retry_after = wait.ceil().clamp(1.0, 60.0) as u32;
        tracing::debug!(retry_after, "token reviews at their rate limit");
        Err(Denied::Throttled { retry_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A reviewer that refuses every token and counts the reviews.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Counting {
        async fn review(&self) -> Result<(), Denied> {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(Denied::Invalid)
        }

        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn gate() -> Arc<ReviewGate> {
        Arc::new(ReviewGate::new(GateLimits::default()))
    }

    /// How many requests the gate counted with `outcome`.
    fn counted(gate: &ReviewGate, outcome: Outcome) -> usize {
        gate.counts.get_or_create(&outcome.label()).get() as usize
    }

    /// Sends each token through the gate at once; returns how many were throttled.
    async fn send(gate: &Arc<ReviewGate>, reviewer: &Arc<Counting>, tokens: &[String]) -> usize {
        let mut answers = tokio::task::JoinSet::new();
        for token in tokens {
            let (gate, reviewer, key) = (gate.clone(), reviewer.clone(), token_key(token));
            answers.spawn(async move { gate.review(&key, reviewer.review()).await });
        }
        let mut throttled = 0;
        while let Some(answer) = answers.join_next().await {
            match answer.unwrap() {
                Err(Denied::Throttled { retry_after }) => {
                    assert!((1..=60).contains(&retry_after));
                    throttled += 1;
                }
                Err(Denied::Invalid) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        throttled
    }

    #[tokio::test]
    async fn distinct_bad_tokens_cost_a_bounded_number_of_reviews() {
        let (gate, reviewer) = (gate(), Arc::new(Counting::default()));
        let tokens: Vec<String> = (0..2_000).map(|i| format!("bad-token-{i}")).collect();
        let started = Instant::now();
        let throttled = send(&gate, &reviewer, &tokens).await;
        // The burst, plus what the bucket refilled while the concurrency slots were busy.
        let limits = GateLimits::default();
        let bound = limits.burst as usize
            + (started.elapsed().as_secs_f64() * limits.per_second).ceil() as usize;
        eprintln!(
            "2,000 distinct bad tokens: {} reviews (bound {bound})",
            reviewer.count()
        );
        assert!(reviewer.count() <= bound, "{} > {bound}", reviewer.count());
        assert!(reviewer.count() >= limits.concurrent as usize);
        assert_eq!(
            throttled,
            2_000 - reviewer.count(),
            "the others are throttled"
        );
        assert_eq!(counted(&gate, Outcome::Refused), reviewer.count());
        assert_eq!(counted(&gate, Outcome::Throttled), throttled);
        assert_eq!(counted(&gate, Outcome::Accepted), 0);
        assert_eq!(counted(&gate, Outcome::CachedRefusal), 0);
    }

    #[tokio::test]
    async fn one_bad_token_repeated_costs_one_review() {
        let (gate, reviewer) = (gate(), Arc::new(Counting::default()));
        let token = vec!["the-same-bad-token".to_owned()];
        for _ in 0..2_000 {
            assert_eq!(send(&gate, &reviewer, &token).await, 0);
        }
        assert_eq!(reviewer.count(), 1);
        assert_eq!(counted(&gate, Outcome::Refused), 1);
        assert_eq!(counted(&gate, Outcome::CachedRefusal), 1_999);
        // Forgotten after the TTL: one more review.
        let gate = Arc::new(ReviewGate {
            refused_ttl: Duration::from_millis(50),
            ..ReviewGate::new(GateLimits::default())
        });
        send(&gate, &reviewer, &token).await;
        send(&gate, &reviewer, &token).await;
        assert_eq!(reviewer.count(), 2);
        tokio::time::sleep(Duration::from_millis(60)).await;
        send(&gate, &reviewer, &token).await;
        assert_eq!(reviewer.count(), 3);
    }

    #[tokio::test]
    async fn one_bad_token_sent_many_times_at_once_costs_one_review() {
        let (gate, reviewer) = (gate(), Arc::new(Counting::default()));
        let tokens = vec!["the-same-bad-token".to_owned(); 500];
        assert_eq!(send(&gate, &reviewer, &tokens).await, 0, "none throttled");
        assert_eq!(reviewer.count(), 1);
        assert_eq!(counted(&gate, Outcome::Refused), 1);
        assert_eq!(counted(&gate, Outcome::CachedRefusal), 499);
        assert!(gate.under_review.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn requests_that_waited_for_an_accepted_token_are_not_refused() {
        let gate = gate();
        let reviews = Arc::new(AtomicUsize::new(0));
        let mut answers = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (gate, reviews) = (gate.clone(), reviews.clone());
            answers.spawn(async move {
                let review = async {
                    reviews.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                };
                gate.review(&token_key("good"), review).await
            });
        }
        while let Some(answer) = answers.join_next().await {
            assert!(answer.unwrap().is_ok());
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 5);
        assert_eq!(counted(&gate, Outcome::Accepted), 5);
    }

    #[tokio::test]
    async fn the_bucket_refills() {
        let (gate, reviewer) = (gate(), Arc::new(Counting::default()));
        let tokens =
            |from: usize| -> Vec<String> { (from..from + 200).map(|i| format!("t{i}")).collect() };
        for i in 0..200 {
            let _ = gate
                .review(&token_key(&format!("x{i}")), async { Ok(()) })
                .await;
        }
        assert!(send(&gate, &reviewer, &tokens(0)).await > 0, "bucket empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = reviewer.count();
        send(&gate, &reviewer, &tokens(1_000)).await;
        assert!(
            reviewer.count() > before,
            "refilled after 100 ms (5 reviews at 50/s)"
        );
    }

    #[tokio::test]
    async fn reviews_are_counted_by_their_answer_in_the_services_metrics() {
        let metrics = crate::metrics::Metrics::default();
        let gate = ReviewGate::new(GateLimits::default()).counted_in(metrics.token_reviews.clone());
        let (good, down) = (token_key("good"), token_key("down"));
        assert!(gate.review(&good, async { Ok(()) }).await.is_ok());
        assert!(gate.review(&good, async { Ok(()) }).await.is_ok());
        for _ in 0..2 {
            let unavailable = async { Err::<(), _>(Denied::Unavailable("timed out".into())) };
            let answer = gate.review(&down, unavailable).await;
            assert!(matches!(answer, Err(Denied::Unavailable(_))), "{answer:?}");
        }
        let text = metrics.render();
        for line in [
            r#"drainer_token_reviews_total{result="accepted"} 2"#,
            r#"drainer_token_reviews_total{result="error"} 2"#,
            r#"drainer_token_reviews_total{result="refused"} 0"#,
            r#"drainer_token_reviews_total{result="throttled"} 0"#,
            r#"drainer_token_reviews_total{result="cached_refusal"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[tokio::test]
    async fn requests_over_the_limits_are_counted_as_throttled_and_not_reviewed() {
        let gate = Arc::new(ReviewGate::new(GateLimits {
            per_second: 1.0,
            burst: 2,
            concurrent: 16,
        }));
        let reviewer = Arc::new(Counting::default());
        let tokens: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        let throttled = send(&gate, &reviewer, &tokens).await;
        assert_eq!(reviewer.count(), 2, "the burst");
        assert_eq!(throttled, 8);
        assert_eq!(counted(&gate, Outcome::Throttled), 8);
        assert_eq!(counted(&gate, Outcome::Refused), 2);
    }

    #[test]
    fn refusals_remembered_are_bounded() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let gate = ReviewGate::new(GateLimits::default());
            for i in 0..REFUSED_MAX + 10 {
                gate.remember_refusal(token_key(&i.to_string()));
            }
            assert_eq!(gate.refused.lock().unwrap().len(), REFUSED_MAX);
        });
    }
}
