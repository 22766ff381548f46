//! Bad input to the command line: each case gets a one-line error and a non-zero exit, and
//! leaves no snapshot marked complete. Hostile manifests are refused before anything is
//! written outside the destination.

use crate::support::{drainer, file_url, run, run_ok};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const VOLUME: &str = "shop/data-web-4";

/// Runs a failing command; returns its error line after checking the exit code.
async fn fails(cmd: &mut tokio::process::Command, code: i32) -> String {
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {stderr}");
    if code == 1 {
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("drainer: "))
            .collect();
        assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
        errors[0].to_owned()
    } else {
        stderr
    }
}

fn complete_snapshots(store: &Path) -> usize {
    walkdir::WalkDir::new(store)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() == "snapshot.json")
        .count()
}

fn copy(src: &Path, store: &str, data: &Path) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.arg("copy")
        .arg(src)
        .arg(store)
        .args(["--volume", VOLUME])
        .arg("--data-dir")
        .arg(data);
    cmd
}

#[tokio::test]
async fn copy_refuses_bad_sources_urls_and_volumes() {
    let work = tempfile::tempdir().unwrap();
    let (src, data, store_dir) = (
        work.path().join("src"),
        work.path().join("data"),
        work.path().join("store"),
    );
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let store = file_url(&store_dir);

    let missing = work.path().join("missing");
    let line = fails(&mut copy(&missing, &store, &data), 1).await;
    assert!(
        line.contains("source") && line.contains("missing") && line.contains("No such file"),
        "{line}"
    );

    let line = fails(&mut copy(&src.join("f"), &store, &data), 1).await;
    assert!(line.contains("not a directory"), "{line}");

    // Malformed store URLs are usage errors (exit 2), refused before anything is opened.
    let line = fails(&mut copy(&src, "::not a url", &data), 2).await;
    assert!(
        line.contains("store URL") && line.contains("not valid"),
        "{line}"
    );

    let line = fails(&mut copy(&src, "ftp://example/x", &data), 2).await;
    assert!(line.contains("unsupported scheme"), "{line}");

    for part_size in ["5", "12", "1024"] {
        let usage = fails(
            copy(&src, &store, &data).args(["--part-size-mib", part_size]),
            2,
        )
        .await;
        assert!(usage.contains("a power of two from 8 to 512"), "{usage}");
    }

    for volume in [
        "Shop/x",
        "shop",
        "shop/../etc",
        "shop/a/b",
        "-x/y",
        "shop/x_y",
    ] {
        let mut cmd = drainer();
        cmd.arg("copy")
            .arg(&src)
            .arg(&store)
            .args(["--volume", volume]);
        let stderr = fails(&mut cmd, 2).await;
        assert!(stderr.contains("--volume"), "{volume}: {stderr}");
    }

    let mut unreachable = copy(&src, "s3://bucket/x", &data);
    unreachable
        .env("AWS_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "us-east-1")
        .args(["--store-timeout", "5"]);
    let line = fails(&mut unreachable, 1).await;
    assert!(line.contains("store s3://bucket/x"), "{line}");

    assert_eq!(
        complete_snapshots(work.path()),
        0,
        "no bad input leaves a snapshot"
    );
}

/// Runs `cmd` as the unprivileged user `nobody`, so permissions apply even under root.
fn as_nobody(cmd: &tokio::process::Command) -> tokio::process::Command {
    let std = cmd.as_std();
    let mut wrapped = tokio::process::Command::new("setpriv");
    wrapped
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std.get_program())
        .args(std.get_args())
        .env("DRAINER_LOG", "warn")
        .kill_on_drop(true);
    wrapped
}

#[tokio::test]
async fn unreadable_sources_and_read_only_stores_fail_with_the_path() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test switches to nobody, so it runs as root"
    );
    let work = tempfile::tempdir().unwrap();
    let open = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(work.path(), 0o755);
    let (src, data, store_dir) = (
        work.path().join("src"),
        work.path().join("data"),
        work.path().join("store"),
    );
    for dir in [&src, &data, &store_dir] {
        std::fs::create_dir(dir).unwrap();
    }
    open(&data, 0o777);
    std::fs::write(src.join("readable"), b"ok").unwrap();
    std::fs::write(src.join("secret"), b"no").unwrap();
    open(&src.join("secret"), 0o600);
    let store = file_url(&store_dir);

    // The store directory belongs to root and is read-only for nobody.
    let line = fails(&mut as_nobody(&copy(&src, &store, &data)), 1).await;
    assert!(
        line.contains("Permission denied") || line.contains("permission"),
        "{line}"
    );

    // An unreadable file does not cost the rest of the volume, and is never dropped
    // silently: the snapshot is stored with the file listed as unreadable (no content), the
    // copy names it and exits 3.
    open(&store_dir, 0o777);
    let stderr = fails(&mut as_nobody(&copy(&src, &store, &data)), 3).await;
    assert!(
        stderr.contains("could not be read") && stderr.contains("secret"),
        "the path is in the message: {stderr}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(complete_snapshots(&store_dir), 1);
    let manifest = walkdir::WalkDir::new(&store_dir)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "manifest.jsonl")
        .unwrap();
    let manifest = std::fs::read_to_string(manifest.path()).unwrap();
    let secret = manifest.lines().find(|l| l.contains("\"secret\"")).unwrap();
    assert!(
        secret.contains("unreadable") && !secret.contains("blake3"),
        "{secret}"
    );
    let verified = run_ok(
        drainer()
            .arg("verify")
            .arg(&store)
            .args(["--volume", VOLUME]),
    )
    .await;
    assert!(
        verified.contains("NOT STORED secret") && verified.contains("INCOMPLETE"),
        "{verified}"
    );

    open(&src, 0o700);
    let line = fails(&mut as_nobody(&copy(&src, &store, &data)), 1).await;
    assert!(line.contains("cannot be read"), "{line}");
    assert_eq!(
        complete_snapshots(&store_dir),
        1,
        "no snapshot of an unreadable source"
    );
}

#[tokio::test]
async fn restore_refuses_busy_destinations_and_unknown_snapshots() {
    let work = tempfile::tempdir().unwrap();
    let (src, data) = (work.path().join("src"), work.path().join("data"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let store = file_url(&work.path().join("store"));
    let empty_store = file_url(&work.path().join("empty-store"));
    std::fs::create_dir(work.path().join("empty-store")).unwrap();
    run_ok(&mut copy(&src, &store, &data)).await;

    let busy = work.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("already-here"), b"keep me").unwrap();
    let mut cmd = drainer();
    cmd.arg("restore")
        .arg(&store)
        .args(["--volume", VOLUME])
        .arg(&busy);
    let line = fails(&mut cmd, 1).await;
    assert!(
        line.contains("not empty") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(busy.join("already-here")).unwrap(),
        b"keep me"
    );
    run_ok(cmd.arg("--force")).await;
    assert_eq!(std::fs::read(busy.join("f")).unwrap(), b"x");

    let mut cmd = drainer();
    cmd.arg("restore").arg(&store).args([
        "--volume",
        VOLUME,
        "--snapshot",
        "20200101T000000000Z-dead",
    ]);
    let line = fails(cmd.arg(work.path().join("d1")), 1).await;
    assert!(
        line.contains("20200101T000000000Z-dead") && line.contains("does not exist"),
        "{line}"
    );

    let mut cmd = drainer();
    cmd.arg("restore")
        .arg(&empty_store)
        .args(["--volume", VOLUME]);
    let line = fails(cmd.arg(work.path().join("d2")), 1).await;
    assert!(line.contains("has no snapshot"), "{line}");

    let mut cmd = drainer();
    cmd.arg("restore")
        .arg(&store)
        .args(["--volume", VOLUME, "--snapshot", "../../etc"]);
    fails(cmd.arg(work.path().join("d3")), 2).await;

    let mut cmd = drainer();
    cmd.arg("verify")
        .arg(&store)
        .args(["--volume", "shop/other"]);
    let line = fails(&mut cmd, 1).await;
    assert!(line.contains("shop/other"), "{line}");
}

/// Writes a complete-looking snapshot with the given manifest entries into a local store.
fn forge(store: &Path, entries: &[serde_json::Value]) {
    let id = "20260101T000000000Z-beef";
    let volume_dir = store.join("volumes/shop/data-web-4");
    let snap = volume_dir.join("snapshots").join(id);
    std::fs::create_dir_all(snap.join("files")).unwrap();
    std::fs::write(snap.join("files/payload"), b"pwned").unwrap();
    let mut manifest = json!({"drainer_manifest": 1, "volume": VOLUME, "snapshot": id, "parent": null, "created": ""}).to_string() + "\n";
    let (mut files, mut bytes) = (0, 0);
    for e in entries {
        manifest += &format!("{e}\n");
        if e["type"] == "file" {
            files += 1;
            bytes += e["size"].as_u64().unwrap();
        }
    }
    manifest +=
        &json!({"end": {"entries": entries.len(), "files": files, "bytes": bytes, "skipped": 0}})
            .to_string();
    manifest += "\n";
    std::fs::write(snap.join("manifest.jsonl"), &manifest).unwrap();
    // The summary records the forged manifest's hash, as someone who can write the store
    // can: the entries themselves must be refused.
    let summary = json!({"snapshot": id, "volume": VOLUME, "parent": null, "created": "", "completed": "",
        "entries": entries.len(), "files": files, "bytes": bytes, "skipped": 0, "uploaded_files": 0,
        "uploaded_bytes": 0, "manifest_blake3": blake3::hash(manifest.as_bytes()).to_hex().to_string(),
        "manifest_size": manifest.len()});
    std::fs::write(snap.join("snapshot.json"), summary.to_string()).unwrap();
    std::fs::write(
        volume_dir.join("latest"),
        json!({"snapshot": id}).to_string(),
    )
    .unwrap();
}

fn root() -> serde_json::Value {
    json!({"path": ".", "type": "dir", "mode": 0o40755, "uid": 0, "gid": 0, "mtime_ns": 0})
}

fn dir(path: &str) -> serde_json::Value {
    json!({"path": path, "type": "dir", "mode": 0o40755, "uid": 0, "gid": 0, "mtime_ns": 0})
}

fn file(path: &str, object: &str) -> serde_json::Value {
    json!({"path": path, "type": "file", "mode": 0o100644, "uid": 0, "gid": 0, "mtime_ns": 0, "size": 5,
        "blake3": blake3::hash(b"pwned").to_hex().to_string(), "object": object})
}

#[tokio::test]
async fn restore_refuses_hostile_manifests_and_writes_nothing_outside() {
    let payload = "snapshots/20260101T000000000Z-beef/files/payload";
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap();
    let link_out = json!({"path": "link", "type": "symlink", "mode": 0o120777, "uid": 0, "gid": 0, "mtime_ns": 0,
        "size": 1, "target": outside_str});
    let cases: Vec<(&str, Vec<serde_json::Value>)> = vec![
        ("dot-dot", vec![root(), file("../escape", payload)]),
        (
            "absolute",
            vec![root(), file(&format!("{outside_str}/abs"), payload)],
        ),
        (
            "inner dot-dot",
            vec![root(), dir("a"), file("a/../../escape", payload)],
        ),
        (
            "through a symlink it created",
            vec![root(), link_out.clone(), file("link/pwned", payload)],
        ),
        (
            "through a symlink, as a directory",
            vec![root(), link_out, dir("link/sub")],
        ),
        (
            "through a file",
            vec![root(), file("plain", payload), file("plain/child", payload)],
        ),
        (
            "parent never listed",
            vec![root(), file("ghost/child", payload)],
        ),
        ("no root first", vec![file("early", payload), root()]),
        (
            "object outside the volume",
            vec![root(), file("f", "snapshots/../../../other/payload")],
        ),
        (
            "object not a snapshot file",
            vec![root(), file("f", "latest")],
        ),
        (
            "listed twice",
            vec![root(), file("twice", payload), file("twice", payload)],
        ),
        (
            "out of order",
            vec![root(), file("b", payload), file("a", payload)],
        ),
        (
            "a file's mode says directory",
            vec![root(), {
                let mut f = file("f", payload);
                f["mode"] = json!(0o40755);
                f
            }],
        ),
    ];
    for (name, entries) in cases {
        let case = work.path().join(name.replace(' ', "-"));
        let store = case.join("store");
        forge(&store, &entries);
        let dest = case.join("dest");
        let mut cmd = drainer();
        cmd.arg("restore")
            .arg(file_url(&store))
            .args(["--volume", VOLUME])
            .arg(&dest);
        let line = fails(&mut cmd, 1).await;
        assert!(line.contains("refusing manifest entry"), "{name}: {line}");
        // verify applies the same checks: what it passes, restore accepts.
        let out = run(drainer()
            .arg("verify")
            .arg(file_url(&store))
            .args(["--volume", VOLUME]))
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && stdout.contains("refusing manifest entry"),
            "{name}: verify passed a manifest restore refuses: {stdout}"
        );
        let leaked: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(
            leaked.is_empty(),
            "{name}: wrote outside the destination: {leaked:?}"
        );
        assert!(
            !case.join("escape").exists() && !work.path().join("escape").exists(),
            "{name}"
        );
    }
}

/// A `DRAINER_URL` left in the environment beside a store given on the command line: `snapshots`
/// and `restore` refuse with exit code 2, one line that names the variable, and write nothing.
#[tokio::test]
async fn a_drainer_url_from_the_environment_is_named_when_it_conflicts() {
    let work = tempfile::tempdir().unwrap();
    let store = file_url(&work.path().join("store"));
    let dest = work.path().join("dest");
    let mut snapshots = drainer();
    snapshots
        .args(["snapshots", &store])
        .env("DRAINER_URL", "http://127.0.0.1:9");
    let mut restore = drainer();
    restore
        .args(["restore", &store, "--volume", VOLUME])
        .arg(&dest)
        .env("DRAINER_URL", "http://127.0.0.1:9");
    for cmd in [&mut snapshots, &mut restore] {
        cmd.env_remove("DRAINER_STORE");
        let stderr = fails(cmd, 2).await;
        let line: Vec<&str> = stderr.lines().filter(|l| l.contains("not both")).collect();
        assert_eq!(line.len(), 1, "one line saying why: {stderr}");
        assert!(
            line[0].contains("--drainer URL from DRAINER_URL in the environment"),
            "{stderr}"
        );
    }
    assert!(!dest.exists(), "nothing written");
}

/// An admin token shorter than 32 characters (from `DRAINER_TOKEN` or the token file, in local
/// and in Kubernetes mode) stops `drainer serve` at start-up with one line saying so, before
/// it listens or reaches the cluster.
#[tokio::test]
async fn a_short_admin_token_is_refused_at_start_up() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let store = file_url(&work.path().join("store"));
    let short = "a".repeat(31);
    let token_file = work.path().join("token");
    std::fs::write(&token_file, &short).unwrap();
    let serve = |extra: &[&str]| {
        let mut cmd = drainer();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &store])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env_remove("DRAINER_TOKEN")
            .env("KUBECONFIG", work.path().join("no-such-kubeconfig"));
        cmd
    };
    let file = token_file.to_str().unwrap();
    for (what, mut cmd) in [
        ("local, DRAINER_TOKEN", serve(&[])),
        ("local, token file", serve(&["--token-file", file])),
        ("kubernetes, DRAINER_TOKEN", serve(&["--kubernetes"])),
        (
            "kubernetes, token file",
            serve(&["--kubernetes", "--token-file", file]),
        ),
    ] {
        if !what.ends_with("file") {
            cmd.env("DRAINER_TOKEN", &short);
        }
        let line = fails(&mut cmd, 1).await;
        assert!(
            line.contains("has 31 characters; it needs at least 32"),
            "{what}: {line}"
        );
    }
    // A token of 32 characters serves: every `Serve` of these tests has one (support::serve).
    assert!(crate::support::serve::TOKEN.len() >= 32);
}
