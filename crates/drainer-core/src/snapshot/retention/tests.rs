//! Table tests of retention policies: each rule, combinations, ties, UTC periods and ISO
//! weeks, the empty policy, and policy text (flags and annotations).

use super::*;

fn complete(id: &str, completed: &str) -> Listed {
    crate::snapshot::catalog::complete_at(id, completed)
}

fn damaged(id: &str) -> Listed {
    Listed::Damaged {
        snapshot: id.into(),
        volume: "a/b".into(),
        damaged: "bad".into(),
    }
}

/// Snapshots `s0`, `s1`, … at the given times (oldest first by name).
fn at(times: &[&str]) -> Vec<Listed> {
    times
        .iter()
        .enumerate()
        .map(|(i, t)| complete(&format!("s{i:02}"), t))
        .collect()
}

fn kept(listed: &[Listed], policy: &str) -> Vec<String> {
    let policy: Policy = policy.parse().unwrap();
    let latest = listed.last().map(|l| l.snapshot().to_owned());
    decide(listed, latest.as_deref(), &policy).kept()
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Twelve snapshots: several a day, across a month end, a year end and ISO week 53 of 2026.
fn calendar() -> Vec<Listed> {
    at(&[
        "2026-11-30T08:00:00Z", // s00 Mon, W49
        "2026-12-27T10:00:00Z", // s01 Sun, W52
        "2026-12-28T09:00:00Z", // s02 Mon, W53
        "2026-12-28T17:00:00Z", // s03 Mon, W53
        "2026-12-31T23:30:00Z", // s04 Thu, W53
        "2027-01-01T00:30:00Z", // s05 Fri, W53 of 2026, year 2027
        "2027-01-03T12:00:00Z", // s06 Sun, W53 of 2026
        "2027-01-04T06:00:00Z", // s07 Mon, W01 of 2027
        "2027-01-04T06:40:00Z", // s08 same hour
        "2027-01-04T07:10:00Z", // s09
        "2027-01-05T00:00:00Z", // s10 midnight exactly
        "2027-01-05T00:00:00Z", // s11 tie with s10
    ])
}

#[test]
fn each_rule_alone() {
    let cases: &[(&str, &[&str])] = &[
        ("last=1", &["s11"]),
        ("last=3", &["s09", "s10", "s11"]),
        (
            "last=100",
            &[
                "s00", "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10", "s11",
            ],
        ),
        // Newest first: s11 (hour 00 of the 5th), s09 (07 of the 4th), s08 (06 of the 4th).
        ("hourly=3", &["s08", "s09", "s11"]),
        ("daily=3", &["s06", "s09", "s11"]),
        // ISO weeks: 2027-W01 (s11), 2026-W53 (s06, the newest of Mon 28 Dec .. Sun 3 Jan).
        ("weekly=2", &["s06", "s11"]),
        ("weekly=4", &["s00", "s01", "s06", "s11"]),
        ("monthly=2", &["s04", "s11"]),
        ("yearly=5", &["s04", "s11"]),
        // Within 1 day of the newest (2027-01-05T00:00): from 2027-01-04T00:00 on.
        ("within=1d", &["s07", "s08", "s09", "s10", "s11"]),
        ("within=25h", &["s07", "s08", "s09", "s10", "s11"]),
        ("within=5h", &["s10", "s11"]),
    ];
    let listed = calendar();
    for (policy, expected) in cases {
        assert_eq!(kept(&listed, policy), ids(expected), "{policy}");
    }
}

#[test]
fn rules_add_up_and_every_reason_is_listed() {
    let listed = calendar();
    assert_eq!(
        kept(&listed, "last=2,weekly=2,yearly=2"),
        ids(&["s04", "s06", "s10", "s11"])
    );
    let plan = decide(
        &listed,
        Some("s11"),
        &"last=2,daily=2,weekly=1".parse().unwrap(),
    );
    let newest = &plan.snapshots[0];
    assert_eq!(newest.snapshot, "s11");
    assert_eq!(
        newest.reasons,
        ids(&["latest", "last 1/2", "daily 2027-01-05", "weekly 2027-W01"])
    );
    let s09 = plan.snapshots.iter().find(|d| d.snapshot == "s09").unwrap();
    assert_eq!(s09.reasons, ids(&["daily 2027-01-04"]));
    let s00 = plan.snapshots.iter().find(|d| d.snapshot == "s00").unwrap();
    assert!(!s00.keep);
    assert_eq!(s00.reasons, ids(&["no rule keeps it"]));
    assert_eq!(plan.deleted().len() + plan.kept().len(), listed.len());
}

#[test]
fn ties_keep_one_per_period_and_count_each_for_last() {
    // s10 and s11 completed at the same instant: the later id counts as the newer.
    let listed = calendar();
    assert_eq!(kept(&listed, "last=2"), ids(&["s10", "s11"]));
    assert_eq!(kept(&listed, "daily=1"), ids(&["s11"]));
    assert_eq!(kept(&listed, "within=1s"), ids(&["s10", "s11"]));
}

#[test]
fn periods_are_utc_whatever_zone_the_time_is_written_in() {
    // 23:30 at -02:00 is 01:30 UTC the next day; 00:30 at +02:00 is 22:30 UTC the day before.
    let listed = at(&[
        "2026-12-01T23:30:00-02:00", // s00: 2026-12-02 UTC
        "2026-12-02T12:00:00Z",      // s01: 2026-12-02
        "2026-12-03T00:30:00+02:00", // s02: 2026-12-02 UTC
        "2026-12-03T08:00:00Z",      // s03: 2026-12-03
    ]);
    assert_eq!(kept(&listed, "daily=2"), ids(&["s02", "s03"]));
    let plan = decide(&listed, Some("s03"), &"daily=2".parse().unwrap());
    let s02 = plan.snapshots.iter().find(|d| d.snapshot == "s02").unwrap();
    assert_eq!(s02.reasons, ids(&["daily 2026-12-02"]));
    assert_eq!(s02.completed.as_deref(), Some("2026-12-02T22:30:00.000Z"));
}

#[test]
fn the_empty_policy_keeps_everything() {
    let listed = calendar();
    let plan = decide(&listed, Some("s11"), &Policy::default());
    assert!(plan.snapshots.iter().all(|d| d.keep));
    assert!(plan.deleted().is_empty());
    let s00 = plan.snapshots.iter().find(|d| d.snapshot == "s00").unwrap();
    assert_eq!(s00.reasons, ids(&["no policy (keeps everything)"]));
    assert_eq!(kept(&listed, "all").len(), 12);
}

#[test]
fn latest_newest_and_damaged_snapshots_always_stay() {
    let mut listed = at(&[
        "2026-12-01T10:00:00Z",
        "2026-12-01T11:00:00Z",
        "2026-12-01T12:00:00Z",
    ]);
    listed.insert(1, damaged("s01x"));
    listed.push(complete("s03", "not a time"));
    // The pointer names s01 (say a commit died before moving it): s01 and the newest stay.
    let plan = decide(&listed, Some("s01"), &Policy::last(1));
    assert_eq!(plan.kept(), ids(&["s01", "s01x", "s02", "s03"]));
    assert_eq!(plan.deleted(), ids(&["s00"]));
    let why = |id: &str| {
        plan.snapshots
            .iter()
            .find(|d| d.snapshot == id)
            .unwrap()
            .reasons
            .clone()
    };
    assert_eq!(why("s02"), ids(&["newest", "last 1/1"]));
    assert_eq!(why("s01"), ids(&["latest"]));
    assert_eq!(why("s01x"), ids(&["damaged (never pruned)"]));
    assert_eq!(
        why("s03"),
        ids(&["completion time unreadable (never pruned)"])
    );
}

#[test]
fn no_policy_deletes_every_snapshot() {
    for listed in [
        at(&["2026-12-01T10:00:00Z"]),
        at(&["2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z"]),
    ] {
        for policy in ["last=1", "within=1s", "yearly=1", "hourly=1"] {
            let plan = decide(&listed, None, &policy.parse().unwrap());
            assert!(!plan.kept().is_empty(), "{policy}");
        }
    }
    assert_eq!(decide(&[], None, &Policy::last(1)), Plan::default());
}

#[test]
fn policy_text_round_trips() {
    for (text, canonical) in [
        (
            "last=3,within=30d,daily=7,weekly=4",
            "last=3,within=4w2d,daily=7,weekly=4",
        ),
        (" weekly = 4 , last=3 ", "last=3,weekly=4"),
        ("within=1w3d12h", "within=1w3d12h"),
        ("within=90m", "within=1h30m"),
        ("within=45s", "within=45s"),
        (
            "hourly=24,monthly=12,yearly=3",
            "hourly=24,monthly=12,yearly=3",
        ),
        ("all", "all"),
    ] {
        let policy: Policy = text.parse().unwrap();
        assert_eq!(policy.to_string(), canonical, "{text}");
        assert_eq!(canonical.parse::<Policy>().unwrap(), policy, "{text}");
    }
}

#[test]
fn bad_policy_text_is_a_clear_error() {
    for (text, says) in [
        ("", "empty retention policy"),
        ("last", "\"last\" is not RULE=VALUE"),
        ("last=3,", "\"\" is not RULE=VALUE"),
        ("keep=3", "unknown rule \"keep\""),
        ("last=-1", "last: \"-1\" is not a whole number"),
        ("last=0", "last: 0 keeps nothing"),
        ("daily=seven", "daily: \"seven\" is not a whole number"),
        ("last=1,last=2", "last is given twice"),
        ("within=30", "within: \"30\" is not a duration"),
        ("within=1y", "within: \"1y\" is not a duration"),
        ("within=0d", "within: \"0d\" is zero"),
        ("within=99999w", "longer than 100 years"),
    ] {
        let error = text.parse::<Policy>().unwrap_err();
        assert!(error.contains(says), "{text:?}: {error}");
    }
}

#[test]
fn the_claim_annotation_wins_over_the_statefulset_which_wins_over_flags() {
    let flags = Policy::last(5);
    assert_eq!(effective(&flags, None, None), Ok((flags, "flags")));
    assert_eq!(
        effective(&flags, Some("daily=7"), None),
        Ok(("daily=7".parse().unwrap(), "StatefulSet annotation"))
    );
    assert_eq!(
        effective(&flags, Some("daily=7"), Some("all")),
        Ok((Policy::default(), "claim annotation"))
    );
    let error = effective(&flags, Some("daily=7"), Some("last=x")).unwrap_err();
    assert_eq!(
        error,
        "claim annotation drainer.io/retention=\"last=x\": last: \"x\" is not a whole number of snapshots"
    );
    let error = effective(&flags, Some("nope"), None).unwrap_err();
    assert!(error.starts_with("StatefulSet annotation"), "{error}");
}
