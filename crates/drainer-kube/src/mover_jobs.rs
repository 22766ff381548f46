//! Mover Jobs, the scheduler's `Executor` in Kubernetes mode. For each attempt of a drain, a Job
//! in the claim's namespace mounts the claim read-only and runs `drainer mover`, which streams the
//! volume to this drainer's Service with a projected token of its own ServiceAccount; the
//! attempt ends when the drain's copy run completes in the ledger, when the Job fails (its pod
//! killed, deleted, past its deadline), or at the mover timeout.
//!
//! What it decides, as pure functions with table tests: the Job itself ([`mover_job`]: name,
//! labels, security, resources, placement), whether a pod is a true copy of a mover Job's
//! template ([`check_mover_pod`], used by `identity`), how a Job has ended ([`job_state`]),
//! which recorded Job an attempt adopts ([`adoptable`]) and what happens to a Job when its
//! attempt is dropped ([`after_drop`]). What it does, in thin code (this file): create
//! (suspended, so no pod exists before its UID is in the ledger), adopt, follow and delete
//! Jobs. The parts: `spec` (the flags), `job` (the Job), `decide` (decisions on live objects).
//!
//! Rules that hold across restarts, replicas and cancels:
//! - **One mover per drain.** Before an attempt starts a Job, every unfinished Job of the drain
//!   that the ledger does not record is deleted and its pods are waited for. A copy run held
//!   by a mover pod that has ended is released, so the next mover resumes it at once.
//! - **Adopt, never duplicate.** The Job the ledger records for the drain (name *and* UID, so
//!   a Job that merely carries drainer's labels is never trusted) is adopted when it is still
//!   running (drainer restarted, or another replica took the drain over) or when it is this
//!   attempt's own (its outcome is the attempt's outcome).
//! - **Dropped attempts.** When the attempt's future is dropped, the Job is deleted if the
//!   drain has ended (cancelled), and kept when the drain was released at shutdown or taken
//!   over by another replica: the mover keeps streaming (it waits while its drain is queued)
//!   and the next claim adopts it.
//! - **Finished Jobs.** A successful Job is deleted at once; a failed one is kept for
//!   `--mover-keep-failed` seconds (`ttlSecondsAfterFinished`) for `kubectl logs`.
//! - **Admitted movers.** Each new Job's identity is chosen from the namespace's labels as they
//!   are then, and noted in the history entry of its attempt. A pod that PodSecurity admission
//!   refuses fails the attempt within seconds, and the namespace's next mover is built for the
//!   policy the refusal names (while its labels stay as they were).

use crate::args::KubeArgs;
use crate::facts::{KubeDrain, KubeLedger};
use crate::planner::set_claim;
use crate::{Cluster, Error, call};
use drainer_core::ledger::{Drain, Ledger};
use drainer_core::snapshot::{self, Progress, SnapshotSummary};
use drainer_core::store::Store;
use drainer_server::scheduler::{Executor, completed_copy, following_mover};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

#[cfg(test)]
mod api_tests;
mod decide;
#[cfg(test)]
pub(crate) mod fixtures;
mod job;
mod security;
mod spec;

use crate::hold::DRAIN_LABEL;
pub use decide::{
    AfterDrop, JobState, adoptable, after_drop, check_mover_pod, describe_pod, is_finished,
    job_state, mover_pod_of_owner,
};
use decide::{has_had_pods, is_suspended, refusal_ends_attempt};
pub use job::{
    ATTEMPT_LABEL, CONTAINER, DATA_DIR, TOKEN_DIR, drain_label, job_name, mount_node, mover_job,
    placement, single_node,
};
use job::{CONTROLLER_UID, mover_selector};
pub use security::{
    AppIdentity, Chosen, ENFORCE_LABEL, ENFORCE_VERSION_LABEL, Kind, MoverSecurity, Refusal, choose,
};
use security::{app_identity, refused_policy};
pub use spec::{MoverCa, MoverSpec, Resource, check_service_url};

/// How long an attempt waits for the pods of a drain's unrecorded Jobs to end, or for a Job
/// in the way of its own to go.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a Job without a pod is left before its events are read for a refusal, and then
/// between two reads while it has none (see [`refusal_ends_attempt`]).
const REFUSAL_LOOK: Duration = Duration::from_secs(5);
/// How often an attempt looks at the ledger and the Job.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How long the clean-up of a dropped attempt waits for its drain to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past its Job's deadline an attempt still waits for the Job to fail.
const DEADLINE_MARGIN: Duration = Duration::from_secs(120);
/// How long a Job that succeeded is given for its run's completion to show in the ledger.
const COMPLETION_GRACE: Duration = Duration::from_secs(10);

/// Kubernetes mode's `Executor`: each attempt of a drain is a mover Job (see the module doc).
pub(crate) struct JobMovers {
    cluster: Cluster,
    ledger: Ledger,
    store: Store,
    spec: MoverSpec,
    service_url: String,
    timeout: Duration,
    /// The last refusal of a mover pod by PodSecurity admission, by namespace.
    refusals: Mutex<HashMap<String, Refusal>>,
}

impl std::fmt::Debug for JobMovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobMovers({} via {})", self.spec.image, self.service_url)
    }
}

/// One mover Job.
#[derive(Debug, Clone)]
struct Mover {
    namespace: String,
    name: String,
    uid: String,
}

impl Mover {
    fn of(job: &Job) -> Option<Self> {
        Some(Self {
            namespace: job.metadata.namespace.clone()?,
            name: job.metadata.name.clone()?,
            uid: job.metadata.uid.clone()?,
        })
    }

    /// The Job the ledger records for `drain`, if any.
    fn recorded(drain: &Drain) -> Option<Self> {
        Some(Self {
            namespace: drain.namespace.clone(),
            name: drain.mover_job()?.to_owned(),
            uid: drain.mover_job_uid()?.to_owned(),
        })
    }

    fn what(&self) -> String {
        format!("mover Job {}/{}", self.namespace, self.name)
    }

    fn pods_selector(&self) -> String {
        format!("{CONTROLLER_UID}={}", self.uid)
    }
}

/// How following an attempt's Job ended.
enum Ended {
    /// The drain's copy run completed.
    Copied(SnapshotSummary),
    /// The attempt failed; `delete` says whether its Job goes now (it may still run: a
    /// timeout) or stays (failed and kept for its logs, gone already, or still running for
    /// the next attempt to adopt after an error of drainer's own).
    Failed {
        error: snapshot::Error,
        delete: bool,
    },
}

/// A mover that failed or did not finish: it may pass on another attempt.
fn mover_error(drain: &Drain, reason: impl Into<String>) -> snapshot::Error {
    snapshot::Error::Executor {
        drain: drain.id.clone(),
        reason: reason.into(),
        transient: true,
    }
}

/// An API call about a drain's mover that failed, as transient as the API's answer: a
/// refusal (403, 422: an admission policy, a quota, an invalid Job) stays until something
/// changes, so the drain is `failing` at once rather than after its quick retries; a
/// conflict (409) passes once the object is read again.
fn api_error(drain: &Drain) -> impl Fn(Error) -> snapshot::Error + '_ {
    move |e| snapshot::Error::Executor {
        drain: drain.id.clone(),
        transient: e.is_transient() || e.is_conflict(),
        reason: e.to_string(),
    }
}

fn ledger_error(e: drainer_core::ledger::Error) -> snapshot::Error {
    snapshot::Error::Checkpoint(e.into())
}

/// A claim that cannot be copied (gone, replaced, being deleted, unbound): permanent.
fn claim_error(drain: &Drain, reason: String) -> snapshot::Error {
    snapshot::Error::Source {
        path: std::path::PathBuf::from(drain.volume().to_string()),
        reason,
    }
}

/// A mover's failure, with who the mover ran as (when this attempt chose it).
fn with_identity(error: snapshot::Error, chosen: Option<&Chosen>) -> snapshot::Error {
    match (error, chosen) {
        (
            snapshot::Error::Executor {
                drain,
                reason,
                transient,
            },
            Some(chosen),
        ) => snapshot::Error::Executor {
            drain,
            reason: format!("{reason} (the mover ran as {})", chosen.security.describe()),
            transient,
        },
        (error, _) => error,
    }
}

impl JobMovers {
    /// The executor, with its flags checked (`--service-url` and the mover flags). A mover is
    /// bounded by its Job's deadline (`--mover-deadline`, which Kubernetes enforces and the
    /// watch reports); an attempt waits at most the longer of `timeout` (`--mover-timeout`)
    /// and that deadline with a margin, in case it is not enforced.
    pub fn new(
        cluster: Cluster,
        ledger: Ledger,
        store: Store,
        kube: &KubeArgs,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let spec = MoverSpec::new(&kube.movers, &kube.audience)?;
        let service_url = check_service_url(kube.service_url.as_deref(), spec.ca.as_ref())?;
        Ok(Self {
            cluster,
            ledger,
            store,
            spec,
            service_url,
            timeout: timeout.max(kube.movers.mover_deadline + DEADLINE_MARGIN),
            refusals: Mutex::default(),
        })
    }

    fn jobs(&self, namespace: &str) -> Api<Job> {
        Api::namespaced(self.cluster.client.clone(), namespace)
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.cluster.client.clone(), namespace)
    }

    /// One attempt: start (or adopt) the Job, follow it to its end, clean up.
    async fn attempt(&self, drain: &Drain) -> snapshot::Result<SnapshotSummary> {
        // A drain taken over after its mover finished (through another replica, while the
        // replica that held the drain was dead) is copied already: its Job has succeeded, so
        // it is not adopted, and a new one would be a second mover of the drain.
        if let Some(summary) = completed_copy(&self.ledger, &self.store, drain).await? {
            if let Some(mover) = Mover::recorded(drain) {
                self.delete(&mover, "its copy is complete").await;
            }
            return Ok(summary);
        }
        let (mover, mut guard, chosen) = self.start(drain).await?;
        let ended = self.follow(drain, &mover, chosen.as_ref()).await;
        guard.disarm();
        match ended {
            Ended::Copied(summary) => {
                self.delete(&mover, "its copy is complete").await;
                Ok(summary)
            }
            Ended::Failed { error, delete } => {
                if delete {
                    self.delete(&mover, "its attempt failed").await;
                }
                Err(with_identity(error, chosen.as_ref()))
            }
        }
    }

    /// Adopts the Job the ledger records, or creates this attempt's; stops every other
    /// running Job of the drain first. Returns the Job, recorded and resumed, with a guard
    /// that deletes it if the attempt is dropped because its drain ended, and the identity
    /// chosen for it if this attempt created it.
    async fn start(&self, drain: &Drain) -> snapshot::Result<(Mover, JobGuard, Option<Chosen>)> {
        let name = job_name(&drain.id, drain.attempts);
        let jobs = self.jobs_of(drain).await?;
        let adopted = adoptable(drain, &jobs, &name).cloned();
        self.stop_others(drain, &jobs, adopted.as_ref()).await?;
        // Armed before the create call: an attempt dropped while it is under way leaves no
        // suspended Job behind (it would never finish, so never expire).
        let mut guard = JobGuard::arm(self, drain, &name);
        let (job, chosen) = match adopted {
            Some(job) => {
                tracing::info!(job = ?job.metadata.name, "adopting the mover Job the ledger records");
                (job, None)
            }
            None => {
                self.release_dead_holder(drain).await?;
                let (job, chosen) = self.create(drain, &name).await?;
                (job, Some(chosen))
            }
        };
        let mover = Mover::of(&job)
            .ok_or_else(|| mover_error(drain, format!("Job {name} came back without a UID")))?;
        guard.guards(&mover);
        // Recorded before its pod exists: the Job is created suspended.
        self.ledger
            .set_mover_job(&drain.id, &mover.name, &mover.uid)
            .await
            .map_err(ledger_error)?;
        if let Some(chosen) = &chosen {
            self.note(drain, &mover, chosen).await;
        }
        if is_suspended(&job) {
            let patch = serde_json::json!({ "spec": { "suspend": false } });
            call(
                format!("resume {}", mover.what()),
                self.jobs(&mover.namespace).patch(
                    &mover.name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                ),
            )
            .await
            .map_err(api_error(drain))?;
        }
        Ok((mover, guard, chosen))
    }

    /// Says in the history entry of this attempt who its mover runs as, and why.
    async fn note(&self, drain: &Drain, mover: &Mover, chosen: &Chosen) {
        let Some(owner) = drain.lease_owner.as_deref() else {
            return;
        };
        let note = format!(
            "mover Job {} runs as {}: {}",
            mover.name,
            chosen.security.describe(),
            chosen.security.why
        );
        match self.ledger.note_attempt(&drain.id, owner, &note).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(note = %note, "the attempt's history entry is no longer the last; not noted")
            }
            Err(e) => {
                tracing::warn!(error = %e, note = %note, "cannot note the mover's identity in the history")
            }
        }
    }

    /// Who the drain's next mover runs as: from the flags, the namespace's labels (read now),
    /// the last refusal of a mover there, and the claim's StatefulSet.
    async fn choose(&self, drain: &Drain) -> Chosen {
        let labels = self.namespace_labels(&drain.namespace).await;
        let refusal = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&drain.namespace)
            .cloned();
        let app = self.app_identity(drain);
        choose(
            self.spec.identity,
            self.spec.pod_security_default,
            labels.as_ref().map_err(String::as_str),
            refusal.as_ref(),
            app.as_ref(),
        )
    }

    /// The labels of `namespace`, read now, or why they cannot be.
    async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        let api: Api<Namespace> = Api::all(self.cluster.client.clone());
        match call(format!("get namespace {namespace}"), api.get_opt(namespace)).await {
            Ok(Some(ns)) => Ok(ns.metadata.labels.unwrap_or_default()),
            Ok(None) => Err(format!("namespace {namespace} does not exist")),
            Err(e) => {
                tracing::warn!(error = %e, namespace, "cannot read the namespace's Pod Security labels");
                Err(e.to_string())
            }
        }
    }

    /// The identity the claim's StatefulSet gives its pods, if the set is known.
    fn app_identity(&self, drain: &Drain) -> Option<AppIdentity> {
        let sets = self.cluster.sets_in(&drain.namespace);
        let place = set_claim(&drain.pvc, sets.iter().map(|s| s.as_ref()))?;
        let set = sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(place.set.as_str()))?;
        Some(app_identity(set, &place.template))
    }

    /// Remembers that PodSecurity admission refused a mover of `namespace` under `policy`,
    /// for the namespace's next mover (see `security::with_refusal`).
    fn refused(&self, namespace: &str, chosen: &Chosen, message: &str) {
        let Some((level, policy)) = refused_policy(message) else {
            return;
        };
        tracing::warn!(namespace, policy = %policy, identity = %chosen.security.describe(), "PodSecurity admission refused the mover; the next one is built for that policy");
        let refusal = Refusal {
            level,
            policy,
            labels: chosen.labels.clone(),
        };
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_owned(), refusal);
    }

    /// The drain's mover Jobs, as the API has them now.
    async fn jobs_of(&self, drain: &Drain) -> snapshot::Result<Vec<Job>> {
        let list = call(
            format!(
                "list mover Jobs of drain {} in {}",
                drain.id, drain.namespace
            ),
            self.jobs(&drain.namespace)
                .list(&ListParams::default().labels(&mover_selector(&drain.id))),
        )
        .await
        .map_err(api_error(drain))?;
        Ok(list.items)
    }

    /// Deletes every running Job of the drain but `adopted`, and waits until the pods of
    /// every unfinished one have ended (a Job that failed keeps its pod for `kubectl logs`,
    /// once that pod has stopped): never two movers of one drain.
    async fn stop_others(
        &self,
        drain: &Drain,
        jobs: &[Job],
        adopted: Option<&Job>,
    ) -> snapshot::Result<()> {
        let keep = adopted.and_then(|j| j.metadata.uid.as_deref());
        for job in jobs.iter().filter(|j| !is_finished(j)) {
            let Some(other) = Mover::of(job).filter(|m| Some(m.uid.as_str()) != keep) else {
                continue;
            };
            if job_state(job) == JobState::Running {
                tracing::info!(job = %other.name, "deleting a running mover Job that is not this attempt's");
                delete_job(&self.cluster.client, &other)
                    .await
                    .map_err(api_error(drain))?;
            }
            self.wait_pods_ended(drain, &other).await?;
        }
        Ok(())
    }

    /// Waits (at most [`STOP_TIMEOUT`]) until no pod of `mover` runs.
    async fn wait_pods_ended(&self, drain: &Drain, mover: &Mover) -> snapshot::Result<()> {
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            let pods = call(
                format!("list pods of {}", mover.what()),
                self.pods(&mover.namespace)
                    .list(&ListParams::default().labels(&mover.pods_selector())),
            )
            .await
            .map_err(api_error(drain))?;
            let running = pods.items.iter().find(|p| !pod_ended(p));
            let Some(pod) = running else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(mover_error(
                    drain,
                    format!(
                        "{} was deleted but {} still runs; a later attempt tries again",
                        mover.what(),
                        describe_pod(pod)
                    ),
                ));
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }

    /// Releases the drain's copy run if a mover pod of the drain holds it and has ended, so
    /// the next mover resumes the run at once instead of waiting for its lease to pass.
    async fn release_dead_holder(&self, drain: &Drain) -> snapshot::Result<()> {
        let Some(run) = self
            .ledger
            .run_of_drain(&drain.id)
            .await
            .map_err(ledger_error)?
        else {
            return Ok(());
        };
        let Some(owner) = run
            .owner
            .clone()
            .filter(|_| run.state == drainer_core::ledger::RunState::Running)
        else {
            return Ok(());
        };
        let Some(pod) = mover_pod_of_owner(&owner, &drain.id) else {
            tracing::debug!(run = %run.id, owner = %owner, "the copy run is held by no mover pod of this drain");
            return Ok(());
        };
        let found = call(
            format!("get pod {}/{pod}", drain.namespace),
            self.pods(&drain.namespace).get_opt(&pod),
        )
        .await
        .map_err(api_error(drain))?;
        if found.as_ref().is_some_and(|p| !pod_ended(p)) {
            return Ok(());
        }
        let held = snapshot::Run {
            id: run.id.clone(),
            snapshot: run
                .snapshot
                .parse()
                .map_err(|reason: String| mover_error(drain, reason))?,
            resumed: true,
        };
        self.ledger
            .run_checkpoint(Some(owner), Some(drain.id.clone()))
            .interrupted(&held, &format!("mover pod {pod} ended"))
            .await
            .map_err(ledger_error)?;
        tracing::info!(run = %run.id, pod = %pod, "released the copy run of a mover pod that ended");
        Ok(())
    }

    /// Creates this attempt's Job (suspended). A Job of the same name that the ledger does
    /// not record is deleted first.
    async fn create(&self, drain: &Drain, name: &str) -> snapshot::Result<(Job, Chosen)> {
        let claim = self.claim(drain).await?;
        let volume = self.volume(drain, &claim).await?;
        let node = match (&volume, single_node(&claim)) {
            (Some(pv), true) => self.mount_node(drain, pv).await,
            _ => None,
        };
        let chosen = self.choose(drain).await;
        let mut spec = self.spec.clone();
        spec.ca = spec.ca.as_ref().map(MoverCa::refreshed);
        let wanted = mover_job(
            drain,
            drain.attempts,
            &claim,
            volume.as_ref(),
            node.as_deref(),
            &spec,
            &chosen.security,
            &self.service_url,
        );
        let api = self.jobs(&drain.namespace);
        let what = format!("create mover Job {}/{name}", drain.namespace);
        for _ in 0..3 {
            match call(what.clone(), api.create(&PostParams::default(), &wanted)).await {
                Ok(job) => {
                    tracing::info!(job = name, node = ?node, identity = %chosen.security.describe(), why = %chosen.security.why, "mover Job created");
                    return Ok((job, chosen));
                }
                Err(e) if e.is_conflict() => self.clear_name(drain, name).await?,
                Err(e) => return Err(api_error(drain)(e)),
            }
        }
        Err(mover_error(
            drain,
            format!("Job {}/{name} keeps existing", drain.namespace),
        ))
    }

    /// Deletes the Job named `name`, which is in the way, and waits until it is gone; a Job of
    /// that name that is not labelled as this drain's mover is left alone and fails the
    /// attempt for good (it is someone else's: drainer never deletes it).
    async fn clear_name(&self, drain: &Drain, name: &str) -> snapshot::Result<()> {
        let api = self.jobs(&drain.namespace);
        let what = format!("delete Job {}/{name}", drain.namespace);
        let Some(in_the_way) = call(what.clone(), api.get_opt(name))
            .await
            .map_err(api_error(drain))?
        else {
            return Ok(());
        };
        if !job::is_drains_job(&in_the_way, &drain.id) {
            return Err(snapshot::Error::Executor {
                drain: drain.id.clone(),
                reason: format!(
                    "Job {}/{name} is in the way of this attempt's mover and is not drainer's (not labelled as drain {}'s mover); it is left alone: delete or rename it",
                    drain.namespace, drain.id
                ),
                transient: false,
            });
        }
        tracing::warn!(
            job = name,
            "a mover Job of this attempt's name exists that the ledger does not record; deleting it"
        );
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: in_the_way.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match call(what.clone(), api.delete(name, &params)).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => return Err(api_error(drain)(e)),
        }
        self.wait_gone(drain, name).await
    }

    /// Waits until the Job named `name` is gone.
    async fn wait_gone(&self, drain: &Drain, name: &str) -> snapshot::Result<()> {
        let api = self.jobs(&drain.namespace);
        let what = format!("read Job {}/{name}", drain.namespace);
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while call(what.clone(), api.get_opt(name))
            .await
            .map_err(api_error(drain))?
            .is_some()
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(mover_error(
                    drain,
                    format!(
                        "Job {}/{name} is in the way and was not deleted in time",
                        drain.namespace
                    ),
                ));
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        Ok(())
    }

    /// The drain's claim, if a mover can mount it.
    async fn claim(&self, drain: &Drain) -> snapshot::Result<PersistentVolumeClaim> {
        let volume = drain.volume();
        let claim = match self.cluster.claim(&drain.namespace, &drain.pvc) {
            Some(claim) => (*claim).clone(),
            None => {
                let api: Api<PersistentVolumeClaim> =
                    Api::namespaced(self.cluster.client.clone(), &drain.namespace);
                call(format!("get claim {volume}"), api.get_opt(&drain.pvc))
                    .await
                    .map_err(api_error(drain))?
                    .ok_or_else(|| claim_error(drain, format!("claim {volume} does not exist")))?
            }
        };
        if let (Some(recorded), Some(now)) = (drain.pvc_uid(), claim.metadata.uid.as_deref())
            && recorded != now
        {
            return Err(claim_error(
                drain,
                format!(
                    "claim {volume} was deleted and created again (uid {recorded} is now {now})"
                ),
            ));
        }
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(claim_error(
                drain,
                format!("claim {volume} is being deleted; no mover can mount it"),
            ));
        }
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Bound") {
            return Err(claim_error(
                drain,
                format!(
                    "claim {volume} is not bound to a volume (phase {})",
                    phase.unwrap_or("unknown")
                ),
            ));
        }
        Ok(claim)
    }

    /// The persistent volume a claim is bound to.
    async fn volume(
        &self,
        drain: &Drain,
        claim: &PersistentVolumeClaim,
    ) -> snapshot::Result<Option<PersistentVolume>> {
        let Some(name) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) else {
            return Ok(None);
        };
        if let Some(pv) = self.cluster.volumes.get(&ObjectRef::new(name)) {
            return Ok(Some((*pv).clone()));
        }
        let api: Api<PersistentVolume> = Api::all(self.cluster.client.clone());
        call(format!("get volume {name}"), api.get_opt(name))
            .await
            .map_err(api_error(drain))
    }

    /// Where a single-node volume is to be mounted (see [`mount_node`]), from its
    /// VolumeAttachments; the recorded node when they cannot be read.
    async fn mount_node(&self, drain: &Drain, volume: &PersistentVolume) -> Option<String> {
        let name = volume.metadata.name.as_deref()?;
        let api: Api<VolumeAttachment> = Api::all(self.cluster.client.clone());
        let attached = match call("list volume attachments", api.list(&ListParams::default())).await
        {
            Ok(list) => Some(
                list.items
                    .into_iter()
                    .filter(|a| a.spec.source.persistent_volume_name.as_deref() == Some(name))
                    .filter(|a| a.status.as_ref().is_some_and(|s| s.attached))
                    .map(|a| a.spec.node_name)
                    .collect::<Vec<_>>(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, node = ?drain.node(), "cannot read volume attachments; placing the mover on the last pod's node");
                None
            }
        };
        mount_node(drain.node(), attached.as_deref())
    }

    /// Follows the attempt until the copy completes, the Job fails or is deleted, its pod is
    /// refused, or the mover timeout passes.
    async fn follow(&self, drain: &Drain, mover: &Mover, chosen: Option<&Chosen>) -> Ended {
        let started = tokio::time::Instant::now();
        let mut events_read: Option<tokio::time::Instant> = None;
        loop {
            match completed_copy(&self.ledger, &self.store, drain).await {
                Ok(Some(summary)) => return Ended::Copied(summary),
                Ok(None) => {}
                Err(error) => {
                    return Ended::Failed {
                        error,
                        delete: false,
                    };
                }
            }
            let job = match self.current(mover).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    let error = mover_error(
                        drain,
                        format!("{} was deleted before its copy completed", mover.what()),
                    );
                    return Ended::Failed {
                        error,
                        delete: false,
                    };
                }
                Err(e) => {
                    return Ended::Failed {
                        error: api_error(drain)(e),
                        delete: false,
                    };
                }
            };
            match job_state(&job) {
                JobState::Running => {}
                JobState::Failed(why) => return self.failed(drain, mover, &why).await,
                JobState::Succeeded => return self.succeeded(drain, mover).await,
            }
            let look = events_read.is_none_or(|at| at.elapsed() >= REFUSAL_LOOK);
            if !has_had_pods(&job) && started.elapsed() >= REFUSAL_LOOK && look {
                events_read = Some(tokio::time::Instant::now());
                let refusal = self
                    .creation_refused(mover)
                    .await
                    .filter(|r| refusal_ends_attempt(r, started.elapsed()));
                if let Some(refusal) = refusal {
                    if let Some(chosen) = chosen {
                        self.refused(&drain.namespace, chosen, &refusal);
                    }
                    let error = mover_error(
                        drain,
                        format!("{} cannot create its pod: {refusal}", mover.what()),
                    );
                    return Ended::Failed {
                        error,
                        delete: true,
                    };
                }
            }
            if started.elapsed() >= self.timeout {
                let error = mover_error(
                    drain,
                    format!(
                        "{} did not finish within {} s ({})",
                        mover.what(),
                        self.timeout.as_secs(),
                        self.pod_states(mover).await
                    ),
                );
                return Ended::Failed {
                    error,
                    delete: true,
                };
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }

    /// The Job as the watch has it (the API when the watch does not have it yet or any
    /// more), if it still exists.
    async fn current(&self, mover: &Mover) -> Result<Option<Job>, Error> {
        let seen = self
            .cluster
            .jobs
            .get(&ObjectRef::new(&mover.name).within(&mover.namespace))
            .filter(|j| j.metadata.uid.as_deref() == Some(mover.uid.as_str()));
        if let Some(job) = seen {
            return Ok(Some((*job).clone()));
        }
        let found = call(
            format!("get {}", mover.what()),
            self.jobs(&mover.namespace).get_opt(&mover.name),
        )
        .await?;
        Ok(found.filter(|j| j.metadata.uid.as_deref() == Some(mover.uid.as_str())))
    }

    /// The Job failed: the attempt fails with why and its pod's end, unless the copy
    /// completed after all (a mover that stored the snapshot but found unreadable files
    /// exits 3). The Job is kept for its logs.
    async fn failed(&self, drain: &Drain, mover: &Mover, why: &str) -> Ended {
        match completed_copy(&self.ledger, &self.store, drain).await {
            Ok(Some(summary)) => return Ended::Copied(summary),
            Ok(None) => {}
            Err(error) => {
                return Ended::Failed {
                    error,
                    delete: false,
                };
            }
        }
        let error = mover_error(
            drain,
            format!(
                "{} failed: {why} ({})",
                mover.what(),
                self.pod_states(mover).await
            ),
        );
        Ended::Failed {
            error,
            delete: false,
        }
    }

    /// The Job succeeded: its copy run must have completed.
    async fn succeeded(&self, drain: &Drain, mover: &Mover) -> Ended {
        let deadline = tokio::time::Instant::now() + COMPLETION_GRACE;
        loop {
            match completed_copy(&self.ledger, &self.store, drain).await {
                Ok(Some(summary)) => return Ended::Copied(summary),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(FOLLOW_EVERY).await;
                }
                Ok(None) => {
                    let error = mover_error(
                        drain,
                        format!(
                            "{} succeeded but the drain's copy is not complete",
                            mover.what()
                        ),
                    );
                    return Ended::Failed {
                        error,
                        delete: true,
                    };
                }
                Err(error) => {
                    return Ended::Failed {
                        error,
                        delete: false,
                    };
                }
            }
        }
    }

    /// Its pods' states in one line, read from the API (the watch keeps no pod status).
    async fn pod_states(&self, mover: &Mover) -> String {
        let listed = call(
            format!("list pods of {}", mover.what()),
            self.pods(&mover.namespace)
                .list(&ListParams::default().labels(&mover.pods_selector())),
        )
        .await;
        match listed {
            Ok(pods) if pods.items.is_empty() => "its pod is gone".to_owned(),
            Ok(pods) => pods
                .items
                .iter()
                .map(describe_pod)
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("its pods cannot be read: {e}"),
        }
    }

    /// Why the Job controller could not create the Job's pod, from its `FailedCreate` events.
    async fn creation_refused(&self, mover: &Mover) -> Option<String> {
        let api: Api<Event> = Api::namespaced(self.cluster.client.clone(), &mover.namespace);
        let params = ListParams::default().fields(&format!("involvedObject.uid={}", mover.uid));
        let events = call(
            format!("list events of {}", mover.what()),
            api.list(&params),
        )
        .await
        .ok()?;
        events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .filter_map(|e| e.message)
            .next_back()
    }

    async fn delete(&self, mover: &Mover, why: &str) {
        match delete_job(&self.cluster.client, mover).await {
            Ok(()) => tracing::info!(job = %mover.name, why, "mover Job deleted"),
            Err(e) => {
                tracing::warn!(job = %mover.name, error = %e, "cannot delete the mover Job; its ttlSecondsAfterFinished or the next attempt will")
            }
        }
    }
}

/// Whether every container of a pod has stopped (or the pod is being deleted with none
/// running: a deleted pod's processes are what is waited for, through its phase).
fn pod_ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Deletes a mover Job and, in the background, its pods; a Job already gone (or replaced by
/// another of the same name) is left alone.
async fn delete_job(client: &kube::Client, mover: &Mover) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), &mover.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(mover.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match call(
        format!("delete {}", mover.what()),
        api.delete(&mover.name, &params),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait::async_trait]
impl Executor for JobMovers {
    async fn execute(
        &self,
        drain: &Drain,
        progress: Arc<Progress>,
    ) -> snapshot::Result<SnapshotSummary> {
        let span = tracing::info_span!("mover_job", drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, attempt = drain.attempts);
        let attempt = self.attempt(drain).instrument(span);
        following_mover(&self.ledger, &drain.id, &progress, attempt).await
    }
}

/// Deletes an attempt's Job when the attempt is dropped before it ended, if its drain ended
/// (see [`after_drop`]); disarmed when the attempt ends on its own.
struct JobGuard(Option<Settle>);

/// What the clean-up of a dropped attempt needs.
struct Settle {
    client: kube::Client,
    ledger: Ledger,
    drain: String,
    owner: Option<String>,
    namespace: String,
    /// The Job: its name, and its UID once known (a Job being created may exist without).
    name: String,
    uid: Option<String>,
}

impl JobGuard {
    /// A guard of the Job `name` that this attempt is about to create or adopt.
    fn arm(movers: &JobMovers, drain: &Drain, name: &str) -> Self {
        Self(Some(Settle {
            client: movers.cluster.client.clone(),
            ledger: movers.ledger.clone(),
            drain: drain.id.clone(),
            owner: drain.lease_owner.clone(),
            namespace: drain.namespace.clone(),
            name: name.to_owned(),
            uid: None,
        }))
    }

    /// The guarded Job is `mover`.
    fn guards(&mut self, mover: &Mover) {
        if let Some(settle) = self.0.as_mut() {
            settle.name = mover.name.clone();
            settle.uid = Some(mover.uid.clone());
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let Some(settle) = self.0.take() else {
            return;
        };
        let span =
            tracing::info_span!("mover_job_dropped", drain = %settle.drain, job = %settle.name);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(settle.run().instrument(span));
            }
            Err(_) => {
                tracing::warn!(parent: &span, "no runtime to clean up the mover Job; the next attempt will")
            }
        }
    }
}

impl Settle {
    /// Deletes the Job: by its UID, or, when the attempt was dropped before it learnt the
    /// UID, the Job of that name if it is this drain's.
    async fn delete(&self) -> Result<(), Error> {
        let uid = match &self.uid {
            Some(uid) => uid.clone(),
            None => {
                let api: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
                let what = format!("get Job {}/{}", self.namespace, self.name);
                let found = call(what, api.get_opt(&self.name)).await?;
                let label = drain_label(&self.drain);
                let ours = found.filter(|j| {
                    j.metadata.labels.as_ref().and_then(|l| l.get(DRAIN_LABEL)) == Some(&label)
                });
                match ours.and_then(|j| j.metadata.uid) {
                    Some(uid) => uid,
                    None => return Ok(()),
                }
            }
        };
        let mover = Mover {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid,
        };
        delete_job(&self.client, &mover).await
    }

    /// Waits (at most [`SETTLE_TIMEOUT`]) until the drain is no longer this replica's, then
    /// deletes or keeps the Job.
    async fn run(self) {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let decision = match self.ledger.drain(&self.drain).await {
                Ok(drain) => after_drop(drain.as_ref(), self.owner.as_deref()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the drain; looking again");
                    AfterDrop::Wait
                }
            };
            match decision {
                AfterDrop::Wait if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                AfterDrop::Wait => {
                    tracing::info!(
                        "mover Job kept: the drain is still recorded as this replica's, and its next claim adopts the Job"
                    );
                    return;
                }
                AfterDrop::Keep(why) => {
                    tracing::info!(why = %why, "mover Job kept running");
                    return;
                }
                AfterDrop::Delete(why) => {
                    match self.delete().await {
                        Ok(()) => tracing::info!(why = %why, "mover Job deleted"),
                        Err(e) => {
                            tracing::warn!(error = %e, why = %why, "cannot delete the mover Job")
                        }
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(code: u16) -> Error {
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"code": code, "message": "answer"})).unwrap();
        Error::Api {
            what: "creating Job mover-x".into(),
            source: kube::Error::Api(Box::new(status)),
        }
    }

    #[test]
    fn an_api_refusal_is_permanent_and_an_outage_transient_across_the_executor_seam() {
        let drain = fixtures::drain();
        for (code, transient) in [
            (400, false),
            (403, false),
            (422, false),
            (409, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let error = api_error(&drain)(answered(code));
            assert_eq!(error.is_transient(), transient, "HTTP {code}: {error}");
            assert!(
                error.to_string().contains(&drain.id) && error.to_string().contains("mover-x"),
                "{error}"
            );
        }
        let timeout = Error::Timeout {
            what: "reading Job mover-x".into(),
            seconds: 10,
        };
        assert!(api_error(&drain)(timeout).is_transient());
        assert!(mover_error(&drain, "the mover pod failed").is_transient());
    }
}
