//! Standing guards: protection of claims while drainer itself is down.
//!
//! A hold ([`super::hold`]) keeps a claim from the garbage collector once drainer has seen its
//! pod condemned. But a StatefulSet scaled down while no drainer runs (a crash loop, an upgrade,
//! scaled to 0, its node lost) would lose every claim its retention policy deletes. So every
//! claim of a StatefulSet whose policy deletes claims (`whenScaled` or `whenDeleted: Delete`)
//! carries, from the moment drainer first sees it, a *guard*: a second, non-controller owner
//! reference to the claim's own Namespace, which the collector honours like any owner. The
//! Namespace exists exactly as long as the claim can: the guard never makes the collector
//! delete anything (a guard to an object drainer creates would: deleting that object by hand
//! would delete every live claim it guards), it costs no object at all, and it needs nobody
//! running to keep working. The annotation [`GUARD_ANNOTATION`] marks the reference as
//! drainer's and records the StatefulSet's policy, which is needed once the set is gone.
//!
//! The StatefulSet controller only manages owner references to the set and the pod, so the
//! guard stays through scale-downs, scale-ups and the set's deletion. When a condemned claim's
//! pod goes, the collector sees the guard and only strips the pod's reference: the claim and
//! its data stay until drainer has copied them. Then drainer lets go: it makes sure the
//! claim's drain holds it (a hold the collector may delete), takes the guard off, and deletes
//! the hold (the release tracker does this last step, [`super::release`]), so the collector
//! deletes the claim as its policy asked. A scale back up before that keeps the claim, its
//! data and its guard. `drainer.io/drain: "false"` on the claim or its StatefulSet takes the
//! guard off.
//!
//! What to do with each claim is decided in pure code ([`assess`]); the reconciler
//! ([`Guards`]) applies it on every change of a claim or StatefulSet and every few seconds,
//! puts back a guard someone else removed (saying so on the claim's drain and in a Warning
//! Event), and [`release_all`] lets go of every guard and hold when drainer is uninstalled
//! (`drainer release-guards`).

use super::{Cluster, Error, call, hold, planner};
use crate::facts::{KubeDrain, KubeLedger};
use drainer_core::ledger::{Drain, DrainFilter, Ledger};
use drainer_core::lifecycle::DrainState;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{Patch, PatchParams};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The claim annotation that marks drainer's guard and records its StatefulSet's policy
/// (`whenScaled=Delete,whenDeleted=Retain`).
pub const GUARD_ANNOTATION: &str = "drainer.io/guard";
/// Claims patched at once.
const AT_ONCE: usize = 32;
/// How often every claim is looked at, changes or not.
const EVERY: Duration = Duration::from_secs(10);
/// How long after a change the reconciler waits for more before it looks (a scale-down
/// changes many claims at once).
const SETTLE: Duration = Duration::from_millis(100);
/// The reconciler asks for a sweep at most this often.
const SWEEP_AT_MOST: Duration = Duration::from_secs(30);

/// A StatefulSet's `persistentVolumeClaimRetentionPolicy`, as far as guards care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `whenScaled: Delete`: the claims of scaled-away ordinals are deleted with their pods.
    pub when_scaled_deletes: bool,
    /// `whenDeleted: Delete`: the claims are deleted with the StatefulSet.
    pub when_deleted_deletes: bool,
}

impl Policy {
    /// The policy of `set`.
    pub fn of(set: &StatefulSet) -> Self {
        let policy = set.spec.persistent_volume_claim_retention_policy.as_ref();
        let deletes = |field: Option<&String>| field.map(String::as_str) == Some("Delete");
        Self {
            when_scaled_deletes: deletes(policy.and_then(|p| p.when_scaled.as_ref())),
            when_deleted_deletes: deletes(policy.and_then(|p| p.when_deleted.as_ref())),
        }
    }

    /// Whether the policy deletes claims in some case (and so needs a guard).
    pub(crate) fn deletes_any(self) -> bool {
        self.when_scaled_deletes || self.when_deleted_deletes
    }

    /// The annotation's value.
    pub fn annotation(self) -> String {
        let word = |deletes: bool| if deletes { "Delete" } else { "Retain" };
        format!(
            "whenScaled={},whenDeleted={}",
            word(self.when_scaled_deletes),
            word(self.when_deleted_deletes)
        )
    }

    /// The policy an annotation records; `None` if it is not drainer's.
    pub fn parse(text: &str) -> Option<Self> {
        let mut scaled = None;
        let mut deleted = None;
        for part in text.split(',') {
            let (key, value) = part.split_once('=')?;
            let deletes = match value {
                "Delete" => true,
                "Retain" => false,
                _ => return None,
            };
            match key {
                "whenScaled" => scaled = Some(deletes),
                "whenDeleted" => deleted = Some(deletes),
                _ => return None,
            }
        }
        Some(Self {
            when_scaled_deletes: scaled?,
            when_deleted_deletes: deleted?,
        })
    }
}

/// What a claim's guard should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assessment {
    /// Not drainer's business (its StatefulSet deletes no claims, it is no StatefulSet's, or
    /// it is being deleted): left as it is.
    Leave,
    /// A claim its StatefulSet wants (a live ordinal): guarded.
    Guard(Policy),
    /// A claim its policy would delete or leave behind (ordinal scaled away, StatefulSet
    /// gone or being deleted): guarded until its data is safe, then let go; `deletes` says
    /// whether the collector is meant to delete it then.
    Condemned {
        /// The policy the guard records.
        policy: Policy,
        /// Whether the policy deletes it once let go.
        deletes: bool,
    },
    /// Guarded but it should not be: opted out, or its StatefulSet no longer deletes claims.
    Unguard,
}

/// The guard reference a claim in `namespace` (with Namespace UID `uid`) carries.
pub(crate) fn guard_ref(namespace: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Namespace".to_owned(),
        name: namespace.to_owned(),
        uid: uid.to_owned(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Whether `owner` is a guard reference of a claim in `namespace`.
fn is_guard(owner: &OwnerReference, namespace: &str) -> bool {
    owner.kind == "Namespace" && owner.api_version == "v1" && owner.name == namespace
}

/// Whether `claim` carries drainer's guard (the reference and the annotation).
pub fn is_guarded(claim: &PersistentVolumeClaim) -> bool {
    recorded_policy(claim).is_some() && has_guard_ref(claim)
}

fn has_guard_ref(claim: &PersistentVolumeClaim) -> bool {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| is_guard(o, namespace))
}

/// The policy drainer's guard annotation records on `claim`.
pub(crate) fn recorded_policy(claim: &PersistentVolumeClaim) -> Option<Policy> {
    claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GUARD_ANNOTATION))
        .and_then(|v| Policy::parse(v))
}

/// Decides what `claim`'s guard should be, from the StatefulSets of its namespace.
pub(crate) fn assess(claim: &PersistentVolumeClaim, sets: &[&StatefulSet]) -> Assessment {
    let guarded = recorded_policy(claim).is_some() || has_guard_ref(claim);
    let not_wanted = if guarded {
        Assessment::Unguard
    } else {
        Assessment::Leave
    };
    if claim.metadata.deletion_timestamp.is_some() {
        return Assessment::Leave;
    }
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let Some(place) = planner::set_claim(name, sets.iter().copied()) else {
        return assess_without_set(claim, guarded);
    };
    let Some(set) = sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(place.set.as_str()))
    else {
        return assess_without_set(claim, guarded);
    };
    if planner::opted_out(&claim.metadata) || planner::opted_out(&set.metadata) {
        return not_wanted;
    }
    let policy = Policy::of(set);
    if set.metadata.deletion_timestamp.is_some() {
        return match policy.when_deleted_deletes {
            true => Assessment::Condemned {
                policy,
                deletes: true,
            },
            false => not_wanted,
        };
    }
    if planner::live_ordinals(set).contains(&place.ordinal) {
        return match policy.deletes_any() {
            true => Assessment::Guard(policy),
            false => not_wanted,
        };
    }
    match policy.deletes_any() {
        true => Assessment::Condemned {
            policy,
            deletes: policy.when_scaled_deletes,
        },
        false => not_wanted,
    }
}

/// A claim whose StatefulSet is not (or no longer) listed: guarded already (its set was
/// deleted, the guard's annotation says with what policy), or owned by a StatefulSet or pod
/// that the collector is about to act for.
fn assess_without_set(claim: &PersistentVolumeClaim, guarded: bool) -> Assessment {
    if planner::opted_out(&claim.metadata) {
        return match guarded {
            true => Assessment::Unguard,
            false => Assessment::Leave,
        };
    }
    if let Some(policy) = recorded_policy(claim) {
        return Assessment::Condemned {
            policy,
            deletes: policy.when_deleted_deletes,
        };
    }
    let owners = claim.metadata.owner_references.iter().flatten();
    let owned_by = |kind: &str| owners.clone().any(|o| o.kind == kind);
    if owned_by("StatefulSet") || owned_by("Pod") {
        let policy = Policy {
            when_scaled_deletes: owned_by("Pod"),
            when_deleted_deletes: owned_by("StatefulSet"),
        };
        return Assessment::Condemned {
            policy,
            deletes: true,
        };
    }
    Assessment::Leave
}

/// The claim's metadata patch that adds the guard (guarded by its resourceVersion, so a claim
/// that changed, or another claim of the same name, is never patched on a stale view).
pub(crate) fn guard_patch(
    claim: &PersistentVolumeClaim,
    namespace_uid: &str,
    policy: Policy,
) -> serde_json::Value {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let mut owners: Vec<OwnerReference> = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| !is_guard(o, namespace))
        .cloned()
        .collect();
    owners.push(guard_ref(namespace, namespace_uid));
    serde_json::json!({ "metadata": {
        "resourceVersion": claim.metadata.resource_version,
        "ownerReferences": owners,
        "annotations": { GUARD_ANNOTATION: policy.annotation() },
    }})
}

/// The claim's metadata patch that takes the guard off (its resourceVersion a precondition).
pub(crate) fn unguard_patch(claim: &PersistentVolumeClaim) -> serde_json::Value {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let owners: Vec<OwnerReference> = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| !is_guard(o, namespace))
        .cloned()
        .collect();
    serde_json::json!({ "metadata": {
        "resourceVersion": claim.metadata.resource_version,
        "ownerReferences": owners,
        "annotations": { GUARD_ANNOTATION: null },
    }})
}

/// Patches `claim` with `patch` (a JSON merge patch).
async fn patch_claim(
    client: &kube::Client,
    claim: &PersistentVolumeClaim,
    patch: &serde_json::Value,
    what: &str,
) -> Result<(), Error> {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    call(
        format!("{what} claim {namespace}/{name}"),
        claims.patch(name, &PatchParams::default(), &Patch::Merge(patch)),
    )
    .await
    .map(drop)
}

/// Guards `claim` now when its StatefulSet's policy deletes claims and it carries no guard
/// yet, as the reconciler would on its next pass; for the handoff path, which must not answer
/// for a claim that the collector could still delete while no drainer runs. Returns whether
/// it patched; a claim changed since it was read is a conflict error (read it again).
pub(crate) async fn guard_now(
    cluster: &Cluster,
    claim: &PersistentVolumeClaim,
) -> Result<bool, Error> {
    if is_guarded(claim) || claim.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let sets = cluster.sets_in(&namespace);
    let sets: Vec<&StatefulSet> = sets.iter().map(Arc::as_ref).collect();
    let policy = match assess(claim, &sets) {
        Assessment::Guard(policy) | Assessment::Condemned { policy, .. } => policy,
        Assessment::Leave | Assessment::Unguard => return Ok(false),
    };
    let uids = namespace_uids(&cluster.client, [namespace.clone()]).await;
    let Some(uid) = uids.get(&namespace) else {
        return Err(Error::Watch(format!(
            "namespace {namespace} cannot be read (or is being deleted): claim not guarded"
        )));
    };
    let patch = guard_patch(claim, uid, policy);
    patch_claim(&cluster.client, claim, &patch, "guard").await?;
    Ok(true)
}

/// Takes drainer's guard off `claim` (nothing to do if it has none).
pub(crate) async fn unguard(
    client: &kube::Client,
    claim: &PersistentVolumeClaim,
) -> Result<(), Error> {
    if recorded_policy(claim).is_none() && !has_guard_ref(claim) {
        return Ok(());
    }
    patch_claim(client, claim, &unguard_patch(claim), "unguard").await
}

/// The UIDs of the namespaces named, read live (a Namespace deleted and made again has
/// another UID, and a guard naming the old one would be an owner that is gone).
async fn namespace_uids(
    client: &kube::Client,
    names: impl IntoIterator<Item = String>,
) -> HashMap<String, String> {
    let api: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                match call(format!("get namespace {name}"), api.get_opt(&name)).await {
                    Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_none() => {
                        ns.metadata.uid.map(|uid| (name, uid))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(ns = %name, error = %e, "cannot read the namespace; its claims are guarded later");
                        None
                    }
                }
            }
        })
        .buffer_unordered(AT_ONCE)
        .filter_map(|found| async move { found })
        .collect()
        .await
}

/// What one look at every claim did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Claims looked at.
    pub claims: usize,
    /// Guards added (or put back).
    pub guarded: usize,
    /// Guards taken off (opted out, policy changed, or let go after a drain).
    pub unguarded: usize,
    /// Holds added so that a safe, condemned claim can be let go.
    pub readied: usize,
    /// Patches that failed (tried again at the next look).
    pub failed: usize,
}

/// What the reconciler remembers between passes.
#[derive(Debug, Default)]
pub struct Memory {
    /// Claims (UIDs) drainer guarded, so that a guard someone else removed with its
    /// annotation is noticed too.
    known: HashSet<String>,
    /// Claims whose removed guard was reported (once each, until guarded again).
    told: HashSet<String>,
    /// Whether the last pass saw a condemned claim that no drain covers.
    orphans: bool,
}

/// One change a pass makes to one claim.
enum Change {
    Guard(Arc<PersistentVolumeClaim>, Policy),
    Unguard(Arc<PersistentVolumeClaim>),
    /// Give drain `.1`'s hold to the claim, so that taking the guard off lets the collector
    /// delete it (the release tracker then takes the guard off and deletes the hold).
    Ready(Arc<PersistentVolumeClaim>, Box<Drain>),
}

/// The guard reconciler: runs on every replica (the patches are idempotent and guarded by
/// resourceVersion).
#[derive(Clone)]
pub(crate) struct Guards {
    /// The cluster.
    pub cluster: Cluster,
    /// The ledger (is a condemned claim's data safe yet?).
    pub ledger: Ledger,
    /// Where Warning Events go.
    pub events: Arc<super::events::KubeEvents>,
    /// Asked for a sweep when a condemned claim has no drain (drainer was away when its pod
    /// went): the sweep decides, as for any orphan.
    pub sweeper: Arc<dyn drainer_server::sweep::Sweeper>,
}

impl Guards {
    /// Runs until `stop`: a pass at once, then after each change of a claim or StatefulSet
    /// and every [`EVERY`].
    pub async fn run(self, stop: CancellationToken) {
        let mut memory = Memory::default();
        let mut swept: Option<tokio::time::Instant> = None;
        loop {
            match self.pass(&mut memory).await {
                Ok(pass) if pass.guarded + pass.unguarded + pass.readied + pass.failed > 0 => {
                    tracing::info!(
                        claims = pass.claims,
                        guarded = pass.guarded,
                        unguarded = pass.unguarded,
                        readied = pass.readied,
                        failed = pass.failed,
                        "guards reconciled"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reconcile guards; trying again"),
            }
            if std::mem::take(&mut memory.orphans)
                && swept.is_none_or(|t| t.elapsed() >= SWEEP_AT_MOST)
            {
                swept = Some(tokio::time::Instant::now());
                self.sweep().await;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.cluster.changes.notified() => {
                    tokio::time::sleep(SETTLE).await;
                }
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// Sweeps now: condemned claims that no drain covers were seen (their pods went while no
    /// drainer ran).
    async fn sweep(&self) {
        match self.sweeper.sweep(false).await {
            Ok(report) => {
                let queued = report.findings.iter().filter(|f| f.drain).count();
                tracing::info!(queued, "swept for condemned claims that no drain covered");
            }
            Err(e) => tracing::warn!(error = %e, "cannot sweep for condemned claims; trying again"),
        }
    }

    /// Looks at every claim once and applies what [`assess`] says.
    pub async fn pass(&self, memory: &mut Memory) -> Result<Pass, drainer_core::ledger::Error> {
        if !self.cluster.synced() {
            tracing::debug!("a watch is not synced: guards wait");
            return Ok(Pass::default());
        }
        let claims = self.cluster.claims.state();
        let sets = self.cluster.sets.state();
        let mut by_namespace: HashMap<&str, Vec<&StatefulSet>> = HashMap::new();
        for set in &sets {
            let ns = set.metadata.namespace.as_deref().unwrap_or_default();
            by_namespace.entry(ns).or_default().push(set);
        }
        let mut changes = Vec::new();
        let mut pass = Pass {
            claims: claims.len(),
            ..Pass::default()
        };
        for claim in claims {
            let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
            if !self.cluster.watches(ns) {
                continue;
            }
            let empty = Vec::new();
            let sets = by_namespace.get(ns).unwrap_or(&empty);
            self.noticed(&claim, memory).await;
            if let Some(change) = self.change_for(claim, sets, &mut memory.orphans).await? {
                changes.push(change);
            }
        }
        let uids = namespace_uids(
            &self.cluster.client,
            changes
                .iter()
                .filter_map(|c| match c {
                    Change::Guard(claim, _) => claim.metadata.namespace.clone(),
                    _ => None,
                })
                .collect::<HashSet<_>>(),
        )
        .await;
        let results: Vec<(Change, Result<(), Error>)> = futures::stream::iter(changes)
            .map(|change| async {
                let result = self.apply(&change, &uids).await;
                (change, result)
            })
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;
        for (change, result) in results {
            let (claim, counter) = match &change {
                Change::Guard(c, _) => (c, &mut pass.guarded),
                Change::Unguard(c) => (c, &mut pass.unguarded),
                Change::Ready(c, _) => (c, &mut pass.readied),
            };
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            match result {
                Ok(()) => {
                    *counter += 1;
                    match change {
                        Change::Guard(..) => memory.known.insert(uid),
                        Change::Unguard(_) => memory.known.remove(&uid),
                        Change::Ready(..) => false,
                    };
                }
                Err(e) if e.is_conflict() => {} // changed meanwhile: the next look decides
                Err(e) => {
                    pass.failed += 1;
                    let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
                    let pvc = claim.metadata.name.as_deref().unwrap_or_default();
                    tracing::warn!(ns, pvc, error = %e, "cannot change the claim's guard; trying again");
                }
            }
        }
        Ok(pass)
    }

    /// What to change about one claim, if anything.
    async fn change_for(
        &self,
        claim: Arc<PersistentVolumeClaim>,
        sets: &[&StatefulSet],
        orphans: &mut bool,
    ) -> Result<Option<Change>, drainer_core::ledger::Error> {
        let guarded = is_guarded(&claim);
        Ok(match assess(&claim, sets) {
            Assessment::Leave => None,
            Assessment::Unguard => Some(Change::Unguard(claim)),
            Assessment::Guard(policy) => (!guarded || recorded_policy(&claim) != Some(policy))
                .then_some(Change::Guard(claim, policy)),
            Assessment::Condemned { policy, deletes } => {
                let latest = self.latest_drain(&claim).await?;
                if latest
                    .as_ref()
                    .is_none_or(|d| d.state == DrainState::NotNeeded)
                {
                    *orphans = true; // nothing covers it: a sweep decides
                }
                let safe = latest
                    .filter(|d| matches!(d.state, DrainState::Completed | DrainState::Abandoned));
                match safe {
                    None if guarded => None,
                    None => Some(Change::Guard(claim, policy)),
                    // Safe: let go. A claim its policy deletes needs a hold first (the
                    // release tracker then takes the guard off and deletes the hold).
                    Some(drain) if deletes && drain.hold().is_none() && guarded => {
                        Some(Change::Ready(claim, Box::new(drain)))
                    }
                    Some(drain) if drain.hold().is_none() && guarded => {
                        Some(Change::Unguard(claim))
                    }
                    Some(_) => None, // the release tracker lets go with the hold
                }
            }
        })
    }

    /// The claim's latest drain (of this claim: its UID, or none recorded). Its data is safe
    /// to let go when that drain completed or was abandoned.
    async fn latest_drain(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> Result<Option<Drain>, drainer_core::ledger::Error> {
        let filter = DrainFilter {
            namespace: claim.metadata.namespace.clone(),
            pvc: claim.metadata.name.clone(),
            ..DrainFilter::default()
        };
        let uid = claim.metadata.uid.as_deref();
        let drains = self.ledger.drains(&filter, 20).await?;
        Ok(drains
            .into_iter()
            .filter(|d| d.pvc_uid().is_none() || d.pvc_uid() == uid)
            .max_by_key(|d| d.created_ms))
    }

    async fn apply(&self, change: &Change, uids: &HashMap<String, String>) -> Result<(), Error> {
        let client = &self.cluster.client;
        match change {
            Change::Guard(claim, policy) => {
                let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
                let Some(uid) = uids.get(ns) else {
                    return Ok(()); // the namespace could not be read (or is going): later
                };
                patch_claim(client, claim, &guard_patch(claim, uid, *policy), "guard").await
            }
            Change::Unguard(claim) => unguard(client, claim).await,
            Change::Ready(claim, drain) => {
                // Read again: the release tracker may have let go of it already (the store
                // lags), and a hold made on a claim let go would delay it for nothing.
                let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
                let pvc = claim.metadata.name.as_deref().unwrap_or_default();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
                let now = call(format!("get claim {ns}/{pvc}"), claims.get_opt(pvc)).await?;
                let Some(claim) = now.filter(|c| c.metadata.uid == claim.metadata.uid) else {
                    return Ok(());
                };
                if !is_guarded(&claim) {
                    return Ok(());
                }
                let name = hold::hold(client, &drain.id, &claim).await?;
                self.ledger
                    .set_hold(&drain.id, Some(&name))
                    .await
                    .map_err(|e| Error::Watch(format!("recording hold {name}: {e}")))
            }
        }
    }

    /// Notices a guard that someone else removed from a claim drainer guarded: the claim
    /// still carries drainer's annotation (or drainer remembers guarding it) but not the
    /// reference. Said once per claim, on its active drain's history and in a Warning Event;
    /// the pass puts the guard back unless the claim is being deleted.
    async fn noticed(&self, claim: &PersistentVolumeClaim, memory: &mut Memory) {
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        if has_guard_ref(claim) {
            memory.told.remove(&uid);
            return;
        }
        let marked = recorded_policy(claim).is_some() || memory.known.contains(&uid);
        if !marked || !memory.told.insert(uid) {
            return;
        }
        let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
        let pvc = claim.metadata.name.as_deref().unwrap_or_default();
        let what = if claim.metadata.deletion_timestamp.is_some() {
            format!(
                "drainer's guard of claim {ns}/{pvc} was removed by someone else and the claim is being deleted"
            )
        } else {
            format!(
                "drainer's guard of claim {ns}/{pvc} was removed by someone else; drainer puts it back"
            )
        };
        tracing::warn!(ns, pvc, "{what}");
        self.events
            .warn_claim(claim, "ProtectionRemoved", &what)
            .await;
        let filter = DrainFilter {
            namespace: Some(ns.to_owned()),
            pvc: Some(pvc.to_owned()),
            ..DrainFilter::default()
        };
        if let Ok(drains) = self.ledger.drains(&filter, 20).await
            && let Some(active) = drains.iter().find(|d| d.state.is_active())
            && let Err(e) = self.ledger.note(&active.id, &what).await
        {
            tracing::warn!(drain = %active.id, error = %e, "cannot record in the drain's history");
        }
    }
}

/// What [`release_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Claims whose guard was taken off while their StatefulSet wants them.
    pub kept: Vec<String>,
    /// Claims let go for the collector to delete (their policy deletes them).
    pub let_go: Vec<String>,
    /// Holds deleted.
    pub holds: Vec<String>,
}

/// Lets go of every guard and hold in `namespaces` (all when empty), for uninstalling
/// drainer: a claim its StatefulSet still wants loses its guard and holds; a claim its policy
/// deletes (scaled away with `whenScaled: Delete`, its StatefulSet gone with `whenDeleted:
/// Delete`) is given a hold if it has none, loses its guard, and its holds are deleted, so
/// the collector deletes it as the policy asked. With `dry_run` nothing is changed.
pub(crate) async fn release_all(
    client: &kube::Client,
    namespaces: &[String],
    dry_run: bool,
) -> Result<Released, Error> {
    let mut released = Released::default();
    for ns in listed_namespaces(client, namespaces).await? {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let lp = kube::api::ListParams::default();
        let claims = call(format!("list claims in {ns}"), claims.list(&lp)).await?;
        let sets = call(format!("list StatefulSets in {ns}"), sets.list(&lp)).await?;
        let sets: Vec<&StatefulSet> = sets.items.iter().collect();
        for claim in &claims.items {
            let holds: Vec<String> = claim
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == "ConfigMap" && o.name.starts_with("drainer-hold-"))
                .map(|o| o.name.clone())
                .collect();
            if !is_guarded(claim) && recorded_policy(claim).is_none() && holds.is_empty() {
                continue;
            }
            let pvc = claim.metadata.name.clone().unwrap_or_default();
            let volume = format!("{ns}/{pvc}");
            let deletes = match assess(claim, &sets) {
                Assessment::Condemned { deletes, .. } => deletes,
                _ => false,
            };
            if dry_run {
                match deletes {
                    true => released.let_go.push(volume),
                    false => released.kept.push(volume),
                }
                released.holds.extend(holds);
                continue;
            }
            release_claim(client, claim, deletes, &holds).await?;
            released.holds.extend(holds);
            match deletes {
                true => released.let_go.push(volume),
                false => released.kept.push(volume),
            }
        }
    }
    Ok(released)
}

/// `drainer release-guards`: [`release_all`] with the kubeconfig's (or in-cluster) identity,
/// then one line per claim and a summary on stdout.
pub async fn release_command(args: crate::args::ReleaseGuardsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = super::client::connect()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let released = release_all(&client, &args.namespaces, args.dry_run).await?;
    let verb = if args.dry_run { "would be" } else { "" };
    for claim in &released.kept {
        println!("kept     {claim} (its StatefulSet wants it: guard and holds {verb} taken off)");
    }
    for claim in &released.let_go {
        println!(
            "let go   {claim} (its retention policy deletes it: left {verb} to the garbage collector)"
        );
    }
    println!(
        "{} claims kept, {} let go, {} holds {}deleted{}",
        released.kept.len(),
        released.let_go.len(),
        released.holds.len(),
        if args.dry_run { "to be " } else { "" },
        if args.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The namespaces to release: those named, or every namespace.
async fn listed_namespaces(client: &kube::Client, named: &[String]) -> Result<Vec<String>, Error> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let list = call("list namespaces", api.list(&Default::default())).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// Lets go of one claim: a claim its policy deletes gets a hold first (unless it has one), so
/// that it still has an owner the collector can find gone; then the guard comes off, then the
/// holds go (a claim that is kept loses them from its owners first).
async fn release_claim(
    client: &kube::Client,
    claim: &PersistentVolumeClaim,
    deletes: bool,
    holds: &[String],
) -> Result<(), Error> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let pvc = claim.metadata.name.clone().unwrap_or_default();
    let mut holds = holds.to_vec();
    let mut current = claim.clone();
    if deletes && holds.is_empty() {
        let uid = claim.metadata.uid.as_deref().unwrap_or_default();
        let drain = format!("uninstall-{}", &uid[..uid.len().min(8)]);
        holds.push(hold::hold(client, &drain, claim).await?);
        current = fresh(client, &ns, &pvc).await?;
    }
    unguard(client, &current).await?;
    for name in &holds {
        hold::release(client, &ns, &pvc, name, !deletes).await?;
    }
    Ok(())
}

/// The claim as it is now.
async fn fresh(client: &kube::Client, ns: &str, pvc: &str) -> Result<PersistentVolumeClaim, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    call(format!("get claim {ns}/{pvc}"), claims.get(pvc)).await
}

/// The annotations of a claim with the guard's, for tests.
#[cfg(test)]
fn annotated(policy: Option<&str>) -> Option<std::collections::BTreeMap<String, String>> {
    policy.map(|p| [(GUARD_ANNOTATION.to_owned(), p.to_owned())].into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(name: &str, replicas: i32, scaled: &str, deleted: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {
                "replicas": replicas,
                "selector": {},
                "serviceName": name,
                "template": {},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
                "persistentVolumeClaimRetentionPolicy": {"whenScaled": scaled, "whenDeleted": deleted},
            }
        }))
        .unwrap()
    }

    fn claim(name: &str, owners: serde_json::Value, policy: Option<&str>) -> PersistentVolumeClaim {
        let mut claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                         "resourceVersion": "7", "ownerReferences": owners}
        }))
        .unwrap();
        claim.metadata.annotations = annotated(policy);
        claim
    }

    const SCALED: &str = "whenScaled=Delete,whenDeleted=Retain";
    const BOTH: &str = "whenScaled=Delete,whenDeleted=Delete";

    fn guard() -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "name": "shop", "uid": "ns-1"})
    }

    #[test]
    fn policies_round_trip_through_the_annotation() {
        for (scaled, deleted) in [(true, false), (false, true), (true, true), (false, false)] {
            let policy = Policy {
                when_scaled_deletes: scaled,
                when_deleted_deletes: deleted,
            };
            assert_eq!(Policy::parse(&policy.annotation()), Some(policy));
        }
        for junk in [
            "",
            "whenScaled=Delete",
            "whenScaled=Maybe,whenDeleted=Retain",
            "x=Delete,y=Retain",
        ] {
            assert_eq!(Policy::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn each_claim_is_guarded_while_its_policy_could_delete_it() {
        let delete_scaled = set("web", 2, "Delete", "Retain");
        let delete_both = set("db", 2, "Delete", "Delete");
        let retain = set("cache", 2, "Retain", "Retain");
        let mut deleting = set("old", 2, "Retain", "Delete");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let scaled_retain_deleted_delete = set("logs", 1, "Retain", "Delete");
        let sets = [
            &delete_scaled,
            &delete_both,
            &retain,
            &deleting,
            &scaled_retain_deleted_delete,
        ];
        let scaled = Policy::parse(SCALED).unwrap();
        let both = Policy::parse(BOTH).unwrap();
        let pod = json!([{"apiVersion": "v1", "kind": "Pod", "name": "x-3", "uid": "p"}]);
        let set_owner =
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "gone", "uid": "g"}]);
        let cases = [
            (
                "live ordinal, whenScaled Delete",
                claim("data-web-1", json!([]), None),
                Assessment::Guard(scaled),
            ),
            (
                "live ordinal, both Delete",
                claim("data-db-0", json!([]), None),
                Assessment::Guard(both),
            ),
            (
                "live ordinal, Retain",
                claim("data-cache-0", json!([]), None),
                Assessment::Leave,
            ),
            (
                "guarded, policy now Retain",
                claim("data-cache-1", json!([guard()]), Some(SCALED)),
                Assessment::Unguard,
            ),
            (
                "scaled away, whenScaled Delete",
                claim("data-web-2", json!([]), None),
                Assessment::Condemned {
                    policy: scaled,
                    deletes: true,
                },
            ),
            (
                "scaled away, Retain on scale, Delete with the set",
                claim("data-logs-3", json!([]), None),
                Assessment::Condemned {
                    policy: Policy {
                        when_scaled_deletes: false,
                        when_deleted_deletes: true,
                    },
                    deletes: false,
                },
            ),
            (
                "set being deleted, whenDeleted Delete",
                claim("data-old-0", json!([]), None),
                Assessment::Condemned {
                    policy: Policy {
                        when_scaled_deletes: false,
                        when_deleted_deletes: true,
                    },
                    deletes: true,
                },
            ),
            (
                "set gone, guarded with both Delete",
                claim("data-gone-0", json!([guard()]), Some(BOTH)),
                Assessment::Condemned {
                    policy: both,
                    deletes: true,
                },
            ),
            (
                "set gone, guarded, whenDeleted Retain",
                claim("data-gone-1", json!([guard()]), Some(SCALED)),
                Assessment::Condemned {
                    policy: scaled,
                    deletes: false,
                },
            ),
            (
                "set gone, still owned by it",
                claim("data-gone-2", set_owner, None),
                Assessment::Condemned {
                    policy: Policy {
                        when_scaled_deletes: false,
                        when_deleted_deletes: true,
                    },
                    deletes: true,
                },
            ),
            (
                "a pod owns it",
                claim("data-x-3", pod, None),
                Assessment::Condemned {
                    policy: Policy {
                        when_scaled_deletes: true,
                        when_deleted_deletes: false,
                    },
                    deletes: true,
                },
            ),
            (
                "no StatefulSet's",
                claim("scratch", json!([]), None),
                Assessment::Leave,
            ),
        ];
        for (what, claim, expected) in cases {
            assert_eq!(assess(&claim, &sets), expected, "{what}");
        }
    }

    #[test]
    fn opting_out_or_being_deleted_takes_the_claim_out_of_guarding() {
        let web = set("web", 2, "Delete", "Retain");
        let mut opted = claim("data-web-0", json!([guard()]), Some(SCALED));
        opted
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(planner::OPT_OUT.to_owned(), "false".to_owned());
        assert_eq!(assess(&opted, &[&web]), Assessment::Unguard);
        let mut set_opted = set("web", 2, "Delete", "Retain");
        set_opted.metadata.labels =
            Some([(planner::OPT_OUT.to_owned(), "false".to_owned())].into());
        assert_eq!(
            assess(&claim("data-web-0", json!([]), None), &[&set_opted]),
            Assessment::Leave
        );
        let mut deleting = claim("data-web-0", json!([guard()]), Some(SCALED));
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(assess(&deleting, &[&web]), Assessment::Leave);
    }

    #[test]
    fn patches_add_or_remove_only_the_guard_and_keep_other_owners() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "name": "web-3", "uid": "p"});
        let c = claim("data-web-3", json!([pod]), None);
        let added = guard_patch(&c, "ns-1", Policy::parse(SCALED).unwrap());
        assert_eq!(added["metadata"]["resourceVersion"], "7");
        assert_eq!(added["metadata"]["ownerReferences"], json!([pod, guard()]));
        assert_eq!(added["metadata"]["annotations"][GUARD_ANNOTATION], SCALED);
        let guarded = claim("data-web-3", json!([pod, guard()]), Some(SCALED));
        assert!(is_guarded(&guarded));
        let again = guard_patch(&guarded, "ns-1", Policy::parse(BOTH).unwrap());
        assert_eq!(
            again["metadata"]["ownerReferences"],
            json!([pod, guard()]),
            "one guard, not two"
        );
        let removed = unguard_patch(&guarded);
        assert_eq!(removed["metadata"]["ownerReferences"], json!([pod]));
        assert_eq!(
            removed["metadata"]["annotations"][GUARD_ANNOTATION],
            serde_json::Value::Null
        );
        // Another namespace's Namespace is not a guard of this claim.
        let other =
            json!({"apiVersion": "v1", "kind": "Namespace", "name": "elsewhere", "uid": "x"});
        let foreign = claim("data-web-3", json!([other]), None);
        assert!(!is_guarded(&foreign));
        assert_eq!(
            unguard_patch(&foreign)["metadata"]["ownerReferences"],
            json!([other])
        );
    }
}
