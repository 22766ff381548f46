//! What a hostile or careless user could break, each case through the real `drainer`
//! binary on real files and disks: names Kubernetes accepts, store URLs that meant `/`, files
//! that grow while they are read, stores whose parts vanished, damaged catalogs, tampered
//! manifests, failed restores, concurrent copies and sparse files.

use crate::support::serve::Serve;
use crate::support::{self, drainer, fails, file_url, run, run_ok};
use std::path::Path;
use std::time::Duration;

const VOLUME: &str = "shop/data-web-4";

/// [`support::copy_cmd`] in parts of 8 MiB, so a test file of a few MiB goes through
/// multipart uploads.
fn copy_cmd(src: &Path, store: &str, data: &Path, volume: &str) -> tokio::process::Command {
    let mut cmd = support::copy_cmd(src, store, volume, data);
    cmd.args(["--part-size-mib", "8", "--buffer-mib", "16"]);
    cmd
}

/// A PVC name of 253 characters whose parts between dots are longer than 63: Kubernetes
/// accepts it (`IsDNS1123Subdomain`), so drainer must too, in the CLI, the store layout, the
/// local volume directory and the API.
fn longest_pvc_name() -> String {
    let name = format!("data-{}.{}", "a".repeat(120), "b".repeat(127));
    assert_eq!(name.len(), 253);
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_names_kubernetes_accepts_are_copied_restored_and_handed_off() {
    let work = tempfile::tempdir().unwrap();
    let volume = format!("shop/{}", longest_pvc_name());
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"long name").unwrap();
    let store = file_url(&work.path().join("store"));
    run_ok(&mut copy_cmd(&src, &store, &data, &volume)).await;
    let listed = run_ok(
        drainer()
            .arg("snapshots")
            .arg(&store)
            .args(["--volume", &volume, "-o", "json"]),
    )
    .await;
    assert!(listed.contains(&longest_pvc_name()), "{listed}");
    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, &volume, &dest)).await;
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"long name");

    // The API takes the same names, and the local-mode volume directory holds them.
    let serve_data = work.path().join("serve");
    let pvc = longest_pvc_name();
    let dir = serve_data.join("volumes/shop").join(&pvc);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("g"), b"through the API").unwrap();
    let serve = Serve::start(&serve_data, &["--sweep-interval", "0"]).await;
    let (status, drains) = serve.handoff("shop", &[&pvc]).await;
    assert_eq!(status, 202);
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    let ended = serve.wait_ended(&[id], Duration::from_secs(60)).await;
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
}

/// Changes `path` in a loop on a thread until the returned flag is set: appends 64 KiB at a
/// time, or (with `shrink`) cuts the file back and forth between two sizes.
fn keep_changing(
    path: std::path::PathBuf,
    shrink: bool,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::io::Write;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        let mut round = 0u64;
        // Bounded: at most 4,000 changes (256 MiB appended), whatever the copy does.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && round < 4_000 {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            if shrink {
                let len = if round.is_multiple_of(2) {
                    9 << 20
                } else {
                    17 << 20
                };
                file.set_len(len).unwrap();
            } else {
                (&file).write_all(&chunk).unwrap();
            }
            round += 1;
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    (stop, thread)
}

/// A copy of a file that grows (or shrinks) while it is read never panics: it stores a
/// consistent version, or fails with a retryable error that names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_growing_or_shrinking_during_a_copy_fails_cleanly_naming_it() {
    for shrink in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let (src, data) = (work.path().join("src"), work.path().join("data"));
        std::fs::create_dir(&src).unwrap();
        let growing = src.join("growing.log");
        std::fs::write(&growing, crate::support::tree::bytes(3, 20 << 20)).unwrap();
        let store = file_url(&work.path().join("store"));
        let (stop, changer) = keep_changing(growing.clone(), shrink);
        let out = run(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        changer.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && out.status.code() != Some(101),
            "shrink={shrink}: the engine panicked: {stderr}"
        );
        match out.status.code() {
            Some(0) => {
                // Whatever version was stored must verify.
                run_ok(
                    drainer()
                        .arg("verify")
                        .arg(&store)
                        .args(["--volume", VOLUME]),
                )
                .await;
            }
            Some(1) => assert!(
                stderr.contains("growing.log") && stderr.contains("changed while it was read"),
                "shrink={shrink}: the error names the file: {stderr}"
            ),
            other => panic!("shrink={shrink}: exit {other:?}: {stderr}"),
        }
    }
}

/// Store URLs that used to mean `/` (or to drop a part silently) are usage errors, and a
/// store directory that cannot hold files fails at once instead of spinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_urls_that_meant_the_root_are_usage_errors() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let tag = format!("drainer-test-{:08x}", rand::random::<u32>());
    let namespace = format!("ns-{:08x}", rand::random::<u32>());
    let volume = format!("{namespace}/pvc");
    let under_root = [
        Path::new("/").join(&tag),
        Path::new("/volumes").join(&namespace),
    ];
    let cases = [
        (format!("file:{tag}"), "absolute path"),
        ("file://".to_owned(), "absolute path"),
        ("file:///".to_owned(), "filesystem root"),
        (format!("file://host{}", work.path().display()), "host"),
        (format!("{}?x=1", file_url(&work.path().join("q"))), "query"),
        (
            format!("{}#frag", file_url(&work.path().join("f"))),
            "fragment",
        ),
        ("s3://".to_owned(), "bucket"),
        ("s3:///prefix".to_owned(), "bucket"),
        ("gopher://host/x".to_owned(), "unsupported scheme"),
    ];
    for (url, says) in &cases {
        let stderr = fails(&mut copy_cmd(&src, url, &data, &volume), 2).await;
        assert!(
            stderr.contains("store URL") && stderr.contains(says),
            "{url}: {stderr}"
        );
        for leaked in &under_root {
            let was_there = leaked.exists();
            let _ = std::fs::remove_dir_all(leaked);
            assert!(!was_there, "{url} wrote under {}", leaked.display());
        }
        for other in ["snapshots", "restore", "verify", "prune"] {
            let mut cmd = drainer();
            cmd.arg(other).arg(url).args(["--volume", &volume]);
            match other {
                "restore" => cmd.arg(work.path().join("dest")),
                "prune" => cmd.args(["--keep", "1"]),
                _ => &mut cmd,
            };
            let stderr = fails(&mut cmd, 2).await;
            assert!(stderr.contains(says), "{other} {url}: {stderr}");
        }
    }
    assert!(!work.path().join("q").exists() && !work.path().join("f").exists());

    // A directory that exists but cannot hold files: a clear error instead of a busy loop.
    let stderr = fails(&mut copy_cmd(&src, "file:///proc", &data, &volume), 1).await;
    assert!(
        stderr.contains("/proc") && stderr.contains("cannot create a file"),
        "{stderr}"
    );
}

/// Takes `n` snapshots of a small changing tree as `volume`; returns their ids, oldest first.
async fn snapshots_of(work: &Path, store: &str, volume: &str, n: usize) -> Vec<String> {
    let src = work.join(format!("src-{}", volume.replace('/', "-")));
    let data = work.join("data");
    std::fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        std::fs::write(src.join("version"), format!("version {i}")).unwrap();
        let line = run_ok(&mut copy_cmd(&src, store, &data, volume)).await;
        ids.push(line.split_whitespace().nth(1).unwrap().to_owned());
    }
    ids
}

/// One damaged `snapshot.json` or `latest` is reported as damaged, and everything else is
/// still listed, restored and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_summary_or_latest_pointer_breaks_only_itself() {
    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    let a = snapshots_of(work.path(), &store, "shop/a", 2).await;
    let b = snapshots_of(work.path(), &store, "shop/b", 2).await;
    let volume_dir = |v: &str| store_dir.join("volumes/shop").join(v);
    // a's newest summary is garbage (and `latest` names it); b's `latest` is garbage.
    std::fs::write(
        volume_dir("a")
            .join("snapshots")
            .join(&a[1])
            .join("snapshot.json"),
        b"{not json",
    )
    .unwrap();
    std::fs::write(volume_dir("b").join("latest"), b"\x00garbage").unwrap();

    let table = run_ok(drainer().arg("snapshots").arg(&store)).await;
    for id in a.iter().chain(&b) {
        assert!(table.contains(id.as_str()), "{id} listed: {table}");
    }
    let damaged_row = table.lines().find(|l| l.contains(&a[1])).unwrap();
    assert!(
        damaged_row.contains("DAMAGED") && damaged_row.contains("snapshot.json"),
        "{table}"
    );
    let json = run_ok(drainer().arg("snapshots").arg(&store).args(["-o", "json"])).await;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.len(), 4, "{json}");
    let damaged: Vec<_> = listed
        .iter()
        .filter(|s| s.get("damaged").is_some())
        .collect();
    assert_eq!(damaged.len(), 1, "{json}");
    assert_eq!(damaged[0]["snapshot"], a[1].as_str());

    // `latest` falls back to the newest complete snapshot, and says so.
    for (volume, expected) in [("shop/a", "version 0"), ("shop/b", "version 1")] {
        let dest = work
            .path()
            .join(format!("restored-{}", volume.replace('/', "-")));
        let out = run(support::restore_cmd(&store, volume, &dest).env("DRAINER_LOG", "warn")).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{volume}: {stderr}");
        assert!(
            stderr.contains("latest pointer is not trusted"),
            "{volume}: {stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("version")).unwrap(),
            expected
        );
    }
    // Naming the damaged snapshot is an error that says why.
    let stderr = fails(
        support::restore_cmd(&store, "shop/a", &work.path().join("d")).args(["--snapshot", &a[1]]),
        1,
    )
    .await;
    assert!(
        stderr.contains(&a[1]) && stderr.contains("damaged"),
        "{stderr}"
    );

    // The API lists the same, with a 200.
    let serve_data = work.path().join("serve");
    std::fs::create_dir_all(&serve_data).unwrap();
    let serve = Serve::start(&serve_data, &["--sweep-interval", "0", "--store", &store]).await;
    let (status, body) = serve
        .call(reqwest::Method::GET, "/v1/volumes/shop/a/snapshots", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let snapshots = body["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{body}");
    assert!(
        snapshots[1]["damaged"]
            .as_str()
            .unwrap()
            .contains("snapshot.json")
    );
    let (status, body) = serve
        .call(reqwest::Method::GET, "/v1/volumes/shop/b/snapshots", None)
        .await;
    assert_eq!(status, 200, "{body}");

    // Pruning leaves the damaged snapshot alone, and a copy repairs `latest`.
    run_ok(
        drainer()
            .arg("prune")
            .arg(&store)
            .args(["--volume", "shop/a", "--keep", "1"]),
    )
    .await;
    assert!(volume_dir("a").join("snapshots").join(&a[1]).exists());
    snapshots_of(work.path(), &store, "shop/b", 1).await;
    let dest = work.path().join("repaired");
    let out = run(&mut support::restore_cmd(&store, "shop/b", &dest)).await;
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not trusted"));
}

/// The store directory of `VOLUME`'s snapshot `id` under a local store.
fn snapshot_dir(store_dir: &Path, id: &str) -> std::path::PathBuf {
    store_dir.join("volumes/shop/data-web-4/snapshots").join(id)
}

/// Temporary files a restore left in its staging directory (`.drainer-restore-…/`). The
/// marker of an unfinished restore (`restore.json`) stays on purpose: running the same
/// restore again continues it.
fn staging_left(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            let in_staging = e
                .path()
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n.to_string_lossy().starts_with(".drainer-restore-"));
            in_staging && e.file_name() != "restore.json"
        })
        .map(|e| e.into_path())
        .collect()
}

/// A manifest changed after its snapshot completed (a file's mode made setuid, everything
/// else intact) is refused by restore before anything is written, and reported by verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_verify_refuse_a_manifest_changed_after_completion() {
    let work = tempfile::tempdir().unwrap();
    let (src, data, store_dir) = (
        work.path().join("src"),
        work.path().join("data"),
        work.path().join("store"),
    );
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(src.join("other"), b"other").unwrap();
    let store = file_url(&store_dir);
    let line = run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    let id = line.split_whitespace().nth(1).unwrap();
    let manifest = snapshot_dir(&store_dir, id).join("manifest.jsonl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let tampered: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["path"] == "tool" {
                v["mode"] = serde_json::json!(0o107777);
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&manifest, tampered.join("\n") + "\n").unwrap();

    let dest = work.path().join("dest");
    let stderr = fails(&mut support::restore_cmd(&store, VOLUME, &dest), 1).await;
    assert!(
        stderr.contains("manifest.jsonl")
            && stderr.contains("not the manifest the snapshot was completed with"),
        "{stderr}"
    );
    let written: Vec<_> = std::fs::read_dir(&dest)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "restore wrote {written:?} from a tampered manifest"
    );
    let out = run(drainer()
        .arg("verify")
        .arg(&store)
        .args(["--volume", VOLUME]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("not the manifest the snapshot was completed with"),
        "{stdout}"
    );
}

/// A restore that fails on a bad object leaves no file under the final name of that object,
/// no temporary file, and says what differs (size, or content at the same size): for a small
/// file (one read) and a large one (read in parts of 8 MiB, several at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_leaves_no_wrong_file_under_a_final_name() {
    const LARGE: usize = (3 << 23) + 5;
    for (len, damage) in [
        (9, "truncate"),
        (9, "flip"),
        (LARGE, "truncate"),
        (LARGE, "flip"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let (src, data, store_dir) = (
            work.path().join("src"),
            work.path().join("data"),
            work.path().join("store"),
        );
        std::fs::create_dir(&src).unwrap();
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("bad"), &content).unwrap();
        let store = file_url(&store_dir);
        let line = run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
        let id = line.split_whitespace().nth(1).unwrap();
        let object = snapshot_dir(&store_dir, id).join("files/bad");
        let (says, verify_says) = match damage {
            "truncate" => {
                std::fs::write(&object, &content[..len / 3]).unwrap();
                (
                    format!(
                        "holds {} bytes, but its manifest entry says {len} bytes",
                        len / 3
                    ),
                    format!(
                        "the object holds {} bytes, the manifest says {len} bytes",
                        len / 3
                    ),
                )
            }
            _ => {
                let mut flipped = content.clone();
                flipped[len / 2] ^= 0xff;
                std::fs::write(&object, &flipped).unwrap();
                (
                    "does not match its manifest hash".to_owned(),
                    "same size, but the content's hash is".to_owned(),
                )
            }
        };
        let case = format!("{damage} of {len} bytes");
        let dest = work.path().join("dest");
        let stderr = fails(&mut support::restore_cmd(&store, VOLUME, &dest), 1).await;
        assert!(
            stderr.contains(&says) && stderr.contains("bad"),
            "{case}: {stderr}"
        );
        assert!(
            !dest.join("bad").exists(),
            "{case}: a wrong file under the final name"
        );
        assert!(
            staging_left(&dest).is_empty(),
            "{case}: {:?}",
            staging_left(&dest)
        );
        let out = run(drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]))
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&verify_says), "{case}: {stdout}");
    }
}

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped (even when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs (the tests run as root)");
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A restore into a full disk fails with the path and the reason, leaves nothing under the
/// final name of the file it could not write (the files before it are in place), and no
/// temporary files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_full_disk_fails_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("small"), b"fits").unwrap();
    std::fs::write(src.join("too-big"), crate::support::tree::bytes(5, 3 << 20)).unwrap();
    let store = file_url(&work.path().join("store"));
    run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    let disk = Tmpfs::mount(&work.path().join("disk"), "1m");
    let dest = disk.0.join("dest");
    // One file at a time, so `small` is in place before `too-big` fills the disk (with several
    // at once, whichever write the full disk refuses first is the one named).
    let mut restore = support::restore_cmd(&store, VOLUME, &dest);
    let stderr = fails(restore.args(["--concurrency", "1"]), 1).await;
    assert!(
        stderr.contains("too-big") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(!dest.join("too-big").exists());
    assert_eq!(std::fs::read(dest.join("small")).unwrap(), b"fits");
    assert!(staging_left(&dest).is_empty(), "{:?}", staging_left(&dest));
}

/// Starts a copy of `src` and kills it (SIGKILL) once the ledger records both finished files
/// and stored parts of `zz-large` (which comes after the small files).
async fn kill_mid_copy(src: &Path, store: &str, data: &Path) {
    let ledger = drainer::Ledger::open(None, data).await.unwrap();
    let mut child = copy_cmd(src, store, data, VOLUME)
        .args(["--concurrency", "2"])
        .spawn()
        .unwrap();
    let volume: drainer::VolumeId = VOLUME.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "nothing recorded within 90 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy finished before it was killed"
        );
        let Some(record) = ledger.runs(&volume).await.unwrap().into_iter().next() else {
            continue;
        };
        let run = drainer_core::snapshot::Run {
            id: record.id.clone(),
            snapshot: record.snapshot.parse().unwrap(),
            resumed: false,
        };
        let parts = ledger
            .partial_upload(&run, b"zz-large")
            .await
            .unwrap()
            .map_or(0, |u| u.parts.len());
        if parts >= 4 && ledger.recorded_files(&record.id).await.unwrap() > 0 {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            return;
        }
    }
}

/// A resumed copy whose stored parts and stored files vanished from the store (the store was
/// emptied after a kill -9) stores them again and completes, and the snapshot is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_copy_whose_stored_objects_vanished_stores_them_again() {
    let work = tempfile::tempdir().unwrap();
    let (src, data, store_dir) = (
        work.path().join("src"),
        work.path().join("data"),
        work.path().join("store"),
    );
    let store = file_url(&store_dir);
    std::fs::create_dir(&src).unwrap();
    for i in 0..3000 {
        std::fs::write(
            src.join(format!("small-{i:04}")),
            crate::support::tree::bytes(i, 4096),
        )
        .unwrap();
    }
    std::fs::write(
        src.join("zz-large"),
        crate::support::tree::bytes(1000, 320 << 20),
    )
    .unwrap();
    kill_mid_copy(&src, &store, &data).await;
    std::fs::remove_dir_all(&store_dir).unwrap();

    let out = run(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the rerun recovers: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"));
    run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;
    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    let diffs = crate::support::tree::differences(&src, &dest);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// A store whose disk fills up during a copy: a clear error naming what could not be
/// written, nothing half-written under a final name, and the same command completes once
/// there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_disk_fails_the_copy_cleanly_and_it_resumes() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    for i in 0..40 {
        std::fs::write(
            src.join(format!("f-{i:02}")),
            crate::support::tree::bytes(i, 512 * 1024),
        )
        .unwrap();
    }
    std::fs::write(src.join("large"), crate::support::tree::bytes(99, 12 << 20)).unwrap();
    let disk = Tmpfs::mount(&work.path().join("disk"), "8m");
    let store_dir = disk.0.join("store");
    let store = file_url(&store_dir);
    let stderr = fails(&mut copy_cmd(&src, &store, &data, VOLUME), 1).await;
    assert!(stderr.contains("No space left"), "{stderr}");
    assert!(
        stderr.contains("snapshots/") || stderr.contains(&store_dir.display().to_string()),
        "the error names what could not be written: {stderr}"
    );
    for entry in walkdir::WalkDir::new(&store_dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let under_final_name = entry.file_type().is_file()
            && entry.path().to_string_lossy().contains("/files/")
            && !name.contains('#')
            && !name.contains(".part-");
        if under_final_name {
            assert_eq!(
                std::fs::read(entry.path()).unwrap(),
                std::fs::read(src.join(&name)).unwrap(),
                "{name} is half-written under its final name"
            );
        }
    }
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(status.success());
    run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;
    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    assert!(crate::support::tree::differences(&src, &dest).is_empty());
}

/// A relayed mover whose drainer's local store fills up: the drainer answers the full disk
/// as the store's failure (the upload and its stored parts kept, not an upload "gone" that
/// the mover restarts until the file looks torn), the mover waits and says why ("No space
/// left"), the drain is not completed meanwhile, and once there is room the same mover
/// completes the drain; the snapshot restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_disk_holds_a_relayed_mover_until_there_is_room() {
    let work = tempfile::tempdir().unwrap();
    let (mount, data) = (work.path().join("mount"), work.path().join("data"));
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..3 {
        let file = mount.join(format!("large-{i}"));
        std::fs::write(file, crate::support::tree::bytes(i, 24 << 20)).unwrap();
    }
    let disk = Tmpfs::mount(&work.path().join("disk"), "40m");
    let store = file_url(&disk.0.join("store"));
    let serve = Serve::start(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--movers",
            "external",
            "--store",
            &store,
        ],
    )
    .await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let log = work.path().join("mover.log");
    let mut mover = drainer();
    mover
        .args(["mover", "--drainer", &serve.url, "--drain", &id])
        .arg("--source")
        .arg(&mount)
        .env("DRAINER_TOKEN", crate::support::serve::TOKEN)
        .stderr(std::fs::File::create(&log).unwrap());
    let mut mover = mover.spawn().unwrap();
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !said().contains("No space left") {
        assert!(std::time::Instant::now() < deadline, "{}", said());
        assert!(mover.try_wait().unwrap().is_none(), "{}", said());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(serve.drain(&id).await["state"], "completed");
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=128m"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(120), mover.wait())
        .await
        .expect("the mover finished once there was room")
        .unwrap();
    let said = said();
    assert!(exit.success(), "{said}");
    for wrong in ["changed while it was read", "starting it again"] {
        assert!(!said.contains(wrong), "{wrong}: {said}");
    }
    serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;
    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, "shop/data-web-4", &dest)).await;
    assert!(crate::support::tree::differences(&mount, &dest).is_empty());
}

/// A tree that takes a few seconds to copy.
fn slow_tree(src: &Path) {
    for d in 0..20 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("f{f:03}")),
                crate::support::tree::bytes(d * 100 + f, 8192),
            )
            .unwrap();
        }
    }
    std::fs::write(src.join("large"), crate::support::tree::bytes(7, 96 << 20)).unwrap();
}

/// Waits until the ledger at `data` (or `database_url`) has a run of `VOLUME` with recorded
/// files.
async fn wait_recorded(ledger: &drainer::Ledger, child: &mut tokio::process::Child) {
    let volume: drainer::VolumeId = VOLUME.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "nothing recorded within a minute"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the copy ended ({status}) before the ledger showed a recorded file");
        }
        if let Some(run) = ledger.runs(&volume).await.unwrap().into_iter().next()
            && run.state == drainer_core::ledger::RunState::Running
            && ledger.recorded_files(&run.id).await.unwrap() > 0
        {
            return;
        }
    }
}

/// Two copies of one volume at once: the second fails at once naming the holder, and a
/// holder killed with SIGKILL is taken over by the next copy without waiting for its lease.
/// On SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_copy_per_volume_and_a_killed_holder_is_taken_over_at_once() {
    for postgres in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let (src, data) = (work.path().join("src"), work.path().join("data"));
        slow_tree(&src);
        let store = file_url(&work.path().join("store"));
        let url = if postgres {
            Some(crate::support::fresh_postgres_database().await)
        } else {
            None
        };
        let copy = || {
            let mut cmd = copy_cmd(&src, &store, &data, VOLUME);
            cmd.args(["--concurrency", "2"]);
            if let Some(url) = &url {
                cmd.args(["--database-url", url]);
            }
            cmd
        };
        let ledger = drainer::Ledger::open(url.as_deref(), &data).await.unwrap();
        let mut first = copy().spawn().unwrap();
        wait_recorded(&ledger, &mut first).await;
        let stderr = fails(&mut copy(), 1).await;
        let holder = format!(":{}:", first.id().unwrap());
        assert!(
            stderr.contains("already being copied") && stderr.contains(&holder),
            "postgres={postgres}: the error names the holder {holder}: {stderr}"
        );
        first.start_kill().unwrap();
        first.wait().await.unwrap();
        let resumed = run_ok(&mut copy()).await;
        assert!(
            resumed.contains("resumed"),
            "postgres={postgres}: {resumed}"
        );
        let dest = work.path().join("dest");
        run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
        assert!(crate::support::tree::differences(&src, &dest).is_empty());
    }
}

/// Two movers for one drain: the second gets a clear 409 while the first holds the run, and
/// the drain's run is found by its drain id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_mover_of_a_drain_gets_a_conflict() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--movers", "external"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while serve.drain(&id).await["state"] != "copying" {
        assert!(
            std::time::Instant::now() < deadline,
            "the drain never started copying"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::new();
    let begin = |owner: &str| {
        client
            .post(format!("{}/v1/drains/{id}/run", serve.url))
            .bearer_auth(crate::support::serve::TOKEN)
            .header("x-drainer-run-owner", owner)
            .send()
    };
    let first = begin("mover-a").await.unwrap();
    assert_eq!(first.status(), 200);
    let again = begin("mover-a").await.unwrap();
    assert_eq!(again.status(), 200, "the holder itself may begin again");
    let second = begin("mover-b").await.unwrap();
    assert_eq!(second.status(), 409);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "run_busy", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mover-a"),
        "{body}"
    );
    let run = ledger
        .run_of_drain(&id)
        .await
        .unwrap()
        .expect("the drain's run");
    assert_eq!(run.drain.as_deref(), Some(id.as_str()));
    assert_eq!(run.owner.as_deref(), Some("mover-a"));
}

/// A copy made by a mover shows in its drain as it goes: what the mover's run has recorded
/// through the mover protocol, against the totals the mover counted, is the drain's `progress`
/// (read from the ledger, so any replica shows it), and the progress goes with the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_movers_copy_shows_its_progress_in_the_drain() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--movers", "external"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-5"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let client = reqwest::Client::new();
    let run: serde_json::Value = client
        .post(format!("{}/v1/drains/{id}/run", serve.url))
        .bearer_auth(crate::support::serve::TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file = |n: u64| {
        serde_json::json!({
            "path_b64": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("f{n}")
            ),
            "size": 1000 * n, "mtime_ns": 1, "ctime_ns": 1, "ino": n, "blake3": "00",
            "object": format!("snapshots/{}/files/f{n}", run["snapshot"].as_str().unwrap()),
        })
    };
    let recorded = client
        .post(format!(
            "{}/v1/drains/{id}/run/{}/record",
            serve.url,
            run["id"].as_str().unwrap()
        ))
        .bearer_auth(crate::support::serve::TOKEN)
        .json(&[file(1), file(2), file(3)])
        .send()
        .await
        .unwrap();
    assert_eq!(recorded.status(), 204);
    let totals = client
        .put(format!(
            "{}/v1/drains/{id}/run/{}/totals",
            serve.url,
            run["id"].as_str().unwrap()
        ))
        .bearer_auth(crate::support::serve::TOKEN)
        .json(&serde_json::json!({"files": 10, "bytes": 55_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(totals.status(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let drain = serve.drain(&id).await;
        let progress = &drain["progress"];
        if progress["files_done"] == 3 && progress["files_total"] == 10 {
            assert_eq!(progress["bytes_done"], 6000, "{drain}");
            assert_eq!(progress["bytes_total"], 55_000, "{drain}");
            assert_eq!(drain["state"], "copying", "{drain}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mover's progress never showed: {drain}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cancelled = serve
        .call(
            reqwest::Method::POST,
            &format!("/v1/drains/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancelled.0, 200, "{}", cancelled.1);
    let drain = serve
        .wait_state(&id, "cancelled", Duration::from_secs(30))
        .await;
    assert!(drain["progress"].is_null(), "{drain}");
}

/// `prune` while a copy of the same volume runs deletes nothing the live run has stored or
/// refers to: the run completes and its snapshot verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_during_a_copy_keeps_what_the_live_run_needs() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    let store = file_url(&work.path().join("store"));
    slow_tree(&src);
    run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    std::fs::write(src.join("d00/f000"), b"changed once").unwrap();
    run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    // Every file changes, so the live copy checkpoints (every 500 files) long before it ends,
    // however fast the machine is.
    for d in 0..20u64 {
        for f in 0..100u64 {
            let file = src.join(format!("d{d:02}/f{f:03}"));
            std::fs::write(
                file,
                crate::support::tree::bytes(10_000 + d * 100 + f, 8192),
            )
            .unwrap();
        }
    }
    std::fs::write(src.join("large"), crate::support::tree::bytes(8, 96 << 20)).unwrap();
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let mut live = copy_cmd(&src, &store, &data, VOLUME)
        .args(["--concurrency", "2"])
        .spawn()
        .unwrap();
    wait_recorded(&ledger, &mut live).await;
    run_ok(
        drainer()
            .arg("prune")
            .arg(&store)
            .args(["--volume", VOLUME, "--keep", "1"]),
    )
    .await;
    let status = live.wait().await.unwrap();
    assert!(status.success());
    run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;
    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    assert!(crate::support::tree::differences(&src, &dest).is_empty());
}

/// Apparent size and allocated bytes (`du --apparent-size` and `du`) of a file.
fn du(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (meta.len(), meta.blocks() * 512)
}

/// A 1 GiB file holding 8 KiB of data is stored as its data and restored sparse, with the
/// hash of its whole content; dense files in the same snapshot stay plain objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_files_are_stored_and_restored_as_holes() {
    use std::io::{Seek, SeekFrom, Write};
    let work = tempfile::tempdir().unwrap();
    let (src, data, store_dir) = (
        work.path().join("src"),
        work.path().join("data"),
        work.path().join("store"),
    );
    std::fs::create_dir(&src).unwrap();
    let sparse = src.join("disk.img");
    let mut file = std::fs::File::create(&sparse).unwrap();
    file.set_len(1 << 30).unwrap();
    for at in [0u64, 512 << 20] {
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&crate::support::tree::bytes(at, 4096))
            .unwrap();
    }
    drop(file);
    std::fs::write(src.join("dense"), crate::support::tree::bytes(1, 100_000)).unwrap();
    let (apparent, allocated) = du(&sparse);
    assert!(allocated < 1 << 20, "the source is sparse: {allocated}");
    let store = file_url(&store_dir);
    run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;

    let objects: Vec<_> = walkdir::WalkDir::new(&store_dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("/files/"))
        .collect();
    let stored = objects
        .iter()
        .find(|e| e.file_name() == "disk.img")
        .unwrap();
    assert_eq!(
        std::fs::metadata(stored.path()).unwrap().len(),
        8192,
        "the object holds the data extents only"
    );
    let dense = objects.iter().find(|e| e.file_name() == "dense").unwrap();
    assert_eq!(
        std::fs::read(dense.path()).unwrap(),
        std::fs::read(src.join("dense")).unwrap()
    );
    run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;

    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    let (restored_apparent, restored_allocated) = du(&dest.join("disk.img"));
    assert_eq!(restored_apparent, apparent);
    assert!(
        restored_allocated < 1 << 20,
        "restored sparse: {restored_allocated} bytes allocated of {restored_apparent}"
    );
    assert!(crate::support::tree::differences(&src, &dest).is_empty());

    // A second, incremental snapshot reuses the sparse object with its extents.
    let second = run_ok(&mut copy_cmd(&src, &store, &data, VOLUME)).await;
    assert!(second.contains("(0 files, 0 bytes uploaded)"), "{second}");
    let dest = work.path().join("dest-2");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    assert!(du(&dest.join("disk.img")).1 < 1 << 20);
    assert!(crate::support::tree::differences(&src, &dest).is_empty());
}

/// A stolen mover token rewrites an object the real mover relayed, between the upload and the
/// commit: the drainer, which hashed each object as it relayed it, refuses the manifest
/// (`400 bad_snapshot` naming that object and no other: the large file's hash, merged from
/// its parts, matched), so the drain is not completed; the mover's next attempt stores that
/// file again and commits a snapshot that restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_object_rewritten_before_the_commit_is_refused_and_stored_again() {
    let work = tempfile::tempdir().unwrap();
    let (mount, data) = (work.path().join("mount"), work.path().join("data"));
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("small.txt"), b"the real content").unwrap();
    std::fs::write(mount.join("other.txt"), b"left alone").unwrap();
    let large = crate::support::tree::bytes(5, (20 << 20) + 12345);
    std::fs::write(mount.join("large.bin"), &large).unwrap();
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--movers", "external"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let gate = crate::support::gate::Gate::start("127.0.0.1")
        .await
        .unwrap();
    gate.forward_to(&serve.url);
    gate.hold_next_finish();
    let mover = |url: &str| {
        let mut cmd = drainer();
        cmd.args(["mover", "--drainer", url, "--drain", &id])
            .arg("--source")
            .arg(&mount)
            .env("DRAINER_TOKEN", crate::support::serve::TOKEN);
        cmd
    };
    let first = mover(&gate.url).output();
    let tamper = async {
        gate.wait_held().await.unwrap();
        let snapshots = data.join("store/volumes/shop/data-web-4/snapshots");
        let snapshot = std::fs::read_dir(&snapshots)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let key = format!(
            "volumes/shop/data-web-4/snapshots/{}/files/small.txt",
            snapshot.file_name().to_string_lossy()
        );
        let response = reqwest::Client::new()
            .put(format!("{}/v1/drains/{id}/objects", serve.url))
            .query(&[("key", &key)])
            .bearer_auth(crate::support::serve::TOKEN)
            .body("the fake content")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "the token writes its own snapshot");
        gate.release();
    };
    let (first, ()) = tokio::join!(first, tamper);
    let first = first.unwrap();
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success(), "{said}");
    assert!(
        said.contains("answered 400")
            && said.contains("files/small.txt is not what the manifest describes")
            && said.contains("; 1 such object"),
        "{said}"
    );
    assert_ne!(serve.drain(&id).await["state"], "completed");
    let second = run_ok(&mut mover(&serve.url)).await;
    serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;
    let dest = work.path().join("dest");
    let store = file_url(&data.join("store"));
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    assert!(
        crate::support::tree::differences(&mount, &dest).is_empty(),
        "{second}"
    );
}
