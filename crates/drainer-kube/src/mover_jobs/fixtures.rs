//! Fixtures of the mover tests (and of identity's, which checks mover pods): a drain, parsed
//! flags, claims, volumes, Jobs and their pods.

use super::job::mover_job;
use super::security::{Enforced, MoverSecurity, decide};
use super::spec::MoverSpec;
use crate::args::{KubeArgs, MoverIdentity, PodSecurityLevel};
use clap::Parser;
use drainer_core::ledger::Drain;
use drainer_core::lifecycle::DrainState;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

pub(crate) const ID: &str = "d-20261201165406217-14a31fd8";
pub(crate) const URL: &str = "http://drainer.drainer-system.svc:8080";

pub(crate) fn drain() -> Drain {
    Drain {
        id: ID.into(),
        namespace: "shop".into(),
        pvc: "data-web-4".into(),
        pod: Some("web-4".into()),
        reason: "handoff".into(),
        state: DrainState::Copying,
        attempts: 2,
        max_attempts: 5,
        not_before_ms: 0,
        lease_owner: Some("replica-a".into()),
        lease_expires_ms: None,
        snapshot: None,
        last_error: None,
        created_ms: 0,
        updated_ms: 0,
        finished_ms: None,
        facts: drainer_core::ledger::Facts::default().with(crate::facts::NODE, Some("node-2")),
    }
}

/// Kubernetes mode's flags as `drainer serve --kubernetes FLAGS…` parses them.
pub(crate) fn kube_args(flags: &[&str]) -> KubeArgs {
    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        kube: KubeArgs,
    }
    let argv = ["serve", "--kubernetes"].iter().chain(flags);
    match Serve::try_parse_from(argv) {
        Ok(serve) => serve.kube,
        other => panic!("{flags:?} do not parse: {other:?}"),
    }
}

pub(crate) fn spec(flags: &[&str]) -> MoverSpec {
    let args = kube_args(flags);
    MoverSpec::new(&args.movers, &args.audience).unwrap()
}

pub(crate) fn claim(modes: &[&str]) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": "data-web-4", "namespace": "shop", "uid": "claim-uid"},
        "spec": {"accessModes": modes, "volumeName": "pv-1"},
        "status": {"phase": "Bound"}
    }))
    .unwrap()
}

pub(crate) fn zoned_volume() -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pv-1"},
        "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]}]}
        ]}}}
    }))
    .unwrap()
}

/// A namespace that enforces `level`, by its label.
pub(crate) fn enforcing(level: PodSecurityLevel) -> Enforced {
    Enforced {
        level,
        version: "latest".into(),
        source: "its label".into(),
    }
}

/// The mover identity `auto` picks in a namespace that enforces `level`, for an application
/// running as uid 1000, gid 1000 with fsGroup 2000.
pub(crate) fn security(level: PodSecurityLevel) -> MoverSecurity {
    let app = super::security::AppIdentity {
        set: "web".into(),
        container: Some("app".into()),
        user: Some(1000),
        group: Some(1000),
        fs_group: Some(2000),
        supplemental_groups: Vec::new(),
    };
    decide(MoverIdentity::Auto, &enforcing(level), Some(&app))
}

pub(crate) fn build(modes: &[&str], volume: Option<&PersistentVolume>, flags: &[&str]) -> Job {
    build_as(
        modes,
        volume,
        flags,
        &security(PodSecurityLevel::Privileged),
    )
}

pub(crate) fn build_as(
    modes: &[&str],
    volume: Option<&PersistentVolume>,
    flags: &[&str],
    security: &MoverSecurity,
) -> Job {
    mover_job(
        &drain(),
        2,
        &claim(modes),
        volume,
        Some("node-2"),
        &spec(flags),
        security,
        URL,
    )
}

pub(crate) fn pod_spec(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

/// A pod as the Job controller makes it from `job`'s template.
pub(crate) fn pod_of(job: &Job) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-x7k2p", job.metadata.name.clone().unwrap())),
            ..ObjectMeta::default()
        },
        spec: job.spec.as_ref().unwrap().template.spec.clone(),
        ..Pod::default()
    }
}
