# A dispatcher SIGKILLed in the middle of a 5,000-task backlog, inside a
# handler that waits for a lock the test holds: the postmaster resets every
# backend, and after recovery every committed task runs exactly once (the
# ledger has a UNIQUE constraint, so a second run would fail the task),
# nothing is lost, and no innocent task is charged an attempt.  Only the
# task whose handler the killed dispatcher was running shows crashes = 1,
# and that crash counted as an attempt (DESIGN §6).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use IPC::Run;

my $ntasks = 5000;

my $node = taskq_node('crash_drain', <<'EOC');
taskq.workers = 2
taskq.batch_size = 16
taskq.poll_interval = '200ms'
restart_after_crash = on
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    n   int PRIMARY KEY,        -- UNIQUE: a second run of a task fails
    pid int NOT NULL,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- about a millisecond per task, so that the drain takes a few seconds and
-- a kill lands while handlers run
CREATE FUNCTION public.book(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (n, pid) VALUES ((p->>'n')::int, pg_backend_pid());
    PERFORM pg_sleep(0.001);
END $$;
SELECT taskq.register_handler('book', 'public.book(jsonb)');
-- waits for advisory lock 4242, which the test holds, so that its
-- dispatcher is known to be inside a handler when it is killed
CREATE FUNCTION public.stall(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(4242);
    INSERT INTO ledger (n, pid) VALUES ((p->>'n')::int, pg_backend_pid());
END $$;
SELECT taskq.register_handler('stall', 'public.stall(jsonb)');
EOS

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'two dispatchers run');

# The whole backlog is committed while the queue is paused: the stalling
# task (ledger row 0) in its middle.
my $half = $ntasks / 2;
sql(q{SELECT taskq.pause('default')});
my $stall = sql(qq{
    SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, $half) g));
    SELECT taskq.enqueue('stall', '{"n": 0}');
    SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series($half + 1, $ntasks) g));})
  =~ s/^\d+\n(\d+)\n\d+$/$1/r;
like($stall, qr/^\d+$/, "stalling task $stall enqueued in the middle of the backlog");
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE status = 'queued'}),
	$ntasks + 1, "$ntasks + 1 tasks committed and queued");

# A client holds lock 4242 until the crash reset ends its session.
my ($hout, $herr) = ('', '');
my $holder = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' application_name=holder',
	  '-c', 'SELECT pg_advisory_lock(4242), pg_sleep(600)' ],
	'>', \$hout, '2>', \$herr);
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted}),
	'a client holds advisory lock 4242');
sql(q{SELECT taskq.resume('default')});

# Some but not all done, and a dispatcher inside the stalling handler:
# kill that one.
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
         WHERE w.current_task = $stall AND a.wait_event_type = 'Lock'"),
	'a dispatcher waits inside the stalling handler');
my $victim = sql("SELECT pid FROM taskq.workers WHERE current_task = $stall");
my $done_before = sql(q{SELECT count(*) FROM taskq.tasks WHERE status = 'completed'});
note "killing dispatcher $victim (running task $stall) "
  . "with $done_before of $ntasks tasks completed";
cmp_ok($done_before, '>', 0, 'the drain has started');

my $log_offset = -s $node->logfile;
ok(kill('KILL', $victim), "SIGKILL sent to dispatcher $victim");

# The postmaster notices, resets all backends, and comes back.
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$holder->finish;
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server accepts connections again');
like(
	slurp_file($node->logfile, $log_offset),
	qr/background worker "taskq dispatcher" \(PID $victim\) was terminated by signal 9/,
	'the server log shows the killed dispatcher');

my $t0 = time();
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM taskq.tasks WHERE status IN ('queued', 'running')}),
	'the backlog drains after the crash restart');
note sprintf('drained %.2f s after the restart', time() - $t0);

my ($completed, $failed, $other) = split /\|/, sql(
	q{SELECT count(*) FILTER (WHERE status = 'completed'),
             count(*) FILTER (WHERE status = 'failed'),
             count(*) FILTER (WHERE status NOT IN ('completed', 'failed'))
      FROM taskq.tasks});
my ($lrows, $ldistinct) = split /\|/, sql(q{SELECT count(*), count(DISTINCT n) FROM ledger});
my ($crashed, $crashes_sum, $max_attempts, $not_one) = split /\|/, sql(
	q{SELECT count(*) FILTER (WHERE crashes > 0), coalesce(sum(crashes), 0),
             max(attempts), count(*) FILTER (WHERE attempts <> 1)
      FROM taskq.tasks});
note "after recovery: tasks completed=$completed failed=$failed other=$other; "
  . "ledger rows=$lrows distinct=$ldistinct; tasks with crashes>0=$crashed "
  . "(sum $crashes_sum); max attempts=$max_attempts; attempts<>1: $not_one";
note 'tasks with a crash: '
  . (sql(q{SELECT string_agg(id || ' crashes=' || crashes || ' attempts=' || attempts
                               || ' last_error=' || coalesce(last_error, '-'), '; ')
           FROM taskq.tasks WHERE crashes > 0}) || 'none');

is($completed, $ntasks + 1, 'every committed task completed');
is($failed,    0,           'no task failed');
is($lrows,     $ntasks + 1, "the ledger has $ntasks + 1 rows");
is($ldistinct, $ntasks + 1, "the ledger has $ntasks + 1 distinct task payloads");
is( sql(q{SELECT count(*) FROM taskq.tasks t
          LEFT JOIN ledger l ON l.n = (t.payload->>'n')::int
          WHERE l.n IS NULL}),
	'0', 'every task has its ledger row');
# The postmaster read the dispatchers' crash markers back ("taskq: task N
# was running when a dispatcher died"): the killed dispatcher's, naming
# the stalling task, and those of dispatchers the reset caught inside a
# handler, whose tasks a reset charges too (README, Guarantees: every task
# running at a reset is charged once).  Exactly those tasks show a crash.
my @suspects = slurp_file($node->logfile, $log_offset) =~
  /taskq: task (\d+) was running when (?!its dispatcher)/g;
note 'crash markers read back after the restart: ' . (join(', ', @suspects) || 'none');
ok((grep { $_ == $stall } @suspects), 'the killed dispatcher\'s crash marker named the stalling task');
cmp_ok(scalar(@suspects), '<=', 2, 'at most one marker per dispatcher');
my $charged = join(',', sort { $a <=> $b } @suspects);
is( sql(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM taskq.tasks WHERE crashes > 0}),
	$charged, 'the tasks that show a crash are exactly those whose markers were read back');
is( sql(qq{SELECT count(*) FROM taskq.tasks WHERE id <> ALL ('{$charged}'::bigint[])
           AND (attempts <> 1 OR crashes <> 0)}),
	'0', 'every other task has attempts = 1 and no crash (no innocent task was charged)');
like(
	sql("SELECT crashes || ':' || attempts || ':' || last_error FROM taskq.tasks WHERE id = $stall"),
	qr/^1:2:the dispatcher exited abnormally while running this task \(crash 1, counted as attempt 1\)$/,
	'the stalling task has crashes = 1, counted as attempt 1, and completed on attempt 2');
is( sql(q{SELECT count(*) FROM taskq.tasks
          WHERE worker_pid IS NOT NULL OR finished_at IS NULL}),
	'0', 'no task is left with a worker pid or without a finish time');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'two dispatchers run again');

# ---------------------------------------------------------------------
# A crash that is not a dispatcher's: SIGKILL an ordinary client backend
# while the dispatchers drain a second backlog.  Every backend is reset.
# The tasks whose handlers were running at the reset (at most one per
# dispatcher) are charged that crash, as any task running at a reset is
# (its handler may have caused it from another process); no other task is.
# ---------------------------------------------------------------------
my $n2 = 2000;
sql(q{SELECT taskq.pause('default')});
sql(qq{SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(100001, 100000 + $n2) g))});
my ($vout, $verr) = ('', '');
my $victim_client = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' application_name=victim',
	  '-c', 'SELECT pg_sleep(120)' ],
	'>', \$vout, '2>', \$verr);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'victim'}),
	'a client backend sleeps');
my $client_pid = sql(q{SELECT pid FROM pg_stat_activity WHERE application_name = 'victim'});
sql(q{SELECT taskq.resume('default')});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) >= 200 FROM ledger WHERE n > 100000}),
	'the second drain has started');
$log_offset = -s $node->logfile;
ok(kill('KILL', $client_pid), "SIGKILL sent to client backend $client_pid");
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$victim_client->finish;
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server accepts connections again');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM taskq.tasks WHERE status IN ('queued', 'running')}),
	'the second backlog drains');
is( sql(q{SELECT count(*) || '|' || count(DISTINCT n) FROM ledger WHERE n > 100000}),
	"$n2|$n2", 'each task of the second backlog ran exactly once');
my @reset_marked = slurp_file($node->logfile, $log_offset) =~
  /taskq: task (\d+) was running when the server reset/g;
note 'tasks running at the reset: ' . (join(', ', @reset_marked) || 'none');
ok(@reset_marked <= 2, 'at most one running task per dispatcher was marked at the reset');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE (payload->>'n')::int > 100000
          AND status <> 'completed'}),
	'0', 'all completed');
is( sql(q{SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM taskq.tasks
          WHERE (payload->>'n')::int > 100000 AND (attempts, crashes) = (2, 1)}),
	join(',', sort { $a <=> $b } @reset_marked),
	'the tasks running at the reset were charged that crash as one attempt each');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE (payload->>'n')::int > 100000
          AND (attempts, crashes) NOT IN ((1, 0), (2, 1))}),
	'0', 'every other task completed in one attempt without a crash');

$node->stop;
done_testing();
