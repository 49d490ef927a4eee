--
-- setup: install taskq and create the fixtures the other tests share.
--
-- Runs first, in a fresh database.  Every later test depends on this file
-- only, never on a sibling, so each uses its own handler names and tags.
-- The server runs with taskq.enabled = off: dispatchers exist but claim
-- nothing, so no task changes state behind a test's back.
--

-- taskq installs into its own schema, taskq, which the extension creates
-- and owns (the extension itself is recorded in pg_catalog, as pg_cron's)
CREATE EXTENSION taskq;
SELECT e.extname, e.extversion, n.nspname AS recorded_in, e.extrelocatable
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'taskq';
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS member
FROM pg_depend d
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.classid = 'pg_namespace'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'taskq');

-- the SQL API: every function, with its number of arguments and result
SELECT p.proname, p.pronargs, pg_get_function_result(p.oid) AS returns
FROM pg_proc p
WHERE p.pronamespace = 'taskq'::regnamespace
ORDER BY p.proname;

-- the relations: the outbox, the registry, queue state and two views
SELECT c.relname, c.relkind, c.relrowsecurity
FROM pg_class c
WHERE c.relnamespace = 'taskq'::regnamespace AND c.relkind IN ('r', 'v', 'S')
ORDER BY c.relname;

-- the settings, with the built-in fallbacks of the enqueue defaults
-- (priority 0, queue 'default', 5 attempts, 5 min, mode async)
SELECT name, setting, unit, context
FROM pg_settings
WHERE name LIKE 'taskq.%'
ORDER BY name;

-- a fresh install has no tasks, handlers or queue state
SELECT (SELECT count(*) FROM taskq.tasks) AS tasks,
       (SELECT count(*) FROM taskq.handlers) AS handlers,
       (SELECT count(*) FROM taskq.queues) AS queues;

------------------------------------------------------------------------
-- Fixtures
------------------------------------------------------------------------

-- schema app holds the handler functions and the ledger they write, so a
-- test can see whether, and as which role, a handler ran
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.ledger (
    n       serial PRIMARY KEY,
    tag     text NOT NULL,
    payload jsonb NOT NULL,
    run_by  name NOT NULL DEFAULT current_user
);

-- app.record(payload): writes the payload to the ledger under the tag
-- payload->>'tag' and returns {"recorded": payload}
CREATE FUNCTION app.record(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.ledger (tag, payload)
    VALUES (coalesce(payload->>'tag', ''), payload);
    RETURN jsonb_build_object('recorded', payload);
END
$$;

-- app.touch(payload): writes the ledger and returns nothing (void)
CREATE FUNCTION app.touch(payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.ledger (tag, payload)
    VALUES (coalesce(payload->>'tag', ''), payload);
END
$$;

-- app.describe(payload): returns text, which taskq stores as a jsonb string
CREATE FUNCTION app.describe(payload jsonb) RETURNS text
LANGUAGE sql AS $$ SELECT 'payload has ' || jsonb_typeof(payload) $$;

-- app.fail(payload): raises an error (after writing the ledger, which the
-- error rolls back)
CREATE FUNCTION app.fail(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.ledger (tag, payload)
    VALUES (coalesce(payload->>'tag', ''), payload);
    RAISE EXCEPTION 'app.fail: %', coalesce(payload->>'why', 'no reason');
END
$$;

-- the fixtures are in place and nothing has run yet
SELECT p.oid::regprocedure AS handler_function, pg_get_function_result(p.oid) AS returns
FROM pg_proc p
WHERE p.pronamespace = 'app'::regnamespace
ORDER BY p.proname;
SELECT count(*) AS ledger_rows FROM app.ledger;
