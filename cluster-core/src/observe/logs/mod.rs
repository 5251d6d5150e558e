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
//!
//! # The master's memory of them
//!
//! Each batch is also handed to the worker's [`Recorder`], when the master keeps its workers'
//! last lines (option `log_lines`, for `clusterctl logs`): `recent.rs` holds a ring per slot
//! (`ring.rs`) and the followers of new lines, each with a bounded queue of its own
//! (`follow.rs`), so that recording never waits.

use std::io::{self, Write as _};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{mpsc, oneshot};

mod follow;
mod recent;
mod ring;

pub(crate) use recent::{Filter, RecentLogs, Recorder};
pub(crate) use ring::Line;

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
/// or stderr, each line prefixed with `prefix` (e.g. `"[web/0 pid 123] "`), until EOF; and
/// hands every batch of lines to `recorder`, if any, before it is written.
///
/// Returns once everything read has been written to the destination (not merely queued), so
/// a master that awaits its forwarders before exiting loses no output. A read error ends the
/// forwarding like EOF does (the worker is gone or its pipe broken; there is nothing more to
/// copy).
pub(crate) async fn forward<R: AsyncRead + Unpin>(
    from: R,
    to: Stream,
    prefix: String,
    recorder: Option<Recorder>,
) {
    match Writer::global(to) {
        Some(writer) => forward_to(from, writer, prefix, recorder).await,
        None => {
            // No writer thread could be started (thread limit reached). The pipe must still be
            // drained, or the worker would block forever on a full pipe.
            tracing::warn!("no writer thread for the master's {to:?}: discarding worker output");
            drain(from).await;
        }
    }
}

/// Like [`forward`], to any destination's [`Writer`] (tests use a buffer).
pub(crate) async fn forward_to<R: AsyncRead + Unpin>(
    mut from: R,
    to: &Writer,
    prefix: String,
    recorder: Option<Recorder>,
) {
    let record = |batch: &[u8]| {
        if let Some(recorder) = &recorder {
            recorder.record(batch);
        }
    };
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
                record(&batch);
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
        record(&last);
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
mod tests;
