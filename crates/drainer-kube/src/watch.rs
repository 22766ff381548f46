//! What drainer keeps of the cluster: watch caches (kube's reflector stores) of pods, claims, volumes, StatefulSets
//! and its own mover Jobs and holds, kept current by watches. Pods are pruned to the fields the
//! decisions read (identity, owners, claims, node, phase, deletion), so 10,000 watched pods
//! fit in a few MiB. The pod watch also hands every pod it sees start terminating to the
//! release tracker ([`Terminations`]), so a pod gone before the tracker looks is not missed.
//!
//! Each watch is a supervised task (started again if it ends or panics) that reports its state
//! to the service's [`Health`]: not synced until it has listed, not synced from its first error
//! until it has listed again. A watch that fails does not carry on from where it was (the
//! watcher would resume without a sign that it is current again): it waits a backoff
//! ([`drainer_core::retry::relist_policy`]) and lists anew. Every watch is re-established by the API
//! server at least every [`WATCH_TIMEOUT`], so lost rights show within about that long.

use super::Error;
use super::memory::SetSightings;
use backoff::backoff::Backoff;
use drainer_core::health::{Health, WatchReport};
use drainer_core::supervisor::Supervisor;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, PodStatus,
};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The label drainer puts on everything it creates.
pub(crate) const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "drainer");

/// The cluster as drainer sees it: every watched namespace (all, by default).
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: kube::Client,
    /// The namespaces watched; empty for all.
    pub namespaces: Vec<String>,
    /// Every pod, pruned.
    pub pods: Caches<Pod>,
    /// Every claim.
    pub claims: Caches<PersistentVolumeClaim>,
    /// Every persistent volume (cluster-wide).
    pub volumes: Caches<PersistentVolume>,
    /// Every StatefulSet.
    pub sets: Caches<StatefulSet>,
    /// drainer's mover Jobs.
    pub jobs: Caches<Job>,
    /// drainer's holds (ConfigMaps labelled as drainer's), to notice one deleted by someone.
    pub holds: Caches<ConfigMap>,
    /// Pods seen terminating, for the release tracker.
    pub terminations: Terminations,
    /// Wakes whoever waits on it when a claim or a StatefulSet changed (the guard
    /// reconciler).
    pub changes: Arc<tokio::sync::Notify>,
    /// Whether the watches are synced: decisions that would let go of something wait while
    /// one is not (what it keeps may be stale).
    pub health: Health,
    /// StatefulSets the watch saw, for the ledger's memory (see [`super::memory`]).
    pub seen_sets: SetSightings,
}

/// How many terminating pods wait for the release tracker at most (the oldest go first).
const TERMINATIONS_KEPT: usize = 10_000;

/// Pods the pod watch saw start terminating (or deleted without being seen terminating),
/// each once, kept until the release tracker takes them; the StatefulSet watch only wakes the
/// tracker (a scale-down makes pods scaled-away ordinals before any of them terminates). The
/// tracker also reads the store, but a pod that starts terminating and is gone between two of
/// its looks (a process that exits at once on SIGTERM) is only in the watch's events.
#[derive(Clone, Default)]
pub struct Terminations {
    pods: Arc<Mutex<Vec<Arc<Pod>>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Terminations {
    /// The pods seen since the last call.
    pub fn take(&self) -> Vec<Arc<Pod>> {
        std::mem::take(&mut *self.pods.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until a pod is seen terminating (at once if one was since the last wait).
    pub async fn seen(&self) {
        self.wake.notified().await;
    }

    /// Wakes the tracker without a pod: a StatefulSet changed, and with it which pods are
    /// scaled away.
    fn poke(&self) {
        self.wake.notify_one();
    }

    /// What one StatefulSet watch tells the tracker: a set changed (scaled down, perhaps).
    fn set_follower(&self) -> impl FnMut(&watcher::Event<StatefulSet>) + Send + 'static {
        let out = self.clone();
        move |event| {
            if let watcher::Event::Apply(_) = event {
                out.poke();
            }
        }
    }

    fn push(&self, pod: Pod) {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods.len() >= TERMINATIONS_KEPT {
            pods.remove(0);
        }
        pods.push(Arc::new(pod));
        drop(pods);
        self.wake.notify_one();
    }

    /// What one pod watch (one namespace, or all) tells these terminations about.
    fn follower(&self) -> impl FnMut(&watcher::Event<Pod>) + Send + 'static {
        let out = self.clone();
        // UIDs of pods handed over while they exist; during a new listing, those listed.
        let mut handed: HashSet<String> = HashSet::new();
        let mut listed: Option<HashSet<String>> = None;
        move |event| match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(listed) = listed.as_mut() {
                    listed.insert(uid.clone());
                }
                if pod.metadata.deletion_timestamp.is_some() && handed.insert(uid) {
                    out.push(pod.clone());
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if !handed.remove(&uid) {
                    out.push(pod.clone());
                }
            }
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down are no longer listed: forget them.
                if let Some(listed) = listed.take() {
                    handed.retain(|uid| listed.contains(uid));
                }
            }
        }
    }
}

/// The stores of one kind: one per watched namespace, or one for all.
#[derive(Clone)]
pub struct Caches<K: kube::Resource<DynamicType = ()> + Clone + 'static>(Vec<Store<K>>);

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Caches<K> {
    /// An object by reference.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.0.iter().find_map(|s| s.get(key))
    }

    /// The objects matching `predicate`.
    pub(crate) fn state_filter(&self, predicate: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.0
            .iter()
            .flat_map(|s| s.state_filter(&predicate))
            .collect()
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(Store::state).collect()
    }

    async fn wait_until_ready(&self) -> Result<(), ()> {
        for store in &self.0 {
            store.wait_until_ready().await.map_err(drop)?;
        }
        Ok(())
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> From<Vec<Store<K>>> for Caches<K> {
    /// Caches filled some other way (tests, benchmarks).
    fn from(stores: Vec<Store<K>>) -> Self {
        Self(stores)
    }
}

/// How long start-up waits for the first listing of everything.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the API server keeps one watch request open before drainer makes another (from
/// where it was, without listing again). A new request is authorised again: rights taken away
/// show as a failing watch within about this long.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts the watches of `namespaces` (all when empty), each under a supervisor of its own
    /// stopped by `stop`, and waits until every store holds a first listing.
    pub async fn start(
        client: kube::Client,
        namespaces: Vec<String>,
        stop: CancellationToken,
    ) -> Result<Self, Error> {
        let supervisor = Supervisor::new(stop, Health::default());
        Self::start_under(client, namespaces, &supervisor).await
    }

    /// [`Cluster::start`], with the watches run by `supervisor` and reporting to its health.
    pub(crate) async fn start_under(
        client: kube::Client,
        namespaces: Vec<String>,
        supervisor: &Supervisor,
    ) -> Result<Self, Error> {
        let all = watcher::Config::default().timeout(WATCH_TIMEOUT.as_secs() as u32);
        let mine = all
            .clone()
            .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let terminations = Terminations::default();
        let sv = supervisor;
        let pods = watch_each(&client, &namespaces, all.clone(), prune_pod, sv, || {
            terminations.follower()
        });
        let changes = Arc::new(tokio::sync::Notify::new());
        let claims = watch_each(&client, &namespaces, all.clone(), prune, sv, || {
            poker(Arc::clone(&changes))
        });
        let seen_sets = SetSightings::default();
        let sets = watch_each(&client, &namespaces, all.clone(), prune, sv, || {
            let (mut tracker, mut memory) = (terminations.set_follower(), seen_sets.follower());
            let mut changed = poker(Arc::clone(&changes));
            move |event: &watcher::Event<StatefulSet>| {
                tracker(event);
                memory(event);
                changed(event);
            }
        });
        let jobs = watch_each(&client, &namespaces, mine.clone(), prune, sv, ignore);
        let holds = watch_each(&client, &namespaces, mine, prune, sv, ignore);
        let volumes = Caches(vec![watch(
            Api::all(client.clone()),
            all,
            prune,
            sv,
            |_: &watcher::Event<PersistentVolume>| {},
        )]);
        let synced = async {
            pods.wait_until_ready().await?;
            claims.wait_until_ready().await?;
            volumes.wait_until_ready().await?;
            sets.wait_until_ready().await?;
            holds.wait_until_ready().await?;
            jobs.wait_until_ready().await
        };
        match tokio::time::timeout(SYNC_TIMEOUT, synced).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(Error::Watch(
                    "a watch stopped before its first listing".into(),
                ));
            }
            Err(_) => {
                return Err(Error::Watch(format!(
                    "the cluster was not listed within {} s (check drainer's RBAC: it lists pods, claims, volumes, StatefulSets, Jobs and its ConfigMaps)",
                    SYNC_TIMEOUT.as_secs()
                )));
            }
        }
        Ok(Self {
            client,
            namespaces,
            pods,
            claims,
            volumes,
            sets,
            jobs,
            holds,
            terminations,
            changes,
            health: supervisor.health().clone(),
            seen_sets,
        })
    }

    /// Whether every watch is synced (what the stores keep is current).
    pub fn synced(&self) -> bool {
        self.health.watches_synced()
    }

    /// Whether `namespace` is watched.
    pub fn watches(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    /// A claim by namespace and name.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }

    /// The pods of a namespace.
    pub(crate) fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
    }

    /// The StatefulSets of a namespace.
    pub fn sets_in(&self, namespace: &str) -> Vec<Arc<StatefulSet>> {
        self.sets
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
    }
}

/// A follower that wakes `changes` when an object is added, changed or deleted.
fn poker<K>(changes: Arc<tokio::sync::Notify>) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |event| {
        if matches!(
            event,
            watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
        ) {
            changes.notify_one();
        }
    }
}

/// What a watch that tells nobody about its events does with them.
fn ignore<K>() -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    |_| {}
}

/// Watches a namespaced kind in each of `namespaces` (all, when empty); each watch hands its
/// events to a follower made by `follower`.
fn watch_each<K, F>(
    client: &kube::Client,
    namespaces: &[String],
    config: watcher::Config,
    prune: fn(&mut K),
    supervisor: &Supervisor,
    follower: impl Fn() -> F,
) -> Caches<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    if namespaces.is_empty() {
        return Caches(vec![watch(
            Api::all(client.clone()),
            config,
            prune,
            supervisor,
            follower(),
        )]);
    }
    Caches(
        namespaces
            .iter()
            .map(|ns| {
                watch(
                    Api::namespaced(client.clone(), ns),
                    config.clone(),
                    prune,
                    supervisor,
                    follower(),
                )
            })
            .collect(),
    )
}

/// The name a watch of `api` reports under: the kind's plural, with `/namespace` when it
/// watches one namespace (`pods`, `pods/shop`).
fn watch_name<K: kube::Resource<DynamicType = ()>>(api: &Api<K>) -> String {
    let plural = K::plural(&());
    match api.namespace() {
        Some(ns) => format!("{plural}/{ns}"),
        None => plural.into_owned(),
    }
}

/// One watch: its API and settings, the store it fills, the follower it tells, and where it
/// reports its state. Shared by every run of its supervised task.
struct Watch<K: kube::Resource<DynamicType = ()> + Clone + 'static, F> {
    name: String,
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
    writer: Mutex<reflector::store::Writer<K>>,
    follower: Mutex<F>,
    report: WatchReport,
}

/// Watches `api` into a store, as a task of `supervisor`, handing each event to `follower` once
/// the store has it.
fn watch<K, F>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
    supervisor: &Supervisor,
    follower: F,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let name = watch_name(&api);
    let watch = Arc::new(Watch {
        report: supervisor.health().watch(&name),
        name: name.clone(),
        api,
        config,
        prune,
        writer: Mutex::new(writer),
        follower: Mutex::new(follower),
    });
    supervisor.spawn(&format!("watch {name}"), move |stop| {
        Arc::clone(&watch).run(stop)
    });
    reader
}

impl<K, F> Watch<K, F>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    /// Lists and watches until `stop`; after an error, waits a backoff and lists again.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut delays = drainer_core::retry::relist_policy();
        loop {
            let failed = tokio::select! {
                () = stop.cancelled() => return,
                failed = self.follow(&mut delays) => failed,
            };
            self.report.failing(&failed);
            let delay = delays
                .next_backoff()
                .unwrap_or(drainer_core::retry::RELIST_MAX);
            tracing::warn!(
                watch = %self.name,
                error = %failed,
                relist_in_ms = delay.as_millis() as u64,
                "watch failed; listing again after a backoff"
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Lists, then watches, applying each event to the store and the follower; returns the
    /// first error. Synced once listed (the backoff starts over then).
    async fn follow(&self, delays: &mut backoff::ExponentialBackoff) -> String {
        let mut events = watcher(self.api.clone(), self.config.clone()).boxed();
        loop {
            let event = match events.next().await {
                Some(Ok(event)) => event.modify(self.prune),
                Some(Err(e)) => return e.to_string(),
                None => return "the watch stream ended".into(),
            };
            lock(&self.writer).apply_watcher_event(&event);
            (lock(&self.follower))(&event);
            if let watcher::Event::InitDone = event {
                if self.report.synced() {
                    tracing::info!(watch = %self.name, "watch listed again; synced");
                }
                delays.reset();
            }
        }
    }
}

/// Locks `mutex`, even if a panicking run of the watch left it poisoned (what it guards is
/// replaced as a whole by the next listing).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops what no decision reads from any object: managed fields and the last-applied
/// annotation.
fn prune<K: kube::Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Keeps of a pod only identity, owners, labels, deletion, its claims, node and
/// ServiceAccount, and its phase.
fn prune_pod(pod: &mut Pod) {
    prune(pod);
    pod.metadata.annotations = None;
    let spec = pod.spec.take().unwrap_or_default();
    let volumes = spec.volumes.map(|vs| {
        vs.into_iter()
            .filter(|v| v.persistent_volume_claim.is_some())
            .collect()
    });
    pod.spec = Some(PodSpec {
        volumes,
        node_name: spec.node_name,
        service_account_name: spec.service_account_name,
        ..PodSpec::default()
    });
    let phase = pod.status.take().and_then(|s| s.phase);
    pod.status = Some(PodStatus {
        phase,
        ..PodStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use watcher::Event;

    fn pod(uid: &str, terminating: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.uid = Some(uid.to_owned());
        if terminating {
            pod.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        pod
    }

    fn uids(pods: Vec<Arc<Pod>>) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.uid.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn each_pod_is_handed_over_once_when_it_starts_terminating_or_vanishes_unseen() {
        let terminations = Terminations::default();
        let mut follow = terminations.follower();
        follow(&Event::Apply(pod("a", false)));
        assert!(terminations.take().is_empty(), "a running pod");
        follow(&Event::Apply(pod("a", true)));
        follow(&Event::Apply(pod("a", true)));
        follow(&Event::Delete(pod("a", true)));
        assert_eq!(uids(terminations.take()), ["a"], "once, not per update");
        // Deleted before the watch saw it terminating: handed over at its deletion.
        follow(&Event::Apply(pod("b", false)));
        follow(&Event::Delete(pod("b", true)));
        assert_eq!(uids(terminations.take()), ["b"]);
    }

    #[test]
    fn a_new_listing_forgets_pods_deleted_while_the_watch_was_down() {
        let terminations = Terminations::default();
        let mut follow = terminations.follower();
        follow(&Event::Apply(pod("gone", true)));
        follow(&Event::Apply(pod("still", true)));
        assert_eq!(uids(terminations.take()), ["gone", "still"]);
        follow(&Event::Init);
        follow(&Event::InitApply(pod("still", true)));
        follow(&Event::InitDone);
        assert!(terminations.take().is_empty(), "no pod handed over twice");
        // "gone" is forgotten: a pod of that UID could only be new to the watch.
        follow(&Event::Apply(pod("gone", true)));
        follow(&Event::Delete(pod("still", true)));
        assert_eq!(uids(terminations.take()), ["gone"]);
    }
}
