//! Control messages between master and workers.
//!
//! During a rolling deploy an old master talks to new workers (and the other way round), and
//! the codecs are positional, so these enums are **append-only**: add new variants and new
//! fields at the end only, never reorder or remove. `tests::pinned_bytes` pins the encoding.
//!
//! App messages travel inside as opaque bytes encoded with the same codec, so a worker whose
//! message types differ from the master's fails to decode only those messages and the control
//! traffic keeps working.
//!
//! Public only through the `wire` module (the `testing` feature), for tests that play a
//! misbehaving worker; elsewhere the crate's own.
#![cfg_attr(
    not(feature = "testing"),
    allow(unreachable_pub, reason = "public only with the testing feature")
)]
#![allow(
    missing_docs,
    reason = "each variant's doc says what its fields are; the fields are public for tests only"
)]

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Control and app messages the master has sent to workers, for the status page.
pub(crate) static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An address a worker asks to listen on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenAddr {
    /// A TCP address (port 0 picks a free port, shared by every worker asking for it).
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
    /// The inherited socket of this name (socket activation: `LISTEN_FDNAMES`).
    Named(String),
}

/// How the connections of one listening address are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Balance {
    /// Every worker accepts from the one kernel queue of the socket the master passed
    /// (the default: no hop through the master, and a dying worker never loses queued
    /// connections).
    #[default]
    Shared,
    /// The master accepts and hands each connection to the next ready worker in turn
    /// (Node's default).
    RoundRobin,
    /// The master hands each connection to the ready worker with the fewest open connections
    /// it has handed out; workers report closes.
    LeastConnections,
    /// The same client IP goes to the same worker slot while that worker lives.
    Sticky,
    /// Each worker binds its own `SO_REUSEPORT` socket and the kernel spreads connections.
    /// Connections queued on a worker's socket are lost when that worker exits, which is
    /// why this is not the default.
    ReusePort,
    /// The master reads the first bytes of each connection (peeked: they stay for the
    /// worker) for a key, the `sticky_cookie`, the `sticky_header` or the client's IP in a
    /// PROXY protocol header (`sticky_proxy`), and the same key goes to the same worker slot
    /// while that worker lives; a connection without a key goes to the worker with the fewest
    /// open connections.
    StickyKey,
}

/// Master to worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Stop gracefully: finish in-flight work and return.
    Shutdown,
    /// An app message.
    User(Vec<u8>),
    /// An app request; answer with `ToMaster::Response` carrying the same id.
    Request { id: u64, payload: Vec<u8> },
    /// The answer to a worker's `ToMaster::Request`.
    Response { id: u64, payload: Vec<u8> },
    /// The answer to `ToMaster::Listen`. With `Balance::Shared` the listening socket rides
    /// along as a descriptor.
    Listening {
        id: u64,
        result: Result<ListenerInfo, String>,
    },
    /// A connection the master accepted for this worker, riding along as a descriptor.
    /// Acknowledge it with `ToMaster::Accepted`.
    Connection {
        listener: u32,
        conn: u64,
        peer: Option<SocketAddr>,
    },
    /// Send your metrics registry: answer with `ToMaster::Metrics` carrying the same id.
    MetricsRequest { id: u64 },
    /// Several connections the master accepted for this worker, each `(conn, peer)` with its
    /// descriptor riding along in the same order. Acknowledge each with `ToMaster::Accepted`.
    Connections {
        listener: u32,
        conns: Vec<(u64, Option<SocketAddr>)>,
    },
    /// The shared table of open connections per worker for a `Shared` listener (a memfd,
    /// riding along as a descriptor), and this worker's entry in it. Sent right after
    /// `Listening`; a worker that never gets it accepts without holding back.
    LoadShare { listener: u32, index: u32, tag: u8 },
    /// The answer to the worker's `ToMaster::Store` carrying the same id.
    StoreAnswer { id: u64, reply: StoreReply },
    /// A value published on `topic`, which this worker subscribed to.
    StoreMessage { topic: String, value: Vec<u8> },
    /// `lost` values published on `topic` did not reach this worker: it did not read its
    /// channel fast enough, and the master drops rather than waits.
    StoreLagged { topic: String, lost: u64 },
}

/// What a worker learns about a listener it asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// The master's id for the listener, used by `Connection` and `Closed`.
    pub listener: u32,
    /// The bound address (the real port when 0 was asked for).
    pub local: Option<SocketAddr>,
    /// The policy in force.
    pub balance: Balance,
}

/// Worker to master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMaster {
    /// The worker is ready to take work.
    Ready,
    /// An app message.
    User(Vec<u8>),
    /// An app request; answer with `ToWorker::Response` carrying the same id.
    Request { id: u64, payload: Vec<u8> },
    /// The answer to a master's `ToWorker::Request`.
    Response { id: u64, payload: Vec<u8> },
    /// The worker is exiting on its own (its function returned, or it got SIGTERM):
    /// `failed` says whether it returned an error.
    Exiting { failed: bool },
    /// Bind (or reuse) a listening address; answered by `ToWorker::Listening`.
    Listen {
        id: u64,
        addr: ListenAddr,
        balance: Option<Balance>,
    },
    /// The worker took the connection `conn`: the master may forget it.
    Accepted { conn: u64 },
    /// A connection handed out by `listener` was closed (for `LeastConnections` and
    /// `StickyKey`, whose connections without a key go by load).
    Closed { listener: u32 },
    /// The worker's runtime is alive: `lag_us` is how late this beat ran, `connections` how
    /// many connections the worker has open.
    Heartbeat { lag_us: u64, connections: u64 },
    /// The worker's metrics, as OpenMetrics text.
    Metrics { id: u64, text: String },
    /// The worker's app has not read its messages: its queue was full and `dropped`
    /// messages from the master (in all, so far) were dropped.
    Dropped { dropped: u64 },
    /// Requests served by the worker so far (counted by `cluster::http` and by the app's
    /// `WorkerContext::count_request`), sent with a heartbeat when it changed. Only to a
    /// master of protocol level 2 or above: an older master would take it for a broken frame.
    Served { requests: u64 },
    /// The worker's requests under way for over a second, oldest first (at most 5), sent
    /// with a heartbeat while there are any, and once empty when they are done. Level 2.
    InFlight { requests: Vec<SlowRequest> },
    /// An operation on the master's store; answered by `ToWorker::StoreAnswer`.
    Store { id: u64, op: StoreOp },
}

/// An operation on the master's store (the `store` module). Keys and topics are text, values
/// bytes; counters are stored as decimal text, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    /// The value of `key`.
    Get { key: String },
    /// Sets `key`; `ttl_ms` makes it expire that many milliseconds from now (none: never).
    Set {
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    /// Adds `by` to the counter at `key` (absent counts as 0); answers the new value.
    Incr { key: String, by: i64 },
    /// Removes `key`; answers whether it was there.
    Del { key: String },
    /// Sets `key` to `new` only if its value is `expected` (`None`: only if it is absent).
    Cas {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    /// Makes `key` expire in `ttl_ms` milliseconds, or never (`None`); answers whether the
    /// key exists.
    Expire { key: String, ttl_ms: Option<u64> },
    /// Sends this worker what is published on `topic` from now on.
    Subscribe { topic: String },
    /// Stops sending this worker what is published on `topic`.
    Unsubscribe { topic: String },
    /// Sends `value` to every subscriber of `topic`; answers how many there were.
    Publish { topic: String, value: Vec<u8> },
}

/// The store's answer to one [`StoreOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreReply {
    /// A value, or none (`Get`).
    Value(Option<Vec<u8>>),
    /// A counter's new value (`Incr`), or a number of subscribers (`Publish`).
    Int(i64),
    /// Done (`Set`, `Subscribe`, `Unsubscribe`), or whether the key was there (`Del`,
    /// `Expire`).
    Done(bool),
    /// `Cas`: swapped (`None`), or not, with the value found (`Some(current)`).
    Cas(Option<Option<Vec<u8>>>),
    /// Refused, and why.
    Failed(StoreFailure),
}

/// Why the store refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreFailure {
    /// The store holds `store_max_keys` keys already (the limit).
    TooManyKeys(u64),
    /// The write would take the store past `store_max_bytes` (the limit).
    TooManyBytes(u64),
    /// `Incr` on a value that is not a decimal i64.
    NotAnInteger,
    /// `Incr` would overflow an i64.
    Overflow,
    /// The worker has `store_subscriptions` topics already (the limit).
    TooManySubscriptions(u64),
}

/// A request under way in a worker, as its server described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowRequest {
    /// Its method (or, for another protocol than HTTP, its kind).
    pub method: String,
    /// Its path (or name).
    pub path: String,
    /// How long it has been under way, at least, in milliseconds.
    pub age_ms: u64,
}

impl SlowRequest {
    /// The requests as one line for a log: `GET /a (1200 ms), POST /b (1000 ms)`.
    pub(crate) fn describe_all(requests: &[SlowRequest]) -> String {
        requests
            .iter()
            .map(|r| format!("{} {} ({} ms)", r.method, r.path, r.age_ms))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What this build's master understands beyond the first protocol: the master passes its level
/// to workers (`CLUSTER_PROTOCOL_LEVEL`), and a worker sends a message added at level N only to
/// a master of level N or above. During a deploy the master is the older binary, so a new worker
/// must not send it what it cannot decode. Level 1: everything up to `ToMaster::Dropped`;
/// level 2: `ToMaster::Served`, `ToMaster::InFlight`, `ToMaster::Store` and
/// `ListenAddr::Named`.
pub(crate) const LEVEL: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipc::{Bincode, Codec};

    fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Bincode.encode(value, &mut out).unwrap();
        out
    }

    /// If this fails, a variant or field was inserted, removed or reordered: old and new
    /// binaries would misread each other during a rolling deploy. Append instead.
    #[test]
    fn pinned_bytes() {
        assert_eq!(bytes(&ToWorker::Shutdown), [0]);
        assert_eq!(bytes(&ToWorker::User(vec![7, 8])), [1, 2, 7, 8]);
        assert_eq!(
            bytes(&ToWorker::Request {
                id: 5,
                payload: vec![9]
            }),
            [2, 5, 1, 9]
        );
        assert_eq!(
            bytes(&ToWorker::Response {
                id: 300,
                payload: vec![]
            }),
            [3, 251, 44, 1, 0]
        );
        assert_eq!(bytes(&ToMaster::Ready), [0]);
        assert_eq!(bytes(&ToMaster::User(vec![1])), [1, 1, 1]);
        assert_eq!(
            bytes(&ToMaster::Request {
                id: 1,
                payload: vec![2]
            }),
            [2, 1, 1, 2]
        );
        assert_eq!(
            bytes(&ToMaster::Response {
                id: 2,
                payload: vec![3]
            }),
            [3, 2, 1, 3]
        );
        assert_eq!(bytes(&ToMaster::Exiting { failed: true }), [4, 1]);
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            bytes(&ToMaster::Listen {
                id: 1,
                addr: ListenAddr::Tcp(addr),
                balance: Some(Balance::Sticky)
            }),
            [5, 1, 0, 0, 127, 0, 0, 1, 80, 1, 3]
        );
        assert_eq!(bytes(&ToMaster::Accepted { conn: 7 }), [6, 7]);
        assert_eq!(bytes(&ToMaster::Closed { listener: 2 }), [7, 2]);
        let info = ListenerInfo {
            listener: 1,
            local: Some(addr),
            balance: Balance::Shared,
        };
        assert_eq!(
            bytes(&ToWorker::Listening {
                id: 3,
                result: Ok(info)
            }),
            [4, 3, 0, 1, 1, 0, 127, 0, 0, 1, 80, 0]
        );
        assert_eq!(
            bytes(&ToWorker::Listening {
                id: 3,
                result: Err("x".into())
            }),
            [4, 3, 1, 1, b'x']
        );
        assert_eq!(
            bytes(&ToWorker::Connection {
                listener: 1,
                conn: 2,
                peer: None
            }),
            [5, 1, 2, 0]
        );
        assert_eq!(bytes(&ToWorker::MetricsRequest { id: 9 }), [6, 9]);
        assert_eq!(
            bytes(&ToWorker::Connections {
                listener: 1,
                conns: vec![(2, None), (3, Some(addr))]
            }),
            [7, 1, 2, 2, 0, 3, 1, 0, 127, 0, 0, 1, 80]
        );
        assert_eq!(
            bytes(&ToWorker::LoadShare {
                listener: 1,
                index: 2,
                tag: 3
            }),
            [8, 1, 2, 3]
        );
        assert_eq!(
            bytes(&ToMaster::Heartbeat {
                lag_us: 3,
                connections: 4
            }),
            [8, 3, 4]
        );
        assert_eq!(
            bytes(&ToMaster::Metrics {
                id: 1,
                text: "a".into()
            }),
            [9, 1, 1, b'a']
        );
        assert_eq!(bytes(&ToMaster::Dropped { dropped: 2 }), [10, 2]);
        assert_eq!(bytes(&ToMaster::Served { requests: 5 }), [11, 5]);
        assert_eq!(
            bytes(&ToMaster::InFlight {
                requests: vec![SlowRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    age_ms: 7
                }]
            }),
            [12, 1, 3, b'G', b'E', b'T', 1, b'/', 7]
        );
        assert_eq!(
            bytes(&ToMaster::Store {
                id: 1,
                op: StoreOp::Incr {
                    key: "k".into(),
                    by: 2
                }
            }),
            [13, 1, 2, 1, b'k', 4]
        );
        assert_eq!(
            bytes(&ToWorker::StoreAnswer {
                id: 1,
                reply: StoreReply::Cas(Some(None))
            }),
            [9, 1, 3, 1, 0]
        );
        assert_eq!(
            bytes(&ToWorker::StoreMessage {
                topic: "t".into(),
                value: vec![5]
            }),
            [10, 1, b't', 1, 5]
        );
        assert_eq!(
            bytes(&ToWorker::StoreLagged {
                topic: "t".into(),
                lost: 3
            }),
            [11, 1, b't', 3]
        );
    }

    #[test]
    fn round_trip() {
        for msg in [
            ToMaster::Ready,
            ToMaster::Exiting { failed: false },
            ToMaster::User(vec![1, 2, 3]),
        ] {
            assert_eq!(Bincode.decode::<ToMaster>(&bytes(&msg)).unwrap(), msg);
        }
    }
}
