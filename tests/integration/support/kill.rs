//! Killing a copy mid-file: waits until the ledger records stored parts of one large file of
//! the running copy, then SIGKILLs the process making it, so a test can show the next copy
//! continuing from those parts.

use drainer_core::ledger::{Ledger, RunState};
use drainer_core::snapshot::{PartialUpload, Run};
use drainer_core::volume::VolumeId;
use std::time::{Duration, Instant};

/// Waits (at most a minute) until `copy`'s running run of `volume` has recorded stored parts
/// of the file `path`, then SIGKILLs it; returns the run and its unfinished upload as the
/// ledger had them. `case` names the test's case in failure messages; the copy must not end
/// by itself first.
pub async fn kill_once_parts_stored(
    copy: &mut tokio::process::Child,
    ledger: &Ledger,
    volume: &VolumeId,
    path: &[u8],
    case: &str,
) -> (Run, PartialUpload) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            Instant::now() < deadline,
            "{case}: no part recorded within a minute"
        );
        assert!(
            copy.try_wait().unwrap().is_none(),
            "{case}: the copy finished before it could be killed"
        );
        let Some(record) = ledger
            .runs(volume)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.state == RunState::Running)
        else {
            continue;
        };
        let run = Run {
            id: record.id,
            snapshot: record.snapshot.parse().unwrap(),
            resumed: false,
        };
        if let Some(upload) = ledger.partial_upload(&run, path).await.unwrap()
            && !upload.parts.is_empty()
        {
            copy.start_kill().unwrap();
            copy.wait().await.unwrap();
            return (run, upload);
        }
    }
}
