//! Worker groups: each with its own count and environment; scaling a group up starts new
//! slots, scaling it down stops the highest slots gracefully without restarting them or
//! counting them as failures.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Exit, Fixture, WAIT, id, parse_id};

#[test]
fn groups_have_their_own_count_and_environment() {
    let mut fx = Fixture::start(&[("FIXTURE_GROUPS", "1"), ("FIXTURE_COUNT", "2")]);
    fx.wait_hellos("web/", 2);
    fx.wait_hellos("jobs/", 1);
    for (worker, value) in [
        (id("web", 0, 1), "web-env"),
        (id("web", 1, 1), "web-env"),
        (id("jobs", 0, 1), "jobs-env"),
    ] {
        let hello = fx.wait_line("HELLO", &[("id", &worker)]);
        assert_eq!(
            hello.get("groupvar"),
            value,
            "{worker} sees its group's environment\n{}",
            fx.dump()
        );
    }
    fx.command("workers");
    let list = fx.wait_line("WORKERS", &[]);
    assert_eq!(
        list.get("list"),
        "jobs/0#1,web/0#1,web/1#1",
        "{}",
        fx.dump()
    );

    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    assert!(
        fx.lines("WSTART", &[])
            .iter()
            .all(|l| !l.get("id").starts_with("worker/")),
        "no default group"
    );
    assert_eq!(fx.lines("WSTART", &[]).len(), 3, "{}", fx.dump());
}

#[test]
fn scaling_up_adds_slots_and_scaling_down_stops_the_highest_ones_gracefully() {
    // max_restarts 1: if the three scale-down exits counted as failures, the master would give
    // up (exit 75) instead of carrying on.
    let mut fx = Fixture::start(&[
        ("FIXTURE_GROUPS", "1"),
        ("FIXTURE_COUNT", "2"),
        ("FIXTURE_MAX_RESTARTS", "1"),
        ("FIXTURE_RESTART_WINDOW_MS", "60000"),
    ]);
    fx.wait_hellos("web/", 2);
    fx.wait_hellos("jobs/", 1);

    fx.command("scale web 4");
    fx.wait_line(
        "SCALED",
        &[("group", "web"), ("count", "4"), ("ok", "true")],
    );
    let web = fx.wait_hellos("web/", 4);
    for slot in 2..4 {
        let hello = fx.wait_line("HELLO", &[("id", &id("web", slot, 1))]);
        assert_eq!(hello.get("groupvar"), "web-env", "{}", fx.dump());
    }
    fx.command("workers");
    fx.wait_line(
        "WORKERS",
        &[("list", "jobs/0#1,web/0#1,web/1#1,web/2#1,web/3#1")],
    );

    let before = fx.history.len();
    fx.command("scale web 1");
    fx.wait_line_after(
        before,
        "SCALED",
        &[("group", "web"), ("count", "1"), ("ok", "true")],
    );
    for slot in 1..4 {
        let id = id("web", slot, 1);
        fx.wait_line("STOPPING", &[("id", &id)]);
        let exit = fx.wait_line("EXIT", &[("id", &id)]);
        assert_eq!(
            exit.get("how"),
            "code:0",
            "{id} stopped by itself\n{}",
            fx.dump()
        );
        assert_eq!(exit.get("expected"), "true", "{}", fx.dump());
        assert_eq!(exit.get("restarting"), "false", "{}", fx.dump());
    }
    // After the exits: the retired slots are gone, the others untouched.
    let before = fx.history.len();
    fx.command("workers");
    let list = fx.wait_line_after(before, "WORKERS", &[]);
    assert_eq!(list.get("list"), "jobs/0#1,web/0#1", "{}", fx.dump());
    assert_eq!(
        fx.try_exit(),
        None,
        "scale-down exits are not failures\n{}",
        fx.dump()
    );

    // The one restart max_restarts allows is still available: the scale-down used none.
    kill(Pid::from_raw(web[&id("web", 0, 1)]), Signal::SIGKILL).unwrap();
    let exit = fx.wait_line("EXIT", &[("id", &id("web", 0, 1))]);
    assert_eq!(
        (exit.get("expected"), exit.get("restarting")),
        ("false", "true"),
        "{}",
        fx.dump()
    );
    fx.wait_line("HELLO", &[("id", &id("web", 0, 2))]);
    assert_eq!(fx.try_exit(), None, "{}", fx.dump());

    // Scaling an unknown group is an error.
    fx.command("scale nosuch 2");
    fx.wait_line("SCALED", &[("group", "nosuch"), ("ok", "false")]);

    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    // Nothing but web/0 was ever restarted.
    let restarted: Vec<String> = fx
        .lines("WSTART", &[])
        .iter()
        .map(|l| l.get("id").to_owned())
        .filter(|i| parse_id(i).2 > 1)
        .collect();
    assert_eq!(restarted, [id("web", 0, 2)], "{}", fx.dump());
}
