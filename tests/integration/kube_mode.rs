//! `drainer serve --kubernetes` against the real control plane of kube-env: pods hand off
//! with projected tokens (identity from TokenReview, confirmed against the live pod), drains
//! wait for the pod's release and are decided from the StatefulSet as it is then, claims that
//! `whenScaled: Delete` would have the garbage collector delete are held until their drain
//! ends, and a condemned pod that hands nothing off is caught as it terminates. The copies are
//! made by a `drainer mover` the test runs on the claim's directory (mover Jobs are tested in
//! `kube_movers`).

use crate::support::cluster::{TestNamespace, WebSet, drain_objects, install_drain_crd, run_mover};
use crate::support::kube::{delete_namespace, eventually, from_json, with_timeout};
use crate::support::serve::{Serve, TOKEN};
use crate::support::{drainer, run_ok};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one test may take in all: a guard against a hung test, not a timing target, so
/// generous enough for a shared two-core machine running other cluster tests beside it.
const LIMIT: Duration = Duration::from_secs(480);
const WAIT: Duration = Duration::from_secs(90);
const AUDIENCE: &str = "drainer";

/// A StatefulSet `web` whose pods (simulated: nothing runs) stay Terminating `delay` when
/// deleted, as pods do while their preStop hook and SIGTERM handler run.
fn web(replicas: u32, when_scaled: &str, delay: &str) -> WebSet {
    WebSet::new(replicas)
        .when_scaled(when_scaled)
        .termination_delay(delay)
        .web_account()
        .default_grace()
        .claims(&["data"], "16Mi")
}

/// A namespace with the ServiceAccount `web` and a drainer serving in Kubernetes mode.
struct World {
    namespace: TestNamespace,
    serve: Serve,
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        let namespace = TestNamespace::with_web_account(prefix).await?;
        let serve = namespace
            .kube_drainer()
            .lease(5)
            .start(&namespace.work.join("data"))
            .await?;
        Ok(Self { namespace, serve })
    }

    async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }

    async fn start_web(
        &self,
        replicas: u32,
        when_scaled: &str,
        delay: &str,
    ) -> Result<Vec<PathBuf>> {
        web(replicas, when_scaled, delay).create(self).await?;
        let mut dirs = Vec::new();
        for i in 0..replicas {
            let dir = self.claim_dir(&format!("data-web-{i}")).await?;
            std::fs::write(dir.join("owner.txt"), format!("web-{i}\n"))?;
            std::fs::write(
                dir.join("payload"),
                crate::support::tree::bytes(i as u64, 300_000),
            )?;
            dirs.push(dir);
        }
        for i in 0..replicas {
            self.pod(&format!("web-{i}")).await?;
        }
        Ok(dirs)
    }

    /// The directory of a bound claim's volume.
    async fn claim_dir(&self, name: &str) -> Result<PathBuf> {
        self.bound_claim_dir(name, WAIT).await
    }

    async fn pod(&self, name: &str) -> Result<Pod> {
        let pods: Api<Pod> = self.api();
        eventually(format!("pod {name} running"), WAIT, || async {
            let pod = pods.get(name).await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            ensure!(phase.as_deref() == Some("Running"), "{phase:?}");
            Ok(pod)
        })
        .await
    }

    /// `POST /v1/handoffs` with `token`.
    async fn handoff(&self, token: &str, pvcs: &[&str]) -> Result<(u16, Value)> {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/handoffs", self.serve.url))
            .bearer_auth(token)
            .json(&json!({"namespace": self.ns, "pvcs": pvcs}))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or_default()))
    }

    async fn drain_state(&self, id: &str, state: &str) -> Result<Value> {
        eventually(format!("drain {id} {state}"), WAIT, || async {
            let drain = self.serve.drain(id).await;
            ensure!(drain["state"] == state, "{}", drain);
            Ok(drain)
        })
        .await
    }

    async fn owners(&self, claim: &str) -> Result<Option<Vec<String>>> {
        let claims: Api<PersistentVolumeClaim> = self.api();
        Ok(claims.get_opt(claim).await?.map(|c| {
            c.metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .map(|o| format!("{}/{}", o.kind, o.name))
                .collect()
        }))
    }

    async fn restores(&self, pvc: &str, expected: &[(&str, Vec<u8>)]) -> Result<()> {
        let dest = self.work.join(format!("restored-{pvc}"));
        run_ok(
            drainer()
                .arg("restore")
                .arg(self.store())
                .args(["--volume", &format!("{}/{pvc}", self.ns)])
                .arg(&dest),
        )
        .await;
        for (name, content) in expected {
            ensure!(
                std::fs::read(dest.join(name))? == *content,
                "{pvc}/{name} differs"
            );
        }
        Ok(())
    }
}

fn id_of(answer: &Value) -> String {
    answer["drains"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_down_pods_handoff_holds_its_claim_until_the_copy_is_done() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-mode-delete").await?;
        w.start_web(3, "Delete", "6s").await?;
        let web2 = w.pod("web-2").await?;
        w.scale("web", 2).await?;
        eventually("web-2 terminating", WAIT, || async {
            let pods: Api<Pod> = w.api();
            let pod = pods.get_opt("web-2").await?.context("gone already")?;
            ensure!(
                pod.metadata.deletion_timestamp.is_some(),
                "not terminating yet"
            );
            Ok(())
        })
        .await?;
        // The preStop hook's handoff: the pod's own token, naming no claim (every one it mounts).
        // drainer held the claim as soon as the scale-down doomed web-2 (`whenScaled: Delete`),
        // so the handoff joins that drain (200) or, had it come first, creates it (202).
        let token = w.token("web", &[AUDIENCE], Some(&web2)).await?;
        let (status, answer) = w.handoff(&token, &[]).await?;
        ensure!(status == 202 || status == 200, "{status} {answer}");
        let id = id_of(&answer);
        ensure!(
            answer["drains"][0]["state"] == "awaiting_release",
            "{answer}"
        );
        ensure!(
            answer["drains"][0]["volume"] == format!("{}/data-web-2", w.ns).as_str(),
            "{answer}"
        );
        let owners = w.owners("data-web-2").await?.context("claim gone")?;
        ensure!(
            owners
                .iter()
                .any(|o| o.starts_with("ConfigMap/drainer-hold-")),
            "not held: {owners:?}"
        );
        // The pod goes; the garbage collector would delete the claim, the hold keeps it.
        let drain = w.drain_state(&id, "copying").await?;
        let history = drain["history"].to_string();
        ensure!(history.contains("scaled away"), "{history}");
        ensure!(
            w.owners("data-web-2").await?.is_some(),
            "the claim was deleted before its copy"
        );
        let dir = w.claim_dir("data-web-2").await?;
        let payload = std::fs::read(dir.join("payload"))?;
        run_mover(&w.serve, &id, &dir).await;
        w.drain_state(&id, "completed").await?;
        w.restores(
            "data-web-2",
            &[("owner.txt", b"web-2\n".to_vec()), ("payload", payload)],
        )
        .await?;
        // The hold is let go and the claim deleted as its StatefulSet asked.
        eventually("data-web-2 deleted after its drain", WAIT, || async {
            ensure!(w.owners("data-web-2").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        w.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_are_refused_to_callers_who_may_not_make_them() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-mode-auth").await?;
        w.start_web(2, "Retain", "1s").await?;
        let web1 = w.pod("web-1").await?;
        let own = w.token("web", &[AUDIENCE], Some(&web1)).await?;
        let (status, answer) = w.handoff(&own, &["data-web-0"]).await?;
        ensure!(
            status == 403 && answer["error"]["code"] == "forbidden",
            "another pod's claim: {status} {answer}"
        );
        let other_audience = w.token("web", &["someone-else"], Some(&web1)).await?;
        let (status, _) = w.handoff(&other_audience, &["data-web-1"]).await?;
        ensure!(status == 401, "a token for another audience: {status}");
        let sas: Api<ServiceAccount> = w.api();
        sas.create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "drain-job"}})),
        )
        .await?;
        let job = w.token("drain-job", &[AUDIENCE], None).await?;
        let (status, answer) = w.handoff(&job, &["data-web-0"]).await?;
        ensure!(status == 403, "a Job without a grant: {status} {answer}");
        let roles: Api<k8s_openapi::api::rbac::v1::Role> = w.api();
        roles.create(&PostParams::default(), &from_json(json!({
            "metadata": {"name": "handoff"},
            "rules": [{"apiGroups": ["drainer.io"], "resources": ["handoffs"], "verbs": ["create"],
                       "resourceNames": ["data-web-0"]}]
        }))).await?;
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = w.api();
        bindings.create(&PostParams::default(), &from_json(json!({
            "metadata": {"name": "handoff"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "handoff"},
            "subjects": [{"kind": "ServiceAccount", "name": "drain-job", "namespace": w.ns}]
        }))).await?;
        let granted = eventually("the grant takes effect", WAIT, || async {
            let (status, answer) = w.handoff(&job, &["data-web-0"]).await?;
            ensure!(status == 202, "{status} {answer}");
            Ok(answer)
        })
        .await?;
        ensure!(
            granted["drains"][0]["state"] == "awaiting_release",
            "{granted}"
        );
        // The Role names one claim (resourceNames): the grant is for it alone.
        let (status, answer) = w.handoff(&job, &["data-web-1"]).await?;
        ensure!(
            status == 403,
            "a claim the Role does not name: {status} {answer}"
        );
        let (status, answer) = w.handoff(&job, &["data-web-0", "data-web-1"]).await?;
        ensure!(
            status == 403,
            "one claim the Role does not name: {status} {answer}"
        );
        // The Job may read the drain it asked for, and nothing else.
        let id = id_of(&granted);
        let read = |token: String, id: String| {
            let url = format!("{}/v1/drains/{id}", w.serve.url);
            async move {
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        };
        ensure!(
            read(job.clone(), id.clone()).await? == 200,
            "the Job reads its drain"
        );
        ensure!(
            read(own.clone(), id.clone()).await? == 403,
            "the pod did not ask for it"
        );
        w.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pods_handoff_ends_not_needed() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-mode-restart").await?;
        w.start_web(2, "Delete", "3s").await?;
        let web0 = w.pod("web-0").await?;
        let token = w.token("web", &[AUDIENCE], Some(&web0)).await?;
        let (status, answer) = w.handoff(&token, &[]).await?;
        ensure!(status == 202, "{status} {answer}");
        let id = id_of(&answer);
        // A restart (rolling update, eviction, crash): the pod is deleted and comes back.
        let pods: Api<Pod> = w.api();
        pods.delete("web-0", &DeleteParams::default()).await?;
        let drain = w.drain_state(&id, "not_needed").await?;
        let history = drain["history"].to_string();
        ensure!(
            history.contains("live") || history.contains("came back"),
            "{history}"
        );
        ensure!(w.owners("data-web-0").await?.is_some(), "the claim stays");
        w.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condemned_pod_that_hands_nothing_off_is_caught_as_it_terminates() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-mode-nohandoff").await?;
        let dirs = w.start_web(2, "Delete", "4s").await?;
        let payload = std::fs::read(dirs[1].join("payload"))?;
        w.scale("web", 1).await?;
        let id = eventually("a drain of data-web-1", WAIT, || async {
            let drains = w.serve.drains(&format!("volume={}/data-web-1", w.ns)).await;
            drains
                .first()
                .and_then(|d| d["id"].as_str())
                .map(str::to_owned)
                .context("none yet")
        })
        .await?;
        let drain = w.drain_state(&id, "copying").await?;
        ensure!(
            drain["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("seen by drainer before any handoff"),
            "{drain}"
        );
        ensure!(
            w.owners("data-web-1").await?.is_some(),
            "the claim was deleted before its copy"
        );
        run_mover(&w.serve, &id, &dirs[1]).await;
        w.drain_state(&id, "completed").await?;
        w.restores("data-web-1", &[("payload", payload)]).await?;
        eventually("data-web-1 deleted after its drain", WAIT, || async {
            ensure!(w.owners("data-web-1").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        w.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_killed_while_a_drain_waits_for_release_picks_it_up_after_a_restart() -> Result<()>
{
    with_timeout(LIMIT, async {
        let mut w = World::new("kube-mode-restart-drainer").await?;
        let dirs = w.start_web(3, "Delete", "8s").await?;
        let payload = std::fs::read(dirs[2].join("payload"))?;
        let web2 = w.pod("web-2").await?;
        w.scale("web", 2).await?;
        let token = w.token("web", &[AUDIENCE], Some(&web2)).await?;
        let (status, answer) = w.handoff(&token, &[]).await?;
        // Joined (200) when drainer's own drain of the doomed ordinal came first.
        ensure!(status == 202 || status == 200, "{status} {answer}");
        let id = id_of(&answer);
        // drainer dies while the pod still terminates, and comes back after the pod is gone.
        let pods: Api<Pod> = w.api();
        let gone = async {
            let waited = eventually("web-2 gone", WAIT, || async {
                ensure!(pods.get_opt("web-2").await?.is_none(), "still there");
                Ok(())
            })
            .await;
            waited.expect("the pod went");
        };
        w.serve.kill9_and_restart(gone).await;
        ensure!(
            w.owners("data-web-2").await?.is_some(),
            "the hold outlived drainer"
        );
        w.drain_state(&id, "copying").await?;
        run_mover(&w.serve, &id, &dirs[2]).await;
        w.drain_state(&id, "completed").await?;
        w.restores("data-web-2", &[("payload", payload)]).await?;
        eventually("data-web-2 deleted after its drain", WAIT, || async {
            ensure!(w.owners("data-web-2").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        w.finish().await
    })
    .await
}

/// `GET` of `path` on drainer with `token`: the status and the body.
async fn get_with(serve: &Serve, token: &str, path: &str) -> Result<(u16, Value)> {
    Ok(serve.call_as(token, reqwest::Method::GET, path, None).await)
}

/// Copies `dir` as a snapshot of `NS/pvc` into the test's store; returns the snapshot's id.
async fn snapshot_of(w: &World, pvc: &str, dir: &Path, ledger: &str) -> Result<String> {
    let volume = format!("{}/{pvc}", w.ns);
    run_ok(
        drainer()
            .arg("copy")
            .arg(dir)
            .arg(w.store())
            .args(["--volume", &volume, "--data-dir"])
            .arg(w.work.join(ledger)),
    )
    .await;
    let (status, listing) =
        get_with(&w.serve, TOKEN, &format!("/v1/volumes/{volume}/snapshots")).await?;
    ensure!(status == 200, "{status} {listing}");
    listing["latest"]
        .as_str()
        .map(str::to_owned)
        .context("no latest")
}

/// Scales `web` from 2 to 1 and drains `web-1`'s claim as its preStop hook would have it
/// (a handoff with the pod's token), the test moving `dir` as its mover; returns the drain.
async fn drain_web_1(w: &World, dir: &Path) -> Result<Value> {
    let web1 = w.pod("web-1").await?;
    w.scale("web", 1).await?;
    let pods: Api<Pod> = w.api();
    eventually("web-1 terminating", WAIT, || async {
        let pod = pods.get_opt("web-1").await?.context("gone already")?;
        ensure!(pod.metadata.deletion_timestamp.is_some(), "not yet");
        Ok(())
    })
    .await?;
    let token = w.token("web", &[AUDIENCE], Some(&web1)).await?;
    let (status, answer) = w.handoff(&token, &[]).await?;
    ensure!(status == 202 || status == 200, "{status} {answer}");
    let id = id_of(&answer);
    w.drain_state(&id, "copying").await?;
    run_mover(&w.serve, &id, dir).await;
    w.drain_state(&id, "completed").await
}

/// The summary of `volume`'s snapshot `id`, as the operator reads it.
async fn summary_of(w: &World, pvc: &str, id: &str) -> Result<Value> {
    let path = format!(
        "/v1/volumes/{}/{pvc}/objects?key=snapshots/{id}/snapshot.json",
        w.ns
    );
    let (status, summary) = get_with(&w.serve, TOKEN, &path).await?;
    ensure!(status == 200, "{status} {summary}");
    Ok(summary)
}

/// A namespace deleted and created again with a claim of the same name and a pod
/// mounting it does not restore the earlier namespace's data: the pod's listing shows only
/// snapshots taken since its namespace was created, and reading an earlier one's objects is
/// refused (403, naming the namespace's UID); the operator still sees and reads both; a
/// snapshot taken in the new life is the pod's to restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_made_again_restores_none_of_the_earlier_ones_snapshots() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-mode-ns-life").await?;
        let dirs = w.start_web(2, "Retain", "1s").await?;
        let old = snapshot_of(&w, "data-web-0", &dirs[0], "ledger-1").await?;
        let first = drain_web_1(&w, &dirs[1]).await?;
        let first = first["snapshot"]
            .as_str()
            .context("no snapshot")?
            .to_owned();
        let claim = summary_of(&w, "data-web-1", &first).await?["drain"]["claim_uid"].clone();
        ensure!(claim.is_string(), "the snapshot records no claim: {claim}");
        let pod = w.pod("web-0").await?;
        let token = w.token("web", &[AUDIENCE], Some(&pod)).await?;
        let listing = format!("/v1/volumes/{}/data-web-0/snapshots", w.ns);
        let (status, seen) = get_with(&w.serve, &token, &listing).await?;
        ensure!(
            status == 200 && seen["latest"] == old.as_str(),
            "first life: {status} {seen}"
        );

        // Another team's namespace of the same name, claim and pod.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
        delete_namespace(&w.client, &w.ns).await?;
        eventually(
            format!("namespace {} gone", w.ns),
            Duration::from_secs(180),
            || async {
                ensure!(namespaces.get_opt(&w.ns).await?.is_none(), "still there");
                Ok(())
            },
        )
        .await?;
        let again = json!({"metadata": {"name": w.ns}});
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(again)?)
            .await?;
        let sas: Api<ServiceAccount> = w.api();
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"}}))?,
        )
        .await?;
        let dirs = w.start_web(2, "Retain", "1s").await?;
        let pod = w.pod("web-0").await?;
        let token = w.token("web", &[AUDIENCE], Some(&pod)).await?;
        let (status, seen) = get_with(&w.serve, &token, &listing).await?;
        ensure!(
            status == 200 && seen["latest"].is_null() && seen["snapshots"] == json!([]),
            "second life lists the first one's snapshots: {status} {seen}"
        );
        for key in [
            format!("snapshots/{old}/snapshot.json"),
            format!("snapshots/{old}/manifest.jsonl"),
            format!("snapshots/{old}/files/payload"),
        ] {
            let path = format!("/v1/volumes/{}/data-web-0/objects?key={key}", w.ns);
            let (status, body) = get_with(&w.serve, &token, &path).await?;
            ensure!(
                status == 403 && body["error"]["code"] == "earlier_namespace",
                "{key}: {status} {body}"
            );
        }
        // The operator reads the first life's snapshot only when it asks to (recorded).
        let summary = format!(
            "/v1/volumes/{}/data-web-0/objects?key=snapshots/{old}/snapshot.json",
            w.ns
        );
        let (status, body) = get_with(&w.serve, TOKEN, &summary).await?;
        ensure!(
            status == 403 && body["error"]["code"] == "earlier_namespace",
            "the operator reads the first life's snapshot without asking: {status} {body}"
        );
        let (status, _) = get_with(&w.serve, TOKEN, &format!("{summary}&earlier=true")).await?;
        ensure!(
            status == 200,
            "the operator reads the first life's snapshot: {status}"
        );

        let new = snapshot_of(&w, "data-web-0", &dirs[0], "ledger-2").await?;
        let (status, seen) = get_with(&w.serve, &token, &listing).await?;
        let ids: Vec<&str> = seen["snapshots"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["snapshot"].as_str())
            .collect();
        ensure!(
            status == 200 && seen["latest"] == new.as_str() && ids == [new.as_str()],
            "second life: {status} {seen}"
        );
        let path = format!(
            "/v1/volumes/{}/data-web-0/objects?key=snapshots/{new}/snapshot.json",
            w.ns
        );
        let (status, body) = get_with(&w.serve, &token, &path).await?;
        ensure!(
            status == 200,
            "the second life's own snapshot: {status} {body}"
        );
        // The new claim data-web-1's copy does not build on the earlier claim's snapshot.
        let second = drain_web_1(&w, &dirs[1]).await?;
        let second = second["snapshot"]
            .as_str()
            .context("no snapshot")?
            .to_owned();
        let summary = summary_of(&w, "data-web-1", &second).await?;
        ensure!(
            summary["parent"].is_null() && summary["drain"]["claim_uid"] != claim,
            "the new claim's snapshot builds on the earlier claim's {first}: {summary}"
        );
        w.finish().await
    })
    .await
}

/// The Drain object `id` once its status says `state` (and the rest of the ledger's row).
async fn drain_object(w: &World, drain: &Value) -> Result<Value> {
    let objects = drain_objects(&w.client, &w.ns);
    let id = drain["id"].as_str().context("no id")?;
    eventually(format!("Drain {id} as the ledger says"), WAIT, || async {
        let object = objects.get_opt(id).await?.context("no object")?;
        let object = serde_json::to_value(&object)?;
        let status = &object["status"];
        ensure!(status["state"] == drain["state"], "{object}");
        ensure!(status["snapshot"] == drain["snapshot"], "{object}");
        ensure!(status["attempts"] == drain["attempts"], "{object}");
        ensure!(object["spec"]["claim"] == drain["pvc"], "{object}");
        Ok(object)
    })
    .await
}

/// A drain handed off from a pod is a Drain object in the claim's namespace whose
/// status follows the ledger to `completed` with the snapshot; `kubectl get drains -A` shows
/// its printer columns; an object deleted by hand comes back; an object deleted, and one whose
/// status was changed, while drainer is down agree with the ledger again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_are_kubernetes_objects_kept_in_step_with_the_ledger() -> Result<()> {
    // The CRD is cluster-wide and part of deploy/base: the tests that install and uninstall
    // deploy/ (or the chart) delete it when they finish, so this one waits for them.
    let _serial = crate::support::install::LOCK.lock().await;
    with_timeout(LIMIT, async {
        install_drain_crd().await?;
        let mut w = World::new("kube-mode-objects").await?;
        let dirs = w.start_web(3, "Retain", "1s").await?;
        let objects = drain_objects(&w.client, &w.ns);
        // web-2's claim drained by its preStop hook's handoff (3 → 2), the test as its mover.
        let first = {
            let web2 = w.pod("web-2").await?;
            w.scale("web", 2).await?;
            let token = w.token("web", &[AUDIENCE], Some(&web2)).await?;
            let (status, answer) = w.handoff(&token, &[]).await?;
            ensure!(status == 202 || status == 200, "{status} {answer}");
            let id = id_of(&answer);
            w.drain_state(&id, "copying").await?;
            run_mover(&w.serve, &id, &dirs[2]).await;
            w.drain_state(&id, "completed").await?
        };
        let snapshot = first["snapshot"]
            .as_str()
            .context("no snapshot")?
            .to_owned();
        let object = drain_object(&w, &first).await?;
        ensure!(
            object["status"]["snapshot"] == snapshot.as_str(),
            "{object}"
        );
        ensure!(
            object["metadata"]["labels"]["drainer.io/claim"] == "data-web-2",
            "{object}"
        );
        ensure!(
            object["spec"]["requestedBy"]
                .as_str()
                .is_some_and(|who| !who.is_empty()),
            "{object}"
        );
        ensure!(
            object["status"]["conditions"][1]["status"] == "True",
            "{object}"
        );
        let id = first["id"].as_str().context("no id")?.to_owned();

        // kubectl get drains -A: the printer columns.
        let env = crate::support::kube::KubeEnv::load()?;
        let out = env.kubectl().args(["get", "drains", "-A"]).output().await?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let header: Vec<&str> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        ensure!(
            header
                == [
                    "NAMESPACE",
                    "NAME",
                    "CLAIM",
                    "STATE",
                    "PROGRESS",
                    "SNAPSHOT",
                    "AGE"
                ],
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains(&id))
            .with_context(|| format!("no row for {id}: {text}"))?;
        let cells: Vec<&str> = row.split_whitespace().collect();
        ensure!(
            cells[..4] == [w.ns.as_str(), id.as_str(), "data-web-2", "completed"],
            "{row}"
        );
        ensure!(row.contains(&snapshot), "{row}");

        // Deleted by hand: made again, with the same status.
        let uid = object["metadata"]["uid"].clone();
        objects.delete(&id, &DeleteParams::default()).await?;
        let again = drain_object(&w, &first).await?;
        ensure!(again["metadata"]["uid"] != uid, "not deleted: {again}");

        // A second drain; drainer dies; meanwhile one object is deleted and the other's status
        // made wrong; after the restart the objects say what the ledger says.
        let second = drain_web_1(&w, &dirs[1]).await?;
        drain_object(&w, &second).await?;
        let id2 = second["id"].as_str().context("no id")?.to_owned();
        let meanwhile = async {
            objects
                .delete(&id, &DeleteParams::default())
                .await
                .expect("deleting an object");
            let wrong = Patch::Merge(json!({"status": {"state": "queued", "snapshot": null}}));
            objects
                .patch_status(&id2, &PatchParams::default(), &wrong)
                .await
                .expect("changing an object's status");
        };
        w.serve.kill9_and_restart(meanwhile).await;
        for drain in [&first, &second] {
            let id = drain["id"].as_str().context("no id")?;
            drain_object(&w, &w.serve.drain(id).await).await?;
        }
        let listed = objects.list(&Default::default()).await?;
        let mut names: Vec<String> = listed
            .items
            .iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect();
        names.sort();
        let mut ids = vec![id, id2];
        ids.sort();
        ensure!(names == ids, "objects {names:?}, ledger {ids:?}");
        w.finish().await
    })
    .await
}
