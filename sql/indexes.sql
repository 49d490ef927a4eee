--
-- indexes: which index each claim reads, and in what order.  Every queued
-- task is in exactly one of tasks_queue_idx (dispatchers) and
-- tasks_external_idx (taskq.claim()), both led by (queue, group_key); a
-- queue that has no group keys is (queue, NULL), in dispatch order.  With
-- sequential scans, bitmap scans and sorts disabled, each plan below reads
-- its index in order with no Sort node: the claims rely on that whatever
-- the table's statistics say.  The statements are the claims' shapes
-- (src/outbox.c, src/external.c, taskq._claim_queue).
--
SELECT indexrelid::regclass AS index, pg_get_indexdef(indexrelid) AS definition
  FROM pg_index
 WHERE indexrelid IN ('taskq.tasks_queue_idx'::regclass, 'taskq.tasks_external_idx'::regclass,
                      'taskq.tasks_scheduled_idx'::regclass)
 ORDER BY 1;

SET enable_seqscan = off;
SET enable_bitmapscan = off;
SET enable_sort = off;

-- a dispatcher's claim, one queue's step
EXPLAIN (COSTS OFF)
SELECT t.id FROM taskq.tasks t
 WHERE t.queue = 'mail' AND t.group_key IS NULL
   AND t.status = 'queued' AND NOT t.external AND t.run_at <= now()
 ORDER BY t.group_key, t.priority DESC, t.run_at, t.id LIMIT 32;

-- the same step from a claim cursor (src/cursors.c): the cursor's
-- priority from its (run_at, id), then the lower priorities, two index
-- ranges
EXPLAIN (COSTS OFF)
SELECT t.id FROM taskq.tasks t
 WHERE t.queue = 'mail' AND t.group_key IS NULL
   AND t.status = 'queued' AND NOT t.external AND t.run_at <= now()
   AND t.priority = 0 AND (t.run_at, t.id) >= ('2026-01-01', 42)
 ORDER BY t.group_key, t.priority DESC, t.run_at, t.id LIMIT 32;
EXPLAIN (COSTS OFF)
SELECT t.id FROM taskq.tasks t
 WHERE t.queue = 'mail' AND t.group_key IS NULL
   AND t.status = 'queued' AND NOT t.external AND t.run_at <= now()
   AND t.priority < 0
 ORDER BY t.group_key, t.priority DESC, t.run_at, t.id LIMIT 32;

-- the delayed tasks that became due since the previous claim, which move
-- the cursors back: the window's range of tasks_scheduled_idx
EXPLAIN (COSTS OFF)
SELECT t.queue, t.priority, t.run_at FROM taskq.tasks t
 WHERE t.status = 'queued' AND t.run_at > t.enqueued_at
   AND t.run_at > now() - interval '10 ms' AND t.run_at <= now()
   AND NOT t.external AND t.group_key IS NULL
 ORDER BY t.run_at;

-- the default executor's served queues, as its cursors keep them: one
-- descent per queue
EXPLAIN (COSTS OFF)
WITH RECURSIVE queued(queue) AS (
  (SELECT t.queue FROM taskq.tasks t
    WHERE t.status = 'queued' AND NOT t.external ORDER BY t.queue LIMIT 1)
  UNION ALL
  SELECT (SELECT t.queue FROM taskq.tasks t
           WHERE t.status = 'queued' AND NOT t.external AND t.queue > q.queue
           ORDER BY t.queue LIMIT 1)
    FROM queued q WHERE q.queue IS NOT NULL)
SELECT q.queue FROM queued q WHERE q.queue IS NOT NULL AND q.queue <> ALL ('{}');

-- an external worker's claim
EXPLAIN (COSTS OFF)
SELECT t.id FROM taskq.tasks t
 WHERE t.status = 'queued' AND t.external AND t.group_key IS NULL
   AND t.run_at <= now() AND t.queue = 'mail'
 ORDER BY t.group_key, t.priority DESC, t.run_at, t.id LIMIT 100;

-- a grouped queue's keys: taskq._group_keys() is inlined (no Function
-- Scan), one descent per key, in the index of the claim's kind
EXPLAIN (COSTS OFF) SELECT * FROM taskq._group_keys('mail', '', 10, false);
EXPLAIN (COSTS OFF) SELECT * FROM taskq._group_keys('mail', 'tenant-1', 10, true);

-- one group's first tasks, and the NULL group's
EXPLAIN (COSTS OFF)
SELECT t.id FROM taskq.tasks t
 WHERE t.queue = 'mail' AND t.status = 'queued' AND t.group_key = 'tenant-1'
   AND t.run_at <= now() AND NOT t.external
 ORDER BY t.priority DESC, t.run_at, t.id LIMIT 4;
EXPLAIN (COSTS OFF)
SELECT t.id FROM taskq.tasks t
 WHERE t.queue = 'mail' AND t.status = 'queued' AND t.group_key IS NULL
   AND t.run_at <= now() AND NOT t.external
 ORDER BY t.group_key, t.priority DESC, t.run_at, t.id LIMIT 4;

-- when a dispatcher next has work: the delayed tasks only
EXPLAIN (COSTS OFF)
SELECT run_at FROM taskq.tasks
 WHERE status = 'queued' AND run_at > enqueued_at AND run_at > now()
 ORDER BY run_at LIMIT 1;

-- a task due at enqueue is not delayed; run_after makes one that is
BEGIN;
SELECT taskq.register_handler('indexes_h', 'indexes_channel', kind => 'notify', queue => 'indexes');
SELECT taskq.pause('indexes');
SELECT taskq.enqueue('indexes_h', '{}') AS due \gset
SELECT taskq.enqueue('indexes_h', '{}', run_after => '1 hour') AS later \gset
SELECT id = :due AS due_task, run_at > enqueued_at AS delayed
  FROM taskq.tasks WHERE id IN (:due, :later) ORDER BY id;
ROLLBACK;

RESET enable_seqscan;
RESET enable_bitmapscan;
RESET enable_sort;
