//! The `/v1` handlers and the public endpoints (`/healthz`, `/readyz`, `/metrics`,
//! `/v1/openapi.json`).

use super::guard::{
    Granted, HandoffScope, ListScope, NamespaceScope, OperatorAction, drain_not_found,
};
use super::{AppState, Error, Query, json_body};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use drainer_core::health::LedgerCheck;
use drainer_core::ledger::{Drain, DrainEvent, DrainFilter, NewDrain, PageCursor, Refused};
use drainer_core::lifecycle::{DrainState, Event};
use drainer_core::snapshot::ProgressView;
use drainer_core::volume::{VolumeId, is_dns_label, is_dns_subdomain};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Most PVCs in one handoff.
const MAX_PVCS: usize = 32;
/// Longest reason accepted.
const MAX_REASON: usize = 200;
/// Drains in one page of a listing, unless asked otherwise.
const DEFAULT_PAGE: u32 = 100;
/// Most drains in one page of a listing; more come with the `next` cursor.
pub(super) const MAX_PAGE: u32 = 1000;

pub(super) fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
}

/// The body of `POST /v1/handoffs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HandoffBody {
    namespace: String,
    pvcs: Vec<String>,
    pod: Option<String>,
    reason: Option<String>,
    /// Wait for the announcing pod to let go of the volumes before deciding (Kubernetes mode
    /// decides this itself; in local mode there is no pod to wait for).
    #[serde(default)]
    wait_for_release: bool,
}

/// Validates a handoff; returns its volumes. A pod may name no claim: every claim it mounts
/// (`mounts`) is meant.
fn validate_handoff(body: &HandoffBody, mounts: Option<&[String]>) -> Result<Vec<VolumeId>, Error> {
    if !is_dns_label(&body.namespace) {
        return Err(Error::invalid(format!(
            "namespace {:?} is not a valid RFC 1123 label",
            body.namespace
        )));
    }
    let pvcs = match (body.pvcs.is_empty(), mounts) {
        (true, Some(mounts)) if !mounts.is_empty() => mounts,
        _ => body.pvcs.as_slice(),
    };
    if pvcs.is_empty() || pvcs.len() > MAX_PVCS {
        return Err(Error::invalid(format!(
            "pvcs must list 1 to {MAX_PVCS} names (a pod may name none: every claim it mounts)"
        )));
    }
    let mut volumes: Vec<VolumeId> = Vec::with_capacity(pvcs.len());
    for pvc in pvcs {
        let volume =
            VolumeId::new(&body.namespace, pvc).map_err(|e| Error::invalid(e.to_string()))?;
        if volumes.contains(&volume) {
            return Err(Error::invalid(format!("pvc {pvc:?} is listed twice")));
        }
        volumes.push(volume);
    }
    if let Some(pod) = &body.pod
        && !is_dns_subdomain(pod)
    {
        return Err(Error::invalid(format!(
            "pod {pod:?} is not a valid RFC 1123 name"
        )));
    }
    if let Some(reason) = &body.reason
        && (reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control))
    {
        return Err(Error::invalid(format!(
            "reason must be at most {MAX_REASON} printable characters"
        )));
    }
    Ok(volumes)
}

/// A drain as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct DrainView {
    #[serde(flatten)]
    drain: Drain,
    volume: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<DrainEvent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressView>,
}

impl DrainView {
    fn of(drain: Drain) -> Self {
        Self {
            volume: drain.volume().to_string(),
            drain,
            history: None,
            progress: None,
        }
    }
}

pub(super) async fn handoff(
    State(state): State<AppState>,
    scope: Granted<HandoffScope>,
    body: Result<Json<HandoffBody>, JsonRejection>,
) -> Result<impl IntoResponse, Error> {
    let body = json_body(body)?;
    let scope = scope.into_inner();
    let mounts = match scope.caller() {
        crate::auth::Caller::Workload(crate::auth::Workload { pod: Some(pod), .. }) => {
            Some(pod.mounts.as_slice())
        }
        _ => None,
    };
    let volumes = validate_handoff(&body, mounts)?;
    let volumes = scope.check(&state, volumes).await?.into_inner();
    let shared = state.shared();
    let reason = body.reason.as_deref().unwrap_or("handoff");
    let requester = scope.caller().principal();
    let mut wanted: Vec<NewDrain> = volumes
        .iter()
        .map(|volume| NewDrain {
            volume: volume.clone(),
            pod: body.pod.clone(),
            reason: reason.to_owned(),
            max_attempts: shared.max_attempts,
            wait_for_release: body.wait_for_release,
            requested_by: Some(requester.clone()),
            facts: Default::default(),
        })
        .collect();
    let recorded = match shared.requests().request(scope.caller(), &mut wanted).await {
        Ok(recorded) => recorded,
        Err(crate::requests::Error::Refused(refusal)) => return Err(refusal.into()),
        Err(crate::requests::Error::Ledger(e)) => {
            // `/readyz` must not answer from a check made before the ledger failed.
            shared.kept.ledger.forget().await;
            return Err(e.into());
        }
    };
    let created = recorded.iter().any(|(_, new)| *new);
    for (drain, new) in &recorded {
        tracing::info!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, new, by = %requester, "handoff recorded");
    }
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let drains: Vec<DrainView> = recorded
        .into_iter()
        .map(|(d, _)| DrainView::of(d))
        .collect();
    Ok((status, Json(serde_json::json!({ "drains": drains }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainQuery {
    state: Option<String>,
    namespace: Option<String>,
    volume: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

/// The filter a listing query asks for, validated.
fn drain_filter(query: &DrainQuery) -> Result<(DrainFilter, u32), Error> {
    let mut filter = DrainFilter::default();
    if let Some(s) = &query.state {
        filter.state = Some(s.parse::<DrainState>().map_err(Error::invalid)?);
    }
    if let Some(ns) = &query.namespace {
        if !is_dns_label(ns) {
            return Err(Error::invalid(format!(
                "namespace {ns:?} is not a valid RFC 1123 label"
            )));
        }
        filter.namespace = Some(ns.clone());
    }
    if let Some(v) = &query.volume {
        let volume: VolumeId = v
            .parse()
            .map_err(|e: drainer_core::volume::InvalidName| Error::invalid(e.to_string()))?;
        filter.namespace = Some(volume.namespace);
        filter.pvc = Some(volume.name);
    }
    if let Some(after) = &query.after {
        filter.after = Some(after.parse::<PageCursor>().map_err(Error::invalid)?);
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::invalid(format!(
            "limit must be 1 to {MAX_PAGE}; page with `after` for more"
        )));
    }
    Ok((filter, limit))
}

/// The parameters of a listing's query that say which namespace it asks for; the others are
/// the handler's business (and `input`'s, which refuses those no route reads).
#[derive(Debug, Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
    volume: Option<String>,
}

/// The namespace a listing asks for (`namespace`, or the namespace of `volume` for a
/// listing of drains), as its guard must authorise it; `None` for every namespace.
fn query_namespace(uri: &axum::http::Uri, volume: bool) -> Result<Option<String>, Error> {
    let query = axum::extract::Query::<NamespaceQuery>::try_from_uri(uri)
        .map_err(|rejection| Error::invalid(rejection.body_text()))?
        .0;
    if volume && let Some(v) = &query.volume {
        let volume: VolumeId = v
            .parse()
            .map_err(|e: drainer_core::volume::InvalidName| Error::invalid(e.to_string()))?;
        return Ok(Some(volume.namespace));
    }
    match query.namespace {
        Some(ns) if !is_dns_label(&ns) => Err(Error::invalid(format!(
            "namespace {ns:?} is not a valid RFC 1123 label"
        ))),
        namespace => Ok(namespace),
    }
}

/// The namespace a listing of drains asks for: see [`query_namespace`].
pub(super) fn listing_namespace(uri: &axum::http::Uri) -> Result<Option<String>, Error> {
    query_namespace(uri, true)
}

/// The namespace a listing of orphaned volumes asks for; `None` for every namespace.
pub(super) fn orphans_namespace(uri: &axum::http::Uri) -> Result<Option<String>, Error> {
    query_namespace(uri, false)
}

pub(super) async fn list_drains(
    State(state): State<AppState>,
    scope: Granted<ListScope>,
    Query(query): Query<DrainQuery>,
) -> Result<impl IntoResponse, Error> {
    let (mut filter, limit) = drain_filter(&query)?;
    let scope = scope.into_inner();
    if scope.namespace.is_some() && filter.namespace != scope.namespace {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the listing asks for another namespace than the one granted",
        ));
    }
    filter.requested_by = scope.requested_by;
    // One more than the page, to know whether there is a next one.
    let mut drains = state.shared().ledger.drains(&filter, limit + 1).await?;
    let next = (drains.len() > limit as usize).then(|| {
        drains.truncate(limit as usize);
        drains.last().map(|d| PageCursor::after(d).to_string())
    });
    let drains: Vec<DrainView> = drains.into_iter().map(DrainView::of).collect();
    Ok(Json(
        serde_json::json!({ "drains": drains, "next": next.flatten() }),
    ))
}

pub(super) async fn get_drain(
    State(state): State<AppState>,
    drain: Granted<Drain>,
) -> Result<impl IntoResponse, Error> {
    let drain = drain.into_inner();
    let shared = state.shared();
    let history = shared.ledger.drain_events(&drain.id).await?;
    let progress = shared
        .board
        .lock()
        .ok()
        .and_then(|board| board.get(&drain.id).map(|r| r.progress.view()));
    Ok(Json(DrainView {
        history: Some(history),
        progress,
        ..DrainView::of(drain)
    }))
}

async fn change(
    state: &AppState,
    drain: Drain,
    event: Event,
    by: &str,
    why: Option<&str>,
) -> Result<Json<DrainView>, Error> {
    let id = drain.id;
    let shared = state.shared();
    match shared.requests().change(&id, event, by, why).await? {
        Ok(drain) => {
            super::guard::forget_copying(state, &id);
            Ok(Json(DrainView::of(drain)))
        }
        Err(Refused::NotFound(_)) => Err(drain_not_found(&id)),
        Err(busy @ Refused::VolumeBusy { .. }) => Err(Error::new(
            StatusCode::CONFLICT,
            "volume_busy",
            busy.to_string(),
        )),
        Err(refused) => Err(Error::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            refused.to_string(),
        )),
    }
}

pub(super) async fn retry_drain(
    State(state): State<AppState>,
    admin: Granted<OperatorAction>,
    drain: Granted<Drain>,
) -> Result<Json<DrainView>, Error> {
    let by = admin.into_inner().by;
    change(&state, drain.into_inner(), Event::RetriedByHand, &by, None).await
}

/// Cancels an active drain, unless it holds its claim from the garbage collector: letting go
/// of that hold would let the claim be deleted with its data uncopied, which takes the
/// explicit, recorded `abandon`.
pub(super) async fn cancel_drain(
    State(state): State<AppState>,
    admin: Granted<OperatorAction>,
    drain: Granted<Drain>,
) -> Result<Json<DrainView>, Error> {
    let drain = drain.into_inner();
    let how = format!("POST /v1/drains/{}/abandon with a reason", drain.id);
    let hold = state.shared().intake.claim_hold();
    if let Some(why) = hold.and_then(|h| h.cancel_refused(&drain, &how)) {
        return Err(Error::new(StatusCode::CONFLICT, "claim_held", why));
    }
    let by = admin.into_inner().by;
    change(&state, drain, Event::Cancelled, &by, None).await
}

/// The body of `POST /v1/drains/{id}/abandon`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AbandonBody {
    /// Why the drain is given up (recorded in its history and in a Warning Event).
    reason: String,
}

/// Longest abandon reason accepted.
const MAX_ABANDON_REASON: usize = 500;

/// Abandons an active drain: the explicit, recorded way to give up a claim's data. drainer
/// lets go of the claim (its hold and guard), so the claim's owners decide what happens to it.
pub(super) async fn abandon_drain(
    State(state): State<AppState>,
    admin: Granted<OperatorAction>,
    drain: Granted<Drain>,
    body: Result<Json<AbandonBody>, JsonRejection>,
) -> Result<Json<DrainView>, Error> {
    let body = json_body(body)?;
    let reason = body.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_ABANDON_REASON
        || reason.chars().any(char::is_control)
    {
        return Err(Error::invalid(format!(
            "reason must be 1 to {MAX_ABANDON_REASON} printable characters: say why the data may be given up"
        )));
    }
    let by = admin.into_inner().by;
    change(
        &state,
        drain.into_inner(),
        Event::Abandoned,
        &by,
        Some(reason),
    )
    .await
}

/// The query of `POST /v1/sweeps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SweepQuery {
    /// Find without queueing drains or recording anything.
    dry_run: Option<bool>,
}

/// The body of `POST /v1/sweeps` (optional): what the query says, as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SweepBody {
    /// Find without queueing drains or recording anything.
    dry_run: Option<bool>,
}

/// Whether a sweep is a dry run, from its query and its body (either may say it; both may,
/// if they agree): a request that says it twice, differently, is refused rather than guessed.
fn sweep_dry_run(query: Option<bool>, body: Option<bool>) -> Result<bool, Error> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(Error::invalid(format!(
            "dry_run is {q} in the query but {b} in the body; say it once"
        ))),
        (q, b) => Ok(q.or(b).unwrap_or(false)),
    }
}

/// The optional JSON body of `POST /v1/sweeps`: `None` when empty; JSON only, every field
/// known.
fn sweep_body(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<Option<SweepBody>, Error> {
    if body.is_empty() {
        return Ok(None);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Error::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON with Content-Type: application/json",
        ));
    }
    let invalid = |why: String| Error::new(StatusCode::BAD_REQUEST, "invalid_json", why);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    if !value.is_object() {
        return Err(invalid("the body must be a JSON object".to_owned()));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

pub(super) async fn sweep(
    State(state): State<AppState>,
    _: Granted<OperatorAction>,
    Query(query): Query<SweepQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, Error> {
    let body = sweep_body(&headers, &body)?;
    let dry_run = sweep_dry_run(query.dry_run, body.and_then(|b| b.dry_run))?;
    let shared = state.shared();
    let report = shared.sweeper.sweep(dry_run).await?;
    shared.metrics.sweep_seconds.observe(report.seconds);
    let orphaned = report.orphaned();
    let drains: Vec<DrainView> = report.drains.into_iter().map(DrainView::of).collect();
    Ok(Json(serde_json::json!({
        "findings": report.findings,
        "drains": drains,
        "seconds": report.seconds,
        "dry_run": report.dry_run,
        "orphaned": orphaned,
    })))
}

pub(super) async fn orphans(
    State(state): State<AppState>,
    scope: Granted<NamespaceScope>,
) -> Result<impl IntoResponse, Error> {
    let mut orphans = state.shared().sweeper.orphans().await?;
    if let Some(ns) = scope.into_inner().namespace {
        orphans.retain(|o| o.volume.split_once('/').is_some_and(|(of, _)| of == ns));
    }
    Ok(Json(serde_json::json!({ "orphans": orphans })))
}

/// A reclaimed claim as `GET /v1/reclaims` shows it: the ledger's record, the volume, and
/// whether its snapshot is still pinned against retention.
#[derive(Debug, Serialize)]
struct ReclaimView {
    #[serde(flatten)]
    reclaim: drainer_core::ledger::Reclaim,
    volume: String,
    pinned: bool,
}

pub(super) async fn reclaims(
    State(state): State<AppState>,
    scope: Granted<NamespaceScope>,
) -> Result<impl IntoResponse, Error> {
    let namespace = scope.into_inner().namespace;
    let reclaims: Vec<ReclaimView> = state
        .shared()
        .ledger
        .reclaims()
        .await?
        .into_iter()
        .filter(|r| namespace.as_ref().is_none_or(|ns| *ns == r.namespace))
        .map(|reclaim| ReclaimView {
            volume: reclaim.volume(),
            pinned: reclaim.released.is_none(),
            reclaim,
        })
        .collect();
    Ok(Json(serde_json::json!({ "reclaims": reclaims })))
}

/// Whether this replica can take handoffs: `200` with the conditions, or `503 not_ready`
/// with the same body and the reasons in the error's message. The ledger is checked here (a
/// ping, and after a full disk a handoff-sized commit); everything else is read from the
/// state the supervisor, the watches and the store prober keep (see [`drainer_core::health`]).
async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    let readiness = readiness(&state).await;
    if readiness.ready() {
        return Json(readiness).into_response();
    }
    tracing::debug!(reasons = %readiness.reasons(), "not ready");
    let message = readiness.reasons();
    with_error(&readiness, "not_ready", message)
}

/// This replica's readiness, as `/readyz` answers it and `drainer_ready` reports it.
async fn readiness(state: &AppState) -> drainer_core::health::Readiness {
    let shared = state.shared();
    let accepting = shared.ready.load(Ordering::SeqCst);
    let ledger = shared.kept.ledger.get(|| check_ledger(state)).await;
    shared.health.snapshot().readiness(accepting, ledger)
}

/// Whether the ledger answers and commits (kept for [`super::recent::MAX_AGE`]).
async fn check_ledger(state: &AppState) -> LedgerCheck {
    let ledger = &state.shared().ledger;
    if ledger.ping().await.is_err() {
        LedgerCheck::NoAnswer
    } else if !ledger.can_commit().await {
        LedgerCheck::Full
    } else {
        LedgerCheck::Commits
    }
}

/// Whether this replica should keep running: `200`, or `503 unhealthy` once a supervised task
/// keeps failing (restarted more than [`drainer_core::health::RESTARTS_TOLERATED`] times within
/// [`drainer_core::health::RESTART_WINDOW`]), so Kubernetes restarts the pod.
async fn healthz(State(state): State<AppState>) -> axum::response::Response {
    let liveness = state.shared().health.snapshot().liveness();
    if liveness.healthy() {
        return Json(liveness).into_response();
    }
    let message = liveness.reasons.join("; ");
    tracing::warn!(reasons = %message, "unhealthy");
    with_error(&liveness, "unhealthy", message)
}

/// `503` with `body` and the API's error object (`code`, `message`) beside its fields.
fn with_error(body: &impl Serialize, code: &str, message: String) -> axum::response::Response {
    let mut body = serde_json::to_value(body).unwrap_or_else(|_| serde_json::json!({}));
    body["error"] = serde_json::json!({"code": code, "message": message});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let shared = state.shared();
    let summary = shared.kept.summary.get(|| async {
        let hold = shared.intake.claim_hold();
        let summary = shared.ledger.drain_summary(hold.map(|h| h.fact)).await;
        summary
            .inspect_err(|err| tracing::warn!(error = %err, "cannot count drains for /metrics"))
            .ok()
    });
    if let Some(summary) = summary.await {
        shared
            .metrics
            .set_drain_summary(&summary, drainer_core::ledger::now_ms());
    }
    shared
        .metrics
        .set_ledger_writes(shared.ledger.writes_committed());
    let ready = readiness(&state).await.ready();
    shared.metrics.ready.set(i64::from(ready));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(namespace: &str, pvcs: &[&str]) -> HandoffBody {
        HandoffBody {
            namespace: namespace.into(),
            pvcs: pvcs.iter().map(|s| s.to_string()).collect(),
            pod: None,
            reason: None,
            wait_for_release: false,
        }
    }

    #[test]
    fn a_dry_run_is_said_in_the_query_or_the_body_and_never_two_ways() {
        let cases = [
            (None, None, Some(false)),
            (Some(true), None, Some(true)),
            (None, Some(true), Some(true)),
            (Some(false), None, Some(false)),
            (None, Some(false), Some(false)),
            (Some(true), Some(true), Some(true)),
            (Some(false), Some(false), Some(false)),
            (Some(true), Some(false), None),
            (Some(false), Some(true), None),
        ];
        for (query, body, expected) in cases {
            assert_eq!(
                sweep_dry_run(query, body).ok(),
                expected,
                "{query:?} {body:?}"
            );
        }
    }

    #[test]
    fn a_sweep_body_is_json_with_known_fields_only() {
        let json = {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            h
        };
        let none = axum::http::HeaderMap::new();
        assert!(sweep_body(&none, b"").unwrap().is_none());
        let body = sweep_body(&json, br#"{"dry_run": true}"#).unwrap().unwrap();
        assert_eq!(body.dry_run, Some(true));
        assert_eq!(sweep_body(&json, b"{}").unwrap().unwrap().dry_run, None);
        let unknown = sweep_body(&json, br#"{"dryRun": true}"#).unwrap_err();
        assert!(unknown.message.contains("dryRun"), "{}", unknown.message);
        assert_eq!(unknown.code, "invalid_json");
        let text = sweep_body(&none, br#"{"dry_run": true}"#).unwrap_err();
        assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(sweep_body(&json, b"[true]").is_err());
    }

    #[test]
    fn handoffs_are_validated_before_anything_is_recorded() {
        assert_eq!(
            validate_handoff(&body("shop", &["data-web-4", "logs-web-4"]), None)
                .unwrap()
                .len(),
            2
        );
        for bad in [
            body("Shop", &["a"]),
            body("shop", &[]),
            body("shop", &["../etc"]),
            body("shop", &["a", "a"]),
            body("shop", &["a/b"]),
            body("", &["a"]),
        ] {
            assert!(validate_handoff(&bad, None).is_err(), "{bad:?}");
        }
        let too_many: Vec<String> = (0..33).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert!(validate_handoff(&body("shop", &refs), None).is_err());
        let mut with_reason = body("shop", &["a"]);
        with_reason.reason = Some("line\nbreak".into());
        assert!(validate_handoff(&with_reason, None).is_err());
        let mut with_pod = body("shop", &["a"]);
        with_pod.pod = Some("Web_4".into());
        assert!(validate_handoff(&with_pod, None).is_err());
        let mounts = ["data-web-4".to_owned(), "logs-web-4".to_owned()];
        let all = validate_handoff(&body("shop", &[]), Some(&mounts)).unwrap();
        assert_eq!(
            all.len(),
            2,
            "a pod naming no claim hands off what it mounts"
        );
    }
}
