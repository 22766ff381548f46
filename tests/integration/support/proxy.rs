//! A round-robin HTTP proxy in front of several `drainer serve` replicas, as a Kubernetes
//! Service spreads a mover's requests: each request goes to the next replica; a replica that
//! is down answers `502` (the client tries again and reaches another). It records every
//! request that succeeded, so a test can say what was sent how often.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy.
pub struct Proxy {
    /// Its base URL.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstreams: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
    /// `METHOD PATH` of every request an upstream answered with a success.
    succeeded: Mutex<Vec<String>>,
}

impl Proxy {
    /// Starts a proxy to `upstreams` on a free loopback port.
    pub async fn start(upstreams: Vec<String>) -> Self {
        let shared = Arc::new(Shared {
            upstreams,
            next: AtomicUsize::new(0),
            client: reqwest::Client::new(),
            succeeded: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, task }
    }

    /// `METHOD PATH` of every request that succeeded, in order.
    pub fn succeeded(&self) -> Vec<String> {
        self.shared.succeeded.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let upstream = &shared.upstreams[n % shared.upstreams.len()];
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut headers = HeaderMap::new();
    for name in ["authorization", "content-type"] {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(name, value.clone());
        }
    }
    let sent = shared
        .client
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = sent else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let code = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let Ok(bytes): Result<Bytes, _> = answer.bytes().await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    if code.is_success() {
        let route = parts.uri.path().to_owned();
        shared
            .succeeded
            .lock()
            .unwrap()
            .push(format!("{} {route}", parts.method));
    }
    let mut response = Response::builder().status(code.as_u16());
    if let Some(content_type) = content_type {
        response = response.header("content-type", content_type);
    }
    response.body(Body::from(bytes)).unwrap()
}

fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}
