# What a dispatcher's end charges to the task its handler was running.
#
# (a) Planned stops charge nothing: an operator's pg_terminate_backend() of
#     a dispatcher, a reload that removes its database from
#     taskq.databases, and a new launcher ending the old launcher's
#     dispatchers.  The handler's subtransaction rolls back, the task goes
#     back to 'queued' and completes as if never interrupted: attempts = 1,
#     crashes = 0, its effect once.
# (b) A reset charges every task that was running, not only the one whose
#     process died: a handler that crashes the server from another process
#     (here it SIGKILLs the checkpointer) ends 'failed' after max_attempts
#     resets instead of crash-looping, and a task that merely ran in the
#     other dispatcher at a reset is charged one attempt per reset.
# (c) Suspects that can never be charged (their task ended otherwise) are
#     forgotten: after 100 of them, a crash is still charged.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('stops', <<'EOC');
taskq.databases = 'postgres,other'
taskq.workers = 2
taskq.batch_size = 1
taskq.poll_interval = '200ms'
taskq.retry_backoff = '50ms'
taskq.interrupt_grace = '100ms'
restart_after_crash = on
log_statement = none
EOC

sub sql { return $node->safe_psql($_[1] // 'postgres', $_[0]); }

# sql() that survives crash restarts (see 103_poison.pl)
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

# Poll until $cond holds or $seconds passed on the server's clock.
sub poll_bounded
{
	my ($cond, $seconds, $db) = @_;
	$db //= 'postgres';
	$node->poll_query_until($db, 'SELECT true') or return 0;
	my $deadline = sqlr("SELECT clock_timestamp() + interval '$seconds s'");
	$node->poll_query_until($db, "SELECT ($cond) OR clock_timestamp() > '$deadline'");
	return $node->safe_psql($db, "SELECT ($cond)") eq 't';
}

my $setup = <<'EOS';
CREATE EXTENSION taskq;
CREATE TABLE ledger (id bigint PRIMARY KEY);
-- sleeps, then books its task once (the primary key says once)
CREATE FUNCTION public.slow(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep((p->>'s')::float8);
    INSERT INTO ledger VALUES ((p->>'id')::bigint);
END $$;
SELECT taskq.register_handler('slow', 'public.slow(jsonb)');
EOS
sql($setup);
sql('CREATE DATABASE other');
sql($setup, 'other');

# Enqueue a slow task in $db that books the key $slow_key; wait until its
# handler runs; returns (task id, the pid of the dispatcher running it, key).
my $slow_key = 0;
sub start_slow
{
	my ($db, $seconds) = @_;
	my $key = ++$slow_key;
	my $id = sql(qq{SELECT taskq.enqueue('slow', '{"s": $seconds, "id": $key}', max_attempts => 5)}, $db);
	ok($node->poll_query_until($db, "SELECT count(*) = 1 FROM taskq.workers WHERE current_task = $id"),
		"task $id in $db is running");
	my $pid = sql("SELECT pid FROM taskq.workers WHERE current_task = $id", $db);
	return ($id, $pid, $key);
}

# The task ended as if never interrupted.
sub completed_uncharged
{
	my ($id, $key, $db, $label) = @_;
	ok(wait_task_status($node, $id, 'completed', $db), "$label: task $id completes");
	is(sql("SELECT attempts, crashes FROM taskq.tasks WHERE id = $id", $db),
		'1|0', "$label: in attempt 1, with no crash charged");
	is(sql("SELECT count(*) FROM ledger WHERE id = $key", $db), '1', "$label: its effect happened once");
}

ok($node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher' AND database = 'other'}),
	'two dispatchers run in database other');

# ---------------------------------------------------------------------
# (a) planned stops
# ---------------------------------------------------------------------
my ($id, $pid, $key) = start_slow('postgres', 2);
ok(sql("SELECT pg_terminate_backend($pid)") eq 't', "(a1) an operator terminates dispatcher $pid");
completed_uncharged($id, $key, 'postgres', '(a1) pg_terminate_backend');

($id, $pid, $key) = start_slow('other', 2);
sql(q{ALTER SYSTEM SET taskq.databases = 'postgres'});
sql('SELECT pg_reload_conf()');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
	"(a2) the reload stopped dispatcher $pid of the removed database");
sql(q{ALTER SYSTEM RESET taskq.databases});
sql('SELECT pg_reload_conf()');
completed_uncharged($id, $key, 'other', '(a2) database removed from taskq.databases and put back');

($id, $pid, $key) = start_slow('postgres', 2);
my $launcher = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'taskq launcher'});
sql("SELECT pg_terminate_backend($launcher)");
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
	"(a3) the next launcher ended the old launcher's dispatcher $pid");
completed_uncharged($id, $key, 'postgres', '(a3) end_old_dispatchers');

# ---------------------------------------------------------------------
# (b) a handler that crashes the server from another process
# ---------------------------------------------------------------------
sql(q{ALTER SYSTEM SET taskq.databases = 'postgres'});
sql('SELECT pg_reload_conf()');
sql(<<'EOS');
CREATE FUNCTION public.kill_checkpointer(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    victim int := (SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer');
BEGIN
    PERFORM pg_sleep(0.5);
    -- the program reads what COPY writes before it kills: a kill that
    -- exits first fails the COPY (broken pipe), and the handler's error,
    -- not a crash, ends its attempt while the server resets around it
    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'cat >/dev/null; kill -9 ' || victim);
    PERFORM pg_sleep(10);
END $$;
SELECT taskq.register_handler('kill_checkpointer', 'public.kill_checkpointer(jsonb)');
EOS
my $log_b = -s $node->logfile;
my ($bystander, undef, $bkey) = start_slow('postgres', 3);
my $killer = sql(q{SELECT taskq.enqueue('kill_checkpointer', '{}', max_attempts => 2)});
my $ended = poll_bounded("SELECT status NOT IN ('queued', 'running') FROM taskq.tasks WHERE id = $killer", 40);
ok($ended, '(b) the task that crashes the server from another process ends within 40 s');
is(sqlr("SELECT status, attempts, crashes FROM taskq.tasks WHERE id = $killer"),
	'failed|2|2', '(b) failed after max_attempts = 2 resets, each charged as a crash');
my $log = slurp_file($node->logfile, $log_b);
my $resets = () = $log =~ /checkpointer process \(PID \d+\) was terminated by signal 9/g;
is($resets, 2, '(b) the server reset exactly twice');
ok(poll_bounded("SELECT status = 'completed' FROM taskq.tasks WHERE id = $bystander", 30),
	'(b) the task running beside it completes');
my ($att, $cr) = split /\|/, sqlr("SELECT attempts, crashes FROM taskq.tasks WHERE id = $bystander");
note "(b) the bystander task took $att attempts, $cr crashes";
ok($cr >= 1, '(b) the task running beside it at a reset was charged that crash');
is($att, $cr + 1, '(b) each of its crashes counted as one attempt, nothing else');
is(sqlr("SELECT count(*) FROM ledger WHERE id = $bkey"), '1', '(b) its effect happened once');

# ---------------------------------------------------------------------
# (c) 100 suspects that are never charged, then a crash
# ---------------------------------------------------------------------
# A handler that ignores its timeout: the launcher terminates its
# dispatcher and records a timeout suspect.  Its task is ended by someone
# else first (a direct update, which interrupts nobody), so that suspect
# can never be charged.
sql(<<'EOS');
CREATE FUNCTION public.stubborn(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        BEGIN
            PERFORM pg_sleep(1);
        EXCEPTION WHEN query_canceled THEN NULL;
        END;
    END LOOP;
END $$;
SELECT taskq.register_handler('stubborn', 'public.stubborn(jsonb)', timeout => '300ms');
CREATE PROCEDURE end_stubborn(n int) LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '150 s';
BEGIN
    WHILE (SELECT count(*) FROM taskq.tasks WHERE handler = 'stubborn' AND status = 'cancelled') < n
          AND clock_timestamp() < deadline LOOP
        UPDATE taskq.tasks SET status = 'cancelled', finished_at = clock_timestamp()
         WHERE handler = 'stubborn' AND status = 'running';
        COMMIT;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
CREATE SEQUENCE suicide_runs;
CREATE FUNCTION public.suicide(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('suicide_runs');
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);
END $$;
SELECT taskq.register_handler('suicide', 'public.suicide(jsonb)');
EOS
my $log_c = -s $node->logfile;
sql(q{SELECT count(*) FROM taskq.enqueue_many('stubborn', ARRAY(SELECT '{}'::jsonb FROM generate_series(1, 100)))});
sql('CALL end_stubborn(100)');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE handler = 'stubborn' AND status = 'cancelled'}),
	'100', '(c) 100 stubborn tasks were ended by another session while they ran');
ok( $node->poll_query_until('postgres', qq{SELECT count(*) = 0 FROM taskq.workers
        WHERE current_task IN (SELECT id FROM taskq.tasks WHERE handler = 'stubborn')}),
	'(c) and their dispatchers were all terminated');
$log = slurp_file($node->logfile, $log_c);
my $terminated = () = $log =~ /did not stop within taskq.interrupt_grace .* after its timeout; terminating/g;
note "(c) the launcher terminated $terminated dispatchers of stubborn tasks";
ok($terminated >= 100, '(c) each left a timeout suspect that cannot be charged');

my $suicide = sql(q{SELECT taskq.enqueue('suicide', '{}', max_attempts => 2)});
ok(poll_bounded("SELECT status NOT IN ('queued', 'running') FROM taskq.tasks WHERE id = $suicide", 30),
	'(c) a task that kills its dispatcher afterwards ends within 30 s');
is(sql("SELECT status, attempts, crashes FROM taskq.tasks WHERE id = $suicide"),
	'failed|2|2', '(c) its crashes are still charged: failed after 2 attempts, 2 crashes');
is(sql('SELECT last_value FROM suicide_runs'), '2', '(c) it ran exactly twice');

$node->stop;
done_testing();
