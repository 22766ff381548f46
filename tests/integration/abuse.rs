//! Bounded under abuse: a real `drainer serve` in local mode under attacks
//! a client of the network can make without a token (half-open connections) or with one
//! (slow bodies), while a well-behaved client keeps handing off. Each test prints the
//! handoff latencies before and during the attack (`eprintln`, never a pass/fail on timing);
//! what it asserts is that the attackers' connections are closed and that every handoff is
//! answered.

use crate::support::serve::{Serve, TOKEN};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header and body timeouts the tests give drainer, in seconds.
const TIMEOUT_SECONDS: u64 = 2;

/// Starts a drainer with short read timeouts and one volume to hand off.
async fn drainer(work: &std::path::Path) -> Serve {
    drainer_with(work, &[]).await
}

/// [`drainer`], with `extra` arguments.
async fn drainer_with(work: &std::path::Path, extra: &[&str]) -> Serve {
    let data = work.join("serve");
    std::fs::create_dir_all(data.join("volumes/shop/data-web-0")).unwrap();
    std::fs::write(data.join("volumes/shop/data-web-0/f"), b"x").unwrap();
    let timeout = TIMEOUT_SECONDS.to_string();
    Serve::start(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--header-timeout",
            &timeout,
            "--body-timeout",
            &timeout,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    )
    .await
}

/// One handoff as a pod's preStop hook makes it: a new connection, retried on connection
/// errors and `429`/`5xx` until answered; returns how long it took to be answered.
async fn handoff(url: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let sent = client
            .post(format!("{url}/v1/handoffs"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"namespace": "shop", "pvcs": ["data-web-0"]}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return started.elapsed(),
            Ok(r) if r.status() == 429 || r.status().is_server_error() => {}
            Ok(r) => panic!("handoff answered {}: {:?}", r.status(), r.text().await),
            Err(e) => assert!(Instant::now() < deadline, "no handoff answered: {e}"),
        }
        assert!(Instant::now() < deadline, "no handoff answered within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hands off one after the other until `done`; returns each one's latency.
async fn handoffs_until(url: String, done: tokio::sync::watch::Receiver<bool>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while !*done.borrow() {
        latencies.push(handoff(&url).await);
    }
    latencies
}

/// `n` handoffs one after the other, as a baseline.
async fn handoffs(url: &str, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for _ in 0..n {
        latencies.push(handoff(url).await);
    }
    latencies
}

/// Prints p50, p99 and the largest of `latencies` (milliseconds).
fn report(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    eprintln!(
        "abuse figures: {what}: {} handoffs, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.50),
        at(0.99),
        at(1.0),
    );
}

/// What became of one attacking connection.
#[derive(Debug)]
enum Held {
    /// drainer closed it, this long after its bytes were sent.
    Closed(Duration),
    /// It never connected.
    NeverConnected,
    /// It was still open after the test's patience ran out.
    StillOpen,
}

/// Opens a connection (one of those `connecting` allows at once), sends `head` (and never
/// the rest), and waits until drainer closes it.
async fn hold_open(
    addr: String,
    head: Vec<u8>,
    connecting: std::sync::Arc<tokio::sync::Semaphore>,
    patience: Duration,
) -> Held {
    let turn = connecting.acquire().await.unwrap();
    let Ok(mut tcp) = TcpStream::connect(&addr).await else {
        return Held::NeverConnected;
    };
    let sent = Instant::now();
    let written = tcp.write_all(&head).await;
    drop(turn);
    if written.is_err() {
        return Held::Closed(sent.elapsed());
    }
    let mut buf = vec![0; 4096];
    loop {
        match tokio::time::timeout(patience, tcp.read(&mut buf)).await {
            Err(_) => return Held::StillOpen,
            Ok(Ok(0) | Err(_)) => return Held::Closed(sent.elapsed()),
            Ok(Ok(_)) => {} // a response (e.g. 400): read on until closed
        }
    }
}

/// Runs `attack` (connections each sending one request head or part of one, held open)
/// against `serve` while handing off; returns the handoff latencies and when drainer closed
/// each connection.
async fn under_attack(
    serve: &Serve,
    connections: usize,
    head: impl Fn(usize) -> Vec<u8>,
) -> (Vec<Duration>, Vec<Duration>) {
    let addr = serve.url.trim_start_matches("http://").to_owned();
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let handing_off = tokio::spawn(handoffs_until(serve.url.clone(), done));
    let patience = Duration::from_secs(60);
    // Connections are opened 64 at a time: more at once can overflow the listener's accept
    // queue (128 here), whose dropped handshakes a client that sends nothing never hears of.
    let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut held = tokio::task::JoinSet::new();
    for i in 0..connections {
        held.spawn(hold_open(
            addr.clone(),
            head(i),
            connecting.clone(),
            patience,
        ));
    }
    let (mut closed, mut never, mut still_open) = (Vec::new(), 0, 0);
    while let Some(result) = held.join_next().await {
        match result.unwrap() {
            Held::Closed(after) => closed.push(after),
            Held::NeverConnected => never += 1,
            Held::StillOpen => still_open += 1,
        }
    }
    done_tx.send(true).unwrap();
    let latencies = handing_off.await.unwrap();
    eprintln!(
        "abuse figures: {connections} connections: {} closed by drainer (slowest after {:?}), \
         {never} never connected, {still_open} still open after {patience:?}",
        closed.len(),
        closed.iter().max(),
    );
    assert_eq!(still_open, 0, "connections left open");
    (latencies, closed)
}

/// 5,000 connections that send part of a request head (or nothing) and stall are all closed (those over
/// the connection limit at once, the others within the header timeout), and handoffs on new
/// connections are answered meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_dropped_and_handoffs_still_answered() {
    let work = tempfile::tempdir().unwrap();
    let serve = drainer(work.path()).await;
    report("before the attack", &mut handoffs(&serve.url, 50).await);

    // One in five sends nothing at all (an idle connection is closed the same way).
    let partial = b"POST /v1/handoffs HTTP/1.1\r\nHost: drainer\r\nContent-Ty".to_vec();
    let head = |i| match i % 5 {
        0 => vec![],
        _ => partial.clone(),
    };
    let (mut latencies, closed) = under_attack(&serve, 5_000, head).await;
    report("during 5,000 half-open connections", &mut latencies);
    assert!(!latencies.is_empty(), "no handoff during the attack");
    assert!(
        closed.len() >= 4_000,
        "most connections connected and were closed"
    );

    // Afterwards, on a new connection, at once (the attack's slots are all free again).
    report("after the attack", &mut handoffs(&serve.url, 20).await);
    let log = std::fs::read_to_string(serve.log_path()).unwrap();
    assert!(
        log.contains("connection limit reached"),
        "refusals are logged"
    );
}

/// Connections that send a whole request head with a valid token and then a body a byte at
/// a time too slowly are answered `4xx` or closed within the body timeout, without holding
/// handoffs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_handoffs_still_answered() {
    let work = tempfile::tempdir().unwrap();
    let serve = drainer(work.path()).await;
    report("before the attack", &mut handoffs(&serve.url, 50).await);

    let slow = format!(
        "POST /v1/handoffs HTTP/1.1\r\nHost: drainer\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"namespace\":"
    )
    .into_bytes();
    let (mut latencies, closed) = under_attack(&serve, 500, |_| slow.clone()).await;
    report("during 500 slow bodies", &mut latencies);
    assert!(!latencies.is_empty(), "no handoff during the attack");
    assert_eq!(closed.len(), 500, "every slow body's connection was closed");
    report("after the attack", &mut handoffs(&serve.url, 20).await);
}

/// drainer's memory limit in `deploy/base/deployment.yaml`.
const MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

/// A process's resident memory in bytes (`VmRSS` of `/proc/PID/status`).
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Sends a batch read of `volume` (the whole of `blob`, 64 times: the largest batch) and
/// reads the answer's head and first bytes, then stops reading and holds the connection
/// until `done`. Returns the answer's status line.
async fn read_slowly(
    addr: String,
    volume: String,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> String {
    let reads: Vec<_> = (0..64)
        .map(|_| serde_json::json!({"key": "snapshots/attack/blob", "start": 0, "end": 256 * 1024}))
        .collect();
    let body = serde_json::json!({ "reads": reads }).to_string();
    let request = format!(
        "POST /v1/volumes/shop/{volume}/objects/batch HTTP/1.1\r\nHost: drainer\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0; 64 * 1024];
    let mut got = 0;
    while got < head.len() {
        match tcp.read(&mut head[got..]).await.unwrap() {
            0 => break,
            n => got += n,
        }
    }
    let status = String::from_utf8_lossy(&head[..got.min(12)]).into_owned();
    let _ = done.wait_for(|d| *d).await;
    status
}

/// 40 readers of full batches (64 reads of 256 KiB: 16 MiB each, 640 MiB in all) that read
/// the first bytes and then stop reading: drainer's resident memory stays under its limit
/// (the answers stream, a few reads ahead of each reader), and handoffs are answered
/// meanwhile. Prints the memory before and at its highest during the attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_slow_readers_of_full_batches_stay_under_the_memory_limit() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    // Five volumes: a caller may run eight batch reads of one volume at once.
    let volumes: Vec<String> = (0..5).map(|i| format!("data-web-{i}")).collect();
    let blob: Vec<u8> = (0..256 * 1024).map(|_| rand::random::<u8>()).collect();
    for volume in &volumes {
        let dir = store.join(format!("volumes/shop/{volume}/snapshots/attack"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blob"), &blob).unwrap();
    }
    let store_url = format!("file://{}", store.display());
    let serve = drainer_with(work.path(), &["--store", &store_url]).await;
    let pid = serve.pid().unwrap();
    report("before the attack", &mut handoffs(&serve.url, 50).await);
    let before = resident_bytes(pid);

    let addr = serve.url.trim_start_matches("http://").to_owned();
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let handing_off = tokio::spawn(handoffs_until(serve.url.clone(), done.clone()));
    let readers: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(read_slowly(
                addr.clone(),
                volumes[i % 5].clone(),
                done.clone(),
            ))
        })
        .collect();
    let mut highest = 0;
    for _ in 0..60 {
        highest = highest.max(resident_bytes(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done_tx.send(true).unwrap();
    let mut latencies = handing_off.await.unwrap();
    let mut statuses = Vec::new();
    for reader in readers {
        statuses.push(reader.await.unwrap());
    }
    report("during 40 slow readers of full batches", &mut latencies);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "abuse figures: 40 slow readers of 16 MiB batches: drainer resident {:.0} MiB before, \
         {:.0} MiB at most during (limit {:.0} MiB)",
        mib(before),
        mib(highest),
        mib(MEMORY_LIMIT)
    );
    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 200"),
        "every reader was answered: {statuses:?}"
    );
    assert!(!latencies.is_empty(), "no handoff during the attack");
    assert!(
        highest < MEMORY_LIMIT,
        "drainer held {:.0} MiB for 40 slow readers",
        mib(highest)
    );
}
