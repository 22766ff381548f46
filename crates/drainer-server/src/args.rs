//! The flags of `drainer serve` that the server itself reads: where the ledger and the store
//! are, how drains are retried and swept, retention, and what one client may hold of the API.
//! Kubernetes mode's own flags are `drainer_kube::args`; the binary flattens both into its
//! `serve` subcommand.

use clap::{Args, ValueEnum};
use drainer_core::args::{
    EncryptionArgs, EngineArgs, parse_positive_seconds, parse_seconds, parse_store_url,
};
use drainer_core::snapshot::retention::{Policy, Span};
use std::path::PathBuf;
use std::time::Duration;

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
    /// How movers send the parts of large files, and `restore --drainer` reads them: `auto`
    /// straight to and from the store with URLs drainer signs where the store can sign (S3,
    /// not encrypted), else through drainer; `direct` the same, but refuse to start with a
    /// store that cannot sign; `relay` always through drainer.
    #[arg(long, env = "DRAINER_MOVER_DATA_PATH", value_enum, default_value_t = MoverDataPath::Auto)]
    pub mover_data_path: MoverDataPath,
    /// This replica's name in leases and history. Default: host name, process id and a random suffix.
    #[arg(long, env = "DRAINER_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Ledger location.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Client-side encryption of the store's objects.
    #[command(flatten)]
    pub encryption: EncryptionArgs,
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
    /// MiB of movers' request bodies (parts, objects, batches: each read whole, up to 64 MiB)
    /// held at once by all callers together; a request that finds no room within 5 s is
    /// answered `429` with `Retry-After: 1`. At least 64.
    #[arg(long, env = "DRAINER_MOVER_BODY_MEMORY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub mover_body_memory: u32,
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
    pub(crate) fn per_caller(&self) -> crate::http::inflight::PerCaller {
        crate::http::inflight::PerCaller::new(
            self.mover_requests_per_caller as usize,
            self.batch_reads_per_caller as usize,
        )
    }

    /// The budget for movers' request bodies these flags give.
    pub(crate) fn body_budget(&self) -> crate::http::body_budget::BodyBudget {
        crate::http::body_budget::BodyBudget::for_movers(
            self.mover_body_memory as usize * 1024 * 1024,
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

/// The retention pass of `drainer serve` (see [`crate::pruning`]).
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
    drainer_core::snapshot::retention::parse_count(text)
}

fn parse_span(text: &str) -> Result<Span, String> {
    text.parse()
}

/// Who makes the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Movers {
    /// The snapshot engine inside the drainer process.
    InProcess,
    /// `drainer mover` processes, through the API.
    External,
}

/// How movers send the parts of large files (`--mover-data-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MoverDataPath {
    /// Straight into the store where it can sign, else through drainer.
    Auto,
    /// Straight into the store; a store that cannot sign is a start-up error.
    Direct,
    /// Through drainer, always.
    Relay,
}

impl MoverDataPath {
    /// Whether drainer offers its movers signed URLs for parts, given whether its store can
    /// sign them; `direct` with a store that cannot sign is an error naming the store.
    pub(crate) fn offers_direct_parts(
        self,
        store_signs: bool,
        store: &str,
    ) -> Result<bool, String> {
        match (self, store_signs) {
            (MoverDataPath::Relay, _) => Ok(false),
            (MoverDataPath::Auto, signs) => Ok(signs),
            (MoverDataPath::Direct, true) => Ok(true),
            (MoverDataPath::Direct, false) => Err(format!(
                "--mover-data-path direct: store {store} cannot sign URLs for movers (only an \
                 S3 store that is not encrypted can); use auto or relay"
            )),
        }
    }
}

#[cfg(test)]
mod data_path_tests {
    use super::MoverDataPath;

    #[test]
    fn parts_go_direct_only_where_the_store_signs_and_the_operator_allows() {
        let cases = [
            (MoverDataPath::Auto, true, Some(true)),
            (MoverDataPath::Auto, false, Some(false)),
            (MoverDataPath::Relay, true, Some(false)),
            (MoverDataPath::Relay, false, Some(false)),
            (MoverDataPath::Direct, true, Some(true)),
            (MoverDataPath::Direct, false, None),
        ];
        for (path, signs, offered) in cases {
            let got = path.offers_direct_parts(signs, "s3://b/p");
            assert_eq!(got.as_ref().ok().copied(), offered, "{path:?} {signs}");
        }
        let refusal = MoverDataPath::Direct
            .offers_direct_parts(false, "file:///srv/store")
            .unwrap_err();
        assert!(refusal.contains("file:///srv/store"), "{refusal}");
    }
}
