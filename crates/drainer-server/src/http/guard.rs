//! Authentication and authorisation of every `/v1` route, in one place.
//!
//! `authenticate` turns the bearer token into a [`Caller`] for the whole `/v1` tree. Every
//! route is then registered through the `routes!` macro (in `http`) with its [`Action`], which wraps
//! it in `authorize`: the caller's kind must be allowed the action at all
//! ([`Action::allows`]), and for actions on one drain the drain is loaded and must be the
//! caller's own when its reach is [`Reach::Own`]. What was checked reaches the handler as a
//! [`Granted`] value, which only this module can make: a handler that takes a
//! `Granted<Drain>` cannot run for a drain its caller may not touch. A route registered
//! without an action has no grant to give its handler and fails (the route table test calls
//! every route with every kind of caller).

use super::{AppState, Error};
use crate::auth::{self, Action, Caller, Reach};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use drainer_core::ledger::Drain;
use drainer_core::lifecycle::DrainState;
use drainer_core::volume::VolumeId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What `authorize` established for a handler; only this module makes one.
#[derive(Debug, Clone)]
pub struct Granted<T>(T);

impl<T> Granted<T> {
    /// The checked value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// The checked value, borrowed.
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl<S: Send + Sync, T: Clone + Send + Sync + 'static> FromRequestParts<S> for Granted<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        parts.extensions.get::<Granted<T>>().cloned().ok_or_else(|| {
            tracing::error!(route = %parts.uri.path(), grant = std::any::type_name::<T>(), "a route runs without the grant its handler needs");
            Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
        })
    }
}

/// Whose drains a listing may show: everything, or the drains one principal asked for.
#[derive(Debug, Clone)]
pub struct ListScope {
    /// `None` for everything.
    pub requested_by: Option<String>,
}

/// A caller allowed to hand off volumes; the volumes themselves are checked with
/// [`HandoffScope::check`] once the body is read.
#[derive(Debug, Clone)]
pub struct HandoffScope {
    caller: Caller,
}

impl HandoffScope {
    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Checks that the caller may hand off `volumes`; returns the proof for the ledger write.
    pub async fn check(
        &self,
        state: &AppState,
        volumes: Vec<VolumeId>,
    ) -> Result<Granted<Vec<VolumeId>>, Error> {
        match &self.caller {
            Caller::Admin => {}
            Caller::Workload(workload) => {
                auth::in_namespace(workload, &volumes)?;
                state.shared().auth.may_hand_off(workload, &volumes).await?;
            }
            Caller::Mover { .. } => {
                return Err(auth::forbidden(&self.caller, Action::Handoff).into());
            }
        }
        Ok(Granted(volumes))
    }
}

/// A drain being copied that the caller may stream into.
#[derive(Debug, Clone)]
pub struct Streaming {
    /// The drain.
    pub drain: String,
    /// Its volume.
    pub volume: VolumeId,
}

/// A volume whose snapshots the caller may read and restore, and the namespace life they
/// must have been taken in (`None`: any; an admin's, or a mode without such lives).
#[derive(Debug, Clone)]
pub struct VolumeAccess(pub VolumeId, pub Option<crate::auth::NamespaceLife>);

/// The volume of the route, if the caller may restore it: any for an admin; for a workload,
/// what the authority allows (a pod the claims it mounts, others an RBAC grant).
async fn restorable(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<VolumeAccess, Error> {
    let volume = VolumeId::new(param(params, "namespace")?, param(params, "pvc")?)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let life = match caller {
        Caller::Admin => None,
        Caller::Workload(workload) => {
            let auth = &state.shared().auth;
            auth.may_restore(workload, &volume).await?;
            auth.namespace_life(workload, &volume.namespace).await?
        }
        Caller::Mover { .. } => return Err(auth::forbidden(caller, Action::Restore).into()),
    };
    Ok(VolumeAccess(volume, life))
}

/// Admin-only actions need nothing more than being allowed; they are recorded with who asked.
#[derive(Debug, Clone)]
pub struct AdminAction {
    /// The operator's principal, for the history.
    pub by: String,
}

/// Identifies the caller of every `/v1` route from its bearer token.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
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

/// The state of one route's guard.
#[derive(Clone)]
pub(super) struct RouteGuard {
    pub(super) state: AppState,
    pub(super) action: Action,
}

/// Authorises one route's action for its caller and hands the handler what was checked.
pub(super) async fn authorize(
    State(guard): State<RouteGuard>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    match grant(&guard, &mut parts).await {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(e) => e.into_response(),
    }
}

async fn grant(guard: &RouteGuard, parts: &mut Parts) -> Result<(), Error> {
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::from(auth::Denied::Missing))?;
    let action = guard.action;
    let reach = action.allows(caller.kind());
    if reach == Reach::None {
        return Err(auth::forbidden(&caller, action).into());
    }
    let params = path_params(parts, &guard.state).await?;
    let state = &guard.state;
    let extensions = &mut parts.extensions;
    match action {
        Action::Handoff => {
            extensions.insert(Granted(HandoffScope { caller }));
        }
        Action::ListDrains => {
            let requested_by = (reach == Reach::Own).then(|| caller.principal());
            extensions.insert(Granted(ListScope { requested_by }));
        }
        Action::ReadDrain => {
            let drain = own_drain(state, &caller, reach, action, &params).await?;
            extensions.insert(Granted(drain));
        }
        Action::ChangeDrain => {
            let drain = own_drain(state, &caller, reach, action, &params).await?;
            extensions.insert(Granted(AdminAction {
                by: caller.principal(),
            }));
            extensions.insert(Granted(drain));
        }
        Action::Sweep | Action::ListOrphans => {
            extensions.insert(Granted(AdminAction {
                by: caller.principal(),
            }));
        }
        Action::Restore => {
            let access = restorable(state, &caller, &params).await?;
            extensions.insert(Granted(access));
        }
        Action::Stream => {
            let streaming = streaming(state, &caller, reach, &params).await?;
            extensions.insert(Granted(streaming));
        }
    }
    Ok(())
}

async fn path_params(
    parts: &mut Parts,
    state: &AppState,
) -> Result<HashMap<String, String>, Error> {
    match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
        Ok(Path(params)) => Ok(params),
        Err(rejection) => Err(Error::invalid(rejection.body_text())),
    }
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Error> {
    params
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| Error::invalid(format!("missing path parameter {name}")))
}

/// Checks the shape of a drain id before it reaches the ledger.
pub(super) fn check_drain_id(id: &str) -> Result<(), Error> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!("{id:?} is not a drain id")))
    }
}

/// `404 drain_not_found`.
pub(super) fn drain_not_found(id: &str) -> Error {
    Error::new(
        StatusCode::NOT_FOUND,
        "drain_not_found",
        format!("drain {id} does not exist"),
    )
}

/// The drain of the route, if the caller may act on it: any drain for a reach of `All`; for
/// `Own`, the drains a workload asked for, or a mover's own drain. A drain the caller may not
/// see answers 403, whether or not it exists, so ids cannot be probed.
async fn own_drain(
    state: &AppState,
    caller: &Caller,
    reach: Reach,
    action: Action,
    params: &HashMap<String, String>,
) -> Result<Drain, Error> {
    let id = param(params, "id")?;
    check_drain_id(id)?;
    let ledger = &state.shared().ledger;
    if reach == Reach::Own {
        let own = match caller {
            Caller::Mover { drain } => drain == id,
            _ => ledger.requested_by(id, &caller.principal()).await?,
        };
        if !own {
            return Err(auth::forbidden(caller, action).into());
        }
    }
    ledger.drain(id).await?.ok_or_else(|| drain_not_found(id))
}

/// How long a drain found copying is trusted without asking the ledger again (a mover sends
/// many requests per second; a cancelled drain stops accepting data within this time).
const DRAIN_CHECK_TTL: Duration = Duration::from_secs(2);

/// The drain a mover streams into: the caller's own (or any, for an admin), being copied.
async fn streaming(
    state: &AppState,
    caller: &Caller,
    reach: Reach,
    params: &HashMap<String, String>,
) -> Result<Streaming, Error> {
    let id = param(params, "id")?;
    check_drain_id(id)?;
    if reach == Reach::Own && !matches!(caller, Caller::Mover { drain } if drain == id) {
        return Err(auth::forbidden(caller, Action::Stream).into());
    }
    let copying = &state.shared().copying;
    let cached = copying.lock().ok().and_then(|c| c.get(id).cloned());
    if let Some((volume, checked)) = cached
        && checked.elapsed() < DRAIN_CHECK_TTL
    {
        return Ok(Streaming {
            drain: id.to_owned(),
            volume,
        });
    }
    let drain = state
        .shared()
        .ledger
        .drain(id)
        .await?
        .ok_or_else(|| drain_not_found(id))?;
    if drain.state != DrainState::Copying {
        // A queued drain is copying again once claimed (its mover Job is adopted then): a
        // mover may wait for that. Any other state is final for the mover.
        let code = match drain.state {
            DrainState::Queued => "drain_queued",
            _ => "drain_not_copying",
        };
        return Err(Error::new(
            StatusCode::CONFLICT,
            code,
            format!("drain {id} is {}", drain.state),
        ));
    }
    let volume = drain.volume();
    if let Ok(mut cache) = copying.lock() {
        cache.retain(|_, (_, checked)| checked.elapsed() < DRAIN_CHECK_TTL);
        cache.insert(id.to_owned(), (volume.clone(), Instant::now()));
    }
    Ok(Streaming {
        drain: id.to_owned(),
        volume,
    })
}

/// Forgets that drain `id` was copying, so movers' next requests ask the ledger again (after a
/// cancel, say).
pub(super) fn forget_copying(state: &AppState, id: &str) {
    if let Ok(mut cache) = state.shared().copying.lock() {
        cache.remove(id);
    }
}
