//! Giving the storage back, on kube-env with pods that run (issue 22, item 6): a `Retain`
//! StatefulSet annotated `drainer.io/reclaim-after: 30s`, whose pods hand their claim off from a
//! preStop hook and restore it in an init container (as `kube_restore`'s), is scaled 4 → 1: the
//! three condemned claims are drained (a `drainer mover` the test runs on each claim's
//! directory, as a mover Job would), then deleted by drainer itself — an Event `Reclaiming` on
//! each claim naming its snapshot, `Reclaimed` on the StatefulSet, a ledger record (claim, UID,
//! snapshot, when), listed by `GET /v1/reclaims` as pinned — and scaled to 4 again, the three
//! ordinals start with exactly their data. Scaled to 1 once more, their new claims are drained
//! again, which releases the first pins (the data lives on in the new snapshots), and the
//! retention policy (`--keep-last 1`) then prunes the snapshots they pinned.
//! And what must keep its claim: in a second StatefulSet scaled 4 → 1, ordinal 1 scaled back up
//! before the delay, ordinal 2's claim mounted by another pod after its drain; ordinal 3's
//! claim, reclaimed in the same passes, shows the delay passed for them too.

use crate::kube_restore::{World, fill, web};
use crate::support::image::drainer_image;
use crate::support::kube::{eventually, with_timeout};
use crate::support::run_ok;
use crate::support::tree::differences;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(600);
/// How long a release or a prune may take (passes every 5 s; the drain it needs first).
const WAIT: Duration = Duration::from_secs(180);
/// Every condemned claim's drain copying at once (the test runs their movers in its order).
const ALL_AT_ONCE: [&str; 2] = ["--concurrent-drains", "4"];
/// [`ALL_AT_ONCE`], and a retention policy that keeps one snapshot per claim, applied every
/// 5 s.
const KEEP_ONE: [&str; 6] = [
    "--concurrent-drains",
    "4",
    "--keep-last",
    "1",
    "--prune-interval",
    "5",
];

/// The StatefulSet opted in with `delay`.
fn reclaiming(
    replicas: u32,
    image: &str,
    url: &str,
    delay: &str,
) -> crate::support::cluster::WebSet {
    let mut set = web(replicas, image, url, "Retain");
    set.json()["metadata"]["annotations"] = json!({"drainer.io/reclaim-after": delay});
    set
}

/// One ordinal's claim before the scale-down: its directory, UID, and a copy of its data.
struct Had {
    dir: PathBuf,
    uid: String,
    kept: PathBuf,
}

/// Starts `replicas` ordinals, fills each claim, keeps a copy of what each had.
async fn filled(w: &World, replicas: u64) -> Result<Vec<Had>> {
    let mut had = Vec::new();
    for i in 0..replicas {
        w.running(&format!("web-{i}")).await?;
        let (dir, uid) = w.claim_dir(&format!("data-web-{i}")).await?;
        fill(&dir, i)?;
        let kept = w.work.join(format!("had-{i}"));
        run_ok(
            tokio::process::Command::new("cp")
                .arg("-a")
                .arg(&dir)
                .arg(&kept),
        )
        .await;
        had.push(Had { dir, uid, kept });
    }
    Ok(had)
}

/// Drains the claims of ordinals `ordinals` (highest first); their snapshots, by ordinal.
async fn drained(w: &World, had: &[Had], ordinals: &[usize]) -> Result<Vec<(usize, String)>> {
    let mut snapshots = Vec::new();
    for &i in ordinals {
        let pvc = format!("data-web-{i}");
        w.drain(&pvc, &had[i].dir).await?;
        let drains = w.serve.drains(&format!("volume={}/{pvc}", w.ns)).await;
        let snapshot = drains
            .iter()
            .find(|d| d["state"] == "completed")
            .and_then(|d| d["snapshot"].as_str())
            .with_context(|| format!("a completed drain of {pvc}: {drains:?}"))?;
        snapshots.push((i, snapshot.to_owned()));
    }
    Ok(snapshots)
}

/// drainer's Events in the namespace, as (reason, kind/name of the object, note).
async fn events(w: &World) -> Result<Vec<(String, String, String)>> {
    let list = w.api::<Event>().list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("drainer.io/drainer"))
        .map(|e| {
            let on = e.regarding.unwrap_or_default();
            (
                e.reason.unwrap_or_default(),
                format!(
                    "{}/{}",
                    on.kind.unwrap_or_default(),
                    on.name.unwrap_or_default()
                ),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// The reclaims of the test's namespace as `GET /v1/reclaims` lists them, by claim UID.
async fn listed_reclaims(w: &World) -> Result<BTreeMap<String, Value>> {
    let path = format!("/v1/reclaims?namespace={}", w.ns);
    let (status, body) = w.serve.call(reqwest::Method::GET, &path, None).await;
    ensure!(status == 200, "{status}: {body}");
    let rows = body["reclaims"].as_array().context("no reclaims")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["pvc_uid"].as_str().unwrap_or_default().to_owned(),
                r.clone(),
            )
        })
        .collect())
}

/// The snapshots of claim `pvc` listed through drainer.
async fn snapshots_of(w: &World, pvc: &str) -> Result<Vec<String>> {
    let path = format!("/v1/volumes/{}/{pvc}/snapshots", w.ns);
    let (status, body) = w.serve.call(reqwest::Method::GET, &path, None).await;
    ensure!(status == 200, "{status}: {body}");
    Ok(body["snapshots"]
        .as_array()
        .context("no snapshots")?
        .iter()
        .filter_map(|s| s["snapshot"].as_str().map(str::to_owned))
        .collect())
}

/// The ledger's reclaim records (its SQLite file, read beside the running drainer).
async fn reclaims(w: &World) -> Result<Vec<drainer_core::ledger::Reclaim>> {
    let ledger = drainer::Ledger::open(None, &w.work.join("data")).await?;
    Ok(ledger.reclaims().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_away_claims_are_given_back_and_come_back_with_exactly_their_data() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::with_drainer("kube-reclaim", &KEEP_ONE).await?;
        let image = drainer_image(&w.env).await?;
        reclaiming(4, image, &w.url, "30s").create(&w).await?;
        let had = filled(&w, 4).await?;

        w.scale("web", 1).await?;
        let snapshots = drained(&w, &had, &[3, 2, 1]).await?;
        for i in 1..4 {
            w.claim_gone(&format!("data-web-{i}")).await?;
        }
        // The Events: one before each delete on the claim, naming its snapshot; one after on
        // the StatefulSet.
        let said = events(&w).await?;
        for (i, snapshot) in &snapshots {
            let claim = format!("PersistentVolumeClaim/data-web-{i}");
            ensure!(
                said.iter().any(|(r, on, note)| r == "Reclaiming"
                    && *on == claim
                    && note.contains(snapshot.as_str())),
                "no Reclaiming Event on {claim} naming {snapshot}: {said:#?}"
            );
            ensure!(
                said.iter().any(|(r, on, note)| r == "Reclaimed"
                    && on == "StatefulSet/web"
                    && note.contains(&format!("data-web-{i}"))
                    && note.contains(snapshot.as_str())),
                "no Reclaimed Event on the StatefulSet for data-web-{i}: {said:#?}"
            );
        }
        // The ledger: which claim, its UID, its snapshot, when.
        let recorded = reclaims(&w).await?;
        ensure!(recorded.len() == 3, "{recorded:#?}");
        for (i, snapshot) in &snapshots {
            let r = recorded
                .iter()
                .find(|r| r.pvc == format!("data-web-{i}"))
                .with_context(|| format!("no record of data-web-{i}: {recorded:#?}"))?;
            ensure!(
                r.pvc_uid == had[*i].uid && r.snapshot == *snapshot && r.statefulset == "web",
                "{r:#?}"
            );
            ensure!(r.deleted.is_some_and(|d| d >= r.decided), "{r:#?}");
        }
        // The API lists the same, each snapshot pinned.
        let listed = listed_reclaims(&w).await?;
        for (i, snapshot) in &snapshots {
            let r = &listed[&had[*i].uid];
            ensure!(
                r["snapshot"] == *snapshot.as_str() && r["pinned"] == true,
                "{r}"
            );
        }
        // Ordinal 0 was never touched.
        ensure!(differences(&had[0].kept, &had[0].dir).is_empty());

        w.scale("web", 4).await?;
        let mut back = Vec::new();
        for (i, before) in had.iter().enumerate().skip(1) {
            let pod = w.running(&format!("web-{i}")).await?;
            let log = w.env.container_log(&pod, "restore")?;
            ensure!(log.contains("restored snapshot"), "web-{i}: {log}");
            let (dir, uid) = w.claim_dir(&format!("data-web-{i}")).await?;
            ensure!(uid != before.uid, "web-{i} came back with a new claim");
            let diffs = differences(&before.kept, &dir);
            ensure!(diffs.is_empty(), "web-{i}'s data differs: {diffs:#?}");
            back.push((i, dir));
        }
        released_once_drained_again(&w, &had, &snapshots, &back).await?;
        w.finish().await
    })
    .await
}

/// Scales `web` to 1 again: the claims the ordinals came `back` with are drained, which
/// releases the pins of the first reclaims (each `released_by` the new drain), and `--keep-last
/// 1` prunes the snapshots they pinned.
async fn released_once_drained_again(
    w: &World,
    had: &[Had],
    snapshots: &[(usize, String)],
    back: &[(usize, PathBuf)],
) -> Result<()> {
    w.scale("web", 1).await?;
    let mut drains = BTreeMap::new();
    for (i, dir) in back.iter().rev() {
        let pvc = format!("data-web-{i}");
        w.drain(&pvc, dir).await?;
        let newest = w.serve.drains(&format!("volume={}/{pvc}", w.ns)).await;
        let id = newest
            .first()
            .and_then(|d| d["id"].as_str())
            .context("no drain")?;
        drains.insert(*i, id.to_owned());
    }
    for (i, pinned) in snapshots {
        let (uid, pvc) = (&had[*i].uid, format!("data-web-{i}"));
        eventually(format!("{pvc}'s first pin released"), WAIT, || async {
            let r = listed_reclaims(w)
                .await?
                .remove(uid)
                .context("not listed")?;
            ensure!(r["pinned"] == false, "{r}");
            ensure!(r["released_by"] == *drains[i].as_str(), "{r}");
            Ok(())
        })
        .await?;
        eventually(format!("{pvc}'s pinned snapshot pruned"), WAIT, || async {
            let left = snapshots_of(w, &pvc).await?;
            ensure!(left.len() == 1 && !left.contains(pinned), "{left:?}");
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_claim_and_an_ordinal_back_before_the_delay_keep_their_claims() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::with_drainer("kube-reclaim-keep", &ALL_AT_ONCE).await?;
        let image = drainer_image(&w.env).await?;
        reclaiming(4, image, &w.url, "30s").create(&w).await?;
        let had = filled(&w, 4).await?;

        w.scale("web", 1).await?;
        drained(&w, &had, &[2, 1]).await?;
        // Within the delay: ordinal 1 comes back, and another pod mounts ordinal 2's claim.
        w.scale("web", 2).await?;
        let inspector: Pod = serde_json::from_value(json!({
            "metadata": {"name": "inspector"},
            "spec": {
                "containers": [{"name": "look", "image": "registry.invalid/web:1",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}}]
            }
        }))?;
        w.api::<Pod>()
            .create(&PostParams::default(), &inspector)
            .await?;
        w.running("inspector").await?;
        w.running("web-1").await?;
        // Ordinal 3, drained last and reclaimed by the same rule, shows that the delay has
        // passed for the other two as well.
        drained(&w, &had, &[3]).await?;
        w.claim_gone("data-web-3").await?;

        let claims = w.api::<PersistentVolumeClaim>();
        for i in [1usize, 2] {
            let name = format!("data-web-{i}");
            let claim = claims.get(&name).await?;
            ensure!(
                claim.metadata.uid.as_deref() == Some(had[i].uid.as_str())
                    && claim.metadata.deletion_timestamp.is_none(),
                "{name} was reclaimed: {:?}",
                claim.metadata
            );
            ensure!(
                !claim
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key("drainer.io/reclaim"),
                "{name} is marked for reclaim"
            );
        }
        let recorded = reclaims(&w).await?;
        let pvcs: Vec<&str> = recorded.iter().map(|r| r.pvc.as_str()).collect();
        ensure!(pvcs == ["data-web-3"], "{recorded:#?}");
        let said = events(&w).await?;
        ensure!(
            !said.iter().any(|(r, on, _)| r == "Reclaiming"
                && (on.ends_with("/data-web-1") || on.ends_with("/data-web-2"))),
            "{said:#?}"
        );
        // Ordinal 1 came back to its own claim, data untouched (the restore skipped it).
        ensure!(differences(&had[1].kept, &had[1].dir).is_empty());
        w.finish().await
    })
    .await
}
