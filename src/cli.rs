//! The one-shot commands (`copy`, `restore`, `snapshots`, `prune`, `verify`): wiring from the
//! parsed configuration to the snapshot engine, and their output; and the operator's commands
//! that ask a running drainer (`sweep`, `orphans`) through its API with the admin token.
//!
//! Results go to stdout (a summary line, a table or JSON); logs and progress go to stderr.

use crate::config::{
    ClientArgs, CopyArgs, EngineArgs, OrphansArgs, OutputFormat, PruneArgs, RestoreArgs,
    SnapshotsArgs, SweepArgs, VerifyArgs,
};
use crate::ledger::Ledger;
use crate::snapshot::{self, Listed, Progress, RestoreOptions};
use crate::store::{Store, StoreOptions};
use crate::sweep::{Finding, Orphan, Verdict};
use anyhow::bail;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn open_store(url: &str, engine: &EngineArgs, create: bool) -> anyhow::Result<Store> {
    Ok(Store::open(
        url,
        &StoreOptions {
            timeout: engine.store_timeout,
            create,
            part_size: u64::from(engine.part_size_mib) * 1024 * 1024,
        },
    )?)
}

/// `drainer copy`.
pub async fn copy(args: CopyArgs) -> anyhow::Result<()> {
    snapshot::check_source(&args.source)?;
    let store = open_store(&args.store, &args.engine, true)?;
    let ledger = Ledger::open(args.ledger.database_url.as_deref(), &args.ledger.data_dir).await?;
    let options = args.engine.copy_options(args.check_hash);
    let progress = Arc::new(Progress::default());
    let done = CancellationToken::new();
    let reporter = tokio::spawn(snapshot::progress_report(
        Arc::clone(&progress),
        args.volume.to_string(),
        Duration::from_secs(5),
        done.clone(),
    ));
    let result = snapshot::copy(
        &args.source,
        &store,
        &args.volume,
        &ledger,
        &options,
        progress,
    )
    .await;
    done.cancel();
    let _ = reporter.await;
    match result {
        Ok(summary) => println!("{summary}"),
        Err(snapshot::Error::Incomplete {
            summary,
            unreadable,
        }) => {
            println!("{summary}");
            for (path, reason) in &unreadable {
                eprintln!("drainer: UNREADABLE {path:?}: {reason} (not in the snapshot)");
            }
            return Err(snapshot::Error::Incomplete {
                summary,
                unreadable,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `drainer restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, &args.engine, false)?;
    let started = std::time::Instant::now();
    let options = RestoreOptions {
        concurrency: args.engine.concurrency(),
        force: args.force,
    };
    let summary =
        snapshot::restore(&store, &args.volume, &args.snapshot, &args.dest, &options).await?;
    println!(
        "restored snapshot {} of {} into {}: {} files, {} bytes, {} dirs, {} symlinks, {} skipped, {}{:.2} s",
        summary.snapshot,
        args.volume,
        args.dest.display(),
        summary.files,
        summary.bytes,
        summary.dirs,
        summary.symlinks,
        summary.skipped,
        if summary.unreadable > 0 {
            format!(
                "{} UNREADABLE at copy time (not restored), ",
                summary.unreadable
            )
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `drainer snapshots`.
pub async fn snapshots(args: SnapshotsArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, &args.engine, false)?;
    let volumes = match args.volume {
        Some(volume) => vec![volume],
        None => snapshot::list_volumes(&store).await?,
    };
    let mut all = Vec::new();
    for volume in &volumes {
        all.extend(snapshot::list_snapshots(&store, volume).await?);
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&all)?),
        OutputFormat::Table => {
            println!(
                "{:<28} {:<40} {:>10} {:>14} {:>8}  COMPLETED",
                "SNAPSHOT", "VOLUME", "FILES", "BYTES", "SKIPPED"
            );
            for listed in &all {
                match listed {
                    Listed::Complete(s) => println!(
                        "{:<28} {:<40} {:>10} {:>14} {:>8}  {}",
                        s.snapshot, s.volume, s.files, s.bytes, s.skipped, s.completed
                    ),
                    Listed::Damaged {
                        snapshot,
                        volume,
                        damaged,
                    } => println!(
                        "{snapshot:<28} {volume:<40} {:>10} {:>14} {:>8}  DAMAGED: {}",
                        "-",
                        "-",
                        "-",
                        damaged.replace('\n', " ")
                    ),
                }
            }
        }
    }
    Ok(())
}

/// `drainer prune`.
pub async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, &args.engine, false)?;
    let report = snapshot::prune(&store, &args.volume, args.keep as usize).await?;
    println!(
        "pruned {}: deleted {} snapshots ({} objects), kept {}",
        args.volume,
        report.deleted.len(),
        report.objects_deleted,
        report.kept.len()
    );
    Ok(())
}

/// `drainer verify`.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, &args.engine, false)?;
    let report = snapshot::verify(
        &store,
        &args.volume,
        &args.snapshot,
        args.engine.concurrency(),
    )
    .await?;
    for p in &report.problems {
        println!("PROBLEM {}: {} ({})", p.path, p.problem, p.object);
    }
    for p in &report.unreadable {
        println!("NOT STORED {}: {}", p.path, p.problem);
    }
    println!(
        "verified snapshot {} of {}: {} files, {} bytes, {} problems{}",
        report.snapshot,
        args.volume,
        report.files,
        report.bytes,
        report.problems.len(),
        if report.unreadable.is_empty() {
            String::new()
        } else {
            format!(
                "; INCOMPLETE: {} files were unreadable at copy time and are not in it",
                report.unreadable.len()
            )
        }
    );
    if !report.problems.is_empty() {
        bail!(
            "snapshot {} of {} has {} problems",
            report.snapshot,
            args.volume,
            report.problems.len()
        );
    }
    Ok(())
}

/// One request's time limit for the operator's commands (a sweep lists the whole cluster).
const OPERATOR_CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn operator_api(drainer: &ClientArgs, retry_for: Duration) -> anyhow::Result<crate::client::Api> {
    Ok(crate::client::Api::new(
        &drainer.url,
        drainer.token()?,
        OPERATOR_CALL_TIMEOUT,
        retry_for,
    )?)
}

/// The answer of `POST /v1/sweeps`, as the table needs it.
#[derive(Debug, serde::Deserialize)]
struct SweepAnswer {
    findings: Vec<Finding>,
    drains: Vec<serde_json::Value>,
    seconds: f64,
    dry_run: bool,
    #[serde(default)]
    orphaned: usize,
}

/// `drainer sweep`: one sweep now, through the API.
pub async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let api = operator_api(&args.drainer, args.timeout)?;
    let url = api.url(&format!("/v1/sweeps?dry_run={}", args.dry_run));
    let answer: serde_json::Value = api.json(|http| http.post(&url)).await?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        OutputFormat::Table => {
            let answer: SweepAnswer = serde_json::from_value(answer)?;
            print!("{}", sweep_table(&answer, args.all));
        }
    }
    Ok(())
}

/// The findings of a sweep as a table, and a summary line.
fn sweep_table(answer: &SweepAnswer, all: bool) -> String {
    let mut out = format!("{:<48} {:<10} {:<30} WHY\n", "VOLUME", "VERDICT", "DRAIN");
    let shown = answer
        .findings
        .iter()
        .filter(|f| all || f.verdict != Some(Verdict::Live));
    for f in shown {
        let verdict = f.verdict.map_or("-", Verdict::as_str);
        let drain = match (&f.drain_id, f.drain) {
            (Some(id), true) => format!("{id} (new)"),
            (Some(id), false) => id.clone(),
            (None, true) if answer.dry_run => "(would queue)".to_owned(),
            (None, _) => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<48} {verdict:<10} {drain:<30} {}\n",
            f.volume, f.why
        ));
    }
    let opted_out = answer
        .findings
        .iter()
        .filter(|f| f.verdict == Some(Verdict::OptedOut))
        .count();
    let needing = answer.findings.iter().filter(|f| f.drain).count();
    out.push_str(&format!(
        "sweep{}: {} volumes, {} orphaned ({opted_out} opted out), {needing} needing a drain, {} drains queued, {:.2} s\n",
        if answer.dry_run { " (dry run: nothing queued)" } else { "" },
        answer.findings.len(),
        answer.orphaned,
        answer.drains.len(),
        answer.seconds,
    ));
    out
}

#[derive(Debug, serde::Deserialize)]
struct OrphansAnswer {
    orphans: Vec<Orphan>,
}

/// `drainer orphans`: the volumes left behind, through the API.
pub async fn orphans(args: OrphansArgs) -> anyhow::Result<()> {
    let api = operator_api(&args.drainer, args.timeout)?;
    let url = api.url("/v1/orphans");
    let answer: serde_json::Value = api.json(|http| http.get(&url)).await?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        OutputFormat::Table => {
            let answer: OrphansAnswer = serde_json::from_value(answer)?;
            print!("{}", orphans_table(&answer.orphans));
        }
    }
    Ok(())
}

/// Orphans as a table: what an operator reads before deleting anything.
fn orphans_table(orphans: &[Orphan]) -> String {
    let mut out = format!(
        "{:<48} {:<20} {:>9} {:>8} {:<28} {:<32} VERDICT\n",
        "VOLUME", "STATEFULSET", "SIZE", "AGE", "LAST SNAPSHOT", "DRAIN"
    );
    for o in orphans {
        let size = o
            .size
            .clone()
            .or_else(|| o.size_bytes.map(human_bytes))
            .unwrap_or_else(|| "-".to_owned());
        let age = o.age_seconds.map_or_else(|| "-".to_owned(), human_age);
        let snapshot = o.last_snapshot.as_ref().map_or("-", |s| s.id.as_str());
        let drain = o
            .drain
            .as_ref()
            .map_or_else(|| "-".to_owned(), |d| format!("{} {}", d.id, d.state));
        out.push_str(&format!(
            "{:<48} {:<20} {size:>9} {age:>8} {snapshot:<28} {drain:<32} {}\n",
            o.volume,
            o.statefulset.as_deref().unwrap_or("-"),
            o.verdict.as_str(),
        ));
    }
    let unsaved = orphans.iter().filter(|o| o.last_snapshot.is_none()).count();
    out.push_str(&format!(
        "{} orphaned volumes, {unsaved} without a snapshot\n",
        orphans.len()
    ));
    out
}

/// Bytes for people: `512 B`, `1.5 KiB`, `16.0 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration for people, as `kubectl` writes ages: `45s`, `12m`, `3h10m`, `4d2h`.
fn human_age(seconds: u64) -> String {
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{m}m"),
        s if s < 86_400 => format!("{h}h{}m", m % 60),
        _ => format!("{d}d{}h", h % 24),
    }
}

/// Flattens an error chain into one line, skipping causes already quoted by their parent.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_read_like_kubectl() {
        let ages = [
            (5, "5s"),
            (125, "2m"),
            (3 * 3600 + 600, "3h10m"),
            (4 * 86_400 + 7200, "4d2h"),
        ];
        for (seconds, shown) in ages {
            assert_eq!(human_age(seconds), shown);
        }
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 30), "16.0 GiB");
    }

    #[test]
    fn a_sweep_table_leaves_live_claims_out_unless_asked() {
        let finding = |volume: &str, verdict, drain: bool| Finding {
            verdict: Some(verdict),
            drain_id: drain.then(|| "d-1".to_owned()),
            ..Finding::new(volume, drain, "why")
        };
        let answer = SweepAnswer {
            findings: vec![
                finding("shop/data-web-0", Verdict::Live, false),
                finding("shop/data-web-2", Verdict::Orphaned, true),
                finding("shop/data-web-3", Verdict::OptedOut, false),
            ],
            drains: vec![serde_json::json!({"id": "d-1"})],
            seconds: 0.5,
            dry_run: false,
            orphaned: 2,
        };
        let table = sweep_table(&answer, false);
        assert!(!table.contains("data-web-0"), "{table}");
        assert!(table.contains("d-1 (new)"), "{table}");
        assert!(
            table.ends_with(
                "3 volumes, 2 orphaned (1 opted out), 1 needing a drain, 1 drains queued, 0.50 s\n"
            ),
            "{table}"
        );
        assert!(sweep_table(&answer, true).contains("data-web-0"));
    }
}
