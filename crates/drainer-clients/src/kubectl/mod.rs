//! `kubectl drainer`: the operator's view of drainer with the kubeconfig's identity, for the
//! same `drainer` binary installed as `kubectl-drainer` (or run as `drainer kubectl`).
//!
//! What the API server knows is read there ([`drains`]: the `Drain` objects; [`watch`]: one
//! of them followed until its drain ends; [`status`]: drainer's Deployment, pods, sweeper
//! Lease and the drains by state). What only drainer knows
//! ([`through`]: orphans, a volume's snapshots, retry, cancel, readiness; [`restore`]: a
//! snapshot into a local directory) goes to drainer's
//! HTTP API through a port-forward made for the call to a ready drainer pod ([`connect`]), or
//! `--drainer-url`, with a token drainer checks by TokenReview and SubjectAccessReview:
//! `--token`, or the kubeconfig user's bearer token. Never the admin token. A drainer that
//! serves TLS is spoken to in HTTPS, its certificate checked for its Service's name with the
//! CA of `--cacert` or of the ConfigMap `drainer-ca` in its namespace. This module only
//! reads and asks; it changes nothing in the cluster itself (retry and cancel are drainer's
//! to do, and drainer authorises them). Progress ([`progress`]) is a bar on a terminal.
//!
//! Exit codes (see `drainer::exit_code`): 0 done, 1 the API server or drainer refused or could
//! not be reached (one line saying which), 2 bad usage.

mod connect;
mod drains;
mod output;
mod progress;
mod restore;
mod restore_job;
mod status;
mod through;
mod watch;

pub use restore::RestoreCommand;

use clap::{Args, Subcommand, ValueEnum};
use drainer_core::args::parse_positive_seconds;
use std::path::PathBuf;
use std::time::Duration;

/// The file name that makes `drainer` behave as `kubectl drainer`.
pub(crate) const PLUGIN_NAME: &str = "kubectl-drainer";

/// drainer's namespace in `deploy/base`.
pub(crate) const DEFAULT_DRAINER_NAMESPACE: &str = "drainer-system";

/// `kubectl drainer` (`drainer kubectl`): flags shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct KubectlArgs {
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The namespace drainer runs in.
    #[arg(long, env = "DRAINER_KUBECTL_NAMESPACE", default_value = DEFAULT_DRAINER_NAMESPACE, global = true)]
    pub drainer_namespace: String,
    /// The bearer token drainer checks (TokenReview, audience `drainer`), e.g. from `kubectl
    /// create token SA --audience drainer`; default: the kubeconfig user's token. Never the
    /// admin token.
    #[arg(long, env = "DRAINER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Reach drainer at this URL (an Ingress, a ClusterIP) instead of through a port-forward
    /// to one of its pods.
    #[arg(long, env = "DRAINER_KUBECTL_URL", global = true)]
    pub drainer_url: Option<String>,
    /// PEM bundle of the CA that signs drainer's certificate, when drainer serves TLS
    /// (default: the ConfigMap drainer-ca of drainer's namespace, key ca.crt).
    #[arg(long, env = "DRAINER_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value = "30", value_parser = parse_positive_seconds, global = true)]
    pub request_timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: KubectlCommand,
}

/// The subcommands of `kubectl drainer`.
#[derive(Debug, Clone, Subcommand)]
pub enum KubectlCommand {
    /// The Drain objects (from the API server): claim, state, progress, snapshot, age.
    Drains,
    /// drainer's replicas, sweeper, drains by state, the failing ones, and its readiness.
    Status,
    /// The orphaned claims drainer sees (through drainer).
    Orphans,
    /// The claims drainer deleted to give their storage back, and whether their snapshots
    /// are still pinned (through drainer).
    Reclaims,
    /// A volume's snapshots (through drainer).
    Snapshots {
        /// The volume, as NAMESPACE/PVC (or PVC with -n).
        volume: String,
    },
    /// Queue a failing or failed drain again (through drainer).
    Retry {
        /// The drain, as NAMESPACE/ID (or ID).
        drain: String,
    },
    /// Cancel an active drain (through drainer).
    Cancel {
        /// The drain, as NAMESPACE/ID (or ID).
        drain: String,
    },
    /// Follow a drain until it ends (its Drain object; a bar on a terminal). Exit 0 when it
    /// completed, 1 when it failed, was cancelled or abandoned.
    Watch {
        /// The drain, as NAMESPACE/ID (or ID with -n).
        drain: String,
    },
    /// Restore a claim's snapshot (the latest, or --snapshot ID) into a local directory,
    /// read through drainer as the caller (RBAC create on restores.drainer.io).
    Restore(RestoreCommand),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns, as kubectl prints them.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Runs `kubectl drainer`.
pub async fn run(args: KubectlArgs) -> anyhow::Result<()> {
    let cluster = connect::Cluster::open(&args).await?;
    match &args.command {
        KubectlCommand::Drains => drains::run(&cluster, &args).await,
        KubectlCommand::Status => status::run(&cluster, &args).await,
        KubectlCommand::Orphans => through::orphans(&cluster, &args).await,
        KubectlCommand::Reclaims => through::reclaims(&cluster, &args).await,
        KubectlCommand::Snapshots { volume } => through::snapshots(&cluster, &args, volume).await,
        KubectlCommand::Retry { drain } => {
            through::act(&cluster, &args, drain, through::Act::Retry).await
        }
        KubectlCommand::Cancel { drain } => {
            through::act(&cluster, &args, drain, through::Act::Cancel).await
        }
        KubectlCommand::Watch { drain } => watch::run(&cluster, &args, drain).await,
        KubectlCommand::Restore(restore) => restore::run(&cluster, &args, restore).await,
    }
}

/// The arguments to parse: those given, with `kubectl` put after the program's name when it
/// was run as [`PLUGIN_NAME`] (kubectl runs plugins by that name, with the arguments after it).
pub fn plugin_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let as_plugin = args
        .first()
        .and_then(|program| std::path::Path::new(program).file_name())
        .is_some_and(|name| name == PLUGIN_NAME);
    if !as_plugin {
        return args;
    }
    let mut args = args;
    args.insert(1, "kubectl".into());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_name_runs_the_kubectl_subcommand() {
        let cases: [(&[&str], &[&str]); 4] = [
            (
                &["/usr/local/bin/kubectl-drainer", "drains", "-A"],
                &["/usr/local/bin/kubectl-drainer", "kubectl", "drains", "-A"],
            ),
            (&["kubectl-drainer"], &["kubectl-drainer", "kubectl"]),
            (&["/bin/drainer", "serve"], &["/bin/drainer", "serve"]),
            (
                &["/bin/kubectl-drainer-old", "x"],
                &["/bin/kubectl-drainer-old", "x"],
            ),
        ];
        for (given, expected) in cases {
            let given = given.iter().map(Into::into).collect();
            let expected: Vec<std::ffi::OsString> = expected.iter().map(Into::into).collect();
            assert_eq!(plugin_args(given), expected);
        }
    }
}
