//! `drainer serve`: wires the ledger, the store, the mode's parts (who calls, who copies, who
//! sweeps, what handoffs add), the scheduler and the HTTP API together, supervises them, and
//! shuts them down in order.
//!
//! Every long-lived task (the watches, the release tracker, the sweeps, the store prober, the
//! ledger's intake and checkpointer) runs under one [`Supervisor`], which starts it again when
//! it ends and reports to the [`Health`] that `/readyz`, `/healthz` and `/metrics` read. The
//! HTTP server and the scheduler are the service itself: if either stops unexpectedly, `serve`
//! returns an error and the process exits non-zero.
//!
//! Local mode is the default: volume `NS/PVC` is `VOLUME_ROOT/NS/PVC`, the ledger is SQLite and
//! the store a directory, all under the data directory, and the holder of the static token is
//! an admin. Kubernetes mode (`--kubernetes`) watches the cluster, identifies callers by
//! TokenReview, waits for volumes' release, holds claims, copies through movers and sweeps
//! StatefulSets (`drainer_kube`, through [`MakeMode`]). Every default is one flag away.

use crate::args::{Movers, ServeArgs};
use crate::auth::{Authority, StaticToken, load_or_create_token};
use crate::http::{AppState, Shared, router};
use crate::intake::{Intake, Local};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::scheduler::{Executor, ExternalMovers, LocalExecutor, Scheduler};
use crate::shutdown::Shutdown;
use crate::sweep::{LocalSweeper, Sweeper};
use anyhow::{Context, bail};
use drainer_core::health::Health;
use drainer_core::ledger::Ledger;
use drainer_core::store::{Store, StoreOptions};
use drainer_core::supervisor::Supervisor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the store is probed for `/readyz`'s store condition and `drainer_store_up`.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(10);

/// The parts that differ between local and Kubernetes mode.
pub struct Mode {
    /// Who calls.
    pub authority: Arc<dyn Authority>,
    /// What a handoff adds before it is answered.
    pub intake: Arc<dyn Intake>,
    /// Who is told of milestones.
    pub notifier: Arc<dyn Notifier>,
    /// Who copies.
    pub executor: Arc<dyn Executor>,
    /// Who sweeps.
    pub sweeper: Arc<dyn Sweeper>,
    /// Which claims exist, for the retention pass; `None`: this mode runs no pass (Kubernetes
    /// mode with neither scheduled sweeps nor a service-wide policy keeps no sweeper Lease,
    /// and replicas must not prune side by side).
    pub claims: Option<Arc<dyn crate::pruning::Claims>>,
    /// What the log says of it.
    pub describe: String,
}

/// What every mode is built from.
pub struct Base<'a> {
    /// The service's flags.
    pub args: &'a ServeArgs,
    /// The data directory (absolute).
    pub data_dir: &'a Path,
    /// The ledger.
    pub ledger: &'a Ledger,
    /// The store.
    pub store: &'a Store,
    /// The service's metrics.
    pub metrics: &'a Arc<Metrics>,
    /// This replica's name (the owner of its leases).
    pub owner: &'a str,
    /// The supervisor of the mode's long-lived tasks.
    pub supervisor: &'a Supervisor,
    /// The drains this replica is copying, with their live progress.
    pub board: &'a crate::scheduler::ProgressBoard,
}

/// How a mode other than local mode is made from the [`Base`] (Kubernetes mode:
/// `drainer_kube::mode`). The server knows the seams, not what implements them.
#[async_trait::async_trait]
pub trait MakeMode: Send + Sync {
    /// The mode's parts; its long-lived tasks are started under `base.supervisor`.
    async fn make(&self, base: &Base<'_>) -> anyhow::Result<Mode>;
}

/// Runs the service until a shutdown signal, then stops within the grace period: in local
/// mode, or in the mode `other` makes.
pub async fn serve(args: ServeArgs, other: Option<&dyn MakeMode>) -> anyhow::Result<()> {
    let tls = match args.tls.files().map_err(drainer_core::args::Usage)? {
        Some(files) => Some(Arc::new(crate::http::tls::ServerTls::load(files)?)),
        None => None,
    };
    let data_dir =
        std::path::absolute(&args.ledger.data_dir).context("resolving the data directory")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("file://{}/store", data_dir.display()));
    let store = Store::open(
        &store_url,
        &StoreOptions {
            timeout: args.engine.store_timeout,
            create: true,
            part_size: u64::from(args.engine.part_size_mib) * 1024 * 1024,
        },
    )?;
    let (store, key_file) = args.encryption.apply_reloading(store)?;
    let direct_parts = args
        .mover_data_path
        .offers_direct_parts(store.signs_parts(), store.url())
        .map_err(drainer_core::args::Usage)?;
    let shutdown = Shutdown::install().context("installing signal handlers")?;
    let health = Health::default();
    let supervisor = Supervisor::new(shutdown.graceful.clone(), health.clone());
    if let Some(file) = key_file {
        supervisor.spawn("encryption-keys", move |stop| {
            let every = drainer_core::encryption::RELOAD_EVERY;
            file.ring.clone().watch(file.path.clone(), every, stop)
        });
    }
    let ledger =
        Ledger::open_under(args.ledger.database_url.as_deref(), &data_dir, &supervisor).await?;
    let metrics = Arc::new(Metrics::new(&health));
    let owner = args.replica_id.clone().unwrap_or_else(default_replica_id);
    let board = crate::scheduler::ProgressBoard::default();
    let base = Base {
        args: &args,
        data_dir: &data_dir,
        ledger: &ledger,
        store: &store,
        metrics: &metrics,
        owner: &owner,
        supervisor: &supervisor,
        board: &board,
    };
    let mode = match other {
        Some(make) => make.make(&base).await?,
        None => local(&base)?,
    };
    let state = AppState::new(Shared {
        ledger: ledger.clone(),
        store: store.clone(),
        auth: Arc::clone(&mode.authority),
        intake: Arc::clone(&mode.intake),
        notifier: Arc::clone(&mode.notifier),
        sweeper: Arc::clone(&mode.sweeper),
        metrics: Arc::clone(&metrics),
        board: Arc::clone(&board),
        max_attempts: args.max_attempts,
        compression: args.engine.compression.unwrap_or_default(),
        ready: AtomicBool::new(false),
        health: health.clone(),
        per_caller: args.limits.per_caller(),
        body_budget: args.limits.body_budget(),
        kept: Default::default(),
        lives: Default::default(),
        copying: Default::default(),
        direct_parts,
    });
    let scheduler = Arc::new(Scheduler {
        ledger: ledger.clone(),
        executor: Arc::clone(&mode.executor),
        owner: owner.clone(),
        lease: args.lease,
        concurrency: args.concurrent_drains.into(),
        metrics: Arc::clone(&metrics),
        board: Arc::clone(&board),
        notifier: Arc::clone(&mode.notifier),
        retry_cap: args.max_retry_delay,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?, replica = %owner, ledger = ledger.backend(), store = %store.url(),
        mode = %mode.describe, tls = tls.is_some(), direct_parts, "drainer serving"
    );
    if tls.is_none() {
        tracing::warn!(
            "serving plain HTTP: tokens and volume data cross the network in clear text (see --tls-cert)"
        );
    }
    start_tasks(&supervisor, &args, &mode, &store, &state);
    start_retention(&base, &mode);
    state.set_ready(true);
    let server = Server { listener, tls };
    run_until_shutdown(state, server, scheduler, shutdown, &args, supervisor).await
}

/// Starts the service's own supervised tasks: the scheduled sweeps and the store prober.
fn start_tasks(
    supervisor: &Supervisor,
    args: &ServeArgs,
    mode: &Mode,
    store: &Store,
    state: &AppState,
) {
    if !args.sweep_interval.is_zero() {
        let (sweeper, interval, state) = (
            Arc::clone(&mode.sweeper),
            args.sweep_interval,
            state.clone(),
        );
        supervisor.spawn("sweeps", move |stop| {
            sweep_periodically(Arc::clone(&sweeper), interval, state.clone(), stop)
        });
    }
    let (store, health) = (store.clone(), supervisor.health().clone());
    supervisor.spawn("store-probe", move |stop| {
        probe_store(store.clone(), health.clone(), stop)
    });
}

/// Starts the retention pass (unless `--prune-interval 0`).
fn start_retention(base: &Base<'_>, mode: &Mode) {
    let args = &base.args.retention;
    let Some(claims) = &mode.claims else {
        tracing::info!(
            "no retention passes: Kubernetes mode prunes on the sweeper replica, and with --sweep-interval 0 only when a --keep-* policy is set"
        );
        return;
    };
    if args.prune_interval.is_zero() {
        return;
    }
    let pruner = Arc::new(crate::pruning::Pruner {
        ledger: base.ledger.clone(),
        store: base.store.clone(),
        metrics: Arc::clone(base.metrics),
        claims: Arc::clone(claims),
        settings: crate::pruning::Settings {
            policy: args.policy.policy(),
            keep_deleted_for: args.keep_deleted_for,
            replica: base.owner.to_owned(),
        },
    });
    tracing::info!(
        policy = %pruner.settings.policy,
        every_seconds = args.prune_interval.as_secs(),
        keep_deleted_for = %args.keep_deleted_for,
        "retention passes scheduled (in Kubernetes mode a drainer.io/retention annotation overrides the policy)"
    );
    let interval = args.prune_interval;
    base.supervisor.spawn("retention", move |stop| {
        Arc::clone(&pruner).run(interval, stop)
    });
}

/// Local mode: volumes are directories, one static token is the admin's, copies run
/// in-process (or through `drainer mover` processes with `--movers external`).
fn local(base: &Base<'_>) -> anyhow::Result<Mode> {
    let args = base.args;
    let volume_root = args
        .volume_root
        .clone()
        .unwrap_or_else(|| base.data_dir.join("volumes"));
    std::fs::create_dir_all(&volume_root)
        .with_context(|| format!("creating volume root {}", volume_root.display()))?;
    let (token, token_source) = api_token(args, base.data_dir)?;
    let executor: Arc<dyn Executor> = match args.movers {
        Movers::InProcess => Arc::new(LocalExecutor {
            volume_root: volume_root.clone(),
            store: base.store.clone(),
            ledger: base.ledger.clone(),
            options: args.engine.copy_options(false),
        }),
        Movers::External => Arc::new(base.external_movers()),
    };
    Ok(Mode {
        authority: Arc::new(StaticToken::new(token)),
        intake: Arc::new(Local),
        notifier: Arc::new(crate::notify::Log),
        executor,
        sweeper: Arc::new(LocalSweeper {
            ledger: base.ledger.clone(),
            store: base.store.clone(),
            root: volume_root.clone(),
            max_attempts: args.max_attempts,
        }),
        claims: Some(Arc::new(crate::pruning::LocalClaims {
            root: volume_root.clone(),
        })),
        describe: format!(
            "local (volumes in {}, token from {token_source})",
            volume_root.display()
        ),
    })
}

impl Base<'_> {
    /// The executor that waits for movers run by other means (`--movers external`).
    pub fn external_movers(&self) -> ExternalMovers {
        ExternalMovers {
            ledger: self.ledger.clone(),
            store: self.store.clone(),
            timeout: self.args.mover_timeout,
        }
    }

    /// The admin token of a mode whose callers are identified otherwise: `DRAINER_TOKEN`, or
    /// the token file if one exists (it is not created: without it, only the mode's own
    /// identities are accepted).
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        admin_token(self.args, self.data_dir)
    }
}

/// The listening socket and, for TLS, its certificate.
struct Server {
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::http::tls::ServerTls>>,
}

async fn run_until_shutdown(
    state: AppState,
    server: Server,
    scheduler: Arc<Scheduler>,
    shutdown: Shutdown,
    args: &ServeArgs,
    supervisor: Supervisor,
) -> anyhow::Result<()> {
    let graceful = shutdown.graceful.clone();
    let app = router(state.clone());
    let mut http = tokio::spawn(crate::http::serve::serve(
        server.listener,
        app,
        args.limits.server(),
        server.tls,
        graceful.clone(),
    ));
    let mut work = tokio::spawn(scheduler.run(graceful.clone(), args.grace));
    tokio::select! {
        biased; // a cancelled token wins over a server that has just stopped because of it
        () = graceful.cancelled() => {}
        result = &mut http => bail!("the HTTP server stopped unexpectedly: {result:?}"),
        result = &mut work => bail!("the scheduler stopped unexpectedly: {result:?}"),
    }
    state.set_ready(false);
    tracing::info!(
        grace_seconds = args.grace.as_secs(),
        "shutting down: no new work, releasing in-flight drains"
    );
    let stopped = async {
        let _ = work.await;
        let _ = http.await;
        supervisor.stopped().await;
    };
    tokio::select! {
        () = stopped => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        () = tokio::time::sleep(args.grace + Duration::from_secs(1)) => bail!("grace period over before everything stopped"),
        () = shutdown.forced.cancelled() => bail!("second signal: exiting at once"),
    }
}

/// Sweeps once soon after start (on every replica: a drainer coming back finds at once what
/// was orphaned while it was away; sweeps never double a drain), then every `interval` (on
/// the replica the sweeper elects) until `stop` (a sweep under way is dropped: the next one
/// redoes it).
async fn sweep_periodically(
    sweeper: Arc<dyn Sweeper>,
    interval: Duration,
    state: AppState,
    stop: CancellationToken,
) {
    let mut wait = FIRST_SWEEP;
    let mut first = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = interval;
        let swept = tokio::select! {
            () = stop.cancelled() => return,
            swept = async {
                match std::mem::take(&mut first) {
                    true => sweeper.sweep(false).await.map(Some),
                    false => sweeper.scheduled().await,
                }
            } => swept,
        };
        match swept {
            Ok(Some(report)) => {
                state.observe_sweep(report.seconds);
                let queued = report.findings.iter().filter(|f| f.drain).count();
                tracing::info!(
                    volumes = report.findings.len(),
                    queued,
                    seconds = report.seconds,
                    "sweep done"
                );
            }
            Ok(None) => tracing::debug!("another replica sweeps"),
            Err(err) => tracing::warn!(error = %err, "sweep failed"),
        }
    }
}

/// How soon after start the first sweep runs.
const FIRST_SWEEP: Duration = Duration::from_secs(1);

/// Lists the store's root every [`STORE_PROBE_EVERY`] until `stop`, recording in `health`
/// whether it answered: `/readyz` and `/metrics` report it without a store call of their own.
async fn probe_store(store: Store, health: Health, stop: CancellationToken) {
    loop {
        let root = store.root().clone();
        let list = store.objects().list_with_delimiter(Some(&root));
        let probed = tokio::select! {
            () = stop.cancelled() => return,
            probed = store.call("list", &root, list) => probed,
        };
        let up = probed.is_ok();
        if let Ok(listing) = &probed {
            remove_stale_probes(&store, &listing.objects, chrono::Utc::now()).await;
        }
        let changed = health.store_probed(probed.map(drop).map_err(|e| e.to_string()));
        match (changed, up) {
            (true, true) => tracing::info!(store = %store.url(), "the store answers"),
            (true, false) => tracing::warn!(
                store = %store.url(),
                error = health.snapshot().store.and_then(|s| s.error).unwrap_or_default(),
                "the store does not answer; handoffs are still taken, copies wait for it"
            ),
            (false, _) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(STORE_PROBE_EVERY) => {}
        }
    }
}

/// How old a write probe at the store's root must be before drainer removes it: a mover
/// deletes its own at once; one left behind (a mover killed between its write and its delete,
/// or a mover's token used to park bytes) goes after this long.
const STALE_PROBE_AGE: Duration = Duration::from_secs(600);

/// Deletes the write probes among `objects` (the store root's, as listed) older than
/// [`STALE_PROBE_AGE`] at `now`; best effort (the next listing tries again).
async fn remove_stale_probes(
    store: &Store,
    objects: &[object_store::ObjectMeta],
    now: chrono::DateTime<chrono::Utc>,
) {
    let stale_before = now - chrono::Duration::from_std(STALE_PROBE_AGE).unwrap_or_default();
    let stale = objects.iter().filter(|o| {
        let name = o.location.filename().unwrap_or_default();
        name.starts_with(crate::http::PROBE_PREFIX) && o.last_modified < stale_before
    });
    for object in stale {
        let key = &object.location;
        let delete = object_store::ObjectStoreExt::delete(store.objects(), key);
        match store.call("delete", key, delete).await {
            Ok(()) => tracing::info!(%key, size = object.size, "removed a stale write probe"),
            Err(e) => tracing::warn!(%key, error = %e, "cannot remove a stale write probe"),
        }
    }
}

/// The shortest admin token accepted: a shared secret that opens everything must not be
/// guessable (the generated one has 64 hex digits).
pub(crate) const MIN_ADMIN_TOKEN: usize = 32;

/// The API token: given directly, read from (or created in) the token file; at least
/// [`MIN_ADMIN_TOKEN`] characters.
fn api_token(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<(String, String)> {
    let (token, source) = match &args.token {
        Some(token) => (token.trim().to_owned(), "DRAINER_TOKEN".to_owned()),
        None => {
            let path = token_path(args, data_dir);
            let token = load_or_create_token(&path)
                .with_context(|| format!("token file {}", path.display()))?;
            (token, format!("token file {}", path.display()))
        }
    };
    if token.is_empty() {
        bail!("{source} is empty");
    }
    let length = token.chars().count();
    if length < MIN_ADMIN_TOKEN {
        bail!(
            "the admin token ({source}) has {length} characters; it needs at least {MIN_ADMIN_TOKEN} (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok((token, source))
}

/// Kubernetes mode's admin token: `DRAINER_TOKEN`, or the token file if one exists (it is not
/// created: without it, only Kubernetes identities are accepted).
fn admin_token(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = token_path(args, data_dir);
    if args.token.is_none() && !path.exists() {
        return Ok(None);
    }
    api_token(args, data_dir).map(|(token, _)| Some(token))
}

fn token_path(args: &ServeArgs, data_dir: &Path) -> PathBuf {
    args.token_file
        .clone()
        .unwrap_or_else(|| data_dir.join("token"))
}

fn default_replica_id() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "drainer".into());
    format!(
        "{}-{}-{:04x}",
        host.trim(),
        std::process::id(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use drainer_core::store::StoreOptions;

    /// Only write probes at the store's root older than ten minutes go: a fresh probe (a
    /// mover's, about to delete it itself), an old object that is not a probe, and a probe's
    /// name below the root stay.
    #[tokio::test]
    async fn stale_write_probes_at_the_root_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            timeout: Duration::from_secs(10),
            create: true,
            part_size: 8 << 20,
        };
        let store = Store::open(&format!("file://{}", dir.path().display()), &options).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(1200);
        std::fs::create_dir_all(dir.path().join("volumes")).unwrap();
        for (name, aged) in [
            (".drainer-probe-old", true),
            (".drainer-probe-fresh", false),
            ("not-a-probe", true),
            ("volumes/.drainer-probe-deeper", true),
        ] {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            if aged {
                file.set_modified(old).unwrap();
            }
        }
        let root = store.root().clone();
        let listing = store
            .objects()
            .list_with_delimiter(Some(&root))
            .await
            .unwrap();
        remove_stale_probes(&store, &listing.objects, chrono::Utc::now()).await;
        let mut left: Vec<String> = walkdir(dir.path());
        left.sort();
        assert_eq!(
            left,
            [
                ".drainer-probe-fresh",
                "not-a-probe",
                "volumes/.drainer-probe-deeper"
            ]
        );
    }

    /// The files under `dir`, relative, slash-separated.
    fn walkdir(dir: &Path) -> Vec<String> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                files.extend(
                    walkdir(&entry.path())
                        .into_iter()
                        .map(|f| format!("{name}/{f}")),
                );
            } else {
                files.push(name);
            }
        }
        files
    }
}
