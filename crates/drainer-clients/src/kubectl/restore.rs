//! `kubectl drainer restore [NS/]PVC --to DIR`: a claim's snapshot (the latest, or
//! `--snapshot ID`) restored into a local directory, read through drainer's restore API as
//! `drainer restore --drainer` reads it ([`crate::remote`]: the listing, then the snapshot's
//! summary, manifest and objects, small ones in batches), with the caller's token (never the
//! admin token) through the port-forward made for the call or `--drainer-url`. drainer
//! authorises it as any restore through its API: a ServiceAccount of the claim's namespace
//! with RBAC `create` on `restores.drainer.io` there (ClusterRole `drainer-restore`), or a
//! pod's token for the claims it mounts, or a user the API server vouches for with that
//! grant. drainer's policy refuses restores to ServiceAccounts of other namespaces: they get
//! its 403 in one line. A snapshot of an earlier namespace of that name takes
//! `--earlier-namespace` and RBAC's `read-earlier` on the claim's `snapshots.drainer.io`
//! besides (drainer records the read); without them, `403 earlier_namespace`.
//!
//! It restores into a directory of this machine; `--into-claim CLAIM` restores into a claim
//! instead, by a Job in the claim's namespace ([`super::restore_job`]; a claim gets its data
//! back from a pod that mounts it, as `deploy/examples/restore-init.yaml`'s init container
//! does). The restore engine's guarantees hold: nothing appears
//! under its final name before it is checked, an unfinished restore into the same directory
//! is continued, a directory holding anything else is refused without `--force`.
//!
//! On a terminal, a bar on stderr: files and bytes in place of the snapshot's totals, the
//! rate. Otherwise, with `-o table`, a plain line on stderr every [`LINE_EVERY`]; with `-o
//! json|yaml`, nothing but the document. Refusals are one line ([`refused_line`]), exit 1.

use super::connect::{self, Cluster};
use super::output::document;
use super::progress::{Bar, Counts, text};
use super::through::volume_of;
use super::{KubectlArgs, Output};
use crate::client::CallError;
use crate::remote::{self, RemoteVolume};
use clap::Args;
use drainer_core::snapshot::{
    self, Found, Progress, RestoreOptions, RestoreSummary, SnapshotId, SnapshotSelector,
};
use drainer_core::volume::VolumeId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the bar is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(250);
/// How often a plain progress line is written when stderr is not a terminal.
pub(crate) const LINE_EVERY: Duration = Duration::from_secs(10);

/// `kubectl drainer restore`'s own flags.
#[derive(Debug, Clone, Args)]
pub struct RestoreCommand {
    /// The claim, as NAMESPACE/PVC (or PVC with -n).
    pub volume: String,
    /// The local directory to restore into (made if missing; an unfinished restore of the
    /// same claim there is continued).
    #[arg(long, value_name = "DIR", required_unless_present = "into_claim")]
    pub to: Option<PathBuf>,
    /// Restore into this claim of the volume's namespace instead (the same claim come back
    /// empty, or another), by a Job this command creates there and waits for.
    #[arg(long, value_name = "CLAIM", conflicts_with = "to")]
    pub into_claim: Option<String>,
    /// With --into-claim: the Job pod's ServiceAccount. Restoring another claim's snapshot
    /// than the one it mounts takes RBAC `create` on `restores.drainer.io` (drainer-restore).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub service_account: String,
    /// With --into-claim: the Job's image (default: the image of drainer's pod).
    #[arg(long, value_name = "IMAGE", requires = "into_claim")]
    pub image: Option<String>,
    /// With --into-claim: how long to wait for the Job, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = drainer_core::args::parse_positive_seconds)]
    pub job_timeout: Duration,
    /// The snapshot to restore (default: the latest; see `kubectl drainer snapshots`).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<SnapshotId>,
    /// Restore into a directory that holds something else, replacing what the snapshot
    /// names and leaving the rest.
    #[arg(long)]
    pub force: bool,
    /// Restore only into a missing or empty directory (or continue an unfinished restore of
    /// the same claim there); leave any other alone and exit 0.
    #[arg(long, conflicts_with = "force")]
    pub if_empty: bool,
    /// Read snapshots of an earlier namespace of the claim's namespace name too (one deleted
    /// and made again): needs RBAC `read-earlier` on the claim's `snapshots.drainer.io`;
    /// drainer records each such read.
    #[arg(long)]
    pub earlier_namespace: bool,
}

impl RestoreCommand {
    /// The snapshot asked for.
    pub fn selector(&self) -> SnapshotSelector {
        self.snapshot
            .clone()
            .map_or(SnapshotSelector::Latest, SnapshotSelector::Id)
    }
}

/// `kubectl drainer restore`.
pub(crate) async fn run(
    cluster: &Cluster,
    args: &KubectlArgs,
    restore: &RestoreCommand,
) -> anyhow::Result<()> {
    let volume = volume_of(
        &restore.volume,
        args.namespace.as_deref(),
        &cluster.default_namespace,
    )?;
    if let Some(claim) = &restore.into_claim {
        return super::restore_job::run(cluster, args, restore, &volume, claim).await;
    }
    let dest = restore
        .to
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--to DIR or --into-claim CLAIM"))?;
    let found = snapshot::inspect_destination(dest)?;
    if restore.if_empty && in_use(&found, &volume) {
        println!(
            "{} {}: not restoring {volume} (--if-empty)",
            dest.display(),
            found.describe()
        );
        return Ok(());
    }
    // An unfinished restore there goes on with its snapshot (unless another is named).
    let selector = snapshot::continuing(dest, &volume, &restore.selector())?;
    let token = cluster.token(args)?;
    let drainer = connect::drainer(cluster, args).await?;
    let http = drainer.http(args.request_timeout)?;
    let remote = RemoteVolume::through(http, &drainer.url, token, &volume)
        .earlier_namespace(restore.earlier_namespace);
    let options = RestoreOptions {
        concurrency: remote::RESTORE_CONCURRENCY,
        force: restore.force,
        part_size: 8 << 20,
        buffer_bytes: 48 << 20,
    };
    let started = Instant::now();
    let progress = Progress::default();
    let restoring = remote::restore_with_progress(
        &remote,
        &selector,
        dest,
        &options,
        args.request_timeout,
        &progress,
    );
    let report = Report::new(&volume, args.output);
    let summary = report
        .during(restoring, &progress)
        .await
        .map_err(|e| refusal(&volume, e))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = match args.output {
        Output::Table => format!("{}\n", restored_line(&summary, &volume, dest, seconds)),
        format => document(&restored_document(&summary, &volume, dest, seconds), format)?,
    };
    print!("{text}");
    Ok(())
}

/// Whether `found` keeps a restore of `volume` with `--if-empty` out: anything but nothing,
/// or an unfinished restore of the same claim (which is continued).
pub(crate) fn in_use(found: &Found, volume: &VolumeId) -> bool {
    match found {
        Found::Missing | Found::Empty => false,
        Found::Unfinished { marker, .. } => marker.volume != volume.to_string(),
        Found::Occupied { .. } => true,
    }
}

/// How a restore's progress is shown while it runs: a bar on a terminal, plain lines on
/// stderr for a table, nothing for a document.
struct Report {
    bar: Bar,
    label: String,
    lines: bool,
}

impl Report {
    fn new(volume: &VolumeId, output: Output) -> Self {
        let label = format!("restoring {volume}");
        let bar = Bar::on_terminal(&label);
        let lines = !bar.drawn() && output == Output::Table;
        Self { bar, label, lines }
    }

    /// Runs `work`, showing `progress` until it ends.
    async fn during<T>(self, work: impl std::future::Future<Output = T>, progress: &Progress) -> T {
        tokio::pin!(work);
        let mut draw = tokio::time::interval(DRAW_EVERY);
        let mut last_line = Instant::now();
        loop {
            tokio::select! {
                done = &mut work => {
                    self.bar.clear();
                    return done;
                }
                _ = draw.tick() => {
                    let counts = Counts::of_view(&progress.view());
                    self.bar.show(Some(&counts), "");
                    if self.lines && last_line.elapsed() >= LINE_EVERY {
                        eprintln!("{}", progress_line(&self.label, &counts));
                        last_line = Instant::now();
                    }
                }
            }
        }
    }
}

/// The plain progress line written where no bar can be drawn.
pub(crate) fn progress_line(label: &str, counts: &Counts) -> String {
    format!("{label}: {}", text(counts))
}

/// A failed restore as one line: drainer's refusals said as what they mean for this command
/// (see [`refused_line`]); anything else as it is.
pub(crate) fn refusal(volume: &VolumeId, error: anyhow::Error) -> anyhow::Error {
    let answer = error
        .chain()
        .find_map(|e| match e.downcast_ref::<CallError>()? {
            CallError::Status {
                status,
                code,
                message,
                ..
            } => Some(refused_line(volume, *status, code.as_deref(), message)),
            _ => None,
        })
        // A refused batch of reads reaches the engine as the store's error alone.
        .or_else(|| {
            error
                .chain()
                .find_map(|e| match e.downcast_ref::<object_store::Error>()? {
                    object_store::Error::PermissionDenied { source, .. } => {
                        Some(refused_line(volume, 403, None, &source.to_string()))
                    }
                    object_store::Error::Unauthenticated { source, .. } => {
                        Some(refused_line(volume, 401, None, &source.to_string()))
                    }
                    _ => None,
                })
        });
    match answer {
        Some(line) => anyhow::anyhow!(line),
        None => error,
    }
}

/// What drainer's answer `status` (with its error `code` and `message`) to a restore of
/// `volume` means, in one line saying what to do.
pub(crate) fn refused_line(
    volume: &VolumeId,
    status: u16,
    code: Option<&str>,
    message: &str,
) -> String {
    let message = message.trim().replace('\n', " ");
    match (status, code) {
        (401, _) => format!(
            "drainer did not accept the token for a restore of {volume} (401): {message}; give \
             one it accepts with --token (e.g. `kubectl create token NAME --audience drainer`)"
        ),
        (403, Some("earlier_namespace")) => {
            format!("drainer refused a restore of {volume} (403 earlier_namespace): {message}")
        }
        (403, _) => format!(
            "drainer refused a restore of {volume} (403): {message}; drainer lets a \
             ServiceAccount of namespace {} restore with RBAC create on restores.drainer.io \
             there (ClusterRole drainer-restore)",
            volume.namespace
        ),
        (404, _) => format!("drainer has no such snapshot of {volume} (404): {message}"),
        (status, _) => format!("drainer answered {status} to a restore of {volume}: {message}"),
    }
}

/// The line saying what was restored.
pub(crate) fn restored_line(
    summary: &RestoreSummary,
    volume: &VolumeId,
    dest: &Path,
    seconds: f64,
) -> String {
    let mut extra = String::new();
    if summary.kept > 0 {
        extra.push_str(&format!("{} of them already in place, ", summary.kept));
    }
    if summary.hard_links > 0 {
        extra.push_str(&format!("{} hard links, ", summary.hard_links));
    }
    if summary.unreadable > 0 {
        extra.push_str(&format!(
            "{} UNREADABLE at copy time (not restored), ",
            summary.unreadable
        ));
    }
    format!(
        "restored snapshot {} of {volume} into {}: {} files, {}, {extra}{} dirs, {} symlinks, \
         {} skipped, {seconds:.2} s{}",
        summary.snapshot,
        dest.display(),
        summary.files,
        super::progress::binary_bytes(summary.bytes),
        summary.dirs,
        summary.symlinks,
        summary.skipped,
        if summary.resumed { ", resumed" } else { "" }
    )
}

/// What was restored as a document (`-o json|yaml`): the engine's summary with the volume,
/// the directory and the time taken.
pub(crate) fn restored_document(
    summary: &RestoreSummary,
    volume: &VolumeId,
    dest: &Path,
    seconds: f64,
) -> serde_json::Value {
    let mut value = serde_json::to_value(summary).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("volume".into(), volume.to_string().into());
        map.insert("destination".into(), dest.display().to_string().into());
        map.insert(
            "seconds".into(),
            ((seconds * 1000.0).round() / 1000.0).into(),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubectl::{KubectlArgs, KubectlCommand};
    use clap::Parser;

    /// `kubectl drainer`'s command line alone.
    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: KubectlArgs,
    }

    fn parse(words: &[&str]) -> Result<RestoreCommand, clap::Error> {
        let line =
            Line::try_parse_from(std::iter::once("kubectl-drainer").chain(words.iter().copied()))?;
        match line.args.command {
            KubectlCommand::Restore(restore) => Ok(restore),
            other => panic!("not a restore: {other:?}"),
        }
    }

    #[test]
    fn a_restore_names_the_claim_and_the_directory() {
        let restore = parse(&["restore", "shop/data-web-2", "--to", "/tmp/r"]).unwrap();
        assert_eq!(restore.volume, "shop/data-web-2");
        assert_eq!(restore.to, Some(PathBuf::from("/tmp/r")));
        assert_eq!(restore.into_claim, None);
        assert_eq!(restore.selector(), SnapshotSelector::Latest);
        assert!(!restore.force);
        let restore = parse(&[
            "restore",
            "data-web-2",
            "-n",
            "shop",
            "--to",
            "r",
            "--snapshot",
            "20261207T034557423Z-61ed",
            "--force",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(
            restore.selector(),
            SnapshotSelector::Id("20261207T034557423Z-61ed".parse().unwrap())
        );
        assert!(restore.force);
        // Into a claim instead: no directory; the Job's flags only with it.
        let into = parse(&["restore", "shop/data-web-2", "--into-claim", "data-web-2"]).unwrap();
        assert_eq!(
            (
                into.to,
                into.into_claim.as_deref(),
                into.service_account.as_str()
            ),
            (None, Some("data-web-2"), "default")
        );
        assert!(parse(&["restore", "shop/d", "--to", "r", "--into-claim", "d"]).is_err());
        assert!(
            parse(&["restore", "shop/d"]).is_err(),
            "neither --to nor --into-claim"
        );
    }

    #[test]
    fn a_restore_without_a_directory_or_with_a_bad_snapshot_is_bad_usage() {
        for words in [
            &["restore", "shop/data-web-2"][..],
            &["restore", "--to", "r"],
            &[
                "restore",
                "shop/data-web-2",
                "--to",
                "r",
                "--snapshot",
                "../x",
            ],
        ] {
            let error = parse(words).expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{words:?}: {error}");
        }
    }

    #[test]
    fn if_empty_leaves_alone_all_but_nothing_or_the_same_claims_unfinished_restore() {
        let dir = tempfile::tempdir().unwrap();
        let found = |path: &Path| snapshot::inspect_destination(path).unwrap();
        assert!(!in_use(&found(&dir.path().join("missing")), &volume()));
        assert!(!in_use(&found(dir.path()), &volume()));
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        assert!(in_use(&found(dir.path()), &volume()));
        assert!(parse(&["restore", "v", "--to", "r", "--if-empty", "--force"]).is_err());
        assert!(
            parse(&["restore", "v", "--to", "r", "--if-empty"])
                .unwrap()
                .if_empty
        );
    }

    fn volume() -> VolumeId {
        "shop/data-web-2".parse().unwrap()
    }

    #[test]
    fn refusals_are_one_line_saying_what_to_do() {
        let v = volume();
        let line = refused_line(&v, 403, Some("forbidden"), "user:x lacks RBAC permission\n");
        assert_eq!(
            line,
            "drainer refused a restore of shop/data-web-2 (403): user:x lacks RBAC permission; \
             drainer lets a ServiceAccount of namespace shop restore with RBAC create on \
             restores.drainer.io there (ClusterRole drainer-restore)"
        );
        let line = refused_line(&v, 403, Some("earlier_namespace"), "snapshot s of …");
        assert_eq!(
            line,
            "drainer refused a restore of shop/data-web-2 (403 earlier_namespace): snapshot s of …"
        );
        assert!(refused_line(&v, 401, None, "bad token").contains("--token"));
        assert!(refused_line(&v, 404, None, "no such key").contains("(404): no such key"));
        assert_eq!(
            refused_line(&v, 500, None, "boom"),
            "drainer answered 500 to a restore of shop/data-web-2: boom"
        );
        for status in [401, 403, 404, 409, 500] {
            assert!(!refused_line(&v, status, None, "a\nb").contains('\n'));
        }
    }

    fn denied(code: &str) -> CallError {
        CallError::Status {
            url: "http://127.0.0.1:1/v1/volumes/shop/data-web-2/objects".into(),
            status: 403,
            code: Some(code.into()),
            message: "no".into(),
        }
    }

    #[test]
    fn refusals_are_found_where_the_listing_or_the_engine_met_them() {
        // The listing's answer, as `RemoteVolume::resolve` returns it.
        let listing = refusal(&volume(), anyhow::Error::new(denied("forbidden")));
        assert!(
            listing.to_string().contains("(403): no; drainer lets"),
            "{listing}"
        );
        // An object's, as the restore engine returns it (through the store's error).
        let object = object_store::Error::PermissionDenied {
            path: "volumes/shop/data-web-2/snapshots/s/snapshot.json".into(),
            source: Box::new(denied("earlier_namespace")),
        };
        let engine = snapshot::Error::Store(drainer_core::store::Error::Backend {
            url: "drainer+http://127.0.0.1:1".into(),
            source: object,
        });
        let line = refusal(&volume(), anyhow::Error::new(engine)).to_string();
        assert_eq!(
            line,
            "drainer refused a restore of shop/data-web-2 (403 earlier_namespace): no"
        );
        // A batch's refusal, without the API's error: what the store says.
        let batch = snapshot::Error::Store(drainer_core::store::Error::Backend {
            url: "drainer+http://127.0.0.1:1".into(),
            source: object_store::Error::PermissionDenied {
                path: "volumes/shop/data-web-2/snapshots/s/files/a".into(),
                source: "the drainer answered 403 to …/objects/batch: no".into(),
            },
        });
        let line = refusal(&volume(), anyhow::Error::new(batch)).to_string();
        assert!(
            line.starts_with(
                "drainer refused a restore of shop/data-web-2 (403): the drainer answered 403 \
                 to …/objects/batch: no; drainer lets"
            ),
            "{line}"
        );
        // Anything else is left as it is.
        let other = refusal(&volume(), anyhow::anyhow!("disk full"));
        assert_eq!(other.to_string(), "disk full");
    }

    #[test]
    fn what_was_restored_is_a_line_or_a_document() {
        let summary = RestoreSummary {
            snapshot: "s-1".into(),
            files: 3,
            bytes: 1536,
            dirs: 2,
            kept: 1,
            ..RestoreSummary::default()
        };
        assert_eq!(
            restored_line(&summary, &volume(), Path::new("/tmp/r"), 1.234),
            "restored snapshot s-1 of shop/data-web-2 into /tmp/r: 3 files, 1.5 KiB, 1 of them \
             already in place, 2 dirs, 0 symlinks, 0 skipped, 1.23 s"
        );
        let document = restored_document(&summary, &volume(), Path::new("/tmp/r"), 1.2345);
        assert_eq!(document["volume"], "shop/data-web-2");
        assert_eq!(document["destination"], "/tmp/r");
        assert_eq!(document["files"], 3);
        assert_eq!(document["seconds"], 1.235);
        let counts = Counts {
            files: 1,
            files_total: Some(3),
            bytes: 512,
            bytes_total: Some(1536),
            bytes_per_second: 512.0,
        };
        assert_eq!(
            progress_line("restoring shop/data-web-2", &counts),
            "restoring shop/data-web-2: 1 of 3 files, 512 B of 1.5 KiB (33%), 512 B/s"
        );
    }
}
