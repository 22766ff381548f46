//! Decisions on live objects, as pure functions: whether a pod is a true copy of its mover
//! Job's template ([`check_mover_pod`], for `identity`), how a Job stands ([`job_state`]) and
//! how its pod ended ([`describe_pod`]), which recorded Job an attempt adopts ([`adoptable`]),
//! which mover pod holds a copy run ([`mover_pod_of_owner`]), and what becomes of a dropped
//! attempt's Job ([`after_drop`]).

use super::job::job_stem;
use crate::facts::KubeDrain;
use drainer_core::ledger::Drain;
use drainer_core::lifecycle::DrainState;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::time::Duration;

/// Checks that `pod`, which names `job` as its controller, is a true copy of that Job's
/// template where it matters: the same ServiceAccount, the same pod security context (user,
/// groups, seccomp), the template's volumes unchanged (the claim, read-only; the token, with
/// its audience), its containers running the same image, command, arguments, environment,
/// mounts and security context (user, capabilities), no other container mounting
/// those volumes, no process namespace shared, and no ephemeral container (`kubectl debug`). Anyone who may create pods can copy
/// drainer's labels and even an owner reference to the Job; such a pod is then refused unless
/// it would do exactly what the mover does (which gains it nothing). Returns why not.
pub fn check_mover_pod(pod: &Pod, job: &Job) -> Result<(), String> {
    let template = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or("its Job has no pod template")?;
    let spec = pod.spec.as_ref().ok_or("it has no spec")?;
    if spec.share_process_namespace == Some(true) || spec.host_pid == Some(true) {
        return Err("it shares its process namespace".into());
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        // `kubectl debug` adds them, and from one the mover's token can be read.
        return Err("it has ephemeral containers (a debugger beside a mover)".into());
    }
    if spec.service_account_name != template.service_account_name {
        return Err("its ServiceAccount is not its Job's".into());
    }
    if spec.security_context != template.security_context {
        return Err("its pod security context is not its Job's".into());
    }
    let guarded: Vec<&str> = template
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for wanted in template.volumes.iter().flatten() {
        let found = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == wanted.name);
        if found != Some(wanted) {
            return Err(format!("its volume {} is not its Job's", wanted.name));
        }
    }
    for wanted in &template.containers {
        let found = spec.containers.iter().find(|c| c.name == wanted.name);
        if !found.is_some_and(|c| same_container(c, wanted)) {
            return Err(format!("its container {} is not its Job's", wanted.name));
        }
    }
    let is_templated = |name: &str| template.containers.iter().any(|c| c.name == name);
    let others = spec
        .containers
        .iter()
        .filter(|c| !is_templated(&c.name))
        .chain(spec.init_containers.iter().flatten());
    for other in others {
        if let Some(m) = other
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| guarded.contains(&m.name.as_str()))
        {
            return Err(format!(
                "its container {} mounts the mover's volume {}",
                other.name, m.name
            ));
        }
    }
    Ok(())
}

fn same_container(a: &Container, b: &Container) -> bool {
    a.image == b.image
        && a.command == b.command
        && a.args == b.args
        && a.env == b.env
        && a.env_from == b.env_from
        && a.volume_mounts == b.volume_mounts
        && a.security_context == b.security_context
        && a.working_dir == b.working_dir
}

/// How a mover Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Suspended, pending or running.
    Running,
    /// Its pod exited 0.
    Succeeded,
    /// It failed (its pod failed, was killed or deleted, or the deadline passed): why.
    Failed(String),
}

fn condition<'a>(job: &'a Job, kind: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == "True")
}

/// How `job` stands, from its status: failed when a pod failed or a `Failed` (or
/// `FailureTarget`) condition is set, succeeded with a `Complete` (or `SuccessCriteriaMet`)
/// condition or a succeeded pod.
pub fn job_state(job: &Job) -> JobState {
    let failed = ["Failed", "FailureTarget"]
        .iter()
        .find_map(|kind| condition(job, kind));
    if let Some(c) = failed {
        let reason = c.reason.as_deref().unwrap_or("Failed");
        return JobState::Failed(match c.message.as_deref() {
            Some(message) if !message.is_empty() => format!("{reason}: {message}"),
            _ => reason.to_owned(),
        });
    }
    let status = job.status.clone().unwrap_or_default();
    if status.failed.unwrap_or(0) > 0 {
        return JobState::Failed(format!("{} pod(s) failed", status.failed.unwrap_or(0)));
    }
    if condition(job, "Complete").is_some()
        || condition(job, "SuccessCriteriaMet").is_some()
        || status.succeeded.unwrap_or(0) > 0
    {
        return JobState::Succeeded;
    }
    JobState::Running
}

/// Whether `job` has ended (a `Complete` or `Failed` condition): it has no running pod.
pub fn is_finished(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

pub(super) fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// Whether the Job has a pod yet (or had one).
pub(super) fn has_had_pods(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| {
        s.active.unwrap_or(0) + s.failed.unwrap_or(0) + s.succeeded.unwrap_or(0) > 0
    })
}

/// How long a Job may have no pod before a refusal other than PodSecurity admission's fails
/// the attempt (a quota, a missing ServiceAccount: the Job controller keeps trying, and the
/// cause may pass).
pub(crate) const POD_START: Duration = Duration::from_secs(60);

/// Whether the refusal `message` of a Job's pod (its latest `FailedCreate` event), seen after
/// the Job has had no pod for `waited`, fails the attempt: PodSecurity admission's at once (it
/// stands until the mover's identity changes, which takes a new Job), others after
/// [`POD_START`].
pub(crate) fn refusal_ends_attempt(message: &str, waited: Duration) -> bool {
    super::security::refused_policy(message).is_some() || waited >= POD_START
}

/// A pod's state in one line: phase, reason, and each container's state (a terminated
/// container's reason, exit code and message, which for a mover ends with its error).
pub fn describe_pod(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.clone().unwrap_or_default();
    let mut line = format!(
        "pod {name} {}",
        status.phase.as_deref().unwrap_or("Unknown")
    );
    if pod.metadata.deletion_timestamp.is_some() {
        line.push_str(" (being deleted)");
    }
    let reason = [status.reason.as_deref(), status.message.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ");
    if !reason.is_empty() {
        line.push_str(&format!(": {reason}"));
    }
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.clone().unwrap_or_default();
        if let Some(t) = state.terminated {
            let message = t.message.as_deref().map(str::trim).unwrap_or_default();
            line.push_str(&format!(
                "; container {} terminated ({}, exit code {}){}",
                c.name,
                t.reason.as_deref().unwrap_or("no reason"),
                t.exit_code,
                last_line(message)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        } else if let Some(w) = state.waiting {
            line.push_str(&format!(
                "; container {} waiting ({}{})",
                c.name,
                w.reason.as_deref().unwrap_or("no reason"),
                w.message.map(|m| format!(": {m}")).unwrap_or_default()
            ));
        }
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            line.push_str(&format!(
                "; not scheduled ({}{})",
                c.reason.as_deref().unwrap_or(""),
                c.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    line
}

/// The last non-empty line of a termination message, cut to a readable length.
fn last_line(message: &str) -> Option<String> {
    let line = message.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(300).collect())
}

/// The Job an attempt of `drain` named `name` adopts: the one the ledger records (name and
/// UID), not being deleted, if it is still running (drainer restarted, or the drain was taken
/// over) or if it is this attempt's own (its outcome is the attempt's). An older attempt's
/// Job that has failed or succeeded, even with its pod still terminating, is not adopted.
pub fn adoptable<'a>(drain: &Drain, jobs: &'a [Job], name: &str) -> Option<&'a Job> {
    let (Some(recorded), Some(uid)) = (drain.mover_job(), drain.mover_job_uid()) else {
        return None;
    };
    jobs.iter()
        .find(|j| {
            j.metadata.name.as_deref() == Some(recorded)
                && j.metadata.uid.as_deref() == Some(uid)
                && j.metadata.deletion_timestamp.is_none()
        })
        .filter(|j| job_state(j) == JobState::Running || recorded == name)
}

/// The mover pod that holds a copy run of `drain`, from the run's owner (`HOST:PID:RANDOM`, a
/// mover's host name being its pod's name), if it is one of the drain's mover pods.
pub fn mover_pod_of_owner(owner: &str, drain: &str) -> Option<String> {
    let mut parts = owner.rsplitn(3, ':');
    let (_, _, host) = (parts.next()?, parts.next()?, parts.next()?);
    host.starts_with(&format!("{}-", job_stem(drain)))
        .then(|| host.to_owned())
}

/// What happens to an attempt's Job when the attempt is dropped before it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterDrop {
    /// The drain is still recorded as this replica's: look again shortly.
    Wait,
    /// Keep it running, for the next claim to adopt: why.
    Keep(String),
    /// Delete it: why.
    Delete(String),
}

/// What to do with a dropped attempt's Job, from its drain as it is now and the replica that
/// ran the attempt: delete it if the drain ended (cancelled, or gone); keep it if the drain
/// was released (shutdown) or taken over by another replica, whose next attempt adopts it.
pub fn after_drop(drain: Option<&Drain>, owner: Option<&str>) -> AfterDrop {
    let Some(drain) = drain else {
        return AfterDrop::Delete("its drain no longer exists".into());
    };
    match drain.state {
        DrainState::Copying if drain.lease_owner.as_deref() == owner => AfterDrop::Wait,
        DrainState::Copying => AfterDrop::Keep(format!(
            "the drain was taken over by {}, which adopts it",
            drain.lease_owner.as_deref().unwrap_or("another replica")
        )),
        DrainState::Queued => {
            AfterDrop::Keep("the drain was released; its next attempt adopts it".into())
        }
        state => AfterDrop::Delete(format!("the drain is {state}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::job::job_name;
    use super::*;
    use k8s_openapi::api::core::v1::{EphemeralContainer, PodSpec, Toleration};
    use serde_json::json;

    fn job_with_status(status: serde_json::Value) -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": "j", "namespace": "shop", "uid": "u1"}, "status": status}),
        )
        .unwrap()
    }

    #[test]
    fn a_pod_passes_for_a_mover_only_as_a_true_copy_of_its_jobs_template() {
        let job = build(&["ReadWriteOnce"], None, &[]);
        assert_eq!(check_mover_pod(&pod_of(&job), &job), Ok(()));
        type Change = fn(&mut PodSpec);
        let cases: [(&str, Change, Option<&str>); 16] = [
            (
                "another claim",
                |s| {
                    let v = s.volumes.as_mut().unwrap();
                    v[0].persistent_volume_claim.as_mut().unwrap().claim_name = "secrets".into();
                },
                Some("volume data"),
            ),
            (
                "the claim writable",
                |s| {
                    let v = s.volumes.as_mut().unwrap();
                    v[0].persistent_volume_claim.as_mut().unwrap().read_only = None;
                },
                Some("volume data"),
            ),
            (
                "another image",
                |s| s.containers[0].image = Some("evil:latest".into()),
                Some("container mover"),
            ),
            (
                "another command",
                |s| s.containers[0].command = Some(vec!["sh".into()]),
                Some("container mover"),
            ),
            (
                "another drain",
                |s| s.containers[0].args.as_mut().unwrap()[4] = "d-other".into(),
                Some("container mover"),
            ),
            (
                "a sidecar reading the token",
                |s| {
                    let mut spy = s.containers[0].clone();
                    spy.name = "spy".into();
                    spy.image = Some("evil".into());
                    s.containers.push(spy);
                },
                Some("container spy mounts"),
            ),
            (
                "a shared process namespace",
                |s| s.share_process_namespace = Some(true),
                Some("process namespace"),
            ),
            (
                "kubectl debug's ephemeral container",
                |s| {
                    s.ephemeral_containers = Some(vec![EphemeralContainer {
                        name: "debugger-x7k2p".into(),
                        image: Some("busybox".into()),
                        target_container_name: Some("mover".into()),
                        ..EphemeralContainer::default()
                    }])
                },
                Some("ephemeral containers"),
            ),
            (
                "another ServiceAccount",
                |s| s.service_account_name = Some("admin".into()),
                Some("ServiceAccount"),
            ),
            (
                "another user",
                |s| {
                    let c = s.containers[0].security_context.as_mut().unwrap();
                    c.run_as_user = Some(1000);
                },
                Some("container mover"),
            ),
            (
                "another capability",
                |s| {
                    let c = s.containers[0].security_context.as_mut().unwrap();
                    c.capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into()]);
                },
                Some("container mover"),
            ),
            (
                "another pod user",
                |s| s.security_context.as_mut().unwrap().run_as_user = Some(1000),
                Some("pod security context"),
            ),
            (
                "an fsGroup",
                |s| s.security_context.as_mut().unwrap().fs_group = Some(2000),
                Some("pod security context"),
            ),
            (
                "more groups",
                |s| s.security_context.as_mut().unwrap().supplemental_groups = Some(vec![0]),
                Some("pod security context"),
            ),
            (
                "an unrelated sidecar",
                |s| {
                    s.containers.push(Container {
                        name: "proxy".into(),
                        image: Some("envoy".into()),
                        ..Container::default()
                    });
                },
                None,
            ),
            (
                "admission's additions",
                |s| {
                    s.node_name = Some("node-1".into());
                    s.tolerations = Some(vec![Toleration {
                        key: Some("node.kubernetes.io/not-ready".into()),
                        ..Toleration::default()
                    }]);
                },
                None,
            ),
        ];
        for (what, change, refused) in cases {
            let mut pod = pod_of(&job);
            change(pod.spec.as_mut().unwrap());
            match (check_mover_pod(&pod, &job), refused) {
                (Ok(()), None) => {}
                (Err(why), Some(says)) => assert!(why.contains(says), "{what}: {why}"),
                (got, _) => panic!("{what}: {got:?}"),
            }
        }
    }

    #[test]
    fn every_identity_a_mover_may_have_passes_and_no_other_one() {
        use crate::args::PodSecurityLevel as Level;
        let levels = [Level::Privileged, Level::Baseline, Level::Restricted];
        for level in levels {
            let job = build_as(&["ReadWriteOnce"], None, &[], &security(level));
            assert_eq!(check_mover_pod(&pod_of(&job), &job), Ok(()), "{level:?}");
            // A pod with another level's identity is not this Job's mover.
            for other in levels.iter().filter(|l| **l != level) {
                let theirs = build_as(&["ReadWriteOnce"], None, &[], &security(*other));
                let refused = check_mover_pod(&pod_of(&theirs), &job);
                assert!(refused.is_err(), "{other:?} as {level:?}");
            }
        }
    }

    #[test]
    fn a_pod_security_refusal_ends_the_attempt_at_once_others_after_a_minute() {
        let security = "Error creating: pods \"m\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
        let quota = "Error creating: pods \"m\" is forbidden: exceeded quota: compute";
        let secs = Duration::from_secs;
        // (message, waited, ends)
        let cases = [
            (security, secs(5), true),
            (security, secs(61), true),
            (quota, secs(5), false),
            (quota, secs(59), false),
            (quota, secs(60), true),
        ];
        for (message, waited, ends) in cases {
            assert_eq!(
                refusal_ends_attempt(message, waited),
                ends,
                "{message} {waited:?}"
            );
        }
    }

    #[test]
    fn how_a_job_stands() {
        let cases = [
            (json!({}), JobState::Running),
            (json!({"active": 1}), JobState::Running),
            (
                json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
                JobState::Succeeded,
            ),
            (
                json!({"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}),
                JobState::Succeeded,
            ),
            (
                json!({"failed": 1}),
                JobState::Failed("1 pod(s) failed".into()),
            ),
            (
                json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
                JobState::Failed(
                    "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
                ),
            ),
            (
                json!({"conditions": [{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}]}),
                JobState::Failed("DeadlineExceeded".into()),
            ),
            (
                json!({"conditions": [{"type": "Failed", "status": "False"}]}),
                JobState::Running,
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(
                job_state(&job_with_status(status.clone())),
                expected,
                "{status}"
            );
        }
        assert!(is_finished(&job_with_status(
            json!({"conditions": [{"type": "Failed", "status": "True"}]})
        )));
        assert!(!is_finished(&job_with_status(
            json!({"conditions": [{"type": "FailureTarget", "status": "True"}]})
        )));
        assert!(!has_had_pods(&job_with_status(json!({}))));
        assert!(has_had_pods(&job_with_status(json!({"active": 1}))));
    }

    #[test]
    fn a_failed_pod_is_described_with_its_exit_and_last_words() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "drainer-d-1-1-abcde"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "mover", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "INFO starting\ndrainer: cannot reach the drainer at http://x\n"}}
            }]}
        }))
        .unwrap();
        assert_eq!(
            describe_pod(&pod),
            "pod drainer-d-1-1-abcde Failed; container mover terminated (Error, exit code 1): drainer: cannot reach the drainer at http://x"
        );
        let pending: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available"}]}
        }))
        .unwrap();
        assert_eq!(
            describe_pod(&pending),
            "pod p Pending; not scheduled (Unschedulable: 0/2 nodes are available)"
        );
    }

    #[test]
    fn only_the_recorded_job_is_adopted() {
        let job = |name: &str, uid: &str, status: serde_json::Value| -> Job {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "uid": uid}, "status": status})).unwrap()
        };
        let failed = json!({"conditions": [{"type": "Failed", "status": "True"}]});
        let this = job_name(ID, 2);
        let older = job_name(ID, 1);
        let recorded = |name: &str, uid: &str| {
            let d = drain();
            let facts = d.facts.clone().with(crate::facts::MOVER_JOB, Some(name));
            Drain {
                facts: facts.with(crate::facts::MOVER_JOB_UID, Some(uid)),
                ..d
            }
        };
        // (drain, Jobs, adopted uid)
        let ending =
            json!({"failed": 1, "conditions": [{"type": "FailureTarget", "status": "True"}]});
        let cases = [
            (drain(), vec![job(&this, "u2", json!({}))], None),
            (
                recorded(&older, "u1"),
                vec![job(&older, "u1", ending)],
                None,
            ),
            (
                recorded(&this, "u2"),
                vec![job(&this, "u2", json!({}))],
                Some("u2"),
            ),
            (
                recorded(&this, "u2"),
                vec![job(&this, "forged", json!({}))],
                None,
            ),
            (
                recorded(&older, "u1"),
                vec![job(&older, "u1", json!({"active": 1}))],
                Some("u1"),
            ),
            (
                recorded(&older, "u1"),
                vec![job(&older, "u1", failed.clone())],
                None,
            ),
            (
                recorded(&this, "u2"),
                vec![
                    job(&older, "u1", failed.clone()),
                    job(&this, "u2", failed.clone()),
                ],
                Some("u2"),
            ),
        ];
        for (drain, jobs, adopted) in cases {
            let got = adoptable(&drain, &jobs, &this).and_then(|j| j.metadata.uid.as_deref());
            assert_eq!(got, adopted, "{:?} {jobs:?}", drain.mover_job());
        }
        let mut deleting = job(&this, "u2", json!({}));
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(
            adoptable(&recorded(&this, "u2"), &[deleting], &this).map(|_| ()),
            None
        );
    }

    #[test]
    fn a_runs_owner_names_its_mover_pod() {
        let pod = format!("{}-x7k2p", job_name(ID, 1));
        assert_eq!(
            mover_pod_of_owner(&format!("{pod}:1:0a1b2c3d"), ID),
            Some(pod.clone())
        );
        assert_eq!(
            mover_pod_of_owner(&format!("{pod}:1:0a1b2c3d"), "d-other"),
            None
        );
        assert_eq!(mover_pod_of_owner("drainer-0:4711:0a1b2c3d", ID), None);
        assert_eq!(mover_pod_of_owner("mover-of-d-1", ID), None);
    }

    #[test]
    fn a_dropped_attempt_deletes_its_job_only_when_the_drain_ended() {
        let at = |state: DrainState, owner: Option<&str>| Drain {
            state,
            lease_owner: owner.map(str::to_owned),
            ..drain()
        };
        let me = Some("replica-a");
        // (drain now, decision kind)
        let cases = [
            (Some(at(DrainState::Copying, me)), "wait"),
            (Some(at(DrainState::Copying, Some("replica-b"))), "keep"),
            (Some(at(DrainState::Queued, None)), "keep"),
            (Some(at(DrainState::Cancelled, None)), "delete"),
            (Some(at(DrainState::Failed, None)), "delete"),
            (Some(at(DrainState::Completed, None)), "delete"),
            (None, "delete"),
        ];
        for (drain, kind) in cases {
            let got = match after_drop(drain.as_ref(), me) {
                AfterDrop::Wait => "wait",
                AfterDrop::Keep(_) => "keep",
                AfterDrop::Delete(_) => "delete",
            };
            assert_eq!(got, kind, "{:?}", drain.map(|d| d.state));
        }
    }
}
