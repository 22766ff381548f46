//! `kubectl drainer watch [NS/]ID`: follows one drain's `Drain` object (read from the API
//! server every two seconds, no token needed) until the drain ends: on a terminal (stderr) a
//! bar redrawn in place with the state, files and bytes done of their totals (once drainer
//! has counted the source) and the rate ([`super::progress`]), otherwise a line on stdout each
//! time the drain moves; the last line always on stdout.
//! Exit 0 when it completed (or was not needed), 1 when it failed, was cancelled or abandoned
//! (one line with its last error), or when its object cannot be read (at once when the API
//! server refuses, after five failures in a row that may pass).

use super::KubectlArgs;
use super::connect::{self, Cluster};
use super::drains::{Row, resource};
use super::progress::{Bar, Counts};
use drainer_core::args::Usage;
use kube::api::{Api, DynamicObject};
use std::time::Duration;

/// How often the object is read.
const INTERVAL: Duration = Duration::from_secs(2);
/// Reads that may fail in a row before the watch gives up.
const MAX_FAILURES: u32 = 5;

/// How a drain ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Completed, or not needed: the data is safe.
    Well,
    /// Failed, cancelled or abandoned.
    Badly,
}

/// Whether `state` is an end, and which.
pub(crate) fn ended(state: Option<&str>) -> Option<Ended> {
    match state? {
        "completed" | "not_needed" => Some(Ended::Well),
        "failed" | "cancelled" | "abandoned" => Some(Ended::Badly),
        _ => None,
    }
}

/// The line showing where a drain is.
pub(crate) fn line(row: &Row) -> String {
    let state = row.state.as_deref().unwrap_or("requested");
    let mut line = format!(
        "drain {}/{} of {}: {state}",
        row.namespace,
        row.name,
        row.claim.as_deref().unwrap_or("?")
    );
    if let Some(progress) = row.progress.as_deref().filter(|p| !p.is_empty()) {
        line.push_str(&format!(", {progress}"));
    }
    if let Some(snapshot) = row.snapshot.as_deref() {
        line.push_str(&format!(", snapshot {snapshot}"));
    }
    line
}

/// The namespace and id of `[NS/]ID`.
fn drain_of(text: &str, cluster: &Cluster, args: &KubectlArgs) -> Result<(String, String), Usage> {
    let id = super::through::drain_id(text)?.to_owned();
    let namespace = match text.split_once('/') {
        Some((ns, _)) => ns.to_owned(),
        None => args
            .namespace
            .clone()
            .unwrap_or_else(|| cluster.default_namespace.clone()),
    };
    Ok((namespace, id))
}

/// `kubectl drainer watch [NS/]ID`.
pub(crate) async fn run(cluster: &Cluster, args: &KubectlArgs, drain: &str) -> anyhow::Result<()> {
    let (ns, id) = drain_of(drain, cluster, args)?;
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &ns, &resource());
    // The bar goes to stderr, the last line to stdout.
    let bar = Bar::on_terminal(&format!("drain {ns}/{id}"));
    let (mut failures, mut shown) = (0, String::new());
    loop {
        match api.get(&id).await {
            Ok(object) => {
                failures = 0;
                let row = Row::of(&object, chrono::Utc::now().timestamp());
                let now = line(&row);
                show(&bar, &object, &row, &now, &mut shown);
                if let Some(end) = ended(row.state.as_deref()) {
                    return finish(&bar, end, &row, now);
                }
            }
            Err(e) if !connect::is_transient(&e) || failures + 1 >= MAX_FAILURES => {
                return Err(connect::api_error(format!("reading Drain {ns}/{id}"), e));
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, failures, "reading the Drain object failed");
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

fn show(bar: &Bar, object: &DynamicObject, row: &Row, now: &str, shown: &mut String) {
    if bar.drawn() {
        let state = row.state.as_deref().unwrap_or("requested");
        bar.show(Counts::of_drain(object).as_ref(), state);
    } else if now != shown {
        println!("{now}");
    }
    *shown = now.to_owned();
}

fn finish(bar: &Bar, end: Ended, row: &Row, now: String) -> anyhow::Result<()> {
    if bar.drawn() {
        bar.clear();
        println!("{now}");
    }
    match end {
        Ended::Well => Ok(()),
        Ended::Badly => anyhow::bail!(
            "drain {}/{} ended {}: {}",
            row.namespace,
            row.name,
            row.state.as_deref().unwrap_or("?"),
            row.last_error.as_deref().unwrap_or("no error recorded")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_end_well_or_badly() {
        assert_eq!(ended(Some("completed")), Some(Ended::Well));
        assert_eq!(ended(Some("not_needed")), Some(Ended::Well));
        for state in ["failed", "cancelled", "abandoned"] {
            assert_eq!(ended(Some(state)), Some(Ended::Badly), "{state}");
        }
        for state in [
            "requested",
            "awaiting_release",
            "queued",
            "copying",
            "failing",
        ] {
            assert_eq!(ended(Some(state)), None, "{state}");
        }
        assert_eq!(ended(None), None);
    }

    #[test]
    fn a_line_says_where_the_drain_is() {
        let mut row = Row {
            namespace: "shop".into(),
            name: "d-1".into(),
            claim: Some("data-web-2".into()),
            state: Some("copying".into()),
            progress: Some("3 files, 0.6 MiB, 1.2 MiB/s".into()),
            snapshot: None,
            last_error: None,
            age_seconds: Some(3),
        };
        assert_eq!(
            line(&row),
            "drain shop/d-1 of data-web-2: copying, 3 files, 0.6 MiB, 1.2 MiB/s"
        );
        row.state = None;
        row.progress = None;
        row.snapshot = Some("2026-s".into());
        assert_eq!(
            line(&row),
            "drain shop/d-1 of data-web-2: requested, snapshot 2026-s"
        );
    }
}
