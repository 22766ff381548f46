//! The mover Job of one attempt, as a pure function of the drain, its claim and volume, the
//! [`MoverSpec`] and the mover's identity ([`MoverSecurity`], chosen by `security`): its name
//! and labels, the pod's security, resources, volumes (the claim read-only, a projected token
//! for drainer's audience) and placement (the volume's node affinity; a single-node volume
//! pinned where it is attached).

use super::security::MoverSecurity;
use super::spec::{MoverSpec, is_label_value};
use crate::hold::DRAIN_LABEL;
use crate::watch::MANAGED_BY;
use drainer_core::ledger::Drain;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Where the claim is mounted in a mover.
pub const DATA_DIR: &str = "/data";
/// Where a mover's projected token is mounted (the file is `token` inside).
pub const TOKEN_DIR: &str = "/var/run/secrets/drainer";
/// The mover container's name.
pub const CONTAINER: &str = "mover";
/// The label naming the attempt a mover Job belongs to.
pub const ATTEMPT_LABEL: &str = "drainer.io/attempt";
/// The label the Job controller puts on its pods (the Job's UID).
pub(super) const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
const DATA_VOLUME: &str = "data";
const TOKEN_VOLUME: &str = "drainer-token";
const TMP_VOLUME: &str = "tmp";
/// Lifetime asked for a mover's token; the kubelet renews it after 80% of that, and the
/// mover reads the file again every minute.
const TOKEN_SECONDS: i64 = 3600;
/// Grace period of a mover pod: its progress is checkpointed every second anyway.
const GRACE_SECONDS: i64 = 10;
/// Longest Job name: its pods' generated names (the Job's name, `-`, five characters) then
/// fit in 63 and keep the whole Job name, which a mover's host name, and so the owner of its
/// copy run, starts with.
const MAX_JOB_NAME: usize = 57;
/// Longest name stem: room for `-` and the ten digits of any attempt number.
const MAX_STEM: usize = MAX_JOB_NAME - 11;

/// `drainer-<drain>`, or a shortened form with a hash for an id that is too long or not
/// fit for a name.
pub(super) fn job_stem(drain: &str) -> String {
    let plain = format!("drainer-{drain}");
    if plain.len() <= MAX_STEM && drainer_core::volume::is_dns_label(&plain) {
        return plain;
    }
    let hash = blake3::hash(drain.as_bytes()).to_hex();
    let keep: String = drain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_STEM - "drainer-".len() - 1 - 12)
        .collect();
    format!("drainer-{}-{}", keep.trim_matches('-'), &hash[..12])
}

/// The name of the mover Job of `drain`'s attempt `attempt`: `drainer-<drain>-<attempt>`.
pub fn job_name(drain: &str, attempt: u32) -> String {
    format!("{}-{attempt}", job_stem(drain))
}

/// The value of the drain label for `drain` (the id itself, or a hash of one that is not a
/// label value).
pub fn drain_label(drain: &str) -> String {
    if is_label_value(drain) {
        drain.to_owned()
    } else {
        blake3::hash(drain.as_bytes()).to_hex()[..16].to_owned()
    }
}

/// The labels of a drain's mover Jobs and pods.
fn mover_labels(drain: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (DRAIN_LABEL.to_owned(), drain_label(drain)),
    ]
    .into()
}

/// Whether `job` is labelled as one of `drain`'s mover Jobs (drainer's own, not a Job of
/// the same name someone else made).
pub(super) fn is_drains_job(job: &Job, drain: &str) -> bool {
    let labels = job.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    label(MANAGED_BY.0) == Some(MANAGED_BY.1) && label(DRAIN_LABEL) == Some(&drain_label(drain))
}

/// The label selector of a drain's mover Jobs.
pub(super) fn mover_selector(drain: &str) -> String {
    format!(
        "{}={},{DRAIN_LABEL}={}",
        MANAGED_BY.0,
        MANAGED_BY.1,
        drain_label(drain)
    )
}

/// Whether a claim's volume can be mounted on one node only (`ReadWriteOnce`,
/// `ReadWriteOncePod`, and no mode that allows several).
pub fn single_node(claim: &PersistentVolumeClaim) -> bool {
    let modes: Vec<&str> = claim
        .spec
        .iter()
        .flat_map(|s| s.access_modes.iter().flatten())
        .chain(
            claim
                .status
                .iter()
                .flat_map(|s| s.access_modes.iter().flatten()),
        )
        .map(String::as_str)
        .collect();
    modes
        .iter()
        .any(|m| *m == "ReadWriteOnce" || *m == "ReadWriteOncePod")
        && !modes
            .iter()
            .any(|m| *m == "ReadWriteMany" || *m == "ReadOnlyMany")
}

/// The node a single-node volume is to be mounted on: where it is attached (the recorded
/// node of its last pod when it is among them), nowhere in particular when it is attached
/// nowhere (detached already, or a kind of volume that is never attached), and the recorded
/// node when attachments are unknown.
pub fn mount_node(recorded: Option<&str>, attached: Option<&[String]>) -> Option<String> {
    match attached {
        None => recorded.map(str::to_owned),
        Some(nodes) => recorded
            .filter(|r| nodes.iter().any(|n| n == r))
            .map(str::to_owned)
            .or_else(|| nodes.first().cloned()),
    }
}

/// The required node affinity of a mover: the volume's own (`spec.nodeAffinity` of the PV),
/// and, when `node` is given, that node by name (a `metadata.name` field requirement, as the
/// DaemonSet controller pins its pods: the node's name is what the drain records, and the
/// `kubernetes.io/hostname` label need not equal it) in every term.
pub fn placement(volume: Option<&PersistentVolume>, node: Option<&str>) -> Option<Affinity> {
    let mut terms: Vec<NodeSelectorTerm> = volume
        .and_then(|v| v.spec.as_ref())
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    if let Some(node) = node {
        let pin = NodeSelectorRequirement {
            key: "metadata.name".to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![node.to_owned()]),
        };
        if terms.is_empty() {
            terms.push(NodeSelectorTerm::default());
        }
        for term in &mut terms {
            term.match_fields
                .get_or_insert_with(Vec::new)
                .push(pin.clone());
        }
    }
    (!terms.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// The mover Job of `drain`'s attempt `attempt`, for its claim (bound to `volume`, if known).
/// `last_pod_node` is the node the volume is to be mounted on (see [`mount_node`]); a mover of
/// a single-node claim is pinned there. The pod runs as `security` says. The Job is created
/// suspended: drainer records its UID (what identifies its pod as this drain's mover) before
/// any pod can exist, then resumes it.
#[allow(clippy::too_many_arguments)]
pub fn mover_job(
    drain: &Drain,
    attempt: u32,
    claim: &PersistentVolumeClaim,
    volume: Option<&PersistentVolume>,
    last_pod_node: Option<&str>,
    spec: &MoverSpec,
    security: &MoverSecurity,
    service_url: &str,
) -> Job {
    let node = last_pod_node.filter(|_| single_node(claim));
    let mut labels = mover_labels(&drain.id);
    let pod_labels = labels.clone();
    labels.insert(ATTEMPT_LABEL.to_owned(), attempt.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&drain.id, attempt)),
            namespace: Some(drain.namespace.clone()),
            labels: Some(labels),
            annotations: Some(
                [
                    ("drainer.io/drain-id".to_owned(), drain.id.clone()),
                    ("drainer.io/volume".to_owned(), drain.volume().to_string()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(spec.deadline_seconds),
            ttl_seconds_after_finished: Some(spec.keep_failed_seconds),
            suspend: Some(true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(mover_pod(drain, volume, node, spec, security, service_url)),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

fn mover_pod(
    drain: &Drain,
    volume: Option<&PersistentVolume>,
    node: Option<&str>,
    spec: &MoverSpec,
    security: &MoverSecurity,
    service_url: &str,
) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        service_account_name: Some(spec.service_account.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(GRACE_SECONDS),
        security_context: Some(pod_security(security)),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        affinity: placement(volume, node),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        volumes: Some(vec![
            Volume {
                name: DATA_VOLUME.to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: drain.pvc.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            },
            token_volume(&spec.audience),
            Volume {
                name: TMP_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        containers: vec![mover_container(drain, spec, security, service_url)],
        ..PodSpec::default()
    }
}

/// A projected ServiceAccount token for drainer's audience.
fn token_volume(audience: &str) -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.to_owned()),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".to_owned(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mover_container(
    drain: &Drain,
    spec: &MoverSpec,
    security: &MoverSecurity,
    service_url: &str,
) -> Container {
    let args = [
        "mover",
        "--drainer",
        service_url,
        "--drain",
        &drain.id,
        "--source",
        DATA_DIR,
        "--token-file",
        &format!("{TOKEN_DIR}/token"),
    ];
    let env = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let pair = |cpu: &Quantity, memory: &Quantity| {
        [
            ("cpu".to_owned(), cpu.clone()),
            ("memory".to_owned(), memory.clone()),
        ]
        .into()
    };
    Container {
        name: CONTAINER.to_owned(),
        image: Some(spec.image.clone()),
        command: Some(vec![spec.command.clone()]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        // The root filesystem is read-only: temporary files (the previous snapshot's manifest,
        // spooled for an incremental copy) go to an emptyDir.
        env: Some(
            [env("TMPDIR", "/tmp"), env("DRAINER_LOG", "info")]
                .into_iter()
                .chain(
                    spec.ca
                        .as_ref()
                        .map(|ca| env("DRAINER_CACERT_PEM", &ca.pem)),
                )
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(pair(&spec.cpu.request, &spec.memory.request)),
            limits: Some(pair(&spec.cpu.limit, &spec.memory.limit)),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security(security)),
        volume_mounts: Some(vec![
            mount(DATA_VOLUME, DATA_DIR, true),
            mount(TOKEN_VOLUME, TOKEN_DIR, true),
            mount(TMP_VOLUME, "/tmp", false),
        ]),
        // A failed mover's last log lines (its error) become the pod's termination message,
        // which the attempt's error quotes.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The mover's user and groups, non-root whenever it can be, and the runtime's seccomp
/// profile. The application's `fsGroup` is among the supplementary groups; the pod has no
/// `fsGroup`, which would have the kubelet change the ownership of the volumes it may write.
fn pod_security(security: &MoverSecurity) -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(security.user),
        run_as_group: security.group,
        run_as_non_root: Some(security.non_root()),
        supplemental_groups: (!security.groups.is_empty()).then(|| security.groups.clone()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Read-only root, no privilege escalation, every capability dropped but the one the
/// identity reads with (`DAC_READ_SEARCH` or `DAC_OVERRIDE`, for uid 0 only), the same user.
fn container_security(security: &MoverSecurity) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(security.user),
        run_as_group: security.group,
        run_as_non_root: Some(security.non_root()),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: security.capability().map(|c| vec![c.to_owned()]),
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use serde_json::json;

    /// The required node selector terms of a pod, as JSON.
    fn terms(job: &Job) -> serde_json::Value {
        let affinity = pod_spec(job).affinity.clone();
        serde_json::to_value(
            affinity
                .and_then(|a| a.node_affinity)
                .and_then(|n| n.required_during_scheduling_ignored_during_execution)
                .map(|s| s.node_selector_terms),
        )
        .unwrap()
    }

    #[test]
    fn job_names_fit_and_keep_the_drain_id() {
        let name = job_name(ID, 2);
        assert_eq!(name, "drainer-d-20261201165406217-14a31fd8-2");
        assert_eq!(
            job_name(ID, 100),
            "drainer-d-20261201165406217-14a31fd8-100"
        );
        for id in [
            ID,
            &"d-".repeat(40),
            "D-UPPER_case.id",
            &format!("{ID}-{ID}"),
            "-",
        ] {
            for attempt in [1, 99, u32::MAX] {
                let name = job_name(id, attempt);
                assert!(name.len() <= MAX_JOB_NAME, "{name}: {} long", name.len());
                assert!(drainer_core::volume::is_dns_label(&name), "{name}");
                assert!(name.ends_with(&format!("-{attempt}")), "{name}");
            }
        }
        assert_ne!(job_name(&"a".repeat(70), 1), job_name(&"a".repeat(71), 1));
        assert_eq!(drain_label(ID), ID);
        assert!(is_label_value(&drain_label(&"x".repeat(64))));
        assert!(is_label_value(&drain_label("-bad-")));
    }

    #[test]
    fn the_job_is_suspended_single_shot_and_labelled() {
        let job = build(&["ReadWriteMany"], None, &[]);
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("drainer-d-20261201165406217-14a31fd8-2")
        );
        assert_eq!(job.metadata.namespace.as_deref(), Some("shop"));
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "drainer");
        assert_eq!(labels["drainer.io/drain"], ID);
        assert_eq!(labels[ATTEMPT_LABEL], "2");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(21600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(86400));
        assert_eq!(spec.suspend, Some(true));
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        assert_eq!(pod_labels["drainer.io/drain"], ID);
        assert_eq!(pod_labels["app.kubernetes.io/managed-by"], "drainer");
        let pod = pod_spec(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("default"));
        assert_eq!(pod.affinity, None, "a ReadWriteMany claim goes anywhere");
        assert_eq!(pod.node_selector, None);
        assert_eq!(pod.tolerations, None);
    }

    #[test]
    fn the_mover_mounts_its_claim_read_only_and_its_token_for_drainer() {
        let job = build(&["ReadWriteOnce"], None, &["--audience", "drainer-prod"]);
        let pod = pod_spec(&job);
        let volumes = pod.volumes.clone().unwrap();
        let data = volumes.iter().find(|v| v.name == DATA_VOLUME).unwrap();
        let claim = data.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("data-web-4", Some(true))
        );
        let token = volumes.iter().find(|v| v.name == TOKEN_VOLUME).unwrap();
        let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(projection.audience.as_deref(), Some("drainer-prod"));
        assert_eq!(projection.path, "token");
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/drainer/drainer:latest")
        );
        assert_eq!(container.command, Some(vec!["drainer".to_owned()]));
        assert_eq!(
            container.args.clone().unwrap(),
            [
                "mover",
                "--drainer",
                URL,
                "--drain",
                ID,
                "--source",
                "/data",
                "--token-file",
                "/var/run/secrets/drainer/token"
            ]
        );
        let mounts = container.volume_mounts.clone().unwrap();
        let mount = |name: &str| mounts.iter().find(|m| m.name == name).unwrap().clone();
        assert_eq!(
            (
                mount(DATA_VOLUME).mount_path.as_str(),
                mount(DATA_VOLUME).read_only
            ),
            ("/data", Some(true))
        );
        assert_eq!(
            (
                mount(TOKEN_VOLUME).mount_path.as_str(),
                mount(TOKEN_VOLUME).read_only
            ),
            (TOKEN_DIR, Some(true))
        );
        assert_eq!(
            mount(TMP_VOLUME).read_only,
            Some(false),
            "TMPDIR is writable"
        );
        let resources = container.resources.clone().unwrap();
        let (requests, limits) = (resources.requests.unwrap(), resources.limits.unwrap());
        assert_eq!(
            (requests["cpu"].0.as_str(), limits["cpu"].0.as_str()),
            ("100m", "1")
        );
        assert_eq!(
            (requests["memory"].0.as_str(), limits["memory"].0.as_str()),
            ("64Mi", "256Mi")
        );
    }

    #[test]
    fn flags_reach_the_pod() {
        let job = build(
            &["ReadWriteMany"],
            None,
            &[
                "--mover-image",
                "registry.example/drainer:1.2",
                "--mover-command",
                "/usr/local/bin/drainer",
                "--mover-service-account",
                "drainer-mover",
                "--mover-cpu",
                "250m",
                "--mover-memory",
                "128Mi,1Gi",
                "--mover-node-selector",
                "kubernetes.io/os=linux, pool=backup",
                "--mover-tolerations",
                r#"[{"key":"dedicated","operator":"Equal","value":"backup","effect":"NoSchedule"}]"#,
                "--mover-deadline",
                "600",
                "--mover-keep-failed",
                "3600",
            ],
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        let pod = pod_spec(&job);
        assert_eq!(pod.service_account_name.as_deref(), Some("drainer-mover"));
        let selector = pod.node_selector.clone().unwrap();
        assert_eq!(selector["kubernetes.io/os"], "linux");
        assert_eq!(selector["pool"], "backup");
        let tolerations = pod.tolerations.clone().unwrap();
        assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example/drainer:1.2")
        );
        assert_eq!(
            container.command,
            Some(vec!["/usr/local/bin/drainer".to_owned()])
        );
        let resources = container.resources.clone().unwrap();
        assert_eq!(resources.requests.unwrap()["cpu"].0, "250m");
        assert_eq!(resources.limits.unwrap()["memory"].0, "1Gi");
    }

    #[test]
    fn security_context_per_identity() {
        use crate::args::PodSecurityLevel as Level;
        let nobody = super::super::security::decide(
            crate::args::MoverIdentity::Nobody,
            &enforcing(Level::Privileged),
            None,
        );
        // (identity, uid, gid, non-root, supplementary groups, capabilities added)
        type Case = (
            MoverSecurity,
            i64,
            i64,
            bool,
            Option<Vec<i64>>,
            Option<Vec<String>>,
        );
        let cases: [Case; 4] = [
            (
                security(Level::Privileged),
                0,
                0,
                false,
                None,
                Some(vec!["DAC_READ_SEARCH".to_owned()]),
            ),
            (
                security(Level::Baseline),
                0,
                0,
                false,
                None,
                Some(vec!["DAC_OVERRIDE".to_owned()]),
            ),
            (
                security(Level::Restricted),
                1000,
                1000,
                true,
                Some(vec![2000]),
                None,
            ),
            (nobody, 65534, 65534, true, None, None),
        ];
        for (identity, uid, gid, non_root, groups, added) in cases {
            let what = identity.describe();
            let job = build_as(&["ReadWriteOnce"], None, &[], &identity);
            let pod = pod_spec(&job);
            let security = pod.containers[0].security_context.clone().unwrap();
            assert_eq!(security.run_as_user, Some(uid), "{what}");
            assert_eq!(security.run_as_group, Some(gid), "{what}");
            assert_eq!(security.run_as_non_root, Some(non_root), "{what}");
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(security.privileged, Some(false));
            let caps = security.capabilities.unwrap();
            assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
            assert_eq!(caps.add, added, "{what}");
            let pod_security = pod.security_context.clone().unwrap();
            assert_eq!(pod_security.run_as_user, Some(uid), "{what}");
            assert_eq!(pod_security.run_as_group, Some(gid), "{what}");
            assert_eq!(pod_security.run_as_non_root, Some(non_root), "{what}");
            assert_eq!(pod_security.supplemental_groups, groups, "{what}");
            assert_eq!(pod_security.fs_group, None, "{what}: never an fsGroup");
            assert_eq!(
                pod_security.seccomp_profile.unwrap().type_,
                "RuntimeDefault"
            );
        }
    }

    #[test]
    fn placement_follows_the_volume_and_pins_single_node_claims() {
        let zoned = zoned_volume();
        let pin = json!([{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]);
        let zone = |z: &str| json!([{"key": "topology.kubernetes.io/zone", "operator": "In", "values": [z]}]);
        // (access modes, volume, node affinity terms)
        let cases = [
            (vec!["ReadWriteMany"], None, json!(null)),
            (vec!["ReadOnlyMany"], None, json!(null)),
            (vec!["ReadWriteOnce", "ReadOnlyMany"], None, json!(null)),
            (vec!["ReadWriteOnce"], None, json!([{"matchFields": pin}])),
            (
                vec!["ReadWriteOncePod"],
                None,
                json!([{"matchFields": pin}]),
            ),
            (
                vec!["ReadWriteMany"],
                Some(&zoned),
                json!([{"matchExpressions": zone("a")}, {"matchExpressions": zone("b")}]),
            ),
            (
                vec!["ReadWriteOnce"],
                Some(&zoned),
                json!([
                    {"matchExpressions": zone("a"), "matchFields": pin},
                    {"matchExpressions": zone("b"), "matchFields": pin}
                ]),
            ),
        ];
        for (modes, volume, expected) in cases {
            let job = build(&modes, volume, &[]);
            assert_eq!(terms(&job), expected, "{modes:?} {:?}", volume.is_some());
        }
        // No node known: the volume's own affinity only.
        let read_all = security(crate::args::PodSecurityLevel::Privileged);
        let job = mover_job(
            &drain(),
            1,
            &claim(&["ReadWriteOnce"]),
            None,
            None,
            &spec(&[]),
            &read_all,
            URL,
        );
        assert_eq!(terms(&job), json!(null));
        let job = mover_job(
            &drain(),
            1,
            &claim(&["ReadWriteOnce"]),
            Some(&zoned),
            None,
            &spec(&[]),
            &read_all,
            URL,
        );
        assert_eq!(
            terms(&job),
            json!([{"matchExpressions": zone("a")}, {"matchExpressions": zone("b")}])
        );
    }

    #[test]
    fn a_single_node_volume_is_mounted_where_it_is_attached() {
        let nodes = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (recorded node of the last pod, nodes it is attached to (None: unknown), pinned)
        let cases = [
            (Some("node-2"), None, Some("node-2")),
            (None, None, None),
            (Some("node-2"), Some(nodes(&[])), None),
            (Some("node-2"), Some(nodes(&["node-2"])), Some("node-2")),
            (Some("node-2"), Some(nodes(&["node-3"])), Some("node-3")),
            (
                Some("node-2"),
                Some(nodes(&["node-3", "node-2"])),
                Some("node-2"),
            ),
            (None, Some(nodes(&["node-3"])), Some("node-3")),
        ];
        for (recorded, attached, expected) in cases {
            assert_eq!(
                mount_node(recorded, attached.as_deref()).as_deref(),
                expected,
                "{recorded:?} {attached:?}"
            );
        }
    }
}
