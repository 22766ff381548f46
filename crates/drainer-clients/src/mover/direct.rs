//! Direct parts: where the drainer offers them (`StoreInfo::direct_parts`), a mover stores
//! each part of a large file straight into the store with a short-lived URL the drainer signs
//! for that part alone, then reports the part (its `ETag` and length) so the drainer's ledger
//! records it exactly as a relayed one: resumption, completion and the drainer's checks are
//! unchanged, and the store's credentials never leave the drainer.
//!
//! Where the drainer also takes batches (`StoreInfo::direct_batches`), the mover asks for
//! several parts' URLs at once, ahead of the parts ([`SignAhead`]), and keeps the reports of
//! stored parts until the engine's next durability barrier or the upload's completion, then
//! sends them in one request ([`DirectParts::report_stored`]). The engine records a file's
//! progress only after a barrier, so every part its progress names is in the drainer's ledger
//! first: a mover killed mid-file still resumes from its last recorded part. Where the drainer
//! takes it (`StoreInfo::parts_with_progress`), that record travels with the barrier's report,
//! and the drainer writes both in one transaction ([`DirectParts::report`]). Without batches,
//! each part costs the drainer two requests (sign, report); with them, about one per
//! [`MAX_SIGN_AHEAD`] parts plus one per barrier.
//!
//! The relay stays the fallback: a part the store does not take after a few tries goes
//! through the drainer, which also tells whether the upload itself is over; and every later
//! part too if the drainer stops offering direct parts (`409`), the store cannot be reached
//! from here, or it refuses the drainer's signatures (`403`).

use crate::client::{Api, CallError};
use bytes::Bytes;
use drainer_core::protocol::{
    DirectPart, KeyParam, MAX_REPORTED_PER_REQUEST, MAX_SIGNED_PER_REQUEST, PartUrlsParam,
    RunPartial, SignedUrl, SignedUrls, StoredPart, StoredParts,
};
use drainer_core::retry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a mover keeps sending a part to the store again before it relays it instead.
const STORE_RETRY_FOR: Duration = Duration::from_secs(20);

/// The error code of a drainer that relays every part.
const NOT_OFFERED: &str = "direct_parts_not_offered";

/// The most parts whose URLs a mover asks for at once (the drainer's limit too).
const MAX_SIGN_AHEAD: usize = MAX_SIGNED_PER_REQUEST;

/// The fewest parts a mover asks URLs for at once: a file's first request, before it is
/// known to be large. Signing a URL costs the drainer microseconds and a request about a
/// millisecond, so URLs a file of a few parts leaves unused cost less than asking again.
const MIN_SIGN_AHEAD: usize = 16;

/// The most parts an upload has (S3's limit, as the drainer's).
const MAX_PARTS: usize = 10_000;

/// A part's way straight into the store.
#[derive(Debug)]
pub(super) struct DirectParts {
    store: reqwest::Client,
    /// Whether the drainer still offers direct parts (cleared at its first `409`).
    offered: AtomicBool,
    /// URLs signed ahead and the reports kept for the next barrier, if the drainer takes
    /// batches; `None`: one request per part for each.
    batches: Option<Batches>,
}

/// What a mover keeps while the drainer takes batches.
#[derive(Debug, Default)]
struct Batches {
    /// URLs signed ahead, by upload and part.
    ahead: tokio::sync::Mutex<SignAhead>,
    /// Parts stored but not reported yet.
    stored: Mutex<Vec<StoredPart>>,
    /// Held while parts taken from `stored` are reported, so that a barrier returns only once
    /// every part stored before it is recorded, even those another barrier is reporting.
    reporting: tokio::sync::Mutex<()>,
}

/// Part URLs signed before their parts are sent, each used once, within half its validity.
#[derive(Debug, Default)]
struct SignAhead {
    urls: HashMap<(String, usize), (String, Instant)>,
}

impl SignAhead {
    /// How many parts to ask for from part `idx` on: [`MIN_SIGN_AHEAD`] for a file's first
    /// parts, then about as many as it has had (so a file of `n` parts costs `log n` requests
    /// until [`MAX_SIGN_AHEAD`], and little is signed past its end), never past the upload's
    /// limit.
    fn count_from(idx: usize) -> usize {
        idx.clamp(MIN_SIGN_AHEAD, MAX_SIGN_AHEAD)
            .min(MAX_PARTS.saturating_sub(idx))
            .max(1)
    }

    /// The URL of part `idx` of `upload`, if one was signed ahead and is still fresh.
    fn take(&mut self, upload: &str, idx: usize) -> Option<String> {
        let (url, fresh_until) = self.urls.remove(&(upload.to_owned(), idx))?;
        (Instant::now() < fresh_until).then_some(url)
    }

    /// Keeps the URLs the drainer signed for `upload`; answers the one of part `idx`.
    fn keep(&mut self, upload: &str, idx: usize, signed: SignedUrls) -> Option<String> {
        // Used within half their validity, so that a part sent late still has time.
        let fresh_until = Instant::now() + Duration::from_secs(signed.expires_in_s / 2);
        for (i, url) in signed.urls.into_iter().enumerate() {
            self.urls
                .insert((upload.to_owned(), signed.first + i), (url, fresh_until));
        }
        self.take(upload, idx)
    }

    /// Forgets the URLs of `upload` (completed or aborted).
    fn forget(&mut self, upload: &str) {
        self.urls.retain(|(u, _), _| u != upload);
    }
}

/// A `PUT` of a part to the store that failed.
#[derive(Debug, thiserror::Error)]
enum PutError {
    #[error("cannot reach the store: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the store answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the store answered without an ETag")]
    NoEtag,
}

impl PutError {
    fn is_transient(&self) -> bool {
        match self {
            PutError::Transport(_) => true,
            PutError::Status { status, .. } => *status >= 500 || *status == 429,
            PutError::NoEtag => false,
        }
    }

    /// Whether every later part would fail the same way: the store cannot be reached from
    /// here, or refuses the drainer's signatures. (Other failures are the upload's own.)
    fn fails_every_part(&self) -> bool {
        match self {
            PutError::Transport(_) => true,
            PutError::Status { status, .. } => *status == 403,
            PutError::NoEtag => false,
        }
    }
}

/// Sends `parts` in as few `POST …/parts/stored` as the drainer takes, `progress` with the
/// last of them (alone if there is no part); nothing if there is neither.
pub(super) async fn send_reports(
    api: &Api,
    parts: &[StoredPart],
    progress: Option<RunPartial>,
) -> Result<(), CallError> {
    let url = api.url("/parts/stored");
    let mut chunks: Vec<&[StoredPart]> = parts.chunks(MAX_REPORTED_PER_REQUEST).collect();
    if chunks.is_empty() && progress.is_some() {
        chunks.push(&[]);
    }
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let body = StoredParts {
            parts: chunk.to_vec(),
            progress: if i == last { progress.clone() } else { None },
        };
        api.call(|http| http.post(&url).json(&body)).await?;
    }
    Ok(())
}

/// The lock's data, even if a thread panicked holding it (a list of reports stays valid).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `error` is the drainer saying it relays every part.
fn not_offered(error: &CallError) -> bool {
    matches!(error, CallError::Status { status: 409, code: Some(code), .. } if code == NOT_OFFERED)
}

impl DirectParts {
    /// Direct parts, each request to the store timing out after `timeout`; signed and
    /// reported in batches if `batches` (the drainer takes them).
    pub(super) fn new(timeout: Duration, batches: bool) -> reqwest::Result<Self> {
        let store = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()?;
        Ok(Self {
            store,
            offered: AtomicBool::new(true),
            batches: batches.then(Batches::default),
        })
    }

    fn withdrawn(&self, why: &str) {
        if self.offered.swap(false, Ordering::Relaxed) {
            tracing::warn!(why, "relaying every part from now on");
        }
    }

    /// Stores part `idx` of upload `upload` (writing `key`) straight into the store and
    /// reports it (at once, or with the next barrier when the drainer takes batches).
    /// `Ok(false)`: not stored that way, the caller relays the part. An error is the
    /// drainer's answer (a `404` says the upload is over).
    pub(super) async fn put_part(
        &self,
        api: &Api,
        key: &KeyParam,
        upload: &str,
        idx: usize,
        body: &Bytes,
    ) -> Result<bool, CallError> {
        if !self.offered.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let signed = match self.part_url(api, key, upload, idx).await {
            Ok(url) => url,
            Err(e) if not_offered(&e) => {
                self.withdrawn("the drainer no longer offers direct parts");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let etag = match self.send(&signed, body).await {
            Ok(etag) => etag,
            Err(e) => {
                tracing::warn!(upload, part = idx, key = %key.key, error = %e, "the store did not take a part; relaying it");
                if e.fails_every_part() {
                    self.withdrawn("the store cannot be reached, or refuses the signed URLs");
                }
                return Ok(false);
            }
        };
        if let Some(batches) = &self.batches {
            lock(&batches.stored).push(StoredPart {
                upload: upload.to_owned(),
                key: key.key.clone(),
                part: idx,
                etag,
                len: body.len() as u64,
            });
            return Ok(true);
        }
        let report = DirectPart {
            etag,
            len: body.len() as u64,
        };
        let url = api.url(&format!("/uploads/{upload}/{idx}/stored"));
        match api
            .call(|http| http.post(&url).query(key).json(&report))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if not_offered(&e) => {
                self.withdrawn("the drainer no longer offers direct parts");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The signed URL of part `idx`: signed ahead (asking the drainer for it and the next
    /// few if it was not), or one of its own without batches.
    async fn part_url(
        &self,
        api: &Api,
        key: &KeyParam,
        upload: &str,
        idx: usize,
    ) -> Result<String, CallError> {
        let Some(batches) = &self.batches else {
            let url = api.url(&format!("/uploads/{upload}/{idx}/url"));
            let signed: SignedUrl = api.json(|http| http.post(&url).query(key)).await?;
            return Ok(signed.url);
        };
        // Held while asking, so that parts sent at once wait for one answer, not ask too.
        let mut ahead = batches.ahead.lock().await;
        if let Some(url) = ahead.take(upload, idx) {
            return Ok(url);
        }
        let query = PartUrlsParam {
            key: key.key.clone(),
            first: idx,
            count: SignAhead::count_from(idx),
        };
        let url = api.url(&format!("/uploads/{upload}/urls"));
        let signed: SignedUrls = api.json(|http| http.post(&url).query(&query)).await?;
        ahead
            .keep(upload, idx, signed)
            .ok_or_else(|| CallError::Status {
                url,
                status: 502,
                code: None,
                message: format!("the drainer did not sign part {idx} of upload {upload}"),
            })
    }

    /// Reports the parts stored since the last report (none without batches), in as few
    /// requests as the drainer takes, before a barrier or an upload's completion: once this
    /// returns, the drainer's ledger holds every part the mover stored so far. Parts of an
    /// upload the drainer no longer knows (`404`) make it fail, as a relayed part would.
    /// Whether it reported any: the drainer flushed its store after recording them, a
    /// barrier as `…/flush` is.
    pub(super) async fn report_stored(&self, api: &Api) -> Result<bool, CallError> {
        self.report(api, None).await
    }

    /// [`DirectParts::report_stored`], with `progress` recorded with the last request (in
    /// one of its own if there is no part to report), where the drainer takes it
    /// (`StoreInfo::parts_with_progress`): a barrier and the record of an upload's progress
    /// after it in one request. Whether it sent any request.
    pub(super) async fn report(
        &self,
        api: &Api,
        progress: Option<RunPartial>,
    ) -> Result<bool, CallError> {
        let Some(batches) = &self.batches else {
            let sent = progress.is_some();
            send_reports(api, &[], progress).await?;
            return Ok(sent);
        };
        let _one_at_a_time = batches.reporting.lock().await;
        let stored = std::mem::take(&mut *lock(&batches.stored));
        let sent = !stored.is_empty() || progress.is_some();
        send_reports(api, &stored, progress).await?;
        Ok(sent)
    }

    /// Forgets what is kept for `upload` (aborted, or completed): its URLs signed ahead and,
    /// for an aborted one, its parts not yet reported.
    pub(super) async fn forget(&self, upload: &str) {
        if let Some(batches) = &self.batches {
            batches.ahead.lock().await.forget(upload);
            lock(&batches.stored).retain(|p| p.upload != upload);
        }
    }

    /// `PUT`s `body` to the signed `url`, again while the store's failure may pass (for up to
    /// [`STORE_RETRY_FOR`]); answers the part's `ETag`.
    async fn send(&self, url: &str, body: &Bytes) -> Result<String, PutError> {
        let policy = retry::client_policy(STORE_RETRY_FOR);
        retry::with_retries(policy, PutError::is_transient, || async {
            let response = self.store.put(url).body(body.clone()).send().await?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(PutError::Status {
                    status: status.as_u16(),
                    body: text.chars().take(300).collect(),
                });
            }
            response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or(PutError::NoEtag)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, code: Option<&str>) -> CallError {
        CallError::Status {
            url: "http://drainer/v1/drains/d/uploads/u/0/url".into(),
            status,
            code: code.map(str::to_owned),
            message: "no".into(),
        }
    }

    #[test]
    fn only_the_drainers_refusal_to_sign_turns_parts_back_to_the_relay() {
        assert!(not_offered(&refused(409, Some(NOT_OFFERED))));
        assert!(!not_offered(&refused(409, Some("run_not_running"))));
        assert!(!not_offered(&refused(404, Some("upload_not_found"))));
        assert!(!not_offered(&refused(403, Some("forbidden"))));
    }

    #[test]
    fn parts_are_signed_ahead_a_few_at_first_then_as_many_as_the_file_had_up_to_the_limits() {
        let asked: Vec<usize> = [0, 1, 4, 8, 16, 40, 64, 500, 9_990, 9_999]
            .into_iter()
            .map(SignAhead::count_from)
            .collect();
        assert_eq!(asked, [16, 16, 16, 16, 16, 40, 64, 64, 10, 1]);
    }

    fn signed(first: usize, n: usize, expires_in_s: u64) -> SignedUrls {
        SignedUrls {
            first,
            urls: (first..first + n).map(|i| format!("u{i}")).collect(),
            expires_in_s,
        }
    }

    #[test]
    fn a_url_signed_ahead_serves_its_own_part_once_while_fresh() {
        let mut ahead = SignAhead::default();
        assert_eq!(ahead.keep("a", 4, signed(4, 4, 300)), Some("u4".into()));
        assert_eq!(ahead.take("a", 4), None, "used once");
        assert_eq!(ahead.take("b", 5), None, "another upload's");
        assert_eq!(ahead.take("a", 5), Some("u5".into()));
        ahead.forget("a");
        assert_eq!(ahead.take("a", 6), None, "forgotten with its upload");
        assert_eq!(ahead.keep("a", 9, signed(0, 4, 300)), None, "not signed");
        assert_eq!(ahead.keep("c", 0, signed(0, 2, 0)), None, "stale at once");
        assert_eq!(ahead.take("c", 1), None, "stale");
    }

    #[test]
    fn a_store_that_fails_for_a_while_is_tried_again_and_one_that_refuses_is_not() {
        let status = |status| PutError::Status {
            status,
            body: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(403).is_transient(), "an expired or bad signature");
        assert!(
            !status(404).is_transient(),
            "an upload the store does not know"
        );
        assert!(!PutError::NoEtag.is_transient());
        assert!(status(403).fails_every_part(), "signatures refused");
        assert!(!status(404).fails_every_part(), "one upload's end");
        assert!(!status(500).fails_every_part());
    }
}
