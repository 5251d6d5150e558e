//! Tests of the master's memory of workers' output: a slot's ring (its bounds in lines and in
//! bytes, its order), the store's recorders, tails and followers (a follower that falls behind
//! loses lines, counted, and never holds up the recording).

use std::sync::Arc;
use std::time::Duration;

use super::super::follow::{Delivery, FOLLOW_BUFFER_BYTES, Queue};
use super::super::ring::{Line, Ring};
use super::super::{Filter, RecentLogs, Stream, Writer, forward_to};
use crate::model::WorkerId;

fn texts(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.text).into_owned())
        .collect()
}

fn id(group: &str, slot: usize, generation: u64) -> WorkerId {
    WorkerId {
        group: group.into(),
        slot,
        generation,
    }
}

#[test]
fn ring_keeps_the_last_lines_in_order_within_its_line_bound() {
    let mut ring = Ring::new(3, 1 << 20);
    for i in 0..10u64 {
        ring.push(i, 1, Stream::Stdout, format!("line {i}").as_bytes());
    }
    assert_eq!(ring.len(), 3);
    assert_eq!(texts(&ring.last(10, None)), ["line 7", "line 8", "line 9"]);
    assert_eq!(texts(&ring.last(2, None)), ["line 8", "line 9"]);
    assert_eq!(texts(&ring.last(0, None)), Vec::<String>::new());
    let seqs: Vec<u64> = ring.last(3, None).iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [7, 8, 9]);
}

#[test]
fn ring_keeps_within_its_byte_bound_but_always_the_newest_line() {
    let mut ring = Ring::new(100, 10);
    for i in 0..5u64 {
        ring.push(i, 1, Stream::Stdout, format!("abc{i}").as_bytes());
    }
    // 4 bytes a line: two fit in 10 bytes, a third would not.
    assert_eq!(texts(&ring.last(100, None)), ["abc3", "abc4"]);
    assert_eq!(ring.text_bytes(), 8);
    // A line longer than the bound replaces everything, and is kept alone.
    let long = vec![b'x'; 25];
    ring.push(5, 1, Stream::Stderr, &long);
    assert_eq!(ring.len(), 1);
    assert_eq!(ring.text_bytes(), 25);
    let last = ring.last(5, None);
    assert_eq!(last[0].text, long);
    assert_eq!(last[0].stream, Stream::Stderr);
    // The next line pushes it out.
    ring.push(6, 1, Stream::Stdout, b"short");
    assert_eq!(texts(&ring.last(5, None)), ["short"]);
}

#[test]
fn ring_copies_lines_that_wrap_around_its_buffer_whole() {
    // Lines of varying lengths, far more than the ring holds, so that its buffer wraps around
    // at every position; each line read back must be exactly the one written.
    let mut ring = Ring::new(7, 100);
    let line = |i: u64| format!("{i}:{}", "y".repeat((i as usize * 7) % 23));
    for i in 0..500u64 {
        ring.push(i, i / 100, Stream::Stdout, line(i).as_bytes());
        let kept = ring.last(usize::MAX, None);
        assert!(kept.len() <= 7 && ring.text_bytes() <= 100 + 30);
        let first = i + 1 - kept.len() as u64;
        for (k, got) in kept.iter().enumerate() {
            let want = first + k as u64;
            assert_eq!(got.seq, want);
            assert_eq!(got.text, line(want).into_bytes());
            assert_eq!(got.generation, want / 100);
        }
    }
}

#[test]
fn ring_gives_one_generations_lines() {
    let mut ring = Ring::new(10, 1 << 20);
    ring.push(0, 1, Stream::Stdout, b"old 1");
    ring.push(1, 2, Stream::Stdout, b"new 1");
    ring.push(2, 1, Stream::Stdout, b"old 2");
    ring.push(3, 2, Stream::Stderr, b"new 2");
    assert_eq!(texts(&ring.last(10, Some(2))), ["new 1", "new 2"]);
    assert_eq!(texts(&ring.last(1, Some(1))), ["old 2"]);
}

#[test]
fn a_log_lines_of_0_keeps_nothing() {
    assert!(RecentLogs::new(0).is_none());
    let mut ring = Ring::new(0, 0);
    ring.push(0, 1, Stream::Stdout, b"x");
    assert_eq!(ring.len(), 0);
}

fn line(seq: u64, len: usize) -> Line {
    Line {
        seq,
        generation: 1,
        stream: Stream::Stdout,
        text: vec![b'z'; len],
    }
}

#[test]
fn a_full_follow_queue_counts_what_it_drops_after_what_it_kept() {
    let mut queue = Queue::default();
    assert_eq!(queue.take(), None);
    let len = 1000;
    let fit = FOLLOW_BUFFER_BYTES / (len + 64);
    for seq in 0..fit as u64 + 10 {
        queue.push(line(seq, len));
    }
    let Some(Delivery { lines, dropped }) = queue.take() else {
        panic!("lines were queued");
    };
    assert_eq!(lines.len(), fit);
    assert_eq!(dropped, 10);
    assert_eq!(lines.last().map(|l| l.seq), Some(fit as u64 - 1));
    // Taken: room again, counting from zero.
    queue.push(line(1, 5));
    assert_eq!(
        queue.take().map(|d| (d.lines.len(), d.dropped)),
        Some((1, 0))
    );
}

#[test]
fn once_a_follow_queue_drops_it_drops_until_taken() {
    let mut queue = Queue::default();
    let big = FOLLOW_BUFFER_BYTES / 2;
    queue.push(line(0, big));
    queue.push(line(1, big)); // does not fit: dropped
    queue.push(line(2, 1)); // would fit, but comes after the gap
    let delivery = queue.take().unwrap();
    assert_eq!(delivery.lines.len(), 1);
    assert_eq!(delivery.dropped, 2);
}

#[test]
fn recorders_keep_each_slots_lines_and_a_replacements_follow_its_predecessors() {
    let logs = RecentLogs::new(100).unwrap();
    let first = logs.recorder(&id("web", 0, 1), Stream::Stdout);
    let other = logs.recorder(&id("web", 1, 1), Stream::Stderr);
    first.record(b"[web/0 pid 10] a\n[web/0 pid 10] b\n");
    other.record(b"[web/1 pid 11] c\n");
    drop(first);
    let second = logs.recorder(&id("web", 0, 2), Stream::Stdout);
    second.record(b"[web/0 pid 12] d\n");
    let slot0 = Filter {
        group: Some("web".into()),
        slot: Some(0),
    };
    assert_eq!(
        texts(&logs.tail(&slot0, 10)),
        ["[web/0 pid 10] a", "[web/0 pid 10] b", "[web/0 pid 12] d"]
    );
    assert_eq!(
        texts(&logs.tail(&slot0, 2)),
        ["[web/0 pid 10] b", "[web/0 pid 12] d"]
    );
    // Every slot: the last lines of each, in the order they were printed.
    assert_eq!(
        texts(&logs.tail(&Filter::default(), 2)),
        ["[web/0 pid 10] b", "[web/1 pid 11] c", "[web/0 pid 12] d"]
    );
    assert_eq!(logs.tail(&slot0, 10)[0].stream, Stream::Stdout);
    assert_eq!(
        logs.tail(
            &Filter {
                group: Some("web".into()),
                slot: Some(1)
            },
            1
        )[0]
        .stream,
        Stream::Stderr
    );
    assert_eq!(
        texts(&logs.tail_of(&id("web", 0, 1), 1)),
        ["[web/0 pid 10] b"]
    );
    assert!(logs.knows(&slot0));
    assert!(!logs.knows(&Filter {
        group: Some("jobs".into()),
        slot: None
    }));
}

#[test]
fn a_slots_ring_is_bounded_by_log_lines_and_bytes() {
    let logs = RecentLogs::new(5).unwrap();
    let recorder = logs.recorder(&id("w", 0, 1), Stream::Stdout);
    let mut batch = Vec::new();
    for i in 0..20 {
        batch.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    recorder.record(&batch);
    assert_eq!(
        texts(&logs.tail(&Filter::default(), 100)),
        ["line 15", "line 16", "line 17", "line 18", "line 19"]
    );
    // 5 lines: 5 KiB of text at most, so two lines of 3 KiB do not both stay.
    let long = format!("{}\n", "q".repeat(3000));
    recorder.record(format!("{long}{long}").as_bytes());
    let kept = logs.tail(&Filter::default(), 100);
    assert_eq!(
        kept.len(),
        1,
        "{:?}",
        texts(&kept).iter().map(String::len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_follower_gets_the_backlog_then_every_new_line_once() {
    let logs = RecentLogs::new(100).unwrap();
    let recorder = logs.recorder(&id("w", 0, 1), Stream::Stdout);
    let unwanted = logs.recorder(&id("w", 1, 1), Stream::Stdout);
    recorder.record(b"one\ntwo\nthree\n");
    let filter = Filter {
        group: Some("w".into()),
        slot: Some(0),
    };
    let (backlog, mut follower) = logs.follow(filter, 2);
    assert_eq!(texts(&backlog), ["two", "three"]);
    unwanted.record(b"not for this follower\n");
    recorder.record(b"four\n");
    recorder.record(b"five\n");
    let delivery = tokio::time::timeout(Duration::from_secs(5), follower.next())
        .await
        .unwrap();
    assert_eq!(texts(&delivery.lines), ["four", "five"]);
    assert_eq!(delivery.dropped, 0);
    // Nothing new: it waits, until a line comes.
    let waiting = tokio::time::timeout(Duration::from_millis(50), follower.next()).await;
    assert!(waiting.is_err());
    recorder.record(b"six\n");
    let delivery = tokio::time::timeout(Duration::from_secs(5), follower.next())
        .await
        .unwrap();
    assert_eq!(texts(&delivery.lines), ["six"]);
    drop(follower);
    // Gone: recording no longer queues anything for it.
    recorder.record(b"seven\n");
}

#[tokio::test]
async fn a_stalled_follower_loses_lines_and_never_holds_up_the_recording() {
    let logs = RecentLogs::new(1000).unwrap();
    let (_, mut stalled) = logs.follow(Filter::default(), 0);
    let (_, mut other) = logs.follow(Filter::default(), 0);
    let recorder = logs.recorder(&id("w", 0, 1), Stream::Stdout);
    let text = format!("{}\n", "m".repeat(1000));
    let lines = 3 * FOLLOW_BUFFER_BYTES / 1000;
    for _ in 0..lines {
        recorder.record(text.as_bytes());
        // The other follower keeps up.
        let delivery = other.next().await;
        assert_eq!((delivery.lines.len(), delivery.dropped), (1, 0));
    }
    let delivery = stalled.next().await;
    assert!(delivery.lines.len() < lines / 2, "{}", delivery.lines.len());
    assert_eq!(delivery.lines.len() as u64 + delivery.dropped, lines as u64);
    // The ring kept the last 1000 lines regardless.
    assert_eq!(logs.tail(&Filter::default(), usize::MAX).len(), 1000);
}

#[tokio::test]
async fn wait_closed_returns_once_the_workers_streams_have_ended() {
    let logs = RecentLogs::new(10).unwrap();
    let worker = id("w", 0, 2);
    let out = logs.recorder(&worker, Stream::Stdout);
    let err = logs.recorder(&worker, Stream::Stderr);
    // Still open: waits the whole bound.
    let started = tokio::time::Instant::now();
    logs.wait_closed(&worker, Duration::from_millis(50)).await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(out);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(err);
    });
    tokio::time::timeout(
        Duration::from_secs(5),
        logs.wait_closed(&worker, Duration::from_secs(30)),
    )
    .await
    .expect("returns when both streams ended");
    closer.await.unwrap();
}

#[tokio::test]
async fn forwarding_records_the_prefixed_lines() {
    let logs = RecentLogs::new(10).unwrap();
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Writer::spawn(Arc::clone(&buf), "test-writer").unwrap();
    let recorder = logs.recorder(&id("web", 3, 1), Stream::Stderr);
    forward_to(
        &b"hello\nworld\nno newline"[..],
        &writer,
        "[web/3 pid 7] ".into(),
        Some(recorder),
    )
    .await;
    let kept = logs.tail(&Filter::default(), 10);
    assert_eq!(
        texts(&kept),
        [
            "[web/3 pid 7] hello",
            "[web/3 pid 7] world",
            "[web/3 pid 7] no newline"
        ]
    );
    assert!(kept.iter().all(|l| l.stream == Stream::Stderr));
    // What was recorded is what was written, line for line.
    let written = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert_eq!(written.lines().collect::<Vec<_>>(), texts(&kept));
    // The forwarder ended: the worker's output is closed.
    tokio::time::timeout(
        Duration::from_secs(5),
        logs.wait_closed(&id("web", 3, 1), Duration::from_secs(30)),
    )
    .await
    .unwrap();
}
