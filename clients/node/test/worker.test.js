'use strict';
/*
 * Tests of taskq-worker against a live server (test/run clients).
 *
 * PGHOST, PGPORT and PGDATABASE name a database with taskq installed,
 * dispatchers running and the connecting role a superuser.  Each test uses
 * its own queue and handler names.  Waiting is polling for a state, with a
 * generous deadline.
 */
const { test } = require('node:test');
const assert = require('node:assert');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { Client } = require('pg');
const { Worker, Retry, listenNotify } = require('../lib/worker');

/* One statement on a connection of its own; its rows. */
async function sql(text, params = []) {
  const c = new Client();
  await c.connect();
  try {
    return (await c.query(text, params)).rows;
  } finally {
    await c.end();
  }
}

/* Poll cond() every 20 ms until it is truthy (or throw after `seconds`). */
async function poll(cond, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`condition not reached in ${seconds} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/* The handler's tasks counted by status. */
async function statuses(handler) {
  const rows = await sql('SELECT status::text AS s, count(*)::int AS n FROM taskq.tasks WHERE handler = $1 GROUP BY 1', [handler]);
  return Object.fromEntries(rows.map((r) => [r.s, r.n]));
}

/* An external handler on its own queue. */
async function register(name, queue, extra = '') {
  await sql('DELETE FROM taskq.tasks WHERE handler = $1', [name]); // a rerun starts clean
  await sql(`SELECT taskq.register_handler($1, NULL, kind => 'external', queue => $2${extra})`, [name, queue]);
}

/* A worker running until stopped; returns { worker, done }. */
function background(queue, handler, options) {
  const worker = new Worker({}, queue, handler, { signals: false, ...options });
  return { worker, done: worker.run() };
}

test('tasks run once each and complete', async () => {
  await register('js_basic', 'js_basic_q');
  const seen = [];
  const { worker, done } = background('js_basic_q', async (t) => { seen.push(t.payload.n); }, { concurrency: 4, batchSize: 5 });
  await sql("SELECT taskq.enqueue_many('js_basic', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 20) i))");
  await poll(async () => (await statuses('js_basic')).completed === 20);
  worker.stop();
  await done;
  assert.deepStrictEqual(seen.sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
  assert.strictEqual(worker.processed, 20);
});

test('a result is stored, an error nacks with its text, Retry sets the delay', async () => {
  await register('js_outcomes', 'js_outcomes_q', ', max_attempts => 1');
  const { worker, done } = background('js_outcomes_q', async (t) => {
    if (t.payload.kind === 'result') return { doubled: t.payload.n * 2 };
    if (t.payload.kind === 'retry') throw new Retry('later', 3600);
    throw new TypeError('bad payload');
  });
  const [r] = await sql("SELECT taskq.enqueue('js_outcomes', '{\"kind\": \"result\", \"n\": 21}') AS id");
  const [e] = await sql("SELECT taskq.enqueue('js_outcomes', '{\"kind\": \"error\"}') AS id");
  await poll(async () => (await sql('SELECT count(*)::int AS n FROM taskq.tasks WHERE id = ANY($1) AND finished_at IS NOT NULL', [[r.id, e.id]]))[0].n === 2);
  await sql("SELECT taskq.register_handler('js_outcomes', NULL, kind => 'external', queue => 'js_outcomes_q', max_attempts => 3)");
  const [y] = await sql("SELECT taskq.enqueue('js_outcomes', '{\"kind\": \"retry\"}') AS id");
  await poll(async () => (await sql("SELECT count(*)::int AS n FROM taskq.tasks WHERE id = $1 AND status = 'queued' AND attempts = 1", [y.id]))[0].n === 1);
  worker.stop();
  await done;
  const rows = await sql('SELECT id, status::text, result, last_error, run_at > now() + interval \'50 minutes\' AS later FROM taskq.tasks WHERE id = ANY($1) ORDER BY id', [[r.id, e.id, y.id]]);
  assert.deepStrictEqual(rows.map((x) => [x.status, x.result, x.last_error]), [
    ['completed', { doubled: 42 }, null],
    ['failed', null, 'TypeError: bad payload'],
    ['queued', null, 'Retry: later'],
  ]);
  assert.strictEqual(rows[2].later, true);
  await sql('SELECT taskq.cancel($1)', [y.id]);
});

test('an idle worker wakes on the wake channel and holds no transaction', async () => {
  await register('js_wake', 'js_wake_q');
  // polling every 10 minutes: only the wake channel can make it claim in time
  const { worker, done } = background('js_wake_q', async () => {}, { poll: 600, lease: 30 });
  await poll(async () => (await sql("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN %js_wake_q%'"))[0].n >= 1);
  const idle = await poll(async () => {
    const rows = await sql("SELECT backend_xmin IS NULL AND xact_start IS NULL AS clean FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (query LIKE '%taskq.claim(%' OR query LIKE 'LISTEN %js_wake_q%')");
    return rows.length >= 2 && rows.every((x) => x.clean) ? rows : null;
  });
  assert.ok(idle.length >= 2);
  await sql("SELECT taskq.enqueue('js_wake', '{}')");
  await poll(async () => (await statuses('js_wake')).completed === 1, 30);
  worker.stop();
  await done;
});

test('a lost lease is counted and its late outcome is not taken for the next attempt', async () => {
  await register('js_lease', 'js_lease_q');
  const gates = {};
  const opened = {};
  for (const a of [1, 2]) gates[a] = new Promise((r) => { opened[a] = r; });
  const { worker, done } = background('js_lease_q', async (t) => { await gates[t.attempt]; }, { lease: 1 });
  try {
    const [t] = await sql("SELECT taskq.enqueue('js_lease', '{}') AS id");
    await poll(async () => (await statuses('js_lease')).dispatched === 1);
    // take the lease away, as a lease that ran out while the worker stalled
    await sql("UPDATE taskq.tasks SET lease_until = now() - interval '1 second' WHERE id = $1", [t.id]);
    await poll(async () => worker.lost === 1, 30);
    // the lapsed lease returned it as a new attempt, which this worker holds
    await poll(async () => (await sql("SELECT count(*)::int AS n FROM taskq.tasks WHERE id = $1 AND status = 'dispatched' AND attempts = 2", [t.id]))[0].n === 1);
    // the first run ends while the second runs: its outcome must be dropped
    opened[1]();
    await poll(() => worker.running === 1 && worker.done.length === 0);
    // a heartbeat after that outcome was handled (the loop runs one step
    // at a time) extends the second attempt's lease; compared as text, at
    // the server's precision
    const [l0] = await sql('SELECT lease_until::text AS l FROM taskq.tasks WHERE id = $1', [t.id]);
    await poll(async () => (await sql('SELECT count(*)::int AS n FROM taskq.tasks WHERE id = $1 AND lease_until > $2::timestamptz', [t.id, l0.l]))[0].n === 1, 30);
    const [held] = await sql('SELECT status::text FROM taskq.tasks WHERE id = $1', [t.id]);
    assert.strictEqual(held.status, 'dispatched', 'the second attempt is still held while it runs');
    opened[2]();
    await poll(async () => (await statuses('js_lease')).completed === 1);
    assert.strictEqual(worker.processed, 1);
    assert.strictEqual(worker.lost, 1);
  } finally {
    opened[1]();
    opened[2]();
    worker.stop();
    await done;
  }
});

test('notify tasks are received, run and acknowledged', async () => {
  await sql("DELETE FROM taskq.tasks WHERE handler = 'js_notify'");
  await sql("SELECT taskq.register_handler('js_notify', 'js_notify_ch', kind => 'notify', queue => 'js_notify_q')");
  const seen = [];
  const listener = await listenNotify({}, 'js_notify_ch', async (t) => { seen.push(t.payload.n); return { ok: t.payload.n }; });
  await sql("SELECT taskq.enqueue_many('js_notify', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 5) i))");
  await poll(async () => (await statuses('js_notify')).completed === 5);
  await listener.stop();
  assert.deepStrictEqual(seen.sort(), [1, 2, 3, 4, 5]);
  const rows = await sql("SELECT count(*)::int AS n FROM taskq.tasks WHERE handler = 'js_notify' AND result ? 'ok'");
  assert.strictEqual(rows[0].n, 5);
});

test('a worker drains 10,000 tasks with concurrency 16, then shuts down on SIGTERM with none lost', async () => {
  await register('js_drain', 'js_drain_q');
  await sql('DROP TABLE IF EXISTS js_ledger');
  await sql('CREATE TABLE js_ledger (id bigint, attempt int, pid int)');
  await sql("SELECT taskq.enqueue_many('js_drain', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 10000) i))");
  const child = spawn(process.execPath, [path.join(__dirname, 'drain_worker.js'), 'js_drain_q', '16', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const t0 = Date.now();
  await poll(async () => (await statuses('js_drain')).completed === 10000, 120);
  const secs = (Date.now() - t0) / 1000;
  console.log(`# drained 10,000 tasks in ${secs.toFixed(2)} s (${Math.round(10000 / secs)} tasks/s, one node process, concurrency 16)`);

  // now a backlog of slow tasks, and SIGTERM while 16 of them run
  await sql("SELECT taskq.enqueue_many('js_drain', ARRAY(SELECT jsonb_build_object('n', i, 'sleep', 300) FROM generate_series(1, 200) i))");
  await poll(async () => (await statuses('js_drain')).dispatched >= 16);
  child.kill('SIGTERM');
  const { code, signal } = await exited;
  assert.strictEqual(signal, null);
  assert.strictEqual(code, 0, `the worker exited with ${code}: ${out}`);
  const st = await statuses('js_drain');
  assert.strictEqual(st.dispatched, undefined, 'no task is left held by the stopped worker');
  assert.strictEqual((st.completed || 0) + (st.queued || 0), 10200, JSON.stringify(st));
  assert.ok(st.completed >= 10016, 'the tasks running at SIGTERM finished and were acked');
  const [dups] = await sql("SELECT count(*)::int AS n FROM (SELECT id FROM js_ledger GROUP BY id HAVING count(*) > 1) d");
  assert.strictEqual(dups.n, 0, 'no task ran twice');
  const [ran] = await sql("SELECT count(DISTINCT id)::int AS n FROM js_ledger");
  assert.strictEqual(ran.n, st.completed, 'every completed task ran, and only those');
  await sql("SELECT taskq.cancel(id) FROM taskq.tasks WHERE handler = 'js_drain' AND status = 'queued'");
});
