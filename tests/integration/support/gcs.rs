//! A Google Cloud Storage server on loopback for the tests: `gcs_server.py` (Python; the parts
//! of GCS's XML API object_store's `gs://` client uses, written from Google's documentation),
//! one per test, with one bucket and a service account key of its own that every request must
//! be signed with.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

/// A running server; stops when dropped.
pub struct GcsServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The service account key file the server trusts.
    pub account: PathBuf,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

/// What the server counts, from its `/_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct GcsStats {
    /// Whole objects uploaded (copies not included).
    pub object_puts: u64,
    /// Parts of multipart uploads uploaded.
    pub part_puts: u64,
    /// Bytes received in both.
    pub bytes_in: u64,
    /// Requests refused for a bad or missing token.
    pub unauthorized: u64,
}

impl GcsServer {
    /// Starts a server with one bucket, `bucket`.
    pub async fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/integration/support/gcs_server.py"
        );
        let dir = tempfile::tempdir().unwrap();
        let account = dir.path().join("service-account.json");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(&account)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the GCS test server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            reader.read_line(&mut line),
        )
        .await
        .expect("the GCS test server started within a minute")
        .expect("read the GCS endpoint");
        assert!(
            line.starts_with("http://"),
            "the GCS test server did not start (it needs Python's cryptography, which scripts/test installs with moto): {line:?}"
        );
        Self {
            endpoint: line.trim().to_owned(),
            account,
            _dir: dir,
            _child: child,
        }
    }

    /// Points a drainer process at this server with the key file `account`.
    pub fn configure_with(&self, cmd: &mut tokio::process::Command, account: &Path) {
        cmd.env("GOOGLE_SERVICE_ACCOUNT", account)
            .env("GOOGLE_BASE_URL", &self.endpoint)
            .env("GOOGLE_ALLOW_HTTP", "true");
    }

    /// The server's counters.
    pub async fn stats(&self) -> GcsStats {
        reqwest::get(format!("{}/_stats", self.endpoint))
            .await
            .expect("GET /_stats")
            .json()
            .await
            .expect("stats are JSON")
    }
}

/// A store server the tests point `drainer` processes at.
pub trait StoreServer {
    /// Sets the environment that points a drainer process at the server.
    fn configure(&self, cmd: &mut tokio::process::Command);
}

impl StoreServer for GcsServer {
    fn configure(&self, cmd: &mut tokio::process::Command) {
        self.configure_with(cmd, &self.account);
    }
}

impl StoreServer for super::s3::S3Server {
    fn configure(&self, cmd: &mut tokio::process::Command) {
        cmd.envs(self.env());
    }
}
