//! Metrics for the master's `GET /metrics`: the cluster's own figures, rendered from a
//! [`ClusterStatus`] snapshot, merged with every worker's own registry into one OpenMetrics
//! exposition.
//!
//! Each worker encodes its [`WorkerMetrics`] registry to OpenMetrics text and hands it to the
//! master. The master cannot simply concatenate the texts: every worker declares the same
//! families (`# HELP`/`# TYPE` twice is invalid), their samples would carry identical label
//! sets, and OpenMetrics requires the samples of a family to be contiguous and the exposition
//! to end with exactly one `# EOF`. So the master parses each text, adds `group` and `slot`
//! labels to every sample, and regroups the samples by family under one header.
//!
//! `cluster_metrics.rs` renders the cluster's own figures and `merge.rs` parses and regroups
//! the texts; both serve [`render`], the one entry point (the status server's).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::observe::status::ClusterStatus;

mod cluster_metrics;
mod merge;

use cluster_metrics::cluster_metrics;
use merge::Merger;

/// A worker's own metrics: a prometheus-client [`Registry`] that the master scrapes through
/// the worker's channel and serves, labelled with the worker's `group` and `slot`, on its
/// `GET /metrics`.
///
/// Cloning is cheap and every clone shares the one registry, so a metric can be registered
/// from anywhere in the worker. Register metrics once (at start-up) and keep the metric
/// handles: a registry only grows.
///
/// ```
/// use cluster_core::WorkerMetrics;
/// use cluster_core::prometheus_client::metrics::counter::Counter;
///
/// let metrics = WorkerMetrics::new();
/// let requests: Counter = Counter::default();
/// metrics.register("http_requests", "HTTP requests served", requests.clone());
/// requests.inc();
/// ```
#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    registry: Arc<Mutex<Registry>>,
}

impl WorkerMetrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry itself, for anything [`register`](Self::register) does not cover
    /// (sub-registries with a prefix or constant labels, collectors). Do not hold the guard
    /// across an `.await`: the master's scrape encodes the registry under the same lock.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while the lock was held cannot leave the registry half-updated in a way
        // that matters for reading it (registering is a single push), so poisoning is ignored
        // rather than turning every later scrape into a failure.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `metric` under `name` (without the `_total` suffix of counters: the encoder
    /// adds it) with its help text.
    pub fn register(&self, name: impl Into<String>, help: impl Into<String>, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Registers `metric` with a unit, which the encoder appends to `name`
    /// (`"latency"` with [`Unit::Seconds`] becomes `latency_seconds`).
    pub fn register_with_unit(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
        unit: Unit,
        metric: impl Metric,
    ) {
        self.registry().register_with_unit(name, help, unit, metric);
    }

    /// The registry as OpenMetrics text, ending in `# EOF`: what the worker answers the
    /// master's scrape with.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        match encode(&mut text, &self.registry()) {
            Ok(()) => text,
            Err(error) => {
                // Only a custom metric or collector can fail to encode. A partial text could
                // end in the middle of a family, so the worker reports nothing this time.
                tracing::warn!(%error, "encoding the worker's metrics failed");
                String::from("# EOF\n")
            }
        }
    }
}

/// One worker's metrics as it encoded them (OpenMetrics text ending in `# EOF`).
#[derive(Debug, Clone)]
pub(crate) struct WorkerMetricsText {
    /// The worker's group, added as the `group` label of its samples.
    pub group: String,
    /// The worker's slot, added as the `slot` label.
    pub slot: usize,
    /// The text.
    pub text: String,
}

/// The whole `/metrics` exposition: the cluster's own metrics from `status`, then every
/// worker's metrics with `group` and `slot` labels, ending with one `# EOF`.
///
/// The source should give one text per slot; a second text for a slot already seen is
/// skipped, because its series would repeat the first one's label sets.
pub(crate) fn render(status: &ClusterStatus, workers: &[WorkerMetricsText]) -> String {
    let mut merger = Merger::default();
    merger.add(&cluster_metrics(status), None);
    let mut seen = HashSet::new();
    for worker in workers {
        if !seen.insert((worker.group.as_str(), worker.slot)) {
            tracing::debug!(group = %worker.group, slot = worker.slot, "second metrics text for a slot skipped");
            continue;
        }
        merger.add(&worker.text, Some((&worker.group, worker.slot)));
    }
    merger.finish()
}

#[cfg(test)]
pub(crate) mod tests;
