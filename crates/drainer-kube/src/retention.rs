//! Kubernetes mode's answer to the retention pass ([`drainer_server::pruning`]): which claims exist,
//! with their `drainer.io/retention` annotation and their StatefulSet's, read from the watches'
//! stores (no API call). Only the replica holding the sweeper Lease prunes, and nothing is
//! pruned while a watch is unsynced (a claim missing from a stale store is not gone).

use super::Cluster;
use super::lease::Holding;
use super::planner;
use drainer_core::snapshot::retention::ANNOTATION;
use drainer_server::pruning::{ClaimFacts, Claims, Look};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::HashMap;

/// The claims the watches see, for the retention pass.
pub(crate) struct KubeClaims {
    /// The cluster's caches.
    pub cluster: Cluster,
    /// The sweeper Lease as this replica holds it; `None`: one replica, always its turn.
    pub lease: Option<Holding>,
}

#[async_trait::async_trait]
impl Claims for KubeClaims {
    async fn look(&self) -> Look {
        if self.lease.as_ref().is_some_and(|lease| !lease.mine()) {
            return Look::NotMyTurn;
        }
        if !self.cluster.synced() {
            return Look::NotReady("the cluster's watches are not synced".into());
        }
        let sets = self.cluster.sets.state();
        let claims = self.cluster.claims.state();
        Look::Claims(facts(
            claims.iter().map(AsRef::as_ref),
            sets.iter().map(AsRef::as_ref),
        ))
    }
}

/// Every claim by `namespace/name`, with its annotation and its StatefulSet's (pure).
pub fn facts<'a>(
    claims: impl IntoIterator<Item = &'a PersistentVolumeClaim>,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> HashMap<String, ClaimFacts> {
    let mut by_namespace: HashMap<&str, Vec<&StatefulSet>> = HashMap::new();
    for set in sets {
        if let Some(ns) = set.metadata.namespace.as_deref() {
            by_namespace.entry(ns).or_default().push(set);
        }
    }
    claims
        .into_iter()
        .filter_map(|claim| {
            let ns = claim.metadata.namespace.as_deref()?;
            let name = claim.metadata.name.as_deref()?;
            let sets = by_namespace.get(ns).map(Vec::as_slice).unwrap_or_default();
            let set = planner::set_claim(name, sets.iter().copied()).and_then(|found| {
                sets.iter()
                    .find(|s| s.metadata.name.as_deref() == Some(found.set.as_str()))
            });
            let facts = ClaimFacts {
                policy: annotation(&claim.metadata),
                statefulset_policy: set.and_then(|s| annotation(&s.metadata)),
            };
            Some((format!("{ns}/{name}"), facts))
        })
        .collect()
}

fn annotation(meta: &ObjectMeta) -> Option<String> {
    meta.annotations.as_ref()?.get(ANNOTATION).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(ns: &str, name: &str, policy: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            annotations: policy.map(|p| BTreeMap::from([(ANNOTATION.to_owned(), p.to_owned())])),
            ..ObjectMeta::default()
        }
    }

    fn set(ns: &str, name: &str, policy: Option<&str>) -> StatefulSet {
        let mut set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {}, "serviceName": name, "template": {},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}}]},
        }))
        .unwrap();
        set.metadata = meta(ns, name, policy);
        set
    }

    fn claim(ns: &str, name: &str, policy: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: meta(ns, name, policy),
            ..PersistentVolumeClaim::default()
        }
    }

    #[test]
    fn claims_carry_their_annotation_and_their_statefulsets() {
        let sets = [
            set("shop", "web", Some("daily=7")),
            set("shop", "db", None),
            set("other", "web", Some("last=1")),
        ];
        let claims = [
            claim("shop", "data-web-0", None),
            claim("shop", "data-web-1", Some("last=2")),
            claim("shop", "data-db-0", None),
            claim("shop", "scratch", Some("all")),
            claim("lone", "data-web-0", None),
        ];
        let found = facts(&claims, &sets);
        let policies = |v: &str| {
            let f = &found[v];
            (f.policy.as_deref(), f.statefulset_policy.as_deref())
        };
        assert_eq!(found.len(), 5);
        assert_eq!(policies("shop/data-web-0"), (None, Some("daily=7")));
        assert_eq!(
            policies("shop/data-web-1"),
            (Some("last=2"), Some("daily=7"))
        );
        assert_eq!(policies("shop/data-db-0"), (None, None));
        assert_eq!(policies("shop/scratch"), (Some("all"), None));
        assert_eq!(policies("lone/data-web-0"), (None, None));
    }
}
