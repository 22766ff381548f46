//! Installing `deploy/` on kube-env as a user would (`kubectl apply -k`), shared by the tests
//! that do: the paths of the manifests, kube-env's kubectl, drainer's namespace, drainer's
//! API through its Service, and the examples (`deploy/examples`) in their namespace [`APPS`]:
//! started, their snapshots restored and compared, and everything removed again. The installs
//! serve TLS ([`Tls`]): a CA and a certificate for drainer's Service name made in the test,
//! given to the cluster with the kubectl commands deploy/components/tls and the examples tell
//! a user to run.
//!
//! Every install goes into drainer-system and creates the same cluster-wide objects (the
//! ClusterRoles `drainer*`), so the tests that install run one at a time ([`LOCK`]), whatever
//! their module.

use super::kube::{KubeEnv, eventually, pod_ready, wait_for_bound_claim};
use super::tls::Ca;
use super::{drainer, run_ok, tree};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Mutex;

/// Serialises the tests that install drainer into drainer-system.
pub static LOCK: Mutex<()> = Mutex::const_new(());

/// drainer's namespace (deploy/base).
pub const SYSTEM: &str = "drainer-system";

/// The checkout the tests run from.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The path of `deploy/PATH` in the checkout.
pub fn deploy(path: &str) -> String {
    repo().join("deploy").join(path).display().to_string()
}

/// The image name the base and the examples use.
pub fn release_image() -> String {
    format!("ghcr.io/drainer/drainer:{}", env!("CARGO_PKG_VERSION"))
}

/// Runs a command (two minutes at most); its stdout, or an error with its output.
pub async fn output(cmd: &mut tokio::process::Command, what: &str) -> Result<String> {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.kill_on_drop(true).output())
        .await
        .with_context(|| format!("{what}: no result within 2 minutes"))?
        .with_context(|| format!("{what}: cannot start"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl ARGS` (kube-env's, the same release as its API server).
pub async fn kubectl(env: &KubeEnv, args: &[&str]) -> Result<String> {
    output(
        env.kubectl().args(args),
        &format!("kubectl {}", args.join(" ")),
    )
    .await
}

/// Creates namespace `name` if it does not exist; whether it did.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<bool> {
    let api: Api<Namespace> = Api::all(client.clone());
    wait_namespace_gone_if_terminating(&api, name).await?;
    if api.get_opt(name).await?.is_some() {
        return Ok(false);
    }
    let ns: Namespace = super::kube::from_json(serde_json::json!({
        "metadata": {"name": name}
    }));
    api.create(&PostParams::default(), &ns).await?;
    Ok(true)
}

/// Waits (two minutes at most) until namespace `name` is not being deleted (gone, or live).
pub async fn wait_namespace_gone_if_terminating(api: &Api<Namespace>, name: &str) -> Result<()> {
    eventually(
        format!("namespace {name} not terminating"),
        Duration::from_secs(120),
        || async {
            let ns = api.get_opt(name).await?;
            let terminating = ns.is_some_and(|n| n.metadata.deletion_timestamp.is_some());
            ensure!(!terminating, "still terminating");
            Ok(())
        },
    )
    .await
}

/// The name drainer's certificate is for (its Service in [`SYSTEM`]).
pub const SERVICE_HOST: &str = "drainer.drainer-system.svc";

/// TLS for an install: the test's CA and its certificate, as files (what a user has), given
/// to the cluster as deploy/components/tls says (the Secret drainer-tls and the ConfigMap
/// drainer-ca in drainer's namespace) and as the examples say (a ConfigMap drainer-ca in
/// their namespace).
pub struct Tls {
    /// The CA that signs drainer's certificate.
    pub ca: Ca,
    /// `ca.crt`, `tls.crt`, `tls.key`.
    dir: tempfile::TempDir,
}

impl Tls {
    /// A CA and a certificate for drainer's Service name, in drainer's namespace (created
    /// if need be) and the examples' (which must exist): the Secret and the ConfigMaps.
    pub async fn install(env: &KubeEnv, client: &Client) -> Result<Self> {
        let ca = Ca::new("drainer install test CA");
        let pair = ca.issue(&[SERVICE_HOST, "drainer.drainer-system.svc.cluster.local"]);
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("tls.crt"), &pair.cert)?;
        std::fs::write(dir.path().join("tls.key"), &pair.key)?;
        ca.write(dir.path(), "ca.crt");
        let tls = Self { ca, dir };
        ensure_namespace(client, SYSTEM).await?;
        let file = |name: &str| format!("--from-file={name}={}", tls.file(name));
        kubectl(
            env,
            &[
                "-n",
                SYSTEM,
                "create",
                "secret",
                "generic",
                "drainer-tls",
                &file("tls.crt"),
                &file("tls.key"),
                &file("ca.crt"),
            ],
        )
        .await?;
        for ns in [SYSTEM, APPS] {
            kubectl(
                env,
                &[
                    "-n",
                    ns,
                    "create",
                    "configmap",
                    "drainer-ca",
                    &file("ca.crt"),
                ],
            )
            .await?;
        }
        Ok(tls)
    }

    /// The path of `name` (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// drainer's API through its Service's ClusterIP (this machine reaches ClusterIPs), as an
/// operator with the admin token, about the claims of one namespace: over HTTPS to the
/// Service's name (resolved to the ClusterIP) trusting only the install's CA, or plain HTTP.
pub struct DrainerApi {
    url: String,
    http: reqwest::Client,
    token: String,
    /// The namespace whose drains it asks about.
    apps: String,
}

impl DrainerApi {
    /// The API of the installed drainer, with admin token `token`, about namespace `apps`;
    /// over HTTPS with `tls`'s CA, else plain HTTP.
    pub async fn new(client: &Client, token: &str, apps: &str, tls: Option<&Tls>) -> Result<Self> {
        let services: Api<Service> = Api::namespaced(client.clone(), SYSTEM);
        let service = services.get("drainer").await?;
        let ip: std::net::IpAddr = service
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the drainer Service has no ClusterIP")?
            .parse()?;
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        let (url, builder) = match tls {
            Some(tls) => {
                let roots = reqwest::Certificate::from_pem_bundle(tls.ca.pem().as_bytes())?;
                let builder = builder
                    .tls_certs_only(roots)
                    .resolve(SERVICE_HOST, (ip, 8080).into());
                (format!("https://{SERVICE_HOST}:8080"), builder)
            }
            None => (format!("http://{ip}:8080"), builder),
        };
        Ok(Self {
            url,
            http: builder.build()?,
            token: token.to_owned(),
            apps: apps.to_owned(),
        })
    }

    /// `GET PATH` as JSON; an error unless it succeeded.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Every drain in the namespace (at most 1,000).
    pub async fn drains(&self) -> Result<Vec<Value>> {
        let all = self
            .get(&format!("/v1/drains?namespace={}&limit=1000", self.apps))
            .await?;
        Ok(all["drains"]
            .as_array()
            .context("no drains array")?
            .to_vec())
    }

    /// The drains of claim `pvc`, oldest first.
    pub async fn drains_of(&self, pvc: &str) -> Result<Vec<Value>> {
        let mut drains: Vec<Value> = self
            .drains()
            .await?
            .into_iter()
            .filter(|d| d["pvc"] == pvc)
            .collect();
        drains.sort_by_key(|d| d["created_ms"].as_i64());
        Ok(drains)
    }

    /// Waits until claim `pvc` has a completed drain newer than `after` drains; returns it.
    /// Fails at once on a drain that ended otherwise.
    pub async fn wait_completed(&self, pvc: &str, after: usize, within: Duration) -> Result<Value> {
        eventually(
            format!("a new completed drain of {}/{pvc}", self.apps),
            within,
            || async {
                let drains = self.drains_of(pvc).await?;
                let Some(drain) = drains.get(after) else {
                    bail!("{} drains so far: {drains:?}", drains.len());
                };
                match drain["state"].as_str() {
                    Some("completed") => Ok(drain.clone()),
                    Some("failed" | "cancelled" | "not_needed") => Err(anyhow::anyhow!(
                        "FINAL: drain ended {}: {drain}",
                        drain["state"]
                    )),
                    _ => bail!("drain {drain}"),
                }
            },
        )
        .await
    }
}

/// The namespace the kube-env overlay watches, where the examples go.
pub const APPS: &str = "drainer-e2e";

/// The kube-env overlay's admin token.
pub const ADMIN_TOKEN: &str = "kube-env-admin-token-0123456789abcdef";

/// The image `scripts/image` builds from the binary under test (once per process; the
/// kube-env tests run drainer from the same image).
pub async fn test_image() -> Result<PathBuf> {
    super::image::drainer_image_file().await
}

/// The running drainer pod, once Ready.
pub async fn drainer_pod(client: &Client, env: &KubeEnv) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let selector = ListParams::default().labels("app.kubernetes.io/component=server");
    let found = eventually(
        "the drainer pod Ready",
        Duration::from_secs(180),
        || async {
            let list = pods.list(&selector).await?;
            let ready: Vec<Pod> = list.items.into_iter().filter(pod_ready).collect();
            match ready.as_slice() {
                [pod] => Ok(pod.clone()),
                _ => bail!("{} ready drainer pods", ready.len()),
            }
        },
    )
    .await;
    match found {
        Ok(pod) => Ok(pod),
        Err(e) => {
            let logs = match pods.list(&selector).await?.items.first() {
                Some(pod) => env.container_log(pod, "drainer").unwrap_or_default(),
                None => "no pod".to_owned(),
            };
            Err(e.context(format!("drainer's log:\n{logs}")))
        }
    }
}

/// Waits until pod `name` is Ready and its container `container` said `word`.
pub async fn wait_app(
    client: &Client,
    env: &KubeEnv,
    name: &str,
    container: &str,
    word: &str,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    eventually(
        format!("pod {APPS}/{name} Ready, its {container} saying {word:?}"),
        Duration::from_secs(120),
        || async {
            let pod = pods.get(name).await?;
            ensure!(pod_ready(&pod), "not ready: {:?}", pod.status);
            let log = env.container_log(&pod, container).unwrap_or_default();
            ensure!(log.contains(word), "log so far: {log:?}");
            Ok(())
        },
    )
    .await
}

/// The snapshot of `drain` restored (on this machine, from the store on drainer's claim)
/// equals `dir` exactly.
pub async fn restore_equals(store: &str, drain: &Value, dir: &Path) -> Result<()> {
    let snapshot = drain["snapshot"]
        .as_str()
        .context("a completed drain has a snapshot")?;
    let pvc = drain["pvc"].as_str().context("pvc")?;
    let out = tempfile::tempdir()?;
    let dest = out.path().join("restored");
    run_ok(drainer().args([
        "restore",
        store,
        "--volume",
        &format!("{APPS}/{pvc}"),
        "--snapshot",
        snapshot,
        dest.to_str().context("path")?,
    ]))
    .await;
    let diffs = tree::differences(dir, &dest);
    ensure!(
        diffs.is_empty(),
        "snapshot {snapshot} of {pvc} differs from the claim's data: {diffs:#?}"
    );
    ensure!(
        tree::relative_paths(dir).len() > 2,
        "{pvc} holds the application's data"
    );
    Ok(())
}

/// The directory of claim `pvc` in the examples' namespace.
pub async fn example_claim_dir(client: &Client, pvc: &str) -> Result<PathBuf> {
    wait_for_bound_claim(client, APPS, pvc, Duration::from_secs(120)).await
}

/// Removes what an interrupted run left: the install and the examples' namespace (waiting
/// until both are gone with `wait`; otherwise the next run's clean-up waits).
pub async fn clean_up(env: &KubeEnv, client: &Client, wait: bool) -> Result<()> {
    let wait_flag = format!("--wait={wait}");
    kubectl(
        env,
        &[
            "delete",
            "-k",
            &deploy("overlays/kube-env"),
            "--ignore-not-found",
            &wait_flag,
            "--timeout=180s",
        ],
    )
    .await?;
    kubectl(
        env,
        &[
            "delete",
            "namespace",
            APPS,
            "--ignore-not-found",
            &wait_flag,
            "--timeout=180s",
        ],
    )
    .await?;
    if !wait {
        return Ok(());
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [SYSTEM, APPS] {
        wait_namespace_gone_if_terminating(&namespaces, ns).await?;
    }
    Ok(())
}

/// Applies `examples/prestop-handoff.yaml` into the examples' namespace and waits until its
/// three `web` pods are ready; their claims' directories by ordinal.
pub async fn start_example_web(env: &KubeEnv, client: &Client) -> Result<Vec<PathBuf>> {
    kubectl(
        env,
        &[
            "apply",
            "-n",
            APPS,
            "-f",
            &deploy("examples/prestop-handoff.yaml"),
        ],
    )
    .await?;
    let mut web = Vec::new();
    for i in 0..3 {
        web.push(example_claim_dir(client, &format!("data-web-{i}")).await?);
        wait_app(client, env, &format!("web-{i}"), "app", "ready").await?;
    }
    Ok(web)
}
