//! The always-up service through real `drainer serve` processes: the API's error contract,
//! handoffs end to end, kill -9 and restart, two replicas on one PostgreSQL, and SIGTERM.

use crate::support::cluster::assert_restores_exactly;
use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{drainer, file_url, fresh_postgres_database, run, run_ok};
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Creates the local-mode volume `ns/pvc` under `data` with `files` files of `size` bytes.
fn make_volume(data: &Path, ns: &str, pvc: &str, files: usize, size: usize) -> std::path::PathBuf {
    let dir = data.join("volumes").join(ns).join(pvc);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..files {
        let seed = (pvc.len() * 1000 + i) as u64 + pvc.bytes().map(u64::from).sum::<u64>();
        std::fs::write(dir.join("sub").join(format!("f{i:03}")), bytes(seed, size)).unwrap();
    }
    dir
}

fn ids(drains: &[serde_json::Value]) -> Vec<String> {
    drains
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_input_with_json_errors_and_records_nothing() {
    let work = tempfile::tempdir().unwrap();
    let serve = Serve::start(&work.path().join("data"), &["--sweep-interval", "0"]).await;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", serve.url);
    let check =
        |status: u16, body: &serde_json::Value, want_status: u16, want_code: &str, case: &str| {
            assert_eq!(status, want_status, "{case}: {body}");
            assert_eq!(body["error"]["code"], want_code, "{case}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{case}: {body}"
            );
        };
    async fn send(r: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
    let good = json!({"namespace": "shop", "pvcs": ["data-web-4"]});

    let (s, b) = send(client.post(url("/v1/handoffs")).json(&good)).await;
    check(s, &b, 401, "unauthorized", "no token");
    let (s, b) = send(
        client
            .post(url("/v1/handoffs"))
            .bearer_auth("wrong")
            .json(&good),
    )
    .await;
    check(s, &b, 401, "unauthorized", "wrong token");
    let (s, b) = send(client.get(url("/v1/drains")).header("Authorization", TOKEN)).await;
    check(s, &b, 401, "unauthorized", "not a bearer header");

    let authed = |r: reqwest::RequestBuilder| r.bearer_auth(TOKEN);
    let raw = |body: &str| {
        authed(client.post(url("/v1/handoffs")))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let (s, b) = send(raw("{not json")).await;
    check(s, &b, 400, "invalid_json", "malformed JSON");
    let (s, b) = send(raw(r#"{"namespace": "shop"}"#)).await;
    check(s, &b, 400, "invalid_json", "missing field");
    let (s, b) = send(raw(r#"{"namespace": "shop", "pvcs": ["a"], "extra": 1}"#)).await;
    check(s, &b, 400, "invalid_json", "unknown field");
    let (s, b) = send(raw(&format!(
        r#"{{"namespace": "shop", "pvcs": ["{}"]}}"#,
        "a".repeat(70_000)
    )))
    .await;
    check(s, &b, 413, "body_too_large", "oversized body");
    let (s, b) = send(authed(client.post(url("/v1/handoffs"))).body(good.to_string())).await;
    check(s, &b, 415, "unsupported_media_type", "no JSON content type");
    for (case, body) in [
        (
            "upper-case namespace",
            json!({"namespace": "Shop", "pvcs": ["a"]}),
        ),
        ("dot-dot pvc", json!({"namespace": "shop", "pvcs": [".."]})),
        (
            "path in pvc",
            json!({"namespace": "shop", "pvcs": ["../../etc/passwd"]}),
        ),
        (
            "slash in pvc",
            json!({"namespace": "shop", "pvcs": ["a/b"]}),
        ),
        ("no pvcs", json!({"namespace": "shop", "pvcs": []})),
        (
            "bad pod",
            json!({"namespace": "shop", "pvcs": ["a"], "pod": "Web 4"}),
        ),
        (
            "namespace with a path",
            json!({"namespace": "../kube-system", "pvcs": ["a"]}),
        ),
    ] {
        let (s, b) = send(authed(client.post(url("/v1/handoffs"))).json(&body)).await;
        check(s, &b, 400, "invalid_request", case);
    }
    let (s, b) = serve
        .call(Method::GET, "/v1/drains/d-does-not-exist", None)
        .await;
    check(s, &b, 404, "drain_not_found", "unknown drain");
    let (s, b) = serve
        .call(Method::POST, "/v1/drains/d-does-not-exist/retry", None)
        .await;
    check(s, &b, 404, "drain_not_found", "retry unknown drain");
    let (s, b) = serve
        .call(Method::GET, "/v1/drains/..%2f..%2fetc", None)
        .await;
    check(s, &b, 400, "invalid_request", "path trick in a drain id");
    let (s, b) = serve
        .call(Method::GET, "/v1/drains?state=bogus", None)
        .await;
    check(s, &b, 400, "invalid_request", "unknown state filter");
    let (s, b) = serve
        .call(Method::GET, "/v1/volumes/Shop/x/snapshots", None)
        .await;
    check(s, &b, 400, "invalid_request", "bad volume in path");
    let (s, b) = serve.call(Method::GET, "/v1/nothing-here", None).await;
    check(s, &b, 404, "not_found", "unknown route");

    assert!(
        serve.drains("").await.is_empty(),
        "bad requests recorded nothing"
    );
    let (s, doc) = send(client.get(url("/v1/openapi.json"))).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_from_the_cli_drains_a_volume_and_repeats_return_the_same_drain() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let source = make_volume(&data, "shop", "data-web-4", 40, 1024 * 1024);
    crate::support::tree::awkward(&source.join("awkward"), 1000);
    let serve = Serve::start(&data, &["--sweep-interval", "0"]).await;

    let (first, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let (again, repeated) = serve.handoff("shop", &["data-web-4"]).await;
    assert_eq!(first, 202);
    assert_eq!(
        ids(&drains),
        ids(&repeated),
        "a repeated handoff returns the active drain"
    );
    assert_eq!(again, 200);

    let out = run_ok(
        drainer()
            .args([
                "handoff",
                "--drainer",
                &serve.url,
                "--namespace",
                "shop",
                "--pvc",
                "data-web-4",
                "--wait",
                "--timeout",
                "60",
            ])
            .env("DRAINER_TOKEN", TOKEN),
    )
    .await;
    assert!(out.contains("completed"), "{out}");
    let drain = serve.drain(&ids(&drains)[0]).await;
    assert_eq!(drain["state"], "completed", "{drain}");
    let history: Vec<&str> = drain["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["queued", "copying", "completed"]);
    let store = file_url(&data.join("store"));
    assert_restores_exactly(&store, "shop", "data-web-4", &source, work.path()).await;

    let metrics = reqwest::get(format!("{}/metrics", serve.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("drainer_drains{state=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("drainer_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/handoffs\",status=\"202\"} 1"), "{metrics}");

    let bad = run(drainer()
        .args([
            "handoff",
            "--drainer",
            &serve.url,
            "--namespace",
            "shop",
            "--pvc",
            "Bad_Name",
            "--timeout",
            "5",
        ])
        .env("DRAINER_TOKEN", TOKEN))
    .await;
    assert_eq!(bad.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_while_ten_drains_copy_finishes_them_all_after_restart() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("data-web-{i}")).collect();
    let sources: Vec<_> = names
        .iter()
        .map(|n| make_volume(&data, "shop", n, 60, 512 * 1024))
        .collect();
    let args = [
        "--sweep-interval",
        "0",
        "--concurrent-drains",
        "10",
        "--lease",
        "3",
        "--concurrency",
        "2",
    ];
    let serve = Serve::start(&data, &args).await;
    let pvcs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_, drains) = serve.handoff("shop", &pvcs).await;
    let drain_ids = ids(&drains);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while serve.drains("state=copying").await.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "10 drains never copied at once"
        );
        assert!(
            serve.drains("state=completed").await.is_empty(),
            "a drain finished before the kill"
        );
    }
    let first_owner = serve.drain(&drain_ids[0]).await["lease_owner"]
        .as_str()
        .unwrap()
        .to_owned();
    serve.kill9().await;

    let serve = Serve::start(&data, &args).await;
    let ended = serve.wait_ended(&drain_ids, Duration::from_secs(120)).await;
    for drain in &ended {
        assert_eq!(drain["state"], "completed", "{drain}");
        let claims: Vec<&str> = drain["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "copying")
            .map(|e| e["owner"].as_str().unwrap())
            .collect();
        assert_eq!(
            claims.len(),
            2,
            "claimed once before and once after the kill: {drain}"
        );
        assert_eq!(claims[0], first_owner);
        assert_ne!(
            claims[1], first_owner,
            "taken over by the restarted process"
        );
    }
    let store = file_url(&data.join("store"));
    for (name, source) in names.iter().zip(&sources) {
        assert_restores_exactly(&store, "shop", name, source, work.path()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_run_each_drain_once_and_take_over_a_dead_ones_work() {
    let work = tempfile::tempdir().unwrap();
    let database = fresh_postgres_database().await;
    let volumes = work.path().join("volumes");
    let store_dir = work.path().join("store");
    let store = file_url(&store_dir);
    let names: Vec<String> = (0..20).map(|i| format!("small-{i}")).collect();
    let root = work.path();
    // Enough files each that one replica cannot end all twenty drains within the other's
    // idle poll (half a second), however fast the machine.
    let sources: Vec<_> = names
        .iter()
        .map(|n| make_volume(root, "shop", n, 40, 64 * 1024))
        .collect();
    let common = |data: &str| {
        vec![
            "--database-url".to_owned(),
            database.clone(),
            "--volume-root".to_owned(),
            volumes.display().to_string(),
            "--store".to_owned(),
            store.clone(),
            "--sweep-interval".to_owned(),
            "0".to_owned(),
            "--lease".to_owned(),
            "3".to_owned(),
            "--concurrent-drains".to_owned(),
            "2".to_owned(),
            "--replica-id".to_owned(),
            data.to_owned(),
        ]
    };
    let args_a = common("replica-a");
    let args_b = common("replica-b");
    let a = Serve::start(
        &work.path().join("a"),
        &args_a.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let b = Serve::start(
        &work.path().join("b"),
        &args_b.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let pvcs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_, drains) = a.handoff("shop", &pvcs).await;
    let ended = b.wait_ended(&ids(&drains), Duration::from_secs(120)).await;
    let mut owners = std::collections::HashSet::new();
    for drain in &ended {
        assert_eq!(drain["state"], "completed", "{drain}");
        let claims: Vec<&serde_json::Value> = drain["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "copying")
            .collect();
        assert_eq!(claims.len(), 1, "each drain runs exactly once: {drain}");
        owners.insert(claims[0]["owner"].as_str().unwrap().to_owned());
    }
    assert_eq!(owners.len(), 2, "both replicas took work: {owners:?}");
    for (name, source) in names.iter().zip(&sources) {
        assert_restores_exactly(&store, "shop", name, source, work.path()).await;
    }

    // Larger volumes; kill replica A while it copies: B takes its drains after the lease expires.
    // More of them than B runs at once, so A (which polls for work) gets some however fast B is.
    let big: Vec<String> = (0..6).map(|i| format!("big-{i}")).collect();
    let big_sources: Vec<_> = big
        .iter()
        .map(|n| make_volume(root, "shop", n, 40, 1024 * 1024))
        .collect();
    let pvcs: Vec<&str> = big.iter().map(String::as_str).collect();
    let (_, drains) = b.handoff("shop", &pvcs).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let held_by_a = loop {
        let copying = b.drains("state=copying").await;
        let mine: Vec<String> = copying
            .iter()
            .filter(|d| d["lease_owner"] == "replica-a")
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        if !mine.is_empty() {
            break mine;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica A never claimed a big drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.kill9().await;
    let ended = b.wait_ended(&ids(&drains), Duration::from_secs(120)).await;
    for drain in &ended {
        assert_eq!(drain["state"], "completed", "{drain}");
        let id = drain["id"].as_str().unwrap().to_owned();
        let owners: Vec<&str> = drain["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "copying")
            .map(|e| e["owner"].as_str().unwrap())
            .collect();
        if held_by_a.contains(&id) {
            assert_eq!(owners.first(), Some(&"replica-a"), "{drain}");
            assert_eq!(
                owners.last(),
                Some(&"replica-b"),
                "B took over after A died: {drain}"
            );
        }
    }
    for (name, source) in big.iter().zip(&big_sources) {
        assert_restores_exactly(&store, "shop", name, source, work.path()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_intake_releases_work_and_exits_within_the_grace_period() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let source = make_volume(&data, "shop", "data-web-4", 50, 64 * 1024);
    // With external movers and none running, the claimed drain stays in flight until SIGTERM.
    let serve = Serve::start(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--grace",
            "5",
            "--movers",
            "external",
        ],
    )
    .await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = ids(&drains)[0].clone();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let url = serve.url.clone();
    let (status, took) = serve.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert!(
        took < Duration::from_secs(6),
        "exited within the grace period: {took:?}"
    );
    assert!(
        reqwest::get(format!("{url}/readyz")).await.is_err(),
        "no longer serving"
    );

    let serve = Serve::start(&data, &["--sweep-interval", "0"]).await;
    let drain = serve.drain(&id).await;
    let history: Vec<&str> = drain["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        &history[..3],
        ["queued", "copying", "queued"],
        "released at shutdown: {drain}"
    );
    let ended = serve
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(120))
        .await;
    assert_eq!(ended[0]["state"], "completed");
    assert_eq!(
        ended[0]["attempts"], 1,
        "the interrupted attempt is not counted: {}",
        ended[0]
    );
    assert_restores_exactly(
        &file_url(&data.join("store")),
        "shop",
        "data-web-4",
        &source,
        work.path(),
    )
    .await;
}

/// SIGTERM with work in flight, five times, each at another moment: a copy under way and
/// handoffs arriving. Each time drainer exits cleanly within its grace period; a drainer
/// started again on the same data finds every acknowledged handoff and completes it, and
/// every volume restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_every_time_with_work_in_flight() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pvcs: Vec<String> = (0..5).map(|i| format!("data-web-{i}")).collect();
    let sources: Vec<_> = pvcs
        .iter()
        .map(|pvc| make_volume(&data, "shop", pvc, 200, 64 * 1024))
        .collect();
    let mut acknowledged = Vec::new();
    for (round, pvc) in pvcs.iter().enumerate() {
        let serve = Serve::start(&data, &["--sweep-interval", "0", "--grace", "5"]).await;
        let (_, drains) = serve.handoff("shop", &[pvc]).await;
        acknowledged.extend(ids(&drains));
        // Handoffs keep arriving while drainer shuts down; those answered 202 count.
        let arriving = tokio::spawn(handoffs_of(serve.url.clone(), pvcs.clone()));
        tokio::time::sleep(Duration::from_millis(40 * round as u64)).await;
        let (status, took) = serve.terminate(Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "round {round}: exit after SIGTERM: {status:?}"
        );
        assert!(
            took < Duration::from_secs(6),
            "round {round}: exited within the grace period: {took:?}"
        );
        acknowledged.extend(arriving.await.unwrap());
    }
    let serve = Serve::start(&data, &["--sweep-interval", "0"]).await;
    let ended = serve
        .wait_ended(&acknowledged, Duration::from_secs(180))
        .await;
    let mut interrupted = 0;
    for drain in &ended {
        assert_eq!(drain["state"], "completed", "{drain}");
        let states: Vec<&str> = drain["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["state"].as_str())
            .collect();
        interrupted += states.windows(2).any(|w| w == ["copying", "queued"]) as usize;
    }
    eprintln!(
        "{} drains acknowledged, {interrupted} interrupted by a SIGTERM",
        ended.len()
    );
    assert!(
        interrupted > 0,
        "no copy was under way at any SIGTERM: {ended:#?}"
    );
    let store = file_url(&data.join("store"));
    for (pvc, source) in pvcs.iter().zip(&sources) {
        assert_restores_exactly(&store, "shop", pvc, source, work.path()).await;
    }
}

/// Hands off each of `pvcs` in turn, until drainer stops answering; returns the ids of the
/// drains it acknowledged (`202` for a new drain, `200` for one under way).
async fn handoffs_of(url: String, pvcs: Vec<String>) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut acknowledged = Vec::new();
    for pvc in pvcs.iter().cycle().take(500) {
        let sent = client
            .post(format!("{url}/v1/handoffs"))
            .bearer_auth(TOKEN)
            .json(&json!({"namespace": "shop", "pvcs": [pvc]}))
            .send()
            .await;
        let Ok(answer) = sent else { break };
        if !answer.status().is_success() {
            continue; // refused while shutting down: not acknowledged
        }
        let body: serde_json::Value = answer.json().await.unwrap();
        acknowledged.extend(ids(body["drains"].as_array().unwrap()));
    }
    acknowledged
}

/// Starts a service in local mode whose store is the S3 test server behind a fault proxy.
async fn serve_through_faults(
    work: &Path,
    faults: crate::support::fault::Faults,
    extra: &[&str],
) -> (
    Serve,
    crate::support::s3::S3Server,
    crate::support::fault::FaultProxy,
) {
    let server = crate::support::s3::S3Server::start().await;
    let proxy = crate::support::fault::FaultProxy::start(&server.endpoint, faults).await;
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut args = vec![
        "--sweep-interval",
        "0",
        "--store",
        "s3://bucket/faulty",
        "--store-timeout",
        "2",
    ];
    args.extend_from_slice(extra);
    let serve = Serve::start_with_env(
        &data,
        &args,
        &[
            ("AWS_ENDPOINT", proxy.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", crate::support::s3::KEY),
            ("AWS_SECRET_ACCESS_KEY", crate::support::s3::SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ],
    )
    .await;
    (serve, server, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_complete_through_a_store_that_fails_a_fifth_of_writes() {
    let work = tempfile::tempdir().unwrap();
    let faults = crate::support::fault::Faults {
        error_ratio: 0.15,
        timeout_ratio: 0.05,
        hold: Duration::from_secs(3),
    };
    let data = work.path().join("data");
    let sources: Vec<_> = (0..3)
        .map(|i| make_volume(&data, "shop", &format!("flaky-{i}"), 30, 20 * 1024))
        .collect();
    let (serve, server, proxy) =
        serve_through_faults(work.path(), faults, &["--max-attempts", "10"]).await;
    let (_, drains) = serve
        .handoff("shop", &["flaky-0", "flaky-1", "flaky-2"])
        .await;
    let ended = serve
        .wait_ended(&ids(&drains), Duration::from_secs(240))
        .await;
    for drain in &ended {
        assert_eq!(drain["state"], "completed", "{drain}");
    }
    assert!(
        proxy.injected() > 5,
        "faults were injected: {}",
        proxy.injected()
    );
    for (i, source) in sources.iter().enumerate() {
        let dest = work.path().join(format!("restored-{i}"));
        let mut restore = drainer();
        restore
            .arg("restore")
            .arg("s3://bucket/faulty")
            .args(["--volume", &format!("shop/flaky-{i}")])
            .arg(&dest);
        server.configure(&mut restore);
        run_ok(&mut restore).await;
        assert!(differences(source, &dest).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_always_fails_writes_keeps_the_drain_failing_with_the_error_visible() {
    let work = tempfile::tempdir().unwrap();
    let faults = crate::support::fault::Faults {
        error_ratio: 1.0,
        timeout_ratio: 0.0,
        hold: Duration::ZERO,
    };
    make_volume(&work.path().join("data"), "shop", "doomed", 2, 1024);
    let (serve, _server, _proxy) =
        serve_through_faults(work.path(), faults, &["--max-attempts", "2"]).await;
    let (_, drains) = serve.handoff("shop", &["doomed"]).await;
    let id = ids(&drains)[0].clone();
    // Its attempts used up, the drain is failing (retried slowly), never given up.
    let drain = &serve
        .wait_state(&id, "failing", Duration::from_secs(120))
        .await;
    assert_eq!(drain["attempts"], 2, "{drain}");
    assert!(
        drain["last_error"].as_str().unwrap().contains("store"),
        "{drain}"
    );
    let metrics = reqwest::get(format!("{}/metrics", serve.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("drainer_drains{state=\"failing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drainer_drain_failures_total{reason=\"store\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drainer_drain_retries_total 1"),
        "{metrics}"
    );
    // A failing drain can be retried by hand at once.
    let (status, body) = serve
        .call(
            Method::POST,
            &format!("/v1/drains/{}/retry", drain["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "queued");
    let (status, body) = serve
        .call(
            Method::POST,
            &format!("/v1/drains/{}/retry", drain["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_transition")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_survive_a_postgres_restart_and_none_acknowledged_is_lost() {
    let pg = crate::support::postgres::PrivatePostgres::start();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("vol-{i}")).collect();
    for name in &names {
        make_volume(&data, "shop", name, 3, 4096);
    }
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--database-url", &pg.url]).await;
    let handoff_cli = |pvc: &str| {
        let mut cmd = drainer();
        cmd.args([
            "handoff",
            "--drainer",
            &serve.url,
            "--namespace",
            "shop",
            "--pvc",
            pvc,
            "--timeout",
            "60",
        ])
        .env("DRAINER_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let mut acknowledged = Vec::new();
    for name in &names[..4] {
        let (_, drains) = serve.handoff("shop", &[name]).await;
        acknowledged.extend(ids(&drains));
    }

    pg.down();
    let (status, body) = serve
        .call(
            Method::POST,
            "/v1/handoffs",
            Some(json!({"namespace": "shop", "pvcs": ["vol-4"]})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "ledger_unavailable");
    let response = reqwest::Client::new()
        .get(format!("{}/v1/drains", serve.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let readyz = reqwest::get(format!("{}/readyz", serve.url)).await.unwrap();
    assert_eq!(readyz.status(), 503, "not ready without a ledger");
    // Handoffs sent during the outage keep retrying until the database is back: each has
    // been refused and said it is retrying before PostgreSQL comes back.
    let mut waiting = Vec::new();
    for name in &names[4..8] {
        let mut child = handoff_cli(name).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        waiting.push((child, StderrWatch::start(stderr)));
    }
    for (_, stderr) in &mut waiting {
        stderr.wait_for("retrying", Duration::from_secs(60)).await;
    }
    pg.up();
    for (child, stderr) in waiting {
        let out = child.wait_with_output().await.unwrap();
        let stderr = stderr.finish().await;
        assert!(
            out.status.success(),
            "handoff retried until PostgreSQL was back: {stderr}"
        );
        let line = String::from_utf8(out.stdout).unwrap();
        acknowledged.push(line.split_whitespace().nth(1).unwrap().to_owned());
    }
    for name in &names[8..] {
        let (_, drains) = serve.handoff("shop", &[name]).await;
        acknowledged.extend(ids(&drains));
    }
    let ended = serve
        .wait_ended(&acknowledged, Duration::from_secs(120))
        .await;
    assert_eq!(ended.len(), 12, "every acknowledged handoff is there");
    for drain in ended {
        assert_eq!(drain["state"], "completed", "{drain}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_mid_stream_resumes_without_sending_completed_files_again() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The mover reads its own mount; the drainer's volume root is not involved.
    let mount = work.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    for d in 0..20 {
        let dir = mount.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("f{f:03}")),
                bytes(d * 100 + f, 8192 + f as usize),
            )
            .unwrap();
        }
    }
    std::fs::write(mount.join("large"), bytes(5, 24 * 1024 * 1024)).unwrap();
    crate::support::tree::awkward(&mount.join("awkward"), 9 * 1024 * 1024);
    let total_files: u64 = 2000 + 1;
    let ledger = drainer::Ledger::open(None, &data).await.unwrap(); // migrated before serve starts
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--movers", "external"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = ids(&drains)[0].clone();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let mover = |concurrency: &str| {
        let mut cmd = drainer();
        cmd.args([
            "mover",
            "--drainer",
            &serve.url,
            "--drain",
            &id,
            "--concurrency",
            concurrency,
        ])
        .arg("--source")
        .arg(&mount)
        .env("DRAINER_TOKEN", TOKEN);
        cmd
    };
    let mut first = mover("2").spawn().unwrap();
    let volume: drainer::VolumeId = "shop/data-web-4".parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let recorded = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "the mover recorded nothing within a minute"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the mover finished before it could be killed"
        );
        if let Some(run) = ledger
            .runs(&volume)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.state == drainer_core::ledger::RunState::Running)
        {
            let n = ledger.recorded_files(&run.id).await.unwrap();
            if n > 0 {
                first.start_kill().unwrap();
                first.wait().await.unwrap();
                break ledger.recorded_files(&run.id).await.unwrap() as u64;
            }
        }
    };
    let out = run_ok(&mut mover("16")).await;
    assert!(out.contains("resumed"), "{out}");
    let uploaded: u64 = out
        .split('(')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let awkward_files = walkdir::WalkDir::new(mount.join("awkward"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count() as u64;
    assert!(
        uploaded <= total_files + awkward_files - recorded,
        "{uploaded} files sent after the restart, but {recorded} were recorded before the kill"
    );
    let ended = serve
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    assert_restores_exactly(
        &file_url(&data.join("store")),
        "shop",
        "data-web-4",
        &mount,
        work.path(),
    )
    .await;

    // A mover may stream only into a drain that is being copied.
    let late = run(&mut mover("2")).await;
    assert!(!late.status.success());
    assert!(String::from_utf8_lossy(&late.stderr).contains("not copying"));
}

/// How the stale record of a relayed upload came about.
#[derive(Debug, Clone, Copy)]
enum StaleRelay {
    /// The relay completed the upload and forgot it; the mover died before it forgot its
    /// record of the upload.
    Forgotten,
    /// The store completed the upload, and the drainer died before it forgot the relay.
    Kept,
    /// The mover's record lists no stored part (it dies before its first record of parts).
    NoParts,
}

/// A mover's resumable-upload record that outlived its relayed upload (an earlier mover had
/// it completed, then died before it forgot the record): the next mover starts the file's
/// upload again, once, the drain completes, and the snapshot is exact — with moto, which
/// answers parts sent to a completed upload with a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_upload_that_an_earlier_mover_completed_starts_again_cleanly() {
    let server = crate::support::s3::S3Server::start().await;
    for stale in [StaleRelay::Forgotten, StaleRelay::Kept, StaleRelay::NoParts] {
        relayed_upload_outlived(&server, stale).await;
    }
}

async fn relayed_upload_outlived(server: &crate::support::s3::S3Server, stale: StaleRelay) {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = work.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("small"), b"small").unwrap();
    std::fs::write(mount.join("large"), bytes(21, 96 * 1024 * 1024)).unwrap();
    let store = format!("s3://bucket/relay-{stale:?}");
    let ledger = drainer::Ledger::open(None, &data).await.unwrap(); // migrated before serve starts
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = Serve::start_with_env(
        &data,
        &[
            "--sweep-interval",
            "0",
            "--movers",
            "external",
            "--store",
            &store,
        ],
        &env,
    )
    .await;
    let (_, drains) = serve.handoff("shop", &["data-web-4"]).await;
    let id = ids(&drains)[0].clone();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let mover = || {
        let mut cmd = drainer();
        cmd.args(["mover", "--drainer", &serve.url, "--drain", &id])
            .arg("--source")
            .arg(&mount)
            .env("DRAINER_TOKEN", TOKEN)
            .env("DRAINER_LOG", "info");
        cmd
    };
    // The first mover is killed once its record of `large` lists stored parts.
    let mut first = mover().spawn().unwrap();
    let volume: drainer::VolumeId = "shop/data-web-4".parse().unwrap();
    let (killed, mut upload) = crate::support::kill::kill_once_parts_stored(
        &mut first,
        &ledger,
        &volume,
        b"large",
        &format!("{stale:?}"),
    )
    .await;
    // An earlier mover had the upload completed with the parts stored so far.
    let relay = ledger
        .relay(&upload.upload_id)
        .await
        .unwrap()
        .expect("the relayed upload is recorded");
    let stored: Vec<String> = ledger
        .relay_parts(&relay.id)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
        .take_while(|(i, p)| p.idx == *i as u64)
        .map(|(_, p)| p.part_id)
        .collect();
    server
        .complete_upload(&relay.object_key, &relay.store_upload_id, &stored)
        .await;
    match stale {
        StaleRelay::Forgotten => ledger.forget_relay(&relay.id).await.unwrap(),
        StaleRelay::Kept => {}
        StaleRelay::NoParts => {
            upload.parts.clear();
            ledger.record_partial(&killed, &upload).await.unwrap();
        }
    }

    let out = run(&mut mover()).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stale:?}: the next mover completes: {log}"
    );
    let served = std::fs::read_to_string(serve.log_path()).unwrap();
    let (mover_says, drainer_says) = match stale {
        StaleRelay::Forgotten => ("", "the record of an unfinished upload outlived it"),
        StaleRelay::Kept => (
            "the store refuses the interrupted upload",
            "the store refuses a relayed upload",
        ),
        StaleRelay::NoParts => ("an interrupted upload with no part to skip", ""),
    };
    assert!(log.contains(mover_says), "{stale:?}: {log}");
    assert!(served.contains(drainer_says), "{stale:?}: {served}");
    let ended = serve
        .wait_ended(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(ended[0]["state"], "completed", "{stale:?}: {}", ended[0]);
    assert_eq!(
        ledger.partial_upload(&killed, b"large").await.unwrap(),
        None,
        "{stale:?}: the stale record is gone"
    );
    let dest = work.path().join("restored");
    let mut restore = drainer();
    restore
        .arg("restore")
        .arg(&store)
        .args(["--volume", "shop/data-web-4"])
        .arg(&dest);
    server.configure(&mut restore);
    run_ok(&mut restore).await;
    let diffs = differences(&mount, &dest);
    assert!(diffs.is_empty(), "{stale:?}: {}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_drains_new_and_changed_volumes_only() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let a = make_volume(&data, "shop", "data-a", 3, 1000);
    make_volume(&data, "shop", "data-b", 3, 1000);
    std::fs::create_dir_all(data.join("volumes/Not_Valid/x")).unwrap();
    let serve = Serve::start(&data, &["--sweep-interval", "0"]).await;
    let sweep = || async { serve.call(Method::POST, "/v1/sweeps", None).await };

    let (status, report) = sweep().await;
    assert_eq!(status, 200, "{report}");
    let queued: Vec<String> = ids(report["drains"].as_array().unwrap());
    assert_eq!(queued.len(), 2, "both volumes are new: {report}");
    serve.wait_ended(&queued, Duration::from_secs(60)).await;

    let (_, report) = sweep().await;
    assert!(
        report["drains"].as_array().unwrap().is_empty(),
        "nothing changed: {report}"
    );
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["drain"] == false),
        "{report}"
    );

    std::fs::write(a.join("sub/new-file"), b"changed").unwrap();
    let (_, report) = sweep().await;
    let drains = report["drains"].as_array().unwrap();
    assert_eq!(drains.len(), 1, "{report}");
    assert_eq!(drains[0]["volume"], "shop/data-a");
    assert_eq!(drains[0]["reason"], "sweep");
    let ended = serve
        .wait_ended(&ids(drains), Duration::from_secs(60))
        .await;
    assert_eq!(ended[0]["state"], "completed");
    assert_restores_exactly(
        &file_url(&data.join("store")),
        "shop",
        "data-a",
        &a,
        work.path(),
    )
    .await;
}

/// The mover protocol's writes stay inside the drain's own snapshot and refuse malformed data
/// whole: a batch with one foreign key writes none of its objects, a truncated batch is a
/// 400, no key of another snapshot, no `snapshot.json` and no `latest` can be written, a
/// relayed upload with a missing part is never completed, and a finish whose manifest is not
/// the summary's commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_writes_stay_in_their_snapshot_and_malformed_ones_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--movers", "external"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-1"]).await;
    let id = ids(&drains)[0].clone();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let client = reqwest::Client::new();
    let base = format!("{}/v1/drains/{id}", serve.url);
    async fn send(r: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = r.bearer_auth(TOKEN).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }
    let vol = "volumes/shop/data-web-1";
    let (s, b) = send(
        client
            .put(format!("{base}/objects"))
            .query(&[("key", format!("{vol}/snapshots/x/files/a"))])
            .body("early"),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("run_not_running")),
        "no run, no writes: {b}"
    );
    let (s, run) = send(client.post(format!("{base}/run"))).await;
    assert_eq!(s, 200, "{run}");
    let snapshot = run["snapshot"].as_str().unwrap().to_owned();
    let own = format!("{vol}/snapshots/{snapshot}/files/a");
    let foreign = format!("volumes/shop/data-web-2/snapshots/{snapshot}/files/a");
    let batch = drainer_core::protocol::batch::encode([
        (own.as_str(), b"mine".as_slice()),
        (foreign.as_str(), b"not"),
    ]);
    let (s, b) = send(
        client
            .post(format!("{base}/objects/batch"))
            .body(batch.clone()),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    let (s, b) = send(
        client
            .post(format!("{base}/objects/batch"))
            .body(batch.slice(..10)),
    )
    .await;
    assert_eq!(s, 400, "truncated batch: {b}");
    let store = data.join("store");
    assert!(
        !store.join(&own).exists() && !store.join(&foreign).exists(),
        "a refused batch wrote nothing"
    );
    for key in [
        format!("{vol}/latest"),
        format!("{vol}/snapshots/{snapshot}/snapshot.json"),
        format!("{vol}/snapshots/20261101T000000000Z-0000/files/a"),
        format!("{vol}/snapshots/20261101T000000000Z-0000/snapshot.json"),
    ] {
        let (s, b) = send(
            client
                .put(format!("{base}/objects"))
                .query(&[("key", &key)])
                .body("x"),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{key}: {b}"
        );
        let (s, _) = send(
            client
                .delete(format!("{base}/objects"))
                .query(&[("key", &key)]),
        )
        .await;
        assert_eq!(s, 403, "{key}");
        assert!(!store.join(&key).exists(), "{key} written");
    }
    let good = drainer_core::protocol::batch::encode([(own.as_str(), b"mine".as_slice())]);
    let (s, b) = send(client.post(format!("{base}/objects/batch")).body(good)).await;
    assert_eq!((s, &b["errors"]), (200, &json!([null])), "{b}");
    assert_eq!(std::fs::read(store.join(&own)).unwrap(), b"mine");

    let (s, b) = send(
        client
            .post(format!("{base}/uploads"))
            .query(&[("key", &own)]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let upload = b["upload"].as_str().unwrap().to_owned();
    let part_size = b["part_size"].as_u64().unwrap() as usize;
    let too_big = vec![7u8; part_size + 1];
    let (s, b) = send(
        client
            .put(format!("{base}/uploads/{upload}/0"))
            .body(too_big),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_part_size")),
        "{b}"
    );
    let (s, _) = send(
        client
            .put(format!("{base}/uploads/{upload}/1"))
            .body(vec![1u8; 5]),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = send(client.post(format!("{base}/uploads/{upload}/complete"))).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("incomplete_upload")),
        "{b}"
    );
    assert_eq!(
        std::fs::read(store.join(&own)).unwrap(),
        b"mine",
        "not replaced"
    );
    let run_id = run["id"].as_str().unwrap();
    let summary = json!({
        "snapshot": snapshot, "volume": "shop/data-web-1", "parent": null,
        "created": "", "completed": "", "entries": 1, "files": 0, "bytes": 0, "skipped": 0,
        "uploaded_files": 0, "uploaded_bytes": 0, "manifest_blake3": "00", "manifest_size": 2
    });
    let (s, b) = send(
        client
            .post(format!("{base}/run/{run_id}/finish"))
            .json(&summary),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_snapshot")),
        "{b}"
    );
    assert!(
        !store.join(format!("{vol}/latest")).exists(),
        "nothing committed"
    );
    assert!(
        !store
            .join(format!("{vol}/snapshots/{snapshot}/snapshot.json"))
            .exists()
    );
}

/// Bytes under `dir` (0 if it does not exist).
fn tree_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Waits until the bytes under `dir` stop changing for a second; returns how long that took
/// from now.
async fn settles(dir: &Path, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    let (mut last, mut since) = (tree_bytes(dir), std::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tree_bytes(dir);
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            return since.duration_since(started);
        }
        assert!(
            started.elapsed() < within,
            "{} kept growing for {within:?}",
            dir.display()
        );
    }
}

/// A cancel stops the copy within a couple of seconds, in-process and through an external
/// mover, writes no snapshot, and leaves what was copied to be resumed by the next drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_copying_drain_stops_its_copy_and_commits_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let source = make_volume(&data, "shop", "slow", 1500, 96 * 1024);
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--concurrency", "1"]).await;
    let (_, drains) = serve.handoff("shop", &["slow"]).await;
    let id = ids(&drains)[0].clone();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let volume_store = data.join("store/volumes/shop/slow");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tree_bytes(&volume_store) < 4 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = serve
        .call(Method::POST, &format!("/v1/drains/{id}/cancel"), None)
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    let stopped = settles(&volume_store, Duration::from_secs(20)).await;
    assert!(
        stopped < Duration::from_secs(3),
        "the copy went on for {stopped:?} after the cancel"
    );
    let committed = walkdir::WalkDir::new(&volume_store)
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.file_name() == "snapshot.json" || e.file_name() == "latest");
    assert!(!committed, "a cancelled drain committed a snapshot");
    // The next drain of the volume resumes what was copied and completes.
    let (_, drains) = serve.handoff("shop", &["slow"]).await;
    let ended = serve
        .wait_ended(&ids(&drains), Duration::from_secs(120))
        .await;
    assert_eq!(ended[0]["state"], "completed", "{}", ended[0]);
    assert_restores_exactly(
        &file_url(&data.join("store")),
        "shop",
        "slow",
        &source,
        work.path(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_drain_stops_its_external_mover() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mount = make_volume(work.path(), "shop", "mount", 1500, 96 * 1024);
    let serve = Serve::start(&data, &["--sweep-interval", "0", "--movers", "external"]).await;
    let (_, drains) = serve.handoff("shop", &["data-web-9"]).await;
    let id = ids(&drains)[0].clone();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    let mut mover = drainer();
    mover
        .args([
            "mover",
            "--drainer",
            &serve.url,
            "--drain",
            &id,
            "--concurrency",
            "1",
        ])
        .arg("--source")
        .arg(&mount)
        .env("DRAINER_TOKEN", TOKEN);
    let mut mover = mover.spawn().unwrap();
    let volume_store = data.join("store/volumes/shop/data-web-9");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tree_bytes(&volume_store) < 4 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mover made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = serve
        .call(Method::POST, &format!("/v1/drains/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200);
    let cancelled = std::time::Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(20), mover.wait())
        .await
        .expect("the mover stopped")
        .unwrap();
    assert!(!exit.success(), "the mover of a cancelled drain fails");
    assert!(
        cancelled.elapsed() < Duration::from_secs(4),
        "the mover went on for {:?} after the cancel",
        cancelled.elapsed()
    );
}

/// The ledger's disk fills up: handoffs are refused with `507 ledger_full` (nothing
/// acknowledged), `/readyz` fails, and within seconds of space coming back everything works
/// again without a restart; every handoff acknowledged before is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ledger_disk_is_refused_clearly_and_recovers_without_a_restart() {
    let work = tempfile::tempdir().unwrap();
    // The filler is larger than what the ledger can take, so removing it leaves room for
    // SQLite to copy its whole write-ahead log back and for the readiness probe's write.
    let disk = crate::support::tmpfs::Tmpfs::mount(&work.path().join("ledger-disk"), "4m");
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 2560 * 1024]).unwrap();
    let store = file_url(&work.path().join("store"));
    let volumes = work.path().join("volumes").display().to_string();
    let serve = Serve::start(
        disk.path(),
        &[
            "--sweep-interval",
            "0",
            "--store",
            &store,
            "--volume-root",
            &volumes,
        ],
    )
    .await;
    let reason = "r".repeat(200);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    // Handoffs until one is refused, then again after a pause: a checkpoint may let SQLite
    // reuse its write-ahead log. Full means refused even after the checkpoints of a pause.
    for i in 0..20_000 {
        let body = json!({"namespace": "shop", "pvcs": [format!("pvc-{i}")], "reason": reason});
        let (status, answer) = serve.call(Method::POST, "/v1/handoffs", Some(body)).await;
        match status {
            202 => {
                acknowledged.push(answer["drains"][0]["id"].as_str().unwrap().to_owned());
                refusal = None;
            }
            _ if refusal.is_some() => break,
            _ => {
                refusal = Some((status, answer));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let (status, answer) = refusal.expect("the disk filled up");
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (507, Some("ledger_full")),
        "after {} handoffs: {answer}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 10,
        "{} handoffs fit",
        acknowledged.len()
    );
    // More of them, at once, while the disk stays full: every one refused, none acknowledged.
    let flood = (0..200).map(|i| {
        let body = json!({"namespace": "shop", "pvcs": [format!("late-{i}")], "reason": reason});
        serve.call(Method::POST, "/v1/handoffs", Some(body))
    });
    for (status, answer) in futures::future::join_all(flood).await {
        match status {
            202 => acknowledged.push(answer["drains"][0]["id"].as_str().unwrap().to_owned()),
            507 | 503 => {}
            other => panic!("a full disk answered {other}: {answer}"),
        }
    }
    let ready = reqwest::get(format!("{}/readyz", serve.url)).await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the ledger cannot commit"
    );
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body = json!({"namespace": "shop", "pvcs": ["after-the-flood"]});
        let (status, answer) = serve.call(Method::POST, "/v1/handoffs", Some(body)).await;
        if status == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ready = reqwest::get(format!("{}/readyz", serve.url)).await.unwrap();
        if ready.status() == 200 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            panic!("never ready again: {}", ready.text().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &acknowledged {
        let (status, _) = serve
            .call(Method::GET, &format!("/v1/drains/{id}"), None)
            .await;
        assert_eq!(status, 200, "acknowledged drain {id} is lost");
    }
    drop(serve);
}

/// A child process's stderr read as it is written, so a test can wait for a line.
struct StderrWatch {
    lines: tokio::sync::watch::Receiver<String>,
    reader: tokio::task::JoinHandle<()>,
}

impl StderrWatch {
    /// Reads `stderr` in the background.
    fn start(stderr: tokio::process::ChildStderr) -> Self {
        use tokio::io::AsyncBufReadExt;
        let (tx, lines) = tokio::sync::watch::channel(String::new());
        let reader = tokio::spawn(async move {
            let mut read = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = read.next_line().await {
                tx.send_modify(|text| {
                    text.push_str(&line);
                    text.push('\n');
                });
            }
        });
        Self { lines, reader }
    }

    /// Waits until the output contains `words` (a failed test after `limit`).
    async fn wait_for(&mut self, words: &str, limit: Duration) {
        let seen = tokio::time::timeout(limit, self.lines.wait_for(|t| t.contains(words)))
            .await
            .is_ok_and(|seen| seen.is_ok());
        assert!(
            seen,
            "no {words:?} within {limit:?}: {}",
            self.lines.borrow().as_str()
        );
    }

    /// Everything written, once the process has closed its stderr.
    async fn finish(self) -> String {
        self.reader.await.unwrap();
        self.lines.borrow().clone()
    }
}
