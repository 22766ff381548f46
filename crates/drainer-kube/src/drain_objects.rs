//! Drains as Kubernetes objects: one `Drain` (`drains.drainer.io/v1alpha1`, the CRD of
//! `deploy/base/crd.yaml`) per drain, in the claim's namespace, kept in step with the ledger,
//! which stays the source of truth. A pass every [`PASS_EVERY`] lists the Drain objects of the
//! watched namespaces (one LIST) and sorts them ([`Listing::sort`]): objects linked to a drain
//! (drainer's own, named by the drain id, and requests it took, both labelled
//! [`DRAIN_LABEL`]) and requests users made that drainer has not answered. It answers the
//! requests and the actions asked on linked objects ([`requests`]), then reads the drains
//! still active or ended within `--drain-objects-ttl` from the ledger and [`decide`]s (pure)
//! per object what to write: create a missing object (one deleted by hand comes back),
//! merge-patch its status subresource when the ledger's row changed (with the drain's last
//! [`HISTORY_KEPT`] history entries, for `kubectl describe drain`), the copy's progress at most
//! every [`PROGRESS_EVERY`], or delete the object of a drain that ended longer than the TTL
//! ago. drainer's own object of a drain is deleted once a request object links to it, so a
//! drain has one object as long as one request asked for it.
//!
//! Who writes: with a sweeper Lease (several replicas doing scheduled work), its holder writes
//! everything but progress, and answers requests and actions; every replica writes the
//! progress of the copies it runs (only it knows it), as a patch of `status.progress` alone,
//! so the two never overwrite each other. Without a Lease, each replica writes everything; the
//! writes are idempotent (the same status from the same ledger, a creation that finds the
//! object made is left at that, a request found recorded is linked, not recorded again).
//!
//! API writes per drain: 1 create and 1 status patch when first seen (a request object: 1
//! label patch and 1 status patch instead), 1 status patch per state change (a handoff's drain
//! goes `awaiting_release`, `queued`, `copying`, `completed`: 3 more), 1 progress patch per
//! [`PROGRESS_EVERY`] of copying, 1 delete after the TTL; an action costs 1 annotation patch
//! and 1 status patch. At 1,000 drains at once: at most 2,000 writes in the first pass (one
//! after the other, each with the API's 10 s timeout), then at most 1,000 progress patches per
//! [`PROGRESS_EVERY`] (200 per second) while all of them copy, in practice the copies running
//! at once (`--concurrent-drains` per replica), and one patch per state change; reads stay at
//! one LIST (pages of 500) per watched namespace per [`PASS_EVERY`], and one ledger read of
//! the history per status written.

use crate::Error;
use chrono::{DateTime, SecondsFormat, Utc};
use drainer_core::ledger::{Drain, DrainEvent, Ledger};
use drainer_core::snapshot::ProgressView;
use drainer_server::requests::Requests;
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
pub(crate) const PASS_EVERY: Duration = Duration::from_secs(5);
/// The shortest time between two progress writes of one drain.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The label naming the drained claim.
pub(crate) const CLAIM_LABEL: &str = "drainer.io/claim";
/// The label marking objects drainer keeps: its own, and the requests it took.
pub(crate) const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "drainer");
/// The label naming the drain an object shows (its name, on drainer's own objects made
/// before the label was).
pub const DRAIN_LABEL: &str = "drainer.io/drain";
/// History entries written in `status.history`.
pub(crate) const HISTORY_KEPT: usize = 20;
/// The conditions drainer derives from the ledger's row; any other is kept as it is.
const DERIVED: [&str; 2] = ["Ended", "Succeeded"];

pub mod requests;
pub use requests::{ActionAsked, Judgement, RequestObject};

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
    /// `Ended` and `Succeeded`, then those kept: `Accepted`, `ActionApplied`.
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
    /// `Ended`, `Succeeded`, `Accepted` or `ActionApplied`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// When it last changed (RFC 3339).
    pub last_transition_time: String,
    /// The drain's state, in CamelCase (or why a request or an action went as it did).
    pub reason: String,
    /// What happened, in a sentence (requests and actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    /// Regular files in the source, once the copy's counting walk has counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_total: Option<u64>,
    /// Bytes in the source's regular files, once counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// The three, for `kubectl get` (`12 files, 3.4 MiB, 1.1 MiB/s`; with the totals once
    /// known: `12/40 files, 3.4/9.0 MiB, 1.1 MiB/s`).
    pub summary: String,
}

impl ObjectProgress {
    /// The object's form of a live sample.
    pub fn of(view: &ProgressView) -> Self {
        let rate = view.bytes_per_second.max(0.0) as u64;
        let files = match view.files_total {
            Some(total) => format!("{}/{total}", view.files_done),
            None => view.files_done.to_string(),
        };
        let bytes = match view.bytes_total {
            Some(total) => format!(
                "{}/{}",
                number_of_mebibytes(view.bytes_done),
                mebibytes(total)
            ),
            None => mebibytes(view.bytes_done),
        };
        Self {
            files: view.files_done,
            bytes: view.bytes_done,
            bytes_per_second: rate,
            files_total: view.files_total,
            bytes_total: view.bytes_total,
            summary: format!("{files} files, {bytes}, {}/s", mebibytes(rate)),
        }
    }
}

fn number_of_mebibytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
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
    /// The conditions its status must keep besides those of the ledger's row (`Accepted`,
    /// `ActionApplied`): as seen, or as an answer of this pass changed them.
    pub kept: Vec<Condition>,
}

impl Seen {
    /// What an object as listed says.
    pub fn of(object: &DynamicObject) -> Self {
        let status = object.data.get("status");
        let parsed: Option<DrainStatus> =
            status.cloned().and_then(|s| serde_json::from_value(s).ok());
        Self {
            kept: parsed
                .as_ref()
                .map(|s| {
                    s.conditions
                        .iter()
                        .filter(|c| !DERIVED.contains(&c.type_.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            status: parsed.filter(|s| !s.state.is_empty()),
            progress: status
                .and_then(|s| s.get("progress"))
                .cloned()
                .and_then(|p| serde_json::from_value(p).ok()),
        }
    }

    /// Keeps `condition`, in place of a kept one of its type.
    pub fn keep(&mut self, condition: Condition) {
        match self.kept.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(old) => *old = condition,
            None => self.kept.push(condition),
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
            let wanted = wanted(drain, &seen.kept);
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

/// The status an object of `drain` must show: the ledger's row, and the conditions `kept`.
pub fn wanted(drain: &Drain, kept: &[Condition]) -> DrainStatus {
    let mut status = status_of(drain);
    status.conditions.extend(kept.iter().cloned());
    status
}

/// The status the ledger's row of a drain gives its object.
pub(crate) fn status_of(drain: &Drain) -> DrainStatus {
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
        message: None,
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
pub(crate) fn object_of(drain: &Drain, requested_by: Option<&str>) -> DynamicObject {
    let mut object = DynamicObject::new(&drain.id, &resource()).within(&drain.namespace);
    object.metadata.labels = Some(
        [
            (CLAIM_LABEL.to_owned(), drain.pvc.clone()),
            (DRAIN_LABEL.to_owned(), drain.id.clone()),
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
pub(crate) fn status_patch(
    status: Option<&DrainStatus>,
    progress: Option<&ObjectProgress>,
) -> Value {
    let mut body = status
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_else(|| json!({}));
    if let Some(progress) = progress {
        body["progress"] = json!(progress);
    }
    json!({ "status": body })
}

/// The last [`HISTORY_KEPT`] entries of a drain's history (`events`, oldest first), as
/// `status.history` shows them.
pub(crate) fn history_of(events: &[DrainEvent]) -> Value {
    let skip = events.len().saturating_sub(HISTORY_KEPT);
    let entries: Vec<Value> = events[skip..]
        .iter()
        .map(|e| {
            let mut entry = json!({ "at": rfc3339(e.at_ms), "state": e.state.as_str() });
            if let Some(message) = &e.message {
                entry["message"] = message.clone().into();
            }
            if let Some(owner) = &e.owner {
                entry["replica"] = owner.clone().into();
            }
            entry
        })
        .collect();
    Value::Array(entries)
}

/// A condition of `type_` that changed now (requests and actions).
pub(crate) fn condition_now(
    type_: &str,
    true_: bool,
    reason: &str,
    message: String,
    now_ms: i64,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if true_ { "True" } else { "False" }.into(),
        last_transition_time: rfc3339(now_ms),
        reason: reason.into(),
        message: Some(message),
    }
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
pub(crate) struct DrainObjects {
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
    /// The request path requests and actions asked on objects take (the HTTP API's).
    pub requests: Requests,
    /// Attempts given to drains requested by objects.
    pub max_attempts: u32,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Objects made.
    pub created: usize,
    /// Status patches.
    pub patched: usize,
    /// Objects deleted.
    pub deleted: usize,
    /// Requests taken (recorded, or joined to their claim's active drain).
    pub requested: usize,
    /// Requests rejected.
    pub rejected: usize,
    /// Actions answered (applied or refused).
    pub actions: usize,
}

/// An object linked to a drain, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Linked {
    /// Its name.
    pub name: String,
    /// Whether drainer made it (named by the drain id) rather than a user's request.
    pub own: bool,
    /// Its status as seen.
    pub seen: Seen,
    /// The action its annotations ask for, if any.
    pub action: Option<ActionAsked>,
}

/// The Drain objects of the watched namespaces, sorted out.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects linked to a drain, by namespace and drain id.
    pub linked: HashMap<(String, String), Vec<Linked>>,
    /// Objects users made that are not linked (requests to answer, or answered `rejected`).
    pub asked: Vec<RequestObject>,
}

impl Listing {
    /// Files `object` where it belongs. Pure.
    pub fn sort(&mut self, object: &DynamicObject) {
        let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name)
        else {
            return;
        };
        let labels = object.metadata.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
        if label(MANAGED.0) != Some(MANAGED.1) {
            self.asked.push(RequestObject::of(object, namespace, name));
            return;
        }
        let drain = label(DRAIN_LABEL).unwrap_or(name);
        self.linked
            .entry((namespace.clone(), drain.to_owned()))
            .or_default()
            .push(Linked {
                name: name.clone(),
                own: name == drain,
                seen: Seen::of(object),
                action: ActionAsked::of(object),
            });
    }
}

/// drainer's own object among `objects` of one drain when a request object links to the drain
/// too: it is deleted, so that the drain shows as the request that asked for it. Pure.
pub(crate) fn redundant_own(objects: &[Linked]) -> Option<usize> {
    let requested = objects.iter().any(|o| !o.own);
    objects.iter().position(|o| o.own).filter(|_| requested)
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

    /// One pass: the requests and actions answered, then the ledger's drains against the
    /// objects listed.
    pub async fn pass(&self, written: &mut HashMap<String, Instant>) -> Result<Pass, Error> {
        let role = self.role();
        let now_ms = Utc::now().timestamp_millis();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let live = self.live();
        if role == Role::ProgressOnly && live.is_empty() {
            return Ok(Pass::default());
        }
        let mut listing = self.list().await?;
        let mut pass = Pass::default();
        if role == Role::All {
            self.answer_requests(&mut listing, now_ms, ttl_ms, &mut pass)
                .await?;
            self.answer_actions(&mut listing, now_ms, &mut pass).await?;
        }
        let drains = self
            .ledger
            .drains_active_or_ended_since(now_ms.saturating_sub(ttl_ms), &self.namespaces)
            .await
            .map_err(ledger_error)?;
        let now = Instant::now();
        for drain in &drains {
            let objects = listing
                .linked
                .remove(&(drain.namespace.clone(), drain.id.clone()))
                .unwrap_or_default();
            let facts = Facts {
                live: live.get(&drain.id),
                progress_due: written
                    .get(&drain.id)
                    .is_none_or(|at| now.duration_since(*at) >= PROGRESS_EVERY),
                now_ms,
                ttl_ms,
                role,
            };
            if self.keep_in_step(drain, objects, facts, &mut pass).await? {
                written.insert(drain.id.clone(), now);
            }
        }
        // Objects of drains the window above left out: ended long ago (deleted here), or not
        // this ledger's (another drainer's, left alone).
        if role == Role::All {
            for ((namespace, id), objects) in listing.linked {
                let drain = self.ledger.drain(&id).await.map_err(ledger_error)?;
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
                for object in objects {
                    let action = decide(&drain, Some(&object.seen), facts);
                    self.apply(&drain, &object.name, action, &mut pass).await?;
                }
            }
        }
        let active: HashSet<&str> = drains.iter().map(|d| d.id.as_str()).collect();
        written.retain(|id, _| active.contains(id.as_str()));
        Ok(pass)
    }

    /// Brings the objects of `drain` in step (making drainer's own when there is none);
    /// whether progress was written.
    async fn keep_in_step(
        &self,
        drain: &Drain,
        mut objects: Vec<Linked>,
        facts: Facts<'_>,
        pass: &mut Pass,
    ) -> Result<bool, Error> {
        if facts.role == Role::All
            && let Some(own) = redundant_own(&objects)
        {
            let own = objects.remove(own);
            self.apply(drain, &own.name, Action::Delete, pass).await?;
        }
        let actions: Vec<(String, Action)> = if objects.is_empty() {
            vec![(drain.id.clone(), decide(drain, None, facts))]
        } else {
            objects
                .iter()
                .map(|o| (o.name.clone(), decide(drain, Some(&o.seen), facts)))
                .collect()
        };
        let mut progress = false;
        for (name, action) in actions {
            progress |= matches!(
                &action,
                Action::Patch {
                    progress: Some(_),
                    ..
                } | Action::Create {
                    progress: Some(_),
                    ..
                }
            );
            self.apply(drain, &name, action, pass).await?;
        }
        Ok(progress)
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

    /// The Drain objects of the watched namespaces, sorted out.
    async fn list(&self) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        for api in self.apis() {
            let mut params = ListParams::default().limit(500);
            // At most 1,000 pages of 500: a bound, not an expectation.
            for _ in 0..1000 {
                let page = crate::call("listing Drain objects", api.list(&params)).await?;
                for object in &page.items {
                    listing.sort(object);
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
        Ok(listing)
    }

    fn apis(&self) -> Vec<kube::Api<DynamicObject>> {
        if self.namespaces.is_empty() {
            vec![kube::Api::all_with(self.client.clone(), &resource())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| kube::Api::namespaced_with(self.client.clone(), ns, &resource()))
                .collect()
        }
    }

    fn api(&self, namespace: &str) -> kube::Api<DynamicObject> {
        kube::Api::namespaced_with(self.client.clone(), namespace, &resource())
    }

    /// The merge patch of a status, with the drain's recent history when the status changes.
    async fn status_body(
        &self,
        drain: &Drain,
        status: Option<&DrainStatus>,
        progress: Option<&ObjectProgress>,
    ) -> Result<Value, Error> {
        let mut body = status_patch(status, progress);
        if status.is_some() {
            let events = self
                .ledger
                .drain_events(&drain.id)
                .await
                .map_err(ledger_error)?;
            body["status"]["history"] = history_of(&events);
        }
        Ok(body)
    }

    async fn apply(
        &self,
        drain: &Drain,
        name: &str,
        action: Action,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        let api = self.api(&drain.namespace);
        let what = |verb: &str| format!("{verb} Drain {}/{name}", drain.namespace);
        match action {
            Action::Nothing => {}
            Action::Create { status, progress } => {
                let who = self
                    .ledger
                    .first_requester(&drain.id)
                    .await
                    .map_err(ledger_error)?;
                let object = object_of(drain, who.as_deref());
                match crate::call(what("creating"), api.create(&post_params(), &object)).await {
                    Ok(_) => pass.created += 1,
                    // Another replica made it meanwhile: its status is written below all the same.
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
                let body = self
                    .status_body(drain, Some(&status), progress.as_ref())
                    .await?;
                crate::call(
                    what("writing the status of"),
                    api.patch_status(&drain.id, &patch_params(), &Patch::Merge(body)),
                )
                .await?;
                pass.patched += 1;
            }
            Action::Patch { status, progress } => {
                let body = self
                    .status_body(drain, status.as_ref(), progress.as_ref())
                    .await?;
                match crate::call(
                    what("writing the status of"),
                    api.patch_status(name, &patch_params(), &Patch::Merge(body)),
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
                match crate::call(what("deleting"), api.delete(name, &DeleteParams::default()))
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

fn ledger_error(e: drainer_core::ledger::Error) -> Error {
    Error::Watch(format!("reading the ledger: {e}"))
}

#[cfg(test)]
mod tests;
