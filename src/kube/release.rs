//! Waiting for volumes to be let go, and deciding what their drains become.
//!
//! Every second, for each drain in `awaiting_release`: a claim still mounted by a pod (the
//! announcing pod included, whatever its phase: unmount comes after `Succeeded`/`Failed`)
//! keeps waiting, held from the garbage collector if its owners would delete it; a claim let
//! go is decided by the planner from the StatefulSet as it is *now* (a scale-up during the
//! termination brings the ordinal back): scaled away → `queued`, still live → `not_needed`,
//! deleted meanwhile → `failed`, with the reason in the history. A drain that waits longer
//! than the release timeout fails. Pods of a StatefulSet seen terminating as condemned
//! ordinals get a drain (and a hold) even when nobody handed them off: looked at as soon as the
//! pod watch sees them, and kept until looked at, even when the pod is gone by then. With
//! `whenScaled: Delete` drainer does not wait for the termination: as soon as a StatefulSet
//! change makes a pod a scaled-away ordinal, its claims get a drain and a hold, before the
//! controller deletes the pod. Holds of drains that ended are let go (taken off the claim
//! first when its ordinal is live again). Every replica runs this; the ledger's guarded
//! transitions make each decision happen once.

use super::{Cluster, hold, planner};
use crate::ledger::{
    Drain, DrainFilter, KubeFacts, Ledger, NewDrain, PageCursor, Transition, Writer,
};
use crate::lifecycle::{DrainState, Event};
use crate::notify::{Milestone, Notifier};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often waiting drains and terminating pods are looked at.
const EVERY: Duration = Duration::from_secs(1);
/// Drains read from the ledger at once.
const PAGE: u32 = 500;

/// The release tracker.
pub struct Releases {
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
        let mut taken = Vec::new();
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
            if let Err(e) = self.waiting().await {
                tracing::warn!(error = %e, "cannot decide waiting drains; trying again");
            }
            if let Err(e) = self.ended_holds().await {
                tracing::warn!(error = %e, "cannot let go of holds; trying again");
            }
        }
    }

    /// Decides every drain waiting for its release.
    async fn waiting(&self) -> Result<(), crate::ledger::Error> {
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

    async fn decide(&self, drain: &Drain) -> Result<(), crate::ledger::Error> {
        let ns = drain.namespace.as_str();
        let claim = self.cluster.claim(ns, &drain.pvc);
        let pods = self.cluster.pods_in(ns);
        let sets = self.cluster.sets_in(ns);
        let decision = planner::decide_release(
            &drain.pvc,
            drain.pvc_uid.as_deref(),
            drain.pod_uid.as_deref(),
            claim.as_deref(),
            pods.iter().map(|p| p.as_ref()),
            sets.iter().map(|s| s.as_ref()),
        );
        let (event, why) = match decision {
            planner::Release::Waiting => {
                self.keep_held(drain, claim.as_deref(), false).await;
                let waited = crate::ledger::now_ms() - drain.created_ms;
                if waited < self.release_timeout.as_millis() as i64 {
                    return Ok(());
                }
                let holder = pods
                    .iter()
                    .find(|p| planner::mounts(p, &drain.pvc))
                    .and_then(|p| p.metadata.name.clone())
                    .unwrap_or_else(|| "a pod".to_owned());
                (
                    Event::ReleaseTimedOut,
                    format!(
                        "{holder} still mounts {} after {} s (--release-timeout)",
                        drain.pvc,
                        self.release_timeout.as_secs()
                    ),
                )
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
            Event::ReleaseTimedOut | Event::VolumeGone => Milestone::Failed {
                why,
                retrying: false,
            },
            _ => return,
        };
        self.announce(drain.clone(), milestone);
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
        let Some(claim) = claim.filter(|c| drain.hold.is_none() && (always || hold::needs_hold(c)))
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
    /// store and those the watch handed over (`taken` keeps them until looked at, since they
    /// may be gone from the store already).
    async fn condemned(
        &self,
        seen: &mut HashSet<String>,
        taken: &mut Vec<Arc<Pod>>,
    ) -> Result<(), crate::ledger::Error> {
        taken.extend(self.cluster.terminations.take());
        let mut terminating = self
            .cluster
            .pods
            .state_filter(|p| p.metadata.deletion_timestamp.is_some());
        terminating.extend(self.doomed_pods());
        for pod in taken.iter() {
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
        // Decided for every pod first, recorded in one batch, held all at once: fifty pods
        // scaled away together must all be held before the collector can delete a claim.
        let mut wanted = Vec::new();
        for pod in terminating {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            taken.retain(|p| p.metadata.uid.as_deref() != Some(uid.as_str()));
            if seen.contains(&uid) {
                continue;
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let sets = self.cluster.sets_in(&ns);
            let sets = || sets.iter().map(|s| s.as_ref());
            if let Some(condemned) = planner::condemned(&pod, sets()) {
                let why = "is terminating as a scaled-away ordinal";
                wanted.extend(self.drains_for(&pod, &ns, &condemned, why, false));
            } else if let Some(doomed) = planner::doomed(&pod, sets()) {
                let why = "is a scaled-away ordinal whose claims its StatefulSet deletes \
                           (whenScaled: Delete), held before the pod goes";
                wanted.extend(self.drains_for(&pod, &ns, &doomed, why, true));
            } else if pod.metadata.deletion_timestamp.is_none() {
                // A live ordinal of a `whenScaled: Delete` set: looked at again after the
                // next change of its StatefulSet (a scale-down makes it doomed).
                continue;
            }
            seen.insert(uid);
        }
        self.record_condemned(wanted).await
    }

    /// Records the drains of condemned pods' claims (one batch) and holds their claims
    /// (concurrently); `bool`: hold even if the claim has no owner yet.
    async fn record_condemned(
        &self,
        wanted: Vec<(NewDrain, bool)>,
    ) -> Result<(), crate::ledger::Error> {
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
    fn doomed_pods(&self) -> Vec<Arc<Pod>> {
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
                    .is_some_and(|set| planner::doomed(p, [set.as_ref()]).is_some())
        })
    }

    /// The drains a condemned pod's claims (of its StatefulSet) get.
    fn drains_for(
        &self,
        pod: &Pod,
        ns: &str,
        condemned: &planner::SetClaim,
        why: &str,
        hold_always: bool,
    ) -> Vec<(NewDrain, bool)> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let sets = self.cluster.sets_in(ns);
        planner::claims_of(pod)
            .filter(|claim| {
                planner::set_claim(claim, sets.iter().map(|s| s.as_ref()))
                    .is_some_and(|c| c.set == condemned.set)
            })
            .filter_map(|claim| {
                let found = self.cluster.claim(ns, claim)?;
                let volume = crate::volume::VolumeId::new(ns, claim).ok()?;
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
                    kube: Some(KubeFacts {
                        pvc_uid: found.metadata.uid.clone(),
                        pod_uid: pod.metadata.uid.clone(),
                        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    }),
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
    async fn ended_holds(&self) -> Result<(), crate::ledger::Error> {
        for drain in self.ledger.ended_with_hold(PAGE).await? {
            let Some(name) = &drain.hold else { continue };
            let live = self.ordinal_is_live(&drain.namespace, &drain.pvc);
            match hold::release(
                &self.cluster.client,
                &drain.namespace,
                &drain.pvc,
                name,
                live,
            )
            .await
            {
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
}
