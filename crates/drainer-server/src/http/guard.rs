//! Authentication and authorisation of every `/v1` route, in one place.
//!
//! `authenticate` turns the bearer token into a [`Caller`] for the whole `/v1` tree. Every
//! route is then registered through the `routes!` macro (in `http`) with its [`Action`], which wraps
//! it in `authorize`: the caller's kind must be allowed the action at all
//! ([`Action::allows`]), and for actions on one drain the drain is loaded and must be the
//! caller's own when its reach is [`Reach::Own`], or granted by RBAC when it is
//! [`Reach::Granted`] (a SubjectAccessReview through the [`crate::auth::Authority`], in the
//! drain's namespace and with its id; a refusal is `403` naming the missing permission), or
//! either for [`Reach::OwnOrGranted`]. What was checked reaches the handler as a
//! [`Granted`] value, which only this module can make: a handler that takes a
//! `Granted<Drain>` cannot run for a drain its caller may not touch. A route registered
//! without an action has no grant to give its handler and fails (the route table test calls
//! every route with every kind of caller).

use super::lives::{Bound, LifeReach, earlier_asked};
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
pub(crate) struct Granted<T>(T);

impl<T> Granted<T> {
    /// The checked value.
    pub fn into_inner(self) -> T {
        self.0
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

/// Whose drains a listing may show: everything, one namespace's, or the drains one
/// principal asked for.
#[derive(Debug, Clone)]
pub(crate) struct ListScope {
    /// `None` for everything.
    pub requested_by: Option<String>,
    /// The namespace the listing was granted for (it must filter on exactly that one);
    /// `None` for every namespace.
    pub namespace: Option<String>,
}

/// What a listing of orphaned volumes or reclaimed claims may show: every namespace's
/// (`None`) or one's.
#[derive(Debug, Clone)]
pub(crate) struct NamespaceScope {
    /// The namespace granted.
    pub namespace: Option<String>,
}

/// A caller allowed to hand off volumes; the volumes themselves are checked with
/// [`HandoffScope::check`] once the body is read.
#[derive(Debug, Clone)]
pub(crate) struct HandoffScope {
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
            Caller::Mover { .. } | Caller::User(_) => {
                return Err(auth::forbidden(&self.caller, Action::Handoff).into());
            }
        }
        Ok(Granted(volumes))
    }
}

/// A drain being copied that the caller may stream into.
#[derive(Debug, Clone)]
pub(crate) struct Streaming {
    /// The drain.
    pub drain: String,
    /// Its volume.
    pub volume: VolumeId,
}

/// A volume whose snapshots the caller may read and restore, and which of them (those of the
/// namespace's current life, unless an operator asked for an earlier one: see [`Bound`]).
#[derive(Debug, Clone)]
pub(crate) struct VolumeAccess {
    /// The volume.
    pub volume: VolumeId,
    /// Which of its snapshots.
    pub bound: Bound,
}

/// The volume of the route, if the caller may restore it: any for an admin; for a workload,
/// what the authority allows (a pod the claims it mounts, others an RBAC grant); for an
/// operator, what RBAC grants (`create` on `restores.drainer.io`, by the claim's name). Bound
/// to the current life of the volume's namespace, or, at an explicit `earlier=true` of the
/// admin or an operator granted `read-earlier`, to none (each earlier read recorded).
async fn restorable(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
    earlier: bool,
) -> Result<VolumeAccess, Error> {
    let volume = VolumeId::new(param(params, "namespace")?, param(params, "pvc")?)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let auth = &state.shared().auth;
    match caller {
        Caller::Admin => {}
        Caller::Workload(workload) => auth.may_restore(workload, &volume).await?,
        Caller::User(subject) => {
            let permission = Action::Restore
                .on(Some(&volume.namespace), Some(&volume.name))
                .expect("restores have a permission");
            require_granted(state, caller, subject, permission).await?;
        }
        Caller::Mover { .. } => return Err(auth::forbidden(caller, Action::Restore).into()),
    }
    let lives = lives_of(state, caller, &volume, earlier).await?;
    let life = auth.namespace_life(caller, &volume.namespace).await?;
    let bound = Bound::for_caller(caller, &volume.namespace, life, earlier, lives)?;
    Ok(VolumeAccess { volume, bound })
}

/// Which lives of `volume`'s namespace `caller` may read: every one for the admin; for others
/// the current one, unless they ask for an earlier one (`earlier`), which RBAC must grant
/// (`read-earlier` on the claim's `snapshots.drainer.io`: a `403` naming it otherwise).
async fn lives_of(
    state: &AppState,
    caller: &Caller,
    volume: &VolumeId,
    earlier: bool,
) -> Result<LifeReach, Error> {
    if matches!(caller, Caller::Admin) {
        return Ok(LifeReach::Every);
    }
    if !earlier {
        return Ok(LifeReach::Current);
    }
    let subject = caller
        .subject()
        .ok_or_else(|| Error::from(auth::forbidden(caller, Action::Restore)))?;
    require_granted(
        state,
        caller,
        &subject,
        auth::Permission::read_earlier(volume),
    )
    .await?;
    Ok(LifeReach::Every)
}

/// `Ok` if RBAC grants `subject` the `permission`, else the `403` naming it.
async fn require_granted(
    state: &AppState,
    caller: &Caller,
    subject: &auth::Subject,
    permission: auth::Permission,
) -> Result<(), Error> {
    if state.shared().auth.granted(subject, &permission).await? {
        tracing::debug!(principal = %caller.principal(), %permission, "granted by RBAC");
        return Ok(());
    }
    Err(auth::Denied::NotGranted {
        principal: caller.principal(),
        missing: permission,
    }
    .into())
}

/// An operator action (retry, cancel, abandon, sweep), allowed to its caller; recorded with
/// who asked.
#[derive(Debug, Clone)]
pub(crate) struct OperatorAction {
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
    let asked = Asked {
        state: &guard.state,
        caller: &caller,
        action,
        reach,
    };
    let by = || OperatorAction {
        by: caller.principal(),
    };
    let extensions = &mut parts.extensions;
    match action {
        Action::Handoff => {
            extensions.insert(Granted(HandoffScope {
                caller: caller.clone(),
            }));
        }
        Action::ListDrains => {
            let namespace = super::api::listing_namespace(&parts.uri)?;
            extensions.insert(Granted(list_scope(&asked, namespace).await?));
        }
        Action::ReadDrain => {
            let drain = drain_for(&asked, &params).await?;
            extensions.insert(Granted(drain));
        }
        Action::RetryDrain | Action::CancelDrain | Action::AbandonDrain => {
            let drain = drain_for(&asked, &params).await?;
            extensions.insert(Granted(by()));
            extensions.insert(Granted(drain));
        }
        Action::Sweep => {
            asked.require(None, None).await?;
            extensions.insert(Granted(by()));
        }
        Action::ListOrphans | Action::ListReclaims => {
            let namespace = super::api::orphans_namespace(&parts.uri)?;
            asked.require(namespace.as_deref(), None).await?;
            extensions.insert(Granted(NamespaceScope { namespace }));
        }
        Action::ListSnapshots => {
            let earlier = earlier_asked(&parts.uri)?;
            let access = listable(&asked, &params, earlier).await?;
            extensions.insert(Granted(access));
        }
        Action::Restore => {
            let earlier = earlier_asked(&parts.uri)?;
            let access = restorable(asked.state, &caller, &params, earlier).await?;
            extensions.insert(Granted(access));
        }
        Action::Stream => {
            let streaming = streaming(asked.state, &caller, reach, &params).await?;
            extensions.insert(Granted(streaming));
        }
    }
    Ok(())
}

/// One caller asking for one route's action: what RBAC must grant it.
struct Asked<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    action: Action,
    reach: Reach,
}

impl Asked<'_> {
    /// The permission the caller lacks for the action on `namespace` (`None`: cluster-wide)
    /// and the object `name`, or `None` if it has it (an admin has every one).
    async fn lacks(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<auth::Permission>, Error> {
        if self.reach == Reach::All {
            return Ok(None);
        }
        let forbidden = || Error::from(auth::forbidden(self.caller, self.action));
        let permission = self.action.on(namespace, name).ok_or_else(forbidden)?;
        let subject = self.caller.subject().ok_or_else(forbidden)?;
        let granted = self
            .state
            .shared()
            .auth
            .granted(&subject, &permission)
            .await?;
        if granted {
            tracing::debug!(principal = %self.caller.principal(), %permission, "granted by RBAC");
        }
        Ok((!granted).then_some(permission))
    }

    /// Refuses the caller, naming the permission it lacks.
    fn refuse(&self, missing: auth::Permission) -> Error {
        auth::Denied::NotGranted {
            principal: self.caller.principal(),
            missing,
        }
        .into()
    }

    /// Whether the caller has the action's permission on `namespace` and `name`: `Ok`, or the
    /// `403` naming what it lacks.
    async fn require(&self, namespace: Option<&str>, name: Option<&str>) -> Result<(), Error> {
        match self.lacks(namespace, name).await? {
            None => Ok(()),
            Some(missing) => Err(self.refuse(missing)),
        }
    }
}

/// What a listing of drains may show: everything for an admin; for the rest, the namespace
/// asked for (every one if none is) when RBAC grants `list` there, or else, for a workload,
/// the drains it asked for.
async fn list_scope(asked: &Asked<'_>, namespace: Option<String>) -> Result<ListScope, Error> {
    let everything = ListScope {
        requested_by: None,
        namespace: None,
    };
    if asked.reach == Reach::All {
        return Ok(everything);
    }
    match asked.lacks(namespace.as_deref(), None).await? {
        None => Ok(ListScope {
            namespace,
            ..everything
        }),
        // Without a grant a workload lists the drains it asked for: all of them, or those of
        // its own namespace; another namespace named without a grant is refused, naming the
        // permission, rather than answered with an empty list that reads as "nothing there".
        Some(missing) if asked.reach == Reach::OwnOrGranted => match namespace {
            Some(ns) if Some(ns.as_str()) != own_namespace(asked.caller) => {
                Err(asked.refuse(missing))
            }
            namespace => Ok(ListScope {
                requested_by: Some(asked.caller.principal()),
                namespace,
            }),
        },
        Some(missing) => Err(asked.refuse(missing)),
    }
}

/// The namespace a caller belongs to, if it is a workload of one.
fn own_namespace(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Workload(w) => Some(w.namespace.as_str()),
        _ => None,
    }
}

/// The drain of the route, if the caller may act on it: any drain for a reach of `All`; the
/// caller's own (a workload's drains it asked for, a mover's own drain) for `Own`; one that
/// RBAC grants the action on (in the drain's namespace, by its id) for `Granted`. A drain
/// the caller may not see answers 403, whether or not it exists, so ids cannot be probed:
/// only a caller granted the action cluster-wide learns that a drain does not exist.
async fn drain_for(asked: &Asked<'_>, params: &HashMap<String, String>) -> Result<Drain, Error> {
    let (caller, action) = (asked.caller, asked.action);
    let id = param(params, "id")?;
    check_drain_id(id)?;
    let ledger = &asked.state.shared().ledger;
    let own = match (asked.reach, caller) {
        (Reach::All, _) => true,
        (Reach::Own | Reach::OwnOrGranted, Caller::Mover { drain }) => drain == id,
        (Reach::Own | Reach::OwnOrGranted, _) => {
            ledger.requested_by(id, &caller.principal()).await?
        }
        _ => false,
    };
    if own {
        return ledger.drain(id).await?.ok_or_else(|| drain_not_found(id));
    }
    if asked.reach == Reach::Own {
        return Err(auth::forbidden(caller, action).into());
    }
    match ledger.drain(id).await? {
        Some(drain) => {
            asked.require(Some(&drain.namespace), Some(id)).await?;
            Ok(drain)
        }
        None => {
            asked.require(None, Some(id)).await?;
            Err(drain_not_found(id))
        }
    }
}

/// The volume whose snapshots the route lists, if the caller may see them: whoever RBAC grants
/// `list` on `snapshots` in the volume's namespace, by the claim's name (a workload the
/// current life of the namespace, an operator every life), or else whoever may restore it
/// (bound as it restores).
async fn listable(
    asked: &Asked<'_>,
    params: &HashMap<String, String>,
    earlier: bool,
) -> Result<VolumeAccess, Error> {
    if asked.reach == Reach::All {
        return restorable(asked.state, asked.caller, params, earlier).await;
    }
    // Why the caller may not restore the volume, if it may not: with `earlier` asked, the
    // refusal that names what it lacks for an earlier life.
    let mut not_restorable = None;
    if asked.reach == Reach::OwnOrGranted {
        match restorable(asked.state, asked.caller, params, earlier).await {
            Err(e) if e.status == StatusCode::FORBIDDEN => not_restorable = Some(e),
            answer => return answer,
        }
    }
    let volume = VolumeId::new(param(params, "namespace")?, param(params, "pvc")?)
        .map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(missing) = asked
        .lacks(Some(&volume.namespace), Some(&volume.name))
        .await?
    {
        // An operator who may restore the claim sees what it may restore.
        if matches!(asked.caller, Caller::User(_)) {
            match restorable(asked.state, asked.caller, params, earlier).await {
                Err(e) if e.status == StatusCode::FORBIDDEN => {}
                answer => return answer,
            }
        }
        return Err(match not_restorable {
            Some(refusal) if earlier => refusal,
            Some(_) => {
                let restore = Action::Restore
                    .on(Some(&volume.namespace), Some(&volume.name))
                    .expect("restores have a permission");
                asked
                    .refuse(missing)
                    .with_hint(&format!("or {restore}, which lists what it may restore"))
            }
            None => asked.refuse(missing),
        });
    }
    let bound = match asked.caller {
        Caller::Workload(_) => {
            let lives = lives_of(asked.state, asked.caller, &volume, earlier).await?;
            let auth = &asked.state.shared().auth;
            let life = auth.namespace_life(asked.caller, &volume.namespace).await?;
            Bound::for_caller(asked.caller, &volume.namespace, life, earlier, lives)?
        }
        _ => Bound::Any,
    };
    Ok(VolumeAccess { volume, bound })
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
