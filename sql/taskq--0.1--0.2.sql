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
------------------------------------------------------------------------
CREATE INDEX tasks_queue_idx ON taskq.tasks (queue, priority DESC, run_at, id)
    WHERE status OPERATOR(pg_catalog.=) 'queued'::taskq.status;
COMMENT ON INDEX taskq.tasks_queue_idx
    IS 'what claims read: each queue''s queued tasks in dispatch order';
DROP INDEX taskq.tasks_due_idx;

------------------------------------------------------------------------
-- taskq.workers names each dispatcher's executor.
--
-- Dispatchers belong to executors (taskq.executors); the view gains the
-- column executor, last, NULL for the launcher.  taskq._workers() gains
-- the OUT column, so it and the view are made again, with the view's
-- security_invoker, comment and grant as above.
------------------------------------------------------------------------
DROP VIEW taskq.workers;
DROP FUNCTION taskq._workers();
CREATE FUNCTION taskq._workers(
    OUT pid int, OUT type text, OUT database name, OUT worker int,
    OUT queue text, OUT state text, OUT current_task bigint,
    OUT task_started_at timestamptz, OUT started_at timestamptz,
    OUT processed bigint, OUT failed bigint,
    OUT last_error text, OUT last_error_at timestamptz,
    OUT executor text)
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
