//! The data comes back on scale-up, on kube-env with pods that run: a StatefulSet
//! with `whenScaled: Delete` whose pods restore their claim in an init container of drainer's
//! image (the binary under test's, see `support::image`) (`drainer restore --drainer URL --volume NS/data-POD --if-empty --allow-missing /data`, the
//! pod's projected token) and hand it off from a preStop hook (`drainer handoff`), as in
//! `deploy/examples/restore-init.yaml` (which leaves the handoff to drainer), is scaled
//! 3 → 1 → 3: the condemned ordinals' claims are drained (by a `drainer mover` the test runs
//! on each claim's directory, as a mover Job would) and deleted, and when the ordinals come
//! back with fresh, empty claims, their init containers bring back exactly the data they had.

use crate::support::image::{drainer_image, installed_drainer, with_drainer_installed};
use crate::support::kube::{
    KubeEnv, client, create_namespace, delete_namespace, eventually, from_json, with_timeout,
};
use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{drainer, file_url, run_ok};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(420);
const WAIT: Duration = Duration::from_secs(120);

/// The StatefulSet of the example, with the image of the binary under test and this
/// machine's drainer URL: an init container of that image restores the claim when it is empty
/// (as uid 0, to restore owners, as the example does), a preStop hook hands it off (drainer
/// installed into the pod by another init container of the image, as in
/// `deploy/examples/prestop-handoff.yaml`).
fn web(replicas: i32, image: &str, drainer_url: &str) -> StatefulSet {
    let restore = [
        "restore",
        "--drainer",
        drainer_url,
        "--volume",
        "$(POD_NAMESPACE)/data-$(POD_NAME)",
        "--if-empty",
        "--allow-missing",
        "/data",
    ];
    let handoff = installed_drainer(&["handoff", "--drainer", drainer_url, "--reason", "preStop"]);
    let pod = with_drainer_installed(json!({
        "serviceAccountName": "web",
        "terminationGracePeriodSeconds": 10,
        "initContainers": [{
            "name": "restore",
            "image": image,
            "args": restore,
            "securityContext": { "runAsUser": 0 },
            "env": [
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                { "name": "DRAINER_LOG", "value": "info" }
            ],
            "volumeMounts": [
                { "name": "data", "mountPath": "/data" },
                { "name": "drainer-token", "mountPath": "/var/run/secrets/drainer", "readOnly": true }
            ]
        }],
        "containers": [{
            "name": "app",
            "image": "registry.invalid/web:1",
            "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
            "lifecycle": { "preStop": { "exec": { "command": handoff } } },
            "env": [
                { "name": "DRAINER_POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "DRAINER_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }
            ],
            "volumeMounts": [
                { "name": "data", "mountPath": "/data" },
                { "name": "drainer-token", "mountPath": "/var/run/secrets/drainer", "readOnly": true }
            ]
        }],
        "volumes": [{ "name": "drainer-token", "projected": { "sources": [
            { "serviceAccountToken": { "audience": "drainer", "expirationSeconds": 3600, "path": "token" } }
        ] } }]
    }));
    from_json(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": replicas,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": "web" } },
            "persistentVolumeClaimRetentionPolicy": { "whenScaled": "Delete", "whenDeleted": "Retain" },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": pod
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "64Mi" } } }
            }]
        }
    }))
}

/// Forwards connections from where pods reach this machine to the drainer on loopback.
async fn forward(host_ip: &str, to: String) -> Result<String> {
    let listener = tokio::net::TcpListener::bind((host_ip, 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(url)
}

struct World {
    client: Client,
    env: KubeEnv,
    ns: String,
    serve: Serve,
    work: PathBuf,
    _guard: tempfile::TempDir,
}

impl World {
    async fn new() -> Result<Self> {
        let client = client().await?;
        let env = KubeEnv::load()?;
        let ns = create_namespace(&client, "kube-restore").await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        sas.create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "web"}})),
        )
        .await?;
        let guard = tempfile::tempdir()?;
        let work = guard.path().to_owned();
        let kubeconfig = std::env::var(crate::support::kube::KUBECONFIG_ENV)?;
        let store = file_url(&work.join("store"));
        let serve = Serve::start_with_env(
            &work.join("data"),
            &[
                "--kubernetes",
                "--watch-namespace",
                &ns,
                "--store",
                &store,
                "--sweep-interval",
                "0",
                "--lease",
                "5",
                // The test runs each claim's mover itself, as a mover Job would.
                "--movers",
                "external",
            ],
            &[("KUBECONFIG", kubeconfig.as_str())],
        )
        .await;
        Ok(Self {
            client,
            env,
            ns,
            serve,
            work,
            _guard: guard,
        })
    }

    async fn scale(&self, replicas: i32) -> Result<()> {
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.ns);
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        sets.patch("web", &PatchParams::default(), &patch).await?;
        Ok(())
    }

    /// The running pod `name` (its init container done).
    async fn running(&self, name: &str) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(format!("pod {name} running"), WAIT, || async {
            let pod = pods.get(name).await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            ensure!(
                phase.as_deref() == Some("Running"),
                "{phase:?}: {:?}",
                pod.status
            );
            Ok(pod)
        })
        .await
    }

    /// The directory of claim `name` (bound), with its UID.
    async fn claim_dir(&self, name: &str) -> Result<(PathBuf, String)> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns);
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        eventually(format!("claim {name} bound"), WAIT, || async {
            let claim = claims.get(name).await?;
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            let volume = claim
                .spec
                .and_then(|s| s.volume_name)
                .context("not bound yet")?;
            let pv = volumes.get(&volume).await?;
            let path = pv
                .spec
                .and_then(|s| s.host_path)
                .map(|h| PathBuf::from(h.path));
            let path = path.filter(|p| p.is_dir()).context("no directory yet")?;
            Ok((path, uid))
        })
        .await
    }

    async fn claim_gone(&self, name: &str) -> Result<()> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(format!("claim {name} deleted"), WAIT, || async {
            ensure!(claims.get_opt(name).await?.is_none(), "still there");
            Ok(())
        })
        .await
    }

    /// Copies claim `pvc` through its drain: waits for the drain drainer made when the pod was
    /// condemned, runs the mover on the claim's directory, waits for `completed`.
    async fn drain(&self, pvc: &str, dir: &Path) -> Result<()> {
        let id = eventually(format!("a drain of {pvc} copying"), WAIT, || async {
            let drains = self
                .serve
                .drains(&format!("volume={}/{pvc}", self.ns))
                .await;
            let drain = drains.first().context("none yet")?;
            ensure!(drain["state"] == "copying", "{drain}");
            Ok(drain["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
        run_ok(
            drainer()
                .args([
                    "mover",
                    "--drainer",
                    &self.serve.url,
                    "--drain",
                    &id,
                    "--source",
                ])
                .arg(dir)
                .env("DRAINER_TOKEN", TOKEN),
        )
        .await;
        eventually(format!("drain {id} completed"), WAIT, || async {
            let drain = self.serve.drain(&id).await;
            ensure!(drain["state"] == "completed", "{drain}");
            Ok(())
        })
        .await
    }
}

/// What ordinal `i` writes into its claim: files of its own, a subdirectory, a hard link.
fn fill(dir: &Path, i: u64) -> Result<()> {
    std::fs::write(dir.join("owner.txt"), format!("web-{i}\n"))?;
    std::fs::create_dir_all(dir.join("db/wal"))?;
    std::fs::write(dir.join("db/data"), bytes(i, 12 << 20))?;
    std::fs::write(dir.join("db/wal/0001"), bytes(100 + i, 70_000))?;
    std::fs::hard_link(dir.join("db/data"), dir.join("db/data.bak"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_away_ordinals_come_back_with_exactly_their_data() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new().await?;
        let url = forward(
            &w.env.host_ip,
            w.serve.url.trim_start_matches("http://").to_owned(),
        )
        .await?;
        let sets: Api<StatefulSet> = Api::namespaced(w.client.clone(), &w.ns);
        let image = drainer_image(&w.env).await?;
        sets.create(&PostParams::default(), &web(3, image, &url))
            .await?;
        let pods: Api<Pod> = Api::namespaced(w.client.clone(), &w.ns);
        let mut before = Vec::new();
        for i in 0..3u64 {
            let pod = w.running(&format!("web-{i}")).await?;
            let log = w.env.container_log(&pod, "restore")?;
            ensure!(
                log.contains("has no snapshot: nothing restored"),
                "web-{i}: {log}"
            );
            let (dir, uid) = w.claim_dir(&format!("data-web-{i}")).await?;
            fill(&dir, i)?;
            // What the ordinal had, kept aside to compare with what comes back.
            let kept = w.work.join(format!("had-{i}"));
            run_ok(
                tokio::process::Command::new("cp")
                    .arg("-a")
                    .arg(&dir)
                    .arg(&kept),
            )
            .await;
            before.push((dir, uid, kept));
        }

        w.scale(1).await?;
        for i in [2u64, 1] {
            let (dir, _, _) = &before[i as usize];
            w.drain(&format!("data-web-{i}"), dir).await?;
        }
        for i in [1, 2] {
            w.claim_gone(&format!("data-web-{i}")).await?;
        }

        w.scale(3).await?;
        for i in 1..3u64 {
            let pod = w.running(&format!("web-{i}")).await?;
            let log = w.env.container_log(&pod, "restore")?;
            ensure!(log.contains("restored snapshot"), "web-{i}: {log}");
            let (dir, uid) = w.claim_dir(&format!("data-web-{i}")).await?;
            let (_, old_uid, had) = &before[i as usize];
            ensure!(uid != *old_uid, "web-{i} came back with a new claim");
            let diffs = differences(had, &dir);
            ensure!(diffs.is_empty(), "web-{i}'s data differs: {diffs:#?}");
            let ino = |p: &str| std::fs::metadata(dir.join(p)).map(|m| m.ino());
            ensure!(
                ino("db/data")? == ino("db/data.bak")?,
                "web-{i}: the hard link came back as a link"
            );
        }
        // The ordinal that stayed was never touched: its init container ran once, at the start.
        let web0 = pods.get("web-0").await?;
        let log = w.env.container_log(&web0, "restore")?;
        ensure!(!log.contains("restored snapshot"), "web-0: {log}");
        ensure!(differences(&before[0].2, &before[0].0).is_empty());
        delete_namespace(&w.client, &w.ns).await
    })
    .await
}

/// The example this test stands for restores as the test's StatefulSet does (the test also
/// hands off from a preStop hook, which the example leaves to drainer's release tracking).
#[test]
fn the_deploy_example_restores_like_this_test() {
    let example = include_str!("../../deploy/examples/restore-init.yaml");
    for needed in [
        "whenScaled: Delete",
        "- restore",
        "- $(POD_NAMESPACE)/data-$(POD_NAME)",
        "- --if-empty",
        "- --allow-missing",
        "- /data",
        "mountPath: /var/run/secrets/drainer",
        "audience: drainer",
    ] {
        assert!(example.contains(needed), "the example lacks {needed:?}");
    }
}
