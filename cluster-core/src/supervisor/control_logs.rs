//! The control socket's `logs` request (`clusterctl logs [-f]`), and the last lines of a
//! failed replacement that `reload --wait` and `restart` show: read from the master's
//! [`RecentLogs`], which the workers' output forwarders fill.
//!
//! A follower's new lines wait in a bounded queue of its own (see observe/logs/follow.rs):
//! this connection's task drains it into the socket at the client's pace, and when the client
//! is slower than the workers, the lines that did not fit are replaced by
//! [`Response::LogsDropped`]. Neither the forwarders nor the supervisor ever wait for it.

use std::sync::Arc;
use std::time::Duration;

use cluster_ipc::{Receiver, Sender};

use crate::control::protocol::{LogLine, LogStream, Request, Response};
use crate::model::WorkerId;
use crate::observe::logs::{Filter, Line, RecentLogs, Stream};
use crate::observe::status::ClusterStatus;

/// How many of a failed replacement's last lines `reload --wait` and `restart` get.
const FAILED_LINES: usize = 20;

/// How long a failure's report waits for the failed replacement's output to end, so that the
/// lines it wrote just before it exited are among those shown.
const OUTPUT_END_WAIT: Duration = Duration::from_secs(1);

/// Text bytes per [`Response::Logs`] frame: well under the channel's 4 MiB frame limit with a
/// 64 KiB line more and the encoding's overhead.
const FRAME_TEXT: usize = 1 << 20;

/// The refusal of a `logs` request by a master that keeps no lines.
pub(super) const NOT_KEPT: &str = "this master keeps no worker output: its `log_lines` is 0, or `worker_prefix_logs` is off (workers write to its stdout and stderr directly)";

/// Why a `logs` request for `filter` cannot be answered, if it cannot: no such group or slot
/// exists (among the live workers in `status`, or among the slots that have printed).
pub(super) fn refusal(
    logs: &RecentLogs,
    filter: &Filter,
    status: Option<&ClusterStatus>,
) -> Option<String> {
    let live = status.is_some_and(|status| {
        status.workers.iter().any(|w| {
            filter.group.as_deref().is_none_or(|g| w.group == g)
                && filter.slot.is_none_or(|s| w.slot == s)
        })
    });
    if filter.group.is_none() || live || logs.knows(filter) {
        return None;
    }
    let group = filter.group.as_deref().unwrap_or_default();
    Some(match filter.slot {
        Some(slot) => format!("no worker in slot {group}/{slot}"),
        None => format!("no group named {group:?}"),
    })
}

/// Answers a `logs` request: the backlog, [`Response::LogsUpToDate`], and with `follow` every
/// new line until the client closes the connection or sends anything (`rx`). An error means
/// the client has gone.
pub(super) async fn serve(
    logs: &Arc<RecentLogs>,
    filter: Filter,
    lines: usize,
    follow: bool,
    tx: &Sender<Response>,
    rx: &mut Receiver<Request>,
) -> cluster_ipc::Result<()> {
    if !follow {
        send_lines(tx, logs.tail(&filter, lines)).await?;
        return tx.send(&Response::LogsUpToDate).await;
    }
    let (backlog, mut follower) = logs.follow(filter, lines);
    send_lines(tx, backlog).await?;
    tx.send(&Response::LogsUpToDate).await?;
    loop {
        tokio::select! {
            delivery = follower.next() => {
                send_lines(tx, delivery.lines).await?;
                if delivery.dropped > 0 {
                    tx.send(&Response::LogsDropped(delivery.dropped)).await?;
                }
            }
            // Closed, or a request in the middle of a follow: either way following ends, and
            // the connection with it.
            _ = rx.recv() => return Ok(()),
        }
    }
}

/// Sends the last lines of `id`, a replacement that failed, once its output has ended (or a
/// second has passed); nothing when the master keeps no lines or it wrote none.
pub(super) async fn send_failed_lines(
    logs: Option<&RecentLogs>,
    id: &WorkerId,
    tx: &Sender<Response>,
) -> cluster_ipc::Result<()> {
    let Some(logs) = logs else { return Ok(()) };
    logs.wait_closed(id, OUTPUT_END_WAIT).await;
    send_lines(tx, logs.tail_of(id, FAILED_LINES)).await
}

/// Sends `lines` in [`Response::Logs`] frames of about [`FRAME_TEXT`] bytes each.
async fn send_lines(tx: &Sender<Response>, lines: Vec<Line>) -> cluster_ipc::Result<()> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for line in lines {
        if bytes + line.text.len() > FRAME_TEXT && !batch.is_empty() {
            tx.send(&Response::Logs(std::mem::take(&mut batch))).await?;
            bytes = 0;
        }
        bytes += line.text.len();
        batch.push(LogLine {
            stream: match line.stream {
                Stream::Stdout => LogStream::Stdout,
                Stream::Stderr => LogStream::Stderr,
            },
            text: line.text,
        });
    }
    if !batch.is_empty() {
        tx.send(&Response::Logs(batch)).await?;
    }
    Ok(())
}
