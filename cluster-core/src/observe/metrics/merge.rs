//! Merging OpenMetrics texts into one exposition: a small parser of the text format and the
//! regrouping of samples by family, with the `group` and `slot` labels added. Apart from the
//! cluster's own metrics because it is the part that takes untrusted input (any worker's
//! text), and so the part with the most rules.

use std::collections::HashMap;
use std::fmt::Write as _;

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
pub(super) struct Merger {
    families: Vec<FamilyOut>,
    index: HashMap<String, usize>,
}

impl Merger {
    /// Adds one exposition; `worker` gives the labels to add to its samples.
    pub(super) fn add(&mut self, text: &str, worker: Option<(&str, usize)>) {
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

    pub(super) fn finish(self) -> String {
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

pub(super) const TYPES: [&str; 8] = [
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
pub(super) fn belongs_to(sample: &str, family: &str, kind: Option<&str>) -> bool {
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

pub(super) fn is_label_name(name: &str) -> bool {
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
