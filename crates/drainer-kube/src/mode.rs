//! Kubernetes mode as the server sees it: the [`MakeMode`] that builds the server's seams
//! (authority, admission, notifier, executor, sweeper, retention's claims) from the cluster
//! and starts Kubernetes mode's long-lived tasks (watches, release tracker, StatefulSet
//! memory, sweeper Lease, standing guards, Drain objects) under the service's supervisor.

use crate::args::KubeArgs;
use anyhow::Context;
use drainer_server::admission::Admission;
use drainer_server::args::Movers;
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
        let args = base.args;
        let kube = &self.args;
        let admin = base.admin_token()?;
        let client = crate::client::connect()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let cluster =
            crate::Cluster::start_under(client, kube.watch_namespaces.clone(), base.supervisor)
                .await
                .context("watching the cluster")?;
        let authority = crate::identity::TokenReviews::new(
            cluster.clone(),
            base.ledger.clone(),
            kube.audience.clone(),
            admin,
        )
        .with_gate(args.limits.token_reviews());
        let events = Arc::new(crate::events::KubeEvents::new(cluster.clone(), base.owner));
        let notifier: Arc<dyn Notifier> = events.clone();
        let admission: Arc<dyn Admission> = Arc::new(crate::admission::KubeAdmission {
            cluster: cluster.clone(),
            ledger: base.ledger.clone(),
        });
        // One replica runs the scheduled sweeps: the holder of the sweeper Lease, which its keeper
        // renews on its own short timer (whatever the sweep interval) and gives up at shutdown.
        // The same replica runs the retention passes.
        let prunes =
            !args.retention.prune_interval.is_zero() && !args.retention.policy.policy().is_empty();
        let scheduled = !args.sweep_interval.is_zero() || prunes;
        let keeper = scheduled.then(|| {
            use crate::lease::{Keeper, LEASE_DURATION, Lease, RENEW_EVERY, SWEEPER_LEASE};
            let namespace = crate::lease::own_namespace(kube, &cluster.client);
            let lease = Lease::new(
                cluster.client.clone(),
                &namespace,
                SWEEPER_LEASE,
                base.owner,
                LEASE_DURATION,
            );
            Keeper::new(lease, RENEW_EVERY)
        });
        let sweeper = crate::sweep::KubeSweeper::new(crate::sweep::Sweeping {
            cluster: cluster.clone(),
            ledger: base.ledger.clone(),
            store: base.store.clone(),
            metrics: Arc::clone(base.metrics),
            notifier: Arc::clone(&notifier),
            admission: Some(Arc::clone(&admission)),
            max_attempts: args.max_attempts,
            lease: keeper.as_ref().map(crate::lease::Keeper::holding),
        });
        let releases = crate::release::Releases {
            cluster: cluster.clone(),
            ledger: base.ledger.clone(),
            notifier: Arc::clone(&notifier),
            release_timeout: kube.release_timeout,
            max_attempts: args.max_attempts,
        };
        base.supervisor
            .spawn("release-tracker", move |stop| releases.clone().run(stop));
        let (seen_sets, ledger) = (cluster.seen_sets.clone(), base.ledger.clone());
        base.supervisor.spawn("statefulset-memory", move |stop| {
            seen_sets.clone().run(ledger.clone(), stop)
        });
        let keeper_holding = keeper.as_ref().map(crate::lease::Keeper::holding);
        // A Drain object per drain: the Lease's holder (every replica when there is no Lease)
        // writes them and answers the requests and actions users make with them, through the
        // HTTP API's request path; each replica writes the progress of its own copies.
        let objects = crate::drain_objects::DrainObjects {
            client: cluster.client.clone(),
            namespaces: cluster.namespaces.clone(),
            ledger: base.ledger.clone(),
            board: base.board.clone(),
            ttl: kube.drain_objects_ttl,
            lease: keeper_holding.clone(),
            requests: drainer_server::requests::Requests {
                ledger: base.ledger.clone(),
                admission: Arc::clone(&admission),
                notifier: Arc::clone(&notifier),
                board: base.board.clone(),
            },
            max_attempts: args.max_attempts,
        };
        base.supervisor
            .spawn("drain-objects", move |stop| objects.clone().run(stop));
        if let Some(keeper) = keeper {
            base.supervisor
                .spawn("sweeper-lease", move |stop| keeper.clone().run(stop));
        }
        // Every claim a StatefulSet's retention policy could delete carries a standing guard, so
        // that a scale-down while no drainer runs loses nothing.
        let sweeper: Arc<dyn Sweeper> = Arc::new(sweeper);
        let claims = keeper_holding.map(|lease| {
            Arc::new(crate::retention::KubeClaims {
                cluster: cluster.clone(),
                lease: Some(lease),
            }) as Arc<dyn drainer_server::pruning::Claims>
        });
        let guards = crate::guard::Guards {
            cluster: cluster.clone(),
            ledger: base.ledger.clone(),
            events,
            sweeper: Arc::clone(&sweeper),
        };
        base.supervisor
            .spawn("guards", move |stop| guards.clone().run(stop));
        // Mover Jobs copy, unless movers are run by other means (`--movers external`).
        let executor: Arc<dyn Executor> = match args.movers {
            Movers::External => Arc::new(base.external_movers()),
            Movers::InProcess => Arc::new(
                crate::movers::JobMovers::new(
                    cluster.clone(),
                    base.ledger.clone(),
                    base.store.clone(),
                    kube,
                    args.mover_timeout,
                )
                .context("mover Jobs")?,
            ),
        };
        Ok(Mode {
            authority: Arc::new(authority),
            admission,
            notifier,
            executor,
            sweeper,
            claims,
            describe: format!("kubernetes (audience {})", kube.audience),
        })
    }
}
