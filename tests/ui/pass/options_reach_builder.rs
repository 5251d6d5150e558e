// Every option set through `configure` reaches the builder with the value written: `crate`
// points at a stand-in whose `run` records the options instead of starting a cluster, and
// `main` checks them (trybuild runs this program, so a wrong value fails the test).
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cluster::{Balance, Options, Signal};

/// A stand-in for `cluster::Cluster` with only what the generated code calls.
mod stand_in {
    use std::marker::PhantomData;
    use std::process::ExitCode;
    use std::sync::Mutex;

    pub use cluster::{Balance, Signal, options};

    /// The options of the last `run`.
    pub static RAN_WITH: Mutex<Option<cluster::Options>> = Mutex::new(None);

    pub struct Cluster<D, U> {
        options: cluster::Options,
        messages: PhantomData<(D, U)>,
    }

    impl<D, U> Cluster<D, U> {
        pub fn new() -> Self {
            Cluster {
                options: cluster::Options::new(),
                messages: PhantomData,
            }
        }

        pub fn worker<F, Fut>(self, _f: F) -> Self
        where
            F: Fn(cluster::WorkerContext<D, U>) -> Fut,
            Fut: Future<Output = ()>,
        {
            self
        }

        pub fn configure(mut self, f: impl FnOnce(cluster::Options) -> cluster::Options) -> Self {
            self.options = f(self.options);
            self
        }

        pub fn run(self) -> ExitCode {
            *RAN_WITH.lock().unwrap() = Some(self.options);
            ExitCode::SUCCESS
        }
    }
}

#[cluster::main(
    crate = "stand_in",
    balance = "least-connections",
    accept_coalescing = "2ms",
    reload_signals = [SIGUSR2, "hup"],
    reload_parallelism = 3,
    ready_timeout = "10s",
    heartbeat_interval = 500,
    heartbeat_timeout = "5s",
    max_memory = "512MiB",
    memory_samples = 5,
    sample_interval = "2s",
    status_addr = "127.0.0.1:8001",
    status_token = "s3cr3t-Token_1",
    min_ready = 0,
    worker_prefix_logs = false,
    autoscale = "2..8",
    autoscale_up_lag = "50ms",
)]
fn every_option() {
    #[worker]
    async fn worker() {}
}

// The other spellings, and "off" to override a value set earlier (by `Master::options()` in
// the trait style).
#[cluster::main(
    crate = "stand_in",
    balance = ReusePort,
    accept_coalescing = 0,
    reload_signals = [],
    heartbeat_timeout = "off",
    max_memory = 100_000,
    status_addr = "[::1]:9000",
    worker_prefix_logs = true,
)]
fn other_spellings() {
    #[worker]
    async fn worker() {}
}

// A bare port is on 127.0.0.1; a token of digits only is written bare, like any number.
#[cluster::main(crate = "stand_in", status_addr = 9100, status_token = 20250101)]
fn status_spellings() {
    #[worker]
    async fn worker() {}
}

#[cluster::main(
    crate = "stand_in",
    max_memory = "100MB",
    status_addr = "off",
    balance = "round-robin",
    accept_coalescing = 100
)]
fn more_spellings() {
    #[worker]
    async fn worker() {}
}

fn ran_with(app: fn() -> ExitCode) -> Options {
    assert_eq!(app(), ExitCode::SUCCESS);
    stand_in::RAN_WITH.lock().unwrap().take().unwrap()
}

fn main() {
    let o = ran_with(every_option);
    assert_eq!(o.balance(), Balance::LeastConnections);
    assert_eq!(o.accept_coalescing(), Duration::from_millis(2));
    assert_eq!(o.reload_signals(), [Signal::SIGUSR2, Signal::SIGHUP]);
    assert_eq!(o.reload_parallelism(), 3);
    assert_eq!(o.ready_timeout(), Duration::from_secs(10));
    assert_eq!(o.heartbeat_interval(), Duration::from_millis(500));
    assert_eq!(o.heartbeat_timeout(), Some(Duration::from_secs(5)));
    assert_eq!(o.max_memory(), Some(512 * 1024 * 1024));
    assert_eq!(o.memory_samples(), 5);
    assert_eq!(o.sample_interval(), Duration::from_secs(2));
    let addr: SocketAddr = "127.0.0.1:8001".parse().unwrap();
    assert_eq!(o.status_addr(), Some(addr));
    assert_eq!(
        o.status_token().map(|t| t.as_str()),
        Some("s3cr3t-Token_1")
    );
    assert_eq!(o.min_ready(), 0);
    assert!(!o.worker_prefix_logs());
    assert_eq!(o.autoscale(), Some(cluster::options::Autoscale::new(2, 8)));
    assert_eq!(o.autoscale_up_lag(), Some(Duration::from_millis(50)));
    assert!(o.validate().is_ok());

    let o = ran_with(other_spellings);
    assert_eq!(o.balance(), Balance::ReusePort);
    assert_eq!(o.accept_coalescing(), Duration::ZERO);
    assert!(o.reload_signals().is_empty());
    assert_eq!(o.heartbeat_timeout(), None);
    assert_eq!(o.max_memory(), Some(100_000));
    let addr: SocketAddr = "[::1]:9000".parse().unwrap();
    assert_eq!(o.status_addr(), Some(addr));
    assert!(o.worker_prefix_logs());
    assert!(o.validate().is_ok());

    let o = ran_with(status_spellings);
    let addr: SocketAddr = "127.0.0.1:9100".parse().unwrap();
    assert_eq!(o.status_addr(), Some(addr));
    assert_eq!(o.status_token().map(|t| t.as_str()), Some("20250101"));
    assert!(o.validate().is_ok());

    let o = ran_with(more_spellings);
    assert_eq!(o.max_memory(), Some(100_000_000));
    assert_eq!(o.status_addr(), None);
    assert_eq!(o.balance(), Balance::RoundRobin);
    assert_eq!(o.accept_coalescing(), Duration::from_millis(100));
    assert!(o.validate().is_ok());
}
