//! The mover protocol spoken by hand, for tests of its routes: a `drainer serve --movers
//! external` on a store in the S3 test server, a drain handed off and copying, its run begun
//! and a multipart upload created, each step asserting drainer's answer.

use super::s3::S3Server;
use super::serve::Serve;
use reqwest::Method;
use std::path::Path;
use std::time::Duration;

/// `drainer serve --movers external` on `store` in moto, with `extra` flags.
pub async fn serve(server: &S3Server, data: &Path, store: &str, extra: &[&str]) -> Serve {
    std::fs::create_dir_all(data).unwrap();
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "--sweep-interval",
        "0",
        "--movers",
        "external",
        "--store",
        store,
    ];
    args.extend_from_slice(extra);
    Serve::start_with_env(data, &args, &env).await
}

/// Hands off `shop/PVC` and waits until it is copying; its id.
pub async fn copying(serve: &Serve, pvc: &str) -> String {
    let (status, drains) = serve.handoff("shop", &[pvc]).await;
    assert_eq!(status, 202, "{drains:?}");
    let id = drains[0]["id"].as_str().unwrap().to_owned();
    serve
        .wait_state(&id, "copying", Duration::from_secs(30))
        .await;
    id
}

/// `POST …/run` for drain `id`: the snapshot its run writes.
pub async fn begin_run(serve: &Serve, id: &str) -> String {
    let (status, run) = serve
        .call(Method::POST, &format!("/v1/drains/{id}/run"), None)
        .await;
    assert_eq!(status, 200, "{run}");
    run["snapshot"].as_str().unwrap().to_owned()
}

/// `POST …/uploads?key=` for drain `id`: the upload.
pub async fn create_upload(serve: &Serve, id: &str, key: &str) -> String {
    let path = format!("/v1/drains/{id}/uploads?key={key}");
    let (status, created) = serve.call(Method::POST, &path, None).await;
    assert_eq!(status, 200, "{created}");
    created["upload"].as_str().unwrap().to_owned()
}
