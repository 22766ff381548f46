//! Several replicas losing nothing: `deploy/overlays/ha` installed on kube-env as a user installs it
//! (three drainer replicas sharing a PostgreSQL ledger and an S3 store), and a fault during a
//! `whenScaled: Delete` scale-down of 30 claims: (c) one drainer pod killed (force-deleted:
//! SIGKILL, no grace) every 20 s until every drain has completed; (d) PostgreSQL stopped and
//! started again in the middle of it. Each ends with every condemned claim drained exactly
//! once (one drain, one completed copy run, one snapshot in the store, which restores byte for
//! byte to the claim's data as its pod left it), the claim deleted by the garbage collector
//! afterwards, no hold ConfigMap left, the live ordinal's claim untouched, guarded and never
//! drained, and the three replicas Ready again.
//!
//! The install is a kustomization the test writes that takes the real `deploy/overlays/ha` as
//! its resource and changes only what this machine needs: the store's endpoint (the S3 test
//! server), drainer's log level and the namespace it watches; the Secrets (database URL, store
//! credentials, admin token) are created with kubectl, as `deploy/README.md` says. The image of
//! the binary under test is registered under the release image's name, so the manifests'
//! image and mover image stay as they ship. PostgreSQL is a private server of the test's own
//! (`support::postgres`), so that (d) can stop it without disturbing other tests; pods reach it
//! and the S3 server through forwarders on this machine's address on the pod network
//! (`support::forward`).

use crate::support::cluster::WebSet;
use crate::support::forward::Forward;
use crate::support::image::drainer_image_file;
use crate::support::install::{
    DrainerApi, LOCK, SYSTEM, deploy, ensure_namespace, kubectl, release_image, repo,
    wait_namespace_gone_if_terminating,
};
use crate::support::kube::{
    KubeEnv, client, create_namespace, delete_namespace, eventually, pod_ready,
    wait_for_bound_claim, with_timeout,
};
use crate::support::postgres::PrivatePostgres;
use crate::support::s3::{self, S3Server};
use crate::support::tree::differences;
use crate::support::{drainer, run_ok};
use anyhow::{Context, Result, bail, ensure};
use drainer_kube::guard;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bound of one test (31 pods to start, 30 drains under a fault, on a loaded machine).
const LIMIT: Duration = Duration::from_secs(1800);
/// Bound of one wait inside a test.
const WAIT: Duration = Duration::from_secs(300);
/// Bound of the scale-down's drains, from the scale-down to the last completed.
const DRAINS_WITHIN: Duration = Duration::from_secs(1200);
/// Ordinals scaled away (their claims are condemned); ordinal 0 stays.
const CONDEMNED: u32 = 30;
/// The admin token the test gives the install.
const ADMIN_TOKEN: &str = "kube-ha-admin-token-of-at-least-32-characters";
/// Where the install stores snapshots (the S3 test server's bucket).
const STORE: &str = "s3://bucket/ha";
/// How often (c) kills a drainer pod.
const KILL_EVERY: Duration = Duration::from_secs(20);
/// How long (d) leaves PostgreSQL down.
const POSTGRES_DOWN: Duration = Duration::from_secs(15);

/// What each pod of `web` runs: once per claim, files of its own (its name and UID, random
/// bytes of a size that depends on its ordinal, larger than an upload part, a name with
/// spaces in a subdirectory), then it waits for SIGTERM and exits at once, with no hook.
const WRITER: &str = r#"set -e
if [ ! -e /data/.written ]; then
  printf '%s %s\n' "$POD_NAME" "$POD_UID" > /data/owner.txt
  mkdir -p "/data/sub dir"
  head -c $((3000000 + ${POD_NAME##*-} * 7919)) /dev/urandom > "/data/sub dir/random.bin"
  printf 'ordinal %s\n' "${POD_NAME##*-}" > "/data/sub dir/name with spaces"
  : > /data/.written
fi
trap 'exit 0' TERM
while :; do sleep 3600 & wait $!; done
"#;

/// The fault a scale-down runs under.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// (c): a drainer pod force-deleted every [`KILL_EVERY`] until the drains are done.
    KillAReplicaEvery20s,
    /// (d): PostgreSQL stopped once the first drain completed, started [`POSTGRES_DOWN`] later.
    RestartPostgres,
}

/// `deploy/overlays/ha` installed, with its PostgreSQL, its S3 server and the applications'
/// namespace.
struct Ha {
    env: KubeEnv,
    client: Client,
    /// The namespace drainer watches, where `web` runs.
    apps: String,
    postgres: Arc<PrivatePostgres>,
    s3: S3Server,
    /// The test's kustomization (under the checkout's target/: kustomize wants relative paths).
    overlay: tempfile::TempDir,
    /// Scratch: copies of the claims' data, restores.
    work: tempfile::TempDir,
    _forwards: [Forward; 2],
}

impl Ha {
    /// Installs the overlay as a user would, once the previous install (if any) is gone;
    /// returns once its three replicas are Ready.
    async fn install(prefix: &str) -> Result<Self> {
        let env = KubeEnv::load()?;
        let client = client().await?;
        let image = drainer_image_file().await?;
        env.register_image(&release_image(), &image).await?;
        remove_install(&env, &client, &deploy("overlays/ha"), true).await?;
        let postgres = Arc::new(tokio::task::spawn_blocking(PrivatePostgres::start).await?);
        let postgres_forward = Forward::start(&env.host_ip, &postgres.address()).await?;
        let s3 = S3Server::start().await;
        let s3_forward =
            Forward::start(&env.host_ip, s3.endpoint.trim_start_matches("http://")).await?;
        let apps = create_namespace(&client, prefix).await?;
        std::fs::create_dir_all(repo().join("target"))?;
        let overlay = tempfile::tempdir_in(repo().join("target"))?;
        let store_endpoint = format!("http://{}", s3_forward.address);
        std::fs::write(
            overlay.path().join("kustomization.yaml"),
            kustomization(&store_endpoint, &apps),
        )?;
        ensure_namespace(&client, SYSTEM).await?;
        let database = format!("postgres://postgres@{}/postgres", postgres_forward.address);
        create_secret(&env, "drainer-database", &[("url", &database)]).await?;
        create_secret(
            &env,
            "drainer-store-credentials",
            &[
                ("AWS_ACCESS_KEY_ID", s3::KEY),
                ("AWS_SECRET_ACCESS_KEY", s3::SECRET),
            ],
        )
        .await?;
        create_secret(&env, "drainer-admin", &[("token", ADMIN_TOKEN)]).await?;
        let ha = Self {
            env,
            client,
            apps,
            postgres,
            s3,
            overlay,
            work: tempfile::tempdir()?,
            _forwards: [postgres_forward, s3_forward],
        };
        kubectl(&ha.env, &["apply", "-k", &ha.overlay_path()]).await?;
        ha.wait_replicas_ready().await?;
        Ok(ha)
    }

    fn overlay_path(&self) -> String {
        self.overlay.path().display().to_string()
    }

    /// Waits until exactly three drainer pods are Ready (none being deleted).
    async fn wait_replicas_ready(&self) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM);
        let selector = ListParams::default().labels("app.kubernetes.io/component=server");
        let ready = eventually("three drainer replicas Ready", WAIT, || async {
            let list = pods.list(&selector).await?.items;
            let ready = list
                .iter()
                .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
                .count();
            ensure!(ready == 3, "{ready} of {} Ready", list.len());
            Ok(())
        })
        .await;
        if ready.is_err() {
            eprintln!("{}", self.drainer_logs(60).await);
        }
        ready
    }

    /// The last `lines` lines of every drainer pod's log.
    async fn drainer_logs(&self, lines: usize) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM);
        let selector = ListParams::default().labels("app.kubernetes.io/component=server");
        let list = pods.list(&selector).await.map(|l| l.items);
        let mut out = String::new();
        for pod in list.unwrap_or_default() {
            let log = self.env.container_log(&pod, "drainer").unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            let name = pod.metadata.name.unwrap_or_default();
            out.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.apps)
    }

    async fn claim_uid(&self, pvc: &str) -> Result<Option<String>> {
        let claim = self.api::<PersistentVolumeClaim>().get_opt(pvc).await?;
        Ok(claim.map(|c| c.metadata.uid.unwrap_or_default()))
    }

    /// Uninstalls (`kubectl delete -k`) and deletes the applications' namespace, unless
    /// `DRAINER_TEST_KEEP` is set.
    async fn finish(self) -> Result<()> {
        if std::env::var_os("DRAINER_TEST_KEEP").is_some() {
            eprintln!(
                "kube_ha: keeping the install, {} and {}",
                self.apps,
                self.work.keep().display()
            );
            return Ok(());
        }
        remove_install(&self.env, &self.client, &self.overlay_path(), false).await?;
        delete_namespace(&self.client, &self.apps).await
    }
}

/// The test's kustomization: the real overlay, with the S3 test server as its store and
/// drainer watching `apps` only.
fn kustomization(store_endpoint: &str, apps: &str) -> String {
    format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {SYSTEM}
resources:
  - ../../deploy/overlays/ha
configMapGenerator:
  - name: drainer-store
    behavior: replace
    literals:
      - DRAINER_STORE={STORE}
      - AWS_REGION=us-east-1
      - AWS_ENDPOINT={store_endpoint}
      - AWS_ALLOW_HTTP=true
      - AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
patches:
  - target:
      kind: Deployment
      name: drainer
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: DRAINER_WATCH_NAMESPACES, value: {apps}}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: DRAINER_LOG, value: "info,drainer=debug"}}
"#
    )
}

/// `kubectl -n drainer-system create secret generic NAME --from-literal=K=V…`.
async fn create_secret(env: &KubeEnv, name: &str, literals: &[(&str, &str)]) -> Result<()> {
    let literals: Vec<String> = literals
        .iter()
        .map(|(k, v)| format!("--from-literal={k}={v}"))
        .collect();
    let mut args = vec!["-n", SYSTEM, "create", "secret", "generic", name];
    args.extend(literals.iter().map(String::as_str));
    kubectl(env, &args).await.map(drop)
}

/// `kubectl delete -k KUSTOMIZATION` (what an install made: drainer-system with everything in
/// it, the cluster-wide RBAC), waiting until drainer-system is gone with `wait`.
async fn remove_install(
    env: &KubeEnv,
    client: &Client,
    kustomization: &str,
    wait: bool,
) -> Result<()> {
    let wait_flag = format!("--wait={wait}");
    kubectl(
        env,
        &[
            "delete",
            "-k",
            kustomization,
            "--ignore-not-found",
            &wait_flag,
            "--timeout=180s",
        ],
    )
    .await?;
    if wait {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        wait_namespace_gone_if_terminating(&namespaces, SYSTEM).await?;
    }
    Ok(())
}

/// StatefulSet `web`: `replicas` pods from ordinal 0 that write their data ([`WRITER`]) into
/// one claim each, `whenScaled: Delete`.
fn web(replicas: u32) -> StatefulSet {
    WebSet::new(replicas)
        .parallel()
        .when_scaled("Delete")
        .grace(Duration::from_secs(10))
        .runs(
            WRITER,
            &[("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid")],
        )
        .build()
}

/// The claim of ordinal `o`.
fn claim(o: u32) -> String {
    format!("data-web-{o}")
}

/// Creates `web` with ordinals 0..=[`CONDEMNED`], waits until every pod has written its data
/// and every claim is guarded; returns the claims' directories and UIDs.
async fn start_web(ha: &Ha) -> Result<(BTreeMap<String, PathBuf>, BTreeMap<String, String>)> {
    ha.api::<StatefulSet>()
        .create(&PostParams::default(), &web(CONDEMNED + 1))
        .await?;
    let mut dirs = BTreeMap::new();
    let mut uids = BTreeMap::new();
    for o in 0..=CONDEMNED {
        let pvc = claim(o);
        let dir = wait_for_bound_claim(&ha.client, &ha.apps, &pvc, WAIT).await?;
        eventually(format!("web-{o} wrote its data"), WAIT, || async {
            ensure!(dir.join(".written").exists(), "not yet");
            Ok(())
        })
        .await?;
        uids.insert(pvc.clone(), ha.claim_uid(&pvc).await?.context("claim")?);
        dirs.insert(pvc, dir);
    }
    eventually("every claim guarded", WAIT, || async {
        let claims = ha
            .api::<PersistentVolumeClaim>()
            .list(&ListParams::default())
            .await?;
        let unguarded: Vec<_> = claims
            .items
            .iter()
            .filter(|c| !guard::is_guarded(c))
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        ensure!(unguarded.is_empty(), "unguarded: {unguarded:?}");
        Ok(())
    })
    .await?;
    Ok((dirs, uids))
}

/// Copies of the claims' directories as they are now (the condemned ones go with their
/// claims: these stand for them).
fn keep(work: &Path, dirs: &BTreeMap<String, PathBuf>) -> Result<BTreeMap<String, PathBuf>> {
    let mut kept = BTreeMap::new();
    for (pvc, dir) in dirs {
        let copy = work.join(format!("had-{pvc}"));
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(&copy)
            .status()?;
        ensure!(status.success(), "cp -a {}", dir.display());
        kept.insert(pvc.clone(), copy);
    }
    Ok(kept)
}

/// What a fault did, for the report.
#[derive(Debug, Default)]
struct FaultReport {
    /// Each pod killed, with the seconds since the scale-down.
    kills: Vec<(f64, String)>,
    /// PostgreSQL: seconds since the scale-down when it went down and came back, and the
    /// drains completed when it went down.
    postgres: Option<(f64, f64, usize)>,
}

/// What the scale-down's watcher shares with the fault.
struct Progress {
    /// The drains completed so far.
    completed: AtomicUsize,
    /// Set once every drain completed (or the test gave up).
    done: AtomicBool,
}

/// Runs `fault` from the scale-down (`scaled`) until `progress` says the drains are done.
async fn run_fault(
    ha: &Ha,
    fault: Fault,
    scaled: Instant,
    progress: &Progress,
) -> Result<FaultReport> {
    let mut report = FaultReport::default();
    match fault {
        Fault::KillAReplicaEvery20s => {
            let mut next = scaled + KILL_EVERY / 2;
            while !progress.done.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                next += KILL_EVERY;
                if let Some(pod) = kill_a_replica(ha).await? {
                    report.kills.push((scaled.elapsed().as_secs_f64(), pod));
                }
            }
        }
        Fault::RestartPostgres => {
            while progress.completed.load(Ordering::SeqCst) == 0 {
                ensure!(
                    !progress.done.load(Ordering::SeqCst),
                    "the drains ended before PostgreSQL could be restarted"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let completed = progress.completed.load(Ordering::SeqCst);
            let postgres = Arc::clone(&ha.postgres);
            tokio::task::spawn_blocking(move || postgres.down()).await?;
            let down = scaled.elapsed().as_secs_f64();
            tokio::time::sleep(POSTGRES_DOWN).await;
            let postgres = Arc::clone(&ha.postgres);
            tokio::task::spawn_blocking(move || postgres.up()).await?;
            report.postgres = Some((down, scaled.elapsed().as_secs_f64(), completed));
        }
    }
    Ok(report)
}

/// Force-deletes the oldest running drainer pod (killed at once, no grace); its name.
async fn kill_a_replica(ha: &Ha) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(ha.client.clone(), SYSTEM);
    let selector = ListParams::default().labels("app.kubernetes.io/component=server");
    let mut running: Vec<Pod> = pods
        .list(&selector)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    running.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    let Some(name) = running.first().and_then(|p| p.metadata.name.clone()) else {
        return Ok(None);
    };
    let pod = format!("pod/{name}");
    kubectl(
        &ha.env,
        &["-n", SYSTEM, "delete", &pod, "--grace-period=0", "--force"],
    )
    .await?;
    Ok(Some(name))
}

/// Watches the drains of the condemned claims until each has completed: until then each
/// claim must be the one its pod used (never deleted nor replaced), and no drain may end
/// otherwise. Returns the drains by claim.
async fn wait_drains_completed(
    ha: &Ha,
    api: &DrainerApi,
    uids: &BTreeMap<String, String>,
    progress: &Progress,
) -> Result<BTreeMap<String, Value>> {
    let condemned: Vec<String> = (1..=CONDEMNED).map(claim).collect();
    let deadline = Instant::now() + DRAINS_WITHIN;
    let mut last = String::from("no answer yet");
    loop {
        ensure!(
            Instant::now() < deadline,
            "the drains did not complete within {DRAINS_WITHIN:?}: {last}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The claims first, then the drains: a claim seen gone must have a completed drain in
        // a listing made after (the ledger records the completion before the hold is let go),
        // while a listing made before could predate a completion the claim's deletion follows.
        let mut gone = Vec::new();
        for pvc in &condemned {
            if ha.claim_uid(pvc).await?.as_ref() != uids.get(pvc) {
                gone.push(pvc.clone());
            }
        }
        // A replica killed, or PostgreSQL down, may fail one listing: the next one is asked.
        let drains = match api.drains().await {
            Ok(drains) => drains,
            Err(e) => {
                last = format!("listing the drains: {e:#}");
                continue;
            }
        };
        let mut completed = BTreeMap::new();
        for drain in &drains {
            let pvc = drain["pvc"].as_str().unwrap_or_default().to_owned();
            match drain["state"].as_str().unwrap_or_default() {
                "completed" => {
                    completed.insert(pvc, drain.clone());
                }
                "failed" | "cancelled" | "not_needed" | "abandoned" => {
                    bail!("the drain of {pvc} ended {}: {drain}", drain["state"])
                }
                _ => {}
            }
        }
        progress.completed.store(completed.len(), Ordering::SeqCst);
        if let Some(pvc) = gone.iter().find(|p| !completed.contains_key(*p)) {
            bail!("{pvc} deleted or replaced before its drain completed");
        }
        last = format!("{} of {} completed", completed.len(), condemned.len());
        if condemned.iter().all(|p| completed.contains_key(p)) {
            return Ok(completed);
        }
    }
}

/// Each condemned claim was drained exactly once: one drain, one completed copy run in the
/// ledger (the drain's), one snapshot in the store (the drain's), which restores byte for
/// byte to the claim's data as its pod left it. Returns the drains whose copy was taken over
/// by another replica.
async fn check_drained_exactly_once(
    ha: &Ha,
    api: &DrainerApi,
    drains: &BTreeMap<String, Value>,
    kept: &BTreeMap<String, PathBuf>,
) -> Result<usize> {
    let all = api.drains().await?;
    let ledger = drainer::Ledger::open(Some(&ha.postgres.url), Path::new("unused")).await?;
    let mut listing = drainer();
    listing.args(["snapshots", STORE, "-o", "json"]);
    ha.s3.configure(&mut listing);
    let listed: Vec<Value> = serde_json::from_str(&run_ok(&mut listing).await)?;
    let mut taken_over = 0;
    for (pvc, drain) in drains {
        let id = drain["id"].as_str().unwrap_or_default();
        let volume = format!("{}/{pvc}", ha.apps);
        let of_claim = all.iter().filter(|d| d["pvc"] == pvc.as_str()).count();
        ensure!(of_claim == 1, "{pvc} has {of_claim} drains");
        let snapshot = drain["snapshot"].as_str().context("a snapshot")?;
        let runs = ledger.runs(&volume.parse()?).await?;
        let completed: Vec<_> = runs
            .iter()
            .filter(|r| r.state == drainer_core::ledger::RunState::Completed)
            .collect();
        ensure!(
            completed.len() == 1
                && completed[0].drain.as_deref() == Some(id)
                && completed[0].snapshot == snapshot,
            "{pvc}: runs {runs:#?}"
        );
        let snapshots: Vec<&Value> = listed
            .iter()
            .filter(|s| s["volume"] == volume.as_str())
            .collect();
        ensure!(
            snapshots.len() == 1 && snapshots[0]["snapshot"] == snapshot,
            "{pvc}: snapshots in the store {snapshots:#?}"
        );
        restores_exactly(ha, &volume, snapshot, &kept[pvc]).await?;
        if copied_by_several(drain) {
            taken_over += 1;
        }
    }
    Ok(taken_over)
}

/// Whether more than one replica held the drain while it copied.
fn copied_by_several(drain: &Value) -> bool {
    let mut owners: Vec<&str> = drain["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["state"] == "copying")
        .filter_map(|e| e["owner"].as_str())
        .collect();
    owners.sort_unstable();
    owners.dedup();
    owners.len() > 1
}

/// Snapshot `snapshot` of `volume`, restored on this machine from the S3 server, equals
/// `expected` exactly.
async fn restores_exactly(ha: &Ha, volume: &str, snapshot: &str, expected: &Path) -> Result<()> {
    let dest = ha
        .work
        .path()
        .join(format!("restored-{}", volume.replace('/', "_")));
    let mut restore = drainer();
    restore
        .args(["restore", STORE, "--volume", volume, "--snapshot", snapshot])
        .arg(&dest);
    ha.s3.configure(&mut restore);
    run_ok(&mut restore).await;
    let diffs = differences(expected, &dest);
    ensure!(
        diffs.is_empty(),
        "{volume} differs after restore: {diffs:#?}"
    );
    ensure!(
        expected.join("sub dir/random.bin").exists(),
        "{volume} held data"
    );
    Ok(())
}

/// After the drains: the condemned claims deleted by the collector, no hold left; ordinal 0's
/// claim the same, unchanged, guarded, never drained.
async fn check_claims_as_the_policy_asks(
    ha: &Ha,
    api: &DrainerApi,
    dirs: &BTreeMap<String, PathBuf>,
    kept: &BTreeMap<String, PathBuf>,
    uids: &BTreeMap<String, String>,
) -> Result<()> {
    eventually("the drained claims deleted, no hold left", WAIT, || async {
        for o in 1..=CONDEMNED {
            let pvc = claim(o);
            ensure!(ha.claim_uid(&pvc).await?.is_none(), "{pvc} is still there");
        }
        let holds = ha
            .api::<ConfigMap>()
            .list(&ListParams::default().labels(drainer_kube::hold::DRAIN_LABEL))
            .await?;
        let names: Vec<_> = holds
            .items
            .iter()
            .filter_map(|m| m.metadata.name.clone())
            .collect();
        ensure!(names.is_empty(), "holds left: {names:?}");
        Ok(())
    })
    .await?;
    let live = claim(0);
    ensure!(
        ha.claim_uid(&live).await? == uids.get(&live).cloned(),
        "{live} was replaced"
    );
    let diffs = differences(&kept[&live], &dirs[&live]);
    ensure!(diffs.is_empty(), "{live} changed: {diffs:#?}");
    let claim = ha.api::<PersistentVolumeClaim>().get(&live).await?;
    ensure!(guard::is_guarded(&claim), "{live} lost its guard");
    let drains = api.drains_of(&live).await?;
    ensure!(drains.is_empty(), "{live} was drained: {drains:?}");
    Ok(())
}

/// The scale-down 31 → 1 of `web` under `fault`, and every check of the module's promise.
async fn scale_down_under(ha: &Ha, fault: Fault) -> Result<()> {
    let started = Instant::now();
    let step = |what: &str| {
        eprintln!(
            "kube_ha {fault:?}: {:>6.1} s {what}",
            started.elapsed().as_secs_f64()
        )
    };
    let (dirs, uids) = start_web(ha).await?;
    let kept = keep(ha.work.path(), &dirs)?;
    let api = DrainerApi::new(&ha.client, ADMIN_TOKEN, &ha.apps, None).await?;
    step("31 pods wrote their data, every claim guarded; scaling web to 1");
    let scaled = Instant::now();
    let patch = Patch::Merge(json!({"spec": {"replicas": 1}}));
    ha.api::<StatefulSet>()
        .patch("web", &PatchParams::default(), &patch)
        .await?;
    let progress = Progress {
        completed: AtomicUsize::new(0),
        done: AtomicBool::new(false),
    };
    let (drains, report) = tokio::join!(
        async {
            let drains = wait_drains_completed(ha, &api, &uids, &progress).await;
            progress.done.store(true, Ordering::SeqCst);
            drains
        },
        run_fault(ha, fault, scaled, &progress)
    );
    let drains = match drains {
        Ok(drains) => drains,
        Err(e) => return Err(e.context(ha.drainer_logs(40).await)),
    };
    let report = report?;
    let drained_in = scaled.elapsed().as_secs_f64();
    step(&format!(
        "every drain completed {drained_in:.1} s after the scale-down; fault: {report:?}"
    ));
    match fault {
        Fault::KillAReplicaEvery20s => ensure!(
            report.kills.len() >= 2,
            "fewer than two replicas killed during the drains: {report:?}"
        ),
        Fault::RestartPostgres => {
            let (_, _, completed) = report.postgres.context("PostgreSQL was not restarted")?;
            ensure!(
                completed < CONDEMNED as usize,
                "every drain had completed before PostgreSQL went down"
            );
        }
    }
    ha.wait_replicas_ready().await?;
    step("three replicas Ready again");
    let taken_over = check_drained_exactly_once(ha, &api, &drains, &kept).await?;
    step(&format!(
        "each of the {CONDEMNED} claims drained once (one run, one snapshot, restored exactly); \
         {taken_over} copies went through more than one replica"
    ));
    check_claims_as_the_policy_asks(ha, &api, &dirs, &kept, &uids).await?;
    step("the drained claims deleted, no hold left, ordinal 0 untouched and guarded");
    Ok(())
}

/// Installs, runs the scale-down under `fault`, uninstalls.
async fn ha_scale_down(prefix: &str, fault: Fault) -> Result<()> {
    let _serial = LOCK.lock().await;
    with_timeout(LIMIT, async {
        let ha = Ha::install(prefix).await?;
        let result = scale_down_under(&ha, fault).await;
        let finished = ha.finish().await;
        result?;
        finished
    })
    .await
}

/// `deploy/overlays/ha`, one drainer pod force-deleted every 20 s during a
/// 30-claim `whenScaled: Delete` scale-down: each claim is drained exactly once, restores
/// exactly, and is deleted after; no hold is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_replicas_killed_every_20s_during_a_delete_scale_down_lose_nothing() -> Result<()> {
    ha_scale_down("ha-kill", Fault::KillAReplicaEvery20s).await
}

/// `deploy/overlays/ha`, PostgreSQL stopped for 15 s and started again in the
/// middle of a 30-claim `whenScaled: Delete` scale-down: each claim is drained exactly once,
/// restores exactly, and is deleted after; no hold is left; the replicas are Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_postgres_restarted_during_a_delete_scale_down_loses_nothing() -> Result<()> {
    ha_scale_down("ha-postgres", Fault::RestartPostgres).await
}
