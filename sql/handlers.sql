--
-- handlers: taskq.register_handler(), taskq.unregister_handler() and the
-- registry they write, taskq.handlers.  Handler names start with hd_.
--

------------------------------------------------------------------------
-- Function handlers: the target is resolved once, at registration, to a
-- schema-qualified signature
------------------------------------------------------------------------

-- a function given as 'schema.fn(jsonb)'
SELECT taskq.register_handler('hd_full', 'app.record(jsonb)');

-- kind defaults to 'function'; 'schema.fn' without the argument list means fn(jsonb)
SELECT taskq.register_handler('hd_short', 'app.record', 'function');

-- an unqualified name is resolved through the current search_path
SET search_path = app, public;
SELECT taskq.register_handler('hd_unqualified', 'record');
RESET search_path;

-- unquoted names fold to lower case, as in SQL
SELECT taskq.register_handler('hd_upper', 'APP.Record');

-- a function with another return type (void) is fine
SELECT taskq.register_handler('hd_void', 'app.touch');

-- all of them are stored in one canonical, qualified form
SELECT name, kind, target
FROM taskq.handlers
WHERE name IN ('hd_full', 'hd_short', 'hd_unqualified', 'hd_upper', 'hd_void')
ORDER BY name;

------------------------------------------------------------------------
-- Notify and log handlers
------------------------------------------------------------------------

-- a notify handler: the target is a channel; ack defaults to true
SELECT taskq.register_handler('hd_notify', 'hd_channel', kind => 'notify');

-- a fire-and-forget notify handler
SELECT taskq.register_handler('hd_notify_noack', 'hd_channel_2', kind => 'notify', ack => false);

-- a channel may start with _ and contain digits; 63 bytes is the longest
SELECT taskq.register_handler('hd_notify_long', '_' || repeat('c9', 31), kind => 'notify');

-- a log handler (dry run): the target is free text, up to 1024 bytes
SELECT taskq.register_handler('hd_log', 'would send the receipt e-mail', kind => 'log');
SELECT taskq.register_handler('hd_log_long', repeat('x', 1024), kind => 'log');

SELECT name, kind, length(target) AS target_length, ack
FROM taskq.handlers
WHERE name IN ('hd_notify', 'hd_notify_noack', 'hd_notify_long', 'hd_log', 'hd_log_long')
ORDER BY name;

------------------------------------------------------------------------
-- Options
------------------------------------------------------------------------

-- every option at once
SELECT taskq.register_handler('hd_options', 'app.record', kind => 'function',
    queue => 'hd_queue', priority => 10, max_attempts => 3, timeout => '45s',
    ack => true, enabled => false);

-- the limits: priority -100 and 100, max_attempts 1 and 1000, a 24-day timeout
SELECT taskq.register_handler('hd_min', 'app.record', priority => -100, max_attempts => 1, timeout => '1ms');
SELECT taskq.register_handler('hd_max', 'app.record', priority => 100, max_attempts => 1000, timeout => '24 days');

-- a handler name may be 63 bytes long and contain spaces and any case
SELECT taskq.register_handler(repeat('n', 63), 'app.record');
SELECT taskq.register_handler('hd Mixed Case', 'app.record');

-- the registry: NULL options resolve at enqueue time (see options.sql);
-- the owner is the registering role
SELECT name, kind, left(target, 30) AS target, queue, priority, max_attempts, timeout,
       ack, enabled, owner = current_user::regrole AS owned_by_me,
       registered_at <= now() AS registered
FROM taskq.handlers
WHERE name LIKE 'hd%' OR name = repeat('n', 63)
ORDER BY name COLLATE "C";

------------------------------------------------------------------------
-- Insert or update
------------------------------------------------------------------------

-- registering an existing name replaces its kind, target and options
SELECT taskq.register_handler('hd_options', 'hd_options_channel', kind => 'notify',
    priority => -5, ack => false);
SELECT name, kind, target, queue, priority, max_attempts, timeout, ack, enabled,
       owner = current_user::regrole AS owned_by_me
FROM taskq.handlers
WHERE name = 'hd_options';

-- still one row under that name
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_options';

-- and back: re-enabled, a function again
SELECT taskq.register_handler('hd_options', 'app.touch', queue => 'hd_queue_2', timeout => '2 min');
SELECT name, kind, target, queue, priority, max_attempts, timeout, ack, enabled
FROM taskq.handlers
WHERE name = 'hd_options';

-- a registration runs in the caller's transaction: rolled back, it is gone
BEGIN;
SELECT taskq.register_handler('hd_rolled_back', 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_rolled_back';
ROLLBACK;
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_rolled_back';

------------------------------------------------------------------------
-- Unregister
------------------------------------------------------------------------

-- true when the handler existed
SELECT taskq.unregister_handler('hd_upper');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_upper';

-- false when it does not (any more)
SELECT taskq.unregister_handler('hd_upper');
SELECT taskq.unregister_handler('hd_never_registered');

-- a task enqueued for a handler, and still live, ends cancelled when the
-- handler is unregistered (it stays, saying why); new ones are refused
SELECT taskq.enqueue('hd_unqualified', '{"n": 1}') > 0 AS enqueued;
SELECT taskq.unregister_handler('hd_unqualified');
SELECT handler, status, payload, last_error FROM taskq.tasks WHERE handler = 'hd_unqualified';
SELECT taskq.enqueue('hd_unqualified', '{"n": 2}');
SELECT count(*) FROM taskq.tasks WHERE handler = 'hd_unqualified';

-- NULL name
SELECT taskq.unregister_handler(NULL);

------------------------------------------------------------------------
-- Bad input: each is refused with a clear error and writes nothing
------------------------------------------------------------------------

-- NULL name
SELECT taskq.register_handler(NULL, 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name IS NULL;

-- NULL target
SELECT taskq.register_handler('hd_bad', NULL);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- NULL kind
SELECT taskq.register_handler('hd_bad', 'app.record', kind => NULL);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- NULL ack
SELECT taskq.register_handler('hd_bad', 'hd_channel', kind => 'notify', ack => NULL);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- NULL enabled
SELECT taskq.register_handler('hd_bad', 'app.record', enabled => NULL);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- unknown kind
SELECT taskq.register_handler('hd_bad', 'app.record', kind => 'webhook');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- kinds are case-sensitive
SELECT taskq.register_handler('hd_bad', 'app.record', kind => 'Function');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- empty name
SELECT taskq.register_handler('', 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name = '';

-- a name of 64 bytes
SELECT taskq.register_handler(repeat('n', 64), 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name = repeat('n', 64);

-- 32 two-byte characters are 64 bytes too
SELECT taskq.register_handler(repeat('é', 32), 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name = repeat('é', 32);

-- a control character (a tab) in the name
SELECT taskq.register_handler(E'hd\tbad', 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name = E'hd\tbad';

-- a function that does not exist
SELECT taskq.register_handler('hd_bad', 'app.no_such_function');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a schema that does not exist
SELECT taskq.register_handler('hd_bad', 'no_such_schema.record(jsonb)');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a function with a text argument, named without its argument list: there
-- is no fn(jsonb)
CREATE FUNCTION app.takes_text(payload text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SELECT taskq.register_handler('hd_bad', 'app.takes_text');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- ... and named with it: wrong signature
SELECT taskq.register_handler('hd_bad', 'app.takes_text(text)');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a function with two arguments
CREATE FUNCTION app.takes_two(payload jsonb, extra int) RETURNS jsonb
LANGUAGE sql AS $$ SELECT payload $$;
SELECT taskq.register_handler('hd_bad', 'app.takes_two(jsonb, int)');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a procedure
CREATE PROCEDURE app.a_procedure(payload jsonb)
LANGUAGE sql AS $$ SELECT 1 $$;
SELECT taskq.register_handler('hd_bad', 'app.a_procedure');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- an aggregate
CREATE AGGREGATE app.an_aggregate(jsonb) (sfunc = jsonb_concat, stype = jsonb);
SELECT taskq.register_handler('hd_bad', 'app.an_aggregate');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a set-returning function
CREATE FUNCTION app.returns_set(payload jsonb) RETURNS SETOF jsonb
LANGUAGE sql AS $$ SELECT payload $$;
SELECT taskq.register_handler('hd_bad', 'app.returns_set');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a function in the session's temporary schema (whose name, pg_temp_N,
-- varies from run to run; the message is shown with N normalised)
CREATE FUNCTION pg_temp.temp_handler(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT payload $$;
DO $$
DECLARE
    hint text;
BEGIN
    PERFORM taskq.register_handler('hd_bad', 'pg_temp.temp_handler');
    RAISE NOTICE 'registered';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RAISE NOTICE 'ERROR (%): %', SQLSTATE, regexp_replace(SQLERRM, 'pg_temp_[0-9]+', 'pg_temp_N');
    RAISE NOTICE 'HINT: %', hint;
END
$$;
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- channel names must be lower-case identifiers: upper case
SELECT taskq.register_handler('hd_bad', 'Orders', kind => 'notify');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a space
SELECT taskq.register_handler('hd_bad', 'new orders', kind => 'notify');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a leading digit
SELECT taskq.register_handler('hd_bad', '1orders', kind => 'notify');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a quote
SELECT taskq.register_handler('hd_bad', 'orders"x', kind => 'notify');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- 64 bytes
SELECT taskq.register_handler('hd_bad', repeat('c', 64), kind => 'notify');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- empty
SELECT taskq.register_handler('hd_bad', '', kind => 'notify');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a log target must not be empty
SELECT taskq.register_handler('hd_bad', '', kind => 'log');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- nor longer than 1024 bytes
SELECT taskq.register_handler('hd_bad', repeat('x', 1025), kind => 'log');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- priority above 100
SELECT taskq.register_handler('hd_bad', 'app.record', priority => 101);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- priority below -100
SELECT taskq.register_handler('hd_bad', 'app.record', priority => -101);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- max_attempts 0
SELECT taskq.register_handler('hd_bad', 'app.record', max_attempts => 0);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- max_attempts 1001
SELECT taskq.register_handler('hd_bad', 'app.record', max_attempts => 1001);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- timeout zero
SELECT taskq.register_handler('hd_bad', 'app.record', timeout => '0s');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- timeout negative
SELECT taskq.register_handler('hd_bad', 'app.record', timeout => '-1 min');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- timeout above 24 days
SELECT taskq.register_handler('hd_bad', 'app.record', timeout => '25 days');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- an empty queue name
SELECT taskq.register_handler('hd_bad', 'app.record', queue => '');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a queue name of 64 bytes
SELECT taskq.register_handler('hd_bad', 'app.record', queue => repeat('q', 64));
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- ack => false on a function handler
SELECT taskq.register_handler('hd_bad', 'app.record', ack => false);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- ack => false on a log handler
SELECT taskq.register_handler('hd_bad', 'would log', kind => 'log', ack => false);
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- a refused update leaves the existing registration as it was
SELECT taskq.register_handler('hd_log', 'app.record', priority => 500);
SELECT name, kind, target, priority FROM taskq.handlers WHERE name = 'hd_log';

-- a malformed target is refused with the target, the parser's complaint and a hint
SELECT taskq.register_handler('hd_bad', 'app.record(');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

-- an argument type that does not exist
SELECT taskq.register_handler('hd_bad', 'app.record(no_such_type)');
SELECT count(*) FROM taskq.handlers WHERE name = 'hd_bad';

------------------------------------------------------------------------
-- enqueue() keeps registrations per session: every change is seen
------------------------------------------------------------------------

-- a registration changed after an enqueue is used by the next one
SELECT taskq.register_handler('hd_cache', 'app.record', priority => 1);
SELECT taskq.enqueue('hd_cache', '{}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;
SELECT taskq.register_handler('hd_cache', 'app.record', priority => 2);
SELECT taskq.enqueue('hd_cache', '{}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;

-- a change rolled back (entirely, or to a savepoint) is forgotten
BEGIN;
SELECT taskq.register_handler('hd_cache', 'app.record', priority => 3);
SELECT taskq.enqueue('hd_cache', '{}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;
ROLLBACK;
SELECT taskq.enqueue('hd_cache', '{}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;
BEGIN;
SAVEPOINT s;
SELECT taskq.register_handler('hd_cache', 'app.record', priority => 4);
SELECT taskq.enqueue('hd_cache', '{}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;
ROLLBACK TO SAVEPOINT s;
SELECT taskq.enqueue('hd_cache', '{}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;
COMMIT;

-- a change and an enqueue in one statement
DO $$
DECLARE
    task bigint;
BEGIN
    PERFORM taskq.register_handler('hd_cache', 'app.record', priority => 5);
    task := taskq.enqueue('hd_cache', '{}');
    RAISE NOTICE 'priority %', (SELECT priority FROM taskq.tasks WHERE id = task);
END
$$;

-- an unregistered handler is refused at once
SELECT taskq.unregister_handler('hd_cache');
SELECT taskq.enqueue('hd_cache', '{}');
