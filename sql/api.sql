--
-- api: taskq.cancel(), retry(), ack(), nack(), wait(), pause(), resume(),
-- and the views taskq.stats and taskq.workers.  Handler names and ledger
-- tags start with api_.  Task ids start at 50000 here so that messages
-- naming a task are the same on every run.
--

SELECT setval('taskq.tasks_id_seq', 50000, false);

SELECT taskq.register_handler('api_fn', 'app.record');
SELECT taskq.register_handler('api_notify', 'api_channel', kind => 'notify');
SELECT taskq.register_handler('api_stats', 'app.record', queue => 'api_stats_q');

------------------------------------------------------------------------
-- cancel(id)
------------------------------------------------------------------------

-- a queued task: true, and it ends cancelled
SELECT taskq.enqueue('api_fn', '{"cancel": "queued"}') AS id \gset
SELECT taskq.cancel(:id);
SELECT status, attempts, finished_at IS NOT NULL AS finished FROM taskq.tasks WHERE id = :id;

-- a second cancel: false, the task has already ended
SELECT taskq.cancel(:id);
SELECT status FROM taskq.tasks WHERE id = :id;

-- a completed task: false, it stays completed
SELECT taskq.enqueue('api_fn', '{"tag": "api_cancel_completed"}', mode => 'sync') AS id \gset
SELECT taskq.cancel(:id);
SELECT status FROM taskq.tasks WHERE id = :id;

-- a dispatched task waiting for ack(): true, and its lease is gone
SELECT taskq.enqueue('api_notify', '{"cancel": "dispatched"}', mode => 'sync') AS id \gset
SELECT status, lease_until IS NOT NULL AS leased FROM taskq.tasks WHERE id = :id;
SELECT taskq.cancel(:id);
SELECT status, lease_until IS NOT NULL AS leased, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id = :id;

-- a cancel rolled back leaves the task queued
SELECT taskq.enqueue('api_fn', '{"cancel": "rolled back"}') AS id \gset
BEGIN;
SELECT taskq.cancel(:id);
ROLLBACK;
SELECT status, finished_at FROM taskq.tasks WHERE id = :id;

-- an unknown id
SELECT taskq.cancel(999999999);

-- a NULL id
SELECT taskq.cancel(NULL);

------------------------------------------------------------------------
-- retry(id)
------------------------------------------------------------------------

-- a cancelled task: true; queued again, due now, with a fresh attempt budget
SELECT taskq.enqueue('api_fn', '{"retry": "cancelled"}', max_attempts => 2) AS id \gset
SELECT taskq.cancel(:id);
SELECT taskq.retry(:id);
SELECT status, attempts, max_attempts, run_at <= now() AS due, finished_at
FROM taskq.tasks WHERE id = :id;

-- a queued task: false, it has not ended
SELECT taskq.retry(:id);

-- a completed task: false, it succeeded
SELECT taskq.enqueue('api_fn', '{"tag": "api_retry_completed"}', mode => 'sync') AS id \gset
SELECT taskq.retry(:id);
SELECT status FROM taskq.tasks WHERE id = :id;

-- a failed task: true; attempts start again at 0 and the last error is kept
SELECT taskq.enqueue('api_notify', '{"retry": "failed"}', mode => 'sync', max_attempts => 1) AS id \gset
SELECT taskq.nack(:id, 'listener gave up');
SELECT status, attempts, last_error FROM taskq.tasks WHERE id = :id;
SELECT taskq.retry(:id);
SELECT status, attempts, max_attempts, last_error, finished_at, lease_until
FROM taskq.tasks WHERE id = :id;

-- a task whose dedupe_key is now held by a live task cannot be retried
SELECT taskq.enqueue('api_fn', '{"retry": "dedupe 1"}', dedupe_key => 'api-key') AS first_id \gset
SELECT taskq.cancel(:first_id);
SELECT taskq.enqueue('api_fn', '{"retry": "dedupe 2"}', dedupe_key => 'api-key') AS second_id \gset
SELECT taskq.retry(:first_id);
SELECT id - :first_id AS nth, status, payload FROM taskq.tasks WHERE dedupe_key = 'api-key' ORDER BY id;

-- once the key is free again, it can
SELECT taskq.cancel(:second_id);
SELECT taskq.retry(:first_id);
SELECT id - :first_id AS nth, status, payload FROM taskq.tasks WHERE dedupe_key = 'api-key' ORDER BY id;

-- an error inside retry()'s own subtransaction (here a trigger's) reaches
-- a caller that catches it with its transaction state intact: the
-- caller's block rolls back its own work, and the session goes on
SELECT taskq.enqueue('api_fn', '{"retry": "refused by trigger"}') AS id \gset
SELECT taskq.cancel(:id);
CREATE FUNCTION public.api_refuse_requeue() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN RAISE EXCEPTION 'requeue refused'; END$$;
CREATE TRIGGER api_refuse_requeue BEFORE UPDATE ON taskq.tasks
    FOR EACH ROW WHEN (NEW.status = 'queued' AND NEW.payload @> '{"retry": "refused by trigger"}')
    EXECUTE FUNCTION public.api_refuse_requeue();
CREATE TEMP TABLE api_caught (n int);
DO $$
BEGIN
    BEGIN
        INSERT INTO api_caught VALUES (1);
        PERFORM taskq.retry(id) FROM taskq.tasks WHERE payload @> '{"retry": "refused by trigger"}';
    EXCEPTION WHEN raise_exception THEN
        RAISE NOTICE 'caught: %', SQLERRM;
    END;
    INSERT INTO api_caught VALUES (2);
END
$$;
SELECT n FROM api_caught ORDER BY n;
SELECT status FROM taskq.tasks WHERE id = :id;
DROP TRIGGER api_refuse_requeue ON taskq.tasks;
DROP FUNCTION public.api_refuse_requeue();
SELECT txid_current_if_assigned() IS NULL AS no_open_transaction;

-- an unknown id
SELECT taskq.retry(999999999);

-- a NULL id
SELECT taskq.retry(NULL);

------------------------------------------------------------------------
-- ack(id, result) and nack(id, error, retry_in): a notify task enqueued
-- with mode => 'sync' is dispatched and waits for one of them
------------------------------------------------------------------------

-- ack: true; completed with the result, attempts stay 1
SELECT taskq.enqueue('api_notify', '{"ack": "with result"}', mode => 'sync') AS id \gset
SELECT status, attempts FROM taskq.tasks WHERE id = :id;
SELECT taskq.ack(:id, '{"delivered": true}');
SELECT status, attempts, result, lease_until, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id = :id;

-- a second ack: false, it is no longer dispatched
SELECT taskq.ack(:id, '{"delivered": "twice"}');
SELECT result FROM taskq.tasks WHERE id = :id;

-- ack without a result
SELECT taskq.enqueue('api_notify', '{"ack": "no result"}', mode => 'sync') AS id \gset
SELECT taskq.ack(:id);
SELECT status, result FROM taskq.tasks WHERE id = :id;

-- ack of a queued task: false, it was never dispatched
SELECT taskq.enqueue('api_notify', '{"ack": "queued"}') AS id \gset
SELECT taskq.ack(:id);
SELECT status FROM taskq.tasks WHERE id = :id;

-- nack with retry_in: true; queued again after retry_in, with the error;
-- the attempt is used up
SELECT taskq.enqueue('api_notify', '{"nack": "retry_in"}', mode => 'sync', max_attempts => 3) AS id \gset
SELECT clock_timestamp() AS t0 \gset
SELECT taskq.nack(:id, 'listener busy', retry_in => '1 hour');
SELECT status, attempts, max_attempts, last_error, lease_until, finished_at,
       run_at >= :'t0'::timestamptz + interval '1 hour'
       AND run_at <= clock_timestamp() + interval '1 hour' AS run_in_1h
FROM taskq.tasks WHERE id = :id;

-- a second nack: false, it is no longer dispatched
SELECT taskq.nack(:id, 'again');
SELECT status, last_error FROM taskq.tasks WHERE id = :id;

-- nack without retry_in: the backoff (taskq.retry_backoff = 1s, halved
-- at most by jitter, for a first attempt)
SELECT taskq.enqueue('api_notify', '{"nack": "backoff"}', mode => 'sync') AS id \gset
SELECT clock_timestamp() AS t0 \gset
SELECT taskq.nack(:id, 'listener restarting');
SELECT status, attempts, last_error,
       run_at >= :'t0'::timestamptz + interval '0.5 s'
       AND run_at <= clock_timestamp() + interval '1 s' AS run_after_backoff
FROM taskq.tasks WHERE id = :id;

-- nack with retry_in zero: due at once
SELECT taskq.enqueue('api_notify', '{"nack": "now"}', mode => 'sync') AS id \gset
SELECT taskq.nack(:id, 'try again now', retry_in => '0');
SELECT status, run_at <= clock_timestamp() AS due FROM taskq.tasks WHERE id = :id;

-- nack of the last attempt: failed
SELECT taskq.enqueue('api_notify', '{"nack": "final"}', mode => 'sync', max_attempts => 1) AS id \gset
SELECT taskq.nack(:id, 'poison message', retry_in => '1 min');
SELECT status, attempts, max_attempts, last_error, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id = :id;

-- a long error is cut to 1024 bytes
SELECT taskq.enqueue('api_notify', '{"nack": "long error"}', mode => 'sync') AS id \gset
SELECT taskq.nack(:id, repeat('e', 5000));
SELECT status, length(last_error) FROM taskq.tasks WHERE id = :id;

-- nack of a queued task: false
SELECT taskq.enqueue('api_notify', '{"nack": "queued"}') AS id \gset
SELECT taskq.nack(:id, 'not dispatched');
SELECT status, last_error FROM taskq.tasks WHERE id = :id;

-- ack/nack of a function task: false, function tasks are not acknowledged
SELECT taskq.enqueue('api_fn', '{"tag": "api_ack_function"}', mode => 'sync') AS id \gset
SELECT taskq.ack(:id), taskq.nack(:id, 'no');
SELECT status FROM taskq.tasks WHERE id = :id;

-- bad input: a NULL error
SELECT taskq.enqueue('api_notify', '{"nack": "bad input"}', mode => 'sync') AS id \gset
SELECT taskq.nack(:id, NULL);
SELECT status, last_error FROM taskq.tasks WHERE id = :id;

-- a negative retry_in
SELECT taskq.nack(:id, 'negative', retry_in => '-1 min');
SELECT status, last_error FROM taskq.tasks WHERE id = :id;

-- NULL ids
SELECT taskq.ack(NULL);
SELECT taskq.nack(NULL, 'no task');

-- unknown ids
SELECT taskq.ack(999999999);
SELECT taskq.nack(999999999, 'no task');

-- the task is still dispatched, and can be acknowledged
SELECT taskq.ack(:id, '"finally"');
SELECT status, result FROM taskq.tasks WHERE id = :id;

------------------------------------------------------------------------
-- ack_many(ids, result): ack() for many tasks in one call
------------------------------------------------------------------------

-- two dispatched tasks, one queued, one completed function task and an
-- unknown id (twice): only the two dispatched ones are acknowledged, and
-- returned in id order
SELECT taskq.enqueue('api_notify', '{"ack_many": 1}', mode => 'sync') AS m1 \gset
SELECT taskq.enqueue('api_notify', '{"ack_many": 2}', mode => 'sync') AS m2 \gset
SELECT taskq.enqueue('api_notify', '{"ack_many": "queued"}') AS mq \gset
SELECT taskq.enqueue('api_fn', '{"tag": "api_ack_many"}', mode => 'sync') AS mf \gset
SELECT taskq.ack_many(ARRAY[:m2, 999999999, :mq, :mf, :m1, 999999999], '{"batch": true}')
       = ARRAY[:m1, :m2]::bigint[] AS acked_both;
SELECT id = :m1 AS first, status, result, lease_until, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id IN (:m1, :m2, :mq, :mf) ORDER BY id;

-- again: nothing is awaiting an acknowledgement any more
SELECT taskq.ack_many(ARRAY[:m1, :m2]);

-- an empty array, and one id listed twice
SELECT taskq.ack_many('{}');
SELECT taskq.enqueue('api_notify', '{"ack_many": "twice"}', mode => 'sync') AS m3 \gset
SELECT taskq.ack_many(ARRAY[:m3, :m3]) = ARRAY[:m3]::bigint[] AS acked_once;
SELECT status, result FROM taskq.tasks WHERE id = :m3;

-- bad input: a NULL array, a NULL element, a two-dimensional array
-- (nothing is acknowledged)
SELECT taskq.enqueue('api_notify', '{"ack_many": "bad input"}', mode => 'sync') AS m4 \gset
SELECT taskq.ack_many(NULL);
SELECT taskq.ack_many(ARRAY[:m4, NULL]);
SELECT taskq.ack_many(ARRAY[[:m4], [:m4]]);
SELECT status FROM taskq.tasks WHERE id = :m4;
SELECT taskq.ack_many(ARRAY[:m4]) = ARRAY[:m4]::bigint[] AS acked;

------------------------------------------------------------------------
-- wait(id, timeout)
------------------------------------------------------------------------

-- an ended task: its row at once, with the default timeout of 30 s
SELECT taskq.enqueue('api_fn', '{"tag": "api_wait"}', mode => 'sync') AS id \gset
SELECT clock_timestamp() AS t0 \gset
SELECT id = :id AS same_task, handler, status, attempts, result FROM taskq.wait(:id);
SELECT clock_timestamp() - :'t0'::timestamptz < interval '10 s' AS returned_at_once;

-- a task that is still queued: its row after the timeout
SELECT taskq.enqueue('api_fn', '{"wait": "queued"}') AS id \gset
SELECT clock_timestamp() AS t0 \gset
SELECT status, attempts FROM taskq.wait(:id, '10ms');
SELECT clock_timestamp() - :'t0'::timestamptz >= interval '10 ms' AS waited;

-- a zero timeout only looks
SELECT status FROM taskq.wait(:id, '0');

-- a dispatched task has not ended either
SELECT taskq.enqueue('api_notify', '{"wait": "dispatched"}', mode => 'sync') AS id \gset
SELECT status FROM taskq.wait(:id, '10ms');

-- a task cancelled earlier in this transaction has ended: at once
SELECT taskq.enqueue('api_fn', '{"wait": "cancelled"}') AS id \gset
BEGIN;
SELECT taskq.cancel(:id);
SELECT status FROM taskq.wait(:id, '10 s');
COMMIT;

-- a task enqueued in this transaction cannot end before it commits
BEGIN;
SELECT taskq.enqueue('api_fn', '{"wait": "same transaction"}') AS id \gset
SELECT status FROM taskq.wait(:id, '10 s');
ROLLBACK;

-- REPEATABLE READ: the snapshot would never show the end
SELECT taskq.enqueue('api_fn', '{"wait": "repeatable read"}') AS id \gset
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT status FROM taskq.wait(:id, '10ms');
ROLLBACK;

-- SERIALIZABLE: likewise
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT status FROM taskq.wait(:id, '10ms');
ROLLBACK;

-- a NULL timeout
SELECT taskq.wait(:id, NULL);

-- a negative timeout
SELECT taskq.wait(:id, '-1 s');

-- a NULL id
SELECT taskq.wait(NULL);

-- an unknown id
SELECT taskq.wait(999999999, '0');

------------------------------------------------------------------------
-- pause(queue) and resume(queue)
------------------------------------------------------------------------

-- pause writes taskq.queues
SELECT taskq.pause('api_q');
SELECT name, paused, paused_at IS NOT NULL AS has_paused_at FROM taskq.queues WHERE name = 'api_q';
SELECT paused_at AS first_paused_at FROM taskq.queues WHERE name = 'api_q' \gset

-- pausing twice is fine and keeps the time of the first pause
SELECT taskq.pause('api_q');
SELECT name, paused, paused_at = :'first_paused_at' AS same_paused_at FROM taskq.queues WHERE name = 'api_q';

-- a paused queue still takes tasks; they wait
SELECT taskq.enqueue('api_fn', '{"paused": true}', queue => 'api_q') AS id \gset
SELECT queue, status FROM taskq.tasks WHERE id = :id;

-- resume
SELECT taskq.resume('api_q');
SELECT name, paused, paused_at FROM taskq.queues WHERE name = 'api_q';

-- resuming twice is fine
SELECT taskq.resume('api_q');
SELECT name, paused, paused_at FROM taskq.queues WHERE name = 'api_q';

-- resuming a queue that was never paused does nothing
SELECT taskq.resume('api_never_paused');
SELECT count(*) FROM taskq.queues WHERE name = 'api_never_paused';

-- pause and resume are transactional
BEGIN;
SELECT taskq.pause('api_q_rolled_back');
ROLLBACK;
SELECT count(*) FROM taskq.queues WHERE name = 'api_q_rolled_back';

-- bad input: NULL
SELECT taskq.pause(NULL);
SELECT taskq.resume(NULL);

-- an empty name
SELECT taskq.pause('');
SELECT count(*) FROM taskq.queues WHERE name = '';

-- 64 bytes
SELECT taskq.pause(repeat('q', 64));
SELECT count(*) FROM taskq.queues WHERE name = repeat('q', 64);
SELECT taskq.resume(repeat('q', 64));

-- a control character (a tab)
SELECT taskq.pause(E'api\tq');
SELECT count(*) FROM taskq.queues WHERE name = E'api\tq';

------------------------------------------------------------------------
-- taskq.stats: per queue and handler
------------------------------------------------------------------------

-- three queued (one not due for an hour), two completed, one cancelled
SELECT taskq.enqueue('api_stats', '{"stats": 1}') > 0 AS enqueued;
SELECT taskq.enqueue('api_stats', '{"stats": 2}') > 0 AS enqueued;
SELECT taskq.enqueue('api_stats', '{"stats": 3}', run_after => '1 hour') > 0 AS enqueued;
SELECT taskq.enqueue('api_stats', '{"tag": "api_stats", "stats": 4}', mode => 'sync') > 0 AS enqueued;
SELECT taskq.enqueue('api_stats', '{"tag": "api_stats", "stats": 5}', mode => 'sync') > 0 AS enqueued;
SELECT taskq.cancel(taskq.enqueue('api_stats', '{"stats": 6}'));
SELECT queue, handler, queued, due, running, dispatched, completed, failed,
       cancelled, timeout, expired, oldest_due_age IS NOT NULL AS has_oldest_due_age,
       oldest_due_age >= interval '0' AS age_not_negative
FROM taskq.stats WHERE handler = 'api_stats';

-- the notify tasks of this file, and the outcomes acknowledged since the
-- server started: 3 acks, 4 nacks to retry, 2 final nacks (due is not
-- shown: two tasks become due after a backoff of under a second)
SELECT queue, handler, queued, dispatched, completed, failed, cancelled,
       completed_since_start, failed_since_start, retried_since_start
FROM taskq.stats WHERE handler = 'api_notify';

-- the counters follow subtransactions: outcomes rolled back to a savepoint
-- (or by a PL/pgSQL exception handler) are not counted, even when the
-- top-level transaction commits; those of a released savepoint are
SELECT taskq.register_handler('api_subxact', 'api_channel', kind => 'notify');
SELECT taskq.enqueue('api_subxact', '{"subxact": 1}', mode => 'sync') AS s1 \gset
SELECT taskq.enqueue('api_subxact', '{"subxact": 2}', mode => 'sync') AS s2 \gset
SELECT taskq.enqueue('api_subxact', '{"subxact": 3}', mode => 'sync') AS s3 \gset
BEGIN;
SAVEPOINT a;
SELECT taskq.ack(:s1);
ROLLBACK TO a;
SAVEPOINT b;
SELECT taskq.nack(:s2, 'rolled back', retry_in => '1 hour');
SAVEPOINT c;
SELECT taskq.ack(:s3);
RELEASE c;
ROLLBACK TO b;
COMMIT;
CREATE FUNCTION pg_temp.ack_then_fail(task bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM taskq.ack(task);
    RAISE EXCEPTION 'undo the ack';
EXCEPTION WHEN raise_exception THEN
    RETURN false;
END
$$;
SELECT pg_temp.ack_then_fail(:s3);
SELECT id - :s1 AS nth, status FROM taskq.tasks WHERE handler = 'api_subxact' ORDER BY id;
SELECT completed_since_start, failed_since_start, retried_since_start
FROM taskq.stats WHERE handler = 'api_subxact';
BEGIN;
SAVEPOINT a;
SELECT taskq.ack(:s1);
RELEASE a;
SAVEPOINT b;
SAVEPOINT c;
SELECT taskq.nack(:s2, 'counted', retry_in => '1 hour');
RELEASE c;
RELEASE b;
COMMIT;
SELECT id - :s1 AS nth, status FROM taskq.tasks WHERE handler = 'api_subxact' ORDER BY id;
SELECT completed_since_start, failed_since_start, retried_since_start
FROM taskq.stats WHERE handler = 'api_subxact';

-- a queue with no task has no row
SELECT count(*) FROM taskq.stats WHERE queue = 'api_never_used';

------------------------------------------------------------------------
-- taskq.workers: the launcher and this database's dispatchers
------------------------------------------------------------------------

-- the dispatchers start when CREATE EXTENSION commits; give them up to
-- 30 s to report in
DO $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        EXIT WHEN (SELECT count(*) FROM taskq.workers
                   WHERE type = 'dispatcher' AND state = 'disabled') = 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;

-- taskq.workers = 2 dispatchers, disabled because taskq.enabled = off,
-- running nothing and having processed nothing
SELECT type, database, worker, state, queue, current_task, task_started_at,
       processed, failed, last_error, pid > 0 AS has_pid
FROM taskq.workers
ORDER BY type, worker;
