//! Serving the router over TCP, bounded: at most [`Limits::max_connections`] connections at
//! once (one more is closed as soon as it is accepted, so it never waits unseen in the kernel's
//! backlog and its client can retry at once), a request head must arrive within
//! [`Limits::header_timeout`] of the connection becoming idle (which also closes idle
//! keep-alive connections), a request body may pause at most [`Limits::body_timeout`] between
//! two chunks, and a connection's read buffer (so a request head) is at most
//! [`READ_BUFFER`].
//!
//! With TLS ([`super::tls`]), the handshake must end within [`Limits::header_timeout`] of the
//! connection being accepted, so a client that never finishes it frees its slot.
//!
//! HTTP/1.1 only (every client of drainer speaks it; HTTP/2 has no use here and would escape
//! the head timeout). It must not decide anything about requests: that is the router's job.

use super::tls::ServerTls;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// The largest read buffer of a connection: a request head must fit in it.
pub(crate) const READ_BUFFER: usize = 128 * 1024;

/// How often, at most, refused connections are logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What one client can hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed when accepted.
    pub max_connections: usize,
    /// The longest wait for a request head on an idle connection.
    pub header_timeout: Duration,
    /// The longest pause while reading a request body.
    pub body_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` until `stop`, then lets the connections finish
/// the requests under way and returns when they are all closed. With `tls`, every connection
/// is TLS, and its certificate files are watched for changes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<ServerTls>>,
    stop: CancellationToken,
) {
    let acceptor = tls.as_ref().map(|tls| tls.acceptor());
    if let Some(tls) = tls {
        tokio::spawn(tls.watch(super::tls::RELOAD_EVERY, stop.clone()));
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refusals.refused(limits.max_connections);
            drop(tcp);
            continue;
        };
        let (app, stop, acceptor) = (app.clone(), stop.clone(), acceptor.clone());
        connections.spawn(async move {
            accepted_connection(tcp, acceptor, app, limits, stop).await;
            tracing::trace!(%peer, "connection closed");
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves one accepted connection, over TLS when `acceptor` is given: its handshake must end
/// within the header timeout, and before `stop`.
async fn accepted_connection(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    // No Nagle: a response's head and body are separate writes, and a client's delayed ACK
    // would hold the body back 40 ms (every small object a restore reads through the API).
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let Some(acceptor) = acceptor else {
        return serve_connection(tcp, app, limits, stop).await;
    };
    let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        () = stop.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake not finished within the header timeout");
                return;
            }
        },
    };
    serve_connection(stream, app, limits, stop).await;
}

/// Serves one connection until it closes, or until `stop` and the end of its request.
async fn serve_connection<Io>(io: Io, app: Router, limits: Limits, stop: CancellationToken)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let request = request.map(|body| TimeoutBody::new(body_timeout, body));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Waits after a failed accept: at once for an error of that one connection, a second when
/// the process may be out of file descriptors (so the loop does not spin).
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %error, "cannot accept a connection; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Connections closed for lack of a slot, logged at most every [`REFUSAL_LOG_EVERY`].
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn refused(&mut self, max_connections: usize) {
        self.since_log += 1;
        if self
            .logged
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            refused = self.since_log,
            max_connections,
            "connection limit reached: closing new connections"
        );
        self.since_log = 0;
        self.logged = Some(Instant::now());
    }
}
