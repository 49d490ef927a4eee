--
-- policies: taskq.policy, taskq.block_handlers, mode => 'sync' (run the
-- handler now, in the caller's transaction) and taskq.require_enqueue.
-- Handler names and ledger tags start with pol_.
--

SELECT setval('taskq.tasks_id_seq', 40000, false);

SELECT taskq.register_handler('pol_fn', 'app.record');
SELECT taskq.register_handler('pol_other', 'app.record');
SELECT taskq.register_handler('pol_void', 'app.touch');
SELECT taskq.register_handler('pol_text', 'app.describe');
SELECT taskq.register_handler('pol_fail', 'app.fail');
SELECT taskq.register_handler('pol_MixedCase', 'app.record');
SELECT taskq.register_handler('pol_notify', 'pol_channel', kind => 'notify');
SELECT taskq.register_handler('pol_notify_noack', 'pol_channel', kind => 'notify', ack => false);
SELECT taskq.register_handler('pol_log', 'would print a receipt', kind => 'log');

------------------------------------------------------------------------
-- taskq.policy
------------------------------------------------------------------------

-- dispatch is the default: enqueue() writes the task
SHOW taskq.policy;
SELECT taskq.enqueue('pol_fn', '{"policy": "dispatch"}') > 0 AS enqueued;
SELECT status FROM taskq.tasks WHERE payload = '{"policy": "dispatch"}';

-- drop: enqueue() returns NULL and writes nothing
SET taskq.policy = 'drop';
SELECT taskq.enqueue('pol_fn', '{"policy": "drop"}') IS NULL AS dropped;
SELECT count(*) FROM taskq.tasks WHERE payload = '{"policy": "drop"}';

-- drop: enqueue_many() returns one NULL per payload
SELECT n, id IS NULL AS dropped
FROM taskq.enqueue_many('pol_fn', ARRAY['{"policy": "drop many"}', '{"policy": "drop many"}']::jsonb[])
     WITH ORDINALITY AS t(id, n)
ORDER BY n;
SELECT count(*) FROM taskq.tasks WHERE payload = '{"policy": "drop many"}';

-- drop: a sync handler does not run either
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_drop_sync"}', mode => 'sync') IS NULL AS dropped;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_drop_sync';
SELECT count(*) FROM taskq.tasks WHERE payload = '{"tag": "pol_drop_sync"}';

-- drop: bad input is still refused
SELECT taskq.enqueue('pol_unknown', '{"policy": "drop"}');
SELECT taskq.enqueue('pol_fn', '{"policy": "drop"}', priority => 101);
RESET taskq.policy;

-- assert_none: enqueue() raises an error naming the handler
SET taskq.policy = 'assert_none';
SELECT taskq.enqueue('pol_fn', '{"policy": "assert_none"}');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"policy": "assert_none"}';

-- assert_none: enqueue_many() too
SELECT taskq.enqueue_many('pol_other', ARRAY['{"policy": "assert_none many"}']::jsonb[]);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"policy": "assert_none many"}';

-- assert_none: a sync handler does not run
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_assert_sync"}', mode => 'sync');
SELECT count(*) FROM app.ledger WHERE tag = 'pol_assert_sync';
SELECT count(*) FROM taskq.tasks WHERE payload = '{"tag": "pol_assert_sync"}';

-- assert_none: statements that enqueue nothing run as usual
SELECT count(*) AS ledger_rows FROM app.ledger WHERE tag LIKE 'pol\_%';
RESET taskq.policy;

-- SET LOCAL scopes a policy to one transaction
BEGIN;
SET LOCAL taskq.policy = 'drop';
SELECT taskq.enqueue('pol_fn', '{"policy": "in local drop"}') IS NULL AS dropped;
COMMIT;
SHOW taskq.policy;
SELECT taskq.enqueue('pol_fn', '{"policy": "after local drop"}') IS NULL AS dropped;
SELECT payload FROM taskq.tasks WHERE payload->>'policy' LIKE '%local drop' ORDER BY id;

-- a transaction that asserts no side effects, in a code path that has one, fails as a whole
BEGIN;
SELECT taskq.enqueue('pol_fn', '{"policy": "before assert"}') > 0 AS enqueued;
SET LOCAL taskq.policy = 'assert_none';
SELECT taskq.enqueue('pol_fn', '{"policy": "under assert"}');
COMMIT;
SHOW taskq.policy;
SELECT count(*) FROM taskq.tasks WHERE payload->>'policy' IN ('before assert', 'under assert');

------------------------------------------------------------------------
-- taskq.block_handlers
------------------------------------------------------------------------

-- the listed handlers are dropped, the others dispatch
SET taskq.block_handlers = 'pol_fn, pol_void';
SELECT taskq.enqueue('pol_fn', '{"blocked": 1}') IS NULL AS pol_fn_dropped,
       taskq.enqueue('pol_void', '{"blocked": 2}') IS NULL AS pol_void_dropped,
       taskq.enqueue('pol_other', '{"blocked": 3}') IS NULL AS pol_other_dropped;
SELECT handler, payload FROM taskq.tasks WHERE payload ? 'blocked' ORDER BY id;

-- enqueue_many() of a blocked handler returns NULLs
SELECT id IS NULL AS dropped FROM taskq.enqueue_many('pol_void', ARRAY['{"blocked": 4}']::jsonb[]) AS id;

-- a blocked sync handler does not run
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_blocked_sync"}', mode => 'sync') IS NULL AS dropped;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_blocked_sync';

-- a handler name is matched as it is spelled, upper case included
SET taskq.block_handlers = 'pol_MixedCase';
SELECT taskq.enqueue('pol_MixedCase', '{"blocked": 5}') IS NULL AS dropped;
SELECT count(*) FROM taskq.tasks WHERE handler = 'pol_MixedCase';

-- SET LOCAL scopes the list to one transaction
BEGIN;
SET LOCAL taskq.block_handlers = 'pol_other';
SELECT taskq.enqueue('pol_other', '{"blocked": 6}') IS NULL AS dropped;
COMMIT;
SHOW taskq.block_handlers;
RESET taskq.block_handlers;
SELECT taskq.enqueue('pol_other', '{"blocked": 7}') IS NULL AS dropped;
SELECT handler, payload FROM taskq.tasks WHERE payload ? 'blocked' ORDER BY id;

------------------------------------------------------------------------
-- mode => 'sync': the handler runs now, in the caller's transaction
------------------------------------------------------------------------

-- a function handler: its writes are visible at once, and the task is
-- completed with the handler's result after one attempt
BEGIN;
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_sync", "order": 42}', mode => 'sync') AS id \gset
SELECT tag, payload, run_by = current_user AS run_by_me FROM app.ledger WHERE tag = 'pol_sync';
SELECT status, attempts, max_attempts, result, started_at IS NOT NULL AS started,
       finished_at IS NOT NULL AS finished, lease_until, last_error
FROM taskq.tasks WHERE id = :id;
COMMIT;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_sync';
SELECT status FROM taskq.tasks WHERE id = :id;

-- ROLLBACK removes the task and the handler's effects together
BEGIN;
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_sync_rollback"}', mode => 'sync') AS id \gset
SELECT count(*) FROM app.ledger WHERE tag = 'pol_sync_rollback';
SELECT status FROM taskq.tasks WHERE id = :id;
ROLLBACK;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_sync_rollback';
SELECT count(*) FROM taskq.tasks WHERE id = :id;

-- so does ROLLBACK TO SAVEPOINT
BEGIN;
SAVEPOINT before_sync;
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_sync_savepoint"}', mode => 'sync') > 0 AS ran;
ROLLBACK TO SAVEPOINT before_sync;
COMMIT;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_sync_savepoint';
SELECT count(*) FROM taskq.tasks WHERE payload = '{"tag": "pol_sync_savepoint"}';

-- a handler returning void: completed, no result
SELECT taskq.enqueue('pol_void', '{"tag": "pol_sync_void"}', mode => 'sync') AS id \gset
SELECT status, attempts, result FROM taskq.tasks WHERE id = :id;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_sync_void';

-- a handler returning text: the result is a JSON string
SELECT taskq.enqueue('pol_text', '[1, 2]', mode => 'sync') AS id \gset
SELECT status, result, jsonb_typeof(result) FROM taskq.tasks WHERE id = :id;

-- a handler that raises: enqueue() fails with the handler's error, and
-- neither the task nor the handler's writes remain
SELECT taskq.enqueue('pol_fail', '{"tag": "pol_sync_fail", "why": "card declined"}', mode => 'sync');
SELECT count(*) FROM taskq.tasks WHERE handler = 'pol_fail';
SELECT count(*) FROM app.ledger WHERE tag = 'pol_sync_fail';

-- ... and the transaction around it fails, with what it enqueued before
BEGIN;
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_before_fail"}') > 0 AS enqueued;
SELECT taskq.enqueue('pol_fail', '{"tag": "pol_sync_fail"}', mode => 'sync');
COMMIT;
SELECT count(*) FROM taskq.tasks WHERE payload = '{"tag": "pol_before_fail"}';
SELECT count(*) FROM taskq.tasks WHERE handler = 'pol_fail';

-- a handler whose function was dropped after registration
CREATE FUNCTION app.pol_gone(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT payload $$;
SELECT taskq.register_handler('pol_gone', 'app.pol_gone');
DROP FUNCTION app.pol_gone(jsonb);
SELECT taskq.enqueue('pol_gone', '{"sync": "gone"}', mode => 'sync');
SELECT count(*) FROM taskq.tasks WHERE handler = 'pol_gone';

-- a notify handler: the task is dispatched (NOTIFY is sent at commit) and
-- waits for ack() under a lease
SELECT taskq.enqueue('pol_notify', '{"sync": "notify"}', mode => 'sync') AS id \gset
SELECT status, attempts, result, lease_until > now() AS leased, finished_at
FROM taskq.tasks WHERE id = :id;

-- a notify handler with ack => false: completed on send
SELECT taskq.enqueue('pol_notify_noack', '{"sync": "notify no ack"}', mode => 'sync') AS id \gset
SELECT status, attempts, result, lease_until, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id = :id;

-- a log handler: completed, having written to the server log
SELECT taskq.enqueue('pol_log', '{"sync": "log"}', mode => 'sync') AS id \gset
SELECT status, attempts, result, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id = :id;

-- enqueue_many() runs every payload's handler
SELECT count(*) FROM taskq.enqueue_many('pol_fn', ARRAY['{"tag": "pol_sync_many", "n": 1}', '{"tag": "pol_sync_many", "n": 2}']::jsonb[], mode => 'sync');
SELECT payload->>'n' AS n FROM app.ledger WHERE tag = 'pol_sync_many' ORDER BY n;
SELECT status, count(*) FROM taskq.tasks WHERE payload->>'tag' = 'pol_sync_many' GROUP BY status;

-- with a dedupe_key held by a live (dispatched) task: that task's id, and
-- nothing runs again
SELECT taskq.enqueue('pol_notify', '{"sync": "key 1"}', mode => 'sync', dedupe_key => 'pol-key') AS id \gset
SELECT taskq.enqueue('pol_notify', '{"sync": "key 2"}', mode => 'sync', dedupe_key => 'pol-key') = :id AS same_id;
SELECT status, payload FROM taskq.tasks WHERE dedupe_key = 'pol-key';

-- a completed task does not hold its key: the handler runs again
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_sync_dedupe"}', mode => 'sync', dedupe_key => 'pol-key-2') AS id1 \gset
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_sync_dedupe"}', mode => 'sync', dedupe_key => 'pol-key-2') AS id2 \gset
SELECT :id2 <> :id1 AS new_task;
SELECT count(*) AS runs FROM app.ledger WHERE tag = 'pol_sync_dedupe';

------------------------------------------------------------------------
-- taskq.require_enqueue = on forces async, even when sync is asked for
------------------------------------------------------------------------

SET taskq.require_enqueue = on;

-- per call
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_required"}', mode => 'sync') AS id \gset
SELECT status, attempts, result FROM taskq.tasks WHERE id = :id;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_required';

-- by taskq.default_mode
SET taskq.default_mode = 'sync';
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_required_guc"}') AS id \gset
SELECT status, attempts FROM taskq.tasks WHERE id = :id;
SELECT count(*) FROM app.ledger WHERE tag = 'pol_required_guc';

RESET taskq.default_mode;
RESET taskq.require_enqueue;

-- off again: sync runs
SELECT taskq.enqueue('pol_fn', '{"tag": "pol_not_required"}', mode => 'sync') AS id \gset
SELECT status FROM taskq.tasks WHERE id = :id;

-- sync mode refuses a disabled handler (async would keep the task queued)
SELECT taskq.register_handler('pol_disabled', 'app.record', enabled => false);
SELECT taskq.enqueue('pol_disabled', '{"tag": "pol_disabled_sync"}', mode => 'sync');
SELECT count(*) FROM taskq.tasks WHERE handler = 'pol_disabled';
SELECT count(*) FROM app.ledger WHERE tag = 'pol_disabled_sync';
-- ... while async records it, queued
SELECT taskq.enqueue('pol_disabled', '{"tag": "pol_disabled_async"}') > 0 AS enqueued;
SELECT status, count(*) FROM taskq.tasks WHERE handler = 'pol_disabled' GROUP BY status;
