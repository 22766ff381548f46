//! Command-line and environment configuration: one `clap` parser for every subcommand.
//!
//! Every flag can also be given as a `DRAINER_*` environment variable. Nothing else in the
//! crate reads the environment for drainer settings (object-store credentials are read by
//! `object_store` itself from the usual `AWS_*`, `GOOGLE_*` and `AZURE_*` variables).

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use drainer_clients::args::{
    ClientArgs, DEFAULT_TOKEN_FILE, DrainerSource, HandoffArgs, InstallArgs, MoverArgs,
    POD_TOKEN_FILE,
};
pub use drainer_clients::kubectl::{KubectlArgs, KubectlCommand};
use drainer_core::args::parse_store_url;
pub use drainer_core::args::{
    DEFAULT_CONCURRENCY, DEFAULT_MOVER_CONCURRENCY, EncryptionArgs, EngineArgs,
    parse_positive_seconds, parse_seconds,
};
use drainer_core::snapshot::SnapshotSelector;
use drainer_core::volume::VolumeId;
pub use drainer_kube::args::{
    KubeArgs, MoverIdentity, MoverJobArgs, PodSecurityLevel, ReleaseGuardsArgs,
};
pub use drainer_server::args::{
    LedgerArgs, LimitArgs, Movers, PolicyArgs, ServeArgs, ServeRetentionArgs,
};
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
    Serve(Box<ServeCommand>),
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
    /// `kubectl drainer` (what this binary does when installed as `kubectl-drainer`): drains,
    /// status, orphans, snapshots, retry and cancel with the kubeconfig's identity.
    ///
    /// Read from the API server what it knows (Drain objects, drainer's pods); the rest from
    /// drainer through a port-forward made for the call, with --token or the kubeconfig
    /// user's bearer token (never the admin token). Exit 1: the API server or drainer refused
    /// or could not be reached; exit 2: bad usage.
    Kubectl(KubectlArgs),
}

/// `drainer serve`: the server's flags and Kubernetes mode's.
#[derive(Debug, Clone, Args)]
pub struct ServeCommand {
    /// The service.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Kubernetes mode.
    #[command(flatten)]
    pub kube: KubeArgs,
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
    /// Client-side encryption of the store's objects.
    #[command(flatten)]
    pub encryption: EncryptionArgs,
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
    /// Client-side encryption of the store's objects.
    #[command(flatten)]
    pub encryption: EncryptionArgs,
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
                drainer_core::store::check_url(store).map_err(|e| e.to_string())?;
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
    /// Client-side encryption of the store's objects.
    #[command(flatten)]
    pub encryption: EncryptionArgs,
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
    #[arg(long, env = "DRAINER_KEEP", value_parser = drainer_core::snapshot::retention::parse_count, conflicts_with = "keep_last")]
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
    /// Client-side encryption of the store's objects.
    #[command(flatten)]
    pub encryption: EncryptionArgs,
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
    /// Client-side encryption of the store's objects.
    #[command(flatten)]
    pub encryption: EncryptionArgs,
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
