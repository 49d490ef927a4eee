--
-- security: what application roles may do.  Handlers run as the role that
-- enqueued the task, never as a superuser on its behalf; application roles
-- read the outbox (their own tasks only) and change it only through the
-- API.  Roles: sec_admin (a superuser that registers the handlers), alice
-- and bob (applications), carol (a listener service).  Handler names start
-- with sec_; task ids start at 60000 so that messages are stable.
--

SELECT setval('taskq.tasks_id_seq', 60000, false);

-- start from no roles, even after an interrupted earlier run
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['alice', 'bob', 'carol', 'sec_admin'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('DROP OWNED BY %I', r);
            EXECUTE format('DROP ROLE %I', r);
        END IF;
    END LOOP;
END
$$;

CREATE ROLE sec_admin SUPERUSER NOLOGIN;
CREATE ROLE alice NOLOGIN;
CREATE ROLE bob NOLOGIN;
CREATE ROLE carol NOLOGIN;

-- alice may write the ledger (through her handlers); bob may not
GRANT INSERT ON app.ledger TO alice;
GRANT USAGE ON SEQUENCE app.ledger_n_seq TO alice;

-- a table only a superuser may write, and a handler that writes it
CREATE TABLE app.sec_secrets (payload jsonb);
CREATE FUNCTION app.sec_write_secret(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ INSERT INTO app.sec_secrets VALUES (payload) RETURNING payload $$;

-- app.sec_answer(call): what an API call answers, as one line: its result,
-- or its error's SQLSTATE, message (task ids masked as N), detail and hint
CREATE FUNCTION app.sec_answer(call text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    result text;
    state text;
    msg text;
    detail text;
    hint text;
BEGIN
    EXECUTE 'SELECT (' || call || ')::text' INTO result;
    RETURN 'returns ' || coalesce(result, 'NULL');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN concat_ws(' | ', state, regexp_replace(msg, '[0-9]+', 'N', 'g'),
                     'DETAIL: ' || nullif(detail, ''), 'HINT: ' || nullif(hint, ''));
END
$$;

-- the handlers, registered by the superuser sec_admin
SET ROLE sec_admin;
SELECT taskq.register_handler('sec_fn', 'app.record');
SELECT taskq.register_handler('sec_secret', 'app.sec_write_secret');
RESET ROLE;

-- wait until this database's two dispatchers have started (disabled:
-- the server runs with taskq.enabled = off)
DO $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        EXIT WHEN (SELECT count(*) FROM taskq.workers
                   WHERE type = 'dispatcher' AND database = current_database()
                     AND state = 'disabled') = 2;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

------------------------------------------------------------------------
-- Default privileges
------------------------------------------------------------------------

-- which API functions an application role may call
SELECT p.proname, has_function_privilege('alice', p.oid, 'EXECUTE') AS alice_may_call
FROM pg_proc p
WHERE p.pronamespace = 'taskq'::regnamespace
ORDER BY p.proname;

-- what it may do with the relations: read, not write
SELECT c.relname,
       has_table_privilege('alice', c.oid, 'SELECT') AS sel,
       has_table_privilege('alice', c.oid, 'INSERT') AS ins,
       has_table_privilege('alice', c.oid, 'UPDATE') AS upd,
       has_table_privilege('alice', c.oid, 'DELETE') AS del,
       has_table_privilege('alice', c.oid, 'TRUNCATE') AS trunc
FROM pg_class c
WHERE c.relnamespace = 'taskq'::regnamespace AND c.relkind IN ('r', 'v')
ORDER BY c.relname;

-- the views run with the caller's privileges, so taskq.stats counts only
-- the tasks that row-level security lets the caller see
SELECT c.relname, c.reloptions
FROM pg_class c
WHERE c.relnamespace = 'taskq'::regnamespace AND c.relkind = 'v'
ORDER BY c.relname;

------------------------------------------------------------------------
-- Enqueue: the task belongs to the calling role
------------------------------------------------------------------------

SET ROLE alice;

-- alice enqueues; the task's owner is alice, and she sees it
SELECT taskq.enqueue('sec_fn', '{"by": "alice"}') AS alice_task \gset
SELECT id = :alice_task AS is_hers, owner::text, handler, status, payload FROM taskq.tasks;

-- she can wait on it
SELECT owner::text, status FROM taskq.wait(:alice_task, '0');

-- the superuser sees the same owner
RESET ROLE;
SELECT owner::text, status FROM taskq.tasks WHERE id = :alice_task;
SET ROLE alice;

------------------------------------------------------------------------
-- Application roles cannot forge or rewrite tasks
------------------------------------------------------------------------

-- no INSERT into the outbox (here: a task that claims to be bob's)
INSERT INTO taskq.tasks (handler, queue, priority, max_attempts, owner, run_at, timeout, payload)
VALUES ('sec_fn', 'default', 0, 1, 'bob', now(), '1 min', '{"forged": true}');
SELECT count(*) FROM taskq.tasks WHERE payload = '{"forged": true}';

-- no UPDATE, not even of her own task
UPDATE taskq.tasks SET status = 'completed' WHERE id = :alice_task;
SELECT status FROM taskq.tasks WHERE id = :alice_task;

-- no DELETE
DELETE FROM taskq.tasks WHERE id = :alice_task;
SELECT count(*) FROM taskq.tasks WHERE id = :alice_task;

-- no TRUNCATE
TRUNCATE taskq.tasks;
SELECT count(*) FROM taskq.tasks WHERE id = :alice_task;

-- no ids from the sequence
SELECT nextval('taskq.tasks_id_seq');

-- no INSERT, UPDATE or DELETE on the registry
INSERT INTO taskq.handlers (name, kind, target, owner) VALUES ('sec_forged', 'log', 'x', 'alice');
SELECT count(*) FROM taskq.handlers WHERE name = 'sec_forged';
UPDATE taskq.handlers SET target = 'app.sec_write_secret(pg_catalog.jsonb)' WHERE name = 'sec_fn';
SELECT target FROM taskq.handlers WHERE name = 'sec_fn';
DELETE FROM taskq.handlers WHERE name = 'sec_fn';
SELECT count(*) FROM taskq.handlers WHERE name = 'sec_fn';

-- no INSERT into queue state
INSERT INTO taskq.queues (name, paused) VALUES ('default', true);
SELECT count(*) FROM taskq.queues WHERE name = 'default';

-- no registering or unregistering handlers
SELECT taskq.register_handler('sec_alice', 'app.record');
SELECT count(*) FROM taskq.handlers WHERE name = 'sec_alice';
SELECT taskq.unregister_handler('sec_fn');
SELECT count(*) FROM taskq.handlers WHERE name = 'sec_fn';

-- no pausing or resuming queues
SELECT taskq.pause('default');
SELECT count(*) FROM taskq.queues WHERE name = 'default';
SELECT taskq.resume('default');

-- no internal functions
SELECT taskq._dispatcher_alive(1, now());
SELECT taskq._crash_suspect(:alice_task);
SELECT taskq._orphan_cause(:alice_task);
SELECT taskq._wake_launcher();

-- no superuser-only settings
SET taskq.require_enqueue = on;
SET taskq.trace = on;
SHOW taskq.require_enqueue;

-- the session settings are hers to change
SET taskq.policy = 'drop';
SELECT taskq.enqueue('sec_fn', '{"by": "alice", "policy": "drop"}') IS NULL AS dropped;
RESET taskq.policy;

-- she may read the registry, the stats and the workers
SELECT name, kind, owner::text FROM taskq.handlers WHERE name LIKE 'sec\_%' ORDER BY name;
SELECT handler, queued FROM taskq.stats WHERE handler = 'sec_fn';
-- the workers: the launcher and this database's two dispatchers, with
-- their state (what they hold of other roles' tasks: see the TAP test
-- 108_view_privacy.pl, which runs tasks)
SELECT type, database = current_database() AS here, worker, state,
       current_task, last_error, processed
FROM taskq.workers ORDER BY type, worker;

------------------------------------------------------------------------
-- Row-level security: a role sees and manages its own tasks only
------------------------------------------------------------------------

SET ROLE bob;

-- bob does not see alice's task
SELECT count(*) FROM taskq.tasks WHERE id = :alice_task;
SELECT count(*) FROM taskq.tasks WHERE handler LIKE 'sec\_%';

-- nor can he wait on it: for him, it does not exist
SELECT status FROM taskq.wait(:alice_task, '0');

-- nor cancel it: it does not exist for him either
SELECT taskq.cancel(:alice_task);

-- every call answers for alice's task exactly as for an id that does not
-- exist (same SQLSTATE, message, detail and hint), so bob cannot tell
-- that it exists
SELECT c.call, app.sec_answer(format(c.call, :alice_task)) = app.sec_answer(format(c.call, 999999999)) AS same,
       app.sec_answer(format(c.call, :alice_task)) AS answer
FROM (VALUES ('taskq.cancel(%s)'), ('taskq.retry(%s)'), ('taskq.ack(%s)'),
             ('taskq.nack(%s, ''no'')'), ('taskq.wait(%s, ''0'')'),
             ('taskq.ack_many(ARRAY[%s]::bigint[])')) AS c(call);

-- his own task he sees, and alice does not
SELECT taskq.enqueue('sec_fn', '{"by": "bob"}') AS bob_task \gset
SELECT owner::text, payload FROM taskq.tasks;
SET ROLE alice;
SELECT count(*) FROM taskq.tasks WHERE id = :bob_task;

-- taskq.stats counts the tasks the caller sees: bob his one, alice hers,
-- the superuser both
SET ROLE bob;
SELECT handler, queued FROM taskq.stats WHERE handler = 'sec_fn';
SET ROLE alice;
SELECT handler, queued FROM taskq.stats WHERE handler = 'sec_fn';
RESET ROLE;
SELECT handler, queued FROM taskq.stats WHERE handler = 'sec_fn';
SET ROLE alice;

-- alice can cancel her task
SELECT taskq.cancel(:alice_task);
SELECT status FROM taskq.tasks WHERE id = :alice_task;

-- bob cannot retry it: it does not exist for him
SET ROLE bob;
SELECT taskq.retry(:alice_task);

-- alice can
SET ROLE alice;
SELECT taskq.retry(:alice_task);
SELECT status, attempts FROM taskq.tasks WHERE id = :alice_task;

-- a role that is a member of alice sees and manages her tasks
RESET ROLE;
GRANT alice TO carol;
SET ROLE carol;
SELECT owner::text, payload FROM taskq.tasks WHERE handler LIKE 'sec\_%' ORDER BY id;
SELECT taskq.cancel(:alice_task);
RESET ROLE;
REVOKE alice FROM carol;
SELECT owner::text, status FROM taskq.tasks WHERE id = :alice_task;

------------------------------------------------------------------------
-- Handlers belong to the role that registered them
------------------------------------------------------------------------

RESET ROLE;
GRANT EXECUTE ON FUNCTION taskq.register_handler(text, text, text, text, int, int, interval, boolean, boolean),
                          taskq.unregister_handler(text)
    TO alice, bob, carol;

-- alice may now register a handler of her own
SET ROLE alice;
SELECT taskq.register_handler('sec_alice', 'app.record', priority => 1);
SELECT name, owner::text, priority FROM taskq.handlers WHERE name = 'sec_alice';

-- she cannot take over one that sec_admin registered
SELECT taskq.register_handler('sec_fn', 'app.sec_write_secret');
SELECT target, owner::text FROM taskq.handlers WHERE name = 'sec_fn';

-- nor unregister it
SELECT taskq.unregister_handler('sec_fn');
SELECT count(*) FROM taskq.handlers WHERE name = 'sec_fn';

-- bob cannot update or unregister alice's handler
SET ROLE bob;
SELECT taskq.register_handler('sec_alice', 'app.record', priority => 99);
SELECT taskq.unregister_handler('sec_alice');
SELECT name, owner::text, priority FROM taskq.handlers WHERE name = 'sec_alice';

-- alice can update it (the owner stays alice) and unregister it
SET ROLE alice;
SELECT taskq.register_handler('sec_alice', 'app.touch', priority => 2);
SELECT name, target, owner::text, priority FROM taskq.handlers WHERE name = 'sec_alice';
SELECT taskq.unregister_handler('sec_alice');
SELECT count(*) FROM taskq.handlers WHERE name = 'sec_alice';

-- the superuser may change anyone's handler; the owner stays
RESET ROLE;
SET ROLE alice;
SELECT taskq.register_handler('sec_alice_2', 'app.record');
RESET ROLE;
SELECT taskq.register_handler('sec_alice_2', 'app.record', priority => 3);
SELECT name, owner::text, priority FROM taskq.handlers WHERE name = 'sec_alice_2';
SELECT taskq.unregister_handler('sec_alice_2');

------------------------------------------------------------------------
-- ack() and nack(): by the task's owner or the handler's owner
------------------------------------------------------------------------

-- carol, a listener service, registers a notify handler
SET ROLE carol;
SELECT taskq.register_handler('sec_notify', 'sec_channel', kind => 'notify');
RESET ROLE;

-- alice's tasks for it, dispatched at once
SET ROLE alice;
SELECT taskq.enqueue('sec_notify', '{"by": "alice", "n": 1}', mode => 'sync') AS notify_1 \gset
SELECT taskq.enqueue('sec_notify', '{"by": "alice", "n": 2}', mode => 'sync') AS notify_2 \gset
SELECT id - :notify_1 AS nth, owner::text, status FROM taskq.tasks WHERE handler = 'sec_notify' ORDER BY id;

-- bob may neither acknowledge nor reject them: for him they do not exist,
-- and ack_many() leaves them as it leaves unknown ids
SET ROLE bob;
SELECT taskq.ack(:notify_1);
SELECT taskq.nack(:notify_1, 'not mine');
SELECT taskq.ack_many(ARRAY[:notify_1, :notify_2]);
SELECT c.call, app.sec_answer(format(c.call, :notify_1)) = app.sec_answer(format(c.call, 999999999)) AS same
FROM (VALUES ('taskq.ack(%s)'), ('taskq.nack(%s, ''no'')'), ('taskq.cancel(%s)'),
             ('taskq.ack_many(ARRAY[%s]::bigint[])')) AS c(call);
RESET ROLE;
SELECT id - :notify_1 AS nth, status FROM taskq.tasks WHERE handler = 'sec_notify' ORDER BY id;

-- carol, who registered the handler, may (without seeing the rows)
SET ROLE carol;
SELECT count(*) FROM taskq.tasks WHERE handler = 'sec_notify';
SELECT taskq.ack(:notify_1, '{"by": "carol"}');
SELECT taskq.nack(:notify_2, 'carol is busy', retry_in => '1 min');

-- and so may alice, whose tasks they are
SET ROLE alice;
SELECT taskq.enqueue('sec_notify', '{"by": "alice", "n": 3}', mode => 'sync') AS notify_3 \gset
SELECT taskq.ack(:notify_3, '{"by": "alice"}');
SELECT id - :notify_1 AS nth, status, result, last_error FROM taskq.tasks WHERE handler = 'sec_notify' ORDER BY id;
RESET ROLE;

------------------------------------------------------------------------
-- A sync handler runs as the caller, with the caller's privileges
------------------------------------------------------------------------

-- alice's sync task writes the ledger as alice
SET ROLE alice;
SELECT taskq.enqueue('sec_fn', '{"tag": "sec_sync", "by": "alice"}', mode => 'sync') AS id \gset
SELECT owner::text, status, attempts FROM taskq.tasks WHERE id = :id;
RESET ROLE;
SELECT tag, run_by FROM app.ledger WHERE tag = 'sec_sync';

-- bob may not write the ledger, so his sync task fails, leaving nothing
SET ROLE bob;
SELECT taskq.enqueue('sec_fn', '{"tag": "sec_sync_bob", "by": "bob"}', mode => 'sync');
SELECT count(*) FROM taskq.tasks WHERE payload->>'tag' = 'sec_sync_bob';
RESET ROLE;
SELECT count(*) FROM app.ledger WHERE tag = 'sec_sync_bob';

-- a handler registered by a superuser does not lend alice its privileges
SET ROLE alice;
SELECT taskq.enqueue('sec_secret', '{"by": "alice"}', mode => 'sync');
SELECT count(*) FROM taskq.tasks WHERE handler = 'sec_secret';
RESET ROLE;
SELECT count(*) FROM app.sec_secrets;

------------------------------------------------------------------------
-- The API's own statements, which run as the owner of taskq.tasks, do not
-- use objects from the caller's search_path
------------------------------------------------------------------------

-- alice has a schema with an "=" operator for taskq.status that reports
-- whenever it runs, and puts it first in her search_path
CREATE SCHEMA sec_alice_ops AUTHORIZATION alice;
SET ROLE alice;
CREATE FUNCTION sec_alice_ops.status_eq(a taskq.status, b taskq.status) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'alice''s operator ran as %', current_user;
    RETURN a::text = b::text;
END
$$;
CREATE OPERATOR sec_alice_ops.= (LEFTARG = taskq.status, RIGHTARG = taskq.status,
                                 FUNCTION = sec_alice_ops.status_eq);
SELECT taskq.enqueue('sec_fn', '{"by": "alice", "search_path": true}', dedupe_key => 'sec-key') AS id \gset
SELECT taskq.cancel(:id);
SET search_path = sec_alice_ops, public;
-- retry looks for a live task with the same dedupe_key: not with her operator
SELECT taskq.retry(:id);
RESET search_path;
RESET ROLE;
SELECT status FROM taskq.tasks WHERE id = :id;

------------------------------------------------------------------------
-- dedupe_key is per enqueuing role: no role can suppress another's task
-- (or learn its id) by taking the key first
------------------------------------------------------------------------

-- bob takes the key first
SET ROLE bob;
SELECT taskq.enqueue('sec_fn', '{"by": "bob", "dedupe": 1}', dedupe_key => 'sec-shared') AS bob_keyed \gset

-- alice's enqueue with the same handler and key writes her own task
SET ROLE alice;
SELECT taskq.enqueue('sec_fn', '{"by": "alice", "dedupe": 1}', dedupe_key => 'sec-shared') AS alice_keyed \gset
SELECT :alice_keyed <> :bob_keyed AS not_bobs, owner::text, payload
FROM taskq.tasks WHERE id = :alice_keyed;

-- her second one deduplicates into her own task, as does bob's into his
SELECT taskq.enqueue('sec_fn', '{"by": "alice", "dedupe": 2}', dedupe_key => 'sec-shared') = :alice_keyed AS same_as_hers;
SET ROLE bob;
SELECT taskq.enqueue('sec_fn', '{"by": "bob", "dedupe": 2}', dedupe_key => 'sec-shared') = :bob_keyed AS same_as_his;

-- one live task per role holds the key
RESET ROLE;
SELECT owner::text, status, payload FROM taskq.tasks WHERE dedupe_key = 'sec-shared' ORDER BY id;

-- and alice's live task does not stop bob from retrying his own
SET ROLE bob;
SELECT taskq.cancel(:bob_keyed);
SELECT taskq.retry(:bob_keyed);
RESET ROLE;
SELECT owner::text, status, payload FROM taskq.tasks WHERE dedupe_key = 'sec-shared' ORDER BY id;

------------------------------------------------------------------------
-- Unregistering a handler ends its live tasks, so that whoever registers
-- the name next (here bob, on his own channel) never receives them
------------------------------------------------------------------------

-- carol's notify handler, and alice's tasks for it: two queued, one
-- dispatched, one completed
SET ROLE carol;
SELECT taskq.register_handler('sec_takeover', 'sec_carol_channel', kind => 'notify');
SET ROLE alice;
SELECT taskq.enqueue('sec_takeover', '{"by": "alice", "n": 1}') AS tk_1 \gset
SELECT taskq.enqueue('sec_takeover', '{"by": "alice", "n": 2}', run_after => '1 hour') AS tk_2 \gset
SELECT taskq.enqueue('sec_takeover', '{"by": "alice", "n": 3}', mode => 'sync') AS tk_3 \gset
SELECT taskq.enqueue('sec_takeover', '{"by": "alice", "n": 4}', mode => 'sync') AS tk_4 \gset
SELECT taskq.ack(:tk_4);

-- an unregistration that rolls back changes nothing
SET ROLE carol;
BEGIN;
SELECT taskq.unregister_handler('sec_takeover');
ROLLBACK;
SET ROLE alice;
SELECT id - :tk_1 AS nth, status, last_error FROM taskq.tasks WHERE handler = 'sec_takeover' ORDER BY id;

-- carol unregisters it: its live tasks end cancelled, saying why; the
-- completed one stays completed
SET ROLE carol;
SELECT taskq.unregister_handler('sec_takeover');
SET ROLE alice;
SELECT id - :tk_1 AS nth, status, last_error, lease_until, finished_at IS NOT NULL AS finished
FROM taskq.tasks WHERE handler = 'sec_takeover' ORDER BY id;

-- while no handler has the name, alice cannot retry them
SELECT taskq.retry(:tk_1);

-- bob registers the name on his own channel: nothing of alice's is
-- queued for him, and he cannot complete her dispatched task
SET ROLE bob;
SELECT taskq.register_handler('sec_takeover', 'sec_bob_channel', kind => 'notify');
SELECT taskq.ack(:tk_3, '{"by": "bob"}');
SELECT taskq.ack_many(ARRAY[:tk_1, :tk_2, :tk_3]);
RESET ROLE;
SELECT id - :tk_1 AS nth, owner::text, status, result FROM taskq.tasks WHERE handler = 'sec_takeover' ORDER BY id;
SELECT taskq.unregister_handler('sec_takeover');

------------------------------------------------------------------------
-- Clean up, so that this file can run again
------------------------------------------------------------------------

RESET ROLE;
DELETE FROM taskq.tasks WHERE handler LIKE 'sec\_%';
DELETE FROM app.ledger WHERE tag LIKE 'sec\_%';
SELECT taskq.unregister_handler(name) FROM taskq.handlers WHERE name LIKE 'sec\_%' ORDER BY name;
DROP TABLE app.sec_secrets;
DROP FUNCTION app.sec_write_secret(jsonb);
DROP FUNCTION app.sec_answer(text);
DROP OWNED BY alice, bob, carol, sec_admin;
DROP ROLE alice, bob, carol, sec_admin;
SELECT count(*) FROM pg_roles WHERE rolname IN ('alice', 'bob', 'carol', 'sec_admin');
