//! Shared test support: awkward trees, exact tree comparison, running the real binary (and its
//! image, for pods), an S3-protocol server, a GCS-protocol server, the test PostgreSQL, and the
//! kube-env fixture (`cluster`, `world`, `gate`) every Kubernetes test builds on.

pub mod azure;
pub mod by_hand;
pub mod cluster;
pub mod fault;
pub mod forward;
pub mod gate;
pub mod gcs;
pub mod image;
pub mod install;
pub mod kill;
pub mod kube;
pub mod manifests;
pub mod postgres;
pub mod proxy;
pub mod s3;
pub mod serve;
pub mod tls;
pub mod tmpfs;
pub mod tree;
pub mod world;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// A spawned task, aborted when this is dropped (a watch, a listener).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `drainer` binary under test: cargo's build of it, or the one `DRAINER_TEST_BIN` names
/// (`scripts/bench-movers` points it at the release build).
pub fn drainer_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("DRAINER_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_drainer").into())
    })
}

/// A `drainer` command with a clean environment for drainer's own settings.
pub fn drainer() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(drainer_bin());
    for (key, _) in std::env::vars() {
        let store_env = ["DRAINER_", "AWS_", "GOOGLE_", "AZURE_", "AZURITE_"];
        if store_env.iter().any(|prefix| key.starts_with(prefix)) {
            cmd.env_remove(key);
        }
    }
    cmd.env("DRAINER_LOG", "warn").kill_on_drop(true);
    cmd
}

/// `drainer copy SRC STORE --volume VOLUME --data-dir DATA`; add further flags to it.
pub fn copy_cmd(src: &Path, store: &str, volume: &str, data: &Path) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.arg("copy")
        .arg(src)
        .arg(store)
        .args(["--volume", volume, "--data-dir"])
        .arg(data);
    cmd
}

/// `drainer restore STORE --volume VOLUME DEST`; add further flags to it.
pub fn restore_cmd(store: &str, volume: &str, dest: &Path) -> tokio::process::Command {
    let mut cmd = drainer();
    cmd.arg("restore")
        .arg(store)
        .args(["--volume", volume])
        .arg(dest);
    cmd
}

/// Runs a command to completion within two minutes.
pub async fn run(cmd: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("command finished in time")
        .expect("command started")
}

/// Runs a command and asserts that it succeeded; returns its stdout.
pub async fn run_ok(cmd: &mut tokio::process::Command) -> String {
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "command failed ({:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail with exit `code` and exactly one error line on stderr (a
/// `drainer: ` line, or for a usage error the `error: ` line of the argument parser); returns
/// that line.
pub async fn fails(cmd: &mut tokio::process::Command, code: i32) -> String {
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stdout: {}; stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("drainer: ") || l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    errors[0].to_owned()
}

/// The `file://` URL of a directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The PostgreSQL server the tests use (an admin URL); `scripts/test` starts one.
pub fn postgres_admin_url() -> String {
    std::env::var("DRAINER_TEST_POSTGRES_URL").expect(
        "DRAINER_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
    )
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    let name = format!("drainer_test_{:016x}", rand::random::<u64>());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin).expect("admin URL parses");
    url.set_path(&name);
    url.to_string()
}
