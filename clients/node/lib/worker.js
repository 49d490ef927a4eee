'use strict';
/*
 * taskq-worker: run taskq tasks outside the database, on node-postgres.
 *
 * Two loops, one per way taskq hands work out:
 *
 *  - Worker pulls the tasks of `external` handlers: taskq.claim() with a
 *    lease, heartbeats while they run, ack_many/ack on success, nack with
 *    the error's text on failure, and, while idle, waits on
 *    LISTEN taskq.wake_channel(queue) with no transaction open.
 *  - listenNotify receives the tasks of `notify` handlers (LISTEN channel),
 *    runs them and acknowledges them.
 *
 * Every statement runs on its own (no BEGIN): an idle worker holds no
 * snapshot, lock or xmin.  Task ids are strings (bigint, as node-postgres
 * returns them).
 */
const { Client } = require('pg');

/* Throw from a handler to nack with a chosen delay (seconds). */
class Retry extends Error {
  constructor(message, retryIn = 0) {
    super(message);
    this.name = 'Retry';
    this.retryIn = retryIn;
  }
}

/* What a nack stores as last_error: the error's name and message. */
function errorText(err) {
  if (err instanceof Error) return err.message ? `${err.name}: ${err.message}` : err.name;
  return String(err);
}

/* A Retry's delay as an interval, or null for taskq's backoff. */
function retryInterval(err) {
  return err instanceof Retry ? `${Number(err.retryIn)} seconds` : null;
}

/* Seconds as an interval literal taskq's functions accept. */
function seconds(s) {
  return `${Number(s)} seconds`;
}

/* A double-quoted identifier, for LISTEN (channels are not parameters). */
function quoteIdent(name) {
  return `"${String(name).replace(/"/g, '""')}"`;
}

/* A connection for `connection` (a config object or a connection string). */
async function connect(connection) {
  const client = new Client(connection);
  await client.connect();
  return client;
}

/*
 * Pull the tasks of external handlers from one queue and run them.
 *
 * handler(task) may return a promise; what it resolves to (JSON-able, or
 * undefined/null) is stored as the task's result, a rejection nacks the
 * attempt with its text (Retry sets the delay).  Up to `concurrency`
 * handlers run at once; up to `batchSize` tasks (default: concurrency)
 * are claimed per call.  Once tasks are held, more are claimed when half a
 * batch has room (or none are held), and outcomes are acknowledged
 * together, at most ACK_DELAY_MS after the first of them (at once when
 * nothing else is held or half a batch is done).  Leases last `lease`
 * seconds and are renewed every lease/3 while tasks are held.  run() resolves after stop() or, with
 * `signals` (default true), SIGTERM/SIGINT: no new claims, in-flight tasks
 * get `shutdownTimeout` seconds (default: the lease) to finish, the rest
 * are nacked so that they run again at once elsewhere.
 */
/*
 * How long a finished task's outcome may wait for others to share its
 * ack_many.  A worker acked and claimed again after every task that
 * finished, so a fast handler cost two round trips per task.
 */
const ACK_DELAY_MS = 5;

class Worker {
  constructor(connection, queue, handler, options = {}) {
    const o = { concurrency: 1, lease: 30, poll: 5, signals: true, sessionLease: false, ...options };
    if (!Number.isInteger(o.concurrency) || o.concurrency < 1) throw new RangeError('concurrency must be an integer of at least 1');
    if (!(o.lease > 0)) throw new RangeError('lease must be a positive number of seconds');
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');
    this.connection = connection;
    this.queue = queue;
    this.handler = handler;
    this.concurrency = o.concurrency;
    this.batchSize = o.batchSize || o.concurrency;
    this.capacity = Math.max(this.concurrency, this.batchSize);
    this.lease = o.lease;
    this.handlerName = o.handlerName ?? null;
    this.sessionLease = o.sessionLease;
    this.poll = o.poll;
    this.signals = o.signals;
    this.shutdownTimeout = o.shutdownTimeout ?? o.lease;
    this.processed = 0;
    this.failed = 0;
    this.lost = 0; // tasks whose lease was gone at ack, nack or heartbeat
    this.inflight = new Map(); // id -> task, from claim to ack/nack
    this.waiting = []; // claimed, not started (batchSize > concurrency)
    this.running = 0;
    this.done = []; // [task, ok, value, retryIn]
    this.doneSince = null; // when the oldest outcome not yet acked came
    this.stopping = false;
    this.wakeup = null;
  }

  /* Ask run() to finish (see the class comment); safe to call twice. */
  stop() {
    this.stopping = true;
    this.poke();
  }

  /* Wake run() from its wait. */
  poke() {
    if (this.wakeup) this.wakeup();
  }

  /* Claim, run and finish tasks until stop(); see the class comment. */
  async run() {
    const onSignal = () => this.stop();
    if (this.signals) {
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    }
    const listen = await connect(this.connection);
    let conn;
    try {
      conn = await connect(this.connection);
      await this.loop(listen, conn);
    } finally {
      if (this.signals) {
        process.removeListener('SIGTERM', onSignal);
        process.removeListener('SIGINT', onSignal);
      }
      await Promise.allSettled([listen.end(), conn && conn.end()]);
    }
  }

  /*
   * The worker's one loop: record outcomes, renew leases, claim while
   * there is room, else wait.  One connection runs it all, in order, so
   * an ack never races its own claim; the other only listens.
   */
  async loop(listen, conn) {
    const channel = (await conn.query('SELECT taskq.wake_channel($1) AS c', [this.queue])).rows[0].c;
    listen.on('notification', () => this.poke());
    // before the first claim: a task enqueued after it is notified
    await listen.query(`LISTEN ${quoteIdent(channel)}`);
    let nextBeat = Date.now() + (this.lease * 1000) / 3;
    let deadline = null;
    for (;;) {
      if (this.ackDue()) await this.finish(conn);
      if (this.stopping) {
        if (deadline === null) deadline = Date.now() + this.shutdownTimeout * 1000;
        await this.finish(conn);
        this.abandonWaiting();
        if (this.inflight.size === 0) return;
        if (Date.now() >= deadline) {
          await this.abandon(conn);
          return;
        }
      }
      if (this.inflight.size > 0 && Date.now() >= nextBeat) {
        await this.heartbeat(conn);
        nextBeat = Date.now() + (this.lease * 1000) / 3;
      }
      const free = this.capacity - this.inflight.size;
      if (this.claimDue(free) && (await this.claim(conn, Math.min(free, this.batchSize))) > 0) continue;
      let timeout = this.poll * 1000;
      if (this.inflight.size > 0) timeout = Math.min(timeout, Math.max(0, nextBeat - Date.now()));
      if (this.doneSince !== null) timeout = Math.min(timeout, Math.max(0, this.doneSince + ACK_DELAY_MS - Date.now()));
      if (deadline !== null) timeout = Math.min(timeout, Math.max(0, deadline - Date.now()));
      await this.wait(timeout);
    }
  }

  /* Whether the outcomes waiting should be acknowledged now. */
  ackDue() {
    const n = this.done.length;
    if (n === 0) return false;
    return n >= this.inflight.size || n >= Math.max(1, Math.floor(this.batchSize / 2)) ||
      this.doneSince === null || Date.now() >= this.doneSince + ACK_DELAY_MS;
  }

  /* Whether to claim now: room for half a batch, or nothing held. */
  claimDue(free) {
    if (free <= 0 || this.stopping) return false;
    return this.inflight.size === 0 || free >= Math.max(1, Math.floor(this.batchSize / 2));
  }

  /* Sleep until a notification, a finished task, stop(), or timeout ms. */
  wait(timeout) {
    if (this.ackDue() || this.stopping && this.inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wakeup(), timeout);
      this.wakeup = () => {
        clearTimeout(timer);
        this.wakeup = null;
        resolve();
      };
    });
  }

  /* Claim up to n tasks and start them. */
  async claim(conn, n) {
    const { rows } = await conn.query(
      'SELECT id, handler, queue, payload, metadata, attempt, lease_until' +
        ' FROM taskq.claim($1, $2, $3, $4, $5)',
      [this.queue, n, seconds(this.lease), this.handlerName, this.sessionLease],
    );
    for (const row of rows) {
      const task = { id: row.id, handler: row.handler, queue: row.queue, payload: row.payload,
        metadata: row.metadata, attempt: row.attempt, leaseUntil: row.lease_until };
      this.inflight.set(task.id, task);
      this.waiting.push(task);
    }
    this.startWaiting();
    return rows.length;
  }

  /* Start claimed tasks while fewer than concurrency run. */
  startWaiting() {
    while (this.running < this.concurrency && this.waiting.length > 0) {
      const task = this.waiting.shift();
      this.running++;
      this.runOne(task);
    }
  }

  /* Run one handler; its outcome goes to the loop, which records it. */
  async runOne(task) {
    let outcome;
    try {
      const result = await this.handler(task);
      outcome = [task, true, result ?? null, null];
    } catch (err) {
      outcome = [task, false, errorText(err), retryInterval(err)];
    }
    if (this.doneSince === null) this.doneSince = Date.now();
    this.done.push(outcome);
    this.running--;
    if (!this.stopping) this.startWaiting();
    this.poke();
  }

  /* Ack the successes (ack_many for those without a result), nack the rest. */
  async finish(conn) {
    const outcomes = this.done.splice(0);
    this.doneSince = null;
    const plain = [];
    for (const [task, ok, value, retryIn] of outcomes) {
      const id = task.id;
      // its lease was lost meanwhile (and the task may be held again, as a
      // new attempt: that one's outcome is not this one's)
      if (this.inflight.get(id) !== task) continue;
      this.inflight.delete(id);
      if (ok && value === null) {
        plain.push(id);
      } else if (ok) {
        const r = await conn.query('SELECT taskq.ack($1, $2) AS done', [id, JSON.stringify(value)]);
        this.count(r.rows[0].done, true);
      } else {
        const r = await conn.query('SELECT taskq.nack($1, $2, $3) AS done', [id, value, retryIn]);
        this.count(r.rows[0].done, false);
      }
    }
    if (plain.length > 0) {
      const r = await conn.query('SELECT taskq.ack_many($1) AS acked', [plain]);
      const acked = r.rows[0].acked.length;
      this.processed += acked;
      this.lost += plain.length - acked;
    }
  }

  /* Count an ack's or nack's outcome. */
  count(done, ok) {
    if (!done) this.lost++;
    else if (ok) this.processed++;
    else this.failed++;
  }

  /* Renew the leases of the tasks held; forget those taskq says are gone. */
  async heartbeat(conn) {
    const ids = [...this.inflight.keys()];
    const { rows } = await conn.query('SELECT taskq.heartbeat($1, $2) AS id', [ids, seconds(this.lease)]);
    const held = new Set(rows.map((r) => r.id));
    for (const id of ids) {
      if (!held.has(id)) {
        // the lease ran out: an ack would be refused
        this.inflight.delete(id);
        this.waiting = this.waiting.filter((t) => t.id !== id);
        this.lost++;
      }
    }
  }

  /* At shutdown, give back the claimed tasks that have not started. */
  abandonWaiting() {
    for (const task of this.waiting.splice(0)) {
      this.done.push([task, false, 'the worker shut down before the task started', '0 seconds']);
    }
  }

  /* Past the shutdown timeout: nack what still runs, to be run again. */
  async abandon(conn) {
    for (const id of [...this.inflight.keys()]) {
      this.inflight.delete(id);
      await conn.query('SELECT taskq.nack($1, $2, $3)', [id, 'the worker shut down before the task finished', '0 seconds']);
    }
  }
}

/*
 * Run the tasks of a notify handler: LISTEN channel, run, ack or nack.
 * handler(task) gets the task as taskq sends it (id, handler, queue,
 * attempt, priority, ack, payload, metadata); its result is stored with
 * ack(), a rejection nacks with its text.  Tasks sent with ack => false
 * are run and not acknowledged.  Returns { stop(), done }: stop() ends the
 * listener, done resolves once it has.
 */
async function listenNotify(connection, channel, handler) {
  const listen = await connect(connection);
  const conn = await connect(connection);
  let chain = Promise.resolve();
  listen.on('notification', (n) => {
    if (n.channel !== channel) return;
    chain = chain.then(() => runNotified(conn, JSON.parse(n.payload), handler));
  });
  await listen.query(`LISTEN ${quoteIdent(channel)}`);
  let stopped;
  const done = new Promise((resolve) => { stopped = resolve; });
  return {
    done,
    async stop() {
      await listen.end();
      await chain;
      await conn.end();
      stopped();
    },
  };
}

/* One notified task: run it, then ack or nack when it asks for one. */
async function runNotified(conn, task, handler) {
  try {
    const result = await handler(task);
    if (task.ack !== false) {
      await conn.query('SELECT taskq.ack($1, $2)', [task.id, result == null ? null : JSON.stringify(result)]);
    }
  } catch (err) {
    if (task.ack !== false) await conn.query('SELECT taskq.nack($1, $2, $3)', [task.id, errorText(err), retryInterval(err)]);
  }
}

module.exports = { Worker, Retry, listenNotify };
