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
-- Children are locked in id order before they are looked at, so two
-- parents ending concurrently cannot both miss the release (the second
-- locker reads the first's deletions, with a new snapshot, once the first
-- has committed) nor deadlock.  A child cancelled here is itself a status
-- change of a task that may have dependants: the trigger cascades.
CREATE FUNCTION taskq._deps_status_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    children bigint[];
    n int;
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
    PERFORM FROM taskq.tasks c
      WHERE c.id OPERATOR(pg_catalog.=) ANY (children)
        AND c.status OPERATOR(pg_catalog.=) 'waiting'
      ORDER BY c.id FOR UPDATE;
    IF NEW.status OPERATOR(pg_catalog.=) 'completed' THEN
        UPDATE taskq.tasks c SET status = 'queued'
         WHERE c.id OPERATOR(pg_catalog.=) ANY (children)
           AND c.status OPERATOR(pg_catalog.=) 'waiting'
           AND NOT EXISTS (SELECT FROM taskq.task_deps d
                            WHERE d.child OPERATOR(pg_catalog.=) c.id);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n OPERATOR(pg_catalog.>) 0 THEN
            PERFORM taskq._wake_dispatchers(n);
        END IF;
    ELSE
        UPDATE taskq.tasks c
           SET status = 'cancelled', finished_at = pg_catalog.now(),
               last_error = pg_catalog.format('parent task %s ended %s', NEW.id, NEW.status)
         WHERE c.id OPERATOR(pg_catalog.=) ANY (children)
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

-- enqueue() and enqueue_many() gain after, their last argument.
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
    after        bigint[]    DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'taskq_enqueue'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION taskq.enqueue(text, jsonb, int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb, bigint[])
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
    after        bigint[]    DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'taskq_enqueue_many'
LANGUAGE C VOLATILE ROWS 100;
COMMENT ON FUNCTION taskq.enqueue_many(text, jsonb[], int, interval, timestamptz, text, int, interval, text, timestamptz, text, jsonb, bigint[])
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

-- Dispatchers that found this database at another version wait for this
-- update; start them again as soon as it commits.  (Keep this last.)
SELECT taskq._wake_launcher();
