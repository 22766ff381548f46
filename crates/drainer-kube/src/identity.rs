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
//! [`mover_jobs::check_mover_pod`]; checked once per version of the pod). Other
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

use super::{Cluster, Error, call, mover_jobs, planner};
use crate::facts::KubeLedger;
use drainer_core::ledger::Ledger;
use drainer_core::volume::VolumeId;
use drainer_server::auth::{
    Authority, Caller, CurrentLife, Denied, NamespaceLife, Permission, PodIdentity, Subject,
    Workload,
};
use drainer_server::metrics::ReviewCounts;
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

    /// The same authority with these limits on reviews of unknown tokens, counting them in
    /// `counts` (`drainer_token_reviews_total`).
    pub(crate) fn with_gate(self, limits: GateLimits, counts: ReviewCounts) -> Self {
        Self {
            gate: ReviewGate::new(limits).counted_in(counts),
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
    /// template ([`mover_jobs::check_mover_pod`]): labels and owner references can be forged by
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
        mover_jobs::check_mover_pod(&full, &template).map_err(|why| {
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

    /// A pod restores what it mounts; any workload, of any namespace, what RBAC grants it
    /// (`create` on `restores.drainer.io` in the volume's namespace, by the claim's name, as
    /// a user): a grant in the claim's namespace is its owners' to give.
    async fn may_restore(&self, workload: &Workload, volume: &VolumeId) -> Result<(), Denied> {
        let refused = match drainer_server::auth::restore_own_mount(workload, volume) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        if self
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

    // ---- Against a mock API server: the exact requests, and what each answer makes of them.

    use crate::mock::{Exchange, Scenario, caches, cluster, status};
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::{Value, json};

    const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
    const ACCESS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    const POD: &str = "/api/v1/namespaces/shop/pods/web-4";
    const WEB: &str = "system:serviceaccount:shop:web";

    /// The authority of audience `drainer`, asking through `client`, whose pod watch holds
    /// `pods`; with the directory of its ledger.
    async fn authority(client: kube::Client, pods: Vec<Pod>) -> (TokenReviews, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(None, dir.path()).await.unwrap();
        let cluster = Cluster {
            pods: caches(pods),
            ..cluster(client)
        };
        (
            TokenReviews::new(cluster, ledger, "drainer".into(), None),
            dir,
        )
    }

    /// Pod web-4 of namespace shop with UID `uid`, mounting claim data-web-4.
    fn pod(uid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-4", "namespace": "shop", "uid": uid},
            "spec": {"containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-4"}},
                {"name": "tmp", "emptyDir": {}},
            ]}
        }))
        .unwrap()
    }

    /// A TokenReview answered `authenticated` for `audiences`, naming `user`.
    fn reviewed(authenticated: bool, audiences: &[&str], user: Value) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": ""},
               "status": {"authenticated": authenticated, "audiences": audiences, "user": user}})
    }

    /// The user of pod web-4's projected token.
    fn pod_user(uid: &str) -> Value {
        json!({"username": WEB, "groups": ["system:serviceaccounts", "system:serviceaccounts:shop"],
               "extra": {POD_NAME: ["web-4"], POD_UID: [uid]}})
    }

    /// The TokenReview of `token`, answered `status` with `answer`.
    fn review_of(token: &'static str, code: u16, answer: Value) -> Exchange {
        Exchange::new(Method::POST, REVIEWS, code, answer).checking(move |body| {
            assert_eq!(body["spec"]["token"], token);
            assert_eq!(body["spec"]["audiences"], json!(["drainer"]));
        })
    }

    #[tokio::test]
    async fn a_pods_token_reviewed_for_drainers_audience_is_that_pod_with_the_claims_it_mounts() {
        let (client, server) = Scenario(vec![review_of(
            "pod-token",
            201,
            reviewed(true, &["drainer"], pod_user("uid-p")),
        )])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![pod("uid-p")]).await;
        let expected = Caller::Workload(Workload {
            namespace: "shop".into(),
            user: WEB.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:shop".into(),
            ],
            pod: Some(PodIdentity {
                name: "web-4".into(),
                uid: "uid-p".into(),
                mounts: vec!["data-web-4".into()],
            }),
        });
        assert_eq!(authority.authenticate("pod-token").await.unwrap(), expected);
        // Reviewed lately: not asked again (the pod, in the watch, is checked again).
        assert_eq!(authority.authenticate("pod-token").await.unwrap(), expected);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_the_watch_has_not_seen_is_read_from_the_api_and_one_of_another_uid_refused() {
        let (client, server) = Scenario(vec![
            review_of(
                "new-pod",
                201,
                reviewed(true, &["drainer"], pod_user("uid-p")),
            ),
            Exchange::new(
                Method::GET,
                POD,
                200,
                serde_json::to_value(pod("uid-p")).unwrap(),
            ),
            review_of(
                "old-pod",
                201,
                reviewed(true, &["drainer"], pod_user("uid-old")),
            ),
            Exchange::new(
                Method::GET,
                POD,
                200,
                serde_json::to_value(pod("uid-p")).unwrap(),
            ),
        ])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        let caller = authority.authenticate("new-pod").await.unwrap();
        assert!(
            matches!(&caller, Caller::Workload(w) if w.pod.as_ref().is_some_and(|p| p.uid == "uid-p")),
            "{caller:?}"
        );
        let refused = authority.authenticate("old-pod").await.unwrap_err();
        assert_eq!(refused, Denied::Invalid, "a deleted pod's token");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_token_not_authenticated_is_invalid_and_refused_again_without_a_review() {
        let (client, server) = Scenario(vec![review_of(
            "bad-token",
            201,
            reviewed(false, &[], json!({})),
        )])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        for _ in 0..2 {
            let refused = authority.authenticate("bad-token").await.unwrap_err();
            assert_eq!(refused, Denied::Invalid);
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_token_authenticated_for_another_audience_is_invalid() {
        let (client, server) = Scenario(vec![review_of(
            "vault-token",
            201,
            reviewed(true, &["vault"], pod_user("uid-p")),
        )])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![pod("uid-p")]).await;
        let refused = authority.authenticate("vault-token").await.unwrap_err();
        assert_eq!(refused, Denied::Invalid);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_review_the_api_server_cannot_make_leaves_the_caller_unknown_and_is_asked_again() {
        let alice = json!({"username": "alice@example.com", "groups": ["ops"]});
        let (client, server) = Scenario(vec![
            review_of("token", 500, status(500, "InternalError")),
            review_of("token", 429, status(429, "TooManyRequests")),
            review_of("token", 201, reviewed(true, &["drainer"], alice)),
        ])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        for answer in [500, 429] {
            let refused = authority.authenticate("token").await.unwrap_err();
            assert!(
                matches!(&refused, Denied::Unavailable(why) if why.contains("token review")),
                "HTTP {answer}: {refused:?}"
            );
        }
        let caller = authority.authenticate("token").await.unwrap();
        let expected = Caller::User(Subject {
            user: "alice@example.com".into(),
            groups: vec!["ops".into()],
        });
        assert_eq!(caller, expected);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_service_accounts_token_not_issued_to_a_pod_is_a_workload_without_one() {
        let job = json!({"username": "system:serviceaccount:shop:backup", "groups": ["system:serviceaccounts"]});
        let (client, server) = Scenario(vec![review_of(
            "job-token",
            201,
            reviewed(true, &["drainer"], job),
        )])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        let expected = Caller::Workload(Workload {
            namespace: "shop".into(),
            user: "system:serviceaccount:shop:backup".into(),
            groups: vec!["system:serviceaccounts".into()],
            pod: None,
        });
        assert_eq!(authority.authenticate("job-token").await.unwrap(), expected);
        server.await.unwrap();
    }

    /// A SubjectAccessReview of `verb` on `resource` named `name` in shop for the backup
    /// ServiceAccount, answered `allowed`.
    fn access_review(
        verb: &'static str,
        resource: &'static str,
        name: &'static str,
        allowed: bool,
    ) -> Exchange {
        let answer = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                            "spec": {}, "status": {"allowed": allowed}});
        Exchange::new(Method::POST, ACCESS, 201, answer).checking(move |body| {
            assert_eq!(body["spec"]["user"], "system:serviceaccount:shop:backup");
            assert_eq!(body["spec"]["groups"], json!(["system:serviceaccounts"]));
            assert_eq!(
                body["spec"]["resourceAttributes"],
                json!({"group": GROUP, "resource": resource, "verb": verb,
                       "namespace": "shop", "name": name}),
            );
        })
    }

    fn backup(pod: Option<PodIdentity>) -> Workload {
        Workload {
            namespace: "shop".into(),
            user: "system:serviceaccount:shop:backup".into(),
            groups: vec!["system:serviceaccounts".into()],
            pod,
        }
    }

    fn volume(name: &str) -> VolumeId {
        VolumeId {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn a_handoff_of_claims_not_mounted_asks_rbac_for_each_claim_by_name_and_keeps_the_answers()
     {
        let (client, server) = Scenario(vec![
            access_review("create", "handoffs", "data-web-4", true),
            access_review("create", "handoffs", "data-web-5", false),
        ])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        let volumes = [volume("data-web-4"), volume("data-web-5")];
        for _ in 0..2 {
            let refused = authority
                .may_hand_off(&backup(None), &volumes)
                .await
                .unwrap_err();
            assert!(
                matches!(&refused, Denied::Forbidden(why) if why.contains("create handoffs.drainer.io")),
                "{refused:?}"
            );
        }
        authority
            .may_hand_off(&backup(None), &volumes[..1])
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_restores_what_it_mounts_without_asking_and_anything_else_if_rbac_grants_it() {
        let (client, server) = Scenario(vec![
            access_review("create", "restores", "data-web-5", true),
            access_review("create", "restores", "data-web-6", false),
        ])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        let pod = backup(Some(PodIdentity {
            name: "web-4".into(),
            uid: "uid-p".into(),
            mounts: vec!["data-web-4".into()],
        }));
        authority
            .may_restore(&pod, &volume("data-web-4"))
            .await
            .unwrap();
        authority
            .may_restore(&pod, &volume("data-web-5"))
            .await
            .unwrap();
        let refused = authority
            .may_restore(&pod, &volume("data-web-6"))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, Denied::Forbidden(why) if why.contains("create on restores.drainer.io in shop")),
            "{refused:?}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_access_review_the_api_server_cannot_make_is_unavailable_not_a_refusal() {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::POST, ACCESS, 500, status(500, "InternalError")),
            access_review("create", "handoffs", "data-web-5", true),
        ])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        let volumes = [volume("data-web-5")];
        let refused = authority
            .may_hand_off(&backup(None), &volumes)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, Denied::Unavailable(why) if why.contains("subject access review")),
            "{refused:?}"
        );
        // Not kept: the next handoff asks again.
        authority
            .may_hand_off(&backup(None), &volumes)
            .await
            .unwrap();
        server.await.unwrap();
    }

    /// A ledger whose drain of shop/data-web-4 is queued for its copy with mover Job `job`
    /// (UID `job-uid`) recorded; the drain.
    async fn with_mover_recorded(ledger: &Ledger, job: &str) -> drainer_core::ledger::Drain {
        let new = drainer_core::ledger::NewDrain {
            volume: volume("data-web-4"),
            pod: Some("web-4".into()),
            reason: "handoff".into(),
            max_attempts: 3,
            wait_for_release: false,
            requested_by: None,
            facts: Default::default(),
        };
        let (drain, _) = ledger.request_drains(&[new]).await.unwrap().remove(0);
        ledger
            .set_mover_job(&drain.id, job, "job-uid")
            .await
            .unwrap();
        drain
    }

    #[tokio::test]
    async fn a_pod_of_the_recorded_mover_job_is_its_drains_mover_only_while_it_is_a_true_copy_of_the_template()
     {
        use crate::mover_jobs::fixtures;
        let mut job = fixtures::build(&["ReadWriteOnce"], None, &[]);
        job.metadata.uid = Some("job-uid".into());
        let name = job.metadata.name.clone().unwrap();
        let mover = |uid: &str, image: &str| {
            let mut pod = fixtures::pod_of(&job);
            pod.metadata.namespace = Some("shop".into());
            pod.metadata.uid = Some(uid.into());
            pod.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.clone(),
                uid: "job-uid".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]);
            if let Some(spec) = pod.spec.as_mut() {
                spec.containers[0].image = Some(image.into());
            }
            pod
        };
        let true_copy = mover("uid-m", &fixtures::spec(&[]).image);
        let forged = mover("uid-f", "evil.example/exfiltrate:1");
        let user = |pod: &Pod| {
            json!({"username": "system:serviceaccount:shop:default",
                   "extra": {POD_NAME: [pod.metadata.name], POD_UID: [pod.metadata.uid]}})
        };
        let job_path = format!("/apis/batch/v1/namespaces/shop/jobs/{name}");
        for (pod, is_forged) in [(true_copy, false), (forged, true)] {
            let (client, server) = Scenario(vec![
                review_of("mover", 201, reviewed(true, &["drainer"], user(&pod))),
                // The watch does not have the Job yet: it is read, and its UID checked.
                Exchange::new(
                    Method::GET,
                    &job_path,
                    200,
                    serde_json::to_value(&job).unwrap(),
                ),
            ])
            .serve(Duration::from_secs(5));
            let (authority, _dir) = authority(client, vec![pod]).await;
            let drain = with_mover_recorded(&authority.ledger, &name).await;
            let caller = authority.authenticate("mover").await;
            if is_forged {
                let why = format!(
                    "names mover Job {name} as its controller, but its container mover is not its Job's"
                );
                assert!(
                    matches!(&caller, Err(Denied::Forbidden(w)) if w.contains(&why)),
                    "{caller:?}"
                );
            } else {
                assert_eq!(caller.unwrap(), Caller::Mover { drain: drain.id });
            }
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_namespaces_life_is_its_uid_and_creation_kept_per_pod_and_a_missing_one_is_gone() {
        let shop = json!({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "shop", "uid": "ns-uid",
                                       "creationTimestamp": "2026-12-01T10:00:00Z"}});
        let (client, server) = Scenario(vec![
            Exchange::new(Method::GET, "/api/v1/namespaces/shop", 200, shop.clone()),
            Exchange::new(Method::GET, "/api/v1/namespaces/shop", 200, shop),
            Exchange::new(
                Method::GET,
                "/api/v1/namespaces/gone",
                404,
                status(404, "NotFound"),
            ),
            Exchange::new(
                Method::GET,
                "/api/v1/namespaces/busy",
                503,
                status(503, "ServiceUnavailable"),
            ),
        ])
        .serve(Duration::from_secs(5));
        let (authority, _dir) = authority(client, vec![]).await;
        let expected = CurrentLife::Current(NamespaceLife {
            uid: "ns-uid".into(),
            created_ms: 1_796_119_200_000,
        });
        let pod = Caller::Workload(backup(Some(PodIdentity {
            name: "web-4".into(),
            uid: "uid-p".into(),
            mounts: vec!["data-web-4".into()],
        })));
        for _ in 0..2 {
            let life = authority.namespace_life(&pod, "shop").await.unwrap();
            assert_eq!(life, expected, "read once for the pod, then kept");
        }
        let without_pod = Caller::Workload(backup(None));
        let life = authority
            .namespace_life(&without_pod, "shop")
            .await
            .unwrap();
        assert_eq!(life, expected, "read again for a caller without a pod");
        let gone = authority
            .namespace_life(&without_pod, "gone")
            .await
            .unwrap();
        assert_eq!(gone, CurrentLife::Gone);
        let busy = authority
            .namespace_life(&without_pod, "busy")
            .await
            .unwrap_err();
        assert!(matches!(&busy, Denied::Unavailable(_)), "{busy:?}");
        server.await.unwrap();
    }
}
