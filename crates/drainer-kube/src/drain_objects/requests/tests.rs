//! [`judge_request`], [`judge_action`] and [`action_outcome`]: what drainer does about what
//! users ask through Drain objects.

use super::*;

const NOW: i64 = 1_000_000_000;
const TTL: i64 = 7 * 86_400_000;

fn asked(spec: Value, rejected_ms: Option<i64>) -> RequestObject {
    RequestObject {
        namespace: "shop".into(),
        name: "nightly".into(),
        created_ms: NOW - 1000,
        spec,
        rejected_ms,
    }
}

fn drain(state: DrainState, hold: Option<&str>) -> Drain {
    Drain {
        id: "d-1".into(),
        namespace: "shop".into(),
        pvc: "data-web-2".into(),
        pod: None,
        reason: "handoff".into(),
        state,
        attempts: 1,
        max_attempts: 3,
        not_before_ms: 0,
        lease_owner: None,
        lease_expires_ms: None,
        snapshot: None,
        last_error: None,
        created_ms: 0,
        updated_ms: 0,
        finished_ms: None,
        facts: drainer_core::ledger::Facts::default()
            .with(crate::facts::HOLD, hold.map(str::to_owned)),
    }
}

fn action(action: &str, reason: Option<&str>) -> ActionAsked {
    ActionAsked {
        action: action.into(),
        reason: reason.map(str::to_owned),
    }
}

#[test]
fn a_request_names_a_claim_of_its_namespace_and_nothing_of_drainers() {
    let claim = VolumeId::new("shop", "data-web-2").unwrap();
    let cases: [(Value, Judgement); 4] = [
        (
            json!({"claim": "data-web-2"}),
            Judgement::Request {
                claim: claim.clone(),
                reason: "Drain object nightly".into(),
            },
        ),
        (
            json!({"claim": "data-web-2", "reason": "before the upgrade"}),
            Judgement::Request {
                claim: claim.clone(),
                reason: "before the upgrade".into(),
            },
        ),
        (
            json!({"claim": "data-web-2", "reason": null}),
            Judgement::Request {
                claim,
                reason: "Drain object nightly".into(),
            },
        ),
        (
            json!({"claim": "data-web-2", "requestedBy": "admin"}),
            Judgement::Reject {
                reason: "InvalidSpec",
                message: "spec.requestedBy is drainer's to write: the requester of this drain is the object, drain:shop/nightly".into(),
            },
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            judge_request(&asked(spec.clone(), None), NOW, TTL),
            expected,
            "{spec}"
        );
    }
    let long = "x".repeat(201);
    for bad in [
        json!({}),
        json!(null),
        json!({"claim": 7}),
        json!({"claim": "Data_Web"}),
        json!({"claim": "../etc"}),
        json!({"claim": ""}),
        json!({"claim": "data-web-2", "reason": "line\nbreak"}),
        json!({"claim": "data-web-2", "reason": long}),
        json!({"claim": "data-web-2", "reason": "  "}),
        json!({"claim": "data-web-2", "reason": 3}),
    ] {
        let judged = judge_request(&asked(bad.clone(), None), NOW, TTL);
        assert!(
            matches!(
                judged,
                Judgement::Reject {
                    reason: "InvalidSpec",
                    ..
                }
            ),
            "{bad}: {judged:?}"
        );
    }
}

#[test]
fn a_rejected_request_is_left_alone_then_deleted_after_the_ttl() {
    let spec = json!({"claim": "data-web-2"});
    assert_eq!(
        judge_request(&asked(spec.clone(), Some(NOW - TTL + 1)), NOW, TTL),
        Judgement::Nothing
    );
    assert_eq!(
        judge_request(&asked(spec.clone(), Some(NOW - TTL)), NOW, TTL),
        Judgement::Delete
    );
    // A bad spec rejected earlier is not judged again (the spec is immutable).
    assert_eq!(
        judge_request(&asked(json!({}), Some(NOW)), NOW, TTL),
        Judgement::Nothing
    );
}

#[test]
fn actions_follow_the_http_apis_rules() {
    let failing = drain(DrainState::Failing, None);
    let held = drain(DrainState::Copying, Some("drainer-hold-d-1"));
    let apply = |event, why: Option<&str>| ActionPlan::Apply {
        event,
        why: why.map(str::to_owned),
    };
    let cases = [
        // (drain, action, expected: Ok(plan) or Err(refusal reason))
        (
            &failing,
            action("retry", None),
            Ok(apply(Event::RetriedByHand, None)),
        ),
        (
            &failing,
            action("cancel", None),
            Ok(apply(Event::Cancelled, None)),
        ),
        (
            &failing,
            action("cancel", Some("wrong claim")),
            Ok(apply(Event::Cancelled, Some("wrong claim"))),
        ),
        (
            &held,
            action("abandon", Some("data not needed")),
            Ok(apply(Event::Abandoned, Some("data not needed"))),
        ),
        (&held, action("cancel", None), Err("ClaimHeld")),
        (&failing, action("abandon", None), Err("InvalidReason")),
        (
            &failing,
            action("retry", Some("tab\there")),
            Err("InvalidReason"),
        ),
        (&failing, action("delete", None), Err("UnknownAction")),
        (&failing, action("", None), Err("UnknownAction")),
        (&failing, action("Retry", None), Err("UnknownAction")),
    ];
    for (d, asked, expected) in cases {
        let plan = judge_action(d, &asked);
        match (&plan, expected) {
            (ActionPlan::Refuse { reason, .. }, Err(wanted)) => {
                assert_eq!(*reason, wanted, "{asked:?}")
            }
            (plan, Ok(wanted)) => assert_eq!(*plan, wanted, "{asked:?}"),
            (plan, Err(wanted)) => panic!("{asked:?}: {plan:?}, wanted a refusal {wanted}"),
        }
    }
    let ActionPlan::Refuse { message, .. } = judge_action(&held, &action("cancel", None)) else {
        panic!("a held claim's drain was cancelled");
    };
    assert!(
        message.contains("drainer-hold-d-1") && message.contains("drainer.io/action=abandon"),
        "{message}"
    );
}

#[test]
fn an_actions_outcome_is_a_condition_and_a_repeat_counts_as_done() {
    let by = "drain:shop/nightly";
    let cancelled = drain(DrainState::Cancelled, None);
    let applied = action_outcome(Event::Cancelled, by, &Ok(cancelled.clone()), NOW);
    assert_eq!(
        (
            applied.type_.as_str(),
            applied.status.as_str(),
            applied.reason.as_str()
        ),
        (ACTION_APPLIED, "True", "Cancelled")
    );
    assert_eq!(
        applied.message.as_deref(),
        Some("cancelled by drain:shop/nightly")
    );
    let conflict = |state| {
        Err(Refused::Conflict {
            id: "d-1".into(),
            state,
            action: "cancelled",
        })
    };
    // The same annotation applied twice (a second replica; a pass after a crash): done.
    let again = action_outcome(Event::Cancelled, by, &conflict(DrainState::Cancelled), NOW);
    assert_eq!(again.status, "True");
    // Cancelling a completed drain: refused, saying why.
    let refused = action_outcome(Event::Cancelled, by, &conflict(DrainState::Completed), NOW);
    assert_eq!(
        (refused.status.as_str(), refused.reason.as_str()),
        ("False", "NotAllowed")
    );
    assert!(refused.message.unwrap().contains("completed"));
    let retried = action_outcome(Event::RetriedByHand, by, &conflict(DrainState::Queued), NOW);
    assert_eq!(retried.status, "False");
    let busy = Err(Refused::VolumeBusy {
        id: "d-1".into(),
        volume: "shop/data-web-2".into(),
        active: "d-2".into(),
    });
    assert_eq!(
        action_outcome(Event::RetriedByHand, by, &busy, NOW).reason,
        "VolumeBusy"
    );
    let gone = Err(Refused::NotFound("d-1".into()));
    assert_eq!(
        action_outcome(Event::Abandoned, by, &gone, NOW).reason,
        "NotFound"
    );
    assert_eq!(principal("shop", "nightly"), by);
}
