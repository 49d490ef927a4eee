-- test/bench/plain_notify.sql: the plain-SQL baseline of the notify
-- scenario, loaded (after plain.sql) into the database bench_plain, where
-- taskq is not installed.
--
-- plain.dispatch_notify does what a taskq dispatcher does for a notify
-- handler, in one transaction per batch: mark a batch of due tasks
-- 'dispatched' and pg_notify each one's message (the same JSON object
-- taskq sends).  The listener (test/listener.c) acknowledges each message
-- with "SELECT taskq.ack_many($1::bigint[], $2::jsonb)"; here that name
-- is a plain PL/pgSQL function that completes the rows, as
-- taskq.ack_many does.

CREATE PROCEDURE plain.dispatch_notify(p_channel text, p_batch int)
LANGUAGE plpgsql AS $$
DECLARE
    r       record;
    n       int;
    total   bigint := 0;
    t0      timestamptz := clock_timestamp();
BEGIN
    LOOP
        n := 0;
        FOR r IN
            UPDATE plain.tasks t SET status = 'dispatched', attempts = t.attempts + 1,
                   started_at = now(), lease_until = clock_timestamp() + interval '1 min'
            WHERE t.id IN (
                SELECT id FROM plain.tasks
                WHERE status = 'queued' AND run_at <= now()
                ORDER BY priority DESC, run_at, id
                FOR UPDATE SKIP LOCKED LIMIT p_batch)
            RETURNING t.id, t.handler, t.queue, t.attempts, t.priority, t.payload, t.metadata
        LOOP
            PERFORM pg_notify(p_channel, json_build_object(
                'id', r.id, 'handler', r.handler, 'queue', r.queue,
                'attempt', r.attempts, 'priority', r.priority, 'ack', true,
                'payload', r.payload, 'metadata', r.metadata)::text);
            n := n + 1;
        END LOOP;
        COMMIT;
        total := total + n;
        EXIT WHEN n = 0;
    END LOOP;
    INSERT INTO plain.runs VALUES (pg_backend_pid(), t0, clock_timestamp(), total);
    COMMIT;
END $$;

-- As taskq.ack_many: lock the rows by id in id order, keep the dispatched
-- ones, update those by id.  (A single "UPDATE ... WHERE id = ANY ($1) AND
-- status = 'dispatched'" would be planned on tasks_inflight_idx, whose
-- predicate that status implies, and scan every in-flight entry.)
CREATE SCHEMA taskq;
CREATE FUNCTION taskq.ack_many(p_ids bigint[], p_result jsonb DEFAULT NULL)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    acked bigint[];
BEGIN
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO acked
    FROM (SELECT id, status FROM plain.tasks WHERE id = ANY (p_ids)
          ORDER BY id FOR UPDATE) l
    WHERE status = 'dispatched';
    UPDATE plain.tasks SET status = 'completed', result = p_result,
           finished_at = now(), lease_until = NULL
    WHERE id = ANY (acked);
    RETURN acked;
END $$;
