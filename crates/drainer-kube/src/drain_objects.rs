//! Drains as Kubernetes objects: one `Drain` (`drains.drainer.io/v1alpha1`, the
//! CRD of `deploy/base/crd.yaml`) per drain, in the claim's namespace, named by the drain id,
//! kept in step with the ledger, which stays the source of truth. A pass every
//! [`PASS_EVERY`] reads the drains still active or ended within `--drain-objects-ttl` from the
//! ledger and drainer's Drain objects from the API server (one LIST), then [`decide`]s (pure)
//! per drain what to write: create a missing object (one deleted by hand comes back), merge-patch
//! its status subresource when the ledger's row changed, the copy's progress at most every
//! [`PROGRESS_EVERY`], or delete the object of a drain that ended longer than the TTL ago.
//!
//! Who writes: with a sweeper Lease (several replicas doing scheduled work), its holder writes
//! everything but progress; every replica writes the progress of the copies it runs (only it
//! knows it), as a patch of `status.progress` alone, so the two never overwrite each other.
//! Without a Lease, each replica writes everything; the writes are idempotent (the same status
//! from the same ledger, a creation that finds the object made is left at that).

use crate::Error;
use chrono::{DateTime, SecondsFormat, Utc};
use drainer_core::ledger::{Drain, Ledger};
use drainer_core::snapshot::ProgressView;
use drainer_server::scheduler::ProgressBoard;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the objects are brought in step with the ledger.
pub const PASS_EVERY: Duration = Duration::from_secs(5);
/// The shortest time between two progress writes of one drain.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The label naming the drained claim.
pub const CLAIM_LABEL: &str = "drainer.io/claim";
/// The label marking objects drainer keeps (the pass lists only these).
pub const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "drainer");

/// The `Drain` resource (group `drainer.io`, version `v1alpha1`).
pub fn resource() -> ApiResource {
    ApiResource {
        group: "drainer.io".into(),
        version: "v1alpha1".into(),
        api_version: "drainer.io/v1alpha1".into(),
        kind: "Drain".into(),
        plural: "drains".into(),
    }
}

/// A Drain object's status, as drainer writes it (progress apart: see [`ObjectProgress`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// The drain's state (the ledger's name of it).
    #[serde(default)]
    pub state: String,
    /// `Ended` and `Succeeded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// The snapshot written, once completed.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The error of the last failed attempt.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the ledger last changed the drain (RFC 3339).
    #[serde(default)]
    pub updated: String,
}

/// A condition of a Drain object (the usual Kubernetes shape).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ended` or `Succeeded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// When it last changed (RFC 3339).
    pub last_transition_time: String,
    /// The drain's state, in CamelCase.
    pub reason: String,
}

/// The copy's last sample, in `status.progress`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectProgress {
    /// Files done.
    pub files: u64,
    /// Bytes done.
    pub bytes: u64,
    /// Bytes per second since the attempt started.
    pub bytes_per_second: u64,
    /// The three, for `kubectl get` (`12 files, 3.4 MiB, 1.1 MiB/s`).
    pub summary: String,
}

impl ObjectProgress {
    /// The object's form of a live sample.
    pub fn of(view: &ProgressView) -> Self {
        let rate = view.bytes_per_second.max(0.0) as u64;
        Self {
            files: view.files_done,
            bytes: view.bytes_done,
            bytes_per_second: rate,
            summary: format!(
                "{} files, {}, {}/s",
                view.files_done,
                mebibytes(view.bytes_done),
                mebibytes(rate)
            ),
        }
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// What the pass saw of a drain's object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// Its status, if it has one drainer can read.
    pub status: Option<DrainStatus>,
    /// Its progress, if any.
    pub progress: Option<ObjectProgress>,
}

impl Seen {
    /// What an object as listed says.
    pub fn of(object: &DynamicObject) -> Self {
        let status = object.data.get("status");
        Self {
            status: status
                .cloned()
                .and_then(|s| serde_json::from_value(s).ok())
                .filter(|s: &DrainStatus| !s.state.is_empty()),
            progress: status
                .and_then(|s| s.get("progress"))
                .cloned()
                .and_then(|p| serde_json::from_value(p).ok()),
        }
    }
}

/// What this replica writes in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Objects, states and deletions, and the progress of its own copies.
    All,
    /// Only the progress of its own copies (another replica holds the sweeper Lease).
    ProgressOnly,
}

/// What to write for one drain.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing: the object says what the ledger says.
    Nothing,
    /// Make the object, then write its status.
    Create {
        /// The status to write once it exists.
        status: DrainStatus,
        /// The progress to write with it.
        progress: Option<ObjectProgress>,
    },
    /// Merge-patch the status subresource with these (one of them at least).
    Patch {
        /// The status, when it differs from the ledger's.
        status: Option<DrainStatus>,
        /// The progress, when it is due and changed.
        progress: Option<ObjectProgress>,
    },
    /// Delete the object: its drain ended longer than the TTL ago.
    Delete,
}

/// The ledger's facts of one drain that decide what its object says, besides the row itself.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The live progress of this replica's copy of it, if it runs one.
    pub live: Option<&'a ProgressView>,
    /// Whether [`PROGRESS_EVERY`] has passed since this replica last wrote its progress.
    pub progress_due: bool,
    /// Now (ms since the epoch).
    pub now_ms: i64,
    /// `--drain-objects-ttl` in ms.
    pub ttl_ms: i64,
    /// What this replica writes.
    pub role: Role,
}

/// What to write for `drain`, given its object as seen (`None`: there is none). Pure.
pub fn decide(drain: &Drain, seen: Option<&Seen>, facts: Facts<'_>) -> Action {
    let expired = drain.state.is_final()
        && drain
            .finished_ms
            .is_some_and(|at| at.saturating_add(facts.ttl_ms) <= facts.now_ms);
    let progress = facts
        .live
        .filter(|_| facts.progress_due)
        .map(ObjectProgress::of)
        .filter(|p| seen.and_then(|s| s.progress.as_ref()) != Some(p));
    match (facts.role, seen) {
        (Role::All, Some(_)) if expired => Action::Delete,
        (_, _) if expired => Action::Nothing,
        (Role::All, None) => Action::Create {
            status: status_of(drain),
            progress: facts.live.map(ObjectProgress::of),
        },
        (Role::ProgressOnly, None) => Action::Nothing,
        (role, Some(seen)) => {
            let wanted = status_of(drain);
            let status =
                (role == Role::All && seen.status.as_ref() != Some(&wanted)).then_some(wanted);
            if status.is_none() && progress.is_none() {
                Action::Nothing
            } else {
                Action::Patch { status, progress }
            }
        }
    }
}

/// The status the ledger's row of a drain gives its object.
pub fn status_of(drain: &Drain) -> DrainStatus {
    let ended = drain.state.is_final();
    let since = rfc3339(
        drain
            .finished_ms
            .filter(|_| ended)
            .unwrap_or(drain.created_ms),
    );
    let reason = camel(drain.state.as_str());
    let condition = |type_: &str, true_: bool| Condition {
        type_: type_.into(),
        status: if true_ { "True" } else { "False" }.into(),
        last_transition_time: since.clone(),
        reason: reason.clone(),
    };
    DrainStatus {
        state: drain.state.as_str().into(),
        conditions: vec![
            condition("Ended", ended),
            condition(
                "Succeeded",
                drain.state == drainer_core::lifecycle::DrainState::Completed,
            ),
        ],
        attempts: drain.attempts,
        snapshot: drain.snapshot.clone(),
        last_error: drain.last_error.clone(),
        updated: rfc3339(drain.updated_ms),
    }
}

/// The object of a new drain (its status is written after, through the subresource).
pub fn object_of(drain: &Drain, requested_by: Option<&str>) -> DynamicObject {
    let mut object = DynamicObject::new(&drain.id, &resource()).within(&drain.namespace);
    object.metadata.labels = Some(
        [
            (CLAIM_LABEL.to_owned(), drain.pvc.clone()),
            (MANAGED.0.to_owned(), MANAGED.1.to_owned()),
        ]
        .into(),
    );
    let mut spec = json!({ "claim": drain.pvc, "reason": drain.reason });
    if let Some(who) = requested_by {
        spec["requestedBy"] = who.into();
    }
    object.data = json!({ "spec": spec });
    object
}

/// The merge patch of the status subresource for `status` and `progress`.
pub fn status_patch(status: Option<&DrainStatus>, progress: Option<&ObjectProgress>) -> Value {
    let mut body = status
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_else(|| json!({}));
    if let Some(progress) = progress {
        body["progress"] = json!(progress);
    }
    json!({ "status": body })
}

/// drainer's writes name it as their field manager.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some("drainer".into()),
        ..PostParams::default()
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some("drainer".into()),
        ..PatchParams::default()
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The task that keeps the objects in step (see the module's documentation).
#[derive(Clone)]
pub struct DrainObjects {
    /// The API client.
    pub client: kube::Client,
    /// The namespaces watched; empty for all.
    pub namespaces: Vec<String>,
    /// The ledger.
    pub ledger: Ledger,
    /// This replica's running copies.
    pub board: ProgressBoard,
    /// `--drain-objects-ttl`.
    pub ttl: Duration,
    /// The sweeper Lease, if replicas share the scheduled work.
    pub lease: Option<crate::lease::Holding>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Objects made.
    pub created: usize,
    /// Status patches.
    pub patched: usize,
    /// Objects deleted.
    pub deleted: usize,
}

impl DrainObjects {
    /// A pass every [`PASS_EVERY`] until `stop`; a failed pass is logged and the next one
    /// tries again (a missing CRD is said once, at warning level, until it is installed).
    pub async fn run(self, stop: CancellationToken) {
        let mut written: HashMap<String, Instant> = HashMap::new();
        let mut failing = false;
        loop {
            match self.pass(&mut written).await {
                Ok(pass) => {
                    failing = false;
                    if pass != Pass::default() {
                        tracing::debug!(?pass, "drain objects in step");
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "drain objects: pass failed (is the CRD drains.drainer.io installed?); trying again");
                }
                Err(e) => tracing::debug!(error = %e, "drain objects: pass failed again"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(PASS_EVERY) => {}
            }
        }
    }

    fn role(&self) -> Role {
        match &self.lease {
            Some(lease) if !lease.mine() => Role::ProgressOnly,
            _ => Role::All,
        }
    }

    /// One pass: the ledger's drains against the objects listed.
    pub async fn pass(&self, written: &mut HashMap<String, Instant>) -> Result<Pass, Error> {
        let role = self.role();
        let now_ms = Utc::now().timestamp_millis();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let live = self.live();
        if role == Role::ProgressOnly && live.is_empty() {
            return Ok(Pass::default());
        }
        let drains = self
            .ledger
            .drains_active_or_ended_since(now_ms.saturating_sub(ttl_ms), &self.namespaces)
            .await
            .map_err(|e| Error::Watch(format!("reading the ledger: {e}")))?;
        let mut seen = self.list().await?;
        let mut pass = Pass::default();
        let now = Instant::now();
        for drain in &drains {
            let object = seen.remove(&(drain.namespace.clone(), drain.id.clone()));
            let facts = Facts {
                live: live.get(&drain.id),
                progress_due: written
                    .get(&drain.id)
                    .is_none_or(|at| now.duration_since(*at) >= PROGRESS_EVERY),
                now_ms,
                ttl_ms,
                role,
            };
            let action = decide(drain, object.as_ref(), facts);
            if matches!(
                &action,
                Action::Patch {
                    progress: Some(_),
                    ..
                } | Action::Create {
                    progress: Some(_),
                    ..
                }
            ) {
                written.insert(drain.id.clone(), now);
            }
            self.apply(drain, action, &mut pass).await?;
        }
        // Objects of drains the window above left out: ended long ago (deleted here), or not
        // this ledger's (another drainer's, left alone).
        if role == Role::All {
            for ((namespace, id), object) in seen {
                let drain = self
                    .ledger
                    .drain(&id)
                    .await
                    .map_err(|e| Error::Watch(format!("reading the ledger: {e}")))?;
                let Some(drain) = drain.filter(|d| d.namespace == namespace) else {
                    continue;
                };
                let facts = Facts {
                    live: None,
                    progress_due: false,
                    now_ms,
                    ttl_ms,
                    role,
                };
                let action = decide(&drain, Some(&object), facts);
                self.apply(&drain, action, &mut pass).await?;
            }
        }
        let active: HashSet<&str> = drains.iter().map(|d| d.id.as_str()).collect();
        written.retain(|id, _| active.contains(id.as_str()));
        Ok(pass)
    }

    fn live(&self) -> HashMap<String, ProgressView> {
        self.board
            .lock()
            .map(|board| {
                board
                    .iter()
                    .map(|(id, running)| (id.clone(), running.progress.view()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// drainer's Drain objects in the watched namespaces, by namespace and name.
    async fn list(&self) -> Result<HashMap<(String, String), Seen>, Error> {
        let apis: Vec<kube::Api<DynamicObject>> = if self.namespaces.is_empty() {
            vec![kube::Api::all_with(self.client.clone(), &resource())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| kube::Api::namespaced_with(self.client.clone(), ns, &resource()))
                .collect()
        };
        let mut seen = HashMap::new();
        for api in apis {
            let mut params = ListParams::default()
                .labels(&format!("{}={}", MANAGED.0, MANAGED.1))
                .limit(500);
            // At most 1,000 pages of 500: a bound, not an expectation.
            for _ in 0..1000 {
                let page = crate::call("listing Drain objects", api.list(&params)).await?;
                for object in &page.items {
                    if let (Some(ns), Some(name)) =
                        (&object.metadata.namespace, &object.metadata.name)
                    {
                        seen.insert((ns.clone(), name.clone()), Seen::of(object));
                    }
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
        Ok(seen)
    }

    async fn apply(&self, drain: &Drain, action: Action, pass: &mut Pass) -> Result<(), Error> {
        let api: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(self.client.clone(), &drain.namespace, &resource());
        let what = |verb: &str| format!("{verb} Drain {}/{}", drain.namespace, drain.id);
        match action {
            Action::Nothing => {}
            Action::Create { status, progress } => {
                let who = self
                    .ledger
                    .first_requester(&drain.id)
                    .await
                    .map_err(|e| Error::Watch(format!("reading the ledger: {e}")))?;
                let object = object_of(drain, who.as_deref());
                match crate::call(what("creating"), api.create(&post_params(), &object)).await {
                    Ok(_) => pass.created += 1,
                    // Another replica made it meanwhile: its status is written below all the same.
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
                let patch = Patch::Merge(status_patch(Some(&status), progress.as_ref()));
                crate::call(
                    what("writing the status of"),
                    api.patch_status(&drain.id, &patch_params(), &patch),
                )
                .await?;
                pass.patched += 1;
            }
            Action::Patch { status, progress } => {
                let patch = Patch::Merge(status_patch(status.as_ref(), progress.as_ref()));
                match crate::call(
                    what("writing the status of"),
                    api.patch_status(&drain.id, &patch_params(), &patch),
                )
                .await
                {
                    Ok(_) => pass.patched += 1,
                    // Deleted since the list: made again on the next pass.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Action::Delete => {
                match crate::call(
                    what("deleting"),
                    api.delete(&drain.id, &DeleteParams::default()),
                )
                .await
                {
                    Ok(_) => pass.deleted += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
