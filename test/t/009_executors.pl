# Executors (taskq.executors, DESIGN §7): pools of dispatchers per queue.
# A saturated executor does not hold up another one's queues; a reload
# adds, resizes and removes executors with tasks flowing, and no task is
# lost or run twice; a bad value leaves the executors in force running;
# taskq.workers names each dispatcher's executor.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('executors', <<'EOC');
taskq.workers = 1
taskq.poll_interval = '200ms'
taskq.executors = 'mail: queues=mail,newsletters workers=2; reports: queues=reports workers=2 batch_size=1'
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub set_executors
{
	my ($value) = @_;
	$node->append_conf('postgresql.conf', "taskq.executors = '$value'\n");
	$node->reload;
}

# dispatchers per executor, as taskq.workers shows them
my $per_executor = q{SELECT string_agg(executor || '=' || n, ' ' ORDER BY executor)
    FROM (SELECT executor, count(*) AS n FROM taskq.workers
          WHERE type = 'dispatcher' GROUP BY executor) w};

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE runs (n int NOT NULL, queue text NOT NULL, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION public.work(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (n, queue) VALUES ((p->>'n')::int, p->>'q');
    PERFORM pg_sleep(coalesce((p->>'sleep')::float8, 0));
END $$;
SELECT taskq.register_handler('work', 'public.work(jsonb)');
EOS

# enqueue tasks n = $from .. $to into $queue, sleeping $sleep s each
sub enqueue
{
	my ($queue, $from, $to, $sleep) = @_;
	sql(qq{SELECT count(taskq.enqueue('work',
	        jsonb_build_object('n', n, 'q', '$queue', 'sleep', $sleep), queue => '$queue'))
	       FROM generate_series($from, $to) n});
}

# ---------------------------------------------------------------------
# the workers view
ok($node->poll_query_until('postgres', "SELECT ($per_executor) = 'default=1 mail=2 reports=2'"),
	'each executor runs its workers: default (taskq.workers), mail and reports');
is(sql(q{SELECT count(*) FROM taskq.workers WHERE type = 'launcher' AND executor IS NULL}),
	'1', 'the launcher\'s executor is NULL');

# ---------------------------------------------------------------------
# a saturated executor does not hold up another executor's queues
enqueue('reports', 1, 6, 5);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM taskq.workers
		  WHERE executor = 'reports' AND state = 'running' AND current_task IS NOT NULL}),
	'both reports dispatchers run a 5 s report');
enqueue('mail', 101, 140, 0);
enqueue('newsletters', 201, 220, 0);
enqueue('default', 301, 320, 0);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 80 FROM runs WHERE queue <> 'reports'}),
	'the mail, newsletters and default tasks all ran');
is( sql(q{SELECT count(*) FROM taskq.workers
		  WHERE executor = 'reports' AND state = 'running' AND current_task IS NOT NULL}),
	'2', 'while every reports dispatcher was still busy with a report');
is(sql(q{SELECT count(*) FROM taskq.tasks t JOIN taskq.workers w ON w.current_task = t.id
         WHERE w.executor = 'reports' AND t.queue <> 'reports'}),
	'0', 'the reports dispatchers ran only reports');
is( sql(q{SELECT count(*) FILTER (WHERE status = 'running') || ' ' || count(*) FILTER (WHERE status = 'queued')
          FROM taskq.tasks WHERE queue = 'reports'}),
	'2 4', 'batch_size=1: each reports dispatcher claimed one report, the others wait their turn');

# ---------------------------------------------------------------------
# a reload that adds (bulk), resizes (mail) and removes (reports)
# executors, with tasks flowing
my $mail_pids = sql(q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM taskq.workers WHERE executor = 'mail'});
my $running_reports = sql(q{SELECT string_agg(current_task::text, ',' ORDER BY current_task)
                            FROM taskq.workers WHERE executor = 'reports'});
enqueue('mail', 1001, 1300, 0.002);
enqueue('bulk', 2001, 2300, 0.002);
enqueue('newsletters', 3001, 3100, 0.002);
set_executors('mail: queues=mail workers=3; bulk: queues=bulk,newsletters workers=1');
enqueue('mail', 1301, 1400, 0.002);
enqueue('bulk', 2301, 2400, 0);
ok($node->poll_query_until('postgres', "SELECT ($per_executor) = 'bulk=1 default=1 mail=3'"),
	'the reload started bulk and a third mail dispatcher, and retired the reports dispatchers');
my $mail_now = sql(q{SELECT string_agg(pid::text, ',') FROM taskq.workers WHERE executor = 'mail'});
my %now = map { $_ => 1 } split /,/, $mail_now;
is(scalar(grep { $now{$_} } split /,/, $mail_pids), 2, 'the two mail dispatchers that remain kept running');
is( sql(qq{SELECT string_agg(status::text, ',') FROM taskq.tasks WHERE id IN ($running_reports)}),
	'completed,completed', 'the reports running at the reload finished first: completed, not interrupted');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 0 FROM taskq.tasks WHERE status <> 'completed'}),
	'every task completed, the remaining reports on the default executor');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE attempts > 1 OR crashes > 0}),
	'0', 'no task was interrupted or charged an attempt by the reload');
is( sql(q{SELECT count(*) || ' ' || count(DISTINCT n) FROM runs}),
	sql(q{SELECT count(*) || ' ' || count(*) FROM taskq.tasks}),
	'each task ran exactly once across the reload');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE queue IN ('bulk', 'newsletters')}), '520',
	'bulk and newsletters tasks were all there');

# ---------------------------------------------------------------------
# a bad value is refused, naming the part, and the executors stay
my $pids = sql(q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM taskq.workers WHERE type = 'dispatcher'});
my $log_offset = -s $node->logfile;
set_executors('mail: queues=mail workers=3 threads=2');
ok( $node->wait_for_log(
		qr/invalid value for parameter "taskq\.executors": "mail: queues=mail workers=3 threads=2"\n.*DETAIL:  Unknown key "threads" in executor "mail"\./,
		$log_offset),
	'a bad value is logged with the part that is wrong');
enqueue('mail', 5001, 5020, 0);
ok($node->poll_query_until('postgres', q{SELECT count(*) = 20 FROM runs WHERE n BETWEEN 5001 AND 5020}),
	'tasks still flow');
is(sql(q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM taskq.workers WHERE type = 'dispatcher'}),
	$pids, 'the executors in force keep running: the same dispatchers');
is(sql(q{SHOW taskq.executors}), 'mail: queues=mail workers=3; bulk: queues=bulk,newsletters workers=1',
	'the old value stays in force');

# a good value again: back to the default executor alone
set_executors('');
ok($node->poll_query_until('postgres', "SELECT ($per_executor) = 'default=1'"),
	'with no executors named, the default one alone serves every queue');
enqueue('mail', 6001, 6010, 0);
ok($node->poll_query_until('postgres', q{SELECT count(*) = 10 FROM runs WHERE n BETWEEN 6001 AND 6010}),
	'and runs the tasks of every queue');

$node->stop;
done_testing();
