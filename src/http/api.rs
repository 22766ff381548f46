//! The `/v1` handlers and the public endpoints (`/healthz`, `/readyz`, `/metrics`,
//! `/v1/openapi.json`).

use super::guard::{AdminAction, Granted, HandoffScope, ListScope, drain_not_found};
use super::{AppState, Error, Query, json_body};
use crate::ledger::{Drain, DrainEvent, DrainFilter, NewDrain, PageCursor, Refused};
use crate::lifecycle::{DrainState, Event};
use crate::snapshot::ProgressView;
use crate::volume::{VolumeId, is_dns_label, is_dns_subdomain};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
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
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
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
            kube: None,
        })
        .collect();
    shared
        .admission
        .prepare(scope.caller(), &mut wanted)
        .await?;
    let recorded = shared.ledger.request_drains(&wanted).await?;
    let drains: Vec<Drain> = recorded.iter().map(|(d, _)| d.clone()).collect();
    shared.admission.recorded(&drains).await?;
    let created = recorded.iter().any(|(_, new)| *new);
    for (drain, new) in &recorded {
        tracing::info!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, new, by = %requester, "handoff recorded");
    }
    // Told after the answer, not before: in Kubernetes mode each is an Event on the claim and
    // the pod (two API calls), and the drain is already safe in the ledger.
    let accepted: Vec<Drain> = recorded
        .iter()
        .filter(|(_, new)| *new)
        .map(|(d, _)| d.clone())
        .collect();
    if !accepted.is_empty() {
        let notifier = std::sync::Arc::clone(&shared.notifier);
        tokio::spawn(async move {
            for drain in &accepted {
                notifier
                    .notify(drain, &crate::notify::Milestone::Accepted)
                    .await;
            }
        });
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
            .map_err(|e: crate::volume::InvalidName| Error::invalid(e.to_string()))?;
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

pub(super) async fn list_drains(
    State(state): State<AppState>,
    scope: Granted<ListScope>,
    Query(query): Query<DrainQuery>,
) -> Result<impl IntoResponse, Error> {
    let (mut filter, limit) = drain_filter(&query)?;
    filter.requested_by = scope.into_inner().requested_by;
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
        .and_then(|board| board.get(&drain.id).map(|p| p.view()));
    Ok(Json(DrainView {
        history: Some(history),
        progress,
        ..DrainView::of(drain)
    }))
}

async fn change(state: &AppState, drain: Drain, event: Event) -> Result<Json<DrainView>, Error> {
    let id = drain.id;
    match state.shared().ledger.change_drain(&id, event).await? {
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
    _: Granted<AdminAction>,
    drain: Granted<Drain>,
) -> Result<Json<DrainView>, Error> {
    change(&state, drain.into_inner(), Event::RetriedByHand).await
}

pub(super) async fn cancel_drain(
    State(state): State<AppState>,
    _: Granted<AdminAction>,
    drain: Granted<Drain>,
) -> Result<Json<DrainView>, Error> {
    change(&state, drain.into_inner(), Event::Cancelled).await
}

/// The query of `POST /v1/sweeps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SweepQuery {
    /// Find without queueing drains or recording anything.
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn sweep(
    State(state): State<AppState>,
    _: Granted<AdminAction>,
    Query(query): Query<SweepQuery>,
) -> Result<impl IntoResponse, Error> {
    let shared = state.shared();
    let report = shared.sweeper.sweep(query.dry_run).await?;
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
    _: Granted<AdminAction>,
) -> Result<impl IntoResponse, Error> {
    let orphans = state.shared().sweeper.orphans().await?;
    Ok(Json(serde_json::json!({ "orphans": orphans })))
}

async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, Error> {
    let shared = state.shared();
    let unavailable = |why: &str| Error::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why);
    if !shared.ready.load(Ordering::SeqCst) {
        return Err(unavailable("starting or shutting down"));
    }
    shared
        .ledger
        .ping()
        .await
        .map_err(|_| unavailable("the ledger does not answer"))?;
    if !shared.ledger.can_commit().await {
        return Err(unavailable("the ledger cannot commit: its disk is full"));
    }
    let root = shared.store.root().clone();
    let list = shared.store.objects().list_with_delimiter(Some(&root));
    shared
        .store
        .call("list", &root, list)
        .await
        .map_err(|_| unavailable("the store does not answer"))?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let shared = state.shared();
    match shared.ledger.drain_counts().await {
        Ok(counts) => shared.metrics.set_drain_counts(&counts),
        Err(err) => tracing::warn!(error = %err, "cannot count drains for /metrics"),
    }
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
