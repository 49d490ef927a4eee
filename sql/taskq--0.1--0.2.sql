-- taskq 0.1 -> 0.2.
-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION taskq UPDATE TO '0.2'" to load this file. \quit

-- This file is also the second half of the 0.2 install script
-- (sql/taskq--0.2.sql is built from taskq--0.1.sql and this file; see the
-- Makefile), so every statement here must be right on a fresh install as
-- on a 0.1 database being updated.

------------------------------------------------------------------------
-- The extension owns its schema.
--
-- 0.1 named the schema in its control file, so CREATE EXTENSION made
-- schema taskq outside the extension (or used one that someone else had
-- made), and DROP EXTENSION left it behind.  From 0.2 the extension is
-- recorded in pg_catalog and schema taskq is one of its members.  A
-- fresh 0.2 install created the schema in its own script; a 0.1 database
-- has it adopted here.  The schema that holds an extension cannot be its
-- member, so the extension's record moves to pg_catalog first (this
-- script runs as a superuser: taskq.control says superuser = true).
------------------------------------------------------------------------
DO $adopt$
DECLARE
    ext pg_catalog.oid;
    sch pg_catalog.oid := pg_catalog.to_regnamespace('taskq');
BEGIN
    SELECT e.oid INTO ext FROM pg_catalog.pg_extension e
     WHERE e.extname OPERATOR(pg_catalog.=) 'taskq';
    IF EXISTS (SELECT FROM pg_catalog.pg_depend d
                WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                  AND d.objid OPERATOR(pg_catalog.=) sch
                  AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                  AND d.refobjid OPERATOR(pg_catalog.=) ext
                  AND d.deptype OPERATOR(pg_catalog.=) 'e') THEN
        RETURN;                 -- a fresh install: the schema is ours already
    END IF;
    UPDATE pg_catalog.pg_extension
       SET extnamespace = 'pg_catalog'::pg_catalog.regnamespace
     WHERE oid OPERATOR(pg_catalog.=) ext;
    -- pg_catalog is pinned: an extension in it records no dependency.
    DELETE FROM pg_catalog.pg_depend d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
       AND d.objid OPERATOR(pg_catalog.=) ext
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
       AND d.refobjid OPERATOR(pg_catalog.=) sch;
    ALTER EXTENSION taskq ADD SCHEMA taskq;
    -- 0.1 installed into a schema taskq that someone had made beforehand;
    -- such an owner could put objects where taskq's callers resolve names.
    IF (SELECT nspowner FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) sch)
       OPERATOR(pg_catalog.<>) (SELECT extowner FROM pg_catalog.pg_extension WHERE oid OPERATOR(pg_catalog.=) ext) THEN
        RAISE WARNING 'schema taskq was owned by role %; it now belongs to the extension''s owner',
            (SELECT nspowner::pg_catalog.regrole FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) sch);
        EXECUTE pg_catalog.format('ALTER SCHEMA taskq OWNER TO %I',
            (SELECT extowner::pg_catalog.regrole::pg_catalog.text FROM pg_catalog.pg_extension WHERE oid OPERATOR(pg_catalog.=) ext));
    END IF;
END
$adopt$;

------------------------------------------------------------------------
-- The monitoring views show what the caller may see.
--
-- In 0.1 they ran with their owner's (the superuser's) privileges, so
-- taskq.stats counted every role's tasks past the row-level security of
-- taskq.tasks.  As security_invoker views, taskq.stats counts the tasks
-- the caller can see (superusers: all); the outcome counters since start
-- (taskq._counters()) stay aggregate counts per queue and handler for
-- everyone, as pg_stat_statements' calls are.  taskq._workers() filters in
-- C: another role's current task and last error show only to roles with
-- that role's privileges and to pg_read_all_stats.
------------------------------------------------------------------------
ALTER VIEW taskq.workers SET (security_invoker = true);
ALTER VIEW taskq.stats SET (security_invoker = true);
COMMENT ON VIEW taskq.workers IS 'one row per live taskq worker; another role''s current task and last error show only to roles with its privileges and to pg_read_all_stats';
COMMENT ON VIEW taskq.stats IS 'per queue and handler: the caller''s visible tasks by status, the oldest due task''s age, and outcome counters since the server started (of all roles)';

------------------------------------------------------------------------
-- Reaping tells crashes from handlers that ignored their timeout.
--
-- A handler that traps its timeout's error and runs on has its dispatcher
-- terminated by the launcher; the task is then charged a timed-out
-- attempt, not a crash.  taskq._crash_suspect() stays for 0.1's sake.
------------------------------------------------------------------------
CREATE FUNCTION taskq._orphan_cause(id bigint)
RETURNS text
AS 'MODULE_PATHNAME', 'taskq_orphan_cause'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION taskq._orphan_cause(bigint)
    IS 'internal: why the task''s handler ended with its dispatcher: crash, timeout, or NULL';
REVOKE ALL ON FUNCTION taskq._orphan_cause(bigint) FROM PUBLIC;

------------------------------------------------------------------------
-- Deduplication is per enqueuing role.
--
-- 0.1 kept at most one live task per (handler, dedupe_key), whoever
-- enqueued it, so a role could take a key first and make another role's
-- enqueue return its task id and write nothing.  From 0.2 the key is the
-- enqueuing role's own: at most one live task per (handler, dedupe_key,
-- owner).  Every 0.1 row satisfies the narrower index.
------------------------------------------------------------------------
DROP INDEX taskq.tasks_dedupe_idx;
CREATE UNIQUE INDEX tasks_dedupe_idx ON taskq.tasks (handler, dedupe_key, owner)
    WHERE dedupe_key IS NOT NULL
      AND status OPERATOR(pg_catalog.=) ANY ('{queued,running,dispatched}'::taskq.status[]);
COMMENT ON INDEX taskq.tasks_dedupe_idx
    IS 'at most one live task per handler, dedupe_key and enqueuing role';

------------------------------------------------------------------------
-- Unregistering a handler ends its live tasks.
--
-- 0.1 left the tasks of an unregistered handler queued (they failed when
-- dispatched), so a role that registered the name again received them.
-- From 0.2 unregister_handler() cancels them; cancel those that 0.1 left.
------------------------------------------------------------------------
UPDATE taskq.tasks t
   SET status = 'cancelled', finished_at = pg_catalog.now(), lease_until = NULL,
       last_error = 'handler "' OPERATOR(pg_catalog.||) t.handler
                    OPERATOR(pg_catalog.||) '" was unregistered'
 WHERE t.status OPERATOR(pg_catalog.=) ANY ('{queued,running,dispatched}'::taskq.status[])
   AND NOT EXISTS (SELECT FROM taskq.handlers h
                    WHERE h.name OPERATOR(pg_catalog.=) t.handler);

------------------------------------------------------------------------
-- Handlers of kind logical.
--
-- A logical handler's target is a message prefix; enqueue() writes its
-- tasks as transactional logical-decoding messages in the enqueuing
-- transaction, not as rows of taskq.tasks (src/logical.c, and README,
-- "Kafka (the logical kind)").
------------------------------------------------------------------------
ALTER TABLE taskq.handlers
    DROP CONSTRAINT handlers_kind_check,
    ADD CONSTRAINT handlers_kind_check
        CHECK (kind OPERATOR(pg_catalog.=) ANY ('{function,notify,log,logical}'::pg_catalog.text[]));
-- Queue limits, group fairness and taskq.explain() (issue 9).
--
-- taskq.queues keeps each queue's limits (set by taskq.set_queue()) and
-- the state that enforces them: the rate limits' token buckets and the
-- round-robin cursor over group keys.  Every value there is written under
-- the queue row's lock, which a limited queue's claim takes first, so the
-- limits hold across all dispatchers; counts of running tasks are read
-- from the rows, never kept, so no crash can leave them wrong.
------------------------------------------------------------------------
ALTER TABLE taskq.queues
    ADD COLUMN concurrency       int,
    ADD COLUMN group_concurrency int,
    ADD COLUMN rate_limit        text,
    ADD COLUMN group_rate_limit  text,
    ADD COLUMN aging             interval,
    ADD COLUMN rate_count        int,        -- rate_limit parsed: rate_count starts ...
    ADD COLUMN rate_period       interval,   -- ... per rate_period
    ADD COLUMN group_rate_count  int,
    ADD COLUMN group_rate_period interval,
    ADD COLUMN grouped           boolean NOT NULL DEFAULT false,  -- has had tasks with a group_key
    ADD COLUMN tokens            float8,     -- the rate bucket; NULL: full
    ADD COLUMN refilled_at       timestamptz,
    ADD COLUMN held_until        timestamptz, -- when a rate limit next lets a task start
    ADD CONSTRAINT queues_limits_check CHECK (
        concurrency OPERATOR(pg_catalog.>) 0 AND group_concurrency OPERATOR(pg_catalog.>) 0
        AND rate_count OPERATOR(pg_catalog.>) 0 AND group_rate_count OPERATOR(pg_catalog.>) 0
        AND aging OPERATOR(pg_catalog.>) '0'::pg_catalog.interval);
COMMENT ON TABLE taskq.queues IS 'queue state and limits; write through taskq.pause(), taskq.resume() and taskq.set_queue()';

-- Per group rate buckets of the queues that have a group_rate_limit.
CREATE TABLE taskq.group_buckets (
    queue       text NOT NULL,
    group_key   text,
    tokens      float8 NOT NULL,
    refilled_at timestamptz NOT NULL,
    CONSTRAINT group_buckets_key UNIQUE NULLS NOT DISTINCT (queue, group_key)
);
COMMENT ON TABLE taskq.group_buckets IS 'internal: token buckets of group_rate_limit, one per queue and group_key';
REVOKE ALL ON taskq.group_buckets FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('taskq.group_buckets', '');

-- The round-robin cursor of each grouped queue: the group served last.
-- Apart from taskq.queues, which every role reads, since it names a
-- group key of some role's task.
CREATE TABLE taskq.group_cursors (
    queue      text PRIMARY KEY,
    last_group text
);
COMMENT ON TABLE taskq.group_cursors IS 'internal: the group key each grouped queue served last';
REVOKE ALL ON taskq.group_cursors FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('taskq.group_cursors', '');

-- limited: claimed by taskq._claim_queue(), which counts these tasks while
-- they run.  The plain claim leaves it NULL, so that only limited queues'
-- claims add an entry to tasks_running_idx.
ALTER TABLE taskq.tasks ADD COLUMN group_key text, ADD COLUMN limited boolean;

-- What a limited queue's claim counts: its running tasks, per group.
CREATE INDEX tasks_running_idx ON taskq.tasks (queue, group_key)
    WHERE limited AND status OPERATOR(pg_catalog.=) ANY ('{running,dispatched}'::taskq.status[]);
-- The group keys of a queue's queued tasks are walked one key at a time
-- in tasks_queue_idx and tasks_external_idx (below), led by (queue,
-- group_key).

-- enqueue() and enqueue_many() gain group_key, after metadata: both are
-- defined once, with after, in the dependencies section below.

CREATE FUNCTION taskq.set_queue(
    name              text,
    concurrency       int      DEFAULT NULL,
    group_concurrency int      DEFAULT NULL,
    rate_limit        text     DEFAULT NULL,
    group_rate_limit  text     DEFAULT NULL,
    aging             interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_set_queue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.set_queue(text, int, int, text, text, interval)
    IS 'replace a queue''s limits (NULL: no limit); takes effect at commit, keeps paused';
REVOKE ALL ON FUNCTION taskq.set_queue(text, int, int, text, text, interval) FROM PUBLIC;

-- The priority a task of a queue with aging has now: +1 per aging waited
-- since it became due, capped at 100.  Inlined into the claim, where a
-- queue without aging folds it to the stored priority and keeps the
-- index order.
CREATE FUNCTION taskq._effective_priority(priority int, run_at timestamptz, aging interval, now timestamptz)
RETURNS int
LANGUAGE sql IMMUTABLE
AS $$
SELECT CASE WHEN $3 IS NULL THEN $1
       ELSE LEAST(100, $1 OPERATOR(pg_catalog.+)
                  GREATEST(0, pg_catalog.floor(pg_catalog.date_part('epoch', $4 OPERATOR(pg_catalog.-) $2)
                                               OPERATOR(pg_catalog./) pg_catalog.date_part('epoch', $3)))::int) END
$$;
COMMENT ON FUNCTION taskq._effective_priority(int, timestamptz, interval, timestamptz)
    IS 'internal: a task''s priority raised by the time it waited, under a queue''s aging';

-- The tokens a bucket holds now: count per period, full when never used.
-- (OPERATOR() forms all bind alike, left to right: hence the parentheses.)
CREATE FUNCTION taskq._bucket(tokens float8, refilled_at timestamptz, count int, period interval, now timestamptz)
RETURNS float8
LANGUAGE sql IMMUTABLE
AS $$
SELECT CASE WHEN $1 IS NULL OR $2 IS NULL THEN $3::pg_catalog.float8
       ELSE LEAST($3::pg_catalog.float8,
                  $1 OPERATOR(pg_catalog.+)
                  ((GREATEST(0::pg_catalog.float8,
                             pg_catalog.date_part('epoch', $5 OPERATOR(pg_catalog.-) $2))
                    OPERATOR(pg_catalog.*) $3::pg_catalog.float8)
                   OPERATOR(pg_catalog./) pg_catalog.date_part('epoch', $4))) END
$$;
COMMENT ON FUNCTION taskq._bucket(float8, timestamptz, int, interval, timestamptz)
    IS 'internal: a rate limit''s token bucket refilled up to now';

-- The claim of one queue that has limits or group keys, for dispatchers
-- (and external claims): up to max_tasks due tasks become 'running' for
-- pid ('expired' when past expires_at), honouring the queue's
-- concurrency, group_concurrency, rate limits, aging and round-robin over
-- group keys; share is how many dispatchers serve the queue, so that one
-- does not take the whole concurrency into a batch it runs one by one.
-- for_external (default false): true for taskq.claim(), which takes
-- external handlers' tasks, false for a dispatcher, which takes the
-- others.  In C (src/limited.c), its statements planned once per
-- backend: it runs with the queue's row locked, so its length bounds how
-- fast every claimant of the queue claims.  Strict: a NULL claims nothing.
CREATE FUNCTION taskq._claim_queue(_queue text, max_tasks int, share int, pid int, skip_handlers text[],
                                   for_external boolean DEFAULT false)
RETURNS TABLE (id bigint, handler text, queue text, priority int, attempts int, max_attempts int,
               timeout_ms bigint, owner pg_catalog.oid, run_at timestamptz, payload jsonb,
               metadata jsonb, expired boolean)
AS 'MODULE_PATHNAME', 'taskq_claim_queue'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION taskq._claim_queue(text, int, int, int, text[], boolean)
    IS 'internal: claim due tasks of one queue under its limits, group fairness and aging';
REVOKE ALL ON FUNCTION taskq._claim_queue(text, int, int, int, text[], boolean) FROM PUBLIC;

CREATE FUNCTION taskq.explain(id bigint)
RETURNS text
AS 'MODULE_PATHNAME', 'taskq_explain'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.explain(bigint)
    IS 'why the task is not running now (or where it runs, or how it ended), in one sentence';

------------------------------------------------------------------------
-- Dependencies between tasks (issue 12, DESIGN section 11).
--
-- enqueue(..., after => ARRAY[ids]) records a task 'waiting' on the
-- listed tasks that are still live, with one row per (parent, child) in
-- taskq.task_deps, and marks each parent has_dependants.  A trigger on
-- the parents' status changes releases or cancels their waiting children
-- in the same transaction as the parent's completion; no worker polls.
-- No foreign keys: RI triggers would tax every delete of the outbox.
--
-- An extension script runs in one transaction, in which the value
-- 'waiting' added here cannot be used (no constant, index predicate or
-- SQL-language body may name it).  The trigger function is plpgsql,
-- parsed at its first call, and the WHEN clause compares the status as
-- text.
------------------------------------------------------------------------
ALTER TYPE taskq.status ADD VALUE IF NOT EXISTS 'waiting';
COMMENT ON TYPE taskq.status IS 'life cycle of a task; completed, failed, cancelled, timeout and expired are terminal; waiting waits on other tasks';

ALTER TABLE taskq.tasks ADD COLUMN has_dependants boolean NOT NULL DEFAULT false;

CREATE TABLE taskq.task_deps (
    parent bigint NOT NULL,
    child  bigint NOT NULL,
    CONSTRAINT task_deps_pkey PRIMARY KEY (parent, child)
);
-- What a release counts: the parents a waiting child still has.
CREATE INDEX task_deps_child_idx ON taskq.task_deps (child);
COMMENT ON TABLE taskq.task_deps IS 'internal: the live parents each waiting task waits on; written by taskq.enqueue(after => ...)';
REVOKE ALL ON taskq.task_deps FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('taskq.task_deps', '');

-- A waiting task holds its dedupe_key as the other live statuses do: the
-- index's predicate says "not ended", which needs no mention of 'waiting'
-- (and TASKQ_SQL_LIVE in src/taskq.h is the same text, so the lookups
-- use it).
DROP INDEX taskq.tasks_dedupe_idx;
CREATE UNIQUE INDEX tasks_dedupe_idx ON taskq.tasks (handler, dedupe_key, owner)
    WHERE dedupe_key IS NOT NULL
      AND status OPERATOR(pg_catalog.<>) ALL ('{completed,failed,cancelled,timeout,expired}'::taskq.status[]);
COMMENT ON INDEX taskq.tasks_dedupe_idx
    IS 'at most one live (not ended) task per handler, dedupe_key and enqueuing role';

-- At commit, wake this database's dispatchers for n released tasks.
CREATE FUNCTION taskq._wake_dispatchers(n int)
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_wake_released'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION taskq._wake_dispatchers(int)
    IS 'internal: at commit, wake this database''s dispatchers for n tasks that became due';
REVOKE ALL ON FUNCTION taskq._wake_dispatchers(int) FROM PUBLIC;

-- A task's status changed: if it had dependants and ended, release them
-- (completed) or cancel them (otherwise); if it left 'waiting' by another
-- way (cancel(), unregister_handler()), forget its remaining parents.
-- A child that still waits on another parent (as this transaction sees
-- task_deps after deleting its own links) can race with that parent's
-- end: those children are locked in id order before they are looked at
-- again, so two parents ending concurrently cannot both miss the release
-- (the second locker reads the first's deletions, with a new snapshot,
-- once the first has committed) nor deadlock.  A child whose only parent
-- is this task needs no lock and no second look: no other parent's end
-- touches it, and its UPDATE skips it if cancel() got there first.  A
-- child cancelled here is itself a status change of a task that may have
-- dependants: the trigger cascades.
CREATE FUNCTION taskq._deps_status_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    children bigint[];
    shared bigint[];
    n int;
    m int;
BEGIN
    IF OLD.status OPERATOR(pg_catalog.=) 'waiting' THEN
        DELETE FROM taskq.task_deps d WHERE d.child OPERATOR(pg_catalog.=) NEW.id;
    END IF;
    IF NOT OLD.has_dependants
       OR NEW.status OPERATOR(pg_catalog.<>) ALL ('{completed,failed,cancelled,timeout,expired}'::taskq.status[]) THEN
        RETURN NULL;
    END IF;
    WITH gone AS (
        DELETE FROM taskq.task_deps d WHERE d.parent OPERATOR(pg_catalog.=) NEW.id RETURNING d.child
    )
    SELECT pg_catalog.array_agg(gone.child) INTO children FROM gone;
    IF children IS NULL THEN
        RETURN NULL;
    END IF;
    shared := ARRAY(SELECT DISTINCT d.child FROM taskq.task_deps d
                     WHERE d.child OPERATOR(pg_catalog.=) ANY (children));
    IF pg_catalog.cardinality(shared) OPERATOR(pg_catalog.>) 0 THEN
        PERFORM FROM taskq.tasks c
          WHERE c.id OPERATOR(pg_catalog.=) ANY (shared)
            AND c.status OPERATOR(pg_catalog.=) 'waiting'
          ORDER BY c.id FOR UPDATE;
        children := ARRAY(SELECT x FROM pg_catalog.unnest(children) x
                          EXCEPT SELECT y FROM pg_catalog.unnest(shared) y);
    END IF;
    IF NEW.status OPERATOR(pg_catalog.=) 'completed' THEN
        UPDATE taskq.tasks c SET status = 'queued'
         WHERE c.id OPERATOR(pg_catalog.=) ANY (children)
           AND c.status OPERATOR(pg_catalog.=) 'waiting';
        GET DIAGNOSTICS n = ROW_COUNT;
        m := 0;
        IF pg_catalog.cardinality(shared) OPERATOR(pg_catalog.>) 0 THEN
            UPDATE taskq.tasks c SET status = 'queued'
             WHERE c.id OPERATOR(pg_catalog.=) ANY (shared)
               AND c.status OPERATOR(pg_catalog.=) 'waiting'
               AND NOT EXISTS (SELECT FROM taskq.task_deps d
                                WHERE d.child OPERATOR(pg_catalog.=) c.id);
            GET DIAGNOSTICS m = ROW_COUNT;
        END IF;
        IF n OPERATOR(pg_catalog.+) m OPERATOR(pg_catalog.>) 0 THEN
            PERFORM taskq._wake_dispatchers(n OPERATOR(pg_catalog.+) m);
        END IF;
    ELSE
        UPDATE taskq.tasks c
           SET status = 'cancelled', finished_at = pg_catalog.now(),
               last_error = pg_catalog.format('parent task %s ended %s', NEW.id, NEW.status)
         WHERE c.id OPERATOR(pg_catalog.=) ANY (children OPERATOR(pg_catalog.||) shared)
           AND c.status OPERATOR(pg_catalog.=) 'waiting';
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION taskq._deps_status_changed()
    IS 'internal: releases or cancels the waiting dependants of a task that ended';
REVOKE ALL ON FUNCTION taskq._deps_status_changed() FROM PUBLIC;

-- Tasks without dependants that are not leaving 'waiting' pay only this
-- WHEN clause.  A release to 'queued' needs nothing from the trigger
-- unless the child has dependants itself.
CREATE TRIGGER tasks_deps_trigger
    AFTER UPDATE OF status ON taskq.tasks
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND (OLD.has_dependants
               OR (OLD.status::pg_catalog.text OPERATOR(pg_catalog.=) 'waiting'
                   AND NEW.status OPERATOR(pg_catalog.<>) 'queued'::taskq.status)))
    EXECUTE FUNCTION taskq._deps_status_changed();

-- enqueue() and enqueue_many() gain group_key (queue limits, above) and
-- after, their last argument.
DROP FUNCTION taskq.enqueue(text, jsonb, int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb);
DROP FUNCTION taskq.enqueue_many(text, jsonb[], int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb);

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
    metadata     jsonb       DEFAULT NULL,
    group_key    text        DEFAULT NULL,
    after        bigint[]    DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'taskq_enqueue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.enqueue(text, jsonb, int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb, text, bigint[])
    IS 'record a task in the current transaction; it is dispatched after commit (and after the tasks listed in after complete). Returns the task id, or NULL when a policy dropped it';

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
    metadata     jsonb       DEFAULT NULL,
    group_key    text        DEFAULT NULL,
    after        bigint[]    DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'taskq_enqueue_many'
LANGUAGE C VOLATILE ROWS 100;
COMMENT ON FUNCTION taskq.enqueue_many(text, jsonb[], int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb, text, bigint[])
    IS 'enqueue one task per payload with the same options; returns their ids in payload order';

CREATE FUNCTION taskq.current_task()
RETURNS bigint
AS 'MODULE_PATHNAME', 'taskq_current_task'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION taskq.current_task()
    IS 'the id of the task whose handler is running (in a dispatcher or a sync enqueue); NULL elsewhere';

-- Runs as the caller: the row-level security of taskq.tasks decides which
-- of the ids it returns.
CREATE FUNCTION taskq.results(ids bigint[])
RETURNS TABLE (id bigint, status taskq.status, result jsonb)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT t.id, t.status, t.result
  FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(id, n)
  JOIN taskq.tasks t ON t.id OPERATOR(pg_catalog.=) u.id
 ORDER BY u.n
$$;
COMMENT ON FUNCTION taskq.results(bigint[])
    IS 'status and result of the listed tasks that the caller may see, in the order of ids';
-- Recurring tasks (DESIGN section 10).
--
-- A schedule belongs to the role that made it; each tick is one
-- taskq.enqueue() run as that role by one dispatcher of the database,
-- in the transaction that advances next_run_at.  Roles read their own
-- schedules (payloads are private, as in taskq.tasks) and write them only
-- through schedule() and unschedule().  last_error keeps why the last
-- tick could not be enqueued.
------------------------------------------------------------------------
CREATE TABLE taskq.schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    handler       text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    timezone      text NOT NULL DEFAULT 'UTC',
    catch_up      boolean NOT NULL DEFAULT false,
    priority      int,
    queue         text,
    max_attempts  int,
    timeout       interval,
    group_key     text,
    metadata      jsonb,
    next_run_at   timestamptz NOT NULL,
    last_run_at   timestamptz,
    last_task_id  bigint,
    last_error    text,
    enabled       boolean NOT NULL DEFAULT true,
    owner         regrole NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE taskq.schedules IS 'recurring tasks; write through taskq.schedule() and taskq.unschedule()';
-- What the firer reads: the earliest due enabled schedules.
CREATE INDEX schedules_due_idx ON taskq.schedules (next_run_at) WHERE enabled;
COMMENT ON INDEX taskq.schedules_due_idx IS 'the next schedules to fire, for the firer''s claim and its sleep';
SELECT pg_catalog.pg_extension_config_dump('taskq.schedules', '');
REVOKE ALL ON taskq.schedules FROM PUBLIC;
GRANT SELECT ON taskq.schedules TO PUBLIC;
ALTER TABLE taskq.schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY schedules_owner_read ON taskq.schedules FOR SELECT
    USING (pg_catalog.pg_has_role(owner::pg_catalog.oid, 'USAGE'));

CREATE FUNCTION taskq.schedule(
    name         text,
    cron         text,
    handler      text,
    payload      jsonb    DEFAULT '{}',
    timezone     text     DEFAULT 'UTC',
    catch_up     boolean  DEFAULT false,
    priority     int      DEFAULT NULL,
    queue        text     DEFAULT NULL,
    max_attempts int      DEFAULT NULL,
    timeout      interval DEFAULT NULL,
    group_key    text     DEFAULT NULL,
    metadata     jsonb    DEFAULT NULL,
    enabled      boolean  DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'taskq_schedule'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.schedule(text, text, text, jsonb, text, boolean, int, text, int, interval, text, jsonb, boolean)
    IS 'create or update a recurring task: a cron expression, @hourly and the like, or an interval such as ''30 seconds''; takes effect at commit';

CREATE FUNCTION taskq.unschedule(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'taskq_unschedule'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.unschedule(text)
    IS 'remove a schedule; true if it existed';

CREATE FUNCTION taskq._cron_next(cron text, tz text, after timestamptz)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'taskq_cron_next_sql'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION taskq._cron_next(text, text, timestamptz)
    IS 'internal: the first time after "after" at which a schedule with this cron text and time zone fires';

CREATE FUNCTION taskq._tick()
RETURNS int
AS 'MODULE_PATHNAME', 'taskq_tick_sql'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq._tick()
    IS 'internal: fire the due schedules in this transaction, as the firing dispatcher does; returns how many were due and not locked';
REVOKE ALL ON FUNCTION taskq._tick() FROM PUBLIC;

------------------------------------------------------------------------
-- External workers pull tasks with leases (DESIGN section 8).
--
-- A handler of kind 'external' has no target, or a free-text description
-- of who works it.  Dispatchers skip its tasks as they skip a disabled
-- handler's; workers outside the database take them with claim(), keep
-- them with heartbeat() and end them with ack(), ack_many() or nack().
-- A dispatched external task with a session lease keeps the claiming
-- backend's pid in worker_pid (started_at is the claim's time), so that
-- maintenance can tell when that session has ended.
------------------------------------------------------------------------
ALTER TABLE taskq.handlers ALTER COLUMN target DROP NOT NULL;
ALTER TABLE taskq.handlers DROP CONSTRAINT handlers_kind_check;
ALTER TABLE taskq.handlers ADD CONSTRAINT handlers_kind_check
    CHECK (kind OPERATOR(pg_catalog.=) ANY ('{function,notify,log,logical,external}'::pg_catalog.text[]));
ALTER TABLE taskq.handlers ADD CONSTRAINT handlers_target_check
    CHECK (target IS NOT NULL OR kind OPERATOR(pg_catalog.=) 'external');

CREATE FUNCTION taskq.claim(
    queue         text,
    max_tasks     int      DEFAULT 1,
    lease         interval DEFAULT NULL,
    handler       text     DEFAULT NULL,
    session_lease boolean  DEFAULT false)
RETURNS TABLE (id bigint, handler text, queue text, payload jsonb,
               metadata jsonb, attempt int, lease_until timestamptz)
AS 'MODULE_PATHNAME', 'taskq_claim'
LANGUAGE C VOLATILE ROWS 10;
COMMENT ON FUNCTION taskq.claim(text, int, interval, text, boolean)
    IS 'take up to max_tasks due tasks of external handlers the caller may claim, dispatched with a lease (default taskq.ack_timeout), in dispatch order';

CREATE FUNCTION taskq.heartbeat(ids bigint[], lease interval DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'taskq_heartbeat'
LANGUAGE C VOLATILE ROWS 10;
COMMENT ON FUNCTION taskq.heartbeat(bigint[], interval)
    IS 'extend the leases of claimed tasks by lease (default taskq.ack_timeout) from now; returns the ids still held';

CREATE FUNCTION taskq.wake_channel(queue text)
RETURNS text
AS 'MODULE_PATHNAME', 'taskq_wake_channel'
LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION taskq.wake_channel(text)
    IS 'the channel to LISTEN on for external tasks of the queue becoming claimable';


------------------------------------------------------------------------
-- Claims read one queue at a time.
--
-- From 0.2 a dispatcher belongs to an executor and claims only the queues
-- that executor serves (taskq.executors).  tasks_queue_idx leads with the
-- queue, so a claim reads each queue it serves from that queue's first
-- due task, and the default executor finds the queues that have queued
-- tasks with one descent per distinct queue: a paused queue or another
-- executor's backlog costs a claim nothing.  It serves every order that
-- 0.1's tasks_due_idx served within a queue, so that index goes, and an
-- enqueue maintains one index fewer.
--
-- The second key is group_key.  A queue that has never had a task with a
-- group key (taskq.queues.grouped) has only NULL keys, so (queue, NULL)
-- is that queue in dispatch order, which the claims read with "group_key
-- IS NULL" and "ORDER BY group_key, priority DESC, run_at, id"; a grouped
-- queue's claim (taskq._claim_queue) reads each group, the NULL one
-- included, from its first task, and walks the keys with one descent per
-- key.  One index entry per queued task serves both.
------------------------------------------------------------------------
--
-- The queued tasks of external handlers (DESIGN.md 8), which only
-- taskq.claim() takes, are in an index of their own: a dispatcher's claim
-- never reads them (a backlog of external tasks at the head of a queue
-- would otherwise be read through on every claim, and every commit that
-- wakes the dispatchers), and an external worker's claim never reads the
-- dispatchers' tasks.  Each queued task is in exactly one of the two.
-- external is set at enqueue from the handler's kind, and again on the
-- handler's tasks when register_handler() changes that kind.
------------------------------------------------------------------------
ALTER TABLE taskq.tasks ADD COLUMN external boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN taskq.tasks.external
    IS 'the handler is of kind external: taskq.claim() takes the task, not a dispatcher';
CREATE INDEX tasks_queue_idx ON taskq.tasks (queue, group_key, priority DESC, run_at, id)
    WHERE status OPERATOR(pg_catalog.=) 'queued'::taskq.status AND NOT external;
COMMENT ON INDEX taskq.tasks_queue_idx
    IS 'what dispatchers claim: each queue''s and group''s queued tasks in dispatch order';
CREATE INDEX tasks_external_idx ON taskq.tasks (queue, group_key, priority DESC, run_at, id)
    WHERE status OPERATOR(pg_catalog.=) 'queued'::taskq.status AND external;
COMMENT ON INDEX taskq.tasks_external_idx
    IS 'what taskq.claim() reads: each queue''s and group''s queued external tasks in dispatch order';
DROP INDEX taskq.tasks_due_idx;

-- The group keys of a queue's queued tasks (of external handlers or of
-- the others) after "after" ('' for all: a group_key is never empty), in
-- order, at most lim of them: a skip scan of tasks_queue_idx or
-- tasks_external_idx, one index probe per key, however many tasks each
-- has.  No SET clause, every name qualified: the caller's statement
-- inlines it and plans it with the caller's values, so "external =
-- for_external" becomes the predicate of one of the two indexes (an SQL
-- function that is not inlined is planned again at each call).
CREATE FUNCTION taskq._group_keys(queue text, after text, lim int, for_external boolean)
RETURNS SETOF text
LANGUAGE sql STABLE
AS $$
WITH RECURSIVE k(g, n) AS (
    (SELECT t.group_key, 1 FROM taskq.tasks t
      WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.status OPERATOR(pg_catalog.=) 'queued'
        AND t.external OPERATOR(pg_catalog.=) $4
        AND t.group_key IS NOT NULL AND t.group_key OPERATOR(pg_catalog.>) $2
      ORDER BY t.group_key LIMIT 1)
    UNION ALL
    SELECT (SELECT t.group_key FROM taskq.tasks t
             WHERE t.queue OPERATOR(pg_catalog.=) $1 AND t.status OPERATOR(pg_catalog.=) 'queued'
               AND t.external OPERATOR(pg_catalog.=) $4
               AND t.group_key IS NOT NULL AND t.group_key OPERATOR(pg_catalog.>) k.g
             ORDER BY t.group_key LIMIT 1),
           k.n OPERATOR(pg_catalog.+) 1
      FROM k WHERE k.g IS NOT NULL AND k.n OPERATOR(pg_catalog.<) $3
)
SELECT g FROM k WHERE g IS NOT NULL
$$;
COMMENT ON FUNCTION taskq._group_keys(text, text, int, boolean)
    IS 'internal: the next group keys of a queue''s queued tasks, by a skip scan';
REVOKE ALL ON FUNCTION taskq._group_keys(text, text, int, boolean) FROM PUBLIC;

-- The next scheduled task, for a dispatcher's sleep, is looked for among
-- the tasks that were delayed: run_at later than enqueued_at (run_after,
-- a future run_at, a retry's backoff, a lease that ran out).  A task due
-- when it is enqueued (run_at is the enqueuing transaction's start, as
-- enqueued_at) has no entry: one index entry fewer per task.  And no
-- claim implies this predicate, so the planner cannot read this index
-- and sort its whole backlog instead of reading tasks_queue_idx in
-- order, as it did when statistics taken of a queue in another state
-- (empty, or every task waiting on a parent) estimated one queued task.
DROP INDEX taskq.tasks_scheduled_idx;
CREATE INDEX tasks_scheduled_idx ON taskq.tasks (run_at)
    WHERE status OPERATOR(pg_catalog.=) 'queued'::taskq.status
      AND run_at OPERATOR(pg_catalog.>) enqueued_at;
COMMENT ON INDEX taskq.tasks_scheduled_idx
    IS 'queued tasks that were delayed, by run_at: when a dispatcher next has work';

------------------------------------------------------------------------
-- taskq.workers names each dispatcher's executor, and counts its wake-ups.
--
-- Dispatchers belong to executors (taskq.executors); the view gains the
-- columns executor (NULL for the launcher) and wakeups (how often a
-- commit, or another dispatcher, woke the dispatcher since it started;
-- NULL for the launcher), last.  taskq._workers() gains the OUT columns,
-- so it and the view are made again, with the view's security_invoker,
-- comment and grant as above.
------------------------------------------------------------------------
DROP VIEW taskq.workers;
DROP FUNCTION taskq._workers();
CREATE FUNCTION taskq._workers(
    OUT pid int, OUT type text, OUT database name, OUT worker int,
    OUT queue text, OUT state text, OUT current_task bigint,
    OUT task_started_at timestamptz, OUT started_at timestamptz,
    OUT processed bigint, OUT failed bigint,
    OUT last_error text, OUT last_error_at timestamptz,
    OUT executor text, OUT wakeups bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'taskq_list_workers'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq._workers()
    IS 'internal: live taskq workers, from shared memory; use the view taskq.workers';
CREATE VIEW taskq.workers WITH (security_invoker = true) AS
    SELECT * FROM taskq._workers();
COMMENT ON VIEW taskq.workers IS 'one row per live taskq worker; another role''s current task and last error show only to roles with its privileges and to pg_read_all_stats';
GRANT SELECT ON taskq.workers TO PUBLIC;


-- Dispatchers that found this database at another version wait for this
-- update; start them again as soon as it commits.  (Keep this last.)
SELECT taskq._wake_launcher();
