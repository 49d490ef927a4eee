--
-- schedules: recurring tasks.  taskq.schedule() and taskq.unschedule(),
-- every bad input with its error, and the next-fire computation
-- (taskq._cron_next, internal) for fixed inputs: fields, steps, names,
-- Vixie's day rule, macros, intervals, time zones and daylight saving.
-- The server runs with taskq.enabled = off, so nothing fires here; the
-- TAP test 114_schedules watches the ticks.  Schedule names start with sch_.
--

SET timezone = 'UTC';
SELECT taskq.register_handler('sch_fn', 'app.record(jsonb)');

------------------------------------------------------------------------
-- Next fire times
------------------------------------------------------------------------

-- a table of cases: cron, zone, after -> next
CREATE TEMP TABLE cases (n serial, cron text, tz text, after timestamptz);
INSERT INTO cases (cron, tz, after) VALUES
    -- every minute: the next whole minute, strictly after
    ('* * * * *', 'UTC', '2026-03-01 10:00:00+00'),
    ('* * * * *', 'UTC', '2026-03-01 10:00:59.999+00'),
    -- steps and ranges
    ('*/5 * * * *', 'UTC', '2026-03-01 10:03:00+00'),
    ('*/5 * * * *', 'UTC', '2026-03-01 10:55:00+00'),
    ('1-10/2 * * * *', 'UTC', '2026-03-01 10:05:00+00'),
    ('1-10/2 * * * *', 'UTC', '2026-03-01 10:09:00+00'),
    ('0,30 9-17 * * *', 'UTC', '2026-03-01 17:30:00+00'),
    ('15 */6 * * *', 'UTC', '2026-03-01 06:15:00+00'),
    -- month and day names, case-insensitive
    ('0 12 * JAN,jul *', 'UTC', '2026-03-01 00:00:00+00'),
    ('0 9 * * mon-fri', 'UTC', '2026-03-06 09:00:00+00'),   -- a Friday
    ('0 9 * * 7', 'UTC', '2026-03-01 09:00:00+00'),          -- 7 is Sunday too
    -- day-of-month and day-of-week both restricted: either matches (Vixie)
    ('0 0 13 * 5', 'UTC', '2026-03-01 00:00:00+00'),         -- Friday 6 March first
    ('0 0 13 * 5', 'UTC', '2026-03-06 00:00:00+00'),
    -- one of them '*': both must match, so the other one decides
    ('0 0 13 * *', 'UTC', '2026-03-01 00:00:00+00'),
    ('0 0 */10 * 5', 'UTC', '2026-03-01 00:00:00+00'),       -- '*/...' counts as '*'
    -- 29 February: the next leap year
    ('0 0 29 2 *', 'UTC', '2026-03-01 00:00:00+00'),
    -- macros
    ('@yearly', 'UTC', '2026-03-01 00:00:00+00'),
    ('@annually', 'UTC', '2026-03-01 00:00:00+00'),
    ('@monthly', 'UTC', '2026-03-01 00:00:00+00'),
    ('@weekly', 'UTC', '2026-03-01 00:00:00+00'),            -- a Sunday: the next one
    ('@daily', 'UTC', '2026-03-01 00:00:00+00'),
    ('@midnight', 'UTC', '2026-03-01 23:59:59+00'),
    ('@hourly', 'UTC', '2026-03-01 10:30:00+00'),
    -- intervals: multiples of the period since the Unix epoch, any zone
    ('30 seconds', 'UTC', '2026-03-01 10:00:00+00'),
    ('30 seconds', 'Asia/Kolkata', '2026-03-01 10:00:29.5+00'),
    ('1 second', 'UTC', '2026-03-01 10:00:00.25+00'),
    ('7 sec', 'UTC', '2026-03-01 10:00:00+00'),
    ('90 s', 'UTC', '2026-03-01 10:00:00+00'),
    ('5 minutes', 'UTC', '2026-03-01 10:04:00+00'),
    ('2 hours', 'America/New_York', '2026-03-01 10:04:00+00'),
    ('1 day', 'Europe/Paris', '2026-03-01 10:04:00+00'),
    -- a time zone: 09:00 in Paris is 08:00 UTC in winter, 07:00 in summer
    ('0 9 * * *', 'Europe/Paris', '2026-03-01 12:00:00+00'),
    ('0 9 * * *', 'Europe/Paris', '2026-07-01 12:00:00+00'),
    ('0 0 * * *', 'Asia/Kolkata', '2026-03-01 12:00:00+00'), -- +05:30
    -- spring forward: Europe/Paris skips 02:00-02:59 on 29 March 2026;
    -- 02:30 fires once, at the first instant after the gap (03:00 local)
    ('30 2 * * *', 'Europe/Paris', '2026-03-28 12:00:00+00'),
    ('30 2 * * *', 'Europe/Paris', '2026-03-29 01:00:00+00'),
    -- every minute of the skipped hour coalesces into that one instant
    ('* 2 * * *', 'Europe/Paris', '2026-03-29 00:59:00+00'),
    ('* 2 * * *', 'Europe/Paris', '2026-03-29 01:00:00+00'),
    -- New York springs forward on 8 March 2026 at 02:00 (07:00 UTC)
    ('30 2 * * *', 'America/New_York', '2026-03-07 12:00:00+00'),
    -- fall back: New York repeats 01:00-01:59 on 1 November 2026;
    -- 01:30 fires once, at the first occurrence (EDT, 05:30 UTC)
    ('30 1 * * *', 'America/New_York', '2026-10-31 12:00:00+00'),
    ('30 1 * * *', 'America/New_York', '2026-11-01 05:30:00+00'),
    -- during the repeated hour a local time already passed is not fired again
    ('45 1 * * *', 'America/New_York', '2026-11-01 06:10:00+00'),
    -- hourly in local time skips the repeated hour (use '1 hour' for UTC hours)
    ('0 * * * *', 'America/New_York', '2026-11-01 05:00:00+00'),
    -- a zone spelled as PostgreSQL accepts it
    ('0 0 * * *', 'EST5EDT', '2026-03-01 12:00:00+00');

SELECT n, cron, tz, after, taskq._cron_next(cron, tz, after) AS next
FROM cases ORDER BY n;

-- the same instant seen in the zone's local time, for the DST cases
SELECT cron, tz, taskq._cron_next(cron, tz, after) AT TIME ZONE tz AS next_local
FROM cases WHERE tz IN ('Europe/Paris', 'America/New_York') AND cron NOT LIKE '%s%'
ORDER BY n;

-- successive ticks of '*/20 * * * *' in Paris across the spring gap
WITH RECURSIVE t(i, at) AS (
    SELECT 1, taskq._cron_next('*/20 * * * *', 'Europe/Paris', '2026-03-29 00:30:00+00')
    UNION ALL
    SELECT i + 1, taskq._cron_next('*/20 * * * *', 'Europe/Paris', at) FROM t WHERE i < 5)
SELECT i, at, at AT TIME ZONE 'Europe/Paris' AS local FROM t;

-- successive ticks of '*/20 1 * * *' in New York across the repeated hour:
-- 01:00, 01:20, 01:40 once each
WITH RECURSIVE t(i, at) AS (
    SELECT 1, taskq._cron_next('*/20 1 * * *', 'America/New_York', '2026-11-01 04:30:00+00')
    UNION ALL
    SELECT i + 1, taskq._cron_next('*/20 1 * * *', 'America/New_York', at) FROM t WHERE i < 4)
SELECT i, at, at AT TIME ZONE 'America/New_York' AS local FROM t;

------------------------------------------------------------------------
-- Bad cron text: the position of the error and a hint
------------------------------------------------------------------------

-- step 0
SELECT taskq._cron_next('*/0 * * * *', 'UTC', now());
-- out of range, in each field
SELECT taskq._cron_next('60 * * * *', 'UTC', now());
SELECT taskq._cron_next('0 24 * * *', 'UTC', now());
SELECT taskq._cron_next('0 0 0 * *', 'UTC', now());
SELECT taskq._cron_next('0 0 32 * *', 'UTC', now());
SELECT taskq._cron_next('0 0 1 13 *', 'UTC', now());
SELECT taskq._cron_next('0 0 * * 8', 'UTC', now());
SELECT taskq._cron_next('5,70 * * * *', 'UTC', now());
SELECT taskq._cron_next('0 10-25 * * *', 'UTC', now());
-- too few and too many fields
SELECT taskq._cron_next('* * * *', 'UTC', now());
SELECT taskq._cron_next('* * * * * *', 'UTC', now());
SELECT taskq._cron_next('', 'UTC', now());
SELECT taskq._cron_next('   ', 'UTC', now());
-- unexpected characters and names
SELECT taskq._cron_next('*x * * * *', 'UTC', now());
SELECT taskq._cron_next('0 0 * foo *', 'UTC', now());
SELECT taskq._cron_next('0 0 * * monday', 'UTC', now());
SELECT taskq._cron_next('jan * * * *', 'UTC', now());
SELECT taskq._cron_next('0 0 ? * *', 'UTC', now());
-- lists and ranges
SELECT taskq._cron_next('1,,2 * * * *', 'UTC', now());
SELECT taskq._cron_next('1, * * * *', 'UTC', now());
SELECT taskq._cron_next('0 0 * * 1-', 'UTC', now());
SELECT taskq._cron_next('30-10 * * * *', 'UTC', now());
SELECT taskq._cron_next('0 22-2 * * *', 'UTC', now());
-- steps
SELECT taskq._cron_next('5/10 * * * *', 'UTC', now());
SELECT taskq._cron_next('*/ * * * *', 'UTC', now());
SELECT taskq._cron_next('* */24 * * *', 'UTC', now());
SELECT taskq._cron_next('0 0 1-10/0 * *', 'UTC', now());
-- a date that never occurs
SELECT taskq._cron_next('0 0 30 2 *', 'UTC', now());
SELECT taskq._cron_next('0 0 31 4,6,9,11 *', 'UTC', now());
-- macros
SELECT taskq._cron_next('@reboot', 'UTC', now());
SELECT taskq._cron_next('@daily 5', 'UTC', now());
-- intervals: 1 second to 1 day, one number and one unit
SELECT taskq._cron_next('0 seconds', 'UTC', now());
SELECT taskq._cron_next('2 days', 'UTC', now());
SELECT taskq._cron_next('86401 seconds', 'UTC', now());
SELECT taskq._cron_next('99999999999999 seconds', 'UTC', now());
SELECT taskq._cron_next('30 fortnights', 'UTC', now());
SELECT taskq._cron_next('30 seconds later', 'UTC', now());
-- unknown time zones
SELECT taskq._cron_next('* * * * *', 'Mars/Olympus_Mons', now());
SELECT taskq._cron_next('* * * * *', '', now());
SELECT taskq._cron_next('30 seconds', 'Nowhere', now());
-- not a finite instant
SELECT taskq._cron_next('* * * * *', 'UTC', 'infinity');

------------------------------------------------------------------------
-- schedule() and unschedule()
------------------------------------------------------------------------

-- a schedule: its row, with next_run_at computed from now
SELECT taskq.schedule('sch_every5', '*/5 * * * *', 'sch_fn', '{"tag": "sch"}');
SELECT name, cron, handler, payload, timezone, catch_up, priority, queue,
       max_attempts, timeout, group_key, metadata, enabled, owner,
       last_run_at, last_task_id, last_error,
       next_run_at = taskq._cron_next(cron, timezone, now()) AS next_ok
FROM taskq.schedules WHERE name = 'sch_every5';

-- every option stored as given
SELECT taskq.schedule('sch_full', '0 9 * * mon-fri', 'sch_fn', '{"a": 1}',
                      timezone => 'Europe/Paris', catch_up => true, priority => 7,
                      queue => 'reports', max_attempts => 3, timeout => '10 min',
                      group_key => 'tenant-1', metadata => '{"trace": "x"}');
SELECT name, cron, payload, timezone, catch_up, priority, queue, max_attempts,
       timeout, group_key, metadata, enabled
FROM taskq.schedules WHERE name = 'sch_full';

-- an update keeps next_run_at while the timing is unchanged, recomputes it
-- when the cron text or zone changes
UPDATE taskq.schedules SET next_run_at = '2030-01-01' WHERE name = 'sch_every5';
SELECT taskq.schedule('sch_every5', '*/5 * * * *', 'sch_fn', '{"tag": "changed"}');
SELECT payload, next_run_at FROM taskq.schedules WHERE name = 'sch_every5';
SELECT taskq.schedule('sch_every5', '*/10 * * * *', 'sch_fn', '{"tag": "changed"}');
SELECT cron, next_run_at = taskq._cron_next(cron, timezone, now()) AS recomputed
FROM taskq.schedules WHERE name = 'sch_every5';

-- a disabled schedule is kept; enabling it again starts from now
SELECT taskq.schedule('sch_every5', '*/10 * * * *', 'sch_fn', enabled => false);
SELECT enabled FROM taskq.schedules WHERE name = 'sch_every5';

-- unschedule: true once, then false
SELECT taskq.unschedule('sch_every5');
SELECT taskq.unschedule('sch_every5');
SELECT count(*) FROM taskq.schedules WHERE name = 'sch_every5';

-- a refused schedule() leaves nothing behind
SELECT taskq.schedule('sch_bad', '61 * * * *', 'sch_fn');
SELECT count(*) FROM taskq.schedules WHERE name = 'sch_bad';

-- NULL arguments
SELECT taskq.schedule(NULL, '* * * * *', 'sch_fn');
SELECT taskq.schedule('sch_x', NULL, 'sch_fn');
SELECT taskq.schedule('sch_x', '* * * * *', NULL);
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', NULL);
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', timezone => NULL);
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', catch_up => NULL);
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', enabled => NULL);
SELECT taskq.unschedule(NULL);

-- bad names, cron, zone and options
SELECT taskq.schedule('', '* * * * *', 'sch_fn');
SELECT taskq.schedule(repeat('s', 64), '* * * * *', 'sch_fn');
SELECT taskq.schedule('sch_x', '*/0 * * * *', 'sch_fn');
SELECT taskq.schedule('sch_x', '0 seconds', 'sch_fn');
SELECT taskq.schedule('sch_x', '2 days', 'sch_fn');
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', timezone => 'Europe/Atlantis');
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', priority => 101);
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', queue => '');
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', max_attempts => 0);
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', timeout => '0 s');
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', group_key => '');
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', group_key => E'tenant\t1');
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_fn', metadata => '[1]');
-- an unknown handler
SELECT taskq.schedule('sch_x', '* * * * *', 'sch_nobody');
SELECT count(*) FROM taskq.schedules WHERE name = 'sch_x';

------------------------------------------------------------------------
-- Who may schedule what
------------------------------------------------------------------------

CREATE ROLE sch_alice NOLOGIN;
CREATE ROLE sch_bob NOLOGIN;
GRANT USAGE ON SCHEMA app TO sch_alice, sch_bob;

-- a role schedules as itself; the schedule is its own
SET ROLE sch_alice;
SELECT taskq.schedule('sch_alice1', '@hourly', 'sch_fn', '{"secret": "alice"}');
SELECT name, owner FROM taskq.schedules WHERE name = 'sch_alice1';
RESET ROLE;

-- another role sees neither the schedule nor its payload, and may not
-- change or remove it
SET ROLE sch_bob;
SELECT count(*) AS bob_sees FROM taskq.schedules WHERE name = 'sch_alice1';
SELECT taskq.schedule('sch_alice1', '* * * * *', 'sch_fn', '{"secret": "bob"}');
SELECT taskq.unschedule('sch_alice1');
-- and cannot write the table directly
UPDATE taskq.schedules SET owner = 'sch_bob' WHERE name = 'sch_alice1';
INSERT INTO taskq.schedules (name, cron, handler, next_run_at, owner)
VALUES ('sch_forged', '* * * * *', 'sch_fn', now(), 'sch_alice');
DELETE FROM taskq.schedules;
RESET ROLE;
SELECT name, owner, payload FROM taskq.schedules WHERE name = 'sch_alice1';

-- a role that may not enqueue may not schedule
DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid FROM pg_proc WHERE proname = 'enqueue' AND pronamespace = 'taskq'::regnamespace LOOP EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f); END LOOP; END $$;
SET ROLE sch_bob;
SELECT taskq.schedule('sch_bob1', '@hourly', 'sch_fn');
RESET ROLE;
DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid FROM pg_proc WHERE proname = 'enqueue' AND pronamespace = 'taskq'::regnamespace LOOP EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f); END LOOP; END $$;
SELECT count(*) FROM taskq.schedules WHERE name = 'sch_bob1';

-- _cron_next is callable by anyone (it reads nothing)
SET ROLE sch_bob;
SELECT taskq._cron_next('@daily', 'UTC', '2026-01-01 12:00+00');
RESET ROLE;

-- unregistering a handler drops its schedules with it
SELECT taskq.register_handler('sch_gone', 'app.record(jsonb)');
SELECT taskq.schedule('sch_gone1', '@daily', 'sch_gone');
SELECT taskq.schedule('sch_gone2', '@hourly', 'sch_gone');
SELECT taskq.unregister_handler('sch_gone');
SELECT count(*) FROM taskq.schedules WHERE handler = 'sch_gone';

-- clean up
SELECT taskq.unschedule(name) FROM taskq.schedules ORDER BY name;
SELECT taskq.unregister_handler('sch_fn');
DROP ROLE sch_alice, sch_bob;
