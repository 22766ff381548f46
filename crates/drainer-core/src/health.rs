//! What the service knows about its own state, for `/readyz`, `/healthz` and `/metrics`: the
//! supervised tasks (running, or down and waiting to be started again, and how often they were
//! restarted), the watches of Kubernetes mode (synced, or not listed yet or failing since
//! their last listing), and the store (whether it answered the last probe).
//!
//! The parts that know keep it up to date: the [`crate::supervisor`] its tasks, each watch its
//! own state through a [`WatchReport`], the store prober the store's. Reading it never calls
//! anything, so a probe or a scrape costs no API call, store request or query beyond the
//! ledger's own check. The decisions are pure functions of a [`Snapshot`]:
//!
//! - **Ready** means "can take handoffs": not starting or shutting down, the ledger commits,
//!   every watch is synced (a handoff is admitted, and its pod's release decided, from what the
//!   watches keep) and every supervised task runs. The store is reported, not required: taking
//!   a handoff needs only the ledger, and a Service without endpoints would refuse every
//!   handoff for as long as the store is down.
//! - **Healthy** means "a restart would not help": false once a task was restarted more than
//!   [`RESTARTS_TOLERATED`] times within [`RESTART_WINDOW`], so Kubernetes restarts the pod.
//!   A watch that cannot list (no rights, no API server) is not a reason: a new process would
//!   fail the same way, and readiness already says so.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Restarts of one task within [`RESTART_WINDOW`] that are tolerated: one more and `/healthz`
/// fails. With the supervisor's backoff (1 s doubling to 60 s), a task that fails as soon as
/// it starts is restarted a sixth time about a minute after its first failure.
pub const RESTARTS_TOLERATED: usize = 5;
/// The window in which restarts count against [`RESTARTS_TOLERATED`].
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The service's state, shared by everything that reports and reads it; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Health {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    tasks: BTreeMap<String, Task>,
    watches: BTreeMap<String, Watch>,
    store: Option<StoreProbe>,
}

/// One supervised task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Whether it runs now (false while it waits to be started again).
    pub up: bool,
    /// Restarts since the service started.
    pub restarts: u64,
    /// When each restart within [`RESTART_WINDOW`] happened (older ones are forgotten).
    pub recent: Vec<Instant>,
    /// How it ended the last time, if it did.
    pub last_exit: Option<String>,
}

/// One watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// Whether it has listed and has not failed since.
    pub synced: bool,
    /// Since when it is in that state.
    pub since: Instant,
    /// The error that unsynced it, if one did (none before its first listing).
    pub error: Option<String>,
}

/// The store's last probe.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreProbe {
    /// Whether it answered.
    pub up: bool,
    /// Since when it answers (or does not).
    pub since: Instant,
    /// When it was probed last.
    pub checked: Instant,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// What the ledger's check found, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerCheck {
    /// It answers and commits.
    Commits,
    /// It does not answer.
    NoAnswer,
    /// It answers but cannot commit: its disk is full.
    Full,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a task under `name`, or under `name#2`, `name#3`, … if that is taken; returns
    /// the name it got. It counts as running.
    pub fn add_task(&self, name: &str) -> String {
        let mut state = self.state();
        let mut unique = name.to_owned();
        let mut n = 1;
        while state.tasks.contains_key(&unique) {
            n += 1;
            unique = format!("{name}#{n}");
        }
        state.tasks.insert(
            unique.clone(),
            Task {
                up: true,
                restarts: 0,
                recent: Vec::new(),
                last_exit: None,
            },
        );
        unique
    }

    /// Task `name` ended (`how`) and waits to be started again.
    pub fn task_down(&self, name: &str, how: &str) {
        if let Some(task) = self.state().tasks.get_mut(name) {
            task.up = false;
            task.last_exit = Some(how.to_owned());
        }
    }

    /// Task `name` was started again at `at`.
    pub fn task_restarted(&self, name: &str, at: Instant) {
        if let Some(task) = self.state().tasks.get_mut(name) {
            task.up = true;
            task.restarts += 1;
            task.recent
                .retain(|t| at.saturating_duration_since(*t) < RESTART_WINDOW);
            task.recent.push(at);
        }
    }

    /// Task `name` stopped for good (shutdown, or what it served is gone): forgotten.
    pub(crate) fn remove_task(&self, name: &str) {
        self.state().tasks.remove(name);
    }

    /// Registers a watch under `name` (not synced until it lists) and returns its reporter.
    pub fn watch(&self, name: &str) -> WatchReport {
        self.state().watches.insert(
            name.to_owned(),
            Watch {
                synced: false,
                since: Instant::now(),
                error: None,
            },
        );
        WatchReport {
            health: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Records a probe of the store: `Ok` if it answered, else why not. Returns whether that
    /// changed (or was the first probe).
    pub fn store_probed(&self, result: Result<(), String>) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let up = result.is_ok();
        let (since, changed) = match &state.store {
            Some(last) if last.up == up => (last.since, false),
            _ => (now, true),
        };
        state.store = Some(StoreProbe {
            up,
            since,
            checked: now,
            error: result.err(),
        });
        changed
    }

    /// Whether every registered watch is synced.
    pub fn watches_synced(&self) -> bool {
        self.state().watches.values().all(|w| w.synced)
    }

    /// Everything, as it is now.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            tasks: state.tasks.clone(),
            watches: state.watches.clone(),
            store: state.store.clone(),
            now: Instant::now(),
        }
    }
}

/// How one watch tells [`Health`] its state.
#[derive(Debug, Clone)]
pub struct WatchReport {
    health: Health,
    name: String,
}

impl WatchReport {
    /// The watch has listed (at start, or again after an error): what it keeps is current.
    /// Returns whether it was failing until now.
    pub fn synced(&self) -> bool {
        self.set(true, None)
    }

    /// The watch failed: what it keeps is no longer current until it lists again.
    pub fn failing(&self, error: &str) {
        self.set(false, Some(error.to_owned()));
    }

    /// Sets the state; returns whether the watch had an error until now.
    fn set(&self, synced: bool, error: Option<String>) -> bool {
        let mut state = self.health.state();
        let Some(watch) = state.watches.get_mut(&self.name) else {
            return false;
        };
        if watch.synced != synced {
            watch.since = Instant::now();
        }
        watch.synced = synced;
        let failed = watch.error.is_some();
        watch.error = if synced { None } else { error };
        failed
    }
}

/// [`Health`] at one instant, for the pure decisions.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The supervised tasks by name.
    pub tasks: BTreeMap<String, Task>,
    /// The watches by name.
    pub watches: BTreeMap<String, Watch>,
    /// The store's last probe, once there was one.
    pub store: Option<StoreProbe>,
    /// When it was taken.
    pub now: Instant,
}

/// One condition of readiness, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// `accepting`, `ledger`, `watches`, `tasks` or `store`.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// Whether readiness needs it (the store's is only reported).
    pub required: bool,
    /// What it is, in words.
    pub message: String,
}

/// One watch, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchView {
    /// Its name: the kind's plural, `/namespace` when it watches one.
    pub name: String,
    /// Whether it is synced.
    pub synced: bool,
    /// For how long it has been in that state.
    pub seconds: u64,
    /// The error that unsynced it.
    pub error: Option<String>,
}

/// One task, as `/readyz` and `/healthz` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskView {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub up: bool,
    /// Restarts since the service started.
    pub restarts: u64,
    /// Restarts within the window `/healthz` looks at.
    pub recent_restarts: usize,
    /// How it ended the last time.
    pub last_exit: Option<String>,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Every condition, required or reported.
    pub conditions: Vec<Condition>,
    /// Every watch.
    pub watches: Vec<WatchView>,
    /// Every supervised task.
    pub tasks: Vec<TaskView>,
}

impl Readiness {
    /// Whether every required condition holds.
    pub fn ready(&self) -> bool {
        self.status == "ready"
    }

    /// Why not ready: the messages of the required conditions that fail.
    pub fn reasons(&self) -> String {
        self.conditions
            .iter()
            .filter(|c| c.required && !c.ok)
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The answer of `/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Liveness {
    /// `ok` or `failing`.
    pub status: &'static str,
    /// Why failing: the tasks restarted too often.
    pub reasons: Vec<String>,
    /// Every supervised task.
    pub tasks: Vec<TaskView>,
}

impl Liveness {
    /// Whether no task keeps failing.
    pub fn healthy(&self) -> bool {
        self.status == "ok"
    }
}

impl Snapshot {
    fn recent_restarts(&self, task: &Task) -> usize {
        task.recent
            .iter()
            .filter(|t| self.now.saturating_duration_since(**t) < RESTART_WINDOW)
            .count()
    }

    fn task_views(&self) -> Vec<TaskView> {
        self.tasks
            .iter()
            .map(|(name, t)| TaskView {
                name: name.clone(),
                up: t.up,
                restarts: t.restarts,
                recent_restarts: self.recent_restarts(t),
                last_exit: t.last_exit.clone(),
            })
            .collect()
    }

    /// Whether the service can take handoffs: `accepting` (not starting or shutting down),
    /// the ledger as checked, every watch synced, every task up; the store only reported.
    pub fn readiness(&self, accepting: bool, ledger: LedgerCheck) -> Readiness {
        let conditions = vec![
            Condition {
                name: "accepting",
                ok: accepting,
                required: true,
                message: if accepting {
                    "taking work".into()
                } else {
                    "starting or shutting down".into()
                },
            },
            Condition {
                name: "ledger",
                ok: ledger == LedgerCheck::Commits,
                required: true,
                message: match ledger {
                    LedgerCheck::Commits => "the ledger commits".into(),
                    LedgerCheck::NoAnswer => "the ledger does not answer".into(),
                    LedgerCheck::Full => "the ledger cannot commit: its disk is full".into(),
                },
            },
            self.watches_condition(),
            self.tasks_condition(),
            self.store_condition(),
        ];
        let ready = conditions.iter().all(|c| c.ok || !c.required);
        Readiness {
            status: if ready { "ready" } else { "not_ready" },
            conditions,
            watches: self
                .watches
                .iter()
                .map(|(name, w)| WatchView {
                    name: name.clone(),
                    synced: w.synced,
                    seconds: self.now.saturating_duration_since(w.since).as_secs(),
                    error: w.error.clone(),
                })
                .collect(),
            tasks: self.task_views(),
        }
    }

    fn watches_condition(&self) -> Condition {
        let unsynced: Vec<String> = self
            .watches
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(name, w)| {
                let seconds = self.now.saturating_duration_since(w.since).as_secs();
                match &w.error {
                    Some(e) => format!("{name} failing for {seconds} s ({e})"),
                    None => format!("{name} not listed yet"),
                }
            })
            .collect();
        Condition {
            name: "watches",
            ok: unsynced.is_empty(),
            required: true,
            message: match (unsynced.is_empty(), self.watches.len()) {
                (true, 0) => "no watches (local mode)".into(),
                (true, n) => format!("{n} watches synced"),
                (false, _) => format!("watches not synced: {}", unsynced.join(", ")),
            },
        }
    }

    fn tasks_condition(&self) -> Condition {
        let down: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.up)
            .map(|(name, t)| match &t.last_exit {
                Some(how) => format!("{name} ({how})"),
                None => name.clone(),
            })
            .collect();
        Condition {
            name: "tasks",
            ok: down.is_empty(),
            required: true,
            message: if down.is_empty() {
                format!("{} tasks running", self.tasks.len())
            } else {
                format!("tasks down, restarting: {}", down.join(", "))
            },
        }
    }

    fn store_condition(&self) -> Condition {
        let (ok, message) = match &self.store {
            None => (false, "the store has not been probed yet".to_owned()),
            Some(probe) => {
                let seconds = self.now.saturating_duration_since(probe.since).as_secs();
                let ago = self.now.saturating_duration_since(probe.checked).as_secs();
                match &probe.error {
                    None => (true, format!("the store answers (checked {ago} s ago)")),
                    Some(e) => (
                        false,
                        format!(
                            "the store does not answer for {seconds} s (checked {ago} s ago): {e}; handoffs are still taken, copies wait for it"
                        ),
                    ),
                }
            }
        };
        Condition {
            name: "store",
            ok,
            required: false,
            message,
        }
    }

    /// Whether no task keeps failing: each restarted at most [`RESTARTS_TOLERATED`] times
    /// within [`RESTART_WINDOW`].
    pub fn liveness(&self) -> Liveness {
        let reasons: Vec<String> = self
            .tasks
            .iter()
            .filter_map(|(name, t)| {
                let recent = self.recent_restarts(t);
                (recent > RESTARTS_TOLERATED).then(|| {
                    format!(
                        "task {name} was restarted {recent} times within {} minutes (last: {})",
                        RESTART_WINDOW.as_secs() / 60,
                        t.last_exit.as_deref().unwrap_or("unknown")
                    )
                })
            })
            .collect();
        Liveness {
            status: if reasons.is_empty() { "ok" } else { "failing" },
            reasons,
            tasks: self.task_views(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn at(now: Instant, ago: Duration) -> Instant {
        now.checked_sub(ago)
            .expect("the clock is far enough from its start")
    }

    fn task(up: bool, restarts_ago: &[u64], now: Instant) -> Task {
        Task {
            up,
            restarts: restarts_ago.len() as u64,
            recent: restarts_ago
                .iter()
                .map(|s| at(now, S * *s as u32))
                .collect(),
            last_exit: (!restarts_ago.is_empty() || !up).then(|| "panicked: boom".into()),
        }
    }

    fn watch(synced: bool, error: Option<&str>, now: Instant) -> Watch {
        Watch {
            synced,
            since: at(now, S * 12),
            error: error.map(str::to_owned),
        }
    }

    fn store(up: bool, now: Instant) -> StoreProbe {
        StoreProbe {
            up,
            since: at(now, S * 30),
            checked: at(now, S * 3),
            error: (!up).then(|| "connection refused".into()),
        }
    }

    /// A snapshot with these tasks, watches and store.
    fn snapshot(
        now: Instant,
        tasks: &[(&str, Task)],
        watches: &[(&str, Watch)],
        store: Option<StoreProbe>,
    ) -> Snapshot {
        Snapshot {
            tasks: tasks
                .iter()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect(),
            watches: watches
                .iter()
                .map(|(n, w)| (n.to_string(), w.clone()))
                .collect(),
            store,
            now,
        }
    }

    #[test]
    fn ready_means_accepting_a_committing_ledger_synced_watches_and_running_tasks() {
        let now = Instant::now() + S * 3600;
        let running = task(true, &[], now);
        let synced = watch(true, None, now);
        let cases: Vec<(&str, bool, LedgerCheck, Snapshot, bool, &str)> = vec![
            (
                "all well",
                true,
                LedgerCheck::Commits,
                snapshot(
                    now,
                    &[("release-tracker", running.clone())],
                    &[("pods", synced.clone())],
                    Some(store(true, now)),
                ),
                true,
                "",
            ),
            (
                "local mode: no watches",
                true,
                LedgerCheck::Commits,
                snapshot(now, &[], &[], Some(store(true, now))),
                true,
                "",
            ),
            (
                "the store down is reported, not a reason",
                true,
                LedgerCheck::Commits,
                snapshot(
                    now,
                    &[],
                    &[("pods", synced.clone())],
                    Some(store(false, now)),
                ),
                true,
                "",
            ),
            (
                "the store not probed yet is not a reason either",
                true,
                LedgerCheck::Commits,
                snapshot(now, &[], &[], None),
                true,
                "",
            ),
            (
                "shutting down",
                false,
                LedgerCheck::Commits,
                snapshot(now, &[], &[], None),
                false,
                "starting or shutting down",
            ),
            (
                "a full ledger",
                true,
                LedgerCheck::Full,
                snapshot(now, &[], &[], None),
                false,
                "the ledger cannot commit: its disk is full",
            ),
            (
                "a ledger that does not answer",
                true,
                LedgerCheck::NoAnswer,
                snapshot(now, &[], &[], None),
                false,
                "the ledger does not answer",
            ),
            (
                "a watch not listed yet",
                true,
                LedgerCheck::Commits,
                snapshot(
                    now,
                    &[],
                    &[
                        ("pods", watch(false, None, now)),
                        ("statefulsets", synced.clone()),
                    ],
                    None,
                ),
                false,
                "watches not synced: pods not listed yet",
            ),
            (
                "a watch failing since its last listing, named with its error",
                true,
                LedgerCheck::Commits,
                snapshot(
                    now,
                    &[],
                    &[("pods/shop", watch(false, Some("403 Forbidden"), now))],
                    None,
                ),
                false,
                "watches not synced: pods/shop failing for 12 s (403 Forbidden)",
            ),
            (
                "a task down, waiting to be restarted",
                true,
                LedgerCheck::Commits,
                snapshot(now, &[("sweeps", task(false, &[], now))], &[], None),
                false,
                "tasks down, restarting: sweeps (panicked: boom)",
            ),
            (
                "a task restarted and running again",
                true,
                LedgerCheck::Commits,
                snapshot(now, &[("sweeps", task(true, &[5, 2], now))], &[], None),
                true,
                "",
            ),
        ];
        for (what, accepting, ledger, snapshot, ready, reasons) in cases {
            let readiness = snapshot.readiness(accepting, ledger);
            assert_eq!(readiness.ready(), ready, "{what}: {readiness:?}");
            assert_eq!(readiness.reasons(), reasons, "{what}");
            let store = readiness
                .conditions
                .iter()
                .find(|c| c.name == "store")
                .unwrap();
            assert!(!store.required, "{what}");
            assert_eq!(
                store.ok,
                snapshot.store.as_ref().is_some_and(|s| s.up),
                "{what}"
            );
        }
    }

    #[test]
    fn a_task_restarted_too_often_within_the_window_makes_the_service_unhealthy() {
        let now = Instant::now() + S * 7200;
        let window = RESTART_WINDOW.as_secs();
        let cases: Vec<(&str, Vec<u64>, bool)> = vec![
            ("never restarted", vec![], true),
            (
                "restarted as often as tolerated",
                vec![1; RESTARTS_TOLERATED],
                true,
            ),
            (
                "once more than tolerated",
                vec![1; RESTARTS_TOLERATED + 1],
                false,
            ),
            (
                "many restarts, but most of them long ago",
                [vec![window + 1; 20], vec![30; RESTARTS_TOLERATED]].concat(),
                true,
            ),
            (
                "the oldest restart just inside the window still counts",
                [vec![window - 1], vec![30; RESTARTS_TOLERATED]].concat(),
                false,
            ),
        ];
        for (what, ago, healthy) in cases {
            let s = snapshot(
                now,
                &[
                    ("intake", task(true, &ago, now)),
                    ("other", task(true, &[], now)),
                ],
                &[],
                None,
            );
            let liveness = s.liveness();
            assert_eq!(liveness.healthy(), healthy, "{what}: {liveness:?}");
            if !healthy {
                assert_eq!(liveness.reasons.len(), 1, "{what}");
                assert!(
                    liveness.reasons[0].starts_with("task intake was restarted"),
                    "{what}: {liveness:?}"
                );
            }
        }
    }

    #[test]
    fn watches_report_their_own_state_and_the_store_its_last_probe() {
        let health = Health::default();
        let pods = health.watch("pods");
        let sets = health.watch("statefulsets");
        let ready = |h: &Health| h.snapshot().readiness(true, LedgerCheck::Commits).ready();
        assert!(!ready(&health), "not listed yet");
        assert!(!pods.synced(), "not failing before");
        sets.synced();
        assert!(ready(&health));
        pods.failing("connection refused");
        let r = health.snapshot().readiness(true, LedgerCheck::Commits);
        assert!(r.reasons().contains("pods failing"), "{r:?}");
        assert_eq!(r.watches[0].error.as_deref(), Some("connection refused"));
        assert!(pods.synced(), "it was failing");
        assert!(ready(&health), "listed again");
        assert!(
            health.store_probed(Err("timeout".into())),
            "the first probe"
        );
        assert!(!health.store_probed(Err("timeout".into())), "no change");
        let r = health.snapshot().readiness(true, LedgerCheck::Commits);
        assert!(r.ready(), "{r:?}");
        let store = r.conditions.iter().find(|c| c.name == "store").unwrap();
        assert!(!store.ok && store.message.contains("timeout"), "{store:?}");
        assert!(health.store_probed(Ok(())), "back");
        assert!(health.snapshot().store.unwrap().up);
    }

    #[test]
    fn tasks_get_unique_names_and_count_their_restarts() {
        let health = Health::default();
        assert_eq!(health.add_task("intake"), "intake");
        assert_eq!(health.add_task("intake"), "intake#2");
        health.task_down("intake", "returned");
        assert!(!health.snapshot().tasks["intake"].up);
        let now = Instant::now();
        health.task_restarted("intake", now);
        let task = &health.snapshot().tasks["intake"];
        assert!(task.up);
        assert_eq!((task.restarts, task.recent.len()), (1, 1));
        assert_eq!(task.last_exit.as_deref(), Some("returned"));
        health.remove_task("intake");
        assert!(!health.snapshot().tasks.contains_key("intake"));
    }
}
