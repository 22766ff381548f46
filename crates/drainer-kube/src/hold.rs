//! Holding claims that the StatefulSet controller would have deleted (`whenScaled: Delete`):
//! before deleting a condemned pod, the controller makes the pod the controller owner of its
//! claims, so the garbage collector deletes them right after the pod. Removing that owner
//! does not help (the controller adds it back on every sync while the pod exists), and a
//! finalizer leaves a claim being deleted, which no mover can mount. What works: a second,
//! non-controller owner that drainer controls — a ConfigMap per drain in the claim's
//! namespace — added while the pod still exists. The garbage collector then keeps the claim
//! until the ConfigMap is deleted too, which drainer does when the drain ends, letting the
//! collector finish what the claim's owner asked.
//!
//! A hold is drainer's only if it carries drainer's label and its drain's: an object of the
//! same name that is not is never adopted, and a hold is deleted only with a UID
//! precondition, so a ConfigMap someone else made in its place is never deleted by drainer.

use super::watch::MANAGED_BY;
use super::{Error, call};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};

/// The label naming the drain a hold belongs to.
pub const DRAIN_LABEL: &str = "drainer.io/drain";

/// Whether the garbage collector may delete `claim` when an owner goes: it has an owner (a
/// condemned pod, or a StatefulSet with `whenDeleted: Delete`). A claim that only drainer's
/// standing guard owns needs no hold until it is let go ([`super::guard`]).
pub(crate) fn needs_hold(claim: &PersistentVolumeClaim) -> bool {
    claim
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|owners| {
            owners
                .iter()
                .any(|o| o.kind == "Pod" || o.kind == "StatefulSet")
        })
}

/// The name of drain `drain`'s hold.
pub fn hold_name(drain: &str) -> String {
    format!("drainer-hold-{drain}")
}

/// Holds `claim` for drain `drain`: creates the hold (if it does not exist yet) and makes it an
/// owner of the claim. Returns the hold's name.
pub async fn hold(
    client: &kube::Client,
    drain: &str,
    claim: &PersistentVolumeClaim,
) -> Result<String, Error> {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or("default");
    let pvc = claim.metadata.name.as_deref().unwrap_or_default();
    let name = hold_name(drain);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let wanted = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                    (DRAIN_LABEL.to_owned(), drain.to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("drain".to_owned(), drain.to_owned()),
                ("claim".to_owned(), pvc.to_owned()),
                (
                    "why".to_owned(),
                    "keeps the claim from the garbage collector until drainer has copied it"
                        .to_owned(),
                ),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    };
    let what = format!("hold {namespace}/{name}");
    let created = call(what.clone(), maps.create(&PostParams::default(), &wanted)).await;
    let map = match created {
        Ok(map) => map,
        Err(e) if e.is_conflict() => {
            let found = call(what.clone(), maps.get(&name)).await?;
            if !is_hold_of(&found, drain) {
                return Err(Error::NotOurs {
                    what: format!("ConfigMap {namespace}/{name}"),
                    why: format!(
                        "it is not drainer's hold of drain {drain} (labels {MANAGED_BY:?} and {DRAIN_LABEL}={drain} missing); not adopted"
                    ),
                });
            }
            found
        }
        Err(e) => return Err(e),
    };
    let owner = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ConfigMap".to_owned(),
        name: name.clone(),
        uid: map.metadata.uid.unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    };
    // A strategic merge patch merges owner references by UID: the claim's other owners stay.
    let patch = serde_json::json!({ "metadata": { "ownerReferences": [owner] } });
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let held = call(
        format!("hold claim {namespace}/{pvc}"),
        claims.patch(pvc, &PatchParams::default(), &Patch::Strategic(patch)),
    )
    .await;
    if let Err(e) = held {
        // A hold that owns nothing would stay for good: the claim went meanwhile.
        if e.is_not_found()
            && let Err(gone) = delete_hold(client, namespace, &name).await
        {
            tracing::warn!(drain, ns = namespace, hold = %name, error = %gone, "cannot delete the hold of a claim that is gone");
        }
        return Err(e);
    }
    tracing::info!(drain, ns = namespace, pvc, hold = %name, "claim held until its drain ends");
    Ok(name)
}

/// Lets go of a hold: deletes it, so the garbage collector does what the claim's owners ask.
/// Once the condemned pod is gone the collector has already removed the pod from the claim's
/// owners (an owner that no longer exists, beside the hold that does), so the hold's going
/// lets the collector delete the claim, as `whenScaled: Delete` asked. When the claim's ordinal
/// is `live` again (the StatefulSet scaled back up before its pod went), the hold is first
/// taken off the claim, so that letting go never makes the collector delete a claim its
/// StatefulSet wants.
pub async fn release(
    client: &kube::Client,
    namespace: &str,
    pvc: &str,
    name: &str,
    live: bool,
) -> Result<(), Error> {
    if live {
        unhold(client, namespace, pvc, name).await?;
    }
    delete_hold(client, namespace, name).await
}

/// Deletes hold `name` if it is drainer's (its labels), with a UID precondition: a ConfigMap
/// that took its name since drainer looked is never deleted. Gone already is done.
pub(crate) async fn delete_hold(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let what = format!("release hold {namespace}/{name}");
    let Some(map) = call(what.clone(), maps.get_opt(name)).await? else {
        return Ok(());
    };
    let drain = name.strip_prefix("drainer-hold-").unwrap_or_default();
    if !is_hold_of(&map, drain) {
        return Err(Error::NotOurs {
            what: format!("ConfigMap {namespace}/{name}"),
            why: "it is not drainer's hold (its labels say otherwise); not deleted".to_owned(),
        });
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: map.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match call(what, maps.delete(name, &params)).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `map` is drainer's hold of drain `drain`: it carries drainer's label and the
/// drain's.
pub(crate) fn is_hold_of(map: &ConfigMap, drain: &str) -> bool {
    let labels = map.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    !drain.is_empty()
        && label(MANAGED_BY.0) == Some(MANAGED_BY.1)
        && label(DRAIN_LABEL) == Some(drain)
}

/// Whether `claim` has hold `name` among its owners.
pub fn holds(claim: &PersistentVolumeClaim, name: &str) -> bool {
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "ConfigMap" && o.name == name)
}

/// Takes hold `name` off the claim's owners, guarded by the claim's resourceVersion (an owner
/// changed meanwhile fails the call; the next look tries again).
async fn unhold(
    client: &kube::Client,
    namespace: &str,
    pvc: &str,
    name: &str,
) -> Result<(), Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let what = format!("claim {namespace}/{pvc}");
    let Some(claim) = call(what.clone(), claims.get_opt(pvc)).await? else {
        return Ok(());
    };
    let Some(owners) = without_hold(&claim, name) else {
        return Ok(());
    };
    let patch = serde_json::json!({ "metadata": {
        "ownerReferences": owners,
        "resourceVersion": claim.metadata.resource_version,
    }});
    call(
        format!("unhold {what}"),
        claims.patch(pvc, &PatchParams::default(), &Patch::Merge(patch)),
    )
    .await?;
    Ok(())
}

/// The claim's owners without hold `name`, when the hold is one of them.
fn without_hold(claim: &PersistentVolumeClaim, name: &str) -> Option<Vec<OwnerReference>> {
    let owners = claim
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    let is_hold = |o: &OwnerReference| o.kind == "ConfigMap" && o.name == name;
    let others: Vec<OwnerReference> = owners.iter().filter(|o| !is_hold(o)).cloned().collect();
    (others.len() < owners.len()).then_some(others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owned_claims_need_a_hold() {
        let claim = |owners: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "data-web-2", "ownerReferences": owners}}),
            )
            .unwrap()
        };
        let pod = serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": "web-2", "uid": "u", "controller": true}]);
        let set = serde_json::json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "u"}]);
        assert!(needs_hold(&claim(pod)));
        assert!(needs_hold(&claim(set)));
        assert!(!needs_hold(&claim(serde_json::json!([]))));
        assert!(!needs_hold(
            &serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap()
        ));
    }

    #[test]
    fn only_maps_with_drainers_labels_and_the_drains_are_its_holds() {
        let map = |labels: serde_json::Value| -> ConfigMap {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "drainer-hold-d1", "labels": labels}}),
            )
            .unwrap()
        };
        let ours = serde_json::json!({"app.kubernetes.io/managed-by": "drainer", "drainer.io/drain": "d1"});
        assert!(is_hold_of(&map(ours.clone()), "d1"));
        assert!(!is_hold_of(&map(ours), "d2"), "another drain's");
        assert!(!is_hold_of(
            &map(serde_json::json!({"drainer.io/drain": "d1"})),
            "d1"
        ));
        assert!(!is_hold_of(
            &map(serde_json::json!({"app.kubernetes.io/managed-by": "drainer"})),
            "d1"
        ));
        assert!(!is_hold_of(&map(serde_json::json!({})), ""));
    }

    #[test]
    fn taking_a_hold_off_keeps_the_claims_other_owners() {
        let claim = |owners: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "data-web-2", "ownerReferences": owners}}),
            )
            .unwrap()
        };
        let hold = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "drainer-hold-d1", "uid": "h"});
        let other = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "drainer-hold-d0", "uid": "o"});
        let without = |owners| without_hold(&claim(owners), "drainer-hold-d1");
        assert_eq!(without(serde_json::json!([hold])), Some(vec![]));
        let others = without(serde_json::json!([other, hold])).unwrap();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].name, "drainer-hold-d0");
        // Not held by this hold (taken off already): nothing to do.
        assert_eq!(without(serde_json::json!([other])), None);
        assert_eq!(without(serde_json::json!([])), None);
    }

    // ---- Against a mock API server: the exact requests, and what each answer makes of them.

    use crate::mock::{Exchange, Scenario, status};
    use http::Method;
    use serde_json::{Value, json};
    use std::time::Duration;

    const MAPS: &str = "/api/v1/namespaces/shop/configmaps";
    const MAP: &str = "/api/v1/namespaces/shop/configmaps/drainer-hold-d1";
    const CLAIM: &str = "/api/v1/namespaces/shop/persistentvolumeclaims/data-web-4";

    fn condemned() -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-web-4", "namespace": "shop", "uid": "claim-uid"}
        }))
        .unwrap()
    }

    fn map(labels: Value, uid: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "drainer-hold-d1", "namespace": "shop", "uid": uid, "labels": labels}})
    }

    fn ours() -> Value {
        json!({MANAGED_BY.0: MANAGED_BY.1, DRAIN_LABEL: "d1"})
    }

    #[tokio::test]
    async fn a_hold_is_created_then_made_an_owner_of_the_claim_by_its_uid() {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, MAPS, 201, map(ours(), "map-uid")).checking(|body| {
                assert_eq!(body["metadata"]["name"], "drainer-hold-d1");
                assert_eq!(body["metadata"]["labels"][DRAIN_LABEL], "d1");
                assert_eq!(body["data"]["claim"], "data-web-4");
            }),
            Exchange::new(
                Method::PATCH,
                CLAIM,
                200,
                json!({"metadata": {"name": "data-web-4"}}),
            )
            .checking(|body| {
                let owners = body["metadata"]["ownerReferences"].as_array().unwrap();
                assert_eq!(
                    owners.len(),
                    1,
                    "only the hold is sent: the patch merges by UID"
                );
                assert_eq!(owners[0]["kind"], "ConfigMap");
                assert_eq!(owners[0]["uid"], "map-uid");
            }),
        ])
        .serve(Duration::from_secs(5));
        let name = hold(&client, "d1", &condemned()).await.unwrap();
        assert_eq!(name, "drainer-hold-d1");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_configmap_of_the_holds_name_that_is_not_drainers_is_neither_adopted_nor_made_an_owner()
     {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, MAPS, 409, status(409, "AlreadyExists")),
            Exchange::new(Method::GET, MAP, 200, map(json!({}), "someone-elses")),
        ])
        .serve(Duration::from_secs(5));
        let err = hold(&client, "d1", &condemned()).await.unwrap_err();
        assert!(matches!(err, Error::NotOurs { .. }), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_claim_gone_before_it_was_held_takes_its_new_hold_with_it() {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, MAPS, 201, map(ours(), "map-uid")),
            Exchange::new(Method::PATCH, CLAIM, 404, status(404, "NotFound")),
            Exchange::new(Method::GET, MAP, 200, map(ours(), "map-uid")),
            Exchange::new(Method::DELETE, MAP, 200, status(200, "Success")).checking(|body| {
                assert_eq!(body["preconditions"]["uid"], "map-uid", "{body}");
            }),
        ])
        .serve(Duration::from_secs(5));
        let err = hold(&client, "d1", &condemned()).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn releasing_a_live_claims_hold_takes_it_off_the_owners_under_the_claims_version_first() {
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-web-4", "namespace": "shop", "resourceVersion": "42",
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "set-uid"},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "drainer-hold-d1", "uid": "map-uid"},
            ]}});
        let (client, server) = Scenario(vec![
            Exchange::new(Method::GET, CLAIM, 200, claim.clone()),
            Exchange::new(Method::PATCH, CLAIM, 200, claim).checking(|body| {
                assert_eq!(body["metadata"]["resourceVersion"], "42");
                let owners = body["metadata"]["ownerReferences"].as_array().unwrap();
                assert_eq!(owners.len(), 1, "{body}");
                assert_eq!(owners[0]["kind"], "StatefulSet");
            }),
            Exchange::new(Method::GET, MAP, 200, map(ours(), "map-uid")),
            Exchange::new(Method::DELETE, MAP, 200, status(200, "Success")),
        ])
        .serve(Duration::from_secs(5));
        release(&client, "shop", "data-web-4", "drainer-hold-d1", true)
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_hold_that_is_not_drainers_is_never_deleted() {
        let (client, server) = Scenario(vec![Exchange::new(
            Method::GET,
            MAP,
            200,
            map(json!({"app": "other"}), "other-uid"),
        )])
        .serve(Duration::from_secs(5));
        let err = delete_hold(&client, "shop", "drainer-hold-d1")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotOurs { .. }), "{err}");
        server.await.unwrap();
    }
}
