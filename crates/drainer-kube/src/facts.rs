//! What Kubernetes mode records on a drain, and what each fact means: the ledger keeps a
//! drain's platform facts as names and text ([`drainer_core::ledger::Facts`]) without knowing
//! them; this module names them, reads them typed ([`KubeDrain`]) and writes them
//! ([`KubeLedger`]). The names are the drain's JSON fields in the HTTP API, so they must not
//! change. It decides nothing.

use drainer_core::ledger::{Drain, Facts, Ledger, Result};
use drainer_core::lifecycle::DrainState;
use drainer_core::snapshot::DrainOrigin;

/// The claim's UID as the drain was requested (a claim deleted and made again under the same
/// name is another volume).
pub(crate) const PVC_UID: &str = "pvc_uid";
/// The claim's UID again, under the name of the snapshot origin's lineage field, which copies
/// it into the snapshot (and by which the ledger finds a claim's drains, indexed).
pub(crate) const CLAIM_UID: &str = DrainOrigin::LINEAGE[0];
/// The announcing pod's UID.
pub const POD_UID: &str = "pod_uid";
/// The node the announcing pod ran on.
pub const NODE: &str = "node";
/// The ConfigMap holding the claim from the garbage collector, if any (see [`crate::hold`]):
/// the fact of the mode's [`crate::intake::CLAIM_HOLD`].
pub(crate) const HOLD: &str = "hold";
/// The mover Job of the current attempt.
pub const MOVER_JOB: &str = "mover_job";
/// That Job's UID: what identifies its pod as this drain's mover (indexed).
pub(crate) const MOVER_JOB_UID: &str = "mover_job_uid";
/// The UID of the claim's namespace as its mover was created: the life of the namespace the
/// snapshot belongs to (a lineage field of the snapshot's origin).
pub(crate) const NAMESPACE_UID: &str = DrainOrigin::LINEAGE[1];
/// The UID of the claim's StatefulSet then, if it had one (a lineage field too).
pub(crate) const STATEFULSET_UID: &str = DrainOrigin::LINEAGE[2];

/// What Kubernetes mode knows of a new drain's volume when it is requested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeFacts {
    /// The claim's UID.
    pub pvc_uid: Option<String>,
    /// The announcing pod's UID.
    pub pod_uid: Option<String>,
    /// The node it ran on.
    pub node: Option<String>,
}

impl From<KubeFacts> for Facts {
    fn from(kube: KubeFacts) -> Self {
        Facts::default()
            .with(PVC_UID, kube.pvc_uid.clone())
            .with(CLAIM_UID, kube.pvc_uid)
            .with(POD_UID, kube.pod_uid)
            .with(NODE, kube.node)
    }
}

/// A drain's Kubernetes facts, read typed.
pub(crate) trait KubeDrain {
    /// The claim's UID, if recorded.
    fn pvc_uid(&self) -> Option<&str>;
    /// The announcing pod's UID, if recorded.
    fn pod_uid(&self) -> Option<&str>;
    /// The node the announcing pod ran on, if recorded.
    fn node(&self) -> Option<&str>;
    /// The hold keeping the claim, if any.
    fn hold(&self) -> Option<&str>;
    /// The mover Job of the current attempt, if any.
    fn mover_job(&self) -> Option<&str>;
    /// That Job's UID.
    fn mover_job_uid(&self) -> Option<&str>;
}

impl KubeDrain for Drain {
    fn pvc_uid(&self) -> Option<&str> {
        self.facts.get(PVC_UID)
    }

    fn pod_uid(&self) -> Option<&str> {
        self.facts.get(POD_UID)
    }

    fn node(&self) -> Option<&str> {
        self.facts.get(NODE)
    }

    fn hold(&self) -> Option<&str> {
        self.facts.get(HOLD)
    }

    fn mover_job(&self) -> Option<&str> {
        self.facts.get(MOVER_JOB)
    }

    fn mover_job_uid(&self) -> Option<&str> {
        self.facts.get(MOVER_JOB_UID)
    }
}

/// The ledger's drains by their Kubernetes facts.
#[async_trait::async_trait]
pub trait KubeLedger {
    /// Records the hold keeping drain `id`'s claim, or its removal.
    async fn set_hold(&self, id: &str, hold: Option<&str>) -> Result<()>;
    /// Records the mover Job of drain `id`'s current attempt.
    async fn set_mover_job(&self, id: &str, name: &str, uid: &str) -> Result<()>;
    /// Records the life of drain `id`'s claim as its mover is created: the UIDs of the
    /// claim's namespace and StatefulSet (if it has one), which its snapshot will carry.
    async fn set_namespace_life(
        &self,
        id: &str,
        namespace_uid: &str,
        statefulset_uid: Option<&str>,
    ) -> Result<()>;
    /// Drains that have ended but still hold their claim, oldest change first.
    async fn ended_with_hold(&self, limit: u32) -> Result<Vec<Drain>>;
    /// Active drains that hold their claim, oldest change first: their holds must stay in
    /// place until they end.
    async fn active_with_hold(&self, limit: u32) -> Result<Vec<Drain>>;
    /// The drain whose current mover Job has UID `uid`, if it is being copied or queued to
    /// be copied again (a drain released at shutdown keeps its running mover Job, which waits
    /// for the next claim to adopt it; only a copying drain accepts its data).
    async fn drain_of_mover_job(&self, uid: &str) -> Result<Option<Drain>>;
}

#[async_trait::async_trait]
impl KubeLedger for Ledger {
    async fn set_hold(&self, id: &str, hold: Option<&str>) -> Result<()> {
        self.patch_facts(id, &[(HOLD, hold)]).await
    }

    async fn set_mover_job(&self, id: &str, name: &str, uid: &str) -> Result<()> {
        self.patch_facts(id, &[(MOVER_JOB, Some(name)), (MOVER_JOB_UID, Some(uid))])
            .await
    }

    async fn set_namespace_life(
        &self,
        id: &str,
        namespace_uid: &str,
        statefulset_uid: Option<&str>,
    ) -> Result<()> {
        let life = [
            (NAMESPACE_UID, Some(namespace_uid)),
            (STATEFULSET_UID, statefulset_uid),
        ];
        self.patch_facts(id, &life).await
    }

    async fn ended_with_hold(&self, limit: u32) -> Result<Vec<Drain>> {
        self.ended_having(HOLD, limit).await
    }

    async fn active_with_hold(&self, limit: u32) -> Result<Vec<Drain>> {
        self.active_having(HOLD, limit).await
    }

    async fn drain_of_mover_job(&self, uid: &str) -> Result<Option<Drain>> {
        let states = [DrainState::Copying, DrainState::Queued];
        self.drain_with_fact(MOVER_JOB_UID, uid, &states).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_drains_facts_record_the_claim_for_the_api_and_for_its_snapshots_lineage() {
        let facts: Facts = KubeFacts {
            pvc_uid: Some("u-1".into()),
            pod_uid: None,
            node: Some("n-1".into()),
        }
        .into();
        assert_eq!(facts.get(PVC_UID), Some("u-1"));
        assert_eq!(facts.get(CLAIM_UID), Some("u-1"));
        assert_eq!((facts.get(POD_UID), facts.get(NODE)), (None, Some("n-1")));
        let json = serde_json::to_value(&facts).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"pvc_uid": "u-1", "claim_uid": "u-1", "node": "n-1"})
        );
    }
}
