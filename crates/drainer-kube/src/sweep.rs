//! Kubernetes sweeps: finding the orphaned claims of StatefulSets that nobody handed off, and
//! queueing one drain for each that has none since it was last mounted.
//!
//! A sweep reads the cluster from the watch caches (kube's reflector stores) ([`super::Cluster`]; no API call), asks
//! the ledger what it remembers (StatefulSets seen before, by sweeps or by the watch
//! ([`super::memory`]), when each claim was last seen
//! mounted, the claims' drains), decides in pure functions ([`classify`], [`decide`],
//! [`sets_to_remember`], over [`super::planner`]), and then writes: the StatefulSets to
//! remember, the claim sightings, the new drains (straight to `queued`, reason
//! `sweep: <why>`, requested by `sweep`). A dry run decides and writes nothing. The same
//! reading gives the orphans report ([`KubeSweeper::orphans`]): every orphaned claim with its
//! size, age, latest snapshot and drain.
//!
//! One sweep at a time: sweeps of one process take turns ([`KubeSweeper`] holds a lock), and
//! scheduled sweeps ([`Sweeper::scheduled`]) run only on the replica holding the
//! `drainer-sweeper` Lease ([`super::lease`], kept by its own task; the others answer `None`).
//! An on-demand sweep
//! (`POST /v1/sweeps`, `drainer sweep`) runs whoever holds the Lease: the ledger keeps at most
//! one active drain per volume, so two sweeps at once cannot queue a volume twice. This module never changes cluster objects
//! itself; holding claims is the [`Intake`]'s job, Events the [`Notifier`]'s.

use super::Cluster;
use super::lease::Holding;
use super::memory;
use super::planner::{self, RememberedSet, Seen};
use crate::facts::{KubeDrain, KubeFacts};
use crate::sweep_records::{ClaimSighting, SweepRecords};
use drainer_core::ledger::{ClaimKey, Drain, Ledger, NewDrain};
use drainer_core::store::Store;
use drainer_core::volume::VolumeId;
use drainer_server::intake::Intake;
use drainer_server::metrics::Metrics;
use drainer_server::notify::{Milestone, Notifier};
use drainer_server::sweep::{
    DrainBrief, Finding, LastSnapshot, Orphan, SweepError, SweepReport, Sweeper, Verdict, rfc3339,
    shown_drain,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Who sweeps ask for their drains (`requested_by`).
pub(crate) const SWEEP_PRINCIPAL: &str = "sweep";

/// Store reads at once while building the orphans report.
const SNAPSHOT_READS: usize = 8;

/// What a sweep reads of the cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Every claim.
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    /// Every pod.
    pub pods: Vec<Arc<Pod>>,
    /// Every StatefulSet.
    pub sets: Vec<Arc<StatefulSet>>,
}

impl View {
    /// What the cluster's caches hold now.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            claims: cluster.claims.state(),
            pods: cluster.pods.state(),
            sets: cluster.sets.state(),
        }
    }
}

/// Classifies every claim of a StatefulSet in every namespace (see
/// [`planner::classify_namespace`]), sorted by namespace and name.
pub(crate) fn classify(view: &View, remembered: &[RememberedSet]) -> Vec<Seen> {
    type Objects<'a> = (
        Vec<&'a PersistentVolumeClaim>,
        Vec<&'a Pod>,
        Vec<&'a StatefulSet>,
    );
    let mut namespaces: HashMap<&str, Objects> = HashMap::new();
    for claim in &view.claims {
        if let Some(n) = claim.metadata.namespace.as_deref() {
            namespaces.entry(n).or_default().0.push(claim);
        }
    }
    for pod in &view.pods {
        if let Some(entry) = pod
            .metadata
            .namespace
            .as_deref()
            .and_then(|n| namespaces.get_mut(n))
        {
            entry.1.push(pod);
        }
    }
    for set in &view.sets {
        if let Some(entry) = set
            .metadata
            .namespace
            .as_deref()
            .and_then(|n| namespaces.get_mut(n))
        {
            entry.2.push(set);
        }
    }
    let mut seen: Vec<Seen> = namespaces
        .values()
        .flat_map(|(claims, pods, sets)| {
            planner::classify_namespace(claims, pods, sets, remembered)
        })
        .collect();
    seen.sort_by(|a, b| (&a.namespace, &a.pvc).cmp(&(&b.namespace, &b.pvc)));
    seen
}

/// The StatefulSets to remember: those with claim templates that the ledger does not know
/// yet, or knows otherwise (name, templates, opt-out).
pub(crate) fn sets_to_remember(view: &View, remembered: &[RememberedSet]) -> Vec<RememberedSet> {
    let known: HashMap<String, RememberedSet> = remembered
        .iter()
        .map(|r| (r.uid.clone(), r.clone()))
        .collect();
    let seen = view.sets.iter().filter_map(|set| memory::remembered(set));
    memory::to_write(seen, &known)
}

/// The claims whose drains a sweep looks up: the orphaned ones.
pub(crate) fn claims_to_look_up(seen: &[Seen]) -> Vec<ClaimKey> {
    seen.iter()
        .filter(|s| s.verdict.is_orphaned())
        .map(|s| ClaimKey {
            uid: s.uid.clone(),
            namespace: s.namespace.clone(),
            pvc: s.pvc.clone(),
        })
        .collect()
}

/// A claim's drains: those that recorded its UID, and those of its name that recorded none.
struct DrainsByClaim<'a> {
    by_uid: HashMap<&'a str, Vec<&'a Drain>>,
    by_name: HashMap<(&'a str, &'a str), Vec<&'a Drain>>,
}

impl<'a> DrainsByClaim<'a> {
    fn new(drains: &'a [Drain]) -> Self {
        let mut grouped = Self {
            by_uid: HashMap::new(),
            by_name: HashMap::new(),
        };
        for d in drains {
            match d.pvc_uid() {
                Some(uid) => grouped.by_uid.entry(uid).or_default().push(d),
                None => grouped
                    .by_name
                    .entry((d.namespace.as_str(), d.pvc.as_str()))
                    .or_default()
                    .push(d),
            }
        }
        grouped
    }

    fn of(&self, seen: &Seen) -> Vec<&'a Drain> {
        let by_uid = self.by_uid.get(seen.uid.as_str()).into_iter().flatten();
        let by_name = self
            .by_name
            .get(&(seen.namespace.as_str(), seen.pvc.as_str()))
            .into_iter()
            .flatten();
        by_uid.chain(by_name).copied().collect()
    }
}

/// What a sweep decided, before anything is written.
#[derive(Debug, Clone, Default)]
pub struct Decided {
    /// Every claim of a StatefulSet, and the decision.
    pub findings: Vec<Finding>,
    /// The drains to queue.
    pub drains: Vec<NewDrain>,
    /// What to record of the claims (see [`ClaimSighting`]).
    pub sightings: Vec<ClaimSighting>,
    /// Sightings of claims that no longer exist, to forget.
    pub forget: Vec<String>,
}

/// Decides a sweep: a finding for every classified claim, a drain for every orphan that
/// nothing covers ([`planner::cover`]: an active drain, or one completed since the claim was
/// last seen mounted), what to record of each claim (mounted now; orphaned since when), and
/// which sightings to forget (their claim is gone: `claims` holds every claim UID there is).
pub fn decide(
    seen: &[Seen],
    claims: &HashSet<&str>,
    sightings: &[ClaimSighting],
    drains: &[Drain],
    now_ms: i64,
    max_attempts: u32,
) -> Decided {
    let recorded: HashMap<&str, &ClaimSighting> =
        sightings.iter().map(|s| (s.pvc_uid.as_str(), s)).collect();
    let grouped = DrainsByClaim::new(drains);
    let mut decided = Decided::default();
    for s in seen {
        let sighting = recorded.get(s.uid.as_str()).copied();
        let cover = s.verdict.is_orphaned().then(|| {
            let last_mounted = sighting.and_then(|r| r.last_mounted_ms);
            planner::cover(grouped.of(s), &s.uid, s.created_ms, last_mounted)
        });
        let finding = planner::finding(s, cover.flatten().as_ref());
        if finding.drain
            && let Some(new) = new_drain(s, max_attempts)
        {
            decided.drains.push(new);
        }
        decided.findings.push(finding);
        decided.sightings.extend(sighting_of(s, sighting, now_ms));
    }
    decided.forget = sightings
        .iter()
        .filter(|s| !claims.contains(s.pvc_uid.as_str()))
        .map(|s| s.pvc_uid.clone())
        .collect();
    decided
}

/// What to record of a claim, if anything changed: mounted now (the time), orphaned from now
/// on (kept if it was already), or wanted again (clears the orphaned time).
fn sighting_of(s: &Seen, recorded: Option<&ClaimSighting>, now_ms: i64) -> Option<ClaimSighting> {
    let orphaned_before = recorded.and_then(|r| r.orphaned_since_ms).is_some();
    let (last_mounted_ms, orphaned_since_ms) = if s.mounted_by.is_some() {
        (Some(now_ms), None)
    } else if s.verdict.is_orphaned() && !orphaned_before {
        (None, Some(now_ms))
    } else if !s.verdict.is_orphaned() && orphaned_before {
        (None, None)
    } else {
        return None;
    };
    Some(ClaimSighting {
        pvc_uid: s.uid.clone(),
        namespace: s.namespace.clone(),
        pvc: s.pvc.clone(),
        statefulset: Some(s.place.set.clone()),
        last_mounted_ms,
        orphaned_since_ms,
        last_seen_ms: now_ms,
    })
}

/// The drain a sweep queues for an orphan: straight to `queued`, its reason naming the
/// StatefulSet, the pod and why.
fn new_drain(s: &Seen, max_attempts: u32) -> Option<NewDrain> {
    let volume = VolumeId::new(&s.namespace, &s.pvc).ok()?;
    Some(NewDrain {
        volume,
        pod: None,
        reason: format!("sweep: {}", s.why),
        max_attempts,
        wait_for_release: false,
        requested_by: Some(SWEEP_PRINCIPAL.to_owned()),
        facts: KubeFacts {
            pvc_uid: Some(s.uid.clone()),
            pod_uid: None,
            node: None,
        }
        .into(),
    })
}

/// The size of a claim: its capacity once bound, else its request.
pub(crate) fn claim_size(claim: &PersistentVolumeClaim) -> Option<String> {
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let request = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    capacity.or(request).map(|q| q.0.clone())
}

/// A Kubernetes quantity (`16Gi`, `500M`, `1e9`, `1500m`) in bytes (rounded up); `None` if
/// it is not one.
pub(crate) fn quantity_bytes(quantity: &str) -> Option<u64> {
    const BINARY: [(&str, f64); 6] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
    ];
    const DECIMAL: [(&str, f64); 7] = [
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = quantity.trim();
    let (number, factor) = BINARY
        .iter()
        .chain(DECIMAL.iter())
        .find_map(|(suffix, factor)| q.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((q, 1.0));
    let plain = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let value: f64 = match number.split_once(['e', 'E']) {
        Some((mantissa, exponent)) if plain(mantissa) => {
            mantissa.parse::<f64>().ok()? * 10f64.powi(exponent.parse().ok()?)
        }
        _ if plain(number) => number.parse().ok()?,
        _ => return None,
    };
    let bytes = (value * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// One row of the orphans report, without its latest snapshot (read from the store after).
pub(crate) fn orphan_row(
    seen: &Seen,
    claim: Option<&PersistentVolumeClaim>,
    sighting: Option<&ClaimSighting>,
    drains: &[&Drain],
    now_ms: i64,
) -> Orphan {
    let size = claim.and_then(claim_size);
    let orphaned_since = sighting.and_then(|s| s.orphaned_since_ms);
    let age_from = orphaned_since.or(seen.created_ms);
    Orphan {
        volume: format!("{}/{}", seen.namespace, seen.pvc),
        uid: Some(seen.uid.clone()),
        statefulset: Some(seen.place.set.clone()),
        verdict: seen.verdict,
        why: seen.why.clone(),
        size_bytes: size.as_deref().and_then(quantity_bytes),
        size,
        created: seen.created_ms.map(rfc3339),
        orphaned_since: orphaned_since.map(rfc3339),
        age_seconds: age_from.map(|t| u64::try_from((now_ms - t).max(0) / 1000).unwrap_or(0)),
        last_snapshot: None,
        drain: shown_drain(drains.iter().copied()).map(DrainBrief::from),
    }
}

/// What a [`KubeSweeper`] works with.
pub struct Sweeping {
    /// The cluster's caches.
    pub cluster: Cluster,
    /// The ledger.
    pub ledger: Ledger,
    /// The snapshot store (for the orphans report's latest snapshots).
    pub store: Store,
    /// Metrics: sweep durations and `drainer_orphaned_volumes`.
    pub metrics: Arc<Metrics>,
    /// Hears that sweeps created drains (`Accepted`).
    pub notifier: Arc<dyn Notifier>,
    /// What handoffs do to recorded drains (holding claims the garbage collector would
    /// delete), done to sweeps' new drains too; `None`: nothing.
    pub intake: Option<Arc<dyn Intake>>,
    /// Attempts given to new drains.
    pub max_attempts: u32,
    /// Whether this replica holds the sweeper Lease (its [`super::lease::Keeper`] takes and
    /// renews it); scheduled sweeps run only while it does. `None`: every scheduled call
    /// sweeps (one replica).
    pub lease: Option<Holding>,
}

/// Kubernetes mode's [`Sweeper`].
pub struct KubeSweeper {
    parts: Sweeping,
    /// Sweeps of this process take turns.
    turn: tokio::sync::Mutex<()>,
}

impl KubeSweeper {
    /// A sweeper over `parts`.
    pub fn new(parts: Sweeping) -> Self {
        Self {
            parts,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads and decides: what the cluster and the ledger say now, classified. The
    /// StatefulSets the watch saw and the ledger does not hold yet are written first (dry runs
    /// too: the watch's memory is not the sweep's to skip), so a set deleted since the last
    /// sweep is still recognised.
    async fn read(&self) -> Result<(View, Vec<RememberedSet>, Vec<Seen>), SweepError> {
        let view = View::of(&self.parts.cluster);
        let ledger = &self.parts.ledger;
        self.parts.cluster.seen_sets.flush(ledger).await?;
        let remembered = ledger.remembered_sets().await?;
        let seen = classify(&view, &remembered);
        Ok((view, remembered, seen))
    }

    /// Queues `wanted`; tells the intake and the notifier about the new drains.
    async fn queue(&self, wanted: &[NewDrain]) -> Result<Vec<Drain>, SweepError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = self.parts.ledger.request_drains(wanted).await?;
        let new: Vec<Drain> = recorded
            .iter()
            .filter(|(_, new)| *new)
            .map(|(d, _)| d.clone())
            .collect();
        if let Some(intake) = &self.parts.intake
            && let Err(refusal) = intake.recorded(&new).await
        {
            tracing::warn!(drains = new.len(), error = %refusal, "sweep: acting on new drains failed; they stay queued");
        }
        for drain in &new {
            tracing::info!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, reason = %drain.reason, "sweep queued a drain");
            self.parts
                .notifier
                .notify(drain, &Milestone::Accepted)
                .await;
        }
        Ok(recorded.into_iter().map(|(d, _)| d).collect())
    }

    /// Writes what a sweep decided, and queues its drains.
    async fn write(
        &self,
        remember: &[RememberedSet],
        decided: &Decided,
    ) -> Result<Vec<Drain>, SweepError> {
        let ledger = &self.parts.ledger;
        ledger.remember_sets(remember).await?;
        ledger
            .record_sightings(&decided.sightings, &decided.forget)
            .await?;
        self.queue(&decided.drains).await
    }
}

#[async_trait::async_trait]
impl Sweeper for KubeSweeper {
    #[tracing::instrument(name = "sweep", skip_all, fields(dry_run = dry_run))]
    async fn sweep(&self, dry_run: bool) -> Result<SweepReport, SweepError> {
        let _turn = self.turn.lock().await;
        let started = Instant::now();
        let now = drainer_core::ledger::now_ms();
        let (view, remembered, seen) = self.read().await?;
        let lookups = claims_to_look_up(&seen);
        let drains = self.parts.ledger.drains_of_claims(&lookups).await?;
        let sightings = self.parts.ledger.claim_sightings().await?;
        let uids: HashSet<&str> = view
            .claims
            .iter()
            .filter_map(|c| c.metadata.uid.as_deref())
            .collect();
        let mut decided = decide(
            &seen,
            &uids,
            &sightings,
            &drains,
            now,
            self.parts.max_attempts,
        );
        let queued = if dry_run {
            Vec::new()
        } else {
            self.write(&sets_to_remember(&view, &remembered), &decided)
                .await?
        };
        link_new_drains(&mut decided.findings, &queued);
        let report = SweepReport {
            findings: decided.findings,
            drains: queued,
            seconds: started.elapsed().as_secs_f64(),
            dry_run,
        };
        self.observe(&report);
        Ok(report)
    }

    async fn scheduled(&self) -> Result<Option<SweepReport>, SweepError> {
        if let Some(lease) = &self.parts.lease
            && !lease.mine()
        {
            return Ok(None);
        }
        self.sweep(false).await.map(Some)
    }

    async fn orphans(&self) -> Result<Vec<Orphan>, SweepError> {
        let now = drainer_core::ledger::now_ms();
        let (view, _, seen) = self.read().await?;
        let orphaned: Vec<&Seen> = seen.iter().filter(|s| s.verdict.is_orphaned()).collect();
        let drains = self
            .parts
            .ledger
            .drains_of_claims(&claims_to_look_up(&seen))
            .await?;
        let sightings = self.parts.ledger.claim_sightings().await?;
        let sightings: HashMap<&str, &ClaimSighting> =
            sightings.iter().map(|s| (s.pvc_uid.as_str(), s)).collect();
        let claims: HashMap<&str, &PersistentVolumeClaim> = view
            .claims
            .iter()
            .filter_map(|c| Some((c.metadata.uid.as_deref()?, c.as_ref())))
            .collect();
        let grouped = DrainsByClaim::new(&drains);
        let rows: Vec<Orphan> = orphaned
            .iter()
            .map(|s| {
                let mine = grouped.of(s);
                let claim = claims.get(s.uid.as_str()).copied();
                orphan_row(s, claim, sightings.get(s.uid.as_str()).copied(), &mine, now)
            })
            .collect();
        self.parts
            .metrics
            .orphaned_volumes
            .set(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        self.with_snapshots(rows).await
    }
}

impl KubeSweeper {
    /// Sets `drainer_orphaned_volumes` and `drainer_orphaned_volumes_undrained` from a sweep, and logs it (its duration is observed by
    /// the caller, as for every mode).
    fn observe(&self, report: &SweepReport) {
        let orphaned = report.orphaned();
        self.parts
            .metrics
            .orphaned_volumes
            .set(i64::try_from(orphaned).unwrap_or(i64::MAX));
        self.parts
            .metrics
            .orphaned_volumes_undrained
            .set(i64::try_from(report.needing_drains()).unwrap_or(i64::MAX));
        let opted_out = report
            .findings
            .iter()
            .filter(|f| f.verdict == Some(Verdict::OptedOut))
            .count();
        tracing::info!(
            claims = report.findings.len(),
            orphaned,
            opted_out,
            needing_drains = report.needing_drains(),
            queued = report.drains.len(),
            dry_run = report.dry_run,
            seconds = report.seconds,
            "sweep done"
        );
    }

    /// Fills in each orphan's latest snapshot from the store (a few reads at a time); a read
    /// that fails leaves it out, with a warning.
    async fn with_snapshots(&self, rows: Vec<Orphan>) -> Result<Vec<Orphan>, SweepError> {
        let store = &self.parts.store;
        let rows = futures::stream::iter(rows)
            .map(|mut row| async move {
                if let Ok(volume) = row.volume.parse::<VolumeId>() {
                    match drainer_server::sweep::last_snapshot(store, &volume).await {
                        Ok(summary) => row.last_snapshot = summary.as_ref().map(LastSnapshot::from),
                        Err(e) => {
                            tracing::warn!(volume = %row.volume, error = %e, "orphans: cannot read the latest snapshot")
                        }
                    }
                }
                row
            })
            .buffered(SNAPSHOT_READS)
            .collect()
            .await;
        Ok(rows)
    }
}

/// Points the findings that needed a drain at the drain queued for them.
fn link_new_drains(findings: &mut [Finding], queued: &[Drain]) {
    let by_volume: HashMap<String, &str> = queued
        .iter()
        .map(|d| (d.volume().to_string(), d.id.as_str()))
        .collect();
    for finding in findings.iter_mut().filter(|f| f.drain) {
        if let Some(id) = by_volume.get(&finding.volume) {
            finding.drain_id = Some((*id).to_owned());
        }
    }
}

#[cfg(test)]
mod tests;
