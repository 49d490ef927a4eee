# Dispatch after commit: priority order, nothing before commit, nothing
# rolled back, run_after, and the commit wake-up of an idle dispatcher
# whose poll interval is an hour.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = taskq_node('dispatch', <<'EOC');
taskq.workers = 1
taskq.batch_size = 3
taskq.poll_interval = '1s'
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

# poll until task $id has status $status; dies with the actual row if not
sub wait_status { return wait_task_status($node, @_); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE runs (
    seq   bigserial PRIMARY KEY,
    label text NOT NULL,
    at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.record(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (label) VALUES (p->>'label');
    RETURN jsonb_build_object('ran', p->>'label');
END $$;
SELECT taskq.register_handler('record', 'public.record(jsonb)');
CREATE FUNCTION public.nap(p jsonb) RETURNS void LANGUAGE sql AS $$
    SELECT pg_sleep((p->>'seconds')::float8);
$$;
SELECT taskq.register_handler('nap', 'public.nap(jsonb)');
EOS

# enqueue a task of handler 'record' with a label and extra options
sub enqueue
{
	my ($label, $opts) = @_;
	$opts = defined $opts ? ", $opts" : '';
	return sql(
		qq{SELECT taskq.enqueue('record', '{"label": "$label"}'$opts)});
}

ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers WHERE type = 'dispatcher'"),
	'one dispatcher runs');

# ---------------------------------------------------------------------
# Priority order.  The queue is paused while the tasks go in, so that the
# single dispatcher sees them all at once.
# ---------------------------------------------------------------------
sql("SELECT taskq.pause('default')");

# 'late' has a lower id than the other priority-0 tasks but a later run_at
my $late = enqueue('late', "priority => 0, run_after => '1s'");
sql(<<'EOS');
BEGIN;
SELECT taskq.enqueue('record', '{"label": "p0_a"}', priority => 0);
SELECT taskq.enqueue('record', '{"label": "p0_b"}', priority => 0);
SELECT taskq.enqueue('record', '{"label": "p10"}', priority => 10);
SELECT taskq.enqueue('record', '{"label": "neg5"}', priority => -5);
COMMIT;
EOS
enqueue('p0_c', 'priority => 0');
enqueue('p50',  'priority => 50');
enqueue('p100', 'priority => 100');

is( sql(q{SELECT bool_and(t.run_at < l.run_at AND t.id > l.id)
          FROM taskq.tasks t, taskq.tasks l
          WHERE l.payload->>'label' = 'late'
            AND t.payload->>'label' IN ('p0_a', 'p0_b', 'p0_c')}),
	't',
	"precondition: 'late' has a lower id but a later run_at than p0_*");

# wait until 'late' is due, then check that nothing ran while paused
ok( $node->poll_query_until(
		'postgres', "SELECT now() >= run_at FROM taskq.tasks WHERE id = $late"),
	'the delayed task is due');
is(sql('SELECT count(*) FROM runs'), '0', 'nothing runs in a paused queue');
is( sql(q{SELECT string_agg(DISTINCT status::text, ',') FROM taskq.tasks}),
	'queued', 'all tasks are still queued while the queue is paused');

sql("SELECT taskq.resume('default')");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 8 FROM taskq.tasks WHERE status = 'completed'"),
	'all 8 tasks complete after resume');
is( sql(q{SELECT string_agg(label, ' ' ORDER BY seq) FROM runs}),
	'p100 p50 p10 p0_a p0_b p0_c late neg5',
	'tasks ran by priority DESC, then run_at, then id');
is( sql(q{SELECT count(*) FROM taskq.tasks
          WHERE status = 'completed' AND attempts = 1
            AND result = jsonb_build_object('ran', payload->>'label')
            AND started_at >= run_at AND finished_at >= started_at}),
	'8',
	'each task completed in one attempt with the handler result stored');

# ---------------------------------------------------------------------
# Nothing runs before commit.
# ---------------------------------------------------------------------
sql('TRUNCATE runs');
my $bg = $node->background_psql('postgres');
$bg->query_safe('BEGIN');
my $open_id =
  $bg->query_safe(q{SELECT taskq.enqueue('record', '{"label": "open-tx"}')});
like($open_id, qr/^\d+$/, 'enqueue in an open transaction returns an id');

is(sql("SELECT count(*) FROM taskq.tasks WHERE id = $open_id"),
	'0', 'the uncommitted task is invisible to other sessions');

# A task committed after the open one: once it has run, the dispatcher has
# looked at the queue after the open transaction's enqueue.
my $marker = enqueue('marker-1');
ok(wait_status($marker, 'completed'), 'a later committed task runs');
is(sql(q{SELECT count(*) FROM runs WHERE label = 'open-tx'}),
	'0', 'the task of the open transaction has not run');

my $t_commit = time();
$bg->query_safe('COMMIT');
ok(wait_status($open_id, 'completed'), 'the task runs after COMMIT');
note sprintf('open-transaction task completed %.3f s after COMMIT (seen by polling)',
	time() - $t_commit);
is(sql(q{SELECT string_agg(label, ' ' ORDER BY seq) FROM runs}),
	'marker-1 open-tx', 'handlers ran in commit order');
is( sql(
		"SELECT r.at >= t.enqueued_at FROM runs r, taskq.tasks t
         WHERE r.label = 'open-tx' AND t.id = $open_id"),
	't',
	'the handler ran after the enqueue');

# ---------------------------------------------------------------------
# Rollback never runs: a whole transaction and a savepoint.
# ---------------------------------------------------------------------
$bg->query_safe('BEGIN');
$bg->query_safe(q{SELECT taskq.enqueue('record', '{"label": "rolled-back"}')});
$bg->query_safe('ROLLBACK');
$bg->query_safe('BEGIN');
my $kept =
  $bg->query_safe(q{SELECT taskq.enqueue('record', '{"label": "kept"}')});
$bg->query_safe('SAVEPOINT s1');
$bg->query_safe(
	q{SELECT taskq.enqueue('record', '{"label": "rolled-back-savepoint"}')});
$bg->query_safe('ROLLBACK TO SAVEPOINT s1');
$bg->query_safe('COMMIT');
$bg->quit;

ok(wait_status($kept, 'completed'), 'the task before the savepoint runs');
my $marker2 = enqueue('marker-2');
ok(wait_status($marker2, 'completed'), 'a later task runs');
is( sql(q{SELECT count(*) FROM runs WHERE label LIKE 'rolled-back%'}),
	'0', 'rolled-back tasks never ran');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE payload->>'label' LIKE 'rolled-back%'}),
	'0', 'rolled-back tasks left no row');

# ---------------------------------------------------------------------
# run_after: not before run_at, and soon after it.
# ---------------------------------------------------------------------
my $delayed = enqueue('delayed', "run_after => '2s'");
is( sql("SELECT status || ' ' || (run_at - enqueued_at)::text
         FROM taskq.tasks WHERE id = $delayed"),
	'queued 00:00:02',
	'a run_after task is queued with run_at = enqueue time + 2 s');
my $marker3 = enqueue('marker-3');
ok(wait_status($marker3, 'completed'), 'a task enqueued after it runs first');
SKIP:
{
	# only meaningful while run_at is still ahead (a very slow machine may
	# have taken 2 s to get here)
	my ($early, $status, $ran) = split /\|/, sql(
		"SELECT now() < run_at, status,
                (SELECT count(*) FROM runs WHERE label = 'delayed')
         FROM taskq.tasks WHERE id = $delayed");
	skip 'run_at has already passed', 2 unless $early eq 't';
	is($status, 'queued', 'the delayed task is still queued before its run_at');
	is($ran, '0', 'the delayed handler has not run before its run_at');
}

ok(wait_status($delayed, 'completed'), 'the delayed task completes');
my ($not_before, $lag) = split /\|/, sql(
	"SELECT r.at >= t.run_at AND t.started_at >= t.run_at,
            extract(epoch FROM r.at - t.run_at)
     FROM runs r, taskq.tasks t WHERE r.label = 'delayed' AND t.id = $delayed");
is($not_before, 't', 'the delayed task did not start before its run_at');
note sprintf('delayed task ran %.3f s after its run_at', $lag);
cmp_ok($lag, '<', 1.5, 'the delayed task ran soon after its run_at');

# ---------------------------------------------------------------------
# Wake-up on commit.  With taskq.poll_interval = 1h an idle dispatcher
# looks at the queue only when a commit sets its latch.
# ---------------------------------------------------------------------
$node->append_conf('postgresql.conf', "taskq.poll_interval = '1h'\ntaskq.trace = on\n");
$node->restart;

my $idle_q = q{SELECT count(*) = 1 FROM taskq.workers w
               JOIN pg_stat_activity a USING (pid)
               WHERE w.type = 'dispatcher' AND w.state = 'idle'
                 AND a.state = 'idle'};
ok($node->poll_query_until('postgres', $idle_q),
	'the dispatcher is idle after the restart');

# An idle dispatcher holds no transaction, snapshot or lock.
my $dpid = sql(q{SELECT pid FROM taskq.workers WHERE type = 'dispatcher'});
is( sql(
		"SELECT backend_type, state, backend_xmin IS NULL, backend_xid IS NULL,
                wait_event_type
         FROM pg_stat_activity WHERE pid = $dpid"),
	'taskq dispatcher|idle|t|t|Extension',
	'an idle dispatcher has no xmin, no xid and is not idle in transaction');
is(sql("SELECT count(*) FROM pg_locks WHERE pid = $dpid"),
	'0', 'an idle dispatcher holds no lock');
is( sql(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'taskq launcher'}),
	'1', 'the launcher is in pg_stat_activity');
is( sql(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'taskq launcher'
          AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)}),
	'0', 'the launcher holds no snapshot');

my @latency;
for my $i (1 .. 3)
{
	ok($node->poll_query_until('postgres', $idle_q),
		"wake-up $i: the dispatcher is idle");
	my $id = sql(
		qq{SELECT taskq.enqueue('record',
              jsonb_build_object('label', 'wake-$i', 't0', clock_timestamp()))});
	is(sql("SELECT status FROM taskq.wait($id, '10s')"),
		'completed', "wake-up $i: the task completes without polling");
	my $l = sql(
		"SELECT extract(epoch FROM r.at - (t.payload->>'t0')::timestamptz)
         FROM runs r, taskq.tasks t
         WHERE t.id = $id AND r.label = t.payload->>'label'");
	push @latency, $l;
	note sprintf('wake-up %d: enqueue-to-handler latency %.4f s', $i, $l);
	cmp_ok($l, '<', 2, "wake-up $i: picked up within 2 s of commit");
}
note sprintf('pickup latency with poll_interval = 1h: max %.4f s',
	(sort { $b <=> $a } @latency)[0]);

# The wake-up of an enqueue follows its subtransaction: one made in
# savepoints that were released still wakes the dispatcher at the
# top-level commit, as does one made after a rolled-back savepoint
# (whose own enqueue is gone, and must wake nobody).
for my $case (
	[ 'released savepoints',
		"BEGIN; SAVEPOINT a; SAVEPOINT b; SELECT taskq.enqueue('record', %s); RELEASE b; RELEASE a; COMMIT;" ],
	[ 'after a rolled-back savepoint',
		"BEGIN; SAVEPOINT a; SELECT taskq.enqueue('record', '{}') IS NULL; ROLLBACK TO a; SELECT taskq.enqueue('record', %s); COMMIT;" ])
{
	my ($what, $sql) = @$case;
	ok($node->poll_query_until('postgres', $idle_q), "subtransaction wake-up, $what: the dispatcher is idle");
	my $out = sql(sprintf($sql,
		"jsonb_build_object('label', 'wake-sub', 't0', clock_timestamp())"));
	my $id = (split /\n/, $out)[-1];
	is(sql("SELECT status FROM taskq.wait($id, '10s')"),
		'completed', "subtransaction wake-up, $what: the task completes without polling");
	my $l = sql(
		"SELECT extract(epoch FROM r.at - (t.payload->>'t0')::timestamptz)
         FROM runs r, taskq.tasks t
         WHERE t.id = $id AND r.label = 'wake-sub' ORDER BY r.at DESC LIMIT 1");
	note sprintf('subtransaction wake-up, %s: latency %.4f s', $what, $l);
	cmp_ok($l, '<', 2, "subtransaction wake-up, $what: picked up within 2 s of commit");
}

# A commit while the dispatcher is busy in a handler that sleeps on its
# latch (pg_sleep() does, as do lock waits) must not be lost: the task
# enqueued then runs as soon as the handler is done, not after
# poll_interval (1 h).
ok($node->poll_query_until('postgres', $idle_q), 'busy wake-up: the dispatcher is idle');
my $nap = sql(q{SELECT taskq.enqueue('nap', '{"seconds": 1.5}')});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
         WHERE w.current_task = $nap AND a.wait_event = 'PgSleep'"),
	'busy wake-up: the dispatcher runs a handler in pg_sleep');
my $busy = sql(q{SELECT taskq.enqueue('record', '{"label": "while-busy"}')});
is(sql("SELECT status FROM taskq.tasks WHERE id = $nap"),
	'running', 'busy wake-up: the task was committed while the handler ran');
ok(wait_status($nap, 'completed'), 'busy wake-up: the handler finished');

is(sql("SELECT status FROM taskq.wait($busy, '5s')"),
	'completed',
	'busy wake-up: a task committed while a handler ran is picked up after it');
my $busy_lag = sql(
	"SELECT extract(epoch FROM r.at - t.finished_at) FROM runs r, taskq.tasks t
     WHERE r.label = 'while-busy' AND t.id = $nap");
note 'busy wake-up: the task ran '
  . (length $busy_lag ? sprintf('%.3f s', $busy_lag) : 'not within 5 s')
  . ' after the busy handler finished';

# taskq.trace: the dispatch line's delay is from run_at to dispatch (the
# nap task was picked up at once), not to the end of its 1.5 s handler
$node->wait_for_log(qr/taskq: dispatch task=$nap handler=nap .* outcome=completed/);
my ($nap_delay) = slurp_file($node->logfile) =~
  /taskq: dispatch task=$nap handler=nap kind=function queue=default mode=async delay=(\d+)ms priority=0 attempt=1 outcome=completed/;
ok(defined $nap_delay, 'taskq.trace logged the dispatch of the nap task');
note 'trace delay of the nap task: ' . ($nap_delay // '?') . ' ms';
cmp_ok($nap_delay // 1e9, '<', 1000,
	'the traced dispatch delay does not include the handler\'s run time');

# ---------------------------------------------------------------------
# Still with poll_interval = 1h: an idle dispatcher sleeps until the next
# thing it knows of becomes due, not for the hour.  A task due in 1 s, a
# retry after its backoff, and a notify task's lease running out (nobody
# listens; ack_timeout 1 s, one attempt) must all be handled in seconds.
# ---------------------------------------------------------------------
$node->append_conf('postgresql.conf', "taskq.ack_timeout = '1s'\n");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT current_setting('taskq.ack_timeout') = '1s'"),
	'taskq.ack_timeout = 1s after a reload');
sql(q{CREATE FUNCTION public.fail(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'no'; END $$});
sql(q{SELECT taskq.register_handler('fail', 'public.fail(jsonb)')});
sql(q{SELECT taskq.register_handler('unheard', 'nobody_listens', kind => 'notify', max_attempts => 1)});
# One at a time, so that no other task's wake-up stands in for the one
# under test.
my $deadline = "clock_timestamp() < enqueued_at + interval '20 s'";
my $soon = enqueue('soon', "run_after => '1s'");
ok($node->poll_query_until('postgres',
		"SELECT status = 'completed' AND $deadline FROM taskq.tasks WHERE id = $soon"),
	'1 h poll: a task due in 1 s runs within seconds');
my $retried = sql(q{SELECT taskq.enqueue('fail', '{}', max_attempts => 2)});
ok($node->poll_query_until('postgres',
		"SELECT status = 'failed' AND attempts = 2 AND $deadline FROM taskq.tasks WHERE id = $retried"),
	'1 h poll: a failed attempt is retried after its backoff, within seconds');
my $unheard = sql(q{SELECT taskq.enqueue('unheard', '{}')});
ok($node->poll_query_until('postgres',
		"SELECT status = 'failed' AND $deadline FROM taskq.tasks WHERE id = $unheard"),
	'1 h poll: a notify lease that runs out is handled within seconds');

# ---------------------------------------------------------------------
# Retention.  With the default (1d) an ended task stays; with 0 a
# completed task is deleted in the transaction that records it (its
# handler's effect stays), and a failed one by the next maintenance pass.
# ---------------------------------------------------------------------
my $kept = enqueue('kept');
is(sql("SELECT status FROM taskq.wait($kept, '10s')"), 'completed',
	'retention 1d: a completed task stays in taskq.tasks');
my $done_before = sql(
	"SELECT coalesce(sum(completed_since_start), 0) FROM taskq.stats WHERE handler = 'record'");
# (an idle dispatcher's maintenance, retention included, runs every
# taskq.poll_interval: back from 1h to 1s)
$node->append_conf('postgresql.conf', "taskq.retention = 0\ntaskq.poll_interval = '1s'\n");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT current_setting('taskq.retention') = '0'"),
	'taskq.retention = 0 after a reload');
# the dispatcher reads the setting at its next wake-up: enqueue until one
# task is removed at completion rather than kept
my $gone;
for my $try (1 .. 20)
{
	my $id = enqueue("gone-$try");
	ok($node->poll_query_until('postgres',
			"SELECT EXISTS (SELECT 1 FROM runs WHERE label = 'gone-$try')"),
		"retention 0: task gone-$try ran") or last;
	if (sql("SELECT count(*) FROM taskq.tasks WHERE id = $id") eq '0')
	{
		$gone = $id;
		last;
	}
	wait_status($id, 'completed');
}
ok(defined $gone, 'retention 0: a completed task is deleted when it completes');
is(sql("SELECT count(*) FROM runs WHERE label LIKE 'gone-%'"),
	sql("SELECT count(DISTINCT label) FROM runs WHERE label LIKE 'gone-%'"),
	'retention 0: each of those tasks ran once');
cmp_ok(sql("SELECT sum(completed_since_start) FROM taskq.stats WHERE handler = 'record'"),
	'>', $done_before, 'retention 0: the deleted task is still counted in taskq.stats');
my $failed = sql(q{SELECT taskq.enqueue('fail', '{}', max_attempts => 1)});
ok($node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT 1 FROM taskq.tasks WHERE id = $failed)"),
	'retention 0: a failed task is removed by the next maintenance pass');
is(sql("SELECT count(*) FROM taskq.tasks WHERE id = $kept"), '0',
	'retention 0: so is the task completed before');

$node->stop;
done_testing();
