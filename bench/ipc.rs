//! IPC benchmark: `cluster_ipc` channels against a hand-written raw socketpair baseline,
//! between two processes.
//!
//! Run with `cargo bench --bench ipc`. The bench binary re-executes itself as the peer (the
//! role is chosen by `CLUSTER_IPC_BENCH_ROLE`) and hands it one end of a socketpair through
//! `cluster_ipc::bootstrap`. Both processes use a tokio `current_thread` runtime.
//!
//! Measured for an 80-byte message (a struct that bincode encodes to 80 bytes; the raw side
//! writes those same 80 bytes after a `u32` LE length, with no serialization):
//!
//! Two message shapes, both encoding to 80 bytes and fully decoded by the peer: `Msg` (integers
//! and a 42-byte `String`; the main table and RTT) and `Counters` (integers only, no heap field;
//! a one-way run per round). The peer's shape is chosen by `CLUSTER_IPC_BENCH_SHAPE`.
//!
//! - one-way throughput: the parent sends N messages then a sync message; the peer counts the
//!   messages and answers the sync with its count. Time runs from the first send to that ack.
//! - round-trip latency: ping-pong with one message in flight; median and p99.
//!
//! Each round spawns a fresh peer for ours and one for raw. One-way runs alternate order from
//! round to round (ABBA); ping-pong alternates between ours and raw in blocks within a round, so
//! both see the same machine conditions. Medians over the rounds, their ratios and the targets
//! are printed, plus the median of the per-round (paired) ratios. `CLUSTER_IPC_BENCH_ONLY=ours-oneway` runs only a 5M-message one-way run of ours,
//! for profiling (e.g. under `perf record` or `perf stat`).

use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cluster_ipc::{Bincode, Channel, Codec, Config, bootstrap};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const ROLE_VAR: &str = "CLUSTER_IPC_BENCH_ROLE";
const ROLE_OURS: &str = "ours";
const ROLE_RAW: &str = "raw";
/// Which message shape an `ours` peer decodes ([`BenchMsg::SHAPE`]).
const SHAPE_VAR: &str = "CLUSTER_IPC_BENCH_SHAPE";

/// Messages per timed one-way run.
const THROUGHPUT_N: u64 = 1_000_000;
/// Untimed messages before each one-way run.
const THROUGHPUT_WARMUP: u64 = 100_000;
/// Timed ping-pongs per latency run.
const RTT_N: usize = 20_000;
/// Untimed ping-pongs before each latency run.
const RTT_WARMUP: usize = 2_000;
/// Ours and raw ping-pong alternate in this many blocks per round.
const RTT_BLOCKS: usize = 10;
/// Rounds; each runs ours and raw, in alternating order (ABBA).
const ROUNDS: usize = 7;
/// The raw sender writes this many bytes of prebuilt frames per `write_all`.
const RAW_CHUNK: usize = 64 << 10;

/// Bound on any one phase (handshake, one-way run, latency run) in the parent.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole parent, and each peer, exit on their own after this long.
const PROCESS_WATCHDOG: Duration = Duration::from_secs(150);

const KIND_DATA: u8 = 0;
const KIND_SYNC: u8 = 1;
const KIND_PING: u8 = 2;
const KIND_ACK: u8 = 3;

/// The 80-byte message: a typical status report (integers and a name). Every field keeps a
/// fixed encoded size in bincode's varint configuration: `seq`, `ts_ns` and `requests` stay at
/// or above 2^32 (9 bytes each), `worker` between 2^16 and 2^32 (5 bytes), `name` is 42 bytes
/// plus a 1-byte length.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Msg {
    seq: u64,
    ts_ns: u64,
    worker: u32,
    kind: u8,
    load: f32,
    requests: u64,
    name: String,
}

/// The second, integer-only 80-byte message: a worker's counters (no heap field). `seq`,
/// `ts_ns`, `requests`, `bytes_in`, `bytes_out`, `errors` and `latency_ns` stay at or above 2^32
/// (9 bytes each), `worker` and `conns` between 2^16 and 2^32 (5 bytes), `status` below 251
/// (1 byte), `kind` and `healthy` 1 byte each, `load` 4 bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Counters {
    seq: u64,
    ts_ns: u64,
    worker: u32,
    kind: u8,
    load: f32,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
    errors: u64,
    latency_ns: u64,
    conns: u32,
    status: u16,
    healthy: bool,
}

const SEQ_BASE: u64 = 1 << 32;
const PAYLOAD_LEN: usize = 80;

/// What the bench needs of a message shape.
trait BenchMsg:
    Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// How the shape is named in the output and in [`SHAPE_VAR`].
    const SHAPE: &'static str;
    fn new(kind: u8, seq: u64) -> Self;
    fn kind(&self) -> u8;
    fn set_seq(&mut self, seq: u64);
    fn count(&self) -> u64;
}

impl BenchMsg for Msg {
    const SHAPE: &'static str = "string";

    fn new(kind: u8, seq: u64) -> Msg {
        Msg {
            seq: SEQ_BASE + seq,
            ts_ns: SEQ_BASE + 123_456_789,
            worker: 70_000,
            kind,
            load: 0.75,
            requests: SEQ_BASE + 987_654_321,
            name: "worker-7.cluster.internal/session-01234567".to_string(),
        }
    }

    fn kind(&self) -> u8 {
        self.kind
    }

    fn set_seq(&mut self, seq: u64) {
        self.seq = SEQ_BASE + seq;
    }

    fn count(&self) -> u64 {
        self.seq - SEQ_BASE
    }
}

impl BenchMsg for Counters {
    const SHAPE: &'static str = "ints";

    fn new(kind: u8, seq: u64) -> Counters {
        Counters {
            seq: SEQ_BASE + seq,
            ts_ns: SEQ_BASE + 123_456_789,
            worker: 70_000,
            kind,
            load: 0.75,
            requests: SEQ_BASE + 987_654_321,
            bytes_in: SEQ_BASE + 55_555_555,
            bytes_out: SEQ_BASE + 77_777_777,
            errors: SEQ_BASE + 3,
            latency_ns: SEQ_BASE + 250_000,
            conns: 65_537,
            status: 200,
            healthy: true,
        }
    }

    fn kind(&self) -> u8 {
        self.kind
    }

    fn set_seq(&mut self, seq: u64) {
        self.seq = SEQ_BASE + seq;
    }

    fn count(&self) -> u64 {
        self.seq - SEQ_BASE
    }
}

fn encode_msg<M: BenchMsg>(msg: &M) -> Vec<u8> {
    let mut out = Vec::new();
    Bincode.encode(msg, &mut out).expect("encode");
    out
}

/// Where `kind` sits in the encoded payload, found by diffing two encodings.
fn kind_offset<M: BenchMsg>() -> usize {
    let a = encode_msg(&M::new(KIND_DATA, 0));
    let b = encode_msg(&M::new(KIND_SYNC, 0));
    assert_eq!(a.len(), PAYLOAD_LEN, "the message must encode to 80 bytes");
    let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(diff.len(), 1);
    diff[0]
}

/// A raw frame: `u32` LE length, then the payload.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[allow(
    clippy::exit,
    reason = "a benchmark process that hangs must end without waiting for the stuck threads"
)]
fn start_watchdog(who: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(PROCESS_WATCHDOG);
        eprintln!("ipc bench {who}: watchdog fired after {PROCESS_WATCHDOG:?}, exiting");
        std::process::exit(3);
    });
}

fn main() {
    match std::env::var(ROLE_VAR) {
        Ok(role) => peer_main(&role),
        Err(_) => parent_main(),
    }
}

// ----------------------------------------------------------------------------------------
// Peer (child process)

fn peer_main(role: &str) {
    start_watchdog("peer");
    let stream = bootstrap::from_env(bootstrap::ENV_VAR)
        .expect("bootstrap")
        .expect("no socket passed");
    let rt = runtime();
    match role {
        ROLE_OURS => match std::env::var(SHAPE_VAR).as_deref() {
            Ok(Counters::SHAPE) => rt.block_on(peer_ours::<Counters>(stream)),
            _ => rt.block_on(peer_ours::<Msg>(stream)),
        },
        ROLE_RAW => rt.block_on(peer_raw(stream)),
        other => panic!("unknown role {other:?}"),
    }
}

async fn peer_ours<M: BenchMsg>(stream: StdUnixStream) {
    let channel = Channel::<M, M>::from_std(stream, Config::default())
        .await
        .expect("peer handshake");
    let (tx, mut rx) = channel.split();
    let mut count = 0u64;
    // Ends when the parent closes its side (or dies).
    while let Ok(Some(msg)) = rx.recv().await {
        match msg.kind() {
            KIND_DATA => count += 1,
            KIND_SYNC => {
                tx.send(&M::new(KIND_ACK, count)).await.expect("ack");
                count = 0;
            }
            KIND_PING => tx.send(&msg).await.expect("pong"),
            other => panic!("peer: unexpected kind {other}"),
        }
    }
}

async fn peer_raw(stream: StdUnixStream) {
    let kind_at = kind_offset::<Msg>();
    let mut s = UnixStream::from_std(stream).expect("tokio stream");
    let mut buf = vec![0u8; 256 << 10];
    let (mut start, mut end) = (0usize, 0usize);
    let mut count = 0u64;
    loop {
        while end - start >= 4 {
            let len = u32::from_le_bytes(buf[start..start + 4].try_into().unwrap()) as usize;
            assert!((1..=1 << 20).contains(&len), "raw peer: bad length {len}");
            if end - start < 4 + len {
                break;
            }
            let frame = &buf[start..start + 4 + len];
            match frame[4 + kind_at] {
                KIND_DATA => count += 1,
                KIND_SYNC => {
                    let mut ack = 8u32.to_le_bytes().to_vec();
                    ack.extend_from_slice(&count.to_le_bytes());
                    s.write_all(&ack).await.expect("raw ack");
                    count = 0;
                }
                KIND_PING => s.write_all(frame).await.expect("raw pong"),
                other => panic!("raw peer: unexpected kind {other}"),
            }
            start += 4 + len;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if buf.len() - end < 4096 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        match s.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => end += n,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Parent

/// Kills and reaps the peer when dropped, so a failing bench leaves no process behind.
struct PeerGuard {
    child: Child,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_peer(role: &str, shape: &str) -> (StdUnixStream, PeerGuard) {
    let (ours, child_end) = bootstrap::socketpair().expect("socketpair");
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env(ROLE_VAR, role).env(SHAPE_VAR, shape);
    child_end.pass_to(&mut cmd, bootstrap::ENV_VAR);
    let child = cmd.spawn().expect("spawn peer");
    drop(child_end);
    (ours, PeerGuard { child })
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PHASE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out after {PHASE_TIMEOUT:?}"))
}

struct Rtt {
    median_us: f64,
    p99_us: f64,
}

fn rtt_stats(mut samples: Vec<Duration>) -> Rtt {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Rtt {
        median_us: at(0.5).as_secs_f64() * 1e6,
        p99_us: at(0.99).as_secs_f64() * 1e6,
    }
}

/// Our channel to a peer process, carrying messages of shape `M`.
struct OursPeer<M> {
    tx: cluster_ipc::Sender<M>,
    rx: cluster_ipc::Receiver<M>,
    _guard: PeerGuard,
}

impl<M: BenchMsg> OursPeer<M> {
    async fn start() -> OursPeer<M> {
        let (stream, guard) = spawn_peer(ROLE_OURS, M::SHAPE);
        let channel = within(
            "ours handshake",
            Channel::<M, M>::from_std(stream, Config::default()),
        )
        .await
        .expect("handshake");
        let (tx, rx) = channel.split();
        OursPeer {
            tx,
            rx,
            _guard: guard,
        }
    }

    /// N data messages, then a sync the peer acks with its count; from first send to the ack.
    async fn one_way(&mut self, n: u64) -> Duration {
        let started = Instant::now();
        let mut msg = M::new(KIND_DATA, 0);
        for i in 0..n {
            msg.set_seq(i);
            self.tx.send(&msg).await.expect("send");
        }
        self.tx
            .send(&M::new(KIND_SYNC, 0))
            .await
            .expect("send sync");
        let ack = self
            .rx
            .recv()
            .await
            .expect("recv ack")
            .expect("peer closed");
        let elapsed = started.elapsed();
        assert_eq!((ack.kind(), ack.count()), (KIND_ACK, n));
        elapsed
    }

    /// `count` ping-pongs, one in flight, each timed.
    async fn ping_pong(&mut self, count: usize, samples: &mut Vec<Duration>) {
        let mut ping = M::new(KIND_PING, 0);
        for i in 0..count {
            ping.set_seq(i as u64);
            let t = Instant::now();
            self.tx.send(&ping).await.expect("send ping");
            let pong = self.rx.recv().await.expect("recv pong").expect("closed");
            samples.push(t.elapsed());
            assert_eq!(pong, ping);
        }
    }
}

/// A raw socketpair to a peer process: prebuilt length-prefixed frames, no serialization.
struct RawPeer {
    s: UnixStream,
    data: Vec<u8>,
    sync: Vec<u8>,
    ping: Vec<u8>,
    /// As many data frames as fit in [`RAW_CHUNK`] bytes, back to back.
    chunk: Vec<u8>,
    _guard: PeerGuard,
}

impl RawPeer {
    fn start() -> RawPeer {
        let (stream, guard) = spawn_peer(ROLE_RAW, "");
        stream.set_nonblocking(true).expect("nonblocking");
        let data = raw_frame(&encode_msg(&Msg::new(KIND_DATA, 0)));
        let chunk = data.repeat(RAW_CHUNK / data.len());
        RawPeer {
            s: UnixStream::from_std(stream).expect("tokio stream"),
            sync: raw_frame(&encode_msg(&Msg::new(KIND_SYNC, 0))),
            ping: raw_frame(&encode_msg(&Msg::new(KIND_PING, 0))),
            data,
            chunk,
            _guard: guard,
        }
    }

    /// Prebuilt frames, 64 KiB per `write_all`, then the sync frame; until the peer's ack.
    async fn one_way(&mut self, n: u64) -> Duration {
        let per_chunk = self.chunk.len() / self.data.len();
        let started = Instant::now();
        let mut left = n as usize;
        while left > 0 {
            let frames = left.min(per_chunk);
            self.s
                .write_all(&self.chunk[..frames * self.data.len()])
                .await
                .expect("raw write");
            left -= frames;
        }
        self.s.write_all(&self.sync).await.expect("raw sync");
        let mut ack = [0u8; 12];
        self.s.read_exact(&mut ack).await.expect("raw ack");
        let elapsed = started.elapsed();
        assert_eq!(u32::from_le_bytes(ack[..4].try_into().unwrap()), 8);
        assert_eq!(u64::from_le_bytes(ack[4..].try_into().unwrap()), n);
        elapsed
    }

    async fn ping_pong(&mut self, count: usize, samples: &mut Vec<Duration>) {
        let mut pong = vec![0u8; self.ping.len()];
        for _ in 0..count {
            let t = Instant::now();
            self.s.write_all(&self.ping).await.expect("raw ping");
            // Parse the length prefix, then read that many bytes.
            let mut header = [0u8; 4];
            self.s.read_exact(&mut header).await.expect("raw header");
            let len = u32::from_le_bytes(header) as usize;
            assert_eq!(len, PAYLOAD_LEN);
            self.s.read_exact(&mut pong[4..]).await.expect("raw pong");
            samples.push(t.elapsed());
        }
        assert_eq!(pong[4..], self.ping[4..]);
    }
}

struct RoundResult {
    msgs_per_s: f64,
    rtt: Rtt,
}

/// One round's figures: ours with each message shape, and raw.
struct Round {
    ours: RoundResult,
    ints_msgs_per_s: f64,
    raw: RoundResult,
}

/// One round: fresh peers for both; one-way for each (order alternating by round), then
/// ping-pong in interleaved blocks so both see the same machine conditions.
async fn round(ours_first: bool) -> Round {
    let mut ours = OursPeer::<Msg>::start().await;
    let mut ints = OursPeer::<Counters>::start().await;
    let mut raw = RawPeer::start();

    within("ours one-way warm-up", ours.one_way(THROUGHPUT_WARMUP)).await;
    within("ints one-way warm-up", ints.one_way(THROUGHPUT_WARMUP)).await;
    within("raw one-way warm-up", raw.one_way(THROUGHPUT_WARMUP)).await;
    let (o_tp, i_tp, r_tp) = if ours_first {
        let o = within("ours one-way", ours.one_way(THROUGHPUT_N)).await;
        let i = within("ints one-way", ints.one_way(THROUGHPUT_N)).await;
        (o, i, within("raw one-way", raw.one_way(THROUGHPUT_N)).await)
    } else {
        let r = within("raw one-way", raw.one_way(THROUGHPUT_N)).await;
        let i = within("ints one-way", ints.one_way(THROUGHPUT_N)).await;
        (
            within("ours one-way", ours.one_way(THROUGHPUT_N)).await,
            i,
            r,
        )
    };
    drop(ints);

    let mut o_samples = Vec::with_capacity(RTT_N);
    let mut r_samples = Vec::with_capacity(RTT_N);
    let mut scratch = Vec::with_capacity(RTT_WARMUP);
    within(
        "ours ping-pong warm-up",
        ours.ping_pong(RTT_WARMUP, &mut scratch),
    )
    .await;
    within(
        "raw ping-pong warm-up",
        raw.ping_pong(RTT_WARMUP, &mut scratch),
    )
    .await;
    for block in 0..RTT_BLOCKS {
        let n = RTT_N / RTT_BLOCKS;
        if (block % 2 == 0) == ours_first {
            within("ours ping-pong", ours.ping_pong(n, &mut o_samples)).await;
            within("raw ping-pong", raw.ping_pong(n, &mut r_samples)).await;
        } else {
            within("raw ping-pong", raw.ping_pong(n, &mut r_samples)).await;
            within("ours ping-pong", ours.ping_pong(n, &mut o_samples)).await;
        }
    }
    Round {
        ours: RoundResult {
            msgs_per_s: THROUGHPUT_N as f64 / o_tp.as_secs_f64(),
            rtt: rtt_stats(o_samples),
        },
        ints_msgs_per_s: THROUGHPUT_N as f64 / i_tp.as_secs_f64(),
        raw: RoundResult {
            msgs_per_s: THROUGHPUT_N as f64 / r_tp.as_secs_f64(),
            rtt: rtt_stats(r_samples),
        },
    }
}

async fn ours_oneway_only() -> f64 {
    let mut ours = OursPeer::<Msg>::start().await;
    let n = 5 * THROUGHPUT_N;
    let elapsed = within("ours one-way", ours.one_way(n)).await;
    n as f64 / elapsed.as_secs_f64()
}

/// In-process cost of the codec alone (bincode encode and decode of one message), in ns: the
/// floor under our per-message cost on each side, which the raw baseline does not pay.
fn codec_cost_ns<M: BenchMsg>() -> (f64, f64) {
    const N: u64 = 1_000_000;
    let mut msg = M::new(KIND_DATA, 0);
    let mut buf = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    for i in 0..N {
        if buf.len() > 1 << 19 {
            buf.clear();
        }
        msg.set_seq(i);
        Bincode.encode(&msg, &mut buf).expect("encode");
    }
    let encode = started.elapsed().as_nanos() as f64 / N as f64;
    let one = encode_msg(&msg);
    let started = Instant::now();
    for _ in 0..N {
        let back: M = Bincode.decode(std::hint::black_box(&one)).expect("decode");
        std::hint::black_box(back);
    }
    let decode = started.elapsed().as_nanos() as f64 / N as f64;
    (encode, decode)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn parent_main() {
    start_watchdog("parent");
    let kind_at = kind_offset::<Msg>();
    let ints_kind_at = kind_offset::<Counters>();
    let started = Instant::now();
    println!(
        "cluster-ipc bench: 2 processes over a socketpair, tokio current_thread runtime in each; \
         80-byte payload (bincode; ours: 85-byte frames = 4 len + 1 kind + 80; raw: 84-byte frames \
         of the same 80 bytes, kind byte peeked at offset {kind_at}); \
         one-way N={THROUGHPUT_N}, RTT n={RTT_N}; {ROUNDS} rounds ABBA"
    );
    println!(
        "message shapes: \"string\" = {{u64 seq, u64 ts_ns, u32 worker, u8 kind, f32 load, u64 \
         requests, String name (42 bytes)}} (one heap allocation + UTF-8 check per decode; used \
         for the main table and RTT); \"ints\" = {{u64 seq, u64 ts_ns, u32 worker, u8 kind, f32 \
         load, 5 x u64 counters, u32 conns, u16 status, bool healthy}} (no heap field; kind at \
         offset {ints_kind_at}); both encode to 80 bytes and are fully decoded by the peer; raw \
         sends the \"string\" encoding's bytes"
    );
    let rt = runtime();
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    // CLUSTER_IPC_BENCH_ONLY=ours-oneway runs only our one-way test (for profiling).
    if std::env::var("CLUSTER_IPC_BENCH_ONLY").as_deref() == Ok("ours-oneway") {
        let o = rt.block_on(ours_oneway_only());
        println!("ours one-way {} msgs/s", thousands(o));
        return;
    }
    let mut ints = Vec::new();
    for round_no in 0..ROUNDS {
        let Round {
            ours: o,
            ints_msgs_per_s: i,
            raw: r,
        } = rt.block_on(round(round_no % 2 == 0));
        println!(
            "  round {}: one-way ours {:>11} (ints {:>11}) raw {:>11} msgs/s | RTT median ours \
             {:>6.2} raw {:>6.2} us",
            round_no + 1,
            thousands(o.msgs_per_s),
            thousands(i),
            thousands(r.msgs_per_s),
            o.rtt.median_us,
            r.rtt.median_us
        );
        ours.push(o);
        ints.push((i, r.msgs_per_s));
        raw.push(r);
    }

    let med = |v: &[RoundResult], f: fn(&RoundResult) -> f64| median(v.iter().map(f).collect());
    let o_tp = med(&ours, |r| r.msgs_per_s);
    let r_tp = med(&raw, |r| r.msgs_per_s);
    let o_rtt = med(&ours, |r| r.rtt.median_us);
    let r_rtt = med(&raw, |r| r.rtt.median_us);
    let o_p99 = med(&ours, |r| r.rtt.p99_us);
    let r_p99 = med(&raw, |r| r.rtt.p99_us);

    println!();
    println!("medians over {ROUNDS} rounds       ours          raw   ours/raw");
    println!(
        "one-way (msgs/s)       {:>11}  {:>11}   {:>6.2}x",
        thousands(o_tp),
        thousands(r_tp),
        o_tp / r_tp
    );
    let i_tp = median(ints.iter().map(|&(i, _)| i).collect());
    println!(
        "one-way, ints shape    {:>11}  {:>11}   {:>6.2}x",
        thousands(i_tp),
        thousands(r_tp),
        i_tp / r_tp
    );
    println!(
        "RTT median (us)        {:>11.2}  {:>11.2}   {:>6.2}x",
        o_rtt,
        r_rtt,
        o_rtt / r_rtt
    );
    println!(
        "RTT p99 (us)           {:>11.2}  {:>11.2}   {:>6.2}x",
        o_p99,
        r_p99,
        o_p99 / r_p99
    );
    let paired = |f: fn(&RoundResult) -> f64| {
        median(ours.iter().zip(&raw).map(|(o, r)| f(o) / f(r)).collect())
    };
    println!(
        "median of per-round ours/raw: one-way {:.2}x, RTT median {:.2}x",
        paired(|r| r.msgs_per_s),
        paired(|r| r.rtt.median_us)
    );
    println!(
        "median of per-round ours/raw, ints shape: one-way {:.2}x",
        median(ints.iter().map(|&(i, r)| i / r).collect())
    );
    println!();
    println!(
        "target one-way >= 1,000,000 msgs/s   {}  ({})",
        verdict(o_tp >= 1_000_000.0),
        thousands(o_tp)
    );
    println!(
        "target one-way >= 0.5x raw           {}  ({:.2}x; ints shape {} ({:.2}x))",
        verdict(o_tp >= 0.5 * r_tp),
        o_tp / r_tp,
        verdict(i_tp >= 0.5 * r_tp),
        i_tp / r_tp
    );
    println!(
        "target RTT median <= 1.3x raw        {}  ({:.2}x)",
        verdict(o_rtt <= 1.3 * r_rtt),
        o_rtt / r_rtt
    );
    for (shape, (enc, dec)) in [
        (Msg::SHAPE, codec_cost_ns::<Msg>()),
        (Counters::SHAPE, codec_cost_ns::<Counters>()),
    ] {
        println!(
            "codec alone, in-process, {shape}: encode {enc:.0} ns + decode {dec:.0} ns per \
             message (decode alone caps one receiver at ~{} msgs/s)",
            thousands(1e9 / dec)
        );
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
