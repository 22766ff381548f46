//! Telling users what happened to their drains where they look: a [`Notifier`] that records
//! Kubernetes Events (`events.k8s.io/v1`, reporting controller `drainer.io/drainer`) on the
//! claim, and on the announcing pod while it still exists, for every milestone — reasons
//! `HandoffAccepted`, `CopyStarted`, `Completed` (snapshot, files, bytes, duration),
//! `NotNeeded`, `Failed` (why), and as Warnings `Failing` (still retried, the claim still
//! held), `ReleaseStalled`, `Abandoned` (who and why) and `ProtectionRemoved` — and annotates the claim with its last snapshot on completion
//! (`drainer.io/last-snapshot`, `drainer.io/last-snapshot-time`).
//!
//! What a milestone says is decided in pure code ([`say`]). The same event about the same
//! object (same reason and message) within [`SERIES_WINDOW`] is not recorded again: the first
//! one's `series` is counted up instead, as `kubectl describe` shows (`x3 over 2m`). Every
//! call has the API timeout; a failure is logged and never fails the drain. Events are
//! recorded [`EVENTS_AT_ONCE`] drains at a time: fifty pods handing off together make a
//! hundred Events, which must not crowd out the TokenReviews of the handoffs still waiting
//! for their answer on the same API server.

use super::{Cluster, call};
use crate::facts::KubeDrain;
use drainer_core::ledger::Drain;
use drainer_server::notify::{Milestone, Notifier};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `reportingController` of drainer's Events.
pub(crate) const REPORTING_CONTROLLER: &str = "drainer.io/drainer";
/// The claim annotation naming its last snapshot.
pub const LAST_SNAPSHOT: &str = "drainer.io/last-snapshot";
/// The claim annotation with the time of its last snapshot (RFC 3339).
pub const LAST_SNAPSHOT_TIME: &str = "drainer.io/last-snapshot-time";
/// How long a repeated event counts up its first one's series instead of being recorded again.
pub(crate) const SERIES_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The most events remembered for series.
const REMEMBERED: usize = 4096;
/// How many drains' Events are being recorded at once.
pub(crate) const EVENTS_AT_ONCE: usize = 2;
/// The longest note the API accepts.
const MAX_NOTE: usize = 1024;

/// What one milestone of a drain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    /// The Event's reason.
    pub reason: &'static str,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// The Event's action.
    pub action: &'static str,
    /// Its message.
    pub note: String,
    /// The snapshot to annotate the claim with, on completion.
    pub snapshot: Option<String>,
}

/// What `milestone` of `drain` says.
pub fn say(drain: &Drain, milestone: &Milestone) -> Said {
    let id = &drain.id;
    let volume = format!("{}/{}", drain.namespace, drain.pvc);
    let said = |reason, type_, action, note: String| Said {
        reason,
        type_,
        action,
        note: truncate(note, MAX_NOTE),
        snapshot: None,
    };
    match milestone {
        Milestone::Accepted => said(
            "HandoffAccepted",
            "Normal",
            "Drain",
            format!("drain {id} of {volume} accepted: {}", drain.reason),
        ),
        Milestone::CopyStarted { attempt } => said(
            "CopyStarted",
            "Normal",
            "Copy",
            format!(
                "drain {id}: copying {volume} (attempt {attempt} of {})",
                drain.max_attempts
            ),
        ),
        Milestone::Completed {
            snapshot,
            files,
            bytes,
            seconds,
        } => Said {
            snapshot: Some(snapshot.clone()),
            ..said(
                "Completed",
                "Normal",
                "Copy",
                format!(
                    "drain {id}: snapshot {snapshot} of {volume} is complete: {files} files, {bytes} bytes, in {seconds:.1} s"
                ),
            )
        },
        Milestone::NotNeeded { why } => said(
            "NotNeeded",
            "Normal",
            "Release",
            format!("drain {id} of {volume} is not needed: {why}"),
        ),
        Milestone::Failed { why, retrying } => {
            let note = if *retrying {
                format!(
                    "drain {id}: attempt {} of {} failed, retrying later: {why}",
                    drain.attempts, drain.max_attempts
                )
            } else {
                format!(
                    "drain {id} of {volume} failed: {why} (retry it by hand: POST /v1/drains/{id}/retry)"
                )
            };
            said("Failed", "Warning", "Copy", note)
        }
        Milestone::Failing { why, next } => said(
            "Failing",
            "Warning",
            "Copy",
            format!(
                "drain {id} of {volume} keeps failing ({} attempts): {why}; the claim stays held and the copy is tried again in {} s, until it succeeds or the drain is abandoned (POST /v1/drains/{id}/abandon)",
                drain.attempts,
                next.as_secs()
            ),
        ),
        Milestone::ReleaseStalled { why } => said(
            "ReleaseStalled",
            "Warning",
            "Release",
            format!("drain {id} of {volume} is still waiting for its release: {why}"),
        ),
        Milestone::Abandoned { by, why } => said(
            "Abandoned",
            "Warning",
            "Abandon",
            format!(
                "drain {id} of {volume} was abandoned by {by}: {why}; drainer no longer keeps the claim, its owners decide what happens to it"
            ),
        ),
        Milestone::ProtectionRemoved { what } => said(
            "ProtectionRemoved",
            "Warning",
            "Protect",
            format!("drain {id} of {volume}: {what}"),
        ),
    }
}

/// `text`, cut at a character boundary to at most `max` bytes (ending in `…` if cut).
fn truncate(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What makes two events the same: the object, the reason and the message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    kind: String,
    name: String,
    uid: Option<String>,
    reason: &'static str,
    note: String,
}

/// An event recorded, for its series.
#[derive(Debug, Clone)]
struct Recorded {
    name: String,
    count: i32,
    at: Instant,
}

/// Kubernetes mode's [`Notifier`]: Events on the claim and the pod, the claim's annotations.
pub struct KubeEvents {
    client: kube::Client,
    cluster: Cluster,
    instance: String,
    recorded: Mutex<HashMap<Key, Recorded>>,
    /// Turns to record Events: the API server's time goes to callers waiting for answers first.
    turns: tokio::sync::Semaphore,
}

impl KubeEvents {
    /// Records Events through `client`, finding claims and pods in `cluster`'s stores, as
    /// replica `instance` (the Events' `reportingInstance`).
    pub fn new(cluster: Cluster, instance: &str) -> Self {
        Self {
            client: cluster.client.clone(),
            cluster,
            instance: truncate(instance.to_owned(), 128),
            recorded: Mutex::new(HashMap::new()),
            turns: tokio::sync::Semaphore::new(EVENTS_AT_ONCE),
        }
    }

    /// The drain's claim, unless it was deleted and created again (another volume).
    fn claim_ref(&self, drain: &Drain) -> Option<ObjectReference> {
        let stored = self.cluster.claim(&drain.namespace, &drain.pvc);
        let uid = match (&stored, drain.pvc_uid()) {
            (Some(c), Some(recorded)) if c.metadata.uid.as_deref() != Some(recorded) => {
                return None;
            }
            (Some(c), _) => c.metadata.uid.clone(),
            (None, recorded) => recorded.map(str::to_owned),
        };
        Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            namespace: Some(drain.namespace.clone()),
            name: Some(drain.pvc.clone()),
            uid,
            ..ObjectReference::default()
        })
    }

    /// The announcing pod, while it exists (the same pod: its UID as recorded).
    fn pod_ref(&self, drain: &Drain) -> Option<ObjectReference> {
        let name = drain.pod.as_deref()?;
        let pod = self.cluster.pod(&drain.namespace, name)?;
        let uid = pod.metadata.uid.clone();
        if drain.pod_uid().is_some() && drain.pod_uid() != uid.as_deref() {
            return None;
        }
        Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(drain.namespace.clone()),
            name: Some(name.to_owned()),
            uid,
            ..ObjectReference::default()
        })
    }

    /// Records a Warning Event `reason` saying `note` on `claim`, outside any drain (a guard
    /// someone else removed from a claim no drain is working on).
    pub(crate) async fn warn_claim(
        &self,
        claim: &PersistentVolumeClaim,
        reason: &'static str,
        note: &str,
    ) {
        let Ok(_turn) = self.turns.acquire().await else {
            return;
        };
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            namespace: claim.metadata.namespace.clone(),
            name: claim.metadata.name.clone(),
            uid: claim.metadata.uid.clone(),
            ..ObjectReference::default()
        };
        let said = Said {
            reason,
            type_: "Warning",
            action: "Protect",
            note: truncate(note.to_owned(), MAX_NOTE),
            snapshot: None,
        };
        self.record("-", &regarding, None, &said).await;
    }

    /// Records a Normal Event `reason` (action `action`) saying `note` about `regarding`,
    /// outside any drain (a claim reclaimed, on the claim and on its StatefulSet).
    pub(crate) async fn tell(
        &self,
        regarding: ObjectReference,
        reason: &'static str,
        action: &'static str,
        note: &str,
    ) {
        let Ok(_turn) = self.turns.acquire().await else {
            return;
        };
        let said = Said {
            reason,
            type_: "Normal",
            action,
            note: truncate(note.to_owned(), MAX_NOTE),
            snapshot: None,
        };
        self.record("-", &regarding, None, &said).await;
    }

    /// Records `said` about `regarding`, or counts up its series (`drain`: whose it is, for
    /// the log).
    async fn record(
        &self,
        drain: &str,
        regarding: &ObjectReference,
        related: Option<&ObjectReference>,
        said: &Said,
    ) {
        let key = Key {
            namespace: regarding.namespace.clone().unwrap_or_default(),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone(),
            reason: said.reason,
            note: said.note.clone(),
        };
        let earlier = self.earlier(&key);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        let outcome = match earlier {
            Some(earlier) => match self.count_up(&events, &earlier, &key).await {
                Err(e) if e.is_not_found() => self.create(&events, regarding, related, said).await,
                other => other,
            },
            None => self.create(&events, regarding, related, said).await,
        };
        match outcome {
            Ok(recorded) => self.remember(key, recorded),
            Err(e) => {
                tracing::warn!(drain, ns = %key.namespace, object = %format!("{}/{}", key.kind, key.name), reason = said.reason, error = %e, "cannot record an Event")
            }
        }
    }

    /// The same event recorded within the series window, if any.
    fn earlier(&self, key: &Key) -> Option<Recorded> {
        let recorded = self.recorded.lock().ok()?;
        recorded
            .get(key)
            .filter(|r| r.at.elapsed() < SERIES_WINDOW)
            .cloned()
    }

    fn remember(&self, key: Key, recorded: Recorded) {
        if let Ok(mut all) = self.recorded.lock() {
            if all.len() >= REMEMBERED {
                all.retain(|_, r| r.at.elapsed() < SERIES_WINDOW);
                if all.len() >= REMEMBERED {
                    all.clear();
                }
            }
            all.insert(key, recorded);
        }
    }

    async fn create(
        &self,
        events: &Api<Event>,
        regarding: &ObjectReference,
        related: Option<&ObjectReference>,
        said: &Said,
    ) -> Result<Recorded, super::Error> {
        let now = Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or("drainer");
        let name = format!(
            "{}.{:x}",
            truncate(object.to_owned(), 200).trim_end_matches('…'),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(said.action.to_owned()),
            reason: Some(said.reason.to_owned()),
            note: Some(said.note.clone()),
            type_: Some(said.type_.to_owned()),
            regarding: Some(regarding.clone()),
            related: related.cloned(),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let what = format!("record Event {name} ({})", said.reason);
        call(what, events.create(&PostParams::default(), &event)).await?;
        Ok(Recorded {
            name,
            count: 1,
            at: Instant::now(),
        })
    }

    async fn count_up(
        &self,
        events: &Api<Event>,
        earlier: &Recorded,
        key: &Key,
    ) -> Result<Recorded, super::Error> {
        let count = earlier.count.saturating_add(1).max(2);
        let series = EventSeries {
            count,
            last_observed_time: MicroTime(Timestamp::now()),
        };
        let patch = serde_json::json!({ "series": series });
        let what = format!("count up Event {} ({})", earlier.name, key.reason);
        call(
            what,
            events.patch(
                &earlier.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ),
        )
        .await?;
        Ok(Recorded {
            name: earlier.name.clone(),
            count,
            at: earlier.at,
        })
    }

    /// Annotates the drain's claim with its last snapshot (only the claim whose UID the drain
    /// recorded: the UID in the patch is a precondition).
    async fn annotate(&self, drain: &Drain, snapshot: &str) {
        let mut metadata = serde_json::json!({
            "annotations": {
                LAST_SNAPSHOT: snapshot,
                LAST_SNAPSHOT_TIME: Timestamp::now().to_string(),
            }
        });
        if let Some(uid) = drain.pvc_uid() {
            metadata["uid"] = serde_json::json!(uid);
        }
        let patch = serde_json::json!({ "metadata": metadata });
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &drain.namespace);
        let what = format!("annotate claim {}/{}", drain.namespace, drain.pvc);
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        match call(what, claims.patch(&drain.pvc, &params, &patch)).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                tracing::debug!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, "the claim is gone: no annotation")
            }
            Err(e) => {
                tracing::warn!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, error = %e, "cannot annotate the claim with its last snapshot")
            }
        }
    }
}

#[async_trait::async_trait]
impl Notifier for KubeEvents {
    async fn notify(&self, drain: &Drain, milestone: &Milestone) {
        let Ok(_turn) = self.turns.acquire().await else {
            return; // never closed
        };
        let said = say(drain, milestone);
        let claim = self.claim_ref(drain);
        let pod = self.pod_ref(drain);
        if let Some(claim) = &claim {
            self.record(&drain.id, claim, pod.as_ref(), &said).await;
        }
        if let Some(pod) = &pod {
            self.record(&drain.id, pod, claim.as_ref(), &said).await;
        }
        if let Some(snapshot) = &said.snapshot {
            self.annotate(drain, snapshot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drainer_core::lifecycle::DrainState;

    fn drain() -> Drain {
        Drain {
            id: "d-1".into(),
            namespace: "shop".into(),
            pvc: "data-web-4".into(),
            pod: Some("web-4".into()),
            reason: "sweep: ordinal 4 of StatefulSet web is scaled away".into(),
            state: DrainState::Queued,
            attempts: 2,
            max_attempts: 5,
            not_before_ms: 0,
            lease_owner: None,
            lease_expires_ms: None,
            snapshot: None,
            last_error: None,
            created_ms: 0,
            updated_ms: 0,
            finished_ms: None,
            facts: drainer_core::ledger::Facts::default()
                .with(crate::facts::PVC_UID, Some("uid-c")),
        }
    }

    #[test]
    fn each_milestone_has_its_reason_and_says_what_happened() {
        let d = drain();
        let cases = [
            (
                Milestone::Accepted,
                "HandoffAccepted",
                "Normal",
                "StatefulSet web",
            ),
            (
                Milestone::CopyStarted { attempt: 2 },
                "CopyStarted",
                "Normal",
                "attempt 2 of 5",
            ),
            (
                Milestone::Completed {
                    snapshot: "s-9".into(),
                    files: 3,
                    bytes: 1024,
                    seconds: 1.25,
                },
                "Completed",
                "Normal",
                "snapshot s-9 of shop/data-web-4 is complete: 3 files, 1024 bytes, in 1.2 s",
            ),
            (
                Milestone::NotNeeded {
                    why: "pod web-4 came back".into(),
                },
                "NotNeeded",
                "Normal",
                "pod web-4 came back",
            ),
            (
                Milestone::Failed {
                    why: "store down".into(),
                    retrying: true,
                },
                "Failed",
                "Warning",
                "attempt 2 of 5 failed, retrying later: store down",
            ),
            (
                Milestone::Failed {
                    why: "gone".into(),
                    retrying: false,
                },
                "Failed",
                "Warning",
                "failed: gone (retry it by hand",
            ),
            (
                Milestone::Failing {
                    why: "store down".into(),
                    next: std::time::Duration::from_secs(60),
                },
                "Failing",
                "Warning",
                "keeps failing (2 attempts): store down; the claim stays held and the copy is tried again in 60 s",
            ),
            (
                Milestone::ReleaseStalled {
                    why: "web-4 still mounts data-web-4 after 600 s".into(),
                },
                "ReleaseStalled",
                "Warning",
                "still waiting for its release: web-4 still mounts",
            ),
            (
                Milestone::Abandoned {
                    by: "admin".into(),
                    why: "test data".into(),
                },
                "Abandoned",
                "Warning",
                "abandoned by admin: test data",
            ),
            (
                Milestone::ProtectionRemoved {
                    what: "hold drainer-hold-d-1 was deleted by someone else".into(),
                },
                "ProtectionRemoved",
                "Warning",
                "deleted by someone else",
            ),
        ];
        for (milestone, reason, type_, says) in cases {
            let said = say(&d, &milestone);
            assert_eq!((said.reason, said.type_), (reason, type_), "{milestone:?}");
            assert!(said.note.contains(says), "{milestone:?}: {}", said.note);
            assert!(said.note.contains("d-1"), "{}", said.note);
            assert_eq!(
                said.snapshot.is_some(),
                matches!(milestone, Milestone::Completed { .. })
            );
        }
    }

    #[test]
    fn long_notes_are_cut_to_what_the_api_takes() {
        let mut d = drain();
        d.reason = "é".repeat(2000);
        let said = say(&d, &Milestone::Accepted);
        assert!(said.note.len() <= MAX_NOTE, "{}", said.note.len());
        assert!(said.note.ends_with('…'));
    }

    // ---- Against a mock API server: the exact requests, and what each answer makes of them.

    use crate::mock::{Exchange, Scenario, caches, cluster, status};
    use http::Method;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{Value, json};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
    const CLAIM: &str = "/api/v1/namespaces/shop/persistentvolumeclaims/data-web-4";

    fn claim(uid: &str) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": "data-web-4", "namespace": "shop", "uid": uid}}),
        )
        .unwrap()
    }

    fn pod() -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web-4", "namespace": "shop", "uid": "uid-p"}}),
        )
        .unwrap()
    }

    /// Events recorded through `client`, by replica `replica-a`, in a cluster whose watches
    /// hold `claims` and `pods`.
    fn events(
        client: kube::Client,
        claims: Vec<PersistentVolumeClaim>,
        pods: Vec<Pod>,
    ) -> KubeEvents {
        let cluster = Cluster {
            claims: caches(claims),
            pods: caches(pods),
            ..cluster(client)
        };
        KubeEvents::new(cluster, "replica-a")
    }

    /// What the API server answers to a created Event.
    fn created() -> Value {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
               "metadata": {"name": "data-web-4.1", "namespace": "shop"}})
    }

    /// A request posting an Event `reason` about the object `kind` `name`.
    fn posting(reason: &'static str, kind: &'static str, name: &'static str) -> Exchange {
        Exchange::new(Method::POST, EVENTS, 201, created()).checking(move |body| {
            assert_eq!(body["reason"], reason, "{body}");
            assert_eq!(body["regarding"]["kind"], kind, "{body}");
            assert_eq!(body["regarding"]["name"], name, "{body}");
        })
    }

    /// The WARN lines logged while `test` runs, each as its fields.
    async fn warnings<F: Future<Output = ()>>(test: F) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Warnings(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *event.metadata().level() != tracing::Level::WARN {
                    return;
                }
                let mut line = String::new();
                event.record(
                    &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                        line.push_str(&format!("{}={value:?} ", field.name()));
                    },
                );
                self.0.lock().unwrap().push(line);
            }
        }
        let warnings = Warnings::default();
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        test.await;
        warnings.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_milestone_is_one_event_on_the_claim_and_one_on_the_pod_each_related_to_the_other() {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, EVENTS, 201, created()).checking(|body| {
                assert_eq!(body["apiVersion"], "events.k8s.io/v1");
                assert!(
                    body["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("data-web-4."),
                    "{body}"
                );
                assert_eq!(body["metadata"]["namespace"], "shop");
                assert_eq!(
                    body["regarding"],
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "namespace": "shop", "name": "data-web-4", "uid": "uid-c"})
                );
                assert_eq!(body["related"]["kind"], "Pod");
                assert_eq!(body["related"]["name"], "web-4");
                assert_eq!(body["related"]["uid"], "uid-p");
                assert_eq!(body["reason"], "HandoffAccepted");
                assert_eq!(body["type"], "Normal");
                assert_eq!(body["action"], "Drain");
                assert_eq!(
                    body["note"],
                    "drain d-1 of shop/data-web-4 accepted: sweep: ordinal 4 of StatefulSet web is scaled away"
                );
                assert_eq!(body["reportingController"], REPORTING_CONTROLLER);
                assert_eq!(body["reportingInstance"], "replica-a");
                assert!(body["eventTime"].is_string(), "{body}");
                assert!(body.get("series").is_none(), "{body}");
            }),
            Exchange::new(Method::POST, EVENTS, 201, created()).checking(|body| {
                assert_eq!(body["regarding"]["kind"], "Pod");
                assert_eq!(body["regarding"]["name"], "web-4");
                assert_eq!(body["regarding"]["uid"], "uid-p");
                assert_eq!(body["related"]["kind"], "PersistentVolumeClaim");
                assert_eq!(body["reason"], "HandoffAccepted");
            }),
        ])
        .serve(Duration::from_secs(5));
        let events = events(client, vec![claim("uid-c")], vec![pod()]);
        events.notify(&drain(), &Milestone::Accepted).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_same_event_again_counts_up_the_first_ones_series_instead_of_posting_another() {
        let (client, server) = Scenario(vec![
            posting("Failed", "PersistentVolumeClaim", "data-web-4"),
            Exchange::new(
                Method::PATCH,
                &format!("{EVENTS}/data-web-4.*"),
                200,
                created(),
            )
            .checking(|body| {
                assert_eq!(body["series"]["count"], 2, "{body}");
                assert!(body["series"]["lastObservedTime"].is_string(), "{body}");
            }),
            Exchange::new(
                Method::PATCH,
                &format!("{EVENTS}/data-web-4.*"),
                200,
                created(),
            )
            .checking(|body| assert_eq!(body["series"]["count"], 3, "{body}")),
        ])
        .serve(Duration::from_secs(5));
        let events = events(client, vec![claim("uid-c")], vec![]);
        let failed = Milestone::Failed {
            why: "store down".into(),
            retrying: true,
        };
        for _ in 0..3 {
            events.notify(&drain(), &failed).await;
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_series_whose_first_event_is_gone_is_posted_anew() {
        let (client, server) = Scenario(vec![
            posting("Failed", "PersistentVolumeClaim", "data-web-4"),
            Exchange::new(
                Method::PATCH,
                &format!("{EVENTS}/data-web-4.*"),
                404,
                status(404, "NotFound"),
            ),
            posting("Failed", "PersistentVolumeClaim", "data-web-4"),
        ])
        .serve(Duration::from_secs(5));
        let events = events(client, vec![claim("uid-c")], vec![]);
        let failed = Milestone::Failed {
            why: "store down".into(),
            retrying: true,
        };
        events.notify(&drain(), &failed).await;
        events.notify(&drain(), &failed).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_event_the_api_refuses_is_logged_and_neither_stops_the_next_nor_is_counted_up() {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, EVENTS, 403, status(403, "Forbidden")),
            Exchange::new(Method::POST, EVENTS, 500, status(500, "InternalError")),
            // Not recorded, so not remembered: posted again, not counted up.
            posting("HandoffAccepted", "PersistentVolumeClaim", "data-web-4"),
            posting("HandoffAccepted", "Pod", "web-4"),
        ])
        .serve(Duration::from_secs(5));
        let events = events(client, vec![claim("uid-c")], vec![pod()]);
        let warned = warnings(async {
            events.notify(&drain(), &Milestone::Accepted).await;
            events.notify(&drain(), &Milestone::Accepted).await;
        })
        .await;
        server.await.unwrap();
        assert_eq!(warned.len(), 2, "{warned:?}");
        for (line, object) in warned
            .iter()
            .zip(["PersistentVolumeClaim/data-web-4", "Pod/web-4"])
        {
            assert!(line.contains("cannot record an Event"), "{line}");
            assert!(line.contains("drain=\"d-1\""), "{line}");
            assert!(line.contains(object), "{line}");
        }
    }

    #[tokio::test]
    async fn completion_annotates_the_claim_the_drain_recorded_under_its_uid() {
        let (client, server) = Scenario(vec![
            posting("Completed", "PersistentVolumeClaim", "data-web-4"),
            Exchange::new(
                Method::PATCH,
                CLAIM,
                200,
                json!({"metadata": {"name": "data-web-4"}}),
            )
            .checking(|body| {
                let metadata = &body["metadata"];
                assert_eq!(metadata["uid"], "uid-c", "the UID is a precondition");
                assert_eq!(metadata["annotations"][LAST_SNAPSHOT], "s-9");
                assert!(metadata["annotations"][LAST_SNAPSHOT_TIME].is_string());
            }),
        ])
        .serve(Duration::from_secs(5));
        let events = events(client, vec![claim("uid-c")], vec![]);
        let completed = Milestone::Completed {
            snapshot: "s-9".into(),
            files: 3,
            bytes: 1024,
            seconds: 1.25,
        };
        events.notify(&drain(), &completed).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_claim_gone_before_its_annotation_is_no_warning() {
        let (client, server) = Scenario(vec![
            posting("Completed", "PersistentVolumeClaim", "data-web-4"),
            Exchange::new(Method::PATCH, CLAIM, 404, status(404, "NotFound")),
        ])
        .serve(Duration::from_secs(5));
        // The watch no longer has the claim: its Event names the UID the drain recorded.
        let events = events(client, vec![], vec![]);
        let completed = Milestone::Completed {
            snapshot: "s-9".into(),
            files: 3,
            bytes: 1024,
            seconds: 1.25,
        };
        let warned = warnings(events.notify(&drain(), &completed)).await;
        server.await.unwrap();
        assert_eq!(warned, Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_claim_created_again_and_a_pod_the_watch_does_not_have_get_no_event() {
        let (client, server) = Scenario(vec![]).serve(Duration::from_secs(5));
        let events = events(client, vec![claim("uid-other")], vec![]);
        events.notify(&drain(), &Milestone::Accepted).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_guard_removed_outside_any_drain_is_a_warning_on_the_claim() {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, EVENTS, 201, created()).checking(|body| {
                assert_eq!(body["regarding"]["uid"], "uid-c");
                assert_eq!(body["reason"], "ProtectionRemoved");
                assert_eq!(body["type"], "Warning");
                assert_eq!(body["action"], "Protect");
                assert_eq!(body["note"], "guard removed by someone else");
                assert!(body.get("related").is_none(), "{body}");
            }),
        ])
        .serve(Duration::from_secs(5));
        let events = events(client, vec![], vec![]);
        events
            .warn_claim(
                &claim("uid-c"),
                "ProtectionRemoved",
                "guard removed by someone else",
            )
            .await;
        server.await.unwrap();
    }
}
