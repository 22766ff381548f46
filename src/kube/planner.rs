//! The Kubernetes decisions, as pure functions of what was listed: which StatefulSet (and
//! ordinal) a claim belongs to, whether that ordinal is live, what a released volume's drain
//! becomes, and which claims a sweep finds orphaned. No I/O: the release tracker and the sweep
//! hand these functions the objects their reflectors hold, and act on the answer.
//!
//! The facts they rest on (`../shared/DESIGN.md`): a StatefulSet `web` with claim templates
//! `data` and `logs` owns claims `data-web-N` and `logs-web-N`; ordinal `o` is live iff
//! `start <= o < start + replicas` (`spec.ordinals.start`, default 0); a volume is orphaned
//! when its ordinal is not live or its StatefulSet is gone, and no pod mounts it.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde::Serialize;

/// The annotation or label that opts a StatefulSet or claim out of drains (`"false"`).
pub const OPT_OUT: &str = "drainer.io/drain";

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
pub fn live_ordinals(set: &StatefulSet) -> std::ops::Range<i32> {
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
pub fn set_claim<'a>(
    name: &str,
    sets: impl IntoIterator<Item = &'a StatefulSet>,
) -> Option<SetClaim> {
    let (stem, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) || ordinal.len() > 9 {
        return None;
    }
    let ordinal: i32 = ordinal.parse().ok()?;
    sets.into_iter().find_map(|set| {
        let set_name = set.metadata.name.as_deref()?;
        let template = stem.strip_suffix(set_name)?.strip_suffix('-')?;
        templates(set)
            .contains(&template.to_owned())
            .then(|| SetClaim {
                set: set_name.to_owned(),
                template: template.to_owned(),
                ordinal,
            })
    })
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
pub enum Release {
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
pub fn decide_release<'a>(
    pvc: &str,
    pvc_uid: Option<&str>,
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
        return match set_claim(pvc, sets.clone()) {
            // The pod that mounts it again is its StatefulSet's own: a restart.
            Some(c) if name == format!("{}-{}", c.set, c.ordinal) && pod_is_up(pod) => {
                Release::StillInUse(format!("pod {name} came back and mounts {pvc}"))
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
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet" && o.controller == Some(true))?;
    let name = pod.metadata.name.as_deref()?;
    let ordinal: i32 = name
        .strip_prefix(&format!("{}-", owner.name))?
        .parse()
        .ok()?;
    let sets: Vec<&StatefulSet> = sets.into_iter().collect();
    let set = sets
        .iter()
        .find(|s| s.metadata.uid.as_deref() == Some(owner.uid.as_str()));
    match set {
        Some(set) if set.metadata.deletion_timestamp.is_some() => None, // whenDeleted applies
        Some(set) if live_ordinals(set).contains(&ordinal) => None,     // a restart
        Some(_) => Some(SetClaim {
            set: owner.name.clone(),
            template: String::new(),
            ordinal,
        }),
        None => None,
    }
}

/// What a sweep found about one claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `namespace/pvc`.
    pub volume: String,
    /// The claim's UID.
    pub uid: String,
    /// The StatefulSet it belongs to, if it is one's.
    pub statefulset: Option<String>,
    /// Whether it needs a drain now.
    pub drain: bool,
    /// Whether it is orphaned (drained or not).
    pub orphaned: bool,
    /// Why.
    pub why: String,
}

/// Decides, for every claim of one namespace, whether it is orphaned and needs a drain:
/// orphaned claims of StatefulSets (ordinal not live, or the StatefulSet gone) that no pod
/// mounts, unless opted out or already drained since (`drained` says whether a claim UID has a
/// completed or active drain since it was last mounted).
pub fn sweep_namespace(
    claims: &[&PersistentVolumeClaim],
    pods: &[&Pod],
    sets: &[&StatefulSet],
    remembered_sets: &[RememberedSet],
    drained: impl Fn(&str) -> bool,
) -> Vec<Finding> {
    claims
        .iter()
        .filter_map(|claim| {
            let name = claim.metadata.name.as_deref()?;
            let namespace = claim.metadata.namespace.as_deref()?;
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            let finding =
                |statefulset: Option<String>, orphaned: bool, drain: bool, why: String| Finding {
                    volume: format!("{namespace}/{name}"),
                    uid: uid.clone(),
                    statefulset,
                    drain,
                    orphaned,
                    why,
                };
            let set_claim = set_claim(name, sets.iter().copied())
                .or_else(|| remembered_claim(name, remembered_sets))?;
            let set = sets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(set_claim.set.as_str()));
            let orphaned_why = match set {
                Some(set) if set.metadata.deletion_timestamp.is_none() => {
                    let live = live_ordinals(set);
                    (!live.contains(&set_claim.ordinal)).then(|| {
                        format!(
                            "ordinal {} of {} is scaled away (live ordinals {}..{})",
                            set_claim.ordinal, set_claim.set, live.start, live.end
                        )
                    })
                }
                _ => Some(format!("StatefulSet {} no longer exists", set_claim.set)),
            };
            let name_of_set = Some(set_claim.set.clone());
            let Some(why) = orphaned_why else {
                return Some(finding(name_of_set, false, false, "ordinal is live".into()));
            };
            if let Some(pod) = pods.iter().find(|p| mounts(p, name)) {
                let pod = pod.metadata.name.as_deref().unwrap_or("?");
                return Some(finding(
                    name_of_set,
                    false,
                    false,
                    format!("{why}, but pod {pod} mounts it"),
                ));
            }
            if opted_out(&claim.metadata) || set.is_some_and(|s| opted_out(&s.metadata)) {
                return Some(finding(
                    name_of_set,
                    true,
                    false,
                    format!("{why}; opted out ({OPT_OUT}: \"false\")"),
                ));
            }
            if claim.metadata.deletion_timestamp.is_some() {
                return Some(finding(
                    name_of_set,
                    true,
                    false,
                    format!("{why}; the claim is being deleted"),
                ));
            }
            if drained(&uid) {
                return Some(finding(
                    name_of_set,
                    true,
                    false,
                    format!("{why}; drained since"),
                ));
            }
            Some(finding(name_of_set, true, true, why))
        })
        .collect()
}

/// A StatefulSet drainer saw once: enough to recognise its claims after it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedSet {
    /// Its name.
    pub name: String,
    /// Its claim templates.
    pub templates: Vec<String>,
}

fn remembered_claim(name: &str, remembered: &[RememberedSet]) -> Option<SetClaim> {
    let (stem, ordinal) = name.rsplit_once('-')?;
    let ordinal: i32 = ordinal.parse().ok()?;
    remembered.iter().find_map(|set| {
        let template = stem.strip_suffix(&set.name)?.strip_suffix('-')?;
        set.templates
            .iter()
            .any(|t| t == template)
            .then(|| SetClaim {
                set: set.name.clone(),
                template: template.to_owned(),
                ordinal,
            })
    })
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
                Some(&claim("data-web-4")),
                [&mover],
                sets.iter()
            ),
            decide_release(
                "data-web-4",
                None,
                Some(&claim("data-web-4")),
                [],
                sets.iter()
            ),
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

    #[test]
    fn sweeps_find_unmounted_claims_of_scaled_away_ordinals_and_gone_sets() {
        let web = set("web", 2, None, &["data"]);
        let mut quiet = set("quiet", 1, None, &["data"]);
        quiet.metadata.annotations = Some([(OPT_OUT.to_owned(), "false".to_owned())].into());
        let claims = [
            claim("data-web-0"),
            claim("data-web-2"),
            claim("data-web-3"),
            claim("data-web-4"),
            claim("data-old-1"),
            claim("data-quiet-3"),
            claim("scratch"),
            claim("data-gone-0"),
        ];
        let pods = [pod("debug", &["data-web-3"])];
        let remembered = [RememberedSet {
            name: "old".into(),
            templates: vec!["data".into()],
        }];
        let findings = sweep_namespace(
            &claims.iter().collect::<Vec<_>>(),
            &pods.iter().collect::<Vec<_>>(),
            &[&web, &quiet],
            &remembered,
            |uid| uid == "uid-data-web-4",
        );
        let by_volume: std::collections::HashMap<&str, (bool, bool)> = findings
            .iter()
            .map(|f| (f.volume.as_str(), (f.orphaned, f.drain)))
            .collect();
        assert_eq!(by_volume["shop/data-web-0"], (false, false), "live");
        assert_eq!(by_volume["shop/data-web-2"], (true, true), "scaled away");
        assert_eq!(
            by_volume["shop/data-web-3"],
            (false, false),
            "mounted by a pod"
        );
        assert_eq!(by_volume["shop/data-web-4"], (true, false), "drained since");
        assert_eq!(
            by_volume["shop/data-old-1"],
            (true, true),
            "its StatefulSet is gone"
        );
        assert_eq!(by_volume["shop/data-quiet-3"], (true, false), "opted out");
        assert!(
            !by_volume.contains_key("shop/scratch"),
            "not a StatefulSet claim"
        );
        assert!(
            !by_volume.contains_key("shop/data-gone-0"),
            "never seen: not guessed"
        );
    }
}
