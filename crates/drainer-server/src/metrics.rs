//! Prometheus metrics of the service, in one registry, rendered at `/metrics`.
//!
//! Counters and histograms are updated where things happen; drain counts by state, the queue
//! depth, the oldest active drain of each state and the claims held are read from the ledger
//! when scraped (one grouped scan, at most once a second however often `/metrics` is asked:
//! `crate::http::recent`), so they are right across replicas. Names follow
//! Prometheus' conventions: units in the name (`_seconds`, `_bytes`), `_total` on counters;
//! `deploy/components/monitoring`'s rules and dashboard use them, and a test checks that they
//! are all exported. The
//! service's own state (`drainer_store_up`, `drainer_watch_synced`, `drainer_task_up`,
//! `drainer_task_restarts_total`) is read from [`Health`] when scraped: no store or API call.

use drainer_core::health::Health;
use drainer_core::ledger::StateSummary;
use drainer_core::lifecycle::{ALL_STATES, DrainState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of per-state gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The drain state.
    pub state: String,
}

/// Label of failure counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The class of error.
    pub reason: String,
}

/// Label of the mover part counter: `relay` (the bytes went through drainer) or `direct`
/// (straight into the store, with a URL drainer signed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViaLabel {
    /// How the part travelled.
    pub via: &'static str,
}

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// Route template (`/v1/drains/{id}`), never the raw path.
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// Label of `drainer_token_reviews_total`: what became of a token at the review gate
/// ([`crate::review_gate::Outcome`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabel {
    /// `accepted`, `refused` or `error` (a TokenReview sent), `throttled` or
    /// `cached_refusal` (answered by the gate, no review).
    pub result: &'static str,
}

/// Requests at the review gate by result: `drainer_token_reviews_total`.
pub type ReviewCounts = Family<ReviewLabel, Counter>;

/// Label of `drainer_kube_api_requests_total`: the request's method, `WATCH` for a watch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabel {
    /// `GET`, `WATCH`, `POST`, `PATCH`, `PUT` or `DELETE`.
    pub method: String,
}

/// Requests sent to the Kubernetes API server: `drainer_kube_api_requests_total`.
pub type ApiRequestCounts = Family<ApiRequestLabel, Counter>;

/// The classes of error of `drainer_drain_failures_total{reason}` (the scheduler's
/// `failure_class`), each exported from the start at 0 so that rates and alerts see them.
pub(crate) const FAILURE_REASONS: [&str; 6] = [
    "store",
    "ledger",
    "source",
    "gone",
    "changing_file",
    "other",
];

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the service.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Drains by state (set from the ledger at scrape time).
    pub drains: Family<StateLabel, Gauge>,
    /// Queued drains (set from the ledger at scrape time).
    pub queue_depth: Gauge,
    /// Age of the oldest drain of each active state, since it was requested (scrape time).
    pub oldest_drain_seconds: Family<StateLabel, Gauge>,
    /// Drains holding their claim, active or ended (scrape time).
    pub held_claims: Gauge,
    /// Age of the oldest drain holding its claim, since it was requested (scrape time).
    pub oldest_hold_seconds: Gauge,
    /// Bytes uploaded by drains.
    pub bytes_copied: Counter,
    /// Files in completed snapshots.
    pub files_copied: Counter,
    /// Bytes of large files' parts movers stored, by how they travelled.
    pub mover_part_bytes: Family<ViaLabel, Counter>,
    /// Attempts that failed and were scheduled again.
    pub retries: Counter,
    /// Attempts that failed, by class of error.
    pub failures: Family<ReasonLabel, Counter>,
    /// Duration of sweeps.
    pub sweep_seconds: Histogram,
    /// Time from a drain's request (the handoff) to its completed snapshot.
    pub drain_seconds: Histogram,
    /// Snapshots deleted by retention passes.
    pub snapshots_pruned: Counter,
    /// Duration of retention passes.
    pub prune_pass_seconds: Histogram,
    /// Orphaned volumes the last sweep found (Kubernetes mode: opted-out ones included).
    pub orphaned_volumes: Gauge,
    /// Orphaned volumes the last sweep found that needed a drain: no snapshot of their data.
    pub orphaned_volumes_undrained: Gauge,
    /// Whether this replica is ready, as `/readyz` answers (set at scrape time).
    pub ready: Gauge,
    /// HTTP request latency.
    pub http_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Tokens not known lately, by what the review gate did with them (Kubernetes mode's
    /// TokenReviews sent, and the requests answered without one).
    pub token_reviews: ReviewCounts,
    /// Requests sent to the Kubernetes API server, by method (`WATCH` for a watch).
    pub kube_api_requests: ApiRequestCounts,
    /// Ledger writes committed (set from the ledger at scrape time).
    pub ledger_writes: Counter,
}

impl Default for Metrics {
    /// Metrics with a [`Health`] of their own (nothing reports to it).
    fn default() -> Self {
        Self::new(&Health::default())
    }
}

impl Metrics {
    /// Every metric, with the service's state read from `health` at each scrape.
    pub fn new(health: &Health) -> Self {
        let mut registry = Registry::with_prefix("drainer");
        registry.register_collector(Box::new(HealthCollector(health.clone())));
        let metrics = Self {
            drains: Family::default(),
            queue_depth: Gauge::default(),
            oldest_drain_seconds: Family::default(),
            held_claims: Gauge::default(),
            oldest_hold_seconds: Gauge::default(),
            bytes_copied: Counter::default(),
            files_copied: Counter::default(),
            mover_part_bytes: Family::default(),
            retries: Counter::default(),
            failures: Family::default(),
            sweep_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            drain_seconds: Histogram::new(exponential_buckets(0.5, 2.0, 18)),
            snapshots_pruned: Counter::default(),
            prune_pass_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            orphaned_volumes: Gauge::default(),
            orphaned_volumes_undrained: Gauge::default(),
            ready: Gauge::default(),
            http_seconds: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            token_reviews: Family::default(),
            kube_api_requests: Family::default(),
            ledger_writes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("drains", "Drains by state", metrics.drains.clone());
        registry.register(
            "queue_depth",
            "Drains queued and waiting for a replica",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "drain_oldest_age_seconds",
            "Age of the oldest drain in each active state, since it was requested",
            metrics.oldest_drain_seconds.clone(),
        );
        registry.register(
            "held_claims",
            "Drains holding their claim against deletion (Kubernetes mode), active or ended",
            metrics.held_claims.clone(),
        );
        registry.register(
            "held_claim_oldest_age_seconds",
            "Age of the oldest drain holding its claim, since it was requested (0 when none)",
            metrics.oldest_hold_seconds.clone(),
        );
        registry.register(
            "copied_bytes",
            "Bytes uploaded by drains",
            metrics.bytes_copied.clone(),
        );
        registry.register(
            "copied_files",
            "Files in snapshots completed by drains",
            metrics.files_copied.clone(),
        );
        registry.register(
            "mover_part_bytes",
            "Bytes of large files' parts stored by movers, by how they travelled: relay (through drainer) or direct (straight into the store with a signed URL)",
            metrics.mover_part_bytes.clone(),
        );
        registry.register(
            "drain_retries",
            "Failed attempts scheduled again",
            metrics.retries.clone(),
        );
        registry.register(
            "drain_failures",
            "Failed attempts by class of error",
            metrics.failures.clone(),
        );
        registry.register(
            "sweep_duration_seconds",
            "Duration of sweeps",
            metrics.sweep_seconds.clone(),
        );
        registry.register(
            "snapshots_pruned",
            "Snapshots deleted by retention passes",
            metrics.snapshots_pruned.clone(),
        );
        registry.register(
            "prune_pass_duration_seconds",
            "Duration of retention passes",
            metrics.prune_pass_seconds.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Time from a drain's request (the handoff) to its completed snapshot",
            metrics.drain_seconds.clone(),
        );
        registry.register(
            "orphaned_volumes",
            "Orphaned volumes the last sweep found, drained or not",
            metrics.orphaned_volumes.clone(),
        );
        registry.register(
            "orphaned_volumes_undrained",
            "Orphaned volumes the last sweep found needing a drain: no snapshot of their data",
            metrics.orphaned_volumes_undrained.clone(),
        );
        registry.register(
            "ready",
            "Whether this replica is ready to take handoffs, as /readyz answers",
            metrics.ready.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            metrics.http_seconds.clone(),
        );
        registry.register(
            "token_reviews",
            "Tokens not known lately, by result: TokenReviews sent (accepted, refused, error) and requests the review gate answered without one (throttled, cached_refusal)",
            metrics.token_reviews.clone(),
        );
        registry.register(
            "kube_api_requests",
            "Requests sent to the Kubernetes API server, by method (WATCH for a watch)",
            metrics.kube_api_requests.clone(),
        );
        registry.register(
            "ledger_writes",
            "Ledger writes committed by this replica (each one transaction)",
            metrics.ledger_writes.clone(),
        );
        for outcome in crate::review_gate::Outcome::ALL {
            drop(metrics.token_reviews.get_or_create(&outcome.label()));
        }
        for via in ["relay", "direct"] {
            drop(metrics.mover_part_bytes.get_or_create(&ViaLabel { via }));
        }
        for reason in FAILURE_REASONS {
            drop(metrics.failures.get_or_create(&ReasonLabel {
                reason: reason.into(),
            }));
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Sets the ledger-derived gauges from the ledger's summary, read at `now_ms`.
    pub(crate) fn set_drain_summary(&self, summary: &[StateSummary], now_ms: i64) {
        let age = |created: Option<i64>| created.map_or(0, |ms| (now_ms - ms).max(0) / 1000);
        for state in ALL_STATES {
            let of_state = summary.iter().find(|s| s.state == state);
            let label = StateLabel {
                state: state.to_string(),
            };
            let n = of_state.map_or(0, |s| s.drains);
            self.drains.get_or_create(&label).set(n);
            if state == DrainState::Queued {
                self.queue_depth.set(n);
            }
            if state.is_active() {
                let oldest = age(of_state.and_then(|s| s.oldest_created_ms));
                self.oldest_drain_seconds.get_or_create(&label).set(oldest);
            }
        }
        self.held_claims
            .set(summary.iter().map(|s| s.with_fact).sum::<i64>());
        let oldest_hold = summary.iter().filter_map(|s| s.oldest_with_fact_ms).min();
        self.oldest_hold_seconds.set(age(oldest_hold));
    }

    /// Brings `drainer_ledger_writes_total` up to `committed`, the ledger's own count (never
    /// down: concurrent scrapes may pass an older count).
    pub(crate) fn set_ledger_writes(&self, committed: u64) {
        self.ledger_writes
            .inner()
            .fetch_max(committed, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Label naming one watch or task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

/// The service's state from [`Health`], encoded at each scrape.
#[derive(Debug)]
struct HealthCollector(Health);

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        if let Some(store) = &snapshot.store {
            let up = ConstGauge::new(i64::from(store.up));
            let metric = encoder.encode_descriptor(
                "store_up",
                "Whether the store answered its last probe (every 10 s); a store that does not answer is reported here and in /readyz, and does not make the service unready",
                None,
                up.metric_type(),
            )?;
            up.encode(metric)?;
        }
        let gauges = |encoder: &mut DescriptorEncoder,
                      name: &str,
                      help: &str,
                      values: Vec<(String, i64)>|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (name, value) in values {
                ConstGauge::new(value).encode(family.encode_family(&NameLabel { name })?)?;
            }
            Ok(())
        };
        gauges(
            &mut encoder,
            "watch_synced",
            "Whether each watch of the cluster has listed and not failed since",
            snapshot
                .watches
                .iter()
                .map(|(n, w)| (n.clone(), i64::from(w.synced)))
                .collect(),
        )?;
        gauges(
            &mut encoder,
            "task_up",
            "Whether each supervised task runs (0 while it waits to be started again)",
            snapshot
                .tasks
                .iter()
                .map(|(n, t)| (n.clone(), i64::from(t.up)))
                .collect(),
        )?;
        let mut restarts = encoder.encode_descriptor(
            "task_restarts",
            "Times each supervised task was started again after it ended",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, task) in &snapshot.tasks {
            let label = NameLabel { name: name.clone() };
            ConstCounter::new(task.restarts).encode(restarts.encode_family(&label)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_state_is_rendered_from_health_at_each_scrape() {
        let health = Health::default();
        let metrics = Metrics::new(&health);
        assert!(
            !metrics.render().contains("drainer_store_up"),
            "not probed yet"
        );
        health.store_probed(Err("down".into()));
        let pods = health.watch("pods/shop");
        health.add_task("sweeps");
        let text = metrics.render();
        assert!(text.contains("drainer_store_up 0"), "{text}");
        assert!(
            text.contains(r#"drainer_watch_synced{name="pods/shop"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"drainer_task_up{name="sweeps"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"drainer_task_restarts_total{name="sweeps"} 0"#),
            "{text}"
        );
        health.store_probed(Ok(()));
        pods.synced();
        health.task_down("sweeps", "returned unexpectedly");
        health.task_restarted("sweeps", std::time::Instant::now());
        let text = metrics.render();
        assert!(text.contains("drainer_store_up 1"), "{text}");
        assert!(
            text.contains(r#"drainer_watch_synced{name="pods/shop"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"drainer_task_restarts_total{name="sweeps"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn ages_and_holds_are_rendered_from_the_ledgers_summary() {
        let metrics = Metrics::default();
        let now = 10_000_000;
        let summary = |state, drains, oldest: i64, held, oldest_held: Option<i64>| StateSummary {
            state,
            drains,
            oldest_created_ms: Some(now - oldest * 1000),
            with_fact: held,
            oldest_with_fact_ms: oldest_held.map(|s| now - s * 1000),
        };
        metrics.set_drain_summary(
            &[
                summary(DrainState::Queued, 3, 120, 0, None),
                summary(DrainState::Failing, 1, 900, 1, Some(900)),
                summary(DrainState::Completed, 5, 7200, 2, Some(3600)),
            ],
            now,
        );
        let text = metrics.render();
        for line in [
            r#"drainer_drain_failures_total{reason="store"} 0"#,
            r#"drainer_drain_failures_total{reason="changing_file"} 0"#,
            r#"drainer_drains{state="queued"} 3"#,
            r#"drainer_token_reviews_total{result="cached_refusal"} 0"#,
            r#"drainer_drains{state="copying"} 0"#,
            "drainer_queue_depth 3",
            r#"drainer_drain_oldest_age_seconds{state="queued"} 120"#,
            r#"drainer_drain_oldest_age_seconds{state="failing"} 900"#,
            r#"drainer_drain_oldest_age_seconds{state="copying"} 0"#,
            "drainer_held_claims 3",
            "drainer_held_claim_oldest_age_seconds 3600",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains(r#"drainer_drain_oldest_age_seconds{state="completed"}"#),
            "ended states have no age: {text}"
        );
    }
}
