//! The HTTP API: routes, authentication middleware, request metrics, and the JSON error
//! contract.
//!
//! `router(state)` is separate from serving so tests call it directly. Handlers validate
//! everything before touching the ledger, so a bad request changes nothing; errors reach
//! clients as `{"error": {"code", "message"}}` with a stable code, and internal details are
//! logged, never returned. A ledger that is down answers `503` with `Retry-After`.

mod api;
mod mover;
pub use mover::OWNER_HEADER;

use crate::auth::{self, Authenticator, Caller, Denied};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, RequestLabels};
use crate::scheduler::ProgressBoard;
use crate::store::Store;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Everything handlers need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

/// The shared parts of [`AppState`].
pub struct Shared {
    /// The ledger.
    pub ledger: Ledger,
    /// The snapshot store.
    pub store: Store,
    /// Who is calling.
    pub auth: Arc<dyn Authenticator>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live progress of running drains.
    pub board: ProgressBoard,
    /// Local mode: the volume root that sweeps list.
    pub volume_root: PathBuf,
    /// Attempts given to new drains.
    pub max_attempts: u32,
    /// False before start-up completes and from the first shutdown signal on.
    pub ready: AtomicBool,
    /// Drains recently found copying, for movers' requests: id → (volume, when checked).
    pub copying: std::sync::Mutex<
        std::collections::HashMap<String, (crate::volume::VolumeId, std::time::Instant)>,
    >,
    /// Multipart uploads relayed for movers, by upload id.
    pub uploads: std::sync::Mutex<std::collections::HashMap<String, mover::RelayUpload>>,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self {
            inner: Arc::new(shared),
        }
    }

    /// Marks the service ready or not for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Records the duration of a sweep.
    pub fn observe_sweep(&self, seconds: f64) {
        self.inner.metrics.sweep_seconds.observe(seconds);
    }

    fn shared(&self) -> &Shared {
        &self.inner
    }
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let v1 = api::routes()
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(mover::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .merge(api::public_routes())
        .fallback(|| async { Error::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_latency,
        ))
        .with_state(state)
}

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match auth::bearer(header) {
        Ok(token) => state.shared().auth.authenticate(token).await,
        Err(denied) => Err(denied),
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denied) => Error::from(denied).into_response(),
    }
}

async fn record_latency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state
        .shared()
        .metrics
        .http_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// An API error: a status, a stable code and a message for the client.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u32>,
}

impl Error {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<Denied> for Error {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Missing | Denied::Invalid => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthorized", denied.to_string())
            }
            Denied::Forbidden(why) => Self::new(StatusCode::FORBIDDEN, "forbidden", why),
        }
    }
}

impl Error {
    /// A failure of a dependency: `503` with `Retry-After` when it may pass, else a `500`
    /// whose details are logged, never returned.
    fn dependency(
        err: &dyn std::error::Error,
        transient: bool,
        what: &'static str,
        code: &'static str,
    ) -> Self {
        if transient {
            tracing::warn!(error = %err, "{what} unavailable");
            Self {
                retry_after: Some(2),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("the {what} is unavailable; retry later"),
                )
            }
        } else {
            tracing::error!(error = %err, "{what} error");
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

impl From<crate::ledger::Error> for Error {
    fn from(err: crate::ledger::Error) -> Self {
        match err {
            crate::ledger::Error::RunBusy { .. } | crate::ledger::Error::RunLost { .. } => {
                Self::new(StatusCode::CONFLICT, "run_busy", err.to_string())
            }
            err => Self::dependency(&err, err.is_transient(), "ledger", "ledger_unavailable"),
        }
    }
}

impl From<crate::snapshot::Error> for Error {
    fn from(err: crate::snapshot::Error) -> Self {
        Self::dependency(&err, err.is_transient(), "store", "store_unavailable")
    }
}

/// Checks that the authenticated caller may do `action`.
fn allow(caller: &Caller, action: &auth::Action<'_>) -> Result<(), Error> {
    auth::authorize(caller, action).map_err(Error::from)
}
