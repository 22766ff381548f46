//! Retention by policy through the real binary: `drainer prune --plan` deletes nothing and
//! lists exactly what `drainer prune` then deletes; every kept snapshot still restores exactly
//! (objects that kept snapshots refer to, uploaded by deleted ones, stay); bad policies are
//! one-line errors that change nothing; and the service's retention pass prunes by its flags,
//! skips a volume with an unfinished copy run and a volume whose directory is gone, and
//! records what it did.

use crate::support::serve::Serve;
use crate::support::tree::{bytes, differences, relative_paths};
use crate::support::{drainer, file_url, run, run_ok};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const VOLUME: &str = "shop/data-web-0";

fn copy(src: &Path, store: &str, data: &Path, volume: &str) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.arg("copy")
        .arg(src)
        .arg(store)
        .args(["--volume", volume, "--data-dir"])
        .arg(data);
    cmd
}

fn prune(store: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.arg("prune").arg(store).args(args);
    cmd
}

/// Snapshot ids of `volume`, oldest first.
async fn snapshot_ids(store: &str, volume: &str) -> Vec<String> {
    let out = run_ok(
        drainer()
            .arg("snapshots")
            .arg(store)
            .args(["--volume", volume, "-o", "json"]),
    )
    .await;
    let listed: Value = serde_json::from_str(&out).unwrap();
    let rows = listed
        .as_array()
        .cloned()
        .or_else(|| listed["snapshots"].as_array().cloned())
        .unwrap_or_else(|| panic!("a list of snapshots: {listed}"));
    let mut ids: Vec<String> = rows
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Every file under `dir`, with its bytes.
fn contents(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all: Vec<_> = relative_paths(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file())
        .map(|p| {
            let bytes = std::fs::read(dir.join(&p)).unwrap();
            (p, bytes)
        })
        .collect();
    all.sort();
    all
}

/// Sets the completion time of a snapshot (its summary says nothing else about time).
fn set_completed(store_dir: &Path, volume: &str, id: &str, completed: &str) {
    let path = store_dir
        .join("volumes")
        .join(volume)
        .join("snapshots")
        .join(id)
        .join("snapshot.json");
    let mut summary: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    summary["completed"] = completed.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&summary).unwrap()).unwrap();
}

/// Six incremental snapshots, each file changed in some and carried over by reference in the
/// others; returns their ids and a copy of the source as each saw it.
async fn six_snapshots(work: &Path, store: &str, data: &Path) -> Vec<(String, std::path::PathBuf)> {
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (name, seed) in [("a", 1), ("b", 2), ("c", 3)] {
        std::fs::write(src.join(name), bytes(seed, 20_000)).unwrap();
    }
    std::fs::write(src.join("big"), bytes(4, 3 << 20)).unwrap();
    let changes: [&[&str]; 6] = [&[], &["a", "d"], &["b"], &["a"], &["c"], &["b"]];
    let mut taken = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        for name in *change {
            std::fs::write(src.join(name), bytes(100 + i as u64 * 10, 10_000 + i)).unwrap();
        }
        run_ok(&mut copy(&src, store, data, VOLUME)).await;
        let saved = work.join(format!("as-of-{i}"));
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&saved)
            .status()
            .unwrap();
        assert!(status.success());
        let ids = snapshot_ids(store, VOLUME).await;
        taken.push((ids.last().unwrap().clone(), saved));
    }
    taken
}

async fn assert_restores_as(store: &str, id: &str, saved: &Path, scratch: &Path) {
    let dest = scratch.join(format!("restored-{id}"));
    run_ok(
        drainer()
            .arg("restore")
            .arg(store)
            .args(["--volume", VOLUME, "--snapshot", id])
            .arg(&dest),
    )
    .await;
    let diffs = differences(saved, &dest);
    assert!(
        diffs.is_empty(),
        "snapshot {id} differs:\n{}",
        diffs.join("\n")
    );
    run_ok(
        drainer()
            .arg("verify")
            .arg(store)
            .args(["--volume", VOLUME, "--snapshot", id]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_plan_lists_exactly_what_prune_deletes_and_kept_snapshots_restore_exactly() {
    let work = tempfile::tempdir().unwrap();
    let (store_dir, data) = (work.path().join("store"), work.path().join("data"));
    let store = file_url(&store_dir);
    let taken = six_snapshots(work.path(), &store, &data).await;
    // Weeks 47, 48, 48, 49, 49, 49 of 2026 (UTC; s1 at 23:30 -02:00 is Thursday in UTC).
    let times = [
        "2026-11-20T12:00:00Z",
        "2026-11-25T23:30:00-02:00",
        "2026-11-27T12:00:00Z",
        "2026-12-01T12:00:00Z",
        "2026-12-02T12:00:00Z",
        "2026-12-03T12:00:00Z",
    ];
    for ((id, _), time) in taken.iter().zip(times) {
        set_completed(&store_dir, VOLUME, id, time);
    }
    let id = |i: usize| taken[i].0.clone();
    let policy = ["--volume", VOLUME, "--keep-last", "1", "--keep-weekly", "3"];

    let before = contents(&store_dir);
    let plan = run_ok(prune(&store, &policy).args(["--plan", "-o", "json"])).await;
    assert_eq!(contents(&store_dir), before, "--plan changes nothing");
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["policy"], "last=1,weekly=3");
    let volume = &plan["volumes"][0];
    let doomed: Vec<String> = serde_json::from_value(volume["deleted"].clone()).unwrap();
    assert_eq!(doomed, vec![id(1), id(3), id(4)], "{plan}");
    let reasons = |i: usize| {
        volume["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot"] == id(i))
            .map(|s| s["reasons"].clone())
            .unwrap()
    };
    assert_eq!(
        reasons(5),
        serde_json::json!(["latest", "last 1/1", "weekly 2026-W49"])
    );
    assert_eq!(reasons(2), serde_json::json!(["weekly 2026-W48"]));
    assert_eq!(reasons(0), serde_json::json!(["weekly 2026-W47"]));
    assert_eq!(reasons(1), serde_json::json!(["no rule keeps it"]));
    let table = run_ok(prune(&store, &policy).arg("--plan")).await;
    assert!(table.contains(&format!("delete {}", id(3))), "{table}");
    assert!(
        table.contains("would delete 3 snapshots, keep 3"),
        "{table}"
    );
    assert_eq!(contents(&store_dir), before, "--plan changes nothing");

    let pruned = run_ok(prune(&store, &policy).args(["-o", "json"])).await;
    let pruned: Value = serde_json::from_str(&pruned).unwrap();
    let deleted: Vec<String> =
        serde_json::from_value(pruned["volumes"][0]["deleted"].clone()).unwrap();
    assert_eq!(
        deleted, doomed,
        "prune deletes exactly what the plan listed"
    );
    assert!(pruned["volumes"][0]["objects_deleted"].as_u64().unwrap() > 0);
    assert!(
        pruned["store_calls"]["delete"].as_u64().unwrap() > 0,
        "{pruned}"
    );
    assert_eq!(
        snapshot_ids(&store, VOLUME).await,
        vec![id(0), id(2), id(5)]
    );
    // s2 refers to files s1 uploaded (a, d), s5 to files of s1, s3 and s4: all still restore.
    for i in [0, 2, 5] {
        assert_restores_as(&store, &id(i), &taken[i].1, work.path()).await;
    }
    // The same policy again deletes nothing; `--keep` is still --keep-last.
    let again = run_ok(&mut prune(&store, &policy)).await;
    assert!(again.contains("deleted 0 snapshots"), "{again}");
    let all = run_ok(&mut prune(&store, &["--keep", "1"])).await;
    assert!(
        all.contains(&format!("pruned {VOLUME}: deleted 2 snapshots")),
        "{all}"
    );
    assert_eq!(snapshot_ids(&store, VOLUME).await, vec![id(5)]);
    let again = work.path().join("again");
    std::fs::create_dir(&again).unwrap();
    assert_restores_as(&store, &id(5), &taken[5].1, &again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_one_line_errors_that_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (store_dir, data, src) = (
        work.path().join("store"),
        work.path().join("data"),
        work.path().join("src"),
    );
    let store = file_url(&store_dir);
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..2u64 {
        std::fs::write(src.join("f"), bytes(i, 1000)).unwrap();
        run_ok(&mut copy(&src, &store, &data, VOLUME)).await;
    }
    let before = contents(&store_dir);
    let cases: [(&[&str], &str); 7] = [
        (&["--volume", VOLUME], "no retention rule given"),
        (&["--volume", VOLUME, "--plan"], "no retention rule given"),
        (&["--volume", VOLUME, "--keep-last", "0"], "0 keeps nothing"),
        (
            &["--volume", VOLUME, "--keep-daily", "x"],
            "\"x\" is not a whole number",
        ),
        (
            &["--volume", VOLUME, "--keep-within", "1y"],
            "\"1y\" is not a duration",
        ),
        (
            &["--volume", VOLUME, "--keep", "1", "--keep-last", "2"],
            "cannot be used with",
        ),
        (&["--volume", "Shop/x", "--keep-last", "1"], "Shop"),
    ];
    for (args, says) in cases {
        let out = run(&mut prune(&store, args)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        if says == "no retention rule given" {
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
    }
    assert_eq!(contents(&store_dir), before, "nothing changed");
    let out = run(drainer()
        .arg("serve")
        .arg("--data-dir")
        .arg(work.path().join("serve"))
        .args(["--keep-within", "forever"]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"forever\" is not a duration"), "{stderr}");
}

/// The service's pass: `shop/a` is pruned to its two newest snapshots and the prune recorded;
/// `shop/b` has an unfinished copy run and `shop/c`'s directory is gone (kept whole for
/// `--keep-deleted-for`): both keep every snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_prunes_by_policy_and_skips_busy_and_gone_volumes() {
    let work = tempfile::tempdir().unwrap();
    let (data, root) = (work.path().join("data"), work.path().join("volumes"));
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    let mut saved = Vec::new();
    for pvc in ["a", "b", "c"] {
        let dir = root.join("shop").join(pvc);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4u64 {
            std::fs::write(dir.join(format!("f{i}")), bytes(i, 5000)).unwrap();
            run_ok(&mut copy(&dir, &store, &data, &format!("shop/{pvc}"))).await;
        }
        if pvc == "a" {
            saved.push(contents(&dir));
        }
    }
    std::fs::remove_dir_all(root.join("shop/c")).unwrap();
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let busy: drainer::VolumeId = "shop/b".parse().unwrap();
    ledger
        .run_checkpoint(Some("elsewhere:1:0".into()), None)
        .begin(&store, &busy, &"20991231T000000000Z-0000".parse().unwrap())
        .await
        .unwrap();
    drop(ledger);
    let root_arg = root.display().to_string();
    let serve = Serve::start(
        &data,
        &[
            "--volume-root",
            &root_arg,
            "--store",
            &store,
            "--sweep-interval",
            "0",
            "--prune-interval",
            "1",
            "--keep-last",
            "2",
            "--replica-id",
            "replica-1",
        ],
    )
    .await;
    let mut waited = Duration::ZERO;
    while snapshot_ids(&store, "shop/a").await.len() > 2 {
        assert!(waited < Duration::from_secs(60), "no pass pruned shop/a");
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
    // A few more passes run; the other volumes keep everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(snapshot_ids(&store, "shop/b").await.len(), 4);
    assert_eq!(snapshot_ids(&store, "shop/c").await.len(), 4);
    assert_eq!(snapshot_ids(&store, "shop/a").await.len(), 2);
    let (status, metrics) = serve.call(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| metrics.to_string());
    assert!(
        metrics.contains("drainer_snapshots_pruned_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drainer_prune_pass_duration_seconds_count"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(serve.log_path()).unwrap();
    assert!(log.contains("pruned snapshots"), "{log}");
    serve.terminate(Duration::from_secs(15)).await;
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let prunes = ledger.prunes(10).await.unwrap();
    assert_eq!(prunes.len(), 1, "{prunes:?}");
    let record = &prunes[0];
    assert_eq!(
        (
            record.volume.as_str(),
            record.policy.as_str(),
            record.source.as_str()
        ),
        ("shop/a", "last=2", "flags")
    );
    assert_eq!(
        (record.snapshots, record.replica.as_str()),
        (2, "replica-1")
    );
    assert_eq!(record.deleted.split(' ').count(), 2);
    // What is left of shop/a restores exactly.
    let dest = work.path().join("restored-a");
    run_ok(
        drainer()
            .arg("restore")
            .arg(&store)
            .args(["--volume", "shop/a"])
            .arg(&dest),
    )
    .await;
    assert_eq!(contents(&dest), saved[0]);
}
