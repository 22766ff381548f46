//! Kubernetes-mode figures, measured on kube-env (`scripts/bench-kube` starts it, builds the
//! release binary and runs this): the latency of handoffs through TokenReview with 50 pods
//! handing off at once (beside the bare TokenReview calls, the floor), and drainer's memory
//! while it watches 10,000 pods. Figures only; nothing here passes or fails on a timing.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PODS: i32 = 50;
const ROUNDS: usize = 20;
/// Rounds of first handoffs (new tokens, new drains) and of first-contact floors.
const FIRST_ROUNDS: usize = 5;
const WATCHED: usize = 10_000;

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("object literal matches its type")
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = Client::try_default().await?;
    let drainer_bin =
        std::env::var("DRAINER_BIN").unwrap_or_else(|_| "target/release/drainer".into());
    let ns = format!("bench-{:06x}", rand::random::<u32>() & 0xffffff);
    create(&client, &ns).await?;
    // The floors: the bare TokenReviews, 50 at once, of tokens nobody has reviewed yet (as a
    // pod's first handoff is), through kube's default client (HTTP/1.1, a connection per
    // concurrent call, new) and through drainer's (HTTP/2, one connection, warm).
    let mut floor_h1 = Vec::new();
    let mut floor_h2 = Vec::new();
    let h2 = drainer_kube::client::connect().await?;
    for _ in 0..FIRST_ROUNDS {
        let tokens = pod_tokens(&client, &ns).await?;
        floor_h1.extend(review_floor(&Client::try_default().await?, &tokens, 1).await?);
        let tokens = pod_tokens(&client, &ns).await?;
        floor_h2.extend(review_floor(&h2, &tokens, 1).await?);
    }
    let work = tempfile::tempdir()?;
    let (mut drainer, url) = start_drainer(&drainer_bin, work.path(), Some(&ns)).await?;
    let http = reqwest::Client::new();
    // First contact: every round with tokens new to drainer and to the API server, handing
    // off claims without an active drain (the last round's drains are cancelled), so each
    // handoff records a new drain and its Events, as a scale-down does.
    let mut first = Vec::new();
    let mut tokens = Vec::new();
    for round in 0..FIRST_ROUNDS {
        tokens = pod_tokens(&client, &ns).await?;
        let (times, drains) = handoff_round(&http, &url, &ns, &tokens).await;
        first.extend(times);
        if round + 1 < FIRST_ROUNDS {
            cancel(&http, &url, &drains).await?;
            tokio::time::sleep(Duration::from_secs(3)).await; // their Events told
        }
    }
    // Later handoffs of the same pods: reviews cached, drains joined.
    let mut later = Vec::new();
    for _ in 1..ROUNDS {
        later.extend(handoff_round(&http, &url, &ns, &tokens).await.0);
    }
    let mut floor_warm = review_floor(&client, &tokens, ROUNDS).await?;
    println!("## Handoffs through TokenReview, {PODS} pods at once\n");
    println!(
        "| what | requests | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|"
    );
    row(
        "drainer, first handoff (tokens new to drainer and the API server, new drains)",
        &mut first,
    );
    row(
        "drainer, later handoffs (reviews cached ≤ 10 s, live pod checked, drains joined)",
        &mut later,
    );
    row(
        "floor: TokenReview alone, new tokens, kube's default client (HTTP/1.1, new connections)",
        &mut floor_h1,
    );
    row(
        "floor: TokenReview alone, new tokens, drainer's client (HTTP/2, one warm connection)",
        &mut floor_h2,
    );
    row(
        "floor: TokenReview alone, tokens reviewed before, kube's default client, warm",
        &mut floor_warm,
    );
    drainer.kill().await?;

    let (mut watcher, _) = start_drainer(&drainer_bin, &work.path().join("all"), None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rss_mib(watcher.id().unwrap_or(0));
    let crowd = format!("{ns}-crowd");
    create_namespace(&client, &crowd).await?;
    let created = Instant::now();
    create_pods(&client, &crowd, WATCHED).await?;
    let creating = created.elapsed();
    tokio::time::sleep(Duration::from_secs(15)).await; // the watch takes them in
    let after = rss_mib(watcher.id().unwrap_or(0));
    println!("\n## Memory of drainer watching every pod\n");
    println!("| pods watched | drainer RSS MiB |\n|---:|---:|");
    println!("| {} | {before:.1} |", PODS);
    println!("| {} | {after:.1} |", WATCHED + PODS as usize);
    println!(
        "\n({WATCHED} pods created in {:.0} s)",
        creating.as_secs_f64()
    );
    watcher.kill().await?;
    for name in [&ns, &crowd] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(name, &Default::default())
            .await;
    }
    Ok(())
}

/// One handoff by each pod at once: each answer's time, and the drains answered.
async fn handoff_round(
    http: &reqwest::Client,
    url: &str,
    ns: &str,
    tokens: &[String],
) -> (Vec<Duration>, Vec<String>) {
    let calls = tokens.iter().enumerate().map(|(i, token)| async move {
        let started = Instant::now();
        let answer = http
            .post(format!("{url}/v1/handoffs"))
            .bearer_auth(token)
            .json(&json!({"namespace": ns, "pvcs": [format!("data-web-{i}")]}))
            .send()
            .await;
        let elapsed = started.elapsed();
        let body: Option<Value> = match answer {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        (elapsed, body)
    });
    let results = futures::future::join_all(calls).await;
    let failed = results.iter().filter(|(_, body)| body.is_none()).count();
    if failed > 0 {
        eprintln!("{failed} handoffs failed");
    }
    let drains = results
        .iter()
        .filter_map(|(_, body)| body.as_ref())
        .flat_map(|b| b["drains"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    (results.into_iter().map(|(t, _)| t).collect(), drains)
}

/// Cancels `drains` as the admin.
async fn cancel(http: &reqwest::Client, url: &str, drains: &[String]) -> Result<()> {
    for id in drains {
        let answer = http
            .post(format!("{url}/v1/drains/{id}/cancel"))
            .bearer_auth("bench-admin-token-0123456789abcdef")
            .send()
            .await?;
        if !answer.status().is_success() {
            return Err(format!("cancelling {id}: {}", answer.status()).into());
        }
    }
    Ok(())
}

fn row(what: &str, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| {
        times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e3
    };
    println!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        times.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name}})),
        )
        .await?;
    Ok(())
}

/// A namespace with a StatefulSet of 50 (simulated) pods, each with a claim.
async fn create(client: &Client, ns: &str) -> Result<()> {
    create_namespace(client, ns).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "web"}})),
    )
    .await?;
    let set: StatefulSet = from_json(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": PODS, "serviceName": "web", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "serviceAccountName": "web",
                "containers": [{"name": "app", "image": "registry.invalid/web:1",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}]
        }
    }));
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &set)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let running = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == PODS as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {running} of {PODS} pods ran within 5 minutes").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A token bound to each pod, audience `drainer`.
async fn pod_tokens(client: &Client, ns: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut tokens = Vec::new();
    for i in 0..PODS {
        let pod = pods.get(&format!("web-{i}")).await?;
        let request: TokenRequest = from_json(json!({"spec": {
            "audiences": ["drainer"], "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": pod.metadata.uid}}}));
        let issued = sas
            .create_token_request("web", &PostParams::default(), &request)
            .await?;
        tokens.push(issued.status.and_then(|s| s.token).unwrap_or_default());
    }
    Ok(tokens)
}

/// The bare TokenReview calls, 50 at once, for `rounds` rounds.
async fn review_floor(client: &Client, tokens: &[String], rounds: usize) -> Result<Vec<Duration>> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let mut times = Vec::new();
    for _ in 0..rounds {
        let calls = tokens.iter().map(|token| {
            let api = api.clone();
            let review: TokenReview =
                from_json(json!({"spec": {"token": token, "audiences": ["drainer"]}}));
            async move {
                let started = Instant::now();
                let _ = api.create(&PostParams::default(), &review).await;
                started.elapsed()
            }
        });
        times.extend(futures::future::join_all(calls).await);
    }
    Ok(times)
}

async fn start_drainer(
    bin: &str,
    data: &std::path::Path,
    namespace: Option<&str>,
) -> Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "serve",
        "--kubernetes",
        "--sweep-interval",
        "0",
        "--listen",
        &format!("127.0.0.1:{port}"),
        // Handoffs and watches only: the simulated pods never let go, so nothing is copied.
        "--movers",
        "external",
    ])
    .arg("--data-dir")
    .arg(data)
    .env("DRAINER_TOKEN", "bench-admin-token-0123456789abcdef")
    .env("DRAINER_LOG", "warn")
    .kill_on_drop(true);
    if let Some(ns) = namespace {
        cmd.args(["--watch-namespace", ns]);
    }
    let child = cmd.spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reqwest::get(format!("{url}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("drainer was not ready within a minute".into())
}

/// Creates `n` bare (simulated) pods, 32 at a time.
async fn create_pods(client: &Client, ns: &str, n: usize) -> Result<()> {
    use futures::StreamExt;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = from_json(json!({
                    "metadata": {"name": format!("p-{i}"), "labels": {"app": "crowd", "n": i.to_string()}},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/crowd:1"}]}
                }));
                pods.create(&PostParams::default(), &pod).await.map(drop)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        eprintln!("{failed} of {n} pods could not be created");
    }
    Ok(())
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
