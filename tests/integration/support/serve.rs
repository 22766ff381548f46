//! A real `drainer serve` process for tests, and a small client of its API.

use super::drainer;
use std::path::Path;
use std::time::{Duration, Instant};

/// The bearer token test services use.
pub const TOKEN: &str = "test-token-0123456789-0123456789-abcdef";

/// A running `drainer serve`.
pub struct Serve {
    /// Base URL, `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub url: String,
    child: tokio::process::Child,
    client: reqwest::Client,
    /// How it was started, to start it again.
    launch: Launch,
}

#[derive(Clone)]
struct Launch {
    data: std::path::PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    /// The CA that signs its certificate, when it serves TLS (PEM).
    ca: Option<String>,
}

impl Launch {
    /// Where the process's log goes: next to its data directory.
    fn log_path(&self) -> std::path::PathBuf {
        self.data.with_extension(format!("{}.log", self.port))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Serve {
    /// Starts `drainer serve` on `data` (local mode) with extra arguments, and waits until ready.
    pub async fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[]).await
    }

    /// Like [`Serve::start`], with extra environment variables.
    pub async fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let launch = Launch {
            data: data.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: free_port(),
            ca: None,
        };
        Self::launch(launch).await
    }

    /// Like [`Serve::start`], serving TLS with `cert` and `key` (PEM files of a certificate
    /// for 127.0.0.1 that `ca` signs); its own client trusts `ca` only.
    pub async fn start_tls(
        data: &Path,
        extra: &[&str],
        pair: (&Path, &Path),
        ca: &super::tls::Ca,
    ) -> Self {
        Self::start_tls_with_env(data, extra, &[], pair, ca).await
    }

    /// Like [`Serve::start_tls`], with extra environment variables.
    pub async fn start_tls_with_env(
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        (cert, key): (&Path, &Path),
        ca: &super::tls::Ca,
    ) -> Self {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend([
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
        ]);
        let launch = Launch {
            data: data.to_owned(),
            extra,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: free_port(),
            ca: Some(ca.pem()),
        };
        Self::launch(launch).await
    }

    async fn launch(launch: Launch) -> Self {
        let (data, extra, port) = (&launch.data, &launch.extra, launch.port);
        let env: Vec<(&str, &str)> = launch
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut cmd = drainer();
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args(extra)
            .env("DRAINER_TOKEN", TOKEN)
            .env("DRAINER_LOG", "info")
            .envs(env.iter().copied())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(launch.log_path())
                    .unwrap(),
            );
        let child = cmd.spawn().expect("drainer serve starts");
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let scheme = match &launch.ca {
            Some(ca) => {
                let roots = reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap();
                client = client.tls_certs_only(roots);
                "https"
            }
            None => "http",
        };
        let serve = Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            child,
            client: client.build().unwrap(),
            launch,
        };
        serve.wait_ready().await;
        serve
    }

    /// Kills the process with SIGKILL, runs `meanwhile`, then starts it again as it was (same
    /// data, arguments and port).
    pub async fn kill9_and_restart(&mut self, meanwhile: impl Future<Output = ()>) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        meanwhile.await;
        let again = Self::launch(self.launch.clone()).await;
        *self = again;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("drainer serve at {} was not ready within 30 s", self.url);
    }

    /// Sends a request with the test token; returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(TOKEN, method, path, body).await
    }

    /// Sends a request with `token`; returns status and JSON body (a body that is not JSON
    /// as a string).
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Hands `ns/pvc` off as the admin and copies `mount` into it with an external mover
    /// (`--movers external`), to completion; the drain's id.
    pub async fn drain_with_mover(&self, ns: &str, pvc: &str, mount: &Path) -> String {
        let (status, drains) = self.handoff(ns, &[pvc]).await;
        assert_eq!(status, 202, "{drains:?}");
        let id = drains[0]["id"].as_str().unwrap().to_owned();
        self.wait_state(&id, "copying", Duration::from_secs(30))
            .await;
        super::cluster::run_mover(self, &id, mount).await;
        self.wait_state(&id, "completed", Duration::from_secs(60))
            .await;
        id
    }

    /// Restores `volume`'s latest snapshot into `dest` through this drainer, as the admin.
    pub async fn restore_as_admin(&self, volume: &str, dest: &Path) {
        super::run_ok(
            super::drainer()
                .args(["restore", "--drainer", &self.url, "--volume", volume])
                .env("DRAINER_TOKEN", TOKEN)
                .arg(dest),
        )
        .await;
    }

    /// Hands off `pvcs` of namespace `ns`; returns status and the drains.
    pub async fn handoff(&self, ns: &str, pvcs: &[&str]) -> (u16, Vec<serde_json::Value>) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/handoffs",
                Some(serde_json::json!({"namespace": ns, "pvcs": pvcs})),
            )
            .await;
        assert!(
            status == 200 || status == 202,
            "handoff answered {status}: {body}"
        );
        (status, body["drains"].as_array().unwrap().clone())
    }

    /// One drain.
    pub async fn drain(&self, id: &str) -> serde_json::Value {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/v1/drains/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Drains listed with a query string (e.g. `state=copying`).
    pub async fn drains(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/drains?{query}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["drains"].as_array().unwrap().clone()
    }

    /// Waits until drain `id` is in `state`; returns it. Fails with the drain as it was.
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let drain = self.drain(id).await;
            if drain["state"] == state {
                return drain;
            }
            assert!(
                Instant::now() < deadline,
                "drain {id} was not {state} within {within:?}: {drain}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every drain in `ids` has ended; returns them.
    pub async fn wait_ended(&self, ids: &[String], within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let mut ended = Vec::new();
            for id in ids {
                let d = self.drain(id).await;
                if [
                    "completed",
                    "failed",
                    "cancelled",
                    "not_needed",
                    "abandoned",
                ]
                .contains(&d["state"].as_str().unwrap())
                {
                    ended.push(d);
                }
            }
            if ended.len() == ids.len() {
                return ended;
            }
            assert!(
                Instant::now() < deadline,
                "drains did not end in time: {} of {} ended",
                ended.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The file the process logs to (every run of it), kept after the process is killed.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.launch.log_path()
    }

    /// The process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process with SIGKILL.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Sends SIGTERM; returns the exit status and how long the process took to exit.
    pub async fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        let started = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exited in time")
            .unwrap();
        (status, started.elapsed())
    }
}

/// The last `lines` lines of the log at `path` (empty if there is none).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
