//! `kubectl drainer restore [NS/]PVC --into-claim CLAIM`: a claim's snapshot restored into a
//! claim of the cluster (the same claim come back empty, or a new one), by a Job the command
//! creates in the claim's namespace with the caller's rights. The Job's pod runs drainer's
//! own image (`--image`, else the image of drainer's pod) as `drainer restore --drainer` into
//! the claim it mounts, reading through drainer's Service with its projected token, so
//! drainer authorises it as any restore from a pod: a pod may restore the claims it mounts;
//! restoring another claim's snapshot takes a ServiceAccount (`--service-account`) with RBAC
//! `create` on `restores.drainer.io` in the namespace (ClusterRole `drainer-restore`). With
//! TLS it trusts `ca.crt` of the ConfigMap `drainer-ca` of the claim's namespace, as
//! deploy/examples do. The command waits for the Job (at most `--job-timeout`), then prints
//! its pod's last log line; a failed Job is one line and exit 1. The Job is kept an hour
//! (`ttlSecondsAfterFinished`) so its log can be read.
//!
//! The Job is a pure function of what was asked ([`restore_job`]); creating and following it
//! is thin.

use super::KubectlArgs;
use super::connect::{self, Cluster};
use anyhow::bail;
use drainer_core::volume::VolumeId;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How often the Job's status is read.
const POLL: Duration = Duration::from_secs(2);
/// Where the claim is mounted in the Job's pod.
const MOUNT: &str = "/data";
/// The token file of the pod's projected token for drainer.
const TOKEN_DIR: &str = "/var/run/secrets/drainer";
/// Where the CA of a TLS install is mounted.
const CA_DIR: &str = "/etc/drainer-ca";

/// What the restore Job is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobPlan {
    /// The snapshot's claim.
    pub volume: VolumeId,
    /// The claim restored into (in the same namespace).
    pub claim: String,
    /// `--snapshot`, if given.
    pub snapshot: Option<String>,
    /// drainer's in-cluster URL.
    pub drainer_url: String,
    /// Whether drainer serves TLS (the pod then trusts the ConfigMap `drainer-ca`).
    pub tls: bool,
    /// The image of the Job's container.
    pub image: String,
    /// The pod's ServiceAccount.
    pub service_account: String,
    /// The audience of drainer's tokens.
    pub audience: String,
    /// `--force` / `--if-empty`.
    pub force: bool,
    /// See [`JobPlan::force`].
    pub if_empty: bool,
}

/// The Job restoring `plan`, named with `suffix`.
pub(crate) fn restore_job(plan: &JobPlan, suffix: &str) -> Value {
    let mut args = vec![
        "restore".to_owned(),
        "--drainer".to_owned(),
        plan.drainer_url.clone(),
        "--token-file".to_owned(),
        format!("{TOKEN_DIR}/token"),
        "--volume".to_owned(),
        plan.volume.to_string(),
    ];
    if let Some(snapshot) = &plan.snapshot {
        args.extend(["--snapshot".to_owned(), snapshot.clone()]);
    }
    if plan.tls {
        args.extend(["--cacert".to_owned(), format!("{CA_DIR}/ca.crt")]);
    }
    if plan.force {
        args.push("--force".to_owned());
    }
    if plan.if_empty {
        args.push("--if-empty".to_owned());
    }
    args.push(MOUNT.to_owned());
    let mut mounts = vec![
        json!({"name": "data", "mountPath": MOUNT}),
        json!({"name": "drainer-token", "mountPath": TOKEN_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        json!({"name": "data", "persistentVolumeClaim": {"claimName": plan.claim}}),
        json!({"name": "drainer-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": plan.audience, "expirationSeconds": 3600, "path": "token"}}]}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    if plan.tls {
        mounts.push(json!({"name": "drainer-ca", "mountPath": CA_DIR, "readOnly": true}));
        volumes.push(json!({"name": "drainer-ca", "configMap": {"name": connect::CA_CONFIGMAP}}));
    }
    let name = job_name(&plan.claim, suffix);
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": plan.volume.namespace,
            "labels": {
                "app.kubernetes.io/name": "drainer",
                "app.kubernetes.io/component": "restore",
                "drainer.io/client": "true",
            },
            "annotations": {"drainer.io/restore-of": plan.volume.to_string()},
        },
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": {
                    "app.kubernetes.io/name": "drainer",
                    "app.kubernetes.io/component": "restore",
                    "drainer.io/client": "true",
                }},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": plan.service_account,
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "restore",
                        "image": plan.image,
                        "args": args,
                        "env": [{"name": "TMPDIR", "value": "/tmp"}],
                        "securityContext": {
                            "runAsUser": 0,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {
                                "drop": ["ALL"],
                                "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"],
                            },
                        },
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "32Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// `drainer-restore-CLAIM-SUFFIX`, cut to a valid name (63 characters).
pub(crate) fn job_name(claim: &str, suffix: &str) -> String {
    let room = 63 - "drainer-restore-".len() - suffix.len() - 1;
    let claim = claim[..claim.len().min(room)].trim_end_matches('-');
    format!("drainer-restore-{claim}-{suffix}")
}

/// What a Job's status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Still running (or not started).
    Running,
    /// Its pod restored the claim.
    Succeeded,
    /// It gave up.
    Failed,
}

/// The state of `job`, from its conditions.
pub(crate) fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten());
    let mut state = JobState::Running;
    for c in conditions.filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return JobState::Succeeded,
            "Failed" => state = JobState::Failed,
            _ => {}
        }
    }
    state
}

/// The plan of `kubectl drainer restore … --into-claim` from drainer's pod and the flags.
pub(crate) fn plan_from(
    drainer: &Pod,
    drainer_namespace: &str,
    volume: &VolumeId,
    restore: &super::restore::RestoreCommand,
    claim: &str,
) -> JobPlan {
    let container = drainer.spec.iter().flat_map(|s| &s.containers).next();
    let env = |name: &str| {
        container
            .and_then(|c| c.env.as_ref())
            .and_then(|env| env.iter().find(|e| e.name == name))
            .and_then(|e| e.value.clone())
    };
    let tls = connect::serves_tls(drainer);
    let scheme = if tls { "https" } else { "http" };
    JobPlan {
        volume: volume.clone(),
        claim: claim.to_owned(),
        snapshot: restore.snapshot.as_ref().map(ToString::to_string),
        drainer_url: format!(
            "{scheme}://{}:{}",
            connect::service_host(drainer_namespace),
            connect::http_port(drainer)
        ),
        tls,
        image: restore
            .image
            .clone()
            .or_else(|| container.and_then(|c| c.image.clone()))
            .unwrap_or_default(),
        service_account: restore.service_account.clone(),
        audience: env("DRAINER_AUDIENCE").unwrap_or_else(|| "drainer".to_owned()),
        force: restore.force,
        if_empty: restore.if_empty,
    }
}

/// `kubectl drainer restore … --into-claim CLAIM`.
pub(crate) async fn run(
    cluster: &Cluster,
    args: &KubectlArgs,
    restore: &super::restore::RestoreCommand,
    volume: &VolumeId,
    claim: &str,
) -> anyhow::Result<()> {
    let drainer = connect::ready_drainer_pod(cluster, args).await?;
    let plan = plan_from(&drainer, &args.drainer_namespace, volume, restore, claim);
    if plan.image.is_empty() {
        bail!("drainer's pod names no image: give the restore Job's with --image");
    }
    let suffix = format!("{:05x}", rand::random::<u32>() & 0xfffff);
    let job: Job = serde_json::from_value(restore_job(&plan, &suffix))?;
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &volume.namespace);
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .map_err(|e| {
            connect::api_error(
                format!("creating a restore Job in namespace {}", volume.namespace),
                e,
            )
        })?;
    let name = created.name_any();
    eprintln!("restoring {volume} into claim {claim} with Job {name}");
    let state = follow(&jobs, &name, restore.job_timeout).await?;
    let last = last_log_line(cluster, &volume.namespace, &name).await;
    match state {
        JobState::Succeeded => {
            println!("restored {volume} into claim {claim} (Job {name}): {last}");
            Ok(())
        }
        _ => bail!("the restore Job {name} of {volume} into claim {claim} failed: {last}"),
    }
}

/// Waits until Job `name` ends (at most `within`).
async fn follow(jobs: &Api<Job>, name: &str, within: Duration) -> anyhow::Result<JobState> {
    let deadline = Instant::now() + within;
    loop {
        match jobs.get_opt(name).await {
            Ok(Some(job)) => match job_state(&job) {
                JobState::Running => {}
                ended => return Ok(ended),
            },
            Ok(None) => bail!("the restore Job {name} was deleted before it ended"),
            Err(e) if connect::is_transient(&e) => {
                tracing::debug!(error = %e, "reading the restore Job; trying again");
            }
            Err(e) => return Err(connect::api_error(format!("reading Job {name}"), e)),
        }
        if Instant::now() >= deadline {
            bail!(
                "the restore Job {name} did not end within {} s (--job-timeout); it goes on",
                within.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last line the Job's newest pod logged, or why there is none.
async fn last_log_line(cluster: &Cluster, ns: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await;
    let Some(pod) = listed.ok().and_then(|l| {
        l.items
            .into_iter()
            .max_by_key(|p| p.metadata.creation_timestamp.clone())
    }) else {
        return "(no pod of the Job to read)".to_owned();
    };
    let params = LogParams {
        tail_lines: Some(20),
        ..LogParams::default()
    };
    let name = pod.name_any();
    let line = match pods.logs(&name, &params).await {
        Ok(log) => log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(an empty log)")
            .trim()
            .chars()
            .take(400)
            .collect(),
        Err(e) => format!("(its pod's log cannot be read: {e})"),
    };
    format!("{line} (pod {name})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobCondition;

    fn plan(tls: bool) -> JobPlan {
        JobPlan {
            volume: "shop/data-web-2".parse().unwrap(),
            claim: "data-web-2".into(),
            snapshot: Some("20261207T034557423Z-61ed".into()),
            drainer_url: "https://drainer.drainer-system.svc:8080".into(),
            tls,
            image: "ghcr.io/drainer/drainer:0.1.0".into(),
            service_account: "restorer".into(),
            audience: "drainer".into(),
            force: false,
            if_empty: true,
        }
    }

    #[test]
    fn the_job_restores_the_snapshot_into_the_claim_it_mounts() {
        let job = restore_job(&plan(true), "abc12");
        let spec = &job["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        assert_eq!(job["metadata"]["namespace"], "shop");
        assert_eq!(job["metadata"]["name"], "drainer-restore-data-web-2-abc12");
        assert_eq!(spec["serviceAccountName"], "restorer");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            container["args"],
            json!([
                "restore",
                "--drainer",
                "https://drainer.drainer-system.svc:8080",
                "--token-file",
                "/var/run/secrets/drainer/token",
                "--volume",
                "shop/data-web-2",
                "--snapshot",
                "20261207T034557423Z-61ed",
                "--cacert",
                "/etc/drainer-ca/ca.crt",
                "--if-empty",
                "/data"
            ])
        );
        let claim = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .unwrap();
        assert_eq!(claim["persistentVolumeClaim"]["claimName"], "data-web-2");
        assert_eq!(
            container["securityContext"]["capabilities"]["add"],
            json!(["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"])
        );
        // Without TLS, no CA is mounted or given.
        let plain = restore_job(&plan(false), "abc12");
        let args = plain["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(!args.contains("--cacert"), "{args}");
        assert_eq!(
            plain["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        // It is a valid Job.
        let _: Job = serde_json::from_value(job).unwrap();
    }

    #[test]
    fn job_names_fit_in_63_characters() {
        let long = "a-claim-with-a-very-long-name-that-goes-on-and-on-and-on-and-on";
        let name = job_name(long, "abc12");
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("drainer-restore-a-claim") && name.ends_with("-abc12"));
        assert!(!name.contains("--"), "{name}");
    }

    #[test]
    fn a_job_has_ended_when_a_condition_says_so() {
        let with = |conditions: &[(&str, &str)]| -> Job {
            let conditions: Vec<JobCondition> = conditions
                .iter()
                .map(|(t, s)| JobCondition {
                    type_: (*t).into(),
                    status: (*s).into(),
                    ..JobCondition::default()
                })
                .collect();
            serde_json::from_value(json!({"status": {"conditions": conditions}})).unwrap()
        };
        assert_eq!(job_state(&with(&[])), JobState::Running);
        assert_eq!(
            job_state(&with(&[("Complete", "True")])),
            JobState::Succeeded
        );
        assert_eq!(job_state(&with(&[("Failed", "True")])), JobState::Failed);
        assert_eq!(job_state(&with(&[("Failed", "False")])), JobState::Running);
        assert_eq!(
            job_state(&with(&[
                ("SuccessCriteriaMet", "True"),
                ("Complete", "True")
            ])),
            JobState::Succeeded
        );
    }
}
