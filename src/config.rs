//! Command-line and environment configuration: one `clap` parser for every subcommand.
//!
//! Every flag can also be given as a `DRAINER_*` environment variable. Nothing else in the
//! crate reads the environment for drainer settings (object-store credentials are read by
//! `object_store` itself from the usual `AWS_*`, `GOOGLE_*` and `AZURE_*` variables).

use crate::snapshot::SnapshotSelector;
use crate::snapshot::retention::{Policy, Span};
use crate::volume::VolumeId;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// drainer: rescues the data that scaled-down stateful pods leave behind.
#[derive(Debug, Parser)]
#[command(name = "drainer", version, about, long_about = None)]
pub struct Config {
    /// Logging settings.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The always-up service: handoff API, durable queue, scheduled sweeps (local mode by default).
    Serve(Box<ServeArgs>),
    /// Ask a drainer to drain volumes (for SIGTERM handlers, preStop hooks and Jobs).
    Handoff(HandoffArgs),
    /// Stream a mounted volume to the drainer for one drain (run by mover Jobs).
    Mover(MoverArgs),
    /// Take a snapshot of a directory into a store (resumable and incremental).
    ///
    /// One copy of a volume runs at a time (a second one fails, naming the holder). Files that
    /// cannot be read (permission denied) are listed in the snapshot without content and named
    /// on stderr; the copy then exits 3. Exit 2: malformed arguments (store URLs included).
    Copy(CopyArgs),
    /// Restore a snapshot into a directory, verifying every hash; resumable.
    ///
    /// From a store (`drainer restore STORE_URL --volume NS/PVC DEST`) or through a drainer
    /// (`drainer restore --drainer URL --volume NS/PVC DEST`, with the caller's token). A
    /// restore that was killed or failed is continued by running it again. Exit 0 without
    /// restoring when --if-empty finds DEST in use or --allow-missing finds no snapshot;
    /// exit 2: malformed arguments.
    Restore(RestoreArgs),
    /// List the snapshots in a store (or of one volume through a drainer), each with the
    /// drain that made it.
    Snapshots(SnapshotsArgs),
    /// Delete the snapshots a retention policy does not keep (restic `forget`'s rules), with
    /// every object no kept snapshot refers to; `--plan` shows what it would delete.
    ///
    /// The latest snapshot, the newest and every damaged one always stay. Exit 2: malformed
    /// arguments, or no rule given.
    Prune(PruneArgs),
    /// Re-read a snapshot's objects and check every hash against its manifest.
    Verify(VerifyArgs),
    /// Copy this drainer (with its loader and libraries) into a directory, for containers of
    /// other images: an init container copies it into an emptyDir that the application's
    /// preStop hook runs `drainer handoff` from (see deploy/examples).
    Install(InstallArgs),
    /// Run one sweep now through a running drainer and print what it found (for a CronJob).
    Sweep(SweepArgs),
    /// List the orphaned volumes a running drainer sees: size, age, last snapshot, drain.
    Orphans(OrphansArgs),
    /// Let go of every claim drainer guards or holds, for uninstalling it (with the
    /// kubeconfig's identity, no drainer needed): claims their StatefulSet still wants lose
    /// drainer's guard and holds; claims their retention policy deletes are left to the
    /// garbage collector, which then deletes them. Stop drainer first (it would guard again).
    ReleaseGuards(ReleaseGuardsArgs),
}

/// Logging settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,drainer=debug`).
    #[arg(long, env = "DRAINER_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "DRAINER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the ledger lives.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// Directory for drainer's own state (the SQLite ledger unless --database-url says otherwise).
    #[arg(long, env = "DRAINER_DATA_DIR", default_value = "./drainer-data")]
    pub data_dir: PathBuf,
    /// Ledger database: `sqlite://FILE` or `postgres://…`. Default: SQLite in the data directory.
    #[arg(long, env = "DRAINER_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// Tuning of the snapshot engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Files read and written at once [default: 16; 64 for `drainer mover`, whose every file
    /// makes a round trip to the drainer; 256 for `restore --drainer`, whose small files travel
    /// 64 to a batch, four batches at once].
    #[arg(long, env = "DRAINER_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,
    /// Part size for multipart uploads, in MiB: a power of two from 8 to 512 (files up to this
    /// size are one request).
    #[arg(long, env = "DRAINER_PART_SIZE_MIB", default_value_t = 8, value_parser = parse_part_size)]
    pub part_size_mib: u32,
    /// Memory for file data in flight, in MiB (bounds the process whatever the file sizes).
    #[arg(long, env = "DRAINER_BUFFER_MIB", default_value_t = 48, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub buffer_mib: u32,
    /// Timeout of one object-store request, in seconds.
    #[arg(long, env = "DRAINER_STORE_TIMEOUT", default_value = "120", value_parser = parse_seconds)]
    pub store_timeout: Duration,
}

/// `drainer serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DRAINER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Local mode: volume NS/PVC is the directory VOLUME_ROOT/NS/PVC. Default: DATA_DIR/volumes.
    #[arg(long, env = "DRAINER_VOLUME_ROOT")]
    pub volume_root: Option<PathBuf>,
    /// Where snapshots are stored. Default: file://DATA_DIR/store.
    #[arg(long, env = "DRAINER_STORE", value_parser = parse_store_url)]
    pub store: Option<String>,
    /// File holding the API bearer token; created (mode 0600) if missing. Default: DATA_DIR/token.
    #[arg(long, env = "DRAINER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The API bearer token itself (instead of a token file).
    #[arg(long, env = "DRAINER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Drains copied at once by this replica.
    #[arg(long, env = "DRAINER_CONCURRENT_DRAINS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrent_drains: u16,
    /// Attempts of a drain on the normal backoff before it is `failing`: still active, its
    /// claim still held, tried again at least a minute and at most --max-retry-delay apart
    /// until it succeeds or is abandoned.
    #[arg(long, env = "DRAINER_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// The longest wait, in seconds, between two attempts of a drain (the backoff starts at
    /// 2 s and doubles up to this).
    #[arg(long, env = "DRAINER_MAX_RETRY_DELAY", default_value = "600", value_parser = parse_positive_seconds)]
    pub max_retry_delay: Duration,
    /// Lease on a claimed drain, in seconds; a replica that dies loses its drains after this.
    #[arg(long, env = "DRAINER_LEASE", default_value = "30", value_parser = parse_seconds)]
    pub lease: Duration,
    /// Seconds between scheduled sweeps (0: only on demand).
    #[arg(long, env = "DRAINER_SWEEP_INTERVAL", default_value = "300", value_parser = parse_seconds)]
    pub sweep_interval: Duration,
    /// Seconds to finish in-flight work after SIGTERM before exiting.
    #[arg(long, env = "DRAINER_GRACE", default_value = "10", value_parser = parse_seconds)]
    pub grace: Duration,
    /// Who copies: `in-process` (local mode: the engine inside this process; in Kubernetes
    /// mode: mover Jobs) or `external` (`drainer mover` processes, run by other means, stream
    /// each drain through the API).
    #[arg(long, env = "DRAINER_MOVERS", value_enum, default_value_t = Movers::InProcess)]
    pub movers: Movers,
    /// How long an attempt waits for an external mover, in seconds.
    #[arg(long, env = "DRAINER_MOVER_TIMEOUT", default_value = "3600", value_parser = parse_seconds)]
    pub mover_timeout: Duration,
    /// This replica's name in leases and history. Default: host name, process id and a random suffix.
    #[arg(long, env = "DRAINER_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Ledger location.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Kubernetes mode.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Retention: the service-wide policy and the pass that applies it.
    #[command(flatten)]
    pub retention: ServeRetentionArgs,
    /// What one client can hold of the API.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// TLS of the API.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The certificate the API is served with (plain HTTP without it).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Serve TLS with this PEM certificate chain (with --tls-key); both files are read again
    /// when they change (a rotated Secret), for new connections. Without them: plain HTTP,
    /// where tokens and volume data cross the network in clear text.
    #[arg(long, env = "DRAINER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "DRAINER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files to serve TLS with, if any; a one-line reason when only one is given.
    pub fn files(&self) -> Result<Option<crate::http::tls::TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::http::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err("--tls-cert needs --tls-key (DRAINER_TLS_KEY): give both, or neither for plain HTTP".into())
            }
            (None, Some(_)) => {
                Err("--tls-key needs --tls-cert (DRAINER_TLS_CERT): give both, or neither for plain HTTP".into())
            }
        }
    }
}

/// Bounds on what callers of the API can hold: connections, time, requests in flight.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Connections served at once; a connection over the limit is closed as soon as it is
    /// accepted (its client sees a reset and can retry).
    #[arg(long, env = "DRAINER_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// Seconds a connection may take to send a request's head, counted from when it opens or
    /// its previous response ends: idle keep-alive connections close after this too.
    #[arg(long, env = "DRAINER_HEADER_TIMEOUT", default_value = "30", value_parser = parse_positive_seconds)]
    pub header_timeout: Duration,
    /// Seconds a request body may pause between two chunks before the request fails.
    #[arg(long, env = "DRAINER_BODY_TIMEOUT", default_value = "60", value_parser = parse_positive_seconds)]
    pub body_timeout: Duration,
    /// Kubernetes mode: TokenReviews per second for tokens not seen lately (bursts of twice
    /// as many); callers over it are answered `429` with `Retry-After`. A token refused by a
    /// review is refused again without one for 5 s.
    #[arg(long, env = "DRAINER_TOKEN_REVIEWS_PER_SECOND", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub token_reviews_per_second: u32,
    /// Kubernetes mode: TokenReviews under way at once (a review waits up to a second for
    /// its turn, then is answered `429`).
    #[arg(long, env = "DRAINER_CONCURRENT_TOKEN_REVIEWS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrent_token_reviews: u32,
    /// Requests of the mover protocol one caller may have in flight for one drain (keep it
    /// above movers' --concurrency, 64 by default); more are answered `429` with
    /// `Retry-After: 1`.
    #[arg(long, env = "DRAINER_MOVER_REQUESTS_PER_CALLER", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub mover_requests_per_caller: u32,
    /// Batch reads of snapshot objects one caller may have in flight for one volume (a
    /// `restore --drainer` runs 4); more are answered `429` with `Retry-After: 1`.
    #[arg(long, env = "DRAINER_BATCH_READS_PER_CALLER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_reads_per_caller: u32,
}

impl LimitArgs {
    /// The server's bounds these flags give.
    pub fn server(&self) -> crate::http::serve::Limits {
        crate::http::serve::Limits {
            max_connections: self.max_connections as usize,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
        }
    }

    /// The limits on requests in flight per caller these flags give.
    pub fn per_caller(&self) -> crate::http::inflight::PerCaller {
        crate::http::inflight::PerCaller::new(
            self.mover_requests_per_caller as usize,
            self.batch_reads_per_caller as usize,
        )
    }

    /// The limits on reviews of unknown tokens these flags give.
    pub fn token_reviews(&self) -> crate::review_gate::GateLimits {
        crate::review_gate::GateLimits {
            per_second: f64::from(self.token_reviews_per_second),
            burst: self.token_reviews_per_second.saturating_mul(2),
            concurrent: self.concurrent_token_reviews,
        }
    }
}

/// The retention pass of `drainer serve` (see `crate::pruning`).
#[derive(Debug, Clone, Args)]
pub struct ServeRetentionArgs {
    /// The service-wide policy, which `drainer.io/retention` annotations override. No rule: keep
    /// every snapshot.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Seconds between retention passes, the first a minute after start (0: never prune).
    /// In Kubernetes mode only the replica holding the sweeper Lease prunes.
    #[arg(long, env = "DRAINER_PRUNE_INTERVAL", default_value = "3600", value_parser = parse_seconds)]
    pub prune_interval: Duration,
    /// How long the snapshots of a volume whose claim (local mode: directory) is gone are all
    /// kept, from when drainer last saw it (or, if it never did, the volume's newest
    /// snapshot); after that only the service-wide policy prunes them, and the newest stays.
    #[arg(long, env = "DRAINER_KEEP_DELETED_FOR", default_value = "90d", value_parser = parse_span)]
    pub keep_deleted_for: Span,
}

/// A retention policy as flags, restic `forget`'s set (see `snapshot::retention`).
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Keep the N newest snapshots.
    #[arg(long, env = "DRAINER_KEEP_LAST", value_parser = parse_count)]
    pub keep_last: Option<u32>,
    /// Keep every snapshot completed within DURATION (30d, 12h, 2w, 1w3d; m is minutes) before
    /// the volume's newest one.
    #[arg(long, env = "DRAINER_KEEP_WITHIN", value_parser = parse_span)]
    pub keep_within: Option<Span>,
    /// Keep the newest snapshot of each of the last N hours that have one (UTC).
    #[arg(long, env = "DRAINER_KEEP_HOURLY", value_parser = parse_count)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one (UTC).
    #[arg(long, env = "DRAINER_KEEP_DAILY", value_parser = parse_count)]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one (UTC).
    #[arg(long, env = "DRAINER_KEEP_WEEKLY", value_parser = parse_count)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one (UTC).
    #[arg(long, env = "DRAINER_KEEP_MONTHLY", value_parser = parse_count)]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one (UTC).
    #[arg(long, env = "DRAINER_KEEP_YEARLY", value_parser = parse_count)]
    pub keep_yearly: Option<u32>,
}

impl PolicyArgs {
    /// The policy the flags give (empty when none is set: keep everything).
    pub fn policy(&self) -> Policy {
        Policy {
            last: self.keep_last,
            within: self.keep_within,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        }
    }
}

fn parse_count(text: &str) -> Result<u32, String> {
    crate::snapshot::retention::parse_count(text)
}

fn parse_span(text: &str) -> Result<Span, String> {
    text.parse()
}

/// Kubernetes mode: pods hand off through projected tokens, mover Jobs copy, sweeps list
/// StatefulSets and claims.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Run in Kubernetes mode (in-cluster config, or KUBECONFIG): identities from TokenReview,
    /// drains wait for their pod's release, mover Jobs copy, sweeps find orphaned claims.
    #[arg(long = "kubernetes", env = "DRAINER_KUBERNETES")]
    pub enabled: bool,
    /// Audience that pods' projected ServiceAccount tokens must carry.
    #[arg(long, env = "DRAINER_AUDIENCE", default_value = "drainer")]
    pub audience: String,
    /// Seconds a drain waits for its pod to let go of the volume before a warning is recorded
    /// (it keeps waiting: the claim stays held).
    #[arg(long, env = "DRAINER_RELEASE_TIMEOUT", default_value = "600", value_parser = parse_seconds)]
    pub release_timeout: Duration,
    /// Namespaces to watch and act in (repeat, or comma-separated); all when none is given.
    #[arg(
        long = "watch-namespace",
        env = "DRAINER_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// URL at which movers reach this drainer (its Service), e.g.
    /// `http://drainer.drainer-system.svc:8080`.
    #[arg(long, env = "DRAINER_SERVICE_URL")]
    pub service_url: Option<String>,
    /// The namespace drainer runs in, where its sweeper Lease (`drainer-sweeper`) lives: one
    /// replica runs the scheduled sweeps. Default: the pod's ServiceAccount namespace (or the
    /// kubeconfig context's namespace).
    #[arg(long, env = "DRAINER_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Mover Jobs.
    #[command(flatten)]
    pub movers: MoverJobArgs,
}

/// How mover Jobs are made.
#[derive(Debug, Clone, Args)]
pub struct MoverJobArgs {
    /// Image of mover Jobs (it must contain `drainer`).
    #[arg(
        long,
        env = "DRAINER_MOVER_IMAGE",
        default_value = "ghcr.io/drainer/drainer:latest"
    )]
    pub mover_image: String,
    /// The program a mover container runs (its `command`; the arguments are drainer's): the
    /// `drainer` binary of the image, found on its PATH. An absolute path runs another copy
    /// (tests run the binary under test this way, on a node's own filesystem).
    #[arg(long, env = "DRAINER_MOVER_COMMAND", default_value = "drainer")]
    pub mover_command: String,
    /// ServiceAccount of mover pods in each claim's namespace (`default` exists everywhere).
    #[arg(long, env = "DRAINER_MOVER_SERVICE_ACCOUNT", default_value = "default")]
    pub mover_service_account: String,
    /// Who movers run as. `auto`: what the claim's namespace allows (its Pod Security level):
    /// privileged, uid 0 with only CAP_DAC_READ_SEARCH; baseline, uid 0 with only
    /// CAP_DAC_OVERRIDE; restricted, the application's own identity from its StatefulSet's pod
    /// template. `app`: the application's identity in every namespace (never a capability).
    /// `nobody`: uid 65534 with no capability everywhere. Files a mover cannot read are named,
    /// and the drain does not complete.
    #[arg(long, env = "DRAINER_MOVER_IDENTITY", value_enum, default_value_t = MoverIdentity::Auto)]
    pub mover_identity: MoverIdentity,
    /// Deprecated: `false` is `--mover-identity nobody`; `true` (the old default) changes
    /// nothing.
    #[arg(long, env = "DRAINER_MOVER_READ_ALL", action = clap::ArgAction::Set)]
    pub mover_read_all: Option<bool>,
    /// The Pod Security level the API server enforces on namespaces without the label
    /// `pod-security.kubernetes.io/enforce` (its PodSecurity admission defaults: privileged
    /// unless the cluster configures otherwise).
    #[arg(long, env = "DRAINER_POD_SECURITY_DEFAULT", value_enum, default_value_t = PodSecurityLevel::Privileged)]
    pub pod_security_default: PodSecurityLevel,
    /// CPU request and limit of a mover (Kubernetes quantities).
    #[arg(long, env = "DRAINER_MOVER_CPU", default_value = "100m,1")]
    pub mover_cpu: String,
    /// Memory request and limit of a mover.
    #[arg(long, env = "DRAINER_MOVER_MEMORY", default_value = "64Mi,256Mi")]
    pub mover_memory: String,
    /// Node selector of movers, `key=value,…` (added to the placement drainer computes).
    #[arg(long, env = "DRAINER_MOVER_NODE_SELECTOR", default_value = "")]
    pub mover_node_selector: String,
    /// Tolerations of movers, as a JSON list of Kubernetes tolerations.
    #[arg(long, env = "DRAINER_MOVER_TOLERATIONS", default_value = "[]")]
    pub mover_tolerations: String,
    /// Seconds a mover Job may run before Kubernetes stops it.
    #[arg(long, env = "DRAINER_MOVER_DEADLINE", default_value = "21600", value_parser = parse_seconds)]
    pub mover_deadline: Duration,
    /// Seconds a failed mover Job is kept (for `kubectl logs`); successful ones are deleted.
    #[arg(long, env = "DRAINER_MOVER_KEEP_FAILED", default_value = "86400", value_parser = parse_seconds)]
    pub mover_keep_failed: Duration,
    /// PEM bundle of the CA certificates movers trust for an https --service-url (e.g. the
    /// ca.crt of drainer's TLS Secret): each mover Job gets it in its environment
    /// (DRAINER_CACERT_PEM), read again for every Job.
    #[arg(long, env = "DRAINER_MOVER_CACERT")]
    pub mover_cacert: Option<PathBuf>,
}

/// Who mover pods run as (see `--mover-identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MoverIdentity {
    /// What the namespace's Pod Security level allows.
    Auto,
    /// The application's identity, from its StatefulSet's pod template.
    App,
    /// uid 65534, no capability.
    Nobody,
}

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum PodSecurityLevel {
    /// Unrestricted.
    Privileged,
    /// No known privilege escalation: uid 0 and the default capabilities are allowed.
    Baseline,
    /// Hardened: non-root, every capability dropped, RuntimeDefault seccomp.
    Restricted,
}

/// Who makes the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Movers {
    /// The snapshot engine inside the drainer process.
    InProcess,
    /// `drainer mover` processes, through the API.
    External,
}

/// How a client (`handoff`, `mover`) reaches the drainer's API.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The drainer's base URL.
    #[arg(
        long = "drainer",
        env = "DRAINER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// File holding the bearer token.
    #[arg(
        long,
        env = "DRAINER_TOKEN_FILE",
        default_value = DEFAULT_TOKEN_FILE
    )]
    pub token_file: PathBuf,
    /// The bearer token itself (instead of the token file).
    #[arg(long, env = "DRAINER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust for an https drainer URL.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// The certificates a client trusts for an `https://` drainer URL, besides the system's.
#[derive(Debug, Clone, Default, Args)]
pub struct TrustArgs {
    /// PEM bundle of the CA certificates that sign the drainer's certificate (added to the
    /// system's trust roots for an https:// drainer URL).
    #[arg(long, env = "DRAINER_CACERT")]
    pub cacert: Option<PathBuf>,
    /// The same bundle given as text instead of a file (mover Jobs get it this way).
    #[arg(long, env = "DRAINER_CACERT_PEM", hide_env_values = true)]
    pub cacert_pem: Option<String>,
}

impl TrustArgs {
    /// The certificates to trust: those of --cacert and of --cacert-pem; an error names the
    /// flag and what is wrong.
    pub fn roots(&self) -> anyhow::Result<Vec<reqwest::Certificate>> {
        let mut roots = Vec::new();
        if let Some(file) = &self.cacert {
            let pem = std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", file.display()))?;
            roots.extend(
                bundle(&pem)
                    .map_err(|why| anyhow::anyhow!("--cacert {}: {why}", file.display()))?,
            );
        }
        if let Some(pem) = &self.cacert_pem {
            roots.extend(
                bundle(pem.as_bytes())
                    .map_err(|why| anyhow::anyhow!("--cacert-pem (DRAINER_CACERT_PEM): {why}"))?,
            );
        }
        Ok(roots)
    }
}

/// The certificates of a PEM bundle: at least one, all well formed.
pub fn bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if ders.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    ders.iter()
        .map(|der| reqwest::Certificate::from_der(der).map_err(|e| e.to_string()))
        .collect()
}

/// Where a pod's projected token for drainer is mounted by convention (the examples under
/// `deploy/examples` mount it there); used when the default token file does not exist.
pub const POD_TOKEN_FILE: &str = "/var/run/secrets/drainer/token";
/// The namespace of a pod's ServiceAccount, when it mounts its API token.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl ClientArgs {
    /// The token file: `--token-file`, or inside a pod whose default token file does not
    /// exist, its projected token at [`POD_TOKEN_FILE`].
    pub fn token_path(&self) -> PathBuf {
        if self.token_file == std::path::Path::new(DEFAULT_TOKEN_FILE)
            && !self.token_file.exists()
            && std::path::Path::new(POD_TOKEN_FILE).exists()
        {
            PathBuf::from(POD_TOKEN_FILE)
        } else {
            self.token_file.clone()
        }
    }

    /// The bearer token: given directly, or read from [`ClientArgs::token_path`].
    pub fn token(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        let file = self.token_path();
        let token = match &self.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(&file)
                .with_context(|| format!("reading the token file {}", file.display()))?,
        };
        Ok(token.trim().to_owned())
    }
}

/// The default token file of the client commands.
pub const DEFAULT_TOKEN_FILE: &str = "./drainer-data/token";

impl HandoffArgs {
    /// The namespace of the volumes: `--namespace`, or inside a pod its own.
    pub fn namespace(&self) -> anyhow::Result<String> {
        if let Some(namespace) = &self.namespace {
            return Ok(namespace.clone());
        }
        std::fs::read_to_string(POD_NAMESPACE_FILE)
            .map(|ns| ns.trim().to_owned())
            .map_err(|_| {
                anyhow::anyhow!(
                    "--namespace is needed (or DRAINER_NAMESPACE, e.g. from the downward API)"
                )
            })
    }
}

/// `drainer handoff`.
#[derive(Debug, Clone, Args)]
pub struct HandoffArgs {
    /// How to reach the drainer.
    #[command(flatten)]
    pub drainer: ClientArgs,
    /// Namespace of the volumes (inside a pod: its own, by default).
    #[arg(long, env = "DRAINER_NAMESPACE")]
    pub namespace: Option<String>,
    /// PVC to drain (repeat for several). A pod may name none: every claim it mounts.
    #[arg(long = "pvc")]
    pub pvcs: Vec<String>,
    /// The pod handing off (its name).
    #[arg(long, env = "DRAINER_POD")]
    pub pod: Option<String>,
    /// Why (shown in the drain's history).
    #[arg(long, default_value = "handoff")]
    pub reason: String,
    /// Wait until every drain has ended; the exit code says whether all completed.
    #[arg(long)]
    pub wait: bool,
    /// Give up after this many seconds (retries included).
    #[arg(long, env = "DRAINER_HANDOFF_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// `drainer install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// The directory to copy drainer into (created if missing).
    pub dir: PathBuf,
}

/// `drainer mover`.
#[derive(Debug, Clone, Args)]
pub struct MoverArgs {
    /// How to reach the drainer.
    #[command(flatten)]
    pub drainer: ClientArgs,
    /// The drain to stream into.
    #[arg(long, env = "DRAINER_DRAIN")]
    pub drain: String,
    /// The mounted volume.
    #[arg(long, env = "DRAINER_SOURCE")]
    pub source: PathBuf,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Files in flight when `--concurrency` is not given.
pub const DEFAULT_CONCURRENCY: u16 = 16;
/// Files in flight in a mover when `--concurrency` is not given.
pub const DEFAULT_MOVER_CONCURRENCY: u16 = 64;

impl EngineArgs {
    /// Files in flight: `--concurrency`, or [`DEFAULT_CONCURRENCY`].
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY).into()
    }

    /// The snapshot engine's options from these flags.
    pub fn copy_options(&self, check_hash: bool) -> crate::snapshot::CopyOptions {
        const MIB: u64 = 1024 * 1024;
        crate::snapshot::CopyOptions {
            concurrency: self.concurrency(),
            part_size: u64::from(self.part_size_mib) * MIB,
            buffer_bytes: u64::from(self.buffer_mib) * MIB,
            check_hash,
            origin: None,
        }
    }
}

/// `drainer copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The directory to snapshot.
    #[arg(env = "DRAINER_SOURCE")]
    pub source: PathBuf,
    /// Where snapshots are stored: `file:///abs/dir`, `s3://bucket/prefix`, `gs://…`, `az://…`.
    #[arg(env = "DRAINER_STORE", value_parser = parse_store_url)]
    pub store: String,
    /// The volume this directory holds, as NAMESPACE/PVC.
    #[arg(long, env = "DRAINER_VOLUME")]
    pub volume: VolumeId,
    /// Compare unchanged-looking files by content hash instead of size, mtime and ctime.
    #[arg(long, env = "DRAINER_CHECK_HASH")]
    pub check_hash: bool,
    /// Ledger location.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `drainer restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Where snapshots are stored (`file:///…`, `s3://…`, …), read directly with its
    /// credentials. Leave it out with `--drainer`.
    #[arg(value_name = "STORE_URL", env = "DRAINER_STORE")]
    pub store: Option<String>,
    /// The directory to restore into: missing, empty (only `lost+found` counts as empty), or
    /// holding an unfinished restore, which is continued; see --if-empty and --force for
    /// anything else.
    #[arg(value_name = "DEST")]
    pub dest: Option<PathBuf>,
    /// Read through a drainer's API instead of a store.
    #[command(flatten)]
    pub drainer: DrainerSource,
    /// The volume to restore, as NAMESPACE/PVC.
    #[arg(long, env = "DRAINER_VOLUME")]
    pub volume: VolumeId,
    /// The snapshot to restore: an id, or `latest`.
    #[arg(
        long,
        env = "DRAINER_SNAPSHOT",
        default_value = "latest",
        conflicts_with = "before"
    )]
    pub snapshot: SnapshotSelector,
    /// Restore the newest snapshot completed before this time: RFC 3339
    /// (2026-12-01T12:00:00Z), a date (2026-12-01, its midnight UTC), a UTC date and time
    /// (2026-12-01 12:00), now, today, yesterday, or an age (30m ago, 2h ago, 3d ago).
    #[arg(long, env = "DRAINER_BEFORE", value_parser = parse_before)]
    pub before: Option<chrono::DateTime<chrono::Utc>>,
    /// Restore into a directory that holds something else, replacing what the snapshot
    /// holds and leaving the rest.
    #[arg(long)]
    pub force: bool,
    /// Restore only into an empty directory (or continue an unfinished restore there); a
    /// directory holding anything else is left alone: exit 0, saying why (for init
    /// containers).
    #[arg(long, env = "DRAINER_IF_EMPTY")]
    pub if_empty: bool,
    /// A volume that has no snapshot at all is not an error: exit 0 restoring nothing,
    /// saying so (without it: exit 1 with a message).
    #[arg(long, env = "DRAINER_ALLOW_MISSING")]
    pub allow_missing: bool,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `drainer sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// How to reach the drainer.
    #[command(flatten)]
    pub drainer: ClientArgs,
    /// Find only: queue no drain and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also list the claims whose ordinal is live (left out by default).
    #[arg(long)]
    pub all: bool,
    /// Output format (`json` prints the API's answer).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Give up after this many seconds (retries included).
    #[arg(long, env = "DRAINER_SWEEP_TIMEOUT", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// `drainer orphans`.
#[derive(Debug, Clone, Args)]
pub struct OrphansArgs {
    /// How to reach the drainer.
    #[command(flatten)]
    pub drainer: ClientArgs,
    /// Output format (`json` prints the API's answer).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Give up after this many seconds (retries included).
    #[arg(long, env = "DRAINER_SWEEP_TIMEOUT", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// `drainer release-guards`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseGuardsArgs {
    /// Only in these namespaces (repeat, or comma-separated); all when none is given.
    #[arg(long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Say what would be let go, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where a command reads snapshots from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A store, read directly (`STORE_URL`).
    Store(String),
    /// A drainer's API.
    Drainer(ClientArgs),
}

impl RestoreArgs {
    /// Where to read and where to write: `STORE_URL DEST`, or `--drainer URL DEST`; a one-line
    /// reason when the arguments say neither.
    pub fn source(&self) -> Result<(Source, PathBuf), String> {
        match (self.drainer.client(), &self.store, &self.dest) {
            (Some(client), Some(dest), None) => Ok((Source::Drainer(client), PathBuf::from(dest))),
            (None, Some(store), Some(dest)) => {
                crate::store::check_url(store).map_err(|e| e.to_string())?;
                Ok((Source::Store(store.clone()), dest.clone()))
            }
            (Some(_), Some(_), Some(_)) => Err(store_or_drainer_conflict()),
            (Some(_), None, _) => Err("DEST is needed: drainer restore --drainer URL --volume NS/PVC DEST".into()),
            (None, _, _) => Err(
                "STORE_URL and DEST are needed (or --drainer URL and DEST): drainer restore STORE_URL --volume NS/PVC DEST".into(),
            ),
        }
    }

    /// The snapshot asked for: `--before TIME`, or `--snapshot`.
    pub fn selector(&self) -> SnapshotSelector {
        match self.before {
            Some(time) => SnapshotSelector::Before(time),
            None => self.snapshot.clone(),
        }
    }
}

/// The one-line refusal when both a store and a drainer are given, naming the environment
/// variables that gave them (a `DRAINER_URL` or `DRAINER_STORE` left set in a shell is the
/// usual cause, and the flags alone would not say so).
pub fn store_or_drainer_conflict() -> String {
    conflict_message(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

fn conflict_message(is_set: impl Fn(&str) -> bool) -> String {
    let from_env: Vec<String> = [
        ("DRAINER_STORE", "STORE_URL"),
        ("DRAINER_URL", "--drainer URL"),
    ]
    .into_iter()
    .filter(|(var, _)| is_set(var))
    .map(|(var, what)| format!("{what} from {var}"))
    .collect();
    let mut message = String::from("give either STORE_URL or --drainer URL, not both");
    if !from_env.is_empty() {
        message.push_str(&format!(
            " ({} in the environment: unset it or leave the other out)",
            from_env.join(", ")
        ));
    }
    message
}

/// Reading through a drainer's API instead of a store (`restore`, `snapshots`).
#[derive(Debug, Clone, Args)]
pub struct DrainerSource {
    /// Read through this drainer's API (e.g. `http://drainer.drainer-system.svc:8080`) instead
    /// of a store: the drainer reads its store, and the caller's token decides which volumes
    /// it may read (a pod: the claims it mounts; others: an RBAC grant on
    /// restores.drainer.io).
    #[arg(long = "drainer", env = "DRAINER_URL")]
    pub url: Option<String>,
    /// File holding the bearer token (inside a pod, when the default file is missing, its
    /// projected token at /var/run/secrets/drainer/token).
    #[arg(long, env = "DRAINER_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// The bearer token itself (instead of the token file).
    #[arg(long, env = "DRAINER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust for an https drainer URL.
    #[command(flatten)]
    pub trust: TrustArgs,
}

impl DrainerSource {
    /// How to reach the drainer, when `--drainer` was given.
    pub fn client(&self) -> Option<ClientArgs> {
        self.url.as_ref().map(|url| ClientArgs {
            url: url.clone(),
            token_file: self.token_file.clone(),
            token: self.token.clone(),
            trust: self.trust.clone(),
        })
    }
}

/// A `--before` time (see `snapshot::select`).
fn parse_before(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    crate::snapshot::select::parse_time(text, chrono::Utc::now())
}

/// Output format of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}

/// `drainer snapshots`.
#[derive(Debug, Clone, Args)]
pub struct SnapshotsArgs {
    /// Where snapshots are stored (leave it out with `--drainer`).
    #[arg(env = "DRAINER_STORE", value_parser = parse_store_url)]
    pub store: Option<String>,
    /// Read through a drainer's API instead of a store (`--volume` is then needed).
    #[command(flatten)]
    pub drainer: DrainerSource,
    /// Only this volume (NAMESPACE/PVC); every volume when absent.
    #[arg(long, env = "DRAINER_VOLUME")]
    pub volume: Option<VolumeId>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `drainer prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Where snapshots are stored.
    #[arg(env = "DRAINER_STORE", value_parser = parse_store_url)]
    pub store: String,
    /// The volume to prune, as NAMESPACE/PVC; every volume of the store when absent.
    #[arg(long, env = "DRAINER_VOLUME")]
    pub volume: Option<VolumeId>,
    /// Which snapshots to keep (at least one rule; the latest always stays).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The same as --keep-last (kept for scripts written before the other rules).
    #[arg(long, env = "DRAINER_KEEP", value_parser = parse_count, conflicts_with = "keep_last")]
    pub keep: Option<u32>,
    /// Print what the policy keeps and deletes, and why; delete nothing.
    #[arg(long)]
    pub plan: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `drainer verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Where snapshots are stored.
    #[arg(env = "DRAINER_STORE", value_parser = parse_store_url)]
    pub store: String,
    /// The volume to verify, as NAMESPACE/PVC.
    #[arg(long, env = "DRAINER_VOLUME")]
    pub volume: VolumeId,
    /// The snapshot to verify: an id, or `latest`.
    #[arg(long, env = "DRAINER_SNAPSHOT", default_value = "latest")]
    pub snapshot: SnapshotSelector,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Parses a duration given in whole seconds.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))
}

/// A whole number of seconds, at least one.
pub fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    match parse_seconds(s)? {
        d if d.is_zero() => Err("must be at least 1 second".to_owned()),
        d => Ok(d),
    }
}

/// A part size in MiB: a power of two, so each part's hash can be computed on its own (see
/// `snapshot::part_hash`), and at least 8 (S3's smallest part is 5 MiB).
/// A `STORE_URL`, checked as [`crate::store::check_url`] does, so a URL that would be read
/// as something else (`file:relative`, `file://`, a dropped query) is a usage error.
fn parse_store_url(text: &str) -> Result<String, String> {
    crate::store::check_url(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_part_size(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(mib) if (8..=512).contains(&mib) && mib.is_power_of_two() => Ok(mib),
        _ => Err("a power of two from 8 to 512 (MiB)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::conflict_message;

    #[test]
    fn the_store_or_drainer_conflict_names_the_variables_that_gave_them() {
        let cases: [(&[&str], &str); 4] = [
            (&[], "give either STORE_URL or --drainer URL, not both"),
            (
                &["DRAINER_URL"],
                "give either STORE_URL or --drainer URL, not both (--drainer URL from DRAINER_URL \
                 in the environment: unset it or leave the other out)",
            ),
            (
                &["DRAINER_STORE"],
                "give either STORE_URL or --drainer URL, not both (STORE_URL from DRAINER_STORE \
                 in the environment: unset it or leave the other out)",
            ),
            (
                &["DRAINER_STORE", "DRAINER_URL"],
                "give either STORE_URL or --drainer URL, not both (STORE_URL from DRAINER_STORE, \
                 --drainer URL from DRAINER_URL in the environment: unset it or leave the other \
                 out)",
            ),
        ];
        for (set, expected) in cases {
            assert_eq!(
                conflict_message(|name| set.contains(&name)),
                expected,
                "{set:?}"
            );
        }
    }
}
