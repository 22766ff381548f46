//! The lifecycle under random sequences of events, on SQLite and PostgreSQL: handoffs (waiting
//! for release or not), release decisions, claims by several replicas (some at once), leases
//! that expire and are taken over, attempts that end in every way (failing drains claimed
//! again), stale writers, cancels, abandons and retries by hand. A model of every drain is kept beside the ledger; after each step the
//! ledger must agree with it, hold at most one active drain per volume, and have a history in
//! which every row is a transition of the lifecycle's table.

use crate::support::fresh_postgres_database;
use drainer::Ledger;
use drainer_core::ledger::{
    AttemptOutcome, Drain, DrainFilter, NewDrain, Refused, Transition, Writer,
};
use drainer_core::lifecycle::{AfterFailure, DrainState, Event};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

const VOLUMES: [&str; 4] = [
    "shop/data-web-0",
    "shop/data-web-1",
    "shop/logs-web-0",
    "db/pg-0",
];
const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];
const STEPS: usize = 250;

/// What the test believes about one drain.
#[derive(Debug, Clone)]
struct Model {
    volume: String,
    state: DrainState,
    holder: Option<String>,
    lease_expires_ms: Option<i64>,
    not_before_ms: i64,
    /// History rows the ledger must have: the creation plus every transition made.
    events: usize,
}

struct Walk {
    ledger: Ledger,
    rng: StdRng,
    seed: u64,
    drains: HashMap<String, Model>,
    step: usize,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Walk {
    fn context(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn pick_drain(&mut self) -> Option<String> {
        let mut ids: Vec<&String> = self.drains.keys().collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())].clone())
    }

    fn active_on(&self, volume: &str) -> Option<String> {
        self.drains
            .iter()
            .find(|(_, m)| m.volume == volume && m.state.is_active())
            .map(|(id, _)| id.clone())
    }

    /// Takes the ledger's word for the fields the test cannot predict (times), after checking
    /// the state agrees.
    fn adopt(&mut self, drain: &Drain) {
        let model = self.drains.get_mut(&drain.id).expect("known drain");
        model.holder = drain.lease_owner.clone();
        model.lease_expires_ms = drain.lease_expires_ms;
        model.not_before_ms = drain.not_before_ms;
    }

    fn moved(&mut self, drain: &Drain, to: DrainState) {
        let ctx = self.context();
        assert_eq!(drain.state, to, "{ctx}: {} state", drain.id);
        let model = self.drains.get_mut(&drain.id).expect("known drain");
        model.state = to;
        model.events += 1;
        self.adopt(drain);
    }

    async fn handoff(&mut self) {
        let volume = VOLUMES[self.rng.random_range(0..VOLUMES.len())];
        let wait = self.rng.random_bool(0.5);
        let new = NewDrain {
            volume: volume.parse().unwrap(),
            pod: None,
            reason: "walk".into(),
            max_attempts: 3,
            wait_for_release: wait,
            requested_by: Some("pod:shop/walker".into()),
            facts: Default::default(),
        };
        let answer = self.ledger.request_drains(&[new]).await.unwrap();
        let (drain, created) = &answer[0];
        let ctx = self.context();
        match self.active_on(volume) {
            Some(active) => {
                assert!(!created, "{ctx}: a second active drain for {volume}");
                assert_eq!(drain.id, active, "{ctx}: repeat returns the active drain");
            }
            None => {
                assert!(created, "{ctx}: {volume} had no active drain");
                assert_eq!(drain.state, DrainState::initial(wait), "{ctx}");
                self.drains.insert(
                    drain.id.clone(),
                    Model {
                        volume: volume.into(),
                        state: drain.state,
                        holder: None,
                        lease_expires_ms: None,
                        not_before_ms: drain.not_before_ms,
                        events: 1,
                    },
                );
            }
        }
    }

    /// A release decision, sometimes made on a stale view of the drain.
    async fn decide(&mut self) {
        let Some(id) = self.pick_drain() else { return };
        let event = [Event::Orphaned, Event::StillInUse, Event::ReleaseTimedOut]
            [self.rng.random_range(0..3)];
        let model = self.drains[&id].clone();
        let seen = if self.rng.random_bool(0.7) {
            model.state
        } else {
            DrainState::AwaitingRelease
        };
        let change = Transition::new(&id, seen, event, Writer::Anyone, "decided");
        let answer = self.ledger.transition(change).await.unwrap();
        self.expect_transition(&id, &model, seen, event, None, answer);
    }

    /// Checks a transition's answer against the model: applied exactly when the drain was in
    /// the state the writer saw, held as it said, and the lifecycle allows the event.
    fn expect_transition(
        &mut self,
        id: &str,
        model: &Model,
        seen: DrainState,
        event: Event,
        holder: Option<&str>,
        answer: Result<Drain, Refused>,
    ) {
        let ctx = self.context();
        let holds = holder.is_none_or(|h| model.holder.as_deref() == Some(h));
        let allowed = seen.after(event);
        match (answer, allowed) {
            (Ok(drain), Some(to)) => {
                assert_eq!(
                    model.state, seen,
                    "{ctx}: {id} changed from a state it was not in"
                );
                assert!(
                    holds,
                    "{ctx}: {id} changed by a writer that did not hold it"
                );
                self.moved(&drain, to);
            }
            (Err(Refused::Stale { .. }), Some(_)) => {
                assert!(
                    model.state != seen || !holds,
                    "{ctx}: {id} refused a valid {event:?}"
                );
            }
            (Err(Refused::Conflict { .. }), None) => {}
            (other, allowed) => {
                panic!("{ctx}: {id} {event:?} from {seen}: {other:?} (table says {allowed:?})")
            }
        }
    }

    fn claimable(&self, id: &str, at: i64) -> bool {
        let m = &self.drains[id];
        match m.state {
            DrainState::Queued | DrainState::Failing => m.not_before_ms <= at,
            DrainState::Copying => m.lease_expires_ms.is_some_and(|t| t < at),
            _ => false,
        }
    }

    async fn claim(&mut self, replicas: &[&str]) {
        let before = now_ms();
        // Several replicas at once hold long leases: with a lease of zero, a concurrent claim
        // may rightly take over what another has just claimed.
        let short = replicas.len() == 1 && self.rng.random_bool(0.4);
        let lease = if short {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        };
        let claims = replicas.iter().map(|r| self.ledger.claim_drain(r, lease));
        let claimed: Vec<Option<Drain>> = futures::future::join_all(claims)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let ctx = self.context();
        let mut seen = std::collections::HashSet::new();
        for (replica, drain) in replicas.iter().zip(claimed) {
            let Some(drain) = drain else { continue };
            assert!(
                seen.insert(drain.id.clone()),
                "{ctx}: {} claimed twice at once",
                drain.id
            );
            assert!(
                self.claimable(&drain.id, now_ms()),
                "{ctx}: {} was not claimable: {:?}",
                drain.id,
                self.drains[&drain.id]
            );
            assert_eq!(drain.lease_owner.as_deref(), Some(*replica), "{ctx}");
            self.moved(&drain, DrainState::Copying);
        }
        if seen.is_empty() {
            let waiting: Vec<_> = self
                .drains
                .keys()
                .filter(|id| self.claimable(id, before - 2))
                .collect();
            assert!(
                waiting.is_empty(),
                "{ctx}: nothing claimed though {waiting:?} was due"
            );
        }
        if short {
            tokio::time::sleep(Duration::from_millis(3)).await; // let the short leases expire
        }
    }

    /// Ends an attempt: as the holder, or as a replica whose lease is gone (a stale writer).
    async fn end_attempt(&mut self) {
        let Some(id) = self.pick_drain() else { return };
        let model = self.drains[&id].clone();
        let replica = match (&model.holder, self.rng.random_bool(0.8)) {
            (Some(holder), true) => holder.clone(),
            _ => REPLICAS[self.rng.random_range(0..REPLICAS.len())].to_owned(),
        };
        let outcome = match self.rng.random_range(0..5) {
            0 => AttemptOutcome::Completed {
                snapshot: format!("s-{}", self.step),
            },
            1 => AttemptOutcome::Failed {
                error: "flaky".into(),
                after: AfterFailure::RetryAfter(Duration::ZERO),
            },
            2 => AttemptOutcome::Failed {
                error: "broken".into(),
                after: AfterFailure::Failing(Duration::ZERO),
            },
            3 => AttemptOutcome::Failed {
                error: "gone".into(),
                after: AfterFailure::GiveUp,
            },
            _ => AttemptOutcome::Released,
        };
        let event = match &outcome {
            AttemptOutcome::Completed { .. } => Event::Completed,
            AttemptOutcome::Failed { after, .. } => after.event(),
            AttemptOutcome::Released => Event::Released,
        };
        let ended = self
            .ledger
            .end_attempt(&id, &replica, &outcome)
            .await
            .unwrap();
        let ctx = self.context();
        let holds = model.state == DrainState::Copying && model.holder.as_deref() == Some(&replica);
        assert_eq!(ended, holds, "{ctx}: end of {id} by {replica}: {model:?}");
        if ended {
            let drain = self.ledger.drain(&id).await.unwrap().unwrap();
            let to = DrainState::Copying.after(event).unwrap();
            self.moved(&drain, to);
        }
    }

    async fn renew(&mut self) {
        let Some(id) = self.pick_drain() else { return };
        let model = self.drains[&id].clone();
        let replica = REPLICAS[self.rng.random_range(0..REPLICAS.len())];
        let renewed = self
            .ledger
            .renew_lease(&id, replica, Duration::from_secs(3600))
            .await
            .unwrap();
        let holds = model.state == DrainState::Copying && model.holder.as_deref() == Some(replica);
        assert_eq!(
            renewed,
            holds,
            "{}: renew of {id} by {replica}",
            self.context()
        );
        if renewed {
            let drain = self.ledger.drain(&id).await.unwrap().unwrap();
            self.adopt(&drain);
        }
    }

    async fn by_hand(&mut self) {
        let Some(id) = self.pick_drain() else { return };
        let event =
            [Event::Cancelled, Event::RetriedByHand, Event::Abandoned][self.rng.random_range(0..3)];
        let model = self.drains[&id].clone();
        let why = (event == Event::Abandoned).then_some("the walk gives it up");
        let answer = self
            .ledger
            .change_drain(&id, event, "operator:walker", why)
            .await
            .unwrap();
        let ctx = self.context();
        let busy = self
            .active_on(&model.volume)
            .is_some_and(|active| active != id);
        match (answer, model.state.after(event)) {
            (Ok(drain), Some(to)) => {
                assert!(
                    !busy || !to.is_active(),
                    "{ctx}: {id} became active beside another drain of its volume"
                );
                self.moved(&drain, to)
            }
            (Err(Refused::VolumeBusy { .. }), Some(DrainState::Queued)) => {
                assert!(
                    busy,
                    "{ctx}: {id} refused as busy, but its volume has no active drain"
                )
            }
            (Err(Refused::Conflict { state, .. }), None) => assert_eq!(state, model.state, "{ctx}"),
            (other, allowed) => panic!(
                "{ctx}: {event:?} of {id} in {}: {other:?} vs {allowed:?}",
                model.state
            ),
        }
    }

    /// The ledger agrees with the model; one active drain per volume; every history row is a
    /// transition of the table, starting from an initial state and ending in the current one.
    async fn check(&self) {
        let ctx = self.context();
        let all = self
            .ledger
            .drains(&DrainFilter::default(), 1000)
            .await
            .unwrap();
        assert_eq!(all.len(), self.drains.len(), "{ctx}: drains recorded");
        let mut active = HashMap::new();
        for drain in &all {
            let model = &self.drains[&drain.id];
            assert_eq!(drain.state, model.state, "{ctx}: {}", drain.id);
            if drain.state.is_active() {
                let other = active.insert(drain.volume().to_string(), drain.id.clone());
                assert!(
                    other.is_none(),
                    "{ctx}: two active drains of {}",
                    drain.volume()
                );
            }
            let history = self.ledger.drain_events(&drain.id).await.unwrap();
            assert_eq!(
                history.len(),
                model.events,
                "{ctx}: history of {}",
                drain.id
            );
            let first = history[0].state;
            assert!(
                first == DrainState::initial(true) || first == DrainState::initial(false),
                "{ctx}: {} starts in {first}",
                drain.id
            );
            for pair in history.windows(2) {
                assert!(
                    pair[0].state.can_become(pair[1].state),
                    "{ctx}: {} went {} -> {}, outside the table",
                    drain.id,
                    pair[0].state,
                    pair[1].state
                );
            }
            assert_eq!(history.last().unwrap().state, drain.state, "{ctx}");
        }
    }
}

async fn random_walk(ledger: Ledger) {
    let seed = std::env::var("DRAINER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("lifecycle walk: seed {seed} (DRAINER_TEST_SEED={seed} repeats it)");
    let mut walk = Walk {
        ledger,
        rng: StdRng::seed_from_u64(seed),
        seed,
        drains: HashMap::new(),
        step: 0,
    };
    for step in 0..STEPS {
        walk.step = step;
        match walk.rng.random_range(0..100) {
            0..20 => walk.handoff().await,
            20..32 => walk.decide().await,
            32..47 => {
                let replica = REPLICAS[walk.rng.random_range(0..REPLICAS.len())];
                walk.claim(&[replica]).await
            }
            47..55 => walk.claim(&REPLICAS).await,
            55..77 => walk.end_attempt().await,
            77..85 => walk.renew().await,
            _ => walk.by_hand().await,
        }
        walk.check().await;
    }
    let states: std::collections::HashSet<DrainState> =
        walk.drains.values().map(|m| m.state).collect();
    assert!(
        states.len() >= 3,
        "seed {seed}: the walk reached only {states:?}"
    );
}

#[tokio::test]
async fn sqlite_lifecycle_holds_under_random_events() {
    let dir = tempfile::tempdir().unwrap();
    random_walk(Ledger::open(None, dir.path()).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_lifecycle_holds_under_random_events() {
    let url = fresh_postgres_database().await;
    let ledger = Ledger::open(Some(&url), std::path::Path::new("unused"))
        .await
        .unwrap();
    random_walk(ledger).await;
}
