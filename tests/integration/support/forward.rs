//! A TCP forwarder that makes a server of this machine that listens on loopback (PostgreSQL,
//! the S3 test server) reachable from kube-env's pods: it listens on this machine's address on
//! the pod network (`KUBE_ENV_HOST_IP`) and relays each connection to the server. A connection
//! the server refuses (it is down) is closed at once, as a client would see it. And a
//! [`Switch`]: a loopback forwarder a test turns off, as a store that is down.

use super::AbortOnDrop;
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running forwarder; stops when dropped (connections in flight end with it).
pub struct Forward {
    /// `HOST_IP:PORT`, the address pods connect to.
    pub address: String,
    upstream: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Forwards a free port of `host_ip` to `upstream` (`HOST:PORT`).
    pub async fn start(host_ip: &str, upstream: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((host_ip, 0)).await?;
        let address = listener.local_addr()?.to_string();
        let upstream = Arc::new(Mutex::new(upstream.to_owned()));
        let to = Arc::clone(&upstream);
        let task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = to.lock().unwrap().clone();
                relays.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while relays.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            address,
            upstream,
            task,
        })
    }

    /// Forwards new connections to `upstream` (`HOST:PORT`) from now on: a server started
    /// after the forwarder, whose address it had to be told (`--service-url`).
    pub fn forward_to(&self, upstream: &str) {
        *self.upstream.lock().unwrap() = upstream.to_owned();
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP forwarder from a loopback port to `upstream` that the test can switch off: while off,
/// every connection is closed at once, as a store that is down.
pub struct Switch {
    /// `http://127.0.0.1:PORT`: the endpoint to give the client instead of `upstream`'s.
    pub endpoint: String,
    up: Arc<AtomicBool>,
    _task: AbortOnDrop,
}

impl Switch {
    /// Starts a switch, on, in front of `upstream` (`http://HOST:PORT` or `HOST:PORT`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let up = Arc::new(AtomicBool::new(true));
        let on = Arc::clone(&up);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !on.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self {
            endpoint,
            up,
            _task: AbortOnDrop(task),
        })
    }

    /// Switches it on (`up`) or off.
    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}
