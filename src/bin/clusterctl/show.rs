//! How `list` and `status` print what the master answered: the workers' boxed table, the
//! master's lines with the options and their sources, and the JSON forms for scripts. `monit`
//! uses the same cell texts.

use cluster::control::protocol::{MasterInfo, OptionRow, OptionSource, SlowRequestRow, WorkerRow};
use serde_json::{Value, json};

pub(crate) fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}D", s / 86400),
    }
}

pub(crate) fn memory(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".to_owned(),
        Some(b) if b >= 1 << 30 => format!("{:.1}gb", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{:.1}mb", b as f64 / f64::from(1u32 << 20)),
    }
}

pub(crate) fn pid(row: &WorkerRow) -> String {
    row.pid.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

pub(crate) fn cpu(row: &WorkerRow) -> String {
    row.cpu_percent
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}%"))
}

/// Left-aligned columns, each as wide as its widest cell, two spaces apart.
pub(crate) fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == N {
                out += cell;
            } else {
                out += &format!("{cell}{}  ", " ".repeat(w - cell.chars().count()));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(header)];
    for row in rows {
        out.push(line(std::array::from_fn(|i| row[i].as_str())));
    }
    out
}

/// The workers as a boxed table, as `pm2 list` draws it.
pub(crate) fn table(rows: &[WorkerRow]) -> String {
    let header = [
        "group", "slot", "pid", "gen", "state", "uptime", "↺", "cpu", "mem", "conns",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.group.clone(),
                r.slot.to_string(),
                pid(r),
                r.generation.to_string(),
                r.state.clone(),
                uptime(r.uptime_ms),
                r.restarts.to_string(),
                cpu(r),
                memory(r.memory_bytes),
                r.connections.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |left: &str, mid: &str, right: &str| {
        let parts: Vec<String> = widths.iter().map(|w| "─".repeat(w + 2)).collect();
        format!("{left}{}{right}\n", parts.join(mid))
    };
    let row = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c}{} ", " ".repeat(w - c.chars().count())))
            .collect();
        format!("│{}│\n", parts.join("│"))
    };
    let mut out = line("┌", "┬", "┐");
    out += &row(header.to_vec());
    out += &line("├", "┼", "┤");
    for cells in &cells {
        out += &row(cells.iter().map(String::as_str).collect());
    }
    out += &line("└", "┴", "┘");
    out
}

/// `status`: the master's lines, the requests under way for over a second, then every option
/// with its value and source. `options` is `None` for a master older than the sources
/// (protocol version 1): then the values alone; `slow` is `None` for a master older than the
/// slow requests (before version 3): then they are left out.
pub(crate) fn status_text(
    info: &MasterInfo,
    options: Option<&[OptionRow]>,
    slow: Option<&[SlowRequestRow]>,
) -> String {
    let mut out = format!(
        "cluster   {}\nmaster    pid {}, up {}\nbinary    {} (hash {}), cluster {}\nsocket    {}\nworkers   {} live, {} ready; {} restarts, {} reloads\n",
        info.name,
        info.pid,
        uptime(info.uptime_ms),
        info.exe,
        info.exe_hash,
        info.version,
        info.control_path,
        info.workers,
        info.ready,
        info.restarts_total,
        info.reloads_total
    );
    match slow {
        Some([]) => out += "slow      no request under way for over 1 s\n",
        Some(slow) => {
            out += "slow      requests under way for over 1 s, at the workers' last heartbeat:\n";
            let rows: Vec<[String; 4]> = slow
                .iter()
                .map(|r| {
                    let pid = r.pid.map_or("-".to_owned(), |p| p.to_string());
                    [
                        format!("{}/{}#{}", r.group, r.slot, r.generation),
                        format!("pid {pid}"),
                        format!("{} ms", r.age_ms),
                        format!("{} {}", r.method, r.path),
                    ]
                })
                .collect();
            for line in columns(["worker", "pid", "age", "request"], &rows) {
                out += &format!("  {line}\n");
            }
        }
        None => {}
    }
    out += "\noptions in force:\n";
    let rows: Vec<[String; 3]> = match options {
        Some(options) => options
            .iter()
            .map(|o| [o.name.clone(), o.value.clone(), o.source.to_string()])
            .collect(),
        None => info
            .options
            .iter()
            .map(|(name, value)| {
                [
                    name.clone(),
                    value.clone(),
                    "? (the master is too old to say)".to_owned(),
                ]
            })
            .collect(),
    };
    for line in columns(["option", "value", "source"], &rows) {
        out += &format!("  {line}\n");
    }
    out
}

/// `status --json`: the master's fields, with `options` as objects that say where each value
/// came from (`{"name": "grace", "value": "3s", "source": "env", "var": "CLUSTER_GRACE"}`), and
/// `slow_requests` (`null` from a master too old to say).
pub(crate) fn status_json(
    info: &MasterInfo,
    options: Option<&[OptionRow]>,
    slow: Option<&[SlowRequestRow]>,
) -> Value {
    let options: Vec<Value> = match options {
        Some(options) => options.iter().map(option_json).collect(),
        None => info
            .options
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": value, "source": null }))
            .collect(),
    };
    let mut value = json!({
        "name": info.name,
        "pid": info.pid,
        "uptime_ms": info.uptime_ms,
        "version": info.version,
        "exe": info.exe,
        "exe_hash": info.exe_hash,
        "control_path": info.control_path,
        "workers": info.workers,
        "ready": info.ready,
        "restarts_total": info.restarts_total,
        "reloads_total": info.reloads_total,
    });
    value["options"] = Value::Array(options);
    value["slow_requests"] = match slow {
        Some(slow) => slow
            .iter()
            .map(|r| {
                json!({
                    "group": r.group,
                    "slot": r.slot,
                    "pid": r.pid,
                    "generation": r.generation,
                    "method": r.method,
                    "path": r.path,
                    "age_ms": r.age_ms,
                })
            })
            .collect(),
        None => Value::Null,
    };
    value
}

fn option_json(option: &OptionRow) -> Value {
    let mut value = json!({ "name": option.name, "value": option.value });
    match &option.source {
        OptionSource::Default => value["source"] = json!("default"),
        OptionSource::Code => value["source"] = json!("code"),
        OptionSource::File { path, line } => {
            value["source"] = json!("file");
            value["path"] = json!(path);
            value["line"] = json!(line);
        }
        OptionSource::Env { var } => {
            value["source"] = json!("env");
            value["var"] = json!(var);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_all_but_the_last_cell() {
        let rows = [
            ["count".to_owned(), "2".to_owned(), "code".to_owned()],
            [
                "max_restarts".to_owned(),
                "10".to_owned(),
                "env CLUSTER_MAX_RESTARTS".to_owned(),
            ],
        ];
        assert_eq!(
            columns(["option", "value", "source"], &rows),
            [
                "option        value  source",
                "count         2      code",
                "max_restarts  10     env CLUSTER_MAX_RESTARTS",
            ]
        );
    }
}
