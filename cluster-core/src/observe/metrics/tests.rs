//! Tests of the metrics exposition: the cluster's own families, the merge of workers' texts
//! (checked against an independent OpenMetrics validator, [`check_openmetrics`]), and what
//! is dropped. The validator and the status fixtures are `pub(crate)` because the status
//! server's tests use them too.

use std::collections::HashSet;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

use super::cluster_metrics::{ALL_STATES, state_name};
use super::merge::{TYPES, belongs_to, is_label_name};
use super::*;
use crate::model::WorkerState;
use crate::observe::status::{MasterStatus, RestartCount, WorkerStatus};

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
        slow_requests: Vec::new(),
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
            violations: [("ack_timeout".to_string(), 7), ("flood".to_string(), 0)]
                .into_iter()
                .collect(),
            upgrades_total: 1,
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
        recycles: vec![RestartCount {
            group: "web".into(),
            slot: 1,
            reason: "max_requests",
            count: 4,
        }],
        autoscale: vec![crate::observe::status::AutoscaleStatus {
            group: "web".into(),
            min: 1,
            max: 4,
            workers: 2,
            decisions_up: 3,
            decisions_down: 2,
            last_decision: None,
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
        r#"cluster_worker_recycles_total{group="web",slot="1",reason="max_requests"} 4"#,
        r#"cluster_autoscale_decisions_total{group="web",direction="up"} 3"#,
        r#"cluster_autoscale_decisions_total{group="web",direction="down"} 2"#,
        "cluster_reloads_total 2",
        "cluster_spawn_failures_total 3",
        "cluster_worker_violations_total{kind=\"ack_timeout\"} 7",
        "cluster_worker_violations_total{kind=\"flood\"} 0",
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
    assert!(out.contains(r#"cluster_worker_resident_memory_bytes{group="web",slot="0"} 10485760"#));
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
    assert!(out.contains("good_g{group=\"g\",slot=\"0\",exported_group=\"mine\"} 6 1700000000\n"));
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
    let split = "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\na{x=\"1\"} 1\n# EOF\n";
    assert!(check_openmetrics(split).is_err());
    let undeclared = "# TYPE a gauge\nb 1\n# EOF\n";
    assert!(check_openmetrics(undeclared).is_err());
    assert!(check_openmetrics("# TYPE a gauge\na 1\n").is_err());
}
