--
-- logical: handlers of kind 'logical'.  enqueue() writes their tasks as
-- transactional logical-decoding messages (prefix = the handler's target)
-- and no row of taskq.tasks.  A test_decoding slot shows what a
-- logical-decoding client receives.  The server runs with wal_level =
-- logical (test/run).  Handler names start with lg_.
--

-- a role of its own, so that the owner in the messages is stable
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lg_app') THEN
        DROP OWNED BY lg_app;
        DROP ROLE lg_app;
    END IF;
END $$;
CREATE ROLE lg_app NOLOGIN;

-- the slot sees only what commits after it is created (not a temporary
-- slot: an error drops those)
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'lg_slot';
SELECT 'created' FROM pg_create_logical_replication_slot('lg_slot', 'test_decoding');

-- what the slot has received since the last look: each message's prefix,
-- whether it was transactional, and its content with the id and the owner
-- (the enqueuing role) apart: ids come from taskq.tasks_id_seq, and lg_ids
-- keeps those enqueue returned
CREATE TEMP TABLE lg_ids (n serial, id bigint);
CREATE TEMP VIEW lg_messages AS
SELECT substring(data FROM '^message: transactional: (\d)') AS tx,
       substring(data FROM 'prefix: ([^,]*),') AS prefix,
       substring(data FROM 'content:(.*)$')::jsonb - 'id' - 'owner' AS content,
       substring(data FROM 'content:(.*)$')::jsonb -> 'id' AS id,
       substring(data FROM 'content:(.*)$')::jsonb ->> 'owner' AS owner
FROM pg_logical_slot_get_changes('lg_slot', NULL, NULL)
WHERE data LIKE 'message:%';

------------------------------------------------------------------------
-- Registration: the target is a message prefix
------------------------------------------------------------------------

-- 1 to 63 bytes of letters, digits, '.', '_' and '-'
SELECT taskq.register_handler('lg_orders', 'taskq.orders', kind => 'logical');
SELECT taskq.register_handler('lg_long', repeat('p', 63), kind => 'logical');
SELECT taskq.register_handler('lg_chars', 'A-z_0.9', kind => 'logical', queue => 'kafka', priority => 7);
SELECT name, kind, target, queue, priority FROM taskq.handlers WHERE name LIKE 'lg_%' ORDER BY name;

-- an empty prefix, a 64-byte one
SELECT taskq.register_handler('lg_bad', '', kind => 'logical');
SELECT taskq.register_handler('lg_bad', repeat('p', 64), kind => 'logical');

-- a space, a comma (the separator of Debezium's message.prefix.include.list),
-- a control character, a non-ASCII letter
SELECT taskq.register_handler('lg_bad', 'taskq orders', kind => 'logical');
SELECT taskq.register_handler('lg_bad', 'taskq,orders', kind => 'logical');
SELECT taskq.register_handler('lg_bad', E'taskq\torders', kind => 'logical');
SELECT taskq.register_handler('lg_bad', 'taskq.café', kind => 'logical');

-- nothing is acked in the database: ack => false is refused as for function handlers
SELECT taskq.register_handler('lg_bad', 'taskq.orders', kind => 'logical', ack => false);

-- none of the refused ones was written; the CHECK constraint knows the kind
SELECT count(*) FROM taskq.handlers WHERE name = 'lg_bad';
SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'handlers_kind_check';

------------------------------------------------------------------------
-- Enqueue: one message per task, in the enqueuing transaction, no row
------------------------------------------------------------------------

-- enqueue() returns an id from taskq.tasks_id_seq and writes no row
INSERT INTO lg_ids (id) SELECT taskq.enqueue('lg_orders', '{"order": 42}');
SELECT count(*) AS rows FROM taskq.tasks WHERE id IN (SELECT id FROM lg_ids);
SELECT (SELECT id FROM lg_ids) = (SELECT last_value FROM taskq.tasks_id_seq) AS id_from_sequence;

-- the consumer receives a transactional message with the prefix and the
-- task as JSON: the notify kind's keys (attempt 1, ack false) plus
-- expires_at and the enqueuing role
SELECT tx, prefix, content, id = (SELECT to_jsonb(id) FROM lg_ids WHERE n = 1) AS same_id,
       owner = current_user AS owner_is_me
FROM lg_messages;

-- the handler's registration and the call's options resolve as for every
-- kind; metadata and expires_at are carried; queue and priority too
SET TIME ZONE 'UTC';
INSERT INTO lg_ids (id)
SELECT taskq.enqueue('lg_chars', '{"order": 43}', metadata => '{"trace": "t1"}',
                     expires_at => '2100-01-01 00:00:00+00', max_attempts => 3, timeout => '1 min');
INSERT INTO lg_ids (id)
SELECT taskq.enqueue('lg_orders', '[1, "two"]', priority => -5, queue => 'other');
SELECT tx, prefix, content, id IN (SELECT to_jsonb(id) FROM lg_ids WHERE n IN (2, 3)) AS known_id FROM lg_messages;
RESET TIME ZONE;

-- enqueue_many: one message per payload, in payload order, with the ids it returns
BEGIN;
INSERT INTO lg_ids (id)
SELECT * FROM taskq.enqueue_many('lg_orders', ARRAY['{"i": 1}', '{"i": 2}', '{"i": 3}']::jsonb[]);
COMMIT;
SELECT m.content -> 'payload' AS payload, m.id = to_jsonb(i.id) AS same_id
FROM (SELECT row_number() OVER () AS k, * FROM lg_messages) m
JOIN (SELECT row_number() OVER (ORDER BY n) AS k, id FROM lg_ids WHERE n > 3) i USING (k)
ORDER BY m.k;
SELECT count(*) AS rows FROM taskq.tasks WHERE id IN (SELECT id FROM lg_ids);

-- a rolled-back transaction's tasks, and those of a rolled-back
-- savepoint, never reach the consumer
BEGIN;
SELECT taskq.enqueue('lg_orders', '{"rolled": "back"}') > 0 AS enqueued;
ROLLBACK;
BEGIN;
SELECT taskq.enqueue('lg_orders', '{"kept": 1}') > 0 AS enqueued;
SAVEPOINT s;
SELECT taskq.enqueue('lg_orders', '{"rolled": "back to savepoint"}') > 0 AS enqueued;
ROLLBACK TO SAVEPOINT s;
SELECT taskq.enqueue('lg_orders', '{"kept": 2}') > 0 AS enqueued;
COMMIT;
SELECT content -> 'payload' AS payload FROM lg_messages;

-- a function handler's task next to them still gets its row
SELECT taskq.register_handler('lg_fn', 'app.record(jsonb)');
SELECT taskq.enqueue('lg_fn', '{"tag": "lg"}') > (SELECT max(id) FROM lg_ids) AS later_id;
SELECT handler, status FROM taskq.tasks WHERE handler = 'lg_fn';
SELECT count(*) AS messages FROM lg_messages;

------------------------------------------------------------------------
-- Options that need a row are refused; nothing is written
------------------------------------------------------------------------

SELECT taskq.enqueue('lg_orders', '{}', run_after => '1 min');
SELECT taskq.enqueue('lg_orders', '{}', run_at => '2100-01-01 00:00:00+00');
SELECT taskq.enqueue('lg_orders', '{}', dedupe_key => 'order-42');
SELECT taskq.enqueue('lg_orders', '{}', mode => 'sync');
SELECT * FROM taskq.enqueue_many('lg_orders', ARRAY['{}']::jsonb[], run_after => '0');

-- a bad value is reported as such first
SELECT taskq.enqueue('lg_orders', '{}', run_after => '-1 min');
SELECT taskq.enqueue('lg_orders', '{}', mode => 'later');

-- mode => 'async' is what this kind does anyway; taskq.default_mode =
-- sync cannot apply to it and is ignored
SELECT taskq.enqueue('lg_orders', '{"mode": "async"}', mode => 'async') > 0 AS enqueued;
SET taskq.default_mode = 'sync';
SELECT taskq.enqueue('lg_orders', '{"mode": "default sync"}') > 0 AS enqueued;
RESET taskq.default_mode;
SELECT content -> 'payload' AS payload FROM lg_messages;

-- a disabled handler's task cannot wait: refused
SELECT taskq.register_handler('lg_off', 'taskq.off', kind => 'logical', enabled => false);
SELECT taskq.enqueue('lg_off', '{}');
SELECT count(*) AS messages FROM lg_messages;

------------------------------------------------------------------------
-- Policies apply as for every kind
------------------------------------------------------------------------

-- drop: NULL and no message
SET taskq.policy = 'drop';
SELECT taskq.enqueue('lg_orders', '{"policy": "drop"}') IS NULL AS dropped;
SELECT id IS NULL AS dropped FROM taskq.enqueue_many('lg_orders', ARRAY['{"policy": "drop"}']::jsonb[]) id;
RESET taskq.policy;

-- block_handlers: NULL and no message
SET taskq.block_handlers = 'lg_orders';
SELECT taskq.enqueue('lg_orders', '{"policy": "blocked"}') IS NULL AS dropped;
RESET taskq.block_handlers;

-- assert_none: an error
SET taskq.policy = 'assert_none';
SELECT taskq.enqueue('lg_orders', '{"policy": "assert_none"}');
RESET taskq.policy;
SELECT count(*) AS messages FROM lg_messages;

------------------------------------------------------------------------
-- An application role enqueues as itself
------------------------------------------------------------------------

-- no privilege on the sequence or the outbox is needed; the message names the role
SET ROLE lg_app;
SELECT has_sequence_privilege('taskq.tasks_id_seq', 'USAGE') AS seq_usage;
SELECT taskq.enqueue('lg_orders', '{"by": "lg_app"}') > 0 AS enqueued;
RESET ROLE;
SELECT owner, content -> 'payload' AS payload FROM lg_messages;

-- cleanup
SELECT taskq.unregister_handler(name) FROM taskq.handlers WHERE name LIKE 'lg_%' ORDER BY name;
SELECT pg_drop_replication_slot('lg_slot');
DROP ROLE lg_app;
