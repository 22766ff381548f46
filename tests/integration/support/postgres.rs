//! A private PostgreSQL server for tests that stop and restart it (so they never disturb the
//! shared test server): initdb into a temporary directory, run as the `postgres` user.

use std::path::PathBuf;
use std::process::Command;

/// A private PostgreSQL cluster; stopped when dropped.
pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

fn as_postgres(bin: &std::path::Path, args: &[&str]) -> std::process::Output {
    let command = std::iter::once(bin.display().to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", &command])
        .output()
        .expect("su runs")
}

impl PrivatePostgres {
    /// Creates and starts a cluster on a free port.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/test installs it)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .max()
            .expect("a PostgreSQL version");
        let dir = std::env::temp_dir().join(format!("drainer-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        let data = dir.join("data").display().to_string();
        let out = as_postgres(
            &bin.join("initdb"),
            &["-D", &data, "--auth=trust", "-U", "postgres"],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
            bin,
        };
        server.up();
        server
    }

    /// `127.0.0.1:PORT`, where it listens.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server (waiting until it accepts connections).
    pub fn up(&self) {
        let data = self.dir.join("data").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (`-m fast`).
    pub fn down(&self) {
        let data = self.dir.join("data").display().to_string();
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "fast", "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
