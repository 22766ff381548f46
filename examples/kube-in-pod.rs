//! A small in-cluster Kubernetes client for the kube-env tests (`tests/integration/kube_runtime.rs`):
//! run inside a pod, it finds the API server and its credentials the way every in-cluster client
//! does, with kube's `Client::try_default()` (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted
//! ServiceAccount token, `ca.crt` and `namespace`).
//!
//! ```text
//! kube-in-pod list-pods                    lists the pods of its own namespace; exit 3 if forbidden
//! kube-in-pod token-review FILE AUDIENCE   reviews the token in FILE for AUDIENCE; prints the
//!                                          TokenReview status as one line of JSON
//! ```
//!
//! `cargo test` builds it with the other examples (`target/debug/examples/kube-in-pod`); the
//! tests run it from an image of it, its entrypoint (`tests/integration/support/image.rs`).

use std::process::ExitCode;

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{Api, Client, api::ListParams, api::PostParams};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kube-in-pod: no in-cluster configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["list-pods"] => list_pods(client).await,
        ["token-review", file, audience] => token_review(client, file, audience).await,
        _ => {
            eprintln!("usage: kube-in-pod list-pods | token-review FILE AUDIENCE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) if status.code == 403 => {
                println!("forbidden: {}", status.message);
                ExitCode::from(3)
            }
            _ => {
                eprintln!("kube-in-pod: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

async fn list_pods(client: Client) -> anyhow::Result<()> {
    let namespace = client.default_namespace().to_owned();
    let pods = Api::<Pod>::namespaced(client, &namespace)
        .list(&ListParams::default())
        .await?;
    let mut names: Vec<String> = pods
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    println!("pods in {namespace}: {}", names.join(" "));
    Ok(())
}

async fn token_review(client: Client, file: &str, audience: &str) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(file)?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.trim().to_owned(),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &review)
        .await?;
    println!("{}", serde_json::to_string(&reviewed.status)?);
    Ok(())
}
