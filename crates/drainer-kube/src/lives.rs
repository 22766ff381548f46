//! Which life of its namespace a drain's snapshot belongs to: before each attempt of a copy
//! (a mover Job's, or an external mover's), [`LifeRecording`] reads the claim's namespace and
//! records its UID on the drain, with the UID of the claim's StatefulSet if it has one; the
//! snapshot's summary carries them (`drain.namespace_uid`, `drain.statefulset_uid`), and the
//! restore routes serve a snapshot only to the namespace life that made it
//! (`drainer_server::auth::NamespaceLife::holds`).
//!
//! Read before the mover runs (and, for mover Jobs, before the claim is checked against the
//! UID the drain recorded, which only a claim of the same namespace life can pass), a
//! namespace deleted and made again in between could only make the snapshot unreadable to the
//! earlier life's workloads, never readable to the later one's. This module records; it never
//! decides who reads what.

use crate::facts::KubeLedger;
use crate::planner::set_claim;
use crate::{Cluster, call};
use drainer_core::ledger::{Drain, Ledger};
use drainer_core::snapshot::{self, Progress, SnapshotSummary};
use drainer_server::scheduler::Executor;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use std::sync::Arc;

/// An executor that records the drain's namespace life before each attempt of `inner`.
pub(crate) struct LifeRecording {
    /// The cluster: the API, and the StatefulSets watched.
    pub cluster: Cluster,
    /// Where the life is recorded.
    pub ledger: Ledger,
    /// What copies.
    pub inner: Arc<dyn Executor>,
}

impl LifeRecording {
    /// Reads the UID of the drain's namespace (and StatefulSet) and records it on the drain.
    /// A drainer that may not read namespaces (an install whose RBAC lacks `get` on them)
    /// records nothing: its snapshots are then bound to a namespace's life by their time
    /// alone, as snapshots older than the recording are (`NamespaceLife::holds`), which never
    /// lets a later life of the namespace read them.
    async fn record(&self, drain: &Drain) -> snapshot::Result<()> {
        let Some(uid) = self.namespace_uid(drain).await? else {
            return Ok(());
        };
        let set_uid = self.set_uid(drain);
        tracing::debug!(drain = %drain.id, namespace_uid = %uid, statefulset_uid = ?set_uid, "recording the claim's namespace life");
        self.ledger
            .set_namespace_life(&drain.id, &uid, set_uid.as_deref())
            .await
            .map_err(|e| snapshot::Error::Checkpoint(e.into()))
    }

    /// The UID of the drain's namespace, read now (`None` when drainer may not read it): an
    /// error that passes when the API fails for a while, one that stays when the namespace
    /// does not exist.
    async fn namespace_uid(&self, drain: &Drain) -> snapshot::Result<Option<String>> {
        let api: Api<Namespace> = Api::all(self.cluster.client.clone());
        let what = format!("get namespace {}", drain.namespace);
        let found = match call(what, api.get_opt(&drain.namespace)).await {
            Ok(found) => found,
            Err(e) if e.is_forbidden() => {
                tracing::warn!(drain = %drain.id, namespace = %drain.namespace, error = %e, "drainer may not read the claim's namespace: its snapshot records no namespace UID (bound to the namespace's life by its time only)");
                return Ok(None);
            }
            Err(e) => {
                return Err(snapshot::Error::Executor {
                    drain: drain.id.clone(),
                    transient: e.is_transient(),
                    reason: e.to_string(),
                });
            }
        };
        found
            .and_then(|ns| ns.metadata.uid)
            .map(Some)
            .ok_or_else(|| snapshot::Error::Source {
                path: std::path::PathBuf::from(drain.volume().to_string()),
                reason: format!(
                    "namespace {} does not exist: claim {} cannot be copied",
                    drain.namespace, drain.pvc
                ),
            })
    }

    /// The UID of the StatefulSet whose claim template made the drain's claim, if the set is
    /// known.
    fn set_uid(&self, drain: &Drain) -> Option<String> {
        let sets = self.cluster.sets_in(&drain.namespace);
        let place = set_claim(&drain.pvc, sets.iter().map(|s| s.as_ref()))?;
        let set = sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(place.set.as_str()))?;
        set.metadata.uid.clone()
    }
}

#[async_trait::async_trait]
impl Executor for LifeRecording {
    async fn execute(
        &self,
        drain: &Drain,
        progress: Arc<Progress>,
    ) -> snapshot::Result<SnapshotSummary> {
        self.record(drain).await?;
        self.inner.execute(drain, progress).await
    }
}
