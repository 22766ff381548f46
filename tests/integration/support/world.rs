//! The world of the kube-env tests whose drains are copied by mover Jobs (`kube_e2e`,
//! `kube_supervision`): a [`TestNamespace`] with ServiceAccount `web`, a [`Gate`] mover pods
//! reach the drainer through, watches that see every mover Job and hold, and the StatefulSet
//! `web` whose pods (processes) write their own data and hand their claims off from a
//! `preStop` hook.

use super::AbortOnDrop;
use super::cluster::{KubeDrainer, TestNamespace, WebSet};
use super::gate::Gate;
use super::image::drainer_image;
use super::kube::{KubeEnv, admin_kubeconfig, eventually};
use super::serve::Serve;
use anyhow::{Result, bail, ensure};
use drainer_kube::{hold, mover_jobs};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound of one wait inside a test.
pub const WAIT: Duration = Duration::from_secs(240);
/// The ordinals of `web`: 5, 6, 7 at three replicas; 6 and 7 go on a scale to one.
pub const START: u32 = 5;
/// The claim templates of `web`.
pub const TEMPLATES: [&str; 2] = ["data", "logs"];

/// What each pod of `web` runs: once per claim set (a restarted pod finds its data and leaves
/// it alone), it writes files of its own into both claims (names with spaces, quotes, a
/// newline, a leading dash, Latin-1 bytes that are not UTF-8, a symlink, an empty directory,
/// random content of a size that depends on the ordinal, and in `data` a file larger than an
/// upload part), then waits for SIGTERM.
pub const WRITER: &str = r#"set -e
if [ ! -e /data/.written ]; then
  for d in /data /logs; do
    printf '%s wrote %s\n' "$POD_NAME" "$d" > "$d/owner.txt"
    mkdir -p "$d/sub dir/ünïcødé"
    printf '%s\n' "$POD_UID" > "$d/sub dir/ünïcødé/name with spaces & 'quotes'"
    printf 'dash\n' > "$d/-leading-dash"
    printf 'break\n' > "$d/$(printf 'line\nbreak')"
    printf 'latin-1\n' > "$d/$(printf 'caf\351')"
    head -c $((1500000 + ${POD_NAME##*-} * 7919)) /dev/urandom > "$d/random.bin"
    if [ "$d" = /data ]; then head -c 9000000 /dev/urandom > "$d/big.bin"; fi
    ln -s 'sub dir' "$d/link to dir"
    mkdir -p "$d/empty"
  done
  : > /data/.written
fi
trap 'exit 0' TERM
while :; do sleep 1; done
"#;

/// StatefulSet `web`: `replicas` pods from ordinal 5, claims `data` and `logs`, pods that write
/// their data and hand off from `preStop` (`drainer handoff --drainer URL`, the pod's projected
/// token of audience `drainer`; drainer installed by an init container).
pub fn web(replicas: u32, when_scaled: &str, drainer_url: &str) -> StatefulSet {
    web_with(replicas, when_scaled, &TEMPLATES, WRITER, Some(drainer_url))
}

/// StatefulSet `web`: `replicas` pods from ordinal 5, a claim per template, pods that run
/// `writer` and, with a `handoff` URL, hand off from `preStop` (`drainer handoff --drainer
/// URL`, the pod's projected token of audience `drainer`, drainer installed by an init
/// container); without one, they have no hook (and no drainer).
pub fn web_with(
    replicas: u32,
    when_scaled: &str,
    templates: &[&str],
    writer: &str,
    handoff: Option<&str>,
) -> StatefulSet {
    let set = WebSet::new(replicas)
        .ordinals_from(START)
        .parallel()
        .when_scaled(when_scaled)
        .claims(templates, "64Mi")
        .web_account()
        .default_grace()
        .runs(
            writer,
            &[("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid")],
        )
        .drainer_token();
    match handoff {
        Some(url) => set.hands_off_to(url),
        None => set,
    }
    .build()
}

/// Watches the objects of kind `K` in `ns` until the returned guard is dropped, handing each
/// event to `on_event` (errors are retried by the watcher's backoff).
fn watch_namespace<K>(
    client: &Client,
    ns: &str,
    mut on_event: impl FnMut(watcher::Event<K>) + Send + 'static,
) -> AbortOnDrop
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    AbortOnDrop(tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            if let Ok(event) = event {
                on_event(event);
            }
        }
    }))
}

/// Every Job drainer creates in a namespace, as a watch sees them: drain label → Job names;
/// and how many ran at once (created, not yet finished nor being deleted), at most.
#[derive(Clone, Default)]
pub struct JobsSeen(Arc<Mutex<Jobs>>);

#[derive(Default)]
struct Jobs {
    by_drain: BTreeMap<String, BTreeSet<String>>,
    running: BTreeSet<String>,
    peak: usize,
}

impl Jobs {
    fn saw(&mut self, job: &Job) {
        let drain = job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("drainer.io/drain").cloned())
            .unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        self.by_drain.entry(drain).or_default().insert(name.clone());
        if job.metadata.deletion_timestamp.is_some() || mover_jobs::is_finished(job) {
            self.running.remove(&name);
        } else {
            self.running.insert(name);
            self.peak = self.peak.max(self.running.len());
        }
    }
}

impl JobsSeen {
    /// Watches the Jobs of `ns` until the returned guard is dropped.
    fn watch(client: &Client, ns: &str) -> (Self, AbortOnDrop) {
        let seen = Self::default();
        let record = seen.clone();
        let task = watch_namespace::<Job>(client, ns, move |event| {
            let mut jobs = record.0.lock().unwrap();
            match event {
                watcher::Event::Apply(job) | watcher::Event::InitApply(job) => jobs.saw(&job),
                watcher::Event::Delete(job) => {
                    jobs.running.remove(&job.metadata.name.unwrap_or_default());
                }
                // A new listing: what runs is what it lists.
                watcher::Event::Init => jobs.running.clear(),
                watcher::Event::InitDone => {}
            }
        });
        (seen, task)
    }

    /// The Jobs seen, by drain label.
    pub fn all(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.0.lock().unwrap().by_drain.clone()
    }

    /// The Jobs seen for drain `id`.
    pub fn of(&self, id: &str) -> BTreeSet<String> {
        self.all()
            .get(&mover_jobs::drain_label(id))
            .cloned()
            .unwrap_or_default()
    }

    /// The most Jobs seen running at once.
    pub fn peak(&self) -> usize {
        self.0.lock().unwrap().peak
    }
}

/// The drainer holds each claim of a namespace was ever seen with, as a watch sees them:
/// claim name → hold names among its owners. A hold may come and go between two polls of a
/// test (a small claim is drained in a moment); the watch sees every change.
#[derive(Clone, Default)]
pub struct HoldsSeen(Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>);

impl HoldsSeen {
    /// Watches the claims of `ns` until the returned guard is dropped.
    fn watch(client: &Client, ns: &str) -> (Self, AbortOnDrop) {
        let seen = Self::default();
        let record = seen.clone();
        let task = watch_namespace::<PersistentVolumeClaim>(client, ns, move |event| {
            if let watcher::Event::Apply(claim) | watcher::Event::InitApply(claim) = event {
                record.saw(&claim);
            }
        });
        (seen, task)
    }

    fn saw(&self, claim: &PersistentVolumeClaim) {
        let holds = claim
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.kind == "ConfigMap" && o.name.starts_with("drainer-hold-"))
            .map(|o| o.name.clone());
        let name = claim.metadata.name.clone().unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .extend(holds);
    }

    /// Whether claim `pvc` was seen held by drain `id`'s hold.
    pub fn held(&self, pvc: &str, id: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(pvc)
            .is_some_and(|holds| holds.contains(&hold::hold_name(id)))
    }
}

/// One test's namespace (with ServiceAccount `web`, its claims and mover Jobs watched), gate
/// and scratch directory: the world of the tests whose drains are copied by mover Jobs.
pub struct World {
    namespace: TestNamespace,
    /// The gate mover pods reach the drainer through.
    pub gate: Gate,
    /// The mover image: the binary under test's.
    image: &'static str,
    /// The mover Jobs seen in the namespace.
    pub jobs: JobsSeen,
    /// The holds seen on the namespace's claims.
    pub holds: HoldsSeen,
    _watches: [AbortOnDrop; 2],
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    /// A world in the shared kube-env.
    pub async fn new(prefix: &str) -> Result<Self> {
        Self::on(prefix, &admin_kubeconfig()?).await
    }

    /// A world in the kube-env instance whose admin kubeconfig is `kubeconfig`.
    pub async fn on(prefix: &str, kubeconfig: &Path) -> Result<Self> {
        let namespace = TestNamespace::on(prefix, kubeconfig).await?;
        namespace.create_web_account().await?;
        let env = KubeEnv::of(kubeconfig)?;
        let gate = Gate::start(&env.host_ip).await?;
        let image = drainer_image(&env).await?;
        let (jobs, jobs_watch) = JobsSeen::watch(&namespace.client, &namespace.ns);
        let (holds, holds_watch) = HoldsSeen::watch(&namespace.client, &namespace.ns);
        Ok(Self {
            namespace,
            gate,
            image,
            jobs,
            holds,
            _watches: [jobs_watch, holds_watch],
        })
    }

    /// A drainer serving this namespace with mover Jobs through the gate, storing in `store`,
    /// leases of 5 s, debug logs.
    pub fn drainer_args(&self, store: &str) -> KubeDrainer {
        KubeDrainer::new(&self.ns, store)
            .mover_jobs(&self.gate.url, self.image)
            .lease(5)
            .kubeconfig(&self.kubeconfig)
            .debug_log()
    }

    /// Starts a drainer with data directory `data` (under the scratch directory), this
    /// world's arguments for `store` plus `extra`, and `env` (a `KUBECONFIG` there stands for
    /// the admin's).
    pub async fn start(
        &self,
        data: &str,
        store: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Serve> {
        let mut drainer = self.drainer_args(store).args(extra);
        for (key, value) in env {
            drainer = match *key {
                "KUBECONFIG" => drainer.kubeconfig(Path::new(value)),
                _ => drainer.env(key, value),
            };
        }
        drainer.start(&self.work.join(data)).await
    }

    /// The one drainer of a test, on the file store; the gate forwards to it.
    pub async fn drainer(&self) -> Result<Serve> {
        let serve = self.start("data", &self.store(), &[], &[]).await?;
        self.gate.forward_to(&serve.url);
        Ok(serve)
    }

    /// Creates `web` and waits until every pod runs and has written its data; returns
    /// (pod name, pod UID) by ordinal.
    pub async fn start_web(
        &self,
        replicas: u32,
        when_scaled: &str,
    ) -> Result<Vec<(String, String)>> {
        let set = web(replicas, when_scaled, &self.gate.url);
        self.start_set(&set, replicas).await
    }

    /// Creates `set` (a `web`) and waits until each of its `replicas` pods runs and has
    /// written its data; returns (pod name, pod UID) by ordinal.
    pub async fn start_set(
        &self,
        set: &StatefulSet,
        replicas: u32,
    ) -> Result<Vec<(String, String)>> {
        self.api::<StatefulSet>()
            .create(&PostParams::default(), set)
            .await?;
        let mut pods = Vec::new();
        for o in START..START + replicas {
            let name = format!("web-{o}");
            let pod = self.running(&name).await?;
            let dir = self.claim_dir(&format!("data-{name}")).await?;
            eventually(format!("{name} wrote its data"), WAIT, || async {
                ensure!(dir.join(".written").exists(), "not yet");
                Ok(())
            })
            .await?;
            pods.push((name, pod.metadata.uid.clone().unwrap_or_default()));
        }
        Ok(pods)
    }

    /// Pod `name` once it runs for real (kube-env does not only simulate it).
    pub async fn running(&self, name: &str) -> Result<Pod> {
        let pods = self.api::<Pod>();
        eventually(format!("pod {name} running"), WAIT, || async {
            let pod = pods.get(name).await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            ensure!(
                phase.as_deref() == Some("Running") && pod.metadata.deletion_timestamp.is_none(),
                "{phase:?}"
            );
            // kube-env gives the pods it only simulates loopback addresses: nothing runs there.
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            if let Some(ip) = ip.filter(|ip| ip.starts_with("127.")) {
                bail!("{name} is simulated (IP {ip}): kube-env does not know one of its images");
            }
            Ok(pod)
        })
        .await
    }

    /// The directory of bound claim `name` (the PV's hostPath).
    pub async fn claim_dir(&self, name: &str) -> Result<PathBuf> {
        self.bound_claim_dir(name, WAIT).await
    }

    /// The UID of claim `name`, if it exists.
    pub async fn claim_uid(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .api::<PersistentVolumeClaim>()
            .get_opt(name)
            .await?
            .map(|c| c.metadata.uid.unwrap_or_default()))
    }

    /// The drain of `pvc` (waits for one to exist); with several, the newest.
    pub async fn drain_of(&self, serve: &Serve, pvc: &str) -> Result<String> {
        self.namespace.drain_of(serve, pvc, WAIT).await
    }

    /// The holds (ConfigMaps drainer made to keep claims from the garbage collector) left.
    pub async fn holds(&self) -> Result<Vec<String>> {
        let maps = self
            .api::<ConfigMap>()
            .list(&ListParams::default().labels("drainer.io/drain"))
            .await?;
        Ok(maps
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect())
    }

    /// Starts deleting the namespace.
    pub async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }
}

/// The claims of ordinals `ordinals`: `data-web-6`, `logs-web-6`, ….
pub fn claims_of(ordinals: impl IntoIterator<Item = u32>) -> Vec<(u32, String)> {
    ordinals
        .into_iter()
        .flat_map(|o| TEMPLATES.map(|t| (o, format!("{t}-web-{o}"))))
        .collect()
}
