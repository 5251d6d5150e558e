//! Rolling reloads of the main job (examples/http) under load lose no request: 16 keep-alive
//! connections and a connection-per-request loop run through 5 reloads (SIGUSR2, each waited
//! for), and every request gets its 200. Every worker is replaced: no pid that answered before
//! answers after.
//!
//! Zero failures needs the server to drain properly (in-flight requests finish, a keep-alive
//! connection gets `Connection: close` on its next response instead of being closed under a
//! request the client is sending, queued connections are served).

mod support;

use support::example;
use support::http::{HttpCluster, reload_under_load};

const RELOADS: usize = 5;
const KEEP_ALIVE: usize = 16;
const FRESH: usize = 1;

fn reloads_under_load_lose_nothing(policy: &str) {
    let cluster = HttpCluster::start(&example("http"), 2, policy);
    let tally = reload_under_load(&cluster, RELOADS, KEEP_ALIVE, FRESH);
    // The load itself was served by old and new workers alike.
    let answered = tally.pids().len();
    assert!(
        answered >= 4,
        "{policy}: only {answered} distinct workers answered across {RELOADS} reloads"
    );
    eprintln!(
        "{policy}: {} requests, 0 failed, {answered} workers answered across {RELOADS} reloads",
        tally.ok()
    );
}

#[test]
fn rolling_reloads_under_load_lose_no_request_shared() {
    reloads_under_load_lose_nothing("shared");
}

#[test]
fn rolling_reloads_under_load_lose_no_request_round_robin() {
    reloads_under_load_lose_nothing("round-robin");
}
