//! Several `drainer serve` replicas behind one address, as behind a Kubernetes Service: a
//! mover's requests reach any replica, in turn, and the mover survives losing one of them.

use crate::support::cluster::assert_restores_exactly;
use crate::support::proxy::Proxy;
use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::bytes;
use crate::support::{drainer, file_url, fresh_postgres_database, run_ok};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A volume of `large` files of `large_mib` MiB (several parts each) and 200 small files.
fn mount(root: &Path, name: &str, large: usize, large_mib: usize) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("small")).unwrap();
    for i in 0..large {
        std::fs::write(
            dir.join(format!("large-{i}")),
            bytes(i as u64, large_mib << 20),
        )
        .unwrap();
    }
    for i in 0..200 {
        std::fs::write(
            dir.join(format!("small/f{i:03}")),
            bytes(1000 + i, 3000 + i as usize),
        )
        .unwrap();
    }
    dir
}

fn replica_args(database: &str, store: &str, id: &str) -> Vec<String> {
    [
        "--database-url",
        database,
        "--store",
        store,
        "--movers",
        "external",
        "--sweep-interval",
        "0",
        "--lease",
        "2",
        "--replica-id",
        id,
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn start(data: &Path, args: &[String]) -> Serve {
    Serve::start(data, &args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

fn mover(url: &str, drain: &str, source: &Path) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.args([
        "mover",
        "--drainer",
        url,
        "--drain",
        drain,
        "--concurrency",
        "4",
    ])
    .arg("--source")
    .arg(source)
    .env("DRAINER_TOKEN", TOKEN);
    cmd
}

/// Relayed parts that succeeded, by `upload/index`, from the proxy's record.
fn parts_sent(proxy: &Proxy, drain: &str) -> HashMap<String, usize> {
    let prefix = format!("PUT /v1/drains/{drain}/uploads/");
    let mut sent = HashMap::new();
    for request in proxy.succeeded() {
        if let Some(part) = request.strip_prefix(&prefix) {
            *sent.entry(part.to_owned()).or_insert(0) += 1;
        }
    }
    sent
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_streams_through_any_replica_and_loses_nothing_when_one_dies() {
    let work = tempfile::tempdir().unwrap();
    let database = fresh_postgres_database().await;
    let store = file_url(&work.path().join("store"));
    let a = start(
        &work.path().join("a"),
        &replica_args(&database, &store, "replica-a"),
    )
    .await;
    let b = start(
        &work.path().join("b"),
        &replica_args(&database, &store, "replica-b"),
    )
    .await;
    let proxy = Proxy::start(vec![a.url.clone(), b.url.clone()]).await;

    // Phase 1: a replica dies mid-stream; the mover carries on through the other.
    let source = mount(work.path(), "web-0", 3, 40);
    let (_, drains) = b.handoff("shop", &["data-web-0"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    let holder = b.wait_state(&id, "copying", Duration::from_secs(30)).await["lease_owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut streaming = mover(&proxy.url, &id, &source).spawn().unwrap();
    wait_for("a first relayed part", Duration::from_secs(60), || {
        !parts_sent(&proxy, &id).is_empty()
    })
    .await;
    // Kill the replica holding the drain's lease: the other takes the drain over as well.
    let (dead, alive) = if holder == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    dead.kill9().await;
    let status = tokio::time::timeout(Duration::from_secs(180), streaming.wait())
        .await
        .expect("the mover finished in time")
        .unwrap();
    assert!(
        status.success(),
        "the mover completed through the surviving replica: {status:?}"
    );
    let ended = alive
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    assert_restores_exactly(&store, "shop", "data-web-0", &source, work.path()).await;
    let sent = parts_sent(&proxy, &id);
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "parts stored twice: {twice:?}");
    assert!(
        sent.len() >= 15,
        "3 files of 5 parts were relayed: {sent:?}"
    );

    // Phase 2: the mover dies mid-file; started again, it continues the same uploads.
    // Files of 16 parts, so that the mover is still copying when the test sees its first
    // parts recorded, even on a busy machine.
    let source = mount(work.path(), "web-1", 2, 128);
    let (_, drains) = alive.handoff("shop", &["data-web-1"]).await;
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    alive
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let mut first = mover(&alive.url, &id, &source).spawn().unwrap();
    let ledger = drainer::Ledger::open(Some(&database), Path::new("unused"))
        .await
        .unwrap();
    let recorded_parts = |ledger: drainer::Ledger| async move {
        let volume: drainer::VolumeId = "shop/data-web-1".parse().unwrap();
        let Some(run) = ledger
            .runs(&volume)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.state == drainer_core::ledger::RunState::Running)
        else {
            return 0;
        };
        ledger.recorded_partial_parts(&run.id).await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded_parts(ledger.clone()).await < 4 {
        assert!(
            Instant::now() < deadline,
            "no relayed part was recorded within a minute"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the mover finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let recorded = recorded_parts(ledger.clone()).await;
    let restarted = recorded_of_completed_uploads(&ledger, &work.path().join("store")).await;
    let out = run_ok(&mut mover(&proxy.url, &id, &source)).await;
    assert!(out.contains("resumed"), "{out}");
    let ended = alive
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    assert_restores_exactly(&store, "shop", "data-web-1", &source, work.path()).await;
    // 2 files of 16 parts: the second mover sent at most what was not recorded as stored, and
    // again the parts of an upload that was completed but still recorded as unfinished when
    // the first mover died (by design such an upload is started again, see
    // `service::a_relayed_upload_that_an_earlier_mover_completed_starts_again_cleanly`).
    let resent: usize = parts_sent(&proxy, &id).values().sum();
    assert!(
        resent <= 32 - recorded as usize + restarted,
        "the resumed mover sent {resent} parts, though {recorded} of 32 were recorded as stored \
         ({restarted} of them of uploads already completed)"
    );
}

/// The recorded parts of the running run's unfinished uploads whose object is already in the
/// (local) store: uploads completed by the store before the mover recorded the file as stored.
async fn recorded_of_completed_uploads(ledger: &drainer::Ledger, store: &Path) -> usize {
    use drainer_core::snapshot::Run;
    let volume: drainer::VolumeId = "shop/data-web-1".parse().unwrap();
    let runs = ledger.runs(&volume).await.unwrap();
    let Some(record) = runs
        .iter()
        .find(|r| r.state == drainer_core::ledger::RunState::Running)
    else {
        return 0;
    };
    let run = Run {
        id: record.id.clone(),
        snapshot: record.snapshot.parse().unwrap(),
        resumed: false,
    };
    let files = store.join(format!(
        "volumes/shop/data-web-1/snapshots/{}/files",
        record.snapshot
    ));
    let mut parts = 0;
    for name in ["large-0", "large-1"] {
        let partial = ledger.partial_upload(&run, name.as_bytes()).await.unwrap();
        if let Some(partial) = partial.filter(|_| files.join(name).exists()) {
            parts += partial.parts.len();
        }
    }
    parts
}
