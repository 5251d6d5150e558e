//! The one table of the cluster's options. Each entry gives an option's name, type, default,
//! builder method, text forms and rule; from it come the [`Options`] struct and its
//! `Default`, the `with_*` setters and the getters, each option's check in
//! [`Options::validate`], the text parsers of [`Options::set_from_str`], and [`OPTIONS`], the
//! list that the README's table, the tests and `#[cluster::main]` read (the attribute accepts
//! exactly these keys, parsed by these parsers).
//!
//! Adding an option is one entry here: a value type that is not yet an [`OptionValue`] also
//! needs that impl in value.rs (and, when its getter returns a reference, a `Get` impl in
//! spec.rs, which holds the macro that expands this table). An entry reads:
//!
//! ```text
//! /// Doc of the setter; its first line is the README's "meaning".
//! name: Type [as GetterType] = default expression;
//! [at path.in.options;]              (stored elsewhere than a field of its own name)
//! set with_name(SetterArgument);
//! text "default as text", accepts "what the text may be";
//! [check rule;]                      (fn(&Type) -> Result<(), String or ParseError>)
//! [parse function, print function;]  (instead of the type's OptionValue text)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::control_path::{ClusterName, ControlPath};
use super::parse::{ParseError, duration_text};
use super::privileges::{Account, CpuAffinity, EnvAllow, Nice, Rlimits, Umask};
use super::spec::{Get, OptionSpec, options_table};
use super::sticky::{self, KeyName};
use super::token::{self, StatusToken};
use super::value::{Bytes, OptionValue, StatusAddr};
use super::{Autoscale, Backoff, Balance, Count, RestartMode, RestartPolicy, check};

options_table! {
    /// Cluster-wide options.
    ///
    /// Built from the defaults with the `with_*` methods, read with the getters of the same
    /// names without `with_`; [`OPTIONS`] lists them with their defaults and text forms. A
    /// [`Cluster`](crate::Cluster) takes them through
    /// [`Cluster::configure`](crate::Cluster::configure).
    /// Defaults: 2 workers, at most 3 restarts within 10 s, 5 s grace, shutdown on `SIGINT` and
    /// `SIGTERM`, rolling reload on `SIGUSR2`, 30 s to report ready, worker output prefixed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cluster_core::{Options, Signal};
    ///
    /// let options = Options::new()
    ///     .with_count(4)
    ///     .with_max_restarts(5)
    ///     .with_max_restarts_interval(Duration::from_secs(15))
    ///     .with_grace(Duration::from_secs(3))
    ///     .with_signals([Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]);
    /// options.validate()?;
    /// assert_eq!(options.count().resolve(), 4);
    ///
    /// // The origin's millisecond options, and the same as text.
    /// let mut same = Options::new().with_grace_ms(3000).with_max_restarts_interval_ms(15_000);
    /// assert_eq!(same.grace(), Duration::from_secs(3));
    /// same.set_from_str("grace", "3s")?;
    /// assert_eq!(same.grace(), Duration::from_secs(3));
    /// # Ok::<(), cluster_core::Error>(())
    /// ```
    #[derive(Debug, Clone, PartialEq)]
    pub struct Options {
        // Every field of the policy is an option below, which sets it.
        restart: RestartPolicy = RestartPolicy::UNSET,
    }

    /// How many workers the default group runs: a number, or one per CPU.
    count: Count = Count::Fixed(2);
    set with_count(impl Into<Count>);
    text "2", accepts "a number of workers (at least 1), or `cpus` for one per CPU";
    check check::count;

    /// How many unexpected exits are tolerated within `max_restarts_interval`; one more and
    /// the master gives up. Zero gives up at the first crash.
    max_restarts: u32 = 3;
    at restart.max_restarts;
    set with_max_restarts(u32);
    text "3", accepts "a whole number";

    /// The sliding window over which `max_restarts` is counted.
    max_restarts_interval: Duration = Duration::from_secs(10);
    at restart.max_restarts_interval;
    set with_max_restarts_interval(Duration);
    text "10s", accepts "a positive duration";
    check check::max_restarts_interval;

    /// How long workers get to finish after being asked to stop, before they are killed; zero
    /// kills at once.
    grace: Duration = Duration::from_secs(5);
    set with_grace(Duration);
    text "5s", accepts "a duration";
    check check::not_huge;

    /// The signals that make the master shut the cluster down gracefully.
    signals: Vec<Signal> as &[Signal] = vec![Signal::SIGINT, Signal::SIGTERM];
    set with_signals(impl Into<Vec<Signal>>);
    text "SIGINT, SIGTERM", accepts "signal names, with or without `SIG`; at least one";
    check check::shutdown_signals;

    /// The signals that make the master replace its workers slot by slot (rolling reload);
    /// empty turns reload by signal off. None may also be a shutdown signal.
    reload_signals: Vec<Signal> as &[Signal] = vec![Signal::SIGUSR2];
    set with_reload_signals(impl Into<Vec<Signal>>);
    text "SIGUSR2", accepts "signal names, with or without `SIG`; may be empty";
    check check::reload_signals;

    /// The signals that make the master upgrade itself: start the executable on disk as a
    /// new master, hand it the listening sockets, and leave once it serves (as `clusterctl
    /// upgrade` does). Empty turns upgrade by signal off. A signal also listed in `signals`
    /// or `reload_signals` does what that list says.
    upgrade_signals: Vec<Signal> as &[Signal] = vec![Signal::SIGUSR1];
    set with_upgrade_signals(impl Into<Vec<Signal>>);
    text "SIGUSR1", accepts "signal names, with or without `SIG`; may be empty";
    check check::reload_signals;

    /// How long the new master of an upgrade has to get `min_ready` workers ready; past it
    /// the upgrade is given up and the old master serves on.
    upgrade_timeout: Duration = Duration::from_secs(60);
    set with_upgrade_timeout(Duration);
    text "1m", accepts "a positive duration";
    check check::upgrade_timeout;

    /// How many slots a rolling reload replaces at once.
    reload_parallelism: usize = 1;
    set with_reload_parallelism(usize);
    text "1", accepts "a whole number, at least 1";
    check check::reload_parallelism;

    /// Watch the executable on disk and run a rolling reload when a new build replaces it:
    /// the development loop, with `cargo build` in another terminal and the sockets open
    /// throughout. Off by default.
    ///
    /// The master watches the executable's directory (inotify), so a build renamed over the
    /// file is seen as well as one written in place; it reloads only once the file has not
    /// changed for `watch_debounce`, is executable, is a complete ELF file when it is one,
    /// and differs from the build the workers were last started from. A replacement that
    /// fails to start rolls back as any reload does.
    watch: bool = false;
    set with_watch(bool);
    text "false", accepts "`true` or `false`";

    /// With `watch`: how long the executable must stay unchanged before the reload starts, so
    /// that a binary still being written is never started.
    watch_debounce: Duration = Duration::from_millis(500);
    set with_watch_debounce(Duration);
    text "500ms", accepts "a duration from 10ms to 60s";
    // Below 10 ms every write of a linker would count as the end of the build; beyond a
    // minute the loop is no longer interactive, and a writer that slow is better served by a
    // rename.
    check |quiet: &Duration| if (Duration::from_millis(10)..=Duration::from_secs(60)).contains(quiet) {
        Ok(())
    } else {
        Err(format!(
            "{} is out of range; use from 10ms (shorter would take a pause between two writes for the end of the build) to 60s",
            duration_text(quiet)
        ))
    };

    /// SIGTTIN adds one worker to the default group and SIGTTOU removes one (never the last),
    /// as in gunicorn. On by default.
    ///
    /// The master then always handles both signals, whose default action would stop it: a
    /// master running in the background of an interactive shell that reads from the
    /// terminal (or writes to it under `stty tostop`) is no longer stopped by the kernel but
    /// scaled, once per attempt. Turn this off to keep the shell's job control. A signal also
    /// listed in `signals` or `reload_signals` does what those lists say instead.
    scale_signals: bool = true;
    set with_scale_signals(bool);
    text "true", accepts "`true` or `false`";

    /// How connections of the addresses workers `listen` on are spread over them; a worker
    /// can override it per address with `listen_with`.
    balance: Balance = Balance::Shared;
    set with_balance(Balance);
    text "shared", accepts "`shared`, `round-robin`, `least-connections`, `sticky`, `sticky-key` or `reuseport`";

    /// With a policy where the master accepts (`round-robin`, `least-connections`, `sticky`,
    /// `sticky-key`):
    /// under load, its rounds of accepts are at least this far apart (0 turns it off).
    ///
    /// A connection that arrives after a quiet spell of this length is handed out at once, so
    /// an idle server adds no latency; under load each round hands every worker its share in
    /// one message, so the master and the workers wake once per round instead of once per
    /// connection. Rounds follow tokio's timer, whose resolution is 1 ms.
    accept_coalescing: Duration = Duration::from_millis(1);
    set with_accept_coalescing(Duration);
    text "1ms", accepts "a duration of at most 100ms";
    // Beyond 100 ms the wait, not the work, would decide a connection's latency.
    check |window: &Duration| if *window <= Duration::from_millis(100) {
        Ok(())
    } else {
        Err(format!(
            "{} would hold new connections in the queue that long under load; use at most 100ms, or 0 to hand each connection out at once",
            duration_text(window)
        ))
    };

    /// With a policy where the master accepts: a worker that has left a connection it was
    /// handed unacknowledged for this long gets no new connection until it acknowledges
    /// (0 turns the check off).
    ///
    /// A worker acknowledges as soon as its channel reader takes the connection, in
    /// microseconds; one that has not for 100 ms is stalled (a long synchronous call, a
    /// SIGSTOP, a stuck runtime), and a connection handed to it would wait with it. The
    /// policy falls through to the next worker it would choose (with `sticky`, the next on
    /// the client's list); each connection steered away counts in
    /// `cluster_worker_violations_total{kind="ack_timeout"}`.
    ack_timeout: Duration = Duration::from_millis(100);
    set with_ack_timeout(Duration);
    text "100ms", accepts "a duration of at most 60s";
    check |timeout: &Duration| if *timeout <= Duration::from_secs(60) {
        Ok(())
    } else {
        Err(format!(
            "{} would let a stalled worker take new connections for that long; use at most 60s, or 0 to turn the check off",
            duration_text(timeout)
        ))
    };

    /// With `sticky-key`: the cookie whose value routes a connection (an HTTP/1.x request's
    /// `Cookie` header, read by the master before the worker gets the connection).
    ///
    /// The same value goes to the same worker slot while it is in the rotation, by rendezvous
    /// hashing as `sticky` does with the client's IP. A cookie wins over `sticky_header`,
    /// which wins over `sticky_proxy`'s address; a connection with none of them goes to the
    /// worker with the fewest open connections.
    sticky_cookie: Option<KeyName> as Option<&KeyName> = None;
    set with_sticky_cookie(Option<KeyName>);
    text "off", accepts "a cookie name (an HTTP token such as `sid`), or `off`";
    check sticky::check;

    /// With `sticky-key`: the HTTP/1.x request header whose value routes a connection
    /// (matched without case), when no `sticky_cookie` is found.
    sticky_header: Option<KeyName> as Option<&KeyName> = None;
    set with_sticky_header(Option<KeyName>);
    text "off", accepts "a header name (an HTTP token such as `x-session-id`), or `off`";
    check sticky::check;

    /// With `sticky-key`: every connection starts with a PROXY protocol header (version 1 or
    /// 2, from a load balancer such as haproxy's `send-proxy-v2`), and the client's IP in it
    /// routes the connection when no cookie or header does.
    ///
    /// The header stays in the connection for the worker: serve with
    /// `DrainOptions::proxy_protocol(true)` (`cluster::http`), which reads it, refuses a
    /// connection without one, and gives the client's address as the peer's.
    sticky_proxy: bool = false;
    set with_sticky_proxy(bool);
    text "false", accepts "`true` or `false`";

    /// With `sticky-key`: how long the master waits for a connection's first bytes to hold
    /// its key; a connection still without one then goes to the worker with the fewest open
    /// connections.
    ///
    /// Each connection is read (peeked, at most 8 KiB) in a task of its own, at most 1,024 at
    /// once (past that, new connections are handed out at once, without a key), so a client
    /// that sends nothing delays no other connection and is held at most this long.
    sticky_peek_timeout: Duration = Duration::from_secs(1);
    set with_sticky_peek_timeout(Duration);
    text "1s", accepts "a duration from 1ms to 60s";
    check |timeout: &Duration| if timeout.is_zero() || *timeout > Duration::from_secs(60) {
        Err(format!(
            "{} would {}; use a duration from 1ms to 60s, such as 1s",
            duration_text(timeout),
            if timeout.is_zero() { "never wait for a key" } else { "hold a silent client's connection that long" }
        ))
    } else {
        Ok(())
    };

    /// Which exits of a worker are restarted: always, only after a failure, or never.
    restart_mode: RestartMode = RestartMode::Permanent;
    at restart.mode;
    set with_restart_mode(RestartMode);
    text "permanent", accepts "`permanent`, `transient` or `temporary`";

    /// The delay before restarting a slot that keeps failing: from `base`, growing by `factor`
    /// up to `cap`, forgotten once a worker stayed up `reset_after` (see [`Backoff`]).
    backoff: Backoff = Backoff::default();
    at restart.backoff;
    set with_backoff(Backoff);
    text "base=100ms, factor=2, cap=5s, reset_after=10s",
        accepts "`field=value` pairs of base, factor, cap, reset_after";
    check check::backoff;

    /// How long a new worker has to report ready; one that does not is killed as a failed
    /// start.
    ready_timeout: Duration = Duration::from_secs(30);
    set with_ready_timeout(Duration);
    text "30s", accepts "a positive duration";
    check check::ready_timeout;

    /// How often each worker's runtime reports that it is alive. The report comes from a
    /// task on the worker's own runtime, so a runtime stuck in a busy loop stops reporting.
    heartbeat_interval: Duration = Duration::from_secs(1);
    set with_heartbeat_interval(Duration);
    text "1s", accepts "a positive duration";
    check check::heartbeat_interval;

    /// A worker whose runtime has not reported for this long is killed and restarted as hung,
    /// counted like a crash (like gunicorn's worker timeout); `None` (`off`) turns the watchdog
    /// off.
    heartbeat_timeout: Option<Duration> = Some(Duration::from_secs(30));
    set with_heartbeat_timeout(Option<Duration>);
    text "30s", accepts "a duration longer than `heartbeat_interval`, or `off`";
    check check::heartbeat_timeout;

    /// Replace a worker whose resident memory stays above this many bytes for
    /// `memory_samples` consecutive samples. The replacement is ready before the old worker
    /// drains, one slot at a time, and never counts toward `max_restarts`.
    max_memory: Option<u64> = None;
    set with_max_memory(Option<u64>);
    text "off", accepts "a byte size such as `512MiB`, or `off`";
    check check::max_memory;
    parse Bytes::parse_optional, print Bytes::optional_text;

    /// Consecutive samples over `max_memory` before a worker is replaced, so that a short
    /// spike does not recycle it.
    memory_samples: u32 = 3;
    set with_memory_samples(u32);
    text "3", accepts "a whole number, at least 1";
    check check::memory_samples;

    /// Recycle a worker once it has served this many requests (plus its share of
    /// `max_requests_jitter`), as gunicorn's `max_requests` does: for a slow leak the memory
    /// limit would catch late. Requests are counted by `cluster::http`, and by the app through
    /// `WorkerContext::count_request` for other protocols; the worker reports its count with
    /// its heartbeats, so a recycle comes up to one `heartbeat_interval` after the limit. The
    /// replacement is ready before the old worker drains, at most `reload_parallelism` at a
    /// time, and a recycle never counts toward `max_restarts`.
    max_requests: Option<u64> = None;
    set with_max_requests(Option<u64>);
    text "off", accepts "a whole number, at least 1, or `off`";
    check check::max_requests;

    /// Up to this many requests added to `max_requests`, drawn at random for each worker
    /// process, so that workers started together do not all recycle together.
    max_requests_jitter: u64 = 0;
    set with_max_requests_jitter(u64);
    text "0", accepts "a whole number";

    /// Recycle a worker once it has run this long (plus its share of `max_lifetime_jitter`),
    /// the reload way, at most `reload_parallelism` at a time; never counts toward
    /// `max_restarts`.
    max_lifetime: Option<Duration> = None;
    set with_max_lifetime(Option<Duration>);
    text "off", accepts "a positive duration, or `off`";
    check check::max_lifetime;

    /// Up to this much time added to `max_lifetime`, drawn at random for each worker process.
    max_lifetime_jitter: Duration = Duration::ZERO;
    set with_max_lifetime_jitter(Duration);
    text "0s", accepts "a duration";
    check check::not_huge;

    /// How often the master reads each worker's memory and CPU from /proc.
    sample_interval: Duration = Duration::from_secs(1);
    set with_sample_interval(Duration);
    text "1s", accepts "a positive duration";
    check check::sample_interval;

    /// Autoscale the default group between `MIN..MAX` workers on its load (off by default;
    /// a group's own is `GroupOptions::with_autoscale`); `count` is the starting size,
    /// brought into the range.
    ///
    /// The master grows the group when its workers' average CPU, event-loop lag or open
    /// connections stay above `autoscale_up_cpu`, `autoscale_up_lag` or
    /// `autoscale_up_connections` over `autoscale_up_window`, and removes its least busy
    /// worker, gracefully, after `autoscale_down_window` of quiet; never during a reload or
    /// a recycle of the group.
    autoscale: Option<Autoscale> = None;
    set with_autoscale(Option<Autoscale>);
    text "off", accepts "`MIN..MAX` such as `2..8` (1 ≤ MIN ≤ MAX), or `off`";
    check check::autoscale;

    /// Grow an autoscaled group when its workers use more than this percentage of one core
    /// each, on average over `autoscale_up_window`; `off` ignores CPU.
    ///
    /// 80 leaves a worker on a current-thread runtime headroom before it saturates its one
    /// core. A worker on the default multi-threaded runtime can use more than one core:
    /// raise it (to 80 × its threads) to scale on saturation rather than on one busy core.
    autoscale_up_cpu: Option<u32> = Some(80);
    set with_autoscale_up_cpu(Option<u32>);
    text "80", accepts "a whole percentage of one core, at least 1, or `off`";
    check check::autoscale_up_cpu;

    /// Grow an autoscaled group when its workers' event-loop lag (how late their heartbeat
    /// ran) stays above this on average over `autoscale_up_window`; `off` ignores it. 100 ms
    /// is far above an idle runtime's lag (under 1 ms) and a wait every request feels.
    autoscale_up_lag: Option<Duration> = Some(Duration::from_millis(100));
    set with_autoscale_up_lag(Option<Duration>);
    text "100ms", accepts "a positive duration, or `off`";
    check check::autoscale_up_lag;

    /// Grow an autoscaled group when its workers hold more than this many open connections
    /// each, on average over `autoscale_up_window`; off by default, since what is many
    /// depends on the app.
    autoscale_up_connections: Option<u64> = None;
    set with_autoscale_up_connections(Option<u64>);
    text "off", accepts "a whole number, at least 1, or `off`";
    check check::autoscale_up_connections;

    /// How long the load must stay high, on average, before an autoscaled group grows: long
    /// enough that a burst does not start a worker, short enough to follow a rising load.
    autoscale_up_window: Duration = Duration::from_secs(10);
    set with_autoscale_up_window(Duration);
    text "10s", accepts "a positive duration";
    check check::autoscale_window;

    /// How long every sample must show a quiet group (one worker less would run at under
    /// half of each threshold) before its least busy worker is removed; longer than the
    /// up window, since a worker removed too early is started again a window later.
    autoscale_down_window: Duration = Duration::from_secs(60);
    set with_autoscale_down_window(Duration);
    text "1m", accepts "a positive duration";
    check check::autoscale_window;

    /// After each change of an autoscaled group's size, how long its figures are ignored:
    /// the new worker starts and the load moves over before the next window begins.
    autoscale_cooldown: Duration = Duration::from_secs(15);
    set with_autoscale_cooldown(Duration);
    text "15s", accepts "a duration";
    check check::not_huge;

    /// Serve `/status`, `/metrics`, `/healthz` and `/readyz` from the master on this address;
    /// a bare port is on 127.0.0.1.
    ///
    /// A bare port means loopback because the status server is for the machine's own
    /// monitoring: `/status` names every worker's pid and `/metrics` carries the app's own
    /// figures. An address other than loopback (`0.0.0.0:8001`, a pod IP for Kubernetes
    /// probes) lets every host that can reach it read them: set `status_token` then, which
    /// the master warns about at start if missing. Host names are refused: resolving one is a
    /// run-time matter that could fail later.
    status_addr: Option<SocketAddr> = None;
    set with_status_addr(Option<SocketAddr>);
    text "off", accepts "a port such as `8001` (on 127.0.0.1), an IP address and port such as `0.0.0.0:8001`, or `off`";
    parse StatusAddr::parse_optional, print StatusAddr::optional_text;

    /// When set, `/status` and `/metrics` answer only requests with `Authorization: Bearer
    /// <token>`; `/healthz` and `/readyz` stay open.
    ///
    /// The probes stay open because an orchestrator probes without secrets (a Kubernetes
    /// `httpGet` probe could carry the header only by writing the token into the pod spec)
    /// and they tell nothing but "up" and "ready". A wrong or missing token gets 401 with
    /// `WWW-Authenticate: Bearer`. The token is compared in constant time and never printed:
    /// [`StatusToken`]'s `Debug` redacts it and no error quotes it. Prefer setting it at run
    /// time (`set_from_str("status_token", &std::env::var("STATUS_TOKEN")?)`) to writing it
    /// in `#[cluster::main]`, which puts it in the binary and the source.
    status_token: Option<StatusToken> as Option<&StatusToken> = None;
    set with_status_token(Option<StatusToken>);
    text "off", accepts "a bearer token (letters, digits, `-._~+/`, then `=` padding), or `off`";
    check token::check;

    /// `/readyz` answers 200 when at least this many workers are ready.
    min_ready: usize = 1;
    set with_min_ready(usize);
    text "1", accepts "a whole number";

    /// Whether each line a worker writes is forwarded with its group and slot as a prefix.
    worker_prefix_logs: bool = true;
    set with_worker_prefix_logs(bool);
    text "true", accepts "`true` or `false`";

    /// The user workers run as (a name or a uid); its supplementary groups come along, as
    /// with `initgroups`. The master stays as it was started.
    ///
    /// The master, started as root, binds the ports workers ask for (a port below 1024
    /// too) and hands the sockets over, so workers need no privilege to serve; it resolves
    /// the name at start, and a user that does not exist, or a master that is not root,
    /// stops it with exit code 2 before any worker starts. A group's own `user` replaces it
    /// (see [`GroupOptions::with_user`](crate::GroupOptions::with_user)).
    user: Option<Account> as Option<&Account> = None;
    set with_user(Option<Account>);
    text "off", accepts "a user name such as `nobody`, a numeric uid, or `off`";

    /// The group workers run as (a name or a gid); `off` is the primary group of `user`.
    group: Option<Account> as Option<&Account> = None;
    set with_group(Option<Account>);
    text "off", accepts "a group name such as `nogroup`, a numeric gid, or `off`";

    /// The workers' file mode creation mask, in octal; `off` inherits the master's.
    umask: Option<Umask> = None;
    set with_umask(Option<Umask>);
    text "off", accepts "up to four octal digits such as `0027`, or `off`";

    /// Resource limits of the workers, `name=soft:hard` or `name=value` for both: `nofile`,
    /// `nproc`, `core`, `as`; limits not named are inherited from the master.
    ///
    /// `core` and `as` are byte sizes (`as=2GiB`), every value may be `unlimited`. A hard
    /// limit above the master's needs a master running as root. A group's own limits
    /// replace these one by one (see
    /// [`GroupOptions::with_rlimits`](crate::GroupOptions::with_rlimits)).
    rlimits: Rlimits as &Rlimits = Rlimits::new();
    set with_rlimits(Rlimits);
    text "off", accepts "`name=value` pairs of nofile, nproc, core, as (`soft:hard`, one value, or `unlimited`), or `off`";

    /// The workers' nice value, from -20 to 19; `off` inherits the master's. Below the
    /// master's own needs a master running as root.
    nice: Option<Nice> = None;
    set with_nice(Option<Nice>);
    text "off", accepts "a whole number from -20 to 19, or `off`";

    /// The CPUs workers run on: `spread` pins slot i to the (i mod n)-th of the n CPUs the
    /// master may use; a list (`0-3, 6`) holds every worker to those CPUs; `off` inherits.
    cpu_affinity: CpuAffinity as &CpuAffinity = CpuAffinity::Off;
    set with_cpu_affinity(CpuAffinity);
    text "off", accepts "`off`, `spread`, or CPU numbers and ranges such as `0-3, 6`";

    /// Sets `no_new_privs` on workers: neither they nor anything they run can gain a
    /// privilege through a set-user-id file or file capabilities.
    no_new_privs: bool = false;
    set with_no_new_privs(bool);
    text "false", accepts "`true` or `false`";

    /// Start workers with an empty environment but for the variables of `env_allow`, the
    /// cluster's own (`CLUSTER_WORKER_*`, `CLUSTER_IPC_FD`, `CLUSTER_HEARTBEAT_MS`) and
    /// their group's `with_env`.
    env_clear: bool = false;
    set with_env_clear(bool);
    text "false", accepts "`true` or `false`";

    /// With `env_clear`: the master's variables workers still get; `NAME*` allows a prefix.
    env_allow: EnvAllow as &EnvAllow = EnvAllow::default();
    set with_env_allow(EnvAllow);
    text "", accepts "variable names, `NAME*` for a prefix (`PATH, LANG, LC_*`); may be empty";
    /// How many of each slot's last output lines the master keeps for `clusterctl logs`,
    /// within 1 KiB of text per line (1,000 lines and 1 MiB by default); 0 keeps none.
    ///
    /// A line can be up to 64 KiB long, so a slot of long lines keeps fewer of them: the
    /// oldest go first when either bound is reached, and the newest line is always kept. The
    /// lines belong to the slot, not to one process: a replacement's follow its
    /// predecessor's, each with the prefix of the worker that wrote it. Only output that the
    /// master forwards is kept, so with `worker_prefix_logs` off (workers writing to the
    /// master's stdout and stderr directly) there is nothing to keep.
    log_lines: usize = 1000;
    set with_log_lines(usize);
    text "1000", accepts "a whole number of lines per slot, at most 100000; 0 keeps none";
    check check::log_lines;
    /// The most keys the master's store holds; a write of a new key past it is refused
    /// with `ErrorKind::Store` (delete keys or give them a TTL).
    store_max_keys: u64 = 100_000;
    set with_store_max_keys(u64);
    text "100000", accepts "a whole number, at least 1";
    check check::store_limit;

    /// The most bytes of keys and values the master's store holds; a write past it is
    /// refused with `ErrorKind::Store`.
    store_max_bytes: u64 = 64 << 20;
    set with_store_max_bytes(u64);
    text "64MiB", accepts "a byte size such as `64MiB`, at least 1 byte";
    check check::store_limit;
    parse Bytes::parse, print Bytes::text;

    /// The most topics of the master's store one worker (or the master) subscribes to at
    /// once; a subscription past it is refused with `ErrorKind::Store`.
    store_subscriptions: u64 = 64;
    set with_store_subscriptions(u64);
    text "64", accepts "a whole number, at least 1";
    check check::store_limit;

    /// Published values that wait for one subscriber at most; a subscriber that has this
    /// many unread loses the next ones and is told how many (`StoreEvent::Lagged`), so that
    /// it never holds up the master or the publishers.
    store_queue: u64 = 1024;
    set with_store_queue(u64);
    text "1024", accepts "a whole number, at least 1";
    check check::store_limit;

    /// A file the master's store is saved to (written whole to a temporary file, then
    /// renamed over it) when the cluster stops and every `store_snapshot_interval`, and
    /// loaded from when the master starts; `off`: the store lives only as long as the master.
    store_snapshot: Option<PathBuf> as Option<&Path> = None;
    set with_store_snapshot(Option<PathBuf>);
    text "off", accepts "a file path, or `off`";

    /// How often the master's store is saved to `store_snapshot` while the cluster runs;
    /// `off`: only when it stops.
    store_snapshot_interval: Option<Duration> = Some(Duration::from_secs(60));
    set with_store_snapshot_interval(Option<Duration>);
    text "1m", accepts "a duration such as `30s`, or `off`";
    check check::store_snapshot_interval;

    /// The cluster's name, which names its control socket and which `clusterctl -n` finds it
    /// by; `auto` is the executable's file name.
    name: ClusterName as &ClusterName = ClusterName::default();
    set with_name(impl Into<ClusterName>);
    text "auto", accepts "`auto`, or up to 64 characters without `/`, spaces or a leading `.`";
    check crate::options::control_path::check_cluster_name;

    /// Where the master serves the control socket that `clusterctl` talks to; `off` turns it
    /// off.
    ///
    /// `auto` is `$XDG_RUNTIME_DIR/cluster/<name>.sock` when that variable is set, else
    /// `/run/cluster/<name>.sock` for root, else `<tmp>/cluster-<uid>/<name>.sock`. The socket
    /// is mode 0600, its directory is created mode 0700, and only the master's user and root
    /// may use it. `with_control_path(ControlPath::Off)` (or `None::<PathBuf>`) turns it off.
    control_path: ControlPath as &ControlPath = ControlPath::Auto;
    set with_control_path(impl Into<ControlPath>);
    text "auto", accepts "`auto`, `off` or a socket path";

    /// A TOML file of options (`grace = "3s"`), read by the master at start and at each
    /// reload, over the code's options and under the environment's; `CLUSTER_CONFIG` names one
    /// too.
    ///
    /// Its keys are the options' names and its values their text forms (a number may be a
    /// TOML integer, a list an array of strings); a bad value or unknown key is an error
    /// naming the file and line. See [`Resolved`](crate::options::Resolved).
    config_file: Option<PathBuf> as Option<&Path> = None;
    set with_config_file(Option<PathBuf>);
    text "off", accepts "the path of a TOML file, or `off`";
}
