--
-- deps: enqueue(..., after => ids), the status 'waiting', release and
-- cancellation by the parents' ends, current_task() and results().
-- Handler names and ledger tags start with deps_.  Task ids start at
-- 70000 so that messages naming a task are the same on every run.  The
-- parents are notify tasks enqueued in sync mode: they wait 'dispatched'
-- for ack() or nack(), which the test calls to end them.
--

SELECT setval('taskq.tasks_id_seq', 70000, false);

SELECT taskq.register_handler('deps_fn', 'app.record');
SELECT taskq.register_handler('deps_notify', 'deps_channel', kind => 'notify');

-- the new status exists, and enqueue() and enqueue_many() end with after
SELECT 'waiting'::taskq.status;
SELECT p.oid::regprocedure FROM pg_proc p
WHERE p.pronamespace = 'taskq'::regnamespace AND p.proname IN ('enqueue', 'enqueue_many')
ORDER BY 1::text;

------------------------------------------------------------------------
-- Waiting and release
------------------------------------------------------------------------

-- a task after a live parent waits; the parent is marked has_dependants
SELECT taskq.enqueue('deps_notify', '{"p": 1}', mode => 'sync') AS p1 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_child"}', after => ARRAY[:p1]) AS c1 \gset
SELECT id, status, has_dependants FROM taskq.tasks WHERE id IN (:p1, :c1) ORDER BY id;
SELECT parent, child FROM taskq.task_deps WHERE child = :c1;

-- waiting counts as live: wait() does not return it as ended
SELECT status FROM taskq.wait(:c1, '10 ms');

-- the parent's completion releases it, in the same transaction, and
-- forgets the dependency
SELECT taskq.ack(:p1, '{"parent": "done"}');
SELECT status FROM taskq.tasks WHERE id = :c1;
SELECT count(*) AS deps_left FROM taskq.task_deps WHERE child = :c1;

-- two parents: released only when the last one completes
SELECT taskq.enqueue('deps_notify', '{"p": 2}', mode => 'sync') AS p2 \gset
SELECT taskq.enqueue('deps_notify', '{"p": 3}', mode => 'sync') AS p3 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_two"}', after => ARRAY[:p2, :p3]) AS c2 \gset
SELECT taskq.ack(:p2);
SELECT status FROM taskq.tasks WHERE id = :c2;
SELECT taskq.ack(:p3);
SELECT status FROM taskq.tasks WHERE id = :c2;

-- a completed parent is nothing to wait for: the task is queued at once
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_done"}', after => ARRAY[:p1]) AS c3 \gset
SELECT status FROM taskq.tasks WHERE id = :c3;

-- an empty array is no dependency at all
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_empty"}', after => '{}') AS c4 \gset
SELECT status FROM taskq.tasks WHERE id = :c4;

-- a duplicate id counts once: the task waits on one parent
SELECT taskq.enqueue('deps_notify', '{"p": 4}', mode => 'sync') AS p4 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_dup"}', after => ARRAY[:p4, :p4]) AS c5 \gset
SELECT parent FROM taskq.task_deps WHERE child = :c5;
SELECT taskq.ack(:p4);
SELECT status FROM taskq.tasks WHERE id = :c5;

-- a waiting task may itself be a parent; enqueue_many's tasks all wait
SELECT taskq.enqueue('deps_notify', '{"p": 5}', mode => 'sync') AS p5 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_mid"}', after => ARRAY[:p5]) AS m5 \gset
SELECT array_agg(id ORDER BY id) AS kids
FROM taskq.enqueue_many('deps_fn', ARRAY['{"tag": "deps_many"}', '{"tag": "deps_many"}']::jsonb[],
                        after => ARRAY[:m5]) AS id \gset
SELECT status, count(*) FROM taskq.tasks WHERE id = ANY (:'kids') GROUP BY status;
-- explain() names the parent a waiting task waits for
SELECT replace(taskq.explain(:m5), :'m5', 'M') = 'task M is waiting on task ' || :p5 AS explained;
-- the first parent's completion releases the middle task only
SELECT taskq.ack(:p5);
SELECT id = :m5 AS middle, status FROM taskq.tasks WHERE id = :m5 OR id = ANY (:'kids') ORDER BY id;

-- a rolled-back enqueue leaves no dependency
SELECT taskq.enqueue('deps_notify', '{"p": 6}', mode => 'sync') AS p6 \gset
BEGIN;
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_rollback"}', after => ARRAY[:p6]) IS NOT NULL AS enqueued;
ROLLBACK;
SELECT count(*) AS deps FROM taskq.task_deps WHERE parent = :p6;

------------------------------------------------------------------------
-- Failure propagation
------------------------------------------------------------------------

-- a parent that fails cancels its waiting tasks, and theirs, naming the
-- task that ended in each last_error
SELECT taskq.enqueue('deps_notify', '{"p": 7}', mode => 'sync', max_attempts => 1) AS p7 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_l2"}', after => ARRAY[:p7]) AS l2 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_l3"}', after => ARRAY[:l2]) AS l3 \gset
SELECT taskq.nack(:p7, 'listener gave up');
SELECT id, status, last_error, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE id IN (:p7, :l2, :l3) ORDER BY id;
SELECT count(*) AS deps_left FROM taskq.task_deps WHERE child IN (:l2, :l3);

-- retry() of the failed parent leaves its cancelled dependants cancelled
-- (retry them yourself: they then run without waiting)
SELECT taskq.retry(:p7);
SELECT id, status FROM taskq.tasks WHERE id IN (:p7, :l2, :l3) ORDER BY id;
SELECT taskq.retry(:l2);
SELECT status FROM taskq.tasks WHERE id = :l2;

-- cancel() of a waiting task: true, it ends cancelled, its dependants
-- follow, and its other parents forget it
SELECT taskq.enqueue('deps_notify', '{"p": 8}', mode => 'sync') AS p8 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_w"}', after => ARRAY[:p8]) AS w8 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_ww"}', after => ARRAY[:w8]) AS ww8 \gset
SELECT taskq.cancel(:w8);
SELECT id, status, last_error FROM taskq.tasks WHERE id IN (:w8, :ww8) ORDER BY id;
SELECT count(*) AS deps_left FROM taskq.task_deps WHERE child IN (:w8, :ww8);
-- the parent's completion later changes nothing
SELECT taskq.ack(:p8);
SELECT id, status FROM taskq.tasks WHERE id IN (:w8, :ww8) ORDER BY id;

-- unregister_handler() ends a waiting task as it ends other live ones
SELECT taskq.register_handler('deps_gone', 'app.record');
SELECT taskq.enqueue('deps_notify', '{"p": 10}', mode => 'sync') AS p10 \gset
SELECT taskq.enqueue('deps_gone', '{"tag": "deps_gone"}', after => ARRAY[:p10]) AS g10 \gset
SELECT taskq.unregister_handler('deps_gone');
SELECT status, last_error FROM taskq.tasks WHERE id = :g10;
SELECT count(*) AS deps_left FROM taskq.task_deps WHERE child = :g10;

-- a waiting task holds its dedupe_key: the same key gets the waiting task
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_key"}', dedupe_key => 'deps-k', after => ARRAY[:p10]) AS k1 \gset
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_key"}', dedupe_key => 'deps-k') = :k1 AS same_task;
SELECT taskq.cancel(:k1);

------------------------------------------------------------------------
-- Bad input: each refused with nothing written
------------------------------------------------------------------------
SELECT count(*) AS tasks_before FROM taskq.tasks \gset

-- a NULL element
SELECT taskq.enqueue('deps_fn', '{}', after => ARRAY[:p1, NULL]);

-- a two-dimensional array
SELECT taskq.enqueue('deps_fn', '{}', after => ARRAY[[:p1], [:p2]]);

-- an unknown id
SELECT taskq.enqueue('deps_fn', '{}', after => ARRAY[:p1, 999999999]);

-- a parent that ended without completing
SELECT taskq.enqueue('deps_fn', '{}', after => ARRAY[:w8]);

-- its own id: a new task's id is taken only after after is checked, so
-- even a caller who guesses it is told it does not exist; cycles cannot
-- be built
SELECT taskq.enqueue('deps_fn', '{}', after => ARRAY[currval('taskq.tasks_id_seq') + 1]);

-- enqueue_many refuses the same way
SELECT taskq.enqueue_many('deps_fn', ARRAY['{}']::jsonb[], after => ARRAY[NULL::bigint]);

SELECT count(*) - :tasks_before AS tasks_written FROM taskq.tasks;

-- sync mode cannot wait
SELECT taskq.enqueue('deps_notify', '{"p": 9}', mode => 'sync') AS p9 \gset
SELECT taskq.enqueue('deps_fn', '{}', mode => 'sync', after => ARRAY[:p9]);
-- (sync after completed parents runs at once)
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_sync"}', mode => 'sync', after => ARRAY[:p1]) AS s1 \gset
SELECT status FROM taskq.tasks WHERE id = :s1;


-- another role's task is answered as an unknown one
CREATE ROLE deps_alice NOLOGIN;
CREATE ROLE deps_bob NOLOGIN;
GRANT EXECUTE ON FUNCTION app.record(jsonb) TO deps_alice, deps_bob;
SET ROLE deps_alice;
SELECT taskq.enqueue('deps_fn', '{"tag": "deps_alice"}', run_after => '1 hour') AS alice_task \gset
RESET ROLE;
SET ROLE deps_bob;
SELECT taskq.enqueue('deps_fn', '{}', after => ARRAY[:alice_task]);
-- results() shows bob nothing of it
SELECT * FROM taskq.results(ARRAY[:alice_task]);
RESET ROLE;

------------------------------------------------------------------------
-- current_task() and results()
------------------------------------------------------------------------

-- outside a handler: NULL
SELECT taskq.current_task() IS NULL AS outside;

-- inside a handler (here a sync enqueue): the running task's id, nested
-- sync enqueues see their own and restore the outer one
CREATE FUNCTION app.deps_whoami(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    before bigint := taskq.current_task();
    inner_id bigint;
BEGIN
    IF payload ? 'nest' THEN
        inner_id := taskq.enqueue('deps_whoami', '{}', mode => 'sync');
    END IF;
    RETURN jsonb_build_object('me', before, 'after_inner', taskq.current_task(),
                              'inner', inner_id);
END
$$;
SELECT taskq.register_handler('deps_whoami', 'app.deps_whoami');
SELECT taskq.enqueue('deps_whoami', '{"nest": true}', mode => 'sync') AS who \gset
SELECT id, result FROM taskq.tasks WHERE id >= :who AND handler = 'deps_whoami' ORDER BY id;
SELECT taskq.current_task() IS NULL AS outside_again;

-- results(): id, status and result, in the order asked, unknown ids left
-- out, duplicates repeated
SELECT * FROM taskq.results(ARRAY[:p2, 999999999, :p1, :c1, :p1]);
SELECT * FROM taskq.results('{}');
SELECT * FROM taskq.results(NULL);

------------------------------------------------------------------------
-- The trigger: its WHEN clause passes over tasks without dependants;
-- its function and the dependency table are internal
------------------------------------------------------------------------
SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
WHERE tgrelid = 'taskq.tasks'::regclass AND NOT tgisinternal;
SELECT has_function_privilege('public', 'taskq._deps_status_changed()', 'EXECUTE') AS public_may_call,
       has_function_privilege('public', 'taskq._wake_dispatchers(int)', 'EXECUTE') AS public_may_wake;
SELECT has_table_privilege('deps_bob', 'taskq.task_deps', 'SELECT') AS bob_reads_deps;

DROP FUNCTION app.deps_whoami(jsonb) CASCADE;
SELECT taskq.unregister_handler('deps_whoami');
REVOKE EXECUTE ON FUNCTION app.record(jsonb) FROM deps_alice, deps_bob;
