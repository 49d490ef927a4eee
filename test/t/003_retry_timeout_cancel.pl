# Failed attempts: retries with backoff until max_attempts, timeouts, and
# cancelling a running task; handlers that ignore their timeout or cancel.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('retry', <<'EOC');
taskq.workers = 1
taskq.retry_backoff = '200ms'
taskq.interrupt_grace = '500ms'
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_status { return wait_task_status($node, @_); }

# Handlers count their attempts with sequences: a failed attempt's writes
# roll back, nextval() and setval() do not.
sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE side_effects (handler text NOT NULL, attempt bigint NOT NULL);
CREATE SEQUENCE always_seq;
CREATE SEQUENCE always_at_1;
CREATE SEQUENCE always_at_2;
CREATE SEQUENCE always_at_3;
CREATE SEQUENCE once_seq;
CREATE SEQUENCE sleepy_once_seq;
CREATE SEQUENCE late_cancel_seq;
CREATE SEQUENCE stubborn_seq;

-- always fails; records when each attempt ran (microseconds since epoch)
CREATE FUNCTION public.always_fails(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('always_seq');
BEGIN
    PERFORM setval('always_at_' || n, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    INSERT INTO side_effects VALUES ('always', n);
    RAISE EXCEPTION 'handler exploded on purpose';
END $$;

-- fails on its first attempt only, after writing
CREATE FUNCTION public.fails_once(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('once_seq');
BEGIN
    INSERT INTO side_effects VALUES ('once', n);
    IF n = 1 THEN
        RAISE EXCEPTION 'first attempt fails';
    END IF;
    RETURN jsonb_build_object('attempt', n);
END $$;

CREATE FUNCTION public.sleepy(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO side_effects VALUES ('sleepy', 0);
    PERFORM pg_sleep(10);
END $$;

-- sleeps past its timeout on the first attempt only
CREATE FUNCTION public.sleepy_once(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('sleepy_once_seq');
BEGIN
    IF n = 1 THEN
        PERFORM pg_sleep(10);
    END IF;
    RETURN jsonb_build_object('attempt', n);
END $$;

-- writes, then sleeps for 30 s or p.sleep seconds (to be cancelled)
CREATE FUNCTION public.long_job(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO side_effects VALUES ('long_job', 0);
    IF p ? 'started_seq' THEN
        PERFORM nextval(p->>'started_seq');
    END IF;
    PERFORM pg_sleep(coalesce((p->>'sleep')::float8, 30));
END $$;

-- waits until the test session releases advisory lock 42
CREATE FUNCTION public.gate(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(42);
END $$;

-- ignores its timeout and cancel(): traps query_canceled and sleeps on
CREATE FUNCTION public.stubborn(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('stubborn_seq');
    INSERT INTO side_effects VALUES ('stubborn', 0);
    LOOP
        BEGIN
            PERFORM pg_sleep(0.1);
        EXCEPTION WHEN query_canceled THEN NULL;
        END;
    END LOOP;
END $$;

-- traps its timeout's error once, then returns as if it had succeeded
CREATE FUNCTION public.trap_once(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO side_effects VALUES ('trap_once', 0);
    BEGIN
        PERFORM pg_sleep(10);
    EXCEPTION WHEN query_canceled THEN NULL;
    END;
    RETURN '{"returned": true}';
END $$;

CREATE TABLE runs (label text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION public.record(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO runs (label) VALUES (p->>'label');
$$;

SELECT taskq.register_handler('always', 'public.always_fails(jsonb)', max_attempts => 3);
SELECT taskq.register_handler('once', 'public.fails_once(jsonb)', max_attempts => 3);
SELECT taskq.register_handler('sleepy', 'public.sleepy(jsonb)');
SELECT taskq.register_handler('sleepy_once', 'public.sleepy_once(jsonb)');
SELECT taskq.register_handler('long_job', 'public.long_job(jsonb)');
SELECT taskq.register_handler('gate', 'public.gate(jsonb)');
SELECT taskq.register_handler('record', 'public.record(jsonb)');
SELECT taskq.register_handler('stubborn', 'public.stubborn(jsonb)');
SELECT taskq.register_handler('trap_once', 'public.trap_once(jsonb)');
EOS

# ---------------------------------------------------------------------
# A handler that always raises: 3 attempts, then 'failed'.
# ---------------------------------------------------------------------
my $id = sql(q{SELECT taskq.enqueue('always', '{}')});
ok(wait_status($id, 'failed'), 'an always-failing task ends failed');
is( sql("SELECT attempts, max_attempts, last_error, finished_at IS NOT NULL
         FROM taskq.tasks WHERE id = $id"),
	'3|3|handler exploded on purpose|t',
	'after 3 attempts, with the exception text as last_error');
is(sql(q{SELECT last_value FROM always_seq}), '3', 'the handler ran exactly 3 times');
is(sql(q{SELECT count(*) FROM side_effects WHERE handler = 'always'}),
	'0', 'the writes of failed attempts were rolled back');
is( sql(q{SELECT last_error FROM taskq.workers WHERE type = 'dispatcher'}),
	'handler exploded on purpose',
	'taskq.workers shows the dispatcher\'s last error');

# Backoff: retry k waits between half and all of retry_backoff * 2^(k-1).
my @at = map { sql("SELECT last_value FROM always_at_$_") / 1e6 } 1 .. 3;
my ($gap1, $gap2) = ($at[1] - $at[0], $at[2] - $at[1]);
note sprintf('retry gaps: %.3f s, %.3f s (retry_backoff = 200ms)', $gap1, $gap2);
cmp_ok($gap1, '>=', 0.100, 'first retry waited at least retry_backoff/2');
cmp_ok($gap2, '>=', 0.200, 'second retry waited at least 2*retry_backoff/2');
cmp_ok($gap1, '<', 1.5, 'first retry came soon after its backoff');
cmp_ok($gap2, '<', 1.5, 'second retry came soon after its backoff');

# taskq.retry() re-queues it with a fresh budget; fix the handler first.
sql(q{CREATE OR REPLACE FUNCTION public.always_fails(p jsonb) RETURNS jsonb
      LANGUAGE sql AS $$ SELECT '{"fixed": true}'::jsonb $$});
is(sql("SELECT taskq.retry($id)"), 't', 'taskq.retry() of a failed task');
ok(wait_status($id, 'completed'), 'the retried task completes');
is( sql("SELECT attempts, result FROM taskq.tasks WHERE id = $id"),
	'1|{"fixed": true}', 'with a fresh attempt count and the new result');
is(sql("SELECT taskq.retry($id)"), 'f', 'taskq.retry() of a completed task is refused');

# ---------------------------------------------------------------------
# A handler that fails once completes on attempt 2.
# ---------------------------------------------------------------------
$id = sql(q{SELECT taskq.enqueue('once', '{}')});
ok(wait_status($id, 'completed'), 'a fail-once task completes');
is( sql("SELECT attempts, result, last_error FROM taskq.tasks WHERE id = $id"),
	'2|{"attempt": 2}|first attempt fails',
	'on attempt 2, with the result of attempt 2');
is( sql(q{SELECT string_agg(attempt::text, ',') FROM side_effects WHERE handler = 'once'}),
	'2', 'only the successful attempt\'s write is kept');

# ---------------------------------------------------------------------
# Timeouts.
# ---------------------------------------------------------------------
$id = sql(
	q{SELECT taskq.enqueue('sleepy', '{}', timeout => '300ms', max_attempts => 1)});
ok(wait_status($id, 'timeout'), 'a handler past its timeout ends timeout');
is( sql("SELECT attempts, last_error,
                finished_at - started_at < interval '3s'
         FROM taskq.tasks WHERE id = $id"),
	'1|timed out after 300 ms|t',
	'after one attempt, interrupted long before pg_sleep(10) ended');
is(sql(q{SELECT count(*) FROM side_effects WHERE handler = 'sleepy'}),
	'0', 'the timed-out attempt\'s write was rolled back');

$id = sql(
	q{SELECT taskq.enqueue('sleepy', '{}', timeout => '300ms', max_attempts => 2)});
ok(wait_status($id, 'timeout'), 'two timed-out attempts end timeout');
is(sql("SELECT attempts, last_error FROM taskq.tasks WHERE id = $id"),
	'2|timed out after 300 ms', 'the first timeout was retried');

$id = sql(
	q{SELECT taskq.enqueue('sleepy_once', '{}', timeout => '300ms', max_attempts => 2)});
ok(wait_status($id, 'completed'), 'a task that times out once completes on retry');
is( sql("SELECT attempts, result, last_error FROM taskq.tasks WHERE id = $id"),
	'2|{"attempt": 2}|timed out after 300 ms',
	'on attempt 2, after a timed-out attempt 1');

# ---------------------------------------------------------------------
# Cancel a running task: its handler is interrupted, its writes roll
# back, and the dispatcher goes on to the next task.
# ---------------------------------------------------------------------
sql('TRUNCATE side_effects');
my $long = sql(q{SELECT taskq.enqueue('long_job', '{}')});
my $next = sql(q{SELECT taskq.enqueue('record', '{"label": "after-cancel"}')});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers
         WHERE current_task = $long AND state = 'running'"),
	'taskq.workers shows the long task running');
is(sql("SELECT status FROM taskq.tasks WHERE id = $long"),
	'running', 'the long task is running');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity
          WHERE backend_type = 'taskq dispatcher' AND wait_event = 'PgSleep'}),
	'its handler is in pg_sleep');

my $t_cancel = sql('SELECT clock_timestamp()');
is(sql("SELECT taskq.cancel($long)"), 't', 'taskq.cancel() of a running task');
ok(wait_status($next, 'completed'), 'the dispatcher runs the next task');
my $after = sql(
	"SELECT extract(epoch FROM at - '$t_cancel') FROM runs WHERE label = 'after-cancel'");
note sprintf('next task ran %.3f s after the cancel', $after);
cmp_ok($after, '<', 3, 'the next task ran within 3 s of the cancel (the handler sleeps 30 s)');
is( sql("SELECT status, finished_at IS NOT NULL FROM taskq.tasks WHERE id = $long"),
	'cancelled|t', 'the cancelled task stays cancelled');
is(sql(q{SELECT count(*) FROM side_effects WHERE handler = 'long_job'}),
	'0', 'the cancelled handler\'s write was rolled back');
is( sql(q{SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'
          AND backend_type = 'taskq dispatcher'}),
	'0', 'no dispatcher is still sleeping in the handler');
is(sql("SELECT taskq.cancel($long)"), 'f', 'cancelling it again returns false');

# A queued task that is cancelled never runs.
my $queued =
  sql(q{SELECT taskq.enqueue('long_job', '{}', run_after => '1 hour')});
is(sql("SELECT taskq.cancel($queued)"), 't', 'taskq.cancel() of a queued task');
is( sql("SELECT status, attempts FROM taskq.tasks WHERE id = $queued"),
	'cancelled|0', 'the cancelled queued task ends cancelled without an attempt');

# ---------------------------------------------------------------------
# Cancel a task that was claimed in a batch but whose handler has not
# started yet (its status is already 'running'): its handler must not
# hold up the dispatcher for its whole duration.  (It sleeps 8 s, not 30,
# so that a failure here costs 8 s.)
# ---------------------------------------------------------------------
sql('TRUNCATE side_effects, runs');
my $bg = $node->background_psql('postgres');
$bg->query_safe('SELECT pg_advisory_lock(42)');
my ($gate, $victim, $marker) = split /\n/, sql(<<'EOS');
BEGIN;
SELECT taskq.enqueue('gate', '{}', priority => 10);
SELECT taskq.enqueue('long_job', '{"started_seq": "late_cancel_seq", "sleep": 8}', priority => 5);
SELECT taskq.enqueue('record', '{"label": "after-late-cancel"}', priority => 0);
COMMIT;
EOS
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers WHERE current_task = $gate"),
	'the gate task runs and holds up its batch');
is( sql("SELECT string_agg(status::text, ',' ORDER BY id) FROM taskq.tasks
         WHERE id IN ($gate, $victim, $marker)"),
	'running,running,running', 'the whole batch is claimed');
is(sql("SELECT taskq.cancel($victim)"), 't', 'cancel the claimed, not yet started task');
$t_cancel = sql('SELECT clock_timestamp()');
$bg->query_safe('SELECT pg_advisory_unlock(42)');
$bg->quit;
ok(wait_status($gate,   'completed'), 'the gate task completes');
ok(wait_status($marker, 'completed'), 'the task after the cancelled one completes');
$after = sql(
	"SELECT extract(epoch FROM at - '$t_cancel') FROM runs WHERE label = 'after-late-cancel'");
note sprintf('task after the claimed-then-cancelled one ran %.3f s after the cancel', $after);
cmp_ok($after, '<', 3,
	'the cancelled task did not hold up the dispatcher (its handler sleeps 8 s)');
is(sql("SELECT status FROM taskq.tasks WHERE id = $victim"),
	'cancelled', 'the claimed task stays cancelled');
is(sql(q{SELECT count(*) FROM side_effects WHERE handler = 'long_job'}),
	'0', 'the cancelled task left no write');
is(sql(q{SELECT is_called FROM late_cancel_seq}),
	'f', 'the handler of the task cancelled before it started never ran');

# ---------------------------------------------------------------------
# Handlers that ignore their interrupt.  A handler that traps the error
# its timeout raises and runs on would hold its dispatcher (the only one
# here) forever: after taskq.interrupt_grace (500 ms here) the launcher
# terminates the dispatcher and starts it again at once.  The attempt is
# a timeout, not a crash, and the task's batch-mates are not charged.
# ---------------------------------------------------------------------
sql('TRUNCATE side_effects, runs');

# The launcher logged that it terminated dispatcher $pid (its handler of
# task $task overran its $cause by the grace), and another one runs.
sub terminated_and_replaced
{
	my ($task, $cause, $pid, $offset, $what) = @_;
	like(
		slurp_file($node->logfile, $offset),
		qr/taskq: the handler of task $task in database "postgres" did not stop within taskq.interrupt_grace \(500 ms\) after its $cause; terminating its dispatcher \(PID $pid\)/,
		$what);
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 1 FROM taskq.workers WHERE type = 'dispatcher' AND pid <> $pid"),
		'a new dispatcher runs');
}

sub dispatcher_pid
{
	return sql(q{SELECT pid FROM taskq.workers WHERE type = 'dispatcher'});
}

# Enqueue $handler's task with $opts and a 'record' task labelled $label
# in one transaction (one batch); returns both ids.
sub enqueue_with_mate
{
	my ($handler, $opts, $label) = @_;
	return split /\n/, sql(qq{
		BEGIN;
		SELECT taskq.enqueue('$handler', '{}', priority => 10 $opts);
		SELECT taskq.enqueue('record', '{"label": "$label"}');
		COMMIT;});
}

my $log_offset = -s $node->logfile;
my $pid_before = dispatcher_pid();
my ($stub, $mate) = enqueue_with_mate('stubborn', q{, timeout => '300ms', max_attempts => 1},
	'after-stubborn');
ok(wait_status($stub, 'timeout'), 'a handler that ignores its timeout ends timeout');
ok(wait_status($mate, 'completed'), 'the task claimed with it completes: the queue goes on');
is( sql("SELECT attempts, crashes, last_error FROM taskq.tasks WHERE id = $stub"),
	'1|0|timed out after 300 ms; the handler did not stop within taskq.interrupt_grace, '
	  . 'so its dispatcher was terminated',
	'one timed-out attempt, not counted as a crash');
is(sql("SELECT attempts, crashes FROM taskq.tasks WHERE id = $mate"),
	'1|0', 'its batch-mate completed in one attempt, without a crash');
is(sql(q{SELECT count(*) FROM side_effects WHERE handler = 'stubborn'}),
	'0', 'the stubborn handler\'s write was rolled back');
terminated_and_replaced($stub, 'timeout', $pid_before, $log_offset,
	'the launcher logs why it terminated the dispatcher');
my $restart = sql(
	"SELECT coalesce(extract(epoch FROM min(at) - (SELECT started_at FROM taskq.tasks WHERE id = $stub)), 999)
     FROM runs WHERE label = 'after-stubborn'");
note sprintf('the batch-mate ran %.3f s after the stubborn handler started', $restart);
cmp_ok($restart, '<', 3,
	'within 3 s of the stubborn handler\'s start (300 ms timeout + 500 ms grace)');

# With attempts left, the terminated attempt is retried, then ends timeout.
my ($stub2) = enqueue_with_mate('stubborn', q{, timeout => '300ms', max_attempts => 2},
	'after-stubborn-2');
ok(wait_status($stub2, 'timeout'), 'a stubborn task with two attempts ends timeout');
is(sql("SELECT attempts, crashes FROM taskq.tasks WHERE id = $stub2"),
	'2|0', 'after two timed-out attempts and no crash');
is(sql(q{SELECT last_value FROM stubborn_seq}), '3', 'its handler ran twice (3 runs so far)');

# A handler that traps its timeout's error and returns: still a timeout.
$pid_before = dispatcher_pid();
my $trap = sql(q{SELECT taskq.enqueue('trap_once', '{}', timeout => '300ms', max_attempts => 1)});
ok(wait_status($trap, 'timeout'), 'a handler that returns after trapping its timeout ends timeout');
is( sql("SELECT attempts, crashes, result IS NULL, last_error FROM taskq.tasks WHERE id = $trap"),
	'1|0|t|timed out after 300 ms', 'its result is not kept');
is(sql(q{SELECT count(*) FROM side_effects WHERE handler = 'trap_once'}),
	'0', 'and its write was rolled back');
is(dispatcher_pid(), $pid_before, 'its dispatcher was not terminated (it returned in time)');

# A handler that ignores cancel(): terminated after the grace, 'cancelled'.
$log_offset = -s $node->logfile;
$pid_before = dispatcher_pid();
my ($stub3, $mate3) = enqueue_with_mate('stubborn', '', 'after-cancelled-stubborn');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
         WHERE w.current_task = $stub3 AND a.wait_event = 'PgSleep'"),
	'the stubborn handler runs (with the default 5 min timeout)');
is(sql("SELECT taskq.cancel($stub3)"), 't', 'taskq.cancel() of the stubborn task');
ok(wait_status($mate3, 'completed'), 'the task claimed with it completes');
is(sql("SELECT status, attempts, crashes FROM taskq.tasks WHERE id = $stub3"),
	'cancelled|0|0', 'the cancelled task stays cancelled, with no attempt and no crash');
terminated_and_replaced($stub3, 'cancel', $pid_before, $log_offset,
	'the launcher terminated its dispatcher after the grace');
my $later = sql(q{SELECT taskq.enqueue('record', '{"label": "later"}')});
ok(wait_status($later, 'completed'), 'a task enqueued afterwards completes');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE crashes > 0}),
	'0', 'no task was charged a crash');

# ---------------------------------------------------------------------
# A cancel follows its subtransaction.  Rolled back to a savepoint, it
# must not interrupt the handler (the task completes on its first attempt)
# nor make a dispatcher skip a claimed task; in a released savepoint it
# interrupts at the top-level commit.  The gate handler waits for advisory
# lock 42, which the background session holds.
# ---------------------------------------------------------------------
sql('TRUNCATE side_effects, runs');
my $waits_for_gate = sub {
	my ($task) = @_;
	return $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
         WHERE w.current_task = $task AND a.wait_event = 'advisory'");
};
$bg = $node->background_psql('postgres');
$bg->query_safe('SELECT pg_advisory_lock(42)');

# a running handler, cancelled in a savepoint that is rolled back
my $spared = sql(q{SELECT taskq.enqueue('gate', '{}')});
ok($waits_for_gate->($spared), 'savepoint: the gate task runs and waits for the lock');
is( sql("BEGIN; SAVEPOINT s; SELECT taskq.cancel($spared); ROLLBACK TO s; COMMIT;"),
	't', 'savepoint: cancel() of the running task, then ROLLBACK TO the savepoint');
is(sql("SELECT status FROM taskq.tasks WHERE id = $spared"),
	'running', 'savepoint: the task is still running after the commit');

$bg->query_safe('SELECT pg_advisory_unlock(42)');
ok(wait_status($spared, 'completed'), 'savepoint: the spared handler completes');
is( sql("SELECT attempts, last_error IS NULL FROM taskq.tasks WHERE id = $spared"),
	'1|t', 'savepoint: the spared task completed on its first attempt, uninterrupted');

# a claimed task whose handler has not started, cancelled in a savepoint
# released into one that is rolled back
$bg->query_safe('SELECT pg_advisory_lock(42)');
my ($held, $claimed) = split /\n/, sql(<<'EOS');
BEGIN;
SELECT taskq.enqueue('gate', '{}', priority => 10);
SELECT taskq.enqueue('record', '{"label": "claimed-spared"}', priority => 5);
COMMIT;
EOS
ok($waits_for_gate->($held), 'nested savepoints: the gate task holds up its batch');
is( sql("SELECT status FROM taskq.tasks WHERE id = $claimed"),
	'running', 'nested savepoints: the task behind it is claimed');
is( sql(
		"BEGIN; SAVEPOINT a; SAVEPOINT b; SELECT taskq.cancel($claimed);
         RELEASE b; ROLLBACK TO a; COMMIT;"),
	't', 'nested savepoints: cancel() released into a savepoint that is rolled back');
$bg->query_safe('SELECT pg_advisory_unlock(42)');
ok(wait_status($claimed, 'completed'),
	'nested savepoints: the claimed task is not skipped; it completes');
is( sql("SELECT attempts, last_error IS NULL FROM taskq.tasks WHERE id = $claimed"),
	'1|t', 'nested savepoints: on its first attempt');
is(sql(q{SELECT count(*) FROM runs WHERE label = 'claimed-spared'}),
	'1', 'nested savepoints: its handler ran');
ok(wait_status($held, 'completed'), 'nested savepoints: the gate task completes');

# a cancel in a released savepoint interrupts the handler at commit
$bg->query_safe('SELECT pg_advisory_lock(42)');
my $released = sql(q{SELECT taskq.enqueue('gate', '{}')});
ok($waits_for_gate->($released), 'released savepoint: the gate task waits for the lock');
is( sql("BEGIN; SAVEPOINT s; SELECT taskq.cancel($released); RELEASE s; COMMIT;"),
	't', 'released savepoint: cancel() of the running task');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity
          WHERE backend_type = 'taskq dispatcher' AND wait_event = 'advisory'}),
	'released savepoint: the handler was interrupted while the lock is still held');
is(sql("SELECT status, attempts FROM taskq.tasks WHERE id = $released"),
	'cancelled|0', 'released savepoint: the task ends cancelled');

# unregister_handler() ends its handler's running tasks too: cancelled,
# and the handler interrupted at commit
sql(q{SELECT taskq.register_handler('gate_2', 'public.gate(jsonb)')});
my $orphan = sql(q{SELECT taskq.enqueue('gate_2', '{}')});
ok($waits_for_gate->($orphan), 'unregister: a task of the handler waits for the lock');
is(sql(q{SELECT taskq.unregister_handler('gate_2')}), 't', 'unregister the handler');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity
          WHERE backend_type = 'taskq dispatcher' AND wait_event = 'advisory'}),
	'unregister: the running handler was interrupted while the lock is still held');
is( sql("SELECT status, last_error FROM taskq.tasks WHERE id = $orphan"),
	'cancelled|handler "gate_2" was unregistered',
	'unregister: the running task ends cancelled, saying why');
$bg->query_safe('SELECT pg_advisory_unlock(42)');
$bg->quit;

$node->stop;
done_testing();
