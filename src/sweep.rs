//! Sweeps: finding volumes that need a drain nobody announced.
//!
//! In local mode a sweep lists `VOLUME_ROOT/NS/PVC` directories and plans a drain for each
//! volume that has no snapshot yet or changed since its latest one (any entry's ctime after the
//! snapshot started). Deciding is pure ([`plan`]); acting is the caller's (the ledger queues
//! the drains). The Kubernetes sweep (StatefulSets and PVCs) will produce the same plan.

use crate::snapshot::SnapshotSummary;
use crate::volume::VolumeId;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a sweep found about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The volume.
    pub volume: String,
    /// Whether it needs a drain.
    pub drain: bool,
    /// Why or why not.
    pub why: &'static str,
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
            Finding {
                volume: o.volume.to_string(),
                drain,
                why,
            }
        })
        .collect()
}

/// Lists the volume directories under `root` (`NS/PVC` with valid names; others are ignored).
pub fn local_volumes(root: &Path) -> std::io::Result<Vec<VolumeId>> {
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
pub fn newest_change(dir: &Path) -> i64 {
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
pub fn snapshot_start_ns(summary: &SnapshotSummary) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(&summary.created)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
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

/// What one sweep found and queued.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Every volume looked at, and the decision.
    pub findings: Vec<Finding>,
    /// Drains queued (or already active) for the volumes that need one.
    pub drains: Vec<crate::ledger::Drain>,
    /// How long the sweep took.
    pub seconds: f64,
}

/// Runs sweeps for the service's mode: local mode lists volume directories, Kubernetes mode
/// StatefulSets and claims (`kube::sweep`).
#[async_trait::async_trait]
pub trait Sweeper: Send + Sync {
    /// One sweep now; with `dry_run`, the findings only, no drain created.
    async fn sweep(&self, dry_run: bool) -> Result<SweepReport, SweepError>;

    /// A scheduled sweep: where several replicas run, only one of them sweeps at a time, and
    /// the others answer `None`. By default, every call sweeps.
    async fn scheduled(&self) -> Result<Option<SweepReport>, SweepError> {
        self.sweep(false).await.map(Some)
    }
}

/// Local mode's sweeps over the volume root.
pub struct LocalSweeper {
    /// Where drains are queued.
    pub ledger: crate::ledger::Ledger,
    /// Where snapshots are.
    pub store: crate::store::Store,
    /// The volume root.
    pub root: std::path::PathBuf,
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
}

/// Runs one local-mode sweep: observe every volume under `root`, plan, queue the drains
/// (unless `dry_run`).
pub async fn sweep_local(
    ledger: &crate::ledger::Ledger,
    store: &crate::store::Store,
    root: &Path,
    max_attempts: u32,
    dry_run: bool,
) -> Result<SweepReport, SweepError> {
    let started = std::time::Instant::now();
    let owned_root = root.to_owned();
    let volumes = tokio::task::spawn_blocking(move || local_volumes(&owned_root))
        .await
        .expect("listing task panicked")
        .map_err(|e| SweepError::List(root.to_owned(), e))?;
    let mut observed = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let latest = match crate::snapshot::resolve(
            store,
            &volume,
            &crate::snapshot::SnapshotSelector::Latest,
        )
        .await
        {
            Ok(summary) => snapshot_start_ns(&summary),
            Err(
                crate::snapshot::Error::NoSnapshot { .. }
                | crate::snapshot::Error::SnapshotNotFound { .. },
            ) => None,
            Err(e) => return Err(SweepError::Store(e)),
        };
        let dir = root.join(&volume.namespace).join(&volume.name);
        let newest = tokio::task::spawn_blocking(move || newest_change(&dir))
            .await
            .expect("walk task panicked");
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
        .filter(|(_, f)| f.drain)
        .map(|(o, _)| crate::ledger::NewDrain {
            volume: o.volume.clone(),
            pod: None,
            reason: "sweep".to_owned(),
            max_attempts,
            wait_for_release: false,
            requested_by: None,
            kube: None,
        })
        .collect();
    let drains = if wanted.is_empty() || dry_run {
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
    })
}

/// Why a sweep could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The volume root could not be listed.
    #[error("cannot list volume root {0}: {1}")]
    List(std::path::PathBuf, #[source] std::io::Error),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] crate::snapshot::Error),
    /// The ledger could not be written.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::Error),
    /// The cluster could not be listed (Kubernetes mode).
    #[error("cannot list the cluster: {0}")]
    Cluster(String),
}
