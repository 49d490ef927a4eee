# Four dispatchers, small batches, 2,000 tasks: every task runs exactly
# once (no double claim, no retry), and the workers show up where they
# should.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $ntasks = 2000;

my $node = taskq_node('concurrency', <<'EOC');
taskq.workers = 4
taskq.batch_size = 8
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    n   int NOT NULL UNIQUE,
    pid int NOT NULL,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- books payload n once; a second run of the same task would violate the
-- unique constraint, fail, and be retried (attempts 2)
CREATE FUNCTION public.book(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (n, pid) VALUES ((p->>'n')::int, pg_backend_pid());
    IF (p->>'n')::int % 50 = 0 THEN
        PERFORM pg_sleep(0.001);
    END IF;
END $$;
SELECT taskq.register_handler('book', 'public.book(jsonb)');
EOS

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 4 AND bool_and(state = 'idle')
          FROM taskq.workers WHERE type = 'dispatcher'}),
	'four dispatchers are idle');
is( sql(q{SELECT string_agg(backend_type || ':' || coalesce(datname, '-'), ',' ORDER BY backend_type, datname)
          FROM pg_stat_activity WHERE backend_type LIKE 'taskq%'}),
	'taskq dispatcher:postgres,taskq dispatcher:postgres,taskq dispatcher:postgres,taskq dispatcher:postgres,taskq launcher:-',
	'pg_stat_activity shows 4 dispatchers in postgres and the launcher');
is( sql(q{SELECT count(*) FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
          WHERE w.type = 'dispatcher' AND a.backend_type = 'taskq dispatcher'}),
	'4', 'taskq.workers and pg_stat_activity agree on the dispatcher pids');

# Enqueue in four transactions, the later ones while the dispatchers are
# busy with the earlier: two enqueue_many() calls and two statements that
# call enqueue() per row.
my $t0 = time();
sql(q{SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 500) g))});
sql(q{SELECT count(taskq.enqueue('book', jsonb_build_object('n', g)))
      FROM generate_series(501, 1000) g});
sql(q{SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1001, 1500) g))});
sql(q{SELECT count(taskq.enqueue('book', jsonb_build_object('n', g)))
      FROM generate_series(1501, 2000) g});
is(sql('SELECT count(*) FROM taskq.tasks'), $ntasks, "$ntasks tasks enqueued");

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) FILTER (WHERE status NOT IN ('queued', 'running')) = count(*)
          FROM taskq.tasks}),
	'every task has ended');
my $elapsed = time() - $t0;
note sprintf('%d tasks enqueued and run in %.2f s (%.0f tasks/s)',
	$ntasks, $elapsed, $ntasks / $elapsed);

is( sql(q{SELECT status || ':' || count(*) FROM taskq.tasks GROUP BY status}),
	"completed:$ntasks", 'all tasks completed');
is( sql(q{SELECT count(*) || ' ' || count(DISTINCT n) || ' ' || min(n) || ' ' || max(n)
          FROM ledger}),
	"$ntasks $ntasks 1 $ntasks",
	'the ledger has each payload exactly once');
is( sql(q{SELECT count(*) FROM taskq.tasks t JOIN ledger l ON l.n = (t.payload->>'n')::int}),
	$ntasks, 'each task id has its ledger row');
is( sql(q{SELECT min(attempts) || ' ' || max(attempts) || ' ' || count(last_error)
          FROM taskq.tasks}),
	'1 1 0', 'every task ran in exactly one attempt, without an error');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE started_at IS NULL OR finished_at IS NULL
          OR worker_pid IS NOT NULL}),
	'0', 'every task has its start and finish time, and no worker left on it');

my $pids = sql(q{SELECT count(DISTINCT pid) FROM ledger});
note "tasks were run by $pids dispatchers: "
  . sql(q{SELECT string_agg(c::text, ' ' ORDER BY c DESC)
          FROM (SELECT count(*) AS c FROM ledger GROUP BY pid) s});
is($pids, 4, 'all four dispatchers ran tasks');
is( sql(q{SELECT count(*) FROM ledger l
          WHERE l.pid NOT IN (SELECT pid FROM taskq.workers WHERE type = 'dispatcher')}),
	'0', 'every task ran in one of the dispatchers of taskq.workers');
is( sql(q{SELECT count(*) || ' ' || sum(processed) || ' ' || sum(failed)
          FROM taskq.workers WHERE type = 'dispatcher'}),
	"4 $ntasks 0", 'taskq.workers: 4 dispatchers processed all tasks, none failed');
is( sql(q{SELECT completed || ' ' || failed || ' ' || completed_since_start || ' '
                 || failed_since_start || ' ' || retried_since_start
          FROM taskq.stats WHERE handler = 'book'}),
	"$ntasks 0 $ntasks 0 0", 'taskq.stats agrees: no failure, no retry');

# When the work is done, no dispatcher holds a snapshot or a transaction.
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 4 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
          WHERE w.state = 'idle' AND a.state = 'idle'}),
	'all dispatchers are idle again');
is(idle_dispatchers_holding($node, 'postgres'), 0,
	'idle dispatchers hold no xmin, no xid and are not idle in transaction (but in their short wake-ups)');

$node->stop;
done_testing();
