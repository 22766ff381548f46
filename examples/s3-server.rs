//! A tiny S3-protocol server for benchmarks and manual tests: serves a directory with `s3s-fs`.
//!
//! ```text
//! cargo run --release --example s3-server -- ROOT_DIR [PORT] [ACCESS_KEY] [SECRET_KEY]
//! ```
//!
//! Each bucket is a subdirectory of ROOT_DIR (create it before use). PORT 0 (the default) picks a
//! free port. Keys default to `minioadmin` / `minioadmin`. The first stdout line is
//! `listening on http://127.0.0.1:PORT`; the server runs until killed.

use std::io::Write;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .ok_or("usage: s3-server ROOT_DIR [PORT] [ACCESS_KEY] [SECRET_KEY]")?;
    let port: u16 = args.next().as_deref().unwrap_or("0").parse()?;
    let key = args.next().unwrap_or_else(|| "minioadmin".to_owned());
    let secret = args.next().unwrap_or_else(|| "minioadmin".to_owned());

    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| format!("cannot serve {root}: {e:?}"))?;
    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(key, secret));
        b.build()
    };

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }

    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let conn = http
            .serve_connection(TokioIo::new(sock), service.clone())
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("connection: {e}");
            }
        });
    }
}
