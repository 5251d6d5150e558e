//! Typed round trips through real channels, for every codec: nested types, large messages,
//! bursts, cloned senders, split halves, clean ends of stream.

mod common;

use std::collections::{BTreeMap, HashMap};

use cluster_ipc::{Channel, Codec, Config, Error};
use common::within;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Inner {
    Unit,
    Newtype(i64),
    Tuple(u8, String, Option<bool>),
    Struct { id: u128, tags: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    bytes: Vec<u8>,
    maybe: Option<Box<Record>>,
    map: HashMap<String, Vec<u32>>,
    ordered: BTreeMap<u16, Inner>,
    floats: (f32, f64),
    ch: char,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping,
    Seq(u64),
    From { task: u32, seq: u32 },
    Text(String),
    Bytes(Vec<u8>),
    Nested(Inner, Vec<Inner>),
    Record(Box<Record>),
    Many(Vec<Option<Msg>>),
    Pair(Box<Msg>, Box<Msg>),
}

fn record(depth: u32) -> Record {
    let mut map = HashMap::new();
    map.insert(String::new(), vec![]);
    map.insert("primes".to_string(), vec![2, 3, 5, 7, 11, u32::MAX]);
    map.insert("ünïcødé ✓ 🦀".to_string(), vec![0]);
    let mut ordered = BTreeMap::new();
    ordered.insert(0, Inner::Unit);
    ordered.insert(7, Inner::Newtype(i64::MIN));
    ordered.insert(
        u16::MAX,
        Inner::Struct {
            id: u128::MAX - 1,
            tags: vec!["a".into(), String::new(), "long ".repeat(50)],
        },
    );
    Record {
        name: format!("record at depth {depth}"),
        bytes: (0..=255u8).chain([0, 0, 255]).collect(),
        maybe: (depth > 0).then(|| Box::new(record(depth - 1))),
        map,
        ordered,
        floats: (f32::MIN_POSITIVE, -0.5e300),
        ch: '\u{10FFFF}',
    }
}

fn samples() -> Vec<Msg> {
    vec![
        Msg::Ping,
        Msg::Seq(0),
        Msg::Seq(u64::MAX),
        Msg::Text(String::new()),
        Msg::Text("héllo, wörld \0 \u{1F980}".to_string()),
        Msg::Bytes(Vec::new()),
        Msg::Bytes(vec![0, 1, 2, 0xff, 0xfe]),
        Msg::Nested(
            Inner::Tuple(9, "x".into(), None),
            vec![
                Inner::Unit,
                Inner::Tuple(0, String::new(), Some(true)),
                Inner::Struct {
                    id: 0,
                    tags: vec![],
                },
            ],
        ),
        Msg::Record(Box::new(record(3))),
        Msg::Many(vec![None, Some(Msg::Ping), Some(Msg::Many(vec![None]))]),
        Msg::Pair(
            Box::new(Msg::Text("left".into())),
            Box::new(Msg::Pair(Box::new(Msg::Seq(1)), Box::new(Msg::Ping))),
        ),
    ]
}

async fn pair<C: Codec>(config: Config) -> (Channel<Msg, Msg, C>, Channel<Msg, Msg, C>) {
    within("the handshake", Channel::<Msg, Msg, C>::pair(config))
        .await
        .expect("pair")
}

/// Every sample goes both ways and comes back equal.
async fn nested_values_both_ways<C: Codec>() {
    let (mut a, mut b) = pair::<C>(Config::default()).await;
    for msg in samples() {
        a.send(&msg).await.expect("send a->b");
        assert_eq!(
            within("recv", b.recv()).await.expect("recv"),
            Some(msg.clone())
        );
        b.send(&msg).await.expect("send b->a");
        assert_eq!(within("recv", a.recv()).await.expect("recv"), Some(msg));
    }
}

/// Different Tx and Rx types on one channel, each side sees the other's.
async fn asymmetric_types<C: Codec>() {
    let (mut a, mut b) = within(
        "pair",
        Channel::<Option<Vec<String>>, HashMap<u8, (bool, i8)>, C>::pair(Config::default()),
    )
    .await
    .expect("pair");
    let strings = Some(vec!["one".to_string(), String::new(), "three".into()]);
    a.send(&strings).await.unwrap();
    a.send(&None).await.unwrap();
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some(strings));
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some(None));
    let map: HashMap<u8, (bool, i8)> = (0..=255u8).map(|k| (k, (k % 2 == 0, k as i8))).collect();
    b.send(&map).await.unwrap();
    assert_eq!(within("recv", a.recv()).await.unwrap(), Some(map));
}

fn big_bytes(seed: u8) -> Vec<u8> {
    (0..1usize << 20)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// 1 MiB messages (bytes and a string), interleaved with small ones, arrive intact while the
/// sender is held back by the 256 KiB write buffer.
async fn one_mib_messages<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    let text: String = "0123456789abcdef🦀".repeat((1 << 20) / 20);
    let expected: Vec<Msg> = (0..6u8)
        .flat_map(|i| {
            [
                Msg::Bytes(big_bytes(i)),
                Msg::Seq(u64::from(i)),
                Msg::Text(text.clone()),
            ]
        })
        .collect();
    let to_send = expected.clone();
    let sender = tokio::spawn(async move {
        for msg in &to_send {
            a.send(msg).await.expect("send");
        }
        a.flush().await.expect("flush");
        a
    });
    for (i, want) in expected.iter().enumerate() {
        let got = within("a large message", b.recv())
            .await
            .expect("recv")
            .expect("message before end of stream");
        assert!(&got == want, "message {i} differs");
    }
    let a = within("the sender task", sender)
        .await
        .expect("sender task");
    drop(a);
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
}

/// Thousands of small messages sent without waiting arrive complete and in order, then the end.
async fn burst_in_order<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    const N: u64 = 20_000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let msg = if i % 100 == 99 {
                Msg::Text(format!("text {i}"))
            } else {
                Msg::Seq(i)
            };
            a.send(&msg).await.expect("send");
        }
        // Dropping the only sender ends the stream after everything queued.
    });
    for i in 0..N {
        let got = within("a burst message", b.recv()).await.expect("recv");
        let want = if i % 100 == 99 {
            Msg::Text(format!("text {i}"))
        } else {
            Msg::Seq(i)
        };
        assert_eq!(got, Some(want), "message {i}");
    }
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
    within("sender task", sender).await.unwrap();
}

/// Clones of one sender in several tasks: every message arrives once, each task's in its order,
/// and the stream ends when the last clone is dropped.
async fn cloned_senders_in_tasks<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default().with_write_buffer(4096)).await;
    let (tx, _rx_a) = a.split();
    const TASKS: u32 = 6;
    const EACH: u32 = 1_000;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..EACH {
                tx.send(&Msg::From { task, seq }).await.expect("send");
                if seq % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    drop(tx);
    let mut next = vec![0u32; TASKS as usize];
    for _ in 0..TASKS * EACH {
        match within("a message from a task", b.recv())
            .await
            .expect("recv")
        {
            Some(Msg::From { task, seq }) => {
                assert_eq!(seq, next[task as usize], "task {task} out of order");
                next[task as usize] += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(next.iter().all(|&n| n == EACH), "{next:?}");
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
    for t in tasks {
        within("task", t).await.unwrap();
    }
}

/// Split halves in different tasks: an echo server on one side, a writer and a reader task on
/// the other.
async fn split_halves_in_tasks<C: Codec>() {
    let (a, b) = pair::<C>(Config::default()).await;
    let (b_tx, mut b_rx) = b.split();
    let echo = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(msg) = b_rx.recv().await.expect("echo recv") {
            let reply = match msg {
                Msg::Seq(i) => Msg::Seq(i * 2),
                other => other,
            };
            b_tx.send(&reply).await.expect("echo send");
            n += 1;
        }
        n
    });
    let (a_tx, mut a_rx) = a.split();
    const N: u64 = 2_000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            a_tx.send(&Msg::Seq(i)).await.expect("send");
        }
        a_tx.send(&Msg::Text("last".into())).await.expect("send");
        // a_tx dropped: the echo loop sees the end and drops its sender too.
    });
    let reader = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(a_rx.recv().await.expect("recv"), Some(Msg::Seq(i * 2)));
        }
        assert_eq!(
            a_rx.recv().await.expect("recv"),
            Some(Msg::Text("last".into()))
        );
        assert_eq!(a_rx.recv().await.expect("recv"), None);
    });
    within("writer", writer).await.unwrap();
    within("reader", reader).await.unwrap();
    assert_eq!(within("echo", echo).await.unwrap(), N + 1);
}

/// Dropping the whole channel: the peer gets every queued message, then `Ok(None)`, and keeps
/// getting `Ok(None)`.
async fn dropped_channel_ends_stream<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    for i in 0..100 {
        a.send(&Msg::Seq(i)).await.unwrap();
    }
    drop(a);
    for i in 0..100 {
        assert_eq!(within("recv", b.recv()).await.unwrap(), Some(Msg::Seq(i)));
    }
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
    assert_eq!(within("end of stream again", b.recv()).await.unwrap(), None);
    assert!(matches!(
        within("recv_with_fds at the end", b.recv_with_fds()).await,
        Ok(None)
    ));
}

/// Dropping only the sending half closes one direction: the peer sees the end, and can still
/// send the other way.
async fn dropped_sender_half_closes_one_direction<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    let (a_tx, mut a_rx) = a.split();
    a_tx.send(&Msg::Text("bye".into())).await.unwrap();
    drop(a_tx);
    assert_eq!(
        within("recv", b.recv()).await.unwrap(),
        Some(Msg::Text("bye".into()))
    );
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
    b.send(&Msg::Seq(42))
        .await
        .expect("the other direction is still open");
    assert_eq!(
        within("recv the other way", a_rx.recv()).await.unwrap(),
        Some(Msg::Seq(42))
    );
    drop(b);
    assert_eq!(within("end of stream", a_rx.recv()).await.unwrap(), None);
}

/// `close` refuses further sends and ends the peer's stream.
async fn close_refuses_sends<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    let tx = a.sender();
    assert!(!tx.is_closed());
    a.send(&Msg::Ping).await.unwrap();
    a.flush().await.unwrap();
    tx.close();
    assert!(tx.is_closed());
    assert!(matches!(a.send(&Msg::Ping).await, Err(Error::Closed)));
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some(Msg::Ping));
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
}

/// A message whose serialization fails half way is an `Error::Encode` and sends nothing; the
/// channel goes on with the next message.
async fn encode_error_sends_nothing<C: Codec>() {
    /// Serializes as a `u32`, or fails when told to.
    struct MaybeRefuses(bool);
    impl Serialize for MaybeRefuses {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 {
                Err(serde::ser::Error::custom("refused on purpose"))
            } else {
                s.serialize_u32(0)
            }
        }
    }
    let (x, y) = tokio::net::UnixStream::pair().unwrap();
    let (a, b) = within("the handshake", async {
        tokio::join!(
            Channel::<(u32, MaybeRefuses), (), C>::handshake(x, Config::default()),
            Channel::<(), (u32, u32), C>::handshake(y, Config::default()),
        )
    })
    .await;
    let (a, mut b) = (a.expect("handshake"), b.expect("handshake"));
    match a.send(&(7, MaybeRefuses(true))).await {
        Err(Error::Encode {
            reason,
            codec,
            type_name,
        }) => {
            // postcard replaces the custom message by a generic one.
            assert!(!reason.is_empty());
            assert!(type_name.contains("MaybeRefuses"), "{type_name}");
            assert_eq!(codec, C::NAME);
        }
        other => panic!("expected Error::Encode, got {other:?}"),
    }
    a.send(&(8, MaybeRefuses(false)))
        .await
        .expect("the channel still works");
    drop(a);
    // Nothing half-encoded reached the peer: the good message, then the end.
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some((8, 0)));
    assert_eq!(within("end of stream", b.recv()).await.unwrap(), None);
}

/// Payloads whose decoded size is many times their wire size: bincode counts a one-byte
/// varint `u64` as 8 claimed bytes, so a limit tied too closely to the payload length
/// rejected these valid messages.
fn expanding_payloads_decode<C: Codec>() {
    let small_u64s: Vec<u64> = (0..4000).map(|i| i % 200).collect();
    let mut buf = Vec::new();
    C::default().encode(&small_u64s, &mut buf).unwrap();
    assert_eq!(C::default().decode::<Vec<u64>>(&buf).unwrap(), small_u64s);
    let wide: Vec<u128> = (0..5000).map(|i| i % 100).collect();
    buf.clear();
    C::default().encode(&wide, &mut buf).unwrap();
    assert_eq!(C::default().decode::<Vec<u128>>(&buf).unwrap(), wide);
    let bytes = vec![7u8; 32762];
    buf.clear();
    C::default().encode(&bytes, &mut buf).unwrap();
    assert_eq!(C::default().decode::<Vec<u8>>(&buf).unwrap(), bytes);
}

async fn expanding_payloads<C: Codec>() {
    expanding_payloads_decode::<C>();
}

codec_tests!(
    expanding_payloads,
    nested_values_both_ways,
    asymmetric_types,
    one_mib_messages,
    burst_in_order,
    cloned_senders_in_tasks,
    split_halves_in_tasks,
    dropped_channel_ends_stream,
    dropped_sender_half_closes_one_direction,
    close_refuses_sends,
    encode_error_sends_nothing,
);
