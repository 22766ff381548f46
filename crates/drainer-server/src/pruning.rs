//! The service's retention pass: every `--prune-interval`, on one replica, each volume of the
//! store is pruned by the policy that applies to it (see [`drainer_core::snapshot::retention`]).
//!
//! Which policy: the claim's `drainer.io/retention` annotation, else its StatefulSet's, else
//! the service's `--keep-*` flags; none at all keeps everything (the default). A bad
//! annotation keeps everything for that volume and says why in a warning.
//!
//! What a pass never does: delete a snapshot that a claim drainer reclaimed relies on (the
//! ledger's `reclaims` pin it, see `drainer_core::snapshot::retention::decide_pinned`; each
//! pass first releases the pins whose data lives on in a later drain's snapshot), prune a
//! volume that is busy (an unfinished copy run, or a drain
//! that has not ended, as the ledger says), delete a volume's latest or newest snapshot (so
//! never the only one), or touch the volumes of a claim that is gone (local mode: whose
//! directory is gone) until `--keep-deleted-for` has passed since drainer last saw it (the
//! ledger's `volume_sightings`, written by every pass; for a claim drainer never saw, the
//! newest snapshot's completion). After that only the service-wide policy prunes them: the
//! claim's annotations went with it. Nothing runs while the mode cannot say which claims exist
//! (Kubernetes watches not synced) or on a replica that does not hold the sweeper Lease.
//!
//! Deciding is pure ([`plan_volume`]); acting is thin ([`Pruner::pass`]): list, decide, delete
//! through `snapshot::catalog`, record each volume pruned in the ledger (`prunes`), count it in
//! `drainer_snapshots_pruned_total`, and log it.

use crate::metrics::Metrics;
use drainer_core::ledger::{Ledger, PruneRecord};
use drainer_core::snapshot::retention::{self, Policy, Span};
use drainer_core::snapshot::{self, Listed};
use drainer_core::store::Store;
use drainer_core::volume::VolumeId;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How soon after start the first pass runs (after the first sweep, so claims are known).
const FIRST_PASS: Duration = Duration::from_secs(60);

/// What the mode knows of a volume's claim that exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFacts {
    /// The claim's `drainer.io/retention` annotation.
    pub policy: Option<String>,
    /// Its StatefulSet's.
    pub statefulset_policy: Option<String>,
}

/// What the mode answers when a pass asks which claims exist.
#[derive(Debug, Clone)]
pub enum Look {
    /// Another replica prunes.
    NotMyTurn,
    /// The mode cannot tell now (why); the pass waits for the next turn.
    NotReady(String),
    /// Every volume whose claim exists, by `namespace/pvc`.
    Claims(HashMap<String, ClaimFacts>),
}

/// How a mode says which claims exist (and their annotations).
#[async_trait::async_trait]
pub trait Claims: Send + Sync {
    /// The claims that exist now, or why not now.
    async fn look(&self) -> Look;
}

/// Local mode: a volume's claim is its directory `ROOT/NS/PVC`; no annotations.
pub(crate) struct LocalClaims {
    /// The volume root.
    pub root: PathBuf,
}

#[async_trait::async_trait]
impl Claims for LocalClaims {
    async fn look(&self) -> Look {
        let root = self.root.clone();
        let listed = tokio::task::spawn_blocking(move || local_volumes(&root)).await;
        match listed {
            Ok(Ok(claims)) => Look::Claims(claims),
            Ok(Err(e)) => Look::NotReady(format!("cannot list {}: {e}", self.root.display())),
            Err(e) => Look::NotReady(e.to_string()),
        }
    }
}

fn local_volumes(root: &std::path::Path) -> std::io::Result<HashMap<String, ClaimFacts>> {
    let mut found = HashMap::new();
    for ns in std::fs::read_dir(root)? {
        let ns = ns?;
        if !ns.file_type()?.is_dir() {
            continue;
        }
        for pvc in std::fs::read_dir(ns.path())? {
            let pvc = pvc?;
            if pvc.file_type()?.is_dir() {
                let volume = format!(
                    "{}/{}",
                    ns.file_name().to_string_lossy(),
                    pvc.file_name().to_string_lossy()
                );
                found.insert(volume, ClaimFacts::default());
            }
        }
    }
    Ok(found)
}

/// The pass's settings (`drainer serve` flags).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The service-wide policy.
    pub policy: Policy,
    /// How long the snapshots of a claim that is gone are all kept.
    pub keep_deleted_for: Span,
    /// This replica's name, in the record.
    pub replica: String,
}

/// What a pass does with one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Leave it alone, and why.
    Skip(String),
    /// Prune it by `policy`, which came from `source`.
    Prune {
        /// The policy.
        policy: Policy,
        /// `flags`, `claim annotation`, `StatefulSet annotation`, or `flags (claim gone)`.
        source: &'static str,
    },
}

/// What a volume is, for [`plan_volume`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct VolumeState<'a> {
    /// Its claim, when it exists.
    pub claim: Option<&'a ClaimFacts>,
    /// Why it is busy, if it is.
    pub busy: Option<&'a str>,
    /// When its claim was last seen (ms), if ever.
    pub last_seen_ms: Option<i64>,
    /// When its newest snapshot completed (ms), if it has one.
    pub newest_ms: Option<i64>,
}

/// Decides what a pass does with a volume at `now_ms` (see the module doc).
pub(crate) fn plan_volume(volume: VolumeState<'_>, settings: &Settings, now_ms: i64) -> Step {
    if let Some(why) = volume.busy {
        return Step::Skip(format!("busy: {why}"));
    }
    let (policy, source) = match volume.claim {
        Some(claim) => match retention::effective(
            &settings.policy,
            claim.statefulset_policy.as_deref(),
            claim.policy.as_deref(),
        ) {
            Ok(found) => found,
            Err(e) => return Step::Skip(format!("{e}; keeping everything")),
        },
        None => {
            let Some(since) = volume.last_seen_ms.or(volume.newest_ms) else {
                return Step::Skip("claim gone, and no snapshot to date it".into());
            };
            let until = since + settings.keep_deleted_for.duration().num_milliseconds();
            if now_ms < until {
                return Step::Skip(format!(
                    "claim gone since {}: kept whole until {} (--keep-deleted-for {})",
                    crate::sweep::rfc3339(since),
                    crate::sweep::rfc3339(until),
                    settings.keep_deleted_for
                ));
            }
            (settings.policy, "flags (claim gone)")
        }
    };
    if policy.is_empty() {
        return Step::Skip(format!("no policy ({source}): keeping everything"));
    }
    Step::Prune { policy, source }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PassReport {
    /// Volumes in the store.
    pub volumes: usize,
    /// Volumes that lost snapshots.
    pub pruned: usize,
    /// Snapshots deleted.
    pub snapshots: u64,
    /// Objects deleted.
    pub objects: u64,
    /// Volumes whose prune failed (they are tried again next pass).
    pub failed: usize,
}

/// Runs retention passes for the service.
pub(crate) struct Pruner {
    /// The ledger.
    pub ledger: Ledger,
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Which claims exist.
    pub claims: Arc<dyn Claims>,
    /// The pass's settings.
    pub settings: Settings,
}

/// Errors that stop a whole pass (a volume's own failure only skips that volume).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] drainer_core::ledger::Error),
    /// The store could not be listed.
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
}

impl Pruner {
    /// Passes every `interval` (the first after [`FIRST_PASS`]) until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut wait = FIRST_PASS.min(interval);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = interval;
            let passed = tokio::select! {
                () = stop.cancelled() => return,
                passed = self.pass() => passed,
            };
            if let Err(e) = passed {
                tracing::warn!(error = %e, "retention pass failed; trying again next time");
            }
        }
    }

    /// One pass over every volume of the store; `None` when it was not this replica's turn or
    /// the mode could not tell which claims exist.
    #[tracing::instrument(name = "retention", skip_all)]
    pub async fn pass(&self) -> Result<Option<PassReport>, Error> {
        let claims = match self.claims.look().await {
            Look::Claims(claims) => claims,
            Look::NotMyTurn => {
                tracing::debug!("another replica prunes");
                return Ok(None);
            }
            Look::NotReady(why) => {
                tracing::info!(%why, "retention pass postponed");
                return Ok(None);
            }
        };
        let started = Instant::now();
        let volumes = snapshot::list_volumes(&self.store).await?;
        let seen: Vec<String> = volumes
            .iter()
            .map(ToString::to_string)
            .filter(|v| claims.contains_key(v))
            .collect();
        self.ledger.record_volume_sightings(&seen).await?;
        let sightings = self.ledger.volume_sightings().await?;
        let busy = self.ledger.busy_volumes(self.store.url()).await?;
        self.release_superseded_pins().await?;
        let pinned = self.ledger.pinned_snapshots().await?;
        let no_pins = BTreeSet::new();
        let mut report = PassReport {
            volumes: volumes.len(),
            ..PassReport::default()
        };
        for volume in &volumes {
            let name = volume.to_string();
            let facts = Facts {
                claim: claims.get(&name),
                busy: busy.get(&name).map(String::as_str),
                last_seen_ms: sightings.get(&name).copied(),
                pinned: pinned.get(&name).unwrap_or(&no_pins),
            };
            match self.volume(volume, facts).await {
                Ok(Some((snapshots, objects))) => {
                    report.pruned += 1;
                    report.snapshots += snapshots;
                    report.objects += objects;
                }
                Ok(None) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(volume = %volume, error = %e, "pruning failed; trying again next pass");
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.prune_pass_seconds.observe(seconds);
        tracing::info!(
            volumes = report.volumes,
            pruned = report.pruned,
            snapshots_deleted = report.snapshots,
            objects_deleted = report.objects,
            failed = report.failed,
            seconds,
            "retention pass done"
        );
        Ok(Some(report))
    }

    /// Prunes one volume if its step says so: `(snapshots, objects)` deleted, `None` when it
    /// was left alone or nothing went.
    /// Releases the pins of reclaimed claims whose data lives on in a later snapshot (see
    /// `Ledger::release_superseded_pins`), so that the policy governs those snapshots again.
    async fn release_superseded_pins(&self) -> Result<(), Error> {
        let now = drainer_core::ledger::now_ms();
        for r in self.ledger.release_superseded_pins(now).await? {
            tracing::info!(
                volume = %r.volume(),
                pvc_uid = %r.pvc_uid,
                snapshot = %r.snapshot,
                released_by = r.released_by.as_deref().unwrap_or_default(),
                "pin released: the reclaimed claim's data lives on in a later drain's snapshot"
            );
        }
        Ok(())
    }

    async fn volume(
        &self,
        volume: &VolumeId,
        facts: Facts<'_>,
    ) -> Result<Option<(u64, u64)>, Error> {
        let listed = snapshot::list_snapshots(&self.store, volume).await?;
        let state = VolumeState {
            claim: facts.claim,
            busy: facts.busy,
            last_seen_ms: facts.last_seen_ms,
            newest_ms: newest_ms(&listed),
        };
        let (policy, source) =
            match plan_volume(state, &self.settings, drainer_core::ledger::now_ms()) {
                Step::Skip(why) => {
                    tracing::debug!(volume = %volume, %why, "not pruning");
                    return Ok(None);
                }
                Step::Prune { policy, source } => (policy, source),
            };
        let report = snapshot::catalog::prune_listed(
            &self.store,
            volume,
            listed,
            &policy,
            facts.pinned,
            false,
        )
        .await?;
        if report.deleted.is_empty() {
            return Ok(None);
        }
        let record = PruneRecord {
            volume: volume.to_string(),
            at: drainer_core::ledger::now_ms(),
            policy: policy.to_string(),
            source: source.to_owned(),
            deleted: report.deleted.join(" "),
            snapshots: report.deleted.len() as i64,
            objects: i64::try_from(report.objects_deleted).unwrap_or(i64::MAX),
            replica: self.settings.replica.clone(),
        };
        self.ledger.record_prune(&record).await?;
        self.metrics
            .snapshots_pruned
            .inc_by(report.deleted.len() as u64);
        tracing::info!(
            volume = %volume,
            policy = %record.policy,
            source,
            deleted = %record.deleted,
            kept = report.kept.len(),
            objects_deleted = report.objects_deleted,
            "pruned snapshots"
        );
        Ok(Some((report.deleted.len() as u64, report.objects_deleted)))
    }
}

/// What a pass knows of one volume before it lists its snapshots.
struct Facts<'a> {
    /// Its claim, when it exists.
    claim: Option<&'a ClaimFacts>,
    /// Why it is busy, if it is.
    busy: Option<&'a str>,
    /// When its claim was last seen (ms).
    last_seen_ms: Option<i64>,
    /// Its snapshots that reclaimed claims rely on (never pruned).
    pinned: &'a BTreeSet<String>,
}

/// When the newest complete snapshot of `listed` completed (ms), if any.
fn newest_ms(listed: &[Listed]) -> Option<i64> {
    listed
        .iter()
        .filter_map(Listed::complete)
        .filter_map(|s| chrono::DateTime::parse_from_rfc3339(&s.completed).ok())
        .map(|t| t.timestamp_millis())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drainer_core::ledger::Reclaim;
    use drainer_core::snapshot::CopyOptions;
    use drainer_core::store::StoreOptions;

    /// A pass by `last=1` over three snapshots of a volume whose oldest a reclaimed claim
    /// relies on: the middle one goes, the pinned one stays with the newest.
    #[tokio::test]
    async fn a_pass_never_prunes_the_snapshot_a_reclaimed_claim_relies_on() {
        const MIB: u64 = 1 << 20;
        let work = tempfile::tempdir().unwrap();
        let (root, source) = (work.path().join("volumes"), work.path().join("source"));
        std::fs::create_dir_all(root.join("shop/data-web-2")).unwrap();
        std::fs::create_dir_all(&source).unwrap();
        let url = format!("file://{}", work.path().join("store").display());
        let options = StoreOptions {
            timeout: Duration::from_secs(10),
            create: true,
            part_size: 8 * MIB,
        };
        let store = Store::open(&url, &options).unwrap();
        let ledger = Ledger::open(None, &work.path().join("data")).await.unwrap();
        let volume = VolumeId::new("shop", "data-web-2").unwrap();
        let copy = CopyOptions {
            concurrency: 2,
            part_size: 8 * MIB,
            buffer_bytes: 8 * MIB,
            check_hash: true,
            origin: None,
            compression: Default::default(),
        };
        let mut ids = Vec::new();
        for i in 0..3 {
            std::fs::write(source.join("file"), format!("version {i} ").repeat(i + 1)).unwrap();
            let done = snapshot::copy(&source, &store, &volume, &ledger, &copy, Arc::default())
                .await
                .unwrap();
            ids.push(done.snapshot.snapshot.clone());
        }
        let pin = Reclaim {
            pvc_uid: "uid-2".into(),
            namespace: "shop".into(),
            pvc: "data-web-2".into(),
            statefulset: "web".into(),
            drain_id: "d-1".into(),
            snapshot: ids[0].clone(),
            decided: drainer_core::ledger::now_ms(),
            deleted: None,
            replica: "r1".into(),
            released: None,
            released_by: None,
        };
        ledger.pin_reclaim(&pin).await.unwrap();
        let deleted = Reclaim {
            deleted: Some(pin.decided),
            ..pin
        };
        ledger.reclaimed(&deleted).await.unwrap();
        let pruner = Pruner {
            ledger,
            store: store.clone(),
            metrics: Arc::default(),
            claims: Arc::new(LocalClaims { root }),
            settings: settings("last=1"),
        };
        let report = pruner.pass().await.unwrap().expect("a pass");
        assert_eq!((report.pruned, report.snapshots), (1, 1), "{report:?}");
        let mut left: Vec<String> = snapshot::list_snapshots(&store, &volume)
            .await
            .unwrap()
            .iter()
            .map(|l| l.snapshot().to_owned())
            .collect();
        left.sort();
        assert_eq!(left, [ids[0].clone(), ids[2].clone()]);
        let pruned = pruner.ledger.prunes(10).await.unwrap();
        assert_eq!(pruned[0].deleted, ids[1]);
    }

    const DAY: i64 = 86_400_000;

    fn settings(policy: &str) -> Settings {
        Settings {
            policy: policy.parse().unwrap(),
            keep_deleted_for: "90d".parse().unwrap(),
            replica: "r1".into(),
        }
    }

    fn state<'a>(claim: Option<&'a ClaimFacts>) -> VolumeState<'a> {
        VolumeState {
            claim,
            busy: None,
            last_seen_ms: None,
            newest_ms: None,
        }
    }

    #[test]
    fn each_volume_gets_the_step_its_facts_call_for() {
        let now = 1000 * DAY;
        let plain = ClaimFacts::default();
        let annotated = ClaimFacts {
            policy: Some("daily=7".into()),
            statefulset_policy: Some("last=1".into()),
        };
        let by_set = ClaimFacts {
            policy: None,
            statefulset_policy: Some("weekly=4".into()),
        };
        let bad = ClaimFacts {
            policy: Some("daily=x".into()),
            statefulset_policy: None,
        };
        let prune = |policy: &str, source| Step::Prune {
            policy: policy.parse().unwrap(),
            source,
        };
        let flags = settings("last=3");
        let cases: Vec<(&str, VolumeState, &Settings, Step)> = vec![
            (
                "flags",
                state(Some(&plain)),
                &flags,
                prune("last=3", "flags"),
            ),
            (
                "claim annotation",
                state(Some(&annotated)),
                &flags,
                prune("daily=7", "claim annotation"),
            ),
            (
                "set annotation",
                state(Some(&by_set)),
                &flags,
                prune("weekly=4", "StatefulSet annotation"),
            ),
            (
                "busy",
                VolumeState {
                    busy: Some("drain d-1 is copying"),
                    ..state(Some(&plain))
                },
                &flags,
                Step::Skip("busy: drain d-1 is copying".into()),
            ),
            (
                "gone recently (last seen)",
                VolumeState {
                    last_seen_ms: Some(now - 89 * DAY),
                    newest_ms: Some(now - 200 * DAY),
                    ..state(None)
                },
                &flags,
                Step::Skip(format!(
                    "claim gone since {}: kept whole until {} (--keep-deleted-for 12w6d)",
                    crate::sweep::rfc3339(now - 89 * DAY),
                    crate::sweep::rfc3339(now + DAY)
                )),
            ),
            (
                "gone long ago (last seen)",
                VolumeState {
                    last_seen_ms: Some(now - 91 * DAY),
                    ..state(None)
                },
                &flags,
                prune("last=3", "flags (claim gone)"),
            ),
            (
                "gone, never seen: dated by its newest snapshot",
                VolumeState {
                    newest_ms: Some(now - 91 * DAY),
                    ..state(None)
                },
                &flags,
                prune("last=3", "flags (claim gone)"),
            ),
        ];
        for (name, volume, settings, expected) in cases {
            assert_eq!(plan_volume(volume, settings, now), expected, "{name}");
        }
        let Step::Skip(why) = plan_volume(state(Some(&bad)), &flags, now) else {
            panic!("a bad annotation prunes nothing");
        };
        assert!(
            why.starts_with("claim annotation drainer.io/retention=\"daily=x\""),
            "{why}"
        );
        assert!(why.ends_with("keeping everything"), "{why}");
        let none = settings("all");
        assert_eq!(
            plan_volume(state(Some(&plain)), &none, now),
            Step::Skip("no policy (flags): keeping everything".into())
        );
        let gone = VolumeState {
            last_seen_ms: Some(now - 365 * DAY),
            ..state(None)
        };
        assert_eq!(
            plan_volume(gone, &none, now),
            Step::Skip("no policy (flags (claim gone)): keeping everything".into())
        );
    }
}
