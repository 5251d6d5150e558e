//! Tests of the status server against a fake [`StatusSource`](super::StatusSource): each
//! route, the time bounds with a hung worker or supervisor, and shutdown. In their own file
//! so that `mod.rs` reads as the server alone.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::*;
use crate::observe::metrics::tests::{check_openmetrics, status, worker};

/// Any test wait longer than this is a hang.
const BOUND: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Fake {
    status: Mutex<Option<ClusterStatus>>,
    metrics: Vec<WorkerMetricsText>,
    hang_metrics: bool,
    hang_status: bool,
}

impl StatusSource for Fake {
    async fn status(&self) -> Option<ClusterStatus> {
        if self.hang_status {
            std::future::pending::<()>().await;
        }
        self.status.lock().unwrap().clone()
    }

    async fn worker_metrics(&self, _timeout: Duration) -> Vec<WorkerMetricsText> {
        if self.hang_metrics {
            // A source that ignores its own timeout: the server must bound it anyway.
            std::future::pending::<()>().await;
        }
        self.metrics.clone()
    }
}

fn fake() -> Fake {
    let mut text = String::from("# HELP jobs Jobs done.\n# TYPE jobs counter\n");
    text.push_str("jobs_total{kind=\"a\"} 3\n# EOF\n");
    Fake {
        status: Mutex::new(Some(status())),
        metrics: vec![WorkerMetricsText {
            group: "web".into(),
            slot: 0,
            text,
        }],
        ..Fake::default()
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(source: Fake, options: StatusOptions) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_status(
        listener,
        Arc::new(source),
        options,
        shutdown.clone(),
    ));
    Server {
        addr,
        shutdown,
        task,
    }
}

struct Reply {
    code: u16,
    headers: String,
    body: String,
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    tokio::time::timeout(BOUND, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (headers, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = headers.split(' ').nth(1).unwrap().parse().unwrap();
        Reply {
            code,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    })
    .await
    .expect("request hung")
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

async fn stop(server: Server) {
    server.shutdown.cancel();
    tokio::time::timeout(BOUND, server.task)
        .await
        .expect("server did not stop")
        .unwrap();
}

#[tokio::test]
async fn status_is_the_snapshot_as_json() {
    let server = start(fake(), StatusOptions::default()).await;
    let reply = get(server.addr, "/status").await;
    assert_eq!(reply.code, 200);
    assert!(reply.headers.contains("content-type: application/json"));
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let master = &json["master"];
    assert_eq!(master["pid"], 4242);
    assert_eq!(master["uptime_ms"], 61_500);
    assert_eq!(master["restarts_total"], 5);
    assert_eq!(master["reloads_total"], 2);
    let workers = json["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let first = &workers[0];
    assert_eq!(first["group"], "web");
    assert_eq!(first["slot"], 0);
    assert_eq!(first["pid"], 4000);
    assert_eq!(first["generation"], 2);
    assert_eq!(first["state"], "ready");
    assert_eq!(first["restarts"], 1);
    assert_eq!(first["uptime_ms"], 1500);
    assert_eq!(first["rss_bytes"], 10_485_760);
    assert_eq!(first["cpu_seconds"], 1.25);
    assert_eq!(first["connections"], 3);
    assert_eq!(workers[1]["state"], "starting");
    assert_eq!(json["restarts"][0]["reason"], "crash");
    stop(server).await;
}

#[tokio::test]
async fn metrics_have_the_cluster_and_the_workers() {
    let server = start(fake(), StatusOptions::default()).await;
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.code, 200);
    assert!(
        reply
            .headers
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    check_openmetrics(&reply.body).unwrap();
    assert!(reply.body.contains("cluster_workers{state=\"ready\"} 1\n"));
    assert!(reply.body.contains("cluster_reloads_total 2\n"));
    assert!(
        reply
            .body
            .contains("jobs_total{group=\"web\",slot=\"0\",kind=\"a\"} 3\n")
    );
    stop(server).await;
}

#[tokio::test]
async fn readyz_follows_the_ready_count() {
    let server = start(fake(), StatusOptions::default()).await;
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.code, 200, "{}", reply.body);
    stop(server).await;

    let options = StatusOptions {
        min_ready: 2,
        ..StatusOptions::default()
    };
    let server = start(fake(), options.clone()).await;
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.code, 503);
    assert!(reply.body.contains("1 of the 2"), "{}", reply.body);
    stop(server).await;

    let source = fake();
    source
        .status
        .lock()
        .unwrap()
        .as_mut()
        .unwrap()
        .workers
        .push(worker(WorkerState::Ready, 2));
    let server = start(source, options).await;
    assert_eq!(get(server.addr, "/readyz").await.code, 200);
    stop(server).await;
}

#[tokio::test]
async fn healthz_is_ok_while_the_master_runs() {
    let server = start(fake(), StatusOptions::default()).await;
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.code, 200);
    assert_eq!(reply.body, "ok");
    stop(server).await;
}

#[tokio::test]
async fn a_stopping_master_is_neither_healthy_nor_ready() {
    let source = fake();
    *source.status.lock().unwrap() = None;
    let server = start(source, StatusOptions::default()).await;
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        let reply = get(server.addr, path).await;
        assert_eq!(reply.code, 503, "{path}");
        assert_eq!(reply.body, "master is stopping\n");
    }
    stop(server).await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let server = start(fake(), StatusOptions::default()).await;
    assert_eq!(get(server.addr, "/").await.code, 404);
    assert_eq!(get(server.addr, "/statusx").await.code, 404);
    assert_eq!(get(server.addr, "/metrics?x=1").await.code, 200);
    let reply = request(server.addr, "POST", "/status").await;
    assert_eq!(reply.code, 405);
    assert!(reply.headers.contains("allow: get, head"));
    stop(server).await;
}

#[tokio::test]
async fn hung_worker_metrics_do_not_stall_the_scrape() {
    let source = Fake {
        hang_metrics: true,
        ..fake()
    };
    let options = StatusOptions {
        min_ready: 1,
        scrape_timeout: Duration::from_millis(200),
    };
    let bound = options.request_bound();
    let server = start(source, options).await;
    let started = std::time::Instant::now();
    let reply = get(server.addr, "/metrics").await;
    let took = started.elapsed();
    assert!(took >= bound - Duration::from_millis(50), "{took:?}");
    assert!(took < bound + Duration::from_secs(1), "{took:?}");
    assert_eq!(reply.code, 200);
    check_openmetrics(&reply.body).unwrap();
    assert!(reply.body.contains("cluster_master_uptime_seconds 61.5\n"));
    assert!(!reply.body.contains("jobs_total"));
    // The rest of the server is unaffected meanwhile.
    assert_eq!(get(server.addr, "/healthz").await.code, 200);
    stop(server).await;
}

#[tokio::test]
async fn a_hung_supervisor_gives_503_within_the_bound() {
    let source = Fake {
        hang_status: true,
        ..fake()
    };
    let options = StatusOptions {
        min_ready: 1,
        scrape_timeout: Duration::from_millis(100),
    };
    let bound = options.request_bound();
    let server = start(source, options).await;
    let started = std::time::Instant::now();
    let reply = get(server.addr, "/status").await;
    assert!(started.elapsed() < bound + Duration::from_secs(1));
    assert_eq!(reply.code, 503);
    assert_eq!(reply.body, "master did not answer in time\n");
    stop(server).await;
}

#[tokio::test]
async fn connections_are_served_concurrently_and_shutdown_closes_idle_ones() {
    let source = Fake {
        hang_metrics: true,
        ..fake()
    };
    let options = StatusOptions {
        min_ready: 1,
        scrape_timeout: Duration::from_millis(300),
    };
    let server = start(source, options).await;
    // A scrape stuck on the workers does not hold up another connection.
    let addr = server.addr;
    let slow = tokio::spawn(async move { get(addr, "/metrics").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(server.addr, "/status").await.code, 200);
    assert!(
        !slow.is_finished(),
        "the slow scrape should still be waiting"
    );
    // An idle keep-alive connection must not keep the server from stopping.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0; 1024];
    let read = tokio::time::timeout(BOUND, idle.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    assert_eq!(slow.await.unwrap().code, 200);
    let started = std::time::Instant::now();
    stop(server).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // And the idle connection was closed.
    let read = tokio::time::timeout(BOUND, idle.read(&mut buffer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(read, 0);
}
