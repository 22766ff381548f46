//! Kubernetes mode as the server sees it: the [`MakeMode`] that builds the server's seams
//! (authority, intake, notifier, executor, sweeper, retention's claims) from the cluster
//! and starts Kubernetes mode's long-lived tasks (watches, release tracker, StatefulSet
//! memory, sweeper Lease, standing guards, Drain objects, the reclaimer) under the service's supervisor.

use crate::args::KubeArgs;
use crate::lease::{Holding, Keeper, LEASE_DURATION, Lease, RENEW_EVERY, SWEEPER_LEASE};
use anyhow::Context;
use drainer_server::args::Movers;
use drainer_server::intake::Intake;
use drainer_server::notify::Notifier;
use drainer_server::scheduler::Executor;
use drainer_server::service::{Base, MakeMode, Mode};
use drainer_server::sweep::Sweeper;
use std::sync::Arc;

/// `drainer serve --kubernetes`.
#[derive(Debug, Clone)]
pub struct KubernetesMode {
    args: KubeArgs,
}

impl KubernetesMode {
    /// Kubernetes mode with its flags.
    pub fn new(args: KubeArgs) -> Self {
        Self { args }
    }
}

#[async_trait::async_trait]
impl MakeMode for KubernetesMode {
    /// Kubernetes mode: the cluster's watches, TokenReview identities (the static token, if one is
    /// configured, is an admin's), handoffs that wait for their pod's release, held claims, copies
    /// by mover Jobs.
    async fn make(&self, base: &Base<'_>) -> anyhow::Result<Mode> {
        let kube = &self.args;
        let admin = base.admin_token()?;
        let cluster = watch_cluster(kube, base).await?;
        let authority = crate::identity::TokenReviews::new(
            cluster.clone(),
            base.ledger.clone(),
            kube.audience.clone(),
            admin,
        )
        .with_gate(
            base.args.limits.token_reviews(),
            base.metrics.token_reviews.clone(),
        );
        let events = Arc::new(crate::events::KubeEvents::new(cluster.clone(), base.owner));
        let intake: Arc<dyn Intake> = Arc::new(crate::intake::KubeIntake {
            cluster: cluster.clone(),
            ledger: base.ledger.clone(),
        });
        let keeper = sweeper_lease(kube, base, &cluster);
        let parts = Parts {
            kube,
            notifier: events.clone(),
            events,
            intake,
            holding: keeper.as_ref().map(Keeper::holding),
            cluster,
        };
        let sweeper = parts.sweeper(base);
        parts.spawn_tasks(base, keeper, &sweeper);
        Ok(Mode {
            authority: Arc::new(authority),
            executor: parts.executor(base)?,
            claims: parts.claims(),
            intake: parts.intake,
            notifier: parts.notifier,
            sweeper,
            describe: format!("kubernetes (audience {})", kube.audience),
        })
    }
}

/// Connects to the API server (in-cluster config or KUBECONFIG) and starts the watches.
async fn watch_cluster(kube: &KubeArgs, base: &Base<'_>) -> anyhow::Result<crate::Cluster> {
    let client = crate::client::connect_counted(base.metrics.kube_api_requests.clone())
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    crate::Cluster::start_under(client, kube.watch_namespaces.clone(), base.supervisor)
        .await
        .context("watching the cluster")
}

/// The keeper of the sweeper Lease, when this replica has scheduled work (sweeps or retention
/// passes): one replica runs them, the holder of the Lease, which its keeper renews on its own
/// short timer (whatever the sweep interval) and gives up at shutdown.
fn sweeper_lease(kube: &KubeArgs, base: &Base<'_>, cluster: &crate::Cluster) -> Option<Keeper> {
    let retention = &base.args.retention;
    let prunes = !retention.prune_interval.is_zero() && !retention.policy.policy().is_empty();
    let scheduled = !base.args.sweep_interval.is_zero() || prunes;
    scheduled.then(|| {
        let namespace = crate::lease::own_namespace(kube, &cluster.client);
        let lease = Lease::new(
            cluster.client.clone(),
            &namespace,
            SWEEPER_LEASE,
            base.owner,
            LEASE_DURATION,
        );
        Keeper::new(lease, RENEW_EVERY)
    })
}

/// What Kubernetes mode's seams and tasks are made from: the cluster, its Events, intake
/// and the sweeper Lease (`holding`: whether this replica holds it, when there is one).
struct Parts<'a> {
    kube: &'a KubeArgs,
    cluster: crate::Cluster,
    events: Arc<crate::events::KubeEvents>,
    notifier: Arc<dyn Notifier>,
    intake: Arc<dyn Intake>,
    holding: Option<Holding>,
}

impl Parts<'_> {
    /// The sweeper: scheduled and asked-for sweeps of the cluster's claims.
    fn sweeper(&self, base: &Base<'_>) -> Arc<dyn Sweeper> {
        Arc::new(crate::sweep::KubeSweeper::new(crate::sweep::Sweeping {
            cluster: self.cluster.clone(),
            ledger: base.ledger.clone(),
            store: base.store.clone(),
            metrics: Arc::clone(base.metrics),
            notifier: Arc::clone(&self.notifier),
            intake: Some(Arc::clone(&self.intake)),
            max_attempts: base.args.max_attempts,
            lease: self.holding.clone(),
        }))
    }

    /// Starts the long-lived tasks under the service's supervisor: the release tracker, the
    /// StatefulSet memory, the Drain objects, the sweeper Lease's keeper and the standing
    /// guards.
    fn spawn_tasks(&self, base: &Base<'_>, keeper: Option<Keeper>, sweeper: &Arc<dyn Sweeper>) {
        let releases = crate::release::Releases {
            cluster: self.cluster.clone(),
            ledger: base.ledger.clone(),
            notifier: Arc::clone(&self.notifier),
            release_timeout: self.kube.release_timeout,
            max_attempts: base.args.max_attempts,
        };
        base.supervisor
            .spawn("release-tracker", move |stop| releases.clone().run(stop));
        let (seen_sets, ledger) = (self.cluster.seen_sets.clone(), base.ledger.clone());
        base.supervisor.spawn("statefulset-memory", move |stop| {
            seen_sets.clone().run(ledger.clone(), stop)
        });
        let objects = self.drain_objects(base);
        base.supervisor
            .spawn("drain-objects", move |stop| objects.clone().run(stop));
        if let Some(keeper) = keeper {
            base.supervisor
                .spawn("sweeper-lease", move |stop| keeper.clone().run(stop));
        }
        // Every claim a StatefulSet's retention policy could delete carries a standing guard,
        // so that a scale-down while no drainer runs loses nothing.
        let guards = crate::guard::Guards {
            cluster: self.cluster.clone(),
            ledger: base.ledger.clone(),
            events: Arc::clone(&self.events),
            sweeper: Arc::clone(sweeper),
        };
        base.supervisor
            .spawn("guards", move |stop| guards.clone().run(stop));
        let reclaimer = crate::reclaim::Reclaimer {
            cluster: self.cluster.clone(),
            ledger: base.ledger.clone(),
            store: base.store.clone(),
            events: Arc::clone(&self.events),
            lease: self.holding.clone(),
            default: self.kube.reclaim_after,
            replica: base.owner.to_owned(),
            verified: Arc::default(),
        };
        base.supervisor
            .spawn("reclaimer", move |stop| reclaimer.clone().run(stop));
    }

    /// A Drain object per drain: the Lease's holder (every replica when there is no Lease)
    /// writes them and answers the requests and actions users make with them, through the
    /// HTTP API's request path; each replica writes the progress of its own copies.
    fn drain_objects(&self, base: &Base<'_>) -> crate::drain_objects::DrainObjects {
        crate::drain_objects::DrainObjects {
            client: self.cluster.client.clone(),
            namespaces: self.cluster.namespaces.clone(),
            ledger: base.ledger.clone(),
            board: base.board.clone(),
            ttl: self.kube.drain_objects_ttl,
            lease: self.holding.clone(),
            requests: drainer_server::requests::Requests {
                ledger: base.ledger.clone(),
                intake: Arc::clone(&self.intake),
                notifier: Arc::clone(&self.notifier),
                board: base.board.clone(),
            },
            max_attempts: base.args.max_attempts,
        }
    }

    /// What copies: mover Jobs, unless movers are run by other means (`--movers external`);
    /// either way each attempt first records the namespace life of the drain's claim.
    fn executor(&self, base: &Base<'_>) -> anyhow::Result<Arc<dyn Executor>> {
        let inner: Arc<dyn Executor> = match base.args.movers {
            Movers::External => Arc::new(base.external_movers()),
            Movers::InProcess => Arc::new(
                crate::mover_jobs::JobMovers::new(
                    self.cluster.clone(),
                    base.ledger.clone(),
                    base.store.clone(),
                    self.kube,
                    base.args.mover_timeout,
                )
                .context("mover Jobs")?,
            ),
        };
        Ok(Arc::new(crate::lives::LifeRecording {
            cluster: self.cluster.clone(),
            ledger: base.ledger.clone(),
            inner,
        }))
    }

    /// The claims retention may prune snapshots of, on the Lease's holder (none without a
    /// Lease: no retention passes are scheduled then).
    fn claims(&self) -> Option<Arc<dyn drainer_server::pruning::Claims>> {
        self.holding.clone().map(|lease| {
            Arc::new(crate::retention::KubeClaims {
                cluster: self.cluster.clone(),
                lease: Some(lease),
            }) as Arc<dyn drainer_server::pruning::Claims>
        })
    }
}
