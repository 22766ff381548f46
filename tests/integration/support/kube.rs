//! Access to the kube-env control plane (`tests/kube-env`) for integration tests.
//!
//! `scripts/test` (and `.ci/run`) start a real kube-apiserver, controller-manager and scheduler
//! with `scripts/kube-env start` and export its admin kubeconfig as `DRAINER_TEST_KUBECONFIG`.
//! Tests that need a cluster call [`client`]; without the variable they fail, never skip, so a
//! misconfigured run cannot look green.

use std::{fmt::Display, future::Future, time::Duration};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};

/// Names the admin kubeconfig of the running kube-env.
pub const KUBECONFIG_ENV: &str = "DRAINER_TEST_KUBECONFIG";

/// Annotation that makes the harness's node simulator end a running pod with this exit code,
/// as a kubelet does when the container exits ("0" → Succeeded, anything else → Failed).
pub const EXIT_CODE_ANNOTATION: &str = "kube-env.drainer.io/exit-code";

/// Annotation (a Go duration such as "5s") that keeps a deleted pod Terminating that long (at
/// most its grace period), like a container that takes time to exit; otherwise it goes at once.
pub const TERMINATION_DELAY_ANNOTATION: &str = "kube-env.drainer.io/termination-delay";

/// Client configuration for the kube-env admin (group `system:masters`).
pub async fn admin_config() -> Result<Config> {
    let path = std::env::var_os(KUBECONFIG_ENV).ok_or_else(|| {
        anyhow!(
            "{KUBECONFIG_ENV} is not set. These tests need the kube-env control plane: run them \
             with `scripts/test`, or start it by hand with `eval \"$(scripts/kube-env start)\"` and \
             `export {KUBECONFIG_ENV}=$KUBECONFIG`"
        )
    })?;
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {KUBECONFIG_ENV}={}", path.to_string_lossy()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// A client acting as the kube-env admin.
pub async fn client() -> Result<Client> {
    Ok(Client::try_from(admin_config().await?)?)
}

/// A client that authenticates with a bearer token (for example a ServiceAccount token from
/// TokenRequest) instead of the admin certificate, against the same API server.
pub async fn client_with_token(token: &str) -> Result<Client> {
    let mut config = admin_config().await?;
    config.auth_info = AuthInfo {
        token: Some(token.to_owned().into()),
        ..AuthInfo::default()
    };
    Ok(Client::try_from(config)?)
}

/// Creates a namespace with a unique name starting with `prefix`, so tests can run in parallel
/// and re-runs against the same cluster never collide.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// Starts deleting a test namespace (the namespace controller finishes in the background).
pub async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting namespace {name}"))?;
    Ok(())
}

/// Polls `check` every 200 ms until it returns `Ok`, and fails after `timeout` with the last
/// reason it gave. `check` returns `Err` to say "not yet, because ...".
pub async fn eventually<T, F, Fut>(what: impl Display, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if tokio::time::Instant::now() >= deadline => {
                return Err(last.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs one test body with an overall time limit, so a stuck cluster fails the test instead of
/// hanging the suite.
pub async fn with_timeout<T>(limit: Duration, body: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, body)
        .await
        .map_err(|_| anyhow!("test did not finish within {limit:?}"))?
}
