//! The master's store against Redis, in the same run: `incr` from 4 workers.
//!
//! Run with `cargo bench --bench store` (needs `redis-server` on the PATH: Debian's
//! `redis-server` package). The bench binary is a cluster of 4 workers; its master starts a
//! `redis-server` on a free loopback port (no persistence), and each worker opens one
//! multiplexed connection to it before the rounds. A round runs both backends, in alternating
//! order (store first in even rounds, Redis first in odd ones): the master tells every worker
//! to run `STORE_BENCH_OPS` (default 20,000) increments of one key with `STORE_BENCH_INFLIGHT`
//! (default 8) in flight, and times from the order to the last worker's report. Each backend's
//! median over 5 rounds is printed in operations per second, and the store's ratio to Redis.
//!
//! Both go through a socket to another process: the store over the worker's channel to the
//! master (bincode frames, one task applying the operations), Redis over TCP to
//! `redis-server` (RESP, single-threaded).

use std::time::{Duration, Instant};

use cluster::__private::tokio;
use cluster::{Cluster, Event, Incoming, MasterContext, Options, WorkerContext};
use serde::{Deserialize, Serialize};

const WORKERS: usize = 4;
const ROUNDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Backend {
    Store,
    Redis,
}

#[derive(Debug, Serialize, Deserialize)]
enum Down {
    /// Connect to Redis on this port, then answer `Up::Connected`.
    Connect(u16),
    /// Run `ops` increments on `backend` with `inflight` at once, then answer `Up::Done`.
    Run {
        backend: Backend,
        ops: u64,
        inflight: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Up {
    Connected,
    Done { errors: u64 },
    Failed(String),
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn worker(ctx: WorkerContext<Down, Up>) -> Result<(), String> {
    let store = ctx.store();
    let mut redis: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        let msg = tokio::select! {
            msg = ctx.recv() => msg,
            () = ctx.shutdown_requested() => None,
        };
        let Some(Incoming::Message(msg)) = msg else {
            return Ok(());
        };
        let answer = match msg {
            Down::Connect(port) => {
                let connected = async {
                    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
                    client.get_multiplexed_async_connection().await
                }
                .await;
                match connected {
                    Ok(connection) => {
                        redis = Some(connection);
                        Up::Connected
                    }
                    Err(e) => Up::Failed(format!("cannot connect to redis: {e}")),
                }
            }
            Down::Run {
                backend,
                ops,
                inflight,
            } => {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..inflight {
                    let share = ops / inflight + u64::from(i < ops % inflight);
                    let store = store.clone();
                    let redis = redis.clone();
                    tasks.spawn(async move {
                        let mut errors = 0;
                        for _ in 0..share {
                            let ok = match (backend, &redis) {
                                (Backend::Store, _) => store.incr("bench", 1).await.is_ok(),
                                (Backend::Redis, Some(connection)) => {
                                    let mut connection = connection.clone();
                                    redis::cmd("INCR")
                                        .arg("bench")
                                        .query_async::<i64>(&mut connection)
                                        .await
                                        .is_ok()
                                }
                                (Backend::Redis, None) => false,
                            };
                            errors += u64::from(!ok);
                        }
                        errors
                    });
                }
                let mut errors = 0;
                while let Some(done) = tasks.join_next().await {
                    errors += done.unwrap_or(1);
                }
                Up::Done { errors }
            }
        };
        ctx.send(&answer).await.map_err(|e| e.to_string())?;
    }
}

/// Waits for one message from each worker; fails on `Up::Failed` or errors.
async fn collect(ctx: &MasterContext<Down, Up>) -> Result<(), String> {
    let mut answered = 0;
    while answered < WORKERS {
        match ctx.next_event().await {
            Some(Event::Message {
                msg: Up::Failed(e),
                from,
            }) => return Err(format!("{from}: {e}")),
            Some(Event::Message {
                msg: Up::Done { errors },
                from,
            }) if errors > 0 => {
                return Err(format!("{from}: {errors} operations failed"));
            }
            Some(Event::Message { .. }) => answered += 1,
            Some(_) => {}
            None => return Err("the cluster stopped".into()),
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Kills the Redis server when the benchmark ends, however it ends.
struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(ctx: &MasterContext<Down, Up>) -> Result<(), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let _redis = RedisServer(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server (apt-get install redis-server): {e}")
            })?,
    );
    // Up once it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!("redis-server did not listen on {port} within 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ready = 0;
    while ready < WORKERS {
        match ctx.next_event().await {
            Some(Event::Ready { .. }) => ready += 1,
            Some(_) => {}
            None => return Err("the cluster stopped".into()),
        }
    }
    ctx.broadcast(&Down::Connect(port))
        .await
        .map_err(|e| e.to_string())?;
    collect(ctx).await?;
    let ops = env_num("STORE_BENCH_OPS", 20_000);
    let inflight = env_num("STORE_BENCH_INFLIGHT", 8);
    println!(
        "incr of one key from {WORKERS} workers, {ops} each, {inflight} in flight per worker; {ROUNDS} rounds, alternating order"
    );
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [Backend::Store, Backend::Redis]
        } else {
            [Backend::Redis, Backend::Store]
        };
        for backend in order {
            let started = Instant::now();
            ctx.broadcast(&Down::Run {
                backend,
                ops,
                inflight,
            })
            .await
            .map_err(|e| e.to_string())?;
            collect(ctx).await?;
            let rate = (WORKERS as u64 * ops) as f64 / started.elapsed().as_secs_f64();
            println!("round {round}: {backend:?} {rate:.0} ops/s");
            rates[usize::from(backend == Backend::Redis)].push(rate);
        }
    }
    let store = median(&mut rates[0]);
    let redis = median(&mut rates[1]);
    println!(
        "median: store {store:.0} ops/s, redis {redis:.0} ops/s, store/redis {:.2}",
        store / redis
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    Cluster::<Down, Up>::new()
        .configure(|o: Options| o.with_count(WORKERS))
        .master(|ctx: MasterContext<Down, Up>| async move {
            let result = bench(&ctx).await;
            ctx.shutdown();
            result
        })
        .worker(worker)
        .run()
}
