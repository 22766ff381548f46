//! `deploy/chart` with Helm v4 built from its Go module (`scripts/helm`): `helm lint
//! --strict`; `helm template` with the default values renders the same objects as
//! `kubectl kustomize deploy/base`, and with `monitoring.enabled` the same as the base with
//! `components/monitoring` (and so with TLS and encryption: so the chart and kustomize never
//! drift); values the schema or the templates refuse; and `helm install` into kube-env (the
//! image of the binary under test, `tls.enabled` with a certificate made in the test), a
//! StatefulSet drained through its preStop hooks and its snapshot restored exactly,
//! `helm upgrade` to another image tag while a drain's mover is copying (caught copying and
//! held stopped with `SIGSTOP` meanwhile: the new drainer adopts that very Job, by UID, and the
//! drain completes), and `helm uninstall` leaving the applications' claims.
//!
//! The comparison normalises only what must differ: Helm's standard labels
//! (`helm.sh/chart`, `app.kubernetes.io/managed-by`, `…/instance`, `…/version`) are dropped;
//! kustomize's name-hash suffix of the generated `drainer-store` ConfigMap is dropped (Helm
//! cannot compute it; the chart rolls the pods with a `checksum/store` annotation instead,
//! also dropped); and the base's Namespace object is left out (Helm installs into a namespace
//! made beforehand, or by `--create-namespace`).

use crate::support::cluster::scale;
use crate::support::file_url;
use crate::support::install::{
    ADMIN_TOKEN, APPS, DrainerApi, LOCK, SYSTEM, Tls, deploy, drainer_pod, ensure_namespace,
    kubectl, output, release_image, repo, restore_equals, start_example_web, test_image,
};
use crate::support::kube::{
    KubeEnv, client, eventually, wait_for_bound_claim, wait_for_pod_gone, with_timeout,
};
use crate::support::manifests::{check_rendered_component, yaml_documents};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Labels Helm charts add by convention, which kustomize's objects do not have.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
/// The release the tests install.
const RELEASE: &str = "drainer";
/// The image tags the install and the upgrade use (both the image of the binary under test).
const TAGS: [&str; 2] = ["kube-env-helm", "kube-env-helm-2"];

fn chart() -> String {
    deploy("chart")
}

/// `scripts/helm ARGS` with kube-env's kubeconfig; its stdout.
async fn helm(env: &KubeEnv, args: &[&str]) -> Result<String> {
    output(
        tokio::process::Command::new(repo().join("scripts/helm"))
            .args(args)
            .env("KUBECONFIG", env.data_dir.join("kubeconfig")),
        &format!("helm {}", args.join(" ")),
    )
    .await
}

/// `helm ARGS` that must fail: its error output.
async fn helm_refuses(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(repo().join("scripts/helm"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    ensure!(!out.status.success(), "helm {args:?} passed");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The objects of the YAML `text`, through a file (kept beside the target directory).
async fn objects_of(text: &str) -> Result<Vec<Value>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, text)?;
    yaml_documents(&file).await
}

/// Cluster-scoped kinds that kustomize's namespace transformer takes for namespaced ones.
const CLUSTER_SCOPED_KUSTOMIZE_MISSES: [&str; 2] = [
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Objects keyed by kind, namespace and name, with what must differ normalised (module doc).
fn normalised(objects: Vec<Value>) -> Result<BTreeMap<String, Value>> {
    let mut keyed = BTreeMap::new();
    for mut o in objects {
        if o["kind"] == "Namespace" {
            continue;
        }
        if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
            for label in HELM_LABELS {
                labels.remove(label);
            }
        }
        if o["kind"] == "ConfigMap" {
            let name = o["metadata"]["name"].as_str().context("no name")?;
            if name.starts_with("drainer-store") {
                o["metadata"]["name"] = "drainer-store".into();
            }
        }
        if o["kind"] == "Deployment" {
            normalise_deployment(&mut o)?;
        }
        // kustomize does not know these kinds are cluster-scoped and gives them the base's
        // namespace, which the API server ignores.
        let kind = o["kind"].as_str().unwrap_or_default();
        if CLUSTER_SCOPED_KUSTOMIZE_MISSES.contains(&kind)
            && let Some(metadata) = o["metadata"].as_object_mut()
        {
            metadata.remove("namespace");
        }
        let key = format!(
            "{} {}/{}",
            o["kind"].as_str().context("no kind")?,
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().context("no name")?
        );
        ensure!(keyed.insert(key.clone(), o).is_none(), "{key} twice");
    }
    Ok(keyed)
}

/// The store ConfigMap's reference without kustomize's hash, and no `checksum/store` or
/// `checksum/movers` (the chart's rollout triggers; read
/// with `get_mut`: indexing a JSON value for writing would add the keys it looks for).
fn normalise_deployment(o: &mut Value) -> Result<()> {
    let template = &mut o["spec"]["template"];
    let metadata = template["metadata"].as_object_mut().context("metadata")?;
    if let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove("checksum/store");
        annotations.remove("checksum/movers");
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
    for container in template["spec"]["containers"]
        .as_array_mut()
        .context("no containers")?
    {
        let sources = container.get_mut("envFrom").and_then(Value::as_array_mut);
        for from in sources.into_iter().flatten() {
            let reference = from.get_mut("configMapRef").and_then(|r| r.get_mut("name"));
            if let Some(name) =
                reference.filter(|n| n.as_str().is_some_and(|n| n.starts_with("drainer-store")))
            {
                *name = "drainer-store".into();
            }
        }
    }
    Ok(())
}

/// The first difference between two normalised renderings, if any.
fn first_difference(
    helm: &BTreeMap<String, Value>,
    kustomize: &BTreeMap<String, Value>,
) -> Option<String> {
    let helm_keys: Vec<&String> = helm.keys().collect();
    let kustomize_keys: Vec<&String> = kustomize.keys().collect();
    if helm_keys != kustomize_keys {
        return Some(format!(
            "objects differ:\n helm:      {helm_keys:?}\n kustomize: {kustomize_keys:?}"
        ));
    }
    helm.iter()
        .find(|(key, o)| kustomize[*key] != **o)
        .map(|(key, o)| {
            format!(
                "{key} differs:\n helm:      {o}\n kustomize: {}",
                kustomize[key]
            )
        })
}

/// `kubectl kustomize` of deploy/base, with `components` (relative to deploy/).
async fn kustomize_base(env: &KubeEnv, components: &[&str]) -> Result<String> {
    std::fs::create_dir_all(repo().join("target"))?;
    let overlay = tempfile::tempdir_in(repo().join("target"))?;
    let components: Vec<String> = components
        .iter()
        .map(|c| format!("../../deploy/{c}"))
        .collect();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {SYSTEM}\nresources: [../../deploy/base]\ncomponents: [{}]\n",
            components.join(", ")
        ),
    )?;
    let dir = overlay.path().display().to_string();
    kubectl(env, &["kustomize", &dir]).await
}

/// helm lint, and the default rendering equal to deploy/base's (and with monitoring, TLS or
/// encryption, to the base's with that component).
#[tokio::test]
async fn the_chart_lints_and_renders_what_kustomize_renders() -> Result<()> {
    with_timeout(Duration::from_secs(600), async {
        let env = KubeEnv::load()?;
        helm(&env, &["lint", "--strict", &chart()]).await?;
        for (values, components) in [
            (vec![], vec![]),
            (
                vec!["--set", "monitoring.enabled=true"],
                vec!["components/monitoring"],
            ),
            (vec!["--set", "tls.enabled=true"], vec!["components/tls"]),
            (
                vec!["--set", "encryption.enabled=true"],
                vec!["components/encryption"],
            ),
        ] {
            // The CRD is in the chart's crds/ (installed, never upgraded or deleted by Helm).
            let mut args = vec![
                "template",
                RELEASE,
                chart_ref(),
                "-n",
                SYSTEM,
                "--include-crds",
            ];
            args.extend(values.iter().copied());
            let rendered = objects_of(&helm(&env, &args).await?).await?;
            let base = objects_of(&kustomize_base(&env, &components).await?).await?;
            let (helm_objects, kustomize_objects) =
                (normalised(rendered.clone())?, normalised(base)?);
            if let Some(difference) = first_difference(&helm_objects, &kustomize_objects) {
                bail!("helm template {values:?} and kustomize {components:?}: {difference}");
            }
            println!(
                "helm template {values:?}: the {} objects of kustomize {components:?}",
                helm_objects.len()
            );
            if components == ["components/monitoring"] {
                check_rendered_component(&rendered)?;
            }
        }
        Ok(())
    })
    .await
}

/// The chart's path as `helm template` takes it (a static string for the argument lists).
fn chart_ref() -> &'static str {
    static CHART: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHART.get_or_init(chart)
}

/// Values the schema or the templates refuse, each with its reason.
#[tokio::test]
async fn the_chart_refuses_what_it_cannot_do() -> Result<()> {
    for (set, why) in [
        ("tls.certSecret=drainer-tls", "additional properties"),
        ("movers.serviceAccount=", "movers"),
        ("replicaCount=2", "needs database.urlSecret"),
        ("movers.identity=root", "movers"),
        ("movers.dataPath=sideways", "movers"),
        ("store.url=ftp://x", "store"),
    ] {
        let err = helm_refuses(&["template", RELEASE, chart_ref(), "--set", set]).await?;
        ensure!(err.contains(why), "--set {set}: {err}");
        let reason = err.lines().find(|l| l.contains(why)).unwrap_or_default();
        println!("--set {set} refused: {}", reason.trim());
    }
    Ok(())
}

/// `movers.dataPath` reaches drainer as `DRAINER_MOVER_DATA_PATH` (the default renders none:
/// drainer's own default, `auto`, as deploy/base).
#[tokio::test]
async fn the_mover_data_path_reaches_drainer() -> Result<()> {
    let env = KubeEnv::load()?;
    for (value, expected) in [("relay", Some("relay")), ("", None)] {
        let set = format!("movers.dataPath={value}");
        let args = [
            "template",
            RELEASE,
            chart_ref(),
            "-n",
            SYSTEM,
            "--set",
            &set,
        ];
        let objects = objects_of(&helm(&env, &args).await?).await?;
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .context("no Deployment rendered")?;
        let found = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .context("no env")?
            .iter()
            .find(|e| e["name"] == "DRAINER_MOVER_DATA_PATH")
            .and_then(|e| e["value"].as_str());
        ensure!(found == expected, "--set {set}: {found:?}");
    }
    Ok(())
}

/// The values of the kube-env install: the image of the binary under test, only the
/// examples' namespace watched, a short lease, TLS (as overlays/kube-env).
fn install_values(tag: &str) -> Vec<String> {
    [
        "image.repository=drainer".to_owned(),
        format!("image.tag={tag}"),
        format!("watchNamespaces={{{APPS}}}"),
        "extraEnv[0].name=DRAINER_LOG".to_owned(),
        "extraEnv[0].value=info\\,drainer=debug".to_owned(),
        "extraEnv[1].name=DRAINER_LEASE".to_owned(),
        "extraEnv[1].value=10".to_owned(),
    ]
    .into_iter()
    // --set-string: DRAINER_LEASE's 10 stays a string, as an env value must be.
    .flat_map(|v| ["--set-string".to_owned(), v])
    .chain(["--set".to_owned(), "tls.enabled=true".to_owned()])
    .collect()
}

/// helm install, a drain and its restore, helm upgrade during a drain, helm uninstall.
#[tokio::test]
async fn helm_install_upgrade_and_uninstall() -> Result<()> {
    let _serial = LOCK.lock().await;
    let image = test_image().await?;
    let env = KubeEnv::load()?;
    let client = client().await?;
    let result = with_timeout(
        Duration::from_secs(900),
        install_upgrade_uninstall(&env, &client, &image),
    )
    .await;
    let cleaned = clean_up(&env).await;
    result?;
    cleaned
}

/// Removes the release and the namespaces (not waiting).
async fn clean_up(env: &KubeEnv) -> Result<()> {
    let _ = helm(
        env,
        &["uninstall", RELEASE, "-n", SYSTEM, "--ignore-not-found"],
    )
    .await;
    for ns in [APPS, SYSTEM] {
        kubectl(
            env,
            &[
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
            ],
        )
        .await?;
    }
    Ok(())
}

async fn install_upgrade_uninstall(
    env: &KubeEnv,
    client: &kube::Client,
    image: &Path,
) -> Result<()> {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("chart: {:>6.1} s {what}", started.elapsed().as_secs_f64());
    crate::support::install::clean_up(env, client, true).await?;
    for tag in TAGS {
        env.register_image(&format!("drainer:{tag}"), image).await?;
    }
    env.register_image(&release_image(), image).await?;
    ensure_namespace(client, APPS).await?;
    ensure_namespace(client, SYSTEM).await?;
    kubectl(
        env,
        &[
            "label",
            "namespace",
            SYSTEM,
            "pod-security.kubernetes.io/enforce=restricted",
            "--overwrite",
        ],
    )
    .await?;
    kubectl(
        env,
        &[
            "create",
            "secret",
            "generic",
            "drainer-admin",
            "-n",
            SYSTEM,
            &format!("--from-literal=token={}", ADMIN_TOKEN),
        ],
    )
    .await?;
    let tls = Tls::install(env, client).await?;

    step("helm install");
    let mut install = vec![
        "install",
        RELEASE,
        chart_ref(),
        "-n",
        SYSTEM,
        "--timeout",
        "3m",
    ];
    let values = install_values(TAGS[0]);
    install.extend(values.iter().map(String::as_str));
    helm(env, &install).await?;
    let pod = drainer_pod(client, env).await?;
    ensure_runs_tag(&pod, TAGS[0])?;
    let api = DrainerApi::new(client, ADMIN_TOKEN, APPS, Some(&tls)).await?;
    let store = {
        let dir =
            wait_for_bound_claim(client, SYSTEM, "drainer-data", Duration::from_secs(10)).await?;
        file_url(&dir.join("store"))
    };
    step("drainer Ready; web with 3 replicas");

    let web = start_example_web(env, client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    scale(client, APPS, "web", 2).await?;
    wait_for_pod_gone(&pods, "web-2", Duration::from_secs(90)).await?;
    let drain = api
        .wait_completed("data-web-2", 0, Duration::from_secs(240))
        .await?;
    restore_equals(&store, &drain, &web[2]).await?;
    step("web-2 drained through its preStop hook; its snapshot restores exactly");

    // Enough data in web-1's claim that its mover is caught copying, then held stopped
    // (SIGSTOP) while drainer is upgraded: the new drainer must adopt that very Job.
    write_large_file(&web[1].join("large.bin"), 64 << 20)?;
    scale(client, APPS, "web", 1).await?;
    wait_for_pod_gone(&pods, "web-1", Duration::from_secs(90)).await?;
    let held = MoverHeld::catch(&api, "data-web-1").await?;
    step(&format!(
        "helm upgrade to {} with web-1's mover Job {} stopped mid-copy",
        TAGS[1], held.job_uid
    ));
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        chart_ref(),
        "-n",
        SYSTEM,
        "--timeout",
        "3m",
    ];
    let values = install_values(TAGS[1]);
    upgrade.extend(values.iter().map(String::as_str));
    helm(env, &upgrade).await?;
    eventually(
        format!("a drainer pod of {} Ready", TAGS[1]),
        Duration::from_secs(180),
        || async {
            let pod = drainer_pod(client, env).await?;
            ensure_runs_tag(&pod, TAGS[1])
        },
    )
    .await?;
    let job_uid = held.job_uid.clone();
    drop(held);
    let drain = api
        .wait_completed("data-web-1", 0, Duration::from_secs(240))
        .await?;
    ensure!(
        drain["mover_job_uid"] == job_uid.as_str(),
        "the upgraded drainer did not adopt the running mover Job {job_uid}: {drain}"
    );
    restore_equals(&store, &drain, &web[1]).await?;
    step("upgraded; web-1's mover Job adopted, its drain completed and restores exactly");

    helm(
        env,
        &[
            "uninstall",
            RELEASE,
            "-n",
            SYSTEM,
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), APPS);
    for i in 0..3 {
        let claim = claims.get(&format!("data-web-{i}")).await?;
        ensure!(
            claim.metadata.deletion_timestamp.is_none(),
            "data-web-{i} is being deleted after helm uninstall"
        );
    }
    let system_claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), SYSTEM);
    eventually(
        "drainer's own claim gone",
        Duration::from_secs(60),
        || async {
            ensure!(system_claims.get_opt("drainer-data").await?.is_none());
            Ok(())
        },
    )
    .await?;
    let left = helm(env, &["list", "-n", SYSTEM, "-q"]).await?;
    ensure!(left.trim().is_empty(), "releases left: {left}");
    step("helm uninstall: the release gone, the applications' claims kept");
    Ok(())
}

/// Whether `pod` runs the registered image of `tag`.
fn ensure_runs_tag(pod: &Pod, tag: &str) -> Result<()> {
    let image = pod
        .spec
        .as_ref()
        .map(|s| s.containers[0].image.clone().unwrap_or_default())
        .unwrap_or_default();
    ensure!(image == format!("drainer:{tag}"), "runs {image}");
    Ok(())
}

/// Writes `size` bytes (whole mebibytes) to `path`, each mebibyte different.
fn write_large_file(path: &Path, size: usize) -> Result<()> {
    use std::io::Write;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut file = std::fs::File::create(path)?;
    for i in 0..size >> 20 {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        file.write_all(&block)?;
    }
    Ok(file.sync_all()?)
}

/// A drain's mover pod caught copying and stopped (`SIGSTOP` to its processes, which run on
/// this machine under kube-env); continued (`SIGCONT`) when dropped.
struct MoverHeld {
    job_uid: String,
    processes: Vec<rustix::process::Pid>,
}

impl MoverHeld {
    /// Waits until `pvc`'s drain is copying with a mover Job recorded and that mover's
    /// process runs (`mover … --drain ID` in its command line), then stops it.
    async fn catch(api: &DrainerApi, pvc: &str) -> Result<Self> {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            let drain = api.drains_of(pvc).await?.into_iter().next();
            let copying = drain.filter(|d| d["state"] == "copying");
            if let Some((id, uid)) = copying
                .as_ref()
                .and_then(|d| Some((d["id"].as_str()?, d["mover_job_uid"].as_str()?)))
            {
                let processes = mover_processes(id);
                if !processes.is_empty() {
                    for pid in &processes {
                        rustix::process::kill_process(*pid, rustix::process::Signal::STOP)?;
                    }
                    return Ok(Self {
                        job_uid: uid.to_owned(),
                        processes,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no mover of {pvc} caught copying within 120 s")
    }
}

impl Drop for MoverHeld {
    fn drop(&mut self) {
        for pid in &self.processes {
            let _ = rustix::process::kill_process(*pid, rustix::process::Signal::CONT);
        }
    }
}

/// The processes whose command line is a mover's of drain `id`.
fn mover_processes(id: &str) -> Vec<rustix::process::Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_mover = args.iter().any(|a| *a == b"mover")
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--drain" && w[1] == id.as_bytes());
            is_mover
                .then(|| rustix::process::Pid::from_raw(pid))
                .flatten()
        })
        .collect()
}
