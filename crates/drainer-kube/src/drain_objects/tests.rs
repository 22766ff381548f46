//! [`decide`]: what a pass writes for an object of a drain, given its ledger row and the object as
//! seen; how a listing sorts objects; the history and the conditions a status keeps.

use super::*;
use drainer_core::lifecycle::DrainState;

const DAY: i64 = 86_400_000;
const TTL: i64 = 7 * DAY;
const NOW: i64 = 100 * DAY;

fn drain(state: DrainState, finished: Option<i64>) -> Drain {
    Drain {
        id: "d-1".into(),
        namespace: "shop".into(),
        pvc: "data-web-2".into(),
        pod: Some("web-2".into()),
        reason: "handoff".into(),
        state,
        attempts: 1,
        max_attempts: 3,
        not_before_ms: 0,
        lease_owner: None,
        lease_expires_ms: None,
        snapshot: (state == DrainState::Completed).then(|| "s-1".into()),
        last_error: None,
        created_ms: NOW - DAY,
        updated_ms: finished.unwrap_or(NOW - DAY),
        finished_ms: finished,
        facts: drainer_core::ledger::Facts::default(),
    }
}

fn view(files: u64, bytes: u64) -> ProgressView {
    ProgressView {
        files_done: files,
        bytes_done: bytes,
        files_total: None,
        bytes_total: None,
        bytes_per_second: 1048576.0,
        eta_seconds: None,
        elapsed_seconds: 1.0,
    }
}

fn facts(live: Option<&ProgressView>, due: bool, role: Role) -> Facts<'_> {
    Facts {
        live,
        progress_due: due,
        now_ms: NOW,
        ttl_ms: TTL,
        role,
    }
}

fn seen_as(drain: &Drain, progress: Option<ObjectProgress>) -> Seen {
    Seen {
        status: Some(status_of(drain)),
        progress,
        kept: Vec::new(),
    }
}

#[test]
fn a_drain_without_an_object_gets_one_with_its_status() {
    let d = drain(DrainState::Queued, None);
    assert_eq!(
        decide(&d, None, facts(None, true, Role::All)),
        Action::Create {
            status: status_of(&d),
            progress: None
        }
    );
    // Only the writing replica makes objects.
    assert_eq!(
        decide(&d, None, facts(None, true, Role::ProgressOnly)),
        Action::Nothing
    );
}

#[test]
fn an_object_in_step_is_left_alone_and_one_behind_is_patched() {
    let queued = drain(DrainState::Queued, None);
    let done = drain(DrainState::Completed, Some(NOW - 1000));
    let seen = seen_as(&queued, None);
    assert_eq!(
        decide(&queued, Some(&seen), facts(None, true, Role::All)),
        Action::Nothing
    );
    let action = decide(&done, Some(&seen), facts(None, true, Role::All));
    let Action::Patch {
        status: Some(status),
        progress: None,
    } = action
    else {
        panic!("{action:?}")
    };
    assert_eq!(status.state, "completed");
    assert_eq!(status.snapshot.as_deref(), Some("s-1"));
    assert_eq!(status.conditions[0].status, "True");
    assert_eq!(status.conditions[1].reason, "Completed");
    // The replica that does not hold the Lease writes no state.
    assert_eq!(
        decide(&done, Some(&seen), facts(None, true, Role::ProgressOnly)),
        Action::Nothing
    );
    // An object whose status someone emptied is written again.
    assert!(matches!(
        decide(&done, Some(&Seen::default()), facts(None, true, Role::All)),
        Action::Patch {
            status: Some(_),
            ..
        }
    ));
}

#[test]
fn progress_is_written_when_due_and_changed_only() {
    let copying = drain(DrainState::Copying, None);
    let sample = view(3, 5 << 20);
    let written = ObjectProgress::of(&sample);
    assert_eq!(written.summary, "3 files, 5.0 MiB, 1.0 MiB/s");
    // Once the counting walk has counted the source, the totals too.
    let counted = ProgressView {
        files_total: Some(10),
        bytes_total: Some(20 << 20),
        ..sample
    };
    let with_totals = ObjectProgress::of(&counted);
    assert_eq!(with_totals.summary, "3/10 files, 5.0/20.0 MiB, 1.0 MiB/s");
    assert_eq!(
        serde_json::to_value(&with_totals).unwrap(),
        serde_json::json!({"files": 3, "bytes": 5 << 20, "bytesPerSecond": 1 << 20,
            "filesTotal": 10, "bytesTotal": 20 << 20, "summary": with_totals.summary})
    );
    // Without them (and as objects written before they were), no total fields.
    let json = serde_json::to_value(&written).unwrap();
    assert!(json.get("filesTotal").is_none(), "{json}");
    let old: ObjectProgress = serde_json::from_value(
        serde_json::json!({"files": 3, "bytes": 1, "bytesPerSecond": 1, "summary": "s"}),
    )
    .unwrap();
    assert_eq!((old.files_total, old.bytes_total), (None, None));
    // The CRD's structural schema keeps every field written (the API server drops the rest).
    let crd: serde_json::Value =
        serde_saphyr::from_str(include_str!("../../../../deploy/base/crd.yaml")).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["progress"]["properties"];
    let fields = serde_json::to_value(&with_totals).unwrap();
    for field in fields.as_object().unwrap().keys() {
        assert!(
            schema.get(field).is_some(),
            "the CRD lacks status.progress.{field}"
        );
    }
    let seen = seen_as(&copying, None);
    for role in [Role::All, Role::ProgressOnly] {
        assert_eq!(
            decide(&copying, Some(&seen), facts(Some(&sample), true, role)),
            Action::Patch {
                status: None,
                progress: Some(written.clone())
            }
        );
        // Not due yet: nothing, however much it moved.
        assert_eq!(
            decide(&copying, Some(&seen), facts(Some(&sample), false, role)),
            Action::Nothing
        );
    }
    // Due, but the object says it already.
    let seen = seen_as(&copying, Some(written));
    assert_eq!(
        decide(&copying, Some(&seen), facts(Some(&sample), true, Role::All)),
        Action::Nothing
    );
    // A state change with progress not due: the state alone (the progress is left as it is).
    let failing = Drain {
        last_error: Some("store unreachable".into()),
        ..drain(DrainState::Failing, None)
    };
    let action = decide(
        &failing,
        Some(&seen),
        facts(Some(&sample), false, Role::All),
    );
    assert!(
        matches!(&action, Action::Patch { status: Some(s), progress: None }
            if s.last_error.as_deref() == Some("store unreachable")),
        "{action:?}"
    );
}

#[test]
fn objects_of_drains_ended_longer_than_the_ttl_ago_go() {
    let cases = [
        // (state, finished, object seen, role, expected)
        (
            DrainState::Completed,
            Some(NOW - TTL),
            true,
            Role::All,
            Action::Delete,
        ),
        (
            DrainState::Cancelled,
            Some(NOW - 2 * TTL),
            true,
            Role::All,
            Action::Delete,
        ),
        (
            DrainState::Completed,
            Some(NOW - TTL),
            false,
            Role::All,
            Action::Nothing,
        ),
        (
            DrainState::Completed,
            Some(NOW - TTL),
            true,
            Role::ProgressOnly,
            Action::Nothing,
        ),
    ];
    for (state, finished, seen, role, expected) in cases {
        let d = drain(state, finished);
        let object = seen_as(&d, None);
        assert_eq!(
            decide(&d, seen.then_some(&object), facts(None, true, role)),
            expected,
            "{state:?} {finished:?} {seen} {role:?}"
        );
    }
    // Within the TTL, or still active however old: kept.
    let recent = drain(DrainState::Completed, Some(NOW - TTL + 1));
    let old_active = Drain {
        created_ms: 0,
        ..drain(DrainState::Failing, None)
    };
    for d in [recent, old_active] {
        let object = seen_as(&d, None);
        assert_eq!(
            decide(&d, Some(&object), facts(None, true, Role::All)),
            Action::Nothing,
            "{d:?}"
        );
    }
}

#[test]
fn the_object_and_its_patches_say_what_the_ledger_says() {
    let d = drain(DrainState::Completed, Some(NOW));
    let object = object_of(&d, Some("system:serviceaccount:shop:web"));
    assert_eq!(object.metadata.name.as_deref(), Some("d-1"));
    assert_eq!(object.metadata.namespace.as_deref(), Some("shop"));
    let labels = object.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels[CLAIM_LABEL], "data-web-2");
    assert_eq!(labels[DRAIN_LABEL], "d-1");
    assert_eq!(labels[MANAGED.0], MANAGED.1);
    assert_eq!(
        object.data["spec"],
        json!({"claim": "data-web-2", "reason": "handoff", "requestedBy": "system:serviceaccount:shop:web"})
    );
    let status = status_of(&d);
    assert_eq!(status.updated, rfc3339(NOW));
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    // A patch without a new status leaves the status alone; one without progress leaves the
    // progress alone; errors and snapshots that went are removed (null).
    let patch = status_patch(None, Some(&ObjectProgress::of(&view(1, 1))));
    assert_eq!(patch["status"].as_object().map(|o| o.len()), Some(1));
    let queued = status_of(&drain(DrainState::Queued, None));
    let patch = status_patch(Some(&queued), None);
    assert!(patch["status"].get("progress").is_none());
    assert_eq!(patch["status"]["snapshot"], Value::Null);
    assert!(
        patch["status"]
            .as_object()
            .unwrap()
            .contains_key("lastError")
    );
    // What a pass reads back is what it wrote.
    let listed: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
        "metadata": {"name": "d-1", "namespace": "shop"},
        "status": status_patch(Some(&status), Some(&ObjectProgress::of(&view(2, 3))))["status"],
    }))
    .unwrap();
    assert_eq!(
        Seen::of(&listed),
        Seen {
            status: Some(status),
            progress: Some(ObjectProgress::of(&view(2, 3))),
            kept: Vec::new(),
        }
    );
    assert_eq!(camel("awaiting_release"), "AwaitingRelease");
}

#[test]
fn conditions_of_requests_and_actions_are_kept_and_a_new_one_is_written() {
    let d = drain(DrainState::Queued, None);
    let accepted = condition_now(
        "Accepted",
        true,
        "Requested",
        "drain d-1 requested".into(),
        NOW,
    );
    // An object in step, with a kept condition: nothing to write.
    let mut seen = Seen {
        status: Some(wanted(&d, std::slice::from_ref(&accepted))),
        progress: None,
        kept: vec![accepted.clone()],
    };
    assert_eq!(
        decide(&d, Some(&seen), facts(None, true, Role::All)),
        Action::Nothing
    );
    // What a listed object says is what the pass wrote.
    let listed: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
        "metadata": {"name": "nightly", "namespace": "shop"},
        "status": status_patch(seen.status.as_ref(), None)["status"],
    }))
    .unwrap();
    assert_eq!(Seen::of(&listed), seen);
    // An answer of this pass replaces the kept condition of its type: written, with the
    // ledger's state and the other kept conditions.
    let applied = condition_now("ActionApplied", false, "ClaimHeld", "held".into(), NOW);
    seen.keep(applied.clone());
    seen.keep(condition_now(
        "Accepted",
        true,
        "Requested",
        "again".into(),
        NOW,
    ));
    assert_eq!(seen.kept.len(), 2);
    let Action::Patch {
        status: Some(status),
        progress: None,
    } = decide(&d, Some(&seen), facts(None, true, Role::All))
    else {
        panic!("not written")
    };
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ended", "Succeeded", "Accepted", "ActionApplied"]);
    assert_eq!(status.conditions[3], applied);
    // A request just linked (no status yet) gets the ledger's status and its Accepted.
    let mut linked = Seen::default();
    linked.keep(accepted.clone());
    assert!(matches!(
        decide(&d, Some(&linked), facts(None, true, Role::All)),
        Action::Patch { status: Some(s), .. } if s.conditions.contains(&accepted)
    ));
}

#[test]
fn the_history_shows_the_last_entries_oldest_first() {
    let events: Vec<DrainEvent> = (0..25)
        .map(|i| DrainEvent {
            at_ms: NOW + i * 1000,
            state: DrainState::Queued,
            owner: (i % 2 == 0).then(|| "drainer-0".to_owned()),
            message: Some(format!("entry {i}")),
        })
        .collect();
    let history = history_of(&events);
    let entries = history.as_array().unwrap();
    assert_eq!(entries.len(), HISTORY_KEPT);
    assert_eq!(entries[0]["message"], "entry 5");
    assert_eq!(entries[19]["message"], "entry 24");
    assert_eq!(entries[19]["replica"], "drainer-0");
    assert!(entries[0].get("replica").is_none());
    assert_eq!(entries[0]["state"], "queued");
    assert_eq!(entries[0]["at"], rfc3339(NOW + 5000));
    assert_eq!(history_of(&[]), json!([]));
}

fn object(name: &str, labels: Value, annotations: Value, status: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
        "metadata": {"name": name, "namespace": "shop", "labels": labels,
                     "annotations": annotations, "creationTimestamp": "2026-12-07T10:00:00Z"},
        "spec": {"claim": "data-web-2"},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn a_listing_sorts_objects_into_linked_and_asked() {
    let managed = json!({"app.kubernetes.io/managed-by": "drainer"});
    let mut listing = Listing::default();
    // drainer's own, from before the drain label: linked by its name.
    listing.sort(&object(
        "d-1",
        managed.clone(),
        json!({}),
        json!({"state": "queued"}),
    ));
    // A request drainer took, with an action asked.
    listing.sort(&object(
        "nightly",
        json!({"app.kubernetes.io/managed-by": "drainer", "drainer.io/drain": "d-1"}),
        json!({"drainer.io/action": " cancel ", "drainer.io/action-reason": ""}),
        Value::Null,
    ));
    // A user's new request, and one drainer rejected.
    listing.sort(&object("fresh", json!({}), json!({}), Value::Null));
    listing.sort(&object(
        "bad",
        json!({"team": "a"}),
        json!({}),
        json!({"state": "rejected", "conditions": [{"type": "Accepted", "status": "False",
               "reason": "ClaimNotFound", "lastTransitionTime": "2026-12-07T10:00:05Z"}]}),
    ));
    let linked = &listing.linked[&("shop".to_owned(), "d-1".to_owned())];
    assert_eq!(linked.len(), 2);
    assert!(linked[0].own && !linked[1].own);
    assert_eq!(linked[0].action, None);
    assert_eq!(
        linked[1].action,
        Some(ActionAsked {
            action: "cancel".into(),
            reason: None
        })
    );
    assert_eq!(redundant_own(linked), Some(0));
    assert_eq!(redundant_own(&linked[..1]), None);
    assert_eq!(redundant_own(&linked[1..]), None);
    let names: Vec<&str> = listing.asked.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["fresh", "bad"]);
    let created = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(listing.asked[0].created_ms, created);
    assert_eq!(listing.asked[0].rejected_ms, None);
    assert_eq!(listing.asked[1].rejected_ms, Some(created + 5000));
    assert_eq!(listing.asked[0].spec["claim"], "data-web-2");
}
