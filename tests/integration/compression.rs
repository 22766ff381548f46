//! Compression (`--compression zstd`): compressible files are stored compressed and come back
//! exactly; data that does not shrink is stored raw; the manifest says which is which; a
//! snapshot written without compression (no field) still restores; compression composes with
//! encryption and incremental copies; and a relayed mover sends fewer bytes for compressible
//! data.

use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{drainer, file_url, run_ok};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const VOLUME: &str = "shop/db-0";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Text that compresses well (log lines with a counter), `len` bytes.
fn text(len: usize) -> Vec<u8> {
    (0..)
        .map(|i: u64| format!("{i:08} GET /v1/orders/{} 200 region=eu-west-1\n", i % 97))
        .flat_map(String::into_bytes)
        .take(len)
        .collect()
}

/// Data like a database's pages: every byte one of 16 values, so it compresses to about half.
fn pages(seed: u64, len: usize) -> Vec<u8> {
    bytes(seed, len).into_iter().map(|b| b & 0x0f).collect()
}

/// A volume of text, random and mixed files, an empty one, a large random file read in parts
/// and a large compressible one (24 MiB that compress to two parts of the store).
fn volume(root: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("logs/old")).unwrap();
    std::fs::write(root.join("logs/app.log"), text(300_000)).unwrap();
    std::fs::write(root.join("logs/old/app.log.1"), text(2_000_000)).unwrap();
    std::fs::write(root.join("logs/tiny.txt"), b"short").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("random.bin"), bytes(7, 500_000)).unwrap();
    let mut mixed = bytes(8, 200_000);
    mixed.extend(text(200_000));
    std::fs::write(root.join("mixed.dat"), mixed).unwrap();
    std::fs::write(root.join("large.bin"), bytes(9, 9 * 1024 * 1024)).unwrap();
    std::fs::write(root.join("pages.db"), pages(10, 24 * 1024 * 1024)).unwrap();
    // A sparse file of text: stored as its data extents, raw.
    let sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(40 * 1024 * 1024).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &text(100_000), 20 * 1024 * 1024).unwrap();
    root.to_owned()
}

/// Every manifest line of the volume's latest snapshot in a local store.
fn manifest(store: &Path) -> Vec<serde_json::Value> {
    let snapshots = store.join("volumes/shop/db-0/snapshots");
    let mut ids: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("snapshot.json").exists())
        .collect();
    ids.sort();
    let text = std::fs::read_to_string(ids.last().unwrap().join("manifest.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The manifest entry of `path`.
fn entry<'a>(lines: &'a [serde_json::Value], path: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("no entry {path}"))
}

/// Bytes of every file object in a local store.
fn object_bytes(store: &Path) -> u64 {
    walkdir::WalkDir::new(store)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("/files/"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn copy(src: &Path, store: &str, data: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.arg("copy")
        .arg(src)
        .arg(store)
        .args(["--volume", VOLUME, "--data-dir"])
        .arg(data)
        .args(extra);
    cmd
}

async fn restores_exactly(store: &str, src: &Path, dest: &Path, extra: &[&str]) {
    run_ok(
        drainer()
            .arg("restore")
            .arg(store)
            .args(["--volume", VOLUME])
            .args(extra)
            .arg(dest),
    )
    .await;
    assert_eq!(differences(src, dest), Vec::<String>::new());
    let verified = run_ok(
        drainer()
            .args(["verify", store, "--volume", VOLUME])
            .args(extra),
    )
    .await;
    assert!(verified.contains("0 problems"), "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_files_are_stored_compressed_and_restore_exactly() {
    let work = tempfile::tempdir().unwrap();
    let src = volume(&work.path().join("src"));
    let data = work.path().join("data");
    let (plain_dir, packed_dir) = (work.path().join("plain"), work.path().join("packed"));
    let (plain, packed) = (file_url(&plain_dir), file_url(&packed_dir));

    // Without compression: the manifest names none (as before compression existed).
    run_ok(&mut copy(&src, &plain, &data, &["--compression", "off"])).await;
    let lines = manifest(&plain_dir);
    for line in &lines {
        assert!(line.get("compression").is_none(), "{line}");
        assert!(line.get("stored_size").is_none(), "{line}");
    }
    restores_exactly(&plain, &src, &work.path().join("r-plain"), &[]).await;

    // With it (from the environment): text is stored compressed, random data raw.
    let mut zstd = copy(&src, &packed, &data, &[]);
    zstd.env("DRAINER_COMPRESSION", "zstd");
    run_ok(&mut zstd).await;
    let lines = manifest(&packed_dir);
    for (path, most) in [
        ("logs/app.log", 0.2),
        ("logs/old/app.log.1", 0.2),
        ("pages.db", 0.6),
    ] {
        let e = entry(&lines, path);
        assert_eq!(e["compression"], "zstd", "{e}");
        let (raw, stored) = (
            e["size"].as_u64().unwrap(),
            e["stored_size"].as_u64().unwrap(),
        );
        assert!(
            (stored as f64) < raw as f64 * most,
            "{path}: {stored} of {raw}"
        );
        let object = packed_dir
            .join("volumes/shop/db-0")
            .join(e["object"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&object).unwrap().len(), stored);
    }
    assert!(entry(&lines, "sparse.img").get("extents").is_some());
    for path in [
        "random.bin",
        "logs/tiny.txt",
        "empty",
        "mixed.dat",
        "large.bin",
        "sparse.img",
    ] {
        let e = entry(&lines, path);
        assert!(e.get("compression").is_none(), "{path} is stored raw: {e}");
    }
    let (plain_bytes, packed_bytes) = (object_bytes(&plain_dir), object_bytes(&packed_dir));
    assert!(
        packed_bytes + 12_000_000 < plain_bytes,
        "{packed_bytes} vs {plain_bytes}"
    );
    restores_exactly(&packed, &src, &work.path().join("r-packed"), &[]).await;

    // Incremental: unchanged files keep their object and its compression; a changed one is
    // stored again.
    let first = entry(&lines, "logs/old/app.log.1").clone();
    std::fs::write(src.join("logs/app.log"), text(310_000)).unwrap();
    let mut again = copy(&src, &packed, &data, &["--compression", "zstd:9"]);
    run_ok(&mut again).await;
    let next = manifest(&packed_dir);
    assert_eq!(
        entry(&next, "logs/old/app.log.1")["object"],
        first["object"]
    );
    assert_eq!(entry(&next, "logs/old/app.log.1")["compression"], "zstd");
    assert_eq!(
        entry(&next, "pages.db")["object"],
        entry(&lines, "pages.db")["object"]
    );
    assert_eq!(
        entry(&next, "pages.db")["stored_size"],
        entry(&lines, "pages.db")["stored_size"]
    );
    assert_eq!(entry(&next, "logs/app.log")["size"], 310_000);
    assert_eq!(entry(&next, "logs/app.log")["compression"], "zstd");
    restores_exactly(&packed, &src, &work.path().join("r-next"), &[]).await;

    // A damaged compressed object is a problem verify names, and restore refuses.
    let e = entry(&next, "logs/old/app.log.1");
    let object = packed_dir
        .join("volumes/shop/db-0")
        .join(e["object"].as_str().unwrap());
    let mut damaged = std::fs::read(&object).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&object, damaged).unwrap();
    let report = crate::support::run(drainer().args(["verify", &packed, "--volume", VOLUME])).await;
    let stdout = String::from_utf8_lossy(&report.stdout);
    assert!(!report.status.success());
    assert!(
        stdout.contains("PROBLEM logs/old/app.log.1: the compressed object does not decode"),
        "{stdout}"
    );
    let refused = crate::support::run(
        drainer()
            .arg("restore")
            .arg(&packed)
            .args(["--volume", VOLUME])
            .arg(work.path().join("r-damaged")),
    )
    .await;
    assert!(!refused.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_encrypted_objects_restore_exactly_and_stay_small() {
    let work = tempfile::tempdir().unwrap();
    let src = volume(&work.path().join("src"));
    let data = work.path().join("data");
    let keys = work.path().join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let keys = keys.display().to_string();
    let (sealed_dir, packed_dir) = (work.path().join("sealed"), work.path().join("both"));
    let (sealed, packed) = (file_url(&sealed_dir), file_url(&packed_dir));
    let with_keys = ["--encryption-keys", keys.as_str()];
    run_ok(&mut copy(&src, &sealed, &data, &with_keys)).await;
    let mut both = copy(&src, &packed, &data, &with_keys);
    both.args(["--compression", "zstd"]);
    run_ok(&mut both).await;
    let (sealed_bytes, packed_bytes) = (object_bytes(&sealed_dir), object_bytes(&packed_dir));
    assert!(
        packed_bytes + 12_000_000 < sealed_bytes,
        "{packed_bytes} vs {sealed_bytes}"
    );
    restores_exactly(&packed, &src, &work.path().join("r"), &with_keys).await;
}

/// A TCP forwarder that counts the bytes clients send upstream.
struct Counter {
    url: String,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(forward(client, server, Arc::clone(&counted)));
            }
        });
        Self { url, sent, task }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    sent: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async move {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent.fetch_add(n as u64, Ordering::SeqCst);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Runs a mover for `pvc` through `via` (the counter), with `extra` flags; returns the bytes
/// it sent.
async fn relayed(serve: &Serve, via: &Counter, pvc: &str, mount: &Path, extra: &[&str]) -> u64 {
    let (status, drains) = serve.handoff("shop", &[pvc]).await;
    assert_eq!(status, 202);
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let before = via.sent();
    run_ok(
        drainer()
            .args(["mover", "--drainer", &via.url, "--drain", &id, "--source"])
            .arg(mount)
            .args(extra)
            .env("DRAINER_TOKEN", TOKEN),
    )
    .await;
    serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;
    via.sent() - before
}

/// A drainer with `--compression zstd` relaying external movers: a mover that follows it
/// sends less than half the bytes of one told `--compression off`, for the same compressible
/// volume; both restore exactly through the drainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_mover_sends_fewer_bytes_for_compressible_data() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = work.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    for i in 0..20 {
        std::fs::write(
            mount.join(format!("table-{i}.log")),
            text(200_000 + i * 1000),
        )
        .unwrap();
    }
    std::fs::write(mount.join("random.bin"), bytes(3, 100_000)).unwrap();
    let store = file_url(&work.path().join("store"));
    let serve = Serve::start(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--movers",
            "external",
            "--store",
            &store,
            "--compression",
            "zstd",
        ],
    )
    .await;
    let via = Counter::start(&serve.url).await;
    let raw = relayed(&serve, &via, "raw-0", &mount, &["--compression", "off"]).await;
    let packed = relayed(&serve, &via, "packed-0", &mount, &[]).await;
    assert!(packed * 2 < raw, "sent {packed} compressed vs {raw} raw");
    for pvc in ["raw-0", "packed-0"] {
        let through = work.path().join(format!("through-{pvc}"));
        run_ok(
            drainer()
                .args(["restore", "--drainer", &serve.url, "--volume"])
                .arg(format!("shop/{pvc}"))
                .env("DRAINER_TOKEN", TOKEN)
                .arg(&through),
        )
        .await;
        assert_eq!(differences(&mount, &through), Vec::<String>::new());
    }
}

/// A mover killed while it sends a large compressed file (seven parts of compressed pages)
/// resumes it: the parts recorded before the kill are not sent again, and the file restores
/// exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_mid_file_resumes_its_compressed_upload_without_sending_parts_again() {
    const MIB: u64 = 1024 * 1024;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = work.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("pages.db"), pages(11, 104 * MIB as usize)).unwrap();
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    let serve = Serve::start(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--movers",
            "external",
            "--store",
            &store,
            "--compression",
            "zstd",
        ],
    )
    .await;
    let via = Counter::start(&serve.url).await;
    let (_, drains) = serve.handoff("shop", &["db-0"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let mover = || {
        let mut cmd = drainer();
        cmd.args(["mover", "--drainer", &via.url, "--drain", &id, "--source"])
            .arg(&mount)
            .env("DRAINER_TOKEN", TOKEN);
        cmd
    };
    let mut first = mover().spawn().unwrap();
    let volume: drainer::VolumeId = VOLUME.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let recorded = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(std::time::Instant::now() < deadline, "no part recorded");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the mover finished before it could be killed"
        );
        let runs = ledger.runs(&volume).await.unwrap();
        let running = runs
            .into_iter()
            .find(|r| r.state == drainer_core::ledger::RunState::Running);
        if let Some(run) = running
            && ledger.recorded_partial_parts(&run.id).await.unwrap() > 0
        {
            first.start_kill().unwrap();
            first.wait().await.unwrap();
            break ledger.recorded_partial_parts(&run.id).await.unwrap();
        }
    };
    let before = via.sent();
    let out = run_ok(&mut mover()).await;
    assert!(out.contains("resumed"), "{out}");
    let after_restart = via.sent() - before;
    serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;
    let lines = manifest(&store_dir);
    let e = entry(&lines, "pages.db");
    assert_eq!(e["compression"], "zstd", "{e}");
    let stored = e["stored_size"].as_u64().unwrap();
    assert!(stored > 6 * 8 * MIB, "{stored}");
    assert!(
        after_restart + recorded * 8 * MIB <= stored + MIB,
        "{after_restart} bytes sent after the restart; {recorded} parts of {stored} bytes were stored before"
    );
    let through = work.path().join("through");
    serve.restore_as_admin(VOLUME, &through).await;
    assert_eq!(differences(&mount, &through), Vec::<String>::new());
}
