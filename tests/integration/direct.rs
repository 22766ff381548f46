//! Direct data paths (`--mover-data-path`): an external mover copying into an S3 drainer
//! store (moto) stores large files' parts straight into the store with URLs drainer signs, and
//! the bytes never pass through drainer (a forwarder between mover and drainer counts what the
//! mover sends it, and drainer's `drainer_mover_part_bytes_total{via}` agrees); `restore
//! --drainer` reads them straight from the store too. The relay stays for `--mover-data-path
//! relay` and for an encrypted store; a mover killed mid-upload resumes from its last stored
//! part; a URL is signed only for the drain's own upload and its run's key; and a part claimed
//! but not stored, or stored short, fails the upload's completion.

use crate::support::by_hand::{begin_run, copying, create_upload, serve};
use crate::support::s3::S3Server;
use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{drainer, run_ok};
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;
/// The drainer's part size (its default).
const PART: u64 = 8 * MIB as u64;
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Writes a volume with two large files and a few small ones into `mount`; answers the large
/// files' bytes (what goes in parts).
fn volume(mount: &Path) -> u64 {
    std::fs::create_dir_all(mount.join("small")).unwrap();
    for i in 0..20 {
        std::fs::write(mount.join("small").join(format!("f{i:02}")), bytes(i, 4096)).unwrap();
    }
    let large = [(40 * MIB, 1), (20 * MIB + 12345, 2)];
    for (len, seed) in large {
        std::fs::write(mount.join(format!("large-{seed}")), bytes(seed + 100, len)).unwrap();
    }
    large.iter().map(|(len, _)| *len as u64).sum()
}

/// Bytes through a [`counting_forwarder`]: sent by its clients, and sent to them.
#[derive(Default)]
struct Counts {
    up: AtomicU64,
    down: AtomicU64,
}

/// Copies `from` into `to` until either ends, counting into `count`.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    count: &AtomicU64,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP forwarder on loopback to `upstream` (`http://HOST:PORT`): its URL, and the bytes
/// that crossed it each way (what a mover sends its drainer, what a restore reads from it).
async fn counting_forwarder(upstream: &str) -> (String, Arc<Counts>) {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let counted = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                tokio::join!(
                    pump(from_client, to_server, &counted.up),
                    pump(from_server, to_client, &counted.down),
                );
            });
        }
    });
    (url, counts)
}

/// `drainer_mover_part_bytes_total` by path: (relay, direct).
async fn part_bytes(serve: &Serve) -> (u64, u64) {
    let scrape = reqwest::get(format!("{}/metrics", serve.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |via: &str| {
        let name = format!("drainer_mover_part_bytes_total{{via=\"{via}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {scrape}"))
    };
    (value("relay"), value("direct"))
}

/// A mover of drain `id` from `mount`, reaching its drainer at `url`.
fn mover_via(url: &str, id: &str, mount: &Path) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.args(["mover", "--drainer", url, "--drain", id, "--source"])
        .arg(mount)
        .env("DRAINER_TOKEN", TOKEN);
    cmd
}

/// A mover of drain `id` from `mount`.
fn mover(serve: &Serve, id: &str, mount: &Path) -> tokio::process::Command {
    mover_via(&serve.url, id, mount)
}

/// How one drainer is set up, and where its movers' parts must go.
struct Case {
    name: &'static str,
    flags: Vec<String>,
    direct: bool,
}

/// A mover copying large files into an S3 drainer store sends their parts straight into the
/// store (it sends drainer less than a quarter of their bytes, the metric counts them all as
/// direct), unless the operator forces the relay or the store is encrypted (then it sends
/// drainer every byte, counted as relayed); each snapshot restores exactly through drainer,
/// the large files' bytes read straight from the store too unless relayed; and a relaying
/// drainer refuses to sign (`409 direct_parts_not_offered`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_straight_to_and_from_s3_unless_relayed_by_choice_or_encryption() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let mount = work.path().join("mount");
    let large = volume(&mount);
    let keys = work.path().join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let keys = keys.display().to_string();
    let cases = [
        Case {
            name: "auto",
            flags: vec![],
            direct: true,
        },
        Case {
            name: "relay",
            flags: vec!["--mover-data-path".into(), "relay".into()],
            direct: false,
        },
        Case {
            name: "encrypted",
            flags: vec!["--encryption-keys".into(), keys.clone()],
            direct: false,
        },
    ];
    for case in cases {
        let name = case.name;
        let data = work.path().join(name);
        let store = format!("s3://bucket/{name}");
        let flags: Vec<&str> = case.flags.iter().map(String::as_str).collect();
        let serve = serve(&server, &data, &store, &flags).await;
        let id = copying(&serve, "data-web-4").await;
        let (status, info) = serve
            .call(Method::GET, &format!("/v1/drains/{id}/store"), None)
            .await;
        assert_eq!(status, 200, "{name}: {info}");
        assert_eq!(info["direct_parts"], case.direct, "{name}: {info}");
        if !case.direct {
            let path = format!("/v1/drains/{id}/uploads/u-0/0/url?key=any");
            let (status, refusal) = serve.call(Method::POST, &path, None).await;
            assert_eq!(status, 409, "{name}: {refusal}");
            assert_eq!(refusal["error"]["code"], "direct_parts_not_offered");
        }

        let (via, counts) = counting_forwarder(&serve.url).await;
        run_ok(&mut mover_via(&via, &id, &mount)).await;
        serve
            .wait_state(&id, "completed", Duration::from_secs(60))
            .await;
        let sent = counts.up.load(Ordering::Relaxed);
        let (relayed, direct) = part_bytes(&serve).await;
        if case.direct {
            assert_eq!((relayed, direct), (0, large), "{name}: parts by path");
            assert!(
                sent < large / 4,
                "{name}: the mover sent drainer {sent} bytes while {large} went straight to the store"
            );
        } else {
            assert_eq!((relayed, direct), (large, 0), "{name}: parts by path");
            assert!(
                sent >= large,
                "{name}: the mover sent drainer {sent} bytes, less than the {large} it relayed"
            );
        }
        let (via, counts) = counting_forwarder(&serve.url).await;
        let restored = work.path().join(format!("{name}-restored"));
        run_ok(
            drainer()
                .args(["restore", "--drainer", &via, "--volume", "shop/data-web-4"])
                .env("DRAINER_TOKEN", TOKEN)
                .arg(&restored),
        )
        .await;
        assert_eq!(
            differences(&mount, &restored),
            Vec::<String>::new(),
            "{name}"
        );
        let read = counts.down.load(Ordering::Relaxed);
        if case.direct {
            assert!(
                read < large / 4,
                "{name}: the restore read {read} bytes through drainer, {large} were in large files"
            );
        } else {
            assert!(
                read >= large,
                "{name}: the restore read {read} bytes through drainer, less than the {large} of large files"
            );
        }
    }
}

/// A mover SIGKILLed while it stores a large file's parts straight into the store resumes
/// from its last stored part: the next mover sends at most the parts not recorded before the
/// kill (by the direct bytes counted), none through drainer, and the snapshot restores
/// exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_mid_direct_upload_resumes_from_its_last_stored_part() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mount = work.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    let size = 96 * MIB;
    std::fs::write(mount.join("large"), bytes(77, size)).unwrap();
    std::fs::write(mount.join("small"), b"small").unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let ledger = drainer::Ledger::open(None, &data).await.unwrap(); // migrated before serve
    let serve = serve(&server, &data, "s3://bucket/resume", &[]).await;
    let id = copying(&serve, "data-web-4").await;
    let volume: drainer::VolumeId = "shop/data-web-4".parse().unwrap();

    let mut first = mover(&serve, &id, &mount)
        .args(["--concurrency", "2"])
        .spawn()
        .unwrap();
    let (_, upload) = crate::support::kill::kill_once_parts_stored(
        &mut first,
        &ledger,
        &volume,
        b"large",
        "direct parts",
    )
    .await;
    let stored_parts = upload.parts.len() as u64;
    let (_, direct_before) = part_bytes(&serve).await;
    run_ok(&mut mover(&serve, &id, &mount)).await;
    serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;
    let (relayed, direct_after) = part_bytes(&serve).await;
    let sent_again = direct_after - direct_before;
    assert_eq!(relayed, 0, "no part went through drainer");
    assert!(
        sent_again <= size as u64 - stored_parts * PART,
        "{sent_again} bytes sent after the kill, but {stored_parts} parts were stored before it"
    );
    let restored = work.path().join("restored");
    serve.restore_as_admin("shop/data-web-4", &restored).await;
    assert_eq!(differences(&mount, &restored), Vec::<String>::new());
}

/// Signs part `part` of `upload` and `PUT`s `len` bytes to it; the store's ETag.
async fn put_direct(
    serve: &Serve,
    id: &str,
    upload: &str,
    part: u32,
    key: &str,
    len: usize,
) -> String {
    let path = format!("/v1/drains/{id}/uploads/{upload}/{part}/url?key={key}");
    let (status, signed) = serve.call(Method::POST, &path, None).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["expires_in_s"], 300, "{signed}");
    let url = signed["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let response = reqwest::Client::new()
        .put(url)
        .body(bytes(u64::from(part), len))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    response.headers()["etag"].to_str().unwrap().to_owned()
}

/// Reports part `part` of `upload` as stored with `etag` and `len` bytes.
async fn report(
    serve: &Serve,
    id: &str,
    upload: &str,
    part: u32,
    key: &str,
    etag: &str,
    len: u64,
) -> (u16, serde_json::Value) {
    let path = format!("/v1/drains/{id}/uploads/{upload}/{part}/stored?key={key}");
    let body = serde_json::json!({ "etag": etag, "len": len });
    serve.call(Method::POST, &path, Some(body)).await
}

/// A part URL is signed only for the drain's own upload and its running copy's key (`403`
/// for another snapshot's key, `404` for another drain's upload, JSON errors); a part
/// reported with more bytes than the store holds, or never stored, fails the upload's
/// completion and leaves no object behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_urls_are_signed_for_the_drains_own_upload_only_and_false_claims_fail_completion() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let serve = serve(
        &server,
        &work.path().join("data"),
        "s3://bucket/claims",
        &[],
    )
    .await;
    let a = copying(&serve, "data-web-4").await;
    let b = copying(&serve, "data-web-5").await;
    let snapshot_a = begin_run(&serve, &a).await;
    let snapshot_b = begin_run(&serve, &b).await;
    let own = |snapshot: &str, pvc: &str, name: &str| {
        format!("volumes/shop/{pvc}/snapshots/{snapshot}/files/{name}")
    };
    let key = own(&snapshot_a, "data-web-4", "short");
    let upload = create_upload(&serve, &a, &key).await;

    let other_run = own("20200101T000000000Z-0000", "data-web-4", "short");
    let path = format!("/v1/drains/{a}/uploads/{upload}/0/url?key={other_run}");
    let (status, refusal) = serve.call(Method::POST, &path, None).await;
    assert_eq!(status, 403, "another run's key: {refusal}");
    assert_eq!(refusal["error"]["code"], "forbidden", "{refusal}");
    let key_b = own(&snapshot_b, "data-web-5", "short");
    let path = format!("/v1/drains/{b}/uploads/{upload}/0/url?key={key_b}");
    let (status, refusal) = serve.call(Method::POST, &path, None).await;
    assert_eq!(status, 404, "another drain's upload: {refusal}");
    assert_eq!(refusal["error"]["code"], "upload_not_found", "{refusal}");
    let (status, refusal) = report(&serve, &a, &upload, 0, &key, "\"e\"", 0).await;
    assert_eq!(status, 400, "an empty part: {refusal}");
    assert_eq!(refusal["error"]["code"], "bad_part_size", "{refusal}");

    // Part 0 stored with 6 MiB but reported with the part size: completion fails.
    let etag = put_direct(&serve, &a, &upload, 0, &key, 6 * MIB).await;
    let (status, answer) = report(&serve, &a, &upload, 0, &key, &etag, PART).await;
    assert_eq!(status, 204, "{answer}");
    let etag = put_direct(&serve, &a, &upload, 1, &key, MIB).await;
    let (status, answer) = report(&serve, &a, &upload, 1, &key, &etag, MIB as u64).await;
    assert_eq!(status, 204, "{answer}");
    let complete = format!("/v1/drains/{a}/uploads/{upload}/complete?key={key}");
    let (status, refusal) = serve.call(Method::POST, &complete, None).await;
    assert_eq!(status, 400, "a part stored short: {refusal}");
    assert_eq!(refusal["error"]["code"], "incomplete_upload", "{refusal}");

    // A part reported but never stored: the store refuses the completion.
    let missing = own(&snapshot_a, "data-web-4", "missing");
    let upload = create_upload(&serve, &a, &missing).await;
    let etag = "\"0123456789abcdef0123456789abcdef\"";
    let (status, answer) = report(&serve, &a, &upload, 0, &missing, etag, MIB as u64).await;
    assert_eq!(status, 204, "{answer}");
    let complete = format!("/v1/drains/{a}/uploads/{upload}/complete?key={missing}");
    let (status, refusal) = serve.call(Method::POST, &complete, None).await;
    assert!(
        [400, 404].contains(&status) && refusal["error"]["code"].is_string(),
        "a part never stored: {status} {refusal}"
    );

    let left: Vec<PathBuf> = server
        .keys("claims/")
        .await
        .into_iter()
        .map(PathBuf::from)
        .filter(|k| k.ends_with("short") || k.ends_with("missing"))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "no object of a refused upload");
}
