//! An Azure Blob Storage server on loopback for the tests: Azurite, Microsoft's Azure Storage
//! emulator (Node; an implementation independent of drainer's `object_store`), one per test,
//! installed from npm by `scripts/test` (`DRAINER_TEST_AZURITE` names its `azurite-blob`), with
//! the emulator's well-known account and one container, `bucket`.

use super::gcs::StoreServer;
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

/// A running Azurite; stops when dropped.
pub struct AzuriteServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl AzuriteServer {
    /// Starts Azurite's blob service on a free port with container `bucket`.
    pub async fn start() -> Self {
        let bin = std::env::var("DRAINER_TEST_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run Azurite ({bin}: {e}); scripts/test installs it from npm and sets DRAINER_TEST_AZURITE")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.ok().flatten() {
                if line.contains("successfully listens") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(listening, Ok(true), "Azurite did not start within a minute");
        let endpoint = format!("http://127.0.0.1:{port}");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/integration/support/azure_container.py"
        );
        let created = tokio::process::Command::new("python3")
            .arg(script)
            .args([&endpoint, "bucket"])
            .output()
            .await
            .expect("python3 creates the container");
        assert!(
            created.status.success(),
            "creating container bucket: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        Self {
            endpoint,
            _dir: dir,
            _child: child,
        }
    }
}

impl StoreServer for AzuriteServer {
    fn configure(&self, cmd: &mut tokio::process::Command) {
        cmd.env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &self.endpoint);
    }
}
