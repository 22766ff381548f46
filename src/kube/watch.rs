//! What drainer keeps of the cluster: reflector stores of pods, claims, volumes, StatefulSets
//! and its own mover Jobs, kept current by watches. Pods are pruned to the fields the
//! decisions read (identity, owners, claims, node, phase, deletion), so 10,000 watched pods
//! fit in a few MiB.

use super::Error;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, PodStatus,
};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The label drainer puts on everything it creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "drainer");

/// The cluster as drainer sees it: every watched namespace (all, by default).
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: kube::Client,
    /// The namespaces watched; empty for all.
    pub namespaces: Vec<String>,
    /// Every pod, pruned.
    pub pods: Stores<Pod>,
    /// Every claim.
    pub claims: Stores<PersistentVolumeClaim>,
    /// Every persistent volume (cluster-wide).
    pub volumes: Stores<PersistentVolume>,
    /// Every StatefulSet.
    pub sets: Stores<StatefulSet>,
    /// drainer's mover Jobs.
    pub jobs: Stores<Job>,
}

/// The stores of one kind: one per watched namespace, or one for all.
#[derive(Clone)]
pub struct Stores<K: kube::Resource<DynamicType = ()> + Clone + 'static>(Vec<Store<K>>);

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    /// An object by reference.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.0.iter().find_map(|s| s.get(key))
    }

    /// The objects matching `predicate`.
    pub fn state_filter(&self, predicate: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
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

/// How long start-up waits for the first listing of everything.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts the watches of `namespaces` (all when empty; each watch restarts with backoff on
    /// errors until `stop`), and waits until every store holds a first listing.
    pub async fn start(
        client: kube::Client,
        namespaces: Vec<String>,
        stop: CancellationToken,
    ) -> Result<Self, Error> {
        let all = watcher::Config::default();
        let mine = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let pods = watch_each(&client, &namespaces, all.clone(), prune_pod, &stop);
        let claims = watch_each(&client, &namespaces, all.clone(), prune, &stop);
        let sets = watch_each(&client, &namespaces, all.clone(), prune, &stop);
        let jobs = watch_each(&client, &namespaces, mine, prune, &stop);
        let volumes = Stores(vec![watch(Api::all(client.clone()), all, prune, &stop)]);
        let synced = async {
            pods.wait_until_ready().await?;
            claims.wait_until_ready().await?;
            volumes.wait_until_ready().await?;
            sets.wait_until_ready().await?;
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
                    "the cluster was not listed within {} s (check drainer's RBAC: it lists pods, claims, volumes, StatefulSets and Jobs)",
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
        })
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
    pub fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
    }

    /// The StatefulSets of a namespace.
    pub fn sets_in(&self, namespace: &str) -> Vec<Arc<StatefulSet>> {
        self.sets
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
    }
}

/// Watches a namespaced kind in each of `namespaces` (all, when empty).
fn watch_each<K>(
    client: &kube::Client,
    namespaces: &[String],
    config: watcher::Config,
    prune: fn(&mut K),
    stop: &CancellationToken,
) -> Stores<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    if namespaces.is_empty() {
        return Stores(vec![watch(Api::all(client.clone()), config, prune, stop)]);
    }
    Stores(
        namespaces
            .iter()
            .map(|ns| {
                watch(
                    Api::namespaced(client.clone(), ns),
                    config.clone(),
                    prune,
                    stop,
                )
            })
            .collect(),
    )
}

/// Watches `api` into a store until `stop`.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
    stop: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(prune)
        .reflect(writer)
        .applied_objects();
    let stop = stop.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying"),
                    None => return,
                },
            }
        }
    });
    reader
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
