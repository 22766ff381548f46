//! Prometheus metrics of the service, in one registry, rendered at `/metrics`.
//!
//! Counters and histograms are updated where things happen; drain counts by state and the
//! queue depth are read from the ledger when scraped, so they are right across replicas.

use crate::lifecycle::{ALL_STATES, DrainState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Bytes uploaded by drains.
    pub bytes_copied: Counter,
    /// Files in completed snapshots.
    pub files_copied: Counter,
    /// Attempts that failed and were scheduled again.
    pub retries: Counter,
    /// Attempts that failed, by class of error.
    pub failures: Family<ReasonLabel, Counter>,
    /// Duration of sweeps.
    pub sweep_seconds: Histogram,
    /// Orphaned volumes the last sweep found (Kubernetes mode: opted-out ones included).
    pub orphaned_volumes: Gauge,
    /// HTTP request latency.
    pub http_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("drainer");
        let metrics = Self {
            drains: Family::default(),
            queue_depth: Gauge::default(),
            bytes_copied: Counter::default(),
            files_copied: Counter::default(),
            retries: Counter::default(),
            failures: Family::default(),
            sweep_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            orphaned_volumes: Gauge::default(),
            http_seconds: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            registry: Registry::default(),
        };
        registry.register("drains", "Drains by state", metrics.drains.clone());
        registry.register(
            "queue_depth",
            "Drains queued and waiting for a replica",
            metrics.queue_depth.clone(),
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
            "orphaned_volumes",
            "Orphaned volumes the last sweep found, drained or not",
            metrics.orphaned_volumes.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            metrics.http_seconds.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Sets the ledger-derived gauges from drain counts.
    pub fn set_drain_counts(&self, counts: &[(DrainState, i64)]) {
        for state in ALL_STATES {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.drains
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(n);
            if state == DrainState::Queued {
                self.queue_depth.set(n);
            }
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
