//! Worker logs, driven as real processes (tests/fixture/ops_fixture.rs): several workers
//! write long lines to stdout and stderr as fast as they can, at the same time; every line
//! reaches the master's matching stream whole, once, in order, prefixed with
//! `[group/slot pid N] ` (or unprefixed with `worker_prefix_logs(false)`).

mod support;

use std::collections::BTreeMap;

use support::WAIT;
use support::ops::{Fixture, Line, Stream, strip_prefix};

const WORKERS: usize = 3;
const LINES: usize = 400;

/// The fixture's `payload` (tests/fixture/ops_fixture.rs), recomputed independently.
fn payload(slot: usize, stream: &str, seq: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let offset = slot * 17 + seq * 7 + if stream == "out" { 0 } else { 31 };
    (0..len)
        .map(|i| char::from(ALPHABET[(offset + i) % ALPHABET.len()]))
        .collect()
}

/// A `LOG` line's slot, stream, seq, and whether its data is exactly what was written;
/// `None` when it is not a well-formed `LOG` line (torn, or two lines mixed).
fn parse_log(body: &str) -> Option<(usize, String, usize, bool)> {
    let words: Vec<&str> = body.split(' ').collect();
    let ["LOG", slot, stream, seq, len, data, "END"] = words.as_slice() else {
        return None;
    };
    let slot: usize = slot.strip_prefix("slot=")?.parse().ok()?;
    let stream = stream.strip_prefix("stream=")?;
    let seq: usize = seq.strip_prefix("seq=")?.parse().ok()?;
    let len: usize = len.strip_prefix("len=")?.parse().ok()?;
    let data = data.strip_prefix("data=")?;
    let intact = data == payload(slot, stream, seq, len);
    Some((slot, stream.to_owned(), seq, intact))
}

/// Runs the fixture with `env`, waits for every worker to finish writing, stops the cluster
/// and returns the whole output with the workers' pids by slot.
fn run(env: &[(&str, String)]) -> (Fixture, BTreeMap<usize, i32>) {
    let mut all = vec![
        ("OPS_COUNT", WORKERS.to_string()),
        ("OPS_LOG_LINES", LINES.to_string()),
    ];
    all.extend(env.iter().cloned());
    let mut fx = Fixture::start(&all);
    let ready = fx.wait_ready(WORKERS);
    let pids = (0..WORKERS)
        .map(|slot| (slot, ready[&format!("worker/{slot}#1")]))
        .collect();
    fx.wait_for("every worker done writing", WAIT, |lines| {
        let done = lines.iter().filter(|l| l.is("LOGS_DONE", &[])).count();
        (done == WORKERS).then_some(())
    });
    fx.stop_cleanly();
    fx.finish(WAIT);
    (fx, pids)
}

/// Checks every output line: master lines, and `LOG` lines that are whole, on the stream they
/// were written to, each exactly once and in order per worker and stream. `prefixed` says
/// whether worker lines carry `[worker/slot pid N] ` (checked against `pids`).
fn check(fx: &Fixture, pids: &BTreeMap<usize, i32>, prefixed: bool) {
    let mut next: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut problem = |line: &Line, why: &str| {
        if problems.len() < 10 {
            let shown: String = line.text.chars().take(200).collect();
            problems.push(format!("{why}: {:?} {shown}", line.stream));
        }
    };
    for line in &fx.history {
        let (who, body) = strip_prefix(&line.text);
        let from_worker = body.starts_with("LOG ") || body.starts_with("LOGS_DONE ");
        match (&who, from_worker) {
            // The master's own lines: its events on stdout, its notices on stderr.
            (None, false) => {
                let master = ["SPAWNED ", "READY ", "EXIT ", "LIMIT "]
                    .iter()
                    .any(|k| body.starts_with(k))
                    || (line.stream == Stream::Err && body.starts_with("cluster: "));
                if !master || body.contains("LOG") {
                    problem(line, "neither a master line nor a whole worker line");
                }
                continue;
            }
            (Some(_), false) => {
                problem(line, "a prefixed line that is not a whole worker line");
                continue;
            }
            (None, true) if prefixed => {
                problem(line, "a worker line without its prefix");
                continue;
            }
            (Some(_), true) if !prefixed => {
                problem(line, "a prefixed line although prefixes are off");
                continue;
            }
            _ => {}
        }
        if body.starts_with("LOGS_DONE ") {
            continue;
        }
        let Some((slot, stream, seq, intact)) = parse_log(body) else {
            problem(line, "a torn or mixed LOG line");
            continue;
        };
        if !intact {
            problem(line, "LOG data changed");
        }
        if let Some((group, prefix_slot, pid)) = &who {
            if group != "worker" || *prefix_slot != slot || Some(pid) != pids.get(&slot) {
                problem(line, "the prefix names another worker");
            }
        }
        let expected_stream = if line.stream == Stream::Out {
            "out"
        } else {
            "err"
        };
        if stream != expected_stream {
            problem(line, "arrived on the other stream");
        }
        let expected = next.entry((slot, stream)).or_default();
        if seq != *expected {
            problem(
                line,
                &format!(
                    "sequence {seq} where {} was due (lost or reordered)",
                    *expected
                ),
            );
        }
        *expected = seq + 1;
    }
    for slot in 0..WORKERS {
        for stream in ["out", "err"] {
            let got = next.get(&(slot, stream.to_owned())).copied().unwrap_or(0);
            if got != LINES {
                problems.push(format!(
                    "worker {slot} {stream}: {got} of {LINES} lines arrived"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n{}", fx.dump());
}

#[test]
fn concurrent_long_lines_of_several_workers_arrive_whole_prefixed_and_complete() {
    // Lines up to 8000 bytes: more than a pipe writes atomically (4096), so only line-wise
    // forwarding keeps them whole.
    let (fx, pids) = run(&[("OPS_LOG_MAX", "8000".into())]);
    check(&fx, &pids, true);
}

#[test]
fn without_prefixes_worker_lines_arrive_unchanged() {
    // Unprefixed, workers write straight to the master's streams: lines within the 4096
    // bytes a pipe writes atomically stay whole.
    let (fx, pids) = run(&[
        ("OPS_LOG_MAX", "3900".into()),
        ("OPS_PREFIX_LOGS", "0".into()),
    ]);
    check(&fx, &pids, false);
}
