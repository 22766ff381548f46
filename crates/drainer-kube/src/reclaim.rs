//! Giving the storage back (opt-in): the claim of a scaled-away ordinal whose data drainer has
//! copied is deleted once `drainer.io/reclaim-after: DURATION` (on its StatefulSet; else
//! `--reclaim-after`, off by default; `0` or `off` on the StatefulSet opts it out) has passed
//! since its drain completed. Its data comes back when the ordinal does, through the restore
//! init container (`deploy/examples/restore-init.yaml`).
//!
//! Deciding is pure ([`candidate`], then [`decide`]): a claim of an existing StatefulSet whose
//! ordinal is outside `[start, start + replicas)` and whose pods restore their claim (an init
//! container running `drainer restore`: a reclaimed ordinal must never come back empty), not
//! being deleted, not opted out of drains,
//! held by no drain, mounted by no pod, and covered by a drain completed since it was last seen
//! mounted (the sweep's [`planner::cover`]; a pass that sees a pod mount a candidate records
//! that, as a sweep would), once the delay since that drain's completion has passed. Acting is thin ([`Reclaimer`], on the sweeper Lease's holder, every [`EVERY`]):
//! the snapshot is verified (every object re-read and hashed, once per drain; a damaged one
//! keeps its claim and is verified again an hour later), the claim,
//! its StatefulSet and the namespace's pods are read again from the API server (not the
//! watches) and decided again, the ledger pins the snapshot against retention (`reclaims`),
//! the claim is marked ([`MARK`], the only claims drainer's ServiceAccount may delete, by
//! `deploy/base/admission.yaml`) with its `resourceVersion` as a precondition, an Event
//! `Reclaiming` on the claim names the snapshot, the claim is deleted with its UID and the
//! marked `resourceVersion` as preconditions, the ledger records the delete and an Event
//! `Reclaimed` goes on the StatefulSet. A delete that does not happen takes the mark and the
//! pin off again. This module never deletes anything else, and never a claim another
//! mode's or person's decision could still want: every doubt keeps the claim.

use super::events::KubeEvents;
use super::lease::Holding;
use super::planner::{self, Cover};
use super::{Cluster, call};
use crate::sweep_records::{ClaimSighting, SweepRecords};
use drainer_core::ledger::{ClaimKey, Drain, Ledger, Reclaim};
use drainer_core::lifecycle::DrainState;
use drainer_core::snapshot::retention::Span;
use drainer_core::snapshot::{self, SnapshotSelector};
use drainer_core::store::Store;
use drainer_core::volume::VolumeId;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The StatefulSet annotation that opts its scaled-away claims in (`30m`, `7d`), or out (`0`,
/// `off`) whatever `--reclaim-after` says.
pub(crate) const RECLAIM_AFTER: &str = "drainer.io/reclaim-after";
/// The claim annotation drainer sets, naming the snapshot, right before it deletes the claim:
/// the admission policy lets drainer's ServiceAccount delete only claims that carry it.
pub(crate) const MARK: &str = "drainer.io/reclaim";
/// How often the reclaimer looks.
pub(crate) const EVERY: Duration = Duration::from_secs(10);
/// Objects read at once while verifying a snapshot.
const VERIFY_READS: usize = 4;

/// A reclaim delay: `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimAfter(pub Option<Duration>);

impl FromStr for ReclaimAfter {
    type Err = String;

    /// `0` or `off`: off; else a duration (`30s`, `90m`, `12h`, `7d`, `1w3d`).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "0" | "off" => Ok(Self(None)),
            other => {
                let span: Span = other.parse()?;
                let seconds = u64::try_from(span.duration().num_seconds()).unwrap_or(0);
                Ok(Self(Some(Duration::from_secs(seconds))))
            }
        }
    }
}

/// The delay that applies to `set`'s claims: its annotation, else `default`.
pub(crate) fn delay_of(set: &StatefulSet, default: ReclaimAfter) -> Result<ReclaimAfter, String> {
    match set
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RECLAIM_AFTER))
    {
        Some(text) => text
            .parse()
            .map_err(|e| format!("{RECLAIM_AFTER}={text:?} on StatefulSet: {e}")),
        None => Ok(default),
    }
}

/// A claim the reclaimer looks at: of a scaled-away ordinal of an existing StatefulSet (not
/// being deleted) that is opted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The StatefulSet's name.
    pub set: String,
    /// The claim's ordinal.
    pub ordinal: i32,
    /// The delay (or why the StatefulSet's annotation could not be read).
    pub delay: Result<Duration, String>,
}

/// Whether `claim` is a [`Candidate`], among its namespace's `sets`.
pub(crate) fn candidate(
    claim: &PersistentVolumeClaim,
    sets: &[&StatefulSet],
    default: ReclaimAfter,
) -> Option<Candidate> {
    let place = planner::set_claim(claim.metadata.name.as_deref()?, sets.iter().copied())?;
    let set = sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(place.set.as_str()))?;
    if set.metadata.deletion_timestamp.is_some()
        || planner::live_ordinals(set).contains(&place.ordinal)
    {
        return None;
    }
    let delay = match delay_of(set, default) {
        Ok(ReclaimAfter(None)) => return None,
        Ok(ReclaimAfter(Some(delay))) => Ok(delay),
        Err(e) => Err(e),
    };
    Some(Candidate {
        set: place.set,
        ordinal: place.ordinal,
        delay,
    })
}

/// The drain whose snapshot a reclaimed claim relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drained {
    /// The drain.
    pub drain: String,
    /// Its snapshot.
    pub snapshot: String,
    /// When it completed (ms).
    pub finished_ms: i64,
}

/// What the reclaimer knows of one claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// The claim.
    pub claim: &'a PersistentVolumeClaim,
    /// The StatefulSets of its namespace.
    pub sets: &'a [&'a StatefulSet],
    /// The pods of its namespace.
    pub pods: &'a [&'a Pod],
    /// The completed drain that covers it, or why none does.
    pub drained: &'a Result<Drained, String>,
    /// `--reclaim-after`.
    pub default: ReclaimAfter,
}

/// What the reclaimer does with a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not a claim to reclaim (not a scaled-away ordinal of an opted-in StatefulSet).
    NotMine,
    /// Kept, and why.
    Keep(String),
    /// Reclaimed once `until_ms` has passed.
    Wait {
        /// When the delay has passed (ms).
        until_ms: i64,
    },
    /// Delete it now.
    Reclaim {
        /// Its StatefulSet.
        set: String,
        /// The drain and snapshot it relies on.
        drained: Drained,
    },
}

/// Decides what to do with a claim at `now_ms` (see the module doc).
pub(crate) fn decide(facts: Facts<'_>, now_ms: i64) -> Decision {
    let claim = facts.claim;
    let Some(candidate) = candidate(claim, facts.sets, facts.default) else {
        return Decision::NotMine;
    };
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let delay = match candidate.delay {
        Ok(delay) => delay,
        Err(e) => return Decision::Keep(e),
    };
    let set = facts
        .sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(candidate.set.as_str()));
    if claim.metadata.deletion_timestamp.is_some() {
        return Decision::Keep("the claim is being deleted".into());
    }
    if !set.is_some_and(|s| restores(s)) {
        return Decision::Keep(format!(
            "StatefulSet {}'s pods restore nothing (no init container runs `drainer restore`, \
             deploy/examples/restore-init.yaml): the ordinal would come back empty",
            candidate.set
        ));
    }
    if planner::opted_out(&claim.metadata) || set.is_some_and(|s| planner::opted_out(&s.metadata)) {
        return Decision::Keep(format!(
            "opted out of drains ({}: \"false\")",
            "drainer.io/drain"
        ));
    }
    if let Some(hold) = holds(claim).next() {
        return Decision::Keep(format!("still held by drainer (ConfigMap {hold})"));
    }
    if let Some(pod) = facts.pods.iter().find(|p| planner::mounts(p, name)) {
        let pod = pod.metadata.name.as_deref().unwrap_or("?");
        return Decision::Keep(format!("pod {pod} mounts it"));
    }
    let drained = match facts.drained {
        Ok(drained) => drained,
        Err(why) => return Decision::Keep(why.clone()),
    };
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let until_ms = drained.finished_ms.saturating_add(delay_ms);
    if now_ms < until_ms {
        return Decision::Wait { until_ms };
    }
    Decision::Reclaim {
        set: candidate.set,
        drained: drained.clone(),
    }
}

/// Whether the StatefulSet's pods restore their claim before they start: an init container
/// whose command and arguments run `restore` with `--volume` (as `deploy/examples/restore-init.yaml`).
pub(crate) fn restores(set: &StatefulSet) -> bool {
    let inits = set
        .spec
        .template
        .spec
        .iter()
        .flat_map(|p| p.init_containers.iter().flatten());
    inits.into_iter().any(|c| {
        let words: Vec<&str> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(String::as_str)
            .collect();
        words.contains(&"restore") && words.contains(&"--volume")
    })
}

/// The holds (ConfigMaps `drainer-hold-*`) among the claim's owners.
fn holds(claim: &PersistentVolumeClaim) -> impl Iterator<Item = &str> {
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "ConfigMap" && o.name.starts_with("drainer-hold-"))
        .map(|o| o.name.as_str())
}

/// The completed drain covering claim `uid` among `drains` (see [`planner::cover`]), or why
/// none does.
pub(crate) fn drained_of<'a>(
    drains: impl IntoIterator<Item = &'a Drain> + Clone,
    uid: &str,
    created_ms: Option<i64>,
    last_mounted_ms: Option<i64>,
) -> Result<Drained, String> {
    match planner::cover(drains.clone(), uid, created_ms, last_mounted_ms) {
        Some(Cover::Completed {
            id,
            snapshot: Some(snapshot),
        }) => {
            let drain = drains
                .into_iter()
                .find(|d| d.id == id && d.state == DrainState::Completed)
                .ok_or_else(|| format!("drain {id} is not in the ledger's answer"))?;
            let finished_ms = drain.finished_ms.unwrap_or(drain.updated_ms);
            Ok(Drained {
                drain: id,
                snapshot,
                finished_ms,
            })
        }
        Some(Cover::Completed { id, snapshot: None }) => {
            Err(format!("drain {id} completed without a snapshot"))
        }
        Some(other) => Err(other.describe()),
        None => Err("not drained since it was last mounted".into()),
    }
}

/// Errors of one claim's reclaim (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The API server.
    #[error(transparent)]
    Kube(#[from] super::Error),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] drainer_core::ledger::Error),
    /// The snapshot could not be read, or is not whole.
    #[error("snapshot {snapshot} of {volume}: {why}")]
    Snapshot {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
        /// What is wrong.
        why: String,
    },
}

/// The reclaimer's task (see the module doc).
#[derive(Clone)]
pub(crate) struct Reclaimer {
    /// The cluster's caches and client.
    pub cluster: Cluster,
    /// The ledger.
    pub ledger: Ledger,
    /// The snapshot store.
    pub store: Store,
    /// Events on claims and StatefulSets.
    pub events: Arc<KubeEvents>,
    /// The sweeper Lease as this replica holds it; `None`: always this replica's turn.
    pub lease: Option<Holding>,
    /// `--reclaim-after`.
    pub default: ReclaimAfter,
    /// This replica's name, in the ledger's record.
    pub replica: String,
    /// What verifying each drain's snapshot found.
    pub verified: Arc<Verifications>,
}

/// How long a snapshot found damaged (or that could not be read) waits before it is
/// verified again: a verify reads every byte.
const VERIFY_RETRY: Duration = Duration::from_secs(3600);

/// What verifying each drain's snapshot found (whole, or why not and when), by drain.
#[derive(Debug, Default)]
pub(crate) struct Verifications(Mutex<HashMap<String, Verified>>);

/// When a drain's snapshot was verified, and whether it was whole (or why not).
type Verified = (Instant, Result<(), String>);

impl Verifications {
    /// What an earlier verify of `drain` found, unless it failed longer than
    /// [`VERIFY_RETRY`] ago (then it is verified again).
    fn earlier(&self, drain: &str) -> Option<Result<(), String>> {
        let found = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match found.get(drain)? {
            (_, Ok(())) => Some(Ok(())),
            (at, Err(why)) if at.elapsed() < VERIFY_RETRY => Some(Err(format!(
                "{why} (verified {} s ago; again after {} s)",
                at.elapsed().as_secs(),
                VERIFY_RETRY.as_secs()
            ))),
            _ => None,
        }
    }

    fn remember(&self, drain: &str, outcome: Result<(), String>) {
        let mut found = self.0.lock().unwrap_or_else(|e| e.into_inner());
        found.insert(drain.to_owned(), (Instant::now(), outcome));
    }
}

/// One claim chosen for a reclaim.
struct Chosen {
    namespace: String,
    pvc: String,
    uid: String,
    set: String,
    drained: Drained,
}

impl Reclaimer {
    /// Passes every [`EVERY`] until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "reclaim pass failed; trying again next time");
            }
        }
    }

    /// One pass: decides from the watches and the ledger, reclaims what is due.
    #[tracing::instrument(name = "reclaim", skip_all)]
    pub(crate) async fn pass(&self) -> Result<(), Error> {
        if self.lease.as_ref().is_some_and(|l| !l.mine()) || !self.cluster.synced() {
            return Ok(());
        }
        for chosen in self.choose().await? {
            let (ns, pvc) = (chosen.namespace.clone(), chosen.pvc.clone());
            if let Err(e) = self.reclaim(&chosen).await {
                tracing::warn!(%ns, %pvc, error = %e, "reclaim failed; the claim stays (tried again next pass)");
            }
        }
        Ok(())
    }

    /// The claims due now, from the watches' caches and the ledger.
    async fn choose(&self) -> Result<Vec<Chosen>, Error> {
        let (claims, sets) = (self.cluster.claims.state(), self.cluster.sets.state());
        let sets_in = |ns: &str| -> Vec<&StatefulSet> {
            sets.iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
                .map(AsRef::as_ref)
                .collect()
        };
        let candidates: Vec<&PersistentVolumeClaim> = claims
            .iter()
            .map(AsRef::as_ref)
            .filter(|c| {
                let ns = c.metadata.namespace.as_deref().unwrap_or_default();
                candidate(c, &sets_in(ns), self.default).is_some()
            })
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<ClaimKey> = candidates.iter().filter_map(|c| key(c)).collect();
        let drains = self.ledger.drains_of_claims(&keys).await?;
        let sightings = self.ledger.claim_sightings().await?;
        let mounted: HashMap<&str, Option<i64>> = sightings
            .iter()
            .map(|s| (s.pvc_uid.as_str(), s.last_mounted_ms))
            .collect();
        let now = drainer_core::ledger::now_ms();
        let mut chosen = Vec::new();
        let mut mounted_now = Vec::new();
        for claim in candidates {
            let Some(k) = key(claim) else { continue };
            let last_mounted_ms = mounted.get(k.uid.as_str()).copied().flatten();
            let drained = drained_of(&drains, &k.uid, created_ms(claim), last_mounted_ms);
            let sets = sets_in(&k.namespace);
            let pods = self.cluster.pods_in(&k.namespace);
            let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
            if pods.iter().any(|p| planner::mounts(p, &k.pvc)) {
                mounted_now.push(mounted_sighting(&k, &sets, now));
            }
            let facts = Facts {
                claim,
                sets: &sets,
                pods: &pods,
                drained: &drained,
                default: self.default,
            };
            chosen.extend(chosen_if_due(k, decide(facts, now)));
        }
        self.ledger.record_sightings(&mounted_now, &[]).await?;
        Ok(chosen)
    }

    /// Verifies, re-reads, decides again, pins, marks, deletes and records one claim.
    #[tracing::instrument(skip_all, fields(ns = %c.namespace, pvc = %c.pvc, snapshot = %c.drained.snapshot))]
    async fn reclaim(&self, c: &Chosen) -> Result<(), Error> {
        self.verify(c).await?;
        let Some((rv, set_uid)) = self.still_due(c).await? else {
            return Ok(());
        };
        let record = Reclaim {
            pvc_uid: c.uid.clone(),
            namespace: c.namespace.clone(),
            pvc: c.pvc.clone(),
            statefulset: c.set.clone(),
            drain_id: c.drained.drain.clone(),
            snapshot: c.drained.snapshot.clone(),
            decided: drainer_core::ledger::now_ms(),
            deleted: None,
            replica: self.replica.clone(),
            released: None,
            released_by: None,
        };
        self.ledger.pin_reclaim(&record).await?;
        let marked = match self.mark(c, &rv).await {
            Ok(marked) => marked,
            Err(e) => {
                self.unpin(c).await;
                return Err(e);
            }
        };
        match self.delete(c, marked).await {
            Ok(()) => {}
            Err(Error::Kube(e)) if e.is_not_found() => {
                tracing::info!("the claim was deleted meanwhile (another replica's pass?)");
            }
            Err(e) => {
                self.unmark(c).await;
                self.unpin(c).await;
                return Err(e);
            }
        }
        let done = Reclaim {
            deleted: Some(drainer_core::ledger::now_ms()),
            ..record
        };
        self.ledger.reclaimed(&done).await?;
        tracing::info!(drain = %c.drained.drain, set = %c.set, "claim reclaimed: its storage is given back; the snapshot is pinned");
        let note = format!(
            "deleted claim {} (uid {}) of scaled-away ordinal to give its storage back; its data is snapshot {} (drain {}), pinned against retention, restored when the ordinal comes back",
            c.pvc, c.uid, c.drained.snapshot, c.drained.drain
        );
        self.events
            .tell(set_ref(c, set_uid), "Reclaimed", "Reclaim", &note)
            .await;
        Ok(())
    }

    /// Verifies the drain's snapshot: every object re-read and hashed, once per drain; a
    /// snapshot found damaged or unreadable is tried again only after [`VERIFY_RETRY`].
    async fn verify(&self, c: &Chosen) -> Result<(), Error> {
        let volume_text = format!("{}/{}", c.namespace, c.pvc);
        let fail = |why: String| Error::Snapshot {
            volume: volume_text.clone(),
            snapshot: c.drained.snapshot.clone(),
            why,
        };
        match self.verified.earlier(&c.drained.drain) {
            Some(Ok(())) => return Ok(()),
            Some(Err(why)) => return Err(fail(why)),
            None => {}
        }
        let outcome = self.verify_now(c).await;
        self.verified.remember(&c.drained.drain, outcome.clone());
        outcome.map_err(fail)
    }

    async fn verify_now(&self, c: &Chosen) -> Result<(), String> {
        let volume = VolumeId::new(&c.namespace, &c.pvc).map_err(|e| e.to_string())?;
        let selector = SnapshotSelector::Id(c.drained.snapshot.parse()?);
        let report = snapshot::verify(&self.store, &volume, &selector, VERIFY_READS)
            .await
            .map_err(|e| format!("cannot verify: {e}"))?;
        if let Some(problem) = report.problems.first().or(report.unreadable.first()) {
            return Err(format!(
                "not whole ({} problems, {} unreadable files; first: {problem:?}); not reclaimed",
                report.problems.len(),
                report.unreadable.len()
            ));
        }
        tracing::info!(
            files = report.files,
            bytes = report.bytes,
            "snapshot verified before reclaiming"
        );
        Ok(())
    }

    /// The claim's `resourceVersion` and its StatefulSet's UID, read again from the API server
    /// with the namespace's pods, if the claim is still due (same UID, same decision).
    async fn still_due(&self, c: &Chosen) -> Result<Option<(String, Option<String>)>, Error> {
        let client = &self.cluster.client;
        let what = |w: &str| format!("{w} ({}/{})", c.namespace, c.pvc);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &c.namespace);
        let Some(claim) = call(what("read the claim"), claims.get_opt(&c.pvc)).await? else {
            return Ok(None);
        };
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &c.namespace);
        let set = call(what("read its StatefulSet"), sets.get_opt(&c.set)).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &c.namespace);
        let pods = call(
            what("list its namespace's pods"),
            pods.list(&ListParams::default()),
        )
        .await?
        .items;
        let sets: Vec<&StatefulSet> = set.iter().collect();
        let pods: Vec<&Pod> = pods.iter().collect();
        let drained = Ok(c.drained.clone());
        let facts = Facts {
            claim: &claim,
            sets: &sets,
            pods: &pods,
            drained: &drained,
            default: self.default,
        };
        let same_claim = claim.metadata.uid.as_deref() == Some(c.uid.as_str());
        match decide(facts, drainer_core::ledger::now_ms()) {
            Decision::Reclaim { .. } if same_claim => {
                let rv = claim.metadata.resource_version.clone().unwrap_or_default();
                let set_uid = sets.first().and_then(|s| s.metadata.uid.clone());
                Ok(Some((rv, set_uid)))
            }
            other => {
                tracing::info!(decision = ?other, same_claim, "not reclaimed: read again, the claim is no longer due");
                Ok(None)
            }
        }
    }

    /// Marks the claim (precondition: `rv`) and says so on it; the marked `resourceVersion`.
    async fn mark(&self, c: &Chosen, rv: &str) -> Result<Option<String>, Error> {
        let mark = serde_json::json!({"metadata": {
            "uid": c.uid, "resourceVersion": rv,
            "annotations": {MARK: c.drained.snapshot},
        }});
        let marked = call(
            format!("mark claim {}/{} for reclaim", c.namespace, c.pvc),
            self.claims(c)
                .patch(&c.pvc, &PatchParams::default(), &Patch::Merge(&mark)),
        )
        .await?;
        let note = format!(
            "deleting claim {} to give its storage back: ordinal of StatefulSet {} scaled away, no pod mounts it; its data is snapshot {} (drain {}, verified), restored when the ordinal comes back",
            c.pvc, c.set, c.drained.snapshot, c.drained.drain
        );
        self.events
            .tell(claim_ref(c), "Reclaiming", "Reclaim", &note)
            .await;
        Ok(marked.metadata.resource_version)
    }

    /// Deletes the claim, its UID and the marked `resourceVersion` as preconditions.
    async fn delete(&self, c: &Chosen, marked: Option<String>) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(c.uid.clone()),
                resource_version: marked,
            }),
            ..DeleteParams::default()
        };
        call(
            format!("delete claim {}/{}", c.namespace, c.pvc),
            self.claims(c).delete(&c.pvc, &params),
        )
        .await?;
        Ok(())
    }

    /// Takes the mark off a claim whose delete did not happen (best effort: a mark left
    /// behind is logged; the next pass that finds the claim due marks it again anyway).
    async fn unmark(&self, c: &Chosen) {
        let unmark = serde_json::json!({"metadata": {"uid": c.uid, "annotations": {MARK: null}}});
        let what = format!("unmark claim {}/{}", c.namespace, c.pvc);
        let patch = Patch::Merge(&unmark);
        match call(
            what,
            self.claims(c)
                .patch(&c.pvc, &PatchParams::default(), &patch),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(error = %e, "cannot take the reclaim mark off"),
        }
    }

    /// Takes the pin off a claim that was not deleted.
    async fn unpin(&self, c: &Chosen) {
        if let Err(e) = self.ledger.unpin_reclaim(&c.uid).await {
            tracing::warn!(error = %e, "cannot unpin the snapshot of a claim not reclaimed");
        }
    }

    fn claims(&self, c: &Chosen) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.cluster.client.clone(), &c.namespace)
    }
}

/// The claim `k` if `decision` says to reclaim it now; else the decision is logged.
fn chosen_if_due(k: ClaimKey, decision: Decision) -> Option<Chosen> {
    let (ns, pvc) = (k.namespace.as_str(), k.pvc.as_str());
    match decision {
        Decision::Reclaim { set, drained } => {
            return Some(Chosen {
                namespace: k.namespace,
                pvc: k.pvc,
                uid: k.uid,
                set,
                drained,
            });
        }
        Decision::Keep(why) => tracing::debug!(ns, pvc, %why, "not reclaimed"),
        Decision::Wait { until_ms } => {
            let until = drainer_server::sweep::rfc3339(until_ms);
            tracing::debug!(ns, pvc, %until, "reclaimed later");
        }
        Decision::NotMine => {}
    }
    None
}

/// What to record of a candidate a pod mounts now (as a sweep would): a drain completed before
/// this no longer covers it, so it is neither reclaimed nor left undrained once the pod goes,
/// whether or not a sweep saw the pod.
fn mounted_sighting(k: &ClaimKey, sets: &[&StatefulSet], now: i64) -> ClaimSighting {
    let set = planner::set_claim(&k.pvc, sets.iter().copied()).map(|c| c.set);
    ClaimSighting {
        pvc_uid: k.uid.clone(),
        namespace: k.namespace.clone(),
        pvc: k.pvc.clone(),
        statefulset: set,
        last_mounted_ms: Some(now),
        orphaned_since_ms: None,
        last_seen_ms: now,
    }
}

/// The claim's key for the ledger.
fn key(claim: &PersistentVolumeClaim) -> Option<ClaimKey> {
    Some(ClaimKey {
        uid: claim.metadata.uid.clone()?,
        namespace: claim.metadata.namespace.clone()?,
        pvc: claim.metadata.name.clone()?,
    })
}

fn created_ms(claim: &PersistentVolumeClaim) -> Option<i64> {
    claim
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
}

fn claim_ref(c: &Chosen) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(c.namespace.clone()),
        name: Some(c.pvc.clone()),
        uid: Some(c.uid.clone()),
        ..ObjectReference::default()
    }
}

fn set_ref(c: &Chosen, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("StatefulSet".into()),
        namespace: Some(c.namespace.clone()),
        name: Some(c.set.clone()),
        uid,
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests;
