# Failover: dispatchers run only on a primary; a streaming standby runs no
# taskq worker and refuses enqueue as read-only; after the primary stops in
# the middle of a backlog and the standby is promoted, every committed task
# ends completed on the new primary, exactly once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $ntasks = 2000;

my $primary = taskq_node('primary', <<'EOC', init => { allows_streaming => 1 });
taskq.workers = 2
taskq.batch_size = 16
taskq.poll_interval = '200ms'
log_statement = none
EOC

sql_p(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    n   int PRIMARY KEY,         -- UNIQUE: a second run of a task fails
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.book(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (n) VALUES ((p->>'n')::int);
    PERFORM pg_sleep(0.002);
END $$;
SELECT taskq.register_handler('book', 'public.book(jsonb)');
EOS

sub sql_p { return $primary->safe_psql('postgres', $_[0]); }

ok( $primary->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'two dispatchers run on the primary');

# The backlog is committed while the queue is paused.
sql_p(q{SELECT taskq.pause('default')});
sql_p(qq{SELECT count(*) FROM taskq.enqueue_many('book',
          ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, $ntasks) g))});

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

sub sql_s { return $standby->safe_psql('postgres', $_[0]); }

# ---------------------------------------------------------------------
# The standby: no workers, read-only.
# ---------------------------------------------------------------------
is(sql_s('SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is(sql_s(q{SELECT count(*) FROM taskq.tasks WHERE status = 'queued'}),
	$ntasks, 'the standby has the committed backlog');
# give a launcher that would (wrongly) start on a standby the chance to
# show up: wait until the standby has been up for 3 s
ok( $standby->poll_query_until(
		'postgres', q{SELECT now() > pg_postmaster_start_time() + interval '3 s'}),
	'the standby has been up for 3 s');
is( sql_s(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'taskq%'}),
	'0', 'no taskq launcher or dispatcher runs on the standby');
is(sql_s(q{SELECT count(*) FROM taskq.workers}), '0', 'taskq.workers is empty on the standby');
my ($ret, $out, $err) =
  $standby->psql('postgres', q{SELECT taskq.enqueue('book', '{"n": -1}')});
isnt($ret, 0, 'enqueue on the standby fails');
like($err, qr/read-only transaction/, 'with a read-only error');
note "standby enqueue error: $err";

# ---------------------------------------------------------------------
# Work on the primary, then lose it mid-backlog.
# ---------------------------------------------------------------------
sql_p(q{SELECT taskq.resume('default')});
ok( $primary->poll_query_until(
		'postgres',
		q{SELECT count(*) >= 300 FROM taskq.tasks WHERE status = 'completed'}),
	'the primary has completed part of the backlog');
$primary->wait_for_catchup($standby);
my $done_on_primary =
  sql_p(q{SELECT count(*) FROM taskq.tasks WHERE status = 'completed'});
$primary->stop('immediate');
note "primary stopped (immediate) with $done_on_primary of $ntasks tasks completed";
cmp_ok($done_on_primary, '<', $ntasks, 'the primary stopped before the backlog was done');

my ($s_done, $s_running) = split /\|/, sql_s(
	q{SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'running')
      FROM taskq.tasks});
note "the standby has $s_done completed and $s_running running (claimed on the old primary)";
is(sql_s(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'taskq%'}),
	'0', 'still no taskq worker on the standby');

my $t0 = time();
$standby->promote;
ok( $standby->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'dispatchers start on the new primary after promotion');
note sprintf('dispatchers appeared %.2f s after promotion', time() - $t0);
is( sql_s(q{SELECT string_agg(backend_type, ',' ORDER BY backend_type) FROM pg_stat_activity
            WHERE backend_type LIKE 'taskq%'}),
	'taskq dispatcher,taskq dispatcher,taskq launcher',
	'the new primary shows a launcher and two dispatchers in pg_stat_activity');

ok( $standby->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM taskq.tasks WHERE status IN ('queued', 'running')}),
	'the backlog drains on the new primary');
note sprintf('drained %.2f s after promotion', time() - $t0);

is( sql_s(q{SELECT status || '=' || count(*) FROM taskq.tasks GROUP BY status}),
	"completed=$ntasks", 'every committed task ended completed');
is( sql_s(q{SELECT count(*) || '|' || count(DISTINCT n) FROM ledger}),
	"$ntasks|$ntasks", 'the ledger has each task exactly once');
is( sql_s(q{SELECT count(*) FROM taskq.tasks t LEFT JOIN ledger l ON l.n = (t.payload->>'n')::int
            WHERE l.n IS NULL}),
	'0', 'every task has its ledger row');
is( sql_s(q{SELECT count(*) FROM taskq.tasks WHERE attempts <> 1 OR last_error IS NOT NULL}),
	'0', 'every task completed in one attempt, without an error');
my $new = sql_s(q{SELECT taskq.enqueue('book', jsonb_build_object('n', 999999))});
is(sql_s("SELECT status FROM taskq.wait($new, '20s')"),
	'completed', 'a task enqueued on the new primary completes');

$standby->stop;
done_testing();
