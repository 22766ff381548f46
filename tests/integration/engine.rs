//! The snapshot engine through the real `drainer` binary: round trips against a local store,
//! an S3-protocol server, a GCS-protocol server and Azurite (Azure), incremental snapshots, pruning, verification, resuming after
//! SIGKILL, hostile manifests, and every bad input with its message and exit code.

use crate::support::azure::AzuriteServer;
use crate::support::gcs::{GcsServer, StoreServer};
use crate::support::s3::S3Server;
use crate::support::tree::{awkward, bytes, differences};
use crate::support::{self, drainer, file_url, run, run_ok};
use std::path::Path;

const VOLUME: &str = "shop/data-web-4";
/// Small parts so that a test file of a few MiB goes through multipart uploads.
const PART_MIB: &str = "8";

/// [`support::copy_cmd`] of [`VOLUME`] in parts of [`PART_MIB`].
fn copy_cmd(src: &Path, store: &str, data: &Path) -> tokio::process::Command {
    let mut cmd = support::copy_cmd(src, store, VOLUME, data);
    cmd.args(["--part-size-mib", PART_MIB, "--buffer-mib", "16"]);
    cmd
}

/// Parses "(N files, B bytes uploaded)" from a copy summary line.
fn uploaded(summary: &str) -> (u64, u64) {
    let inner = summary
        .split('(')
        .nth(1)
        .expect("summary has an upload count");
    let mut numbers = inner
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let files = numbers.next().unwrap().parse().unwrap();
    let bytes = numbers.next().unwrap().parse().unwrap();
    (files, bytes)
}

async fn round_trip(store: &str, configure: impl Fn(&mut tokio::process::Command)) {
    let work = tempfile::tempdir().unwrap();
    let src = awkward(&work.path().join("src"), 12 * 1024 * 1024);
    let data = work.path().join("data");

    let mut copy = copy_cmd(&src, store, &data);
    configure(&mut copy);
    let first = run_ok(&mut copy).await;
    assert!(
        first.contains("2 skipped"),
        "fifo and socket are listed as skipped: {first}"
    );

    let dest = work.path().join("restored");
    let mut restore = support::restore_cmd(store, VOLUME, &dest);
    configure(&mut restore);
    run_ok(&mut restore).await;
    let diffs = differences(&src, &dest);
    assert!(
        diffs.is_empty(),
        "restore differs from source:\n{}",
        diffs.join("\n")
    );

    let mut verify = drainer();
    verify.arg("verify").arg(store).args(["--volume", VOLUME]);
    configure(&mut verify);
    assert!(run_ok(&mut verify).await.contains("0 problems"));

    // Second snapshot of an unchanged tree: nothing read or uploaded, and complete on its own.
    let mut again = copy_cmd(&src, store, &data);
    configure(&mut again);
    let second = run_ok(&mut again).await;
    assert_eq!(
        uploaded(&second),
        (0, 0),
        "unchanged files were uploaded again: {second}"
    );
    let dest2 = work.path().join("restored-2");
    let mut restore = support::restore_cmd(store, VOLUME, &dest2);
    configure(&mut restore);
    run_ok(&mut restore).await;
    let diffs = differences(&src, &dest2);
    assert!(
        diffs.is_empty(),
        "incremental restore differs:\n{}",
        diffs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_a_local_store_is_exact() {
    let store_dir = tempfile::tempdir().unwrap();
    round_trip(&file_url(store_dir.path()), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_an_s3_server_is_exact() {
    let server = S3Server::start().await;
    round_trip("s3://bucket/drainer", |cmd| server.configure(cmd)).await;
    // The stored files are plain objects with the source's bytes, under one prefix.
    let keys = server
        .keys("drainer/volumes/shop/data-web-4/snapshots")
        .await;
    let plain = keys
        .iter()
        .find(|k| k.ends_with("/files/plain.txt"))
        .expect("plain.txt is stored as a plain object");
    assert_eq!(server.get(plain).await, b"hello\n");
    let named = keys
        .iter()
        .find(|k| k.ends_with("/files/日本語のファイル名.txt"));
    assert!(
        named.is_some(),
        "non-Latin names are kept as they are: {keys:?}"
    );
}

fn snapshot_ids(listing_json: &str) -> Vec<String> {
    let list: Vec<serde_json::Value> = serde_json::from_str(listing_json).unwrap();
    list.iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_owned())
        .collect()
}

async fn list(store: &str) -> Vec<String> {
    snapshot_ids(
        &run_ok(
            drainer()
                .arg("snapshots")
                .arg(store)
                .args(["--volume", VOLUME, "-o", "json"]),
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshots_stay_valid_and_prune_keeps_what_is_referenced() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    let store = file_url(&work.path().join("store"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("kept"), b"never changes").unwrap();
    std::fs::write(src.join("changes"), b"version 1").unwrap();
    run_ok(&mut copy_cmd(&src, &store, &data)).await;
    let v1 = work.path().join("v1");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &v1)).await;

    std::fs::write(src.join("changes"), b"version 2, longer").unwrap();
    std::fs::write(src.join("added"), b"new file").unwrap();
    let second = run_ok(&mut copy_cmd(&src, &store, &data)).await;
    assert_eq!(
        uploaded(&second).0,
        2,
        "only the changed and the new file are uploaded: {second}"
    );
    std::fs::write(src.join("changes"), b"version 3").unwrap();
    run_ok(&mut copy_cmd(&src, &store, &data)).await;

    let ids = list(&store).await;
    assert_eq!(ids.len(), 3);
    // The first snapshot is still exactly what it was.
    let first_again = work.path().join("first-again");
    run_ok(support::restore_cmd(&store, VOLUME, &first_again).args(["--snapshot", &ids[0]])).await;
    assert!(differences(&v1, &first_again).is_empty());

    // Keep 1: the first two go, but "kept" (stored by the first) is still referenced.
    run_ok(
        drainer()
            .arg("prune")
            .arg(&store)
            .args(["--volume", VOLUME, "--keep", "1"]),
    )
    .await;
    assert_eq!(list(&store).await, vec![ids[2].clone()]);
    run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;
    let latest = work.path().join("latest");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &latest)).await;
    let mut restored = std::fs::read_dir(&latest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect::<Vec<_>>();
    restored.sort();
    assert_eq!(restored, ["added", "changes", "kept"]);
    assert_eq!(
        std::fs::read(latest.join("kept")).unwrap(),
        b"never changes"
    );
    assert_eq!(std::fs::read(latest.join("changes")).unwrap(), b"version 3");
    // Of the pruned snapshots' objects, only those the kept one refers to are left: "kept"
    // (stored by the first) and "added" (stored by the second).
    let mut leftovers =
        walkdir::WalkDir::new(work.path().join("store/volumes/shop/data-web-4/snapshots"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && !e.path().to_string_lossy().contains(&ids[2]))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["added", "kept"],
        "pruned snapshots keep only referenced objects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_missing_and_corrupted_objects() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"aaaa").unwrap();
    std::fs::write(src.join("b"), b"bbbb").unwrap();
    let store = file_url(&work.path().join("store"));
    run_ok(&mut copy_cmd(&src, &store, &work.path().join("data"))).await;
    let files = walkdir::WalkDir::new(work.path().join("store"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().to_string_lossy().contains("/files/"))
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect::<Vec<_>>();
    assert_eq!(files.len(), 2);
    std::fs::write(&files[0], b"AAAA").unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let out = run(drainer()
        .arg("verify")
        .arg(&store)
        .args(["--volume", VOLUME]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("2 problems"), "{stdout}");
    assert!(stdout.contains("object is missing"), "{stdout}");
    assert!(stdout.contains("manifest says"), "{stdout}");
    // A restore refuses the corrupted content instead of writing it as good.
    let out = run(&mut support::restore_cmd(
        &store,
        VOLUME,
        &work.path().join("r"),
    ))
    .await;
    assert!(!out.status.success());
}

/// Counts files that a copy has stored under `store_dir` so far.
fn stored_objects(store_dir: &Path) -> usize {
    walkdir::WalkDir::new(store_dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("/files/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_copy_resumes_without_uploading_stored_files_again() {
    let work = tempfile::tempdir().unwrap();
    let (src, data, store_dir) = (
        work.path().join("src"),
        work.path().join("data"),
        work.path().join("store"),
    );
    let store = file_url(&store_dir);
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("old"), b"the first snapshot").unwrap();
    run_ok(&mut copy_cmd(&src, &store, &data)).await;
    let first_ids = list(&store).await;
    let before = work.path().join("before");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &before)).await;

    // A tree that takes a few seconds: many small files and some large ones.
    for d in 0..40 {
        let dir = src.join(format!("dir-{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("f{f:03}")),
                bytes(d * 1000 + f, 4096 + (f as usize * 37) % 8192),
            )
            .unwrap();
        }
    }
    for i in 0..6 {
        std::fs::write(
            src.join(format!("large-{i}")),
            bytes(99 + i, 32 * 1024 * 1024),
        )
        .unwrap();
    }
    let total_files = 40 * 100 + 6 + 1;

    let mut child = copy_cmd(&src, &store, &data)
        .args(["--concurrency", "2"])
        .spawn()
        .unwrap();
    // Kill as soon as the ledger holds a checkpoint of this run, i.e. mid-way.
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let volume: drainer::VolumeId = VOLUME.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let runs = ledger.runs(&volume).await.unwrap();
        let running = runs
            .iter()
            .find(|r| r.state == drainer_core::ledger::RunState::Running);
        if let Some(run) = running
            && ledger.recorded_files(&run.id).await.unwrap() > 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy finished before it could be killed"
        );
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed copy must not report success");
    let stored_at_kill = stored_objects(&store_dir.join("volumes"));

    // The previous snapshot is still the latest and still restores.
    assert_eq!(list(&store).await, first_ids);
    let still = work.path().join("still");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &still)).await;
    assert!(differences(&before, &still).is_empty());

    let runs = ledger.runs(&volume).await.unwrap();
    assert_eq!(runs[0].state, drainer_core::ledger::RunState::Running);
    let recorded = ledger.recorded_files(&runs[0].id).await.unwrap() as u64;
    assert!(recorded > 0, "a checkpoint was recorded before the kill");
    assert!(
        (recorded as usize) < total_files as usize && stored_at_kill > 1,
        "killed mid-way"
    );
    drop(ledger);

    let resumed = run_ok(&mut copy_cmd(&src, &store, &data)).await;
    assert!(resumed.contains("resumed"), "{resumed}");
    let (uploaded_files, _) = uploaded(&resumed);
    assert!(
        uploaded_files <= total_files - recorded,
        "{uploaded_files} uploaded after resume, but {recorded} of {total_files} were already recorded"
    );
    let after = work.path().join("after");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &after)).await;
    let diffs = differences(&src, &after);
    assert!(
        diffs.is_empty(),
        "resumed snapshot differs:\n{}",
        diffs.join("\n")
    );
    run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;
}

/// Starts a copy of `src` (whose `large` file takes many parts) to `store` on `server`, and
/// kills it (SIGKILL) once the ledger records at least `parts` stored parts of `large`; returns
/// the run and that record as read just before the kill.
async fn copy_killed_mid_upload(
    server: &impl StoreServer,
    store: &str,
    src: &Path,
    data: &Path,
    parts: usize,
) -> (
    drainer_core::snapshot::Run,
    drainer_core::snapshot::PartialUpload,
) {
    // Open (and migrate) the ledger before the copy does, so the two never migrate at once.
    let ledger = drainer::Ledger::open(None, data).await.unwrap();
    let mut first = copy_cmd(src, store, data);
    server.configure(&mut first);
    let mut child = first.spawn().unwrap();
    let volume: drainer::VolumeId = VOLUME.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "no part recorded within a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy finished before it could be killed"
        );
        let Some(record) = ledger.runs(&volume).await.unwrap().into_iter().next() else {
            continue;
        };
        let run = drainer_core::snapshot::Run {
            id: record.id,
            snapshot: record.snapshot.parse().unwrap(),
            resumed: false,
        };
        if let Some(upload) = ledger.partial_upload(&run, b"large").await.unwrap()
            && upload.parts.len() >= parts
        {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            // Parts recorded after this read only make the callers' checks stricter.
            return (run, upload);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_large_upload_to_s3_continues_from_its_last_stored_part() {
    let server = S3Server::start().await;
    let store = "s3://bucket/resume";
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    let size = 80 * 1024 * 1024;
    std::fs::write(src.join("large"), bytes(7, size)).unwrap();
    let (_, upload) = copy_killed_mid_upload(&server, store, &src, &data, 3).await;
    let stored_parts = upload.parts.len() as u64;

    let mut again = copy_cmd(&src, store, &data);
    server.configure(&mut again);
    let resumed = run_ok(&mut again).await;
    let (_, sent) = uploaded(&resumed);
    let part = 8 * 1024 * 1024;
    assert!(
        sent <= size as u64 - stored_parts * part,
        "{sent} bytes sent after resume, but {stored_parts} parts of {part} were already stored"
    );
    let dest = work.path().join("restored");
    let mut restore = support::restore_cmd(store, VOLUME, &dest);
    server.configure(&mut restore);
    run_ok(&mut restore).await;
    assert!(differences(&src, &dest).is_empty());
}

/// A resumable-upload record that outlived its upload: an earlier copy completed the upload
/// and died before it forgot the record (the store answers parts sent to it with an error:
/// moto a 500, S3 a 404). Whether the record lists stored parts or none, the resumed copy
/// starts the file's upload again, once, and completes; the snapshot is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upload_that_an_earlier_copy_completed_starts_again_cleanly() {
    let server = S3Server::start().await;
    for keep_parts in [true, false] {
        let prefix = format!("stale-{keep_parts}");
        let store = format!("s3://bucket/{prefix}");
        let work = tempfile::tempdir().unwrap();
        let (src, data) = (work.path().join("src"), work.path().join("data"));
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("small"), b"small").unwrap();
        std::fs::write(src.join("large"), bytes(11, 80 * 1024 * 1024)).unwrap();
        let (killed, mut upload) = copy_killed_mid_upload(&server, &store, &src, &data, 3).await;
        // The earlier copy completed the upload with the parts it had stored...
        let key = format!(
            "{prefix}/volumes/{VOLUME}/snapshots/{}/files/large",
            killed.snapshot
        );
        let ids: Vec<String> = upload.parts.iter().map(|p| p.id.clone()).collect();
        server.complete_upload(&key, &upload.upload_id, &ids).await;
        assert_eq!(server.get(&key).await.len(), ids.len() * 8 * 1024 * 1024);
        // ...and its record stayed, with those parts or (recorded before any) none.
        if !keep_parts {
            upload.parts.clear();
            let ledger = drainer::Ledger::open(None, &data).await.unwrap();
            ledger.record_partial(&killed, &upload).await.unwrap();
        }

        let mut again = copy_cmd(&src, &store, &data);
        server.configure(&mut again);
        again.env("DRAINER_LOG", "info");
        let out = run(&mut again).await;
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "keep_parts={keep_parts}: the resumed copy completes: {log}"
        );
        let started_again = if keep_parts {
            "the store refuses the interrupted upload"
        } else {
            "an interrupted upload with no part to skip"
        };
        assert!(log.contains(started_again), "{log}");
        let dest = work.path().join("restored");
        let mut restore = support::restore_cmd(&store, VOLUME, &dest);
        server.configure(&mut restore);
        run_ok(&mut restore).await;
        let diffs = differences(&src, &dest);
        assert!(
            diffs.is_empty(),
            "keep_parts={keep_parts}: {}",
            diffs.join("\n")
        );
        let mut verify = drainer();
        verify.arg("verify").arg(&store).args(["--volume", VOLUME]);
        server.configure(&mut verify);
        run_ok(&mut verify).await;
        let ledger = drainer::Ledger::open(None, &data).await.unwrap();
        assert_eq!(
            ledger.partial_upload(&killed, b"large").await.unwrap(),
            None,
            "keep_parts={keep_parts}: the stale record is gone"
        );
    }
}

/// A copy of a claim builds on the volume's latest snapshot only if that snapshot is of the
/// same claim (its UID), so a claim deleted and made again under the same name (another
/// namespace's life, perhaps) never refers to the earlier claim's objects; copies that name no
/// claim (`drainer copy`) build on the latest as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_builds_only_on_a_snapshot_of_the_same_claim() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("table"), bytes(7, 100_000)).unwrap();
    let options = drainer::StoreOptions {
        timeout: std::time::Duration::from_secs(30),
        create: true,
        part_size: 8 << 20,
    };
    let store = drainer::Store::open(&file_url(&work.path().join("store")), &options).unwrap();
    let ledger = drainer::Ledger::open(None, &work.path().join("data"))
        .await
        .unwrap();
    let volume: drainer::VolumeId = VOLUME.parse().unwrap();
    let copy = |claim: Option<&str>| {
        let origin = claim.map(|uid| drainer_core::snapshot::DrainOrigin {
            id: "d-1".into(),
            pod: None,
            reason: "test".into(),
            requested: "2026-12-07T00:00:00.000Z".into(),
            claim_uid: Some(uid.into()),
            namespace_uid: None,
            statefulset_uid: None,
        });
        let options = drainer_core::snapshot::CopyOptions {
            concurrency: 2,
            part_size: 8 << 20,
            buffer_bytes: 64 << 20,
            check_hash: true,
            origin,
            compression: Default::default(),
        };
        let (store, ledger, volume, src) =
            (store.clone(), ledger.clone(), volume.clone(), src.clone());
        async move {
            let progress = std::sync::Arc::default();
            let copied =
                drainer_core::snapshot::copy(&src, &store, &volume, &ledger, &options, progress);
            let summary = copied.await.unwrap().snapshot;
            (summary.snapshot, summary.parent)
        }
    };
    let (first, parent) = copy(Some("claim-a")).await;
    assert_eq!(parent, None);
    let (second, parent) = copy(Some("claim-a")).await;
    assert_eq!(parent.as_deref(), Some(first.as_str()), "same claim");
    let (third, parent) = copy(Some("claim-b")).await;
    assert_eq!(parent, None, "a claim of the same name made again");
    let (_, parent) = copy(None).await;
    assert_eq!(parent.as_deref(), Some(third.as_str()), "no claim named");
    assert_ne!(second, third);
}

/// A volume round-trips through Google Cloud Storage (the GCS-protocol server of the tests,
/// which checks every request's service-account signature): awkward names and a large file in
/// parts (an XML multipart upload), an incremental copy, verify, snapshots, prune, and a
/// restore that is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_round_trips_through_gcs_exactly() {
    let server = GcsServer::start().await;
    let store = "gs://bucket/drainer";
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    awkward(&src, 20 * 1024 * 1024);
    let with_server = |mut cmd: tokio::process::Command| {
        server.configure(&mut cmd);
        cmd
    };
    run_ok(&mut with_server(copy_cmd(&src, store, &data))).await;
    let first = server.stats().await;
    assert!(
        first.part_puts >= 2,
        "the large file went up in parts: {first:?}"
    );
    std::fs::write(src.join("changed-after-the-first-copy"), b"new").unwrap();
    let second = run_ok(&mut with_server(copy_cmd(&src, store, &data))).await;
    let (files, _) = uploaded(&second);
    assert_eq!(files, 1, "only the new file is uploaded again: {second}");

    let dest = work.path().join("restored");
    run_ok(&mut with_server(support::restore_cmd(store, VOLUME, &dest))).await;
    assert_eq!(differences(&src, &dest), Vec::<String>::new());
    let mut verify = drainer();
    verify.arg("verify").arg(store).args(["--volume", VOLUME]);
    let verified = run_ok(&mut with_server(verify)).await;
    assert!(verified.contains(" 0 problems"), "{verified}");
    let mut listing = drainer();
    listing
        .arg("snapshots")
        .arg(store)
        .args(["--volume", VOLUME, "-o", "json"]);
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(&mut with_server(listing)).await).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let mut prune = drainer();
    prune
        .arg("prune")
        .arg(store)
        .args(["--volume", VOLUME, "--keep-last", "1"]);
    let pruned = run_ok(&mut with_server(prune)).await;
    assert!(pruned.contains("deleted 1 snapshots"), "{pruned}");
    let again = work.path().join("after-prune");
    run_ok(&mut with_server(support::restore_cmd(
        store, VOLUME, &again,
    )))
    .await;
    assert_eq!(differences(&src, &again), Vec::<String>::new());
    assert_eq!(
        server.stats().await.unauthorized,
        0,
        "every request was signed"
    );
}

/// A copy to GCS killed (SIGKILL) in the middle of a large file's multipart upload continues
/// from its last stored part: what the resumed copy sends is at most what was not stored yet,
/// and the snapshot restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_large_upload_to_gcs_continues_from_its_last_stored_part() {
    let server = GcsServer::start().await;
    let store = "gs://bucket/resume";
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    let size = 80 * 1024 * 1024;
    std::fs::write(src.join("large"), bytes(7, size)).unwrap();
    let (_, upload) = copy_killed_mid_upload(&server, store, &src, &data, 3).await;
    let stored_parts = upload.parts.len() as u64;
    let before = server.stats().await;

    let mut again = copy_cmd(&src, store, &data);
    server.configure(&mut again);
    let resumed = run_ok(&mut again).await;
    assert!(resumed.contains("resumed"), "{resumed}");
    let part = 8 * 1024 * 1024;
    let received = server.stats().await.bytes_in - before.bytes_in;
    assert!(
        received <= size as u64 - stored_parts * part + 64 * 1024,
        "the server received {received} bytes after resume, but {stored_parts} parts of {part} were already stored"
    );
    let dest = work.path().join("restored");
    let mut restore = support::restore_cmd(store, VOLUME, &dest);
    server.configure(&mut restore);
    run_ok(&mut restore).await;
    assert!(differences(&src, &dest).is_empty());
}

/// A service account key GCS does not trust is one error line naming the store, and nothing
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gcs_key_the_server_does_not_trust_is_one_line_and_stores_nothing() {
    let server = GcsServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    // Another account's key: the same file with the private key of the other server.
    let other = GcsServer::start().await;
    let mut cmd = copy_cmd(&src, "gs://bucket/untrusted", &data);
    server.configure_with(&mut cmd, &other.account);
    let line = crate::support::fails(&mut cmd, 1).await;
    assert!(
        line.contains("gs://bucket/untrusted") && line.contains("401"),
        "{line}"
    );
    let stats = server.stats().await;
    assert_eq!((stats.object_puts, stats.part_puts), (0, 0), "{stats:?}");
    assert!(stats.unauthorized >= 1, "{stats:?}");
}

/// A volume round-trips through Azure Blob Storage (Azurite, the Azure Storage emulator,
/// checking every request's Shared Key signature): awkward names and a large file in blocks,
/// an incremental copy (only the new file uploaded), verify, snapshots, prune, and a restore
/// that is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_round_trips_through_azure_exactly() {
    let server = AzuriteServer::start().await;
    let store = "az://bucket/drainer";
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    awkward(&src, 20 * 1024 * 1024);
    let with_server = |mut cmd: tokio::process::Command| {
        server.configure(&mut cmd);
        cmd
    };
    run_ok(&mut with_server(copy_cmd(&src, store, &data))).await;
    std::fs::write(src.join("changed-after-the-first-copy"), b"new").unwrap();
    let second = run_ok(&mut with_server(copy_cmd(&src, store, &data))).await;
    let (files, _) = uploaded(&second);
    assert_eq!(files, 1, "only the new file is uploaded again: {second}");

    let dest = work.path().join("restored");
    run_ok(&mut with_server(support::restore_cmd(store, VOLUME, &dest))).await;
    assert_eq!(differences(&src, &dest), Vec::<String>::new());
    let mut verify = drainer();
    verify.arg("verify").arg(store).args(["--volume", VOLUME]);
    let verified = run_ok(&mut with_server(verify)).await;
    assert!(verified.contains(" 0 problems"), "{verified}");
    let mut prune = drainer();
    prune
        .arg("prune")
        .arg(store)
        .args(["--volume", VOLUME, "--keep-last", "1"]);
    let pruned = run_ok(&mut with_server(prune)).await;
    assert!(pruned.contains("deleted 1 snapshots"), "{pruned}");
    let again = work.path().join("after-prune");
    run_ok(&mut with_server(support::restore_cmd(
        store, VOLUME, &again,
    )))
    .await;
    assert_eq!(differences(&src, &again), Vec::<String>::new());
}

/// A copy to Azure killed (SIGKILL) in the middle of a large file's block upload continues
/// from its last stored block: the resumed copy says so, and the snapshot restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_large_upload_to_azure_continues_from_its_last_stored_part() {
    let server = AzuriteServer::start().await;
    let store = "az://bucket/resume";
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("large"), bytes(7, 80 * 1024 * 1024)).unwrap();
    let (_, upload) = copy_killed_mid_upload(&server, store, &src, &data, 3).await;
    assert!(
        upload.parts.len() >= 3,
        "{} parts stored",
        upload.parts.len()
    );
    let mut again = copy_cmd(&src, store, &data);
    server.configure(&mut again);
    let resumed = run_ok(&mut again).await;
    assert!(resumed.contains("resumed"), "{resumed}");
    let dest = work.path().join("restored");
    let mut restore = support::restore_cmd(store, VOLUME, &dest);
    server.configure(&mut restore);
    run_ok(&mut restore).await;
    assert!(differences(&src, &dest).is_empty());
}

/// An account key Azure does not accept is one error line naming the store and the refusal,
/// and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_key_the_server_does_not_accept_is_one_line_and_stores_nothing() {
    let server = AzuriteServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let mut cmd = copy_cmd(&src, "az://bucket/untrusted", &data);
    server.configure(&mut cmd);
    let wrong = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7; 64]);
    cmd.env("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")
        .env("AZURE_STORAGE_ACCESS_KEY", wrong);
    let line = crate::support::fails(&mut cmd, 1).await;
    assert!(
        line.contains("az://bucket/untrusted") && line.contains("403"),
        "{line}"
    );
    let mut listing = drainer();
    listing
        .arg("snapshots")
        .arg("az://bucket/untrusted")
        .args(["--volume", VOLUME, "-o", "json"]);
    server.configure(&mut listing);
    let listed = run_ok(&mut listing).await;
    assert_eq!(listed.trim(), "[]", "nothing stored");
}
