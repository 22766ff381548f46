//! Sweeps: finding volumes that need a drain nobody announced, and listing the volumes left
//! behind, for the operator who wants to know before deleting anything.
//!
//! A [`Sweeper`] is how the service's mode sweeps: [`LocalSweeper`] here, `kube::sweep` in
//! Kubernetes mode (StatefulSets and claims). Both answer with the same [`SweepReport`] (every
//! volume looked at, its [`Finding`], the drains queued) and the same [`Orphan`] rows, so
//! `POST /v1/sweeps`, `GET /v1/orphans`, `drainer sweep` and `drainer orphans` read alike in
//! both modes; a dry run finds without queueing.
//!
//! In local mode a sweep lists `VOLUME_ROOT/NS/PVC` directories and plans a drain for each
//! volume that has no snapshot yet or changed since its latest one (any entry's ctime after the
//! snapshot started). Deciding is pure ([`plan`]); acting is thin ([`sweep_local`]: the ledger
//! queues the drains). Local volumes have no owner that could still want them, so every volume
//! directory is listed as left behind.

use drainer_core::ledger::{Drain, DrainFilter, Ledger, NewDrain};
use drainer_core::lifecycle::DrainState;
use drainer_core::snapshot::SnapshotSummary;
use drainer_core::store::Store;
use drainer_core::volume::VolumeId;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a Kubernetes sweep decided about a claim of a StatefulSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its ordinal is live: its StatefulSet still wants it.
    Live,
    /// Its ordinal is scaled away or its StatefulSet is gone, but a pod mounts it.
    InUse,
    /// Orphaned: nothing wants it and no pod mounts it.
    Orphaned,
    /// Orphaned, but the claim or its StatefulSet says `drainer.io/drain: "false"`.
    OptedOut,
    /// Orphaned, but the claim is being deleted (no mover can mount it any more).
    Deleting,
}

impl Verdict {
    /// Whether the volume is orphaned (drained or not, opted out or not).
    pub fn is_orphaned(self) -> bool {
        matches!(
            self,
            Verdict::Orphaned | Verdict::OptedOut | Verdict::Deleting
        )
    }

    /// The verdict's name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Live => "live",
            Verdict::InUse => "in_use",
            Verdict::Orphaned => "orphaned",
            Verdict::OptedOut => "opted_out",
            Verdict::Deleting => "deleting",
        }
    }
}

/// What a sweep found about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The volume, `namespace/pvc`.
    pub volume: String,
    /// Whether it needs a drain (one is queued for it, unless this was a dry run).
    pub drain: bool,
    /// Why or why not.
    pub why: String,
    /// Kubernetes mode: what the claim is to its StatefulSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Kubernetes mode: the claim's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Kubernetes mode: the StatefulSet the claim belongs (or belonged) to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statefulset: Option<String>,
    /// The drain that covers it already (active, or completed since it was last used), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_id: Option<String>,
}

impl Finding {
    /// A finding with only the fields both modes have.
    pub fn new(volume: impl Into<String>, drain: bool, why: impl Into<String>) -> Self {
        Self {
            volume: volume.into(),
            drain,
            why: why.into(),
            verdict: None,
            uid: None,
            statefulset: None,
            drain_id: None,
        }
    }
}

/// What one sweep found and queued.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Every volume looked at, and the decision.
    pub findings: Vec<Finding>,
    /// Drains queued (or found already active) for the volumes that need one; none in a dry
    /// run.
    pub drains: Vec<Drain>,
    /// How long the sweep took.
    pub seconds: f64,
    /// Whether this was a dry run (findings only, nothing queued or recorded).
    pub dry_run: bool,
}

impl SweepReport {
    /// How many volumes the sweep found orphaned (opted out and being deleted included).
    pub fn orphaned(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.verdict.is_some_and(Verdict::is_orphaned))
            .count()
    }

    /// How many volumes needed a drain.
    pub fn needing_drains(&self) -> usize {
        self.findings.iter().filter(|f| f.drain).count()
    }
}

/// A volume left behind, as `GET /v1/orphans` and `drainer orphans` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Orphan {
    /// The volume, `namespace/pvc`.
    pub volume: String,
    /// Kubernetes mode: the claim's UID.
    #[serde(default)]
    pub uid: Option<String>,
    /// Kubernetes mode: the StatefulSet it belonged to.
    #[serde(default)]
    pub statefulset: Option<String>,
    /// Orphaned, opted out, or being deleted.
    pub verdict: Verdict,
    /// Why it is orphaned.
    pub why: String,
    /// Its size in bytes: the claim's capacity (its request while unbound); in local mode the
    /// bytes of its files.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Its size as Kubernetes writes it (`16Gi`), if it has one.
    #[serde(default)]
    pub size: Option<String>,
    /// When the claim was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// When a sweep first found it orphaned (RFC 3339), if one did.
    #[serde(default)]
    pub orphaned_since: Option<String>,
    /// Seconds since it was orphaned if that is known, else since it was created.
    #[serde(default)]
    pub age_seconds: Option<u64>,
    /// Its latest complete snapshot in the store.
    #[serde(default)]
    pub last_snapshot: Option<LastSnapshot>,
    /// Its active drain, else its latest one.
    #[serde(default)]
    pub drain: Option<DrainBrief>,
}

/// A volume's latest complete snapshot, in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSnapshot {
    /// The snapshot id.
    pub id: String,
    /// When it was completed (RFC 3339).
    pub completed: String,
    /// Regular files in it.
    pub files: u64,
    /// Bytes in them.
    pub bytes: u64,
}

impl From<&SnapshotSummary> for LastSnapshot {
    fn from(summary: &SnapshotSummary) -> Self {
        Self {
            id: summary.snapshot.clone(),
            completed: summary.completed.clone(),
            files: summary.files,
            bytes: summary.bytes,
        }
    }
}

/// A drain, in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainBrief {
    /// The drain's id.
    pub id: String,
    /// Its state.
    pub state: DrainState,
    /// Why it was requested.
    pub reason: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub finished: Option<String>,
    /// The error of its last failed attempt.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl From<&Drain> for DrainBrief {
    fn from(drain: &Drain) -> Self {
        Self {
            id: drain.id.clone(),
            state: drain.state,
            reason: drain.reason.clone(),
            created: rfc3339(drain.created_ms),
            finished: drain.finished_ms.map(rfc3339),
            last_error: drain.last_error.clone(),
        }
    }
}

/// A time in ms since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The drain to show for a volume among its drains: the active one, else the newest.
pub fn shown_drain<'a>(drains: impl IntoIterator<Item = &'a Drain>) -> Option<&'a Drain> {
    drains
        .into_iter()
        .max_by_key(|d| (d.state.is_active(), d.created_ms, d.id.as_str()))
}

/// How the service's mode sweeps: local mode lists volume directories, Kubernetes mode
/// StatefulSets and claims (`kube::sweep`).
#[async_trait::async_trait]
pub trait Sweeper: Send + Sync {
    /// Runs one sweep now: finds the volumes that need a drain and, unless `dry_run`, queues
    /// one for each.
    async fn sweep(&self, dry_run: bool) -> Result<SweepReport, SweepError>;

    /// A scheduled sweep: where several replicas run, only one of them sweeps at a time, and
    /// the others answer `None`. By default, every call sweeps.
    async fn scheduled(&self) -> Result<Option<SweepReport>, SweepError> {
        self.sweep(false).await.map(Some)
    }

    /// Lists the volumes left behind, with their size, age, last snapshot and drain.
    async fn orphans(&self) -> Result<Vec<Orphan>, SweepError> {
        Err(SweepError::Cluster(
            "this mode does not list orphaned volumes".into(),
        ))
    }
}

/// What is known of one volume when deciding.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The volume.
    pub volume: VolumeId,
    /// Newest ctime of any entry under it, in ns.
    pub newest_change_ns: i64,
    /// Start time of its latest snapshot, in ns, if it has one.
    pub latest_snapshot_ns: Option<i64>,
}

/// Decides which observed volumes need a drain.
pub fn plan(observed: &[Observed]) -> Vec<Finding> {
    observed
        .iter()
        .map(|o| {
            let (drain, why) = match o.latest_snapshot_ns {
                None => (true, "no snapshot yet"),
                Some(t) if o.newest_change_ns >= t => (true, "changed since its latest snapshot"),
                Some(_) => (false, "unchanged since its latest snapshot"),
            };
            Finding::new(o.volume.to_string(), drain, why)
        })
        .collect()
}

/// Lists the volume directories under `root` (`NS/PVC` with valid names; others are ignored).
pub(crate) fn local_volumes(root: &Path) -> std::io::Result<Vec<VolumeId>> {
    let mut volumes = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(root) else {
        return Ok(volumes);
    };
    for ns in namespaces {
        let ns = ns?;
        if !ns.file_type()?.is_dir() {
            continue;
        }
        for pvc in std::fs::read_dir(ns.path())? {
            let pvc = pvc?;
            let (Some(n), Some(p)) = (
                ns.file_name().to_str().map(str::to_owned),
                pvc.file_name().to_str().map(str::to_owned),
            ) else {
                continue;
            };
            if pvc.file_type()?.is_dir()
                && let Ok(volume) = VolumeId::new(&n, &p)
            {
                volumes.push(volume);
            }
        }
    }
    volumes.sort();
    Ok(volumes)
}

/// Newest ctime (ns) of any entry under `dir`, the directory itself included.
pub(crate) fn newest_change(dir: &Path) -> i64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.ctime() * 1_000_000_000 + m.ctime_nsec())
        .max()
        .unwrap_or(0)
}

/// The start time of a snapshot in ns.
pub(crate) fn snapshot_start_ns(summary: &SnapshotSummary) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(&summary.created)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Bytes in the regular files under `dir`.
pub(crate) fn bytes_under(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Runs `work` on the blocking pool; a task that panicked is an I/O error about `path`.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SweepError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SweepError::List(path.to_owned(), std::io::Error::other(e.to_string())))
}

/// The latest complete snapshot of `volume`, if it has one.
pub async fn last_snapshot(
    store: &Store,
    volume: &VolumeId,
) -> Result<Option<SnapshotSummary>, drainer_core::snapshot::Error> {
    drainer_core::snapshot::catalog::latest(store, volume).await
}

/// Runs one local-mode sweep: observe every volume under `root`, plan, queue the drains
/// (unless `dry_run`: then the findings only).
pub(crate) async fn sweep_local(
    ledger: &Ledger,
    store: &Store,
    root: &Path,
    max_attempts: u32,
    dry_run: bool,
) -> Result<SweepReport, SweepError> {
    let started = std::time::Instant::now();
    let owned_root = root.to_owned();
    let volumes = blocking(root, move || local_volumes(&owned_root))
        .await?
        .map_err(|e| SweepError::List(root.to_owned(), e))?;
    let mut observed = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let latest = last_snapshot(store, &volume)
            .await?
            .and_then(|summary| snapshot_start_ns(&summary));
        let dir = root.join(&volume.namespace).join(&volume.name);
        let newest = blocking(&dir.clone(), move || newest_change(&dir)).await?;
        observed.push(Observed {
            volume,
            newest_change_ns: newest,
            latest_snapshot_ns: latest,
        });
    }
    let findings = plan(&observed);
    let wanted: Vec<_> = observed
        .iter()
        .zip(&findings)
        .filter(|(_, f)| f.drain && !dry_run)
        .map(|(o, _)| NewDrain {
            volume: o.volume.clone(),
            pod: None,
            reason: "sweep".to_owned(),
            max_attempts,
            wait_for_release: false,
            requested_by: None,
            facts: Default::default(),
        })
        .collect();
    let drains = if wanted.is_empty() {
        Vec::new()
    } else {
        ledger
            .request_drains(&wanted)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect()
    };
    Ok(SweepReport {
        findings,
        drains,
        seconds: started.elapsed().as_secs_f64(),
        dry_run,
    })
}

/// Local mode's sweeps: volume directories under the volume root.
pub(crate) struct LocalSweeper {
    /// The ledger.
    pub ledger: Ledger,
    /// The snapshot store.
    pub store: Store,
    /// The volume root.
    pub root: PathBuf,
    /// Attempts given to new drains.
    pub max_attempts: u32,
}

#[async_trait::async_trait]
impl Sweeper for LocalSweeper {
    async fn sweep(&self, dry_run: bool) -> Result<SweepReport, SweepError> {
        sweep_local(
            &self.ledger,
            &self.store,
            &self.root,
            self.max_attempts,
            dry_run,
        )
        .await
    }

    async fn orphans(&self) -> Result<Vec<Orphan>, SweepError> {
        let root = self.root.clone();
        let volumes = blocking(&self.root, move || local_volumes(&root))
            .await?
            .map_err(|e| SweepError::List(self.root.clone(), e))?;
        let mut orphans = Vec::with_capacity(volumes.len());
        for volume in volumes {
            orphans.push(self.local_orphan(volume).await?);
        }
        Ok(orphans)
    }
}

impl LocalSweeper {
    async fn local_orphan(&self, volume: VolumeId) -> Result<Orphan, SweepError> {
        let dir = self.root.join(&volume.namespace).join(&volume.name);
        let size = blocking(&dir.clone(), move || bytes_under(&dir)).await?;
        let last = last_snapshot(&self.store, &volume).await?;
        let filter = DrainFilter {
            namespace: Some(volume.namespace.clone()),
            pvc: Some(volume.name.clone()),
            ..DrainFilter::default()
        };
        let drains = self.ledger.drains(&filter, 100).await?;
        Ok(Orphan {
            volume: volume.to_string(),
            uid: None,
            statefulset: None,
            verdict: Verdict::Orphaned,
            why: "local mode: every volume directory is left behind".to_owned(),
            size_bytes: Some(size),
            size: None,
            created: None,
            orphaned_since: None,
            age_seconds: None,
            last_snapshot: last.as_ref().map(LastSnapshot::from),
            drain: shown_drain(&drains).map(DrainBrief::from),
        })
    }
}

/// Why a sweep could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The volume root could not be listed.
    #[error("cannot list volume root {0}: {1}")]
    List(std::path::PathBuf, #[source] std::io::Error),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] drainer_core::snapshot::Error),
    /// The ledger could not be written.
    #[error(transparent)]
    Ledger(#[from] drainer_core::ledger::Error),
    /// The cluster could not be read or changed now (Kubernetes mode); a later sweep may
    /// succeed.
    #[error("{0}")]
    Cluster(String),
}

impl SweepError {
    /// Whether a later sweep may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SweepError::List(..) => false,
            SweepError::Store(e) => e.is_transient(),
            SweepError::Ledger(e) => e.is_transient(),
            SweepError::Cluster(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(name: &str, change: i64, snapshot: Option<i64>) -> Observed {
        Observed {
            volume: name.parse().unwrap(),
            newest_change_ns: change,
            latest_snapshot_ns: snapshot,
        }
    }

    #[test]
    fn drains_new_and_changed_volumes_only() {
        let found = plan(&[
            observed("a/new", 5, None),
            observed("a/changed", 10, Some(9)),
            observed("a/same-instant", 9, Some(9)),
            observed("a/quiet", 8, Some(9)),
        ]);
        let drains: Vec<(&str, bool)> =
            found.iter().map(|f| (f.volume.as_str(), f.drain)).collect();
        assert_eq!(
            drains,
            [
                ("a/new", true),
                ("a/changed", true),
                ("a/same-instant", true),
                ("a/quiet", false)
            ]
        );
    }

    #[test]
    fn lists_only_valid_volume_directories() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["shop/data-0", "shop/Bad_Name", "UPPER/x", "ns2/v"] {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        std::fs::write(dir.path().join("shop/file"), b"").unwrap();
        let names: Vec<String> = local_volumes(dir.path())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["ns2/v", "shop/data-0"]);
        assert!(
            local_volumes(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
