//! Proves that kube-env (`tests/kube-env`) behaves like a real cluster in the ways drainer
//! depends on: StatefulSet roll-out and scale-down with PVC retention policies, ordinals, Jobs,
//! bound ServiceAccount tokens and RBAC. If one of these fails, drainer's own cluster tests
//! cannot be trusted either.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        authentication::v1::{TokenRequest, TokenReview, TokenReviewStatus},
        batch::v1::Job,
        core::v1::{PersistentVolumeClaim, Pod, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::{Value, json};

use crate::support::cluster::{TestNamespace, WebSet};
use crate::support::kube::{
    EXIT_CODE_ANNOTATION, TERMINATION_DELAY_ANNOTATION, client_with_token, eventually, from_json,
    with_timeout,
};

const TEST_LIMIT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(90);

/// A StatefulSet `web` with one volumeClaimTemplate `data`, in the shape drainer is used with.
fn web_statefulset(replicas: u32, ordinals_start: u32, when_scaled: &str) -> StatefulSet {
    WebSet::new(replicas)
        .ordinals_from(ordinals_start)
        .when_scaled(when_scaled)
        .default_grace()
        .claims(&["data"], "16Mi")
        .build()
}

fn is_running_and_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && status.and_then(|s| s.pod_ip.as_ref()).is_some()
}

/// Waits until exactly the pods `web-N` for `ordinals` exist, all Running and Ready.
async fn wait_for_web_pods(pods: &Api<Pod>, ordinals: &[i32]) -> Result<()> {
    let want: Vec<String> = ordinals.iter().map(|n| format!("web-{n}")).collect();
    eventually(format!("pods {want:?} Running and Ready"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let mut have: Vec<(String, bool)> = list
            .items
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    is_running_and_ready(p),
                )
            })
            .collect();
        have.sort();
        let names: Vec<&String> = have.iter().map(|(n, _)| n).collect();
        ensure!(
            names == want.iter().collect::<Vec<_>>(),
            "pods are {have:?}"
        );
        ensure!(
            have.iter().all(|(_, ready)| *ready),
            "not all ready: {have:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn statefulset_rolls_out_and_scale_down_retains_claims() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-sts-retain").await?;
        let sets: Api<StatefulSet> = namespace.api();
        let pods: Api<Pod> = namespace.api();
        let pvcs: Api<PersistentVolumeClaim> = namespace.api();

        sets.create(&PostParams::default(), &web_statefulset(3, 0, "Retain"))
            .await?;
        wait_for_web_pods(&pods, &[0, 1, 2]).await?;
        let mut dirs = BTreeMap::new();
        for n in 0..3 {
            dirs.insert(
                n,
                namespace
                    .bound_claim_dir(&format!("data-web-{n}"), WAIT)
                    .await?,
            );
        }
        ensure!(
            dirs.values()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 3,
            "claims share a directory: {dirs:?}"
        );
        // Data a pod "wrote" before scale-down, to show it outlives the pod.
        std::fs::write(dirs[&2].join("payload"), b"web-2 was here")?;

        namespace.scale("web", 1).await?;
        wait_for_web_pods(&pods, &[0]).await?;
        eventually("StatefulSet status to show 1 replica", WAIT, || async {
            let status = sets.get_status("web").await?.status.context("no status")?;
            ensure!(
                status.replicas == 1 && status.ready_replicas == Some(1),
                "status is {status:?}"
            );
            Ok(())
        })
        .await?;
        // Retain: the claims of the removed pods stay, bound and untouched by any deletion.
        for n in 1..3 {
            let pvc = pvcs.get(&format!("data-web-{n}")).await?;
            ensure!(
                pvc.metadata.deletion_timestamp.is_none(),
                "data-web-{n} is being deleted"
            );
            let owners = pvc.metadata.owner_references.unwrap_or_default();
            ensure!(owners.is_empty(), "data-web-{n} has owners {owners:?}");
            ensure!(
                pvc.status.and_then(|s| s.phase).as_deref() == Some("Bound"),
                "data-web-{n} not Bound"
            );
        }
        ensure!(std::fs::read(dirs[&2].join("payload"))? == b"web-2 was here");
        namespace.finish().await
    })
    .await
}

#[tokio::test]
async fn statefulset_when_scaled_delete_collects_claims_through_pod_owner() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-sts-delete").await?;
        let sets: Api<StatefulSet> = namespace.api();
        let pods: Api<Pod> = namespace.api();
        let pvcs: Api<PersistentVolumeClaim> = namespace.api();

        sets.create(&PostParams::default(), &web_statefulset(3, 0, "Delete"))
            .await?;
        wait_for_web_pods(&pods, &[0, 1, 2]).await?;
        let mut dirs = Vec::new();
        for n in 0..3 {
            dirs.push(
                namespace
                    .bound_claim_dir(&format!("data-web-{n}"), WAIT)
                    .await?,
            );
        }
        let pod_uids: BTreeMap<String, String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|p| {
                (
                    p.metadata.name.unwrap_or_default(),
                    p.metadata.uid.unwrap_or_default(),
                )
            })
            .collect();

        // Watch the claims from now on: the owner reference is set and the claim collected
        // within moments, so only the watch reliably shows the object as the collector saw it.
        let rv = pvcs
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("no resourceVersion")?;
        let mut events = pvcs
            .watch(&WatchParams::default().timeout(120), &rv)
            .await?
            .boxed();
        namespace.scale("web", 1).await?;

        let mut deleted: BTreeMap<String, Vec<OwnerReference>> = BTreeMap::new();
        tokio::time::timeout(WAIT, async {
            while deleted.len() < 2 {
                match events.try_next().await? {
                    Some(WatchEvent::Deleted(pvc)) => {
                        let name = pvc.metadata.name.clone().unwrap_or_default();
                        deleted.insert(name, pvc.metadata.owner_references.unwrap_or_default());
                    }
                    Some(WatchEvent::Error(e)) => bail!("watch error: {e:?}"),
                    Some(_) => {}
                    None => bail!("watch ended early"),
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| {
            anyhow!("scaled-down claims not deleted within {WAIT:?}; deleted so far: {deleted:?}")
        })??;

        for n in 1..3 {
            let claim = format!("data-web-{n}");
            let pod = format!("web-{n}");
            let owners = deleted
                .get(&claim)
                .with_context(|| format!("{claim} not deleted; deleted: {deleted:?}"))?;
            ensure!(
                owners.iter().any(|o| o.kind == "Pod"
                    && o.name == pod
                    && Some(&o.uid) == pod_uids.get(&pod)
                    && o.controller == Some(true)),
                "{claim} was deleted without the controller's Pod owner reference: {owners:?}"
            );
        }
        ensure!(
            pvcs.get_opt("data-web-0").await?.is_some(),
            "the live claim data-web-0 was deleted"
        );
        // Reclaim policy Delete: the provisioner removes the released volumes' directories.
        for dir in &dirs[1..] {
            eventually(format!("{} removed", dir.display()), WAIT, || async {
                ensure!(!dir.exists(), "still exists");
                Ok(())
            })
            .await?;
        }
        ensure!(dirs[0].is_dir(), "the live claim's directory vanished");
        namespace.finish().await
    })
    .await
}

#[tokio::test]
async fn statefulset_honours_ordinals_start() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-sts-ordinals").await?;
        let sets: Api<StatefulSet> = namespace.api();
        let pods: Api<Pod> = namespace.api();

        sets.create(&PostParams::default(), &web_statefulset(2, 5, "Retain"))
            .await?;
        wait_for_web_pods(&pods, &[5, 6]).await?;
        for n in [5, 6] {
            namespace
                .bound_claim_dir(&format!("data-web-{n}"), WAIT)
                .await?;
        }
        let pvcs: Api<PersistentVolumeClaim> = namespace.api();
        let mut names: Vec<String> = pvcs
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        ensure!(
            names == ["data-web-5", "data-web-6"],
            "claims are {names:?}"
        );
        namespace.finish().await
    })
    .await
}

fn one_shot_job(name: &str, pod_annotations: Value) -> Job {
    from_json(json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "annotations": pod_annotations },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "registry.invalid/mover:1" }]
                }
            }
        }
    }))
}

async fn wait_for_job_pod(pods: &Api<Pod>, job: &str) -> Result<Pod> {
    eventually(format!("a Running pod of Job {job}"), WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await?;
        ensure!(list.items.len() == 1, "{} pods", list.items.len());
        let pod = list.items.into_iter().next().unwrap();
        ensure!(is_running_and_ready(&pod), "pod status is {:?}", pod.status);
        Ok(pod)
    })
    .await
}

async fn wait_for_job_condition(jobs: &Api<Job>, job: &str, condition: &str) -> Result<Job> {
    eventually(format!("Job {job} condition {condition}"), WAIT, || async {
        let job = jobs.get_status(job).await?;
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        ensure!(
            conditions
                .iter()
                .any(|c| c.type_ == condition && c.status == "True"),
            "conditions are {conditions:?}"
        );
        Ok(job)
    })
    .await
}

#[tokio::test]
async fn job_completes_when_its_pod_succeeds() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-job").await?;
        let jobs: Api<Job> = namespace.api();
        let pods: Api<Pod> = namespace.api();

        jobs.create(&PostParams::default(), &one_shot_job("work", json!({}))).await?;
        let pod = wait_for_job_pod(&pods, "work").await?;
        let pod_name = pod.metadata.name.clone().unwrap();
        // Once the Job controller has counted the pod active, it has seen it: had it wrongly
        // completed the Job on its own, it would have by then.
        eventually("the Job controller counts the pod active", WAIT, || async {
            let status = jobs.get_status("work").await?.status.unwrap_or_default();
            ensure!(status.active == Some(1), "status is {status:?}");
            Ok(())
        })
        .await?;
        let status = jobs.get_status("work").await?.status.unwrap_or_default();
        ensure!(status.succeeded.unwrap_or(0) == 0 && status.completion_time.is_none(), "Job done too early: {status:?}");

        // What a kubelet reports when the container exits 0.
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let started = pod.status.as_ref().and_then(|s| s.start_time.clone()).map(|t| t.0.to_string()).unwrap_or_else(|| now.clone());
        pods.patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "status": {
                    "phase": "Succeeded",
                    "conditions": [
                        { "type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now },
                        { "type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now },
                        { "type": "Initialized", "status": "True", "lastTransitionTime": started },
                        { "type": "PodScheduled", "status": "True", "lastTransitionTime": started }
                    ],
                    "containerStatuses": [{
                        "name": "main", "image": "registry.invalid/mover:1", "imageID": "",
                        "ready": false, "restartCount": 0, "started": false,
                        "state": { "terminated": { "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now } }
                    }]
                }
            })),
        )
        .await?;

        let job = wait_for_job_condition(&jobs, "work", "Complete").await?;
        let status = job.status.unwrap_or_default();
        ensure!(status.succeeded == Some(1), "status is {status:?}");
        ensure!(status.completion_time.is_some(), "no completionTime: {status:?}");
        namespace.finish().await
    })
    .await
}

#[tokio::test]
async fn job_fails_when_simulated_container_exits_non_zero() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-job-fail").await?;
        let jobs: Api<Job> = namespace.api();
        let pods: Api<Pod> = namespace.api();

        jobs.create(
            &PostParams::default(),
            &one_shot_job("doomed", json!({ EXIT_CODE_ANNOTATION: "3" })),
        )
        .await?;
        let job = wait_for_job_condition(&jobs, "doomed", "Failed").await?;
        ensure!(
            job.status.and_then(|s| s.failed) == Some(1),
            "expected one failed pod"
        );
        let list = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=doomed"))
            .await?;
        let codes: Vec<i32> = list
            .items
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
            .collect();
        ensure!(codes == [3], "exit codes are {codes:?}");
        namespace.finish().await
    })
    .await
}

async fn request_token(
    sas: &Api<ServiceAccount>,
    sa: &str,
    audience: &str,
    pod: Option<&Pod>,
) -> Result<String> {
    let bound = pod.map(|p| json!({ "kind": "Pod", "apiVersion": "v1", "name": p.metadata.name, "uid": p.metadata.uid }));
    let request: TokenRequest = from_json(json!({
        "spec": { "audiences": [audience], "expirationSeconds": 600, "boundObjectRef": bound }
    }));
    let issued = sas
        .create_token_request(sa, &PostParams::default(), &request)
        .await?;
    issued
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

async fn review(client: &Client, token: &str, audience: &str) -> Result<TokenReviewStatus> {
    let review: TokenReview =
        from_json(json!({ "spec": { "token": token, "audiences": [audience] } }));
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    reviewed.status.context("TokenReview has no status")
}

#[tokio::test]
async fn pod_bound_token_passes_review_only_for_its_audience() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-token").await?;
        let (client, ns) = (&namespace.client, &namespace.ns);
        let sas: Api<ServiceAccount> = namespace.api();
        let pods: Api<Pod> = namespace.api();
        const AUDIENCE: &str = "drainer.test/handoff";

        sas.create(&PostParams::default(), &from_json(json!({ "metadata": { "name": "app" } }))).await?;
        let pod: Pod = from_json(json!({
            "metadata": { "name": "web-4" },
            "spec": { "serviceAccountName": "app", "containers": [{ "name": "app", "image": "registry.invalid/web:1" }] }
        }));
        // The ServiceAccount admission plugin needs the account visible; retry briefly.
        let pod = eventually("pod web-4 created", WAIT, || async { Ok(pods.create(&PostParams::default(), &pod).await?) }).await?;
        let uid = pod.metadata.uid.clone().context("pod has no uid")?;

        let token = request_token(&sas, "app", AUDIENCE, Some(&pod)).await?;
        let status = review(client, &token, AUDIENCE).await?;
        ensure!(status.authenticated == Some(true), "review failed: {status:?}");
        let user = status.user.context("no user")?;
        ensure!(user.username.as_deref() == Some(&*format!("system:serviceaccount:{ns}:app")), "user is {user:?}");
        let extra = user.extra.unwrap_or_default();
        ensure!(extra.get("authentication.kubernetes.io/pod-name") == Some(&vec!["web-4".to_owned()]), "extra is {extra:?}");
        ensure!(extra.get("authentication.kubernetes.io/pod-uid") == Some(&vec![uid.clone()]), "extra is {extra:?}");
        ensure!(status.audiences.unwrap_or_default() == [AUDIENCE], "wrong audiences");

        // A token of the same account for another audience is refused for ours.
        let other = request_token(&sas, "app", "someone-else.test", Some(&pod)).await?;
        let status = review(client, &other, AUDIENCE).await?;
        ensure!(status.authenticated != Some(true), "token for another audience accepted: {status:?}");

        // Bound tokens die with their pod (the simulated kubelet completes the deletion).
        pods.delete("web-4", &Default::default()).await?;
        eventually("pod web-4 gone", WAIT, || async {
            ensure!(pods.get_opt("web-4").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        // Not at once: kube-apiserver caches successful token authentications for 10 s.
        eventually("the deleted pod's token to be refused", WAIT, || async {
            let status = review(client, &token, AUDIENCE).await?;
            ensure!(status.authenticated != Some(true), "token of a deleted pod accepted: {status:?}");
            Ok(())
        })
        .await?;
        namespace.finish().await
    })
    .await
}

#[tokio::test]
async fn rbac_denies_identity_without_permission() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-rbac").await?;
        let ns = &namespace.ns;
        let sas: Api<ServiceAccount> = namespace.api();
        sas.create(&PostParams::default(), &from_json(json!({ "metadata": { "name": "nobody" } }))).await?;
        // The default audience (the API server's own) makes the token usable against the API.
        let token = request_token(&sas, "nobody", "https://kubernetes.default.svc.cluster.local", None).await?;
        let nobody = client_with_token(&token).await?;

        namespace.api::<Pod>().list(&ListParams::default()).await.context("admin list pods")?;
        match Api::<Pod>::namespaced(nobody.clone(), ns).list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => bail!("expected 403 Forbidden, got {other:?}"),
        }

        // Granting the permission makes the same call pass: the 403 came from RBAC.
        let roles: Api<Role> = namespace.api();
        roles.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": "pod-reader" },
            "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }]
        }))).await?;
        let bindings: Api<RoleBinding> = namespace.api();
        bindings.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": "nobody-reads-pods" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
            "subjects": [{ "kind": "ServiceAccount", "name": "nobody", "namespace": ns }]
        }))).await?;
        eventually("the RoleBinding to take effect", WAIT, || async {
            Ok(Api::<Pod>::namespaced(nobody.clone(), ns).list(&ListParams::default()).await?)
        })
        .await?;
        namespace.finish().await
    })
    .await
}

#[tokio::test]
async fn deleted_pod_stays_terminating_for_its_termination_delay() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("kube-env-terminating").await?;
        let pods: Api<Pod> = namespace.api();
        let pod: Pod = from_json(json!({
            "metadata": { "name": "slow", "annotations": { TERMINATION_DELAY_ANNOTATION: "3s" } },
            "spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [{ "name": "app", "image": "registry.invalid/web:1" }]
            }
        }));
        eventually("pod slow created", WAIT, || async {
            Ok(pods.create(&PostParams::default(), &pod).await?)
        })
        .await?;
        eventually("pod slow Running", WAIT, || async {
            let pod = pods.get("slow").await?;
            ensure!(is_running_and_ready(&pod), "status is {:?}", pod.status);
            Ok(())
        })
        .await?;

        let deleted_at = tokio::time::Instant::now();
        pods.delete("slow", &Default::default()).await?;
        // Terminating (deletionTimestamp set), and still there: how long it stays is checked
        // once it is gone.
        let terminating = eventually("pod slow Terminating", WAIT, || async {
            let Some(pod) = pods.get_opt("slow").await? else {
                return Ok(None);
            };
            ensure!(
                pod.metadata.deletion_timestamp.is_some(),
                "pod is not Terminating"
            );
            Ok(Some(pod))
        })
        .await?;
        terminating.context("pod gone before its termination delay")?;
        eventually("pod slow gone", WAIT, || async {
            ensure!(pods.get_opt("slow").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        let took = deleted_at.elapsed();
        ensure!(
            took >= Duration::from_millis(2500),
            "gone after {took:?}, before the 3 s delay"
        );
        namespace.finish().await
    })
    .await
}
