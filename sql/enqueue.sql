--
-- enqueue: taskq.enqueue() and taskq.enqueue_many(): what they write, and
-- every input they refuse.  Handler names start with enq_.  All tasks here
-- stay queued: the dispatchers are disabled (taskq.enabled = off).
--

-- task ids from here on (only differences between ids are shown)
SELECT setval('taskq.tasks_id_seq', 20000, false);

-- handlers without options, so that the built-in fallbacks apply
SELECT taskq.register_handler('enq_fn', 'app.record');
SELECT taskq.register_handler('enq_other', 'app.record');
SELECT taskq.register_handler('enq_notify', 'enq_channel', kind => 'notify');

------------------------------------------------------------------------
-- enqueue() with the defaults
------------------------------------------------------------------------

-- returns the id of the new task
SELECT taskq.enqueue('enq_fn') AS id \gset
SELECT :id > 0 AS has_id;

-- the row: queued, payload '{}', the fallback options, owned by the caller,
-- due now (run_at is the transaction's time), nothing run yet
SELECT handler, status, payload, metadata, priority, queue, attempts,
       max_attempts, timeout, owner = current_user::regrole AS owned_by_me,
       run_at = enqueued_at AS due_at_enqueue, dedupe_key, expires_at,
       started_at, finished_at, lease_until, worker_pid, result, last_error
FROM taskq.tasks WHERE id = :id;

-- ids increase
SELECT taskq.enqueue('enq_fn') > :id AS later_id_is_larger;

-- run_at and enqueued_at are now() of the enqueuing transaction
BEGIN;
SELECT taskq.enqueue('enq_fn', '{"at": "now"}') AS id \gset
SELECT run_at = now() AS run_at_is_now, enqueued_at = now() AS enqueued_at_is_now
FROM taskq.tasks WHERE id = :id;
COMMIT;

------------------------------------------------------------------------
-- The outbox is transactional
------------------------------------------------------------------------

-- a rolled-back enqueue leaves no task
BEGIN;
SELECT taskq.enqueue('enq_fn', '{"tx": "rolled back"}') > 0 AS enqueued;
SELECT count(*) FROM taskq.tasks WHERE payload = '{"tx": "rolled back"}';
ROLLBACK;
SELECT count(*) FROM taskq.tasks WHERE payload = '{"tx": "rolled back"}';

-- so does one rolled back to a savepoint, while the rest of the transaction commits
BEGIN;
SELECT taskq.enqueue('enq_fn', '{"tx": "kept"}') > 0 AS enqueued;
SAVEPOINT s;
SELECT taskq.enqueue('enq_fn', '{"tx": "rolled back to savepoint"}') > 0 AS enqueued;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT payload FROM taskq.tasks WHERE payload ? 'tx' ORDER BY id;

------------------------------------------------------------------------
-- Payloads: any JSON value
------------------------------------------------------------------------

-- an object, an array, a string, a number, a boolean and JSON null
SELECT taskq.enqueue('enq_other', '{"order_id": 42, "lines": [1, 2]}') > 0 AS object,
       taskq.enqueue('enq_other', '[1, "two", null]') > 0 AS array,
       taskq.enqueue('enq_other', '"just a string"') > 0 AS string,
       taskq.enqueue('enq_other', '3.25') > 0 AS number,
       taskq.enqueue('enq_other', 'true') > 0 AS boolean,
       taskq.enqueue('enq_other', 'null') > 0 AS json_null;
SELECT payload, jsonb_typeof(payload) FROM taskq.tasks WHERE handler = 'enq_other' ORDER BY id;

------------------------------------------------------------------------
-- Every option given per call
------------------------------------------------------------------------

-- priority, queue, max_attempts, timeout, dedupe_key, metadata
SELECT taskq.enqueue('enq_fn', '{"options": "all"}', priority => 42, queue => 'enq_queue',
    max_attempts => 9, timeout => '90s', dedupe_key => 'enq-all-options',
    metadata => '{"trace_id": "abc", "tenant": 7}', mode => 'async') AS id \gset
SELECT priority, queue, max_attempts, timeout, dedupe_key, metadata, status
FROM taskq.tasks WHERE id = :id;

-- the limits: priority -100 and 100, max_attempts 1 and 1000
SELECT taskq.enqueue('enq_fn', '{"limits": "low"}', priority => -100, max_attempts => 1) AS id \gset
SELECT priority, max_attempts FROM taskq.tasks WHERE id = :id;
SELECT taskq.enqueue('enq_fn', '{"limits": "high"}', priority => 100, max_attempts => 1000) AS id \gset
SELECT priority, max_attempts FROM taskq.tasks WHERE id = :id;

-- the timeout is kept in milliseconds (rounded up)
SELECT taskq.enqueue('enq_fn', '{"timeout": "fractional"}', timeout => '1.0004s') AS id \gset
SELECT timeout FROM taskq.tasks WHERE id = :id;

-- run_after: a delay from now
BEGIN;
SELECT taskq.enqueue('enq_fn', '{"run_after": "1 hour"}', run_after => '1 hour') AS id \gset
SELECT run_at = now() + interval '1 hour' AS run_at_is_now_plus_1h FROM taskq.tasks WHERE id = :id;
COMMIT;

-- run_after zero: due now
BEGIN;
SELECT taskq.enqueue('enq_fn', '{"run_after": "0"}', run_after => '0') AS id \gset
SELECT run_at = now() AS run_at_is_now FROM taskq.tasks WHERE id = :id;
COMMIT;

-- run_at: an absolute time
SELECT taskq.enqueue('enq_fn', '{"run_at": "2100"}', run_at => '2100-01-01 00:00:00+00') AS id \gset
SELECT run_at = '2100-01-01 00:00:00+00' AS run_at_as_given FROM taskq.tasks WHERE id = :id;

-- a run_at in the past: due at once
SELECT taskq.enqueue('enq_fn', '{"run_at": "2000"}', run_at => '2000-01-01 00:00:00+00') AS id \gset
SELECT run_at <= now() AS due FROM taskq.tasks WHERE id = :id;

-- expires_at after the time the task would run
SELECT taskq.enqueue('enq_fn', '{"expires": "2100"}', run_at => '2100-01-01 00:00:00+00',
    expires_at => '2100-01-01 00:00:01+00') AS id \gset
SELECT expires_at = '2100-01-01 00:00:01+00' AS expires_as_given FROM taskq.tasks WHERE id = :id;

-- expires_at 'infinity' is accepted and means never (stored as NULL)
SELECT taskq.enqueue('enq_fn', '{"expires": "never"}', expires_at => 'infinity') AS id \gset
SELECT status, expires_at FROM taskq.tasks WHERE id = :id;

-- metadata may be an empty object
SELECT taskq.enqueue('enq_fn', '{"metadata": "empty"}', metadata => '{}') AS id \gset
SELECT metadata FROM taskq.tasks WHERE id = :id;

-- a notify handler takes a payload that fits in a NOTIFY message
SELECT taskq.enqueue('enq_notify', jsonb_build_object('text', repeat('x', 7000))) AS id \gset
SELECT handler, status, length(payload->>'text') FROM taskq.tasks WHERE id = :id;

------------------------------------------------------------------------
-- dedupe_key: at most one live task per (handler, key)
------------------------------------------------------------------------

-- a second enqueue with the key of a live task returns that task's id
-- and writes nothing, even with another payload
SELECT taskq.enqueue('enq_fn', '{"dedupe": 1}', dedupe_key => 'enq-key') AS first_id \gset
SELECT taskq.enqueue('enq_fn', '{"dedupe": 2}', dedupe_key => 'enq-key') = :first_id AS same_id;
SELECT count(*), min(payload::text) AS payload FROM taskq.tasks WHERE dedupe_key = 'enq-key';

-- the same key for another handler is another task
SELECT taskq.enqueue('enq_other', '{"dedupe": 3}', dedupe_key => 'enq-key') <> :first_id AS new_id;

-- once the live task is cancelled, the key is free again
SELECT taskq.cancel(:first_id);
SELECT taskq.enqueue('enq_fn', '{"dedupe": 4}', dedupe_key => 'enq-key') AS second_id \gset
SELECT :second_id > :first_id AS new_id;
SELECT handler, status, payload FROM taskq.tasks WHERE dedupe_key = 'enq-key' ORDER BY id;

-- the dedupe insert gives way to the dedupe index only: a clash on the
-- primary key (the sequence set back onto an existing id) is an error,
-- not a row silently skipped under another id
SELECT setval('taskq.tasks_id_seq', max(id) - 1) > 0 AS set_back FROM taskq.tasks;
\set VERBOSITY terse
SELECT taskq.enqueue('enq_fn', '{"dedupe": "pk clash"}', dedupe_key => 'enq-pk-clash');
\set VERBOSITY default
SELECT count(*) FROM taskq.tasks WHERE dedupe_key = 'enq-pk-clash';
SELECT setval('taskq.tasks_id_seq', max(id)) > 0 AS restored FROM taskq.tasks;

-- a dedupe_key of 512 bytes is the longest
SELECT taskq.enqueue('enq_fn', '{"dedupe": "long"}', dedupe_key => repeat('k', 512)) > 0 AS enqueued;

------------------------------------------------------------------------
-- enqueue_many(): one task per payload, ids in payload order
------------------------------------------------------------------------

-- returns one id per payload, none NULL, in increasing order
SELECT array_agg(id) AS ids
FROM taskq.enqueue_many('enq_fn', ARRAY['{"many": 1}', '{"many": 2}', '{"many": 3}']::jsonb[]) AS id
\gset
SELECT cardinality(:'ids'::bigint[]) AS n,
       array_position(:'ids'::bigint[], NULL) IS NULL AS no_nulls,
       :'ids'::bigint[] = ARRAY(SELECT unnest(:'ids'::bigint[]) ORDER BY 1) AS increasing;

-- the n-th id is the task of the n-th payload
SELECT u.n, t.payload, t.status
FROM unnest(:'ids'::bigint[]) WITH ORDINALITY AS u(id, n)
JOIN taskq.tasks t ON t.id = u.id
ORDER BY u.n;

-- the options apply to every task
SELECT taskq.enqueue_many('enq_fn', ARRAY['{"many_opts": 1}', '{"many_opts": 2}']::jsonb[],
    priority => 7, queue => 'enq_many_queue', max_attempts => 2, timeout => '10s',
    metadata => '{"batch": "b1"}') > 0 AS enqueued;
SELECT payload, priority, queue, max_attempts, timeout, metadata
FROM taskq.tasks WHERE payload ? 'many_opts' ORDER BY id;

-- an empty array enqueues nothing
SELECT count(*) FROM taskq.enqueue_many('enq_fn', '{}'::jsonb[]);

-- a dedupe_key with a single payload
SELECT count(*) FROM taskq.enqueue_many('enq_fn', ARRAY['{"many": "deduped"}']::jsonb[], dedupe_key => 'enq-many-key');
SELECT count(*) FROM taskq.tasks WHERE dedupe_key = 'enq-many-key';

------------------------------------------------------------------------
-- Bad input: each is refused with a clear error and writes nothing
------------------------------------------------------------------------

-- how many tasks each handler has before the bad calls
SELECT handler, count(*) FROM taskq.tasks WHERE handler LIKE 'enq\_%' GROUP BY handler ORDER BY handler;

-- NULL handler
SELECT taskq.enqueue(NULL, '{"bad": "null handler"}');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "null handler"}';

-- an unregistered handler
SELECT taskq.enqueue('enq_unknown', '{"bad": "unknown handler"}');
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_unknown';

-- NULL payload
SELECT taskq.enqueue('enq_fn', NULL);
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_fn' AND payload = 'null';

-- priority -101
SELECT taskq.enqueue('enq_fn', '{"bad": "priority -101"}', priority => -101);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "priority -101"}';

-- priority 101
SELECT taskq.enqueue('enq_fn', '{"bad": "priority 101"}', priority => 101);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "priority 101"}';

-- run_after and run_at together
SELECT taskq.enqueue('enq_fn', '{"bad": "both"}', run_after => '1 min', run_at => '2100-01-01 00:00:00+00');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "both"}';

-- a negative run_after
SELECT taskq.enqueue('enq_fn', '{"bad": "negative run_after"}', run_after => '-1 min');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "negative run_after"}';

-- a run_after too large to add to a time
SELECT taskq.enqueue('enq_fn', '{"bad": "huge run_after"}', run_after => '1000000 years');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "huge run_after"}';

-- run_at 'infinity'
SELECT taskq.enqueue('enq_fn', '{"bad": "run_at infinity"}', run_at => 'infinity');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "run_at infinity"}';

-- run_at '-infinity'
SELECT taskq.enqueue('enq_fn', '{"bad": "run_at -infinity"}', run_at => '-infinity');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "run_at -infinity"}';

-- expires_at equal to the time the task would run
SELECT taskq.enqueue('enq_fn', '{"bad": "expires at run_at"}', run_at => '2100-01-01 00:00:00+00',
    expires_at => '2100-01-01 00:00:00+00');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "expires at run_at"}';

-- expires_at before the time the task would run (its run_at)
SELECT taskq.enqueue('enq_fn', '{"bad": "expires before"}', run_at => '2100-01-01 00:00:00+00',
    expires_at => '2099-12-31 23:59:59+00');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "expires before"}';

-- expires_at '-infinity'
SELECT taskq.enqueue('enq_fn', '{"bad": "expires -infinity"}', expires_at => '-infinity');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "expires -infinity"}';

-- an unknown mode
SELECT taskq.enqueue('enq_fn', '{"bad": "mode"}', mode => 'later');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "mode"}';

-- modes are case-sensitive
SELECT taskq.enqueue('enq_fn', '{"bad": "mode case"}', mode => 'SYNC');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "mode case"}';

-- max_attempts 0
SELECT taskq.enqueue('enq_fn', '{"bad": "max_attempts 0"}', max_attempts => 0);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "max_attempts 0"}';

-- max_attempts 1001
SELECT taskq.enqueue('enq_fn', '{"bad": "max_attempts 1001"}', max_attempts => 1001);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "max_attempts 1001"}';

-- timeout zero
SELECT taskq.enqueue('enq_fn', '{"bad": "timeout 0"}', timeout => '0');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "timeout 0"}';

-- timeout negative
SELECT taskq.enqueue('enq_fn', '{"bad": "timeout negative"}', timeout => '-5 min');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "timeout negative"}';

-- timeout above 24 days
SELECT taskq.enqueue('enq_fn', '{"bad": "timeout 25 days"}', timeout => '25 days');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "timeout 25 days"}';

-- an empty queue name
SELECT taskq.enqueue('enq_fn', '{"bad": "empty queue"}', queue => '');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "empty queue"}';

-- a queue name with a control character (a newline)
SELECT taskq.enqueue('enq_fn', '{"bad": "queue newline"}', queue => E'enq\nqueue');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "queue newline"}';

-- an empty dedupe_key
SELECT taskq.enqueue('enq_fn', '{"bad": "empty key"}', dedupe_key => '');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "empty key"}';

-- a dedupe_key of 513 bytes
SELECT taskq.enqueue('enq_fn', '{"bad": "long key"}', dedupe_key => repeat('k', 513));
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "long key"}';

-- metadata that is an array
SELECT taskq.enqueue('enq_fn', '{"bad": "metadata array"}', metadata => '["trace"]');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "metadata array"}';

-- metadata that is a string
SELECT taskq.enqueue('enq_fn', '{"bad": "metadata string"}', metadata => '"trace"');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "metadata string"}';

-- metadata that is JSON null
SELECT taskq.enqueue('enq_fn', '{"bad": "metadata null"}', metadata => 'null');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "metadata null"}';

-- a payload whose NOTIFY message would exceed PostgreSQL's 8000-byte limit
SELECT taskq.enqueue('enq_notify', jsonb_build_object('bad', repeat('x', 8000)));
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_notify';

-- the limit counts the metadata too
SELECT taskq.enqueue('enq_notify', '{"bad": "big metadata"}', metadata => jsonb_build_object('m', repeat('x', 8000)));
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_notify';

-- a payload over 64 MB
SELECT taskq.enqueue('enq_fn', jsonb_build_array('too large', repeat('x', 64 * 1024 * 1024)));
SELECT count(*) FROM taskq.tasks WHERE payload @> '["too large"]';

-- enqueue_many: NULL handler
SELECT taskq.enqueue_many(NULL, ARRAY['{"bad": "many null handler"}']::jsonb[]);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "many null handler"}';

-- enqueue_many: an unregistered handler
SELECT taskq.enqueue_many('enq_unknown', ARRAY['{"bad": "many unknown"}']::jsonb[]);
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_unknown';

-- enqueue_many: a NULL array
SELECT taskq.enqueue_many('enq_fn', NULL);
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_fn' AND payload = 'null';

-- enqueue_many: a NULL element (nothing is written for the others either)
SELECT taskq.enqueue_many('enq_fn', ARRAY['{"bad": "many before null"}', NULL]::jsonb[]);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "many before null"}';

-- enqueue_many: a two-dimensional array
SELECT taskq.enqueue_many('enq_fn', ARRAY[['{"bad": "2d"}'], ['{"bad": "2d"}']]::jsonb[]);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "2d"}';

-- enqueue_many: one dedupe_key for two payloads
SELECT taskq.enqueue_many('enq_fn', ARRAY['{"bad": "shared key 1"}', '{"bad": "shared key 2"}']::jsonb[],
    dedupe_key => 'enq-shared');
SELECT count(*) FROM taskq.tasks WHERE dedupe_key = 'enq-shared';

-- enqueue_many: a bad option (checked once, for all payloads)
SELECT taskq.enqueue_many('enq_fn', ARRAY['{"bad": "many priority"}']::jsonb[], priority => 101);
SELECT count(*) FROM taskq.tasks WHERE payload = '{"bad": "many priority"}';

-- enqueue_many: a payload too large for a notify handler, after one that fits
SELECT taskq.enqueue_many('enq_notify', ARRAY['{"fits": true}', jsonb_build_object('bad', repeat('x', 8000))]);
SELECT count(*) FROM taskq.tasks WHERE handler = 'enq_notify';

-- every handler still has as many tasks as before the bad calls
SELECT handler, count(*) FROM taskq.tasks WHERE handler LIKE 'enq\_%' GROUP BY handler ORDER BY handler;

-- a 1 MB payload is accepted (the limit is 64 MB) and stored whole
SELECT taskq.enqueue('enq_fn', jsonb_build_object('blob', repeat('x', 1024 * 1024))) AS id \gset
SELECT length(payload->>'blob') AS stored FROM taskq.tasks WHERE id = :id;
