//! The one fixture of the kube-env tests: a namespace of the test's own (made, and deleted by
//! [`TestNamespace::finish`]) with a scratch directory; a `drainer serve --kubernetes` whose
//! arguments are built in one place ([`KubeDrainer`]); the StatefulSet `web` the tests scale
//! ([`WebSet`]) and [`scale`]; and the check every drain ends with, that its snapshot restores
//! exactly ([`assert_restores_exactly`]).

use super::kube::{
    KUBECONFIG_ENV, KubeEnv, client_at, create_namespace, delete_namespace, eventually, from_json,
};
use super::serve::Serve;
use super::{drainer, file_url, run_ok, tls::Ca, tree::differences};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A namespace of a test's own, named `PREFIX-XXXXXXXX`, and a scratch directory for the
/// drainer's data, its store and copies to compare with (kept when `DRAINER_TEST_KEEP` is set,
/// for a look after a failure).
pub struct TestNamespace {
    /// A client acting as the kube-env admin.
    pub client: Client,
    /// The namespace's name.
    pub ns: String,
    /// The scratch directory.
    pub work: PathBuf,
    /// The admin kubeconfig of the kube-env instance the namespace lives in.
    pub kubeconfig: PathBuf,
    _work: Option<tempfile::TempDir>,
}

impl TestNamespace {
    /// A namespace in the shared kube-env.
    pub async fn new(prefix: &str) -> Result<Self> {
        Self::on(prefix, &super::kube::admin_kubeconfig()?).await
    }

    /// A namespace in the kube-env instance whose admin kubeconfig is `kubeconfig`.
    pub async fn on(prefix: &str, kubeconfig: &Path) -> Result<Self> {
        let client = client_at(kubeconfig).await?;
        let ns = create_namespace(&client, prefix).await?;
        let guard = tempfile::tempdir()?;
        let work = guard.path().to_owned();
        let guard = if std::env::var_os("DRAINER_TEST_KEEP").is_some() {
            eprintln!("{prefix}: keeping {}", guard.keep().display());
            None
        } else {
            Some(guard)
        };
        Ok(Self {
            client,
            ns,
            work,
            kubeconfig: kubeconfig.to_owned(),
            _work: guard,
        })
    }

    /// A namespace with the ServiceAccount `web`, the identity of [`WebSet`]'s pods.
    pub async fn with_web_account(prefix: &str) -> Result<Self> {
        let namespace = Self::new(prefix).await?;
        namespace.create_web_account().await?;
        Ok(namespace)
    }

    /// Creates the ServiceAccount `web`.
    pub async fn create_web_account(&self) -> Result<()> {
        self.api::<ServiceAccount>()
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": "web"}})),
            )
            .await
            .with_context(|| format!("creating ServiceAccount {}/web", self.ns))?;
        Ok(())
    }

    /// The API of namespaced kind `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates claim `name` (ReadWriteOnce, of `size`, the default storage class).
    pub async fn create_claim(&self, name: &str, size: &str) -> Result<PersistentVolumeClaim> {
        let claim: PersistentVolumeClaim = from_json(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
        }));
        self.api::<PersistentVolumeClaim>()
            .create(&PostParams::default(), &claim)
            .await
            .with_context(|| format!("creating claim {}/{name}", self.ns))
    }

    /// Waits (at most `within`) until claim `name` is Bound; returns its directory (the PV's
    /// hostPath on this machine).
    pub async fn bound_claim_dir(&self, name: &str, within: Duration) -> Result<PathBuf> {
        super::kube::wait_for_bound_claim(&self.client, &self.ns, name, within).await
    }

    /// Waits (at most `within`) until pod `name` is Running; returns it.
    pub async fn running_pod(&self, name: &str, within: Duration) -> Result<Pod> {
        let pods = self.api::<Pod>();
        eventually(
            format!("pod {}/{name} running", self.ns),
            within,
            || async {
                let pod = pods.get(name).await?;
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                ensure!(phase.as_deref() == Some("Running"), "{phase:?}");
                Ok(pod)
            },
        )
        .await
    }

    /// The newest drain of claim `pvc` (waits at most `within` for `serve` to make one).
    pub async fn drain_of(&self, serve: &Serve, pvc: &str, within: Duration) -> Result<String> {
        eventually(format!("a drain of {pvc}"), within, || async {
            let drains = serve.drains(&format!("volume={}/{pvc}", self.ns)).await;
            drains
                .first()
                .and_then(|d| d["id"].as_str())
                .map(str::to_owned)
                .context("none yet")
        })
        .await
    }

    /// Copies of the claims' directories as they are now (`cp -a`: owners, modes and times
    /// kept) under the scratch directory, to compare restores with later; by claim name.
    pub fn keep(&self, dirs: &BTreeMap<String, PathBuf>) -> Result<BTreeMap<String, PathBuf>> {
        let mut kept = BTreeMap::new();
        for (pvc, dir) in dirs {
            let copy = self.work.join(format!("had-{pvc}"));
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(dir)
                .arg(&copy)
                .status()?;
            ensure!(status.success(), "cp -a {}", dir.display());
            kept.insert(pvc.clone(), copy);
        }
        Ok(kept)
    }

    /// The file store under the scratch directory.
    pub fn store(&self) -> String {
        file_url(&self.work.join("store"))
    }

    /// A drainer serving this namespace (and only it), storing in [`Self::store`], with the
    /// admin's kubeconfig.
    pub fn kube_drainer(&self) -> KubeDrainer {
        KubeDrainer::new(&self.ns, &self.store()).kubeconfig(&self.kubeconfig)
    }

    /// Sets the replicas of StatefulSet `set` in this namespace.
    pub async fn scale(&self, set: &str, replicas: u32) -> Result<()> {
        scale(&self.client, &self.ns, set, replicas).await
    }

    /// A token of ServiceAccount `sa` for `audiences` (the API server's when empty), valid for
    /// ten minutes, bound to `pod` if given (as a projected token is).
    pub async fn token(&self, sa: &str, audiences: &[&str], pod: Option<&Pod>) -> Result<String> {
        let bound = pod.map(|p| {
            json!({"kind": "Pod", "apiVersion": "v1", "name": p.metadata.name, "uid": p.metadata.uid})
        });
        let mut spec = json!({"expirationSeconds": 600, "boundObjectRef": bound});
        if !audiences.is_empty() {
            spec["audiences"] = json!(audiences);
        }
        let request: TokenRequest = from_json(json!({ "spec": spec }));
        let issued = self
            .api::<ServiceAccount>()
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token of {}/{sa}", self.ns))?;
        issued.status.and_then(|s| s.token).context("no token")
    }

    /// Labels the namespace to enforce Pod Security `level` (`privileged`, `baseline`,
    /// `restricted`), in its latest version: the API server then admits only pods (movers
    /// included) that meet it.
    pub async fn enforce_pod_security(&self, level: &str) -> Result<()> {
        let labels = json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": level,
            "pod-security.kubernetes.io/enforce-version": "latest"
        }}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&self.ns, &PatchParams::default(), &Patch::Merge(labels))
            .await
            .with_context(|| format!("labelling namespace {} to enforce {level}", self.ns))?;
        Ok(())
    }

    /// Starts deleting the namespace (the namespace controller finishes in the background).
    pub async fn finish(self) -> Result<()> {
        delete_namespace(&self.client, &self.ns).await
    }
}

/// Sets the replicas of StatefulSet `ns/set` (a merge patch of `spec.replicas`).
pub async fn scale(client: &Client, ns: &str, set: &str, replicas: u32) -> Result<()> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .patch(set, &PatchParams::default(), &patch)
        .await
        .with_context(|| format!("scaling StatefulSet {ns}/{set} to {replicas}"))?;
    Ok(())
}

/// Who makes a drain's copies.
#[derive(Clone, Debug)]
enum Movers {
    /// The test runs them (`--movers external`), or none runs and drains stay queued.
    External,
    /// Mover Jobs of `image` that reach the drainer at `service_url`.
    Jobs { service_url: String, image: String },
}

/// `drainer serve --kubernetes` as the kube-env tests start it: the namespaces it watches, its
/// store, who moves the data, no scheduled sweeps unless asked, and what each test varies.
/// The kubeconfig is the shared kube-env's admin's unless given.
#[derive(Clone, Debug)]
pub struct KubeDrainer {
    namespaces: Vec<String>,
    store: String,
    movers: Movers,
    sweep_interval: String,
    lease: Option<u32>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: Option<PathBuf>,
}

impl KubeDrainer {
    /// A drainer watching namespace `ns`, storing in `store`, movers external, sweeping only
    /// when asked (`--sweep-interval 0`).
    pub fn new(ns: &str, store: &str) -> Self {
        Self {
            namespaces: vec![ns.to_owned()],
            store: store.to_owned(),
            movers: Movers::External,
            sweep_interval: "0".to_owned(),
            lease: None,
            extra: Vec::new(),
            env: Vec::new(),
            kubeconfig: None,
        }
    }

    /// Watches `namespaces` instead (`--watch-namespace A,B`).
    pub fn watching(mut self, namespaces: &[&str]) -> Self {
        self.namespaces = namespaces.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Makes copies with mover Jobs of `image` that reach the drainer at `service_url`.
    pub fn mover_jobs(mut self, service_url: &str, image: &str) -> Self {
        self.movers = Movers::Jobs {
            service_url: service_url.to_owned(),
            image: image.to_owned(),
        };
        self
    }

    /// Leases drains for `seconds` (`--lease`), so a killed drainer's drains are taken over soon.
    pub fn lease(mut self, seconds: u32) -> Self {
        self.lease = Some(seconds);
        self
    }

    /// Sweeps every `seconds` (`--sweep-interval`; 0, the default here, never by itself).
    pub fn sweep_interval(mut self, seconds: u32) -> Self {
        self.sweep_interval = seconds.to_string();
        self
    }

    /// Further arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Logs drainer's own debug messages (`DRAINER_LOG=info,drainer=debug`).
    pub fn debug_log(self) -> Self {
        self.env("DRAINER_LOG", "info,drainer=debug")
    }

    /// Runs with the kubeconfig at `path` (an identity of its own, or another instance's admin).
    pub fn kubeconfig(mut self, path: &Path) -> Self {
        self.kubeconfig = Some(path.to_owned());
        self
    }

    /// The command-line arguments after `drainer serve`.
    pub fn command_line(&self) -> Vec<String> {
        let mut args = vec!["--kubernetes".to_owned()];
        match &self.movers {
            Movers::External => args.extend(["--movers".to_owned(), "external".to_owned()]),
            Movers::Jobs { service_url, image } => args.extend([
                "--service-url".to_owned(),
                service_url.clone(),
                "--mover-image".to_owned(),
                image.clone(),
            ]),
        }
        args.extend([
            "--watch-namespace".to_owned(),
            self.namespaces.join(","),
            "--store".to_owned(),
            self.store.clone(),
            "--sweep-interval".to_owned(),
            self.sweep_interval.clone(),
        ]);
        if let Some(lease) = self.lease {
            args.extend(["--lease".to_owned(), lease.to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// The environment: the kubeconfig, then the variables given.
    fn environment(&self) -> Result<Vec<(String, String)>> {
        let kubeconfig = match &self.kubeconfig {
            Some(path) => path.display().to_string(),
            None => std::env::var(KUBECONFIG_ENV).context(KUBECONFIG_ENV)?,
        };
        let mut env = vec![("KUBECONFIG".to_owned(), kubeconfig)];
        env.extend(self.env.iter().cloned());
        Ok(env)
    }

    /// Starts it on data directory `data` and waits until it is ready.
    pub async fn start(&self, data: &Path) -> Result<Serve> {
        let (args, env) = (self.command_line(), self.environment()?);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(Serve::start_with_env(data, &args, &env).await)
    }

    /// Starts it serving TLS with `cert` and `key` (signed by `ca`) on data directory `data`.
    pub async fn start_tls(&self, data: &Path, pair: (&Path, &Path), ca: &Ca) -> Result<Serve> {
        let (args, env) = (self.command_line(), self.environment()?);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(Serve::start_tls_with_env(data, &args, &env, pair, ca).await)
    }
}

/// Restores the latest snapshot of `ns/pvc` from `store` into a new directory under `scratch`
/// (with the `drainer restore` CLI) and asserts that it equals `source` exactly.
pub async fn assert_restores_exactly(
    store: &str,
    ns: &str,
    pvc: &str,
    source: &Path,
    scratch: &Path,
) {
    let dest = scratch.join(format!("restored-{ns}-{pvc}"));
    run_ok(
        drainer()
            .arg("restore")
            .arg(store)
            .args(["--volume", &format!("{ns}/{pvc}")])
            .arg(&dest),
    )
    .await;
    let diffs = differences(source, &dest);
    assert!(
        diffs.is_empty(),
        "{ns}/{pvc} differs after restore:\n{}",
        diffs.join("\n")
    );
}

/// A drain's history, an entry a line (`AT OWNER STATE MESSAGE`): to say what happened when a
/// check fails, and to check what it says.
pub fn history(drain: &Value) -> String {
    let text = |entry: &Value, key: &str| match &entry[key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    drain["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let (at, owner) = (text(e, "at"), text(e, "owner"));
            format!("{at} {owner} {} {}", text(e, "state"), text(e, "message"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the mover of drain `id` on `dir` to completion (what a mover Job does in a cluster,
/// for a drainer started with movers external), as the test's admin.
pub async fn run_mover(serve: &Serve, id: &str, dir: &Path) {
    run_ok(
        drainer()
            .args(["mover", "--drainer", &serve.url, "--drain", id, "--source"])
            .arg(dir)
            .env("DRAINER_TOKEN", super::serve::TOKEN),
    )
    .await;
}

/// The Drain resource (`drains.drainer.io`, deploy/base's CRD).
pub fn drain_resource() -> ApiResource {
    ApiResource {
        group: "drainer.io".into(),
        version: "v1alpha1".into(),
        api_version: "drainer.io/v1alpha1".into(),
        kind: "Drain".into(),
        plural: "drains".into(),
    }
}

/// The Drain objects of namespace `ns`.
pub fn drain_objects(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &drain_resource())
}

/// `kubectl apply` of deploy/base's CRD, then waits until it is Established (idempotent:
/// tests beside the caller may apply it too).
pub async fn install_drain_crd() -> Result<()> {
    let env = KubeEnv::load()?;
    let crd = super::install::deploy("base/crd.yaml");
    let apply = ["apply", "--server-side", "--force-conflicts", "-f", &crd];
    super::install::kubectl(&env, &apply).await?;
    let established = [
        "wait",
        "--for=condition=Established",
        "crd/drains.drainer.io",
        "--timeout=60s",
    ];
    super::install::kubectl(&env, &established).await?;
    Ok(())
}

/// How long a pod of [`WebSet`] stays Terminating, at most.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The StatefulSet `web` of the kube-env tests: pods labelled `app: web` with one container
/// `app` (image `registry.invalid/web:1`, which kube-env simulates unless told to run a
/// command), a claim per template mounted at `/TEMPLATE`, and what each test varies.
#[derive(Clone, Debug)]
pub struct WebSet {
    set: Value,
}

impl WebSet {
    /// `replicas` pods from ordinal 0, one claim template `data` of 64Mi mounted at `/data`,
    /// claims retained on scale-down and deletion (the defaults), pods started in order.
    pub fn new(replicas: u32) -> Self {
        Self::named("web", replicas)
    }

    /// Like [`WebSet::new`], a set (and its Service, and its pods' label `app`) named `name`.
    pub fn named(name: &str, replicas: u32) -> Self {
        let set = json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": {
                        "containers": [{ "name": "app", "image": "registry.invalid/web:1" }]
                    }
                }
            }
        });
        Self { set }.claims(&["data"], "64Mi")
    }

    fn pod(&mut self) -> &mut Value {
        &mut self.set["spec"]["template"]["spec"]
    }

    fn app(&mut self) -> &mut Value {
        &mut self.pod()["containers"][0]
    }

    /// One claim template per name, of `size`, each mounted at `/NAME` in the app container.
    pub fn claims(mut self, templates: &[&str], size: &str) -> Self {
        let claims: Vec<Value> = templates
            .iter()
            .map(|t| {
                json!({
                    "metadata": { "name": t },
                    "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": size } } }
                })
            })
            .collect();
        let mounts: Vec<Value> = templates
            .iter()
            .map(|t| json!({ "name": t, "mountPath": format!("/{t}") }))
            .collect();
        self.set["spec"]["volumeClaimTemplates"] = Value::Array(claims);
        self.app()["volumeMounts"] = Value::Array(mounts);
        self
    }

    /// No claim mounted in the app container (the claims are made all the same).
    pub fn unmounted(mut self) -> Self {
        if let Some(app) = self.app().as_object_mut() {
            app.remove("volumeMounts");
        }
        self
    }

    /// Ordinals from `start` (`spec.ordinals.start`).
    pub fn ordinals_from(mut self, start: u32) -> Self {
        self.set["spec"]["ordinals"] = json!({ "start": start });
        self
    }

    /// Pods started and stopped all at once (`podManagementPolicy: Parallel`).
    pub fn parallel(mut self) -> Self {
        self.set["spec"]["podManagementPolicy"] = json!("Parallel");
        self
    }

    /// Claims of scaled-away ordinals kept (`Retain`) or deleted (`Delete`); kept when the set
    /// is deleted.
    pub fn when_scaled(mut self, policy: &str) -> Self {
        self.set["spec"]["persistentVolumeClaimRetentionPolicy"] =
            json!({ "whenScaled": policy, "whenDeleted": "Retain" });
        self
    }

    /// Pods run as ServiceAccount `web` ([`TestNamespace::create_web_account`]).
    pub fn web_account(mut self) -> Self {
        self.pod()["serviceAccountName"] = json!("web");
        self
    }

    /// Pods have `grace` to terminate (`terminationGracePeriodSeconds`).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.pod()["terminationGracePeriodSeconds"] = json!(grace.as_secs());
        self
    }

    /// The usual grace period, 30 s.
    pub fn default_grace(self) -> Self {
        self.grace(DEFAULT_GRACE)
    }

    /// Simulated pods stay Terminating `delay` (a Go duration) when deleted, as pods do while
    /// their preStop hook and SIGTERM handler run (kube-env's termination-delay annotation).
    pub fn termination_delay(mut self, delay: &str) -> Self {
        self.set["spec"]["template"]["metadata"]["annotations"] =
            json!({ super::kube::TERMINATION_DELAY_ANNOTATION: delay });
        self
    }

    /// The app container runs `sh -c script` (so kube-env runs it as a process) with the
    /// environment variables `env` (name, pod field path: `POD_NAME` ← `metadata.name`, …).
    pub fn runs(mut self, script: &str, env: &[(&str, &str)]) -> Self {
        self.app()["command"] = json!(["sh", "-c", script]);
        for (name, field) in env {
            push(
                self.app(),
                "env",
                json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": field } } }),
            );
        }
        self
    }

    /// The app container's image instead of `registry.invalid/web:1`.
    pub fn image(mut self, image: &str) -> Self {
        self.app()["image"] = json!(image);
        self
    }

    /// The pod's and the app container's security contexts.
    pub fn security(mut self, pod: Value, container: Value) -> Self {
        self.pod()["securityContext"] = pod;
        self.app()["securityContext"] = container;
        self
    }

    /// Mounts the pod's projected ServiceAccount token of audience `drainer` at
    /// `/var/run/secrets/drainer` (where `drainer handoff` and `drainer restore` find it) and
    /// tells drainer the pod's name and namespace (`DRAINER_POD`, `DRAINER_NAMESPACE`).
    pub fn drainer_token(mut self) -> Self {
        for (name, field) in [
            ("DRAINER_POD", "metadata.name"),
            ("DRAINER_NAMESPACE", "metadata.namespace"),
        ] {
            push(
                self.app(),
                "env",
                json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": field } } }),
            );
        }
        push(self.app(), "volumeMounts", token_mount());
        push(
            self.pod(),
            "volumes",
            json!({ "name": "drainer-token", "projected": { "sources": [
                { "serviceAccountToken": { "audience": "drainer", "expirationSeconds": 3600, "path": "token" } }
            ] } }),
        );
        self
    }

    /// The app container hands its claims off to `drainer_url` from a `preStop` hook
    /// (`drainer handoff`, with the token of [`Self::drainer_token`]; drainer installed into the
    /// pod by an init container, as `deploy/examples/prestop-handoff.yaml` does). Call last.
    pub fn hands_off_to(mut self, drainer_url: &str) -> Self {
        let hook = super::image::installed_drainer(&[
            "handoff",
            "--drainer",
            drainer_url,
            "--reason",
            "preStop",
        ]);
        self.app()["lifecycle"] = json!({ "preStop": { "exec": { "command": hook } } });
        let pod = self.pod().take();
        *self.pod() = super::image::with_drainer_installed(pod);
        self
    }

    /// An init container (before drainer's installer, if any) that runs `drainer restore
    /// --if-empty --allow-missing` of the pod's claim `data` from `drainer_url` with `image`
    /// as uid 0 (to restore owners), as `deploy/examples` does.
    pub fn restores_from(mut self, drainer_url: &str, image: &str) -> Self {
        let restore = [
            "restore",
            "--drainer",
            drainer_url,
            "--volume",
            "$(POD_NAMESPACE)/data-$(POD_NAME)",
            "--if-empty",
            "--allow-missing",
            "/data",
        ];
        push(
            self.pod(),
            "initContainers",
            json!({
                "name": "restore",
                "image": image,
                "args": restore,
                "securityContext": { "runAsUser": 0 },
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                    { "name": "DRAINER_LOG", "value": "info" }
                ],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }, token_mount()]
            }),
        );
        self
    }

    /// The StatefulSet as JSON, for a test to change what no option covers.
    pub fn json(&mut self) -> &mut Value {
        &mut self.set
    }

    /// The StatefulSet.
    pub fn build(self) -> StatefulSet {
        from_json(self.set)
    }

    /// Creates it in `namespace`.
    pub async fn create(self, namespace: &TestNamespace) -> Result<StatefulSet> {
        namespace
            .api::<StatefulSet>()
            .create(&PostParams::default(), &self.build())
            .await
            .with_context(|| format!("creating a StatefulSet in {}", namespace.ns))
    }
}

/// The read-only mount of the projected drainer token.
fn token_mount() -> Value {
    json!({ "name": "drainer-token", "mountPath": "/var/run/secrets/drainer", "readOnly": true })
}

/// Appends `item` to the array `object[key]`, creating it if missing.
fn push(object: &mut Value, key: &str, item: Value) {
    match object.get_mut(key) {
        Some(Value::Array(items)) => items.push(item),
        _ => object[key] = json!([item]),
    }
}
