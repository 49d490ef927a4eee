-- test/bench/setup.sql: the database "bench": taskq, the handlers, and an
-- application table.  plain.sql (the baseline) is loaded after this.

CREATE EXTENSION taskq;
CREATE EXTENSION pgstattuple;
CREATE SCHEMA bench;

-- The application row of the enqueue-overhead transaction.
CREATE TABLE bench.orders (
    id         bigserial PRIMARY KEY,
    customer   int NOT NULL,
    amount     numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The no-op handler.  PL/pgSQL, not LANGUAGE sql: PostgreSQL 15 plans a
-- SQL-language function's body again on every call (it is not inlined
-- when called through a prepared "SELECT fn($1)"), which would dominate.
CREATE FUNCTION bench.noop(payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN END $$;

-- The latency handler: its first statement records how long ago the
-- enqueuing statement read the clock (payload.t), in microseconds.
CREATE TABLE bench.latency (us float8 NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION bench.lat(payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.latency
    VALUES (extract(epoch FROM clock_timestamp() - (payload->>'t')::timestamptz) * 1e6);
END $$;

SELECT taskq.register_handler('noop', 'bench.noop(jsonb)');
SELECT taskq.register_handler('lat', 'bench.lat(jsonb)');
SELECT taskq.register_handler('ship', 'bench_ship', kind => 'notify');
-- the logical kind (the server runs with wal_level = logical)
SELECT taskq.register_handler('kafka', 'bench.orders', kind => 'logical');

-- A steady producer (the bloat test): write p_total tasks, p_chunk per
-- transaction, into taskq (p_target 'taskq') or plain.tasks ('plain'),
-- keeping at most about p_max_queued of them queued, so that tasks pass
-- through a short queue as in production rather than piling up.  While
-- it writes it has a row in plain.producing (created by plain.sql).
CREATE PROCEDURE bench.produce(p_target text, p_total bigint, p_chunk int, p_max_queued int)
LANGUAGE plpgsql AS $$
DECLARE
    done    bigint := 0;
    queued  int;
BEGIN
    INSERT INTO plain.producing VALUES (pg_backend_pid());
    COMMIT;
    WHILE done < p_total LOOP
        IF p_target = 'taskq' THEN
            SELECT count(*) INTO queued FROM (SELECT 1 FROM taskq.tasks
                WHERE status = 'queued' LIMIT p_max_queued) q;
        ELSE
            SELECT count(*) INTO queued FROM (SELECT 1 FROM plain.tasks
                WHERE status = 'queued' LIMIT p_max_queued) q;
        END IF;
        IF queued + p_chunk <= p_max_queued THEN
            IF p_target = 'taskq' THEN
                PERFORM count(taskq.enqueue('noop', jsonb_build_object('i', g)))
                FROM generate_series(1, least(p_chunk, p_total - done)) g;
            ELSE
                PERFORM plain.enqueue_rows('noop', least(p_chunk, p_total - done)::int);
            END IF;
            done := done + least(p_chunk, p_total - done);
        ELSE
            PERFORM pg_sleep(0.002);
        END IF;
        COMMIT;
    END LOOP;
    DELETE FROM plain.producing WHERE pid = pg_backend_pid();
    COMMIT;
END $$;
