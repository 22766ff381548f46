//! Kubernetes mode end to end on kube-env, with pods that run as processes and mover Jobs: a real
//! `drainer serve --kubernetes` on this machine watches the test's namespace and makes its
//! copies with mover Jobs whose pods (the image of the binary under test, see
//! `support::image`) reach it through the gate of `support::gate` at the address pods reach this
//! machine. The StatefulSet `web` (two volumeClaimTemplates, `ordinals.start: 5`) has pods that
//! write their own data at start and hand their claims off from a `preStop` hook with their
//! projected token (drainer installed into the pod by an init container of that image, as in
//! `deploy/examples/prestop-handoff.yaml`). Every test restores what was drained and
//! compares it byte for byte with the claim's data.

use crate::support::cluster::{assert_restores_exactly, history};
use crate::support::forward::Switch;
use crate::support::kube::{eventually, with_timeout};
use crate::support::proxy::Proxy;
use crate::support::s3::S3Server;
use crate::support::serve::{Serve, log_tail};
use crate::support::tree::{awkward, differences};
use crate::support::world::{START, TEMPLATES, WAIT, WRITER, World, claims_of, web_with};
use crate::support::{drainer, fresh_postgres_database, run_ok};
use anyhow::{Context, Result, bail, ensure};
use drainer_kube::{guard, hold, mover_jobs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bound of one test.
const LIMIT: Duration = Duration::from_secs(600);

/// Checks that pod `pod` (UID `uid`) handed drain `drain` off itself: the ledger records the
/// pod as a requester of the drain (a principal `pod:NS/NAME` is only ever an authenticated
/// pod token, confirmed against the live pod), and the drain names the pod and its UID. The
/// drain was created either by that handoff (its history starts with the hook's reason) or,
/// a moment earlier, by drainer itself, which saw the condemned pod start terminating before
/// its preStop hook's handoff arrived (with `whenScaled: Delete`, saw the scale-down make it a
/// scaled-away ordinal); the handoff then joined the drain.
async fn assert_handed_off_by(
    ledger: &drainer::Ledger,
    ns: &str,
    drain: &Value,
    pod: &str,
    uid: &str,
) -> Result<()> {
    let id = drain["id"].as_str().unwrap_or_default();
    ensure!(
        ledger.requested_by(id, &format!("pod:{ns}/{pod}")).await?,
        "drain {id} was not requested by pod {ns}/{pod}: {drain}"
    );
    ensure!(drain["pod"] == pod, "{drain}");
    ensure!(drain["pod_uid"] == uid, "{drain}");
    let first = drain["history"][0]["message"].as_str().unwrap_or_default();
    ensure!(
        first == "preStop"
            || first.starts_with(&format!("pod {pod} of web is terminating"))
            || first.starts_with(&format!("pod {pod} of web is a scaled-away ordinal")),
        "{}",
        history(drain)
    );
    Ok(())
}

/// Scale 3 → 1 with the given `whenScaled`: the four claims of ordinals 6 and 7 are handed off
/// by their pods, copied by one mover Job each and restore exactly. Returns the world, the
/// drainer, and the drains by claim.
async fn scale_down_drains(
    prefix: &str,
    when_scaled: &str,
) -> Result<(World, Serve, BTreeMap<String, Value>)> {
    let w = World::new(prefix).await?;
    let serve = w.drainer().await?;
    let pods = w.start_web(3, when_scaled).await?;
    let mut dirs = BTreeMap::new();
    for (_, pvc) in claims_of(START..START + 3) {
        dirs.insert(pvc.clone(), w.claim_dir(&pvc).await?);
    }
    let kept = w.keep(&dirs)?;
    let mut uids = BTreeMap::new();
    for (_, pvc) in claims_of(START + 1..START + 3) {
        uids.insert(pvc.clone(), w.claim_uid(&pvc).await?.context("claim")?);
    }
    w.scale("web", 1).await?;

    let mut ids = BTreeMap::new();
    for (_, pvc) in claims_of(START + 1..START + 3) {
        ids.insert(pvc.clone(), w.drain_of(&serve, &pvc).await?);
    }
    // Until its drain ends, each claim is the one its pod used (with `Delete`, the hold keeps
    // it from the garbage collector); afterwards it may go.
    let deadline = Instant::now() + WAIT;
    let mut held = BTreeSet::new();
    let drains = loop {
        let mut ended = BTreeMap::new();
        for (pvc, id) in &ids {
            let drain = serve.drain(id).await;
            let state = drain["state"].as_str().unwrap_or_default().to_owned();
            if drain["hold"] == format!("drainer-hold-{id}").as_str() {
                held.insert(pvc.clone());
            }
            if ["failed", "cancelled", "not_needed"].contains(&state.as_str()) {
                bail!("drain of {pvc} ended {state}: {drain}");
            }
            if state == "completed" {
                ended.insert(pvc.clone(), drain);
                continue;
            }
            let claim = w.api::<PersistentVolumeClaim>().get_opt(pvc).await?;
            let claim = claim.with_context(|| format!("{pvc} deleted before its drain ended"))?;
            ensure!(
                claim.metadata.uid.as_ref() == uids.get(pvc),
                "{pvc} was replaced before its drain ended"
            );
            if claim
                .metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| o.kind == "ConfigMap" && o.name == format!("drainer-hold-{id}"))
            {
                held.insert(pvc.clone());
            }
        }
        if ended.len() == ids.len() {
            break ended;
        }
        ensure!(
            Instant::now() < deadline,
            "the drains did not complete within {WAIT:?}: {} of {} did",
            ended.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if when_scaled == "Delete" {
        let missing: Vec<_> = ids
            .iter()
            .filter(|(pvc, id)| !held.contains(*pvc) && !w.holds.held(pvc, id))
            .map(|(pvc, _)| pvc)
            .collect();
        ensure!(missing.is_empty(), "claims never seen held: {missing:?}");
    }

    let ledger = drainer::Ledger::open(None, &w.work.as_path().join("data")).await?;
    for (o, pvc) in claims_of(START + 1..START + 3) {
        let drain = &drains[&pvc];
        let (pod, uid) = &pods[(o - START) as usize];
        assert_handed_off_by(&ledger, &w.ns, drain, pod, uid).await?;
        let history = history(drain);
        eprintln!(
            "{pvc}: {} by {}\n{history}",
            drain["state"], drain["mover_job"]
        );
        ensure!(history.contains("scaled away"), "{pvc}: {history}");
        let id = drain["id"].as_str().unwrap_or_default();
        ensure!(
            drain["attempts"] == 1 && drain["mover_job"] == format!("drainer-{id}-1").as_str(),
            "{pvc}: {drain}"
        );
        ensure!(
            w.jobs.of(id) == BTreeSet::from([format!("drainer-{id}-1")]),
            "{pvc}: Jobs {:?}",
            w.jobs.of(id)
        );
        // The source is the claim as its pod left it (with `Delete` the claim and its PV
        // directory may be gone by now: the copy made before the scale-down stands for it).
        let source = if when_scaled == "Retain" {
            &dirs[&pvc]
        } else {
            &kept[&pvc]
        };
        ensure!(
            differences(&kept[&pvc], source).is_empty(),
            "{pvc} changed after its pod went"
        );
        assert_restores_exactly(&w.store(), &w.ns, &pvc, source, w.work.as_path()).await;
    }
    // Ordinal 5 stays, untouched and never drained.
    for (_, pvc) in claims_of([START]) {
        let drains = serve.drains(&format!("volume={}/{pvc}", w.ns)).await;
        ensure!(drains.is_empty(), "{pvc} was drained: {drains:?}");
        ensure!(differences(&kept[&pvc], &dirs[&pvc]).is_empty());
        ensure!(w.claim_uid(&pvc).await?.is_some(), "{pvc} is gone");
    }

    Ok((w, serve, drains))
}

/// The main scenario with `whenScaled: Retain`: scaled 3 → 1, the four claims of
/// ordinals 6 and 7, handed off by their own pods from `preStop`, are copied by mover Jobs and
/// each latest snapshot restores byte for byte to the claim's PV directory; the claims stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_with_retain_drains_every_claim_of_the_scaled_away_pods() -> Result<()> {
    with_timeout(LIMIT, async {
        let (w, serve, _) = scale_down_drains("e2e-retain", "Retain").await?;
        for (_, pvc) in claims_of(START + 1..START + 3) {
            ensure!(w.claim_uid(&pvc).await?.is_some(), "{pvc} was deleted");
        }
        ensure!(w.holds().await?.is_empty(), "holds: {:?}", w.holds().await?);
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// The same with `whenScaled: Delete`: every claim is held while its pod terminates, drained
/// before it is deleted, and deleted once its drain ends; no hold object is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_with_delete_drains_every_claim_before_it_is_deleted() -> Result<()> {
    with_timeout(LIMIT, async {
        let (w, serve, _) = scale_down_drains("e2e-delete", "Delete").await?;
        eventually("the drained claims deleted, no hold left", WAIT, || async {
            for (_, pvc) in claims_of(START + 1..START + 3) {
                ensure!(w.claim_uid(&pvc).await?.is_none(), "{pvc} is still there");
            }
            let holds = w.holds().await?;
            ensure!(holds.is_empty(), "holds left: {holds:?}");
            Ok(())
        })
        .await?;
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// A rolling restart (`kubectl rollout restart`) of `web` with the preStop hook: every pod
/// hands its claims off and comes back, so every drain ends `not_needed`, no mover Job is
/// created, and the claims keep exactly their data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_drains_nothing() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("e2e-rollout").await?;
        let serve = w.drainer().await?;
        let pods = w.start_web(3, "Retain").await?;
        let mut dirs = BTreeMap::new();
        for (_, pvc) in claims_of(START..START + 3) {
            dirs.insert(pvc.clone(), w.claim_dir(&pvc).await?);
        }
        let kept = w.keep(&dirs)?;
        let restarted_at = chrono::Utc::now().to_rfc3339();
        let patch = Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": restarted_at
        }}}}}));
        w.api::<StatefulSet>()
            .patch("web", &PatchParams::default(), &patch)
            .await?;
        // Every pod is replaced (a new UID, running) ...
        for (name, uid) in &pods {
            eventually(format!("{name} replaced and running"), WAIT, || async {
                let pod = w.running(name).await?;
                ensure!(pod.metadata.uid.as_ref() != Some(uid), "not replaced yet");
                Ok(())
            })
            .await?;
        }
        // ... and each of its claims' handoffs ends not_needed, by that pod.
        let ledger = drainer::Ledger::open(None, &w.work.as_path().join("data")).await?;
        for (o, pvc) in claims_of(START..START + 3) {
            let id = w.drain_of(&serve, &pvc).await?;
            let drain = eventually(format!("the drain of {pvc} ended"), WAIT, || async {
                let drain = serve.drain(&id).await;
                ensure!(drain["state"] == "not_needed", "{drain}");
                Ok(drain)
            })
            .await?;
            let (pod, uid) = &pods[(o - START) as usize];
            assert_handed_off_by(&ledger, &w.ns, &drain, pod, uid).await?;
            let history = history(&drain);
            ensure!(
                history.contains("live") || history.contains("came back"),
                "{pvc}: {history}"
            );
            let all = serve.drains(&format!("volume={}/{pvc}", w.ns)).await;
            ensure!(all.len() == 1, "{pvc}: {} drains", all.len());
        }

        ensure!(w.jobs.all().is_empty(), "mover Jobs: {:?}", w.jobs.all());
        for (pvc, dir) in &dirs {
            let diffs = differences(&kept[pvc], dir);
            ensure!(diffs.is_empty(), "{pvc} changed: {diffs:#?}");
        }
        // Nothing was copied: the store holds nothing of any claim.
        let store_dir = w.work.as_path().join("store");
        let written: Vec<String> = walkdir::WalkDir::new(&store_dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.contains(&w.ns))
            .collect();
        ensure!(written.is_empty(), "written to the store: {written:#?}");
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// A claim of its own (not a StatefulSet's) in the world's namespace, full of awkward files;
/// returns its directory.
async fn standalone_claim(w: &World, pvc: &str) -> Result<PathBuf> {
    w.create_claim(pvc, "1Gi").await?;
    let dir = w.claim_dir(pvc).await?;
    awkward(&dir, 9 * 1024 * 1024);
    Ok(dir)
}

/// drainer's Events about `kind` `name`: (type, reason, note).
async fn events_about(w: &World, kind: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let events = w.api::<Event>().list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            let regarding = e.regarding.clone().unwrap_or_default();
            regarding.kind.as_deref() == Some(kind)
                && regarding.name.as_deref() == Some(name)
                && e.reporting_controller.as_deref() == Some("drainer.io/drainer")
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// The store failing: a drain whose S3 store does not answer is retried with backoff, then is
/// `failing` (never `failed`: its data is still to be saved) with a `Warning` Event on the
/// claim naming the failure; once the store is back, it completes by itself (no retry by
/// hand) and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_store_fails_keeps_failing_then_completes_once_the_store_is_back()
-> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("e2e-store").await?;
        let pvc = "data-web-9";
        let source = standalone_claim(&w, pvc).await?;
        let s3 = S3Server::start().await;
        let switch = Switch::start(&s3.endpoint).await?;
        let store = "s3://bucket/e2e";
        let aws = [
            ("AWS_ENDPOINT", switch.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", crate::support::s3::KEY),
            ("AWS_SECRET_ACCESS_KEY", crate::support::s3::SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ];
        let serve = w
            .start(
                "data",
                store,
                &[
                    "--max-attempts",
                    "3",
                    "--store-timeout",
                    "3",
                    "--max-retry-delay",
                    "10",
                ],
                &aws,
            )
            .await?;
        w.gate.forward_to(&serve.url);
        switch.set(false);
        let (_, drains) = serve.handoff(&w.ns, &[pvc]).await;
        let id = drains[0]["id"].as_str().unwrap_or_default().to_owned();
        let drain = serve.wait_state(&id, "failing", WAIT).await;
        ensure!(drain["attempts"] == 3, "{drain}");
        let error = drain["last_error"].as_str().unwrap_or_default().to_owned();
        ensure!(!error.is_empty(), "no error recorded: {drain}");
        // Each failed attempt waited its backoff (2 s, then 4 s, ±30 %) before the next: the
        // gap between the entry that recorded the failure and the next attempt's start.
        let entries = drain["history"].as_array().cloned().unwrap_or_default();
        let mut waits = Vec::new();
        let first = entries
            .iter()
            .position(|e| e["state"] == "copying")
            .unwrap_or(0);
        for (i, e) in entries.iter().enumerate().skip(first + 1) {
            if e["state"] == "copying" {
                let before = &entries[i - 1];
                ensure!(before["state"] == "queued", "{}", history(&drain));
                waits
                    .push(e["at_ms"].as_i64().unwrap_or(0) - before["at_ms"].as_i64().unwrap_or(0));
            }
        }
        ensure!(
            waits.len() == 2 && waits[0] >= 1400 && waits[1] >= 2800,
            "retries without their backoff (waited {waits:?} ms): {}",
            history(&drain)
        );
        // A Job per attempt; the failed ones are kept for their logs. Those the Job watch saw
        // and those still listed: a watch that restarts under load misses a short-lived one.
        let selector = format!(
            "{}={}",
            drainer_kube::hold::DRAIN_LABEL,
            mover_jobs::drain_label(&id)
        );
        let listed = w
            .api::<Job>()
            .list(&ListParams::default().labels(&selector))
            .await?;
        let jobs: BTreeSet<String> = listed
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .chain(w.jobs.of(&id))
            .collect();
        ensure!(jobs.len() >= 3, "Jobs: {jobs:?}");
        let events = eventually(
            "a Warning Event saying the drain keeps failing",
            WAIT,
            || async {
                let events = events_about(&w, "PersistentVolumeClaim", pvc).await?;
                ensure!(
                    events.iter().any(|(type_, reason, note)| type_ == "Warning"
                        && reason == "Failing"
                        && note.contains(&format!("drain {id} of {}/{pvc} keeps failing", w.ns))),
                    "{events:#?}"
                );
                Ok(events)
            },
        )
        .await?;
        let failed = events
            .iter()
            .find(|(t, r, n)| {
                t == "Warning" && r == "Failing" && n.contains(&format!("drain {id} of"))
            })
            .map(|(_, _, n)| n.clone())
            .unwrap_or_default();
        let retrying = events
            .iter()
            .filter(|(t, _, n)| t == "Warning" && n.contains("retrying later"))
            .count();
        ensure!(
            retrying >= 1,
            "no Warning for the retried attempts: {events:#?}"
        );
        // It names the failure: the store that failed, as the drain's last error says.
        ensure!(
            failed.contains(&format!("store {store}"))
                && failed.contains(&error[..error.len().min(60)]),
            "the Event does not name the failure {error:?}: {failed}"
        );
        // The store is back: the drain completes by itself, at its next attempt.
        switch.set(true);
        let drain = serve.wait_state(&id, "completed", WAIT).await;
        ensure!(
            !history(&drain).contains("retried by"),
            "{}",
            history(&drain)
        );
        let dest = w.work.as_path().join("restored");
        let mut restore = drainer();
        restore
            .arg("restore")
            .arg(store)
            .args(["--volume", &format!("{}/{pvc}", w.ns)])
            .arg(&dest);
        s3.configure(&mut restore);
        run_ok(&mut restore).await;
        let diffs = differences(&source, &dest);
        ensure!(diffs.is_empty(), "{pvc} differs after restore: {diffs:#?}");
        serve.terminate(Duration::from_secs(20)).await;
        drop(switch);
        w.finish().await
    })
    .await
}

/// drainer killed with SIGKILL while a mover Job uploads a part of a large file, and started
/// again on the same ledger: the restarted drainer takes the drain over and adopts the Job;
/// the drain completes with exactly one copy run, by that one Job, and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_killed_mid_copy_completes_the_drain_with_one_run() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("e2e-kill9").await?;
        let pvc = "data-web-4";
        let source = standalone_claim(&w, pvc).await?;
        let mut serve = w.drainer().await?;
        w.gate.hold_next("/uploads/");
        let (_, drains) = serve.handoff(&w.ns, &[pvc]).await;
        let id = drains[0]["id"].as_str().unwrap_or_default().to_owned();
        // The mover is uploading a part of the large file: certainly mid-copy.
        w.gate.wait_held().await?;
        ensure!(serve.drain(&id).await["state"] == "copying");
        let job = format!("drainer-{id}-1");
        ensure!(serve.drain(&id).await["mover_job"] == job.as_str());
        serve.kill9_and_restart(async {}).await;
        w.gate.forward_to(&serve.url);
        // The lease of the killed drainer expires; the restarted one takes the drain over.
        eventually("the drain taken over", WAIT, || async {
            let drain = serve.drain(&id).await;
            ensure!(
                drain["state"] == "copying" && history(&drain).contains("copying"),
                "{drain}"
            );
            let owners: BTreeSet<String> = drain["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["state"] == "copying")
                .filter_map(|e| e["owner"].as_str().map(str::to_owned))
                .collect();
            let copying = drain["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["state"] == "copying")
                .count();
            ensure!(copying >= 2, "not taken over yet ({owners:?}): {drain}");
            Ok(())
        })
        .await?;
        w.gate.release();
        let drain = serve.wait_state(&id, "completed", WAIT).await;
        ensure!(drain["mover_job"] == job.as_str(), "{drain}");
        ensure!(
            w.jobs.of(&id) == BTreeSet::from([job.clone()]),
            "Jobs: {:?}",
            w.jobs.of(&id)
        );
        let ledger = drainer::Ledger::open(None, &w.work.as_path().join("data")).await?;
        let volume: drainer::VolumeId = format!("{}/{pvc}", w.ns).parse()?;
        let runs = ledger.runs(&volume).await?;
        ensure!(runs.len() == 1, "runs: {runs:#?}");
        ensure!(
            runs[0].state == drainer_core::ledger::RunState::Completed,
            "{runs:#?}"
        );
        ensure!(runs[0].drain.as_deref() == Some(id.as_str()), "{runs:#?}");

        assert_restores_exactly(&w.store(), &w.ns, pvc, &source, w.work.as_path()).await;
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// Two drainer replicas on one PostgreSQL ledger behind one Service-like address: a
/// scale-down drains every claim with one mover Job per drain; the mover request that holds
/// `hold` in its path is held at the gate, the replica that holds that drain is killed with
/// SIGKILL, and the request is let through at once, or (`after_takeover`) only once the other
/// replica has taken the drain over. Every drain completes, with one Job and one copy run,
/// and restores exactly.
///
/// Each replica may copy all four drains at once ([`DRAINS_AT_ONCE`]): a replica whose slots
/// are all taken claims nothing, so with the default of two the survivor would take the
/// killed replica's drains over only once its own drains were done, which on a loaded machine
/// can be after the held request has timed out in the mover (120 s) and been sent again.
async fn replicas_lose_one(prefix: &str, hold: &str, after_takeover: bool) -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new(prefix).await?;
        let database = fresh_postgres_database().await;
        let store = w.store();
        let replica = |n: &'static str| {
            let data = format!("data-{n}");
            let (w, database, store) = (&w, database.clone(), store.clone());
            async move {
                w.start(
                    &data,
                    &store,
                    &[
                        "--database-url",
                        &database,
                        "--replica-id",
                        n,
                        "--concurrent-drains",
                        DRAINS_AT_ONCE,
                    ],
                    &[],
                )
                .await
            }
        };
        let a = replica("replica-a").await?;
        let b = replica("replica-b").await?;
        let proxy = Proxy::start(vec![a.url.clone(), b.url.clone()]).await;
        w.gate.forward_to(&proxy.url);
        let pods = w.start_web(3, "Retain").await?;
        let mut dirs = BTreeMap::new();
        for (_, pvc) in claims_of(START + 1..START + 3) {
            dirs.insert(pvc.clone(), w.claim_dir(&pvc).await?);
        }
        let kept = w.keep(&dirs)?;
        w.gate.hold_next(hold);
        w.scale("web", 1).await?;
        w.gate.wait_held().await?;
        let held = w
            .gate
            .log()
            .into_iter()
            .find_map(|l| {
                let path = l.strip_prefix("HELD ")?.split_whitespace().nth(1)?;
                let drain = path.strip_prefix("/v1/drains/")?.split('/').next()?;
                Some(drain.to_owned())
            })
            .context("the held request")?;
        let copying = a.drain(&held).await;
        ensure!(copying["state"] == "copying", "{copying}");
        let owner = copying["lease_owner"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (killed, alive) = match owner.as_str() {
            "replica-a" => (a, b),
            "replica-b" => (b, a),
            other => bail!("copying drain held by {other:?}: {copying}"),
        };
        let logs = [killed.log_path(), alive.log_path()];
        killed.kill9().await;
        if after_takeover {
            eventually("the held drain taken over", WAIT, || async {
                let drain = alive.drain(&held).await;
                let last = drain["history"]
                    .as_array()
                    .and_then(|h| h.last().cloned())
                    .unwrap_or_default();
                ensure!(
                    last["state"] == "copying" && last["owner"] != owner.as_str(),
                    "{}",
                    history(&drain)
                );
                Ok(())
            })
            .await
            .with_context(|| {
                let [killed, alive] = logs.each_ref().map(|l| log_tail(l, 80));
                format!("killed replica's log:\n{killed}\nsurviving replica's log:\n{alive}")
            })?;
        }
        w.gate.release();

        let mut ids = BTreeMap::new();
        for pvc in dirs.keys() {
            ids.insert(pvc.clone(), w.drain_of(&alive, pvc).await?);
        }
        let ended = alive
            .wait_ended(&ids.values().cloned().collect::<Vec<_>>(), WAIT)
            .await;
        for drain in &ended {
            ensure!(drain["state"] == "completed", "{drain}");
        }
        let ledger = drainer::Ledger::open(Some(&database), Path::new("unused")).await?;
        for (o, pvc) in claims_of(START + 1..START + 3) {
            let id = &ids[&pvc];
            let drain = alive.drain(id).await;
            let (pod, uid) = &pods[(o - START) as usize];
            assert_handed_off_by(&ledger, &w.ns, &drain, pod, uid).await?;
            ensure!(
                w.jobs.of(id).len() == 1,
                "{pvc}: Jobs {:?} ({drain})",
                w.jobs.of(id)
            );
            let volume: drainer::VolumeId = format!("{}/{pvc}", w.ns).parse()?;
            let runs = ledger.runs(&volume).await?;
            ensure!(runs.len() == 1, "{pvc}: runs {runs:#?}");
            ensure!(differences(&kept[&pvc], &dirs[&pvc]).is_empty());
            assert_restores_exactly(&store, &w.ns, &pvc, &dirs[&pvc], w.work.as_path()).await;
        }
        // The drain of the killed replica was taken over by the other one.
        let taken = alive.drain(&held).await;
        let owners: Vec<&str> = taken["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["state"] == "copying" || e["state"] == "completed")
            .filter_map(|e| e["owner"].as_str())
            .collect();
        ensure!(
            owners.first() == Some(&owner.as_str()) && owners.last() != Some(&owner.as_str()),
            "the held drain was not taken over: {}",
            history(&taken)
        );
        alive.terminate(Duration::from_secs(20)).await;
        drop(proxy);
        w.finish().await
    })
    .await
}

/// Drains each replica of [`replicas_lose_one`] copies at once: all of the scale-down's.
const DRAINS_AT_ONCE: &str = "4";

/// Two replicas; the replica holding a drain is killed while its mover sends its last
/// request, which then reaches the other replica: the copy completes there before the dead
/// replica's lease passes, and the takeover finishes the drain without a second Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_drain_a_scale_down_and_survive_losing_one() -> Result<()> {
    replicas_lose_one("e2e-replicas", "/finish", false).await
}

/// Two replicas; the replica holding a drain is killed while its mover uploads a part of a
/// large file: the other replica takes the drain over and adopts the running Job, whose mover
/// goes on through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_the_survivor_adopts_the_killed_replicas_mover_job() -> Result<()> {
    replicas_lose_one("e2e-replicas-adopt", "/uploads/", true).await
}

/// Replicas of the StatefulSet scaled to zero at once in
/// `fifty_claims_orphaned_at_once_are_drained_with_bounded_concurrency`.
const FIFTY: u32 = 50;
/// Its `--concurrent-drains`.
const BOUND: usize = 4;

/// What each of the fifty pods runs: once per claim, a few small files of its own (its name and
/// UID, random bytes of a size that depends on its ordinal, a name with spaces in a
/// subdirectory), then it waits for SIGTERM and exits at once, with no hook.
const SMALL_WRITER: &str = r#"set -e
if [ ! -e /data/.written ]; then
  printf '%s %s\n' "$POD_NAME" "$POD_UID" > /data/owner.txt
  mkdir -p "/data/sub dir"
  head -c $((4096 + ${POD_NAME##*-} * 1031)) /dev/urandom > "/data/sub dir/random.bin"
  printf 'ordinal %s\n' "${POD_NAME##*-}" > "/data/sub dir/name with spaces"
  : > /data/.written
fi
trap 'exit 0' TERM
while :; do sleep 3600 & wait $!; done
"#;

/// The peak resident set size (`VmHWM`) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// "50 PVCs orphaned at once": a StatefulSet of 50 pods without any hook is
/// scaled to zero in one step; drainer (`--concurrent-drains 4`, no sweep) catches every
/// condemned pod as it terminates, never runs more than 4 mover Jobs at once, and completes
/// all 50 drains, each with one Job and one copy run, every latest snapshot restoring byte for
/// byte to its claim's data. With `Delete`, every claim is also held from the garbage
/// collector until its drain ends, and deleted afterwards, no hold left.
async fn fifty_at_once(prefix: &str, when_scaled: &str) -> Result<()> {
    with_timeout(Duration::from_secs(1200), async {
        let w = World::new(prefix).await?;
        let bound = BOUND.to_string();
        let serve = w
            .start("data", &w.store(), &["--concurrent-drains", &bound], &[])
            .await?;
        w.gate.forward_to(&serve.url);
        let set = web_with(FIFTY, when_scaled, &["data"], SMALL_WRITER, None);
        let pods = w.start_set(&set, FIFTY).await?;
        let claims: Vec<(u32, String)> = (START..START + FIFTY)
            .map(|o| (o, format!("data-web-{o}")))
            .collect();
        let mut dirs = BTreeMap::new();
        let mut uids = BTreeMap::new();
        for (_, pvc) in &claims {
            dirs.insert(pvc.clone(), w.claim_dir(pvc).await?);
            uids.insert(pvc.clone(), w.claim_uid(pvc).await?.context("claim")?);
        }
        let kept = w.keep(&dirs)?;

        let before = Counters::read(&serve.url).await?;
        let scaled_ms = chrono::Utc::now().timestamp_millis();
        let scaled = Instant::now();
        let mut all_held_after = None;
        w.scale("web", 0).await?;
        let mut ids = BTreeMap::new();
        for (_, pvc) in &claims {
            ids.insert(pvc.clone(), w.drain_of(&serve, pvc).await?);
        }
        let within = Duration::from_secs(600);
        let deadline = Instant::now() + within;
        let mut held = BTreeSet::new();
        let drains = loop {
            let mut ended = BTreeMap::new();
            for (pvc, id) in &ids {
                let drain = serve.drain(id).await;
                if drain["hold"] == format!("drainer-hold-{id}").as_str() {
                    held.insert(pvc.clone());
                }
                if held.len() == ids.len() && all_held_after.is_none() {
                    all_held_after = Some(scaled.elapsed());
                }
                match drain["state"].as_str().unwrap_or_default() {
                    "completed" => {
                        ended.insert(pvc.clone(), drain);
                        continue;
                    }
                    "failed" | "cancelled" | "not_needed" => {
                        bail!(
                            "drain of {pvc} ended {}: {}",
                            drain["state"],
                            history(&drain)
                        )
                    }
                    _ => {}
                }
                // Until its drain ends, the claim is the one its pod used.
                let uid = w.claim_uid(pvc).await?;
                ensure!(
                    uid.as_ref() == uids.get(pvc),
                    "{pvc} deleted or replaced before its drain ended"
                );
            }
            ensure!(
                w.jobs.peak() <= BOUND,
                "{} mover Jobs ran at once (--concurrent-drains {BOUND})",
                w.jobs.peak()
            );
            if ended.len() == ids.len() {
                break ended;
            }
            ensure!(
                Instant::now() < deadline,
                "the drains did not complete within {within:?}: {} of {} did",
                ended.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let last_ms = drains
            .values()
            .flat_map(|d| d["history"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["state"] == "completed")
            .filter_map(|e| e["at_ms"].as_i64())
            .max()
            .unwrap_or(scaled_ms);
        let rss = serve.pid().map(peak_rss_kib).transpose()?.unwrap_or(0);
        let spent = Counters::read(&serve.url).await?.since(&before);
        if when_scaled == "Delete" {
            let missing: Vec<_> = ids
                .iter()
                .filter(|(pvc, id)| !held.contains(*pvc) && !w.holds.held(pvc, id))
                .map(|(pvc, _)| pvc)
                .collect();
            ensure!(missing.is_empty(), "claims never seen held: {missing:?}");
        }

        let ledger = drainer::Ledger::open(None, &w.work.as_path().join("data")).await?;
        for (o, pvc) in &claims {
            let drain = &drains[pvc];
            let id = drain["id"].as_str().unwrap_or_default();
            let (pod, uid) = &pods[(o - START) as usize];
            // Found by drainer as the pod terminated (with `Delete`, as soon as the scale-down
            // made it a scaled-away ordinal, before it was deleted), not handed off, not swept.
            let first = drain["history"][0]["message"].as_str().unwrap_or_default();
            let doomed = format!("pod {pod} of web is a scaled-away ordinal whose claims");
            ensure!(
                first.starts_with(&format!("pod {pod} of web is terminating"))
                    || (when_scaled == "Delete" && first.starts_with(&doomed)),
                "{pvc}: {}",
                history(drain)
            );
            ensure!(drain["pod"] == pod.as_str() && drain["pod_uid"] == uid.as_str());
            ensure!(
                drain["attempts"] == 1 && drain["mover_job"] == format!("drainer-{id}-1").as_str(),
                "{pvc}: {drain}"
            );
            ensure!(
                w.jobs.of(id) == BTreeSet::from([format!("drainer-{id}-1")]),
                "{pvc}: Jobs {:?}",
                w.jobs.of(id)
            );
            let volume: drainer::VolumeId = format!("{}/{pvc}", w.ns).parse()?;
            let runs = ledger.runs(&volume).await?;
            ensure!(
                runs.len() == 1
                    && runs[0].state == drainer_core::ledger::RunState::Completed
                    && runs[0].drain.as_deref() == Some(id),
                "{pvc}: runs {runs:#?}"
            );
            // With `Retain` the claim's directory is still there and unchanged; with `Delete`
            // it may be gone: the copy made before the scale-down stands for it.
            let source = if when_scaled == "Retain" {
                let diffs = differences(&kept[pvc], &dirs[pvc]);
                ensure!(diffs.is_empty(), "{pvc} changed: {diffs:#?}");
                &dirs[pvc]
            } else {
                &kept[pvc]
            };
            assert_restores_exactly(&w.store(), &w.ns, pvc, source, w.work.as_path()).await;
        }
        let stuck = std::sync::Mutex::new(String::new());
        eventually(
            "no hold left, the claims as their owner asked",
            WAIT,
            || async {
                let holds = w.holds().await?;
                ensure!(holds.is_empty(), "holds left: {holds:?}");
                for (_, pvc) in &claims {
                    let claim = w.api::<PersistentVolumeClaim>().get_opt(pvc).await?;
                    let there = claim.is_some();
                    *stuck.lock().unwrap() = pvc.clone();
                    ensure!(
                        there == (when_scaled == "Retain"),
                        "{pvc}: there is {there}; its metadata: {:?}",
                        claim.map(|c| {
                            let m = c.metadata;
                            (
                                m.owner_references,
                                m.annotations,
                                m.deletion_timestamp,
                                m.finalizers,
                            )
                        })
                    );
                }
                Ok(())
            },
        )
        .await
        .with_context(|| {
            let pvc = stuck.lock().unwrap().clone();
            let log = std::fs::read_to_string(serve.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("DEBUG") && names_claim(l, &pvc))
                .collect();
            let tail = lines[lines.len().saturating_sub(120)..].join("\n");
            format!("drainer's log of {pvc} (last 120 lines):\n{tail}")
        })?;
        eprintln!(
            "{FIFTY} claims orphaned at once (whenScaled: {when_scaled}): all completed {:.1} s \
             after the scale-down; at most {} mover Jobs at once (--concurrent-drains {BOUND}); \
             drainer's peak RSS (VmHWM) {:.1} MiB",
            (last_ms - scaled_ms) as f64 / 1000.0,
            w.jobs.peak(),
            rss as f64 / 1024.0
        );
        let seconds = (last_ms - scaled_ms) as f64 / 1000.0;
        let per_claim = |n: u64| n as f64 / f64::from(FIFTY);
        eprintln!(
            "  every claim held: {} after the scale-down (polled each second); drainer's \
             Kubernetes API requests {} ({:.1} per claim, {:.1}/s; by method {:?}); ledger \
             writes {} ({:.1} per claim, {:.1}/s)",
            all_held_after.map_or_else(
                || "never all at once (Retain holds none: the claims stay anyway)".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64())
            ),
            spent.api_total(),
            per_claim(spent.api_total()),
            spent.api_total() as f64 / seconds,
            spent.api,
            spent.ledger_writes,
            per_claim(spent.ledger_writes),
            spent.ledger_writes as f64 / seconds,
        );
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// drainer's request and write counters, read from its `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    /// `drainer_kube_api_requests_total` by method.
    api: BTreeMap<String, u64>,
    /// `drainer_ledger_writes_total`.
    ledger_writes: u64,
}

impl Counters {
    async fn read(url: &str) -> Result<Self> {
        let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
        let mut counters = Self::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if let Some(labels) = name.strip_prefix("drainer_kube_api_requests_total{method=\"") {
                let method = labels.trim_end_matches("\"}").to_owned();
                counters.api.insert(method, value as u64);
            } else if name == "drainer_ledger_writes_total" {
                counters.ledger_writes = value as u64;
            }
        }
        Ok(counters)
    }

    /// What was counted since `earlier`.
    fn since(&self, earlier: &Counters) -> Counters {
        let api = self
            .api
            .iter()
            .map(|(m, n)| (m.clone(), n - earlier.api.get(m).copied().unwrap_or(0)))
            .collect();
        Counters {
            api,
            ledger_writes: self.ledger_writes - earlier.ledger_writes,
        }
    }

    fn api_total(&self) -> u64 {
        self.api.values().sum()
    }
}

/// Whether log line `line` names claim `pvc` (not another claim whose name starts with it).
fn names_claim(line: &str, pvc: &str) -> bool {
    line.match_indices(pvc).any(|(at, _)| {
        !line[at + pvc.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// 50 claims orphaned at once with `whenScaled: Retain` (see [`fifty_at_once`]): the claims
/// stay, so each restore is compared with the claim's own directory after its drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_claims_orphaned_at_once_are_drained_with_bounded_concurrency() -> Result<()> {
    fifty_at_once("e2e-fifty", "Retain").await
}

/// 50 claims orphaned at once with `whenScaled: Delete` (see [`fifty_at_once`]): each claim
/// is held from the garbage collector from the moment the scale-down makes its pod a
/// scaled-away ordinal (before the StatefulSet controller deletes the pod, which exits at once
/// on SIGTERM) until its drain ends; no claim is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_claims_orphaned_at_once_with_delete_are_held_until_drained() -> Result<()> {
    fifty_at_once("e2e-fifty-delete", "Delete").await
}

// ---- A claim is never given up before its data is safe, even while drainer is down.

/// Whether claim `pvc` carries drainer's standing guard.
async fn is_guarded(w: &World, pvc: &str) -> Result<bool> {
    Ok(w.api::<PersistentVolumeClaim>()
        .get_opt(pvc)
        .await?
        .is_some_and(|c| guard::is_guarded(&c)))
}

/// Waits until every claim in `pvcs` carries drainer's guard.
async fn wait_guarded(w: &World, pvcs: &[String]) -> Result<()> {
    eventually("the claims guarded", WAIT, || async {
        for pvc in pvcs {
            ensure!(is_guarded(w, pvc).await?, "{pvc} is not guarded yet");
        }
        Ok(())
    })
    .await
}

/// Waits until the pods named are gone and the garbage collector has taken them off the
/// owners of `pvcs` (with `whenScaled: Delete` it would have deleted them, were they not
/// guarded): the claims are still there, owned by nothing of their pods'.
async fn wait_pods_gone_claims_kept(w: &World, pods: &[String], pvcs: &[String]) -> Result<()> {
    eventually("the pods gone and their claims kept", WAIT, || async {
        for pod in pods {
            ensure!(
                w.api::<Pod>().get_opt(pod).await?.is_none(),
                "{pod} is still there"
            );
        }
        for pvc in pvcs {
            let claim = w.api::<PersistentVolumeClaim>().get_opt(pvc).await?;
            let claim = claim.with_context(|| format!("{pvc} was deleted: the guard failed"))?;
            let owners = claim.metadata.owner_references.unwrap_or_default();
            ensure!(
                !owners.iter().any(|o| o.kind == "Pod"),
                "the collector has not looked at {pvc} yet: {owners:?}"
            );
        }
        Ok(())
    })
    .await
}

/// drainer stopped (scaled to 0, or crash-looping), then a `whenScaled:
/// Delete` StatefulSet scaled 4 → 1 (pods without any hook: nobody hands anything off), then
/// back to 2 before drainer returns. The standing guards keep every claim while no drainer
/// runs; back, drainer queues the claims of the two ordinals still scaled away within seconds
/// (a first sweep at start), copies each once, and lets the collector delete them; the
/// ordinal that came back has its own claims again, with their data, and is never drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_while_no_drainer_runs_loses_nothing() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("e2e-down").await?;
        let serve = w.drainer().await?;
        let set = web_with(4, "Delete", &TEMPLATES, WRITER, None);
        w.start_set(&set, 4).await?;
        let all: Vec<String> = claims_of(START..START + 4)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        wait_guarded(&w, &all).await?;
        let mut dirs = BTreeMap::new();
        let mut uids = BTreeMap::new();
        for pvc in &all {
            dirs.insert(pvc.clone(), w.claim_dir(pvc).await?);
            uids.insert(pvc.clone(), w.claim_uid(pvc).await?.context("claim")?);
        }
        let kept = w.keep(&dirs)?;
        let (status, _) = serve.terminate(Duration::from_secs(20)).await;
        ensure!(status.success(), "drainer did not stop cleanly: {status}");

        // No drainer: scaled to one, then ordinal 6 comes back.
        w.scale("web", 1).await?;
        let gone: Vec<String> = (START + 1..START + 4).map(|o| format!("web-{o}")).collect();
        let condemned: Vec<String> = claims_of(START + 1..START + 4)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        wait_pods_gone_claims_kept(&w, &gone, &condemned).await?;
        w.scale("web", 2).await?;
        let back = w.running(&format!("web-{}", START + 1)).await?;
        ensure!(back.metadata.uid.is_some());

        let started = Instant::now();
        let serve = w.drainer().await?;
        let scaled_away: Vec<String> = claims_of(START + 2..START + 4)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let mut ids = BTreeMap::new();
        for pvc in &scaled_away {
            ids.insert(pvc.clone(), w.drain_of(&serve, pvc).await?);
        }
        eprintln!(
            "{} condemned claims queued {:.1} s after drainer started again",
            scaled_away.len(),
            started.elapsed().as_secs_f64()
        );
        let ended = serve
            .wait_ended(&ids.values().cloned().collect::<Vec<_>>(), WAIT)
            .await;
        for drain in &ended {
            ensure!(drain["state"] == "completed", "{}", history(drain));
        }
        for pvc in &scaled_away {
            let drains = serve.drains(&format!("volume={}/{pvc}", w.ns)).await;
            ensure!(drains.len() == 1, "{pvc} drained {} times", drains.len());
            assert_restores_exactly(&w.store(), &w.ns, pvc, &kept[pvc], w.work.as_path()).await;
        }
        eventually("the drained claims deleted, no hold left", WAIT, || async {
            for pvc in &scaled_away {
                ensure!(w.claim_uid(pvc).await?.is_none(), "{pvc} is still there");
            }
            let holds = w.holds().await?;
            ensure!(holds.is_empty(), "holds left: {holds:?}");
            Ok(())
        })
        .await?;
        // Ordinals 5 and 6: their own claims, their data, guarded still, never drained.
        for (_, pvc) in claims_of(START..START + 2) {
            ensure!(
                w.claim_uid(&pvc).await? == uids.get(&pvc).cloned(),
                "{pvc} was replaced"
            );
            ensure!(
                differences(&kept[&pvc], &dirs[&pvc]).is_empty(),
                "{pvc} changed"
            );
            let drains = serve.drains(&format!("volume={}/{pvc}", w.ns)).await;
            ensure!(drains.is_empty(), "{pvc} was drained: {drains:?}");
            ensure!(is_guarded(&w, &pvc).await?, "{pvc} lost its guard");
        }
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// `drainer.io/drain: "false"` takes the guard off a claim; with drainer
/// stopped, `drainer release-guards` (the uninstall step) lets go of every guard: the claims of
/// the ordinal scaled away meanwhile are deleted by the collector as their policy asks,
/// every other claim stays, without drainer's guard; `--dry-run` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_or_releasing_the_guards_lets_the_collector_do_what_the_policy_asks()
-> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("e2e-release").await?;
        let serve = w.drainer().await?;
        let set = web_with(3, "Delete", &TEMPLATES, WRITER, None);
        w.start_set(&set, 3).await?;
        let all: Vec<String> = claims_of(START..START + 3)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        wait_guarded(&w, &all).await?;
        let opted = format!("data-web-{START}");
        let patch =
            Patch::Merge(json!({"metadata": {"annotations": {"drainer.io/drain": "false"}}}));
        w.api::<PersistentVolumeClaim>()
            .patch(&opted, &PatchParams::default(), &patch)
            .await?;
        eventually("the opted-out claim unguarded", WAIT, || async {
            ensure!(!is_guarded(&w, &opted).await?, "still guarded");
            Ok(())
        })
        .await?;
        serve.terminate(Duration::from_secs(20)).await;

        w.scale("web", 2).await?;
        let condemned: Vec<String> = claims_of([START + 2]).into_iter().map(|(_, c)| c).collect();
        wait_pods_gone_claims_kept(&w, &[format!("web-{}", START + 2)], &condemned).await?;
        let kubeconfig =
            std::env::var(crate::support::kube::KUBECONFIG_ENV).context("the kubeconfig")?;
        let release = |dry: bool| {
            let mut cmd = drainer();
            cmd.args(["release-guards", "--namespace", &w.ns])
                .env("KUBECONFIG", &kubeconfig);
            if dry {
                cmd.arg("--dry-run");
            }
            cmd
        };
        let said = run_ok(&mut release(true)).await;
        ensure!(
            said.contains("2 let go") && said.contains("dry run"),
            "{said}"
        );
        for pvc in &all {
            ensure!(w.claim_uid(pvc).await?.is_some(), "--dry-run deleted {pvc}");
        }
        ensure!(is_guarded(&w, &all[1]).await?, "--dry-run changed a guard");
        let said = run_ok(&mut release(false)).await;
        ensure!(said.contains("3 claims kept, 2 let go"), "{said}");
        eventually(
            "the scaled-away claims deleted by the collector",
            WAIT,
            || async {
                for pvc in &condemned {
                    ensure!(w.claim_uid(pvc).await?.is_none(), "{pvc} is still there");
                }
                Ok(())
            },
        )
        .await?;
        for (_, pvc) in claims_of(START..START + 2) {
            let claim = w.api::<PersistentVolumeClaim>().get(&pvc).await?;
            ensure!(!guard::is_guarded(&claim), "{pvc} still guarded");
            let owners = claim.metadata.owner_references.unwrap_or_default();
            ensure!(owners.is_empty(), "{pvc} owners left: {owners:?}");
            let annotations = claim.metadata.annotations.unwrap_or_default();
            ensure!(
                !annotations.contains_key(guard::GUARD_ANNOTATION),
                "{pvc}: {annotations:?}"
            );
        }
        ensure!(w.holds().await?.is_empty(), "holds: {:?}", w.holds().await?);
        w.finish().await
    })
    .await
}

/// The store unreachable for three minutes in the middle of a
/// `whenScaled: Delete` scale-down 3 → 1. The drains use up their attempts and are `failing`
/// (a Warning Event on each claim), never `failed`: their claims stay held. Meanwhile someone
/// deletes one drain's hold and strips the guard off a live claim: drainer puts both back and
/// says so. One drain is abandoned (cancel is refused while it holds its claim): its claim is
/// let go, with a Warning Event. When the store is back the other drains complete by
/// themselves, each restores exactly, and their claims are deleted after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_during_a_scale_down_with_delete_loses_nothing() -> Result<()> {
    with_timeout(LIMIT + Duration::from_secs(180), async {
        let w = World::new("e2e-outage").await?;
        let s3 = S3Server::start().await;
        let switch = Switch::start(&s3.endpoint).await?;
        let store = "s3://bucket/outage";
        let aws = s3_env(&switch.endpoint);
        let aws: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let serve = w
            .start(
                "data",
                store,
                &[
                    "--max-attempts",
                    "2",
                    "--max-retry-delay",
                    "30",
                    "--store-timeout",
                    "3",
                ],
                &aws,
            )
            .await?;
        w.gate.forward_to(&serve.url);
        let set = web_with(3, "Delete", &TEMPLATES, WRITER, None);
        w.start_set(&set, 3).await?;
        let all: Vec<String> = claims_of(START..START + 3)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        wait_guarded(&w, &all).await?;
        let mut dirs = BTreeMap::new();
        for pvc in &all {
            dirs.insert(pvc.clone(), w.claim_dir(pvc).await?);
        }
        let kept = w.keep(&dirs)?;
        let outage = Instant::now();
        switch.set(false);
        w.scale("web", 1).await?;
        let condemned: Vec<String> = claims_of(START + 1..START + 3)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let mut ids = BTreeMap::new();
        for pvc in &condemned {
            ids.insert(pvc.clone(), w.drain_of(&serve, pvc).await?);
        }
        // Each drain as first seen failing (all watched at once: a drain left failing while
        // another is waited for would be in its next slow retry by the time it is read).
        let mut first_failing = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        while first_failing.len() < ids.len() {
            for (pvc, id) in &ids {
                let drain = serve.drain(id).await;
                if drain["state"] == "failing" && !first_failing.contains_key(pvc) {
                    first_failing.insert(pvc.clone(), drain);
                }
            }
            ensure!(
                Instant::now() < deadline,
                "not all failing: {first_failing:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (pvc, drain) in &first_failing {
            let id = &ids[pvc];
            ensure!(drain["attempts"] == 2, "{pvc}: {}", history(drain));
            ensure!(
                drain["hold"] == hold::hold_name(id).as_str(),
                "{pvc} not held: {drain}"
            );
        }
        let failing = format!("data-web-{}", START + 1);
        eventually(
            "a Warning Event saying the drain keeps failing",
            WAIT,
            || async {
                let events = events_about(&w, "PersistentVolumeClaim", &failing).await?;
                ensure!(
                    events.iter().any(|(t, r, n)| t == "Warning"
                        && r == "Failing"
                        && n.contains("stays held")),
                    "{events:#?}"
                );
                Ok(())
            },
        )
        .await?;

        // Someone deletes a hold, and strips the guard off a live claim: both come back.
        let victim = &condemned[1];
        let hold_of_victim = hold::hold_name(&ids[victim]);
        w.api::<ConfigMap>()
            .delete(&hold_of_victim, &Default::default())
            .await?;
        let live = format!("data-web-{START}");
        let claim = w.api::<PersistentVolumeClaim>().get(&live).await?;
        let stripped = Patch::Merge(json!({"metadata": {
            "resourceVersion": claim.metadata.resource_version,
            "ownerReferences": [],
        }}));
        w.api::<PersistentVolumeClaim>()
            .patch(&live, &PatchParams::default(), &stripped)
            .await?;
        eventually("the hold and the guard put back", WAIT, || async {
            ensure!(w.holds().await?.contains(&hold_of_victim), "hold not back");
            let claim = w.api::<PersistentVolumeClaim>().get(victim).await?;
            ensure!(
                hold::holds(&claim, &hold_of_victim),
                "{victim} not held again"
            );
            ensure!(is_guarded(&w, &live).await?, "{live} not guarded again");
            let drain = serve.drain(&ids[victim]).await;
            ensure!(
                history(&drain).contains("removed by someone else"),
                "{}",
                history(&drain)
            );
            Ok(())
        })
        .await?;
        let warned = events_about(&w, "PersistentVolumeClaim", &live).await?;
        ensure!(
            warned
                .iter()
                .any(|(t, r, _)| t == "Warning" && r == "ProtectionRemoved"),
            "{warned:#?}"
        );

        // Cancelling a drain that holds its claim is refused; abandoning it lets it go.
        let abandoned = &condemned[0];
        let id = &ids[abandoned];
        let (status, body) = serve
            .call(
                reqwest::Method::POST,
                &format!("/v1/drains/{id}/cancel"),
                None,
            )
            .await;
        ensure!(
            status == 409 && body["error"]["code"] == "claim_held",
            "{status} {body}"
        );
        let (status, body) = serve
            .call(
                reqwest::Method::POST,
                &format!("/v1/drains/{id}/abandon"),
                Some(json!({"reason": " "})),
            )
            .await;
        ensure!(
            status == 400,
            "an abandon without a reason: {status} {body}"
        );
        let why = "the test gives this copy up";
        let (status, body) = serve
            .call(
                reqwest::Method::POST,
                &format!("/v1/drains/{id}/abandon"),
                Some(json!({"reason": why})),
            )
            .await;
        ensure!(
            status == 200 && body["state"] == "abandoned",
            "{status} {body}"
        );
        eventually(
            "the abandoned claim let go, with a Warning",
            WAIT,
            || async {
                ensure!(
                    w.claim_uid(abandoned).await?.is_none(),
                    "{abandoned} is still there"
                );
                let events = events_about(&w, "PersistentVolumeClaim", abandoned).await;
                ensure!(
                    events
                        .unwrap_or_default()
                        .iter()
                        .any(|(t, r, n)| t == "Warning" && r == "Abandoned" && n.contains(why)),
                    "no Abandoned Event"
                );
                Ok(())
            },
        )
        .await?;
        let drain = serve.drain(id).await;
        ensure!(
            history(&drain).contains(&format!("abandoned by admin: {why}")),
            "{}",
            history(&drain)
        );

        // Three minutes after the store went away, it is back: the rest complete by themselves.
        tokio::time::sleep(Duration::from_secs(180).saturating_sub(outage.elapsed())).await;
        for (pvc, id) in &ids {
            if pvc == abandoned {
                continue;
            }
            // Failing, or in one of its slow retries: never given up.
            let drain = serve.drain(id).await;
            ensure!(
                drain["state"] == "failing" || drain["state"] == "copying",
                "{pvc} during the outage: {}",
                history(&drain)
            );
            ensure!(
                w.claim_uid(pvc).await?.is_some(),
                "{pvc} was deleted during the outage"
            );
        }
        switch.set(true);
        for (pvc, id) in &ids {
            if pvc == abandoned {
                continue;
            }
            let drain = serve.wait_state(id, "completed", WAIT).await;
            let entries = history(&drain);
            ensure!(
                !entries.contains("retried by"),
                "{pvc} needed a hand: {entries}"
            );
            let mut restore = drainer();
            let dest = w.work.as_path().join(format!("restored-{pvc}"));
            restore
                .arg("restore")
                .arg(store)
                .args(["--volume", &format!("{}/{pvc}", w.ns)])
                .arg(&dest);
            s3.configure(&mut restore);
            run_ok(&mut restore).await;
            let diffs = differences(&kept[pvc], &dest);
            ensure!(diffs.is_empty(), "{pvc} differs after restore: {diffs:#?}");
        }
        eventually("the drained claims deleted, no hold left", WAIT, || async {
            for pvc in &condemned {
                ensure!(w.claim_uid(pvc).await?.is_none(), "{pvc} is still there");
            }
            let holds = w.holds().await?;
            ensure!(holds.is_empty(), "holds left: {holds:?}");
            Ok(())
        })
        .await?;
        serve.terminate(Duration::from_secs(20)).await;
        drop(switch);
        w.finish().await
    })
    .await
}

/// The environment that points drainer at an S3 server at `endpoint`.
fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", crate::support::s3::KEY.to_owned()),
        (
            "AWS_SECRET_ACCESS_KEY",
            crate::support::s3::SECRET.to_owned(),
        ),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
    ]
}
