//! The Kubernetes decisions, as pure functions of what was listed: which StatefulSet (and
//! ordinal) a claim belongs to, whether that ordinal is live, what a released volume's drain
//! becomes, and which claims a sweep finds orphaned. No I/O: the release tracker and the sweep
//! hand these functions the objects their reflectors hold, and act on the answer.
//!
//! The facts they rest on (how StatefulSets name and own their claims): a StatefulSet `web` with claim templates
//! `data` and `logs` owns claims `data-web-N` and `logs-web-N`; ordinal `o` is live iff
//! `start <= o < start + replicas` (`spec.ordinals.start`, default 0); a volume is orphaned
//! when its ordinal is not live or its StatefulSet is gone, and no pod mounts it.

use crate::facts::KubeDrain;
pub use crate::sweep_records::RememberedSet;
use drainer_core::ledger::Drain;
use drainer_core::lifecycle::DrainState;
use drainer_server::sweep::{Finding, Verdict};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The annotation or label that opts a StatefulSet or claim out of drains (`"false"`).
pub(crate) const OPT_OUT: &str = "drainer.io/drain";

/// A claim's place in a StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetClaim {
    /// The StatefulSet's name.
    pub set: String,
    /// The claim template's name.
    pub template: String,
    /// The ordinal.
    pub ordinal: i32,
}

/// The ordinals of a StatefulSet that are live: `start .. start + replicas`.
pub(crate) fn live_ordinals(set: &StatefulSet) -> std::ops::Range<i32> {
    let spec = &set.spec;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    start..start.saturating_add(replicas)
}

/// The claim templates' names of a StatefulSet.
pub fn templates(set: &StatefulSet) -> Vec<String> {
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .collect()
}

/// Which StatefulSet among `sets` (all in the claim's namespace) owns the claim `name`, by
/// the `TEMPLATE-SET-ORDINAL` pattern: every template and set name is tried, so names with
/// dashes on either side are placed right.
pub(crate) fn set_claim<'a>(
    name: &str,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> Option<SetClaim> {
    let (stem, ordinal) = split_ordinal(name)?;
    sets.into_iter().find_map(|set| {
        let set_name = set.metadata.name.as_deref()?;
        let template = template_in(stem, set_name)?;
        has_template(set, template).then(|| SetClaim {
            set: set_name.to_owned(),
            template: template.to_owned(),
            ordinal,
        })
    })
}

/// `TEMPLATE-SET` and the ordinal of a claim name `TEMPLATE-SET-ORDINAL`.
fn split_ordinal(name: &str) -> Option<(&str, i32)> {
    let (stem, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) || ordinal.len() > 9 {
        return None;
    }
    Some((stem, ordinal.parse().ok()?))
}

/// The template part of `stem` (`TEMPLATE-SET`) for StatefulSet `set`.
fn template_in<'n>(stem: &'n str, set: &str) -> Option<&'n str> {
    stem.strip_suffix(set)?
        .strip_suffix('-')
        .filter(|t| !t.is_empty())
}

/// Whether `set` has a claim template named `template`.
fn has_template(set: &StatefulSet, template: &str) -> bool {
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .any(|t| t.metadata.name.as_deref() == Some(template))
}

/// Whether `pod` mounts the claim `pvc` and so holds it. drainer's own pods (mover Jobs',
/// labelled `app.kubernetes.io/managed-by=drainer`) mount claims read-only to copy them and
/// never hold one: a failed mover's pod stays a day for its logs, and must not keep a later
/// drain of the same claim waiting, nor a sweep from seeing it orphaned.
pub fn mounts(pod: &Pod, pvc: &str) -> bool {
    !is_drainers(pod) && claims_of(pod).any(|c| c == pvc)
}

/// Whether drainer created `pod` (a mover).
fn is_drainers(pod: &Pod) -> bool {
    let (key, value) = super::watch::MANAGED_BY;
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .is_some_and(|v| v == value)
}

/// The claims a pod mounts.
pub fn claims_of(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// Whether an object says `drainer.io/drain: "false"` (label or annotation).
pub fn opted_out(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    let says_false = |map: &Option<std::collections::BTreeMap<String, String>>| {
        map.as_ref()
            .and_then(|m| m.get(OPT_OUT))
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    };
    says_false(&meta.annotations) || says_false(&meta.labels)
}

/// What a drain that waited for its volume's release becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Release {
    /// Still held: a pod mounts the claim (the announcing one, or its replacement).
    Waiting,
    /// Let go and orphaned: copy it.
    Orphaned(String),
    /// Let go, but its owner still wants it: nothing to copy.
    StillInUse(String),
    /// The claim no longer exists: its data went before it could be held.
    Gone(String),
}

/// Decides a drain waiting for the release of claim `pvc` (recorded with UID `pvc_uid`) in
/// its namespace, from the claim as it is now (`None`: deleted), the pods and StatefulSets of
/// the namespace.
pub(crate) fn decide_release<'a>(
    pvc: &str,
    pvc_uid: Option<&str>,
    pod_uid: Option<&str>,
    claim: Option<&PersistentVolumeClaim>,
    pods: impl IntoIterator<Item = &'a Pod>,
    sets: impl IntoIterator<Item = &'a StatefulSet> + Clone,
) -> Release {
    let Some(claim) = claim else {
        return Release::Gone(format!(
            "claim {pvc} was deleted before its data was copied"
        ));
    };
    if let (Some(recorded), Some(now)) = (pvc_uid, claim.metadata.uid.as_deref())
        && recorded != now
    {
        return Release::Gone(format!(
            "claim {pvc} was deleted and created again (uid {recorded} is now {now})"
        ));
    }
    if let Some(pod) = pods.into_iter().find(|p| mounts(p, pvc)) {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let same_pod = pod_uid.is_some() && pod.metadata.uid.as_deref() == pod_uid;
        return match set_claim(pvc, sets.clone()) {
            // The pod that mounts it again is its StatefulSet's own: a restart.
            Some(c)
                if name == format!("{}-{}", c.set, c.ordinal) && pod_is_up(pod) && !same_pod =>
            {
                Release::StillInUse(format!("pod {name} came back and mounts {pvc}"))
            }
            // The drain's own pod, not gone yet (held as a scaled-away ordinal before its
            // deletion), whose ordinal is live again: scaled back up in time.
            Some(c) if same_pod && pod_is_up(pod) && ordinal_is_live(&c, sets.clone()) => {
                Release::StillInUse(format!(
                    "ordinal {} of {} is live again: scaled back up before pod {name} went",
                    c.ordinal, c.set
                ))
            }
            _ => Release::Waiting,
        };
    }
    match set_claim(pvc, sets.clone()) {
        None => Release::Orphaned(format!(
            "{pvc} is not a StatefulSet claim; no pod mounts it"
        )),
        Some(c) => {
            let set = sets
                .into_iter()
                .find(|s| s.metadata.name.as_deref() == Some(c.set.as_str()));
            match set {
                Some(set) if set.metadata.deletion_timestamp.is_none() => {
                    let live = live_ordinals(set);
                    if live.contains(&c.ordinal) {
                        Release::StillInUse(format!(
                            "ordinal {} of {} is live (ordinals {}..{}): restarted, not scaled down",
                            c.ordinal, c.set, live.start, live.end
                        ))
                    } else {
                        Release::Orphaned(format!(
                            "ordinal {} of {} is scaled away (live ordinals {}..{})",
                            c.ordinal, c.set, live.start, live.end
                        ))
                    }
                }
                _ => Release::Orphaned(format!("StatefulSet {} no longer exists", c.set)),
            }
        }
    }
}

/// Whether a claim's ordinal is live in its StatefulSet (which exists, not being deleted).
pub(crate) fn ordinal_is_live<'a>(
    claim: &SetClaim,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> bool {
    sets.into_iter().any(|s| {
        s.metadata.name.as_deref() == Some(claim.set.as_str())
            && s.metadata.deletion_timestamp.is_none()
            && live_ordinals(s).contains(&claim.ordinal)
    })
}

/// Whether a pod is up (not being deleted, not ended).
fn pod_is_up(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether a terminating pod is a condemned ordinal of its StatefulSet (scaled away, not
/// restarting): its claims are about to be orphaned.
pub fn condemned<'a>(
    pod: &Pod,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> Option<SetClaim> {
    pod.metadata.deletion_timestamp.as_ref()?;
    scaled_away(pod, sets).map(|(_, claim)| claim)
}

/// Whether a pod, terminating or not yet, is a scaled-away ordinal of a StatefulSet that
/// deletes the claims of scaled-away ordinals (`whenScaled: Delete`): its claims must be held
/// before the pod goes, which for a process that exits at once on SIGTERM is within
/// milliseconds of its deletion.
pub(crate) fn claims_deleted_on_scale_down<'a>(
    pod: &Pod,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> Option<SetClaim> {
    scaled_away(pod, sets)
        .filter(|(set, _)| deletes_scaled_claims(set))
        .map(|(_, claim)| claim)
}

/// Whether a StatefulSet deletes the claims of the ordinals it scales away.
pub(crate) fn deletes_scaled_claims(set: &StatefulSet) -> bool {
    set.spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        == Some("Delete")
}

/// The UID of the StatefulSet that controls `pod`, if one does.
pub(crate) fn controlling_set(pod: &Pod) -> Option<&str> {
    set_owner(pod).map(|o| o.uid.as_str())
}

/// The owner reference of the StatefulSet that controls `pod`, if one does.
fn set_owner(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet" && o.controller == Some(true))
}

/// The StatefulSet (existing, not being deleted) whose ordinal `pod` is, when that ordinal is
/// out of its range.
fn scaled_away<'a>(
    pod: &Pod,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> Option<(&'a StatefulSet, SetClaim)> {
    let owner = set_owner(pod)?;
    let name = pod.metadata.name.as_deref()?;
    let ordinal: i32 = name
        .strip_prefix(&format!("{}-", owner.name))?
        .parse()
        .ok()?;
    let set = sets
        .into_iter()
        .find(|s| s.metadata.uid.as_deref() == Some(owner.uid.as_str()))?;
    if set.metadata.deletion_timestamp.is_some() || live_ordinals(set).contains(&ordinal) {
        return None; // whenDeleted applies, or a restart
    }
    Some((
        set,
        SetClaim {
            set: owner.name.clone(),
            template: String::new(),
            ordinal,
        },
    ))
}

/// How a sweep sees one claim of a StatefulSet, before the ledger is asked about its drains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub pvc: String,
    /// The claim's UID.
    pub uid: String,
    /// Its place in its StatefulSet.
    pub place: SetClaim,
    /// What it is to its StatefulSet.
    pub verdict: Verdict,
    /// Why: for orphaned claims, why they are orphaned (what a drain's reason says).
    pub why: String,
    /// The pod that mounts it, if one does.
    pub mounted_by: Option<String>,
    /// When the claim was created (ms since the epoch).
    pub created_ms: Option<i64>,
}

/// Where a sweep found a claim's StatefulSet.
enum Owner<'a> {
    /// It exists and is not being deleted.
    Live(&'a StatefulSet),
    /// It exists but is being deleted.
    Deleting(&'a StatefulSet),
    /// It no longer exists; how drainer knows it did.
    Gone(&'static str, Option<&'a RememberedSet>),
}

/// Decides, for every claim of one namespace that belongs (or belonged) to a StatefulSet,
/// what it is: live, in use, or orphaned — its ordinal scaled away or its StatefulSet gone,
/// and no pod mounting it — and whether an orphan is opted out or being deleted. A claim
/// belongs to a StatefulSet by the `TEMPLATE-SET-ORDINAL` pattern against the namespace's
/// StatefulSets, then against an owner reference to a StatefulSet that is gone, then against
/// the StatefulSets drainer remembers. Other claims are not a sweep's business and are left
/// out. `remembered` may hold other namespaces' StatefulSets too.
pub(crate) fn classify_namespace(
    claims: &[&PersistentVolumeClaim],
    pods: &[&Pod],
    sets: &[&StatefulSet],
    remembered: &[RememberedSet],
) -> Vec<Seen> {
    let mut mounted: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        for claim in claims_of(pod) {
            mounted.entry(claim).or_insert(name);
        }
    }
    claims
        .iter()
        .filter_map(|claim| classify(claim, &mounted, sets, remembered))
        .collect()
}

fn classify(
    claim: &PersistentVolumeClaim,
    mounted: &std::collections::HashMap<&str, &str>,
    sets: &[&StatefulSet],
    remembered: &[RememberedSet],
) -> Option<Seen> {
    let name = claim.metadata.name.as_deref()?;
    let namespace = claim.metadata.namespace.as_deref()?;
    let (place, owner) = place_claim(claim, namespace, name, sets, remembered)?;
    let orphaned = orphaned_why(&place, &owner);
    let mounted_by = mounted.get(name).map(|p| (*p).to_owned());
    let (verdict, why) = match (orphaned, &mounted_by) {
        (Err(live), _) => (Verdict::Live, live),
        (Ok(why), Some(pod)) => (Verdict::InUse, format!("{why}, but pod {pod} mounts it")),
        (Ok(why), None) => match opted_out_by(claim, &place, &owner) {
            Some(by) => (
                Verdict::OptedOut,
                format!("{why}; opted out ({OPT_OUT}: \"false\" on {by})"),
            ),
            None if claim.metadata.deletion_timestamp.is_some() => (
                Verdict::Deleting,
                format!("{why}; the claim is being deleted"),
            ),
            None => (Verdict::Orphaned, why),
        },
    };
    Some(Seen {
        namespace: namespace.to_owned(),
        pvc: name.to_owned(),
        uid: claim.metadata.uid.clone().unwrap_or_default(),
        place,
        verdict,
        why,
        mounted_by,
        created_ms: claim
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond()),
    })
}

/// The claim's place and its StatefulSet: a live one by name, else the owner reference's,
/// else a remembered one.
fn place_claim<'a>(
    claim: &PersistentVolumeClaim,
    namespace: &str,
    name: &str,
    sets: &[&'a StatefulSet],
    remembered: &'a [RememberedSet],
) -> Option<(SetClaim, Owner<'a>)> {
    if let Some(place) = set_claim(name, sets.iter().copied()) {
        let set = sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(place.set.as_str()))?;
        return Some(match set.metadata.deletion_timestamp {
            Some(_) => (place, Owner::Deleting(set)),
            None => (place, Owner::Live(set)),
        });
    }
    let live_uid = |uid: &str| sets.iter().any(|s| s.metadata.uid.as_deref() == Some(uid));
    let (stem, ordinal) = split_ordinal(name)?;
    let owned = claim.metadata.owner_references.iter().flatten().find(|o| {
        o.kind == "StatefulSet" && !live_uid(&o.uid) && template_in(stem, &o.name).is_some()
    });
    if let Some(owner) = owned {
        let template = template_in(stem, &owner.name)?;
        let known = remembered.iter().find(|r| r.uid == owner.uid);
        let place = SetClaim {
            set: owner.name.clone(),
            template: template.to_owned(),
            ordinal,
        };
        return Some((
            place,
            Owner::Gone("named by the claim's owner reference", known),
        ));
    }
    remembered.iter().find_map(|set| {
        if set.namespace != namespace || live_uid(&set.uid) {
            return None;
        }
        let template = template_in(stem, &set.name)?;
        set.templates.iter().any(|t| t == template).then(|| {
            let place = SetClaim {
                set: set.name.clone(),
                template: template.to_owned(),
                ordinal,
            };
            (place, Owner::Gone("remembered by drainer", Some(set)))
        })
    })
}

/// Why the claim is orphaned (`Ok`), or why it is live (`Err`), its mounts aside.
fn orphaned_why(place: &SetClaim, owner: &Owner<'_>) -> Result<String, String> {
    let (set, ordinal) = (&place.set, place.ordinal);
    let pod = format!("pod {set}-{ordinal}'s claim");
    match owner {
        Owner::Live(s) => {
            let live = live_ordinals(s);
            let range = format!("live ordinals {}..{}", live.start, live.end);
            if live.contains(&ordinal) {
                Err(format!(
                    "ordinal {ordinal} of StatefulSet {set} is live ({range})"
                ))
            } else {
                Ok(format!(
                    "ordinal {ordinal} of StatefulSet {set} is scaled away ({range}; {pod})"
                ))
            }
        }
        Owner::Deleting(_) => Ok(format!("StatefulSet {set} is being deleted ({pod})")),
        Owner::Gone(how, _) => Ok(format!("StatefulSet {set} no longer exists ({how}; {pod})")),
    }
}

/// What opts the claim out, if anything: the claim, its StatefulSet, or the StatefulSet as
/// drainer remembers it.
fn opted_out_by(
    claim: &PersistentVolumeClaim,
    place: &SetClaim,
    owner: &Owner<'_>,
) -> Option<String> {
    let set_opted_out = match owner {
        Owner::Live(s) | Owner::Deleting(s) => opted_out(&s.metadata),
        Owner::Gone(_, remembered) => remembered.is_some_and(|r| r.opted_out),
    };
    if opted_out(&claim.metadata) {
        Some("the claim".to_owned())
    } else if set_opted_out {
        Some(format!("StatefulSet {}", place.set))
    } else {
        None
    }
}

/// What already covers an orphaned claim, so that a sweep does not drain it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cover {
    /// A drain is active.
    Active {
        /// The drain.
        id: String,
        /// Its state.
        state: DrainState,
    },
    /// A drain completed after a pod last mounted the claim.
    Completed {
        /// The drain.
        id: String,
        /// Its snapshot.
        snapshot: Option<String>,
    },
    /// The latest drain since then failed: it is retried by hand, not by every sweep.
    Failed {
        /// The drain.
        id: String,
    },
    /// The latest drain since then was cancelled by hand.
    Cancelled {
        /// The drain.
        id: String,
    },
    /// The latest drain since then was abandoned by hand.
    Abandoned {
        /// The drain.
        id: String,
    },
}

impl Cover {
    /// The covering drain's id.
    pub fn id(&self) -> &str {
        match self {
            Cover::Active { id, .. }
            | Cover::Completed { id, .. }
            | Cover::Failed { id }
            | Cover::Cancelled { id }
            | Cover::Abandoned { id } => id,
        }
    }

    /// What it says in a finding.
    pub fn describe(&self) -> String {
        match self {
            Cover::Active { id, state } => format!("drain {id} is {state}"),
            Cover::Completed { id, snapshot } => format!(
                "drained since it was last mounted (drain {id}, snapshot {})",
                snapshot.as_deref().unwrap_or("?")
            ),
            Cover::Failed { id } => format!(
                "drain {id} failed since it was last mounted (its volume was gone); retry it by hand (POST /v1/drains/{id}/retry)"
            ),
            Cover::Abandoned { id } => {
                format!("drain {id} was abandoned by hand since it was last mounted")
            }
            Cover::Cancelled { id } => {
                format!("drain {id} was cancelled by hand since it was last mounted")
            }
        }
    }
}

/// Decides what covers claim `uid` (created at `claim_created_ms`, last seen mounted at
/// `last_mounted_ms`) among `drains`: those that recorded its UID count, and those of its
/// name that recorded none and were created after it. An active drain covers it; else a drain
/// completed since it was last mounted (never seen mounted: any completed drain); else the
/// latest drain since then if it failed, was cancelled or abandoned. `not_needed` drains never
/// cover.
pub(crate) fn cover<'a>(
    drains: impl IntoIterator<Item = &'a Drain>,
    uid: &str,
    claim_created_ms: Option<i64>,
    last_mounted_ms: Option<i64>,
) -> Option<Cover> {
    let mine = |d: &&Drain| match d.pvc_uid() {
        Some(recorded) => recorded == uid,
        None => claim_created_ms.is_none_or(|created| d.created_ms >= created),
    };
    let drains: Vec<&Drain> = drains.into_iter().filter(mine).collect();
    if let Some(d) = drains.iter().find(|d| d.state.is_active()) {
        return Some(Cover::Active {
            id: d.id.clone(),
            state: d.state,
        });
    }
    let ended = |d: &Drain| d.finished_ms.unwrap_or(d.updated_ms);
    let since: Vec<&&Drain> = drains
        .iter()
        .filter(|d| last_mounted_ms.is_none_or(|m| ended(d) > m))
        .collect();
    if let Some(d) = since
        .iter()
        .filter(|d| d.state == DrainState::Completed)
        .max_by_key(|d| ended(d))
    {
        return Some(Cover::Completed {
            id: d.id.clone(),
            snapshot: d.snapshot.clone(),
        });
    }
    let latest = since
        .iter()
        .filter(|d| d.state != DrainState::NotNeeded)
        .max_by_key(|d| ended(d))?;
    match latest.state {
        DrainState::Failed => Some(Cover::Failed {
            id: latest.id.clone(),
        }),
        DrainState::Cancelled => Some(Cover::Cancelled {
            id: latest.id.clone(),
        }),
        DrainState::Abandoned => Some(Cover::Abandoned {
            id: latest.id.clone(),
        }),
        _ => None,
    }
}

/// The finding for a classified claim, given what covers it: an orphan that nothing covers
/// needs a drain; everything else is reported as it is.
pub fn finding(seen: &Seen, cover: Option<&Cover>) -> Finding {
    let needs_drain = seen.verdict == Verdict::Orphaned && cover.is_none();
    let why = match (seen.verdict, cover) {
        (Verdict::Orphaned, None) => format!("{}; no pod mounts it", seen.why),
        (Verdict::Orphaned, Some(c)) => format!("{}; {}", seen.why, c.describe()),
        _ => seen.why.clone(),
    };
    Finding {
        volume: format!("{}/{}", seen.namespace, seen.pvc),
        drain: needs_drain,
        why,
        verdict: Some(seen.verdict),
        uid: Some(seen.uid.clone()),
        statefulset: Some(seen.place.set.clone()),
        drain_id: cover.map(|c| c.id().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(name: &str, replicas: i32, start: Option<i32>, templates: &[&str]) -> StatefulSet {
        let templates: Vec<_> = templates
            .iter()
            .map(|t| json!({"metadata": {"name": t}}))
            .collect();
        let mut spec = json!({
            "replicas": replicas, "selector": {}, "serviceName": name,
            "template": {}, "volumeClaimTemplates": templates,
        });
        if let Some(start) = start {
            spec["ordinals"] = json!({"start": start});
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": spec,
        }))
        .unwrap()
    }

    fn claim(name: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")}
        }))
        .unwrap()
    }

    fn pod(name: &str, claims: &[&str]) -> Pod {
        let volumes: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {"containers": [], "volumes": volumes}
        }))
        .unwrap()
    }

    #[test]
    fn claims_are_placed_in_their_statefulset_whatever_the_dashes() {
        let sets = [
            set("web", 3, None, &["data", "logs"]),
            set("my-db", 1, None, &["pg-data"]),
            set("db", 1, None, &["my-pg-data"]),
        ];
        let cases = [
            ("data-web-4", Some(("web", "data", 4))),
            ("logs-web-0", Some(("web", "logs", 0))),
            ("pg-data-my-db-2", Some(("my-db", "pg-data", 2))),
            ("my-pg-data-db-0", Some(("db", "my-pg-data", 0))),
            ("cache-web-1", None),
            ("data-web-", None),
            ("data-web-x1", None),
            ("data-web", None),
            ("data-web--1", None),
        ];
        for (name, expected) in cases {
            let found = set_claim(name, sets.iter());
            let found = found
                .as_ref()
                .map(|c| (c.set.as_str(), c.template.as_str(), c.ordinal));
            assert_eq!(found, expected, "{name}");
        }
    }

    #[test]
    fn a_mover_pod_never_holds_the_claim_it_copies() {
        let mut mover = pod("drainer-d-1-1-x7k2p", &["data-web-4"]);
        assert!(mounts(&mover, "data-web-4"));
        mover.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_owned(),
                "drainer".to_owned(),
            )]
            .into(),
        );
        assert!(!mounts(&mover, "data-web-4"));
        let sets = [set("web", 3, None, &["data"])];
        assert_eq!(
            decide_release(
                "data-web-4",
                None,
                None,
                Some(&claim("data-web-4")),
                [&mover],
                sets.iter()
            ),
            decide_release(
                "data-web-4",
                None,
                None,
                Some(&claim("data-web-4")),
                [],
                sets.iter()
            ),
        );
    }

    #[test]
    fn a_held_scaled_away_pod_is_waited_for_unless_its_ordinal_is_live_again() {
        let web6 = pod("web-6", &["data-web-6"]);
        let decide = |replicas, pod_uid| {
            let sets = [set("web", replicas, Some(5), &["data"])];
            let claim = claim("data-web-6");
            decide_release(
                "data-web-6",
                None,
                pod_uid,
                Some(&claim),
                [&web6],
                sets.iter(),
            )
        };
        // The drain's own pod, up, its ordinal scaled away: wait until it goes.
        assert_eq!(decide(1, Some("uid-web-6")), Release::Waiting);
        // Scaled back up before it went: not needed.
        assert!(
            matches!(decide(2, Some("uid-web-6")), Release::StillInUse(w) if w.contains("live again"))
        );
        // Another pod of the ordinal (a new UID) mounts it: it came back.
        assert!(
            matches!(decide(2, Some("uid-old")), Release::StillInUse(w) if w.contains("came back"))
        );
    }

    #[test]
    fn live_ordinals_follow_replicas_and_start() {
        assert_eq!(live_ordinals(&set("web", 3, None, &[])), 0..3);
        assert_eq!(live_ordinals(&set("web", 3, Some(5), &[])), 5..8);
        assert_eq!(live_ordinals(&set("web", 0, Some(5), &[])), 5..5);
    }

    #[test]
    fn a_released_claim_is_copied_only_when_scaled_away() {
        let sets = [set("web", 1, Some(5), &["data"])];
        let cases: [(&str, Vec<Pod>, Option<PersistentVolumeClaim>, Release); 6] = [
            (
                "data-web-7",
                vec![],
                Some(claim("data-web-7")),
                Release::Orphaned(String::new()),
            ),
            (
                "data-web-5",
                vec![],
                Some(claim("data-web-5")),
                Release::StillInUse(String::new()),
            ),
            (
                "data-web-5",
                vec![pod("web-5", &["data-web-5"])],
                Some(claim("data-web-5")),
                Release::StillInUse(String::new()),
            ),
            (
                "data-web-6",
                vec![pod("debug", &["data-web-6"])],
                Some(claim("data-web-6")),
                Release::Waiting,
            ),
            (
                "scratch",
                vec![],
                Some(claim("scratch")),
                Release::Orphaned(String::new()),
            ),
            ("data-web-7", vec![], None, Release::Gone(String::new())),
        ];
        for (pvc, pods, found, expected) in cases {
            let decided = decide_release(
                pvc,
                Some(&format!("uid-{pvc}")),
                None,
                found.as_ref(),
                &pods,
                sets.iter(),
            );
            assert_eq!(
                std::mem::discriminant(&decided),
                std::mem::discriminant(&expected),
                "{pvc}: {decided:?}"
            );
        }
        let recreated = claim("data-web-7");
        let decided = decide_release(
            "data-web-7",
            Some("old-uid"),
            None,
            Some(&recreated),
            &[],
            sets.iter(),
        );
        assert!(
            matches!(decided, Release::Gone(ref why) if why.contains("created again")),
            "{decided:?}"
        );
        let none: [StatefulSet; 0] = [];
        let decided = decide_release(
            "data-web-7",
            None,
            None,
            Some(&claim("data-web-7")),
            &[],
            none.iter(),
        );
        assert!(
            matches!(decided, Release::Orphaned(_)),
            "no StatefulSet, no owner: {decided:?}"
        );
    }

    #[test]
    fn condemned_pods_are_scaled_away_ordinals_only() {
        let sets = [set("web", 1, Some(5), &["data"])];
        let terminating = |name: &str| -> Pod {
            let mut p = pod(name, &[]);
            p.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
            p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "uid-web", "controller": true
            })).unwrap()]);
            p
        };
        assert_eq!(
            condemned(&terminating("web-6"), sets.iter()).map(|c| c.ordinal),
            Some(6)
        );
        assert_eq!(
            condemned(&terminating("web-5"), sets.iter()),
            None,
            "a restart"
        );
        assert_eq!(
            condemned(&pod("web-6", &[]), sets.iter()),
            None,
            "not terminating"
        );
    }

    fn remembered(name: &str, templates: &[&str], opted_out: bool) -> RememberedSet {
        RememberedSet {
            uid: format!("uid-{name}"),
            namespace: "shop".into(),
            name: name.into(),
            templates: templates.iter().map(|t| t.to_string()).collect(),
            opted_out,
        }
    }

    fn opt_out(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        meta.annotations = Some([(OPT_OUT.to_owned(), "false".to_owned())].into());
    }

    fn deleting(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        meta.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    }

    fn owned_by_set(mut claim: PersistentVolumeClaim, set: &str) -> PersistentVolumeClaim {
        claim.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": set, "uid": format!("uid-{set}")
        })).unwrap()]);
        claim
    }

    #[test]
    fn sweeps_classify_every_claim_of_a_statefulset() {
        let web = set("web", 2, None, &["data", "logs"]);
        let db = set("my-db", 1, Some(3), &["pg-data"]);
        let mut quiet = set("quiet", 1, None, &["data"]);
        opt_out(&mut quiet.metadata);
        let mut doomed = set("doomed", 1, None, &["data"]);
        deleting(&mut doomed.metadata);
        let sets = [&web, &db, &quiet, &doomed];
        let memory = [
            remembered("old", &["data"], false),
            remembered("hushed", &["data"], true),
            remembered("web", &["cache"], false), // the live web's UID: never "gone"
        ];
        let mut opted = claim("data-web-4");
        opt_out(&mut opted.metadata);
        let mut going = claim("data-web-5");
        deleting(&mut going.metadata);
        let cases: Vec<(PersistentVolumeClaim, Option<Verdict>)> = vec![
            (claim("data-web-0"), Some(Verdict::Live)),
            (claim("logs-web-1"), Some(Verdict::Live)),
            (claim("data-web-2"), Some(Verdict::Orphaned)),
            (claim("data-web-3"), Some(Verdict::InUse)),
            (opted, Some(Verdict::OptedOut)),
            (going, Some(Verdict::Deleting)),
            (claim("pg-data-my-db-3"), Some(Verdict::Live)),
            (claim("pg-data-my-db-2"), Some(Verdict::Orphaned)),
            (claim("pg-data-my-db-4"), Some(Verdict::Orphaned)),
            (claim("data-quiet-1"), Some(Verdict::OptedOut)),
            (claim("data-quiet-0"), Some(Verdict::Live)),
            (claim("data-doomed-0"), Some(Verdict::Orphaned)),
            (claim("data-old-1"), Some(Verdict::Orphaned)),
            (claim("data-hushed-0"), Some(Verdict::OptedOut)),
            (
                owned_by_set(claim("data-ghost-2"), "ghost"),
                Some(Verdict::Orphaned),
            ),
            (owned_by_set(claim("scratch-7"), "ghost"), None),
            (
                owned_by_set(claim("data-web-1"), "web"),
                Some(Verdict::Live),
            ),
            (claim("cache-web-1"), None),
            (claim("scratch"), None),
            (claim("data-gone-0"), None),
        ];
        let pods = [pod("debug", &["data-web-3"]), pod("web-0", &["data-web-0"])];
        let claims: Vec<&PersistentVolumeClaim> = cases.iter().map(|(c, _)| c).collect();
        let seen = classify_namespace(&claims, &pods.iter().collect::<Vec<_>>(), &sets, &memory);
        for (claim, expected) in &cases {
            let name = claim.metadata.name.as_deref().unwrap();
            let found = seen.iter().find(|s| s.pvc == name);
            assert_eq!(found.map(|s| s.verdict), *expected, "{name}: {found:?}");
        }
        let why = |name: &str| &seen.iter().find(|s| s.pvc == name).unwrap().why;
        assert_eq!(
            why("data-web-2"),
            "ordinal 2 of StatefulSet web is scaled away (live ordinals 0..2; pod web-2's claim)"
        );
        assert!(why("data-web-3").ends_with("but pod debug mounts it"));
        assert!(why("data-old-1").contains("StatefulSet old no longer exists (remembered"));
        assert!(why("data-ghost-2").contains("owner reference"));
        assert!(why("data-quiet-1").contains("on StatefulSet quiet"));
        assert!(why("data-web-4").contains("on the claim"));
        let mounted = seen.iter().find(|s| s.pvc == "data-web-0").unwrap();
        assert_eq!(mounted.mounted_by.as_deref(), Some("web-0"));
        let ghost = seen.iter().find(|s| s.pvc == "data-ghost-2").unwrap();
        assert_eq!(
            (ghost.place.set.as_str(), ghost.place.ordinal),
            ("ghost", 2)
        );
    }

    fn drain(id: &str, uid: Option<&str>, state: DrainState, created: i64, ended: i64) -> Drain {
        Drain {
            id: id.into(),
            namespace: "shop".into(),
            pvc: "data-web-2".into(),
            pod: None,
            reason: "test".into(),
            state,
            attempts: 0,
            max_attempts: 3,
            not_before_ms: created,
            lease_owner: None,
            lease_expires_ms: None,
            snapshot: (state == DrainState::Completed).then(|| format!("s-{id}")),
            last_error: None,
            created_ms: created,
            updated_ms: ended,
            finished_ms: (!state.is_active()).then_some(ended),
            facts: drainer_core::ledger::Facts::default()
                .with(crate::facts::PVC_UID, uid.map(str::to_owned)),
        }
    }

    #[test]
    fn a_claim_is_covered_by_drains_since_it_was_last_mounted() {
        use DrainState::*;
        let u = Some("uid-c");
        // (case, the claim's drains, when it was last mounted, what covers it)
        type Case<'a> = (&'a str, Vec<Drain>, Option<i64>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("no drain", vec![], Some(5), None),
            (
                "active",
                vec![drain("a", u, Queued, 1, 1)],
                Some(5),
                Some("active a"),
            ),
            (
                "completed since",
                vec![drain("c", u, Completed, 6, 10)],
                Some(5),
                Some("completed c"),
            ),
            (
                "completed before use",
                vec![drain("c", u, Completed, 1, 10)],
                Some(20),
                None,
            ),
            (
                "never seen mounted",
                vec![drain("c", u, Completed, 1, 10)],
                None,
                Some("completed c"),
            ),
            (
                "failed after an old completion",
                vec![
                    drain("c", u, Completed, 1, 10),
                    drain("f", u, Failed, 21, 30),
                ],
                Some(20),
                Some("failed f"),
            ),
            (
                "completed beats a later failure",
                vec![
                    drain("c", u, Completed, 21, 25),
                    drain("f", u, Failed, 26, 30),
                ],
                Some(20),
                Some("completed c"),
            ),
            (
                "cancelled since",
                vec![drain("x", u, Cancelled, 21, 30)],
                Some(20),
                Some("cancelled x"),
            ),
            (
                "not needed never covers",
                vec![drain("n", u, NotNeeded, 21, 30)],
                Some(20),
                None,
            ),
            (
                "another claim's",
                vec![drain("o", Some("uid-other"), Completed, 21, 30)],
                Some(20),
                None,
            ),
            (
                "by name, after the claim",
                vec![drain("b", None, Completed, 101, 130)],
                Some(120),
                Some("completed b"),
            ),
            (
                "by name, an older claim's",
                vec![drain("b", None, Completed, 50, 130)],
                Some(120),
                None,
            ),
        ];
        for (what, drains, mounted, expected) in cases {
            let found = cover(
                &drains,
                "uid-c",
                Some(100).filter(|_| what.starts_with("by name")),
                mounted,
            );
            let found = found.map(|c| match c {
                Cover::Active { id, .. } => format!("active {id}"),
                Cover::Completed { id, .. } => format!("completed {id}"),
                Cover::Failed { id } => format!("failed {id}"),
                Cover::Cancelled { id } => format!("cancelled {id}"),
                Cover::Abandoned { id } => format!("abandoned {id}"),
            });
            assert_eq!(found.as_deref(), expected, "{what}");
        }
    }

    #[test]
    fn only_uncovered_orphans_need_a_drain() {
        let web = set("web", 1, None, &["data"]);
        let (orphan, opted) = (claim("data-web-3"), {
            let mut c = claim("data-web-4");
            opt_out(&mut c.metadata);
            c
        });
        let seen = classify_namespace(&[&orphan, &opted], &[], &[&web], &[]);
        let fresh = finding(&seen[0], None);
        assert!(fresh.drain, "{fresh:?}");
        assert_eq!(fresh.statefulset.as_deref(), Some("web"));
        assert!(fresh.why.ends_with("no pod mounts it"), "{}", fresh.why);
        let done = Cover::Completed {
            id: "d-1".into(),
            snapshot: Some("s-1".into()),
        };
        let covered = finding(&seen[0], Some(&done));
        assert_eq!(
            (covered.drain, covered.drain_id.as_deref()),
            (false, Some("d-1"))
        );
        assert!(covered.why.contains("drained since"), "{}", covered.why);
        let skipped = finding(&seen[1], None);
        assert_eq!(
            (skipped.drain, skipped.verdict),
            (false, Some(Verdict::OptedOut))
        );
    }
}
