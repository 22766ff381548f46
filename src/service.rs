//! `drainer serve`: wires the ledger, the store, authentication, the scheduler, sweeps and the
//! HTTP API together, supervises them, and shuts them down in order.
//!
//! Local mode is the default: volume `NS/PVC` is `VOLUME_ROOT/NS/PVC`, the ledger is SQLite and
//! the store a directory, all under the data directory. Every default is one flag away.

use crate::auth::{StaticToken, load_or_create_token};
use crate::config::Movers;
use crate::config::ServeArgs;
use crate::http::{AppState, Shared, router};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::scheduler::{ExternalMovers, LocalExecutor, Scheduler};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreOptions};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The `file://` URL of a local directory, with every character that a URL would read as
/// something else (`?`, `#`, `%`, spaces) escaped.
fn local_store_url(dir: &std::path::Path) -> anyhow::Result<String> {
    url::Url::from_file_path(dir)
        .map(String::from)
        .map_err(|()| anyhow::anyhow!("store directory {} is not absolute", dir.display()))
}

/// Runs the service until a shutdown signal, then stops within the grace period.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir =
        std::path::absolute(&args.ledger.data_dir).context("resolving the data directory")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let volume_root = args
        .volume_root
        .clone()
        .unwrap_or_else(|| data_dir.join("volumes"));
    std::fs::create_dir_all(&volume_root)
        .with_context(|| format!("creating volume root {}", volume_root.display()))?;
    let store_url = args
        .store
        .clone()
        .map_or_else(|| local_store_url(&data_dir.join("store")), Ok)?;
    let store = Store::open(
        &store_url,
        &StoreOptions {
            timeout: args.engine.store_timeout,
            create: true,
            part_size: u64::from(args.engine.part_size_mib) * 1024 * 1024,
        },
    )?;
    let ledger = Ledger::open(args.ledger.database_url.as_deref(), &data_dir).await?;
    let (token, token_source) = api_token(&args, &data_dir)?;
    let metrics = Arc::new(Metrics::default());
    let board = Arc::default();
    let watches = tokio_util::sync::CancellationToken::new();
    let _stop_watches = watches.clone().drop_guard();
    let kube = match args.kube.enabled {
        true => Some(kube_mode(&args, &ledger, &store, &token, watches).await?),
        false => None,
    };
    let auth: Arc<dyn crate::auth::Authority> = match &kube {
        Some((authority, _)) => Arc::clone(authority),
        None => Arc::new(StaticToken::new(token)),
    };
    let state = AppState::new(Shared {
        ledger: ledger.clone(),
        store: store.clone(),
        auth,
        admission: Arc::new(crate::admission::Local),
        notifier: Arc::new(crate::notify::Log),
        metrics: Arc::clone(&metrics),
        board: Arc::clone(&board),
        volume_root: volume_root.clone(),
        max_attempts: args.max_attempts,
        ready: AtomicBool::new(false),
        copying: Default::default(),
    });
    let owner = args.replica_id.clone().unwrap_or_else(default_replica_id);
    let scheduler = Arc::new(Scheduler {
        ledger: ledger.clone(),
        executor: match (kube, args.movers) {
            (Some((_, movers)), _) => movers,
            (None, Movers::InProcess) => Arc::new(LocalExecutor {
                volume_root: volume_root.clone(),
                store: store.clone(),
                ledger: ledger.clone(),
                options: args.engine.copy_options(false),
            }),
            (None, Movers::External) => Arc::new(ExternalMovers {
                ledger: ledger.clone(),
                store: store.clone(),
                timeout: args.mover_timeout,
            }),
        },
        owner: owner.clone(),
        lease: args.lease,
        concurrency: args.concurrent_drains.into(),
        metrics: Arc::clone(&metrics),
        board,
        notifier: Arc::new(crate::notify::Log),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shutdown = Shutdown::install().context("installing signal handlers")?;
    tracing::info!(
        listen = %listener.local_addr()?, replica = %owner, ledger = ledger.backend(), store = %store.url(),
        volume_root = %volume_root.display(), token = %token_source, "drainer serving"
    );
    state.set_ready(true);
    run_until_shutdown(
        state,
        listener,
        scheduler,
        shutdown,
        &args,
        ledger,
        store,
        volume_root,
    )
    .await
}

/// Kubernetes mode, as far as mover Jobs need it (a stand-in until the service wires the
/// whole mode): identities from TokenReview (the static token is an admin's), copies by mover
/// Jobs. Handoffs are admitted as in local mode.
async fn kube_mode(
    args: &ServeArgs,
    ledger: &Ledger,
    store: &Store,
    token: &str,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(
    Arc<dyn crate::auth::Authority>,
    Arc<dyn crate::scheduler::Executor>,
)> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let cluster = crate::kube::Cluster::start(client, stop).await?;
    let authority = crate::kube::identity::TokenReviews::new(
        cluster.clone(),
        ledger.clone(),
        args.kube.audience.clone(),
        Some(token.to_owned()),
    );
    let movers = crate::kube::movers::JobMovers::new(
        cluster,
        ledger.clone(),
        store.clone(),
        &args.kube,
        args.mover_timeout,
    )?;
    Ok((Arc::new(authority), Arc::new(movers)))
}

#[allow(clippy::too_many_arguments)]
async fn run_until_shutdown(
    state: AppState,
    listener: tokio::net::TcpListener,
    scheduler: Arc<Scheduler>,
    shutdown: Shutdown,
    args: &ServeArgs,
    ledger: Ledger,
    store: Store,
    volume_root: PathBuf,
) -> anyhow::Result<()> {
    let graceful = shutdown.graceful.clone();
    let app = router(state.clone());
    let mut http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(graceful.clone().cancelled_owned())
            .into_future(),
    );
    let mut work = tokio::spawn(scheduler.run(graceful.clone(), args.grace));
    let sweeps = tokio::spawn(sweep_periodically(
        ledger,
        store,
        volume_root,
        args.max_attempts,
        args.sweep_interval,
        state.clone(),
        graceful.clone(),
    ));
    tokio::select! {
        biased; // a cancelled token wins over a server that has just stopped because of it
        () = graceful.cancelled() => {}
        result = &mut http => bail!("the HTTP server stopped unexpectedly: {result:?}"),
        result = &mut work => bail!("the scheduler stopped unexpectedly: {result:?}"),
    }
    state.set_ready(false);
    sweeps.abort();
    tracing::info!(
        grace_seconds = args.grace.as_secs(),
        "shutting down: no new work, releasing in-flight drains"
    );
    let stopped = async {
        let _ = work.await;
        let _ = http.await;
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

async fn sweep_periodically(
    ledger: Ledger,
    store: Store,
    volume_root: PathBuf,
    max_attempts: u32,
    interval: Duration,
    state: AppState,
    stop: tokio_util::sync::CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match crate::sweep::sweep_local(&ledger, &store, &volume_root, max_attempts).await {
            Ok(report) => {
                state.observe_sweep(report.seconds);
                let queued = report.findings.iter().filter(|f| f.drain).count();
                tracing::info!(
                    volumes = report.findings.len(),
                    queued,
                    seconds = report.seconds,
                    "sweep done"
                );
            }
            Err(err) => tracing::warn!(error = %err, "sweep failed"),
        }
    }
}

/// The API token: given directly, read from (or created in) the token file.
fn api_token(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<(String, String)> {
    if let Some(token) = &args.token {
        if token.trim().is_empty() {
            bail!("DRAINER_TOKEN is empty");
        }
        return Ok((token.trim().to_owned(), "DRAINER_TOKEN".to_owned()));
    }
    let path = args
        .token_file
        .clone()
        .unwrap_or_else(|| data_dir.join("token"));
    let token =
        load_or_create_token(&path).with_context(|| format!("token file {}", path.display()))?;
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok((token, path.display().to_string()))
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
