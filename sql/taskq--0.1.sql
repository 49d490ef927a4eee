-- taskq 0.1: the outbox, the handler registry, and the SQL API.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION taskq" to load this file. \quit

CREATE TYPE taskq.status AS ENUM (
    'queued', 'running', 'dispatched',
    'completed', 'failed', 'cancelled', 'timeout', 'expired'
);
COMMENT ON TYPE taskq.status IS 'life cycle of a task; the last five are terminal';

-- The handler registry.  Only roles granted register_handler() write it,
-- through that function; everyone may read it.
CREATE TABLE taskq.handlers (
    name          text PRIMARY KEY,
    kind          text NOT NULL,
    target        text NOT NULL,
    queue         text,
    priority      int,
    max_attempts  int,
    timeout       interval,
    ack           boolean NOT NULL DEFAULT true,
    enabled       boolean NOT NULL DEFAULT true,
    owner         regrole NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT handlers_kind_check CHECK (kind IN ('function', 'notify', 'log'))
);
COMMENT ON TABLE taskq.handlers IS 'registered task handlers; write through taskq.register_handler()';

-- Paused queues.  A queue without a row here is running.
CREATE TABLE taskq.queues (
    name      text PRIMARY KEY,
    paused    boolean NOT NULL DEFAULT false,
    paused_at timestamptz
);
COMMENT ON TABLE taskq.queues IS 'queue state; write through taskq.pause() and taskq.resume()';

CREATE SEQUENCE taskq.tasks_id_seq;

-- The outbox.  Fixed-width columns first; the hot path updates status,
-- attempts, worker_pid and the timestamps, and reads through
-- tasks_due_idx, whose predicate is the only one a claim scans.
CREATE TABLE taskq.tasks (
    id           bigint NOT NULL DEFAULT pg_catalog.nextval('taskq.tasks_id_seq'),
    priority     int NOT NULL,
    attempts     int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL,
    crashes      int NOT NULL DEFAULT 0,
    worker_pid   int,
    owner        regrole NOT NULL,
    status       taskq.status NOT NULL DEFAULT 'queued',
    run_at       timestamptz NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    lease_until  timestamptz,
    expires_at   timestamptz,
    timeout      interval NOT NULL,
    handler      text NOT NULL,
    queue        text NOT NULL,
    dedupe_key   text,
    payload      jsonb NOT NULL,
    metadata     jsonb,
    result       jsonb,
    last_error   text,
    CONSTRAINT tasks_pkey PRIMARY KEY (id)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER SEQUENCE taskq.tasks_id_seq OWNED BY taskq.tasks.id;
COMMENT ON TABLE taskq.tasks IS 'the outbox; write through taskq.enqueue() and the other API functions';

-- What a claim reads: due tasks in dispatch order.
CREATE INDEX tasks_due_idx ON taskq.tasks (priority DESC, run_at, id)
    WHERE status = 'queued';
-- At most one live task per (handler, dedupe_key).
CREATE UNIQUE INDEX tasks_dedupe_idx ON taskq.tasks (handler, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running', 'dispatched');
-- Leases to expire.  ('running' tasks are not indexed: claiming one would
-- add an entry; they are looked for only after a dispatcher exits.)
CREATE INDEX tasks_inflight_idx ON taskq.tasks (lease_until)
    WHERE status = 'dispatched';
-- The next scheduled task, for a dispatcher's sleep.
CREATE INDEX tasks_scheduled_idx ON taskq.tasks (run_at)
    WHERE status = 'queued';
-- Queued tasks that can expire.
CREATE INDEX tasks_expiry_idx ON taskq.tasks (expires_at)
    WHERE status = 'queued' AND expires_at IS NOT NULL;
-- Terminal tasks, for retention.
CREATE INDEX tasks_finished_idx ON taskq.tasks (finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'timeout', 'expired');

-- Keep handlers, queue state and the outbox in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('taskq.handlers', '');
SELECT pg_catalog.pg_extension_config_dump('taskq.queues', '');
SELECT pg_catalog.pg_extension_config_dump('taskq.tasks', '');
SELECT pg_catalog.pg_extension_config_dump('taskq.tasks_id_seq', '');

-- Privileges: application roles read, and write only through the API.
-- A role sees its own tasks (and those of roles it is a member of).
REVOKE ALL ON taskq.tasks, taskq.handlers, taskq.queues, taskq.tasks_id_seq FROM PUBLIC;
GRANT SELECT ON taskq.tasks, taskq.handlers, taskq.queues TO PUBLIC;
GRANT USAGE ON SCHEMA taskq TO PUBLIC;
ALTER TABLE taskq.tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY tasks_owner_read ON taskq.tasks FOR SELECT
    USING (pg_catalog.pg_has_role(owner::pg_catalog.oid, 'USAGE'));

------------------------------------------------------------------------
-- Handler registry
------------------------------------------------------------------------

CREATE FUNCTION taskq.register_handler(
    name         text,
    target       text,
    kind         text     DEFAULT 'function',
    queue        text     DEFAULT NULL,
    priority     int      DEFAULT NULL,
    max_attempts int      DEFAULT NULL,
    timeout      interval DEFAULT NULL,
    ack          boolean  DEFAULT true,
    enabled      boolean  DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_register_handler'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.register_handler(text, text, text, text, int, int, interval, boolean, boolean)
    IS 'register or update a handler: a function ''schema.fn(jsonb)'', a NOTIFY channel, or a log (dry-run) target';

CREATE FUNCTION taskq.unregister_handler(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_unregister_handler'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.unregister_handler(text)
    IS 'remove a handler; true if it existed';

------------------------------------------------------------------------
-- Enqueue
------------------------------------------------------------------------

CREATE FUNCTION taskq.enqueue(
    handler      text,
    payload      jsonb       DEFAULT '{}',
    priority     int         DEFAULT NULL,
    run_after    interval    DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    queue        text        DEFAULT NULL,
    max_attempts int         DEFAULT NULL,
    timeout      interval    DEFAULT NULL,
    dedupe_key   text        DEFAULT NULL,
    expires_at   timestamptz DEFAULT NULL,
    mode         text        DEFAULT NULL,
    metadata     jsonb       DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'taskq_enqueue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.enqueue(text, jsonb, int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb)
    IS 'record a task in the current transaction; it is dispatched after commit. Returns the task id, or NULL when a policy dropped it';

CREATE FUNCTION taskq.enqueue_many(
    handler      text,
    payloads     jsonb[],
    priority     int         DEFAULT NULL,
    run_after    interval    DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    queue        text        DEFAULT NULL,
    max_attempts int         DEFAULT NULL,
    timeout      interval    DEFAULT NULL,
    dedupe_key   text        DEFAULT NULL,
    expires_at   timestamptz DEFAULT NULL,
    mode         text        DEFAULT NULL,
    metadata     jsonb       DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'taskq_enqueue_many'
LANGUAGE C VOLATILE ROWS 100;
COMMENT ON FUNCTION taskq.enqueue_many(text, jsonb[], int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb)
    IS 'enqueue one task per payload with the same options; returns their ids in payload order';

------------------------------------------------------------------------
-- Operations on tasks
------------------------------------------------------------------------

CREATE FUNCTION taskq.cancel(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_cancel'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.cancel(bigint)
    IS 'cancel a queued or dispatched task, or interrupt a running one (at commit); false if it had already ended';

CREATE FUNCTION taskq.retry(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_retry'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.retry(bigint)
    IS 're-queue a failed, cancelled, timed-out or expired task with a fresh attempt budget; false if it has not ended';

CREATE FUNCTION taskq.ack(id bigint, result jsonb DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_ack'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.ack(bigint, jsonb)
    IS 'complete a dispatched notify task, storing result; false if it is not awaiting an acknowledgement';

CREATE FUNCTION taskq.ack_many(ids bigint[], result jsonb DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'taskq_ack_many'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.ack_many(bigint[], jsonb)
    IS 'ack() for many tasks at once, in one transaction; returns the ids that were awaiting an acknowledgement and are now completed';

CREATE FUNCTION taskq.nack(id bigint, error text, retry_in interval DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_nack'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.nack(bigint, text, interval)
    IS 'fail the current attempt of a dispatched notify task; it is retried (after retry_in, or the backoff) while attempts remain';

CREATE FUNCTION taskq.wait(id bigint, timeout interval DEFAULT '30s')
RETURNS taskq.tasks
AS 'MODULE_PATHNAME', 'taskq_wait'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.wait(bigint, interval)
    IS 'block until the task ends or the timeout passes, then return its row';

CREATE FUNCTION taskq.pause(queue text)
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_pause'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.pause(text)
    IS 'stop claiming tasks from a queue; running tasks finish';

CREATE FUNCTION taskq.resume(queue text)
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_resume'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.resume(text)
    IS 'resume claiming tasks from a paused queue';

------------------------------------------------------------------------
-- Monitoring
------------------------------------------------------------------------

CREATE FUNCTION taskq._workers(
    OUT pid int, OUT type text, OUT database name, OUT worker int,
    OUT queue text, OUT state text, OUT current_task bigint,
    OUT task_started_at timestamptz, OUT started_at timestamptz,
    OUT processed bigint, OUT failed bigint,
    OUT last_error text, OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'taskq_list_workers'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq._workers()
    IS 'internal: live taskq workers, from shared memory; use the view taskq.workers';

CREATE FUNCTION taskq._counters(
    OUT queue text, OUT handler text,
    OUT completed bigint, OUT failed bigint, OUT retried bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'taskq_list_counters'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq._counters()
    IS 'internal: per queue and handler outcome counters of this database since the server started';

CREATE FUNCTION taskq._dispatcher_alive(pid int, since timestamptz)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_dispatcher_alive'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION taskq._dispatcher_alive(int, timestamptz)
    IS 'internal: whether a dispatcher with this pid, started no later than since, is alive';

CREATE FUNCTION taskq._crash_suspect(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_crash_suspect'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION taskq._crash_suspect(bigint)
    IS 'internal: whether the task''s handler was running when its dispatcher died';

CREATE FUNCTION taskq._wake_launcher()
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_wake_launcher'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq._wake_launcher()
    IS 'internal: at commit, ask the launcher to start this database''s dispatchers now';

REVOKE ALL ON FUNCTION taskq.register_handler(text, text, text, text, int, int, interval, boolean, boolean),
                       taskq.unregister_handler(text),
                       taskq.pause(text), taskq.resume(text),
                       taskq._dispatcher_alive(int, timestamptz),
                       taskq._crash_suspect(bigint),
                       taskq._wake_launcher()
    FROM PUBLIC;

CREATE VIEW taskq.workers AS
    SELECT * FROM taskq._workers();
COMMENT ON VIEW taskq.workers IS 'one row per live taskq worker';

CREATE VIEW taskq.stats AS
    WITH now AS (SELECT pg_catalog.now() AS t),
    c AS (
        SELECT t.queue, t.handler,
               pg_catalog.count(*) FILTER (WHERE t.status = 'queued') AS queued,
               pg_catalog.count(*) FILTER (WHERE t.status = 'queued' AND t.run_at <= now.t) AS due,
               pg_catalog.count(*) FILTER (WHERE t.status = 'running') AS running,
               pg_catalog.count(*) FILTER (WHERE t.status = 'dispatched') AS dispatched,
               pg_catalog.count(*) FILTER (WHERE t.status = 'completed') AS completed,
               pg_catalog.count(*) FILTER (WHERE t.status = 'failed') AS failed,
               pg_catalog.count(*) FILTER (WHERE t.status = 'cancelled') AS cancelled,
               pg_catalog.count(*) FILTER (WHERE t.status = 'timeout') AS timeout,
               pg_catalog.count(*) FILTER (WHERE t.status = 'expired') AS expired,
               pg_catalog.max(now.t OPERATOR(pg_catalog.-) t.run_at)
                   FILTER (WHERE t.status = 'queued' AND t.run_at <= now.t) AS oldest_due_age
        FROM taskq.tasks t, now
        GROUP BY t.queue, t.handler
    )
    SELECT COALESCE(c.queue, k.queue) AS queue,
           COALESCE(c.handler, k.handler) AS handler,
           COALESCE(c.queued, 0) AS queued,
           COALESCE(c.due, 0) AS due,
           COALESCE(c.running, 0) AS running,
           COALESCE(c.dispatched, 0) AS dispatched,
           COALESCE(c.completed, 0) AS completed,
           COALESCE(c.failed, 0) AS failed,
           COALESCE(c.cancelled, 0) AS cancelled,
           COALESCE(c.timeout, 0) AS timeout,
           COALESCE(c.expired, 0) AS expired,
           c.oldest_due_age,
           COALESCE(k.completed, 0) AS completed_since_start,
           COALESCE(k.failed, 0) AS failed_since_start,
           COALESCE(k.retried, 0) AS retried_since_start
    FROM c FULL JOIN taskq._counters() k
         ON k.queue OPERATOR(pg_catalog.=) c.queue
        AND k.handler OPERATOR(pg_catalog.=) c.handler;
COMMENT ON VIEW taskq.stats IS 'per queue and handler: tasks by status, the oldest due task''s age, and outcome counters since the server started';

GRANT SELECT ON taskq.workers, taskq.stats TO PUBLIC;

-- Dispatchers of this database may have exited because the extension was
-- missing; start them again as soon as this transaction commits.
SELECT taskq._wake_launcher();
