//! Options from the environment and from an options file, with the real fixture cluster:
//! `CLUSTER_COUNT` and `CLUSTER_CONFIG` change how many workers run, a bad value stops the
//! master with exit code 2 before any worker and says where the value was written, and a
//! reload re-reads the file, applying `count` and naming what needs a restart.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Fixture, TempPath, WAIT, id};

/// Starts the fixture with `env`, waits for `n` workers of the default group, and checks
/// that no more are spawned.
fn expect_workers(fx: &mut Fixture, n: usize) {
    fx.wait_hellos("worker/", n);
    // A moment for an extra worker to show: none may.
    std::thread::sleep(Duration::from_millis(300));
    fx.try_exit();
    let spawned = fx.lines("SPAWNED", &[]).len();
    assert_eq!(spawned, n, "{n} workers, no more\n{}", fx.dump());
}

fn stop(mut fx: Fixture) {
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit_code(WAIT), 0, "{}", fx.dump());
}

#[test]
fn cluster_count_in_the_environment_sets_the_number_of_workers() {
    // The fixture's code asks for 2 (FIXTURE_COUNT's default): the environment wins.
    let mut fx = Fixture::start(&[("CLUSTER_COUNT", "3")]);
    expect_workers(&mut fx, 3);
    stop(fx);
    let mut fx = Fixture::start(&[("WEB_CONCURRENCY", "1")]);
    expect_workers(&mut fx, 1);
    stop(fx);
}

#[test]
fn a_bad_variable_stops_the_master_with_exit_code_2_before_any_worker() {
    let marker = TempPath::new("marker");
    let mut fx = Fixture::start(&[
        ("CLUSTER_GRACE", "abc"),
        ("FIXTURE_MARKER", marker.as_str()),
    ]);
    let code = fx.wait_exit_code(WAIT);
    fx.finish(WAIT);
    assert_eq!(code, 2, "{}", fx.dump());
    let stderr = fx.stderr();
    assert!(
        stderr.contains(
            "cluster: invalid option `grace` from the environment variable CLUSTER_GRACE: invalid duration \"abc\""
        ),
        "{stderr}"
    );
    assert!(stderr.contains("`grace` accepts a duration"), "{stderr}");
    assert!(stderr.contains("no worker was started"), "{stderr}");
    assert!(fx.history.is_empty(), "nothing started\n{}", fx.dump());
    assert!(!marker.0.exists(), "before_fork did not run");
}

#[test]
fn an_options_file_named_by_cluster_config() {
    let file = TempPath::new("cluster.toml");
    std::fs::write(&file.0, "# three workers\ncount = 3\ngrace = \"2s\"\n").unwrap();
    let mut fx = Fixture::start(&[("CLUSTER_CONFIG", file.as_str())]);
    expect_workers(&mut fx, 3);
    stop(fx);
    // The environment over the file.
    let mut fx = Fixture::start(&[("CLUSTER_CONFIG", file.as_str()), ("CLUSTER_COUNT", "1")]);
    expect_workers(&mut fx, 1);
    stop(fx);
    // A bad line: exit 2 naming the file and the line, nothing started.
    std::fs::write(&file.0, "count = 3\nmax_memory = \"lots\"\n").unwrap();
    let mut fx = Fixture::start(&[("CLUSTER_CONFIG", file.as_str())]);
    let code = fx.wait_exit_code(WAIT);
    fx.finish(WAIT);
    assert_eq!(code, 2, "{}", fx.dump());
    let stderr = fx.stderr();
    assert!(
        stderr.contains(&format!(
            "invalid option `max_memory` in {}, line 2: ",
            file.as_str()
        )),
        "{stderr}"
    );
    assert!(fx.history.is_empty(), "nothing started\n{}", fx.dump());
}

#[test]
fn a_reload_rereads_count_from_the_changed_file() {
    let file = TempPath::new("cluster.toml");
    std::fs::write(&file.0, "count = 2\n").unwrap();
    let mut fx = Fixture::start(&[("CLUSTER_CONFIG", file.as_str())]);
    expect_workers(&mut fx, 2);
    std::fs::write(
        &file.0,
        "count = 3\nsignals = [\"SIGTERM\", \"SIGINT\", \"SIGHUP\"]\n",
    )
    .unwrap();
    fx.signal(Signal::SIGUSR2);
    fx.wait_line("RELOAD_FINISHED", &[]);
    // The third slot started new; the first two were replaced as in any reload.
    fx.wait_line("HELLO", &[("id", &id("worker", 2, 1))]);
    for slot in 0..2 {
        fx.wait_line("HELLO", &[("id", &id("worker", slot, 2))]);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let stderr = fx.stderr();
        if stderr.contains("reload: options applied: count = 3 (file ")
            && stderr.contains(
                "reload: changed options that need a restart of the master, kept as they are: signals",
            )
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report of the reload\n{}",
            fx.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(fx);
}
