//! How `kubectl drainer` reaches the API server (the kubeconfig: `--kubeconfig`, KUBECONFIG,
//! `--context`), which namespaces a command covers (`-n`, `-A`), the token it shows drainer,
//! and drainer itself: a port-forward made for the call to a ready drainer pod, served on a
//! local port for the API client, or `--drainer-url`.
//!
//! A pod that serves TLS (`DRAINER_TLS_CERT` or `--tls-cert`, as deploy/components/tls sets
//! it) is spoken to in HTTPS through the port-forward: the client asks for drainer's Service
//! name (`drainer.NAMESPACE.svc`, the name its certificate carries), reached at the forward's
//! local address, and trusts the CA of `--cacert`, else the one the install publishes in the
//! ConfigMap `drainer-ca` of drainer's namespace (read with the kubeconfig's identity, never
//! with drainer's admin token).
//!
//! Choices (the scope, the token, the pod, its port, whether it serves TLS) are pure
//! functions; the port-forward is a thin task that ends with the command.

use super::KubectlArgs;
use crate::args::{TrustArgs, bundle};
use anyhow::Context;
use drainer_core::args::Usage;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Portforwarder};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The labels of drainer's server pods (`deploy/base`).
pub(crate) const SERVER_LABELS: &str =
    "app.kubernetes.io/name=drainer,app.kubernetes.io/component=server";
/// drainer's port when its pod names none `http`.
const DEFAULT_PORT: u16 = 8080;
/// How long connecting to the API server (or to drainer) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// drainer's Service (`deploy/base`): its name in the namespace is what drainer's certificate
/// is for.
const SERVICE: &str = "drainer";
/// The ConfigMap of drainer's namespace that holds the CA signing drainer's certificate, and
/// its key (`deploy/components/tls`: every authenticated user may read it).
pub(crate) const CA_CONFIGMAP: &str = "drainer-ca";
const CA_KEY: &str = "ca.crt";

/// The API server, as the kubeconfig names it and its user.
pub(crate) struct Cluster {
    /// The client, with the kubeconfig's identity.
    pub client: kube::Client,
    /// The context's namespace.
    pub default_namespace: String,
    auth: AuthInfo,
}

impl Cluster {
    /// The cluster of the kubeconfig (or the pod's own, inside one), calls timing out after
    /// `--request-timeout`.
    pub async fn open(args: &KubectlArgs) -> anyhow::Result<Self> {
        let mut config = load(args).await.context("loading the kubeconfig")?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(args.request_timeout);
        config.write_timeout = Some(args.request_timeout);
        let default_namespace = config.default_namespace.clone();
        let auth = config.auth_info.clone();
        let client = kube::Client::try_from(config).context("making the Kubernetes client")?;
        Ok(Self {
            client,
            default_namespace,
            auth,
        })
    }

    /// The namespaces a listing covers.
    pub fn scope(&self, args: &KubectlArgs) -> Result<Scope, Usage> {
        scope(
            args.all_namespaces,
            args.namespace.as_deref(),
            &self.default_namespace,
        )
    }

    /// The token to show drainer: `--token`, else the kubeconfig user's.
    pub fn token(&self, args: &KubectlArgs) -> anyhow::Result<String> {
        match credential(args.token.as_deref(), &self.auth)? {
            Credential::Token(token) => Ok(token),
            Credential::File(file) => Ok(std::fs::read_to_string(&file)
                .with_context(|| format!("reading the kubeconfig's token file {}", file.display()))?
                .trim()
                .to_owned()),
        }
    }
}

async fn load(args: &KubectlArgs) -> anyhow::Result<kube::Config> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    Ok(match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer().await?,
    })
}

/// The namespaces a command covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every namespace (`-A`).
    All,
    /// One.
    Namespace(String),
}

/// `-A`, `-n NS`, or the context's namespace (as kubectl decides).
pub(crate) fn scope(all: bool, namespace: Option<&str>, default: &str) -> Result<Scope, Usage> {
    match (all, namespace) {
        (true, Some(_)) => Err(Usage("give -n NAMESPACE or -A, not both".into())),
        (true, None) => Ok(Scope::All),
        (false, Some(ns)) => Ok(Scope::Namespace(ns.to_owned())),
        (false, None) => Ok(Scope::Namespace(default.to_owned())),
    }
}

/// Where the token shown to drainer comes from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    /// Given.
    Token(String),
    /// The kubeconfig's `tokenFile`.
    File(PathBuf),
}

/// What to tell a user whose identity drainer cannot check.
const GIVE_TOKEN: &str = "give a token drainer accepts with --token or DRAINER_TOKEN (e.g. \
                          `kubectl create token NAME --audience drainer`)";

/// The token to show drainer: `--token`, else the kubeconfig user's bearer token; a user who
/// signs in otherwise (a client certificate, an exec plugin) is told to give `--token`.
pub(crate) fn credential(flag: Option<&str>, auth: &AuthInfo) -> Result<Credential, Usage> {
    if let Some(token) = flag.filter(|t| !t.trim().is_empty()) {
        return Ok(Credential::Token(token.trim().to_owned()));
    }
    if let Some(token) = &auth.token {
        return Ok(Credential::Token(token.expose_secret().trim().to_owned()));
    }
    if let Some(file) = &auth.token_file {
        return Ok(Credential::File(PathBuf::from(file)));
    }
    let how = if auth.client_certificate.is_some() || auth.client_certificate_data.is_some() {
        "signs in with a client certificate, which drainer cannot check"
    } else if auth.exec.is_some() || auth.auth_provider.is_some() {
        "gets its tokens from an exec plugin or auth provider, for the API server only"
    } else {
        "has no bearer token"
    };
    Err(Usage(format!("the kubeconfig's user {how}: {GIVE_TOKEN}")))
}

/// A failed call to the API server as one line: what was asked, and what the API server said
/// (its message alone, without the client's wrapping), or why it could not be asked.
pub(crate) fn api_error(what: String, error: kube::Error) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) => anyhow::anyhow!(
            "{what}: the API server answered {}: {}",
            status.code,
            status.message.trim()
        ),
        _ => anyhow::Error::new(error).context(what),
    }
}

/// Whether a failed call to the API server may succeed if repeated: it could not be reached,
/// or answered 5xx or 429.
pub(crate) fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// The drainer pod to forward to: a Ready one not being deleted, the first by name.
pub(crate) fn ready_pod(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| is_ready(p))
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
}

/// Whether a pod's Ready condition is true.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// drainer's port in its pod: the container port named `http`, else 8080.
pub(crate) fn http_port(pod: &Pod) -> u16 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_PORT)
}

/// Whether drainer's pod serves TLS: its container is given a certificate
/// (`DRAINER_TLS_CERT`, or `--tls-cert`).
pub(crate) fn serves_tls(pod: &Pod) -> bool {
    let mut containers = pod.spec.iter().flat_map(|s| &s.containers);
    containers.any(|c| {
        let by_env = c.env.iter().flatten().any(|e| {
            e.name == "DRAINER_TLS_CERT" && e.value.as_deref().is_some_and(|v| !v.is_empty())
        });
        let by_arg = c
            .args
            .iter()
            .flatten()
            .any(|a| a == "--tls-cert" || a.starts_with("--tls-cert="));
        by_env || by_arg
    })
}

/// The name drainer's certificate is for: its Service in namespace `ns`.
pub(crate) fn service_host(ns: &str) -> String {
    format!("{SERVICE}.{ns}.svc")
}

/// drainer's API for one command; a port-forward, if one was made, ends with it.
pub(crate) struct Drainer {
    /// drainer's base URL.
    pub url: String,
    /// The CA certificates trusted for an https URL, besides the system's.
    roots: Vec<reqwest::Certificate>,
    /// The URL's host and the address it is reached at instead (the port-forward's local end).
    resolve: Option<(String, SocketAddr)>,
    forward: Option<tokio::task::JoinHandle<()>>,
}

impl Drainer {
    /// A client for drainer's API whose requests time out after `timeout`, trusting the CA
    /// found for drainer and reaching the URL's host where the port-forward listens.
    pub fn http(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .tls_certs_merge(self.roots.clone());
        if let Some((host, address)) = &self.resolve {
            builder = builder.resolve(host, *address);
        }
        builder
            .build()
            .context("making the HTTP client for drainer")
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if let Some(task) = &self.forward {
            task.abort();
        }
    }
}

/// drainer: `--drainer-url`, or a port-forward to a ready drainer pod, checked once before
/// any request goes through it.
pub(crate) async fn drainer(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<Drainer> {
    if let Some(url) = &args.drainer_url {
        return Ok(Drainer {
            url: url.trim_end_matches('/').to_owned(),
            roots: cacert(args)?.unwrap_or_default(),
            resolve: None,
            forward: None,
        });
    }
    let ns = &args.drainer_namespace;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let pod = ready_drainer_pod(cluster, args).await?;
    let (name, port) = (pod.name_any(), http_port(&pod));
    let roots = if serves_tls(&pod) {
        Some(trust(cluster, args, ns).await?)
    } else {
        None
    };
    let first = pods.portforward(&name, &[port]).await.map_err(|e| {
        api_error(
            format!("port-forward to drainer pod {ns}/{name} port {port}"),
            e,
        )
    })?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("listening on a local port for the port-forward")?;
    let local = listener.local_addr()?;
    // drainer's URL with no port: the one of the resolved address, the forward's, is used.
    let (url, resolve) = match &roots {
        Some(_) => {
            let host = service_host(ns);
            (format!("https://{host}"), Some((host, local)))
        }
        None => (format!("http://{local}"), None),
    };
    tracing::debug!(pod = %name, %port, %url, %local, "port-forward to drainer");
    let forward = tokio::spawn(serve_forward(listener, pods, name, port, first));
    Ok(Drainer {
        url,
        roots: roots.unwrap_or_default(),
        resolve,
        forward: Some(forward),
    })
}

/// A ready drainer pod of `--drainer-namespace`.
pub(crate) async fn ready_drainer_pod(
    cluster: &Cluster,
    args: &KubectlArgs,
) -> anyhow::Result<Pod> {
    let ns = &args.drainer_namespace;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(SERVER_LABELS))
        .await
        .map_err(|e| api_error(format!("listing drainer's pods in namespace {ns}"), e))?;
    ready_pod(&list.items).cloned().with_context(|| {
        format!(
            "no ready drainer pod in namespace {ns} (--drainer-namespace; labels {SERVER_LABELS})"
        )
    })
}

/// The CA of `--cacert` (DRAINER_CACERT), if given.
fn cacert(args: &KubectlArgs) -> anyhow::Result<Option<Vec<reqwest::Certificate>>> {
    let Some(file) = &args.cacert else {
        return Ok(None);
    };
    let trust = TrustArgs {
        cacert: Some(file.clone()),
        cacert_pem: None,
    };
    Ok(Some(trust.roots()?))
}

/// The CA that signs the certificate of drainer in namespace `ns`: `--cacert`, else the
/// ConfigMap [`CA_CONFIGMAP`] there, read with the kubeconfig's identity.
async fn trust(
    cluster: &Cluster,
    args: &KubectlArgs,
    ns: &str,
) -> anyhow::Result<Vec<reqwest::Certificate>> {
    if let Some(roots) = cacert(args)? {
        return Ok(roots);
    }
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
    let map = maps.get(CA_CONFIGMAP).await.map_err(|e| {
        api_error(
            format!(
                "drainer in namespace {ns} serves TLS; reading its CA from ConfigMap \
                 {ns}/{CA_CONFIGMAP} (or give it with --cacert)"
            ),
            e,
        )
    })?;
    let pem = map
        .data
        .as_ref()
        .and_then(|d| d.get(CA_KEY))
        .with_context(|| {
            format!(
                "ConfigMap {ns}/{CA_CONFIGMAP} has no {CA_KEY}: give drainer's CA with --cacert"
            )
        })?;
    bundle(pem.as_bytes())
        .map_err(|why| anyhow::anyhow!("ConfigMap {ns}/{CA_CONFIGMAP}, {CA_KEY}: {why}"))
}

/// Accepts local connections, each through a port-forward of its own (the first one through
/// the port-forward made to check the pod).
async fn serve_forward(
    listener: TcpListener,
    pods: Api<Pod>,
    name: String,
    port: u16,
    first: Portforwarder,
) {
    let mut first = Some(first);
    while let Ok((tcp, _)) = listener.accept().await {
        let forwarder = match first.take() {
            Some(forwarder) => forwarder,
            None => match pods.portforward(&name, &[port]).await {
                Ok(forwarder) => forwarder,
                Err(error) => {
                    tracing::warn!(pod = %name, %error, "port-forward to drainer failed");
                    continue;
                }
            },
        };
        tokio::spawn(pipe(tcp, forwarder, port));
    }
}

async fn pipe(mut tcp: TcpStream, mut forwarder: Portforwarder, port: u16) {
    if let Some(mut upstream) = forwarder.take_stream(port)
        && let Err(error) = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await
    {
        tracing::debug!(%error, "port-forwarded connection ended");
    }
    forwarder.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_refusals_are_one_line_with_its_message() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "drains.drainer.io is forbidden: User \"bob\" cannot list resource \"drains\"\n"
        }))
        .unwrap();
        let error = api_error(
            "listing Drain objects".into(),
            kube::Error::Api(Box::new(status)),
        );
        assert_eq!(
            error.to_string(),
            "listing Drain objects: the API server answered 403: drains.drainer.io is forbidden: \
             User \"bob\" cannot list resource \"drains\""
        );
    }

    #[test]
    fn the_scope_is_all_one_or_the_contexts_namespace() {
        assert_eq!(scope(true, None, "def").unwrap(), Scope::All);
        assert_eq!(
            scope(false, Some("shop"), "def").unwrap(),
            Scope::Namespace("shop".into())
        );
        assert_eq!(
            scope(false, None, "def").unwrap(),
            Scope::Namespace("def".into())
        );
        assert!(scope(true, Some("shop"), "def").is_err());
    }

    fn auth(json: serde_json::Value) -> AuthInfo {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_token_is_the_flags_else_the_kubeconfig_users() {
        let with_token = auth(serde_json::json!({"token": "kube-token"}));
        let cert = auth(
            serde_json::json!({"client-certificate-data": "Y2VydA==", "client-key-data": "a2V5"}),
        );
        let exec = auth(
            serde_json::json!({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}),
        );
        let file = auth(serde_json::json!({"tokenFile": "/var/t"}));
        let token = |t: &str| Ok(Credential::Token(t.into()));
        assert_eq!(
            credential(Some("given"), &cert).map_err(|e| e.0),
            token("given")
        );
        assert_eq!(
            credential(Some("given"), &with_token).map_err(|e| e.0),
            token("given")
        );
        assert_eq!(
            credential(None, &with_token).map_err(|e| e.0),
            token("kube-token")
        );
        assert_eq!(
            credential(Some(" "), &with_token).map_err(|e| e.0),
            token("kube-token")
        );
        assert_eq!(
            credential(None, &file).map_err(|e| e.0),
            Ok(Credential::File("/var/t".into()))
        );
        for (who, why) in [
            (&cert, "client certificate"),
            (&exec, "exec plugin"),
            (&AuthInfo::default(), "no bearer token"),
        ] {
            let message = credential(None, who).unwrap_err().0;
            assert!(
                message.contains(why) && message.contains("--token"),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
    }

    fn pod(name: &str, ready: bool, deleting: bool, port: Option<(&str, i32)>) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "drainer", "ports":
                port.map(|(n, p)| vec![serde_json::json!({"name": n, "containerPort": p})]).unwrap_or_default()}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap();
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        pod
    }

    #[test]
    fn the_pod_is_a_ready_one_not_leaving_first_by_name() {
        let pods = [
            pod("drainer-c", true, false, None),
            pod("drainer-a", false, false, None),
            pod("drainer-b", true, true, None),
            pod("drainer-d", true, false, None),
        ];
        assert_eq!(
            ready_pod(&pods).map(ResourceExt::name_any).as_deref(),
            Some("drainer-c")
        );
        assert!(ready_pod(&pods[1..3]).is_none());
    }

    #[test]
    fn a_pod_serves_tls_when_its_container_is_given_a_certificate() {
        let with = |container: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "drainer-a"},
                "spec": {"containers": [{"name": "sidecar"}, container]}
            }))
            .unwrap()
        };
        let env = |name: &str, value: &str| serde_json::json!({"name": "drainer", "env": [{"name": name, "value": value}]});
        assert!(serves_tls(&with(env(
            "DRAINER_TLS_CERT",
            "/etc/drainer/tls/tls.crt"
        ))));
        assert!(serves_tls(&with(
            serde_json::json!({"name": "drainer", "args": ["serve", "--tls-cert=/t/c"]})
        )));
        assert!(serves_tls(&with(
            serde_json::json!({"name": "drainer", "args": ["serve", "--tls-cert", "/t/c"]})
        )));
        assert!(!serves_tls(&with(env("DRAINER_TLS_CERT", ""))));
        assert!(!serves_tls(&with(env("DRAINER_MOVER_CACERT", "/ca.crt"))));
        assert!(!serves_tls(&pod("p", true, false, None)));
        assert_eq!(service_host("drainer-system"), "drainer.drainer-system.svc");
    }

    #[test]
    fn the_port_is_the_one_named_http() {
        assert_eq!(
            http_port(&pod("p", true, false, Some(("http", 9090)))),
            9090
        );
        assert_eq!(
            http_port(&pod("p", true, false, Some(("metrics", 9090)))),
            8080
        );
        assert_eq!(http_port(&pod("p", true, false, None)), 8080);
    }
}
