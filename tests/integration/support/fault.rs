//! A fault-injecting HTTP proxy in front of the S3 test server: it fails a share of write
//! requests with 503 or holds them past the client's timeout, and passes the rest through.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the proxy does to write requests (PUT, POST, DELETE); reads always pass.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Share of writes answered 503.
    pub error_ratio: f64,
    /// Share of writes held for `hold` before being forwarded (a timeout for the client).
    pub timeout_ratio: f64,
    /// How long a held request waits.
    pub hold: Duration,
}

struct Proxy {
    upstream: String,
    faults: Faults,
    client: reqwest::Client,
    injected: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    proxy: Arc<Proxy>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let proxy = Arc::new(Proxy {
            upstream: upstream.trim_end_matches('/').to_owned(),
            faults,
            client: reqwest::Client::new(),
            injected: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&proxy));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            endpoint,
            proxy,
            task,
        }
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.proxy.injected.load(Ordering::Relaxed)
    }
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let is_write =
        request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD;
    if is_write {
        let roll: f64 = rand::random();
        if roll < proxy.faults.error_ratio {
            proxy.injected.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>SlowDown</Code></Error>",
            )
                .into_response();
        }
        if roll < proxy.faults.error_ratio + proxy.faults.timeout_ratio {
            proxy.injected.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(proxy.faults.hold).await;
        }
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let url = format!(
        "{}{}",
        proxy.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = proxy.client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(response) => {
            let mut out = Response::builder().status(response.status().as_u16());
            for (name, value) in response.headers() {
                out = out.header(name, value);
            }
            out.body(Body::from(response.bytes().await.unwrap_or_default()))
                .unwrap()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
