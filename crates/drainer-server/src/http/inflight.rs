//! Requests in flight per caller: the mover protocol and batch reads of snapshots hold
//! memory and store connections while they run (a batch's response streams for as long as
//! its reader takes), so one caller may run only so many at once. Over the limit a request
//! is answered `429 too_many_requests` with `Retry-After: 1` before its handler runs, and
//! changes nothing.
//!
//! A request counts from when its handler is called until its response body has been sent
//! (or dropped, when the client goes away). Requests are counted per caller principal and
//! per drain (the mover protocol: a mover streams one drain) or per volume (batch reads: a
//! restore reads one volume), so several movers or restores run by one admin do not queue
//! behind each other. This module counts; it decides nothing about who may call.

use super::Error;
use crate::auth::Caller;
use axum::body::{Body, HttpBody};
use axum::extract::{RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Default requests in flight per caller and drain on the mover protocol (a mover runs 64
/// at once by default).
pub(crate) const MOVER_REQUESTS: usize = 128;
/// Default batch reads in flight per caller and volume (a restore runs 4 at once).
pub(crate) const BATCH_READS: usize = 8;

/// The counters of requests in flight, per kind of route.
#[derive(Debug, Clone)]
pub struct PerCaller {
    /// Mover protocol requests per caller and drain.
    pub mover: Counter,
    /// Batch reads per caller and volume.
    pub batch: Counter,
}

impl PerCaller {
    /// Counters allowing `mover` requests of the mover protocol and `batch` batch reads at
    /// once per caller.
    pub fn new(mover: usize, batch: usize) -> Self {
        Self {
            mover: Counter::new("mover protocol", mover),
            batch: Counter::new("batch reads", batch),
        }
    }
}

impl Default for PerCaller {
    fn default() -> Self {
        Self::new(MOVER_REQUESTS, BATCH_READS)
    }
}

/// Requests in flight per key, at most `limit` each.
#[derive(Debug, Clone)]
pub struct Counter {
    what: &'static str,
    limit: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Counter {
    fn new(what: &'static str, limit: usize) -> Self {
        Self {
            what,
            limit: limit.max(1),
            counts: Arc::default(),
        }
    }

    /// One more request of `key`, or `None` when it has `limit` in flight.
    fn enter(&self, key: String) -> Option<InFlight> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(InFlight {
            counts: Arc::clone(&self.counts),
            key,
        })
    }
}

/// One request counted; uncounted when dropped.
struct InFlight {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What a group of routes counts by, besides the caller.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope {
    /// The drain (`{id}`): the mover protocol.
    Drain,
    /// The volume (`{namespace}/{pvc}`): batch reads.
    Volume,
}

/// The state of the [`limit`] middleware of a group of routes.
#[derive(Debug, Clone)]
pub(super) struct Limit {
    pub(super) counter: Counter,
    pub(super) scope: Scope,
}

/// Runs the request if its caller has room, holding its place until the response is sent.
pub(super) async fn limit(
    State(Limit { counter, scope }): State<Limit>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return next.run(request).await; // unauthenticated: the guard refuses it
    };
    let param = |name: &str| {
        let value = params.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        value.unwrap_or_default().to_owned()
    };
    let scope = match scope {
        Scope::Drain => param("id"),
        Scope::Volume => format!("{}/{}", param("namespace"), param("pvc")),
    };
    let key = format!("{} {scope}", caller.principal());
    let Some(in_flight) = counter.enter(key) else {
        tracing::info!(
            caller = %caller.principal(),
            %scope,
            limit = counter.limit,
            "too many {} in flight",
            counter.what
        );
        return too_many(&counter);
    };
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(Counted {
            body,
            _in_flight: in_flight,
        })
    })
}

fn too_many(counter: &Counter) -> Response {
    let mut error = Error::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        format!(
            "at most {} {} in flight per caller; retry later",
            counter.limit, counter.what
        ),
    );
    error.retry_after = Some(1);
    error.into_response()
}

/// A response body that keeps its request counted until it is sent or dropped.
struct Counted {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    /// A router whose one route answers with a body that streams until dropped, limited to
    /// two in flight per caller and `scope`; the caller is named by the `caller` header.
    fn router(scope: Scope, path: &str) -> Router {
        let endless = || async {
            let stream = futures::stream::pending::<Result<Bytes, std::io::Error>>();
            Body::from_stream(stream)
        };
        let limit = Limit {
            counter: Counter::new("test requests", 2),
            scope,
        };
        Router::new()
            .route(path, get(endless))
            .layer(axum::middleware::from_fn_with_state(limit, self::limit))
            .layer(axum::middleware::from_fn(
                |mut request: Request, next: Next| async move {
                    let name = request.headers()["caller"].to_str().unwrap().to_owned();
                    request
                        .extensions_mut()
                        .insert(Caller::Mover { drain: name });
                    next.run(request).await
                },
            ))
    }

    async fn call(router: &Router, caller: &str, path: &str) -> Response {
        let request = axum::http::Request::get(path)
            .header("caller", caller)
            .body(Body::empty())
            .unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn over_the_limit_a_caller_gets_429_until_a_response_is_sent() {
        let router = router(Scope::Drain, "/drains/{id}/run");
        let first = call(&router, "a", "/drains/d1/run").await;
        let second = call(&router, "a", "/drains/d1/run").await;
        assert_eq!(
            (first.status(), second.status()),
            (StatusCode::OK, StatusCode::OK)
        );
        let refused = call(&router, "a", "/drains/d1/run").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(refused.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
        // Another drain of the same caller, and another caller, have their own room.
        assert_eq!(call(&router, "a", "/drains/d2/run").await.status(), 200);
        assert_eq!(call(&router, "b", "/drains/d1/run").await.status(), 200);
        // A response body sent (here: dropped) gives its place back.
        drop(first);
        assert_eq!(call(&router, "a", "/drains/d1/run").await.status(), 200);
        drop(second);
    }

    #[tokio::test]
    async fn batch_reads_count_per_volume() {
        let router = router(Scope::Volume, "/volumes/{namespace}/{pvc}/objects/batch");
        let path = |pvc: &str| format!("/volumes/shop/{pvc}/objects/batch");
        let _held = [
            call(&router, "a", &path("v1")).await,
            call(&router, "a", &path("v1")).await,
        ];
        assert_eq!(call(&router, "a", &path("v1")).await.status(), 429);
        assert_eq!(call(&router, "a", &path("v2")).await.status(), 200);
    }

    #[test]
    fn a_key_has_at_most_limit_in_flight_and_gets_them_back() {
        let counter = Counter::new("test", 2);
        let a = counter.enter("a".into()).unwrap();
        let _a2 = counter.enter("a".into()).unwrap();
        assert!(counter.enter("a".into()).is_none(), "third refused");
        let _b = counter.enter("b".into()).expect("another key has its own");
        drop(a);
        assert!(counter.enter("a".into()).is_some(), "a place freed");
    }

    #[test]
    fn keys_without_requests_are_forgotten() {
        let counter = Counter::new("test", 2);
        drop(counter.enter("a".into()));
        assert!(counter.counts.lock().unwrap().is_empty());
    }
}
