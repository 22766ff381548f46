//! The data comes back on scale-up, on kube-env with pods that run: a StatefulSet
//! with `whenScaled: Delete` whose pods restore their claim in an init container of drainer's
//! image (the binary under test's, see `support::image`) (`drainer restore --drainer URL --volume NS/data-POD --if-empty --allow-missing /data`, the
//! pod's projected token) and hand it off from a preStop hook (`drainer handoff`), as in
//! `deploy/examples/restore-init.yaml` (which leaves the handoff to drainer), is scaled
//! 3 → 1 → 3: the condemned ordinals' claims are drained (by a `drainer mover` the test runs
//! on each claim's directory, as a mover Job would) and deleted, and when the ordinals come
//! back with fresh, empty claims, their init containers bring back exactly the data they had.

use crate::support::cluster::{TestNamespace, WebSet, run_mover};
use crate::support::forward::Forward;
use crate::support::image::drainer_image;
use crate::support::kube::{KubeEnv, eventually, with_timeout};
use crate::support::run_ok;
use crate::support::serve::Serve;
use crate::support::tree::{bytes, differences};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(420);
const WAIT: Duration = Duration::from_secs(120);

/// The StatefulSet of the example, with the image of the binary under test and this
/// machine's drainer URL: an init container of that image restores the claim when it is empty
/// (as uid 0, to restore owners, as the example does), a preStop hook hands it off (drainer
/// installed into the pod by another init container of the image, as in
/// `deploy/examples/prestop-handoff.yaml`). `kube_reclaim` uses it with `Retain`.
pub(crate) fn web(replicas: u32, image: &str, drainer_url: &str, when_scaled: &str) -> WebSet {
    WebSet::new(replicas)
        .parallel()
        .when_scaled(when_scaled)
        .web_account()
        .grace(Duration::from_secs(10))
        .restores_from(drainer_url, image)
        .runs("trap 'exit 0' TERM; while :; do sleep 1; done", &[])
        .drainer_token()
        .hands_off_to(drainer_url)
}

/// A namespace with ServiceAccount `web`, a drainer serving it with movers external (the test
/// runs each claim's mover itself, as a mover Job would), and a forwarder from where pods
/// reach this machine to the drainer.
pub(crate) struct World {
    namespace: TestNamespace,
    pub env: KubeEnv,
    pub serve: Serve,
    /// The drainer's URL for pods.
    pub url: String,
    _forward: Forward,
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    async fn new() -> Result<Self> {
        Self::with_drainer("kube-restore", &[]).await
    }

    /// A namespace named from `prefix`, its drainer started with the further flags `args`.
    pub(crate) async fn with_drainer(prefix: &str, args: &[&str]) -> Result<Self> {
        let env = KubeEnv::load()?;
        let namespace = TestNamespace::with_web_account(prefix).await?;
        let serve = namespace
            .kube_drainer()
            .lease(5)
            .args(args)
            .start(&namespace.work.join("data"))
            .await?;
        let forward = Forward::start(&env.host_ip, serve.url.trim_start_matches("http://")).await?;
        Ok(Self {
            namespace,
            env,
            serve,
            url: format!("http://{}", forward.address),
            _forward: forward,
        })
    }

    pub(crate) async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }

    /// The running pod `name` (its init container done).
    pub(crate) async fn running(&self, name: &str) -> Result<Pod> {
        self.running_pod(name, WAIT).await
    }

    /// The directory of claim `name` (bound), with its UID.
    pub(crate) async fn claim_dir(&self, name: &str) -> Result<(PathBuf, String)> {
        let dir = self.bound_claim_dir(name, WAIT).await?;
        let claim = self.api::<PersistentVolumeClaim>().get(name).await?;
        Ok((dir, claim.metadata.uid.unwrap_or_default()))
    }

    pub(crate) async fn claim_gone(&self, name: &str) -> Result<()> {
        let claims = self.api::<PersistentVolumeClaim>();
        eventually(format!("claim {name} deleted"), WAIT, || async {
            ensure!(claims.get_opt(name).await?.is_none(), "still there");
            Ok(())
        })
        .await
    }

    /// Copies claim `pvc` through its drain: waits for the drain drainer made when the pod was
    /// condemned, runs the mover on the claim's directory, waits for `completed`.
    pub(crate) async fn drain(&self, pvc: &str, dir: &Path) -> Result<()> {
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
        run_mover(&self.serve, &id, dir).await;
        eventually(format!("drain {id} completed"), WAIT, || async {
            let drain = self.serve.drain(&id).await;
            ensure!(drain["state"] == "completed", "{drain}");
            Ok(())
        })
        .await
    }
}

/// What ordinal `i` writes into its claim: files of its own, a subdirectory, a hard link.
pub(crate) fn fill(dir: &Path, i: u64) -> Result<()> {
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
        let image = drainer_image(&w.env).await?;
        web(3, image, &w.url, "Delete").create(&w).await?;
        let pods = w.api::<Pod>();
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

        w.scale("web", 1).await?;
        for i in [2u64, 1] {
            let (dir, _, _) = &before[i as usize];
            w.drain(&format!("data-web-{i}"), dir).await?;
        }
        for i in [1, 2] {
            w.claim_gone(&format!("data-web-{i}")).await?;
        }

        w.scale("web", 3).await?;
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
        w.finish().await
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
