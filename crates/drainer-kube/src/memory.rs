//! What drainer remembers of StatefulSets from the watch: every StatefulSet with claim
//! templates that the watch sees (listed, changed, or deleted) is written to the ledger's
//! memory (`known_statefulsets`), so that a later sweep — scheduled or on demand, on any
//! replica, after a restart too — still recognises the claims of a StatefulSet deleted
//! (`--cascade=orphan`, then its pods) before any sweep saw it. Sweeps remember what they see
//! too; this closes the gap between two sweeps.
//!
//! The StatefulSet watch hands each set it sees to [`SetSightings`] (no I/O in the watch);
//! [`SetSightings::run`] writes what changed, a burst at a time, and retries with a capped
//! backoff while the ledger fails; a sweep first writes what is pending
//! ([`SetSightings::flush`]), so a sweep right after a deletion finds the set. What to write
//! is decided in pure functions ([`remembered`], [`to_write`]).

use crate::sweep_records::{RememberedSet, SweepRecords};
use drainer_core::ledger::Ledger;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the writer waits after a sighting for more (a listing of many sets is one write).
const BURST: Duration = Duration::from_millis(500);
/// The longest wait between two tries while the ledger fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the last write at shutdown may take.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// What a StatefulSet is to the memory: its identity, claim templates and opt-out; `None` for a
/// set without claim templates (it leaves no claim behind) or without identity.
pub fn remembered(set: &StatefulSet) -> Option<RememberedSet> {
    let templates = super::planner::templates(set);
    if templates.is_empty() {
        return None;
    }
    let meta = &set.metadata;
    Some(RememberedSet {
        uid: meta.uid.clone()?,
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        templates,
        opted_out: super::planner::opted_out(meta),
    })
}

/// The sets of `seen` that `written` (what the ledger holds, by UID) does not hold as they
/// are: new ones, and known ones whose name, templates or opt-out changed.
pub(crate) fn to_write(
    seen: impl IntoIterator<Item = RememberedSet>,
    written: &HashMap<String, RememberedSet>,
) -> Vec<RememberedSet> {
    seen.into_iter()
        .filter(|set| written.get(&set.uid) != Some(set))
        .collect()
}

/// The StatefulSets the watch saw and the ledger may not hold yet; cheap to clone (one per
/// cluster, shared by the watch, the writer and the sweeps).
#[derive(Clone, Default)]
pub struct SetSightings {
    /// Seen and not written yet, by UID (the latest sighting of each).
    pending: Arc<Mutex<HashMap<String, RememberedSet>>>,
    /// Wakes the writer.
    wake: Arc<tokio::sync::Notify>,
    /// What the ledger holds (read once, then kept as written), by UID; the lock makes writes
    /// take turns.
    written: Arc<tokio::sync::Mutex<Option<HashMap<String, RememberedSet>>>>,
}

impl SetSightings {
    /// Notes a StatefulSet seen (listed, changed or deleted).
    pub fn seen(&self, set: &StatefulSet) {
        let Some(set) = remembered(set) else { return };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(set.uid.clone(), set);
        self.wake.notify_one();
    }

    /// What one StatefulSet watch tells the memory: every set it lists, sees change, or sees
    /// deleted (as it was last).
    pub(crate) fn follower(&self) -> impl FnMut(&watcher::Event<StatefulSet>) + Send + 'static {
        let out = self.clone();
        move |event| match event {
            watcher::Event::Apply(set)
            | watcher::Event::InitApply(set)
            | watcher::Event::Delete(set) => out.seen(set),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// The sets seen and not written yet (the tests').
    #[cfg(test)]
    pub(crate) fn pending(&self) -> Vec<RememberedSet> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.values().cloned().collect()
    }

    /// Writes to the ledger the sets seen that it does not hold as they are; returns how many.
    /// On failure they stay pending (a later sighting of the same set wins).
    pub async fn flush(&self, ledger: &Ledger) -> Result<usize, drainer_core::ledger::Error> {
        let mut written = self.written.lock().await;
        if written.is_none() {
            let known = ledger.remembered_sets().await?;
            *written = Some(known.into_iter().map(|s| (s.uid.clone(), s)).collect());
        }
        let Some(known) = written.as_mut() else {
            return Ok(0);
        };
        let seen = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let new = to_write(seen.into_values(), known);
        if new.is_empty() {
            return Ok(0);
        }
        if let Err(e) = ledger.remember_sets(&new).await {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for set in new {
                pending.entry(set.uid.clone()).or_insert(set);
            }
            return Err(e);
        }
        for set in &new {
            tracing::debug!(ns = %set.namespace, statefulset = %set.name, uid = %set.uid, "remembered a StatefulSet the watch saw");
            known.insert(set.uid.clone(), set.clone());
        }
        Ok(new.len())
    }

    /// Writes what the watch sees until `stop` (a burst at a time; retried with a capped
    /// backoff while the ledger fails), then what is left, within a few seconds.
    #[tracing::instrument(name = "set_memory", skip_all)]
    pub async fn run(self, ledger: Ledger, stop: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(BURST) => {}
            }
            match self.flush(&ledger).await {
                Ok(_) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot remember the StatefulSets the watch saw; retrying");
                    self.wake.notify_one();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        match tokio::time::timeout(LAST_WRITE, self.flush(&ledger)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot remember the last StatefulSets the watch saw")
            }
            Err(_) => tracing::warn!(
                "the last StatefulSets the watch saw were not remembered within {LAST_WRITE:?}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(name: &str, templates: &[&str], opted_out: bool) -> StatefulSet {
        let templates: Vec<_> = templates
            .iter()
            .map(|t| json!({"metadata": {"name": t}}))
            .collect();
        let annotations = if opted_out {
            json!({"drainer.io/drain": "false"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                         "annotations": annotations},
            "spec": {"replicas": 2, "selector": {}, "serviceName": name, "template": {},
                     "volumeClaimTemplates": templates},
        }))
        .unwrap()
    }

    #[test]
    fn only_sets_with_claim_templates_are_remembered() {
        let db = remembered(&set("db", &["data", "logs"], false)).unwrap();
        assert_eq!(
            (db.uid.as_str(), db.namespace.as_str(), db.name.as_str()),
            ("uid-db", "shop", "db")
        );
        assert_eq!(db.templates, ["data", "logs"]);
        assert!(!db.opted_out);
        assert!(remembered(&set("db", &["data"], true)).unwrap().opted_out);
        assert_eq!(remembered(&set("stateless", &[], false)), None);
        let mut anonymous = set("db", &["data"], false);
        anonymous.metadata.uid = None;
        assert_eq!(remembered(&anonymous), None);
    }

    #[test]
    fn what_the_ledger_holds_as_it_is_is_not_written_again() {
        let known = remembered(&set("db", &["data"], false)).unwrap();
        let written: HashMap<String, RememberedSet> =
            [(known.uid.clone(), known.clone())].into_iter().collect();
        let opted = remembered(&set("db", &["data"], true)).unwrap();
        let templates = remembered(&set("db", &["data", "logs"], false)).unwrap();
        let new = remembered(&set("web", &["data"], false)).unwrap();
        let cases = [
            (vec![known.clone()], vec![]),
            (vec![opted.clone()], vec![opted.clone()]),
            (vec![templates.clone()], vec![templates.clone()]),
            (vec![new.clone(), known.clone()], vec![new.clone()]),
            (vec![], vec![]),
        ];
        for (seen, expected) in cases {
            assert_eq!(to_write(seen.clone(), &written), expected, "{seen:?}");
        }
    }

    #[test]
    fn the_watch_hands_over_listed_changed_and_deleted_sets() {
        let sightings = SetSightings::default();
        let mut follow = sightings.follower();
        follow(&watcher::Event::Init);
        follow(&watcher::Event::InitApply(set("a", &["data"], false)));
        follow(&watcher::Event::InitDone);
        follow(&watcher::Event::Apply(set("b", &["data"], false)));
        follow(&watcher::Event::Apply(set("b", &["data"], true)));
        follow(&watcher::Event::Delete(set("c", &["data"], false)));
        follow(&watcher::Event::Apply(set("stateless", &[], false)));
        let mut pending = sightings.pending();
        pending.sort_by(|x, y| x.name.cmp(&y.name));
        let names: Vec<(&str, bool)> = pending
            .iter()
            .map(|s| (s.name.as_str(), s.opted_out))
            .collect();
        assert_eq!(names, [("a", false), ("b", true), ("c", false)]);
    }

    #[tokio::test]
    async fn a_set_seen_deleted_is_remembered_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(None, dir.path()).await.unwrap();
        let sightings = SetSightings::default();
        let mut follow = sightings.follower();
        follow(&watcher::Event::Apply(set("db", &["data"], false)));
        follow(&watcher::Event::Delete(set("db", &["data"], false)));
        assert_eq!(sightings.flush(&ledger).await.unwrap(), 1);
        assert!(sightings.pending().is_empty());
        follow(&watcher::Event::Apply(set("db", &["data"], false)));
        assert_eq!(sightings.flush(&ledger).await.unwrap(), 0, "unchanged");
        drop(ledger);
        let again = Ledger::open(None, dir.path()).await.unwrap();
        let remembered = again.remembered_sets().await.unwrap();
        assert_eq!(remembered.len(), 1);
        assert_eq!(
            (remembered[0].name.as_str(), &remembered[0].templates),
            ("db", &vec!["data".to_owned()])
        );
        // Another process, with the same ledger: the set is known, nothing is written.
        let fresh = SetSightings::default();
        fresh.seen(&set("db", &["data"], false));
        assert_eq!(fresh.flush(&again).await.unwrap(), 0);
    }
}
