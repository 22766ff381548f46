//! Mover Jobs on kube-env, whose pods run as processes: a real `drainer serve --kubernetes` on
//! this machine creates one Job per attempt; its pod (the image of the binary under test, see
//! `support::image`, with drainer's default mover command) mounts the claim read-only and
//! streams it to the drainer through a gate at the address pods reach this machine. The gate can hold a mover's final request, so a test can act while a mover is
//! certainly mid-copy: kill its pod, cancel its drain, restart the drainer. Each test has its own
//! namespace and drainer. Who is a mover is also checked against the real API server with
//! pods that forge a mover's labels and owner, and with a true copy of a mover pod that
//! `kubectl debug` then gave an ephemeral container.

use crate::support::cluster::{TestNamespace, assert_restores_exactly, history};
use crate::support::gate::Gate;
use crate::support::image::{drainer_image, drainer_image_name};
use crate::support::kube::{KubeEnv, eventually, from_json, with_timeout};
use crate::support::serve::Serve;
use crate::support::tree;
use anyhow::{Context, Result, ensure};
use drainer_kube::facts::KubeLedger;
use drainer_kube::mover_jobs::{self, MoverSpec};
use drainer_server::auth::{Action, Authority, Caller, Denied, Reach};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const TEST_LIMIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(120);

/// One test's world: a namespace with a claim full of awkward files, a gate, a drainer.
struct World {
    namespace: TestNamespace,
    pvc: String,
    source: PathBuf,
    gate: Gate,
    /// The mover image: the binary under test's.
    image: &'static str,
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        let kenv = KubeEnv::load()?;
        let namespace = TestNamespace::new(prefix).await?;
        let pvc = "data-web-4".to_owned();
        namespace.create_claim(&pvc, "1Gi").await?;
        let source = namespace.bound_claim_dir(&pvc, WAIT).await?;
        tree::awkward(&source, 9 * 1024 * 1024);
        let gate = Gate::start(&kenv.host_ip).await?;
        let image = drainer_image(&kenv).await?;
        Ok(Self {
            namespace,
            pvc,
            source,
            gate,
            image,
        })
    }

    fn data(&self) -> PathBuf {
        self.work.join("data")
    }

    /// Starts (or starts again) the drainer on this world's data directory.
    async fn drainer(&self) -> Result<Serve> {
        let serve = self
            .namespace
            .kube_drainer()
            .mover_jobs(&self.gate.url, self.image)
            .debug_log()
            .start(&self.data())
            .await?;
        self.gate.forward_to(&serve.url);
        Ok(serve)
    }

    /// Hands the claim off as the admin; returns the drain's id.
    async fn drain(&self, serve: &Serve) -> String {
        let (_, drains) = serve.handoff(&self.ns, &[&self.pvc]).await;
        drains[0]["id"].as_str().unwrap().to_owned()
    }

    fn jobs(&self) -> Api<Job> {
        self.api()
    }

    fn pods(&self) -> Api<Pod> {
        self.api()
    }

    /// The drain's mover Jobs.
    async fn jobs_of(&self, drain: &str) -> Result<Vec<Job>> {
        let selector = format!("drainer.io/drain={}", mover_jobs::drain_label(drain));
        Ok(self
            .jobs()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    /// The drain's mover pods.
    async fn pods_of(&self, drain: &str) -> Result<Vec<Pod>> {
        let selector = format!("drainer.io/drain={}", mover_jobs::drain_label(drain));
        Ok(self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    async fn assert_restores(&self) {
        assert_restores_exactly(&self.store(), &self.ns, &self.pvc, &self.source, &self.work).await;
    }

    async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }
}

fn name_of(job: &Job) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

/// File data a mover sent (objects in batches, large-file parts, single objects under
/// `files/`).
fn data_requests(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| {
            l.contains("/objects/batch") && l.contains("/files/")
                || l.starts_with("PUT ") && l.contains("/uploads/")
                || l.starts_with("PUT ") && l.contains("/objects?") && l.contains("files")
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_job_copies_a_claim_and_the_snapshot_restores_exactly() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let world = World::new("movers-copy").await?;
        let serve = world.drainer().await?;
        let id = world.drain(&serve).await;
        let drain = serve.wait_state(&id, "completed", WAIT).await;
        let job = format!("drainer-{id}-1");
        ensure!(drain["mover_job"] == job.as_str(), "{drain}");
        ensure!(drain["mover_job_uid"].is_string(), "{drain}");
        world.assert_restores().await;
        ensure!(
            !data_requests(&world.gate.log()).is_empty(),
            "the mover sent its files through the service URL"
        );
        // A successful Job is deleted by drainer, its pod with it.
        eventually("the successful Job and its pod deleted", WAIT, || async {
            ensure!(
                world.jobs().get_opt(&job).await?.is_none(),
                "Job {job} is still there"
            );
            let pods = world.pods_of(&id).await?;
            ensure!(pods.is_empty(), "{} pods left", pods.len());
            Ok(())
        })
        .await?;
        serve.terminate(Duration::from_secs(20)).await;
        world.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mover_pod_fails_its_attempt_and_the_next_job_resumes_the_run() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let world = World::new("movers-kill").await?;
        let serve = world.drainer().await?;
        world.gate.hold_next_finish();
        let id = world.drain(&serve).await;
        world.gate.wait_held().await?;
        let sent_before = data_requests(&world.gate.log()).len();
        ensure!(sent_before > 0, "the first mover sent its files");
        let pods = world.pods_of(&id).await?;
        ensure!(pods.len() == 1, "one mover pod, not {}", pods.len());
        let pod = pods[0].metadata.name.clone().unwrap_or_default();
        world
            .pods()
            .delete(
                &pod,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await?;
        // The watch notices the failed Job: the attempt fails and a new Job takes over.
        eventually("a second mover Job", WAIT, || async {
            let names: Vec<String> = world.jobs_of(&id).await?.iter().map(name_of).collect();
            ensure!(names.contains(&format!("drainer-{id}-2")), "Jobs {names:?}");
            Ok(())
        })
        .await?;
        world.gate.release();
        let drain = serve.wait_state(&id, "completed", WAIT).await;
        let history = history(&drain);
        ensure!(
            history.contains(&format!("mover Job {}/drainer-{id}-1 failed", world.ns)),
            "{history}"
        );
        ensure!(drain["attempts"] == 2, "{drain}");
        // The second mover resumed the run: every file was recorded, none was sent again.
        let log = world.gate.log();
        let again = &data_requests(&log)[sent_before..];
        ensure!(again.is_empty(), "sent again after the kill: {again:?}");
        world.assert_restores().await;
        // The failed Job is kept for its logs; the successful one is deleted.
        eventually(
            "the failed Job kept, the successful one deleted",
            WAIT,
            || async {
                let names: Vec<String> = world.jobs_of(&id).await?.iter().map(name_of).collect();
                ensure!(names == [format!("drainer-{id}-1")], "Jobs {names:?}");
                Ok(())
            },
        )
        .await?;
        serve.terminate(Duration::from_secs(20)).await;
        world.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_drain_deletes_its_mover_job() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let world = World::new("movers-cancel").await?;
        let serve = world.drainer().await?;
        world.gate.hold_next_finish();
        let id = world.drain(&serve).await;
        world.gate.wait_held().await?;
        ensure!(
            world.jobs_of(&id).await?.len() == 1,
            "one Job while copying"
        );
        let (status, body) = serve
            .call(
                reqwest::Method::POST,
                &format!("/v1/drains/{id}/cancel"),
                None,
            )
            .await;
        ensure!(status == 200, "cancel answered {status}: {body}");
        eventually(
            "the cancelled drain's Job and pod deleted",
            WAIT,
            || async {
                let jobs = world.jobs_of(&id).await?;
                ensure!(
                    jobs.is_empty(),
                    "Jobs {:?}",
                    jobs.iter().map(name_of).collect::<Vec<_>>()
                );
                let pods = world.pods_of(&id).await?;
                ensure!(pods.is_empty(), "{} pods left", pods.len());
                Ok(())
            },
        )
        .await?;
        world.gate.release();
        ensure!(serve.drain(&id).await["state"] == "cancelled");
        serve.terminate(Duration::from_secs(20)).await;
        world.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_drainer_adopts_the_running_mover_job() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let world = World::new("movers-restart").await?;
        let serve = world.drainer().await?;
        world.gate.hold_next_finish();
        let id = world.drain(&serve).await;
        world.gate.wait_held().await?;
        let before = world.jobs_of(&id).await?;
        ensure!(before.len() == 1, "one Job while copying");
        let (status, _) = serve.terminate(Duration::from_secs(20)).await;
        ensure!(status.success(), "drainer stopped with {status}");
        // The Job outlives its drainer: the mover waits for the drain's next claim.
        let kept = world.jobs_of(&id).await?;
        ensure!(
            kept.len() == 1 && kept[0].metadata.uid == before[0].metadata.uid,
            "the Job was not kept: {:?}",
            kept.iter().map(name_of).collect::<Vec<_>>()
        );
        let serve = world.drainer().await?;
        eventually("the drain claimed again", WAIT, || async {
            let drain = serve.drain(&id).await;
            ensure!(drain["state"] == "copying", "{}", drain["state"]);
            Ok(())
        })
        .await?;
        let adopted = world.jobs_of(&id).await?;
        ensure!(
            adopted.len() == 1 && adopted[0].metadata.uid == before[0].metadata.uid,
            "a duplicate Job: {:?}",
            adopted.iter().map(name_of).collect::<Vec<_>>()
        );
        world.gate.release();
        let drain = serve.wait_state(&id, "completed", WAIT).await;
        ensure!(
            drain["mover_job_uid"] == json!(before[0].metadata.uid),
            "{drain}"
        );
        world.assert_restores().await;
        serve.terminate(Duration::from_secs(20)).await;
        world.finish().await
    })
    .await
}

/// A pod token for `pod`, of ServiceAccount `default`, for drainer's audience.
async fn pod_token(client: &Client, ns: &str, pod: &Pod) -> Result<String> {
    let request: k8s_openapi::api::authentication::v1::TokenRequest = from_json(json!({"spec": {
        "audiences": ["drainer"], "expirationSeconds": 600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": pod.metadata.uid}
    }}));
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request("default", &PostParams::default(), &request)
        .await?;
    issued
        .status
        .and_then(|s| s.token)
        .context("no token issued")
}

/// A pod (simulated by kube-env: nothing of it runs) named `name` from `template`, changed
/// by `change`.
async fn forged_pod(
    pods: &Api<Pod>,
    name: &str,
    template: &Job,
    change: impl FnOnce(&mut Pod),
) -> Result<Pod> {
    let spec = template.spec.as_ref().context("job spec")?;
    let mut pod = Pod {
        metadata: spec.template.metadata.clone().unwrap_or_default(),
        spec: spec.template.spec.clone(),
        ..Pod::default()
    };
    pod.metadata.name = Some(name.to_owned());
    pod.metadata.annotations =
        Some([("kube-env.drainer.io/simulate".to_owned(), "true".to_owned())].into());
    change(&mut pod);
    Ok(pods.create(&PostParams::default(), &pod).await?)
}

fn owned_by(job: &Job) -> impl FnOnce(&mut Pod) + '_ {
    move |pod| {
        pod.metadata.owner_references = Some(vec![from_json(json!({
            "apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
            "uid": job.metadata.uid, "controller": true
        }))]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_true_copy_of_the_recorded_job_streams_as_a_mover() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let namespace = TestNamespace::new("movers-identity").await?;
        let (client, ns) = (namespace.client.clone(), namespace.ns.clone());
        let ledger = drainer::Ledger::open(None, &namespace.work).await?;
        let new = drainer_core::ledger::NewDrain {
            volume: drainer::VolumeId::new(&ns, "data-web-4")?,
            pod: None,
            reason: "test".into(),
            max_attempts: 5,
            wait_for_release: false,
            requested_by: None,
            facts: Default::default(),
        };
        ledger.request_drains(&[new]).await?;
        let drain = ledger
            .claim_drain("replica", Duration::from_secs(300))
            .await?
            .context("claimed")?;
        // The mover Job as drainer builds it, left to a controller that does not exist, so
        // that no pod of its own comes and the Job controller leaves the forged pods alone.
        let args = drainer::config::MoverJobArgs {
            mover_image: drainer_image_name().into(),
            mover_command: "drainer".into(),
            mover_service_account: "default".into(),
            mover_identity: drainer::config::MoverIdentity::Auto,
            mover_read_all: None,
            pod_security_default: drainer::config::PodSecurityLevel::Privileged,
            mover_cpu: "100m,1".into(),
            mover_memory: "64Mi,256Mi".into(),
            mover_node_selector: String::new(),
            mover_tolerations: "[]".into(),
            mover_deadline: Duration::from_secs(600),
            mover_keep_failed: Duration::from_secs(600),
            mover_cacert: None,
        };
        let spec = MoverSpec::new(&args, "drainer")?;
        let identity = mover_jobs::choose(
            spec.identity,
            spec.pod_security_default,
            Ok(&Default::default()),
            None,
            None,
        )
        .security;
        let claim: PersistentVolumeClaim = from_json(json!({
            "metadata": {"name": "data-web-4"}, "spec": {"accessModes": ["ReadWriteOnce"]}
        }));
        let mut job = mover_jobs::mover_job(
            &drain,
            drain.attempts,
            &claim,
            None,
            None,
            &spec,
            &identity,
            "http://drainer",
        );
        job.spec.as_mut().context("spec")?.managed_by = Some("example.com/nobody".into());
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job = jobs.create(&PostParams::default(), &job).await?;
        let (name, uid) = (name_of(&job), job.metadata.uid.clone().unwrap_or_default());
        ledger.set_mover_job(&drain.id, &name, &uid).await?;
        // A decoy Job of the same drain that the ledger does not record.
        let mut decoy = mover_jobs::mover_job(
            &drain,
            9,
            &claim,
            None,
            None,
            &spec,
            &identity,
            "http://drainer",
        );
        decoy.spec.as_mut().context("spec")?.managed_by = Some("example.com/nobody".into());
        let decoy = jobs.create(&PostParams::default(), &decoy).await?;

        let stop = tokio_util::sync::CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let cluster = drainer_kube::Cluster::start(client.clone(), vec![ns.clone()], stop).await?;
        let authority = drainer_kube::identity::TokenReviews::new(
            cluster,
            ledger.clone(),
            "drainer".into(),
            None,
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mover = drainer_server::auth::Caller::Mover {
            drain: drain.id.clone(),
        };
        // (pod, how it differs from the Job's own pod, what the authority makes of it)
        // Some(caller): authenticated as that; None: a workload; Err: refused, saying so.
        type Expected = Result<Option<Caller>, &'static str>;
        let cases: Vec<(Pod, &str, Expected)> = vec![
            (
                forged_pod(&pods, "genuine", &job, owned_by(&job)).await?,
                "none",
                Ok(Some(mover.clone())),
            ),
            (
                forged_pod(&pods, "labels-only", &job, |_| {}).await?,
                "drainer's labels, no owner",
                Ok(None),
            ),
            (
                forged_pod(&pods, "decoy-owned", &decoy, owned_by(&decoy)).await?,
                "owned by an unrecorded Job",
                Ok(None),
            ),
            (
                forged_pod(&pods, "other-claim", &job, |p| {
                    owned_by(&job)(p);
                    let volumes = p.spec.as_mut().and_then(|s| s.volumes.as_mut()).unwrap();
                    volumes[0]
                        .persistent_volume_claim
                        .as_mut()
                        .unwrap()
                        .claim_name = "secrets".into();
                })
                .await?,
                "owned by the Job, mounting another claim",
                Err("volume data"),
            ),
            (
                forged_pod(&pods, "other-image", &job, |p| {
                    owned_by(&job)(p);
                    p.spec.as_mut().unwrap().containers[0].image = Some("evil:latest".into());
                })
                .await?,
                "owned by the Job, running another image",
                Err("container mover"),
            ),
        ];
        for (pod, how, expected) in cases {
            let token = pod_token(&client, &ns, &pod).await?;
            let got = authority.authenticate(&token).await;
            match (got, expected) {
                (Ok(caller), Ok(Some(wanted))) => ensure!(caller == wanted, "{how}: {caller:?}"),
                (Ok(caller), Ok(None)) => {
                    ensure!(matches!(caller, Caller::Workload(_)), "{how}: {caller:?}");
                    // A workload may not stream: the mover protocol answers it 403.
                    ensure!(Action::Stream.allows(caller.kind()) == Reach::None, "{how}");
                }
                (Err(Denied::Forbidden(why)), Err(says)) => {
                    ensure!(why.contains(says), "{how}: {why}")
                }
                (got, _) => anyhow::bail!("{how}: {got:?}"),
            }
        }
        debugged_mover_is_refused(&client, &ns, &pods, &authority).await?;
        namespace.finish().await
    })
    .await
}

/// `kubectl debug` on the genuine mover pod (an ephemeral container targeting its container,
/// from which the mover's token could be read): the pod, otherwise a true copy of its Job's,
/// is a mover no longer; its tokens are refused, naming the ephemeral containers. Each try
/// uses a fresh token, so no earlier answer is reused while drainer's watch catches up.
async fn debugged_mover_is_refused(
    client: &Client,
    ns: &str,
    pods: &Api<Pod>,
    authority: &impl Authority,
) -> Result<()> {
    let env = KubeEnv::load()?;
    let debug = [
        "debug",
        "-n",
        ns,
        "genuine",
        "--image=busybox",
        "--target=mover",
    ];
    let out = env
        .kubectl()
        .args(debug)
        .args(["-c", "debugger"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "kubectl debug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let genuine = pods.get("genuine").await?;
    let added = genuine
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_ref());
    ensure!(
        added.is_some_and(|c| c.len() == 1),
        "no ephemeral container: {added:?}"
    );
    eventually(
        "the debugged mover refused",
        Duration::from_secs(30),
        || async {
            let token = pod_token(client, ns, &genuine).await?;
            match authority.authenticate(&token).await {
                Err(Denied::Forbidden(why)) if why.contains("ephemeral containers") => {
                    eprintln!("kube_movers: the debugged mover refused: {why}");
                    Ok(())
                }
                got => anyhow::bail!("{got:?}"),
            }
        },
    )
    .await
}
