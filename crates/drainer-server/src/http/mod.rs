//! The HTTP API: routes (each declared with the [`Action`] its guard authorises, see
//! [`guard`]), request metrics, and the JSON error contract.
//!
//! `router(state)` is separate from serving so tests call it directly. Handlers validate
//! everything before touching the ledger, so a bad request changes nothing; errors reach
//! clients as `{"error": {"code", "message"}}` with a stable code, and internal details are
//! logged, never returned. A ledger that is down answers `503` with `Retry-After`.

mod api;
pub mod body_budget;
mod file_body;
pub mod guard;
pub mod inflight;
mod input;
pub mod lives;
mod mover_protocol;
pub mod recent;
mod relay_hash;
pub mod serve;
pub mod tls;
mod volumes;
pub(crate) use input::Input;
pub(crate) use mover_protocol::PROBE_PREFIX;

use crate::auth::{Action, Authority, Denied};
use crate::metrics::{Metrics, RequestLabels};
use crate::scheduler::ProgressBoard;
use crate::sweep::SweepError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use drainer_core::ledger::Ledger;
use drainer_core::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Everything handlers need; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Shared>,
}

/// The shared parts of [`AppState`].
pub struct Shared {
    /// The ledger.
    pub ledger: Ledger,
    /// The snapshot store.
    pub store: Store,
    /// Who is calling.
    pub auth: Arc<dyn Authority>,
    /// What the mode adds to handoffs.
    pub intake: Arc<dyn crate::intake::Intake>,
    /// Hears when handoffs create drains.
    pub notifier: Arc<dyn crate::notify::Notifier>,
    /// Runs sweeps.
    pub sweeper: Arc<dyn crate::sweep::Sweeper>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live progress of running drains.
    pub board: ProgressBoard,
    /// Attempts given to new drains.
    pub max_attempts: u32,
    /// The compression this drainer's copies use, which its movers follow unless told
    /// otherwise (`GET …/store`).
    pub compression: drainer_core::snapshot::Compression,
    /// False before start-up completes and from the first shutdown signal on.
    pub ready: AtomicBool,
    /// The state of the service's tasks, watches and store, for `/readyz` and `/healthz`.
    pub health: drainer_core::health::Health,
    /// Requests in flight per caller on the mover protocol and batch reads.
    pub per_caller: inflight::PerCaller,
    /// The bytes of mover request bodies held at once.
    pub body_budget: body_budget::BodyBudget,
    /// What `/readyz` and `/metrics` last read from the ledger.
    pub kept: recent::Kept,
    /// What the restore routes remember of snapshots' namespace lives and earlier reads.
    pub lives: lives::Lives,
    /// Drains recently found copying, for movers' requests: id → (volume, when checked).
    pub copying: std::sync::Mutex<
        std::collections::HashMap<String, (drainer_core::volume::VolumeId, std::time::Instant)>,
    >,
    /// Whether movers store the parts of large files straight into the store, and restores
    /// read large files straight from it, with URLs this drainer signs (`--mover-data-path`,
    /// and a store that can sign).
    pub direct_parts: bool,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self {
            inner: Arc::new(shared),
        }
    }

    /// Marks the service ready or not for `/readyz`.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Records the duration of a sweep.
    pub(crate) fn observe_sweep(&self, seconds: f64) {
        self.inner.metrics.sweep_seconds.observe(seconds);
    }

    fn shared(&self) -> &Shared {
        &self.inner
    }
}

impl Shared {
    /// The request path over this state's ledger, intake, notifier and board.
    pub(crate) fn requests(&self) -> crate::requests::Requests {
        crate::requests::Requests {
            ledger: self.ledger.clone(),
            intake: Arc::clone(&self.intake),
            notifier: Arc::clone(&self.notifier),
            board: self.board.clone(),
        }
    }
}

/// Registers each route with the [`Action`] its guard authorises (see [`guard`]) and the
/// [`Input`] it reads (anything else is refused before the handler runs, see [`input`]), and
/// returns the router with the table of routes, so the table can be checked against every
/// caller and the OpenAPI document.
macro_rules! routes {
    ($state:expr; $( $method:ident $path:literal => $action:ident, $handler:path, $input:expr; )*) => {{
        let state: &AppState = $state;
        let router = Router::new()
            $( .route(
                $path,
                axum::routing::$method($handler)
                    .route_layer(middleware::from_fn_with_state($input, input::refuse_unread))
                    .route_layer(middleware::from_fn_with_state(
                        guard::RouteGuard { state: state.clone(), action: Action::$action },
                        guard::authorize,
                    )),
            ) )*;
        let table = vec![ $( RouteSpec {
            method: stringify!($method),
            path: $path,
            action: Action::$action,
            input: $input,
        } ),* ];
        (router, table)
    }};
}

/// One route of the `/v1` API and the action it is authorised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSpec {
    /// The HTTP method, lower-case.
    pub method: &'static str,
    /// The path under `/v1`.
    pub path: &'static str,
    /// What the route does, for authorisation.
    pub action: Action,
    /// What it reads besides its path.
    pub input: Input,
}

/// The `/v1` routes: the API (small bodies) and the mover protocol (parts and batches).
fn v1_routes(state: &AppState) -> (Router<AppState>, Vec<RouteSpec>) {
    const NOTHING: Input = Input::NOTHING;
    const BODY: Input = Input::BODY;
    const KEY: Input = Input::query(&["key"]);
    let (api, mut table) = routes!(state;
        post "/handoffs" => Handoff, api::handoff, BODY;
        get "/drains" => ListDrains, api::list_drains,
            Input::query(&["state", "namespace", "volume", "limit", "after"]);
        get "/drains/{id}" => ReadDrain, api::get_drain, NOTHING;
        post "/drains/{id}/retry" => RetryDrain, api::retry_drain, NOTHING;
        post "/drains/{id}/cancel" => CancelDrain, api::cancel_drain, NOTHING;
        post "/drains/{id}/abandon" => AbandonDrain, api::abandon_drain, BODY;
        post "/sweeps" => Sweep, api::sweep, Input::query_and_body(&["dry_run"]);
        get "/orphans" => ListOrphans, api::orphans, Input::query(&["namespace"]);
        get "/reclaims" => ListReclaims, api::reclaims, Input::query(&["namespace"]);
        get "/volumes/{namespace}/{pvc}/snapshots" => ListSnapshots, volumes::snapshots,
            Input::query(&["earlier"]);
        post "/volumes/{namespace}/{pvc}/snapshots/{snapshot}/restored" => Restore,
            volumes::restored, NOTHING;
        get "/volumes/{namespace}/{pvc}/objects" => Restore, volumes::get_object,
            Input::query(&["key", "earlier"]);
        get "/volumes/{namespace}/{pvc}/objects/url" => Restore, volumes::sign_object,
            Input::query(&["key", "earlier"]);
    );
    let (batch, batch_table) = routes!(state;
        post "/volumes/{namespace}/{pvc}/objects/batch" => Restore, volumes::get_objects,
            Input::query_and_body(&["earlier"]);
    );
    table.extend(batch_table);
    let (movers, mover_table) = routes!(state;
        post "/drains/{id}/run" => Stream, mover_protocol::begin, NOTHING;
        get "/drains/{id}/run/{run}/stored" => Stream, mover_protocol::stored, NOTHING;
        post "/drains/{id}/run/{run}/record" => Stream, mover_protocol::record, BODY;
        post "/drains/{id}/run/{run}/finish" => Stream, mover_protocol::finish, BODY;
        post "/drains/{id}/run/{run}/interrupted" => Stream, mover_protocol::interrupted, BODY;
        put "/drains/{id}/run/{run}/totals" => Stream, mover_protocol::put_totals, BODY;
        get "/drains/{id}/run/{run}/partial" => Stream, mover_protocol::get_partial,
            Input::query(&["path_b64"]);
        put "/drains/{id}/run/{run}/partial" => Stream, mover_protocol::put_partial, BODY;
        delete "/drains/{id}/run/{run}/partial" => Stream, mover_protocol::delete_partial,
            Input::query(&["path_b64"]);
        put "/drains/{id}/objects" => Stream, mover_protocol::put_object, Input::query_and_body(&["key"]);
        get "/drains/{id}/objects" => Stream, mover_protocol::get_object, KEY;
        delete "/drains/{id}/objects" => Stream, mover_protocol::delete_object, KEY;
        post "/drains/{id}/objects/batch" => Stream, mover_protocol::put_objects, BODY;
        post "/drains/{id}/uploads" => Stream, mover_protocol::create_upload, KEY;
        put "/drains/{id}/uploads/{upload}/{part}" => Stream, mover_protocol::put_part,
            Input::query_and_body(&["key"]);
        post "/drains/{id}/uploads/{upload}/complete" => Stream, mover_protocol::complete_upload, KEY;
        post "/drains/{id}/uploads/{upload}/{part}/url" => Stream, mover_protocol::sign_part, KEY;
        post "/drains/{id}/uploads/{upload}/{part}/stored" => Stream, mover_protocol::record_direct_part,
            Input::query_and_body(&["key"]);
        post "/drains/{id}/uploads/{upload}/urls" => Stream, mover_protocol::sign_parts,
            Input::query(&["key", "first", "count"]);
        post "/drains/{id}/parts/stored" => Stream, mover_protocol::record_direct_parts, BODY;
        delete "/drains/{id}/uploads/{upload}" => Stream, mover_protocol::abort_upload, KEY;
        post "/drains/{id}/flush" => Stream, mover_protocol::flush, NOTHING;
        get "/drains/{id}/store" => Stream, mover_protocol::store_info, NOTHING;
    );
    table.extend(mover_table);
    let per_caller = |counter: &inflight::Counter, scope| {
        let limit = inflight::Limit {
            counter: counter.clone(),
            scope,
        };
        middleware::from_fn_with_state(limit, inflight::limit)
    };
    let counters = &state.shared().per_caller;
    let router = api
        .merge(batch.layer(per_caller(&counters.batch, inflight::Scope::Volume)))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(
            movers
                .layer(middleware::from_fn_with_state(
                    state.shared().body_budget.clone(),
                    body_budget::limit,
                ))
                .layer(per_caller(&counters.mover, inflight::Scope::Drain))
                .layer(DefaultBodyLimit::max(mover_protocol::MAX_MOVER_BODY)),
        );
    (router, table)
}

/// The API router.
pub(crate) fn router(state: AppState) -> Router {
    let (v1, _) = v1_routes(&state);
    let v1 = v1.layer(middleware::from_fn_with_state(
        state.clone(),
        guard::authenticate,
    ));
    Router::new()
        .nest("/v1", v1)
        .merge(
            api::public_routes().route_layer(middleware::from_fn_with_state(
                Input::NOTHING,
                input::refuse_unread,
            )),
        )
        .fallback(|| async { Error::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_latency,
        ))
        .with_state(state)
}

/// Every `/v1` route with its action (for the tests).
#[cfg(test)]
pub(crate) fn route_table(state: &AppState) -> Vec<RouteSpec> {
    v1_routes(state).1
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
    pub(crate) status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u32>,
    /// The RBAC permission a `403` lacks, if RBAC could have granted the request.
    missing: Option<Box<crate::auth::Permission>>,
}

impl Error {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            missing: None,
        }
    }

    /// A `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// The error with `hint` added to its message (another way to be allowed, say).
    pub(crate) fn with_hint(mut self, hint: &str) -> Self {
        self.message = format!("{} ({hint})", self.message);
        self
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let Some(missing) = &self.missing {
            body["error"]["missing"] = serde_json::json!({
                "group": crate::auth::GROUP,
                "verb": missing.verb,
                "resource": missing.resource,
                "namespace": missing.namespace,
                "name": missing.name,
            });
        }
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
            Denied::NotGranted { ref missing, .. } => Self {
                missing: Some(Box::new(missing.clone())),
                ..Self::new(StatusCode::FORBIDDEN, "forbidden", denied.to_string())
            },
            Denied::Throttled { retry_after } => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    denied.to_string(),
                )
            },
            Denied::Unavailable(why) => {
                tracing::warn!(reason = %why, "cannot check a caller's identity");
                Self {
                    retry_after: Some(2),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "identity_unavailable",
                        "the caller's identity cannot be checked now; retry later",
                    )
                }
            }
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

impl From<drainer_core::ledger::Error> for Error {
    fn from(err: drainer_core::ledger::Error) -> Self {
        if let drainer_core::ledger::Error::RunBusy { .. }
        | drainer_core::ledger::Error::RunLost { .. } = err
        {
            return Self::new(StatusCode::CONFLICT, "run_busy", err.to_string());
        }
        if err.is_full() {
            tracing::warn!(error = %err, "ledger full");
            return Self {
                retry_after: Some(10),
                ..Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "ledger_full",
                    "the ledger's disk is full; nothing was recorded; retry later",
                )
            };
        }
        Self::dependency(&err, err.is_transient(), "ledger", "ledger_unavailable")
    }
}

impl From<crate::intake::Refusal> for Error {
    fn from(refusal: crate::intake::Refusal) -> Self {
        match refusal {
            crate::intake::Refusal::NotFound(why) => {
                Self::new(StatusCode::NOT_FOUND, "claim_not_found", why)
            }
            crate::intake::Refusal::Unavailable(why) => {
                tracing::warn!(reason = %why, "cannot admit a handoff now");
                Self {
                    retry_after: Some(2),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", why)
                }
            }
        }
    }
}

impl From<SweepError> for Error {
    fn from(err: SweepError) -> Self {
        match err {
            SweepError::Ledger(e) => Self::from(e),
            SweepError::Store(e) => Self::from(e),
            SweepError::Cluster(why) => {
                tracing::warn!(reason = %why, "cannot sweep now");
                Self {
                    retry_after: Some(2),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", why)
                }
            }
            err @ SweepError::List(..) => Self::dependency(&err, false, "volume root", "internal"),
        }
    }
}

impl From<drainer_core::snapshot::Error> for Error {
    fn from(err: drainer_core::snapshot::Error) -> Self {
        if disk_full(&err) {
            tracing::warn!(error = %err, "store full");
            return Self {
                retry_after: Some(10),
                ..Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "store_full",
                    "the store's disk is full (No space left on device); retry once there is room",
                )
            };
        }
        Self::dependency(&err, err.is_transient(), "store", "store_unavailable")
    }
}

/// Whether `err` (or an error under it) is a full disk (`ENOSPC`), as a local store reports it
/// (the `io::Error` kept as the source through `object_store`).
fn disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// `Query` whose rejections are the API's JSON errors (`400 invalid_request`), not plain text.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Query<T>
{
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| Error::invalid(rejection.body_text()))
    }
}

/// `Path` whose rejections are the API's JSON errors (`400 invalid_request`).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for Path<T>
{
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| Error::invalid(rejection.body_text()))
    }
}

/// `Json` whose rejections are the API's JSON errors (`400 invalid_json`, `413`, `415`).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let body = axum::Json::<T>::from_request(request, state).await;
        json_body(body).map(Json)
    }
}

/// The body of a JSON request, or the API's error for it.
pub(crate) fn json_body<T>(
    body: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Error> {
    body.map(|axum::Json(b)| b)
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json",
            ),
            _ => Error::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                rejection.body_text(),
            ),
        })
}

#[cfg(test)]
mod tests;
