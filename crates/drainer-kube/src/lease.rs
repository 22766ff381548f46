//! The sweeper Lease: a `coordination.k8s.io/v1` Lease (`drainer-sweeper` in drainer's
//! namespace) that says which replica runs the scheduled sweeps, so that exactly one does.
//! Each replica's [`Keeper`] tries every [`RENEW_EVERY`], on its own timer whatever the sweep
//! interval: it takes the Lease if it is free or expired, renews it if it is its own, and
//! otherwise waits; a scheduled sweep runs only while [`Holding::mine`] says the Lease was
//! renewed recently enough. The Lease lasts [`LEASE_DURATION`], so a replica that dies is
//! replaced within about that long; one that shuts down gives the Lease up, so another takes
//! it at its next try. Writes carry the `resourceVersion` read, so two replicas racing for an
//! expired Lease cannot both win: the loser gets a conflict and waits. Deciding what to do
//! with the Lease as read ([`decide`]) and whether it is still ours ([`still_mine`]) is pure;
//! [`Lease`] reads and writes it, each call with the API timeout.

use super::{Error, call};
use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The name of the sweeper Lease.
pub(crate) const SWEEPER_LEASE: &str = "drainer-sweeper";

/// How long the sweeper Lease lasts unless renewed: how long the scheduled sweeps may wait for
/// a replica that died holding it.
pub(crate) const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How often a replica tries to take or renew the sweeper Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The namespace of drainer's own Lease: `--pod-namespace` if given, else the client's
/// default namespace (in a pod, the ServiceAccount's namespace file; else the kubeconfig's).
pub(crate) fn own_namespace(args: &crate::args::KubeArgs, client: &kube::Client) -> String {
    args.pod_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

/// Whose turn it is to sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This replica holds the Lease (taken or renewed just now).
    Mine,
    /// Another replica holds it.
    Theirs {
        /// Its holder.
        holder: String,
        /// Until when, unless renewed (RFC 3339).
        until: String,
    },
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// It does not exist: create it, held by us.
    Create,
    /// It is ours: renew it.
    Renew,
    /// It is free, or its holder stopped renewing it: take it over.
    TakeOver,
    /// Another replica holds it until `until`.
    Wait {
        /// The holder.
        holder: String,
        /// When its hold ends, unless renewed.
        until: Timestamp,
    },
}

/// Decides what `me` does with the Lease `current` (`None`: it does not exist) at `now`.
pub fn decide(current: Option<&LeaseObject>, me: &str, now: Timestamp) -> Move {
    let Some(lease) = current else {
        return Move::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    match holder {
        None => Move::TakeOver,
        Some(h) if h == me => Move::Renew,
        Some(holder) => {
            let since = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
            let until = since.and_then(|t| t.checked_add(SignedDuration::from_secs(seconds)).ok());
            match until {
                Some(until) if until > now => Move::Wait { holder, until },
                _ => Move::TakeOver,
            }
        }
    }
}

/// The Lease as `me` writes it for `step` (not for [`Move::Wait`]): renewed now, acquired now
/// when taken (one more transition), lasting `duration`.
pub fn written(
    current: Option<&LeaseObject>,
    step: &Move,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let before = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let (acquired, transitions) = match step {
        Move::Renew => (
            before.acquire_time.unwrap_or(MicroTime(now)),
            before.lease_transitions.unwrap_or(0),
        ),
        Move::Create => (MicroTime(now), 0),
        Move::TakeOver | Move::Wait { .. } => (
            MicroTime(now),
            before.lease_transitions.unwrap_or(0).saturating_add(1),
        ),
    };
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(acquired),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..before
    }
}

/// One replica's view of a Lease it may hold.
#[derive(Clone)]
pub struct Lease {
    api: Api<LeaseObject>,
    namespace: String,
    name: String,
    holder: String,
    duration: Duration,
}

impl Lease {
    /// The Lease `name` in `namespace`, held as `holder` for `duration` at a time.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            duration,
        }
    }

    fn what(&self, verb: &str) -> String {
        format!("{verb} Lease {}/{}", self.namespace, self.name)
    }

    /// Takes or renews the Lease if it is free, expired or already ours.
    pub async fn take(&self) -> Result<Turn, Error> {
        let current = call(self.what("read"), self.api.get_opt(&self.name)).await?;
        let now = Timestamp::now();
        let step = decide(current.as_ref(), &self.holder, now);
        if let Move::Wait { holder, until } = step {
            return Ok(Turn::Theirs {
                holder,
                until: until.to_string(),
            });
        }
        let spec = written(current.as_ref(), &step, &self.holder, self.duration, now);
        let object = LeaseObject {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current.and_then(|c| c.metadata.resource_version),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let params = PostParams::default();
        let written = match step {
            Move::Create => call(self.what("create"), self.api.create(&params, &object)).await,
            _ => {
                let replace = self.api.replace(&self.name, &params, &object);
                call(self.what("renew"), replace).await
            }
        };
        match written {
            Ok(_) => {
                if step != Move::Renew {
                    tracing::info!(lease = %self.name, ns = %self.namespace, holder = %self.holder, "took the sweeper Lease: this replica runs the scheduled sweeps");
                }
                Ok(Turn::Mine)
            }
            Err(e) if e.is_conflict() => Ok(Turn::Theirs {
                holder: "another replica (it took the Lease first)".to_owned(),
                until: "unknown".to_owned(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if it is ours, so another replica takes it at once.
    pub async fn give_up(&self) -> Result<(), Error> {
        let Some(mut current) = call(self.what("read"), self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let spec = current.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        let params = PostParams::default();
        match call(
            self.what("give up"),
            self.api.replace(&self.name, &params, &current),
        )
        .await
        {
            Err(e) if !e.is_conflict() => Err(e),
            _ => Ok(()),
        }
    }
}

/// Whether the Lease, last taken or renewed by this replica at `renewed` (the instant before
/// the call that did it), is still this replica's at `now`: until `margin` before it could
/// expire, so a replica stops acting as the holder before another may take over.
pub(crate) fn still_mine(
    renewed: Option<std::time::Instant>,
    now: std::time::Instant,
    duration: Duration,
    margin: Duration,
) -> bool {
    renewed.is_some_and(|at| now.saturating_duration_since(at) < duration.saturating_sub(margin))
}

/// Whether this replica holds the Lease, as its [`Keeper`] last found; cheap to clone.
#[derive(Clone, Debug)]
pub struct Holding {
    renewed: Arc<Mutex<Option<std::time::Instant>>>,
    duration: Duration,
    margin: Duration,
}

impl Holding {
    /// Whether the Lease is this replica's now (renewed recently enough).
    pub fn mine(&self) -> bool {
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        still_mine(
            renewed,
            std::time::Instant::now(),
            self.duration,
            self.margin,
        )
    }

    fn set(&self, renewed: Option<std::time::Instant>) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
    }
}

/// Keeps taking or renewing a Lease every `every`, until stopped; then gives it up.
#[derive(Clone)]
pub struct Keeper {
    lease: Lease,
    every: Duration,
    holding: Holding,
}

impl Keeper {
    /// A keeper of `lease` (which lasts its own duration) trying every `every`.
    pub fn new(lease: Lease, every: Duration) -> Self {
        let holding = Holding {
            renewed: Arc::default(),
            duration: lease.duration,
            margin: every,
        };
        Self {
            lease,
            every,
            holding,
        }
    }

    /// What the keeper finds, for the sweeper.
    pub fn holding(&self) -> Holding {
        self.holding.clone()
    }

    /// Takes or renews the Lease every `every` until `stop`, then gives it up if it holds it,
    /// so another replica takes it at its next try rather than once it expires.
    #[tracing::instrument(name = "sweeper_lease", skip_all, fields(holder = %self.lease.holder))]
    pub async fn run(self, stop: CancellationToken) {
        loop {
            self.try_once().await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.every) => {}
            }
        }
        let held = self.holding.mine();
        self.holding.set(None);
        if !held {
            return;
        }
        match self.lease.give_up().await {
            Ok(()) => {
                tracing::info!(lease = %self.lease.name, "gave the sweeper Lease up at shutdown")
            }
            Err(e) => {
                tracing::warn!(lease = %self.lease.name, error = %e, "cannot give the sweeper Lease up; another replica takes over once it expires")
            }
        }
    }

    /// One try: the Lease is ours from the instant before the call if taken or renewed.
    async fn try_once(&self) {
        let before = std::time::Instant::now();
        let held = self.holding.mine();
        match self.lease.take().await {
            Ok(Turn::Mine) => self.holding.set(Some(before)),
            Ok(Turn::Theirs { holder, until }) => {
                if held {
                    tracing::warn!(lease = %self.lease.name, %holder, "lost the sweeper Lease: another replica runs the scheduled sweeps");
                }
                tracing::debug!(%holder, %until, "another replica holds the sweeper Lease");
                self.holding.set(None);
            }
            Err(e) => {
                // Kept while it lasts: a renewal may fail once without losing it.
                tracing::warn!(lease = %self.lease.name, error = %e, still_mine = held, "cannot take or renew the sweeper Lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_ours_until_a_margin_before_it_could_expire() {
        let start = std::time::Instant::now();
        let (duration, margin) = (Duration::from_secs(15), Duration::from_secs(5));
        let at = |s: u64| start + Duration::from_secs(s);
        let cases = [
            (None, at(0), false),
            (Some(start), at(0), true),
            (Some(start), at(9), true),
            (Some(start), at(10), false),
            (Some(start), at(15), false),
            (Some(at(10)), at(5), true), // a clock read before the renewal
        ];
        for (renewed, now, mine) in cases {
            assert_eq!(
                still_mine(renewed, now, duration, margin),
                mine,
                "{renewed:?} {now:?}"
            );
        }
        assert!(
            !still_mine(Some(start), start, margin, duration),
            "a margin longer than the Lease: never ours"
        );
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, seconds: i32) -> LeaseObject {
        LeaseObject {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(seconds),
                renew_time: renewed.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_lease_is_taken_only_when_free_expired_or_ours() {
        let now = Timestamp::from_second(1_000).unwrap();
        let cases = [
            (None, Move::Create),
            (Some(lease(Some("me"), Some(990), 60)), Move::Renew),
            (Some(lease(Some("me"), Some(10), 60)), Move::Renew),
            (Some(lease(None, Some(990), 60)), Move::TakeOver),
            (Some(lease(Some(""), Some(990), 60)), Move::TakeOver),
            (Some(lease(Some("other"), Some(900), 60)), Move::TakeOver),
            (Some(lease(Some("other"), None, 60)), Move::TakeOver),
            (
                Some(lease(Some("other"), Some(990), 60)),
                Move::Wait {
                    holder: "other".into(),
                    until: Timestamp::from_second(1_050).unwrap(),
                },
            ),
        ];
        for (current, expected) in cases {
            assert_eq!(decide(current.as_ref(), "me", now), expected, "{current:?}");
        }
    }

    #[test]
    fn a_taken_lease_counts_a_transition_and_a_renewal_keeps_its_start() {
        let now = Timestamp::from_second(1_000).unwrap();
        let theirs = lease(Some("other"), Some(900), 60);
        let taken = written(
            Some(&theirs),
            &Move::TakeOver,
            "me",
            Duration::from_secs(90),
            now,
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(90));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        let mut mine = lease(Some("me"), Some(990), 90);
        let start = MicroTime(Timestamp::from_second(500).unwrap());
        if let Some(spec) = mine.spec.as_mut() {
            spec.acquire_time = Some(start.clone());
        }
        let renewed = written(
            Some(&mine),
            &Move::Renew,
            "me",
            Duration::from_secs(90),
            now,
        );
        assert_eq!(renewed.acquire_time, Some(start));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_transitions, Some(3));
    }

    // ---- Against a mock API server: the exact requests, and what each answer makes of them.

    use crate::mock::{Exchange, Scenario, status};
    use http::Method;
    use serde_json::{Value, json};

    const PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/drainer-system/leases/drainer-sweeper";
    const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/drainer-system/leases";

    fn held_by(holder: &str, renewed: Timestamp, version: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": SWEEPER_LEASE, "namespace": "drainer-system", "resourceVersion": version},
            "spec": {
                "holderIdentity": holder, "leaseDurationSeconds": 15,
                "acquireTime": renewed.to_string(), "renewTime": renewed.to_string(),
                "leaseTransitions": 3,
            }
        })
    }

    async fn take_with(exchanges: Vec<Exchange>) -> Result<Turn, Error> {
        let (client, server) = Scenario(exchanges).serve(Duration::from_secs(5));
        let lease = Lease::new(
            client,
            "drainer-system",
            SWEEPER_LEASE,
            "replica-a",
            LEASE_DURATION,
        );
        let turn = lease.take().await;
        server.await.unwrap();
        turn
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_held_by_this_replica() {
        let turn = take_with(vec![
            Exchange::new(Method::GET, PATH, 404, status(404, "NotFound")),
            Exchange::new(
                Method::POST,
                COLLECTION,
                201,
                held_by("replica-a", Timestamp::now(), "1"),
            )
            .checking(|body| {
                assert_eq!(body["metadata"]["name"], SWEEPER_LEASE);
                assert_eq!(body["spec"]["holderIdentity"], "replica-a");
                assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                assert_eq!(body["spec"]["leaseTransitions"], 0);
            }),
        ])
        .await;
        assert_eq!(turn.unwrap(), Turn::Mine);
    }

    #[tokio::test]
    async fn a_lease_another_replica_renewed_lately_is_left_alone() {
        let turn = take_with(vec![Exchange::new(
            Method::GET,
            PATH,
            200,
            held_by("replica-b", Timestamp::now(), "7"),
        )])
        .await;
        assert!(matches!(turn.unwrap(), Turn::Theirs { holder, .. } if holder == "replica-b"));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_the_version_read_and_a_lost_race_is_theirs() {
        let stale = Timestamp::now() - SignedDuration::from_secs(60);
        let replace = |answer: u16| {
            Exchange::new(
                Method::PUT,
                PATH,
                answer,
                if answer == 200 {
                    held_by("replica-a", Timestamp::now(), "8")
                } else {
                    status(answer, "Conflict")
                },
            )
            .checking(|body| {
                assert_eq!(
                    body["metadata"]["resourceVersion"], "7",
                    "a write without the version read could win a race"
                );
                assert_eq!(body["spec"]["holderIdentity"], "replica-a");
                assert_eq!(
                    body["spec"]["leaseTransitions"], 4,
                    "a take-over is one more transition"
                );
            })
        };
        let won = take_with(vec![
            Exchange::new(Method::GET, PATH, 200, held_by("replica-b", stale, "7")),
            replace(200),
        ])
        .await;
        assert_eq!(won.unwrap(), Turn::Mine);
        let lost = take_with(vec![
            Exchange::new(Method::GET, PATH, 200, held_by("replica-b", stale, "7")),
            replace(409),
        ])
        .await;
        assert!(matches!(lost.unwrap(), Turn::Theirs { .. }));
    }

    #[tokio::test]
    async fn an_api_server_error_is_a_transient_error_that_names_the_lease() {
        let err = take_with(vec![Exchange::new(
            Method::GET,
            PATH,
            503,
            status(503, "ServiceUnavailable"),
        )])
        .await
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("drainer-system/drainer-sweeper"),
            "{err}"
        );
        let err = take_with(vec![Exchange::new(
            Method::GET,
            PATH,
            403,
            status(403, "Forbidden"),
        )])
        .await
        .unwrap_err();
        assert!(!err.is_transient(), "a refusal is not retried: {err}");
    }

    #[tokio::test]
    async fn giving_up_clears_the_holder_only_of_this_replicas_lease() {
        let (client, server) = Scenario(vec![
            Exchange::new(
                Method::GET,
                PATH,
                200,
                held_by("replica-a", Timestamp::now(), "9"),
            ),
            Exchange::new(Method::PUT, PATH, 200, held_by("", Timestamp::now(), "10")).checking(
                |body| {
                    assert!(
                        body["spec"]
                            .get("holderIdentity")
                            .is_none_or(Value::is_null),
                        "{body}"
                    );
                    assert_eq!(body["metadata"]["resourceVersion"], "9");
                },
            ),
            Exchange::new(
                Method::GET,
                PATH,
                200,
                held_by("replica-b", Timestamp::now(), "11"),
            ),
        ])
        .serve(Duration::from_secs(5));
        let lease = Lease::new(
            client,
            "drainer-system",
            SWEEPER_LEASE,
            "replica-a",
            LEASE_DURATION,
        );
        lease.give_up().await.unwrap();
        lease.give_up().await.unwrap();
        server.await.unwrap();
    }
}
