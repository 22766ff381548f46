//! Direct parts: where the drainer offers them (`StoreInfo::direct_parts`), a mover stores
//! each part of a large file straight into the store with a short-lived URL the drainer signs
//! for that part alone, then reports the part (its `ETag` and length) so the drainer's ledger
//! records it exactly as a relayed one: resumption, completion and the drainer's checks are
//! unchanged, and the store's credentials never leave the drainer.
//!
//! The relay stays the fallback: a part the store does not take after a few tries goes
//! through the drainer, which also tells whether the upload itself is over; and every later
//! part too if the drainer stops offering direct parts (`409`), the store cannot be reached
//! from here, or it refuses the drainer's signatures (`403`).

use crate::client::{Api, CallError};
use bytes::Bytes;
use drainer_core::protocol::{DirectPart, KeyParam, SignedUrl};
use drainer_core::retry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a mover keeps sending a part to the store again before it relays it instead.
const STORE_RETRY_FOR: Duration = Duration::from_secs(20);

/// The error code of a drainer that relays every part.
const NOT_OFFERED: &str = "direct_parts_not_offered";

/// A part's way straight into the store.
#[derive(Debug)]
pub(super) struct DirectParts {
    store: reqwest::Client,
    /// Whether the drainer still offers direct parts (cleared at its first `409`).
    offered: AtomicBool,
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

/// Whether `error` is the drainer saying it relays every part.
fn not_offered(error: &CallError) -> bool {
    matches!(error, CallError::Status { status: 409, code: Some(code), .. } if code == NOT_OFFERED)
}

impl DirectParts {
    /// Direct parts, each request to the store timing out after `timeout`.
    pub(super) fn new(timeout: Duration) -> reqwest::Result<Self> {
        let store = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()?;
        Ok(Self {
            store,
            offered: AtomicBool::new(true),
        })
    }

    fn withdrawn(&self, why: &str) {
        if self.offered.swap(false, Ordering::Relaxed) {
            tracing::warn!(why, "relaying every part from now on");
        }
    }

    /// Stores part `idx` of upload `upload` (writing `key`) straight into the store and
    /// reports it. `Ok(false)`: not stored that way, the caller relays the part. An error is
    /// the drainer's answer (a `404` says the upload is over).
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
        let part_url = api.url(&format!("/uploads/{upload}/{idx}"));
        let url = format!("{part_url}/url");
        let signed: SignedUrl = match api.json(|http| http.post(&url).query(key)).await {
            Ok(signed) => signed,
            Err(e) if not_offered(&e) => {
                self.withdrawn("the drainer no longer offers direct parts");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let etag = match self.send(&signed.url, body).await {
            Ok(etag) => etag,
            Err(e) => {
                tracing::warn!(upload, part = idx, key = %key.key, error = %e, "the store did not take a part; relaying it");
                if e.fails_every_part() {
                    self.withdrawn("the store cannot be reached, or refuses the signed URLs");
                }
                return Ok(false);
            }
        };
        let report = DirectPart {
            etag,
            len: body.len() as u64,
        };
        let url = format!("{part_url}/stored");
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
