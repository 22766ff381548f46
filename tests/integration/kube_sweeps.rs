//! Kubernetes sweeps, Events and the sweeper Lease against the real control plane (kube-env):
//! a StatefulSet scaled down with `whenScaled: Retain` has exactly its scaled-away claims
//! drained, once, opted-out claims reported and skipped; a StatefulSet deleted outright has
//! its claims found by a drainer that restarted since it last saw it; the orphans report (API
//! and `drainer orphans`) lists size, age and drain; Events and the last-snapshot annotation
//! land on the claim and the pod; one replica at a time holds the sweeper Lease. The sweep
//! itself is asked of a real `drainer serve --kubernetes` (its intake and wiring as in
//! production), through the API.
//!
//! Each test's drainer watches only its own namespace (`--watch-namespaces`), as other tests
//! share the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drainer::{Ledger, Store, StoreOptions};
use drainer_core::ledger::{Drain, DrainFilter};
use drainer_kube::Cluster;
use drainer_kube::events::{KubeEvents, LAST_SNAPSHOT, LAST_SNAPSHOT_TIME};
use drainer_kube::lease::{Lease, Turn};
use drainer_kube::sweep::{KubeSweeper, Sweeping};
use drainer_server::notify::{Milestone, Notifier};
use drainer_server::sweep::{Finding, SweepReport, Sweeper, Verdict};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::cluster::TestNamespace;
use crate::support::cluster::{KubeDrainer, WebSet, scale};
use crate::support::file_url;
use crate::support::gate::Gate;
use crate::support::image::drainer_image;
use crate::support::kube::{eventually, with_timeout};
use crate::support::serve::Serve;
use k8s_openapi::api::coordination::v1::Lease as LeaseObject;
use k8s_openapi::jiff::{self, Timestamp};

/// How long one test may take in all: a guard against a hung test, not a timing target, so
/// generous enough for a shared two-core machine running other cluster tests beside it.
const TEST_LIMIT: Duration = Duration::from_secs(480);
const WAIT: Duration = Duration::from_secs(90);

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object literal must match the API type")
}

/// A StatefulSet `name` with claim template `data` (16Mi), retaining its claims.
fn statefulset(name: &str, replicas: u32) -> StatefulSet {
    WebSet::named(name, replicas)
        .when_scaled("Retain")
        .image("registry.invalid/app:1")
        .claims(&["data"], "16Mi")
        .build()
}

/// Waits until the pods of StatefulSet `set` are exactly `ordinals`, all Running.
async fn wait_for_pods(pods: &Api<Pod>, set: &str, ordinals: &[i32]) -> Result<()> {
    let want: Vec<String> = ordinals.iter().map(|n| format!("{set}-{n}")).collect();
    eventually(format!("pods {want:?} Running"), WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={set}")))
            .await?;
        let mut have: Vec<(String, Option<String>)> = list
            .items
            .iter()
            .map(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                (p.metadata.name.clone().unwrap_or_default(), phase)
            })
            .collect();
        have.sort();
        let names: Vec<&String> = have.iter().map(|(n, _)| n).collect();
        ensure!(
            names == want.iter().collect::<Vec<_>>(),
            "pods are {have:?}"
        );
        ensure!(
            have.iter().all(|(_, p)| p.as_deref() == Some("Running")),
            "not all Running: {have:?}"
        );
        Ok(())
    })
    .await
}

/// Waits until claim `name` is Bound; returns it.
async fn wait_for_bound(
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
) -> Result<PersistentVolumeClaim> {
    eventually(format!("claim {name} Bound"), WAIT, || async {
        let claim = claims.get(name).await?;
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
        ensure!(phase.as_deref() == Some("Bound"), "phase is {phase:?}");
        Ok(claim)
    })
    .await
}

/// Opts an object out of drains with the annotation.
fn opt_out() -> Patch<Value> {
    Patch::Merge(json!({ "metadata": { "annotations": { "drainer.io/drain": "false" } } }))
}

/// Waits until the cluster's stores see `check` hold.
async fn stores_show(
    cluster: &Cluster,
    what: &str,
    check: impl Fn(&Cluster) -> Result<()>,
) -> Result<()> {
    eventually(format!("drainer's stores to show {what}"), WAIT, || async {
        check(cluster)
    })
    .await
}

fn file_store(dir: &std::path::Path) -> Result<Store> {
    Ok(Store::open(
        &format!("file://{}", dir.join("store").display()),
        &StoreOptions {
            timeout: Duration::from_secs(30),
            create: true,
            part_size: 8 << 20,
        },
    )?)
}

fn sweeper(cluster: &Cluster, ledger: &Ledger, store: &Store) -> KubeSweeper {
    KubeSweeper::new(Sweeping {
        cluster: cluster.clone(),
        ledger: ledger.clone(),
        store: store.clone(),
        metrics: Arc::default(),
        notifier: Arc::new(drainer_server::notify::Log),
        intake: None,
        max_attempts: 3,
        lease: None,
    })
}

/// The findings of `report` in namespace `ns`, by claim name.
fn findings_in<'a>(report: &'a SweepReport, ns: &str) -> BTreeMap<String, &'a Finding> {
    report
        .findings
        .iter()
        .filter_map(|f| {
            let (n, pvc) = f.volume.split_once('/')?;
            (n == ns).then(|| (pvc.to_owned(), f))
        })
        .collect()
}

/// The drains of namespace `ns` in the ledger.
async fn drains_in(ledger: &Ledger, ns: &str) -> Result<Vec<Drain>> {
    let filter = DrainFilter {
        namespace: Some(ns.to_owned()),
        ..DrainFilter::default()
    };
    Ok(ledger.drains(&filter, 1000).await?)
}

/// A sweep through a real `drainer serve --kubernetes` (its intake and wiring as in
/// production; `--movers external`, so drains stay queued; no scheduled sweeps, so each sweep
/// is the test's), its own SQLite ledger and file store under `work`.
async fn sweeping_service(work: &std::path::Path, ns: &str) -> Result<Serve> {
    KubeDrainer::new(ns, &file_url(&work.join("store")))
        .args(&["--pod-namespace", ns])
        .start(&work.join("data"))
        .await
}

/// `POST /v1/sweeps` (a dry run if `dry_run`): the report's findings in namespace `ns` by claim
/// name, and the whole answer.
async fn sweep_through(
    serve: &Serve,
    ns: &str,
    dry_run: bool,
) -> Result<(BTreeMap<String, Finding>, Value)> {
    let path = format!("/v1/sweeps?dry_run={dry_run}");
    let (status, report) = serve.call(reqwest::Method::POST, &path, None).await;
    ensure!(status == 200, "sweep: {status} {report}");
    let findings: Vec<Finding> = serde_json::from_value(report["findings"].clone())?;
    let found = findings
        .into_iter()
        .filter_map(|f| {
            let (n, pvc) = f.volume.split_once('/')?;
            (n == ns).then(|| (pvc.to_owned(), f.clone()))
        })
        .collect();
    Ok((found, report))
}

/// The drains of namespace `ns` as the API lists them, by claim name.
async fn drains_listed(serve: &Serve, ns: &str) -> Result<Vec<Value>> {
    let (status, listed) = serve
        .call(
            reqwest::Method::GET,
            &format!("/v1/drains?namespace={ns}"),
            None,
        )
        .await;
    ensure!(status == 200, "list drains: {status} {listed}");
    let mut drains = listed["drains"].as_array().context("no drains")?.clone();
    drains.sort_by_key(|d| d["pvc"].as_str().unwrap_or_default().to_owned());
    Ok(drains)
}

#[tokio::test]
async fn a_sweep_drains_exactly_the_scaled_away_claims_once() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("sweep-scaled").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        sets.create(&PostParams::default(), &statefulset("web", 4)).await?;
        wait_for_pods(&pods, "web", &[0, 1, 2, 3]).await?;
        let mut uids = BTreeMap::new();
        for n in 0..4 {
            let claim = wait_for_bound(&claims, &format!("data-web-{n}")).await?;
            uids.insert(n, claim.metadata.uid.context("no uid")?);
        }
        claims
            .patch("data-web-3", &PatchParams::default(), &opt_out())
            .await?;
        scale(&client, &ns, "web", 1).await?;
        wait_for_pods(&pods, "web", &[0]).await?;

        let work = tempfile::tempdir()?;
        let serve = sweeping_service(work.path(), &ns).await?;
        // A dry run finds, and queues nothing (asked until drainer's watches show web at one
        // replica, its pods gone).
        let expected = [
            ("data-web-0", Some(Verdict::Live), false),
            ("data-web-1", Some(Verdict::Orphaned), true),
            ("data-web-2", Some(Verdict::Orphaned), true),
            ("data-web-3", Some(Verdict::OptedOut), false),
        ];
        let dry = eventually("a dry run finding the scaled-away claims", WAIT, || async {
            let (found, report) = sweep_through(&serve, &ns, true).await?;
            let verdicts: Vec<(&str, Option<Verdict>, bool)> = found
                .iter()
                .map(|(pvc, f)| (pvc.as_str(), f.verdict, f.drain))
                .collect();
            ensure!(verdicts == expected, "dry run: {verdicts:?}");
            Ok(report)
        })
        .await?;
        ensure!(dry["drains"] == json!([]), "{dry}");
        ensure!(drains_listed(&serve, &ns).await?.is_empty(), "a dry run drained");

        // The sweep: one drain for each scaled-away claim, straight to queued.
        let (first, _) = sweep_through(&serve, &ns, false).await?;
        let drains = drains_listed(&serve, &ns).await?;
        let drained: Vec<&str> = drains.iter().filter_map(|d| d["pvc"].as_str()).collect();
        ensure!(drained == ["data-web-1", "data-web-2"], "drains of {drained:?}");
        for (drain, n) in drains.iter().zip([1, 2]) {
            ensure!(drain["state"] == "queued", "{drain}");
            ensure!(drain["pvc_uid"] == uids[&n].as_str(), "{drain}");
            let why = format!(
                "sweep: ordinal {n} of StatefulSet web is scaled away (live ordinals 0..1; pod web-{n}'s claim)"
            );
            ensure!(drain["reason"] == why.as_str(), "reason {}", drain["reason"]);
            let id = drain["id"].as_str().context("no id")?;
            let shown = serve.drain(id).await;
            ensure!(
                shown["history"][0]["message"] == why.as_str(),
                "history {}",
                shown["history"]
            );
            let finding = &first[&format!("data-web-{n}")];
            ensure!(finding.drain_id.as_deref() == Some(id), "{finding:?}");
        }
        let orphaned = first.values().filter(|f| f.verdict == Some(Verdict::Orphaned)).count();
        ensure!(orphaned == 2, "orphaned {orphaned}");

        // A second sweep finds the drains active and creates none.
        let (again, _) = sweep_through(&serve, &ns, false).await?;
        ensure!(drains_listed(&serve, &ns).await?.len() == 2, "a second sweep drained again");
        ensure!(
            !again["data-web-1"].drain && again["data-web-1"].why.contains("is queued"),
            "{:?}",
            again["data-web-1"]
        );
        ensure!(
            again["data-web-3"].why.contains("opted out") && !again["data-web-3"].drain,
            "{:?}",
            again["data-web-3"]
        );

        // The orphans report, through the API and `drainer orphans`.
        orphans_are_reported(&serve, &ns, &drains).await?;
        serve.terminate(Duration::from_secs(15)).await;
        // The sweep is the drains' requester, as the ledger records it.
        let ledger = Ledger::open(None, &work.path().join("data")).await?;
        for drain in &drains {
            let id = drain["id"].as_str().context("no id")?;
            ensure!(ledger.requested_by(id, "sweep").await?, "{id} not requested by sweep");
        }
        namespace.finish().await
    })
    .await
}

/// Checks `GET /v1/orphans`, `POST /v1/sweeps?dry_run=true` and `drainer orphans` of
/// `serve` for namespace `ns` (whose claims data-web-1 and -2 are drained by `drains`,
/// data-web-3 opted out).
async fn orphans_are_reported(serve: &Serve, ns: &str, drains: &[Value]) -> Result<()> {
    let (status, answer) = serve.call(reqwest::Method::GET, "/v1/orphans", None).await;
    ensure!(status == 200, "orphans: {status} {answer}");
    let rows: BTreeMap<String, &Value> = answer["orphans"]
        .as_array()
        .context("no orphans")?
        .iter()
        .filter_map(|o| {
            let (n, pvc) = o["volume"].as_str()?.split_once('/')?;
            (n == ns).then(|| (pvc.to_owned(), o))
        })
        .collect();
    let names: Vec<&String> = rows.keys().collect();
    ensure!(
        names == ["data-web-1", "data-web-2", "data-web-3"],
        "orphans {names:?}"
    );
    for drain in drains {
        let (pvc, id) = (drain["pvc"].as_str().context("no pvc")?, &drain["id"]);
        let row = rows[pvc];
        ensure!(
            row["size"] == "16Mi" && row["size_bytes"] == 16 << 20,
            "{row}"
        );
        ensure!(
            row["orphaned_since"].is_string(),
            "a sweep recorded it: {row}"
        );
        ensure!(
            row["age_seconds"].as_u64().is_some_and(|a| a < 600),
            "{row}"
        );
        ensure!(
            row["drain"]["id"] == *id && row["drain"]["state"] == "queued",
            "{row}"
        );
        ensure!(
            row["last_snapshot"].is_null() && row["statefulset"] == "web",
            "{row}"
        );
    }
    ensure!(
        rows["data-web-3"]["verdict"] == "opted_out",
        "{}",
        rows["data-web-3"]
    );
    let (_, dry) = sweep_through(serve, ns, true).await?;
    ensure!(
        dry["dry_run"] == true && dry["drains"] == json!([]),
        "{dry}"
    );
    let output = crate::support::run(crate::support::drainer().args([
        "orphans",
        "--drainer",
        &serve.url,
        "--token",
        crate::support::serve::TOKEN,
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "drainer orphans: {output:?}");
    for drain in drains {
        let (pvc, id) = (
            drain["pvc"].as_str().context("no pvc")?,
            drain["id"].as_str().context("no id")?,
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{ns}/{pvc}")))
            .with_context(|| format!("no line for {pvc}: {stdout}"))?;
        ensure!(
            line.contains("16Mi") && line.contains(id) && line.contains("queued"),
            "{line}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_deleted_statefulset_is_remembered_across_restarts() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("sweep-deleted").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        sets.create(&PostParams::default(), &statefulset("my-db", 2))
            .await?;
        wait_for_pods(&pods, "my-db", &[0, 1]).await?;
        for n in 0..2 {
            wait_for_bound(&claims, &format!("data-my-db-{n}")).await?;
        }
        let dir = tempfile::tempdir()?;
        let store = file_store(dir.path())?;
        {
            // A drainer that sees the StatefulSet, and stops.
            let stop = CancellationToken::new();
            let cluster = Cluster::start(client.clone(), vec![ns.clone()], stop.clone()).await?;
            stores_show(&cluster, "my-db", |c| {
                ensure!(!c.sets_in(&ns).is_empty(), "no set yet");
                Ok(())
            })
            .await?;
            let ledger = Ledger::open(None, dir.path()).await?;
            let live = sweeper(&cluster, &ledger, &store).sweep(false).await?;
            let found = findings_in(&live, &ns);
            ensure!(
                found.values().all(|f| f.verdict == Some(Verdict::Live)) && found.len() == 2,
                "{found:?}"
            );
            stop.cancel();
        }
        sets.delete("my-db", &DeleteParams::default()).await?;
        eventually("my-db and its pods gone", WAIT, || async {
            ensure!(sets.get_opt("my-db").await?.is_none(), "set still there");
            let left = pods.list(&ListParams::default()).await?.items.len();
            ensure!(left == 0, "{left} pods left");
            Ok(())
        })
        .await?;

        // Another drainer, started after the deletion, on the same ledger.
        let stop = CancellationToken::new();
        let cluster = Cluster::start(client.clone(), vec![ns.clone()], stop.clone()).await?;
        let ledger = Ledger::open(None, dir.path()).await?;
        let report = sweeper(&cluster, &ledger, &store).sweep(false).await?;
        let found = findings_in(&report, &ns);
        ensure!(found.len() == 2, "{found:?}");
        for f in found.values() {
            ensure!(f.verdict == Some(Verdict::Orphaned) && f.drain, "{f:?}");
            ensure!(
                f.why
                    .contains("StatefulSet my-db no longer exists (remembered by drainer"),
                "{}",
                f.why
            );
        }
        ensure!(drains_in(&ledger, &ns).await?.len() == 2);
        // A drainer that never saw it does not guess.
        let fresh_dir = tempfile::tempdir()?;
        let fresh = Ledger::open(None, fresh_dir.path()).await?;
        let unknown = sweeper(&cluster, &fresh, &store).sweep(true).await?;
        ensure!(
            findings_in(&unknown, &ns).is_empty(),
            "guessed: {:?}",
            findings_in(&unknown, &ns)
        );
        stop.cancel();
        namespace.finish().await
    })
    .await
}

/// The Events drainer recorded about `kind` `name` in `ns`, by reason: (note, series count).
async fn events_about(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<(String, i32)>>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut by_reason: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
    for e in events.list(&ListParams::default()).await?.items {
        let regarding = e.regarding.clone().unwrap_or_default();
        if regarding.kind.as_deref() != Some(kind) || regarding.name.as_deref() != Some(name) {
            continue;
        }
        if e.reporting_controller.as_deref() != Some("drainer.io/drainer") {
            continue; // the claim's own controllers speak too
        }
        by_reason
            .entry(e.reason.clone().unwrap_or_default())
            .or_default()
            .push((
                e.note.clone().unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
            ));
    }
    Ok(by_reason)
}

#[tokio::test]
async fn events_tell_the_claim_and_the_pod_what_happened() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("sweep-events").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let claim: PersistentVolumeClaim = from_json(json!({
            "metadata": { "name": "data-x" },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "16Mi" } } }
        }));
        let claim = claims.create(&PostParams::default(), &claim).await?;
        let pod: Pod = from_json(json!({
            "metadata": { "name": "x", "labels": { "app": "x" } },
            "spec": {
                "containers": [{ "name": "app", "image": "registry.invalid/app:1",
                                 "volumeMounts": [{ "name": "data", "mountPath": "/data" }] }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data-x" } }]
            }
        }));
        let pod = pods.create(&PostParams::default(), &pod).await?;
        let stop = CancellationToken::new();
        let cluster = Cluster::start(client.clone(), vec![ns.clone()], stop.clone()).await?;
        stores_show(&cluster, "the claim and the pod", |c| {
            ensure!(c.claim(&ns, "data-x").is_some() && c.pod(&ns, "x").is_some());
            Ok(())
        })
        .await?;
        let notifier = KubeEvents::new(cluster.clone(), "test-replica");
        let ledger_dir = tempfile::tempdir()?;
        let ledger = Ledger::open(None, ledger_dir.path()).await?;
        let recorded = ledger
            .request_drains(&[drainer_core::ledger::NewDrain {
                volume: drainer::VolumeId::new(&ns, "data-x")?,
                pod: Some("x".into()),
                reason: "scale-down".into(),
                max_attempts: 3,
                wait_for_release: false,
                requested_by: None,
                facts: drainer_kube::facts::KubeFacts {
                    pvc_uid: claim.metadata.uid.clone(),
                    pod_uid: pod.metadata.uid.clone(),
                    node: None,
                }
                .into(),
            }])
            .await?;
        let drain = recorded.first().context("no drain")?.0.clone();
        let failed = Milestone::Failed {
            why: "the store did not answer".into(),
            retrying: true,
        };
        for milestone in [
            Milestone::Accepted,
            Milestone::CopyStarted { attempt: 1 },
            failed.clone(),
            failed,
            Milestone::Completed {
                snapshot: "20261202T101010000Z-abcd".into(),
                files: 3,
                bytes: 4096,
                seconds: 1.5,
            },
        ] {
            notifier.notify(&drain, &milestone).await;
        }
        let expected = ["Completed", "CopyStarted", "Failed", "HandoffAccepted"];
        for (kind, name) in [("PersistentVolumeClaim", "data-x"), ("Pod", "x")] {
            let events = events_about(&client, &ns, kind, name).await?;
            let reasons: Vec<&str> = events.keys().map(String::as_str).collect();
            ensure!(reasons == expected, "{kind} {name}: {events:?}");
            ensure!(
                events["Failed"].len() == 1 && events["Failed"][0].1 == 2,
                "a repeated failure counts up one Event: {:?}",
                events["Failed"]
            );
            let (done, _) = &events["Completed"][0];
            ensure!(done.contains("20261202T101010000Z-abcd") && done.contains("3 files, 4096 bytes"), "{done}");
        }
        let annotated = claims.get("data-x").await?;
        let annotations = annotated.metadata.annotations.unwrap_or_default();
        ensure!(
            annotations.get(LAST_SNAPSHOT).map(String::as_str) == Some("20261202T101010000Z-abcd")
                && annotations.contains_key(LAST_SNAPSHOT_TIME),
            "{annotations:?}"
        );
        // Once the pod is gone, only the claim hears.
        pods.delete("x", &DeleteParams::default()).await?;
        stores_show(&cluster, "the pod gone", |c| {
            ensure!(c.pod(&ns, "x").is_none());
            Ok(())
        })
        .await?;
        notifier
            .notify(&drain, &Milestone::NotNeeded { why: "test".into() })
            .await;
        ensure!(events_about(&client, &ns, "PersistentVolumeClaim", "data-x").await?.contains_key("NotNeeded"));
        ensure!(!events_about(&client, &ns, "Pod", "x").await?.contains_key("NotNeeded"));
        stop.cancel();
        namespace.finish().await
    })
    .await
}

#[tokio::test]
async fn one_replica_at_a_time_holds_the_sweeper_lease() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("sweep-lease").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let lease = |holder: &str, seconds: u64| {
            Lease::new(
                client.clone(),
                &ns,
                "drainer-sweeper",
                holder,
                Duration::from_secs(seconds),
            )
        };
        let (a, b) = (lease("replica-a", 60), lease("replica-b", 60));
        ensure!(a.take().await? == Turn::Mine, "the first replica takes it");
        ensure!(
            matches!(b.take().await?, Turn::Theirs { ref holder, .. } if holder == "replica-a"),
            "the second waits"
        );
        ensure!(a.take().await? == Turn::Mine, "the holder renews");
        a.give_up().await?;
        ensure!(b.take().await? == Turn::Mine, "given up, taken at once");
        // A holder that stops renewing loses it once its lease has run out.
        let (short, c) = (lease("replica-b", 1), lease("replica-c", 60));
        let taken = std::time::Instant::now();
        ensure!(short.take().await? == Turn::Mine);
        ensure!(c.take().await? != Turn::Mine, "not before it runs out");
        eventually(
            "taken over once expired",
            Duration::from_secs(10),
            || async {
                ensure!(c.take().await? == Turn::Mine, "not yet");
                Ok(())
            },
        )
        .await?;
        ensure!(
            taken.elapsed() >= Duration::from_secs(1),
            "taken over before the 1 s lease ran out: {:?}",
            taken.elapsed()
        );
        namespace.finish().await
    })
    .await
}

/// `drainer serve --kubernetes` as replica `id`, its Lease in `ns`, sweeping every 10 minutes
/// (the Lease does not depend on it), its own SQLite ledger under `work`.
async fn sweeping_replica(work: &std::path::Path, ns: &str, id: &str) -> Result<Serve> {
    KubeDrainer::new(ns, &file_url(&work.join(format!("{id}-store"))))
        .args(&["--pod-namespace", ns, "--replica-id", id])
        .sweep_interval(600)
        .start(&work.join(id))
        .await
}

/// The sweeper Lease's holder, last renewal and acquisition, and duration in seconds.
async fn sweeper_lease(
    leases: &Api<LeaseObject>,
) -> Result<(
    Option<String>,
    Option<Timestamp>,
    Option<Timestamp>,
    Option<i32>,
)> {
    let lease = leases.get("drainer-sweeper").await?;
    let spec = lease.spec.unwrap_or_default();
    Ok((
        spec.holder_identity.filter(|h| !h.is_empty()),
        spec.renew_time.map(|t| t.0),
        spec.acquire_time.map(|t| t.0),
        spec.lease_duration_seconds,
    ))
}

/// Waits until replica `id` holds the sweeper Lease; returns how long that took.
async fn wait_for_holder(
    leases: &Api<LeaseObject>,
    id: &str,
    within: Duration,
) -> Result<Duration> {
    let started = std::time::Instant::now();
    eventually(format!("{id} holds the sweeper Lease"), within, || async {
        let (holder, ..) = sweeper_lease(leases).await?;
        ensure!(holder.as_deref() == Some(id), "held by {holder:?}");
        Ok(started.elapsed())
    })
    .await
}

/// Real replicas and signals: the sweeper Lease lasts 15 s whatever `--sweep-interval` is
/// (10 minutes here); its holder keeps it while another replica waits; a holder stopped with
/// SIGTERM gives it up and the other takes it within one renewal period (5 s); a holder killed
/// with SIGKILL keeps it until it runs out, and the other takes it over then (within 15 s and
/// a renewal period), not before.
#[tokio::test]
async fn the_sweeper_lease_moves_at_once_on_sigterm_and_within_its_short_duration_on_sigkill()
-> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("sweep-lease-replicas").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let leases: Api<LeaseObject> = Api::namespaced(client.clone(), &ns);
        let work = tempfile::tempdir()?;
        let a = sweeping_replica(work.path(), &ns, "replica-a").await?;
        wait_for_holder(&leases, "replica-a", Duration::from_secs(20)).await?;
        let (_, _, _, seconds) = sweeper_lease(&leases).await?;
        ensure!(
            seconds == Some(15),
            "leaseDurationSeconds {seconds:?}, whatever the interval"
        );
        let b = sweeping_replica(work.path(), &ns, "replica-b").await?;
        // The holder renews (twice) while the other waits.
        let (_, mut last, ..) = sweeper_lease(&leases).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut renewals = 0;
        while renewals < 2 {
            ensure!(
                std::time::Instant::now() < deadline,
                "replica-a renewed the Lease {renewals} times in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (holder, renewed, ..) = sweeper_lease(&leases).await?;
            ensure!(
                holder.as_deref() == Some("replica-a"),
                "taken by {holder:?}"
            );
            if renewed != last {
                renewals += 1;
                last = renewed;
            }
        }

        // SIGTERM: given up at shutdown, taken by the other within one renewal period.
        let a_log = a.log_path();
        let (status, _) = a.terminate(Duration::from_secs(40)).await;
        ensure!(status.success(), "replica-a exited {status:?}");
        let took = wait_for_holder(&leases, "replica-b", Duration::from_secs(15)).await?;
        ensure!(
            took <= Duration::from_secs(8),
            "replica-b took the Lease {took:?} after replica-a stopped: not at once"
        );
        let logged = std::fs::read_to_string(&a_log)?;
        ensure!(
            logged.contains("gave the sweeper Lease up at shutdown"),
            "{logged}"
        );

        // SIGKILL: nothing is given up; the other takes over once the Lease runs out.
        let c = sweeping_replica(work.path(), &ns, "replica-c").await?;
        let (_, renewed_before, ..) = sweeper_lease(&leases).await?;
        b.kill9().await;
        let (holder, renewed, ..) = sweeper_lease(&leases).await?;
        ensure!(holder.as_deref() == Some("replica-b"), "held by {holder:?}");
        let last_renewal = renewed.or(renewed_before).context("no renewal time")?;
        let took = wait_for_holder(&leases, "replica-c", Duration::from_secs(40)).await?;
        ensure!(
            took <= Duration::from_secs(15 + 5 + 3),
            "replica-c took the Lease {took:?} after replica-b was killed"
        );
        let (_, _, acquired, _) = sweeper_lease(&leases).await?;
        let acquired = acquired.context("no acquire time")?;
        let waited = acquired.duration_since(last_renewal);
        ensure!(
            waited >= jiff::SignedDuration::from_secs(14),
            "replica-c took the Lease {waited:?} after its last renewal: before it ran out"
        );
        c.terminate(Duration::from_secs(40)).await;
        namespace.finish().await
    })
    .await
}

/// A StatefulSet that only the watch saw — created while drainer runs (no scheduled sweeps),
/// then deleted with `--cascade=orphan` and its pods deleted — is remembered: a sweep on
/// demand finds both claims orphaned and its mover Jobs drain them, byte for byte.
#[tokio::test]
async fn a_statefulset_deleted_between_sweeps_is_remembered_from_the_watch() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("sweep-watch-memory").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let kenv = crate::support::kube::KubeEnv::load()?;
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let work = tempfile::tempdir()?;
        let store = format!("file://{}", work.path().join("store").display());
        let gate = Gate::start(&kenv.host_ip).await?;
        let serve = KubeDrainer::new(&ns, &store)
            .mover_jobs(&gate.url, drainer_image(&kenv).await?)
            .start(&work.path().join("data"))
            .await?;
        gate.forward_to(&serve.url);

        sets.create(&PostParams::default(), &statefulset("my-db", 2))
            .await?;
        wait_for_pods(&pods, "my-db", &[0, 1]).await?;
        let mut sources = Vec::new();
        for n in 0..2 {
            let pvc = format!("data-my-db-{n}");
            let dir = crate::support::kube::wait_for_bound_claim(&client, &ns, &pvc, WAIT).await?;
            std::fs::write(
                dir.join("table"),
                format!("rows of ordinal {n}\n").repeat(1000),
            )?;
            sources.push((pvc, dir));
        }
        let orphan = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
            ..DeleteParams::default()
        };
        sets.delete("my-db", &orphan).await?;
        eventually("my-db gone, its pods left", WAIT, || async {
            ensure!(sets.get_opt("my-db").await?.is_none(), "set still there");
            let left = pods.list(&ListParams::default()).await?.items.len();
            ensure!(left == 2, "{left} pods");
            Ok(())
        })
        .await?;
        pods.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        eventually("the pods gone", WAIT, || async {
            let left = pods.list(&ListParams::default()).await?.items.len();
            ensure!(left == 0, "{left} pods left");
            Ok(())
        })
        .await?;

        // Drainer's pod watch sees the pods go a moment after the API server does: until
        // then a sweep finds a claim in use and drains nothing for it. A sweep may see one pod
        // gone and not yet the other: it drains the first claim, and the next sweep finds
        // that claim copying already. So every sweep's drained findings and drains count.
        let drained = std::sync::Mutex::new(std::collections::BTreeMap::new());
        let started = std::sync::Mutex::new(Vec::<String>::new());
        let report = eventually("sweeps that see the pods gone", WAIT, || async {
            let (status, report) = serve.call(reqwest::Method::POST, "/v1/sweeps", None).await;
            ensure!(status == 200, "{status} {report}");
            let findings = report["findings"].as_array().context("findings")?.clone();
            for f in findings.iter().filter(|f| f["drain"] == true) {
                let volume = f["volume"].as_str().unwrap_or_default().to_owned();
                drained.lock().unwrap().insert(volume, f.clone());
            }
            let ids = report["drains"].as_array().context("drains")?;
            started.lock().unwrap().extend(
                ids.iter()
                    .filter_map(|d| d["id"].as_str().map(str::to_owned)),
            );
            let in_use = findings.iter().any(|f| f["verdict"] == "in_use");
            ensure!(!in_use && drained.lock().unwrap().len() == 2, "{report}");
            Ok(report)
        })
        .await?;
        let drained = drained.into_inner().unwrap();
        for f in drained.values() {
            ensure!(f["verdict"] == "orphaned", "{f}");
            let why = f["why"].as_str().unwrap_or_default();
            ensure!(
                why.contains("StatefulSet my-db no longer exists (remembered by drainer"),
                "{why}"
            );
        }
        let ids = started.into_inner().unwrap();
        ensure!(ids.len() == 2, "{ids:?} {report}");
        let ended = serve.wait_ended(&ids, WAIT).await;
        for d in &ended {
            ensure!(d["state"] == "completed", "{d}");
        }
        for (pvc, dir) in &sources {
            crate::support::cluster::assert_restores_exactly(&store, &ns, pvc, dir, work.path())
                .await;
        }
        namespace.finish().await
    })
    .await
}
