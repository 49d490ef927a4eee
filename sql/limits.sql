--
-- limits: taskq.set_queue(), group_key, the claim of limited queues
-- (taskq._claim_queue(), called here as a dispatcher would) and
-- taskq.explain().  taskq.enabled is off: no dispatcher claims anything.
--
SELECT taskq.register_handler('lim_fn', 'app.record(jsonb)');

------------------------------------------------------------------------
-- set_queue
------------------------------------------------------------------------

-- set_queue writes every limit, in canonical form
SELECT taskq.set_queue('lim_q', concurrency => 3, group_concurrency => 1,
                       rate_limit => '100/1s', group_rate_limit => '5/min',
                       aging => '1 min');
SELECT name, paused, concurrency, group_concurrency, rate_limit, rate_count, rate_period,
       group_rate_limit, group_rate_count, group_rate_period, aging
FROM taskq.queues WHERE name = 'lim_q';

-- it replaces all of them: what is not given is no limit; paused is kept
SELECT taskq.pause('lim_q');
SELECT taskq.set_queue('lim_q', concurrency => 2);
SELECT name, paused, concurrency, group_concurrency, rate_limit, group_rate_limit, aging
FROM taskq.queues WHERE name = 'lim_q';
SELECT taskq.resume('lim_q');

-- the accepted units: ms, s, min, h, the number before them optional
SELECT taskq.set_queue('lim_units', rate_limit => '10/250ms', group_rate_limit => '1/h');
SELECT rate_limit, rate_period, group_rate_limit, group_rate_period FROM taskq.queues WHERE name = 'lim_units';
SELECT taskq.set_queue('lim_units', rate_limit => '1000000/24h', group_rate_limit => '7/s');
SELECT rate_limit, rate_period, group_rate_limit, group_rate_period FROM taskq.queues WHERE name = 'lim_units';

-- set_queue is transactional
BEGIN;
SELECT taskq.set_queue('lim_rolled_back', concurrency => 1);
ROLLBACK;
SELECT count(*) FROM taskq.queues WHERE name = 'lim_rolled_back';

-- bad input: each refused with the value and a hint, nothing written
\set VERBOSITY default
SELECT taskq.set_queue(NULL, concurrency => 1);
SELECT taskq.set_queue('', concurrency => 1);
SELECT taskq.set_queue(E'lim\tq', concurrency => 1);
SELECT taskq.set_queue('lim_bad', concurrency => 0);
SELECT taskq.set_queue('lim_bad', concurrency => -3);
SELECT taskq.set_queue('lim_bad', group_concurrency => 0);
SELECT taskq.set_queue('lim_bad', rate_limit => 'fast');
SELECT taskq.set_queue('lim_bad', rate_limit => '10/0s');
SELECT taskq.set_queue('lim_bad', rate_limit => '-1/1s');
SELECT taskq.set_queue('lim_bad', rate_limit => '0/1s');
SELECT taskq.set_queue('lim_bad', rate_limit => '10/25h');
SELECT taskq.set_queue('lim_bad', rate_limit => '10/1 s');
SELECT taskq.set_queue('lim_bad', rate_limit => '10/1week');
SELECT taskq.set_queue('lim_bad', rate_limit => '2000000/1s');
SELECT taskq.set_queue('lim_bad', group_rate_limit => '5/-1min');
SELECT taskq.set_queue('lim_bad', aging => '0 s');
SELECT taskq.set_queue('lim_bad', aging => '-1 min');
SELECT count(*) FROM taskq.queues WHERE name = 'lim_bad';
-- a bad value after good ones leaves the old settings
SELECT taskq.set_queue('lim_q', concurrency => 5, rate_limit => 'nope');
SELECT concurrency FROM taskq.queues WHERE name = 'lim_q';

-- who may call it: as pause(), not PUBLIC
SELECT has_function_privilege('public', 'taskq.set_queue(text, int, int, text, text, interval)', 'EXECUTE') AS public_may_set;

------------------------------------------------------------------------
-- group_key
------------------------------------------------------------------------

-- enqueue() and enqueue_many() store it; a task without one has NULL
SELECT taskq.enqueue('lim_fn', '{"tag": "g1"}', queue => 'lim_g', group_key => 'tenant-1') AS g1 \gset
SELECT count(*) AS enqueued FROM taskq.enqueue_many('lim_fn', ARRAY['{"tag": "g2"}', '{"tag": "g3"}']::jsonb[],
                          queue => 'lim_g', group_key => 'tenant-2');
SELECT taskq.enqueue('lim_fn', '{"tag": "g4"}', queue => 'lim_g') AS g4 \gset
SELECT payload->>'tag' AS tag, group_key FROM taskq.tasks WHERE queue = 'lim_g' ORDER BY id;
-- a queue that got a task with a group_key is served round-robin from now on
SELECT name, grouped FROM taskq.queues WHERE name = 'lim_g';

-- bad group keys
SELECT taskq.enqueue('lim_fn', '{}', queue => 'lim_bad', group_key => '');
SELECT taskq.enqueue('lim_fn', '{}', queue => 'lim_bad', group_key => repeat('k', 256));
SELECT taskq.enqueue('lim_fn', '{}', queue => 'lim_bad', group_key => E'ten\nant');
SELECT taskq.enqueue_many('lim_fn', ARRAY['{}']::jsonb[], queue => 'lim_bad', group_key => repeat('k', 300));
SELECT count(*) FROM taskq.tasks WHERE queue = 'lim_bad';
-- 255 bytes is fine
SELECT taskq.enqueue('lim_fn', '{}', queue => 'lim_long', group_key => repeat('k', 255)) IS NOT NULL AS ok;

------------------------------------------------------------------------
-- The claim of a limited queue, as a dispatcher runs it
------------------------------------------------------------------------

-- claim(queue, n): claim up to n tasks as one dispatcher of one would,
-- and show their tags in claim order; done(tags): they complete
CREATE FUNCTION pg_temp.claim(q text, n int, share int DEFAULT 1) RETURNS text
LANGUAGE sql AS $$
    SELECT coalesce(string_agg(c.payload->>'tag', ',' ORDER BY c.ord), '-')
    FROM taskq._claim_queue(q, n, share, pg_backend_pid(), '{}') WITH ORDINALITY c(id, handler, queue, priority,
         attempts, max_attempts, timeout_ms, owner, run_at, payload, metadata, expired, ord)
$$;
CREATE FUNCTION pg_temp.done(q text) RETURNS void
LANGUAGE sql AS $$
    UPDATE taskq.tasks SET status = 'completed', finished_at = now()
    WHERE queue = q AND status = 'running'
$$;

-- concurrency 3: never more than 3 running, whatever is asked
SELECT taskq.set_queue('lim_c', concurrency => 3);
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', 'c' || i), queue => 'lim_c')
                      FROM generate_series(1, 8) i) e;
SELECT pg_temp.claim('lim_c', 10) AS first, pg_temp.claim('lim_c', 10) AS second;
-- running and dispatched tasks both count; ended ones free their place
UPDATE taskq.tasks SET status = 'dispatched', lease_until = now() + interval '1 min'
WHERE queue = 'lim_c' AND payload->>'tag' = 'c1';
UPDATE taskq.tasks SET status = 'completed', finished_at = now()
WHERE queue = 'lim_c' AND payload->>'tag' = 'c2';
SELECT pg_temp.claim('lim_c', 10) AS after_one_ended;
-- with 2 dispatchers serving the queue, one takes at most half the limit
SELECT pg_temp.done('lim_c');
UPDATE taskq.tasks SET status = 'completed' WHERE queue = 'lim_c' AND status = 'dispatched';
SELECT pg_temp.claim('lim_c', 10, 2) AS share_of_two, pg_temp.claim('lim_c', 10, 2) AS the_other;
SELECT pg_temp.done('lim_c');

-- priority order holds inside a limited queue
SELECT taskq.set_queue('lim_p', concurrency => 10);
SELECT taskq.enqueue('lim_fn', '{"tag": "low"}', queue => 'lim_p', priority => -5),
       taskq.enqueue('lim_fn', '{"tag": "high"}', queue => 'lim_p', priority => 5),
       taskq.enqueue('lim_fn', '{"tag": "mid"}', queue => 'lim_p') \gset
SELECT pg_temp.claim('lim_p', 10) AS by_priority;

-- a paused limited queue gives nothing
SELECT taskq.enqueue('lim_fn', '{"tag": "p1"}', queue => 'lim_p') \gset
SELECT taskq.pause('lim_p');
SELECT pg_temp.claim('lim_p', 10) AS paused;
SELECT taskq.resume('lim_p');
SELECT pg_temp.claim('lim_p', 10) AS resumed;

-- rate limit 3/1h: three start, the fourth waits, and the queue says until when
SELECT taskq.set_queue('lim_r', rate_limit => '3/1h');
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', 'r' || i), queue => 'lim_r')
                      FROM generate_series(1, 5) i) e;
SELECT pg_temp.claim('lim_r', 2) AS two, pg_temp.claim('lim_r', 10) AS one_more, pg_temp.claim('lim_r', 10) AS none;
SELECT tokens < 1 AS empty, held_until BETWEEN now() + interval '19 min' AND now() + interval '21 min' AS held_20_min
FROM taskq.queues WHERE name = 'lim_r';
-- set_queue with the same rate keeps the bucket; a new rate refills it
SELECT taskq.set_queue('lim_r', rate_limit => '3/1h');
SELECT pg_temp.claim('lim_r', 10) AS same_rate;
SELECT taskq.set_queue('lim_r', rate_limit => '1/1h');
SELECT pg_temp.claim('lim_r', 10) AS new_rate;

-- group fairness: one group of 6, three of 1, and tasks without a key
-- (one more group): the first claim serves each group once
SELECT taskq.set_queue('lim_f');
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', 'big' || i), queue => 'lim_f', group_key => 'big')
                      FROM generate_series(1, 6) i) e;
SELECT taskq.enqueue('lim_fn', '{"tag": "a"}', queue => 'lim_f', group_key => 'a'),
       taskq.enqueue('lim_fn', '{"tag": "z"}', queue => 'lim_f', group_key => 'z'),
       taskq.enqueue('lim_fn', '{"tag": "m"}', queue => 'lim_f', group_key => 'm'),
       taskq.enqueue('lim_fn', '{"tag": "none"}', queue => 'lim_f') \gset
SELECT pg_temp.claim('lim_f', 5) AS round_one;
SELECT pg_temp.claim('lim_f', 2) AS after_cursor, pg_temp.claim('lim_f', 10) AS rest;
-- the cursor moved on from the group served last
SELECT last_group FROM taskq.group_cursors WHERE queue = 'lim_f';
SELECT pg_temp.done('lim_f');

-- round-robin goes on where it stopped: one task per claim visits the groups in turn
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', g || i), queue => 'lim_f', group_key => g)
                      FROM unnest(ARRAY['x', 'y']) g, generate_series(1, 2) i) e;
SELECT pg_temp.claim('lim_f', 1) AS t1, pg_temp.claim('lim_f', 1) AS t2,
       pg_temp.claim('lim_f', 1) AS t3, pg_temp.claim('lim_f', 1) AS t4;
SELECT pg_temp.done('lim_f');

-- a higher priority still comes first, across groups
SELECT taskq.enqueue('lim_fn', '{"tag": "x-low"}', queue => 'lim_f', group_key => 'x', priority => -1),
       taskq.enqueue('lim_fn', '{"tag": "y-high"}', queue => 'lim_f', group_key => 'y', priority => 1),
       taskq.enqueue('lim_fn', '{"tag": "x-high"}', queue => 'lim_f', group_key => 'x', priority => 1) \gset
SELECT pg_temp.claim('lim_f', 10) AS priority_first;
SELECT pg_temp.done('lim_f');

-- groups with nothing due do not hold the others up: the claim steps over them
SELECT taskq.enqueue('lim_fn', '{"tag": "a-later"}', queue => 'lim_s', group_key => 'a', run_after => '1 h'),
       taskq.enqueue('lim_fn', '{"tag": "b-now"}', queue => 'lim_s', group_key => 'b') \gset
SELECT pg_temp.claim('lim_s', 1) AS steps_over_a, pg_temp.claim('lim_s', 1) AS then_none_due;

-- group_concurrency 1: one running task per group, the tasks without a key included
SELECT taskq.set_queue('lim_gc', group_concurrency => 1);
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', coalesce(g, 'n') || i), queue => 'lim_gc', group_key => g)
                      FROM unnest(ARRAY['a', 'b', NULL]) g, generate_series(1, 2) i) e;
SELECT pg_temp.claim('lim_gc', 10) AS one_each, pg_temp.claim('lim_gc', 10) AS none;
UPDATE taskq.tasks SET status = 'completed' WHERE queue = 'lim_gc' AND payload->>'tag' = 'b1';
SELECT pg_temp.claim('lim_gc', 10) AS b_again;
SELECT pg_temp.done('lim_gc');

-- group_rate_limit 1/1h: one start per group
SELECT taskq.set_queue('lim_gr', group_rate_limit => '1/1h');
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', g || i), queue => 'lim_gr', group_key => g)
                      FROM unnest(ARRAY['a', 'b']) g, generate_series(1, 2) i) e;
SELECT pg_temp.claim('lim_gr', 10) AS one_each;
SELECT pg_temp.done('lim_gr');
SELECT pg_temp.claim('lim_gr', 10) AS none_within_the_hour;
SELECT group_key, tokens FROM taskq.group_buckets WHERE queue = 'lim_gr' ORDER BY group_key;

-- aging 1 s: a task of priority -100 that waited 150 s comes before a
-- fresh priority 0 task (effective priority least(100, -100 + 150) = 50);
-- its stored priority stays
SELECT taskq.set_queue('lim_a', aging => '1 s');
SELECT taskq.enqueue('lim_fn', '{"tag": "old"}', queue => 'lim_a', priority => -100) AS old_id,
       taskq.enqueue('lim_fn', '{"tag": "new"}', queue => 'lim_a', priority => 0) \gset
UPDATE taskq.tasks SET run_at = now() - interval '150 s' WHERE id = :old_id;
SELECT pg_temp.claim('lim_a', 10) AS aged_first;
SELECT priority FROM taskq.tasks WHERE id = :old_id;
-- without aging the same tasks go by stored priority
SELECT pg_temp.done('lim_a');
SELECT taskq.set_queue('lim_a');
SELECT taskq.enqueue('lim_fn', '{"tag": "old"}', queue => 'lim_a', priority => -100) AS old_id,
       taskq.enqueue('lim_fn', '{"tag": "new"}', queue => 'lim_a', priority => 0) \gset
UPDATE taskq.tasks SET run_at = now() - interval '150 s' WHERE id = :old_id;
SELECT pg_temp.claim('lim_a', 10) AS by_stored_priority;
SELECT pg_temp.done('lim_a');

-- aging in a grouped queue: within and across groups by effective priority
SELECT taskq.set_queue('lim_ga', aging => '1 s');
SELECT taskq.enqueue('lim_fn', '{"tag": "a-old"}', queue => 'lim_ga', group_key => 'a', priority => -100) AS old_id,
       taskq.enqueue('lim_fn', '{"tag": "a-new"}', queue => 'lim_ga', group_key => 'a'),
       taskq.enqueue('lim_fn', '{"tag": "b-new"}', queue => 'lim_ga', group_key => 'b', priority => -1) \gset
UPDATE taskq.tasks SET run_at = now() - interval '150 s' WHERE id = :old_id;
SELECT pg_temp.claim('lim_ga', 10) AS by_effective_priority;
SELECT pg_temp.done('lim_ga');

-- one task from as many groups as the claim has places; the next claim
-- goes on after the group served last, wrapping round to the first
SELECT count(*) FROM (SELECT taskq.enqueue('lim_fn', jsonb_build_object('tag', g || i), queue => 'lim_w', group_key => g)
                      FROM unnest(ARRAY['a', 'b', 'c', 'd', 'e']) g, generate_series(1, 2) i) e;
SELECT pg_temp.claim('lim_w', 3) AS first, pg_temp.claim('lim_w', 3) AS wraps_round;
-- a skipped handler's tasks are not claimed (a dispatcher skips disabled handlers)
SELECT count(*) AS skipped FROM taskq._claim_queue('lim_w', 10, 1, pg_backend_pid(), ARRAY['lim_fn']);
SELECT pg_temp.claim('lim_w', 10) AS rest;
SELECT pg_temp.done('lim_w');
-- NULL arguments claim nothing (the function is strict)
SELECT count(*) AS null_queue FROM taskq._claim_queue(NULL, 10, 1, pg_backend_pid(), '{}');

------------------------------------------------------------------------
-- explain
------------------------------------------------------------------------
CREATE FUNCTION pg_temp.explain(id bigint) RETURNS text
LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(taskq.explain(id),
               '^task -?\d+', 'task N'),
               '\w{3} \w{3} \d\d \d\d:\d\d:\d\d[.0-9]* \d{4} \w+', '<time>', 'g'),
               'pid \d+', 'pid <pid>')
$$;
SELECT taskq.enqueue('lim_fn', '{"tag": "e1"}', queue => 'lim_e') AS e1,
       taskq.enqueue('lim_fn', '{"tag": "e2"}', queue => 'lim_e', run_after => '1 h') AS e2 \gset
-- due, but nothing dispatches
SELECT pg_temp.explain(:e1);
-- due later
SELECT pg_temp.explain(:e2);
-- unknown, or not visible (same answer)
SELECT pg_temp.explain(-1);
BEGIN;
SELECT taskq.enqueue('lim_fn', '{}', queue => 'lim_e') AS uncommitted \gset
SELECT taskq.explain(:uncommitted) LIKE '%is due%' AS own_uncommitted_is_visible_to_its_transaction;
ROLLBACK;
SELECT pg_temp.explain(:uncommitted);
-- paused queue
SELECT taskq.pause('lim_e');
SELECT pg_temp.explain(:e1);
SELECT taskq.resume('lim_e');
-- disabled handler
SELECT taskq.register_handler('lim_off', 'app.record(jsonb)', enabled => false);
SELECT taskq.enqueue('lim_off', '{}', queue => 'lim_e') AS off \gset
SELECT pg_temp.explain(:off);
-- concurrency limit reached
SELECT taskq.set_queue('lim_e', concurrency => 1);
SELECT taskq.enqueue('lim_fn', '{"tag": "e3"}', queue => 'lim_e') AS e3 \gset
SELECT pg_temp.claim('lim_e', 1) AS claimed;
SELECT pg_temp.explain(:e3);
-- running
SELECT pg_temp.explain(:e1);
-- group concurrency reached
SELECT pg_temp.done('lim_e');
SELECT taskq.set_queue('lim_e', group_concurrency => 1);
SELECT taskq.enqueue('lim_fn', '{"tag": "e4"}', queue => 'lim_e', group_key => 'acme') AS e4,
       taskq.enqueue('lim_fn', '{"tag": "e5"}', queue => 'lim_e', group_key => 'acme') AS e5 \gset
UPDATE taskq.tasks SET status = 'running', worker_pid = pg_backend_pid(), started_at = now(), limited = true WHERE id = :e4;
SELECT pg_temp.explain(:e5);
SELECT pg_temp.explain(:e3);
SELECT pg_temp.done('lim_e');
-- rate limit used up
SELECT taskq.set_queue('lim_er', rate_limit => '1/1h');
SELECT taskq.enqueue('lim_fn', '{"tag": "r1"}', queue => 'lim_er'),
       taskq.enqueue('lim_fn', '{"tag": "r2"}', queue => 'lim_er') AS r2 \gset
SELECT pg_temp.claim('lim_er', 10) AS claimed;
SELECT pg_temp.explain(:r2);
-- group rate limit used up
SELECT taskq.set_queue('lim_egr', group_rate_limit => '1/1h');
SELECT taskq.enqueue('lim_fn', '{"tag": "a1"}', queue => 'lim_egr', group_key => 'acme'),
       taskq.enqueue('lim_fn', '{"tag": "a2"}', queue => 'lim_egr', group_key => 'acme') AS a2,
       taskq.enqueue('lim_fn', '{"tag": "n1"}', queue => 'lim_egr'),
       taskq.enqueue('lim_fn', '{"tag": "n2"}', queue => 'lim_egr') AS n2 \gset
SELECT pg_temp.claim('lim_egr', 10) AS claimed;
SELECT pg_temp.explain(:a2);
SELECT pg_temp.explain(:n2);
SELECT pg_temp.done('lim_egr');
SELECT pg_temp.done('lim_er');
-- ended
SELECT pg_temp.done('lim_e');
SELECT pg_temp.explain(:e5);
-- dispatched
SELECT taskq.enqueue('lim_fn', '{"tag": "e6"}', queue => 'lim_e', group_key => 'acme') AS e6 \gset
UPDATE taskq.tasks SET status = 'dispatched', started_at = now(), lease_until = now() + interval '1 min' WHERE id = :e6;
SELECT pg_temp.explain(:e6);
-- NULL
SELECT taskq.explain(NULL);
-- another role's task reads as an unknown one
CREATE ROLE lim_other;
SET ROLE lim_other;
SELECT pg_temp.explain(:e6);
RESET ROLE;
DROP ROLE lim_other;
