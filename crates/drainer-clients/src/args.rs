//! The command line of the clients: how a client reaches a drainer ([`ClientArgs`],
//! [`DrainerSource`]) and the flags of `drainer handoff`, `drainer mover` and `drainer install`.

use clap::Args;
use drainer_core::args::{EngineArgs, parse_seconds};
use std::path::PathBuf;
use std::time::Duration;

/// How a client (`handoff`, `mover`) reaches the drainer's API.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The drainer's base URL.
    #[arg(
        long = "drainer",
        env = "DRAINER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// File holding the bearer token.
    #[arg(
        long,
        env = "DRAINER_TOKEN_FILE",
        default_value = DEFAULT_TOKEN_FILE
    )]
    pub token_file: PathBuf,
    /// The bearer token itself (instead of the token file).
    #[arg(long, env = "DRAINER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust for an https drainer URL.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// The certificates a client trusts for an `https://` drainer URL, besides the system's.
#[derive(Debug, Clone, Default, Args)]
pub struct TrustArgs {
    /// PEM bundle of the CA certificates that sign the drainer's certificate (added to the
    /// system's trust roots for an https:// drainer URL).
    #[arg(long, env = "DRAINER_CACERT")]
    pub cacert: Option<PathBuf>,
    /// The same bundle given as text instead of a file (mover Jobs get it this way).
    #[arg(long, env = "DRAINER_CACERT_PEM", hide_env_values = true)]
    pub cacert_pem: Option<String>,
}

impl TrustArgs {
    /// The certificates to trust: those of --cacert and of --cacert-pem; an error names the
    /// flag and what is wrong.
    pub fn roots(&self) -> anyhow::Result<Vec<reqwest::Certificate>> {
        let mut roots = Vec::new();
        if let Some(file) = &self.cacert {
            let pem = std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", file.display()))?;
            roots.extend(
                bundle(&pem)
                    .map_err(|why| anyhow::anyhow!("--cacert {}: {why}", file.display()))?,
            );
        }
        if let Some(pem) = &self.cacert_pem {
            roots.extend(
                bundle(pem.as_bytes())
                    .map_err(|why| anyhow::anyhow!("--cacert-pem (DRAINER_CACERT_PEM): {why}"))?,
            );
        }
        Ok(roots)
    }
}

/// The certificates of a PEM bundle, for the client: at least one, all well formed.
pub fn bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    drainer_core::args::pem_certificates(pem)?
        .iter()
        .map(|der| reqwest::Certificate::from_der(der).map_err(|e| e.to_string()))
        .collect()
}

/// Where a pod's projected token for drainer is mounted by convention (the examples under
/// `deploy/examples` mount it there); used when the default token file does not exist.
pub const POD_TOKEN_FILE: &str = "/var/run/secrets/drainer/token";
/// The namespace of a pod's ServiceAccount, when it mounts its API token.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl ClientArgs {
    /// The token file: `--token-file`, or inside a pod whose default token file does not
    /// exist, its projected token at [`POD_TOKEN_FILE`].
    pub fn token_path(&self) -> PathBuf {
        if self.token_file == std::path::Path::new(DEFAULT_TOKEN_FILE)
            && !self.token_file.exists()
            && std::path::Path::new(POD_TOKEN_FILE).exists()
        {
            PathBuf::from(POD_TOKEN_FILE)
        } else {
            self.token_file.clone()
        }
    }

    /// The bearer token: given directly, or read from [`ClientArgs::token_path`].
    pub fn token(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        let file = self.token_path();
        let token = match &self.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(&file)
                .with_context(|| format!("reading the token file {}", file.display()))?,
        };
        Ok(token.trim().to_owned())
    }
}

/// The default token file of the client commands.
pub const DEFAULT_TOKEN_FILE: &str = "./drainer-data/token";

impl HandoffArgs {
    /// The namespace of the volumes: `--namespace`, or inside a pod its own.
    pub fn namespace(&self) -> anyhow::Result<String> {
        if let Some(namespace) = &self.namespace {
            return Ok(namespace.clone());
        }
        std::fs::read_to_string(POD_NAMESPACE_FILE)
            .map(|ns| ns.trim().to_owned())
            .map_err(|_| {
                anyhow::anyhow!(
                    "--namespace is needed (or DRAINER_NAMESPACE, e.g. from the downward API)"
                )
            })
    }
}

/// `drainer handoff`.
#[derive(Debug, Clone, Args)]
pub struct HandoffArgs {
    /// How to reach the drainer.
    #[command(flatten)]
    pub drainer: ClientArgs,
    /// Namespace of the volumes (inside a pod: its own, by default).
    #[arg(long, env = "DRAINER_NAMESPACE")]
    pub namespace: Option<String>,
    /// PVC to drain (repeat for several). A pod may name none: every claim it mounts.
    #[arg(long = "pvc")]
    pub pvcs: Vec<String>,
    /// The pod handing off (its name).
    #[arg(long, env = "DRAINER_POD")]
    pub pod: Option<String>,
    /// Why (shown in the drain's history).
    #[arg(long, default_value = "handoff")]
    pub reason: String,
    /// Wait until every drain has ended; the exit code says whether all completed.
    #[arg(long)]
    pub wait: bool,
    /// Give up after this many seconds (retries included).
    #[arg(long, env = "DRAINER_HANDOFF_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// `drainer install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// The directory to copy drainer into (created if missing).
    pub dir: PathBuf,
    /// Install the kubectl plugin instead: DIR/kubectl-drainer, a symbolic link to this
    /// drainer (DIR is usually on PATH, e.g. ~/.local/bin), so that `kubectl drainer` runs it.
    #[arg(long)]
    pub kubectl_plugin: bool,
}

/// `drainer mover`.
#[derive(Debug, Clone, Args)]
pub struct MoverArgs {
    /// How to reach the drainer.
    #[command(flatten)]
    pub drainer: ClientArgs,
    /// The drain to stream into.
    #[arg(long, env = "DRAINER_DRAIN")]
    pub drain: String,
    /// The mounted volume.
    #[arg(long, env = "DRAINER_SOURCE")]
    pub source: PathBuf,
    /// Engine tuning.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Reading through a drainer's API instead of a store (`restore`, `snapshots`).
#[derive(Debug, Clone, Args)]
pub struct DrainerSource {
    /// Read through this drainer's API (e.g. `http://drainer.drainer-system.svc:8080`) instead
    /// of a store: the drainer reads its store, and the caller's token decides which volumes
    /// it may read (a pod: the claims it mounts; others: an RBAC grant on
    /// restores.drainer.io).
    #[arg(long = "drainer", env = "DRAINER_URL")]
    pub url: Option<String>,
    /// File holding the bearer token (inside a pod, when the default file is missing, its
    /// projected token at /var/run/secrets/drainer/token).
    #[arg(long, env = "DRAINER_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// The bearer token itself (instead of the token file).
    #[arg(long, env = "DRAINER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust for an https drainer URL.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// With `--drainer`, as the admin or an operator RBAC grants `read-earlier` on the claim's
    /// `snapshots.drainer.io`: read snapshots made in an earlier
    /// namespace of the volume's namespace name too (one deleted and created again, perhaps by
    /// another team). Without it a drainer in Kubernetes mode serves only the snapshots of the
    /// namespace as it is now; with it, each snapshot of an earlier namespace read is recorded
    /// in drainer's ledger (who, when, which snapshot, both namespace UIDs).
    #[arg(long, env = "DRAINER_EARLIER_NAMESPACE")]
    pub earlier_namespace: bool,
}

impl DrainerSource {
    /// How to reach the drainer, when `--drainer` was given.
    pub fn client(&self) -> Option<ClientArgs> {
        self.url.as_ref().map(|url| ClientArgs {
            url: url.clone(),
            token_file: self.token_file.clone(),
            token: self.token.clone(),
            trust: self.trust.clone(),
        })
    }

    /// Refuses `--earlier-namespace` without `--drainer` (a store read directly has no
    /// namespace lives to choose between), in one line.
    pub fn check(&self) -> Result<(), String> {
        if self.earlier_namespace && self.url.is_none() {
            return Err("--earlier-namespace reads through a drainer: give --drainer URL".into());
        }
        Ok(())
    }
}
