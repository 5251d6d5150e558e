// The Node reference for bench/http.sh: examples/http.rs's handler on Node's own cluster module.
//
//   NODE_POLICY=rr HOST=127.0.0.1 PORT=8000 WORKERS=2 node bench/node_http.js
//
// Every worker serves `/` -> 200 text/plain `Hello from worker <slot> (pid <pid>)` (slot
// 0..WORKERS-1, as examples/http numbers them) and 404 to anything else, with node:http.
// Environment: HOST (127.0.0.1), PORT (8000), WORKERS (one per CPU), NODE_POLICY:
//   rr    cluster.SCHED_RR: the primary accepts and hands connections out in turn (Node's
//         default everywhere but Windows)
//   none  cluster.SCHED_NONE: the workers accept from the shared socket themselves
// SIGTERM or SIGINT: the primary stops its workers and exits once they are gone (SIGKILL for any
// left after 2 s). A worker that dies once all are listening is replaced in its slot; one that
// dies before is a start failure: the primary stops the others and exits 1.
// No dependencies: node:cluster, node:http and node:os only.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const die = (msg) => {
  console.error(`node_http: ${msg}`);
  process.exit(2);
};

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 8000);

if (cluster.isPrimary) {
  const policies = { rr: cluster.SCHED_RR, none: cluster.SCHED_NONE };
  const policy = process.env.NODE_POLICY || 'rr';
  if (!(policy in policies)) die(`NODE_POLICY=${policy}: want rr or none`);
  const cpus = typeof os.availableParallelism === 'function'
    ? os.availableParallelism() : os.cpus().length;
  const workersEnv = process.env.WORKERS;
  if (workersEnv !== undefined && !/^[1-9][0-9]*$/.test(workersEnv)) {
    die(`WORKERS=${workersEnv}: want a positive integer`);
  }
  const workers = workersEnv === undefined ? cpus : Number(workersEnv);
  if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) die(`PORT=${process.env.PORT}: bad port`);

  // Read by the first fork (cluster.setupPrimary) and fixed from then on: set it before.
  cluster.schedulingPolicy = policies[policy];

  let listening = 0;
  let started = false;
  let stopping = false;
  const slotOf = new Map(); // worker id -> slot

  const fork = (slot) => {
    const w = cluster.fork({ NODE_HTTP_SLOT: String(slot) });
    slotOf.set(w.id, slot);
  };
  const stop = (code) => {
    if (stopping) return;
    stopping = true;
    const alive = Object.values(cluster.workers);
    if (alive.length === 0) process.exit(code);
    for (const w of alive) w.kill('SIGTERM');
    cluster.on('exit', () => {
      if (Object.keys(cluster.workers).length === 0) process.exit(code);
    });
    setTimeout(() => {
      for (const w of Object.values(cluster.workers)) w.process.kill('SIGKILL');
      process.exit(code);
    }, 2000).unref();
  };

  cluster.on('listening', () => {
    listening += 1;
    if (!started && listening === workers) {
      started = true;
      console.log(`node_http: listening on http://${HOST}:${PORT} (${policy}), ` +
        `${workers} workers, node ${process.version}, primary pid ${process.pid}`);
    }
  });
  cluster.on('exit', (w, code, signal) => {
    const slot = slotOf.get(w.id);
    slotOf.delete(w.id);
    if (stopping) return;
    const how = signal ? `signal ${signal}` : `code ${code}`;
    if (!started) {
      console.error(`node_http: worker ${slot} (pid ${w.process.pid}) exited with ${how} ` +
        'before every worker listened');
      stop(1);
      return;
    }
    console.error(`node_http: worker ${slot} (pid ${w.process.pid}) exited with ${how}; replacing it`);
    fork(slot);
  });
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));

  for (let slot = 0; slot < workers; slot++) fork(slot);
} else {
  const slot = process.env.NODE_HTTP_SLOT;
  // A Ctrl-C at the terminal reaches the whole group: let the primary do the stopping.
  process.on('SIGINT', () => {});
  const server = http.createServer((req, res) => {
    // setHeader + end(body): Node sends Content-Length, as hyper does, rather than chunks.
    res.setHeader('Content-Type', 'text/plain');
    // The path alone, as examples/http matches it (wrk asks for `/`).
    if (req.url === '/' || req.url.startsWith('/?')) {
      res.statusCode = 200;
      res.end(`Hello from worker ${slot} (pid ${process.pid})`);
    } else {
      res.statusCode = 404;
      res.end('not found');
    }
  });
  server.on('error', (e) => {
    console.error(`node_http: worker ${slot}: ${e.message}`);
    process.exit(1);
  });
  server.listen(PORT, HOST);
}
