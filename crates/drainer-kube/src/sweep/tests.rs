//! The sweep's pure decisions (table tests), and the sweep's cost: a sweep over 1,000
//! claims in 100 StatefulSets, in memory (`cargo test --release --lib sweep_cpu -- --ignored
//! --nocapture`, or `scripts/bench-sweep`).

use super::*;
use crate::sweep_records::RememberedSet;
use serde_json::json;
use std::time::Duration;

fn set(name: &str, replicas: i32, templates: &[&str]) -> StatefulSet {
    let templates: Vec<_> = templates
        .iter()
        .map(|t| json!({"metadata": {"name": t}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": {"replicas": replicas, "selector": {}, "serviceName": name, "template": {},
                 "volumeClaimTemplates": templates},
    }))
    .unwrap()
}

fn claim(ns: &str, name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "creationTimestamp": "1970-01-01T00:00:00Z"},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap()
}

fn pod(ns: &str, name: &str, claims: &[&str]) -> Pod {
    let volumes: Vec<_> = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"containers": [], "volumes": volumes}
    }))
    .unwrap()
}

fn completed(id: &str, pvc: &str, finished: i64) -> Drain {
    Drain {
        id: id.into(),
        namespace: "shop".into(),
        pvc: pvc.into(),
        pod: None,
        reason: "handoff".into(),
        state: drainer_core::lifecycle::DrainState::Completed,
        attempts: 1,
        max_attempts: 3,
        not_before_ms: 0,
        lease_owner: None,
        lease_expires_ms: None,
        snapshot: Some(format!("s-{id}")),
        last_error: None,
        created_ms: finished - 10,
        updated_ms: finished,
        finished_ms: Some(finished),
        facts: drainer_core::ledger::Facts::default()
            .with(crate::facts::PVC_UID, Some(format!("uid-{pvc}"))),
    }
}

fn sighting(pvc: &str, mounted: Option<i64>, orphaned: Option<i64>) -> ClaimSighting {
    ClaimSighting {
        pvc_uid: format!("uid-{pvc}"),
        namespace: "shop".into(),
        pvc: pvc.into(),
        statefulset: Some("web".into()),
        last_mounted_ms: mounted,
        orphaned_since_ms: orphaned,
        last_seen_ms: 0,
    }
}

fn view(claims: Vec<PersistentVolumeClaim>, pods: Vec<Pod>, sets: Vec<StatefulSet>) -> View {
    View {
        claims: claims.into_iter().map(Arc::new).collect(),
        pods: pods.into_iter().map(Arc::new).collect(),
        sets: sets.into_iter().map(Arc::new).collect(),
    }
}

fn uids(view: &View) -> HashSet<&str> {
    view.claims
        .iter()
        .filter_map(|c| c.metadata.uid.as_deref())
        .collect()
}

#[test]
fn a_sweep_queues_uncovered_orphans_and_records_what_it_saw() {
    let mut opted = claim("shop", "data-web-5");
    opted.metadata.labels = Some([("drainer.io/drain".to_owned(), "false".to_owned())].into());
    let v = view(
        vec![
            claim("shop", "data-web-0"),
            claim("shop", "data-web-1"),
            claim("shop", "data-web-2"),
            claim("shop", "data-web-3"),
            claim("shop", "data-web-4"),
            opted,
            claim("shop", "scratch"),
        ],
        vec![pod("shop", "web-0", &["data-web-0"])],
        vec![set("web", 2, &["data"])],
    );
    let seen = classify(&v, &[]);
    let recorded = [
        sighting("data-web-1", Some(10), Some(50)),
        sighting("data-web-3", Some(100), None),
        sighting("data-web-4", Some(500), None),
        sighting("gone", Some(1), None),
    ];
    let drains = [
        completed("d3", "data-web-3", 200),
        completed("d4", "data-web-4", 300),
    ];
    let decided = decide(&seen, &uids(&v), &recorded, &drains, 1000, 3);
    let queued: Vec<&str> = decided
        .drains
        .iter()
        .map(|d| d.volume.name.as_str())
        .collect();
    assert_eq!(
        queued,
        ["data-web-2", "data-web-4"],
        "drained before its last use: again"
    );
    let new = &decided.drains[0];
    assert_eq!(
        new.reason,
        "sweep: ordinal 2 of StatefulSet web is scaled away (live ordinals 0..2; pod web-2's claim)"
    );
    assert_eq!(
        (
            new.wait_for_release,
            new.requested_by.as_deref(),
            new.max_attempts
        ),
        (false, Some("sweep"), 3)
    );
    assert_eq!(new.facts.get(crate::facts::PVC_UID), Some("uid-data-web-2"));
    let verdicts: Vec<(&str, Option<Verdict>, bool, Option<&str>)> = decided
        .findings
        .iter()
        .map(|f| (f.volume.as_str(), f.verdict, f.drain, f.drain_id.as_deref()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("shop/data-web-0", Some(Verdict::Live), false, None),
            ("shop/data-web-1", Some(Verdict::Live), false, None),
            ("shop/data-web-2", Some(Verdict::Orphaned), true, None),
            (
                "shop/data-web-3",
                Some(Verdict::Orphaned),
                false,
                Some("d3")
            ),
            ("shop/data-web-4", Some(Verdict::Orphaned), true, None),
            ("shop/data-web-5", Some(Verdict::OptedOut), false, None),
        ]
    );
    let written: Vec<(&str, Option<i64>, Option<i64>)> = decided
        .sightings
        .iter()
        .map(|s| (s.pvc.as_str(), s.last_mounted_ms, s.orphaned_since_ms))
        .collect();
    assert_eq!(
        written,
        [
            ("data-web-0", Some(1000), None),
            ("data-web-1", None, None),
            ("data-web-2", None, Some(1000)),
            ("data-web-3", None, Some(1000)),
            ("data-web-4", None, Some(1000)),
            ("data-web-5", None, Some(1000)),
        ]
    );
    assert_eq!(decided.forget, ["uid-gone"]);
}

#[test]
fn a_second_sweep_writes_only_what_changed() {
    let v = view(
        vec![claim("shop", "data-web-0"), claim("shop", "data-web-2")],
        vec![pod("shop", "web-0", &["data-web-0"])],
        vec![set("web", 1, &["data"])],
    );
    let seen = classify(&v, &[]);
    let recorded = [
        sighting("data-web-0", Some(900), None),
        sighting("data-web-2", Some(10), Some(500)),
    ];
    let mut active = completed("d2", "data-web-2", 900);
    active.state = drainer_core::lifecycle::DrainState::Queued;
    let decided = decide(&seen, &uids(&v), &recorded, &[active], 1000, 3);
    assert!(decided.drains.is_empty(), "{:?}", decided.drains);
    let written: Vec<&str> = decided.sightings.iter().map(|s| s.pvc.as_str()).collect();
    assert_eq!(written, ["data-web-0"], "only the mount is news");
    assert!(decided.findings[1].why.contains("drain d2 is queued"));
}

#[test]
fn statefulsets_are_remembered_when_new_or_changed() {
    let web = set("web", 1, &["data"]);
    let bare = set("bare", 1, &[]);
    let v = view(vec![], vec![], vec![web, bare]);
    let fresh = sets_to_remember(&v, &[]);
    assert_eq!(
        fresh,
        [RememberedSet {
            uid: "uid-web".into(),
            namespace: "shop".into(),
            name: "web".into(),
            templates: vec!["data".into()],
            opted_out: false,
        }],
        "a set without templates has no claims to remember"
    );
    assert!(sets_to_remember(&v, &fresh).is_empty());
    let mut quiet = (*v.sets[0]).clone();
    quiet.metadata.annotations = Some([("drainer.io/drain".to_owned(), "false".to_owned())].into());
    let changed = view(vec![], vec![], vec![quiet]);
    assert!(sets_to_remember(&changed, &fresh)[0].opted_out);
}

#[test]
fn a_deleted_statefulset_is_recognised_from_memory() {
    let remembered = sets_to_remember(&view(vec![], vec![], vec![set("web", 3, &["data"])]), &[]);
    let after = view(vec![claim("shop", "data-web-1")], vec![], vec![]);
    let seen = classify(&after, &remembered);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].verdict, Verdict::Orphaned);
    assert!(
        seen[0].why.contains("StatefulSet web no longer exists"),
        "{}",
        seen[0].why
    );
    assert!(classify(&after, &[]).is_empty(), "never seen, not guessed");
}

#[test]
fn quantities_are_read_as_kubernetes_writes_them() {
    let cases = [
        ("16Mi", Some(16 << 20)),
        ("1Gi", Some(1 << 30)),
        ("1.5Gi", Some(3 << 29)),
        ("500M", Some(500_000_000)),
        ("2k", Some(2000)),
        ("1e3", Some(1000)),
        ("12", Some(12)),
        ("100m", Some(1)),
        ("", None),
        ("abc", None),
        ("-1Gi", None),
        ("1Xi", None),
    ];
    for (quantity, bytes) in cases {
        assert_eq!(quantity_bytes(quantity), bytes, "{quantity}");
    }
}

#[test]
fn orphan_rows_say_size_age_and_drain() {
    let mut bound = claim("shop", "data-web-2");
    bound.status = Some(
        serde_json::from_value(json!({"phase": "Bound", "capacity": {"storage": "2Gi"}})).unwrap(),
    );
    let v = view(vec![bound.clone()], vec![], vec![set("web", 1, &["data"])]);
    let seen = classify(&v, &[]);
    let done = completed("d1", "data-web-2", 5_000);
    let orphaned = sighting("data-web-2", None, Some(4_000));
    let row = orphan_row(&seen[0], Some(&bound), Some(&orphaned), &[&done], 10_000);
    assert_eq!(
        (row.size.as_deref(), row.size_bytes),
        (Some("2Gi"), Some(2 << 30)),
        "capacity over request"
    );
    assert_eq!(row.age_seconds, Some(6), "since it was orphaned");
    assert_eq!(
        row.orphaned_since.as_deref(),
        Some("1970-01-01T00:00:04.000Z")
    );
    assert_eq!(row.drain.as_ref().map(|d| d.id.as_str()), Some("d1"));
    let unknown = orphan_row(&seen[0], Some(&bound), None, &[], 10_000);
    assert_eq!(unknown.age_seconds, Some(10), "since it was created");
}

/// 1,000 claims in 100 StatefulSets of 10 claims each (half scaled away), 500 pods.
fn large_view() -> View {
    let mut claims = Vec::new();
    let mut pods = Vec::new();
    let mut sets = Vec::new();
    for s in 0..100 {
        let name = format!("app-{s}");
        sets.push(set(&name, 5, &["data", "logs"]));
        for ordinal in 0..5 {
            let (data, logs) = (
                format!("data-{name}-{ordinal}"),
                format!("logs-{name}-{ordinal}"),
            );
            claims.push(claim("shop", &data));
            claims.push(claim("shop", &logs));
            if ordinal < 3 {
                pods.push(pod("shop", &format!("{name}-{ordinal}"), &[&data, &logs]));
            }
        }
    }
    // 100 sets × 5 ordinals × 2 templates = 1,000 claims; ordinals 3 and 4 of replicas 5
    // are live but unmounted; scale every set to 3 so they are scaled away.
    for s in &mut sets {
        s.spec.replicas = Some(3);
    }
    view(claims, pods, sets)
}

/// Process CPU time in seconds: the run time of every live thread (ns, from each thread's
/// schedstat), or else user + system time at 100 ticks a second.
fn cpu_seconds() -> f64 {
    let threads = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    let ns: u64 = threads
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    if ns > 0 {
        return ns as f64 / 1e9;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A cluster whose caches hold `view` (its client points nowhere: a sweep makes no call).
fn cluster_of(view: &View) -> Cluster {
    use crate::mock::{caches, cluster};
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    Cluster {
        pods: caches(view.pods.iter().map(|o| (**o).clone())),
        claims: caches(view.claims.iter().map(|o| (**o).clone())),
        sets: caches(view.sets.iter().map(|o| (**o).clone())),
        ..cluster(kube::Client::try_from(config).unwrap())
    }
}

/// A StatefulSet that only the watch saw, deleted (with its pods) before any sweep: an
/// on-demand sweep, and a dry run before it, find its claims orphaned; the real one queues a
/// drain for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_finds_the_claims_of_a_statefulset_only_the_watch_saw_deleted() {
    let v = view(
        vec![claim("shop", "data-db-0"), claim("shop", "data-db-1")],
        vec![],
        vec![],
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    let store = Store::open(
        &format!("file://{}", dir.path().join("store").display()),
        &drainer_core::store::StoreOptions {
            timeout: Duration::from_secs(10),
            create: true,
            part_size: 8 << 20,
        },
    )
    .unwrap();
    let cluster = cluster_of(&v);
    let mut watch = cluster.seen_sets.follower();
    let db = set("db", 2, &["data"]);
    watch(&kube::runtime::watcher::Event::Apply(db.clone()));
    watch(&kube::runtime::watcher::Event::Delete(db));
    let sweeper = KubeSweeper::new(Sweeping {
        cluster,
        ledger: ledger.clone(),
        store,
        metrics: Arc::default(),
        notifier: Arc::new(drainer_server::notify::Log),
        intake: None,
        max_attempts: 3,
        lease: None,
    });
    for dry_run in [true, false] {
        let report = sweeper.sweep(dry_run).await.unwrap();
        assert_eq!(report.findings.len(), 2, "dry_run={dry_run}: {report:?}");
        for f in &report.findings {
            assert!(f.drain, "{f:?}");
            assert!(
                f.why
                    .contains("StatefulSet db no longer exists (remembered by drainer"),
                "{}",
                f.why
            );
        }
        assert_eq!(report.drains.len(), if dry_run { 0 } else { 2 });
    }
    assert_eq!(ledger.remembered_sets().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure, not a test: run with --ignored --nocapture"]
async fn sweep_cpu_over_1000_claims_in_100_statefulsets() {
    let v = large_view();
    assert_eq!(
        (v.claims.len(), v.sets.len(), v.pods.len()),
        (1000, 100, 300)
    );
    // The pure part: classify and decide, as a sweep with nothing recorded yet does.
    let rounds = 20;
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut queued = 0;
    for _ in 0..rounds {
        let seen = classify(&v, &[]);
        let decided = decide(&seen, &uids(&v), &[], &[], 1, 3);
        queued = decided.drains.len();
    }
    let pure_cpu = (cpu_seconds() - cpu) / f64::from(rounds);
    let pure_wall = wall.elapsed().as_secs_f64() / f64::from(rounds);
    assert_eq!(queued, 400);
    // The whole sweep: caches, the SQLite ledger (reads, sightings, 400 new drains), report.
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    let store = Store::open(
        &format!("file://{}", dir.path().join("store").display()),
        &drainer_core::store::StoreOptions {
            timeout: Duration::from_secs(10),
            create: true,
            part_size: 8 << 20,
        },
    )
    .unwrap();
    let sweeper = KubeSweeper::new(Sweeping {
        cluster: cluster_of(&v),
        ledger,
        store,
        metrics: Arc::default(),
        notifier: Arc::new(drainer_server::notify::Log),
        intake: None,
        max_attempts: 3,
        lease: None,
    });
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let first = sweeper.sweep(false).await.unwrap();
    let (first_cpu, first_wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
    assert_eq!((first.findings.len(), first.drains.len()), (1000, 400));
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for _ in 0..rounds {
        let again = sweeper.sweep(false).await.unwrap();
        assert!(again.drains.is_empty());
    }
    let next_cpu = (cpu_seconds() - cpu) / f64::from(rounds);
    let next_wall = wall.elapsed().as_secs_f64() / f64::from(rounds);
    println!(
        "sweep over 1,000 claims in 100 StatefulSets (300 pods, 400 orphans):\n  \
         pure (classify + decide): {:.1} ms CPU, {:.1} ms wall per sweep\n  \
         whole, first (400 drains queued, 1,000 sightings, 100 StatefulSets remembered, SQLite): {:.1} ms CPU, {:.1} ms wall\n  \
         whole, later (nothing new; 600 sightings rewritten): {:.1} ms CPU, {:.1} ms wall per sweep",
        pure_cpu * 1e3,
        pure_wall * 1e3,
        first_cpu * 1e3,
        first_wall * 1e3,
        next_cpu * 1e3,
        next_wall * 1e3,
    );
}
