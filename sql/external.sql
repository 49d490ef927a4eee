--
-- external: handlers of kind 'external', claim(), heartbeat(),
-- wake_channel(), and ack/nack of claimed tasks (DESIGN section 8).
--
-- The server runs with taskq.enabled = off, so no dispatcher touches
-- these tasks; the test plays the external worker itself.
--
CREATE ROLE ext_app NOLOGIN;        -- registers the handler and enqueues
CREATE ROLE ext_worker NOLOGIN;     -- the worker service, granted ext_app
CREATE ROLE ext_other NOLOGIN;      -- another application role
GRANT ext_app TO ext_worker;
GRANT EXECUTE ON FUNCTION taskq.register_handler(text, text, text, text, int, int, interval, boolean, boolean)
    TO ext_app, ext_other;

-- an external handler needs no target; a description is kept as given
SET ROLE ext_app;
SELECT taskq.register_handler('ext_mail', NULL, kind => 'external', queue => 'ext_q');
SELECT taskq.register_handler('ext_sms', 'the SMS gateway workers', kind => 'external', queue => 'ext_q', max_attempts => 2);
SELECT taskq.register_handler('ext_lim', NULL, kind => 'external', queue => 'ext_lim_q');
SELECT name, kind, target, queue FROM taskq.handlers WHERE name LIKE 'ext\_%' ORDER BY name;

-- other kinds still need a target, and a description must not be empty
SELECT taskq.register_handler('ext_bad', NULL, kind => 'notify');
SELECT taskq.register_handler('ext_bad', '', kind => 'external');
-- external tasks cannot run in the database
SELECT taskq.enqueue('ext_mail', '{"n": 0}', mode => 'sync');

-- enqueue three tasks; claim takes them in dispatch order
SELECT taskq.enqueue('ext_mail', '{"n": 1}') AS t1 \gset
SELECT taskq.enqueue('ext_mail', '{"n": 2}', priority => 5) AS t2 \gset
SELECT taskq.enqueue('ext_sms', '{"n": 3}') AS t3 \gset
RESET ROLE;

------------------------------------------------------------------------
-- Who may claim
------------------------------------------------------------------------

-- another role may not claim from the handler, and without a handler
-- named it claims nothing
SET ROLE ext_other;
SELECT * FROM taskq.claim('ext_q', handler => 'ext_mail');
SELECT count(*) FROM taskq.claim('ext_q', 10);
RESET ROLE;

-- a handler that is unknown or of another kind is refused
SET ROLE ext_worker;
SELECT * FROM taskq.claim('ext_q', handler => 'ext_nonesuch');
RESET ROLE;
SELECT taskq.register_handler('ext_fn', 'pg_catalog.jsonb_typeof(jsonb)');
SELECT * FROM taskq.claim('ext_q', handler => 'ext_fn');
SELECT taskq.unregister_handler('ext_fn');

------------------------------------------------------------------------
-- Claim, heartbeat, ack
------------------------------------------------------------------------

-- the worker role claims: highest priority first, dispatched with a
-- lease, the attempt charged
SET ROLE ext_worker;
SELECT id - :t1 AS nth, handler, queue, payload, metadata, attempt,
       lease_until > now() + interval '50 seconds' AS lease_ok
FROM taskq.claim('ext_q', 2, lease => '1 minute', handler => 'ext_mail');
SELECT id - :t1 AS nth, status, attempts, worker_pid IS NULL AS no_session
FROM taskq.tasks WHERE handler LIKE 'ext\_%' ORDER BY id;

-- nothing left of that handler; a claim without handler takes the other
SELECT count(*) FROM taskq.claim('ext_q', handler => 'ext_mail');
SELECT id - :t1 AS nth, handler, attempt FROM taskq.claim('ext_q', 10, lease => '1 minute');

-- a heartbeat returns the ids still held; unknown ids are left out
SELECT h - :t1 AS nth FROM taskq.heartbeat(ARRAY[:t1, :t2, :t3, -1], '2 minutes') h;
SELECT id - :t1 AS nth, lease_until > now() + interval '110 seconds' AS extended
FROM taskq.tasks WHERE handler LIKE 'ext\_%' ORDER BY id;
RESET ROLE;

-- another role's heartbeat holds nothing
SET ROLE ext_other;
SELECT count(*) FROM taskq.heartbeat(ARRAY[:t1, :t2, :t3]);
RESET ROLE;

-- ack and nack finish claimed tasks as for notify
SET ROLE ext_worker;
SELECT taskq.ack(:t2, '{"sent": true}');
SELECT taskq.nack(:t3, 'gateway down', retry_in => '0');
SELECT id - :t1 AS nth, status, attempts, result, last_error
FROM taskq.tasks WHERE handler LIKE 'ext\_%' ORDER BY id;

------------------------------------------------------------------------
-- A lease that ran out is lost, even before maintenance requeued it
------------------------------------------------------------------------

-- t1's lease runs out (moved into the past by the superuser)
RESET ROLE;
UPDATE taskq.tasks SET lease_until = clock_timestamp() - interval '1 second' WHERE id = :t1;
SET ROLE ext_worker;
SELECT count(*) FROM taskq.heartbeat(ARRAY[:t1]);
SELECT taskq.ack(:t1);
SELECT taskq.nack(:t1, 'too late');
SELECT taskq.ack_many(ARRAY[:t1]);
SELECT id - :t1 AS nth, status, result, last_error FROM taskq.tasks WHERE id = :t1;
RESET ROLE;

------------------------------------------------------------------------
-- Paused queues and session leases
------------------------------------------------------------------------

-- t3 was nacked to run again at once; a paused queue gives nothing
SELECT taskq.pause('ext_q');
SET ROLE ext_worker;
SELECT count(*) FROM taskq.claim('ext_q', 10);
RESET ROLE;
SELECT taskq.resume('ext_q');

-- a session lease records the claiming backend
SET ROLE ext_worker;
SELECT id - :t1 AS nth, attempt FROM taskq.claim('ext_q', 10, session_lease => true);
RESET ROLE;
SELECT id - :t1 AS nth, status, worker_pid = pg_backend_pid() AS this_session
FROM taskq.tasks WHERE id = :t3;

------------------------------------------------------------------------
-- Limited queues: claim() honours the queue's limits and group fairness
-- as a dispatcher's claim does (through taskq._claim_queue)
------------------------------------------------------------------------

SET ROLE ext_app;
SELECT count(taskq.enqueue('ext_lim', jsonb_build_object('g', g), group_key => 'tenant-' || g))
FROM (VALUES ('a'), ('a'), ('a'), ('a'), ('b')) v(g);
RESET ROLE;
SELECT taskq.set_queue('ext_lim_q', concurrency => 3, group_concurrency => 2);
SET ROLE ext_worker;
-- three at most, two of tenant-a: tenant-b gets its turn
SELECT payload->>'g' AS g, attempt, lease_until > now() AS leased
FROM taskq.claim('ext_lim_q', 10) ORDER BY 1;
-- the queue is full
SELECT count(*) FROM taskq.claim('ext_lim_q', 10);
RESET ROLE;
SELECT status, limited, count(*) FROM taskq.tasks WHERE handler = 'ext_lim' GROUP BY 1, 2 ORDER BY 1;
-- tenant-b's ack makes room in the queue, but tenant-a is at its group limit
SELECT id AS lim_b FROM taskq.tasks WHERE handler = 'ext_lim' AND group_key = 'tenant-b' \gset
SELECT min(id) AS lim_a FROM taskq.tasks WHERE handler = 'ext_lim' AND status = 'dispatched' AND group_key = 'tenant-a' \gset
SET ROLE ext_worker;
SELECT taskq.ack(:lim_b);
SELECT count(*) FROM taskq.claim('ext_lim_q', 10);
-- one of tenant-a's acks lets the next tenant-a task start
SELECT taskq.ack(:lim_a);
SELECT payload->>'g' AS g, attempt FROM taskq.claim('ext_lim_q', 10);
RESET ROLE;
SELECT status, count(*) FROM taskq.tasks WHERE handler = 'ext_lim' GROUP BY 1 ORDER BY 1;

------------------------------------------------------------------------
-- Wake channels
------------------------------------------------------------------------

SELECT taskq.wake_channel('ext_q');
SELECT taskq.wake_channel(repeat('q', 52));
SELECT taskq.wake_channel(repeat('q', 60)) AS long \gset
SELECT length(:'long'), :'long' <> taskq.wake_channel(repeat('q', 59) || 'r') AS distinct;

------------------------------------------------------------------------
-- Bad input: exact errors, nothing claimed
------------------------------------------------------------------------

SELECT * FROM taskq.claim(NULL);
SELECT * FROM taskq.claim('');
SELECT * FROM taskq.claim('ext_q', 0);
SELECT * FROM taskq.claim('ext_q', 10001);
SELECT * FROM taskq.claim('ext_q', NULL);
SELECT * FROM taskq.claim('ext_q', lease => '-1 second');
SELECT * FROM taskq.claim('ext_q', lease => '0');
SELECT * FROM taskq.claim('ext_q', lease => '100 years');
SELECT * FROM taskq.claim('ext_q', session_lease => NULL);
SELECT * FROM taskq.heartbeat(NULL);
SELECT * FROM taskq.heartbeat(ARRAY[1, NULL]::bigint[]);
SELECT * FROM taskq.heartbeat(ARRAY[[1], [2]]::bigint[]);
SELECT * FROM taskq.heartbeat(ARRAY[1]::bigint[], '0');
SELECT taskq.wake_channel(NULL);
SELECT count(*) FROM taskq.tasks WHERE handler LIKE 'ext\_%' AND status = 'dispatched';

------------------------------------------------------------------------
-- A queued task is in the dispatchers' index or in claim()'s, by its
-- handler's kind (taskq.tasks.external); a kind change moves the
-- handler's tasks, and only a change does
------------------------------------------------------------------------

SELECT taskq.register_handler('ext_flip', NULL, kind => 'external', queue => 'ext_flip_q');
SELECT taskq.pause('ext_flip_q');
SELECT count(taskq.enqueue('ext_flip', '{}')) FROM generate_series(1, 2);
SELECT external, count(*) FROM taskq.tasks WHERE handler = 'ext_flip' GROUP BY 1;
SELECT taskq.register_handler('ext_flip', 'flip log', kind => 'log', queue => 'ext_flip_q');
SELECT external, count(*) FROM taskq.tasks WHERE handler = 'ext_flip' GROUP BY 1;
SELECT count(taskq.enqueue('ext_flip', '{}'));
SELECT taskq.register_handler('ext_flip', 'flip log', kind => 'log', queue => 'ext_flip_q');
SELECT external, count(*) FROM taskq.tasks WHERE handler = 'ext_flip' GROUP BY 1;
SELECT taskq.register_handler('ext_flip', NULL, kind => 'external', queue => 'ext_flip_q');
SELECT external, count(*) FROM taskq.tasks WHERE handler = 'ext_flip' GROUP BY 1;
-- the two indexes hold them apart
SELECT i.relname, pg_get_expr(x.indpred, x.indrelid) AS predicate
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE i.relname IN ('tasks_queue_idx', 'tasks_external_idx') ORDER BY 1;

------------------------------------------------------------------------
-- Clean up, so that this file can run again
------------------------------------------------------------------------

DELETE FROM taskq.tasks WHERE handler LIKE 'ext\_%';
DELETE FROM taskq.queues WHERE name IN ('ext_lim_q', 'ext_flip_q');
SELECT taskq.unregister_handler(name) FROM taskq.handlers WHERE name LIKE 'ext\_%' ORDER BY name;
DROP OWNED BY ext_app, ext_worker, ext_other;
DROP ROLE ext_app, ext_worker, ext_other;
