//! The trivial baseline for `scripts/bench-intake`: `POST /v1/handoffs` parses the same JSON
//! body as `drainer serve` and answers `202 {"ok":true}` without recording anything, so the
//! intake benchmark can show what the HTTP stack alone costs on this machine.
//!
//! ```sh
//! cargo build --release --example hello-axum
//! target/release/examples/hello-axum 127.0.0.1:18080
//! ```

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

/// The body of a handoff, as `drainer serve` reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct HandoffBody {
    namespace: String,
    pvcs: Vec<String>,
    pod: Option<String>,
    reason: Option<String>,
}

async fn handoff(Json(body): Json<HandoffBody>) -> (StatusCode, Json<serde_json::Value>) {
    std::hint::black_box(&body);
    (StatusCode::ACCEPTED, Json(serde_json::json!({"ok": true})))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".to_string());
    let app = Router::new().route("/v1/handoffs", post(handoff));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("hello-axum listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
