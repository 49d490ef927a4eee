# Schedules across a failover: a standby fires nothing; after the primary
# stops (immediate) and the standby is promoted, the new primary continues
# the schedules from what the standby had replayed.  No tick runs twice in
# the promoted database (scheduled_for unique per schedule, every task's
# handler ran once), and with catch_up no tick is lost either: the
# sequence of ticks is complete.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $primary = taskq_node('sprimary', <<'EOC', init => { allows_streaming => 1 });
taskq.workers = 2
taskq.batch_size = 1
taskq.poll_interval = '1h'
log_statement = none
EOC

sub sql_p { return $primary->safe_psql('postgres', $_[0]); }

sql_p(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    schedule      text NOT NULL,
    scheduled_for text NOT NULL,
    PRIMARY KEY (schedule, scheduled_for)   -- a second run of a tick fails
);
CREATE FUNCTION public.running_task() RETURNS bigint LANGUAGE sql AS $$
    SELECT id FROM taskq.tasks WHERE status = 'running' AND worker_pid = pg_backend_pid()
$$;
CREATE FUNCTION public.tick(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ledger (schedule, scheduled_for)
    SELECT m.metadata->>'schedule', m.metadata->>'scheduled_for'
    FROM taskq.tasks m WHERE m.id = public.running_task();
$$;
SELECT taskq.register_handler('tick', 'public.tick(jsonb)');
SELECT taskq.schedule('fo_all', '1 second', 'tick', catch_up => true);
SELECT taskq.schedule('fo_last', '1 second', 'tick');
EOS

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('sstandby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

sub sql_s { return $standby->safe_psql('postgres', $_[0]); }

ok( $primary->poll_query_until(
		'postgres', q{SELECT count(*) >= 6 FROM taskq.tasks WHERE handler = 'tick'}),
	'the schedules tick on the primary');
$primary->wait_for_catchup($standby);
ok( $standby->poll_query_until(
		'postgres', q{SELECT now() > pg_postmaster_start_time() + interval '2 s'}),
	'the standby has been up for 2 s');
is(sql_s(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'taskq%'}),
	'0', 'no taskq worker (and so no firer) runs on the standby');
my ($ret, $out, $err) =
  $standby->psql('postgres', q{SELECT taskq.schedule('on_standby', '1 second', 'tick')});
like($err, qr/read-only transaction/, 'schedule() on the standby fails as read-only');

$primary->stop('immediate');
my $on_standby = sql_s(q{SELECT count(*) FROM taskq.tasks WHERE handler = 'tick'});
note "the standby has $on_standby tick tasks from the old primary";

$standby->promote;
ok( $standby->poll_query_until(
		'postgres',
		qq{SELECT count(*) >= $on_standby + 6 FROM taskq.tasks WHERE handler = 'tick'}),
	'the promoted standby continues the schedules');
sql_s(q{SELECT taskq.unschedule('fo_all'), taskq.unschedule('fo_last')});

is( sql_s(
		q{SELECT count(*) - count(DISTINCT (metadata->>'schedule', metadata->>'scheduled_for'))
          FROM taskq.tasks WHERE handler = 'tick'}),
	'0',
	'no tick has two tasks in the promoted database');
is( sql_s(
		q{SELECT count(*) FROM (
            SELECT (metadata->>'scheduled_for')::timestamptz
                   - lag((metadata->>'scheduled_for')::timestamptz) OVER (ORDER BY id) AS step
            FROM taskq.tasks WHERE metadata->>'schedule' = 'fo_all') s
          WHERE step IS NOT NULL AND step <> '1 second'}),
	'0',
	'with catch_up the ticks form an unbroken sequence across the failover');
is( sql_s(
		q{SELECT count(*) FROM (
            SELECT (metadata->>'scheduled_for')::timestamptz
                   - lag((metadata->>'scheduled_for')::timestamptz) OVER (ORDER BY id) AS step
            FROM taskq.tasks WHERE metadata->>'schedule' = 'fo_last') s
          WHERE step IS NOT NULL AND step <= '0'}),
	'0',
	'without catch_up they only move forward');
ok( $standby->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM taskq.tasks WHERE handler = 'tick' AND status <> 'completed'}),
	'every tick task completes on the new primary');
is( sql_s(q{SELECT (SELECT count(*) FROM ledger) = (SELECT count(*) FROM taskq.tasks WHERE handler = 'tick')}),
	't', 'each one ran its handler once');

$standby->stop;
done_testing();
