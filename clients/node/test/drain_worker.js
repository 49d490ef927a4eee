'use strict';
/*
 * A worker process for the drain test: node drain_worker.js QUEUE
 * CONCURRENCY.  Runs until SIGTERM (the library's own handling), then
 * writes what it ran into js_ledger (id, attempt, pid) and exits 0.
 * A task whose payload has "sleep" (ms) takes that long.
 */
const { Client } = require('pg');
const { Worker } = require('../lib/worker');

/* Run the worker, then record its ledger in one statement. */
async function main() {
  const [queue, concurrency] = process.argv.slice(2);
  const ran = [];
  const worker = new Worker({}, queue, async (t) => {
    if (t.payload.sleep) await new Promise((r) => setTimeout(r, t.payload.sleep));
    ran.push([t.id, t.attempt]);
  }, { concurrency: Number(concurrency), lease: 30 });
  await worker.run();
  const c = new Client();
  await c.connect();
  await c.query('INSERT INTO js_ledger SELECT i, a, $3 FROM unnest($1::bigint[], $2::int[]) AS u(i, a)',
    [ran.map((r) => r[0]), ran.map((r) => r[1]), process.pid]);
  await c.end();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
