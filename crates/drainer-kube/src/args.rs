//! The flags of Kubernetes mode: `drainer serve --kubernetes` (identities, watches, mover
//! Jobs) and `drainer release-guards`.

use clap::{Args, ValueEnum};
use drainer_core::args::parse_seconds;
use std::path::PathBuf;
use std::time::Duration;

/// Kubernetes mode: pods hand off through projected tokens, mover Jobs copy, sweeps list
/// StatefulSets and claims.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Run in Kubernetes mode (in-cluster config, or KUBECONFIG): identities from TokenReview,
    /// drains wait for their pod's release, mover Jobs copy, sweeps find orphaned claims.
    #[arg(long = "kubernetes", env = "DRAINER_KUBERNETES")]
    pub enabled: bool,
    /// Audience that pods' projected ServiceAccount tokens must carry.
    #[arg(long, env = "DRAINER_AUDIENCE", default_value = "drainer")]
    pub audience: String,
    /// Seconds a drain waits for its pod to let go of the volume before a warning is recorded
    /// (it keeps waiting: the claim stays held).
    #[arg(long, env = "DRAINER_RELEASE_TIMEOUT", default_value = "600", value_parser = parse_seconds)]
    pub release_timeout: Duration,
    /// Namespaces to watch and act in (repeat, or comma-separated); all when none is given.
    #[arg(
        long = "watch-namespace",
        env = "DRAINER_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// URL at which movers reach this drainer (its Service), e.g.
    /// `http://drainer.drainer-system.svc:8080`.
    #[arg(long, env = "DRAINER_SERVICE_URL")]
    pub service_url: Option<String>,
    /// The namespace drainer runs in, where its sweeper Lease (`drainer-sweeper`) lives: one
    /// replica runs the scheduled sweeps. Default: the pod's ServiceAccount namespace (or the
    /// kubeconfig context's namespace).
    #[arg(long, env = "DRAINER_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Seconds the Drain object of an ended drain is kept (`kubectl get drains`); the ledger
    /// keeps the drain itself.
    #[arg(long, env = "DRAINER_DRAIN_OBJECTS_TTL", default_value = "604800", value_parser = parse_seconds)]
    pub drain_objects_ttl: Duration,
    /// Give the storage of scaled-away ordinals back: delete the claim of a scaled-away
    /// ordinal this long (`30m`, `7d`) after its drain completed, when no pod mounts it (its
    /// snapshot verified first and pinned against retention; the data comes back through the
    /// restore init container). `off` (the default) or `0`: only StatefulSets annotated
    /// `drainer.io/reclaim-after: DURATION` are reclaimed; that annotation wins either way
    /// (`0` or `off` opts a StatefulSet out).
    #[arg(long, env = "DRAINER_RECLAIM_AFTER", default_value = "off")]
    pub reclaim_after: crate::reclaim::ReclaimAfter,
    /// Mover Jobs.
    #[command(flatten)]
    pub movers: MoverJobArgs,
}

/// How mover Jobs are made.
#[derive(Debug, Clone, Args)]
pub struct MoverJobArgs {
    /// Image of mover Jobs (it must contain `drainer`).
    #[arg(
        long,
        env = "DRAINER_MOVER_IMAGE",
        default_value = "ghcr.io/drainer/drainer:latest"
    )]
    pub mover_image: String,
    /// The program a mover container runs (its `command`; the arguments are drainer's): the
    /// `drainer` binary of the image, found on its PATH. An absolute path runs another copy
    /// (tests run the binary under test this way, on a node's own filesystem).
    #[arg(long, env = "DRAINER_MOVER_COMMAND", default_value = "drainer")]
    pub mover_command: String,
    /// ServiceAccount of mover pods in each claim's namespace (`default` exists everywhere).
    #[arg(long, env = "DRAINER_MOVER_SERVICE_ACCOUNT", default_value = "default")]
    pub mover_service_account: String,
    /// Who movers run as. `auto`: what the claim's namespace allows (its Pod Security level):
    /// privileged, uid 0 with only CAP_DAC_READ_SEARCH; baseline, uid 0 with only
    /// CAP_DAC_OVERRIDE; restricted, the application's own identity from its StatefulSet's pod
    /// template. `app`: the application's identity in every namespace (never a capability).
    /// `nobody`: uid 65534 with no capability everywhere. Files a mover cannot read are named,
    /// and the drain does not complete.
    #[arg(long, env = "DRAINER_MOVER_IDENTITY", value_enum, default_value_t = MoverIdentity::Auto)]
    pub mover_identity: MoverIdentity,
    /// Deprecated: `false` is `--mover-identity nobody`; `true` (the old default) changes
    /// nothing.
    #[arg(long, env = "DRAINER_MOVER_READ_ALL", action = clap::ArgAction::Set)]
    pub mover_read_all: Option<bool>,
    /// The Pod Security level the API server enforces on namespaces without the label
    /// `pod-security.kubernetes.io/enforce` (its PodSecurity admission defaults: privileged
    /// unless the cluster configures otherwise).
    #[arg(long, env = "DRAINER_POD_SECURITY_DEFAULT", value_enum, default_value_t = PodSecurityLevel::Privileged)]
    pub pod_security_default: PodSecurityLevel,
    /// CPU request and limit of a mover (Kubernetes quantities).
    #[arg(long, env = "DRAINER_MOVER_CPU", default_value = "100m,1")]
    pub mover_cpu: String,
    /// Memory request and limit of a mover.
    #[arg(long, env = "DRAINER_MOVER_MEMORY", default_value = "64Mi,256Mi")]
    pub mover_memory: String,
    /// Node selector of movers, `key=value,…` (added to the placement drainer computes).
    #[arg(long, env = "DRAINER_MOVER_NODE_SELECTOR", default_value = "")]
    pub mover_node_selector: String,
    /// Tolerations of movers, as a JSON list of Kubernetes tolerations.
    #[arg(long, env = "DRAINER_MOVER_TOLERATIONS", default_value = "[]")]
    pub mover_tolerations: String,
    /// Seconds a mover Job may run before Kubernetes stops it.
    #[arg(long, env = "DRAINER_MOVER_DEADLINE", default_value = "21600", value_parser = parse_seconds)]
    pub mover_deadline: Duration,
    /// Seconds a failed mover Job is kept (for `kubectl logs`); successful ones are deleted.
    #[arg(long, env = "DRAINER_MOVER_KEEP_FAILED", default_value = "86400", value_parser = parse_seconds)]
    pub mover_keep_failed: Duration,
    /// PEM bundle of the CA certificates movers trust for an https --service-url (e.g. the
    /// ca.crt of drainer's TLS Secret): each mover Job gets it in its environment
    /// (DRAINER_CACERT_PEM), read again for every Job.
    #[arg(long, env = "DRAINER_MOVER_CACERT")]
    pub mover_cacert: Option<PathBuf>,
}

/// Who mover pods run as (see `--mover-identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MoverIdentity {
    /// What the namespace's Pod Security level allows.
    Auto,
    /// The application's identity, from its StatefulSet's pod template.
    App,
    /// uid 65534, no capability.
    Nobody,
}

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum PodSecurityLevel {
    /// Unrestricted.
    Privileged,
    /// No known privilege escalation: uid 0 and the default capabilities are allowed.
    Baseline,
    /// Hardened: non-root, every capability dropped, RuntimeDefault seccomp.
    Restricted,
}

/// `drainer release-guards`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseGuardsArgs {
    /// Only in these namespaces (repeat, or comma-separated); all when none is given.
    #[arg(long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Say what would be let go, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
