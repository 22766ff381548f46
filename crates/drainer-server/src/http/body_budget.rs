//! Memory for the request bodies of the mover protocol, one budget for every caller: a
//! mover's bodies (a part, an object, a batch of small objects) are read whole before they
//! are stored, up to [`super::mover_protocol::MAX_MOVER_BODY`] each, and movers may send many at once,
//! so the bytes held at once are bounded here. A request takes its `Content-Length` (the
//! largest body when it streams one without a length) from the budget before its body is
//! read, and gives it back once its handler has answered; one that cannot have it within
//! [`WAIT`] is answered `429 too_many_requests` with `Retry-After: 1` and changes nothing (a
//! mover retries it). This module counts bytes; it decides nothing about who may send them.

use super::Error;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Default bytes of request bodies held at once: half of the deployment's memory limit.
#[cfg(test)]
pub(crate) const DEFAULT_BUDGET: usize = 256 * 1024 * 1024;
/// How long a request waits for room before it is refused.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// The bytes of request bodies that may be held at once, counted in KiB.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    largest: usize,
    wait: Duration,
}

impl BodyBudget {
    /// A budget of `total` bytes for bodies of at most `largest` bytes (`total` is raised to
    /// `largest` if smaller: every allowed body must fit).
    pub fn new(total: usize, largest: usize) -> Self {
        let total_kib = u32::try_from(total.max(largest).div_ceil(1024)).unwrap_or(u32::MAX);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            largest,
            wait: WAIT,
        }
    }

    /// A budget of `total` bytes for the bodies of the mover protocol.
    pub(crate) fn for_movers(total: usize) -> Self {
        Self::new(total, super::mover_protocol::MAX_MOVER_BODY)
    }

    /// The KiB a request's body may take: its length, the largest body when it has a body
    /// of unknown length, none without one.
    fn wanted_kib(&self, request: &Request) -> u32 {
        let headers = request.headers();
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let bytes = match length {
            Some(length) => length.min(self.largest),
            None if headers.contains_key(header::TRANSFER_ENCODING) => self.largest,
            None => 0,
        };
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib)
    }
}

/// Runs the request once its body's bytes fit in the budget, and gives them back when its
/// handler has answered (the handler has stored the body and dropped it by then).
pub(super) async fn limit(
    State(budget): State<BodyBudget>,
    request: Request,
    next: Next,
) -> Response {
    let wanted = budget.wanted_kib(&request);
    if wanted == 0 {
        return next.run(request).await;
    }
    let room = budget.kib.clone().acquire_many_owned(wanted);
    let Ok(Ok(_held)) = tokio::time::timeout(budget.wait, room).await else {
        tracing::info!(
            kib = wanted,
            budget_kib = budget.total_kib,
            "request bodies fill their memory budget; refused"
        );
        let mut error = Error::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "request bodies of movers fill drainer's {} MiB for them; retry later",
                budget.total_kib / 1024
            ),
        );
        error.retry_after = Some(1);
        return error.into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::routing::put;
    use tower::ServiceExt;

    /// A router whose one route reads its body, then waits until `released` is true.
    fn router(budget: BodyBudget, released: tokio::sync::watch::Receiver<bool>) -> Router {
        let hold = move |_body: Bytes| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                StatusCode::NO_CONTENT
            }
        };
        Router::new()
            .route("/objects", put(hold))
            .layer(axum::middleware::from_fn_with_state(budget, limit))
    }

    fn body_of(kib: usize) -> axum::http::Request<Body> {
        axum::http::Request::put("/objects")
            .header(header::CONTENT_LENGTH, kib * 1024)
            .body(Body::from(vec![7u8; kib * 1024]))
            .unwrap()
    }

    #[tokio::test]
    async fn bodies_beyond_the_budget_wait_then_get_429_and_fit_again_once_answered() {
        let mut budget = BodyBudget::new(100 * 1024, 64 * 1024);
        budget.wait = Duration::from_millis(100);
        let (release, released) = tokio::sync::watch::channel(false);
        let app = router(budget, released);
        let first = tokio::spawn(app.clone().oneshot(body_of(60)));
        let second = tokio::spawn(app.clone().oneshot(body_of(40)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 100 KiB held: one more KiB waits, then is refused.
        let refused = app.clone().oneshot(body_of(1)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "1");
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), 204);
        assert_eq!(second.await.unwrap().unwrap().status(), 204);
        // Given back once answered: the largest body fits again.
        let third = app.clone().oneshot(body_of(64)).await.unwrap();
        assert_eq!(third.status(), 204);
    }

    #[test]
    fn a_request_takes_its_length_the_largest_when_streamed_and_nothing_without_a_body() {
        let budget = BodyBudget::new(1024 * 1024, 64 * 1024);
        let with = |name: header::HeaderName, value: &str| {
            axum::http::Request::put("/objects")
                .header(name, value)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(budget.wanted_kib(&with(header::CONTENT_LENGTH, "1")), 1);
        assert_eq!(budget.wanted_kib(&with(header::CONTENT_LENGTH, "4096")), 4);
        assert_eq!(
            budget.wanted_kib(&with(header::CONTENT_LENGTH, "999999999")),
            64
        );
        assert_eq!(
            budget.wanted_kib(&with(header::TRANSFER_ENCODING, "chunked")),
            64
        );
        let get = axum::http::Request::get("/objects")
            .body(Body::empty())
            .unwrap();
        assert_eq!(budget.wanted_kib(&get), 0);
    }
}
