//! Which of a volume's snapshots a caller of the restore routes may read: those made in the
//! current life of the volume's namespace (see [`NamespaceLife::holds`]), unless an operator
//! asks explicitly (`earlier=true`) to read an earlier life's, which is recorded in the ledger
//! (who, when, which snapshot, both namespace UIDs) and logged.
//!
//! The guard turns the caller, the namespace's current life and the `earlier` flag into a
//! [`Bound`] ([`Bound::for_caller`], pure); the handlers ask it about each listed snapshot
//! ([`Bound::lists`]) and each object's snapshot ([`admit`]). What a snapshot records of its
//! namespace comes from its `snapshot.json`, read once per snapshot and kept (a complete
//! snapshot's summary never changes); a snapshot without one (still being written, or damaged)
//! is judged by the time it was begun, as a snapshot made before drainer recorded UIDs is.
//! This module never decides who may restore a volume at all: the guard has done that.

use super::{AppState, Error};
use crate::auth::{Caller, CurrentLife, NamespaceLife};
use axum::http::StatusCode;
use drainer_core::ledger::EarlierRead;
use drainer_core::snapshot::{Listed, SnapshotSelector};
use drainer_core::volume::VolumeId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Snapshots whose recorded namespace is kept at most; the cache starts again beyond.
const KEPT_SNAPSHOTS: usize = 4096;
/// Earlier reads remembered as recorded at most; the next of each is recorded again beyond.
const KEPT_RECORDS: usize = 4096;

/// Which snapshots of a volume a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Every snapshot: local mode (no lives to tell apart), or a listing RBAC grants an
    /// operator (names and sizes, never data).
    Any,
    /// Only snapshots of this life of the namespace; `None`: the namespace does not exist
    /// now, so none.
    Current(Option<NamespaceLife>),
    /// Every snapshot, at an operator's explicit request: each snapshot of an earlier life
    /// read is recorded with who reads it.
    Earlier {
        /// The namespace's current life, if it exists.
        current: Option<NamespaceLife>,
        /// Who reads ([`Caller::principal`]).
        by: String,
    },
}

impl Bound {
    /// The bound of `caller` on a volume whose namespace has the current life `life`, with
    /// `earlier` asked or not. Only a caller whose [`LifeReach`] is `Every` (the admin, or an
    /// operator RBAC grants `read-earlier`) may ask for an earlier life or read a namespace
    /// that does not exist now; a workload of a namespace that does not exist reads nothing.
    pub(crate) fn for_caller(
        caller: &Caller,
        namespace: &str,
        life: CurrentLife,
        earlier: bool,
        lives: LifeReach,
    ) -> Result<Bound, Error> {
        if earlier && lives == LifeReach::Current {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{} may not read snapshots of an earlier namespace {namespace} (earlier=true is an operator's)",
                    caller.principal()
                ),
            ));
        }
        let current = match life {
            CurrentLife::Unbounded => return Ok(Bound::Any),
            CurrentLife::Current(life) => Some(life),
            CurrentLife::Gone if lives == LifeReach::Every => None,
            CurrentLife::Gone => {
                return Err(Error::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("namespace {namespace} does not exist"),
                ));
            }
        };
        Ok(if earlier {
            Bound::Earlier {
                current,
                by: caller.principal(),
            }
        } else {
            Bound::Current(current)
        })
    }

    /// Whether a listing shows `listed`.
    pub(crate) fn lists(&self, listed: &Listed) -> bool {
        let uid = listed.complete().and_then(|s| s.namespace_uid());
        match self {
            Bound::Current(current) => of_life(current.as_ref(), uid, listed.snapshot()),
            Bound::Any | Bound::Earlier { .. } => true,
        }
    }

    /// Whether the `latest` pointer itself may be read (it may name another life's snapshot).
    pub(crate) fn reads_pointer(&self) -> bool {
        !matches!(self, Bound::Current(_))
    }
}

/// Which lives of a namespace a caller may read the snapshots of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LifeReach {
    /// Only the current one.
    Current,
    /// Every one, earlier lives at its explicit request (`earlier=true`): the admin, or an
    /// operator granted `read-earlier` on the claim's `snapshots.drainer.io`.
    Every,
}

/// Whether a snapshot `id` that records namespace UID `uid` is of the life `current` (none
/// when the namespace does not exist).
fn of_life(current: Option<&NamespaceLife>, uid: Option<&str>, id: &str) -> bool {
    current.is_some_and(|life| life.holds(uid, id))
}

/// Whether the request asks for an earlier life (`?earlier=true`).
pub(crate) fn earlier_asked(uri: &axum::http::Uri) -> Result<bool, Error> {
    #[derive(serde::Deserialize)]
    struct Asked {
        #[serde(default)]
        earlier: bool,
    }
    let asked = axum::extract::Query::<Asked>::try_from_uri(uri)
        .map_err(|rejection| Error::invalid(rejection.body_text()))?;
    Ok(asked.0.earlier)
}

/// An earlier read as it is remembered recorded: who, the volume, the snapshot, and the
/// current namespace UID.
type ReadKey = (String, String, String, Option<String>);

/// What the restore routes remember: each snapshot's recorded namespace UID, and the earlier
/// reads already recorded.
#[derive(Debug, Default)]
pub struct Lives {
    /// `(volume, snapshot)` → the namespace UID its summary records (`None`: none).
    recorded: Mutex<HashMap<(String, String), Option<String>>>,
    /// `(principal, volume, snapshot, current namespace UID)` of earlier reads recorded.
    reads: Mutex<HashSet<ReadKey>>,
}

/// Whether the caller may read objects of snapshot `id` of `volume` under `bound`; an
/// operator's read of an earlier life's snapshot is recorded (once per operator, snapshot and
/// current life in this process) before it is allowed.
pub(crate) async fn admit(
    state: &AppState,
    volume: &VolumeId,
    bound: &Bound,
    id: &str,
) -> Result<(), Error> {
    let current = match bound {
        Bound::Any => return Ok(()),
        Bound::Current(current) | Bound::Earlier { current, .. } => current.as_ref(),
    };
    let uid = namespace_of(state, volume, id).await?;
    if of_life(current, uid.as_deref(), id) {
        return Ok(());
    }
    match bound {
        Bound::Earlier { by, .. } => record(state, volume, id, by, uid, current).await,
        _ => Err(earlier_namespace(volume, id, current)),
    }
}

/// `403 earlier_namespace`: snapshot `id` is not of the namespace's current life.
fn earlier_namespace(volume: &VolumeId, id: &str, current: Option<&NamespaceLife>) -> Error {
    let now = match current {
        Some(life) => format!(
            "namespace {} as it is now (UID {}) did not make it",
            volume.namespace, life.uid
        ),
        None => format!("namespace {} does not exist now", volume.namespace),
    };
    Error::new(
        StatusCode::FORBIDDEN,
        "earlier_namespace",
        format!(
            "snapshot {id} of {volume} belongs to an earlier namespace of that name: {now}; \
             an operator may read it explicitly (earlier=true, `drainer restore --earlier-namespace`), which is recorded"
        ),
    )
}

/// The namespace UID snapshot `id` of `volume` records: from its summary (kept once read),
/// `None` when it records none or has no summary that can be trusted (then its time decides).
async fn namespace_of(
    state: &AppState,
    volume: &VolumeId,
    id: &str,
) -> Result<Option<String>, Error> {
    let shared = state.shared();
    let key = (volume.to_string(), id.to_owned());
    if let Some(uid) = lock(&shared.lives.recorded).get(&key) {
        return Ok(uid.clone());
    }
    let Ok(parsed) = id.parse() else {
        return Ok(None);
    };
    let selector = SnapshotSelector::Id(parsed);
    let summary =
        match drainer_core::snapshot::catalog::resolve(&shared.store, volume, &selector).await {
            Ok(summary) => summary,
            Err(
                drainer_core::snapshot::Error::SnapshotNotFound { .. }
                | drainer_core::snapshot::Error::Damaged { .. },
            ) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    let uid = summary.namespace_uid().map(str::to_owned);
    let mut recorded = lock(&shared.lives.recorded);
    if recorded.len() >= KEPT_SNAPSHOTS {
        recorded.clear();
    }
    recorded.insert(key, uid.clone());
    Ok(uid)
}

/// Records `by`'s read of snapshot `id` of `volume`, made in the namespace of UID `uid`
/// (`None`: it records none), while the namespace's life is `current`; once per operator,
/// snapshot and current life in this process. A read that cannot be recorded is refused.
async fn record(
    state: &AppState,
    volume: &VolumeId,
    id: &str,
    by: &str,
    uid: Option<String>,
    current: Option<&NamespaceLife>,
) -> Result<(), Error> {
    let shared = state.shared();
    let current_uid = current.map(|life| life.uid.clone());
    let key = (
        by.to_owned(),
        volume.to_string(),
        id.to_owned(),
        current_uid.clone(),
    );
    if lock(&shared.lives.reads).contains(&key) {
        return Ok(());
    }
    let read = EarlierRead {
        at: chrono::Utc::now().timestamp_millis(),
        principal: by.to_owned(),
        namespace: volume.namespace.clone(),
        pvc: volume.name.clone(),
        snapshot: id.to_owned(),
        snapshot_namespace_uid: uid,
        current_namespace_uid: current_uid,
    };
    shared.ledger.record_earlier_read(&read).await?;
    tracing::warn!(
        by = %read.principal,
        volume = %volume,
        snapshot = %read.snapshot,
        snapshot_namespace_uid = ?read.snapshot_namespace_uid,
        current_namespace_uid = ?read.current_namespace_uid,
        "an operator reads a snapshot of an earlier namespace of this name (recorded)"
    );
    let mut reads = lock(&shared.lives.reads);
    if reads.len() >= KEPT_RECORDS {
        reads.clear();
    }
    reads.insert(key);
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PodIdentity, Workload};

    fn life() -> NamespaceLife {
        NamespaceLife {
            uid: "ns-now".into(),
            // 2026-12-06T23:34:39.078Z
            created_ms: 1_796_600_079_078,
        }
    }

    fn pod() -> Caller {
        Caller::Workload(Workload {
            namespace: "shop".into(),
            user: "system:serviceaccount:shop:web".into(),
            groups: vec![],
            pod: Some(PodIdentity {
                name: "web-0".into(),
                uid: "p-1".into(),
                mounts: vec!["data-web-0".into()],
            }),
        })
    }

    #[test]
    fn only_the_admin_and_granted_operators_ask_for_an_earlier_life() {
        let now = || CurrentLife::Current(life());
        let bound = |caller: &Caller, life, earlier| {
            let lives = match caller {
                Caller::Admin => LifeReach::Every,
                _ => LifeReach::Current,
            };
            Bound::for_caller(caller, "shop", life, earlier, lives).map_err(|e| e.status)
        };
        let refused = Err(StatusCode::FORBIDDEN);
        assert_eq!(
            bound(&pod(), now(), false),
            Ok(Bound::Current(Some(life())))
        );
        assert_eq!(bound(&pod(), now(), true), refused);
        assert_eq!(bound(&pod(), CurrentLife::Gone, false), refused);
        assert_eq!(bound(&pod(), CurrentLife::Unbounded, false), Ok(Bound::Any));
        assert_eq!(bound(&pod(), CurrentLife::Unbounded, true), refused);
        assert_eq!(
            bound(&Caller::Admin, now(), false),
            Ok(Bound::Current(Some(life())))
        );
        assert_eq!(
            bound(&Caller::Admin, CurrentLife::Gone, false),
            Ok(Bound::Current(None))
        );
        assert_eq!(
            bound(&Caller::Admin, now(), true),
            Ok(Bound::Earlier {
                current: Some(life()),
                by: "admin".into()
            })
        );
        assert_eq!(
            bound(&Caller::Admin, CurrentLife::Gone, true),
            Ok(Bound::Earlier {
                current: None,
                by: "admin".into()
            })
        );
        assert_eq!(
            bound(&Caller::Admin, CurrentLife::Unbounded, true),
            Ok(Bound::Any)
        );
        // An operator reads an earlier life only if RBAC grants it `read-earlier`.
        let olga = Caller::User(crate::auth::Subject {
            user: "olga".into(),
            groups: vec![],
        });
        let granted = |life, earlier| {
            Bound::for_caller(&olga, "shop", life, earlier, LifeReach::Every).map_err(|e| e.status)
        };
        assert_eq!(bound(&olga, now(), true), refused);
        assert_eq!(bound(&olga, CurrentLife::Gone, false), refused);
        assert_eq!(
            granted(now(), true),
            Ok(Bound::Earlier {
                current: Some(life()),
                by: "user:olga".into()
            })
        );
        assert_eq!(granted(CurrentLife::Gone, false), Ok(Bound::Current(None)));
        assert_eq!(granted(now(), false), Ok(Bound::Current(Some(life()))));
    }

    #[test]
    fn a_bound_lists_the_snapshots_of_its_life() {
        let listed = |id: &str, uid: Option<&str>| {
            let origin = uid.map(|uid| drainer_core::snapshot::DrainOrigin {
                id: "d-1".into(),
                pod: None,
                reason: "test".into(),
                requested: "2026-12-07T00:00:00Z".into(),
                claim_uid: None,
                namespace_uid: Some(uid.into()),
                statefulset_uid: None,
            });
            let summary = serde_json::json!({
                "snapshot": id, "volume": "a/b", "parent": null,
                "created": "2026-12-07T00:00:00Z", "completed": "2026-12-07T00:00:00Z",
                "entries": 1, "files": 0, "bytes": 0, "skipped": 0,
                "uploaded_files": 0, "uploaded_bytes": 0,
                "manifest_blake3": "", "manifest_size": 0, "drain": origin,
            });
            Listed::Complete(serde_json::from_value(summary).unwrap())
        };
        let damaged = |id: &str| Listed::Damaged {
            snapshot: id.into(),
            volume: "a/b".into(),
            damaged: "unreadable".into(),
        };
        let (before, after) = ("20261206T000000000Z-0001", "20261207T000000000Z-0002");
        let now = Bound::Current(Some(life()));
        let gone = Bound::Current(None);
        let earlier = Bound::Earlier {
            current: Some(life()),
            by: "admin".into(),
        };
        // (snapshot, listed now, listed when gone, listed for Any and Earlier)
        let table = [
            (listed(after, Some("ns-now")), true),
            (listed(before, Some("ns-now")), true),
            (listed(after, Some("ns-before")), false),
            (listed(after, None), true),
            (listed(before, None), false),
            (damaged(after), true),
            (damaged(before), false),
        ];
        for (snapshot, in_life) in table {
            assert_eq!(now.lists(&snapshot), in_life, "{snapshot:?}");
            assert!(!gone.lists(&snapshot), "{snapshot:?}");
            assert!(
                Bound::Any.lists(&snapshot) && earlier.lists(&snapshot),
                "{snapshot:?}"
            );
        }
        assert!(!now.reads_pointer() && !gone.reads_pointer());
        assert!(Bound::Any.reads_pointer() && earlier.reads_pointer());
    }

    #[test]
    fn earlier_is_read_from_the_query() {
        let asked = |uri: &str| earlier_asked(&uri.parse().unwrap());
        assert!(!asked("/v1/volumes/a/b/snapshots").unwrap());
        assert!(asked("/v1/volumes/a/b/objects?key=k&earlier=true").unwrap());
        assert!(!asked("/v1/volumes/a/b/objects?earlier=false").unwrap());
        assert!(asked("/v1/volumes/a/b/objects?earlier=yes").is_err());
    }
}
