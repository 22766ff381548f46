//! What Kubernetes mode adds to a handoff ([`drainer_server::intake::Intake`]): every drain waits
//! for its pod's release, records the claim's UID (a claim deleted and created again is
//! another volume) and the announcing pod; and before the caller is answered, a claim that the
//! garbage collector would delete with its pod (`whenScaled: Delete`) is held, and one whose
//! StatefulSet's policy may delete it later is guarded ([`super::guard`]) if the reconciler
//! has not guarded it yet, so an acknowledged handoff never loses its data to the collector,
//! even if drainer dies right after answering.

use super::{Cluster, call, hold};
use crate::facts::{KubeDrain, KubeFacts, KubeLedger};
use drainer_core::ledger::{Drain, Ledger, NewDrain};
use drainer_server::auth::{Caller, Workload};
use drainer_server::intake::{ClaimHold, Intake, Refusal};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;

/// How a drain of Kubernetes mode holds its claim: its hold ([`hold`]) keeps the claim from the garbage
/// collector, so the drain is not cancelled and `/metrics` counts the claims held.
pub(crate) const CLAIM_HOLD: ClaimHold = ClaimHold {
    fact: crate::facts::HOLD,
    held_from: "the garbage collector",
};

/// Kubernetes mode's intake of handoffs.
pub(crate) struct KubeIntake {
    /// The cluster.
    pub cluster: Cluster,
    /// Where holds are recorded.
    pub ledger: Ledger,
}

impl KubeIntake {
    /// The claim `name` in `namespace`: from the watch, or (just created) from the API.
    async fn claim(&self, namespace: &str, name: &str) -> Result<PersistentVolumeClaim, Refusal> {
        if let Some(claim) = self.cluster.claim(namespace, name) {
            return Ok((*claim).clone());
        }
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.cluster.client.clone(), namespace);
        let found = call(format!("get claim {namespace}/{name}"), api.get_opt(name))
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        found.ok_or_else(|| Refusal::NotFound(format!("claim {namespace}/{name} does not exist")))
    }

    /// Makes sure the collector cannot delete the claim of `drain` before the drain ends,
    /// even if no drainer runs: a claim it may delete with an owner (its condemned pod, its
    /// deleted StatefulSet) is held; a claim whose StatefulSet's policy may delete it later is
    /// guarded. Read from the watch first, then, when that shows no owner, from the API server:
    /// the watch may lag behind the StatefulSet controller making the condemned pod the claim's
    /// owner (done before the pod is deleted, so before a terminating pod's handoff). A claim
    /// changed meanwhile is read again (a few times).
    async fn protect(&self, drain: &Drain) -> Result<(), Refusal> {
        let (namespace, name) = (&drain.namespace, &drain.pvc);
        if let Some(claim) = self.cluster.claim(namespace, name) {
            if hold::needs_hold(&claim) {
                return self.hold(drain, &claim).await;
            }
            if super::guard::is_guarded(&claim) {
                return Ok(()); // guarded: the collector keeps it whoever its owners become
            }
        }
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.cluster.client.clone(), namespace);
        let unavailable = |e: super::Error| Refusal::Unavailable(e.to_string());
        for _ in 0..PROTECT_TRIES {
            let found = call(format!("get claim {namespace}/{name}"), api.get_opt(name))
                .await
                .map_err(unavailable)?;
            let Some(claim) = found else {
                return Ok(()); // gone: nothing left to protect (the drain will say so)
            };
            if hold::needs_hold(&claim) {
                return self.hold(drain, &claim).await;
            }
            match super::guard::guard_now(&self.cluster, &claim).await {
                Err(e) if e.is_conflict() => continue,
                other => return other.map(drop).map_err(unavailable),
            }
        }
        Err(Refusal::Unavailable(format!(
            "claim {namespace}/{name} kept changing while drainer guarded it; try again"
        )))
    }

    /// Holds `claim` for `drain` and records the hold.
    async fn hold(&self, drain: &Drain, claim: &PersistentVolumeClaim) -> Result<(), Refusal> {
        let name = hold::hold(&self.cluster.client, &drain.id, claim)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        self.ledger
            .set_hold(&drain.id, Some(&name))
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))
    }
}

/// Reads of a claim that changed while it was being guarded, before a handoff is refused.
const PROTECT_TRIES: usize = 3;

/// The pod of a caller, if it is one, as (name, UID).
fn caller_pod(caller: &Caller) -> Option<(&str, &str)> {
    match caller {
        Caller::Workload(Workload { pod: Some(pod), .. }) => {
            Some((pod.name.as_str(), pod.uid.as_str()))
        }
        _ => None,
    }
}

#[async_trait::async_trait]
impl Intake for KubeIntake {
    async fn prepare(&self, caller: &Caller, drains: &mut [NewDrain]) -> Result<(), Refusal> {
        let pod = caller_pod(caller);
        for new in drains.iter_mut() {
            if !self.cluster.watches(&new.volume.namespace) {
                return Err(Refusal::NotFound(format!(
                    "namespace {} is not watched by this drainer (--watch-namespace)",
                    new.volume.namespace
                )));
            }
            let claim = self.claim(&new.volume.namespace, &new.volume.name).await?;
            let node = pod
                .and_then(|(name, _)| self.cluster.pod(&new.volume.namespace, name))
                .and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
            new.wait_for_release = true;
            if new.pod.is_none() {
                new.pod = pod.map(|(name, _)| name.to_owned());
            }
            new.facts = KubeFacts {
                pvc_uid: claim.metadata.uid.clone(),
                pod_uid: pod.map(|(_, uid)| uid.to_owned()),
                node,
            }
            .into();
        }
        Ok(())
    }

    async fn recorded(&self, drains: &[Drain]) -> Result<(), Refusal> {
        for drain in drains
            .iter()
            .filter(|d| d.state.is_active() && d.hold().is_none())
        {
            self.protect(drain).await?;
        }
        Ok(())
    }

    fn claim_hold(&self) -> Option<ClaimHold> {
        Some(CLAIM_HOLD)
    }
}
