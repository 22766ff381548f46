//! Kubernetes mode: the cluster side of drainer, behind the core's seams (the API's
//! [`drainer_server::auth::Authority`], the scheduler's `Executor`, the lifecycle's
//! events). Each file is one job: [`watch`] keeps the cluster's objects, [`planner`] decides
//! (pure), [`identity`] turns projected tokens into callers, [`release`] waits for volumes to
//! be let go, [`hold`] keeps claims the StatefulSet would delete, [`guard`] keeps them while
//! drainer itself is down, [`mover_jobs`] copies volumes
//! through mover Jobs, [`sweep`] finds orphaned claims nobody handed off (one replica at a
//! time, by the [`lease`]; StatefulSets the watch saw are remembered by [`memory`] for it, and
//! what sweeps remember is kept in the ledger by [`sweep_records`]),
//! [`events`] tells users on the claim and the pod what happened to their drains, [`retention`]
//! tells the retention pass which claims exist and how they are annotated, [`drain_objects`]
//! keeps a `Drain` object per drain in step with the ledger and takes the drains, retries,
//! cancels and abandons users ask for with them, [`lives`] records which life of its namespace
//! each copy belongs to, [`reclaim`] gives back the storage of scaled-away ordinals drained
//! long enough ago (opt-in), and [`facts`] names what it records on each drain (the ledger
//! keeps them without knowing them). Core modules never import this one.

pub mod args;
pub mod client;
pub mod drain_objects;
pub mod events;
pub mod facts;
pub mod guard;
pub mod hold;
pub mod identity;
pub mod intake;
pub mod lease;
pub mod lives;
pub mod memory;
pub mod mode;
pub mod mover_jobs;
pub mod planner;
pub mod reclaim;
pub mod release;
pub mod retention;
pub mod sweep;
pub mod sweep_records;
pub mod watch;

#[cfg(test)]
mod mock;

pub use watch::Cluster;

/// Errors of the Kubernetes side. Each carries the object it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done, with the object's name.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A call to the API server did not answer in time.
    #[error("{what}: no answer within {seconds} s")]
    Timeout {
        /// What was being done.
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// The watches could not be started.
    #[error("watching the cluster: {0}")]
    Watch(String),
    /// The client could not be configured.
    #[error("Kubernetes client: {0}")]
    Config(String),
    /// An object drainer would act on is not drainer's (a name someone else took).
    #[error("{what}: {why}")]
    NotOurs {
        /// The object.
        what: String,
        /// Why it is not drainer's.
        why: String,
    },
}

impl Error {
    /// Whether retrying may succeed: timeouts, connection errors, API 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { source, .. } => match source {
                kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                kube::Error::HyperError(_) | kube::Error::Service(_) => true,
                _ => false,
            },
            Error::Timeout { .. } | Error::Watch(_) => true,
            Error::Config(_) | Error::NotOurs { .. } => false,
        }
    }

    /// Whether the API said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 404)
    }

    /// Whether the API refused drainer the call (RBAC).
    pub(crate) fn is_forbidden(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 403)
    }

    /// Whether the API said the object exists already.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// How long one call to the API server may take.
pub(crate) const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one API call with [`API_TIMEOUT`], naming `what` in its error.
pub async fn call<T>(
    what: impl Into<String>,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::Api {
            what: what.into(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            what: what.into(),
            seconds: API_TIMEOUT.as_secs(),
        }),
    }
}
