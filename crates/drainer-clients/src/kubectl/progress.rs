//! How far a copy or a restore has got, for `kubectl drainer watch` and `restore`: the
//! counts (files and bytes done, of their totals once known, and the rate) read from a
//! `Drain` object's `status.progress` or from a restore's live counters, written as one line
//! of text, and drawn as a bar on stderr when it is a terminal ([`Bar`]).
//!
//! The text is pure (and tested as what a pipe or a log file gets); the bar is indicatif's,
//! made only for a terminal, never mixed with stdout (where `-o json|yaml` documents and the
//! last line go).

use drainer_core::snapshot::ProgressView;
use kube::api::DynamicObject;
use std::io::IsTerminal;
use std::time::Duration;

/// How far a copy or a restore has got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Counts {
    /// Regular files done.
    pub files: u64,
    /// Regular files in all, once known.
    pub files_total: Option<u64>,
    /// Bytes of regular files done.
    pub bytes: u64,
    /// Bytes in all, once known.
    pub bytes_total: Option<u64>,
    /// Bytes per second.
    pub bytes_per_second: f64,
}

impl Counts {
    /// The counts of a live restore (or copy).
    pub(crate) fn of_view(view: &ProgressView) -> Self {
        Self {
            files: view.files_done,
            files_total: view.files_total,
            bytes: view.bytes_done,
            bytes_total: view.bytes_total,
            bytes_per_second: view.bytes_per_second,
        }
    }

    /// The counts in a Drain object's `status.progress` (`files`, `bytes`, `bytesPerSecond`,
    /// and `filesTotal`, `bytesTotal` once drainer knows them), if it has any.
    pub(crate) fn of_drain(object: &DynamicObject) -> Option<Self> {
        let progress = object.data.pointer("/status/progress")?;
        let number = |field: &str| progress.get(field).and_then(serde_json::Value::as_u64);
        Some(Self {
            files: number("files")?,
            files_total: number("filesTotal"),
            bytes: number("bytes")?,
            bytes_total: number("bytesTotal"),
            bytes_per_second: number("bytesPerSecond").unwrap_or(0) as f64,
        })
    }

    /// The share of the bytes done, when their total is known (an empty total is all done).
    pub(crate) fn percent(&self) -> Option<u64> {
        let total = self.bytes_total?;
        Some(match total {
            0 => 100,
            total => (u128::from(self.bytes.min(total)) * 100 / u128::from(total)) as u64,
        })
    }
}

/// The counts as one line: `3 of 10 files, 1.5 MiB of 4.0 MiB (37%), 2.0 MiB/s`, or without
/// the totals while they are unknown: `3 files, 1.5 MiB, 2.0 MiB/s`.
pub(crate) fn text(counts: &Counts) -> String {
    let files = match counts.files_total {
        Some(total) => format!("{} of {total} files", counts.files),
        None => format!("{} files", counts.files),
    };
    let bytes = match (counts.bytes_total, counts.percent()) {
        (Some(total), Some(percent)) => format!(
            "{} of {} ({percent}%)",
            binary_bytes(counts.bytes),
            binary_bytes(total)
        ),
        _ => binary_bytes(counts.bytes),
    };
    let rate = binary_bytes(counts.bytes_per_second.max(0.0) as u64);
    format!("{files}, {bytes}, {rate}/s")
}

/// A size in binary units with one decimal (`512 B`, `1.5 KiB`, `3.0 GiB`).
pub(crate) fn binary_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What a bar says after itself: `message: COUNTS`, `COUNTS` without a message, or
/// `message` without counts.
pub(crate) fn bar_message(counts: Option<&Counts>, message: &str) -> String {
    match counts {
        Some(counts) if message.is_empty() => text(counts),
        Some(counts) => format!("{message}: {}", text(counts)),
        None => message.to_owned(),
    }
}

/// A bar on stderr, drawn only when stderr is a terminal (otherwise nothing: callers print
/// plain lines, or nothing, themselves).
pub(crate) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    /// A bar labelled `label` when stderr is a terminal.
    pub(crate) fn on_terminal(label: &str) -> Self {
        Self(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::no_length();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:20}] {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        }))
    }

    /// Whether a bar is drawn.
    pub(crate) fn drawn(&self) -> bool {
        self.0.is_some()
    }

    /// Shows `message` and `counts` after it (the bar filled by bytes, empty while their
    /// total is unknown).
    pub fn show(&self, counts: Option<&Counts>, message: &str) {
        let Some(bar) = &self.0 else { return };
        bar.set_message(bar_message(counts, message));
        if let Some(counts) = counts {
            // Empty until the total is known (indicatif fills a bar of length 0).
            match counts.bytes_total {
                Some(total) => bar.set_length(total.max(counts.bytes).max(1)),
                None => bar.unset_length(),
            }
            bar.set_position(counts.bytes);
        }
    }

    /// Takes the bar off the terminal.
    pub fn clear(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(files: u64, bytes: u64, totals: Option<(u64, u64)>) -> Counts {
        Counts {
            files,
            files_total: totals.map(|t| t.0),
            bytes,
            bytes_total: totals.map(|t| t.1),
            bytes_per_second: 2.0 * 1048576.0,
        }
    }

    #[test]
    fn counts_read_as_one_line_with_their_totals_once_known() {
        assert_eq!(
            text(&counts(3, 1536 << 10, Some((10, 4 << 20)))),
            "3 of 10 files, 1.5 MiB of 4.0 MiB (37%), 2.0 MiB/s"
        );
        assert_eq!(
            text(&counts(3, 1536 << 10, None)),
            "3 files, 1.5 MiB, 2.0 MiB/s"
        );
        assert_eq!(
            text(&counts(0, 0, Some((0, 0)))),
            "0 of 0 files, 0 B of 0 B (100%), 2.0 MiB/s"
        );
        // More done than counted (a file grew): never past 100%.
        assert_eq!(counts(1, 10, Some((1, 5))).percent(), Some(100));
    }

    #[test]
    fn sizes_are_in_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 << 20, "5.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (u64::MAX, "16384.0 PiB"),
        ];
        for (bytes, shown) in cases {
            assert_eq!(binary_bytes(bytes), shown, "{bytes}");
        }
    }

    #[test]
    fn a_drain_objects_progress_gives_its_counts() {
        let object = |progress: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
                "metadata": {"namespace": "shop", "name": "d-1"},
                "status": {"state": "copying", "progress": progress},
            }))
            .unwrap()
        };
        let counted = object(serde_json::json!({"files": 3, "bytes": 1536 << 10,
            "bytesPerSecond": 2 << 20, "filesTotal": 10, "bytesTotal": 4 << 20,
            "summary": "…"}));
        assert_eq!(
            Counts::of_drain(&counted),
            Some(counts(3, 1536 << 10, Some((10, 4 << 20))))
        );
        let uncounted =
            object(serde_json::json!({"files": 3, "bytes": 1536 << 10, "bytesPerSecond": 2 << 20}));
        assert_eq!(
            Counts::of_drain(&uncounted),
            Some(counts(3, 1536 << 10, None))
        );
        assert_eq!(Counts::of_drain(&object(serde_json::json!({}))), None);
        let none: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
            "metadata": {"name": "d-2"}}))
        .unwrap();
        assert_eq!(Counts::of_drain(&none), None);
    }

    #[test]
    fn off_a_terminal_no_bar_is_drawn() {
        // Tests run with stderr captured, not a terminal.
        if std::io::stderr().is_terminal() {
            return;
        }
        let bar = Bar::on_terminal("restore");
        assert!(!bar.drawn());
        assert_eq!(
            bar_message(Some(&counts(1, 1, None)), "copying"),
            "copying: 1 files, 1 B, 2.0 MiB/s"
        );
        assert_eq!(bar_message(None, "queued"), "queued");
        assert_eq!(
            bar_message(Some(&counts(1, 1, None)), ""),
            "1 files, 1 B, 2.0 MiB/s"
        );
        bar.show(Some(&counts(1, 1, None)), "");
        bar.clear();
    }
}
