//! The ledger's copy-run records, the same tests on SQLite and on PostgreSQL.

use crate::support::fresh_postgres_database;
use drainer::Ledger;
use drainer::snapshot::manifest::Content;
use drainer::snapshot::{Checkpoint, SnapshotId, SnapshotSummary, StoredFile};
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
        uploaded_files: 2,
        uploaded_bytes: 84,
        manifest_blake3: String::new(),
        manifest_size: 0,
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
