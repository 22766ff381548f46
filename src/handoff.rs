//! `drainer handoff`: the client for SIGTERM handlers, preStop hooks and Jobs.
//!
//! It posts one handoff, retrying connection errors and 5xx answers (503 included) with
//! backoff until its deadline; with `--wait` it follows the drains until they end, and its exit
//! code says whether every one completed.

use crate::config::HandoffArgs;
use crate::lifecycle::DrainState;
use crate::retry;
use crate::volume::VolumeId;
use anyhow::bail;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// A failed call to the drainer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("cannot reach the drainer: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the drainer answered {status}: {message}")]
    Status { status: u16, message: String },
}

impl CallError {
    fn is_transient(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => *status >= 500 || *status == 429,
        }
    }
}

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
    for pvc in &args.pvcs {
        VolumeId::new(&args.namespace, pvc)?;
    }
    let token = args.drainer.token()?;
    let deadline = Instant::now() + args.timeout;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = args.drainer.url.trim_end_matches('/');
    let body = serde_json::json!({"namespace": args.namespace, "pvcs": args.pvcs, "pod": args.pod, "reason": args.reason});
    let post = || async {
        let response = client
            .post(format!("{base}/v1/handoffs"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        decode::<DrainList>(response).await
    };
    let accepted = retry::with_retries(
        retry::client_policy(args.timeout),
        CallError::is_transient,
        post,
    )
    .await?;
    for d in &accepted.drains {
        println!("drain {} of {}: {}", d.id, d.volume, d.state);
    }
    if !args.wait {
        return Ok(());
    }
    let mut failed = Vec::new();
    for drain in &accepted.drains {
        let end = follow(&client, base, &token, &drain.id, deadline).await?;
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

/// Polls one drain until it ends or the deadline passes.
async fn follow(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    deadline: Instant,
) -> anyhow::Result<DrainSeen> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out waiting for drain {id}");
        }
        let get = || async {
            let response = client
                .get(format!("{base}/v1/drains/{id}"))
                .bearer_auth(token)
                .send()
                .await?;
            decode::<DrainSeen>(response).await
        };
        let seen =
            retry::with_retries(retry::client_policy(left), CallError::is_transient, get).await?;
        if seen.state.is_final() {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, CallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json::<T>().await?);
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(CallError::Status {
        status: status.as_u16(),
        message,
    })
}
