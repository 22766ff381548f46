//! Figures of the standing guards (issue 19), measured on kube-env (`scripts/bench-guards`
//! starts it, builds the release binary and runs this): how long drainer takes to guard
//! CLAIMS existing claims at start-up and how many API calls it makes for them, and how long
//! it takes, started again after a scale-down it missed, until every condemned claim has a
//! drain; drainer's memory before and after guarding. Figures only; nothing passes or fails.
//!
//! The claims belong to a `whenScaled: Delete` StatefulSet whose pods cannot be scheduled
//! (a node selector no node has), so the StatefulSet controller creates every claim and pod
//! object but no pod runs: the claims are what drainer watches and guards.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("object literal matches its type")
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = Client::try_default().await?;
    let bin = std::env::var("DRAINER_BIN").unwrap_or_else(|_| "target/release/drainer".into());
    let claims: i32 = std::env::var("CLAIMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let condemned: i32 = std::env::var("CONDEMNED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let ns = format!("guards-{:06x}", rand::random::<u32>() & 0xffffff);
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": ns}})),
        )
        .await?;
    let made = Instant::now();
    create_set(&client, &ns, claims).await?;
    wait_claims(&client, &ns, claims as usize).await?;
    eprintln!(
        "{claims} claims made in {:.0} s",
        made.elapsed().as_secs_f64()
    );

    let work = tempfile::tempdir()?;
    let patches_before = api_calls(&client, "PATCH", "persistentvolumeclaims").await?;
    let gets_before = api_calls(&client, "GET", "namespaces").await?;
    let started = Instant::now();
    let (mut drainer, url) = start_drainer(&bin, work.path(), &ns).await?;
    let ready = started.elapsed();
    let rss_listed = rss_mib(drainer.id().unwrap_or(0));
    let guarded_in = wait_guarded(&client, &ns, claims as usize, started).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // the watch takes the patched claims in
    let rss_guarded = rss_mib(drainer.id().unwrap_or(0));
    let patches = api_calls(&client, "PATCH", "persistentvolumeclaims").await? - patches_before;
    let gets = api_calls(&client, "GET", "namespaces").await? - gets_before;

    // drainer away while the StatefulSet is scaled down, then back.
    drainer.kill().await?;
    let _ = drainer.wait().await;
    let keep = claims - condemned;
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": keep}})),
        )
        .await?;
    wait_pods(&client, &ns, keep as usize).await?;
    let kept = count_claims(&client, &ns).await?;
    let back = Instant::now();
    let (mut drainer, url2) = start_drainer(&bin, &work.path().join("again"), &ns).await?;
    let queued_in = wait_drains(&url2, condemned as usize, back).await?;
    drainer.kill().await?;
    let _ = url;

    println!(
        "## Standing guards on kube-env ({claims} claims of one `whenScaled: Delete` StatefulSet)\n"
    );
    println!("| what | figure |\n|---|---:|");
    println!(
        "| drainer ready after start | {:.2} s |",
        ready.as_secs_f64()
    );
    println!(
        "| every claim guarded after start | {:.2} s |",
        guarded_in.as_secs_f64()
    );
    println!("| claim PATCH calls to guard them | {patches} |");
    println!("| namespace GET calls | {gets} |");
    println!("| API objects created for the guards | 0 |");
    println!("| drainer RSS, claims listed | {rss_listed:.1} MiB |");
    println!("| drainer RSS, claims guarded | {rss_guarded:.1} MiB |");
    println!(
        "| claims left after a scale-down by {condemned} with no drainer | {kept} of {claims} |"
    );
    println!(
        "| every condemned claim with a drain, after drainer's return | {:.2} s |",
        queued_in.as_secs_f64()
    );
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &Default::default())
        .await;
    Ok(())
}

/// StatefulSet `big`: `replicas` unschedulable pods, each with a claim, `whenScaled: Delete`.
async fn create_set(client: &Client, ns: &str, replicas: i32) -> Result<()> {
    let set: StatefulSet = from_json(json!({
        "metadata": {"name": "big"},
        "spec": {
            "replicas": replicas, "serviceName": "big", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "big"}},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": {
                "nodeSelector": {"bench.drainer.io/nowhere": "true"},
                "containers": [{"name": "app", "image": "registry.invalid/big:1",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}]
        }
    }));
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &set)
        .await?;
    Ok(())
}

async fn count_claims(client: &Client, ns: &str) -> Result<usize> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    Ok(claims.list(&ListParams::default()).await?.items.len())
}

async fn wait_claims(client: &Client, ns: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while count_claims(client, ns).await? < n {
        if Instant::now() > deadline {
            return Err("the claims were not all made within 30 minutes".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Waits until `n` pods are left and the garbage collector has had its look at the claims
/// of the others (none is owned by a pod that is gone).
async fn wait_pods(client: &Client, ns: &str, n: usize) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = pods.list(&ListParams::default()).await?.items.len();
        let owned_by_pods = claims
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| {
                c.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Pod")
            })
            .count();
        if left == n && owned_by_pods == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{left} pods left, {owned_by_pods} claims owned by pods").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_guarded(client: &Client, ns: &str, n: usize, since: Instant) -> Result<Duration> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let guarded = claims
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| drainer_kube::guard::is_guarded(c))
            .count();
        if guarded >= n {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!("only {guarded} of {n} claims guarded").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_drains(url: &str, n: usize, since: Instant) -> Result<Duration> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let answer: Value = http
            .get(format!("{url}/v1/drains?limit=1000"))
            .bearer_auth("bench-admin-token-0123456789abcdef")
            .send()
            .await?
            .json()
            .await?;
        let drains = answer["drains"].as_array().map_or(0, Vec::len);
        if drains >= n {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!("only {drains} of {n} drains").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API server's count of `verb` requests on `resource` so far (its own metrics).
async fn api_calls(client: &Client, verb: &str, resource: &str) -> Result<u64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let wanted = format!("verb=\"{verb}\"");
    let resource = format!("resource=\"{resource}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&wanted) && l.contains(&resource))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn start_drainer(
    bin: &str,
    data: &std::path::Path,
    namespace: &str,
) -> Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--kubernetes",
            "--sweep-interval",
            "0",
            "--listen",
            &format!("127.0.0.1:{port}"),
            // Drains and guards only: no mover Job is made.
            "--movers",
            "external",
            "--watch-namespace",
            namespace,
        ])
        .arg("--data-dir")
        .arg(data)
        .env("DRAINER_TOKEN", "bench-admin-token-0123456789abcdef")
        .env("DRAINER_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if reqwest::get(format!("{url}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("drainer was not ready within two minutes".into())
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
