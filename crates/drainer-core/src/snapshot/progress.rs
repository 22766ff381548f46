//! Live progress counters of one copy or restore, and their reporting: a progress bar on a
//! terminal, periodic log lines otherwise.
//!
//! The counters are plain atomics so the copy pipeline updates them without locks, and the
//! service can read them for its API while a drain runs.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counters of one run. Totals are filled in by a counting walk that runs alongside the copy.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    /// Regular files done (stored or found unchanged).
    pub files_done: AtomicU64,
    /// Bytes of regular files done.
    pub bytes_done: AtomicU64,
    /// Files whose bytes were uploaded (not reused).
    pub files_uploaded: AtomicU64,
    /// Bytes sent to the store (parts of a continued upload that were stored earlier are not
    /// counted again).
    pub bytes_uploaded: AtomicU64,
    /// Regular files in the source (once `totals_known`).
    pub files_total: AtomicU64,
    /// Bytes in the source (once `totals_known`).
    pub bytes_total: AtomicU64,
    /// Whether the totals have been counted.
    pub totals_known: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_uploaded: AtomicU64::new(0),
            bytes_uploaded: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            totals_known: AtomicBool::new(false),
        }
    }
}

/// A point-in-time reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ProgressView {
    /// Files done.
    pub files_done: u64,
    /// Bytes done.
    pub bytes_done: u64,
    /// Files in total, when known.
    pub files_total: Option<u64>,
    /// Bytes in total, when known.
    pub bytes_total: Option<u64>,
    /// Bytes per second since the start.
    pub bytes_per_second: f64,
    /// Seconds until done at the current rate, when the total is known.
    pub eta_seconds: Option<f64>,
    /// Seconds since the start.
    pub elapsed_seconds: f64,
}

impl Progress {
    /// Marks a file done.
    pub(crate) fn file_done(&self, size: u64, uploaded: bool) {
        self.files_done.fetch_add(1, Relaxed);
        self.bytes_done.fetch_add(size, Relaxed);
        if uploaded {
            self.files_uploaded.fetch_add(1, Relaxed);
        }
    }

    /// Records the source totals.
    pub fn set_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Relaxed);
        self.bytes_total.store(bytes, Relaxed);
        self.totals_known.store(true, Relaxed);
    }

    /// Sets the files and bytes done to what a copy made elsewhere (a mover) has recorded.
    pub fn set_done(&self, files: u64, bytes: u64) {
        self.files_done.store(files, Relaxed);
        self.bytes_done.store(bytes, Relaxed);
    }

    /// Reads the counters.
    pub fn view(&self) -> ProgressView {
        let elapsed = self.started.elapsed().as_secs_f64();
        let bytes_done = self.bytes_done.load(Relaxed);
        let known = self.totals_known.load(Relaxed);
        let bytes_total = known.then(|| self.bytes_total.load(Relaxed));
        let rate = if elapsed > 0.0 {
            bytes_done as f64 / elapsed
        } else {
            0.0
        };
        let eta = bytes_total
            .filter(|_| rate > 0.0)
            .map(|total| total.saturating_sub(bytes_done) as f64 / rate);
        ProgressView {
            files_done: self.files_done.load(Relaxed),
            bytes_done,
            files_total: known.then(|| self.files_total.load(Relaxed)),
            bytes_total,
            bytes_per_second: rate,
            eta_seconds: eta,
            elapsed_seconds: elapsed,
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Reports `progress` until `done` is cancelled: a bar when stderr is a terminal, else a log
/// line every `interval`.
pub async fn report(
    progress: std::sync::Arc<Progress>,
    label: String,
    interval: Duration,
    done: CancellationToken,
) {
    if std::io::stderr().is_terminal() {
        report_bar(&progress, &label, &done).await;
    } else {
        report_lines(&progress, &label, interval, &done).await;
    }
}

async fn report_bar(progress: &Progress, label: &str, done: &CancellationToken) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    loop {
        let view = progress.view();
        bar.set_length(view.bytes_total.unwrap_or(view.bytes_done));
        bar.set_position(view.bytes_done);
        bar.set_message(format!(
            "{}/{} files",
            view.files_done,
            view.files_total.map_or("?".into(), |t| t.to_string())
        ));
        tokio::select! {
            () = done.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    bar.finish_and_clear();
}

async fn report_lines(
    progress: &Progress,
    label: &str,
    interval: Duration,
    done: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let v = progress.view();
        tracing::info!(
            target: "drainer::progress",
            label,
            files_done = v.files_done,
            files_total = v.files_total,
            bytes_done = v.bytes_done,
            bytes_total = v.bytes_total,
            mib_per_second = format!("{:.1}", v.bytes_per_second / 1048576.0),
            eta_seconds = v.eta_seconds.map(|s| s.round()),
            "progress"
        );
    }
}
