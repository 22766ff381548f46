//! Mover Jobs on kube-env, whose pods run as processes: a real `drainer serve --kubernetes` on
//! this machine creates one Job per attempt; its pod (the image of the binary under test, see
//! `support::image`, with drainer's default mover command) mounts the claim read-only and
//! streams it to the drainer through a gate at the address pods reach this machine. The gate can hold a mover's final request, so a test can act while a mover is
//! certainly mid-copy: kill its pod, cancel its drain, restart the drainer. Each test has its own
//! namespace and drainer. Who is a mover is also checked against the real API server with
//! pods that forge a mover's labels and owner.

use crate::service::assert_restores_exactly;
use crate::support::image::{DRAINER_IMAGE, drainer_image};
use crate::support::kube::{
    KUBECONFIG_ENV, KubeEnv, client, create_namespace, delete_namespace, eventually, from_json,
    wait_for_bound_claim, with_timeout,
};
use crate::support::serve::Serve;
use crate::support::{file_url, tree};
use anyhow::{Context, Result, ensure};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use drainer_kube::movers::{self, MoverSpec};
use drainer_server::auth::{Action, Authority, Caller, Denied, Reach};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TEST_LIMIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(120);

/// A proxy between movers and the drainer, listening where pods reach this machine. It logs
/// what it forwards and can hold the next `…/finish` of a run (the mover's last request), or
/// the next request of any path, until released, then answers it 502 without forwarding it.
pub(crate) struct Gate {
    pub(crate) url: String,
    shared: Arc<GateState>,
    task: tokio::task::JoinHandle<()>,
}

struct GateState {
    upstream: Mutex<String>,
    client: reqwest::Client,
    /// What the next request to hold has in its path.
    hold: Mutex<Option<String>>,
    held: AtomicUsize,
    released: tokio::sync::watch::Sender<bool>,
    log: Mutex<Vec<String>>,
}

impl Gate {
    pub(crate) async fn start(host_ip: &str) -> Result<Self> {
        let shared = Arc::new(GateState {
            upstream: Mutex::new(String::new()),
            client: reqwest::Client::new(),
            hold: Mutex::new(None),
            held: AtomicUsize::new(0),
            released: tokio::sync::watch::channel(false).0,
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind((host_ip, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    pub(crate) fn forward_to(&self, upstream: &str) {
        *self.shared.upstream.lock().unwrap() = upstream.to_owned();
    }

    /// Holds the next `finish` request.
    pub(crate) fn hold_next_finish(&self) {
        self.hold_next("/finish");
    }

    /// Holds the next request whose path contains `fragment`.
    pub(crate) fn hold_next(&self, fragment: &str) {
        self.shared.released.send_replace(false);
        *self.shared.hold.lock().unwrap() = Some(fragment.to_owned());
    }

    pub(crate) async fn wait_held(&self) -> Result<()> {
        eventually("a mover's request held at the gate", WAIT, || async {
            ensure!(
                self.shared.held.load(Ordering::SeqCst) > 0,
                "nothing held yet"
            );
            Ok(())
        })
        .await
    }

    /// Answers what is held (502) and passes everything from now on.
    pub(crate) fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// `METHOD PATH?QUERY` of every request forwarded so far (and `HELD METHOD PATH` of each
    /// one held).
    pub(crate) fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(gate): State<Arc<GateState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let hold = {
        let mut hold = gate.hold.lock().unwrap();
        match hold.as_deref() {
            Some(fragment) if parts.uri.path().contains(fragment) => hold.take(),
            _ => None,
        }
    };
    if hold.is_some() {
        gate.held.fetch_add(1, Ordering::SeqCst);
        gate.log
            .lock()
            .unwrap()
            .push(format!("HELD {} {path}", parts.method));
        let mut released = gate.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
        return status(StatusCode::BAD_GATEWAY, "held by the test, then dropped");
    }
    let Ok(bytes) = axum::body::to_bytes(body, 128 * 1024 * 1024).await else {
        return status(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let upstream = gate.upstream.lock().unwrap().clone();
    let mut outgoing = gate
        .client
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .body(bytes.clone());
    let sent = bytes;
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return status(StatusCode::BAD_GATEWAY, "the drainer is not answering");
    };
    let keys = if parts.uri.path().ends_with("/objects/batch") {
        format!(" {:?}", batch_keys(&sent))
    } else {
        String::new()
    };
    gate.log
        .lock()
        .unwrap()
        .push(format!("{} {path}{keys}", parts.method));
    let code = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    if let Some(value) = content_type {
        response.headers_mut().insert("content-type", value);
    }
    response
}

/// The keys of a batch of objects (`protocol::batch`: key length, key, data length, data).
fn batch_keys(mut body: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    while body.len() >= 4 {
        let key_len = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
        let Some(key) = body.get(4..4 + key_len) else {
            break;
        };
        keys.push(String::from_utf8_lossy(key).into_owned());
        body = &body[4 + key_len..];
        let Some(len) = body.get(..8) else { break };
        let data_len = u64::from_be_bytes(len.try_into().unwrap()) as usize;
        body = body.get(8 + data_len..).unwrap_or_default();
    }
    keys
}

fn status(code: StatusCode, message: &'static str) -> Response {
    let mut response = Response::new(Body::from(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = code;
    response
}

/// One test's world: a namespace with a claim full of awkward files, a gate, a drainer.
struct World {
    client: Client,
    ns: String,
    pvc: String,
    source: PathBuf,
    work: tempfile::TempDir,
    gate: Gate,
    /// The mover image: the binary under test's.
    image: &'static str,
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        let client = client().await?;
        let kenv = KubeEnv::load()?;
        let ns = create_namespace(&client, prefix).await?;
        let pvc = "data-web-4".to_owned();
        let claim: PersistentVolumeClaim = from_json(json!({
            "metadata": {"name": pvc},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }));
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &claim)
            .await?;
        let source = wait_for_bound_claim(&client, &ns, &pvc, WAIT).await?;
        tree::awkward(&source, 9 * 1024 * 1024);
        let gate = Gate::start(&kenv.host_ip).await?;
        let image = drainer_image(&kenv).await?;
        Ok(Self {
            client,
            ns,
            pvc,
            source,
            work: tempfile::tempdir()?,
            gate,
            image,
        })
    }

    fn data(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn store(&self) -> String {
        file_url(&self.work.path().join("store"))
    }

    /// Starts (or starts again) the drainer on this world's data directory.
    async fn drainer(&self) -> Result<Serve> {
        let kubeconfig = std::env::var(KUBECONFIG_ENV).context(KUBECONFIG_ENV)?;
        let store = self.store();
        let serve = Serve::start_with_env(
            &self.data(),
            &[
                "--kubernetes",
                "--watch-namespace",
                &self.ns,
                "--service-url",
                &self.gate.url,
                "--mover-image",
                self.image,
                "--store",
                &store,
                "--sweep-interval",
                "0",
            ],
            &[
                ("KUBECONFIG", &kubeconfig),
                ("DRAINER_LOG", "info,drainer=debug"),
            ],
        )
        .await;
        self.gate.forward_to(&serve.url);
        Ok(serve)
    }

    /// Hands the claim off as the admin; returns the drain's id.
    async fn drain(&self, serve: &Serve) -> String {
        let (_, drains) = serve.handoff(&self.ns, &[&self.pvc]).await;
        drains[0]["id"].as_str().unwrap().to_owned()
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The drain's mover Jobs.
    async fn jobs_of(&self, drain: &str) -> Result<Vec<Job>> {
        let selector = format!("drainer.io/drain={}", movers::drain_label(drain));
        Ok(self
            .jobs()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    /// The drain's mover pods.
    async fn pods_of(&self, drain: &str) -> Result<Vec<Pod>> {
        let selector = format!("drainer.io/drain={}", movers::drain_label(drain));
        Ok(self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    async fn assert_restores(&self) {
        assert_restores_exactly(
            &self.store(),
            &self.ns,
            &self.pvc,
            &self.source,
            self.work.path(),
        )
        .await;
    }

    async fn finish(self) -> Result<()> {
        delete_namespace(&self.client, &self.ns).await
    }
}

fn name_of(job: &Job) -> String {
    job.metadata.name.clone().unwrap_or_default()
}

fn history(drain: &Value) -> String {
    drain["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{} {}", e["state"], e["message"]))
        .collect::<Vec<_>>()
        .join("\n")
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
        let client = client().await?;
        let ns = create_namespace(&client, "movers-identity").await?;
        let work = tempfile::tempdir()?;
        let ledger = drainer::Ledger::open(None, work.path()).await?;
        let new = drainer_core::ledger::NewDrain {
            volume: drainer::VolumeId::new(&ns, "data-web-4")?,
            pod: None,
            reason: "test".into(),
            max_attempts: 5,
            wait_for_release: false,
            requested_by: None,
            kube: None,
        };
        ledger.request_drains(&[new]).await?;
        let drain = ledger
            .claim_drain("replica", Duration::from_secs(300))
            .await?
            .context("claimed")?;
        // The mover Job as drainer builds it, left to a controller that does not exist, so
        // that no pod of its own comes and the Job controller leaves the forged pods alone.
        let args = drainer::config::MoverJobArgs {
            mover_image: DRAINER_IMAGE.into(),
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
        let identity = movers::choose(
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
        let mut job = movers::mover_job(
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
        let mut decoy = movers::mover_job(
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
        delete_namespace(&client, &ns).await
    })
    .await
}
