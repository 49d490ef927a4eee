# Poison tasks: (a) a handler that kills its own dispatcher (FATAL), and
# (b, c) one that takes the whole server down (SIGKILL of its backend, so
# the postmaster resets everything).  Each ends 'failed' after
# max_attempts crashes, every crash counted as an attempt (DESIGN §6): with
# max_attempts = 2 that is exactly 2 runs, 2 crashes, and for (b, c) 2
# crash restarts of the server, not a crash loop.  The innocent tasks of
# its batch complete in one attempt.  (c) repeats (b) with the WAL writer
# stopped (SIGSTOP) until the first crash, so that nothing flushes the
# asynchronously committed claim of the poison task before its handler
# takes the server down: the first crash then deterministically happens
# with a claim that the crash loses.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = taskq_node('poison', <<'EOC');
taskq.workers = 2
taskq.poll_interval = '200ms'
taskq.retry_backoff = '50ms'
restart_after_crash = on
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

# sql() that survives crash restarts: a statement that fails because the
# server is resetting is run again once the server answers (at most 20
# times); a statement that fails otherwise dies as sql() would.
sub sqlr
{
	my ($q) = @_;
	for my $try (1 .. 20)
	{
		my ($ret, $out, $err) = $node->psql('postgres', $q, on_error_stop => 1);
		return $out if $ret == 0;
		die "query failed: $q\n$err"
		  unless $err =~ /terminat|connection|recovery|shutting down|not yet accepting|could not connect|server closed/i;
		$node->poll_query_until('postgres', 'SELECT true');
	}
	die "query kept failing while the server reset: $q";
}

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    n   int PRIMARY KEY,
    pid int NOT NULL
);
CREATE FUNCTION public.book(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (n, pid) VALUES ((p->>'n')::int, pg_backend_pid());
END $$;
SELECT taskq.register_handler('book', 'public.book(jsonb)');

-- (a) terminates its own backend: SIGTERM to itself, FATAL at the next
-- interrupt check (inside pg_sleep)
-- a sequence counts its runs: nextval() is not rolled back with the handler
CREATE SEQUENCE poison_runs;
CREATE FUNCTION public.suicide(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('poison_runs');
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);
END $$;
SELECT taskq.register_handler('suicide', 'public.suicide(jsonb)');

-- (b) SIGKILLs its own backend: COPY TO PROGRAM runs "sh -c" as a child of
-- the backend (popen), so $PPID is the backend's pid.  The postmaster then
-- resets the whole server.  Needs superuser (the enqueuing role here).
CREATE FUNCTION public.server_killer(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    COPY (SELECT 1) TO PROGRAM 'kill -9 $PPID';
    PERFORM pg_sleep(5);
END $$;
SELECT taskq.register_handler('server_killer', 'public.server_killer(jsonb)');
EOS

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'two dispatchers run');

# Enqueue n_from..n_to innocent tasks around one poison task in one
# transaction, so that one claim takes them all (batch_size is 32); returns
# the poison task's id.
sub enqueue_batch
{
	my ($poison, $n_from, $n_to) = @_;
	my $mid = int(($n_from + $n_to) / 2);
	return sqlr(qq{
		BEGIN;
		SELECT count(*) FROM taskq.enqueue_many('book',
		    ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series($n_from, $mid) g));
		SELECT taskq.enqueue('$poison', '{}', max_attempts => 2) AS poison \\gset
		SELECT count(*) FROM taskq.enqueue_many('book',
		    ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series($mid + 1, $n_to) g));
		COMMIT;
		SELECT :poison;
	}) =~ s/.*\n//sr;
}

# ---------------------------------------------------------------------
# (a) a handler that terminates its own dispatcher (FATAL, exit code 1)
# ---------------------------------------------------------------------
my $log_a = -s $node->logfile;
my $t0 = time();
my $pa = enqueue_batch('suicide', 1, 20);
like($pa, qr/^\d+$/, "(a) poison task $pa enqueued with 20 innocent tasks");

ok( $node->poll_query_until(
		'postgres',
		"SELECT status NOT IN ('queued', 'running') FROM taskq.tasks WHERE id = $pa"),
	'(a) the poison task ends');
note sprintf('(a) the poison task ended after %.1f s', time() - $t0);
my $row_a = sql("SELECT status, attempts, crashes, last_error FROM taskq.tasks WHERE id = $pa");
note "(a) poison task: $row_a";
my ($st, $att, $cr, $err) = split /\|/, $row_a, 4;
is($st,  'failed', '(a) the poison task ends failed');
is($att, 2,        '(a) after max_attempts = 2 counted attempts');
is($cr,  2,        '(a) and 2 crashes, each counted as an attempt');
like($err, qr/exited abnormally .*\(crash 2, counted as attempt 2\)/,
	'(a) last_error names the abnormal exit and the attempt it counted as');
is(sql(q{SELECT last_value FROM poison_runs}),
	'2', '(a) the poison handler ran exactly 2 times');

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 20 FROM taskq.tasks WHERE handler = 'book' AND status = 'completed'}),
	'(a) the 20 innocent tasks complete');
is( sql(q{SELECT count(*) FROM taskq.tasks
          WHERE handler = 'book' AND (attempts <> 1 OR crashes <> 0)}),
	'0', '(a) every innocent task completed with attempts = 1 and no crash');
is(sql(q{SELECT count(*), count(DISTINCT n) FROM ledger}),
	'20|20', '(a) each innocent task ran exactly once');

my $log_after_a = slurp_file($node->logfile, $log_a);
unlike($log_after_a, qr/terminating any other active server processes/,
	'(a) the server was not reset');
my $later = sql(q{SELECT taskq.enqueue('book', '{"n": 1000}')});
is(sql("SELECT status FROM taskq.wait($later, '20s')"),
	'completed', '(a) a task enqueued afterwards completes: the server keeps running');

# Poll until $cond (SQL) is true or $seconds have passed on the server's
# clock; connections that fail while the server resets are retried.
# Returns whether $cond held.
sub poll_bounded
{
	my ($cond, $seconds) = @_;
	my $deadline;
	$node->poll_query_until('postgres', 'SELECT true') or return 0;    # server answers
	$deadline = sqlr("SELECT clock_timestamp() + interval '$seconds s'");
	$node->poll_query_until('postgres',
		"SELECT ($cond) OR clock_timestamp() > '$deadline'");
	return sqlr("SELECT ($cond)") eq 't';
}

# A handler that SIGKILLs its own backend: the server crash-restarts each
# time.  $label names the case; innocent tasks get n in $n_from..$n_from+19.
sub server_killer_case
{
	my ($label, $n_from, $stop_walwriter) = @_;
	my $n_to = $n_from + 19;
	my $log_b = -s $node->logfile;
	my $t0 = time();
	my $walwriter;
	if ($stop_walwriter)
	{
		$walwriter = sqlr(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'});
		ok(kill('STOP', $walwriter), "$label WAL writer $walwriter stopped");
	}
	my $pb = enqueue_batch('server_killer', $n_from, $n_to);
	like($pb, qr/^\d+$/, "$label server-killing task $pb enqueued with 20 innocent tasks");
	if ($stop_walwriter)
	{
		# let the old WAL writer go as soon as the first crash began, so
		# that the postmaster need not wait for it
		$node->wait_for_log(qr/taskq dispatcher" \(PID \d+\) was terminated by signal 9/, $log_b);
		kill('CONT', $walwriter);
	}

	# The contract is max_attempts = 2 crash restarts; wait at most 30 s.
	my $ended = poll_bounded(
		"SELECT status NOT IN ('queued', 'running') FROM taskq.tasks WHERE id = $pb", 30);
	my $row_b = sqlr("SELECT status, attempts, crashes, last_error FROM taskq.tasks WHERE id = $pb");
	note sprintf('%s after %.1f s the server-killing task is: %s', $label, time() - $t0, $row_b);
	my ($st, $att, $cr, $err) = split /\|/, $row_b, 4;
	my $log = slurp_file($node->logfile, $log_b);
	my $kills = () = $log =~ /taskq dispatcher" \(PID \d+\) was terminated by signal 9/g;
	my $markers = () = $log =~ /taskq: task $pb was running when (?!its dispatcher)/g;
	my $reaped = () = $log =~ /task $pb was running when its dispatcher exited abnormally/g;
	note "$label server log: $kills dispatchers terminated by signal 9, $markers crash "
	  . "markers read back after restarts, $reaped crashes of task $pb accounted by a dispatcher";
	ok($ended, "$label the server-killing task ends within 30 s (no endless crash loop)");
	is($st,  'failed', "$label it ends failed");
	is($att, 2,        "$label after max_attempts = 2 counted attempts");
	is($cr,  2,        "$label and 2 crashes, each counted as an attempt");
	like($err // '', qr/exited abnormally .*\(crash 2, counted as attempt 2\)/,
		"$label last_error names the abnormal exit and the attempt it counted as");
	is($kills, 2, "$label exactly max_attempts = 2 crash restarts");
	is($kills, $cr, "$label every crash restart it caused is counted in crashes");

	ok( poll_bounded(
			"SELECT count(*) = 20 FROM taskq.tasks WHERE handler = 'book'
             AND (payload->>'n')::int BETWEEN $n_from AND $n_to AND status = 'completed'", 20),
		"$label the 20 innocent tasks complete");
	is( sqlr(qq{SELECT count(*) FROM taskq.tasks WHERE handler = 'book'
               AND (payload->>'n')::int BETWEEN $n_from AND $n_to
               AND (attempts <> 1 OR crashes <> 0)}),
		'0', "$label no innocent task was charged an attempt or a crash");
	is(sqlr(qq{SELECT count(*) || '|' || count(DISTINCT n) FROM ledger WHERE n BETWEEN $n_from AND $n_to}),
		'20|20', "$label each innocent task ran exactly once");

	# stop a crash loop so that the rest of the test can run
	poll_bounded("SELECT taskq.cancel($pb) IS NOT NULL", 10) unless $ended;
	return;
}

# ---------------------------------------------------------------------
# (b) with default settings
# ---------------------------------------------------------------------
server_killer_case('(b)', 2001);
my $after = sqlr(q{SELECT taskq.enqueue('book', '{"n": 3000}')});
is(sqlr("SELECT status FROM taskq.wait($after, '20s')"),
	'completed', '(b) a task enqueued afterwards completes');

# ---------------------------------------------------------------------
# (c) the same with the WAL writer stopped until the first crash.  A claim
# commits without waiting for the WAL flush (taskq.synchronous_commit =
# off, the default); its commit record then sits in the WAL buffers when
# the handler takes the server down, and the crash loses it: the task is
# 'queued' again after the restart.  That crash must be counted all the
# same, from the crash marker.
# ---------------------------------------------------------------------
server_killer_case('(c)', 4001, 1);
$after = sqlr(q{SELECT taskq.enqueue('book', '{"n": 5000}')});
is(sqlr("SELECT status FROM taskq.wait($after, '20s')"),
	'completed', '(c) a task enqueued afterwards completes');

$node->stop('immediate');
done_testing();
