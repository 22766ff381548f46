//! Kubernetes mode over TLS on kube-env, with pods that run as processes:
//! a real `drainer serve --kubernetes --tls-cert --tls-key` on this machine, its certificate
//! made in the test (`support::tls`) for the address pods reach it at (this machine's address
//! on the pod network, relayed to drainer's loopback port by a TCP forwarder that never sees
//! the clear text). Pods of the binary under test's image trust the test's CA from a ConfigMap
//! mounted in the pod: a pod hands off its claim (`DRAINER_CACERT`), a mover Job copies it to
//! the https `--service-url` (trusting the CA drainer gives it with `--mover-cacert`), and a
//! pod restores it (`drainer restore --drainer https://… --cacert`). Each step is also tried
//! without the CA and shown to fail, naming the certificate: a handoff and a restore from pods
//! change nothing, and a mover Job without the CA never completes its drain. The install tests
//! (`deploy`, `kubectl_plugin`, `chart`) run drainer's pod over TLS as the manifests install it;
//! the other kube-env tests run on plain HTTP, which keeps working.

use crate::support::cluster::{TestNamespace, assert_restores_exactly};
use crate::support::forward::Forward;
use crate::support::image::drainer_image;
use crate::support::kube::{
    KubeEnv, eventually, from_json, wait_for_pod_gone, wait_for_pod_phase, with_timeout,
};
use crate::support::serve::Serve;
use crate::support::tls::{Ca, SecretDir};
use crate::support::tree;
use anyhow::{Context, Result, ensure};
use drainer_kube::mover_jobs;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(420);
const WAIT: Duration = Duration::from_secs(120);
/// Where pods mount the ConfigMap holding the test's CA.
const CA_DIR: &str = "/etc/drainer-ca";
/// What clients say when the server's certificate is not signed by a CA they trust.
const UNTRUSTED: &str = "certificate is not trusted";

/// One test's world: a namespace, the test's CA (and a ConfigMap `drainer-ca` of it), a
/// certificate for this machine's pod-network address, and the forwarder pods reach the
/// drainer through.
struct World {
    namespace: TestNamespace,
    env: KubeEnv,
    image: &'static str,
    ca: Ca,
    secret: SecretDir,
    forward: Forward,
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        let env = KubeEnv::load()?;
        let namespace = TestNamespace::new(prefix).await?;
        let image = drainer_image(&env).await?;
        // Nothing listens there until the drainer starts: it must know its URL first.
        let forward = Forward::start(&env.host_ip, "127.0.0.1:1").await?;
        let ca = Ca::new("drainer kube-tls test CA");
        let pair = ca.issue(&[env.host_ip.as_str(), "127.0.0.1"]);
        let secret = SecretDir::new(&namespace.work.join("tls"), &pair, &ca);
        let trust: ConfigMap = from_json(json!({
            "metadata": {"name": "drainer-ca"},
            "data": {"ca.crt": ca.pem()}
        }));
        namespace
            .api::<ConfigMap>()
            .create(&PostParams::default(), &trust)
            .await?;
        Ok(Self {
            namespace,
            env,
            image,
            ca,
            secret,
            forward,
        })
    }

    /// The URL pods reach the drainer at.
    fn url(&self) -> String {
        format!("https://{}", self.forward.address)
    }

    /// Starts the drainer serving TLS with this world's certificate, mover Jobs sent to the
    /// https URL; with `mover_ca`, given the CA to pass them (`--mover-cacert`).
    async fn drainer(&self, mover_ca: bool) -> Result<Serve> {
        let ca_file = self.secret.dir.join("ca.crt");
        let mut drainer = self
            .kube_drainer()
            .mover_jobs(&self.url(), self.image)
            .debug_log();
        if mover_ca {
            drainer = drainer.args(&["--mover-cacert", &ca_file.display().to_string()]);
        }
        let serve = drainer
            .start_tls(
                &self.work.join("data"),
                (&self.secret.cert(), &self.secret.key()),
                &self.ca,
            )
            .await?;
        self.forward
            .forward_to(serve.url.trim_start_matches("https://"));
        Ok(serve)
    }

    /// Creates claim `name` and returns its directory once bound.
    async fn claim(&self, name: &str) -> Result<PathBuf> {
        self.create_claim(name, "1Gi").await?;
        self.bound_claim_dir(name, WAIT).await
    }

    /// Runs pod `name` (one container of drainer's image running `drainer ARGS`, the pod's
    /// projected token of audience `drainer`, the claims `mounts` as (claim, path), the CA's
    /// ConfigMap at [`CA_DIR`] when `ca`) to its end; returns whether it succeeded and its log.
    async fn run(
        &self,
        name: &str,
        args: &[&str],
        mounts: &[(&str, &str)],
        ca: bool,
        env: Value,
    ) -> Result<(bool, String)> {
        let mut volumes = vec![json!({ "name": "drainer-token", "projected": { "sources": [
            { "serviceAccountToken": { "audience": "drainer", "expirationSeconds": 3600, "path": "token" } }
        ] } })];
        let mut volume_mounts = vec![json!({
            "name": "drainer-token", "mountPath": "/var/run/secrets/drainer", "readOnly": true
        })];
        for (claim, path) in mounts {
            volumes.push(json!({ "name": claim, "persistentVolumeClaim": { "claimName": claim } }));
            volume_mounts.push(json!({ "name": claim, "mountPath": path }));
        }
        if ca {
            volumes.push(json!({ "name": "ca", "configMap": { "name": "drainer-ca" } }));
            volume_mounts.push(json!({ "name": "ca", "mountPath": CA_DIR, "readOnly": true }));
        }
        let mut env_list = vec![
            json!({ "name": "DRAINER_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }),
            json!({ "name": "DRAINER_LOG", "value": "info" }),
        ];
        env_list.extend(env.as_array().cloned().unwrap_or_default());
        let pod: Pod = from_json(json!({
            "metadata": { "name": name },
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "client",
                    "image": self.image,
                    "args": args,
                    "securityContext": { "runAsUser": 0 },
                    "env": env_list,
                    "volumeMounts": volume_mounts
                }],
                "volumes": volumes
            }
        }));
        let pods = self.api::<Pod>();
        pods.create(&PostParams::default(), &pod).await?;
        let ended = wait_for_pod_phase(&pods, name, &["Succeeded", "Failed"], WAIT).await?;
        let log = self.logs(name).await?;
        // The pod mounts claims: gone, it lets them go.
        pods.delete(name, &DeleteParams::default()).await?;
        wait_for_pod_gone(&pods, name, WAIT).await?;
        Ok((
            ended.status.and_then(|s| s.phase).as_deref() == Some("Succeeded"),
            log,
        ))
    }

    /// The log of pod `name` (`kubectl logs`).
    async fn logs(&self, name: &str) -> Result<String> {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            self.env
                .kubectl()
                .args(["logs", "-n", &self.ns, name])
                .output(),
        )
        .await
        .context("kubectl logs did not return within a minute")??;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }
}

/// `drainer handoff` from a pod mounting `data`, trusting the CA through `DRAINER_CACERT` (a
/// file of the ConfigMap); without it, it fails naming the certificate and hands nothing off.
/// Once the pod is gone, a mover Job copies the claim to the https service URL. `drainer
/// restore --drainer https://… --cacert` from a pod mounting the claim brings back exactly
/// its data into another claim; without `--cacert` it fails and restores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_hand_off_and_restore_and_movers_copy_over_tls() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-tls").await?;
        let source = w.claim("data").await?;
        tree::awkward(&source, 9 * 1024 * 1024);
        let copy = w.claim("copy").await?;
        let serve = w.drainer(true).await?;
        let url = w.url();
        let volume = format!("volume={}/data", w.ns);

        let handoff = ["handoff", "--drainer", &url, "--reason", "tls"];
        let (ok, log) = w
            .run(
                "handoff-untrusted",
                &handoff,
                &[("data", "/data")],
                false,
                json!([]),
            )
            .await?;
        ensure!(!ok, "a handoff without the CA succeeded: {log}");
        ensure!(log.contains(UNTRUSTED) && log.contains(&url), "{log}");
        ensure!(serve.drains(&volume).await.is_empty(), "a drain was made");

        let trust = json!([{ "name": "DRAINER_CACERT", "value": format!("{CA_DIR}/ca.crt") }]);
        let (ok, log) = w
            .run("handoff", &handoff, &[("data", "/data")], true, trust)
            .await?;
        ensure!(ok, "the handoff with DRAINER_CACERT failed: {log}");
        let drains = serve.drains(&volume).await;
        ensure!(drains.len() == 1, "{drains:?}");
        let id = drains[0]["id"].as_str().context("drain id")?.to_owned();
        let drain = serve.wait_state(&id, "completed", WAIT).await;
        ensure!(drain["mover_job"] == format!("drainer-{id}-1"), "{drain}");
        assert_restores_exactly(&w.store(), &w.ns, "data", &source, &w.work).await;

        let target = format!("{}/data", w.ns);
        let restore = ["restore", "--drainer", &url, "--volume", &target, "/copy"];
        let mounts = [("data", "/data"), ("copy", "/copy")];
        let (ok, log) = w
            .run("restore-untrusted", &restore, &mounts, false, json!([]))
            .await?;
        ensure!(!ok, "a restore without the CA succeeded: {log}");
        ensure!(log.contains(UNTRUSTED), "{log}");
        let wrote = std::fs::read_dir(&copy)?.count();
        ensure!(wrote == 0, "an untrusted restore wrote {wrote} entries");
        let ca_file = format!("{CA_DIR}/ca.crt");
        let with_ca: Vec<&str> = restore[..5]
            .iter()
            .copied()
            .chain(["--cacert", &ca_file, "/copy"])
            .collect();
        let (ok, log) = w.run("restore", &with_ca, &mounts, true, json!([])).await?;
        ensure!(ok, "the restore with --cacert failed: {log}");
        let differ = tree::differences(&source, &copy);
        ensure!(differ.is_empty(), "restored differently: {differ:?}");
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// A drainer serving TLS without `--mover-cacert`: its mover Job cannot verify it, says so
/// in its log, and the drain does not complete (nothing is stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_without_the_ca_does_not_copy_and_names_the_certificate() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("kube-tls-noca").await?;
        let source = w.claim("data").await?;
        tree::awkward(&source, 1024 * 1024);
        let serve = w.drainer(false).await?;
        let (_, drains) = serve.handoff(&w.ns, &["data"]).await;
        let id = drains[0]["id"].as_str().context("drain id")?.to_owned();
        let selector = format!("drainer.io/drain={}", mover_jobs::drain_label(&id));
        let log = eventually("a mover pod that failed", WAIT, || async {
            let pods = w
                .api::<Pod>()
                .list(&ListParams::default().labels(&selector))
                .await?;
            for pod in pods.items {
                let phase = pod.status.and_then(|s| s.phase);
                if phase.as_deref() == Some("Failed") {
                    return w.logs(&pod.metadata.name.unwrap_or_default()).await;
                }
            }
            anyhow::bail!("no failed mover pod yet")
        })
        .await?;
        ensure!(log.contains(UNTRUSTED), "the mover's log: {log}");
        let drain = serve.drain(&id).await;
        ensure!(drain["state"] != "completed", "{drain}");
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}
