//! `drainer handoff`: the client for SIGTERM handlers, preStop hooks and Jobs.
//!
//! It posts one handoff, retrying connection errors and 5xx answers (503 included) with
//! backoff until its deadline; with `--wait` it follows the drains until they end, and its exit
//! code says whether every one completed.

use crate::args::HandoffArgs;
use crate::client::Api;
use anyhow::bail;
use drainer_core::lifecycle::DrainState;
use drainer_core::volume::VolumeId;
use serde::Deserialize;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
struct DrainSeen {
    id: String,
    volume: String,
    state: DrainState,
    last_error: Option<String>,
    snapshot: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DrainList {
    drains: Vec<DrainSeen>,
}

/// Runs `drainer handoff`.
pub async fn run(args: HandoffArgs) -> anyhow::Result<()> {
    let namespace = args.namespace()?;
    for pvc in &args.pvcs {
        VolumeId::new(&namespace, pvc)?;
    }
    let token = args.drainer.token()?;
    let deadline = Instant::now() + args.timeout;
    let roots = args.drainer.trust.roots()?;
    let api = Api::new(&args.drainer.url, token, CALL_TIMEOUT, args.timeout, roots)?;
    let body = serde_json::json!({"namespace": namespace, "pvcs": args.pvcs, "pod": args.pod, "reason": args.reason});
    let url = api.url("/v1/handoffs");
    let accepted: DrainList = api.json(|http| http.post(&url).json(&body)).await?;
    for d in &accepted.drains {
        println!("drain {} of {}: {}", d.id, d.volume, d.state);
    }
    if !args.wait {
        return Ok(());
    }
    let mut failed = Vec::new();
    for drain in &accepted.drains {
        let end = follow(&api, &drain.id, deadline).await?;
        println!(
            "drain {} of {}: {}{}",
            end.id,
            end.volume,
            end.state,
            end.snapshot
                .as_deref()
                .map(|s| format!(" (snapshot {s})"))
                .unwrap_or_default()
        );
        if !matches!(end.state, DrainState::Completed | DrainState::NotNeeded) {
            failed.push(format!(
                "{} {}: {}",
                end.id,
                end.state,
                end.last_error.unwrap_or_default()
            ));
        }
    }
    if !failed.is_empty() {
        bail!("not every drain completed: {}", failed.join("; "));
    }
    Ok(())
}

/// One request's time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls one drain until it ends or the deadline passes.
async fn follow(api: &Api, id: &str, deadline: Instant) -> anyhow::Result<DrainSeen> {
    let url = api.url(&format!("/v1/drains/{id}"));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out waiting for drain {id}");
        }
        let seen: DrainSeen = api.json(|http| http.get(&url)).await?;
        if seen.state.is_final() {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
    }
}
