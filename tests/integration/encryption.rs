//! Encryption at rest (`--encryption-keys`): what the store holds reveals neither file
//! contents nor file names; restore, verify and snapshots read it back exactly with the keys;
//! a missing or wrong key is one line that writes nothing; keys rotate without a rewrite;
//! pruning keeps what later snapshots use; a drainer that relays movers to S3 seals what
//! they send; and a running drainer takes a rotated key file, refusing one that would lose data.

use crate::support::s3::S3Server;
use crate::support::serve::{Serve, log_tail};
use crate::support::tree::{bytes, differences};
use crate::support::{self, drainer, fails, file_url, run_ok};
use std::path::{Path, PathBuf};
use std::time::Duration;

const VOLUME: &str = "shop/payroll-0";
const KEY_OLD: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_NEW: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
/// Bytes every secret file repeats: none may reach the store.
const MARKER: &[u8] = b"SALARY-OF-THE-CEO-";
/// Names in the volume: none may reach the store.
const NAMES: [&str; 4] = ["salaries", "ceo-contract", "Ünïcödé", "hidden"];

/// A volume with secret names and contents: small files, an odd name, a large file read in
/// several parts (marker bytes at its start, middle and end).
fn secret_volume(root: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("salaries/.hidden")).unwrap();
    let text = MARKER.repeat(20);
    std::fs::write(root.join("salaries/ceo-contract.pdf"), &text).unwrap();
    std::fs::write(root.join("salaries/Ünïcödé name with spaces.txt"), &text).unwrap();
    std::fs::write(root.join("salaries/.hidden/x"), b"").unwrap();
    let mut large = bytes(5, 20 * 1024 * 1024);
    for at in [0, 10 * 1024 * 1024, large.len() - MARKER.len()] {
        large[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    std::fs::write(root.join("salaries/large.bin"), large).unwrap();
    root.to_owned()
}

fn key_file(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Checks that no object's key shows a name and no object's bytes show the marker.
fn assert_sealed(objects: &[(String, Vec<u8>)]) {
    assert!(!objects.is_empty());
    for (key, data) in objects {
        for name in NAMES {
            assert!(!key.contains(name), "the store shows a name: {key}");
            assert!(
                !data.windows(name.len()).any(|w| w == name.as_bytes()),
                "{key} shows the name {name}"
            );
        }
        assert!(
            !data.windows(MARKER.len()).any(|w| w == MARKER),
            "{key} shows the secret bytes"
        );
    }
}

fn local_objects(store: &Path) -> Vec<(String, Vec<u8>)> {
    walkdir::WalkDir::new(store)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn with_keys(cmd: &mut tokio::process::Command, keys: &Path) {
    cmd.arg("--encryption-keys").arg(keys);
}

/// [`support::copy_cmd`] of [`VOLUME`], encrypting with the keys in `keys`.
fn copy_cmd(src: &Path, store: &str, data: &Path, keys: &Path) -> tokio::process::Command {
    let mut cmd = support::copy_cmd(src, store, VOLUME, data);
    with_keys(&mut cmd, keys);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_shows_no_name_or_content_and_restores_exactly_only_with_its_key() {
    let work = tempfile::tempdir().unwrap();
    let src = secret_volume(&work.path().join("src"));
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    let old = key_file(work.path(), "old.keys", &[&format!("first {KEY_OLD}")]);
    let data = work.path().join("data");
    run_ok(&mut copy_cmd(&src, &store, &data, &old)).await;
    assert_sealed(&local_objects(&store_dir));

    let dest = work.path().join("restored");
    let mut restore = support::restore_cmd(&store, VOLUME, &dest);
    with_keys(&mut restore, &old);
    run_ok(&mut restore).await;
    assert_eq!(differences(&src, &dest), Vec::<String>::new());
    let mut verify = drainer();
    verify.args(["verify", &store, "--volume", VOLUME]);
    with_keys(&mut verify, &old);
    assert!(run_ok(&mut verify).await.contains("0 problems"));

    // Without the key, with another key, with a bad key file: one line, nothing written.
    let refused = work.path().join("refused");
    let line = fails(&mut support::restore_cmd(&store, VOLUME, &refused), 1).await;
    assert!(
        line.contains("is encrypted") && line.contains("--encryption-keys"),
        "{line}"
    );
    let other = key_file(work.path(), "other.keys", &[KEY_NEW]);
    let mut wrong = support::restore_cmd(&store, VOLUME, &refused);
    with_keys(&mut wrong, &other);
    let line = fails(&mut wrong, 1).await;
    assert!(line.contains("not in the key file"), "{line}");
    let bad = key_file(work.path(), "bad.keys", &["c2hvcnQ="]);
    let mut bad_file = support::restore_cmd(&store, VOLUME, &refused);
    with_keys(&mut bad_file, &bad);
    let line = fails(&mut bad_file, 2).await;
    assert!(
        line.contains("bad.keys: line 1: a key is 32 random bytes"),
        "{line}"
    );
    assert!(!refused.exists(), "a refused restore wrote nothing");

    // Rotation: a new first key seals the next snapshot (incremental over the first); both
    // snapshots restore with the rotated file; the old key alone cannot open the new one.
    let rotated = key_file(
        work.path(),
        "rotated.keys",
        &[&format!("second {KEY_NEW}"), &format!("first {KEY_OLD}")],
    );
    let first = run_ok(
        drainer()
            .args(["snapshots", &store, "--encryption-keys"])
            .arg(&rotated),
    )
    .await;
    std::fs::write(src.join("salaries/new.txt"), MARKER.repeat(3)).unwrap();
    run_ok(&mut copy_cmd(&src, &store, &data, &rotated)).await;
    assert_sealed(&local_objects(&store_dir));
    let latest = work.path().join("latest");
    let mut restore = support::restore_cmd(&store, VOLUME, &latest);
    with_keys(&mut restore, &rotated);
    run_ok(&mut restore).await;
    assert_eq!(differences(&src, &latest), Vec::<String>::new());
    let first_id = first
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let earlier = work.path().join("earlier");
    let mut restore = support::restore_cmd(&store, VOLUME, &earlier);
    restore.args(["--snapshot", first_id]);
    with_keys(&mut restore, &rotated);
    run_ok(&mut restore).await;
    assert!(!earlier.join("salaries/new.txt").exists());
    assert!(earlier.join("salaries/ceo-contract.pdf").exists());
    let mut stale = support::restore_cmd(&store, VOLUME, &refused);
    with_keys(&mut stale, &old);
    let line = fails(&mut stale, 1).await;
    assert!(line.contains("not in the key file"), "{line}");
    assert!(!refused.exists());

    // Pruning the first snapshot keeps the objects the second still uses (its unchanged files
    // are the first's objects, found by their sealed names).
    let mut prune = drainer();
    prune.args(["prune", &store, "--volume", VOLUME, "--keep-last", "1"]);
    with_keys(&mut prune, &rotated);
    run_ok(&mut prune).await;
    let listed = run_ok(
        drainer()
            .args(["snapshots", &store, "--encryption-keys"])
            .arg(&rotated),
    )
    .await;
    assert!(!listed.contains(first_id), "{listed}");
    let after_prune = work.path().join("after-prune");
    let mut restore = support::restore_cmd(&store, VOLUME, &after_prune);
    with_keys(&mut restore, &rotated);
    run_ok(&mut restore).await;
    assert_eq!(differences(&src, &after_prune), Vec::<String>::new());
}

/// A drainer with `--encryption-keys` relaying an external mover to S3: the bucket holds only
/// sealed objects under sealed names; the volume restores exactly through the drainer and
/// straight from the bucket with the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_seals_what_its_movers_send_to_s3() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = secret_volume(&work.path().join("mount"));
    let keys = key_file(work.path(), "keys", &[KEY_OLD]);
    let store = "s3://bucket/sealed";
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let keys_arg = keys.display().to_string();
    let serve = Serve::start_with_env(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--movers",
            "external",
            "--store",
            store,
            "--encryption-keys",
            &keys_arg,
        ],
        &env,
    )
    .await;
    serve.drain_with_mover("shop", "payroll-0", &mount).await;

    let mut objects = Vec::new();
    for key in server.keys("sealed/").await {
        let data = server.get(&key).await;
        objects.push((key, data));
    }
    assert!(
        objects.len() >= 5,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_sealed(&objects);

    let through = work.path().join("through");
    serve.restore_as_admin(VOLUME, &through).await;
    assert_eq!(differences(&mount, &through), Vec::<String>::new());
    let direct = work.path().join("direct");
    let mut restore = support::restore_cmd(store, VOLUME, &direct);
    with_keys(&mut restore, &keys);
    server.configure(&mut restore);
    run_ok(&mut restore).await;
    assert_eq!(differences(&mount, &direct), Vec::<String>::new());
}

/// Keys rotate under a running drainer: the key file rewritten with a new first key is taken
/// within seconds (logged), the next snapshot's new objects are sealed with it while the
/// unchanged files' objects stay under the old key, and a rewrite that drops the old key is
/// refused (logged) and changes nothing: the latest snapshot, which needs both keys, restores
/// exactly through the drainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_drainer_takes_a_rotated_key_file_and_refuses_one_that_drops_a_key() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = secret_volume(&work.path().join("mount"));
    let keys = key_file(work.path(), "keys", &[KEY_OLD]);
    let keys_arg = keys.display().to_string();
    let serve = Serve::start(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--movers",
            "external",
            "--encryption-keys",
            &keys_arg,
        ],
    )
    .await;
    let store = data.join("store");
    serve.drain_with_mover("shop", "payroll-0", &mount).await;
    let before: std::collections::BTreeSet<String> =
        local_objects(&store).into_iter().map(|o| o.0).collect();

    key_file(work.path(), "keys", &[KEY_NEW, KEY_OLD]);
    wait_for_log(&serve, "encryption keys reloaded").await;
    std::fs::write(mount.join("salaries/ceo-contract.pdf"), MARKER.repeat(30)).unwrap();
    serve.drain_with_mover("shop", "payroll-0", &mount).await;
    let (old, new) = (fingerprint(KEY_OLD), fingerprint(KEY_NEW));
    let mut added = 0;
    for (path, bytes) in local_objects(&store) {
        if !path.contains("/files/") || bytes.is_empty() {
            continue; // an empty file's object holds no chunk
        }
        let sealed_with = &bytes[4..8];
        if before.contains(&path) {
            assert_eq!(sealed_with, old, "{path} was sealed before the rotation");
        } else {
            assert_eq!(sealed_with, new, "{path} was sealed after the rotation");
            added += 1;
        }
    }
    assert!(added >= 1, "the changed file has a new object");
    assert_sealed(&local_objects(&store));

    key_file(work.path(), "keys", &[KEY_NEW]);
    wait_for_log(&serve, "encryption keys not reloaded").await;
    assert!(
        log_tail(&serve.log_path(), 200).contains("is gone from it"),
        "the refusal says why"
    );
    let through = work.path().join("through");
    serve.restore_as_admin(VOLUME, &through).await;
    assert_eq!(differences(&mount, &through), Vec::<String>::new());
}

/// The 4-byte fingerprint a sealed chunk names its key by.
fn fingerprint(key: &str) -> Vec<u8> {
    let keys = drainer_core::encryption::Keys::parse(key).unwrap();
    let named = keys.sealing_key();
    let hex = &named[named.rfind('(').unwrap() + 1..named.len() - 1];
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Waits (30 s at most) until the drainer's log says `words`.
async fn wait_for_log(serve: &Serve, words: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(serve.log_path())
        .unwrap_or_default()
        .contains(words)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never said {words:?}: {}",
            log_tail(&serve.log_path(), 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
