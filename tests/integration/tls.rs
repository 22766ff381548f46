//! TLS on drainer's API, in local mode with certificates made in the test:
//! the clients verify the server with `--cacert` (handoff, mover, restore and sweep over
//! https), an untrusted certificate is a one-line error naming the URL that changes nothing, a
//! rotated certificate is served to new connections without a restart (a bad new pair is
//! refused and the old one kept), a handshake that never finishes frees its connection slot,
//! and half a pair of flags is a one-line usage error.

use crate::support::serve::{Serve, TOKEN};
use crate::support::tls::{Ca, SecretDir, client_trusting};
use crate::support::tree::differences;
use crate::support::{drainer, run, run_ok};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The names a server certificate of these tests is for.
const NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// A drainer in local mode serving TLS from a Secret-like directory, with one volume of
/// `files` files; its CA and that directory.
async fn tls_drainer(work: &Path, extra: &[&str], files: usize) -> (Serve, Ca, SecretDir) {
    let data = work.join("serve");
    let volume = data.join("volumes/shop/data-web-0");
    std::fs::create_dir_all(&volume).unwrap();
    for i in 0..files {
        std::fs::write(volume.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let ca = Ca::new("drainer test CA");
    let secret = SecretDir::new(&work.join("tls"), &ca.issue(NAMES), &ca);
    let mut args = vec!["--sweep-interval", "0"];
    args.extend(extra);
    let serve = Serve::start_tls(&data, &args, (&secret.cert(), &secret.key()), &ca).await;
    (serve, ca, secret)
}

/// Runs a failing `drainer` command; returns its one error line after checking the exit code.
async fn fails(cmd: &mut tokio::process::Command, code: i32) -> String {
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    lines[0].to_owned()
}

fn handoff(url: &str) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.args([
        "handoff",
        "--drainer",
        url,
        "--namespace",
        "shop",
        "--pvc",
        "data-web-0",
    ])
    .env("DRAINER_TOKEN", TOKEN);
    cmd
}

/// Clients verify the server with `--cacert` / `DRAINER_CACERT`: without it, or with another
/// CA, a handoff is one line naming the URL and the flag, and no drain is made; with it the
/// handoff is taken, and a restore through the API and a sweep work over https too.
#[tokio::test]
async fn clients_verify_the_server_with_their_ca() {
    let work = tempfile::tempdir().unwrap();
    let (serve, ca, _secret) = tls_drainer(work.path(), &[], 20).await;
    let ours = ca.write(work.path(), "ca.crt");
    let theirs = Ca::new("another CA").write(work.path(), "other-ca.crt");

    let untrusted = fails(&mut handoff(&serve.url), 1).await;
    for what in [serve.url.as_str(), "not trusted", "--cacert"] {
        assert!(untrusted.contains(what), "{what} in: {untrusted}");
    }
    let wrong = fails(handoff(&serve.url).arg("--cacert").arg(&theirs), 1).await;
    assert!(wrong.contains("not trusted"), "{wrong}");
    let plain_url = serve.url.replace("https://", "http://");
    let (status, _) = serve.call(reqwest::Method::GET, "/v1/drains", None).await;
    assert_eq!(status, 200);
    assert!(
        serve.drains("").await.is_empty(),
        "an untrusted server was sent no handoff"
    );
    let not_a_ca = fails(handoff(&serve.url).arg("--cacert").arg(work.path()), 1).await;
    assert!(not_a_ca.contains("--cacert"), "{not_a_ca}");
    // Plain HTTP to a TLS port is refused, not answered.
    let mut plain = handoff(&plain_url);
    plain.args(["--timeout", "3"]);
    assert!(!run(&mut plain).await.status.success());
    assert!(serve.drains("").await.is_empty());

    let taken = run_ok(handoff(&serve.url).env("DRAINER_CACERT", &ours)).await;
    assert!(taken.contains("data-web-0"), "{taken}");
    let drains = serve.drains("").await;
    assert_eq!(drains.len(), 1);
    let id = drains[0]["id"].as_str().unwrap();
    serve
        .wait_state(id, "completed", Duration::from_secs(60))
        .await;

    let dest = work.path().join("restored");
    let mut restore = drainer();
    restore
        .args([
            "restore",
            "--drainer",
            &serve.url,
            "--volume",
            "shop/data-web-0",
        ])
        .arg(&dest)
        .args(["--cacert"])
        .arg(&ours)
        .env("DRAINER_TOKEN", TOKEN);
    run_ok(&mut restore).await;
    let source = work.path().join("serve/volumes/shop/data-web-0");
    assert_eq!(differences(&source, &dest), Vec::<String>::new());
    let mut untrusted_restore = drainer();
    untrusted_restore
        .args([
            "restore",
            "--drainer",
            &serve.url,
            "--volume",
            "shop/data-web-0",
        ])
        .arg(work.path().join("not-restored"))
        .env("DRAINER_TOKEN", TOKEN);
    let refused = fails(&mut untrusted_restore, 1).await;
    assert!(refused.contains("not trusted"), "{refused}");
    assert!(!work.path().join("not-restored").exists());

    let mut sweep = drainer();
    sweep
        .args(["sweep", "--drainer", &serve.url, "--dry-run", "--cacert"])
        .arg(&ours)
        .env("DRAINER_TOKEN", TOKEN);
    run_ok(&mut sweep).await;
}

/// `drainer mover` streams a drain over https, trusting the CA given as text
/// (`DRAINER_CACERT_PEM`, as mover Jobs get it).
#[tokio::test]
async fn a_mover_streams_over_tls_with_the_ca_as_text() {
    let work = tempfile::tempdir().unwrap();
    let (serve, ca, _secret) = tls_drainer(work.path(), &["--movers", "external"], 50).await;
    let (_, drains) = serve.handoff("shop", &["data-web-0"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let source = work.path().join("serve/volumes/shop/data-web-0");
    let mover = || {
        let mut cmd = drainer();
        cmd.args(["mover", "--drainer", &serve.url, "--drain", &id])
            .arg("--source")
            .arg(&source)
            .env("DRAINER_TOKEN", TOKEN);
        cmd
    };
    let refused = fails(&mut mover(), 1).await;
    assert!(refused.contains("not trusted"), "{refused}");
    run_ok(mover().env("DRAINER_CACERT_PEM", ca.pem())).await;
    let drain = serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;
    assert!(drain["snapshot"].is_string(), "{drain}");
}

/// Whether a new client trusting only `ca` trusts the certificate a new connection to `url`
/// sees (and is answered). A new client each time: one that resumes an earlier TLS session
/// is not shown the certificate again.
async fn trusted(ca: &Ca, url: &str) -> bool {
    client_trusting(ca)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Rotating the Secret's files (a new `..data`, signed by a new CA) makes new connections see
/// the new certificate without a restart; a new pair whose key is not the certificate's is
/// refused, logged, and the pair in use kept.
#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let (serve, old_ca, mut secret) = tls_drainer(work.path(), &[], 1).await;
    assert!(trusted(&old_ca, &serve.url).await);
    let new_ca = Ca::new("rotated CA");
    assert!(!trusted(&new_ca, &serve.url).await);
    secret.rotate(&new_ca.issue(NAMES), &new_ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !trusted(&new_ca, &serve.url).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!trusted(&old_ca, &serve.url).await, "nor the old one");

    // A key of another pair: refused, and the new certificate is still served.
    let mut mismatched = new_ca.issue(NAMES);
    mismatched.key = new_ca.issue(NAMES).key;
    secret.rotate(&mismatched, &new_ca);
    let log = serve.log_path();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("new TLS certificate not loaded")
    {
        assert!(Instant::now() < deadline, "the bad pair is not logged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        trusted(&new_ca, &serve.url).await,
        "the pair in use is kept"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("TLS certificate reloaded")
    );
}

/// Connections that never finish their TLS handshake (silent, or a partial ClientHello) are
/// closed within the header timeout, so with a limit of two connections, new clients are
/// served again afterwards.
#[tokio::test]
async fn a_handshake_that_never_ends_frees_its_slot() {
    let work = tempfile::tempdir().unwrap();
    let (serve, ca, _secret) = tls_drainer(
        work.path(),
        &["--max-connections", "2", "--header-timeout", "2"],
        1,
    )
    .await;
    let addr = serve.url.trim_start_matches("https://").to_owned();
    let mut stalled = Vec::new();
    for hello in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, hello)
            .await
            .unwrap();
        stalled.push(tcp);
    }
    for mut tcp in stalled {
        let mut buf = [0; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "drainer closed the stalled handshake: {closed:?}"
        );
    }
    assert!(trusted(&ca, &serve.url).await);
}

/// Giving only one of `--tls-cert` and `--tls-key` is a one-line usage error; a pair that
/// does not load stops start-up with one line naming the file.
#[tokio::test]
async fn half_a_pair_or_a_bad_pair_is_a_one_line_error() {
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("drainer test CA");
    let pair = ca.issue(NAMES);
    let (cert, key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    std::fs::write(&cert, &pair.cert).unwrap();
    std::fs::write(&key, ca.issue(NAMES).key).unwrap();
    let serve = |args: &[&Path]| {
        let mut cmd = drainer();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(work.path().join("data"));
        for (flag, file) in ["--tls-cert", "--tls-key"].iter().zip(args) {
            cmd.arg(flag).arg(file);
        }
        cmd
    };
    let only_cert = fails(&mut serve(&[&cert]), 2).await;
    assert!(only_cert.contains("--tls-key"), "{only_cert}");
    let mut only_key = drainer();
    only_key
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.path().join("data"))
        .arg("--tls-key")
        .arg(&key);
    let only_key = fails(&mut only_key, 2).await;
    assert!(only_key.contains("--tls-cert"), "{only_key}");
    let mismatched = fails(&mut serve(&[&cert, &key]), 1).await;
    assert!(mismatched.contains("tls.crt"), "{mismatched}");
    let missing = fails(&mut serve(&[&cert, &work.path().join("none.key")]), 1).await;
    assert!(missing.contains("none.key"), "{missing}");
}
