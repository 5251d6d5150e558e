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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::model::WorkerState;
use crate::observe::status::{ClusterStatus, WorkerStatus};

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

/// Every [`WorkerState`], so that `cluster_workers` has a series (possibly 0) for each.
const ALL_STATES: [WorkerState; 4] = [
    WorkerState::Starting,
    WorkerState::Online,
    WorkerState::Ready,
    WorkerState::Stopping,
];

/// The label value of a state: the same lowercase name as its JSON in `/status`.
fn state_name(state: WorkerState) -> &'static str {
    // An exhaustive match, so that a new state cannot be forgotten here.
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Online => "online",
        WorkerState::Ready => "ready",
        WorkerState::Stopping => "stopping",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    group: String,
    slot: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    group: String,
    slot: usize,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// The cluster's own metrics as OpenMetrics text (without `# EOF`), from a fresh registry:
/// the snapshot already holds the totals, so each counter is set to its value by one
/// `inc_by` rather than kept alive between scrapes.
fn cluster_metrics(status: &ClusterStatus) -> String {
    let mut registry = Registry::default();

    let workers = Family::<StateLabels, Gauge>::default();
    for state in ALL_STATES {
        // Creating the series is the point: a state with no worker still shows, as 0.
        let _ = workers.get_or_create(&StateLabels {
            state: state_name(state),
        });
    }
    for worker in &status.workers {
        workers
            .get_or_create(&StateLabels {
                state: state_name(worker.state),
            })
            .inc();
    }
    registry.register("cluster_workers", "Worker processes by state", workers);

    let restarts = Family::<RestartLabels, Counter>::default();
    for restart in &status.restarts {
        restarts
            .get_or_create(&RestartLabels {
                group: restart.group.clone(),
                slot: restart.slot,
                reason: restart.reason,
            })
            .inc_by(restart.count);
    }
    registry.register(
        "cluster_worker_restarts",
        "Worker restarts by slot and reason: crash, hung and failed_start after unexpected exits; memory for replacements over max_memory",
        restarts,
    );

    let reloads = Counter::<u64>::default();
    reloads.inc_by(status.master.reloads_total);
    registry.register("cluster_reloads", "Completed rolling reloads", reloads);

    let spawn_failures = Counter::<u64>::default();
    spawn_failures.inc_by(status.master.spawn_failures_total);
    registry.register(
        "cluster_spawn_failures",
        "Worker processes that could not be started (retried with a backoff, not counted as restarts)",
        spawn_failures,
    );

    let ipc = Family::<DirectionLabels, Counter>::default();
    ipc.get_or_create(&DirectionLabels { direction: "sent" })
        .inc_by(status.ipc_messages_sent);
    ipc.get_or_create(&DirectionLabels {
        direction: "received",
    })
    .inc_by(status.ipc_messages_received);
    registry.register(
        "cluster_ipc_messages",
        "Messages the master sent to and received from workers",
        ipc,
    );

    let memory = Family::<SlotLabels, Gauge>::default();
    let cpu = Family::<SlotLabels, FloatCounter>::default();
    let connections = Family::<SlotLabels, Gauge>::default();
    let lag = Family::<SlotLabels, FloatGauge>::default();
    for worker in current_per_slot(&status.workers) {
        let labels = SlotLabels {
            group: worker.group.clone(),
            slot: worker.slot,
        };
        if let Some(rss) = worker.rss_bytes {
            memory
                .get_or_create(&labels)
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        // A counter must not go down; a nonsensical sample is left out rather than
        // corrupting the series.
        if let Some(seconds) = worker.cpu_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            cpu.get_or_create(&labels).inc_by(seconds);
        }
        connections
            .get_or_create(&labels)
            .set(i64::try_from(worker.connections).unwrap_or(i64::MAX));
        if let Some(ms) = worker.event_loop_lag_ms {
            lag.get_or_create(&labels).set(ms / 1000.0);
        }
    }
    registry.register_with_unit(
        "cluster_worker_resident_memory",
        "Resident memory of the slot's current worker process",
        Unit::Bytes,
        memory,
    );
    registry.register_with_unit(
        "cluster_worker_cpu",
        "CPU time (user + system) of the slot's current worker process",
        Unit::Seconds,
        cpu,
    );
    registry.register(
        "cluster_worker_connections",
        "Open connections of the slot's current worker process",
        connections,
    );
    registry.register_with_unit(
        "cluster_worker_event_loop_lag",
        "How late the worker's runtime ran its last heartbeat",
        Unit::Seconds,
        lag,
    );

    let uptime = FloatGauge::default();
    // Milliseconds to seconds: f64 is exact up to 2^53 ms, some 285,000 years.
    uptime.set(status.master.uptime_ms as f64 / 1000.0);
    registry.register_with_unit(
        "cluster_master_uptime",
        "Time since the master started",
        Unit::Seconds,
        uptime,
    );

    let mut text = String::new();
    if let Err(error) = encode_registry(&mut text, &registry) {
        // Cannot happen with these metric types and a String; no partial families either way.
        tracing::warn!(%error, "encoding the cluster's metrics failed");
        text.clear();
    }
    text
}

/// The newest process of each slot. During a restart or a rolling reload a slot briefly has
/// two processes; both would get the same `{group, slot}` labels, and the per-slot gauges
/// describe the slot's current process. `cluster_workers` still counts every process.
fn current_per_slot(workers: &[WorkerStatus]) -> impl Iterator<Item = &WorkerStatus> {
    let mut newest: BTreeMap<(&str, usize), &WorkerStatus> = BTreeMap::new();
    for worker in workers {
        newest
            .entry((worker.group.as_str(), worker.slot))
            .and_modify(|kept| {
                if worker.generation > kept.generation {
                    *kept = worker;
                }
            })
            .or_insert(worker);
    }
    newest.into_values()
}

/// One metric family of the merged output.
#[derive(Debug)]
struct FamilyOut {
    name: String,
    kind: String,
    help: Option<String>,
    unit: Option<String>,
    /// Complete sample lines, labels already added.
    samples: Vec<String>,
}

/// Collects families from several texts, in the order they were first seen.
#[derive(Debug, Default)]
struct Merger {
    families: Vec<FamilyOut>,
    index: HashMap<String, usize>,
}

impl Merger {
    /// Adds one exposition; `worker` gives the labels to add to its samples.
    fn add(&mut self, text: &str, worker: Option<(&str, usize)>) {
        for family in parse(text, worker) {
            let kind = family.kind.unwrap_or_else(|| String::from("unknown"));
            match self.index.get(&family.name) {
                Some(&at) => {
                    let kept = &mut self.families[at];
                    if kept.kind != kind {
                        // Keeping these samples under the other type's header would make the
                        // whole scrape invalid, and Prometheus rejects an invalid scrape
                        // entirely.
                        tracing::warn!(
                            family = %family.name,
                            declared = %kept.kind,
                            found = %kind,
                            ?worker,
                            "worker metric family of a different type dropped"
                        );
                        continue;
                    }
                    if kept.help.is_none() {
                        kept.help = family.help;
                    }
                    if kept.unit.is_none() {
                        kept.unit = family.unit;
                    }
                    kept.samples.extend(family.samples);
                }
                None => {
                    self.index.insert(family.name.clone(), self.families.len());
                    self.families.push(FamilyOut {
                        name: family.name,
                        kind,
                        help: family.help,
                        unit: family.unit,
                        samples: family.samples,
                    });
                }
            }
        }
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for family in self.families {
            let name = &family.name;
            if let Some(help) = &family.help {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            if let Some(unit) = &family.unit {
                let _ = writeln!(out, "# UNIT {name} {unit}");
            }
            for sample in &family.samples {
                out.push_str(sample);
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// A family as found in one text.
#[derive(Debug)]
struct ParsedFamily {
    name: String,
    kind: Option<String>,
    help: Option<String>,
    unit: Option<String>,
    samples: Vec<String>,
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

/// Parses one OpenMetrics text into families, relabelling every sample for `worker`. Lines
/// that do not fit (bad syntax, a sample outside its family, unknown comments) are skipped,
/// so one broken worker cannot break the scrape.
fn parse(text: &str, worker: Option<(&str, usize)>) -> Vec<ParsedFamily> {
    let extra = worker.map(|(group, slot)| {
        let mut labels = String::from("group=\"");
        escape_label_value(&mut labels, group);
        let _ = write!(labels, "\",slot=\"{slot}\"");
        labels
    });
    let mut families: Vec<ParsedFamily> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line == "# EOF" {
            // Nothing may follow the end of an exposition.
            break;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let Some((keyword, rest)) = comment.split_once(' ') else {
                continue;
            };
            if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
                continue;
            }
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_metric_name(name) {
                tracing::debug!(line, "bad metric descriptor skipped");
                continue;
            }
            let at = *index.entry(name.to_owned()).or_insert_with(|| {
                families.push(ParsedFamily {
                    name: name.to_owned(),
                    kind: None,
                    help: None,
                    unit: None,
                    samples: Vec::new(),
                });
                families.len() - 1
            });
            current = Some(at);
            let family = &mut families[at];
            match keyword {
                "HELP" => {
                    family.help.get_or_insert_with(|| value.to_owned());
                }
                "TYPE" if TYPES.contains(&value) => {
                    family.kind.get_or_insert_with(|| value.to_owned());
                }
                "UNIT" if !value.is_empty() => {
                    family.unit.get_or_insert_with(|| value.to_owned());
                }
                _ => tracing::debug!(line, "bad metric descriptor skipped"),
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some(family) = current.map(|at| &mut families[at]) else {
            tracing::debug!(line, "sample without a family skipped");
            continue;
        };
        let Some(sample) = parse_sample(line) else {
            tracing::debug!(line, "malformed sample skipped");
            continue;
        };
        if !belongs_to(sample.name, &family.name, family.kind.as_deref()) {
            tracing::debug!(line, family = %family.name, "sample outside its family skipped");
            continue;
        }
        family.samples.push(sample.relabel(extra.as_deref()));
    }
    families
}

/// Whether a sample named `sample` is part of family `family` of type `kind`: OpenMetrics
/// names a family's samples by the family name plus a suffix that depends on the type.
fn belongs_to(sample: &str, family: &str, kind: Option<&str>) -> bool {
    let Some(suffix) = sample.strip_prefix(family) else {
        return false;
    };
    let allowed: &[&str] = match kind.unwrap_or("unknown") {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        // gauge, stateset, unknown
        _ => &[""],
    };
    allowed.contains(&suffix)
}

/// A parsed sample line: its name, its labels (values still escaped, as in the text) and the
/// rest of the line from the space before the value (value, timestamp, exemplar), verbatim.
#[derive(Debug)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    rest: &'a str,
}

impl Sample<'_> {
    /// The line with `extra` labels first. A worker label that is itself called `group` or
    /// `slot` is renamed `exported_group`/`exported_slot` (Prometheus' own convention for
    /// target labels that clash), so the label set stays valid.
    fn relabel(&self, extra: Option<&str>) -> String {
        let mut line = String::with_capacity(self.name.len() + self.rest.len() + 64);
        line.push_str(self.name);
        if extra.is_none() && self.labels.is_empty() {
            line.push_str(self.rest);
            return line;
        }
        line.push('{');
        let mut first = true;
        if let Some(extra) = extra {
            line.push_str(extra);
            first = false;
        }
        for (name, value) in &self.labels {
            if !first {
                line.push(',');
            }
            first = false;
            if extra.is_some() && matches!(*name, "group" | "slot") {
                line.push_str("exported_");
            }
            line.push_str(name);
            line.push_str("=\"");
            line.push_str(value);
            line.push('"');
        }
        line.push('}');
        line.push_str(self.rest);
        line
    }
}

/// Parses `name[{labels}] value[ timestamp][ # exemplar]`; `None` if it is not that.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    // The value must be there and be a number; the timestamp and exemplar are kept as they
    // are.
    let value = rest.strip_prefix(' ')?.split(' ').next()?;
    if !is_number(value) {
        return None;
    }
    Some(Sample { name, labels, rest })
}

/// Parses a label set after its `{`, up to and including the closing `}`. Returns the labels
/// and the text after the `}`. Values may contain escaped quotes and any braces or commas.
fn parse_labels(text: &str) -> Option<(Vec<(&str, &str)>, &str)> {
    let bytes = text.as_bytes();
    let mut labels = Vec::new();
    let mut at = 0;
    loop {
        if bytes.get(at) == Some(&b'}') {
            return Some((labels, &text[at + 1..]));
        }
        let name_start = at;
        while bytes
            .get(at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            at += 1;
        }
        let name = &text[name_start..at];
        if !is_label_name(name) || bytes.get(at) != Some(&b'=') || bytes.get(at + 1) != Some(&b'"')
        {
            return None;
        }
        at += 2;
        let value_start = at;
        loop {
            match bytes.get(at)? {
                b'"' => break,
                // The escaped character (`\"`, `\\`, `\n`) cannot end the value.
                b'\\' => at += 2,
                _ => at += 1,
            }
        }
        labels.push((name, &text[value_start..at]));
        at += 1;
        match bytes.get(at)? {
            b',' => at += 1,
            b'}' => {}
            _ => return None,
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An OpenMetrics number: a decimal or float, `+Inf`, `-Inf` or `NaN` (all of which Rust
/// parses too).
fn is_number(value: &str) -> bool {
    !value.is_empty() && value.parse::<f64>().is_ok()
}

/// Appends `value` escaped as OpenMetrics requires inside a label value's quotes.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::CounterWithExemplar;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Unit;

    use super::*;
    use crate::observe::status::{MasterStatus, RestartCount};

    /// Checks that `text` is a valid OpenMetrics exposition, as far as a merge can break it:
    /// every sample belongs to a family declared by a preceding `# TYPE` with a name the type
    /// allows, no family is declared twice or split, no descriptor repeats, label sets parse
    /// and have no duplicate names, no series repeats, and the last line is the only `# EOF`.
    pub(crate) fn check_openmetrics(text: &str) -> Result<(), String> {
        let body = text
            .strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .ok_or("does not end with # EOF")?;
        let mut seen_families = HashSet::new();
        let mut current: Option<(String, Option<String>, HashSet<String>)> = None;
        let mut series = HashSet::new();
        for (number, line) in body.lines().enumerate() {
            let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", number + 1));
            if line.is_empty() {
                return fail("empty line");
            }
            if line == "# EOF" {
                return fail("# EOF before the end");
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default().to_owned();
                let name = parts.next().unwrap_or_default().to_owned();
                let value = parts.next().unwrap_or_default().to_owned();
                if !matches!(keyword.as_str(), "HELP" | "TYPE" | "UNIT") {
                    return fail("unknown comment");
                }
                if current.as_ref().is_none_or(|(family, ..)| *family != name) {
                    if !seen_families.insert(name.clone()) {
                        return fail("family declared twice or not contiguous");
                    }
                    current = Some((name.clone(), None, HashSet::new()));
                }
                let Some((family, kind, descriptors)) = current.as_mut() else {
                    unreachable!()
                };
                if !descriptors.insert(keyword.clone()) {
                    return fail("descriptor repeated");
                }
                match keyword.as_str() {
                    "TYPE" => {
                        if !TYPES.contains(&value.as_str()) {
                            return fail("unknown type");
                        }
                        *kind = Some(value);
                    }
                    "UNIT" if !family.ends_with(&format!("_{value}")) => {
                        return fail("family name does not end with its unit");
                    }
                    _ => {}
                }
                continue;
            }
            let Some((family, Some(kind), _)) = current.as_ref() else {
                return fail("sample before any # TYPE");
            };
            let name_end = line.find(['{', ' ']).ok_or("no value")?;
            let name = &line[..name_end];
            if !belongs_to(name, family, Some(kind)) {
                return fail("sample outside its family");
            }
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(inner) = rest.strip_prefix('{') {
                let (parsed, after) = test_parse_labels(inner).ok_or("bad labels")?;
                labels = parsed;
                rest = after;
            }
            let names: HashSet<_> = labels.iter().map(|(n, _)| n.clone()).collect();
            if names.len() != labels.len() {
                return fail("duplicate label name");
            }
            let mut parts = rest
                .strip_prefix(' ')
                .ok_or("no space before value")?
                .splitn(2, " # ");
            let mut value_ts = parts.next().unwrap_or_default().split(' ');
            let value = value_ts.next().unwrap_or_default();
            if value.parse::<f64>().is_err() {
                return fail("bad value");
            }
            if let Some(ts) = value_ts.next() {
                if ts.parse::<f64>().is_err() || value_ts.next().is_some() {
                    return fail("bad timestamp");
                }
            }
            if let Some(exemplar) = parts.next() {
                let inner = exemplar.strip_prefix('{').ok_or("bad exemplar")?;
                let (_, after) = test_parse_labels(inner).ok_or("bad exemplar labels")?;
                let value = after.strip_prefix(' ').ok_or("bad exemplar value")?;
                if value.split(' ').any(|v| v.parse::<f64>().is_err()) {
                    return fail("bad exemplar value");
                }
            }
            labels.sort();
            if !series.insert((name.to_owned(), labels)) {
                return fail("series repeated");
            }
        }
        Ok(())
    }

    /// A label parser independent of the one under test; unescapes values.
    fn test_parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
        let mut labels = Vec::new();
        let mut chars = text.char_indices().peekable();
        loop {
            let (_, c) = *chars.peek()?;
            if c == '}' {
                let (at, _) = chars.next()?;
                return Some((labels, &text[at + 1..]));
            }
            let mut name = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=') {
                name.push(c);
            }
            if !is_label_name(&name) || chars.next()?.1 != '=' || chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('"' | '\\') => value.push(c),
                        _ => return None,
                    },
                    c => value.push(c),
                }
            }
            labels.push((name, value));
            match chars.next()?.1 {
                ',' => {}
                '}' => {
                    return Some((
                        labels,
                        &text[chars.next().map_or(text.len(), |(at, _)| at)..],
                    ));
                }
                _ => return None,
            }
        }
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct MethodLabels {
        method: String,
    }

    /// A worker's registry as an app would build it: a counter family (one label value full
    /// of quotes, braces and commas), a gauge, a histogram with a unit, a counter with an
    /// exemplar, and a gauge named like a cluster family.
    fn worker_text(requests: u64, queue: i64) -> String {
        let metrics = WorkerMetrics::new();
        let family = Family::<MethodLabels, Counter>::default();
        family
            .get_or_create(&MethodLabels {
                method: "GET".into(),
            })
            .inc_by(requests);
        family
            .get_or_create(&MethodLabels {
                method: r#"we"ird{x="1"},\ }"#.into(),
            })
            .inc();
        metrics.register("http_requests", "HTTP requests", family);
        let gauge = Gauge::<i64>::default();
        gauge.set(queue);
        metrics.register("queue_depth", "Jobs waiting", gauge);
        let histogram = Histogram::new(exponential_buckets(0.001, 10.0, 4));
        histogram.observe(0.02);
        histogram.observe(5.0);
        metrics.register_with_unit("latency", "Request latency", Unit::Seconds, histogram);
        let jobs = CounterWithExemplar::<MethodLabels>::default();
        jobs.inc_by(
            3,
            Some(MethodLabels {
                method: "trace{1}".into(),
            }),
            None,
        );
        metrics.register("jobs", "Jobs done", jobs);
        let clash = Gauge::<i64>::default();
        clash.set(7);
        metrics.register(
            "cluster_workers",
            "A worker's own family named like a cluster one",
            clash,
        );
        metrics.encode()
    }

    pub(crate) fn worker(state: WorkerState, slot: usize) -> WorkerStatus {
        WorkerStatus {
            group: "web".into(),
            slot,
            pid: Some(4000 + u32::try_from(slot).unwrap()),
            generation: 2,
            state,
            restarts: 1,
            uptime_ms: 1500,
            rss_bytes: Some(10_485_760),
            cpu_seconds: Some(1.25),
            connections: 3,
            event_loop_lag_ms: Some(2.5),
        }
    }

    pub(crate) fn status() -> ClusterStatus {
        ClusterStatus {
            master: MasterStatus {
                pid: 4242,
                uptime_ms: 61_500,
                restarts_total: 5,
                reloads_total: 2,
                spawn_failures_total: 3,
                spawn_error: None,
            },
            workers: vec![
                worker(WorkerState::Ready, 0),
                worker(WorkerState::Starting, 1),
            ],
            restarts: vec![RestartCount {
                group: "web".into(),
                slot: 0,
                reason: "crash",
                count: 5,
            }],
            ipc_messages_sent: 10,
            ipc_messages_received: 20,
        }
    }

    fn texts() -> Vec<WorkerMetricsText> {
        vec![
            WorkerMetricsText {
                group: "web".into(),
                slot: 0,
                text: worker_text(11, 4),
            },
            WorkerMetricsText {
                group: "we\"b".into(),
                slot: 1,
                text: worker_text(22, 5),
            },
        ]
    }

    #[test]
    fn merged_output_of_two_workers_is_valid_openmetrics() {
        let out = render(&status(), &texts());
        if let Err(why) = check_openmetrics(&out) {
            panic!("{why}\n{out}");
        }
        for (group, slot, requests, queue) in [("web", 0, 11, 4), ("we\\\"b", 1, 22, 5)] {
            let labels = format!(r#"group="{group}",slot="{slot}""#);
            for line in [
                format!(r#"http_requests_total{{{labels},method="GET"}} {requests}"#),
                format!(r#"http_requests_total{{{labels},method="we\"ird{{x=\"1\"}},\\ }}"}} 1"#),
                format!("queue_depth{{{labels}}} {queue}"),
                format!("latency_seconds_count{{{labels}}} 2"),
                format!(r#"latency_seconds_bucket{{{labels},le="0.01"}} 0"#),
                format!(r#"latency_seconds_bucket{{{labels},le="+Inf"}} 2"#),
                format!(r#"jobs_total{{{labels}}} 3 # {{method="trace{{1}}"}} 3.0"#),
                format!("cluster_workers{{{labels}}} 7"),
            ] {
                assert!(out.lines().any(|l| l == line), "missing {line}\n{out}");
            }
        }
        assert_eq!(out.matches("# EOF").count(), 1);
        assert!(out.ends_with("\n# EOF\n"));
        // The clashing worker family sits under the cluster's one header.
        assert_eq!(out.matches("# TYPE cluster_workers ").count(), 1);
        assert!(out.contains("# UNIT latency_seconds seconds\n"));
    }

    #[test]
    fn cluster_metrics_have_every_family_and_state() {
        let out = render(&status(), &[]);
        check_openmetrics(&out).unwrap();
        for line in [
            r#"cluster_workers{state="starting"} 1"#,
            r#"cluster_workers{state="online"} 0"#,
            r#"cluster_workers{state="ready"} 1"#,
            r#"cluster_workers{state="stopping"} 0"#,
            r#"cluster_worker_restarts_total{group="web",slot="0",reason="crash"} 5"#,
            "cluster_reloads_total 2",
            "cluster_spawn_failures_total 3",
            r#"cluster_ipc_messages_total{direction="sent"} 10"#,
            r#"cluster_ipc_messages_total{direction="received"} 20"#,
            r#"cluster_worker_resident_memory_bytes{group="web",slot="1"} 10485760"#,
            r#"cluster_worker_cpu_seconds_total{group="web",slot="0"} 1.25"#,
            r#"cluster_worker_connections{group="web",slot="0"} 3"#,
            r#"cluster_worker_event_loop_lag_seconds{group="web",slot="0"} 0.0025"#,
            "cluster_master_uptime_seconds 61.5",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}\n{out}");
        }
    }

    #[test]
    fn state_names_match_the_status_json() {
        for state in ALL_STATES {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(state_name(state))
            );
        }
    }

    #[test]
    fn a_slot_with_two_processes_reports_the_newest() {
        let mut status = status();
        let mut old = worker(WorkerState::Stopping, 0);
        old.generation = 1;
        old.rss_bytes = Some(1);
        status.workers.insert(0, old);
        let out = render(&status, &[]);
        check_openmetrics(&out).unwrap();
        assert!(
            out.contains(r#"cluster_worker_resident_memory_bytes{group="web",slot="0"} 10485760"#)
        );
        assert!(out.contains(r#"cluster_workers{state="stopping"} 1"#));
    }

    #[test]
    fn malformed_worker_text_is_skipped_line_by_line() {
        let text = "\
garbage before any family 1
# TYPE good counter
# HELP good fine
good_total 1
good_total{a=\"unterminated} 2
good_total{a=\"x\"} notanumber
good_total{a=\"x\",} 3
good_bucket 4
other_total 5
good_total
{a=\"b\"} 1
# TYPE bad_type wibble
bad_type 1
# comment
# TYPE good_g gauge

good_g{group=\"mine\"} 6 1700000000
# EOF
after_eof 1
";
        let out = render(
            &status(),
            &[WorkerMetricsText {
                group: "g".into(),
                slot: 0,
                text: text.into(),
            }],
        );
        if let Err(why) = check_openmetrics(&out) {
            panic!("{why}\n{out}");
        }
        assert!(out.contains("# HELP good fine\n# TYPE good counter\n"));
        assert!(out.contains("good_total{group=\"g\",slot=\"0\"} 1\n"));
        assert!(out.contains("good_total{group=\"g\",slot=\"0\",a=\"x\"} 3\n"));
        assert!(
            out.contains("good_g{group=\"g\",slot=\"0\",exported_group=\"mine\"} 6 1700000000\n")
        );
        for gone in [
            "garbage",
            "unterminated",
            "notanumber",
            "good_bucket",
            "other_total",
            "after_eof",
            "bad_type 1",
        ] {
            assert!(!out.contains(gone), "{gone} kept\n{out}");
        }
    }

    #[test]
    fn a_family_of_another_type_than_the_cluster_one_is_dropped() {
        let text =
            "# TYPE cluster_reloads gauge\ncluster_reloads 3\n# TYPE mine gauge\nmine 1\n# EOF\n";
        let out = render(
            &status(),
            &[WorkerMetricsText {
                group: "g".into(),
                slot: 0,
                text: text.into(),
            }],
        );
        check_openmetrics(&out).unwrap();
        assert!(!out.contains("cluster_reloads{"));
        assert!(out.contains("mine{group=\"g\",slot=\"0\"} 1\n"));
    }

    #[test]
    fn a_second_text_for_the_same_slot_is_skipped() {
        let mut texts = texts();
        texts[1].group = "web".into();
        texts[1].slot = 0;
        let out = render(&status(), &texts);
        check_openmetrics(&out).unwrap();
        assert!(out.contains("queue_depth{group=\"web\",slot=\"0\"} 4\n"));
        assert_eq!(out.matches("queue_depth{").count(), 1, "{out}");
    }

    #[test]
    fn the_checker_rejects_what_a_naive_concatenation_produces() {
        let naive = format!("{}{}", worker_text(1, 1), worker_text(2, 2));
        assert!(check_openmetrics(&naive).is_err());
        let split =
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\na{x=\"1\"} 1\n# EOF\n";
        assert!(check_openmetrics(split).is_err());
        let undeclared = "# TYPE a gauge\nb 1\n# EOF\n";
        assert!(check_openmetrics(undeclared).is_err());
        assert!(check_openmetrics("# TYPE a gauge\na 1\n").is_err());
    }
}
