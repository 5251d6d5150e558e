//! Tests of the forwarding of workers' output: whole lines under concurrency, chunking of
//! long lines, UTF-8 at chunk boundaries, backpressure from a stalled destination, and real
//! child processes. In their own file so that `mod.rs` reads as the mechanism alone.

use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

fn buffer_writer() -> (Writer, Arc<Mutex<Vec<u8>>>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = Writer::spawn(Arc::clone(&buf), "test-writer").unwrap();
    (writer, buf)
}

/// Forwards `input` (written through a small duplex pipe, so reads split it anywhere)
/// and returns what the sink received.
async fn forward_bytes(input: Vec<u8>, prefix: &str) -> Vec<u8> {
    let (writer, buf) = buffer_writer();
    let (mut tx, rx) = tokio::io::duplex(997);
    let producer = tokio::spawn(async move {
        tx.write_all(&input).await.unwrap();
    });
    forward_to(rx, &writer, prefix.to_owned(), None).await;
    producer.await.unwrap();
    buf.lock().unwrap().clone()
}

/// Line `i` of source `s` in the concurrency test: varying lengths, 0 to ~1.5 KiB.
fn test_line(s: usize, i: usize) -> String {
    let filler = "abcdefghijklmnopqrstuvwxyz".repeat((i * 7 + s * 13) % 60);
    format!("src{s} line{i} {filler}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_forwarders_keep_lines_whole_and_ordered() {
    const SOURCES: usize = 8;
    const LINES: usize = 2000;
    let (writer, buf) = buffer_writer();

    // Another writer of the same destination, as println! would be for the real stdout:
    // it writes whole lines under the same lock, and must not tear the forwarded ones.
    let other_buf = Arc::clone(&buf);
    let other = std::thread::spawn(move || {
        let mut sink = other_buf;
        for i in 0..500 {
            sink.write_lines(format!("[other] {i}\n").as_bytes())
                .unwrap();
            std::thread::yield_now();
        }
    });

    let mut tasks = Vec::new();
    for s in 0..SOURCES {
        let (mut tx, rx) = tokio::io::duplex(100 + s * 331);
        tasks.push(tokio::spawn(async move {
            for i in 0..LINES {
                let line = format!("{}\n", test_line(s, i));
                // Write in two pieces so that lines also arrive split across reads.
                let (a, b) = line.as_bytes().split_at(line.len() / 3);
                tx.write_all(a).await.unwrap();
                tx.write_all(b).await.unwrap();
            }
        }));
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            forward_to(rx, &writer, format!("[src {s} pid 1{s}] "), None).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    other.join().unwrap();

    let out = buf.lock().unwrap().clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'));
    let mut next = HashMap::new();
    let mut other_next = 0;
    for line in text.lines() {
        if let Some(i) = line.strip_prefix("[other] ") {
            assert_eq!(i, other_next.to_string());
            other_next += 1;
            continue;
        }
        let s: usize = line
            .strip_prefix("[src ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("line without a prefix: {line:?}"))
            .parse()
            .unwrap();
        let i = next.entry(s).or_insert(0usize);
        let expected = format!("[src {s} pid 1{s}] {}", test_line(s, *i));
        assert_eq!(line, expected, "source {s} line {i}");
        *i += 1;
    }
    assert_eq!(other_next, 500);
    for s in 0..SOURCES {
        assert_eq!(next.get(&s), Some(&LINES), "source {s}");
    }
}

#[tokio::test]
async fn long_line_is_chunked() {
    let line = vec![b'x'; 200 * 1024];
    let out = forward_bytes(line, "[p] ").await;
    let lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 4, "200 KiB = 3 full chunks of 64 KiB + 8 KiB");
    let mut content = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let line = line.strip_prefix(b"[p] ").unwrap();
        let line = line.strip_suffix(b"\n").unwrap();
        let line = if n < 3 {
            let chunk = line.strip_suffix(CONTINUED).unwrap();
            assert_eq!(chunk.len(), MAX_CHUNK);
            chunk
        } else {
            assert_eq!(line.len(), 8 * 1024);
            line
        };
        assert!(line.iter().all(|&b| b == b'x'));
        content.extend_from_slice(line);
    }
    assert_eq!(content.len(), 200 * 1024);
}

#[tokio::test]
async fn chunks_do_not_split_utf8_characters() {
    // '€' is 3 bytes and 64 KiB is not a multiple of 3, so a naive cut splits one.
    let text = "€".repeat(50_000) + "\n";
    let out = forward_bytes(text.clone().into_bytes(), "[p] ").await;
    let out = String::from_utf8(out).expect("every chunk is valid UTF-8");
    let mut joined = String::new();
    for line in out.lines() {
        let line = line.strip_prefix("[p] ").unwrap();
        joined.push_str(line.strip_suffix(" [continued]").unwrap_or(line));
    }
    assert_eq!(joined + "\n", text);
}

#[tokio::test]
async fn trailing_partial_line_is_flushed_at_eof() {
    let out = forward_bytes(b"first\n\nsecond\nno newline".to_vec(), "[w] ").await;
    assert_eq!(out, b"[w] first\n[w] \n[w] second\n[w] no newline\n");
    assert_eq!(forward_bytes(Vec::new(), "[w] ").await, b"");
    assert_eq!(forward_bytes(b"\n".to_vec(), "[w] ").await, b"[w] \n");
}

#[tokio::test]
async fn invalid_utf8_passes_through() {
    let input = b"ok \xff\xfe x \x80\n\xc3\n\xe2\x82".to_vec();
    let out = forward_bytes(input, "[w] ").await;
    assert_eq!(out, b"[w] ok \xff\xfe x \x80\n[w] \xc3\n[w] \xe2\x82\n");
}

#[test]
fn utf8_tail_detection() {
    assert_eq!(incomplete_utf8_tail(b"abc"), 0);
    assert_eq!(incomplete_utf8_tail(b""), 0);
    assert_eq!(incomplete_utf8_tail("a€".as_bytes()), 0);
    assert_eq!(incomplete_utf8_tail(b"a\xe2"), 1);
    assert_eq!(incomplete_utf8_tail(b"a\xe2\x82"), 2);
    assert_eq!(incomplete_utf8_tail(b"a\xf0\x9f\x98"), 3);
    assert_eq!(incomplete_utf8_tail("a😀".as_bytes()), 0);
    // Stray continuation bytes or garbage: nothing to carry.
    assert_eq!(incomplete_utf8_tail(b"\x80\x80\x80"), 0);
    assert_eq!(incomplete_utf8_tail(b"a\xff"), 0);
}

/// A sink that blocks until the test opens it, like a terminal nobody reads.
struct Gate {
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    written: Arc<AtomicUsize>,
}

impl Sink for Gate {
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        let (lock, cvar) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cvar.wait(open).unwrap();
        }
        self.written.fetch_add(lines.len(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_destination_applies_backpressure() {
    let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let written = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        open: Arc::clone(&open),
        written: Arc::clone(&written),
    };
    let writer = Writer::spawn(gate, "test-gate").unwrap();

    // A multiple of the 100-byte line, far more than the queue and the pipe hold.
    const TOTAL: usize = 16_000_000;
    let produced = Arc::new(AtomicUsize::new(0));
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let counter = Arc::clone(&produced);
    let producer = tokio::spawn(async move {
        let line = [b"y".repeat(99), b"\n".to_vec()].concat();
        while counter.load(Ordering::SeqCst) < TOTAL {
            tx.write_all(&line).await.unwrap();
            counter.fetch_add(line.len(), Ordering::SeqCst);
        }
    });
    let forwarder = tokio::spawn(async move { forward_to(rx, &writer, "[w] ".into(), None).await });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = produced.load(Ordering::SeqCst);
    // Queue + one batch in the forwarder + the pipe + one read: a few MiB at most.
    let bound = (QUEUE_BATCHES + 2) * (MAX_BATCH + MAX_CHUNK) + 2 * 64 * 1024;
    assert!(
        stalled_at <= bound,
        "read {stalled_at} bytes into a stalled sink"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        produced.load(Ordering::SeqCst),
        stalled_at,
        "the producer is blocked"
    );

    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    producer.await.unwrap();
    forwarder.await.unwrap();
    // 100-byte lines, each grown by the 4-byte prefix.
    assert_eq!(written.load(Ordering::SeqCst), TOTAL / 100 * 104);
}

/// End to end at the OS level: a real child process writing to a real pipe.
#[tokio::test]
async fn forwards_a_child_process_output() {
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "for i in $(seq 1 500); do echo line $i; done"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let pid = child.id().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (writer, buf) = buffer_writer();
    let prefix = format!("[web/0 pid {pid}] ");
    forward_to(stdout, &writer, prefix.clone(), None).await;
    assert!(child.wait().await.unwrap().success());

    let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    let expected: String = (1..=500).map(|i| format!("{prefix}line {i}\n")).collect();
    assert_eq!(out, expected);
}

/// Both pipes of a real child into one destination, as the master forwards a worker.
#[tokio::test]
async fn forwards_a_child_process_stdout_and_stderr_together() {
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            "for i in $(seq 1 300); do echo out $i; echo err $i >&2; done",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (writer, buf) = buffer_writer();
    tokio::join!(
        forward_to(stdout, &writer, "[o] ".into(), None),
        forward_to(stderr, &writer, "[e] ".into(), None),
    );
    assert!(child.wait().await.unwrap().success());

    let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    let (mut outs, mut errs) = (0, 0);
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("[o] ") {
            outs += 1;
            assert_eq!(rest, format!("out {outs}"));
        } else {
            let rest = line.strip_prefix("[e] ").unwrap();
            errs += 1;
            assert_eq!(rest, format!("err {errs}"));
        }
    }
    assert_eq!((outs, errs), (300, 300));
}

/// The real destinations work (what they print shows up in the test's captured output,
/// or on the terminal with --nocapture).
#[tokio::test]
async fn forwards_to_the_real_stdout_and_stderr() {
    forward(
        &b"to stdout\n"[..],
        Stream::Stdout,
        "[logs test] ".into(),
        None,
    )
    .await;
    forward(
        &b"to stderr"[..],
        Stream::Stderr,
        "[logs test] ".into(),
        None,
    )
    .await;
}

mod recent;
