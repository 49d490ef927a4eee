--
-- options: how enqueue options resolve (DESIGN section 3).  First match
-- wins: the per-call argument, the handler's registration, the GUC
-- (taskq.default_priority, default_queue, default_max_attempts,
-- default_timeout, default_mode), the built-in fallback (priority 0,
-- queue 'default', 5 attempts, 5 min, async).  Handler names start with
-- opt_; every task's payload says which case it shows.
--

SELECT setval('taskq.tasks_id_seq', 30000, false);

-- a handler without options; one with every option; one with some
SELECT taskq.register_handler('opt_plain', 'app.record');
SELECT taskq.register_handler('opt_set', 'app.record', queue => 'opt_handler_q',
    priority => 20, max_attempts => 8, timeout => '8 min');
SELECT taskq.register_handler('opt_partial', 'app.record', priority => 15, timeout => '1.5s');

-- the GUCs start at their built-in values
SHOW taskq.default_priority;
SHOW taskq.default_queue;
SHOW taskq.default_max_attempts;
SHOW taskq.default_timeout;
SHOW taskq.default_mode;

------------------------------------------------------------------------
-- priority, queue, max_attempts, timeout
------------------------------------------------------------------------

-- the built-in fallback: no GUC set, no handler option, no argument
SELECT taskq.enqueue('opt_plain', '{"case": "1 fallback"}') > 0 AS enqueued;

-- the handler's registration beats the fallback
SELECT taskq.enqueue('opt_set', '{"case": "2 handler"}') > 0 AS enqueued;

-- the per-call arguments beat the handler's registration
SELECT taskq.enqueue('opt_set', '{"case": "3 per-call over handler"}', priority => -3,
    queue => 'opt_call_q', max_attempts => 2, timeout => '2s') > 0 AS enqueued;

-- a per-call 0 is a value, not "unset"
SELECT taskq.enqueue('opt_set', '{"case": "4 per-call zero priority"}', priority => 0) > 0 AS enqueued;

-- session GUCs
SET taskq.default_priority = 7;
SET taskq.default_queue = 'opt_guc_q';
SET taskq.default_max_attempts = 3;
SET taskq.default_timeout = '90s';
SHOW taskq.default_timeout;

-- the GUCs beat the fallback
SELECT taskq.enqueue('opt_plain', '{"case": "5 guc"}') > 0 AS enqueued;

-- the handler's registration beats the GUCs
SELECT taskq.enqueue('opt_set', '{"case": "6 handler over guc"}') > 0 AS enqueued;

-- per option: what the handler sets comes from it, the rest from the GUCs
SELECT taskq.enqueue('opt_partial', '{"case": "7 handler and guc mixed"}') > 0 AS enqueued;

-- the per-call arguments beat the GUCs
SELECT taskq.enqueue('opt_plain', '{"case": "8 per-call over guc"}', priority => -7,
    queue => 'opt_call_q', max_attempts => 1, timeout => '1s') > 0 AS enqueued;

-- RESET brings back the fallback
RESET taskq.default_priority;
RESET taskq.default_queue;
RESET taskq.default_max_attempts;
RESET taskq.default_timeout;
SELECT taskq.enqueue('opt_plain', '{"case": "9 fallback after reset"}') > 0 AS enqueued;

-- what each case resolved to
SELECT payload->>'case' AS "case", handler, priority, queue, max_attempts, timeout, status
FROM taskq.tasks
WHERE handler LIKE 'opt\_%' AND payload ? 'case'
ORDER BY id;

------------------------------------------------------------------------
-- mode (handlers have no mode option: per call, then GUC, then async)
------------------------------------------------------------------------

-- the fallback is async: the task waits for the workers
SELECT taskq.enqueue('opt_plain', '{"mode_case": "1 fallback", "tag": "opt_mode"}') AS id \gset
SELECT status, attempts FROM taskq.tasks WHERE id = :id;

-- taskq.default_mode = sync runs the handler now, in this transaction
SET taskq.default_mode = 'sync';
SELECT taskq.enqueue('opt_plain', '{"mode_case": "2 guc sync", "tag": "opt_mode"}') AS id \gset
SELECT status, attempts FROM taskq.tasks WHERE id = :id;

-- a per-call mode beats the GUC
SELECT taskq.enqueue('opt_plain', '{"mode_case": "3 per-call async over guc", "tag": "opt_mode"}', mode => 'async') AS id \gset
SELECT status, attempts FROM taskq.tasks WHERE id = :id;
RESET taskq.default_mode;

-- and the fallback
SELECT taskq.enqueue('opt_plain', '{"mode_case": "4 per-call sync over fallback", "tag": "opt_mode"}', mode => 'sync') AS id \gset
SELECT status, attempts FROM taskq.tasks WHERE id = :id;

-- only the sync ones ran
SELECT payload->>'mode_case' AS mode_case FROM app.ledger WHERE tag = 'opt_mode' ORDER BY n;

------------------------------------------------------------------------
-- Scopes: SET LOCAL, set_config(), per database, per role
------------------------------------------------------------------------

-- SET LOCAL lasts until the end of the transaction
SET taskq.default_priority = 5;
BEGIN;
SET LOCAL taskq.default_priority = 50;
SHOW taskq.default_priority;
SELECT taskq.enqueue('opt_plain', '{"scope": "set local"}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;
COMMIT;
-- ... then the session value is back
SHOW taskq.default_priority;
SELECT taskq.enqueue('opt_plain', '{"scope": "after set local"}') AS id \gset
SELECT priority FROM taskq.tasks WHERE id = :id;

-- and after a rollback too
BEGIN;
SET LOCAL taskq.default_priority = 60;
ROLLBACK;
SHOW taskq.default_priority;
RESET taskq.default_priority;

-- set_config(..., true) is SET LOCAL
BEGIN;
SELECT set_config('taskq.default_queue', 'opt_set_config_q', true);
SELECT taskq.enqueue('opt_plain', '{"scope": "set_config local"}') AS id \gset
SELECT queue FROM taskq.tasks WHERE id = :id;
COMMIT;
SHOW taskq.default_queue;

-- set_config(..., false) is SET
SELECT set_config('taskq.default_max_attempts', '9', false);
SELECT taskq.enqueue('opt_plain', '{"scope": "set_config session"}') AS id \gset
SELECT max_attempts FROM taskq.tasks WHERE id = :id;
RESET taskq.default_max_attempts;

-- ALTER DATABASE ... SET applies to new sessions of the database
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET taskq.default_queue = %L', current_database(), 'opt_database_q');
END
$$;
SHOW taskq.default_queue;
\c
SHOW taskq.default_queue;
SELECT taskq.enqueue('opt_plain', '{"scope": "alter database"}') AS id \gset
SELECT queue FROM taskq.tasks WHERE id = :id;

-- ALTER ROLE ... IN DATABASE ... SET beats the database's setting
DO $$
BEGIN
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET taskq.default_queue = %L',
                   current_user, current_database(), 'opt_role_q');
END
$$;
\c
SHOW taskq.default_queue;
SELECT taskq.enqueue('opt_plain', '{"scope": "alter role in database"}') AS id \gset
SELECT queue FROM taskq.tasks WHERE id = :id;

-- a session SET beats both
SET taskq.default_queue = 'opt_session_q';
SELECT taskq.enqueue('opt_plain', '{"scope": "set over alter role"}') AS id \gset
SELECT queue FROM taskq.tasks WHERE id = :id;

-- RESET goes back to the role's setting, not the built-in value
RESET taskq.default_queue;
SHOW taskq.default_queue;

-- undo both, for the tests that follow
DO $$
BEGIN
    EXECUTE format('ALTER ROLE %I IN DATABASE %I RESET taskq.default_queue', current_user, current_database());
    EXECUTE format('ALTER DATABASE %I RESET taskq.default_queue', current_database());
END
$$;
\c
SHOW taskq.default_queue;

------------------------------------------------------------------------
-- Timeouts are kept in milliseconds
------------------------------------------------------------------------

-- a handler's timeout below 1 ms rounds up to 1 ms, as a per-call one does
SELECT taskq.register_handler('opt_tiny_timeout', 'app.record', timeout => '400 microseconds');
SELECT taskq.enqueue('opt_tiny_timeout', '{"timeout": "handler"}') AS id \gset
SELECT timeout FROM taskq.tasks WHERE id = :id;
SELECT taskq.enqueue('opt_tiny_timeout', '{"timeout": "per call"}', timeout => '400 microseconds') AS id \gset
SELECT timeout FROM taskq.tasks WHERE id = :id;

-- the GUC takes units
SET taskq.default_timeout = '2min';
SHOW taskq.default_timeout;
SELECT taskq.enqueue('opt_plain', '{"timeout": "guc 2min"}') AS id \gset
SELECT timeout FROM taskq.tasks WHERE id = :id;
RESET taskq.default_timeout;

------------------------------------------------------------------------
-- Bad settings are refused and leave the old value
------------------------------------------------------------------------

-- a default priority out of range
SET taskq.default_priority = 101;
SET taskq.default_priority = -101;
SHOW taskq.default_priority;

-- an empty default queue
SET taskq.default_queue = '';
SHOW taskq.default_queue;

-- a default queue of 64 bytes
SET taskq.default_queue = 'qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq';
SHOW taskq.default_queue;

-- a default queue with a control character
SELECT set_config('taskq.default_queue', E'opt\tq', false);
SHOW taskq.default_queue;

-- default_max_attempts out of range
SET taskq.default_max_attempts = 0;
SET taskq.default_max_attempts = 1001;
SHOW taskq.default_max_attempts;

-- a zero default timeout
SET taskq.default_timeout = 0;
SHOW taskq.default_timeout;

-- an unknown default mode
SET taskq.default_mode = 'later';
SHOW taskq.default_mode;

-- an unknown policy
SET taskq.policy = 'nope';
SHOW taskq.policy;

-- a malformed block_handlers list
SET taskq.block_handlers = 'opt_a,,opt_b';
SHOW taskq.block_handlers;

-- a setting of the workers (SIGHUP): only postgresql.conf and a reload change it
SET taskq.batch_size = 65;
SET taskq.batch_size = 16;
SET taskq.enabled = on;
SHOW taskq.batch_size;
SHOW taskq.enabled;

-- an unknown setting under the reserved prefix taskq.
SET taskq.unknown_thing = 1;

-- the refused settings wrote nothing: these are the tasks enqueued above
SELECT count(*) FROM taskq.tasks WHERE handler LIKE 'opt\_%';
