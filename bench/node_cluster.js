// The reference for bench/supervisor.rs: Node's cluster module doing what ours does.
// Prints READY_ALL when every worker is online and listening for work, and REPLACED <micros>
// for each SIGKILLed worker replaced (fork + 'online' of the replacement).
const cluster = require('node:cluster');
const workers = Number(process.env.BENCH_WORKERS || 2);
const replacements = Number(process.env.BENCH_REPLACEMENTS || 0);

if (cluster.isPrimary) {
  let ready = 0;
  let killedAt = null;
  let replaced = 0;
  const killOne = () => {
    // Kill each original worker once, as the Rust side does.
    const w = Object.values(cluster.workers)[replaced];
    killedAt = process.hrtime.bigint();
    w.process.kill('SIGKILL');
  };
  cluster.on('exit', (w, code, signal) => { if (killedAt !== null) cluster.fork(); });
  cluster.on('message', (w, msg) => {
    if (msg !== 'ready') return;
    ready += 1;
    if (ready === workers) console.log('READY_ALL');
    if (killedAt !== null) {
      console.log(`REPLACED ${Number((process.hrtime.bigint() - killedAt) / 1000n)}`);
      killedAt = null;
      replaced += 1;
    }
    if (ready >= workers && killedAt === null && replaced < replacements) killOne();
  });
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('SIGTERM', () => { for (const w of Object.values(cluster.workers)) w.kill(); process.exit(0); });
} else {
  process.send('ready');
  setInterval(() => {}, 1 << 30);
}
