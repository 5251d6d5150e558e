//! Forwarding a worker's stdout and stderr to the master's, line by line, each line prefixed
//! with the worker's name (`[web/0 pid 123] listening on :8080`).
//!
//! # No torn or interleaved lines
//!
//! Every destination (the master's stdout, its stderr, or a test buffer) is written by exactly
//! one thread, its [`Writer`]. Forwarders never write themselves: they cut their input into
//! whole output lines (prefix + content + `\n`) and send them, in batches of whole lines, over
//! a channel to that thread. The thread writes each batch with one `write_all` while holding
//! the destination's process-wide lock (`std::io::stdout().lock()`), the same lock `println!`
//! and `tracing`'s fmt layer take, so nothing else in the master can interleave either. A line
//! is therefore never split between two writes, and two sources never mix within a line.
//!
//! # Bounded memory and backpressure
//!
//! Writing to a pipe or a terminal can block (a slow `| less`, a full pipe to a log shipper),
//! which must neither block tokio's worker threads nor let memory grow. The writer thread is
//! the only thing that blocks. Its channel is bounded ([`QUEUE_BATCHES`] batches of at most
//! about [`MAX_BATCH`] + [`MAX_CHUNK`] bytes each), so when the destination stalls the channel
//! fills, forwarders wait in `send().await` and stop reading their pipes, the pipes fill, and
//! the workers block in `write(2)`: the same backpressure a worker writing straight to a slow
//! terminal would feel. A line longer than [`MAX_CHUNK`] without a newline is not buffered
//! whole: it is emitted in chunks of [`MAX_CHUNK`] bytes, each a whole output line with the
//! prefix and ending in [`CONTINUED`].
//!
//! Output is bytes, not text: invalid UTF-8 passes through untouched (only a chunk boundary is
//! moved back so it does not cut a valid multi-byte character in two). A last line without a
//! newline is emitted at EOF with one added. A partial line is held until its newline (or
//! EOF, or [`MAX_CHUNK`]): line mode delays a prompt written without a newline.

use std::io::{self, Write as _};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{mpsc, oneshot};

/// The most content bytes of one output line; a longer line is split into chunks this long.
const MAX_CHUNK: usize = 64 * 1024;

/// Appended (before the `\n`) to a chunk of a line that was split because it exceeded
/// [`MAX_CHUNK`]: the line continues on the next output line from the same source.
const CONTINUED: &[u8] = b" [continued]";

/// A batch of whole lines is sent once it holds this many bytes (or the input read so far is
/// used up), bounding what one message can hold to about `MAX_BATCH + MAX_CHUNK`.
const MAX_BATCH: usize = 64 * 1024;

/// How many batches a destination's channel holds before forwarders wait: with the bounds
/// above, at most ~2 MiB queued per destination.
const QUEUE_BATCHES: usize = 16;

/// How many bytes a forwarder reads from its pipe at once (a Linux pipe holds 64 KiB).
const READ_SIZE: usize = 16 * 1024;

/// Where [`forward`] sends a worker's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The master's standard output.
    Stdout,
    /// The master's standard error.
    Stderr,
}

/// Copies `from` (a worker's stdout or stderr pipe) to the master's stdout (`Stream::Stdout`)
/// or stderr, each line prefixed with `prefix` (e.g. `"[web/0 pid 123] "`), until EOF.
///
/// Returns once everything read has been written to the destination (not merely queued), so
/// a master that awaits its forwarders before exiting loses no output. A read error ends the
/// forwarding like EOF does (the worker is gone or its pipe broken; there is nothing more to
/// copy).
pub(crate) async fn forward<R: AsyncRead + Unpin>(from: R, to: Stream, prefix: String) {
    match Writer::global(to) {
        Some(writer) => forward_to(from, writer, prefix).await,
        None => {
            // No writer thread could be started (thread limit reached). The pipe must still be
            // drained, or the worker would block forever on a full pipe.
            tracing::warn!("no writer thread for the master's {to:?}: discarding worker output");
            drain(from).await;
        }
    }
}

/// Like [`forward`], to any destination's [`Writer`] (tests use a buffer).
pub(crate) async fn forward_to<R: AsyncRead + Unpin>(mut from: R, to: &Writer, prefix: String) {
    let mut framer = Framer::new(prefix.into_bytes());
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("reading worker output failed, forwarding stops: {e}");
                break;
            }
        };
        let mut input = &buf[..n];
        while !input.is_empty() {
            let used = framer.push(input);
            input = &input[used..];
            if let Some(batch) = framer.take_whole_lines() {
                if !to.send(batch).await {
                    // The writer thread is gone (it only ends when its sink panicked): keep
                    // draining so the worker does not block on a full pipe.
                    drain(from).await;
                    return;
                }
            }
        }
    }
    if let Some(last) = framer.finish() {
        to.send(last).await;
    }
    to.flush().await;
}

/// Reads `from` to EOF, discarding everything.
async fn drain<R: AsyncRead + Unpin>(mut from: R) {
    let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
}

/// Cuts a byte stream into prefixed output lines, collected into batches.
struct Framer {
    prefix: Vec<u8>,
    /// Whole output lines, then (from `partial_at` on) the current unfinished one: its prefix
    /// and the content received so far.
    out: Vec<u8>,
    /// Where the unfinished line starts in `out`; `None` between lines.
    partial_at: Option<usize>,
}

impl Framer {
    fn new(prefix: Vec<u8>) -> Self {
        Framer {
            prefix,
            out: Vec::new(),
            partial_at: None,
        }
    }

    /// Consumes a prefix of `input` and returns its length: all of it, unless the whole lines
    /// collected reach [`MAX_BATCH`] first (the caller then sends them and pushes the rest).
    fn push(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() && self.whole_len() < MAX_BATCH {
            let start = match self.partial_at {
                Some(start) => start,
                None => {
                    let start = self.out.len();
                    self.out.extend_from_slice(&self.prefix);
                    self.partial_at = Some(start);
                    start
                }
            };
            let content_len = self.out.len() - start - self.prefix.len();
            let rest = &input[used..];
            let window = &rest[..rest.len().min(MAX_CHUNK - content_len)];
            match window.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.out.extend_from_slice(&window[..=newline]);
                    self.partial_at = None;
                    used += newline + 1;
                }
                None => {
                    self.out.extend_from_slice(window);
                    used += window.len();
                    if content_len + window.len() == MAX_CHUNK {
                        self.cut_chunk(start);
                    }
                }
            }
        }
        used
    }

    /// Ends the unfinished line starting at `start`, which has reached [`MAX_CHUNK`] content
    /// bytes, with [`CONTINUED`], and starts the next chunk with the bytes of a UTF-8
    /// character that the cut would split (so valid text stays valid in every chunk).
    fn cut_chunk(&mut self, start: usize) {
        let content_start = start + self.prefix.len();
        let carry = incomplete_utf8_tail(&self.out[content_start..]);
        let mut carried = [0u8; 3];
        let cut = self.out.len() - carry;
        carried[..carry].copy_from_slice(&self.out[cut..]);
        self.out.truncate(cut);
        self.out.extend_from_slice(CONTINUED);
        self.out.push(b'\n');
        self.partial_at = None;
        if carry > 0 {
            self.partial_at = Some(self.out.len());
            self.out.extend_from_slice(&self.prefix);
            self.out.extend_from_slice(&carried[..carry]);
        }
    }

    /// The length of the whole lines at the front of `out`.
    fn whole_len(&self) -> usize {
        self.partial_at.unwrap_or(self.out.len())
    }

    /// Takes the whole lines collected so far, leaving the unfinished line (at most
    /// [`MAX_CHUNK`] plus the prefix, the only bytes ever copied) in place.
    fn take_whole_lines(&mut self) -> Option<Vec<u8>> {
        let whole = self.whole_len();
        if whole == 0 {
            return None;
        }
        let unfinished = self.out.split_off(whole);
        if self.partial_at.is_some() {
            self.partial_at = Some(0);
        }
        Some(std::mem::replace(&mut self.out, unfinished))
    }

    /// At EOF: everything left, the unfinished line completed with a `\n`.
    fn finish(&mut self) -> Option<Vec<u8>> {
        if self.partial_at.take().is_some() {
            self.out.push(b'\n');
        }
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character whose remaining
/// bytes are missing (0 to 3). Bytes that are not UTF-8 at all give 0: they are cut anywhere.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes, so its lead byte is among the last 3 if it is cut.
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        let needed = match byte {
            0x80..=0xBF => continue, // a continuation byte: the lead byte is further back
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0, // ASCII or not a lead byte: nothing cut
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// A message to a writer thread.
enum Message {
    /// Whole output lines, written with one `write_all` under the destination's lock.
    Lines(Vec<u8>),
    /// Answered once every message sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// A destination that takes batches of whole lines.
pub(crate) trait Sink: Send + 'static {
    /// Writes `lines` (whole lines, each ending in `\n`) as one unit: no other writer of the
    /// same destination in this process may come between its bytes.
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()>;
}

impl Sink for Stream {
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        // Holding the process-wide lock makes the write atomic with respect to `println!`,
        // `eprintln!` and tracing in the rest of the master. `flush` because stdout is line
        // buffered and stderr unbuffered: nothing may stay behind in std's buffer where a
        // later write of another thread would follow it.
        match self {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(lines)?;
                out.flush()
            }
            Stream::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(lines)?;
                err.flush()
            }
        }
    }
}

impl Sink for Arc<Mutex<Vec<u8>>> {
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        // A poisoned lock only means another writer panicked; the bytes are still a Vec.
        let mut buf = self.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        buf.extend_from_slice(lines);
        Ok(())
    }
}

/// The single writer of one destination: a thread that owns the [`Sink`] and writes what
/// forwarders send it, in order. Dropping every clone of a `Writer` ends its thread once the
/// queue is written.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Message>,
}

impl Writer {
    /// Starts a writer thread for `sink`.
    pub(crate) fn spawn(sink: impl Sink, name: &str) -> io::Result<Writer> {
        let (queue, rx) = mpsc::channel(QUEUE_BATCHES);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || write_loop(sink, rx))?;
        Ok(Writer { queue })
    }

    /// The writer of the master's stdout or stderr, started on first use and kept for the
    /// life of the process. `None` if its thread could not be started (then it is retried on
    /// the next call rather than never).
    fn global(stream: Stream) -> Option<&'static Writer> {
        static STDOUT: OnceLock<Writer> = OnceLock::new();
        static STDERR: OnceLock<Writer> = OnceLock::new();
        let (cell, name) = match stream {
            Stream::Stdout => (&STDOUT, "cluster-stdout"),
            Stream::Stderr => (&STDERR, "cluster-stderr"),
        };
        if let Some(writer) = cell.get() {
            return Some(writer);
        }
        let writer = Writer::spawn(stream, name).ok()?;
        // Two first callers may race: the loser's writer is dropped, which ends its thread.
        Some(cell.get_or_init(|| writer))
    }

    /// Queues whole lines, waiting while the queue is full (backpressure). `false` if the
    /// writer thread is gone.
    async fn send(&self, lines: Vec<u8>) -> bool {
        self.queue.send(Message::Lines(lines)).await.is_ok()
    }

    /// Waits until everything sent before is written.
    async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            // An error means the thread is gone: nothing more will be written anyway.
            let _ = written.await;
        }
    }
}

/// The body of a writer thread: write every batch, in order, until all senders are gone.
fn write_loop(mut sink: impl Sink, mut rx: mpsc::Receiver<Message>) {
    let mut failing = false;
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Lines(lines) => match sink.write_lines(&lines) {
                Ok(()) => failing = false,
                // Keep consuming: forwarders must not block on a destination that is gone
                // (EPIPE once whoever read the master's stdout has exited). Reported once per
                // run of failures; to stderr via tracing, which may itself be the broken one.
                Err(e) => {
                    if !failing {
                        tracing::warn!("cannot write worker output, dropping it: {e}");
                    }
                    failing = true;
                }
            },
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        forward_to(rx, &writer, prefix.to_owned()).await;
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
                forward_to(rx, &writer, format!("[src {s} pid 1{s}] ")).await;
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
        let forwarder = tokio::spawn(async move { forward_to(rx, &writer, "[w] ".into()).await });

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
        forward_to(stdout, &writer, prefix.clone()).await;
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
            forward_to(stdout, &writer, "[o] ".into()),
            forward_to(stderr, &writer, "[e] ".into()),
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
        forward(&b"to stdout\n"[..], Stream::Stdout, "[logs test] ".into()).await;
        forward(&b"to stderr"[..], Stream::Stderr, "[logs test] ".into()).await;
    }
}
