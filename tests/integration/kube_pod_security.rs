//! Mover Jobs on kube-env in namespaces that enforce Pod Security. Each test
//! labels its namespace `pod-security.kubernetes.io/enforce`, runs a StatefulSet `web` whose
//! pods (processes, on this machine's root filesystem) write their own data, scales it down
//! and lets a real `drainer serve --kubernetes` catch the condemned pods and copy their claims
//! with mover Jobs, which the API server's PodSecurity admission must admit. kube-env's pods
//! get the user, groups and capabilities their security context says (as under containerd), so
//! a mover without the right identity cannot read the application's files: these tests fail
//! if drainer picks the wrong one.

use crate::support::cluster::{TestNamespace, WebSet, assert_restores_exactly, history};
use crate::support::gate::Gate;
use crate::support::image::drainer_image;
use crate::support::kube::{KUBECONFIG_ENV, KubeEnv, eventually, from_json, with_timeout};
use crate::support::serve::{Serve, log_tail};
use crate::support::tree::differences;
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::PostParams;
use kube::config::{AuthInfo, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bound of one test.
const LIMIT: Duration = Duration::from_secs(480);
/// Bound of one wait inside a test.
const WAIT: Duration = Duration::from_secs(180);

/// What a pod of `web` runs as root (baseline): once per claim, files only root's
/// capabilities can read (mode 000, owned by another uid; under a directory of mode 0300),
/// plus ordinary ones, then it waits for SIGTERM.
const ROOT_WRITER: &str = r#"set -e
if [ ! -e /data/.written ]; then
  printf '%s\n' "$POD_NAME" > /data/owner.txt
  head -c $((700000 + ${POD_NAME##*-} * 7919)) /dev/urandom > /data/random.bin
  printf 'nobody may read this\n' > /data/zero
  chown 4242:4242 /data/zero
  chmod 000 /data/zero
  mkdir -p /data/write-search/inner
  printf 'below a 0300 directory\n' > /data/write-search/inner/file
  chmod 0300 /data/write-search
  : > /data/.written
fi
trap 'exit 0' TERM
while :; do sleep 1; done
"#;

/// What a pod of `web` runs as uid 1000 (restricted): with umask 077, files of mode 0600 and
/// directories of mode 0700 (one holding a file larger than an upload part), then it waits.
const APP_WRITER: &str = r#"set -e
umask 077
if [ ! -e /data/.written ]; then
  printf '%s\n' "$POD_NAME" > /data/owner.txt
  mkdir -p /data/private/deeper
  printf 'secret of %s\n' "$POD_NAME" > /data/private/key
  head -c $((300000 + ${POD_NAME##*-} * 7919)) /dev/urandom > /data/private/deeper/blob.bin
  head -c 9000000 /dev/urandom > /data/big.bin
  : > /data/.written
fi
trap 'exit 0' TERM
while :; do sleep 1; done
"#;

/// The application's identity in the restricted tests.
const APP_UID: i64 = 1000;
const APP_FS_GROUP: i64 = 2000;

/// StatefulSet `web` with one claim template `data`, `replicas` pods running `writer` with
/// the pod and container security contexts given, `whenScaled` as given, and a `preStop` hook
/// that hands the pod's claims off to `drainer_url` (`drainer handoff`, with the pod's
/// projected token), so that no drain depends on drainer seeing the pod terminate in time.
fn web(
    replicas: u32,
    when_scaled: &str,
    writer: &str,
    (pod, container): (Value, Value),
    drainer_url: &str,
) -> StatefulSet {
    let mut set = WebSet::new(replicas)
        .parallel()
        .when_scaled(when_scaled)
        .web_account()
        .default_grace()
        .security(pod, container.clone())
        .runs(writer, &[("POD_NAME", "metadata.name")])
        .drainer_token()
        .hands_off_to(drainer_url);
    // The installing init container runs as the application does, so the namespace's Pod
    // Security level admits it.
    set.json()["spec"]["template"]["spec"]["initContainers"][0]["securityContext"] = container;
    set.build()
}

/// The security contexts of an application that `restricted` admits: uid 1000, gid 1000,
/// fsGroup 2000, every capability dropped.
fn restricted_app() -> (Value, Value) {
    (
        json!({
            "runAsNonRoot": true, "runAsUser": APP_UID, "runAsGroup": APP_UID, "fsGroup": APP_FS_GROUP,
            "seccompProfile": { "type": "RuntimeDefault" }
        }),
        json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } }),
    )
}

/// One test's namespace (labelled with a Pod Security level), gate, scratch directory and
/// drainer.
struct World {
    namespace: TestNamespace,
    gate: Gate,
    serve: Serve,
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    async fn new(prefix: &str, level: &str) -> Result<Self> {
        Self::start_drainer(prefix, level, false).await
    }

    /// A world whose drainer may not read namespaces (a ClusterRole like its own but for that
    /// rule, as after an upgrade that did not apply the new RBAC).
    async fn without_namespace_reads(prefix: &str, level: &str) -> Result<Self> {
        Self::start_drainer(prefix, level, true).await
    }

    async fn start_drainer(prefix: &str, level: &str, restricted_rbac: bool) -> Result<Self> {
        let env = KubeEnv::load()?;
        let namespace = TestNamespace::with_web_account(prefix).await?;
        namespace.enforce_pod_security(level).await?;
        let gate = Gate::start(&env.host_ip).await?;
        let mut drainer = namespace
            .kube_drainer()
            .mover_jobs(&gate.url, drainer_image(&env).await?)
            .lease(5)
            .debug_log();
        if restricted_rbac {
            let path = namespace.work.join("kubeconfig-without-namespaces");
            kubeconfig_without_namespace_reads(&namespace.client, &namespace.ns, &path).await?;
            drainer = drainer.kubeconfig(&path);
        }
        let serve = drainer.start(&namespace.work.join("data")).await?;
        gate.forward_to(&serve.url);
        Ok(Self {
            namespace,
            gate,
            serve,
        })
    }

    /// Creates `set` and waits until each of its `replicas` pods runs and has written its
    /// data; returns the claims' directories by claim name.
    async fn start(&self, set: &StatefulSet, replicas: u32) -> Result<BTreeMap<String, PathBuf>> {
        self.api::<StatefulSet>()
            .create(&PostParams::default(), set)
            .await?;
        let mut dirs = BTreeMap::new();
        for o in 0..replicas {
            let pvc = format!("data-web-{o}");
            let dir = self.bound_claim_dir(&pvc, WAIT).await?;
            let pods = self.api::<Pod>();
            eventually(format!("web-{o} wrote its data"), WAIT, || async {
                let pod = pods.get_opt(&format!("web-{o}")).await?;
                let phase = pod
                    .as_ref()
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.clone());
                ensure!(
                    phase.as_deref() == Some("Running") && dir.join(".written").exists(),
                    "pod {phase:?}, {:?}",
                    pod.and_then(|p| p.status)
                );
                Ok(())
            })
            .await?;
            dirs.insert(pvc, dir);
        }
        Ok(dirs)
    }

    /// The drain of `pvc` (waits for drainer to make one).
    async fn drain_of(&self, pvc: &str) -> Result<String> {
        self.namespace.drain_of(&self.serve, pvc, WAIT).await
    }

    /// Waits until every drain of `ids` completed; fails at once if one ended otherwise.
    async fn completed(&self, ids: &BTreeMap<String, String>) -> Result<BTreeMap<String, Value>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut done = BTreeMap::new();
            for (pvc, id) in ids {
                let drain = self.serve.drain(id).await;
                match drain["state"].as_str().unwrap_or_default() {
                    "completed" => {
                        done.insert(pvc.clone(), drain);
                    }
                    "failed" | "cancelled" | "not_needed" => {
                        bail!(
                            "the drain of {pvc} ended {}:\n{}",
                            drain["state"],
                            history(&drain)
                        )
                    }
                    _ => {}
                }
            }
            if done.len() == ids.len() {
                return Ok(done);
            }
            if Instant::now() >= deadline {
                let mut states = Vec::new();
                for id in ids.values() {
                    states.push(history(&self.serve.drain(id).await));
                }
                bail!(
                    "{} of {} drains completed within {WAIT:?}:\n{}\ndrainer's log:\n{}",
                    done.len(),
                    ids.len(),
                    states.join("\n--\n"),
                    log_tail(&self.serve.log_path(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn finish(self) -> Result<()> {
        let Self {
            namespace, serve, ..
        } = self;
        serve.terminate(Duration::from_secs(20)).await;
        let name = format!("{}-drainer", namespace.ns);
        let params = kube::api::DeleteParams::default();
        let roles: Api<ClusterRole> = Api::all(namespace.client.clone());
        let bindings: Api<ClusterRoleBinding> = Api::all(namespace.client.clone());
        if roles.get_opt(&name).await?.is_some() {
            roles.delete(&name, &params).await?;
            bindings.delete(&name, &params).await?;
        }
        namespace.finish().await
    }
}

/// Writes a kubeconfig for the ServiceAccount `drainer` of `ns`, bound to a ClusterRole with
/// what drainer uses (`deploy/base/rbac.yaml`, more broadly) but no access to namespaces.
async fn kubeconfig_without_namespace_reads(
    client: &Client,
    ns: &str,
    path: &std::path::Path,
) -> Result<()> {
    let name = format!("{ns}-drainer");
    let all = |group: &str, resources: &[&str]| json!({"apiGroups": [group], "resources": resources, "verbs": ["*"]});
    Api::<ClusterRole>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": name},
                "rules": [
                    all("", &["pods", "persistentvolumeclaims", "persistentvolumes", "configmaps", "events"]),
                    all("apps", &["statefulsets"]),
                    all("batch", &["jobs"]),
                    all("events.k8s.io", &["events"]),
                    all("storage.k8s.io", &["volumeattachments"]),
                    all("coordination.k8s.io", &["leases"]),
                    all("authentication.k8s.io", &["tokenreviews"]),
                    all("authorization.k8s.io", &["subjectaccessreviews"])
                ]
            })),
        )
        .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": "drainer", "namespace": ns}]
            })),
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "drainer"}})),
        )
        .await?;
    let request: TokenRequest = from_json(json!({"spec": {"expirationSeconds": 3600}}));
    let token = accounts
        .create_token_request("drainer", &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("no token")?;
    let admin = std::env::var(KUBECONFIG_ENV).context(KUBECONFIG_ENV)?;
    let mut config = Kubeconfig::read_from(&admin)?;
    for user in &mut config.auth_infos {
        user.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..AuthInfo::default()
        });
    }
    std::fs::write(path, serde_json::to_vec(&config)?)?;
    // The role takes effect when the API server's authorizer sees the binding.
    let drainer =
        Client::try_from(kube::Config::from_custom_kubeconfig(config, &Default::default()).await?)?;
    eventually("the drainer account may list pods", WAIT, || async {
        Api::<Pod>::namespaced(drainer.clone(), ns)
            .list(&Default::default())
            .await?;
        Ok(())
    })
    .await?;
    let namespaces: Api<Namespace> = Api::all(drainer);
    ensure!(
        namespaces.get_opt(ns).await.is_err(),
        "the drainer account may read namespaces"
    );
    Ok(())
}

/// Scales `web` from `from` to `to` and returns the drains drainer makes for the claims of
/// the scaled-away ordinals, by claim.
async fn scale_down(w: &World, from: u32, to: u32) -> Result<BTreeMap<String, String>> {
    w.scale("web", to).await?;
    let mut ids = BTreeMap::new();
    for o in to..from {
        let pvc = format!("data-web-{o}");
        ids.insert(pvc.clone(), w.drain_of(&pvc).await?);
    }
    Ok(ids)
}

/// `enforce=baseline`, `whenScaled: Delete`, 3 → 1: root pods write files only root's
/// capabilities can read; both drains complete at their first attempt (the mover pods, uid 0
/// with only `DAC_OVERRIDE`, are admitted and read everything), the snapshots restore byte for
/// byte, the history says which identity the movers had and why, and the claims are deleted
/// once copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_namespace_movers_run_as_root_with_dac_override_and_copy_everything() -> Result<()>
{
    with_timeout(LIMIT, async {
        let w = World::new("psa-baseline", "baseline").await?;
        let set = web(
            3,
            "Delete",
            ROOT_WRITER,
            (json!({}), json!({})),
            &w.gate.url,
        );
        let dirs = w.start(&set, 3).await?;
        let kept = w.keep(&dirs)?;
        let ids = scale_down(&w, 3, 1).await?;
        let drains = w.completed(&ids).await?;
        for (pvc, drain) in &drains {
            let history = history(drain);
            ensure!(drain["attempts"] == 1, "{pvc}: {drain}");
            ensure!(
                history.contains("runs as uid 0, gid 0, only CAP_DAC_OVERRIDE")
                    && history.contains("enforces baseline:latest")
                    && history.contains("no added CAP_DAC_READ_SEARCH"),
                "{pvc}: the history does not say who the mover ran as:\n{history}"
            );
            assert_restores_exactly(&w.store(), &w.ns, pvc, &kept[pvc], &w.work).await;
        }
        // The claims were held until copied, then deleted as the StatefulSet asked.
        let claims = w.api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>();
        eventually("the drained claims deleted", WAIT, || async {
            for pvc in drains.keys() {
                ensure!(claims.get_opt(pvc).await?.is_none(), "{pvc} is still there");
            }
            Ok(())
        })
        .await?;
        ensure!(
            differences(&kept["data-web-0"], &dirs["data-web-0"]).is_empty(),
            "data-web-0 changed"
        );
        w.finish().await
    })
    .await
}

/// `enforce=restricted`, an application running as uid 1000 (fsGroup 2000) whose files are
/// 0600 and directories 0700, `whenScaled: Delete`, 2 → 1: the mover runs with the
/// application's identity from the StatefulSet's template, is admitted, and copies every file;
/// the snapshot restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_namespace_movers_run_as_the_application_and_copy_its_private_files()
-> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("psa-restricted", "restricted").await?;
        let set = web(2, "Delete", APP_WRITER, restricted_app(), &w.gate.url);
        let dirs = w.start(&set, 2).await?;
        let kept = w.keep(&dirs)?;
        // The application's files are its own: 0600 and 0700, uid 1000.
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(dirs["data-web-1"].join("private/key"))?;
            ensure!(
                meta.uid() == APP_UID as u32 && meta.mode() & 0o777 == 0o600,
                "private/key is {}:{} {:o}",
                meta.uid(),
                meta.gid(),
                meta.mode()
            );
            let meta = std::fs::metadata(dirs["data-web-1"].join("private"))?;
            ensure!(meta.mode() & 0o777 == 0o700, "private is {:o}", meta.mode());
        }
        let ids = scale_down(&w, 2, 1).await?;
        let drains = w.completed(&ids).await?;
        let drain = &drains["data-web-1"];
        let history = history(drain);
        ensure!(drain["attempts"] == 1, "{drain}");
        ensure!(
            history.contains(&format!(
                "runs as uid {APP_UID}, gid {APP_UID}, groups {APP_FS_GROUP}, no capability"
            )) && history.contains("the application's identity (StatefulSet web, container app)")
                && history.contains("enforces restricted:latest"),
            "the history does not say who the mover ran as:\n{history}"
        );
        assert_restores_exactly(
            &w.store(),
            &w.ns,
            "data-web-1",
            &kept["data-web-1"],
            &w.work,
        )
        .await;
        w.finish().await
    })
    .await
}

/// `enforce=restricted`, the same application, but one file of the claim belongs to another
/// uid (0600): the mover, running as the application, cannot read it, so the drain does not
/// complete, and its history names the file (and who the mover ran as).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_namespace_a_file_the_application_cannot_read_keeps_the_drain_from_completing()
-> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("psa-unreadable", "restricted").await?;
        let set = web(2, "Retain", APP_WRITER, restricted_app(), &w.gate.url);
        let dirs = w.start(&set, 2).await?;
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dirs["data-web-1"].join("other-owner.key");
            std::fs::write(&path, b"another user's secret\n")?;
            std::os::unix::fs::chown(&path, Some(4242), Some(4242))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        let ids = scale_down(&w, 2, 1).await?;
        let id = &ids["data-web-1"];
        let drain = eventually(
            "a failed attempt naming the unreadable file",
            WAIT,
            || async {
                let drain = w.serve.drain(id).await;
                ensure!(drain["state"] != "completed", "it completed: {drain}");
                let history = history(&drain);
                ensure!(
                    history.contains(r#""other-owner.key" (Permission denied"#),
                    "not yet:\n{history}"
                );
                Ok(drain)
            },
        )
        .await?;
        let history = history(&drain);
        ensure!(
            history.contains("1 files could not be read")
                && history.contains(&format!("the mover ran as uid {APP_UID}")),
            "{history}"
        );
        // Everything else was readable: no other file is named.
        ensure!(!history.contains("private/key"), "{history}");
        ensure!(
            w.serve.drain(id).await["state"] != "completed",
            "the drain completed without the file"
        );
        w.finish().await
    })
    .await
}

/// `enforce=baseline`, but drainer may not read namespaces (its RBAC not updated), so it
/// takes the cluster default, privileged, and builds the usual mover (uid 0 with
/// `DAC_READ_SEARCH`). PodSecurity admission refuses its pod; the attempt fails within
/// seconds, saying why, and the next mover of the namespace is built for the policy the
/// refusal names (uid 0 with `DAC_OVERRIDE`): the drain completes at its second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_refused_by_pod_security_is_built_again_for_the_policy_the_refusal_names()
-> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::without_namespace_reads("psa-refused", "baseline").await?;
        let set = web(
            2,
            "Retain",
            ROOT_WRITER,
            (json!({}), json!({})),
            &w.gate.url,
        );
        let dirs = w.start(&set, 2).await?;
        let ids = scale_down(&w, 2, 1).await?;
        let drains = w.completed(&ids).await?;
        let drain = &drains["data-web-1"];
        let history = history(drain);
        ensure!(drain["attempts"] == 2, "{history}");
        let entries: Vec<&Value> = drain["history"].as_array().into_iter().flatten().collect();
        let message = |i: usize| entries[i]["message"].as_str().unwrap_or_default();
        let first = entries
            .iter()
            .position(|e| e["state"] == "copying")
            .context("no attempt")?;
        ensure!(
            message(first).contains("only CAP_DAC_READ_SEARCH")
                && message(first).contains("its labels cannot be read"),
            "{history}"
        );
        ensure!(
            entries[first + 1]["state"] == "queued"
                && message(first + 1).contains(r#"violates PodSecurity "baseline:latest""#),
            "{history}"
        );
        let refused_after = entries[first + 1]["at_ms"].as_i64().unwrap_or(0)
            - entries[first]["at_ms"].as_i64().unwrap_or(0);
        ensure!(
            refused_after < 30_000,
            "the refusal took {refused_after} ms to fail the attempt"
        );
        ensure!(
            message(first + 2).contains("only CAP_DAC_OVERRIDE")
                && message(first + 2)
                    .contains(r#"a mover pod was refused under PodSecurity "baseline:latest""#),
            "{history}"
        );
        assert_restores_exactly(
            &w.store(),
            &w.ns,
            "data-web-1",
            &dirs["data-web-1"],
            &w.work,
        )
        .await;
        w.finish().await
    })
    .await
}
