//! The one-shot commands (`copy`, `restore`, `snapshots`, `prune`, `verify`): wiring from the
//! parsed configuration to the snapshot engine, and their output.
//!
//! Results go to stdout (a summary line, a table or JSON); logs and progress go to stderr.

use crate::config::{
    CopyArgs, EngineArgs, OutputFormat, PruneArgs, RestoreArgs, SnapshotsArgs, VerifyArgs,
};
use crate::ledger::Ledger;
use crate::snapshot::{self, Listed, Progress, RestoreOptions};
use crate::store::{Store, StoreOptions};
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
