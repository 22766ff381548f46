//! Access to the kube-env control plane (`tests/kube-env`) for integration tests.
//!
//! `scripts/test` (and `.ci/run`) start a real kube-apiserver, controller-manager and scheduler
//! with `scripts/kube-env start` and export its admin kubeconfig as `DRAINER_TEST_KUBECONFIG`.
//! Tests that need a cluster call [`client`]; without the variable they fail, never skip, so a
//! misconfigured run cannot look green.

use std::{
    collections::BTreeMap,
    fmt::Display,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

/// Names the admin kubeconfig of the running kube-env.
pub const KUBECONFIG_ENV: &str = "DRAINER_TEST_KUBECONFIG";

/// Annotation that makes the harness's node simulator end a running pod with this exit code,
/// as a kubelet does when the container exits ("0" → Succeeded, anything else → Failed).
pub const EXIT_CODE_ANNOTATION: &str = "kube-env.drainer.io/exit-code";

/// Annotation (a Go duration such as "5s") that keeps a deleted pod Terminating that long (at
/// most its grace period), like a container that takes time to exit; otherwise it goes at once.
pub const TERMINATION_DELAY_ANNOTATION: &str = "kube-env.drainer.io/termination-delay";

/// The admin kubeconfig of the shared kube-env (`DRAINER_TEST_KUBECONFIG`).
pub fn admin_kubeconfig() -> Result<PathBuf> {
    let path = std::env::var_os(KUBECONFIG_ENV).ok_or_else(|| {
        anyhow!(
            "{KUBECONFIG_ENV} is not set. These tests need the kube-env control plane: run them \
             with `scripts/test`, or start it by hand with `eval \"$(scripts/kube-env start)\"` and \
             `export {KUBECONFIG_ENV}=$KUBECONFIG`"
        )
    })?;
    Ok(PathBuf::from(path))
}

/// Client configuration for the kube-env admin (group `system:masters`).
pub async fn admin_config() -> Result<Config> {
    admin_config_at(&admin_kubeconfig()?).await
}

/// Client configuration of the admin kubeconfig at `path` (of any kube-env instance).
pub async fn admin_config_at(path: &Path) -> Result<Config> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// A client acting as the kube-env admin.
pub async fn client() -> Result<Client> {
    Ok(Client::try_from(admin_config().await?)?)
}

/// A client acting as the admin of the kube-env whose admin kubeconfig is at `path`.
pub async fn client_at(path: &Path) -> Result<Client> {
    Ok(Client::try_from(admin_config_at(path).await?)?)
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

/// A Kubernetes object from a JSON literal (tests write manifests the way they read in YAML).
pub fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object literal must match the API type")
}

/// Waits until claim `name` is Bound and returns the directory that holds its data (the PV's
/// hostPath on this machine).
pub async fn wait_for_bound_claim(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<PathBuf> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    eventually(format!("PVC {ns}/{name} Bound"), timeout, || async {
        let pvc = pvcs.get(name).await?;
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        ensure!(phase.as_deref() == Some("Bound"), "phase is {phase:?}");
        let volume = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .context("no volumeName")?;
        let pv = pvs.get(&volume).await?;
        let path = pv
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .map(|h| PathBuf::from(&h.path));
        let path = path.with_context(|| format!("PV {volume} has no hostPath"))?;
        ensure!(
            path.is_dir(),
            "PV {volume} path {} is not a directory",
            path.display()
        );
        Ok(path)
    })
    .await
}

/// What `scripts/kube-env` knows about the running instance: the `env` file in its data
/// directory (the directory of the admin kubeconfig).
#[derive(Debug, Clone)]
pub struct KubeEnv {
    /// The instance's data directory.
    pub data_dir: PathBuf,
    /// The kube-env binary (for `kube-env image add` and `kube-env kubectl`).
    pub bin: PathBuf,
    /// This machine's address on the pod network: pods reach servers of the tests there.
    pub host_ip: String,
}

impl KubeEnv {
    /// Reads the shared instance's facts; fails without a process pod runtime.
    pub fn load() -> Result<Self> {
        Self::of(&admin_kubeconfig()?)
    }

    /// Reads the facts of the instance whose admin kubeconfig is at `kubeconfig`.
    pub fn of(kubeconfig: &Path) -> Result<Self> {
        let data_dir = kubeconfig
            .parent()
            .context("the kubeconfig has no directory")?
            .to_path_buf();
        let env_file = data_dir.join("env");
        let text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {} (is kube-env running?)", env_file.display()))?;
        let vars: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |k: &str| {
            vars.get(k).cloned().with_context(|| {
                format!(
                    "{} has no {k}: kube-env runs without the process pod runtime \
                     (KUBE_ENV_POD_RUNTIME=simulated?); these tests need pods that run",
                    env_file.display()
                )
            })
        };
        Ok(Self {
            bin: PathBuf::from(get("KUBE_ENV_BIN")?),
            host_ip: get("KUBE_ENV_HOST_IP")?,
            data_dir,
        })
    }

    /// A `kube-env kubectl` command against the instance.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("kubectl")
            .env("KUBECONFIG", self.data_dir.join("kubeconfig"))
            .kill_on_drop(true);
        cmd
    }

    /// Stops `component` (`kube-apiserver`, …), leaves it down for `down` and starts it again
    /// with the same port, certificates and etcd; returns once it is ready again.
    pub async fn restart(&self, component: &str, down: Duration) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["restart", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--down")
            .arg(format!("{}ms", down.as_millis()))
            .arg(component)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(240) + down, cmd.output())
            .await
            .context("kube-env restart did not return within 4 minutes")??;
        ensure!(
            out.status.success(),
            "kube-env restart {component} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Registers an OCI image (layout directory or tar) under `name` with the running instance.
    pub async fn register_image(&self, name: &str, path: &Path) -> Result<()> {
        // NAME=PATH as one argument, whatever bytes the path holds (spaces included).
        let mut spec = std::ffi::OsString::from(format!("{name}="));
        spec.push(path);
        let out = tokio::process::Command::new(&self.bin)
            .args(["image", "add", "--data-dir"])
            .arg(&self.data_dir)
            .arg(spec)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), out)
            .await
            .context("kube-env image add did not finish within 2 minutes")??;
        ensure!(
            out.status.success(),
            "kube-env image add {name}={} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Everything the pod's container wrote to stdout and stderr, every run in order (the
    /// files kube-env keeps under DATA/logs/pods/NS_NAME_UID/CONTAINER/RESTARTS.log).
    pub fn container_log(&self, pod: &Pod, container: &str) -> Result<String> {
        let meta = &pod.metadata;
        let dir = self.data_dir.join("logs/pods").join(format!(
            "{}_{}_{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            meta.uid.as_deref().unwrap_or_default()
        ));
        let dir = dir.join(container);
        let mut runs: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
            .with_context(|| format!("no logs in {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let n = p.file_stem()?.to_str()?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        runs.sort();
        let mut out = String::new();
        for (_, p) in runs {
            out.push_str(&std::fs::read_to_string(&p)?);
        }
        Ok(out)
    }
}

/// The processes on this machine whose environment holds every one of `entries` (`NAME=VALUE`):
/// tests mark the containers they start with unique variables and use this to see that none is
/// left.
pub fn processes_with_env(entries: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Unreadable (gone, or a kernel thread): not ours.
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if entries.iter().all(|e| vars.contains(&e.as_bytes())) {
            found.push(pid);
        }
    }
    found
}

/// The phase of a pod, if it has one yet.
pub fn pod_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the pod has reached one of the `phases` and returns it.
pub async fn wait_for_pod_phase(
    pods: &Api<Pod>,
    name: &str,
    phases: &[&str],
    timeout: Duration,
) -> Result<Pod> {
    eventually(
        format!("pod {name} in phase {phases:?}"),
        timeout,
        || async {
            let pod = pods.get(name).await?;
            ensure!(
                pod_phase(&pod).is_some_and(|p| phases.contains(&p)),
                "phase {:?}, status {:?}",
                pod_phase(&pod),
                pod.status
            );
            Ok(pod)
        },
    )
    .await
}

/// Waits until the pod object is gone.
pub async fn wait_for_pod_gone(pods: &Api<Pod>, name: &str, timeout: Duration) -> Result<()> {
    eventually(format!("pod {name} gone"), timeout, || async {
        ensure!(pods.get_opt(name).await?.is_none(), "still there");
        Ok(())
    })
    .await
}

/// A kube-env instance of a test's own (one node, pods that run), for tests that disturb the
/// control plane itself (restart its API server) and must not disturb the tests that share the
/// instance of `scripts/test`. Stopped, and its data deleted, when dropped.
pub struct PrivateKubeEnv {
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Its facts.
    pub env: KubeEnv,
    child: std::process::Child,
    dir: PathBuf,
}

impl PrivateKubeEnv {
    /// Starts an instance with the shared instance's binary; waits (at most 4 minutes) until it
    /// is ready.
    pub async fn start() -> Result<Self> {
        let bin = KubeEnv::load()?.bin;
        let dir = std::env::temp_dir().join(format!("kube-env.test-{:08x}", rand::random::<u32>()));
        std::fs::create_dir(&dir)?;
        let log = std::fs::File::create(dir.join("kube-env.log"))?;
        let child = std::process::Command::new(&bin)
            .args([
                "run",
                "--nodes",
                "1",
                "--ready-timeout",
                "230s",
                "--data-dir",
            ])
            .arg(&dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a kube-env of the test's own")?;
        let mut private = Self {
            kubeconfig: dir.join("kubeconfig"),
            env: KubeEnv {
                data_dir: dir.clone(),
                bin,
                host_ip: String::new(),
            },
            child,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        while !private.dir.join("ready").exists() {
            let log =
                || std::fs::read_to_string(private.dir.join("kube-env.log")).unwrap_or_default();
            if let Some(status) = private.child.try_wait()? {
                anyhow::bail!("kube-env exited ({status}) before it was ready:\n{}", log());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "kube-env not ready within 4 minutes:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        private.env = KubeEnv::of(&private.kubeconfig)?;
        Ok(private)
    }
}

impl Drop for PrivateKubeEnv {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new(&self.env.bin)
            .args(["cleanup", "--data-dir"])
            .arg(&self.dir)
            .status();
        if std::env::var_os("DRAINER_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
