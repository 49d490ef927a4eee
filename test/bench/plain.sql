-- test/bench/plain.sql: the plain-SQL baseline that every taskq figure is
-- compared with.  plain.tasks has the columns, defaults, reloptions and the
-- six indexes of taskq.tasks (sql/taskq--0.1.sql), with its own status type
-- and sequence, so it also loads into a database without the extension.

CREATE SCHEMA plain;

CREATE TYPE plain.status AS ENUM (
    'queued', 'running', 'dispatched',
    'completed', 'failed', 'cancelled', 'timeout', 'expired'
);

CREATE SEQUENCE plain.tasks_id_seq;

CREATE TABLE plain.tasks (
    id           bigint NOT NULL DEFAULT nextval('plain.tasks_id_seq'),
    priority     int NOT NULL,
    attempts     int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL,
    crashes      int NOT NULL DEFAULT 0,
    worker_pid   int,
    owner        regrole NOT NULL,
    status       plain.status NOT NULL DEFAULT 'queued',
    run_at       timestamptz NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    lease_until  timestamptz,
    expires_at   timestamptz,
    timeout      interval NOT NULL,
    handler      text NOT NULL,
    queue        text NOT NULL,
    dedupe_key   text,
    payload      jsonb NOT NULL,
    metadata     jsonb,
    result       jsonb,
    last_error   text,
    CONSTRAINT tasks_pkey PRIMARY KEY (id)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER SEQUENCE plain.tasks_id_seq OWNED BY plain.tasks.id;

CREATE INDEX tasks_due_idx ON plain.tasks (priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE UNIQUE INDEX tasks_dedupe_idx ON plain.tasks (handler, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running', 'dispatched');
CREATE INDEX tasks_inflight_idx ON plain.tasks (lease_until)
    WHERE status = 'dispatched';
CREATE INDEX tasks_scheduled_idx ON plain.tasks (run_at)
    WHERE status = 'queued';
CREATE INDEX tasks_expiry_idx ON plain.tasks (expires_at)
    WHERE status = 'queued' AND expires_at IS NOT NULL;
CREATE INDEX tasks_finished_idx ON plain.tasks (finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'timeout', 'expired');

-- The row an enqueue writes: what taskq.enqueue(handler, payload) writes
-- with every option at its default.
CREATE FUNCTION plain.enqueue_rows(p_handler text, p_n int)
RETURNS bigint LANGUAGE sql AS $$
    WITH i AS (
        INSERT INTO plain.tasks (priority, max_attempts, owner, run_at, timeout, handler, queue, payload)
        SELECT 0, 5, current_user::regrole, now(), '5 min', p_handler, 'default',
               jsonb_build_object('i', g)
        FROM generate_series(1, p_n) g
        RETURNING 1)
    SELECT count(*) FROM i
$$;

-- One consumer session's start, end and row count.
CREATE TABLE plain.runs (pid int, started timestamptz, ended timestamptz, rows bigint);

-- One batch: delete up to p_batch due tasks in taskq's dispatch order,
-- skipping rows other consumers hold, and run each one's handler (the same
-- function taskq's dispatchers call).  Returns how many; the caller commits.
CREATE FUNCTION plain.take_batch(p_batch int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    r   record;
    n   int := 0;
BEGIN
    FOR r IN
        DELETE FROM plain.tasks WHERE id IN (
            SELECT id FROM plain.tasks
            WHERE status = 'queued' AND run_at <= now()
            ORDER BY priority DESC, run_at, id
            FOR UPDATE SKIP LOCKED LIMIT p_batch)
        RETURNING handler, payload
    LOOP
        IF r.handler = 'lat' THEN
            PERFORM bench.lat(r.payload);
        ELSE
            PERFORM bench.noop(r.payload);
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- A plain consumer: take a batch of due tasks in taskq's dispatch order,
-- skipping rows other consumers hold, delete them, run each one's handler,
-- commit; until the table has nothing due, or p_max rows are done, or
-- p_seconds have passed.
CREATE PROCEDURE plain.drain(p_batch int, p_max bigint DEFAULT NULL, p_seconds float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    n       int;
    total   bigint := 0;
    t0      timestamptz := clock_timestamp();
BEGIN
    LOOP
        n := plain.take_batch(p_batch);
        COMMIT;
        total := total + n;
        EXIT WHEN n = 0 OR (p_max IS NOT NULL AND total >= p_max)
            OR (p_seconds IS NOT NULL AND clock_timestamp() >= t0 + make_interval(secs => p_seconds));
    END LOOP;
    INSERT INTO plain.runs VALUES (pg_backend_pid(), t0, clock_timestamp(), total);
    COMMIT;
END $$;

-- A producer that is still writing (see bench.produce) has a row here.
CREATE TABLE plain.producing (pid int);

-- A polling consumer (latency and steady-flow tests): like drain, but when
-- nothing is due it sleeps p_idle_ms and looks again; it ends when nothing
-- is due, p_seconds have passed, and no producer is writing.
CREATE PROCEDURE plain.consume(p_batch int, p_idle_ms float8, p_seconds float8)
LANGUAGE plpgsql AS $$
DECLARE
    n       int;
    total   bigint := 0;
    t0      timestamptz := clock_timestamp();
BEGIN
    LOOP
        n := plain.take_batch(p_batch);
        COMMIT;
        total := total + n;
        IF n = 0 THEN
            EXIT WHEN clock_timestamp() >= t0 + make_interval(secs => p_seconds)
                AND NOT EXISTS (SELECT 1 FROM plain.producing);
            PERFORM pg_sleep(p_idle_ms / 1000.0);
            COMMIT;     -- the next look starts a new transaction, so now() is fresh
        END IF;
    END LOOP;
    INSERT INTO plain.runs VALUES (pg_backend_pid(), t0, clock_timestamp(), total);
    COMMIT;
END $$;
