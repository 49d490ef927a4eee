# Recurring tasks end to end: a '1 second' schedule watched for 10 s fires
# once per tick (scheduled_for unique and increasing, 9-11 tasks), woken by
# schedule()'s commit and by its next_run_at, not by polling (the poll
# interval is an hour); ticks run as the schedule's owner; a time zone
# schedule fires in its zone whatever the server's TimeZone; taskq.enabled
# = off fires nothing, and the missed ticks then follow the catch-up rule;
# a tick enqueue refuses is recorded on the schedule; and across an
# immediate restart no tick runs twice: one task for the latest missed
# tick, or every missed tick with catch_up.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $node = taskq_node('schedules', <<'EOC');
taskq.workers = 2
taskq.executors = 'side: queues=side workers=2'
taskq.batch_size = 1
taskq.poll_interval = '1h'
timezone = 'America/New_York'
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE ROLE app_user LOGIN;
CREATE TABLE ledger (
    schedule      text NOT NULL,
    scheduled_for text NOT NULL,
    run_by        name NOT NULL DEFAULT current_user,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schedule, scheduled_for)   -- a second run of a tick fails
);
GRANT INSERT ON ledger TO app_user;
-- the handler's own task: the one running in this backend (batch_size 1)
CREATE FUNCTION public.running_task() RETURNS bigint LANGUAGE sql AS $$
    SELECT id FROM taskq.tasks WHERE status = 'running' AND worker_pid = pg_backend_pid()
$$;
CREATE FUNCTION public.tick(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ledger (schedule, scheduled_for)
    SELECT m.metadata->>'schedule', m.metadata->>'scheduled_for'
    FROM taskq.tasks m WHERE m.id = public.running_task();
$$;
SELECT taskq.register_handler('tick', 'public.tick(jsonb)');
EOS

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 4 FROM taskq.workers WHERE type = 'dispatcher'}),
	'four dispatchers run: two of executor default, two of executor side');

# ---------------------------------------------------------------------
# A '1 second' schedule watched for 10 seconds.
# ---------------------------------------------------------------------
my $start = sql(q{SELECT clock_timestamp()});
$node->safe_psql('postgres', q{SELECT taskq.schedule('every_second', '1 second', 'tick')},
	extra_params => [ '-U', 'app_user' ]);
ok( $node->poll_query_until(
		'postgres', qq{SELECT clock_timestamp() >= '$start'::timestamptz + '10 s'}),
	'10 seconds pass');
my $window = sql(
	qq{SELECT count(*) FROM taskq.tasks
       WHERE handler = 'tick' AND metadata->>'schedule' = 'every_second'
         AND enqueued_at BETWEEN '$start' AND '$start'::timestamptz + '10 s'});
ok($window >= 9 && $window <= 11, "9 to 11 ticks enqueued in 10 s (got $window)");
is( sql(
		q{SELECT count(*) - count(DISTINCT metadata->>'scheduled_for') FROM taskq.tasks
          WHERE metadata->>'schedule' = 'every_second'}),
	'0',
	'never two tasks for one tick');
is( sql(
		q{SELECT count(*) FROM (
            SELECT (metadata->>'scheduled_for')::timestamptz
                   - lag((metadata->>'scheduled_for')::timestamptz) OVER (ORDER BY id) AS step
            FROM taskq.tasks WHERE metadata->>'schedule' = 'every_second') s
          WHERE step IS NOT NULL AND step <> '1 second'}),
	'0',
	'scheduled_for increases by exactly one second from task to task');
like(
	sql(q{SELECT metadata->>'scheduled_for' FROM taskq.tasks
          WHERE metadata->>'schedule' = 'every_second' ORDER BY id LIMIT 1}),
	qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
	'scheduled_for is an ISO 8601 time in UTC');
is(sql(q{SELECT DISTINCT owner FROM taskq.tasks WHERE metadata->>'schedule' = 'every_second'}),
	'app_user', 'the ticks are enqueued as the schedule owner');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) >= 9 AND bool_and(run_by = 'app_user') FROM ledger
          WHERE schedule = 'every_second'}),
	'and their handler runs as that owner');
is( sql(
		q{SELECT last_task_id = (SELECT max(id) FROM taskq.tasks WHERE metadata->>'schedule' = 'every_second')
          AND last_run_at < next_run_at AND last_error IS NULL
          FROM taskq.schedules WHERE name = 'every_second'}),
	't',
	'the schedule records its last tick and task');

# every executor numbers its dispatchers from 0: still one firer
my @firers = (slurp_file($node->logfile) =~ /taskq dispatcher (\d+ of executor "\w+") fires the schedules/g);
is(join(',', @firers), '0 of executor "default"',
	'one dispatcher fires the schedules: the first of executor default');

# unschedule: no tick after its commit
sql(q{SELECT taskq.unschedule('every_second')});
my $last = sql(q{SELECT max(id) FROM taskq.tasks WHERE metadata->>'schedule' = 'every_second'});
sql(q{SELECT taskq.schedule('marker', '1 second', 'tick')});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 2 FROM taskq.tasks WHERE metadata->>'schedule' = 'marker'}),
	'another schedule ticks twice meanwhile');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE metadata->>'schedule' = 'every_second' AND id > } . $last),
	'0', 'an unscheduled schedule fires no more');
sql(q{SELECT taskq.unschedule('marker')});

# ---------------------------------------------------------------------
# Time zones: the tick follows the schedule's zone, not the server's.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.schedule('paris9', '0 9 * * *', 'tick', timezone => 'Europe/Paris')});
is( sql(
		q{SELECT next_run_at = taskq._cron_next('0 9 * * *', 'Europe/Paris', now())
                 AND to_char(next_run_at AT TIME ZONE 'Europe/Paris', 'HH24:MI') = '09:00'
          FROM taskq.schedules WHERE name = 'paris9'}),
	't',
	'next_run_at is 09:00 in Paris');
# as after a day of downtime: due since yesterday's tick
# (read in the same statement: the firer may fire it at once)
my $due = sql(
	q{UPDATE taskq.schedules SET next_run_at = next_run_at - interval '1 day' WHERE name = 'paris9'
      RETURNING next_run_at});
sql(q{SELECT taskq.schedule('wake', '1 day', 'tick')});    # a commit that wakes the firer
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM taskq.tasks WHERE metadata->>'schedule' = 'paris9'}),
	'the due Paris tick fires');
is( sql(
		qq{SELECT (metadata->>'scheduled_for')::timestamptz = '$due'
          FROM taskq.tasks WHERE metadata->>'schedule' = 'paris9'}),
	't',
	'for the tick it was due at');
is( sql(
		qq{SELECT next_run_at = '$due'::timestamptz + interval '1 day'
                  AND to_char(next_run_at AT TIME ZONE 'Europe/Paris', 'HH24:MI') = '09:00'
           FROM taskq.schedules WHERE name = 'paris9'}),
	't',
	'and the schedule moves to the next 09:00 in Paris');
sql(q{SELECT taskq.unschedule('paris9'), taskq.unschedule('wake')});

# ---------------------------------------------------------------------
# A tick that enqueue refuses: recorded, logged, and the schedule goes on.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.schedule('refused', '1 second', 'tick')});
sql(q{UPDATE taskq.schedules SET owner = 'app_user' WHERE name = 'refused'});
sql(q{DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid FROM pg_proc WHERE proname = 'enqueue' AND pronamespace = 'taskq'::regnamespace LOOP EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f); END LOOP; END $$});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT last_error LIKE '%permission denied for function enqueue%'
          FROM taskq.schedules WHERE name = 'refused'}),
	'a tick refused at fire time (the owner lost EXECUTE on enqueue) is recorded');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE metadata->>'schedule' = 'refused'}),
	'0', 'and enqueued nothing');
sql(q{DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid FROM pg_proc WHERE proname = 'enqueue' AND pronamespace = 'taskq'::regnamespace LOOP EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f); END LOOP; END $$});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) >= 1 FROM taskq.tasks WHERE metadata->>'schedule' = 'refused'}),
	'once the privilege is back, the schedule fires again');
sql(q{SELECT taskq.unschedule('refused')});

# ---------------------------------------------------------------------
# taskq.enabled = off fires nothing; then the missed-tick rule applies.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.schedule('off_last', '1 second', 'tick'),
             taskq.schedule('off_all', '1 second', 'tick', catch_up => true)});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(DISTINCT metadata->>'schedule') = 2 FROM taskq.tasks
          WHERE metadata->>'schedule' IN ('off_last', 'off_all')}),
	'two schedules tick');
$node->append_conf('postgresql.conf', "taskq.enabled = off\n");
$node->reload;
ok( $node->poll_query_until(
		'postgres',
		q{SELECT bool_and(state = 'disabled') FROM taskq.workers WHERE type = 'dispatcher'}),
	'dispatchers are disabled');
my $off_max = sql(q{SELECT max(id) FROM taskq.tasks});
my $off_at = sql(q{SELECT clock_timestamp()});
ok( $node->poll_query_until(
		'postgres', qq{SELECT clock_timestamp() >= '$off_at'::timestamptz + '4 s'}),
	'4 seconds pass');
is(sql(qq{SELECT count(*) FROM taskq.tasks WHERE id > $off_max}), '0',
	'no tick fires while taskq.enabled is off');
$node->append_conf('postgresql.conf', "taskq.enabled = on\n");
$node->reload;
ok( $node->poll_query_until(
		'postgres',
		qq{SELECT count(*) >= 4 FROM taskq.tasks WHERE id > $off_max
           AND metadata->>'schedule' = 'off_all'}),
	'with catch_up, the ticks missed while off fire after');
sql(q{SELECT taskq.unschedule('off_last'), taskq.unschedule('off_all')});
my ($gap_last, $gap_all) = split /\|/, sql(
	qq{WITH s AS (
         SELECT metadata->>'schedule' AS name,
                (metadata->>'scheduled_for')::timestamptz
                - lag((metadata->>'scheduled_for')::timestamptz) OVER (PARTITION BY metadata->>'schedule' ORDER BY id) AS step
         FROM taskq.tasks WHERE metadata->>'schedule' IN ('off_last', 'off_all'))
       SELECT max(extract(epoch FROM step)) FILTER (WHERE name = 'off_last'),
              max(extract(epoch FROM step)) FILTER (WHERE name = 'off_all')
       FROM s});
ok($gap_last >= 4, "without catch_up the ticks missed while off are skipped (a gap of $gap_last s)");
ok($gap_all == 1, "with catch_up none is skipped (largest step $gap_all s)");

# ---------------------------------------------------------------------
# An immediate restart across missed ticks.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.schedule('crash_last', '2 seconds', 'tick'),
             taskq.schedule('crash_all', '2 seconds', 'tick', catch_up => true)});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) >= 4 FROM taskq.tasks WHERE metadata->>'schedule' IN ('crash_last', 'crash_all')}),
	'two schedules tick before the restart');
$node->stop('immediate');
my $down_at = time;
# the server stays down for at least three ticks of both schedules
sleep 0.2 while time < $down_at + 7;
$node->start;
my $up_at = sql(q{SELECT clock_timestamp()});
ok( $node->poll_query_until(
		'postgres',
		qq{SELECT count(*) = 2 FROM (
             SELECT metadata->>'schedule' FROM taskq.tasks
             WHERE metadata->>'schedule' IN ('crash_last', 'crash_all')
               AND enqueued_at > '$up_at'::timestamptz + '3 s'
             GROUP BY 1) s}),
	'both schedules tick again after the restart');
sql(q{SELECT taskq.unschedule('crash_last'), taskq.unschedule('crash_all')});

my $steps = sub {
	my ($name) = @_;
	return split /\n/, sql(
		qq{SELECT extract(epoch FROM (metadata->>'scheduled_for')::timestamptz
                  - lag((metadata->>'scheduled_for')::timestamptz) OVER (ORDER BY id))
           FROM taskq.tasks WHERE metadata->>'schedule' = '$name' ORDER BY id OFFSET 1});
};
my @last = $steps->('crash_last');
my @all  = $steps->('crash_all');
is(scalar(grep { $_ <= 0 } @last, @all), 0, 'no tick ran twice across the restart');
is(scalar(grep { $_ != 2 } @all), 0, 'with catch_up every missed tick fired once');
my @gaps = grep { $_ != 2 } @last;
is(scalar(@gaps), 1, 'without catch_up the missed ticks leave one gap');
ok($gaps[0] >= 6, "of at least two skipped ticks ($gaps[0] s)");
is( sql(
		qq{SELECT count(*) FROM taskq.tasks
           WHERE metadata->>'schedule' = 'crash_last' AND enqueued_at > '$up_at'
             AND enqueued_at - (metadata->>'scheduled_for')::timestamptz > '2 s'}),
	'0',
	'and the one task fired for them is for the latest missed tick');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = (SELECT count(*) FROM taskq.tasks WHERE handler = 'tick')
          FROM ledger}),
	'every tick task ran, once');

$node->stop;
done_testing();
