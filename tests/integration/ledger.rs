//! The ledger's copy-run records, the same tests on SQLite and on PostgreSQL.

use crate::support::fresh_postgres_database;
use drainer::Ledger;
use drainer_core::ledger::RunState;
use drainer_core::snapshot::compress::{Codec, Compressed};
use drainer_core::snapshot::manifest::Content;
use drainer_core::snapshot::{Compression, PartialUpload, UploadedPart};
use drainer_core::snapshot::{SnapshotId, SnapshotSummary, StoredFile};
use drainer_kube::facts::KubeLedger;
use futures::TryStreamExt;

fn stored(path: &[u8]) -> StoredFile {
    StoredFile {
        path: path.to_vec(),
        size: 42,
        mtime_ns: -5,
        ctime_ns: 1_700_000_000_000_000_001,
        ino: u64::MAX - 1,
        content: Content {
            blake3: "hash".into(),
            object: format!("snapshots/x/files/{}", String::from_utf8_lossy(path)),
            // Files under `a/` are stored compressed: the ledger keeps how.
            compressed: path.starts_with(b"a/").then_some(Compressed {
                codec: Codec::Zstd,
                stored_size: 17,
            }),
        },
    }
}

fn summary(id: &SnapshotId) -> SnapshotSummary {
    SnapshotSummary {
        snapshot: id.to_string(),
        volume: "ns/pvc".into(),
        parent: None,
        created: String::new(),
        completed: String::new(),
        entries: 3,
        files: 2,
        bytes: 84,
        skipped: 0,
        unreadable: 0,
        uploaded_files: 2,
        uploaded_bytes: 84,
        manifest_blake3: String::new(),
        manifest_size: 0,
        drain: None,
    }
}

async fn runs_resume_and_keep_walk_order(ledger: Ledger) {
    let volume = "ns/pvc".parse().unwrap();
    let fresh = SnapshotId::generate();
    let run = ledger.begin("file:///s", &volume, &fresh).await.unwrap();
    assert!(!run.resumed);
    assert_eq!(run.snapshot, fresh);
    // Recorded out of order and with a path that byte order alone would misplace.
    let paths: [&[u8]; 5] = [b"b", b"a.c", b"a/b", b"a/\xffraw", b"a-"];
    let files: Vec<_> = paths.iter().map(|p| stored(p)).collect();
    ledger.record(&run, &files[..3]).await.unwrap();
    ledger.record(&run, &files[2..]).await.unwrap(); // a repeat is an update, not a duplicate

    let resumed = ledger
        .begin("file:///s", &volume, &SnapshotId::generate())
        .await
        .unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.id, run.id);
    assert_eq!(resumed.snapshot, fresh);
    let back: Vec<StoredFile> = ledger.stored_files(&resumed).try_collect().await.unwrap();
    let order: Vec<&[u8]> = back.iter().map(|f| f.path.as_slice()).collect();
    let expected: Vec<&[u8]> = vec![b"a/b", b"a/\xffraw", b"a-", b"a.c", b"b"];
    assert_eq!(order, expected, "progress comes back in walk order");
    assert_eq!(
        back[0],
        stored(b"a/b"),
        "every field round-trips, extreme values included"
    );
    assert!(back[0].content.compressed.is_some());
    assert_eq!(back[4], stored(b"b"), "a raw object stays raw");

    // An unfinished upload keeps how its parts are compressed, raw ones included.
    for compression in [Compression::Zstd { level: 7 }, Compression::Off] {
        let upload = PartialUpload {
            path: b"big".to_vec(),
            upload_id: "u-1".into(),
            part_size: 8 << 20,
            size: 40 << 20,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
            parts: vec![UploadedPart {
                id: "p0".into(),
                chaining_value: [7; 32],
            }],
            compression,
        };
        ledger.record_partial(&resumed, &upload).await.unwrap();
        let back = ledger.partial_upload(&resumed, b"big").await.unwrap();
        assert_eq!(back, Some(upload));
    }

    // Another store or volume is a different run.
    let other = ledger
        .begin("file:///other", &volume, &SnapshotId::generate())
        .await
        .unwrap();
    assert!(!other.resumed);

    ledger
        .interrupted(&resumed, "store went away")
        .await
        .unwrap();
    let record = ledger
        .runs(&volume)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    assert_eq!(record.attempts, 2);
    assert_eq!(record.last_error.as_deref(), Some("store went away"));

    ledger.finish(&resumed, &summary(&fresh)).await.unwrap();
    assert_eq!(
        ledger.recorded_files(&run.id).await.unwrap(),
        0,
        "progress rows are dropped when done"
    );
    let next = ledger
        .begin("file:///s", &volume, &SnapshotId::generate())
        .await
        .unwrap();
    assert!(!next.resumed, "a completed run is not resumed");
}

#[tokio::test]
async fn sqlite_ledger_resumes_runs_in_walk_order() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    assert_eq!(ledger.backend(), "sqlite");
    runs_resume_and_keep_walk_order(ledger).await;
}

#[tokio::test]
async fn postgres_ledger_resumes_runs_in_walk_order() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    assert_eq!(ledger.backend(), "postgres");
    runs_resume_and_keep_walk_order(ledger).await;
}

#[tokio::test]
async fn ledger_refuses_a_bad_url_with_a_clear_error() {
    let err = Ledger::open(
        Some("postgres://127.0.0.1:1/nothing"),
        std::path::Path::new("x"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot open ledger"), "{err}");
    assert!(err.is_transient(), "an unreachable database may come back");
}

/// Many handoffs at once, most of them in shared commits: every volume gets exactly one
/// active drain, exactly one request is told it created it, and repeats get the same drain.
async fn concurrent_handoffs_share_commits_without_mixing_answers(ledger: Ledger) {
    use drainer_core::ledger::NewDrain;
    let request = |pvcs: &[String]| -> Vec<NewDrain> {
        pvcs.iter()
            .map(|pvc| NewDrain {
                volume: format!("shop/{pvc}").parse().unwrap(),
                pod: Some("web-0".into()),
                reason: "handoff".into(),
                max_attempts: 3,
                wait_for_release: false,
                requested_by: Some("pod:shop/web-0".into()),
                facts: Default::default(),
            })
            .collect()
    };
    // 40 requests: request i names pvc-i and the shared pvc-(i % 5) twice over the set.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let ledger = ledger.clone();
        let pvcs = vec![format!("own-{i}"), format!("shared-{}", i % 5)];
        let wanted = request(&pvcs);
        tasks.spawn(async move { (pvcs, ledger.request_drains(&wanted).await.unwrap()) });
    }
    let mut created = std::collections::HashMap::<String, (String, usize)>::new();
    while let Some(done) = tasks.join_next().await {
        let (pvcs, answer) = done.unwrap();
        assert_eq!(answer.len(), pvcs.len(), "one answer per volume, in order");
        for (pvc, (drain, new)) in pvcs.iter().zip(answer) {
            assert_eq!(&drain.pvc, pvc, "each answer is for the volume asked");
            let entry = created.entry(pvc.clone()).or_insert((drain.id.clone(), 0));
            assert_eq!(entry.0, drain.id, "{pvc}: one active drain, whoever asks");
            entry.1 += usize::from(new);
        }
    }
    assert_eq!(created.len(), 45);
    for (pvc, (_, news)) in &created {
        assert_eq!(*news, 1, "{pvc}: exactly one request created its drain");
    }
    let again = ledger
        .request_drains(&request(&["shared-0".into()]))
        .await
        .unwrap();
    assert_eq!(again[0].0.id, created["shared-0"].0);
    assert!(!again[0].1, "a repeat while active is not new");
    let queued = ledger
        .drains(&drainer_core::ledger::DrainFilter::default(), 1000)
        .await
        .unwrap();
    assert_eq!(queued.len(), 45, "nothing recorded twice");
    for drain in &queued {
        let history = ledger.drain_events(&drain.id).await.unwrap();
        assert_eq!(history.len(), 1, "{}: one 'queued' event", drain.id);
    }
}

#[tokio::test]
async fn sqlite_ledger_groups_concurrent_handoffs() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    concurrent_handoffs_share_commits_without_mixing_answers(ledger).await;
}

#[tokio::test]
async fn postgres_ledger_groups_concurrent_handoffs() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    concurrent_handoffs_share_commits_without_mixing_answers(ledger).await;
}

/// Run owners: a second owner is refused while the first holds the run, the holder may
/// begin again, a released run is taken at once, a taken-over copy learns it lost the run, and
/// the run of a drain is found by the drain's id, with what it has recorded so far while it runs.
async fn runs_have_one_owner_and_belong_to_their_drain(ledger: Ledger) {
    let volume = "ns/pvc".parse().unwrap();
    let store = "file:///s";
    let a = ledger.run_checkpoint(Some("host-a:1:a".into()), Some("d-1".into()));
    let b = ledger.run_checkpoint(Some("host-b:2:b".into()), Some("d-2".into()));
    let run = a
        .begin(store, &volume, &SnapshotId::generate())
        .await
        .unwrap();
    let busy = b
        .begin(store, &volume, &SnapshotId::generate())
        .await
        .unwrap_err();
    assert!(
        matches!(busy, drainer_core::ledger::Error::RunBusy { ref holder, .. } if holder == "host-a:1:a"),
        "{busy}"
    );
    assert!(busy.is_transient());
    assert_eq!(
        a.begin(store, &volume, &SnapshotId::generate())
            .await
            .unwrap()
            .id,
        run.id
    );
    let copied = |files, bytes| {
        Some(drainer_core::ledger::CopiedSoFar {
            files,
            bytes,
            totals: None,
        })
    };
    assert_eq!(ledger.copied_so_far("d-1").await.unwrap(), copied(0, 0));
    a.record(&run, &[stored(b"x")]).await.unwrap();
    assert_eq!(
        ledger.run_of_drain("d-1").await.unwrap().unwrap().id,
        run.id
    );
    assert_eq!(ledger.copied_so_far("d-1").await.unwrap(), copied(1, 42));
    assert!(ledger.run_of_drain("d-2").await.unwrap().is_none());
    // Released (an attempt stopped): the next copy takes it over at once, and the first
    // copy, if it went on, learns that it lost the run.
    a.interrupted(&run, "stopped").await.unwrap();
    let taken = b
        .begin(store, &volume, &SnapshotId::generate())
        .await
        .unwrap();
    assert_eq!(taken.id, run.id);
    assert!(taken.resumed);
    let lost = a.record(&run, &[stored(b"y")]).await.unwrap_err();
    assert!(
        matches!(lost, drainer_core::ledger::Error::RunLost { .. }),
        "{lost}"
    );
    assert!(a.renew(&run).await.is_err());
    b.renew(&taken).await.unwrap();
    assert_eq!(
        ledger.run_of_drain("d-2").await.unwrap().unwrap().id,
        run.id
    );
    // The run taken over is drain d-2's copy now, with what it had stored.
    b.record(&taken, &[stored(b"z1"), stored(b"z2")])
        .await
        .unwrap();
    assert_eq!(ledger.copied_so_far("d-2").await.unwrap(), copied(3, 126));
    // A file recorded again replaces its row, and is counted once (here with a new size).
    b.record(
        &taken,
        &[
            StoredFile {
                size: 50,
                ..stored(b"z2")
            },
            stored(b"z3"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(ledger.copied_so_far("d-2").await.unwrap(), copied(4, 176));
    ledger.set_run_totals(&taken.id, 9, 378).await.unwrap();
    let with_totals = ledger.copied_so_far("d-2").await.unwrap().unwrap();
    assert_eq!(with_totals.totals, Some((9, 378)));
    let (followed, progress) = ledger.follow_run("d-2").await.unwrap().unwrap();
    assert_eq!(
        (followed.id.as_str(), followed.state),
        (run.id.as_str(), RunState::Running)
    );
    assert_eq!(progress, with_totals);
    assert!(ledger.follow_run("d-3").await.unwrap().is_none());
    // Files forgotten (what arrived did not match the manifest) leave the counters too.
    ledger
        .forget_stored_objects(&taken.id, &["snapshots/x/files/z3".into()])
        .await
        .unwrap();
    let forgotten = ledger.copied_so_far("d-2").await.unwrap().unwrap();
    assert_eq!((forgotten.files, forgotten.bytes), (3, 134));
    // Whoever waits for a run to finish is woken by its finish.
    let mut finished = ledger.runs_finished();
    finished.borrow_and_update();
    assert!(!finished.has_changed().unwrap());
    assert_eq!(ledger.copied_so_far("d-1").await.unwrap(), None);
    assert_eq!(
        ledger.completed_snapshot_of_drain("d-2").await.unwrap(),
        None
    );
    b.finish(&taken, &summary(&taken.snapshot)).await.unwrap();
    assert!(
        finished.has_changed().unwrap(),
        "the finish wakes its waiters"
    );
    assert_eq!(
        ledger.completed_snapshot_of_drain("d-2").await.unwrap(),
        Some(taken.snapshot.to_string())
    );
    let (followed, _) = ledger.follow_run("d-2").await.unwrap().unwrap();
    assert_eq!(followed.state, RunState::Completed);
    assert_eq!(ledger.copied_so_far("d-2").await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_runs_have_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    runs_have_one_owner_and_belong_to_their_drain(ledger).await;
}

#[tokio::test]
async fn postgres_runs_have_one_owner() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("/nonexistent"))
        .await
        .unwrap();
    runs_have_one_owner_and_belong_to_their_drain(ledger).await;
}

/// What sweeps remember: StatefulSets (updated when they change), claim sightings merged
/// into what is stored (a mount time kept until a newer one, the first orphaned time kept,
/// cleared when the claim is wanted again), forgotten claims, and a claim's drains found by
/// UID or, for drains without one, by name.
async fn sweeps_remember_sets_and_sightings(ledger: Ledger) {
    use drainer_core::ledger::{ClaimKey, NewDrain};
    use drainer_kube::facts::KubeFacts;
    use drainer_kube::sweep_records::{ClaimSighting, RememberedSet, SweepRecords};
    let mut web = RememberedSet {
        uid: "uid-web".into(),
        namespace: "shop".into(),
        name: "web".into(),
        templates: vec!["data".into(), "logs".into()],
        opted_out: false,
    };
    ledger.remember_sets(&[web.clone()]).await.unwrap();
    assert_eq!(ledger.remembered_sets().await.unwrap(), [web.clone()]);
    web.opted_out = true;
    ledger.remember_sets(&[web.clone()]).await.unwrap();
    assert_eq!(ledger.remembered_sets().await.unwrap(), [web]);

    let seen = |mounted: Option<i64>, orphaned: Option<i64>, at: i64| ClaimSighting {
        pvc_uid: "uid-c".into(),
        namespace: "shop".into(),
        pvc: "data-web-2".into(),
        statefulset: Some("web".into()),
        last_mounted_ms: mounted,
        orphaned_since_ms: orphaned,
        last_seen_ms: at,
    };
    let steps = [
        (seen(Some(100), None, 100), (Some(100), None)),
        (seen(None, Some(200), 200), (Some(100), Some(200))),
        (seen(None, Some(300), 300), (Some(100), Some(200))),
        (seen(None, None, 400), (Some(100), None)),
        (seen(Some(500), None, 500), (Some(500), None)),
    ];
    for (written, (mounted, orphaned)) in steps {
        ledger
            .record_sightings(std::slice::from_ref(&written), &[])
            .await
            .unwrap();
        let stored = ledger.claim_sightings().await.unwrap();
        assert_eq!(
            stored,
            [ClaimSighting {
                last_mounted_ms: mounted,
                orphaned_since_ms: orphaned,
                ..written
            }]
        );
    }
    ledger
        .record_sightings(&[], &["uid-c".into()])
        .await
        .unwrap();
    assert!(ledger.claim_sightings().await.unwrap().is_empty());

    let new = |pvc: &str, uid: Option<&str>| NewDrain {
        volume: drainer::VolumeId::new("shop", pvc).unwrap(),
        pod: None,
        reason: "sweep: test".into(),
        max_attempts: 3,
        wait_for_release: false,
        requested_by: Some("sweep".into()),
        facts: KubeFacts {
            pvc_uid: uid.map(str::to_owned),
            ..KubeFacts::default()
        }
        .into(),
    };
    ledger
        .request_drains(&[
            new("a", Some("uid-a")),
            new("b", None),
            new("c", Some("uid-other")),
        ])
        .await
        .unwrap();
    let key = |uid: &str, pvc: &str| ClaimKey {
        uid: uid.into(),
        namespace: "shop".into(),
        pvc: pvc.into(),
    };
    let found = ledger
        .drains_of_claims(&[key("uid-a", "a"), key("uid-b", "b"), key("uid-c", "c")])
        .await
        .unwrap();
    let mut pvcs: Vec<&str> = found.iter().map(|d| d.pvc.as_str()).collect();
    pvcs.sort();
    assert_eq!(
        pvcs,
        ["a", "b"],
        "c's drain is another claim's (another UID)"
    );
}

#[tokio::test]
async fn sqlite_sweeps_remember_sets_and_sightings() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    sweeps_remember_sets_and_sightings(ledger).await;
}

#[tokio::test]
async fn postgres_sweeps_remember_sets_and_sightings() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    sweeps_remember_sets_and_sightings(ledger).await;
}

/// A note (who an attempt's mover runs as) goes into the history entry that started the
/// attempt, only while that entry is the drain's last and its holder's: no entry is added.
async fn notes_go_to_the_entry_that_started_the_attempt(ledger: Ledger) {
    use drainer_core::ledger::{AttemptOutcome, NewDrain};
    use drainer_core::lifecycle::AfterFailure;
    let new = NewDrain {
        volume: drainer::VolumeId::new("ns", "data-web-1").unwrap(),
        pod: None,
        reason: "test".into(),
        max_attempts: 5,
        wait_for_release: false,
        requested_by: None,
        facts: Default::default(),
    };
    ledger.request_drains(&[new]).await.unwrap();
    let lease = std::time::Duration::from_secs(60);
    let drain = ledger
        .claim_drain("replica-a", lease)
        .await
        .unwrap()
        .unwrap();
    let note = "mover Job j-1 runs as uid 0, gid 0, only CAP_DAC_OVERRIDE: it's \"baseline\"";
    assert!(
        !ledger
            .note_attempt(&drain.id, "replica-b", note)
            .await
            .unwrap()
    );
    assert!(
        ledger
            .note_attempt(&drain.id, "replica-a", note)
            .await
            .unwrap()
    );
    let history = ledger.drain_events(&drain.id).await.unwrap();
    let messages: Vec<&str> = history
        .iter()
        .filter_map(|e| e.message.as_deref())
        .collect();
    assert_eq!(
        messages.last().copied(),
        Some(format!("attempt 1 of 5; {note}").as_str()),
        "{history:?}"
    );
    let failed = AttemptOutcome::Failed {
        error: "refused".into(),
        after: AfterFailure::RetryAfter(std::time::Duration::ZERO),
    };
    assert!(
        ledger
            .end_attempt(&drain.id, "replica-a", &failed)
            .await
            .unwrap()
    );
    assert!(
        !ledger
            .note_attempt(&drain.id, "replica-a", "late")
            .await
            .unwrap(),
        "the attempt has ended: its entry is no longer the last"
    );
    assert_eq!(
        ledger.drain_events(&drain.id).await.unwrap().len(),
        history.len() + 1
    );
}

#[tokio::test]
async fn sqlite_notes_go_to_the_attempts_entry() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    notes_go_to_the_entry_that_started_the_attempt(ledger).await;
}

#[tokio::test]
async fn postgres_notes_go_to_the_attempts_entry() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    notes_go_to_the_entry_that_started_the_attempt(ledger).await;
}

/// What the Drain objects are kept for: the drains still active, and those that ended since a
/// time (ended earlier: none), of the namespaces watched (all when none are given), oldest
/// first; and a drain's first requester (none for a drain no caller asked for).
async fn drains_to_show_are_the_active_and_the_recently_ended(ledger: Ledger) {
    use drainer_core::ledger::NewDrain;
    use drainer_core::lifecycle::Event;
    let new = |ns: &str, pvc: &str, by: Option<&str>| NewDrain {
        volume: drainer::VolumeId::new(ns, pvc).unwrap(),
        pod: None,
        reason: "test".into(),
        max_attempts: 5,
        wait_for_release: false,
        requested_by: by.map(str::to_owned),
        facts: Default::default(),
    };
    let mut ids = Vec::new();
    for drain in [
        new("a", "ended-early", Some("pod:a/web-0")),
        new("a", "active", None),
        new("b", "ended-late", Some("user:alice")),
    ] {
        let recorded = ledger.request_drains(&[drain]).await.unwrap();
        ids.push(recorded[0].0.id.clone());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let cancel = |id: String| {
        let ledger = ledger.clone();
        async move {
            ledger
                .change_drain(&id, Event::Cancelled, "admin", None)
                .await
                .unwrap()
                .unwrap()
        }
    };
    cancel(ids[0].clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    cancel(ids[2].clone()).await;

    let shown = |since: i64, namespaces: &'static [&'static str]| {
        let ledger = ledger.clone();
        async move {
            let namespaces: Vec<String> = namespaces.iter().map(|n| n.to_string()).collect();
            let drains = ledger
                .drains_active_or_ended_since(since, &namespaces)
                .await
                .unwrap();
            drains.into_iter().map(|d| d.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(shown(0, &[]).await, ids, "everything, oldest first");
    assert_eq!(
        shown(between, &[]).await,
        ids[1..],
        "ended early: not shown"
    );
    assert_eq!(shown(between, &["a"]).await, ids[1..2], "namespace a only");
    assert_eq!(shown(i64::MAX, &["b"]).await, Vec::<String>::new());

    assert_eq!(
        ledger.first_requester(&ids[0]).await.unwrap().as_deref(),
        Some("pod:a/web-0")
    );
    assert_eq!(ledger.first_requester(&ids[1]).await.unwrap(), None);
    assert_eq!(
        ledger.first_requester(&ids[2]).await.unwrap().as_deref(),
        Some("user:alice")
    );
}

#[tokio::test]
async fn sqlite_drains_to_show_are_the_active_and_the_recently_ended() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    drains_to_show_are_the_active_and_the_recently_ended(ledger).await;
}

#[tokio::test]
async fn postgres_drains_to_show_are_the_active_and_the_recently_ended() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    drains_to_show_are_the_active_and_the_recently_ended(ledger).await;
}

/// A drain's namespace life (the UIDs of its claim's namespace and StatefulSet) is recorded
/// and reaches the origin its snapshot records; an operator's reads of an earlier life are
/// recorded and read back per volume, oldest first, legacy snapshots and gone namespaces
/// (no UID) included.
async fn namespace_lives_and_earlier_reads_are_recorded(ledger: Ledger) {
    use drainer_core::ledger::{EarlierRead, NewDrain};
    let new = NewDrain {
        volume: drainer::VolumeId::new("shop", "data-web-0").unwrap(),
        pod: None,
        reason: "test".into(),
        max_attempts: 5,
        wait_for_release: false,
        requested_by: None,
        facts: Default::default(),
    };
    let id = ledger.request_drains(&[new]).await.unwrap()[0].0.id.clone();
    let before = ledger.drain(&id).await.unwrap().unwrap().origin();
    assert_eq!((before.namespace_uid, before.statefulset_uid), (None, None));
    ledger
        .set_namespace_life(&id, "ns-1", Some("sts-1"))
        .await
        .unwrap();
    let origin = ledger.drain(&id).await.unwrap().unwrap().origin();
    assert_eq!(origin.namespace_uid.as_deref(), Some("ns-1"));
    assert_eq!(origin.statefulset_uid.as_deref(), Some("sts-1"));
    ledger.set_namespace_life(&id, "ns-1", None).await.unwrap();
    let origin = ledger.drain(&id).await.unwrap().unwrap().origin();
    assert_eq!(origin.statefulset_uid, None, "a claim of no StatefulSet");

    let read = |at: i64, snapshot: &str, theirs: Option<&str>, now: Option<&str>| EarlierRead {
        at,
        principal: "admin".into(),
        namespace: "shop".into(),
        pvc: "data-web-0".into(),
        snapshot: snapshot.into(),
        snapshot_namespace_uid: theirs.map(str::to_owned),
        current_namespace_uid: now.map(str::to_owned),
    };
    let reads = [
        read(
            1_000,
            "20261207T100000000Z-0001",
            Some("ns-1"),
            Some("ns-2"),
        ),
        read(2_000, "20261201T100000000Z-0002", None, Some("ns-2")),
        read(3_000, "20261207T100000000Z-0001", Some("ns-1"), None),
    ];
    for r in reads.iter().rev() {
        ledger.record_earlier_read(r).await.unwrap();
    }
    let elsewhere = EarlierRead {
        pvc: "data-web-1".into(),
        ..reads[0].clone()
    };
    ledger.record_earlier_read(&elsewhere).await.unwrap();
    assert_eq!(
        ledger.earlier_reads("shop", "data-web-0").await.unwrap(),
        reads
    );
    assert_eq!(
        ledger.earlier_reads("shop", "data-web-1").await.unwrap(),
        [elsewhere]
    );
    assert!(
        ledger
            .earlier_reads("other", "data-web-0")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_namespace_lives_and_earlier_reads_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    namespace_lives_and_earlier_reads_are_recorded(ledger).await;
}

#[tokio::test]
async fn postgres_namespace_lives_and_earlier_reads_are_recorded() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    namespace_lives_and_earlier_reads_are_recorded(ledger).await;
}

/// A reclaim pins its snapshot from before the delete on; a delete that did not happen
/// unpins it, a delete that happened keeps it pinned (unpinning it then changes nothing).
async fn reclaims_pin_their_snapshots(ledger: Ledger) {
    use drainer_core::ledger::Reclaim;
    let reclaim = |uid: &str, pvc: &str, snapshot: &str| Reclaim {
        pvc_uid: uid.into(),
        namespace: "shop".into(),
        pvc: pvc.into(),
        statefulset: "web".into(),
        drain_id: format!("d-{pvc}"),
        snapshot: snapshot.into(),
        decided: 1_000,
        deleted: None,
        replica: "r1".into(),
        released: None,
        released_by: None,
    };
    ledger
        .pin_reclaim(&reclaim("u1", "data-web-1", "s-1"))
        .await
        .unwrap();
    ledger
        .pin_reclaim(&reclaim("u2", "data-web-2", "s-2"))
        .await
        .unwrap();
    // Another replica's refused attempt took u1's pin off meanwhile: the record restores it.
    ledger.unpin_reclaim("u1").await.unwrap();
    let deleted = Reclaim {
        deleted: Some(2_000),
        ..reclaim("u1", "data-web-1", "s-1")
    };
    ledger.reclaimed(&deleted).await.unwrap();
    let pinned = ledger.pinned_snapshots().await.unwrap();
    assert_eq!(pinned.len(), 2, "{pinned:?}");
    assert!(pinned["shop/data-web-2"].contains("s-2"));
    ledger.unpin_reclaim("u2").await.unwrap();
    ledger.unpin_reclaim("u1").await.unwrap();
    let pinned = ledger.pinned_snapshots().await.unwrap();
    assert_eq!(
        pinned.keys().collect::<Vec<_>>(),
        ["shop/data-web-1"],
        "the deleted claim's pin stays"
    );
    let recorded = ledger.reclaims().await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].deleted, recorded[0].snapshot.as_str()),
        (Some(2_000), "s-1")
    );
}

#[tokio::test]
async fn sqlite_reclaims_pin_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    reclaims_pin_their_snapshots(ledger).await;
}

#[tokio::test]
async fn postgres_reclaims_pin_their_snapshots() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    reclaims_pin_their_snapshots(ledger).await;
}

/// A drain of claim `uid` of `shop/PVC` in namespace life `ns_uid`, claimed by a replica and,
/// if `snapshot` is given, completed with it; returns its id.
async fn drain_of_claim(
    ledger: &Ledger,
    pvc: &str,
    uid: &str,
    ns_uid: &str,
    snapshot: Option<&str>,
) -> String {
    use drainer_core::ledger::{AttemptOutcome, NewDrain};
    use drainer_kube::facts::KubeFacts;
    let new = NewDrain {
        volume: drainer::VolumeId::new("shop", pvc).unwrap(),
        pod: None,
        reason: "test".into(),
        max_attempts: 5,
        wait_for_release: false,
        requested_by: None,
        facts: KubeFacts {
            pvc_uid: Some(uid.into()),
            ..KubeFacts::default()
        }
        .into(),
    };
    let id = ledger.request_drains(&[new]).await.unwrap()[0].0.id.clone();
    ledger.set_namespace_life(&id, ns_uid, None).await.unwrap();
    let lease = std::time::Duration::from_secs(60);
    let claimed = ledger.claim_drain("r1", lease).await.unwrap().unwrap();
    assert_eq!(claimed.id, id);
    if let Some(snapshot) = snapshot {
        let done = AttemptOutcome::Completed {
            snapshot: snapshot.into(),
        };
        assert!(ledger.end_attempt(&id, "r1", &done).await.unwrap());
    }
    id
}

/// A reclaim's pin is released once a later claim of the same volume, in the same life of
/// the namespace, restored from the pinned snapshot (a pod's report, twice here: one record),
/// was drained to completion after the delete; never by a drain still copying, by a drain of
/// another namespace life, before the claim was deleted, or by a later claim that reported no
/// restore before it was drained (it started empty). Released rows stay in the record and no
/// longer pin.
async fn pins_are_released_once_a_later_drain_completed(ledger: Ledger) {
    use drainer_core::ledger::{Reclaim, now_ms};
    let mut reclaims = Vec::new();
    for (pvc, deleted) in [
        ("data-web-1", true),
        ("data-web-2", true),
        ("data-web-3", false),
        ("data-web-4", true),
    ] {
        let uid = format!("{pvc}-old");
        let snapshot = format!("{pvc}-s1");
        let drain_id = drain_of_claim(&ledger, pvc, &uid, "ns-1", Some(&snapshot)).await;
        let r = Reclaim {
            pvc_uid: uid,
            namespace: "shop".into(),
            pvc: pvc.into(),
            statefulset: "web".into(),
            drain_id,
            snapshot,
            decided: now_ms(),
            deleted: None,
            replica: "r1".into(),
            released: None,
            released_by: None,
        };
        ledger.pin_reclaim(&r).await.unwrap();
        if deleted {
            let done = Reclaim {
                deleted: Some(now_ms()),
                ..r.clone()
            };
            ledger.reclaimed(&done).await.unwrap();
        }
        reclaims.push(r);
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // Ordinal 1 came back, its new claim restored from the pinned snapshot (as its pod
    // reported), and is being drained again; ordinal 2's namespace was deleted and created
    // again (another life) and its new claim, restored, drained; ordinal 3's claim was never
    // deleted, and a new claim of its name, restored, drained; ordinal 4 came back without a
    // restore (its new claim started empty) and was drained.
    for n in [1, 2, 3] {
        let volume = drainer::VolumeId::new("shop", &format!("data-web-{n}")).unwrap();
        let snapshot = format!("data-web-{n}-s1");
        let pod = format!("web-{n}-new");
        for _ in 0..2 {
            ledger
                .record_restore(&volume, &snapshot, &pod, "pod:shop/web", now_ms())
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let copying = drain_of_claim(&ledger, "data-web-1", "data-web-1-new", "ns-1", None).await;
    drain_of_claim(
        &ledger,
        "data-web-2",
        "data-web-2-new",
        "ns-2",
        Some("data-web-2-s2"),
    )
    .await;
    drain_of_claim(
        &ledger,
        "data-web-3",
        "data-web-3-new",
        "ns-1",
        Some("data-web-3-s2"),
    )
    .await;
    drain_of_claim(
        &ledger,
        "data-web-4",
        "data-web-4-new",
        "ns-1",
        Some("data-web-4-s2"),
    )
    .await;
    // A restore of ordinal 4 reported only after its new claim was drained does not count.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let volume = drainer::VolumeId::new("shop", "data-web-4").unwrap();
    ledger
        .record_restore(
            &volume,
            "data-web-4-s1",
            "web-4-new",
            "pod:shop/web",
            now_ms(),
        )
        .await
        .unwrap();
    assert!(
        ledger
            .release_superseded_pins(now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(ledger.pinned_snapshots().await.unwrap().len(), 4);

    let done = drainer_core::ledger::AttemptOutcome::Completed {
        snapshot: "data-web-1-s2".into(),
    };
    assert!(ledger.end_attempt(&copying, "r1", &done).await.unwrap());
    let released = ledger.release_superseded_pins(12_345).await.unwrap();
    assert_eq!(released.len(), 1, "{released:#?}");
    assert_eq!(
        (
            released[0].pvc.as_str(),
            released[0].released,
            released[0].released_by.as_deref()
        ),
        ("data-web-1", Some(12_345), Some(copying.as_str()))
    );
    let pinned = ledger.pinned_snapshots().await.unwrap();
    let mut volumes: Vec<&String> = pinned.keys().collect();
    volumes.sort();
    assert_eq!(
        volumes,
        ["shop/data-web-2", "shop/data-web-3", "shop/data-web-4"]
    );
    assert!(
        ledger
            .release_superseded_pins(now_ms())
            .await
            .unwrap()
            .is_empty(),
        "released once"
    );
    let recorded = ledger.reclaims().await.unwrap();
    assert_eq!(recorded.len(), 4, "released rows stay in the record");
    let one = recorded.iter().find(|r| r.pvc == "data-web-1").unwrap();
    assert_eq!(one.released_by.as_deref(), Some(copying.as_str()));
}

#[tokio::test]
async fn sqlite_pins_are_released_once_a_later_drain_completed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    pins_are_released_once_a_later_drain_completed(ledger).await;
}

#[tokio::test]
async fn postgres_pins_are_released_once_a_later_drain_completed() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    pins_are_released_once_a_later_drain_completed(ledger).await;
}

/// The migration that moves Kubernetes mode's columns into the drains' facts.
const FACTS_MIGRATION: i64 = 20261208010000;

/// Drains as the schema before platform facts recorded them: every Kubernetes column set,
/// some of them, none.
const EARLIER_DRAINS: &str = "INSERT INTO drains (id, namespace, pvc, pod, reason, state, \
    attempts, max_attempts, not_before, created_at, updated_at, finished_at, pvc_uid, pod_uid, \
    node, hold, mover_job, mover_job_uid, namespace_uid, statefulset_uid) VALUES \
    ('d-all', 'shop', 'data-web-0', 'web-0', 'handoff', 'copying', 1, 5, 10, 11, 12, NULL, \
     'c-0', 'p-0', 'n-0', 'drainer-hold-d-all', 'drainer-d-all-1', 'j-0', 'ns-0', 'sts-0'), \
    ('d-some', 'shop', 'data-web-1', NULL, 'sweep', 'completed', 1, 5, 20, 21, 22, 23, \
     'c-1', NULL, NULL, NULL, NULL, NULL, 'ns-0', NULL), \
    ('d-none', 'shop', 'data-web-2', NULL, 'handoff', 'queued', 0, 5, 30, 31, 32, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

/// Drains recorded before the migration keep every Kubernetes fact exactly (a fact per column
/// that was set, none for one that was not; the claim's UID also as its lineage fact), their
/// other fields as they were, and are found by their facts as before.
async fn earlier_drains_keep_their_facts_exactly(ledger: Ledger) {
    use drainer_core::ledger::ClaimKey;
    use drainer_core::lifecycle::DrainState;
    use serde_json::json;
    let expected = [
        (
            "d-all",
            json!({"pvc_uid": "c-0", "claim_uid": "c-0", "pod_uid": "p-0", "node": "n-0",
                   "hold": "drainer-hold-d-all", "mover_job": "drainer-d-all-1",
                   "mover_job_uid": "j-0", "namespace_uid": "ns-0", "statefulset_uid": "sts-0"}),
        ),
        (
            "d-some",
            json!({"pvc_uid": "c-1", "claim_uid": "c-1", "namespace_uid": "ns-0"}),
        ),
        ("d-none", json!({})),
    ];
    for (id, facts) in expected {
        let drain = ledger.drain(id).await.unwrap().unwrap();
        assert_eq!(serde_json::to_value(&drain.facts).unwrap(), facts, "{id}");
    }
    let all = ledger.drain("d-all").await.unwrap().unwrap();
    assert_eq!(
        (all.state, all.attempts, all.not_before_ms, all.created_ms),
        (DrainState::Copying, 1, 10, 11)
    );
    assert_eq!((all.updated_ms, all.finished_ms), (12, None));
    let found = ledger.drain_of_mover_job("j-0").await.unwrap();
    assert_eq!(found.map(|d| d.id).as_deref(), Some("d-all"));
    let held: Vec<String> = (ledger.active_with_hold(10).await.unwrap().into_iter())
        .map(|d| d.id)
        .collect();
    assert_eq!(held, ["d-all"]);
    let origin = ledger.drain("d-some").await.unwrap().unwrap().origin();
    assert_eq!(
        (origin.claim_uid.as_deref(), origin.namespace_uid.as_deref()),
        (Some("c-1"), Some("ns-0"))
    );
    assert_eq!(origin.statefulset_uid, None);
    let claim = ClaimKey {
        uid: "c-1".into(),
        namespace: "shop".into(),
        pvc: "data-web-1".into(),
    };
    let of_claim: Vec<String> = (ledger.drains_of_claims(&[claim]).await.unwrap().into_iter())
        .map(|d| d.id)
        .collect();
    assert_eq!(of_claim, ["d-some"]);
}

#[tokio::test]
async fn sqlite_earlier_drains_keep_their_facts_exactly() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("drainer.db"))
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate!("crates/drainer-core/migrations/sqlite")
        .run_to(FACTS_MIGRATION - 1, &pool)
        .await
        .unwrap();
    sqlx::query(EARLIER_DRAINS).execute(&pool).await.unwrap();
    pool.close().await;
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    earlier_drains_keep_their_facts_exactly(ledger).await;
}

#[tokio::test]
async fn postgres_earlier_drains_keep_their_facts_exactly() {
    let url = fresh_postgres_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate!("crates/drainer-core/migrations/postgres")
        .run_to(FACTS_MIGRATION - 1, &pool)
        .await
        .unwrap();
    sqlx::query(EARLIER_DRAINS).execute(&pool).await.unwrap();
    pool.close().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    earlier_drains_keep_their_facts_exactly(ledger).await;
}

/// A drain's facts change by merge (set, remove, the rest kept; changes of different facts at
/// once are all kept), and drains are found by a fact's presence and value; a name that could
/// not be a fact is refused.
async fn facts_are_merged_and_searched(ledger: Ledger) {
    use drainer_core::ledger::{Facts, NewDrain};
    use drainer_core::lifecycle::DrainState;
    let new = NewDrain {
        volume: drainer::VolumeId::new("shop", "data-web-0").unwrap(),
        pod: None,
        reason: "test".into(),
        max_attempts: 5,
        wait_for_release: false,
        requested_by: None,
        facts: Facts::default().with("a", Some("1")).with("b", Some("2")),
    };
    let id = ledger.request_drains(&[new]).await.unwrap()[0].0.id.clone();
    let facts = || async { ledger.drain(&id).await.unwrap().unwrap().facts };
    ledger
        .patch_facts(&id, &[("a", None), ("c", Some("3"))])
        .await
        .unwrap();
    let merged = Facts::default().with("b", Some("2")).with("c", Some("3"));
    assert_eq!(facts().await, merged);
    let (d, e) = tokio::join!(
        ledger.patch_facts(&id, &[("d", Some("4"))]),
        ledger.patch_facts(&id, &[("e", Some("5"))])
    );
    d.unwrap();
    e.unwrap();
    let both = merged.with("d", Some("4")).with("e", Some("5"));
    assert_eq!(facts().await, both);
    let ids = |drains: Vec<drainer_core::ledger::Drain>| -> Vec<String> {
        drains.into_iter().map(|d| d.id).collect()
    };
    assert_eq!(
        ids(ledger.active_having("c", 10).await.unwrap()),
        [id.as_str()]
    );
    assert!(ids(ledger.active_having("a", 10).await.unwrap()).is_empty());
    assert!(ids(ledger.ended_having("c", 10).await.unwrap()).is_empty());
    let queued = [DrainState::Queued];
    let found = ledger.drain_with_fact("c", "3", &queued).await.unwrap();
    assert_eq!(found.map(|d| d.id), Some(id.clone()));
    assert!(
        ledger
            .drain_with_fact("c", "4", &queued)
            .await
            .unwrap()
            .is_none()
    );
    let copying = [DrainState::Copying];
    assert!(
        ledger
            .drain_with_fact("c", "3", &copying)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ledger
            .patch_facts(&id, &[("x') --", Some("1"))])
            .await
            .is_err()
    );
    assert!(ledger.active_having("x'", 1).await.is_err());
    assert_eq!(facts().await, both, "a refused change changes nothing");
}

#[tokio::test]
async fn sqlite_facts_are_merged_and_searched() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    facts_are_merged_and_searched(ledger).await;
}

#[tokio::test]
async fn postgres_facts_are_merged_and_searched() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    facts_are_merged_and_searched(ledger).await;
}

/// `/metrics`' summary counts, per state, the drains having the fact asked for (the mode's
/// claim hold) and when the oldest of them was made; a mode without one counts none.
async fn the_summary_counts_the_fact_asked_for(ledger: Ledger) {
    use drainer_core::ledger::{Facts, NewDrain};
    use drainer_core::lifecycle::DrainState;
    let new = |pvc: &str, keeper: Option<&str>| NewDrain {
        volume: drainer::VolumeId::new("shop", pvc).unwrap(),
        pod: None,
        reason: "test".into(),
        max_attempts: 5,
        wait_for_release: false,
        requested_by: None,
        facts: Facts::default().with("keeper", keeper),
    };
    let wanted = [
        new("data-web-0", Some("k-0")),
        new("data-web-1", None),
        new("data-web-2", Some("k-2")),
    ];
    let made = ledger.request_drains(&wanted).await.unwrap();
    let oldest = made.iter().map(|(d, _)| d.created_ms).min().unwrap();
    let queued = |summary: Vec<drainer_core::ledger::StateSummary>| {
        let of_state: Vec<_> = summary.into_iter().filter(|s| s.drains > 0).collect();
        assert_eq!(of_state.len(), 1, "{of_state:?}");
        assert_eq!(of_state[0].state, DrainState::Queued);
        of_state[0].clone()
    };
    let counted = queued(ledger.drain_summary(Some("keeper")).await.unwrap());
    assert_eq!((counted.drains, counted.with_fact), (3, 2));
    assert_eq!(counted.oldest_created_ms, Some(oldest));
    assert!(counted.oldest_with_fact_ms.is_some_and(|ms| ms >= oldest));
    let uncounted = queued(ledger.drain_summary(None).await.unwrap());
    assert_eq!((uncounted.drains, uncounted.with_fact), (3, 0));
    assert_eq!(uncounted.oldest_with_fact_ms, None);
    assert!(ledger.drain_summary(Some("x') --")).await.is_err());
}

#[tokio::test]
async fn sqlite_the_summary_counts_the_fact_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    the_summary_counts_the_fact_asked_for(ledger).await;
}

#[tokio::test]
async fn postgres_the_summary_counts_the_fact_asked_for() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    the_summary_counts_the_fact_asked_for(ledger).await;
}

/// What the relay received is kept per key (the last write wins, also within one batch), read
/// per drain, replaced or forgotten when an upload completes with or without every part's
/// hash, forgotten with its key and with its drain's commit.
async fn relayed_objects_follow_every_write_of_their_key(ledger: Ledger) {
    use drainer_core::ledger::{RelayRecord, RelayedObject};
    let object = |key: &str, size: u64, hash: &str| RelayedObject {
        key: key.to_owned(),
        size,
        blake3: hash.to_owned(),
    };
    let batch = [
        object("s/a", 1, "aa"),
        object("s/b", 2, "bb"),
        object("s/a", 3, "a3"),
    ];
    ledger.record_relayed_objects("d-1", &batch).await.unwrap();
    ledger
        .record_relayed_objects("d-2", &[object("t/x", 9, "xx")])
        .await
        .unwrap();
    let of = |drain: &'static str| {
        let ledger = ledger.clone();
        async move {
            let mut found: Vec<_> = ledger
                .relayed_objects(drain)
                .await
                .unwrap()
                .into_values()
                .collect();
            found.sort_by(|a, b| a.key.cmp(&b.key));
            found
        }
    };
    assert_eq!(
        of("d-1").await,
        [object("s/a", 3, "a3"), object("s/b", 2, "bb")]
    );
    for (key, received) in [("s/a", Some(object("s/a", 7, "a7"))), ("s/b", None)] {
        let relay = RelayRecord {
            id: format!("u-{key}"),
            drain_id: "d-1".into(),
            object_key: key.into(),
            store_upload_id: "store-upload".into(),
        };
        ledger.create_relay(&relay).await.unwrap();
        let received = received.map(|o| ("d-1", o));
        ledger
            .complete_relay(&relay.id, key, received)
            .await
            .unwrap();
        assert_eq!(
            ledger.relay(&relay.id).await.unwrap(),
            None,
            "upload forgotten"
        );
    }
    assert_eq!(
        of("d-1").await,
        [object("s/a", 7, "a7")],
        "b completed unhashed"
    );
    ledger.forget_relayed_object("s/a").await.unwrap();
    assert!(of("d-1").await.is_empty());
    ledger.forget_relayed_objects_of("d-2").await.unwrap();
    assert!(of("d-2").await.is_empty());
}

#[tokio::test]
async fn sqlite_relayed_objects_follow_every_write_of_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    relayed_objects_follow_every_write_of_their_key(ledger).await;
}

#[tokio::test]
async fn postgres_relayed_objects_follow_every_write_of_their_key() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    relayed_objects_follow_every_write_of_their_key(ledger).await;
}
