//! Who is calling, in a cluster: the [`drainer_server::auth::Authority`] of Kubernetes mode.
//!
//! A caller presents a projected ServiceAccount token with drainer's audience. A TokenReview
//! (audience checked) names its ServiceAccount and, for a pod's token, the pod's name and UID;
//! the pod is then confirmed against the live object (the API server caches reviews for about
//! ten seconds, so a deleted pod's token could still pass it) and its claims become its
//! mounts. A mover is a pod whose controlling Job is the one drainer created for a drain
//! being copied, or queued to be copied again (the Job's UID is in the ledger, so labels
//! cannot forge it; only a copying drain accepts data), and whose spec is
//! that Job's template where it matters (an owner reference can be forged too: see
//! [`movers::check_mover_pod`]; checked once per version of the pod). Other
//! ServiceAccounts (a Job's, an operator tool's) may hand off what RBAC grants them: a
//! SubjectAccessReview for `create` on `handoffs.drainer.io` in the claim's namespace. Restores
//! follow the same rule: a pod restores the claims it mounts, others need `create` on
//! `restores.drainer.io` in the volume's namespace. The
//! static token, when configured, is an admin's (its use is logged).
//!
//! Operators need no shared secret: any other identity the API server vouches for (a
//! ServiceAccount's token from `kubectl create token`, an OIDC user's) is a
//! [`Caller::User`] (or a workload, for a ServiceAccount), and may do what RBAC grants it on
//! drainer's resources ([`drainer_server::auth::Action::permission`]), asked with a SubjectAccessReview
//! ([`TokenReviews::granted`]). Successful token reviews are cached for [`REVIEW_TTL`]; the
//! pod check is not cached. Reviews of tokens not cached pass a [`ReviewGate`]: a token
//! refused lately is refused without a review, and reviews are rate-limited, so a flood of
//! bad tokens costs the API server a bounded number of them. SubjectAccessReview answers,
//! grants and refusals alike, are kept for [`ACCESS_TTL`] (at most [`ACCESS_MAX`] of them),
//! and those not kept pass a gate of their own, so repeated refusals cost no more reviews.

use super::{Cluster, Error, call, movers, planner};
use drainer_core::ledger::Ledger;
use drainer_core::volume::VolumeId;
use drainer_server::auth::{
    Authority, Caller, CurrentLife, Denied, NamespaceLife, Permission, PodIdentity, Subject,
    Workload,
};
use drainer_server::review_gate::{GateLimits, ReviewGate, token_key};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a successful TokenReview is reused.
pub(crate) const REVIEW_TTL: Duration = Duration::from_secs(10);
/// How long a SubjectAccessReview's answer, a grant or a refusal, is reused (a binding
/// removed stops granting within this time).
pub(crate) const ACCESS_TTL: Duration = Duration::from_secs(5);
/// Most SubjectAccessReview answers kept.
pub(crate) const ACCESS_MAX: usize = 10_000;
/// How long a mover pod, at one version of it, is trusted without reading it again.
const MOVER_CHECK_TTL: Duration = Duration::from_secs(60);
pub use drainer_server::auth::GROUP;
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A reviewed token: who it is, and until when that is trusted without asking again.
#[derive(Debug, Clone)]
struct Reviewed {
    user: UserInfo,
    at: Instant,
}

/// The Kubernetes authority.
pub struct TokenReviews {
    cluster: Cluster,
    ledger: Ledger,
    audience: String,
    admin_token: Option<String>,
    reviews: Mutex<HashMap<[u8; 32], Reviewed>>,
    /// SubjectAccessReview answers, by the hash of subject and permission.
    grants: Mutex<HashMap<[u8; 32], (bool, Instant)>>,
    /// What SubjectAccessReviews not kept may cost.
    access_gate: ReviewGate,
    /// Mover pods checked against their Job's template, by UID and resource version.
    movers: Mutex<HashMap<(String, String), Instant>>,
    /// Namespaces' lives read lately for a pod, by namespace name and pod UID (`None`: no
    /// namespace of that name). Keyed by the pod, so a pod of a namespace made again never
    /// meets the earlier namespace's life in the cache: it did not exist when that was read.
    lives: Mutex<HashMap<(String, String), KeptLife>>,
    /// What reviews of tokens not cached may cost.
    gate: ReviewGate,
}

/// A namespace's life as read (`None`: no namespace of that name), and when.
type KeptLife = (Option<NamespaceLife>, Instant);

/// How long a namespace's life, once read, is trusted.
const LIFE_TTL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for TokenReviews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenReviews(audience {})", self.audience)
    }
}

impl TokenReviews {
    /// An authority reviewing tokens of `audience`; `admin_token` (if any) is an admin's.
    pub fn new(
        cluster: Cluster,
        ledger: Ledger,
        audience: String,
        admin_token: Option<String>,
    ) -> Self {
        Self {
            cluster,
            ledger,
            audience,
            admin_token,
            reviews: Mutex::default(),
            grants: Mutex::default(),
            access_gate: ReviewGate::new(GateLimits::default()),
            movers: Mutex::default(),
            lives: Mutex::default(),
            gate: ReviewGate::new(GateLimits::default()),
        }
    }

    /// The same authority with these limits on reviews of unknown tokens.
    pub(crate) fn with_gate(self, limits: GateLimits) -> Self {
        Self {
            gate: ReviewGate::new(limits),
            ..self
        }
    }

    /// The current life of `namespace` (`None`: it does not exist): for a pod, from the
    /// cache of what was read for that pod; else read from the API server.
    async fn life(
        &self,
        namespace: &str,
        pod: Option<&str>,
    ) -> Result<Option<NamespaceLife>, Denied> {
        let key = pod.map(|uid| (namespace.to_owned(), uid.to_owned()));
        let cached = key
            .as_ref()
            .and_then(|key| self.lives.lock().ok()?.get(key).cloned());
        if let Some((life, _)) = cached.filter(|(_, at)| at.elapsed() < LIFE_TTL) {
            return Ok(life);
        }
        let api: Api<Namespace> = Api::all(self.cluster.client.clone());
        let found = call(format!("get namespace {namespace}"), api.get_opt(namespace))
            .await
            .map_err(unavailable)?;
        let life = found.and_then(|ns| {
            let created = ns.metadata.creation_timestamp?.0.as_millisecond();
            Some(NamespaceLife {
                uid: ns.metadata.uid?,
                created_ms: created,
            })
        });
        if let (Some(key), Ok(mut lives)) = (key, self.lives.lock()) {
            lives.retain(|_, (_, at)| at.elapsed() < LIFE_TTL);
            lives.insert(key, (life.clone(), Instant::now()));
        }
        Ok(life)
    }

    /// The user a token belongs to: from the cache, or a TokenReview.
    async fn review(&self, token: &str) -> Result<UserInfo, Denied> {
        let key = token_key(token);
        let cached = self.reviews.lock().ok().and_then(|c| c.get(&key).cloned());
        if let Some(hit) = cached.filter(|r| r.at.elapsed() < REVIEW_TTL) {
            return Ok(hit.user);
        }
        let user = self.gate.review(&key, self.token_review(token)).await?;
        if let Ok(mut cache) = self.reviews.lock() {
            cache.retain(|_, r| r.at.elapsed() < REVIEW_TTL);
            cache.insert(
                key,
                Reviewed {
                    user: user.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok(user)
    }

    /// Asks the API server who `token` is (with drainer's audience).
    async fn token_review(&self, token: &str) -> Result<UserInfo, Denied> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.cluster.client.clone());
        let answer = call("token review", api.create(&PostParams::default(), &review))
            .await
            .map_err(unavailable)?;
        let status = answer.status.unwrap_or_default();
        let audience_ok = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience));
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) if audience_ok => Ok(user),
            _ => Err(Denied::Invalid),
        }
    }

    /// The live pod `name` in `namespace` with UID `uid`, or why it is refused.
    async fn live_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<Pod, Denied> {
        if let Some(pod) = self.cluster.pod(namespace, name)
            && pod.metadata.uid.as_deref() == Some(uid)
        {
            return Ok((*pod).clone());
        }
        // The watch may lag behind a pod that has just started: ask the API server.
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), namespace);
        let found = call(format!("get pod {namespace}/{name}"), api.get_opt(name))
            .await
            .map_err(unavailable)?;
        match found {
            Some(pod) if pod.metadata.uid.as_deref() == Some(uid) => Ok(pod),
            _ => Err(Denied::Invalid),
        }
    }

    /// A pod's caller: the mover of a drain being copied, or a workload with its mounts.
    async fn pod_caller(
        &self,
        namespace: &str,
        user: &UserInfo,
        pod: Pod,
    ) -> Result<Caller, Denied> {
        if let Some(drain) = self.mover_of(&pod).await? {
            return Ok(Caller::Mover { drain });
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        Ok(Caller::Workload(Workload {
            namespace: namespace.to_owned(),
            user: user.username.clone().unwrap_or_default(),
            groups: user.groups.clone().unwrap_or_default(),
            pod: Some(PodIdentity {
                mounts: planner::claims_of(&pod).map(str::to_owned).collect(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                name,
            }),
        }))
    }

    /// The drain whose mover `pod` is: its controlling Job is the one the ledger records.
    async fn mover_of(&self, pod: &Pod) -> Result<Option<String>, Denied> {
        let Some(job) = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Job" && o.controller == Some(true))
        else {
            return Ok(None);
        };
        let drain = self
            .ledger
            .drain_of_mover_job(&job.uid)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        let Some(drain) =
            drain.filter(|d| Some(d.namespace.as_str()) == pod.metadata.namespace.as_deref())
        else {
            return Ok(None);
        };
        self.confirm_mover(pod, &job.name, &job.uid).await?;
        Ok(Some(drain.id))
    }

    /// Checks that `pod`, owned by the recorded mover Job `job`, is a true copy of that Job's
    /// template ([`movers::check_mover_pod`]): labels and owner references can be forged by
    /// anyone who may create pods. A pod passes once per version of it: any change (an image
    /// swapped in, say) is checked again.
    async fn confirm_mover(&self, pod: &Pod, job: &str, job_uid: &str) -> Result<(), Denied> {
        let meta = &pod.metadata;
        let (namespace, name) = (
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let key = (
            meta.uid.clone().unwrap_or_default(),
            meta.resource_version.clone().unwrap_or_default(),
        );
        let cached = self.movers.lock().ok().and_then(|m| m.get(&key).copied());
        if cached.is_some_and(|at| at.elapsed() < MOVER_CHECK_TTL) {
            return Ok(());
        }
        // The watch keeps pods without their containers: read the whole pod.
        let full = if pod.spec.as_ref().is_some_and(|s| !s.containers.is_empty()) {
            pod.clone()
        } else {
            let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), namespace);
            call(format!("get pod {namespace}/{name}"), api.get_opt(name))
                .await
                .map_err(unavailable)?
                .filter(|p| p.metadata.uid.as_deref() == Some(key.0.as_str()))
                .ok_or(Denied::Invalid)?
        };
        let template = self.mover_job(namespace, job, job_uid).await?;
        movers::check_mover_pod(&full, &template).map_err(|why| {
            Denied::Forbidden(format!(
                "pod {namespace}/{name} names mover Job {job} as its controller, but {why}"
            ))
        })?;
        if let Ok(mut checked) = self.movers.lock() {
            checked.retain(|_, at| at.elapsed() < MOVER_CHECK_TTL);
            checked.insert(key, Instant::now());
        }
        Ok(())
    }

    /// The mover Job `name` with UID `uid`: from the watch, or the API.
    async fn mover_job(&self, namespace: &str, name: &str, uid: &str) -> Result<Job, Denied> {
        let seen = self
            .cluster
            .jobs
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|j| j.metadata.uid.as_deref() == Some(uid));
        if let Some(job) = seen {
            return Ok((*job).clone());
        }
        let api: Api<Job> = Api::namespaced(self.cluster.client.clone(), namespace);
        let found = call(format!("get Job {namespace}/{name}"), api.get_opt(name))
            .await
            .map_err(unavailable)?;
        found
            .filter(|j| j.metadata.uid.as_deref() == Some(uid))
            .ok_or_else(|| Denied::Forbidden(format!("mover Job {namespace}/{name} is gone")))
    }

    /// Whether `workload` has RBAC permission to `verb` `resource` of drainer's group in
    /// `namespace`, for the object `name` if one is given (the claim's name, so that a Role
    /// with `resourceNames` grants only those claims); see [`TokenReviews::granted`].
    pub async fn may(
        &self,
        workload: &Workload,
        verb: &'static str,
        resource: &'static str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<bool, Denied> {
        let permission = Permission {
            verb,
            resource,
            namespace: Some(namespace.to_owned()),
            name: name.map(str::to_owned),
        };
        self.granted(&workload.subject(), &permission).await
    }

    /// Asks the API server whether `subject` has `permission` (a SubjectAccessReview).
    async fn access_review(
        &self,
        subject: &Subject,
        permission: &Permission,
    ) -> Result<bool, Denied> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(subject.user.clone()),
                groups: Some(subject.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.to_owned()),
                    resource: Some(permission.resource.to_owned()),
                    verb: Some(permission.verb.to_owned()),
                    namespace: permission.namespace.clone(),
                    name: permission.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.cluster.client.clone());
        let answer = call(
            "subject access review",
            api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(unavailable)?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// The kept answer for `key`, if it is fresh.
    fn kept_answer(&self, key: &[u8; 32]) -> Option<bool> {
        let grants = self.grants.lock().ok()?;
        let (allowed, at) = grants.get(key)?;
        (at.elapsed() < ACCESS_TTL).then_some(*allowed)
    }

    /// Keeps an answer: expired ones are dropped first, then, at [`ACCESS_MAX`], the oldest.
    fn keep_answer(&self, key: [u8; 32], allowed: bool) {
        let Ok(mut grants) = self.grants.lock() else {
            return;
        };
        if grants.len() >= ACCESS_MAX {
            grants.retain(|_, (_, at)| at.elapsed() < ACCESS_TTL);
        }
        if grants.len() >= ACCESS_MAX
            && let Some(oldest) = grants
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
        {
            grants.remove(&oldest);
        }
        grants.insert(key, (allowed, Instant::now()));
    }
}

/// The key of a SubjectAccessReview's answer: the hash of the subject (user and groups) and
/// the permission, each field length-prefixed so no two questions share one.
fn access_key(subject: &Subject, permission: &Permission) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut field = |s: &str| {
        hasher.update(&(s.len() as u64).to_le_bytes());
        hasher.update(s.as_bytes());
    };
    field(&subject.user);
    field(&subject.groups.len().to_string());
    for group in &subject.groups {
        field(group);
    }
    field("\0permission");
    field(permission.verb);
    field(permission.resource);
    field(permission.namespace.as_deref().unwrap_or("\0cluster"));
    field(permission.name.as_deref().unwrap_or("\0any"));
    *hasher.finalize().as_bytes()
}

fn unavailable(e: Error) -> Denied {
    Denied::Unavailable(e.to_string())
}

/// `system:serviceaccount:NS:NAME` → `NS`.
fn service_account_namespace(username: &str) -> Option<&str> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    rest.split_once(':').map(|(ns, _)| ns)
}

fn extra<'a>(user: &'a UserInfo, key: &str) -> Option<&'a str> {
    user.extra.as_ref()?.get(key)?.first().map(String::as_str)
}

#[async_trait::async_trait]
impl Authority for TokenReviews {
    async fn authenticate(&self, token: &str) -> Result<Caller, Denied> {
        if let Some(admin) = &self.admin_token
            && drainer_server::auth::constant_time_eq(admin.as_bytes(), token.as_bytes())
        {
            tracing::info!(
                principal = "admin",
                "a request authenticated with the admin token (break-glass)"
            );
            return Ok(Caller::Admin);
        }
        let user = self.review(token).await?;
        let username = user.username.clone().unwrap_or_default();
        let groups = user.groups.clone().unwrap_or_default();
        let Some(namespace) = service_account_namespace(&username).map(str::to_owned) else {
            if username.is_empty() {
                return Err(Denied::Invalid);
            }
            return Ok(Caller::User(Subject {
                user: username,
                groups,
            }));
        };
        match (extra(&user, POD_NAME), extra(&user, POD_UID)) {
            (Some(name), Some(uid)) => {
                let pod = self.live_pod(&namespace, name, uid).await?;
                self.pod_caller(&namespace, &user, pod).await
            }
            _ => Ok(Caller::Workload(Workload {
                namespace,
                user: username,
                groups,
                pod: None,
            })),
        }
    }

    /// A SubjectAccessReview of `permission` for `subject`: the answer kept for
    /// [`ACCESS_TTL`], or asked through the access gate (rate-limited; over it `429`).
    async fn granted(&self, subject: &Subject, permission: &Permission) -> Result<bool, Denied> {
        let key = access_key(subject, permission);
        if let Some(allowed) = self.kept_answer(&key) {
            return Ok(allowed);
        }
        let allowed = self
            .access_gate
            .review(&key, self.access_review(subject, permission))
            .await?;
        self.keep_answer(key, allowed);
        if !allowed {
            tracing::info!(user = %subject.user, %permission, "RBAC does not grant");
        }
        Ok(allowed)
    }

    /// A pod hands off what it mounts; any workload what RBAC grants it.
    async fn may_hand_off(&self, workload: &Workload, volumes: &[VolumeId]) -> Result<(), Denied> {
        if drainer_server::auth::own_mounts(workload, volumes).is_ok() {
            return Ok(());
        }
        let mut granted = !volumes.is_empty();
        for volume in volumes {
            let name = Some(volume.name.as_str());
            granted = granted
                && self
                    .may(workload, "create", "handoffs", &workload.namespace, name)
                    .await?;
        }
        if granted {
            return Ok(());
        }
        Err(Denied::Forbidden(match &workload.pod {
            Some(pod) => format!(
                "pod {}/{} may hand off only the claims it mounts ({}), unless RBAC grants {} create on handoffs.{GROUP} (for each claim)",
                workload.namespace,
                pod.name,
                pod.mounts.join(", "),
                workload.user
            ),
            None => format!(
                "{} needs RBAC permission to create handoffs.{GROUP} in {} (for each claim: a Role may name them in resourceNames)",
                workload.user, workload.namespace
            ),
        }))
    }

    /// Callers read only snapshots made during the current life of the volume's namespace
    /// (the namespace as the API server has it now; for a pod, as read for that pod at most
    /// [`LIFE_TTL`] earlier).
    async fn namespace_life(
        &self,
        caller: &Caller,
        namespace: &str,
    ) -> Result<CurrentLife, Denied> {
        let pod = match caller {
            Caller::Workload(Workload { pod: Some(pod), .. }) => Some(pod.uid.as_str()),
            _ => None,
        };
        Ok(match self.life(namespace, pod).await? {
            Some(life) => CurrentLife::Current(life),
            None => CurrentLife::Gone,
        })
    }

    /// A pod restores what it mounts; any workload what RBAC grants it (`create` on
    /// `restores.drainer.io` in the volume's namespace).
    async fn may_restore(&self, workload: &Workload, volume: &VolumeId) -> Result<(), Denied> {
        let refused = match drainer_server::auth::restore_own_mount(workload, volume) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        if volume.namespace == workload.namespace
            && self
                .may(
                    workload,
                    "create",
                    "restores",
                    &volume.namespace,
                    Some(&volume.name),
                )
                .await?
        {
            return Ok(());
        }
        Err(match refused {
            Denied::Forbidden(why) => Denied::Forbidden(format!(
                "{why} (RBAC may grant {} create on restores.{GROUP} in {})",
                workload.user, volume.namespace
            )),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_keys_tell_every_question_apart() {
        let alice = Subject {
            user: "alice".into(),
            groups: vec!["ops".into()],
        };
        let on = |ns: Option<&str>, name: Option<&str>| Permission {
            verb: "retry",
            resource: "drains",
            namespace: ns.map(str::to_owned),
            name: name.map(str::to_owned),
        };
        let keys = [
            access_key(&alice, &on(Some("team-a"), Some("d-1"))),
            access_key(&alice, &on(Some("team-a"), None)),
            access_key(&alice, &on(None, Some("d-1"))),
            access_key(&alice, &on(Some("team-b"), Some("d-1"))),
            access_key(
                &Subject {
                    groups: vec![],
                    ..alice.clone()
                },
                &on(Some("team-a"), Some("d-1")),
            ),
            access_key(
                &Subject {
                    user: "alice".into(),
                    groups: vec!["o".into(), "ps".into()],
                },
                &on(Some("team-a"), Some("d-1")),
            ),
            access_key(
                &alice,
                &Permission {
                    verb: "cancel",
                    ..on(Some("team-a"), Some("d-1"))
                },
            ),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(
            keys[0],
            access_key(&alice, &on(Some("team-a"), Some("d-1")))
        );
    }

    #[test]
    fn service_accounts_name_their_namespace() {
        assert_eq!(
            service_account_namespace("system:serviceaccount:shop:web"),
            Some("shop")
        );
        assert_eq!(
            service_account_namespace("system:serviceaccount:shop"),
            None
        );
        assert_eq!(service_account_namespace("alice@example.com"), None);
    }
}
