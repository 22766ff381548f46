//! The one-shot commands (`copy`, `restore`, `snapshots`, `prune`, `verify`): wiring from the
//! parsed configuration to the snapshot engine (reading a store directly, or for `restore`
//! and `snapshots` a drainer's API through [`drainer_clients::remote`]), and their output; and the
//! operator's commands that ask a running drainer (`sweep`, `orphans`) through its API with
//! the admin token.
//!
//! Results go to stdout (a summary line, a table or JSON); logs and progress go to stderr.

use crate::config::{
    ClientArgs, CopyArgs, EncryptionArgs, EngineArgs, OrphansArgs, OutputFormat, PruneArgs,
    RestoreArgs, SnapshotsArgs, Source, SweepArgs, VerifyArgs,
};
use crate::snapshot::{self, Found, Listed, Progress, RestoreOptions};
use anyhow::bail;
use drainer_clients::remote::RemoteVolume;
use drainer_core::ledger::Ledger;
use drainer_core::store::{Store, StoreOptions};
use drainer_server::sweep::{Finding, Orphan, Verdict};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn open_store(
    url: &str,
    engine: &EngineArgs,
    encryption: &EncryptionArgs,
    create: bool,
) -> anyhow::Result<Store> {
    let store = Store::open(
        url,
        &StoreOptions {
            timeout: engine.store_timeout,
            create,
            part_size: u64::from(engine.part_size_mib) * 1024 * 1024,
        },
    )?;
    Ok(encryption.apply(store)?)
}

/// `drainer copy`.
pub async fn copy(args: CopyArgs) -> anyhow::Result<()> {
    snapshot::check_source(&args.source)?;
    let store = open_store(&args.store, &args.engine, &args.encryption, true)?;
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

pub use drainer_core::args::Usage;

/// `drainer restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    args.drainer.check().map_err(Usage)?;
    let (source, dest) = args.source().map_err(Usage)?;
    let started = std::time::Instant::now();
    let found = snapshot::inspect_destination(&dest)?;
    if args.if_empty && in_use(&found, &args.volume) {
        println!(
            "{} {}: not restoring {} (--if-empty)",
            dest.display(),
            found.describe(),
            args.volume
        );
        return Ok(());
    }
    let selector = snapshot::continuing(&dest, &args.volume, &args.selector())?;
    let options = RestoreOptions {
        // Through the API files travel in batches: keep enough in flight to fill them.
        concurrency: match (&source, args.engine.concurrency) {
            (Source::Drainer(_), None) => drainer_clients::remote::RESTORE_CONCURRENCY,
            _ => args.engine.concurrency(),
        },
        force: args.force,
        part_size: u64::from(args.engine.part_size_mib) << 20,
        buffer_bytes: u64::from(args.engine.buffer_mib) << 20,
    };
    let restored = match &source {
        Source::Store(url) => {
            let store = open_store(url, &args.engine, &args.encryption, false)?;
            snapshot::restore(&store, &args.volume, &selector, &dest, &options)
                .await
                .map_err(anyhow::Error::from)
        }
        Source::Drainer(client) => {
            let timeout = args.engine.store_timeout;
            let remote = RemoteVolume::new(client, &args.volume, timeout)?
                .earlier_namespace(args.drainer.earlier_namespace);
            drainer_clients::remote::restore(&remote, &selector, &dest, &options, timeout).await
        }
    };
    let summary = match restored {
        Ok(summary) => summary,
        Err(e) if args.allow_missing && no_snapshot(&e) => {
            println!(
                "volume {} has no snapshot: nothing restored into {} (--allow-missing)",
                args.volume,
                dest.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    println!(
        "{}",
        restored_line(&summary, &args.volume, &dest, started.elapsed())
    );
    Ok(())
}

/// Whether `found` keeps a restore of `volume` with --if-empty out: anything but nothing, or
/// an unfinished restore of the same volume (which is continued).
fn in_use(found: &Found, volume: &crate::VolumeId) -> bool {
    match found {
        Found::Missing | Found::Empty => false,
        Found::Unfinished { marker, .. } => marker.volume != volume.to_string(),
        Found::Occupied { .. } => true,
    }
}

fn no_snapshot(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<snapshot::Error>(),
        Some(snapshot::Error::NoSnapshot { .. })
    )
}

fn restored_line(
    s: &snapshot::RestoreSummary,
    volume: &crate::VolumeId,
    dest: &std::path::Path,
    elapsed: Duration,
) -> String {
    let mut extra = String::new();
    if s.kept > 0 {
        extra.push_str(&format!("{} of them already in place, ", s.kept));
    }
    if s.hard_links > 0 {
        extra.push_str(&format!("{} hard links, ", s.hard_links));
    }
    if s.unreadable > 0 {
        extra.push_str(&format!(
            "{} UNREADABLE at copy time (not restored), ",
            s.unreadable
        ));
    }
    format!(
        "restored snapshot {} of {volume} into {}: {} files, {} bytes, {extra}{} dirs, {} symlinks, {} skipped, {:.2} s{}",
        s.snapshot,
        dest.display(),
        s.files,
        s.bytes,
        s.dirs,
        s.symlinks,
        s.skipped,
        elapsed.as_secs_f64(),
        if s.resumed { ", resumed" } else { "" }
    )
}

/// `drainer snapshots`.
pub async fn snapshots(args: SnapshotsArgs) -> anyhow::Result<()> {
    args.drainer.check().map_err(Usage)?;
    let all = match (args.drainer.client(), &args.store) {
        (Some(client), None) => {
            let volume = args.volume.as_ref().ok_or_else(|| {
                Usage("--volume NS/PVC is needed to list snapshots through a drainer".into())
            })?;
            let remote = RemoteVolume::new(&client, volume, args.engine.store_timeout)?
                .earlier_namespace(args.drainer.earlier_namespace);
            remote.listing().await?.snapshots
        }
        (None, Some(url)) => {
            let store = open_store(url, &args.engine, &args.encryption, false)?;
            let volumes = match &args.volume {
                Some(volume) => vec![volume.clone()],
                None => snapshot::list_volumes(&store).await?,
            };
            let mut all = Vec::new();
            for volume in &volumes {
                all.extend(snapshot::list_snapshots(&store, volume).await?);
            }
            all
        }
        (Some(_), Some(_)) => {
            return Err(Usage(crate::config::store_or_drainer_conflict()).into());
        }
        (None, None) => {
            return Err(Usage("STORE_URL (or --drainer URL) is needed".into()).into());
        }
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&all)?),
        OutputFormat::Table => print_snapshots(&all),
    }
    Ok(())
}

fn print_snapshots(all: &[Listed]) {
    println!(
        "{:<28} {:<40} {:>10} {:>14} {:>8}  {:<32}  MADE BY",
        "SNAPSHOT", "VOLUME", "FILES", "BYTES", "SKIPPED", "COMPLETED"
    );
    for listed in all {
        match listed {
            Listed::Complete(s) => println!(
                "{:<28} {:<40} {:>10} {:>14} {:>8}  {:<32}  {}",
                s.snapshot,
                s.volume,
                s.files,
                s.bytes,
                s.skipped,
                s.completed,
                made_by(s.drain.as_deref())
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

/// The drain that made a snapshot, for the table: `drain ID (pod POD, REASON, requested
/// TIME)`, or `-` for a snapshot made by `drainer copy` (or before drains were recorded).
fn made_by(drain: Option<&snapshot::DrainOrigin>) -> String {
    let Some(d) = drain else {
        return "-".into();
    };
    let pod = d
        .pod
        .as_deref()
        .map(|p| format!("pod {p}, "))
        .unwrap_or_default();
    format!(
        "drain {} ({pod}{}, requested {})",
        d.id,
        d.reason.replace('\n', " "),
        d.requested
    )
}

/// `drainer prune`: applies a retention policy to one volume, or to every volume of the
/// store; with `--plan`, prints each snapshot's fate and why, and deletes nothing.
pub async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let mut policy = args.policy.policy();
    if let Some(keep) = args.keep {
        policy.last = Some(keep);
    }
    if policy.is_empty() {
        return Err(Usage(
            "no retention rule given: use --keep-last N, --keep-within DURATION, --keep-hourly N, \
             --keep-daily N, --keep-weekly N, --keep-monthly N or --keep-yearly N"
                .into(),
        )
        .into());
    }
    let store = open_store(&args.store, &args.engine, &args.encryption, false)?;
    let volumes = match &args.volume {
        Some(volume) => vec![volume.clone()],
        None => snapshot::list_volumes(&store).await?,
    };
    let mut reports = Vec::new();
    for volume in &volumes {
        let report = snapshot::prune_by(&store, volume, &policy, args.plan).await?;
        if args.output == OutputFormat::Table {
            print_prune(volume, &report, args.plan);
        }
        reports.push(serde_json::json!({
            "volume": volume.to_string(),
            "deleted": report.deleted,
            "kept": report.kept,
            "objects_deleted": report.objects_deleted,
            "snapshots": report.plan.snapshots,
        }));
    }
    tracing::debug!(calls = ?store.calls(), "store calls");
    if args.output == OutputFormat::Json {
        let out = serde_json::json!({
            "policy": policy.to_string(),
            "plan": args.plan,
            "volumes": reports,
            "store_calls": store.calls(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// A volume's prune (or plan) as a table and a summary line.
fn print_prune(
    volume: &drainer_core::volume::VolumeId,
    report: &snapshot::PruneReport,
    plan: bool,
) {
    if plan {
        println!("{volume}:");
        for d in &report.plan.snapshots {
            println!(
                "  {:<6} {:<28} {:<24} {}",
                if d.keep { "keep" } else { "delete" },
                d.snapshot,
                d.completed.as_deref().unwrap_or("-"),
                d.reasons.join(", ")
            );
        }
        println!(
            "plan for {volume}: would delete {} snapshots, keep {}",
            report.deleted.len(),
            report.kept.len()
        );
    } else {
        println!(
            "pruned {volume}: deleted {} snapshots ({} objects), kept {}",
            report.deleted.len(),
            report.objects_deleted,
            report.kept.len()
        );
    }
}

/// `drainer verify`.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, &args.engine, &args.encryption, false)?;
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

fn operator_api(
    drainer: &ClientArgs,
    retry_for: Duration,
) -> anyhow::Result<drainer_clients::client::Api> {
    Ok(drainer_clients::client::Api::new(
        &drainer.url,
        drainer.token()?,
        OPERATOR_CALL_TIMEOUT,
        retry_for,
        drainer.trust.roots()?,
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
