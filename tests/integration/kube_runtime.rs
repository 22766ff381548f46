//! Proves that kube-env's nodes run pods for real (`tests/kube-env/runtime.go`): containers as
//! processes with their volumes, a pod network with Services and cluster DNS, ServiceAccount
//! tokens issued by the API server, lifecycle hooks, signals and grace periods, and OCI images.
//! drainer's Kubernetes mode (handoffs from terminating pods, mover Jobs) is tested on top of it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    authentication::v1::{TokenReview, TokenReviewStatus},
    authorization::v1::SubjectAccessReview,
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::{Value, json};

use crate::support::image::{copy_with_libraries, kube_in_pod_image, oci_layout};
use crate::support::kube::{
    KubeEnv, client, create_namespace, delete_namespace, eventually, from_json, pod_phase,
    pod_ready, processes_with_env, wait_for_bound_claim, wait_for_pod_gone, wait_for_pod_phase,
    with_timeout,
};

/// How long one test may take in all: a guard against a hung test, not a timing target, so
/// generous enough for a shared two-core machine running other cluster tests beside it.
const TEST_LIMIT: Duration = Duration::from_secs(480);
const WAIT: Duration = Duration::from_secs(90);

/// The admin client, the instance's facts and a fresh namespace; fails at once, with the
/// reason, if kube-env is not running or runs without the process pod runtime.
async fn setup(prefix: &str) -> Result<(Client, KubeEnv, String)> {
    let client = client().await?;
    let env = KubeEnv::load()?;
    let ns = create_namespace(&client, prefix).await?;
    Ok((client, env, ns))
}

/// Creates a pod; the ServiceAccount admission plugin may not see a new account at once.
async fn create_pod(pods: &Api<Pod>, pod: Value) -> Result<Pod> {
    let pod: Pod = from_json(pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    eventually(format!("pod {name} created"), WAIT, || async {
        Ok(pods.create(&PostParams::default(), &pod).await?)
    })
    .await
}

fn terminated_exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

async fn wait_for_ready(pods: &Api<Pod>, name: &str) -> Result<Pod> {
    eventually(format!("pod {name} Ready"), WAIT, || async {
        let pod = pods.get(name).await?;
        ensure!(pod_ready(&pod), "status is {:?}", pod.status);
        Ok(pod)
    })
    .await
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

// A StatefulSet pod that records its life in its volume: its name (through the kubelet's
// $(POD_NAME) expansion), then the SIGTERM it traps, and only then exits.
const RECORDER: &str = r#"printf '%s' "$(POD_NAME)" > /data/name
echo started >> /data/events
trap 'echo sigterm >> /data/events; sleep 1; echo exiting >> /data/events; exit 0' TERM
while true; do sleep 0.2; done"#;

#[tokio::test]
async fn statefulset_scale_down_runs_pre_stop_then_sigterm_and_keeps_each_pods_data() -> Result<()>
{
    with_timeout(TEST_LIMIT, async {
        let (client, _, ns) = setup("kube-rt-sts").await?;
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let marker = format!("KUBE_RUNTIME_TEST={ns}");
        sets.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": "web" },
            "spec": {
                "replicas": 3,
                "serviceName": "web",
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": {
                        "terminationGracePeriodSeconds": 20,
                        "containers": [{
                            "name": "app",
                            "image": "registry.invalid/recorder:1",
                            "command": ["sh", "-c", RECORDER],
                            "env": [
                                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                                { "name": "KUBE_RUNTIME_TEST", "value": ns },
                            ],
                            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                            "readinessProbe": { "exec": { "command": ["test", "-s", "/data/name"] }, "periodSeconds": 1 },
                            "lifecycle": { "preStop": { "exec": {
                                "command": ["sh", "-c", "echo prestop >> /data/events; sleep 1"]
                            } } }
                        }]
                    }
                },
                "volumeClaimTemplates": [{
                    "metadata": { "name": "data" },
                    "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "16Mi" } } }
                }]
            }
        }))).await?;
        for n in 0..3 {
            wait_for_ready(&pods, &format!("web-{n}")).await?;
        }
        let mut dirs = Vec::new();
        for n in 0..3 {
            let dir = wait_for_bound_claim(&client, &ns, &format!("data-web-{n}"), WAIT).await?;
            ensure!(
                std::fs::read_to_string(dir.join("name"))? == format!("web-{n}"),
                "data-web-{n} holds {:?}",
                std::fs::read_to_string(dir.join("name"))
            );
            dirs.push(dir);
        }
        for n in 0..3 {
            let pod_env = format!("POD_NAME=web-{n}");
            ensure!(
                !processes_with_env(&[&marker, &pod_env]).is_empty(),
                "no process of web-{n} on this machine"
            );
        }

        // Watch from now on: the moment each pod object goes, its processes must be gone.
        let rv = pods
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("no resourceVersion")?;
        let mut events = pods
            .watch(&WatchParams::default().timeout(120), &rv)
            .await?
            .boxed();
        sets.patch("web", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "replicas": 1 } })))
            .await?;
        let mut gone = Vec::new();
        tokio::time::timeout(WAIT, async {
            while gone.len() < 2 {
                match events.try_next().await? {
                    Some(WatchEvent::Deleted(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let n: usize = name.trim_start_matches("web-").parse()?;
                        let pod_env = format!("POD_NAME={name}");
                        let left = processes_with_env(&[&marker, &pod_env]);
                        ensure!(left.is_empty(), "{name} was removed while its processes {left:?} still ran");
                        let recorded = lines(&dirs[n].join("events"));
                        ensure!(
                            recorded == ["started", "prestop", "sigterm", "exiting"],
                            "{name} recorded {recorded:?} when its object went"
                        );
                        gone.push(name);
                    }
                    Some(WatchEvent::Error(e)) => bail!("watch error: {e:?}"),
                    Some(_) => {}
                    None => bail!("watch ended early"),
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| anyhow!("scaled-down pods not gone within {WAIT:?}; gone so far: {gone:?}"))??;
        // OrderedReady: the highest ordinal first.
        ensure!(gone == ["web-2", "web-1"], "pods went in the order {gone:?}");

        wait_for_ready(&pods, "web-0").await?;
        ensure!(lines(&dirs[0].join("events")) == ["started"], "web-0 was disturbed");
        for (n, dir) in dirs.iter().enumerate() {
            ensure!(std::fs::read_to_string(dir.join("name"))? == format!("web-{n}"));
        }
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        for n in 1..3 {
            let pvc = pvcs.get(&format!("data-web-{n}")).await?;
            ensure!(pvc.status.and_then(|s| s.phase).as_deref() == Some("Bound"));
        }
        delete_namespace(&client, &ns).await
    })
    .await
}

fn copy_job(name: &str, script: &str, extra: Value) -> Job {
    let mut job = json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 2,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "mover",
                        "image": "registry.invalid/mover:1",
                        "command": ["sh", "-c", script],
                        "volumeMounts": [
                            { "name": "source", "mountPath": "/src", "readOnly": true },
                            { "name": "dest", "mountPath": "/dst" }
                        ]
                    }],
                    "volumes": [
                        { "name": "source", "persistentVolumeClaim": { "claimName": "source" } },
                        { "name": "dest", "persistentVolumeClaim": { "claimName": "dest" } }
                    ]
                }
            }
        }
    });
    if let (Some(spec), Value::Object(extra)) = (job["spec"].as_object_mut(), extra) {
        spec.extend(extra);
    }
    from_json(job)
}

async fn create_claim(client: &Client, ns: &str, name: &str) -> Result<PathBuf> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    pvcs.create(&PostParams::default(), &from_json(json!({
        "metadata": { "name": name },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "16Mi" } } }
    })))
    .await?;
    wait_for_bound_claim(client, ns, name, WAIT).await
}

async fn wait_for_job_condition(jobs: &Api<Job>, job: &str, condition: &str) -> Result<Job> {
    eventually(format!("Job {job} condition {condition}"), WAIT, || async {
        let job = jobs.get_status(job).await?;
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        ensure!(
            conditions
                .iter()
                .any(|c| c.type_ == condition && c.status == "True"),
            "conditions are {conditions:?}"
        );
        Ok(job)
    })
    .await
}

#[tokio::test]
async fn job_pod_copies_from_a_claim_mounted_read_only() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, _, ns) = setup("kube-rt-job").await?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let source = create_claim(&client, &ns, "source").await?;
        let dest = create_claim(&client, &ns, "dest").await?;
        std::fs::write(source.join("payload"), b"the volume's data")?;

        let script = "cp /src/payload /dst/payload || exit 1\n\
                      if touch /src/written 2>/dev/null; then echo 'the read-only mount is writable'; exit 9; fi";
        jobs.create(&PostParams::default(), &copy_job("copy", script, json!({}))).await?;
        let job = wait_for_job_condition(&jobs, "copy", "Complete").await?;
        let status = job.status.unwrap_or_default();
        ensure!(status.succeeded == Some(1) && status.failed.unwrap_or(0) == 0, "status is {status:?}");
        ensure!(std::fs::read(dest.join("payload"))? == b"the volume's data");
        ensure!(!source.join("written").exists(), "the pod wrote into its read-only volume");
        delete_namespace(&client, &ns).await
    })
    .await
}

/// What a probe pod could read of the files `security_context_…` lays out, and its
/// credentials, as its log says.
const PROBE: &str = r#"p() { if "$@" >/dev/null 2>&1; then printf yes; else printf no; fi; }
echo "secret=$(p cat /data/secret) group=$(p cat /data/group) private=$(p ls /data/private) deep=$(p cat /data/private/inner) zero=$(p cat /data/zero)"
grep -E '^(Uid|Gid|Groups|CapEff):' /proc/self/status
"#;

/// The modes and owners a container's credentials are checked against (made as root here).
fn lay_out_owned_files(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, chown};
    let file = |name: &str, uid: u32, gid: u32, mode: u32| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, name.as_bytes())?;
        chown(&path, Some(uid), Some(gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    file("secret", 1234, 1234, 0o600)?;
    file("group", 4321, 5678, 0o640)?;
    file("zero", 1234, 1234, 0o000)?;
    std::fs::create_dir(dir.join("private"))?;
    file("private/inner", 1234, 1234, 0o600)?;
    chown(dir.join("private"), Some(1234), Some(1234))?;
    std::fs::set_permissions(dir.join("private"), std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// `uid gid mode` of `path` (mode in octal, with the setgid bit).
fn owner_and_mode(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(format!(
        "{} {} {:o}",
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    ))
}

#[tokio::test]
async fn security_context_sets_the_containers_user_groups_and_capabilities() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-security").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let data = create_claim(&client, &ns, "data").await?;
        let out = create_claim(&client, &ns, "out").await?;
        lay_out_owned_files(&data)?;
        lay_out_owned_files(&out)?;
        let before = owner_and_mode(&data.join("secret"))?;
        let caps = |add: &[&str]| json!({ "capabilities": { "drop": ["ALL"], "add": add } });
        let defaults = "00000000a80425fb"; // containerd's (Docker's) default capabilities
        // (pod, pod securityContext, container securityContext, what it reads, CapEff)
        let cases = [
            ("root-default", json!({}), json!({}), "yes yes yes yes yes", defaults),
            ("root-none", json!({}), caps(&[]), "no no no no no", "0000000000000000"),
            ("root-dac-override", json!({}), caps(&["DAC_OVERRIDE"]), "yes yes yes yes yes", "0000000000000002"),
            ("root-read-search", json!({}), caps(&["CAP_DAC_READ_SEARCH"]), "yes yes yes yes yes", "0000000000000004"),
            ("owner", json!({ "runAsUser": 1234, "runAsGroup": 1234 }), caps(&[]), "yes no yes yes no", "0000000000000000"),
            ("group-member", json!({ "runAsUser": 1000, "supplementalGroups": [5678] }), json!({}), "no yes no no no", "0000000000000000"),
            ("fs-group-read-only", json!({ "runAsUser": 1000, "fsGroup": 5678 }), json!({}), "no yes no no no", "0000000000000000"),
            ("non-root-with-a-capability", json!({ "runAsUser": 1000 }), caps(&["DAC_OVERRIDE"]), "no no no no no", "0000000000000000"),
            ("privileged", json!({}), json!({ "privileged": true }), "yes yes yes yes yes", ""),
        ];
        for (name, pod_context, context, _, _) in &cases {
            create_pod(&pods, json!({
                "metadata": { "name": name },
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": pod_context,
                    "containers": [{
                        "name": "main", "image": "registry.invalid/app:1", "command": ["sh", "-c", PROBE],
                        "securityContext": context,
                        "volumeMounts": [{ "name": "data", "mountPath": "/data", "readOnly": true }]
                    }],
                    "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data", "readOnly": true } }]
                }
            }))
            .await?;
        }
        for (name, pod_context, _, reads, cap_eff) in cases {
            let done = wait_for_pod_phase(&pods, name, &["Succeeded", "Failed"], WAIT).await?;
            let log = env.container_log(&done, "main")?;
            let [secret, group, private, deep, zero] = reads.split(' ').collect::<Vec<_>>()[..] else {
                bail!("bad case {reads}");
            };
            let wanted = format!("secret={secret} group={group} private={private} deep={deep} zero={zero}");
            ensure!(log.lines().next() == Some(wanted.as_str()), "{name}: {log}");
            let field = |key: &str| {
                log.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if !cap_eff.is_empty() {
                ensure!(field("CapEff:") == [cap_eff], "{name}: {log}");
            }
            let uid = pod_context["runAsUser"].as_i64().unwrap_or(0).to_string();
            ensure!(field("Uid:").iter().all(|u| *u == uid), "{name}: {log}");
            for group in pod_context["supplementalGroups"].as_array().into_iter().flatten().chain(pod_context.get("fsGroup")) {
                ensure!(field("Groups:").contains(&group.to_string().as_str()), "{name}: {log}");
            }
        }
        // An fsGroup changes nothing on a read-only claim.
        ensure!(owner_and_mode(&data.join("secret"))? == before, "the read-only claim's ownership changed");

        // On a writable claim, an fsGroup gives every file to the group, group-readable and
        // -writable, directories setgid, as the kubelet does (fsGroupChangePolicy Always).
        create_pod(&pods, json!({
            "metadata": { "name": "fs-group-writable" },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": { "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 7777 },
                "containers": [{
                    "name": "main", "image": "registry.invalid/app:1",
                    "command": ["sh", "-c", "cat /out/secret /out/group && umask 077 && echo new > /out/made"],
                    "volumeMounts": [{ "name": "out", "mountPath": "/out" }]
                }],
                "volumes": [{ "name": "out", "persistentVolumeClaim": { "claimName": "out" } }]
            }
        }))
        .await?;
        let done = wait_for_pod_phase(&pods, "fs-group-writable", &["Succeeded", "Failed"], WAIT).await?;
        let log = env.container_log(&done, "main")?;
        ensure!(pod_phase(&done) == Some("Succeeded"), "status {:?}, log {log:?}", done.status);
        ensure!(log == "secretgroup", "log {log:?}");
        for (path, wanted) in [
            (out.clone(), "0 7777 2777"),
            (out.join("secret"), "1234 7777 660"),
            (out.join("group"), "4321 7777 660"),
            (out.join("zero"), "1234 7777 660"),
            (out.join("private"), "1234 7777 2770"),
            (out.join("private/inner"), "1234 7777 660"),
            // Made after the change: the group by the setgid directory, the mode its own.
            (out.join("made"), "1000 7777 600"),
        ] {
            ensure!(owner_and_mode(&path)? == wanted, "{}: {}", path.display(), owner_and_mode(&path)?);
        }
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn job_pod_exiting_3_fails_the_job_with_that_exit_code() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-job-fail").await?;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        create_claim(&client, &ns, "source").await?;
        create_claim(&client, &ns, "dest").await?;

        // The Job controller acts on the exit code the kubelet reported: exit code 3 fails the
        // Job at once, although backoffLimit would allow retries.
        let policy = json!({ "podFailurePolicy": { "rules": [{
            "action": "FailJob",
            "onExitCodes": { "containerName": "mover", "operator": "In", "values": [3] }
        }] } });
        jobs.create(
            &PostParams::default(),
            &copy_job("doomed", "echo giving up >&2; exit 3", policy),
        )
        .await?;
        let job = wait_for_job_condition(&jobs, "doomed", "Failed").await?;
        let status = job.status.unwrap_or_default();
        let failed = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed")
            .context("no Failed condition")?;
        ensure!(
            failed.reason.as_deref() == Some("PodFailurePolicy"),
            "failed as {failed:?}"
        );
        ensure!(
            failed
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("exit code 3"),
            "failed as {failed:?}"
        );
        ensure!(status.failed == Some(1), "failed pods: {:?}", status.failed);
        let list = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=doomed"))
            .await?;
        ensure!(list.items.len() == 1, "{} pods", list.items.len());
        let pod = &list.items[0];
        ensure!(
            pod_phase(pod) == Some("Failed"),
            "pod phase {:?}",
            pod_phase(pod)
        );
        ensure!(
            terminated_exit_code(pod) == Some(3),
            "pod status {:?}",
            pod.status
        );
        let log = env.container_log(pod, "mover")?;
        ensure!(log == "giving up\n", "log is {log:?}");
        delete_namespace(&client, &ns).await
    })
    .await
}

async fn review(client: &Client, token: &str, audience: &str) -> Result<TokenReviewStatus> {
    let review: TokenReview =
        from_json(json!({ "spec": { "token": token, "audiences": [audience] } }));
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    reviewed.status.context("TokenReview has no status")
}

#[tokio::test]
async fn projected_token_passes_token_review_from_inside_the_pod_until_the_pod_is_deleted()
-> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-token").await?;
        let helper = kube_in_pod_image(&env).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        sas.create(&PostParams::default(), &from_json(json!({ "metadata": { "name": "app" } }))).await?;
        // TokenReview needs this right (as a drainer's ServiceAccount will have).
        let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
        let crb = format!("{ns}-token-review");
        crbs.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": crb },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator" },
            "subjects": [{ "kind": "ServiceAccount", "name": "app", "namespace": ns }]
        }))).await?;

        // The in-cluster client reviews the pod's token (an init container of its image), then
        // the application prints the token and runs on.
        let mount = json!({ "name": "drainer-token", "mountPath": "/var/run/secrets/drainer", "readOnly": true });
        let pod = create_pod(&pods, json!({
            "metadata": { "name": "web-4" },
            "spec": {
                "serviceAccountName": "app",
                "terminationGracePeriodSeconds": 1,
                "initContainers": [{
                    "name": "review",
                    "image": helper,
                    "args": ["token-review", "/var/run/secrets/drainer/token", "drainer"],
                    "volumeMounts": [mount]
                }],
                "containers": [{
                    "name": "app",
                    "image": "registry.invalid/web:1",
                    "command": ["sh", "-c", "cat /var/run/secrets/drainer/token && echo && exec sleep 3600"],
                    "volumeMounts": [mount]
                }],
                "volumes": [{ "name": "drainer-token", "projected": { "sources": [
                    { "serviceAccountToken": { "audience": "drainer", "expirationSeconds": 600, "path": "token" } }
                ] } }]
            }
        })).await?;
        let uid = pod.metadata.uid.clone().context("pod has no uid")?;
        let (status, token) = eventually("the pod's review and token in its logs", WAIT, || async {
            let review = env.container_log(&pod, "review")?;
            let log = env.container_log(&pod, "app")?;
            let (Some(status), Some(token)) = (review.lines().next(), log.lines().next()) else {
                bail!("logs so far: review {review:?}, app {log:?}");
            };
            let status: TokenReviewStatus = serde_json::from_str(status).with_context(|| format!("review log: {review:?}"))?;
            Ok((status, token.to_owned()))
        })
        .await?;
        ensure!(status.authenticated == Some(true), "review from inside the pod: {status:?}");
        let user = status.user.context("no user")?;
        ensure!(user.username.as_deref() == Some(&*format!("system:serviceaccount:{ns}:app")), "user is {user:?}");
        let extra = user.extra.unwrap_or_default();
        ensure!(extra.get("authentication.kubernetes.io/pod-name") == Some(&vec!["web-4".to_owned()]), "extra is {extra:?}");
        ensure!(extra.get("authentication.kubernetes.io/pod-uid") == Some(&vec![uid.clone()]), "extra is {extra:?}");
        ensure!(status.audiences.unwrap_or_default() == ["drainer"], "audiences");

        pods.delete("web-4", &DeleteParams::default()).await?;
        wait_for_pod_gone(&pods, "web-4", WAIT).await?;
        // Not at once: kube-apiserver caches successful token authentications for 10 s.
        eventually("the deleted pod's token to be refused", WAIT, || async {
            let status = review(&client, &token, "drainer").await?;
            ensure!(status.authenticated != Some(true), "token of a deleted pod accepted: {status:?}");
            Ok(())
        })
        .await?;
        crbs.delete(&crb, &DeleteParams::default()).await?;
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn in_cluster_client_lists_pods_only_with_a_role_binding() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-rbac").await?;
        let helper = kube_in_pod_image(&env).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        sas.create(&PostParams::default(), &from_json(json!({ "metadata": { "name": "lister" } }))).await?;
        let lister = |name: &str| json!({
            "metadata": { "name": name },
            "spec": {
                "serviceAccountName": "lister",
                "restartPolicy": "Never",
                "containers": [{ "name": "client", "image": helper, "args": ["list-pods"] }]
            }
        });

        create_pod(&pods, lister("before")).await?;
        let before = wait_for_pod_phase(&pods, "before", &["Succeeded", "Failed"], WAIT).await?;
        let log = env.container_log(&before, "client")?;
        ensure!(terminated_exit_code(&before) == Some(3), "without a RoleBinding: exit {:?}, log {log:?}", terminated_exit_code(&before));
        ensure!(log.contains("forbidden") && log.contains(&format!("system:serviceaccount:{ns}:lister")), "log is {log:?}");

        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        roles.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": "pod-reader" },
            "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }]
        }))).await?;
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        bindings.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": "lister-reads-pods" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
            "subjects": [{ "kind": "ServiceAccount", "name": "lister", "namespace": ns }]
        }))).await?;
        // The authorizer works from a cache; ask it before starting the pod.
        let sar: SubjectAccessReview = from_json(json!({ "spec": {
            "user": format!("system:serviceaccount:{ns}:lister"),
            "resourceAttributes": { "namespace": ns, "verb": "list", "resource": "pods" }
        } }));
        eventually("the RoleBinding to take effect", WAIT, || async {
            let reviewed = Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &sar).await?;
            ensure!(reviewed.status.is_some_and(|s| s.allowed), "not yet allowed");
            Ok(())
        })
        .await?;

        create_pod(&pods, lister("after")).await?;
        let after = wait_for_pod_phase(&pods, "after", &["Succeeded", "Failed"], WAIT).await?;
        let log = env.container_log(&after, "client")?;
        ensure!(pod_phase(&after) == Some("Succeeded"), "with the RoleBinding: {:?}, log {log:?}", after.status);
        ensure!(log.trim() == format!("pods in {ns}: after before"), "log is {log:?}");
        delete_namespace(&client, &ns).await
    })
    .await
}

const HTTP_SERVER: &str = r#"import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["HOSTNAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

// Fetches each URL once and prints "URL BODY" or "URL ERROR ..."; with EXPECT set, keeps
// fetching the one URL given until every expected body was seen (or 30 s passed).
const HTTP_CLIENT: &str = r#"import os, sys, time, urllib.request
def get(u):
    try:
        return urllib.request.urlopen(u, timeout=3).read().decode()
    except Exception as e:
        return "ERROR " + str(e)
expect = set(os.environ.get("EXPECT", "").split())
if expect:
    seen, deadline = set(), time.time() + 30
    while time.time() < deadline and seen != expect:
        body = get(sys.argv[1])
        if not body.startswith("ERROR"):
            seen.add(body)
    print("seen " + " ".join(sorted(seen)))
else:
    for u in sys.argv[1:]:
        print(u + " " + get(u), flush=True)
"#;

/// Runs a client pod to completion and returns its output.
async fn run_client(
    pods: &Api<Pod>,
    env: &KubeEnv,
    name: &str,
    expect: &str,
    urls: &[String],
) -> Result<String> {
    let mut command = vec![
        "python3".to_owned(),
        "-c".to_owned(),
        HTTP_CLIENT.to_owned(),
    ];
    command.extend(urls.iter().cloned());
    create_pod(
        pods,
        json!({
            "metadata": { "name": name },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "client", "image": "registry.invalid/client:1", "command": command,
                    "env": [{ "name": "EXPECT", "value": expect }]
                }]
            }
        }),
    )
    .await?;
    let pod = wait_for_pod_phase(pods, name, &["Succeeded", "Failed"], WAIT).await?;
    let log = env.container_log(&pod, "client")?;
    ensure!(
        pod_phase(&pod) == Some("Succeeded"),
        "client {name} failed: {log}"
    );
    Ok(log)
}

#[tokio::test]
async fn pods_reach_each_other_by_ip_and_through_a_service_once_ready() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-net").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        // The test makes each server ready by creating a file in this directory.
        let control = tempfile::tempdir()?;
        let svc = services.create(&PostParams::default(), &from_json(json!({
            "metadata": { "name": "web" },
            "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] }
        }))).await?;
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).context("no ClusterIP")?;
        for name in ["a", "b"] {
            create_pod(&pods, json!({
                "metadata": { "name": name, "labels": { "app": "web" } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web", "image": "registry.invalid/web:1",
                        "command": ["python3", "-c", HTTP_SERVER],
                        "ports": [{ "containerPort": 8080 }],
                        "readinessProbe": {
                            "exec": { "command": ["sh", "-c", "test -f /control/ready-$HOSTNAME"] },
                            "periodSeconds": 1, "failureThreshold": 1
                        },
                        "volumeMounts": [{ "name": "control", "mountPath": "/control" }]
                    }],
                    "volumes": [{ "name": "control", "hostPath": { "path": control.path(), "type": "Directory" } }]
                }
            })).await?;
        }
        let mut ips = Vec::new();
        for name in ["a", "b"] {
            let pod = wait_for_pod_phase(&pods, name, &["Running"], WAIT).await?;
            ensure!(!pod_ready(&pod), "{name} is Ready before its probe passed");
            ips.push(pod.status.and_then(|s| s.pod_ip).context("no pod IP")?);
        }
        ensure!(ips[0] != ips[1], "both pods have IP {}", ips[0]);

        // Both listen on 0.0.0.0:8080, each in its own network namespace; neither is Ready, so
        // the Service has no endpoint yet.
        let urls = vec![
            format!("http://{}:8080/", ips[0]),
            format!("http://{}:8080/", ips[1]),
            "http://web/".to_owned(),
            format!("http://{cluster_ip}/"),
        ];
        let out = run_client(&pods, &env, "client-1", "", &urls).await?;
        let got: Vec<&str> = out.lines().collect();
        ensure!(got.len() == 4, "client-1 said {out:?}");
        ensure!(got[0] == format!("{} a", urls[0]) && got[1] == format!("{} b", urls[1]), "by pod IP: {out:?}");
        ensure!(got[2].starts_with("http://web/ ERROR") && got[3].contains(" ERROR"), "a Service without ready endpoints answered: {out:?}");

        std::fs::write(control.path().join("ready-a"), b"")?;
        wait_for_ready(&pods, "a").await?;
        for (i, url) in [format!("http://web.{ns}.svc/"), format!("http://{cluster_ip}/"), "http://web/".to_owned()].into_iter().enumerate() {
            // Wait until kube-proxy routes to a, then make sure only a answers.
            let out = run_client(&pods, &env, &format!("client-2-{i}"), "a", std::slice::from_ref(&url)).await?;
            ensure!(out.trim() == "seen a", "{url}: {out:?}");
            let out = run_client(&pods, &env, &format!("client-3-{i}"), "", &vec![url.clone(); 8]).await?;
            ensure!(out.lines().all(|l| l == format!("{url} a")), "only a is ready, yet {url} gave {out:?}");
        }

        std::fs::write(control.path().join("ready-b"), b"")?;
        wait_for_ready(&pods, "b").await?;
        let url = format!("http://web.{ns}.svc.cluster.local/");
        let out = run_client(&pods, &env, "client-4", "a b", std::slice::from_ref(&url)).await?;
        ensure!(out.trim() == "seen a b", "{url}: {out:?}");
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn pods_reach_a_server_on_this_machine_at_the_host_address() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-host").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // A server of the test, on all of this machine's addresses, as `drainer serve` would be.
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nthe-tes",
                    )
                    .await;
            }
        });
        let urls = vec![
            format!("http://{}:{port}/", env.host_ip),
            format!("http://host.kube-env.internal:{port}/"),
        ];
        let out = run_client(&pods, &env, "client", "", &urls).await?;
        server.abort();
        for url in &urls {
            ensure!(out.contains(&format!("{url} the-tes")), "{url}: {out:?}");
        }
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn grace_period_ends_in_sigkill_and_no_process_outlives_its_pod() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, _, ns) = setup("kube-rt-kill").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let marker = format!("KUBE_RUNTIME_TEST={ns}");
        let pod = |name: &str, grace: i64, script: &str| json!({
            "metadata": { "name": name },
            "spec": {
                "terminationGracePeriodSeconds": grace,
                "containers": [{
                    "name": "main", "image": "registry.invalid/app:1", "command": ["sh", "-c", script],
                    "env": [{ "name": "KUBE_RUNTIME_TEST", "value": ns }, { "name": "POD", "value": name }]
                }]
            }
        });
        // Ignores SIGTERM; PID 1 of its container.
        create_pod(&pods, pod("stubborn", 2, "trap '' TERM; while :; do sleep 0.1; done")).await?;
        // Leaves children behind, one of them in its own session.
        create_pod(&pods, pod("forker", 30,
            "sleep 1000 & sleep 1000 & setsid sleep 1000 & trap 'exit 0' TERM; while :; do sleep 0.1; done")).await?;
        create_pod(&pods, pod("forced", 30, "trap '' TERM; sleep 1000 & while :; do sleep 0.1; done")).await?;
        for name in ["stubborn", "forker", "forced"] {
            wait_for_pod_phase(&pods, name, &["Running"], WAIT).await?;
        }
        let procs = |name: &str| processes_with_env(&[&marker, &format!("POD={name}")]);
        eventually("forker's children running", WAIT, || async {
            ensure!(procs("forker").len() >= 4, "processes {:?}", procs("forker"));
            Ok(())
        })
        .await?;

        let deleted = Instant::now();
        pods.delete("stubborn", &DeleteParams::default()).await?;
        wait_for_pod_gone(&pods, "stubborn", WAIT).await?;
        let took = deleted.elapsed();
        ensure!(took >= Duration::from_millis(1900), "stubborn went after {took:?}, before its 2 s grace period");
        ensure!(took < Duration::from_secs(10), "stubborn took {took:?} to be killed");
        ensure!(procs("stubborn").is_empty(), "stubborn left {:?}", procs("stubborn"));

        pods.delete("forker", &DeleteParams::default()).await?;
        wait_for_pod_gone(&pods, "forker", WAIT).await?;
        ensure!(procs("forker").is_empty(), "forker's children survived: {:?}", procs("forker"));

        // kubectl delete --grace-period=0 --force: the object goes at once, the processes soon.
        pods.delete("forced", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await?;
        ensure!(pods.get_opt("forced").await?.is_none(), "forced still exists");
        eventually("forced's processes gone", Duration::from_secs(10), || async {
            ensure!(procs("forced").is_empty(), "left {:?}", procs("forced"));
            Ok(())
        })
        .await?;
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn on_failure_restarts_with_back_off_until_the_container_succeeds() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-restart").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // Fails twice, then succeeds; the count survives restarts in an emptyDir.
        let script = "n=$(cat /state/runs 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /state/runs; \
                      echo run $n; [ $n -ge 3 ]";
        let pod = create_pod(&pods, json!({
            "metadata": { "name": "flaky" },
            "spec": {
                "restartPolicy": "OnFailure",
                "containers": [{
                    "name": "main", "image": "registry.invalid/app:1", "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "state", "mountPath": "/state" }]
                }],
                "volumes": [{ "name": "state", "emptyDir": {} }]
            }
        }))
        .await?;
        let started = Instant::now();
        let done = wait_for_pod_phase(&pods, "flaky", &["Succeeded", "Failed"], WAIT).await?;
        let took = started.elapsed();
        ensure!(pod_phase(&done) == Some("Succeeded"), "status {:?}", done.status);
        let status = done
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .context("no container status")?;
        ensure!(status.restart_count == 2, "restartCount {}", status.restart_count);
        let last = status.last_state.and_then(|s| s.terminated).context("no lastState")?;
        ensure!(last.exit_code == 1, "lastState {last:?}");
        // The kubelet's back-off: the first restart at once, the second after 10 s.
        ensure!(took >= Duration::from_secs(9), "restarted twice within {took:?}");
        let log = env.container_log(&pod, "main")?;
        ensure!(log == "run 1\nrun 2\nrun 3\n", "log {log:?}");
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn pod_waits_in_container_creating_until_its_claim_exists() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-claim").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // Bound to a node directly: the scheduler would not place a pod whose claim is missing.
        let pod = create_pod(&pods, json!({
            "metadata": { "name": "waiting" },
            "spec": {
                "nodeName": "kube-env-node-1",
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main", "image": "registry.invalid/app:1", "command": ["sh", "-c", "cat /data/hello"],
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }]
                }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "later" } }]
            }
        }))
        .await?;
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
        eventually("a FailedMount event naming the claim", WAIT, || async {
            let list = events.list(&ListParams::default().fields("involvedObject.name=waiting,reason=FailedMount")).await?;
            let messages: Vec<String> = list.items.into_iter().filter_map(|e| e.message).collect();
            ensure!(
                messages.iter().any(|m| m.contains(r#"persistentvolumeclaim "later" not found"#)),
                "events: {messages:?}"
            );
            Ok(())
        })
        .await?;
        // The kubelet records the event before its next status update: wait for the status.
        eventually("the pod reported Pending in ContainerCreating", WAIT, || async {
            let pod_now = pods.get("waiting").await?;
            let waiting = pod_now
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone());
            ensure!(
                pod_phase(&pod_now) == Some("Pending") && waiting.as_deref() == Some("ContainerCreating"),
                "status is {:?}",
                pod_now.status
            );
            Ok(())
        })
        .await?;

        let dir = create_claim(&client, &ns, "later").await?;
        std::fs::write(dir.join("hello"), b"bound at last\n")?;
        let done = wait_for_pod_phase(&pods, "waiting", &["Succeeded", "Failed"], WAIT).await?;
        let log = env.container_log(&pod, "main")?;
        ensure!(pod_phase(&done) == Some("Succeeded") && log == "bound at last\n", "status {:?}, log {log:?}", done.status);
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn oci_image_runs_chrooted_with_its_own_files_and_its_volumes() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-image").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

        let work = tempfile::tempdir()?;
        let tree = work.path().join("tree");
        copy_with_libraries(Path::new("/bin/sh"), &tree, None)?;
        copy_with_libraries(Path::new("/bin/cat"), &tree, None)?;
        std::fs::create_dir_all(tree.join("etc"))?;
        std::fs::write(tree.join("etc/image-marker"), b"from the image\n")?;
        std::fs::create_dir_all(tree.join("srv/app"))?;
        let layout = work.path().join("layout");
        std::fs::create_dir_all(&layout)?;
        // No command in the pod: the image's entrypoint and cmd run, in its working directory,
        // with its environment.
        let script = "cat /etc/image-marker; echo \"cwd=$(pwd) from=$FROM\"; cat /data/from-volume; \
                      for f in /*; do echo \"root has $f\"; done; \
                      if [ -e /usr/bin/python3 ]; then echo 'sees this machine'; fi";
        oci_layout(&tree, &layout, json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/bin/sh", "-c"], "Cmd": [script],
                "Env": ["PATH=/bin", "FROM=image-config"], "WorkingDir": "/srv/app"
            }
        }))?;
        // As the project ships images: a tar of the layout.
        let tarball = work.path().join("static.oci.tar");
        let status = std::process::Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tarball).arg(".").status()?;
        ensure!(status.success(), "tar of the layout failed");
        env.register_image("kube-env-test/static:1", &tarball).await?;

        let data = create_claim(&client, &ns, "data").await?;
        std::fs::write(data.join("from-volume"), b"from the volume\n")?;
        create_pod(&pods, json!({
            "metadata": { "name": "static" },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "app", "image": "kube-env-test/static:1",
                    "volumeMounts": [{ "name": "data", "mountPath": "/data", "readOnly": true }]
                }],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }]
            }
        })).await?;
        let pod = wait_for_pod_phase(&pods, "static", &["Succeeded", "Failed"], WAIT).await?;
        let log = env.container_log(&pod, "app")?;
        ensure!(pod_phase(&pod) == Some("Succeeded"), "pod {:?}: {log}", pod.status);
        let roots: BTreeSet<&str> = log.lines().filter_map(|l| l.strip_prefix("root has /")).collect();
        // The image's own directories and what the runtime adds (the kernel's file systems, the
        // volume's mount point, /var/run/secrets/kubernetes.io/serviceaccount); nothing of this
        // machine's /.
        let expected: BTreeSet<&str> = ["bin", "data", "dev", "etc", "lib", "lib64", "proc", "srv", "sys", "usr", "var"]
            .into_iter()
            .filter(|d| *d != "usr" || tree.join("usr").exists())
            .filter(|d| *d != "lib64" || tree.join("lib64").exists())
            .collect();
        ensure!(roots == expected, "the container's / holds {roots:?}; log:\n{log}");
        ensure!(log.starts_with("from the image\ncwd=/srv/app from=image-config\nfrom the volume\n"), "log:\n{log}");
        ensure!(!log.contains("sees this machine"), "log:\n{log}");
        let image_id = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .map(|c| c.image_id)
            .unwrap_or_default();
        ensure!(image_id.starts_with("docker.io/kube-env-test/static:1@sha256:"), "imageID {image_id}");
        delete_namespace(&client, &ns).await
    })
    .await
}

#[tokio::test]
async fn kubectl_of_the_same_release_applies_a_kustomization_and_reads_logs() -> Result<()> {
    with_timeout(TEST_LIMIT, async {
        let (client, env, ns) = setup("kube-rt-kubectl").await?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("kustomization.yaml"), format!(
            "namespace: {ns}\nnamePrefix: drainer-\nconfigMapGenerator:\n- name: settings\n  literals: [mode=kubernetes]\n  options: {{disableNameSuffixHash: true}}\n"
        ))?;
        let out = env.kubectl().arg("apply").arg("-k").arg(dir.path()).output().await?;
        ensure!(out.status.success(), "kubectl apply -k: {}", String::from_utf8_lossy(&out.stderr));
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("drainer-settings").await?;
        ensure!(cm.data.unwrap_or_default().get("mode").map(String::as_str) == Some("kubernetes"));
        let out = env.kubectl().args(["version", "-o", "json"]).output().await?;
        ensure!(out.status.success(), "kubectl version: {}", String::from_utf8_lossy(&out.stderr));
        let version: Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"],
            "kubectl and the API server differ: {version}"
        );

        // kubectl logs goes through the API server to the node's kubelet API.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        create_pod(&pods, json!({
            "metadata": { "name": "talker" },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": "registry.invalid/talker:1", "command": ["sh", "-c", "echo one; echo two >&2"] }]
            }
        }))
        .await?;
        wait_for_pod_phase(&pods, "talker", &["Succeeded"], WAIT).await?;
        let out = env.kubectl().args(["logs", "-n", &ns, "talker"]).output().await?;
        ensure!(out.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&out.stderr));
        ensure!(out.stdout == b"one\ntwo\n", "kubectl logs: {:?}", String::from_utf8_lossy(&out.stdout));
        delete_namespace(&client, &ns).await
    })
    .await
}
