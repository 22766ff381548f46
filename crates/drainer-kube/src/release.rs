//! Waiting for volumes to be let go, and deciding what their drains become.
//!
//! Every second, for each drain in `awaiting_release`: a claim still mounted by a pod (the
//! announcing pod included, whatever its phase: unmount comes after `Succeeded`/`Failed`)
//! keeps waiting, held from the garbage collector if its owners would delete it; a claim let
//! go is decided by the planner from the StatefulSet as it is *now* (a scale-up during the
//! termination brings the ordinal back): scaled away → `queued`, still live → `not_needed`,
//! deleted meanwhile → `failed`, with the reason in the history. Pods of a StatefulSet seen terminating as condemned
//! ordinals get a drain (and a hold) even when nobody handed them off: looked at as soon as the
//! pod watch sees them, and kept until looked at, even when the pod is gone by then. With
//! `whenScaled: Delete` drainer does not wait for the termination: as soon as a StatefulSet
//! change makes a pod a scaled-away ordinal, its claims get a drain and a hold, before the
//! controller deletes the pod. Holds of drains that ended are let go (taken off the claim
//! first when its ordinal is live again; a claim whose data is safe loses its standing guard
//! first, so the collector can finish). A drain still waiting past the release timeout keeps
//! waiting, said once in its history and a Warning Event. A hold someone else removes while
//! its drain is active is put back (and said). Every replica runs this; the ledger's guarded
//! transitions make each decision happen once.

use super::{Cluster, guard, hold, planner};
use crate::facts::{KubeDrain, KubeFacts, KubeLedger};
use drainer_core::ledger::{Drain, DrainFilter, Ledger, NewDrain, PageCursor, Transition, Writer};
use drainer_core::lifecycle::{DrainState, Event};
use drainer_server::notify::{Milestone, Notifier};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a pod the watch handed over is looked at again, once gone from the store, in case
/// the StatefulSet change that condemns it arrives after it.
const TAKEN_KEPT: Duration = Duration::from_secs(60);
/// How often waiting drains and terminating pods are looked at.
const EVERY: Duration = Duration::from_secs(1);
/// Drains read from the ledger at once.
const PAGE: u32 = 500;

/// The release tracker (cloned for each run of its supervised task).
#[derive(Clone)]
pub(crate) struct Releases {
    /// The cluster.
    pub cluster: Cluster,
    /// The ledger.
    pub ledger: Ledger,
    /// Hears decisions.
    pub notifier: Arc<dyn Notifier>,
    /// How long a drain may wait for its release.
    pub release_timeout: Duration,
    /// Attempts given to drains created for condemned pods.
    pub max_attempts: u32,
}

impl Releases {
    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut seen = HashSet::new();
        let mut taken: Vec<(Arc<Pod>, Instant)> = Vec::new();
        let mut holds = HoldMemory::default();
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let tick = tokio::select! {
                () = stop.cancelled() => return,
                () = self.cluster.terminations.seen() => false,
                _ = ticks.tick() => true,
            };
            if let Err(e) = self.condemned(&mut seen, &mut taken).await {
                tracing::warn!(error = %e, "cannot look at terminating pods; trying again");
            }
            if !tick {
                continue;
            }
            // A release decided, or a hold let go, on a stale view could give a claim up: wait
            // until every watch is current again (readiness says so meanwhile).
            if !self.cluster.synced() {
                tracing::debug!("a watch is not synced: release decisions wait");
                continue;
            }
            if let Err(e) = self.waiting().await {
                tracing::warn!(error = %e, "cannot decide waiting drains; trying again");
            }
            if let Err(e) = self.ended_holds().await {
                tracing::warn!(error = %e, "cannot let go of holds; trying again");
            }
            if let Err(e) = self.check_holds(&mut holds).await {
                tracing::warn!(error = %e, "cannot check holds; trying again");
            }
        }
    }

    /// Decides every drain waiting for its release.
    async fn waiting(&self) -> Result<(), drainer_core::ledger::Error> {
        let mut filter = DrainFilter {
            state: Some(DrainState::AwaitingRelease),
            ..DrainFilter::default()
        };
        loop {
            let page = self.ledger.drains(&filter, PAGE).await?;
            for drain in &page {
                self.decide(drain).await?;
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => {
                    filter.after = Some(PageCursor::after(last))
                }
                _ => return Ok(()),
            }
        }
    }

    async fn decide(&self, drain: &Drain) -> Result<(), drainer_core::ledger::Error> {
        let ns = drain.namespace.as_str();
        let claim = self.cluster.claim(ns, &drain.pvc);
        let pods = self.cluster.pods_in(ns);
        let sets = self.cluster.sets_in(ns);
        let decision = planner::decide_release(
            &drain.pvc,
            drain.pvc_uid(),
            drain.pod_uid(),
            claim.as_deref(),
            pods.iter().map(|p| p.as_ref()),
            sets.iter().map(|s| s.as_ref()),
        );
        let (event, why) = match decision {
            planner::Release::Waiting => {
                self.keep_held(drain, claim.as_deref(), false).await;
                let waited = drainer_core::ledger::now_ms() - drain.created_ms;
                if waited < self.release_timeout.as_millis() as i64 || drain.last_error.is_some() {
                    return Ok(());
                }
                let holder = pods
                    .iter()
                    .find(|p| planner::mounts(p, &drain.pvc))
                    .and_then(|p| p.metadata.name.clone())
                    .unwrap_or_else(|| "a pod".to_owned());
                let why = format!(
                    "{holder} still mounts {} after {} s (--release-timeout); still waiting, the claim stays held",
                    drain.pvc,
                    self.release_timeout.as_secs()
                );
                return self.stalled(drain, why).await;
            }
            planner::Release::Orphaned(why) => (Event::Orphaned, why),
            planner::Release::StillInUse(why) => (Event::StillInUse, why),
            planner::Release::Gone(why) => (Event::VolumeGone, why),
        };
        let message = match &drain.pod {
            Some(pod) => format!("released by pod {pod}: {why}"),
            None => why.clone(),
        };
        let change = Transition::new(
            &drain.id,
            DrainState::AwaitingRelease,
            event,
            Writer::Anyone,
            message,
        );
        match self.ledger.transition(change).await? {
            Ok(after) => {
                tracing::info!(drain = %drain.id, ns, pvc = %drain.pvc, to = %after.state, why, "release decided");
                self.tell(&after, event, why).await;
            }
            Err(refused) => tracing::debug!(drain = %drain.id, %refused, "decided elsewhere"),
        }
        Ok(())
    }

    async fn tell(&self, drain: &Drain, event: Event, why: String) {
        let milestone = match event {
            Event::StillInUse => Milestone::NotNeeded { why },
            Event::VolumeGone => Milestone::Failed {
                why,
                retrying: false,
            },
            _ => return,
        };
        self.announce(drain.clone(), milestone);
    }

    /// Records, once, that a drain is still waiting for its release past the release timeout
    /// (the drain stays `awaiting_release` and its claim held: the pod may yet go, and a
    /// claim given up here would be lost to the collector once it does).
    async fn stalled(&self, drain: &Drain, why: String) -> Result<(), drainer_core::ledger::Error> {
        let change = Transition {
            error: Some(why.clone()),
            ..Transition::new(
                &drain.id,
                DrainState::AwaitingRelease,
                Event::ReleaseTimedOut,
                Writer::Anyone,
                why.clone(),
            )
        };
        if let Ok(after) = self.ledger.transition(change).await? {
            tracing::warn!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, why, "release stalled");
            self.announce(after, Milestone::ReleaseStalled { why });
        }
        Ok(())
    }

    /// Holds a waiting drain's claim if it is not held yet and its owners would have it
    /// deleted (the handoff's own hold failed, or the owner was set later), or `always` (a
    /// condemned ordinal's claim, which the StatefulSet controller is about to give to its
    /// pod).
    async fn keep_held(
        &self,
        drain: &Drain,
        claim: Option<&k8s_openapi::api::core::v1::PersistentVolumeClaim>,
        always: bool,
    ) {
        let Some(claim) =
            claim.filter(|c| drain.hold().is_none() && (always || hold::needs_hold(c)))
        else {
            return;
        };
        match hold::hold(&self.cluster.client, &drain.id, claim).await {
            Ok(name) => {
                if let Err(e) = self.ledger.set_hold(&drain.id, Some(&name)).await {
                    tracing::warn!(drain = %drain.id, error = %e, "cannot record a hold");
                }
            }
            Err(e) => {
                tracing::warn!(drain = %drain.id, error = %e, "cannot hold the claim; trying again")
            }
        }
    }

    /// Drains (and holds) for claims of pods terminating as condemned ordinals: those of the
    /// store and those the watch handed over (`taken` keeps them for [`TAKEN_KEPT`], since
    /// they may be gone from the store already). A pod is `seen` (not looked at again) only
    /// once the drains of all its claims are recorded: a pod judged a restart is looked at
    /// again at every look while it is known (the pod watch and the StatefulSet watch are two
    /// streams: the scale-down that condemns it may arrive after it starts terminating), and
    /// so is a pod whose claims are not all listed yet, or whose drains could not be recorded.
    async fn condemned(
        &self,
        seen: &mut HashSet<String>,
        taken: &mut Vec<(Arc<Pod>, Instant)>,
    ) -> Result<(), drainer_core::ledger::Error> {
        let now = Instant::now();
        taken.extend(
            self.cluster
                .terminations
                .take()
                .into_iter()
                .map(|p| (p, now)),
        );
        let mut terminating = self
            .cluster
            .pods
            .state_filter(|p| p.metadata.deletion_timestamp.is_some());
        terminating.extend(self.pods_losing_claims());
        for (pod, _) in taken.iter() {
            if !terminating
                .iter()
                .any(|p| p.metadata.uid == pod.metadata.uid)
            {
                terminating.push(Arc::clone(pod));
            }
        }
        seen.retain(|uid| {
            terminating
                .iter()
                .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        taken.retain(|(pod, since)| {
            since.elapsed() < TAKEN_KEPT
                && !seen.contains(pod.metadata.uid.as_deref().unwrap_or_default())
        });
        // Decided for every pod first, recorded in one batch, held all at once: fifty pods
        // scaled away together must all be held before the collector can delete a claim.
        let mut wanted = Vec::new();
        let mut decided = Vec::new();
        for pod in terminating {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if seen.contains(&uid) {
                continue;
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let sets = self.cluster.sets_in(&ns);
            let sets = || sets.iter().map(|s| s.as_ref());
            let drains = if let Some(place) = planner::condemned(&pod, sets()) {
                let why = "is terminating as a scaled-away ordinal";
                self.drains_for(&pod, &ns, &place, why, false)
            } else if let Some(place) = planner::claims_deleted_on_scale_down(&pod, sets()) {
                let why = "is a scaled-away ordinal whose claims its StatefulSet deletes \
                           (whenScaled: Delete), held before the pod goes";
                self.drains_for(&pod, &ns, &place, why, true)
            } else {
                // A restart, or a live ordinal of a `whenScaled: Delete` set: looked at again
                // at the next look (a scale-down arriving later makes it scaled away).
                continue;
            };
            if let Some(drains) = drains {
                wanted.extend(drains);
                decided.push(uid);
            }
        }
        self.record_condemned(wanted).await?;
        seen.extend(decided);
        Ok(())
    }

    /// Records the drains of condemned pods' claims (one batch) and holds their claims
    /// (concurrently); `bool`: hold even if the claim has no owner yet.
    async fn record_condemned(
        &self,
        wanted: Vec<(NewDrain, bool)>,
    ) -> Result<(), drainer_core::ledger::Error> {
        if wanted.is_empty() {
            return Ok(());
        }
        let (drains, always): (Vec<NewDrain>, Vec<bool>) = wanted.into_iter().unzip();
        let recorded = self.ledger.request_drains(&drains).await?;
        let holds = recorded.iter().zip(always).map(|((drain, new), always)| {
            if *new {
                tracing::info!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, pod = ?drain.pod, "condemned pod seen: drain created");
                self.announce(drain.clone(), Milestone::Accepted);
            }
            let claim = self.cluster.claim(&drain.namespace, &drain.pvc);
            async move { self.keep_held(drain, claim.as_deref(), always).await }
        });
        futures::future::join_all(holds).await;
        Ok(())
    }

    /// Pods not terminating yet that are scaled-away ordinals of a StatefulSet with
    /// `whenScaled: Delete` (the StatefulSet controller is about to delete them and, with
    /// them, their claims).
    fn pods_losing_claims(&self) -> Vec<Arc<Pod>> {
        let sets: HashMap<String, Arc<StatefulSet>> = self
            .cluster
            .sets
            .state_filter(planner::deletes_scaled_claims)
            .into_iter()
            .filter_map(|s| Some((s.metadata.uid.clone()?, s)))
            .collect();
        if sets.is_empty() {
            return Vec::new();
        }
        self.cluster.pods.state_filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && planner::controlling_set(p)
                    .and_then(|uid| sets.get(uid))
                    .is_some_and(|set| {
                        planner::claims_deleted_on_scale_down(p, [set.as_ref()]).is_some()
                    })
        })
    }

    /// The drains a condemned pod's claims (of its StatefulSet) get; `None` while one of
    /// those claims is not listed yet (the pod is looked at again).
    fn drains_for(
        &self,
        pod: &Pod,
        ns: &str,
        condemned: &planner::SetClaim,
        why: &str,
        hold_always: bool,
    ) -> Option<Vec<(NewDrain, bool)>> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let sets = self.cluster.sets_in(ns);
        planner::claims_of(pod)
            .filter(|claim| {
                planner::set_claim(claim, sets.iter().map(|s| s.as_ref()))
                    .is_some_and(|c| c.set == condemned.set)
            })
            .map(|claim| {
                let found = self.cluster.claim(ns, claim)?;
                let volume = drainer_core::volume::VolumeId::new(ns, claim).ok()?;
                let drain = NewDrain {
                    volume,
                    pod: Some(name.clone()),
                    reason: format!(
                        "pod {name} of {} {why} ({}), seen by drainer before any handoff",
                        condemned.set, condemned.ordinal
                    ),
                    max_attempts: self.max_attempts,
                    wait_for_release: true,
                    requested_by: Some("drainer".to_owned()),
                    facts: KubeFacts {
                        pvc_uid: found.metadata.uid.clone(),
                        pod_uid: pod.metadata.uid.clone(),
                        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    }
                    .into(),
                };
                Some((drain, hold_always))
            })
            .collect()
    }

    /// Whether claim `pvc` belongs to a live ordinal of its StatefulSet (one that wants it).
    fn ordinal_is_live(&self, namespace: &str, pvc: &str) -> bool {
        let sets = self.cluster.sets_in(namespace);
        let sets = || sets.iter().map(|s| s.as_ref());
        planner::set_claim(pvc, sets()).is_some_and(|c| planner::ordinal_is_live(&c, sets()))
    }

    /// Tells the notifier of a milestone without waiting for it: in Kubernetes mode each is an
    /// Event on the claim and the pod (two API calls), and the tracker has other drains to
    /// look at meanwhile (fifty pods scaled away at once must not wait for a hundred Events).
    fn announce(&self, drain: Drain, milestone: Milestone) {
        let notifier = Arc::clone(&self.notifier);
        tokio::spawn(async move { notifier.notify(&drain, &milestone).await });
    }

    /// Lets go of the holds of drains that ended.
    async fn ended_holds(&self) -> Result<(), drainer_core::ledger::Error> {
        for drain in self.ledger.ended_with_hold(PAGE).await? {
            let Some(name) = drain.hold() else { continue };
            match self.let_go(&drain, name).await {
                Ok(()) => {
                    self.ledger.set_hold(&drain.id, None).await?;
                    tracing::info!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, state = %drain.state, "hold let go");
                }
                Err(e) => {
                    tracing::warn!(drain = %drain.id, error = %e, "cannot let go of a hold; trying again")
                }
            }
        }
        Ok(())
    }

    /// Lets go of an ended drain's hold. A claim whose data is now safe (completed) or given
    /// up (abandoned) and that its StatefulSet no longer wants loses its standing guard first,
    /// so that the hold's going lets the collector do what the claim's owners asked; a claim
    /// whose ordinal is live again loses the hold from its owners first and keeps its guard.
    async fn let_go(&self, drain: &Drain, hold_name: &str) -> Result<(), super::Error> {
        let (ns, pvc) = (drain.namespace.as_str(), drain.pvc.as_str());
        let live = self.ordinal_is_live(ns, pvc);
        let done = matches!(drain.state, DrainState::Completed | DrainState::Abandoned);
        if !live && done {
            let claim = self.cluster.claim(ns, pvc).filter(|c| {
                drain.pvc_uid().is_none() || c.metadata.uid.as_deref() == drain.pvc_uid()
            });
            if let Some(claim) =
                claim.filter(|c| guard::recorded_policy(c).is_some() || guard::is_guarded(c))
            {
                guard::unguard(&self.cluster.client, &claim).await?;
            }
        }
        if !live {
            self.delete_movers(drain).await?;
        }
        hold::release(&self.cluster.client, ns, pvc, hold_name, live).await
    }

    /// Deletes the ended drain's mover Jobs (failed attempts' Jobs stay for their logs while
    /// the drain runs): a pod that mounts a claim, even one that failed long ago, keeps the
    /// claim from being deleted, and a claim let go is meant to go now.
    async fn delete_movers(&self, drain: &Drain) -> Result<(), super::Error> {
        let label = super::mover_jobs::drain_label(&drain.id);
        let jobs = self.cluster.jobs.state_filter(|j| {
            j.metadata.namespace.as_deref() == Some(drain.namespace.as_str())
                && j.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(hold::DRAIN_LABEL))
                    .is_some_and(|v| *v == label)
        });
        let api: kube::Api<Job> =
            kube::Api::namespaced(self.cluster.client.clone(), &drain.namespace);
        for job in jobs {
            let name = job.metadata.name.clone().unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: job.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            let what = format!("delete mover Job {}/{name}", drain.namespace);
            match super::call(what, api.delete(&name, &params)).await {
                Ok(_) => {
                    tracing::info!(drain = %drain.id, job = %name, "mover Job of an ended drain deleted")
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Puts back a hold that someone else removed while its drain is active (the ConfigMap
    /// deleted, or taken off the claim's owners), and says so in the drain's history and a
    /// Warning Event; a claim already being deleted can only be reported. A hold missing for
    /// less than [`HOLD_GRACE`] is given time (the watch may not have seen it yet).
    async fn check_holds(
        &self,
        memory: &mut HoldMemory,
    ) -> Result<(), drainer_core::ledger::Error> {
        let mut missing = HashSet::new();
        for drain in self.ledger.active_with_hold(PAGE).await? {
            let Some(name) = drain.hold().map(str::to_owned) else {
                continue;
            };
            let ns = drain.namespace.as_str();
            let Some(claim) = self.cluster.claim(ns, &drain.pvc) else {
                continue;
            };
            if drain.pvc_uid().is_some() && claim.metadata.uid.as_deref() != drain.pvc_uid() {
                continue;
            }
            let map = self.cluster.holds.get(&ObjectRef::new(&name).within(ns));
            if map.is_some_and(|m| hold::is_hold_of(&m, &drain.id)) && hold::holds(&claim, &name) {
                continue;
            }
            missing.insert(drain.id.clone());
            let since = *memory
                .suspects
                .entry(drain.id.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < HOLD_GRACE {
                continue;
            }
            let what = if claim.metadata.deletion_timestamp.is_some() {
                if !memory.told.insert(drain.id.clone()) {
                    continue;
                }
                format!(
                    "hold {name} of claim {ns}/{} was removed by someone else, and the claim is being deleted",
                    drain.pvc
                )
            } else {
                match hold::hold(&self.cluster.client, &drain.id, &claim).await {
                    Ok(_) => {
                        memory.suspects.remove(&drain.id);
                        format!(
                            "hold {name} of claim {ns}/{} was removed by someone else; drainer put it back",
                            drain.pvc
                        )
                    }
                    Err(e) => {
                        tracing::warn!(drain = %drain.id, error = %e, "cannot put back a hold; trying again");
                        continue;
                    }
                }
            };
            tracing::warn!(drain = %drain.id, ns, pvc = %drain.pvc, "{what}");
            if let Err(e) = self.ledger.note(&drain.id, &what).await {
                tracing::warn!(drain = %drain.id, error = %e, "cannot record in the drain's history");
            }
            self.announce(drain, Milestone::ProtectionRemoved { what });
        }
        memory.suspects.retain(|id, _| missing.contains(id));
        Ok(())
    }
}

/// How long a hold may look missing before it counts as removed by someone else.
const HOLD_GRACE: Duration = Duration::from_secs(5);

/// What [`Releases::check_holds`] remembers between looks.
#[derive(Debug, Default)]
struct HoldMemory {
    /// Drains whose hold looked missing, since when.
    suspects: HashMap<String, Instant>,
    /// Drains whose removed hold was reported and cannot be put back (claim being deleted).
    told: HashSet<String>,
}
