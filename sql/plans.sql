--
-- plans: each handler function's prepared call is its own.  Two targets of
-- the greatest length (a schema and function names of 63 double quotes,
-- which quoting doubles: 263 bytes) that differ only near their end must
-- each call their own function, in one session, whichever runs first.
--

CREATE SCHEMA """""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""";
CREATE FUNCTION """"""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""."""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""a"(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '"a"'::jsonb $$;
CREATE FUNCTION """"""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""."""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""b"(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '"b"'::jsonb $$;
SELECT taskq.register_handler('plans_a', '""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""."""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""a"');
SELECT taskq.register_handler('plans_b', '""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""."""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""b"');
SELECT name, length(target) FROM taskq.handlers WHERE name LIKE 'plans\_%' ORDER BY name;

SELECT taskq.enqueue('plans_a', '{}', mode => 'sync') AS id \gset
SELECT status, result FROM taskq.tasks WHERE id = :id;
SELECT taskq.enqueue('plans_b', '{}', mode => 'sync') AS id \gset
SELECT status, result FROM taskq.tasks WHERE id = :id;
SELECT taskq.enqueue('plans_a', '{}', mode => 'sync') AS id \gset
SELECT status, result FROM taskq.tasks WHERE id = :id;

SELECT taskq.unregister_handler('plans_a');
SELECT taskq.unregister_handler('plans_b');
DROP SCHEMA """""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""""" CASCADE;
