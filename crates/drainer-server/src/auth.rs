//! Who may call the API, and what each caller may do: the identities ([`Caller`]), the
//! route actions ([`Action`]), the policy between them ([`Action::allows`]), the RBAC
//! permission each action asks of the cluster ([`Action::permission`]), and the
//! [`Authority`] that turns bearer tokens into callers and answers the checks that need the
//! cluster (a pod's mounts, RBAC grants).
//!
//! | action | admin | workload (pod or ServiceAccount) | user (other identities) | mover |
//! | --- | --- | --- | --- | --- |
//! | hand off volumes | any | its own namespace; a pod only the PVCs it mounts, others with an RBAC grant | no | no |
//! | list drains | all | the drains it asked for, or what RBAC grants | what RBAC grants | no |
//! | read a drain | any | the drains it asked for, or what RBAC grants | what RBAC grants | its own drain |
//! | retry, cancel or abandon a drain | any | what RBAC grants | what RBAC grants | no |
//! | run a sweep | yes | what RBAC grants | what RBAC grants | no |
//! | list orphaned volumes | all | what RBAC grants | what RBAC grants | no |
//! | list a volume's snapshots | any | what it may restore, or what RBAC grants | what RBAC grants | no |
//! | read or restore a volume's snapshots | any | its own namespace; a pod the claims it mounts, others with an RBAC grant | no | no |
//! | stream a volume (mover protocol) | any drain | no | no | its own drain, while it is copying |
//!
//! "What RBAC grants" is a SubjectAccessReview of [`Action::permission`] on drainer's
//! resources (API group `drainer.io`), in the namespace concerned (a drain's or a volume's,
//! or the one a listing names) with the object's name (a drain id or a claim name), or
//! cluster-wide for a listing of every namespace and for sweeps.
//!
//! The HTTP layer applies this table to every route (`http::guard`): no handler runs before
//! its route's action has been authorised. Local mode has one caller, the holder of the static
//! token, who is an admin. Decisions are pure; only the [`Authority`] does I/O.

use drainer_core::volume::VolumeId;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator or the local token holder: may do everything.
    Admin,
    /// A workload of one namespace: a pod (identified by its projected ServiceAccount token)
    /// or another ServiceAccount user such as a Job's.
    Workload(Workload),
    /// Any other identity the cluster vouches for (an OIDC user, a client certificate's):
    /// an operator with what RBAC grants it, and nothing else.
    User(Subject),
    /// A mover working for one drain.
    Mover {
        /// The drain it works for.
        drain: String,
    },
}

/// A caller inside one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its user name as the cluster knows it (`system:serviceaccount:NS:NAME`).
    pub user: String,
    /// Its groups (for RBAC checks).
    pub groups: Vec<String>,
    /// The pod the token was issued to, if it was issued to a pod.
    pub pod: Option<PodIdentity>,
}

/// A user as the API server names it, for RBAC checks (SubjectAccessReviews).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Its user name (`alice@example.com`, `system:serviceaccount:NS:NAME`).
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

impl Workload {
    /// The workload's user, for RBAC checks.
    pub fn subject(&self) -> Subject {
        Subject {
            user: self.user.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// A pod, confirmed against the live object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// The PVCs it mounts.
    pub mounts: Vec<String>,
}

impl Caller {
    /// The name drains record as their requester: `admin`, `pod:NS/NAME`, `user:NAME` or
    /// `mover:DRAIN`.
    pub fn principal(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Workload(Workload {
                namespace,
                pod: Some(pod),
                ..
            }) => format!("pod:{namespace}/{}", pod.name),
            Caller::Workload(w) => format!("user:{}", w.user),
            Caller::User(subject) => format!("user:{}", subject.user),
            Caller::Mover { drain } => format!("mover:{drain}"),
        }
    }

    /// Whom RBAC is asked about for this caller: a workload's or a user's identity; none for
    /// an admin (who needs no grant) or a mover (who gets none).
    pub fn subject(&self) -> Option<Subject> {
        match self {
            Caller::Workload(w) => Some(w.subject()),
            Caller::User(subject) => Some(subject.clone()),
            Caller::Admin | Caller::Mover { .. } => None,
        }
    }

    /// The kind of caller, for the policy table.
    pub fn kind(&self) -> CallerKind {
        match self {
            Caller::Admin => CallerKind::Admin,
            Caller::Workload(_) => CallerKind::Workload,
            Caller::User(_) => CallerKind::User,
            Caller::Mover { .. } => CallerKind::Mover,
        }
    }
}

/// The kinds of caller the policy distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// See [`Caller::Admin`].
    Admin,
    /// See [`Caller::Workload`].
    Workload,
    /// See [`Caller::User`].
    User,
    /// See [`Caller::Mover`].
    Mover,
}

/// What a route does; each route of the API declares one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand off volumes (`POST /v1/handoffs`).
    Handoff,
    /// List drains.
    ListDrains,
    /// Read one drain with its history.
    ReadDrain,
    /// Retry a failed drain.
    RetryDrain,
    /// Cancel an active drain.
    CancelDrain,
    /// Abandon a drain (give up its claim's data, recorded with a reason).
    AbandonDrain,
    /// Run a sweep.
    Sweep,
    /// List orphaned volumes (size, age, last snapshot, drain).
    ListOrphans,
    /// List the claims drainer deleted to give their storage back, and their pins.
    ListReclaims,
    /// List a volume's snapshots (`/v1/volumes/{ns}/{pvc}/snapshots`).
    ListSnapshots,
    /// Read a volume's snapshots to restore them: their manifests and objects
    /// (`/v1/volumes/{ns}/{pvc}/objects…`).
    Restore,
    /// Stream a volume into one drain (the mover protocol).
    Stream,
}

/// How far an action reaches for one kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Everything the action names.
    All,
    /// Only what is the caller's own: its namespace and mounts for handoffs, the drains it
    /// asked for when reading, its own drain for a mover.
    Own,
    /// What is the caller's own, and besides what RBAC grants ([`Action::permission`]).
    OwnOrGranted,
    /// What RBAC grants ([`Action::permission`]).
    Granted,
    /// Nothing: refused.
    None,
}

impl Action {
    /// The policy table (see the module doc).
    pub fn allows(self, kind: CallerKind) -> Reach {
        use Action as A;
        use CallerKind as K;
        match (self, kind) {
            (_, K::Admin) => Reach::All,
            (A::Handoff | A::Restore, K::Workload) => Reach::Own,
            (A::Restore, K::User) => Reach::Granted,
            (A::ListDrains | A::ReadDrain | A::ListSnapshots, K::Workload) => Reach::OwnOrGranted,
            (A::ListDrains | A::ReadDrain | A::ListSnapshots, K::User) => Reach::Granted,
            (
                A::RetryDrain
                | A::CancelDrain
                | A::AbandonDrain
                | A::Sweep
                | A::ListOrphans
                | A::ListReclaims,
                K::Workload | K::User,
            ) => Reach::Granted,
            (A::ReadDrain | A::Stream, K::Mover) => Reach::Own,
            _ => Reach::None,
        }
    }

    /// The RBAC verb and resource (of API group [`GROUP`]) that grant the action, if any
    /// does. Handoffs are granted to a workload in its own namespace only (see
    /// [`Authority::may_hand_off`]), restores in the claim's namespace (see
    /// [`Authority::may_restore`]); the mover protocol to movers only.
    pub fn permission(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Action::Handoff => ("create", "handoffs"),
            Action::ListDrains => ("list", "drains"),
            Action::ReadDrain => ("get", "drains"),
            Action::RetryDrain => ("retry", "drains"),
            Action::CancelDrain => ("cancel", "drains"),
            Action::AbandonDrain => ("abandon", "drains"),
            Action::Sweep => ("create", "sweeps"),
            Action::ListOrphans => ("list", "orphans"),
            Action::ListReclaims => ("list", "reclaims"),
            Action::ListSnapshots => ("list", "snapshots"),
            Action::Restore => ("create", "restores"),
            Action::Stream => return None,
        })
    }

    /// The permission that grants the action on `namespace` (`None`: cluster-wide) and the
    /// object `name`, if the action has one.
    pub fn on(self, namespace: Option<&str>, name: Option<&str>) -> Option<Permission> {
        let (verb, resource) = self.permission()?;
        Some(Permission {
            verb,
            resource,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }

    /// What the action is, in refusals.
    pub fn describe(self) -> &'static str {
        match self {
            Action::Handoff => "hand off volumes",
            Action::ListDrains => "list drains",
            Action::ReadDrain => "read this drain",
            Action::RetryDrain => "retry this drain",
            Action::CancelDrain => "cancel this drain",
            Action::AbandonDrain => "abandon this drain",
            Action::Sweep => "run sweeps",
            Action::ListOrphans => "list orphaned volumes",
            Action::ListReclaims => "list reclaimed claims",
            Action::ListSnapshots => "list this volume's snapshots",
            Action::Restore => "read or restore this volume's snapshots",
            Action::Stream => "stream into this drain",
        }
    }
}

/// The API group of drainer's RBAC resources (`drains`, `sweeps`, `orphans`, `reclaims`,
/// `snapshots`, `handoffs`, `restores`).
pub const GROUP: &str = "drainer.io";

/// One RBAC permission on drainer's resources: what a SubjectAccessReview asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Permission {
    /// The verb (`list`, `get`, `retry`, …).
    pub verb: &'static str,
    /// The resource of group [`GROUP`] (`drains`, …).
    pub resource: &'static str,
    /// The namespace; `None` for cluster-wide.
    pub namespace: Option<String>,
    /// The object's name (a drain id, a claim name), so a Role's `resourceNames` apply.
    pub name: Option<String>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}.{GROUP}", self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}"),
            None => f.write_str(" cluster-wide"),
        }
    }
}

impl Permission {
    /// The permission to read the snapshots of `volume` made in an earlier life of its
    /// namespace (`read-earlier` on `snapshots.drainer.io`, by the claim's name): what an
    /// operator other than the admin token needs for `earlier=true`.
    pub(crate) fn read_earlier(volume: &VolumeId) -> Self {
        Self {
            verb: "read-earlier",
            resource: "snapshots",
            namespace: Some(volume.namespace.clone()),
            name: Some(volume.name.clone()),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No or malformed credentials.
    #[error("missing or malformed bearer token")]
    Missing,
    /// Credentials that do not identify anyone.
    #[error("invalid token")]
    Invalid,
    /// A known caller asking for something it may not do.
    #[error("{0}")]
    Forbidden(String),
    /// A known caller without the RBAC permission an action needs.
    #[error("{principal} lacks RBAC permission: {missing}")]
    NotGranted {
        /// Who asked ([`Caller::principal`]).
        principal: String,
        /// The permission it lacks.
        missing: Permission,
    },
    /// The identity could not be checked now (the cluster did not answer).
    #[error("cannot check the caller's identity now: {0}")]
    Unavailable(String),
    /// Too many unknown tokens to check lately: retry after this many seconds (see
    /// [`crate::review_gate`]).
    #[error("too many token reviews; retry in {retry_after} s")]
    Throttled {
        /// Seconds until a retry may pass.
        retry_after: u32,
    },
}

/// Refuses `caller` the action.
pub fn forbidden(caller: &Caller, action: Action) -> Denied {
    Denied::Forbidden(format!(
        "{} may not {}",
        caller.principal(),
        action.describe()
    ))
}

/// Turns bearer tokens into callers, and answers the checks that need more than the caller's
/// identity.
#[async_trait::async_trait]
pub trait Authority: Send + Sync + std::fmt::Debug {
    /// Identifies the holder of `token`.
    async fn authenticate(&self, token: &str) -> Result<Caller, Denied>;

    /// Whether `workload` may hand off `volumes`, all in its namespace. By default a pod may
    /// hand off the PVCs it mounts and nothing else; an authority that can consult RBAC grants
    /// more (a Job with a grant).
    async fn may_hand_off(&self, workload: &Workload, volumes: &[VolumeId]) -> Result<(), Denied> {
        own_mounts(workload, volumes)
    }

    /// Whether `workload` may read and restore `volume`'s snapshots: the same rule as
    /// handoffs. By default a pod may restore the claims it mounts (an init container restores
    /// into the claim its pod mounts) and nothing else; an authority that can consult RBAC
    /// grants more.
    async fn may_restore(&self, workload: &Workload, volume: &VolumeId) -> Result<(), Denied> {
        restore_own_mount(workload, volume)
    }

    /// The current life of `namespace` as `caller` meets it, which bounds the snapshots the
    /// caller may read there (see [`NamespaceLife::holds`]): a namespace deleted and created
    /// again (perhaps by another team) never reads the earlier one's data. By default there is
    /// no bound (local mode has no namespaces that come and go).
    async fn namespace_life(
        &self,
        _caller: &Caller,
        _namespace: &str,
    ) -> Result<CurrentLife, Denied> {
        Ok(CurrentLife::Unbounded)
    }

    /// Whether RBAC grants `subject` the `permission`. By default nothing is granted (local
    /// mode has no RBAC; its one caller is an admin).
    async fn granted(&self, _subject: &Subject, _permission: &Permission) -> Result<bool, Denied> {
        Ok(false)
    }
}

/// What the authority knows of a namespace's current life (see
/// [`Authority::namespace_life`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrentLife {
    /// No lives to tell apart (local mode): every snapshot is readable.
    Unbounded,
    /// The namespace exists: only this life's snapshots are its.
    Current(NamespaceLife),
    /// No namespace of that name exists now: every snapshot is of an earlier life.
    Gone,
}

/// One life of a namespace: from its creation, with its UID (see
/// [`Authority::namespace_life`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceLife {
    /// The namespace's UID.
    pub uid: String,
    /// When it was created (API server's clock), Unix milliseconds.
    pub created_ms: i64,
}

impl NamespaceLife {
    /// Whether the snapshot `snapshot_id`, which records it was made in the namespace of UID
    /// `namespace_uid` (`None`: it records none), was made during this life.
    ///
    /// - A snapshot that records a namespace UID is of this life if and only if that UID is
    ///   this namespace's.
    /// - A snapshot that records none (made before drainer recorded it, or still being
    ///   written) is of this life if it was begun after this namespace was created: its id is
    ///   its creation time (UTC, `YYYYMMDDTHHMMSSmmmZ-XXXX`), and a snapshot of an earlier life
    ///   was begun before that life's namespace was deleted, which is before this one was
    ///   created. So a namespace older than such a snapshot keeps reading it (the scale-up
    ///   restore of snapshots made before the upgrade works), and one made again since does
    ///   not. An id that does not parse is not of this life.
    pub fn holds(&self, namespace_uid: Option<&str>, snapshot_id: &str) -> bool {
        match namespace_uid {
            Some(uid) => uid == self.uid,
            None => snapshot_time_ms(snapshot_id).is_some_and(|taken| taken >= self.created_ms),
        }
    }
}

/// The creation time of snapshot `id` (Unix milliseconds), from the id itself.
fn snapshot_time_ms(id: &str) -> Option<i64> {
    let stamp = id.get(..18)?;
    let time = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%3f").ok()?;
    (id.get(18..19) == Some("Z")).then(|| time.and_utc().timestamp_millis())
}

/// The pure part of the restore rule: a volume of the workload's namespace that its pod
/// mounts.
pub fn restore_own_mount(workload: &Workload, volume: &VolumeId) -> Result<(), Denied> {
    if volume.namespace != workload.namespace {
        return Err(Denied::Forbidden(format!(
            "{} may only restore volumes in namespace {}, not {volume}",
            workload.user, workload.namespace
        )));
    }
    match &workload.pod {
        Some(pod) if pod.mounts.contains(&volume.name) => Ok(()),
        Some(pod) => Err(Denied::Forbidden(format!(
            "pod {}/{} does not mount {} and has no grant to restore it",
            workload.namespace, pod.name, volume.name
        ))),
        None => Err(Denied::Forbidden(format!(
            "{} is not a pod and has no grant to restore volumes in {}",
            workload.user, workload.namespace
        ))),
    }
}

/// The pure part of the handoff rule: every volume in the workload's namespace and mounted by
/// its pod.
pub fn own_mounts(workload: &Workload, volumes: &[VolumeId]) -> Result<(), Denied> {
    in_namespace(workload, volumes)?;
    let who = match &workload.pod {
        Some(pod) => pod,
        None => {
            return Err(Denied::Forbidden(format!(
                "{} is not a pod and has no grant to hand off volumes in {}",
                workload.user, workload.namespace
            )));
        }
    };
    match volumes.iter().find(|v| !who.mounts.contains(&v.name)) {
        None => Ok(()),
        Some(v) => Err(Denied::Forbidden(format!(
            "pod {}/{} does not mount {}",
            workload.namespace, who.name, v.name
        ))),
    }
}

/// Every volume in the workload's own namespace.
pub(crate) fn in_namespace(workload: &Workload, volumes: &[VolumeId]) -> Result<(), Denied> {
    match volumes.iter().find(|v| v.namespace != workload.namespace) {
        None => Ok(()),
        Some(v) => Err(Denied::Forbidden(format!(
            "{} may only hand off volumes in namespace {}, not {v}",
            workload.user, workload.namespace
        ))),
    }
}

/// Local mode: one static token, whose holder is an admin.
pub(crate) struct StaticToken {
    token: String,
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(…)")
    }
}

impl StaticToken {
    /// Accepts exactly `token`.
    pub fn new(token: String) -> Self {
        Self { token }
    }
}

#[async_trait::async_trait]
impl Authority for StaticToken {
    async fn authenticate(&self, token: &str) -> Result<Caller, Denied> {
        if constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            Ok(Caller::Admin)
        } else {
            Err(Denied::Invalid)
        }
    }
}

/// Compares secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Extracts the token from an `Authorization: Bearer …` header value (the scheme is
/// case-insensitive, RFC 9110 §11.1).
pub fn bearer(header: Option<&str>) -> Result<&str, Denied> {
    let value = header.ok_or(Denied::Missing)?.trim_start();
    let (scheme, token) = value.split_once(' ').ok_or(Denied::Missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        Err(Denied::Missing)
    } else {
        Ok(token)
    }
}

/// Creates the local token file (mode 0600) with a fresh random token if it does not exist;
/// returns the token.
pub(crate) fn load_or_create_token(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(token) => Ok(token.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let token: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Workload {
        Workload {
            namespace: "shop".into(),
            user: "system:serviceaccount:shop:web".into(),
            groups: vec![],
            pod: Some(PodIdentity {
                name: "web-4".into(),
                uid: "u-1".into(),
                mounts: vec!["data-web-4".into()],
            }),
        }
    }

    #[test]
    fn pods_hand_off_only_what_they_mount() {
        let own = ["shop/data-web-4".parse().unwrap()];
        let other: [VolumeId; 1] = ["shop/data-web-3".parse().unwrap()];
        let elsewhere: [VolumeId; 1] = ["other/data-web-4".parse().unwrap()];
        assert_eq!(own_mounts(&pod(), &own), Ok(()));
        assert!(own_mounts(&pod(), &other).is_err());
        assert!(own_mounts(&pod(), &elsewhere).is_err());
        let job = Workload { pod: None, ..pod() };
        assert!(own_mounts(&job, &own).is_err(), "no grant, no pod");
        assert_eq!(in_namespace(&job, &own), Ok(()));
        assert!(in_namespace(&job, &elsewhere).is_err());
    }

    #[test]
    fn pods_restore_only_what_they_mount() {
        let own: VolumeId = "shop/data-web-4".parse().unwrap();
        let other: VolumeId = "shop/data-web-3".parse().unwrap();
        let elsewhere: VolumeId = "other/data-web-4".parse().unwrap();
        assert_eq!(restore_own_mount(&pod(), &own), Ok(()));
        assert!(restore_own_mount(&pod(), &other).is_err());
        assert!(restore_own_mount(&pod(), &elsewhere).is_err());
        let job = Workload { pod: None, ..pod() };
        assert!(restore_own_mount(&job, &own).is_err(), "no grant, no pod");
    }

    #[test]
    fn the_policy_table_is_the_documented_one() {
        use Action::*;
        use CallerKind::*;
        use Reach::{All, Granted, None as No, Own, OwnOrGranted};
        // admin, workload, user, mover
        let table = [
            (Handoff, [All, Own, No, No]),
            (ListDrains, [All, OwnOrGranted, Granted, No]),
            (ReadDrain, [All, OwnOrGranted, Granted, Own]),
            (RetryDrain, [All, Granted, Granted, No]),
            (CancelDrain, [All, Granted, Granted, No]),
            (AbandonDrain, [All, Granted, Granted, No]),
            (Sweep, [All, Granted, Granted, No]),
            (ListOrphans, [All, Granted, Granted, No]),
            (ListReclaims, [All, Granted, Granted, No]),
            (ListSnapshots, [All, OwnOrGranted, Granted, No]),
            (Restore, [All, Own, Granted, No]),
            (Stream, [All, No, No, Own]),
        ];
        for (action, reach) in table {
            for (kind, expected) in [Admin, Workload, User, Mover].into_iter().zip(reach) {
                assert_eq!(action.allows(kind), expected, "{action:?} for {kind:?}");
            }
        }
    }

    #[test]
    fn every_action_a_grant_can_allow_names_its_rbac_permission() {
        use Action::*;
        let verbs = [
            (Handoff, Some(("create", "handoffs"))),
            (ListDrains, Some(("list", "drains"))),
            (ReadDrain, Some(("get", "drains"))),
            (RetryDrain, Some(("retry", "drains"))),
            (CancelDrain, Some(("cancel", "drains"))),
            (AbandonDrain, Some(("abandon", "drains"))),
            (Sweep, Some(("create", "sweeps"))),
            (ListOrphans, Some(("list", "orphans"))),
            (ListReclaims, Some(("list", "reclaims"))),
            (ListSnapshots, Some(("list", "snapshots"))),
            (Restore, Some(("create", "restores"))),
            (Stream, None),
        ];
        for (action, expected) in verbs {
            assert_eq!(action.permission(), expected, "{action:?}");
            let granted = [CallerKind::Workload, CallerKind::User]
                .iter()
                .any(|k| matches!(action.allows(*k), Reach::Granted | Reach::OwnOrGranted));
            assert!(!granted || expected.is_some(), "{action:?} has no verb");
        }
        let retry = RetryDrain.on(Some("team-a"), Some("d-1")).unwrap();
        assert_eq!(
            retry.to_string(),
            "retry drains.drainer.io d-1 in namespace team-a"
        );
        assert_eq!(
            Sweep.on(None, None).unwrap().to_string(),
            "create sweeps.drainer.io cluster-wide"
        );
        assert_eq!(Stream.on(Some("a"), None), None);
    }

    #[test]
    fn principals_name_the_caller() {
        assert_eq!(Caller::Admin.principal(), "admin");
        assert_eq!(Caller::Workload(pod()).principal(), "pod:shop/web-4");
        let job = Workload { pod: None, ..pod() };
        assert_eq!(
            Caller::Workload(job).principal(),
            "user:system:serviceaccount:shop:web"
        );
        assert_eq!(
            Caller::Mover {
                drain: "d-1".into()
            }
            .principal(),
            "mover:d-1"
        );
        let alice = Subject {
            user: "alice@example.com".into(),
            groups: vec!["oncall".into()],
        };
        assert_eq!(
            Caller::User(alice.clone()).principal(),
            "user:alice@example.com"
        );
        assert_eq!(Caller::User(alice.clone()).subject(), Some(alice));
        assert_eq!(Caller::Admin.subject(), None);
        assert_eq!(
            Caller::Workload(pod()).subject().map(|s| s.user),
            Some("system:serviceaccount:shop:web".into())
        );
    }

    #[test]
    fn bearer_tokens_are_parsed_with_a_case_insensitive_scheme() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("BEARER  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(Denied::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(Denied::Missing));
        assert_eq!(bearer(Some("Bearer ")), Err(Denied::Missing));
        assert_eq!(bearer(Some("Bearerabc")), Err(Denied::Missing));
    }

    #[tokio::test]
    async fn static_token_accepts_only_itself() {
        let auth = StaticToken::new("secret".into());
        assert_eq!(auth.authenticate("secret").await, Ok(Caller::Admin));
        assert_eq!(auth.authenticate("secreT").await, Err(Denied::Invalid));
        assert_eq!(auth.authenticate("").await, Err(Denied::Invalid));
    }

    #[test]
    fn token_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&path).unwrap(), first);
    }
}

#[cfg(test)]
mod life_tests {
    use super::NamespaceLife;

    #[test]
    fn a_namespace_life_holds_its_own_snapshots_and_legacy_ones_begun_since_its_creation() {
        // 2026-12-06T23:34:39.078Z
        let created_ms = 1_796_600_079_078;
        let life = NamespaceLife {
            uid: "ns-now".into(),
            created_ms,
        };
        // (the snapshot's namespace UID, its id, held)
        let table = [
            // Same life: the UID decides, whatever the clocks say.
            (Some("ns-now"), "20261207T000000000Z-ffff", true),
            (Some("ns-now"), "20261206T233439077Z-693f", true), // drainer's clock behind
            (Some("ns-now"), "not-an-id", true),
            // Earlier life: another UID, even when begun after this life's creation.
            (Some("ns-before"), "20251206T233439078Z-693f", false),
            (Some("ns-before"), "20261207T000000000Z-ffff", false),
            (Some(""), "20261207T000000000Z-ffff", false),
            // Legacy (no UID), begun since this namespace was created: this life's.
            (None, "20261206T233439078Z-693f", true), // the very millisecond
            (None, "20261206T233439079Z-0000", true), // after
            (None, "20261207T000000000Z-ffff", true), // a day later
            // Legacy, begun before it: an earlier life's.
            (None, "20261206T233439077Z-693f", false), // a millisecond before
            (None, "20251206T233439078Z-693f", false), // a year before
            // Legacy with an id that tells no time: not this life's.
            (None, "20261206T233439078-693f", false), // no Z
            (None, "20261306T233439078Z-693f", false), // month 13
            (None, "latest", false),
            (None, "", false),
        ];
        for (uid, id, held) in table {
            assert_eq!(life.holds(uid, id), held, "{uid:?} {id}");
        }
    }
}
