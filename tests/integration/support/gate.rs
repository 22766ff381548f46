//! The gate between mover pods and a drainer on this machine: an HTTP proxy listening where
//! pods reach this machine (`KUBE_ENV_HOST_IP`), which logs what it forwards and can hold a
//! mover's request (its final `…/finish`, or any path) so a test can act while a mover is
//! certainly mid-copy.

use super::kube::eventually;
use anyhow::{Result, ensure};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long [`Gate::wait_held`] waits for a mover's request.
const WAIT: Duration = Duration::from_secs(120);

/// A proxy between movers and the drainer, listening where pods reach this machine. It logs
/// what it forwards and can hold the next `…/finish` of a run (the mover's last request), or
/// the next request of any path, until released, then answers it 502 without forwarding it.
pub struct Gate {
    /// `http://HOST_IP:PORT`: the `--service-url` to give drainer.
    pub url: String,
    shared: Arc<GateState>,
    task: tokio::task::JoinHandle<()>,
}

struct GateState {
    upstream: Mutex<String>,
    client: reqwest::Client,
    /// What the next request to hold has in its path.
    hold: Mutex<Option<String>>,
    held: AtomicUsize,
    released: tokio::sync::watch::Sender<bool>,
    log: Mutex<Vec<String>>,
}

impl Gate {
    /// Starts a gate on a free port of `host_ip`; it forwards nowhere until [`Gate::forward_to`].
    pub async fn start(host_ip: &str) -> Result<Self> {
        let shared = Arc::new(GateState {
            upstream: Mutex::new(String::new()),
            client: reqwest::Client::new(),
            hold: Mutex::new(None),
            held: AtomicUsize::new(0),
            released: tokio::sync::watch::channel(false).0,
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind((host_ip, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Forwards to the drainer at `upstream` (its base URL) from now on.
    pub fn forward_to(&self, upstream: &str) {
        *self.shared.upstream.lock().unwrap() = upstream.to_owned();
    }

    /// Holds the next `finish` request.
    pub fn hold_next_finish(&self) {
        self.hold_next("/finish");
    }

    /// Holds the next request whose path contains `fragment`.
    pub fn hold_next(&self, fragment: &str) {
        self.shared.released.send_replace(false);
        *self.shared.hold.lock().unwrap() = Some(fragment.to_owned());
    }

    /// Waits until a request is held.
    pub async fn wait_held(&self) -> Result<()> {
        eventually("a mover's request held at the gate", WAIT, || async {
            ensure!(
                self.shared.held.load(Ordering::SeqCst) > 0,
                "nothing held yet"
            );
            Ok(())
        })
        .await
    }

    /// Answers what is held (502) and passes everything from now on.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// `METHOD PATH?QUERY` of every request forwarded so far (and `HELD METHOD PATH` of each
    /// one held).
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(gate): State<Arc<GateState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let hold = {
        let mut hold = gate.hold.lock().unwrap();
        match hold.as_deref() {
            Some(fragment) if parts.uri.path().contains(fragment) => hold.take(),
            _ => None,
        }
    };
    if hold.is_some() {
        gate.held.fetch_add(1, Ordering::SeqCst);
        gate.log
            .lock()
            .unwrap()
            .push(format!("HELD {} {path}", parts.method));
        let mut released = gate.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
        return status(StatusCode::BAD_GATEWAY, "held by the test, then dropped");
    }
    let Ok(bytes) = axum::body::to_bytes(body, 128 * 1024 * 1024).await else {
        return status(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let upstream = gate.upstream.lock().unwrap().clone();
    let mut outgoing = gate
        .client
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .body(bytes.clone());
    let sent = bytes;
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return status(StatusCode::BAD_GATEWAY, "the drainer is not answering");
    };
    let keys = if parts.uri.path().ends_with("/objects/batch") {
        format!(" {:?}", batch_keys(&sent))
    } else {
        String::new()
    };
    gate.log
        .lock()
        .unwrap()
        .push(format!("{} {path}{keys}", parts.method));
    let code = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    if let Some(value) = content_type {
        response.headers_mut().insert("content-type", value);
    }
    response
}

/// The keys of a batch of objects (`protocol::batch`: key length, key, data length, data).
fn batch_keys(mut body: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    while body.len() >= 4 {
        let key_len = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
        let Some(key) = body.get(4..4 + key_len) else {
            break;
        };
        keys.push(String::from_utf8_lossy(key).into_owned());
        body = &body[4 + key_len..];
        let Some(len) = body.get(..8) else { break };
        let data_len = u64::from_be_bytes(len.try_into().unwrap()) as usize;
        body = body.get(8 + data_len..).unwrap_or_default();
    }
    keys
}

fn status(code: StatusCode, message: &'static str) -> Response {
    let mut response = Response::new(Body::from(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = code;
    response
}
