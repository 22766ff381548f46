//! Restores: through a drainer's API with the caller's token, resumable after
//! SIGKILL or a failure, exact (hard links as hard links, sparse files sparse), the
//! init-container flags (`--if-empty`, `--allow-missing`), point-in-time choice (`--before`,
//! `drainer snapshots` naming the drain that made each snapshot), and bad input that gets one
//! line, a non-zero exit and nothing written outside the destination.

use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{self, drainer, fails, file_url, run, run_ok};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const VOLUME: &str = "shop/data-web-4";

fn through(url: &str, token: &str, volume: &str, dest: &Path) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.args(["restore", "--drainer", url, "--volume", volume])
        .env("DRAINER_TOKEN", token)
        .arg(dest);
    cmd
}

/// A volume with what a restore must bring back exactly: many small files, large files (read
/// in several parts), hard links (one group across directories), a sparse file, a symlink, a
/// read-only directory.
fn volume(root: &Path, small: usize) -> PathBuf {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    for i in 0..small {
        let dir = root.join(format!("s{:02}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i:05}")),
            bytes(i as u64, 100 + i % 3000),
        )
        .unwrap();
    }
    for i in 0..2 {
        std::fs::write(root.join(format!("m-large-{i}")), bytes(90 + i, 20 << 20)).unwrap();
    }
    std::fs::write(root.join("a/hard"), b"one inode, three names").unwrap();
    std::fs::hard_link(root.join("a/hard"), root.join("a/b/hard-too")).unwrap();
    std::fs::hard_link(root.join("a/hard"), root.join("z-hard")).unwrap();
    let sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &bytes(7, 4096), 64 << 20).unwrap();
    std::os::unix::fs::symlink("a/hard", root.join("link")).unwrap();
    std::fs::create_dir(root.join("ro")).unwrap();
    std::fs::write(root.join("ro/inside"), b"in a read-only dir").unwrap();
    std::fs::set_permissions(
        root.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    root.to_owned()
}

/// Checks that `dest` is `src` exactly, with its hard links as hard links, its sparse file
/// sparse, and no staging directory left.
fn exact(src: &Path, dest: &Path) {
    let diffs = differences(src, dest);
    assert!(diffs.is_empty(), "restore differs from source: {diffs:#?}");
    let ino = |p: &str| std::fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("a/hard"), ino("a/b/hard-too"), "a hard link");
    assert_eq!(ino("a/hard"), ino("z-hard"), "a hard link");
    assert_eq!(std::fs::metadata(dest.join("z-hard")).unwrap().nlink(), 3);
    let sparse = std::fs::metadata(dest.join("sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "sparse: {} bytes allocated",
        sparse.blocks() * 512
    );
    assert!(staging(dest).is_empty(), "{:?}", staging(dest));
}

/// The staging directories (`.drainer-restore-…`) at the root of `dest`.
fn staging(dest: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dest)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".drainer-restore-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The snapshot's manifest records the hard links, and both a direct restore and one through
/// the drainer's API bring the volume back exactly; the API's refusals are one line each and
/// write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_through_the_drainer_is_exact_and_refusals_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let src = volume(&data.join("volumes/shop/data-web-4"), 300);
    let serve = Serve::start(&data, &["--sweep-interval", "0"]).await;
    let (status, drains) = serve.handoff("shop", &["data-web-4"]).await;
    assert_eq!(status, 202);
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "completed", Duration::from_secs(120))
        .await;
    let store_dir = data.join("store");
    let manifests: Vec<String> = walkdir::WalkDir::new(&store_dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() == "manifest.jsonl")
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        manifests[0].contains(r#""nlink":3,"link":"a/b/hard-too""#),
        "the manifest records the link group"
    );

    let direct = work.path().join("direct");
    run_ok(&mut support::restore_cmd(
        &file_url(&store_dir),
        VOLUME,
        &direct,
    ))
    .await;
    exact(&src, &direct);
    let api = work.path().join("api");
    let line = run_ok(&mut through(&serve.url, TOKEN, VOLUME, &api)).await;
    assert!(line.contains("2 hard links"), "{line}");
    exact(&src, &api);

    // Refusals: a bad token (401), a wrong path (404), a volume with no snapshot, an unknown
    // snapshot: one line, a non-zero exit, nothing written.
    let refused = work.path().join("refused");
    let line = fails(&mut through(&serve.url, "wrong-token", VOLUME, &refused), 1).await;
    assert!(line.contains("401"), "{line}");
    let line = fails(
        &mut through(&format!("{}/elsewhere", serve.url), TOKEN, VOLUME, &refused),
        1,
    )
    .await;
    assert!(line.contains("404"), "{line}");
    let line = fails(&mut through(&serve.url, TOKEN, "shop/never", &refused), 1).await;
    assert!(line.contains("has no snapshot"), "{line}");
    let line = fails(
        through(&serve.url, TOKEN, VOLUME, &refused)
            .args(["--snapshot", "20200101T000000000Z-dead"]),
        1,
    )
    .await;
    assert!(line.contains("does not exist"), "{line}");
    assert!(!refused.exists(), "a refused restore wrote nothing");
    let out = run(through(&serve.url, TOKEN, "shop/never", &refused).arg("--allow-missing")).await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("has no snapshot: nothing restored"),
        "{out:?}"
    );
    assert!(!refused.exists());

    // `drainer snapshots` names the drain that made the snapshot, through the API and from
    // the store.
    let listed = run_ok(
        drainer()
            .args(["snapshots", "--drainer", &serve.url, "--volume", VOLUME])
            .env("DRAINER_TOKEN", TOKEN),
    )
    .await;
    assert!(
        listed.contains(&format!("drain {id} (handoff, requested 20")),
        "{listed}"
    );
    let listed = run_ok(drainer().arg("snapshots").arg(file_url(&store_dir))).await;
    assert!(listed.contains(&format!("drain {id}")), "{listed}");
}

/// Starts a restore and kills it (SIGSTOP, then SIGKILL) once at least `at_least` files of
/// the `s??` directories are under their final names; returns them with their inodes.
async fn kill_mid_restore(
    mut cmd: tokio::process::Command,
    dest: &Path,
    at_least: usize,
) -> Vec<(PathBuf, u64)> {
    let child = cmd.spawn().unwrap();
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let placed = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing restored in time"
        );
        let placed: Vec<(PathBuf, u64)> = walkdir::WalkDir::new(dest)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_type().is_file()
                    && e.path()
                        .strip_prefix(dest)
                        .is_ok_and(|rel| rel.to_string_lossy().starts_with('s'))
            })
            .filter_map(|e| Some((e.path().to_owned(), e.metadata().ok()?.ino())))
            .collect();
        if placed.len() >= at_least {
            rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
            break placed;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        !out.status.success(),
        "the restore finished before it was killed"
    );
    placed
}

/// A restore killed with SIGKILL continues when run again (no --force): the files already in
/// place are checked by size and hash and kept (same inode), one changed meanwhile is written
/// again, and the result is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_restore_continues_where_it_stopped_and_ends_exact() {
    let work = tempfile::tempdir().unwrap();
    let src = volume(&work.path().join("src"), 3000);
    let store = file_url(&work.path().join("store"));
    run_ok(&mut support::copy_cmd(
        &src,
        &store,
        VOLUME,
        &work.path().join("data"),
    ))
    .await;
    let dest = work.path().join("dest");
    let mut first = support::restore_cmd(&store, VOLUME, &dest);
    first.args(["--concurrency", "1"]);
    let placed = kill_mid_restore(first, &dest, 600).await;
    assert_eq!(staging(&dest).len(), 1, "the unfinished restore is marked");
    // Someone changes a restored file meanwhile (same size): it must be written again.
    let (changed, _) = &placed[0];
    let mut content = std::fs::read(changed).unwrap();
    content[0] ^= 0xff;
    std::fs::write(changed, &content).unwrap();

    let line = run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    assert!(line.contains("resumed"), "{line}");
    assert!(line.contains("already in place"), "{line}");
    exact(&src, &dest);
    let kept = placed[1..]
        .iter()
        .filter(|(path, ino)| std::fs::metadata(path).unwrap().ino() == *ino)
        .count();
    assert_eq!(
        kept,
        placed.len() - 1,
        "files already in place are not written again"
    );
    // A finished restore is not continued: the directory is in use now.
    let line = fails(&mut support::restore_cmd(&store, VOLUME, &dest), 1).await;
    assert!(line.contains("not empty"), "{line}");
}

/// A restore that failed (a damaged object) keeps its marker and no temporary file; once the
/// object is good again, the same command finishes it. Through the API, the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_is_finished_by_running_it_again() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let src = volume(&data.join("volumes/shop/data-web-4"), 50);
    let serve = Serve::start(&data, &["--sweep-interval", "0"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "completed", Duration::from_secs(120))
        .await;
    let object = walkdir::WalkDir::new(data.join("store"))
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "m-large-1")
        .unwrap()
        .into_path();
    let good = std::fs::read(&object).unwrap();
    let mut damaged = good.clone();
    damaged[12 << 20] ^= 0xff;
    std::fs::write(&object, &damaged).unwrap();
    let dest = work.path().join("dest");
    let line = fails(&mut through(&serve.url, TOKEN, VOLUME, &dest), 1).await;
    assert!(line.contains("does not match its manifest hash"), "{line}");
    let left = staging(&dest);
    assert_eq!(left.len(), 1);
    let inside: Vec<_> = std::fs::read_dir(&left[0])
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(inside, ["restore.json"], "only the marker is left");
    std::fs::write(&object, good).unwrap();
    let line = run_ok(&mut through(&serve.url, TOKEN, VOLUME, &dest)).await;
    assert!(line.contains("resumed"), "{line}");
    exact(&src, &dest);
}

/// The init-container flags: --if-empty leaves a used volume alone (exit 0, one line) and
/// restores into an empty one (`lost+found` counts as empty); --allow-missing makes a volume
/// without snapshots a no-op; without it, that is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_empty_and_allow_missing_say_why_they_did_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let store = file_url(&work.path().join("store"));
    run_ok(&mut support::copy_cmd(
        &src,
        &store,
        VOLUME,
        &work.path().join("data"),
    ))
    .await;

    let used = work.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("app.db"), b"live data").unwrap();
    let out = run_ok(support::restore_cmd(&store, VOLUME, &used).arg("--if-empty")).await;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("not empty") && out.contains("--if-empty"),
        "{out}"
    );
    assert_eq!(std::fs::read(used.join("app.db")).unwrap(), b"live data");
    assert!(!used.join("f").exists());

    let fresh = work.path().join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    run_ok(support::restore_cmd(&store, VOLUME, &fresh).arg("--if-empty")).await;
    assert_eq!(std::fs::read(fresh.join("f")).unwrap(), b"data");

    let mut missing = drainer();
    missing
        .arg("restore")
        .arg(&store)
        .args(["--volume", "shop/data-web-9", "--if-empty"]);
    let nothing = work.path().join("nothing");
    let line = fails(missing.arg(&nothing), 1).await;
    assert!(line.contains("has no snapshot"), "{line}");
    let out = run_ok(missing.arg("--allow-missing")).await;
    assert!(out.contains("has no snapshot: nothing restored"), "{out}");
    assert!(!nothing.exists(), "nothing created");
}

/// --before picks the newest snapshot completed before a time; a time before every snapshot
/// is an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_restores_the_snapshot_of_that_time() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    let store = file_url(&work.path().join("store"));
    std::fs::write(src.join("f"), b"first").unwrap();
    run_ok(&mut support::copy_cmd(&src, &store, VOLUME, &data)).await;
    std::fs::write(src.join("f"), b"second").unwrap();
    run_ok(&mut support::copy_cmd(&src, &store, VOLUME, &data)).await;
    let listed = run_ok(drainer().args(["snapshots", "-o", "json"]).arg(&store)).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let second_done = listed[1]["completed"].as_str().unwrap().to_owned();
    let first_created = listed[0]["created"].as_str().unwrap().to_owned();

    let dest = work.path().join("at-second");
    run_ok(support::restore_cmd(&store, VOLUME, &dest).args(["--before", &second_done])).await;
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"first");
    let dest = work.path().join("now");
    run_ok(support::restore_cmd(&store, VOLUME, &dest).args(["--before", "now"])).await;
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"second");
    let dest = work.path().join("too-early");
    let line = fails(
        support::restore_cmd(&store, VOLUME, &dest).args(["--before", &first_created]),
        1,
    )
    .await;
    assert!(line.contains("no snapshot completed before"), "{line}");
    assert!(!dest.exists());
    let out =
        run(support::restore_cmd(&store, VOLUME, &dest).args(["--before", "next tuesday"])).await;
    assert_eq!(out.status.code(), Some(2));
}

/// Bad destinations: a file, a directory this user may not write, and a restore already
/// writing into the same directory. One line each, non-zero, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_destinations_get_one_line_and_are_left_alone() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    run_ok(&mut support::copy_cmd(
        &src,
        &store,
        VOLUME,
        &work.path().join("data"),
    ))
    .await;

    let file = work.path().join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    let line = fails(&mut support::restore_cmd(&store, VOLUME, &file), 1).await;
    assert!(line.contains("not a directory"), "{line}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");

    assert!(
        rustix::process::geteuid().is_root(),
        "the tests run as root"
    );
    let locked = work.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        &store_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let std_cmd = support::restore_cmd(&store, VOLUME, &locked);
    let std_cmd = std_cmd.as_std();
    let mut nobody = tokio::process::Command::new("setpriv");
    nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std_cmd.get_program())
        .args(std_cmd.get_args())
        .env("DRAINER_LOG", "warn")
        .kill_on_drop(true);
    let line = fails(&mut nobody, 1).await;
    assert!(line.contains("not writable"), "{line}");
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}

/// A manifest written before link groups (no `nlink`, no `link`) still restores: the files
/// that were hard links come back as separate files with the same content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_without_link_groups_still_restores() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"shared bytes").unwrap();
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    run_ok(&mut support::copy_cmd(
        &src,
        &store,
        VOLUME,
        &work.path().join("data"),
    ))
    .await;
    let summary_path = walkdir::WalkDir::new(&store_dir)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "snapshot.json")
        .unwrap()
        .into_path();
    let manifest_path = summary_path.with_file_name("manifest.jsonl");
    let old: String = std::fs::read_to_string(&manifest_path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(entry) = v.as_object_mut() {
                entry.remove("nlink");
                entry.remove("link");
            }
            v.to_string() + "\n"
        })
        .collect();
    assert!(!old.contains("\"link\""));
    std::fs::write(&manifest_path, &old).unwrap();
    let mut summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    summary["manifest_blake3"] = blake3::hash(old.as_bytes()).to_hex().to_string().into();
    summary["manifest_size"] = old.len().into();
    std::fs::write(&summary_path, summary.to_string()).unwrap();

    let dest = work.path().join("dest");
    run_ok(&mut support::restore_cmd(&store, VOLUME, &dest)).await;
    assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"shared bytes");
    let ino = |p: &str| std::fs::metadata(dest.join(p)).unwrap().ino();
    assert_ne!(ino("a"), ino("b"), "without link groups, two files");
}
