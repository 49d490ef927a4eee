# Life cycle: taskq never blocks DROP EXTENSION, DROP DATABASE, CREATE
# DATABASE ... TEMPLATE or a fast shutdown; misconfigured database names
# cost one log line each, not a restart loop; an idle dispatcher holds no
# transaction, snapshot or lock; a long handler does not stall the other
# dispatcher.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = taskq_node('lifecycle', <<'EOC');
taskq.databases = 'postgres'
taskq.workers = 2
taskq.poll_interval = '200ms'
max_worker_processes = 24
log_statement = none
EOC

sub sql
{
	my ($q, $db) = @_;
	return $node->safe_psql($db // 'postgres', $q);
}

my $setup = <<'EOS';
CREATE EXTENSION taskq;
CREATE TABLE IF NOT EXISTS ledger (
    n   int PRIMARY KEY,
    pid int NOT NULL,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION public.work(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (n, pid) VALUES ((p->>'n')::int, pg_backend_pid());
    PERFORM pg_sleep(coalesce((p->>'sleep')::float8, 0));
END $$;
SELECT taskq.register_handler('work', 'public.work(jsonb)');
EOS

# dispatchers of a database, and whether they are all idle
sub dispatchers_idle_q
{
	my ($db, $n) = @_;
	$n //= 2;
	return qq{SELECT count(*) = $n AND bool_and(w.state = 'idle' AND a.state = 'idle')
              FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
              WHERE w.type = 'dispatcher' AND w.database = '$db'};
}

sql($_) for ('CREATE DATABASE app3', 'CREATE DATABASE noext', 'CREATE DATABASE dropme',
	'CREATE DATABASE tmpl');
sql($setup, $_) for qw(postgres app3 dropme tmpl);

# Now that they exist, name the databases (and one that does not exist) in
# taskq.databases; log lines are counted from here.
my $log_start = -s $node->logfile;
$node->append_conf('postgresql.conf',
	"taskq.databases = 'postgres, app3, noext, nosuchdb, dropme, tmpl'\n");
$node->reload;
my $reload_at = sql('SELECT clock_timestamp()');

# ---------------------------------------------------------------------
# DROP EXTENSION while the dispatchers are busy, then CREATE it again.
# ---------------------------------------------------------------------
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher' AND database = 'postgres'}),
	'two dispatchers run in postgres');
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 6 FROM taskq.workers WHERE type = 'dispatcher'
          AND database IN ('app3', 'dropme', 'tmpl')}),
	'and two in each of app3, dropme and tmpl after the reload');
sql(q{SELECT count(*) FROM taskq.enqueue_many('work',
        ARRAY(SELECT jsonb_build_object('n', g, 'sleep', 0.05) FROM generate_series(1, 400) g))});
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) >= 10 FROM ledger}),
	'the dispatchers are busy with 0.05 s handlers');
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE database = 'postgres' AND state = 'running'}),
	'both dispatchers are running a handler');
my $log_drop = -s $node->logfile;
my $t0 = time();
my ($ret, $out, $err) = $node->psql('postgres', 'DROP EXTENSION taskq');
my $drop_s = time() - $t0;
note sprintf('DROP EXTENSION took %.2f s%s', $drop_s, $ret ? ": $err" : '');
is($ret, 0, 'DROP EXTENSION taskq succeeds while dispatchers are busy');
cmp_ok($drop_s, '<', 10, 'DROP EXTENSION returns within 10 s');
is(sql(q{SELECT count(*) FROM pg_extension WHERE extname = 'taskq'}), '0', 'the extension is gone');

$t0 = time();
sql(q{CREATE EXTENSION taskq; SELECT taskq.register_handler('work', 'public.work(jsonb)')});
my $again = sql(q{SELECT taskq.enqueue('work', '{"n": 100000}')});
is(sql("SELECT status FROM taskq.wait($again, '30s')"),
	'completed', 'after CREATE EXTENSION again, a new task runs without a server restart');
note sprintf('the new task completed %.2f s after CREATE EXTENSION', time() - $t0);
my $drop_log = slurp_file($node->logfile, $log_drop);
note "server log lines about taskq after DROP EXTENSION:\n"
  . join("\n", grep { /taskq|ERROR|FATAL/ } split /\n/, $drop_log);
unlike($drop_log, qr/PANIC|terminated by signal/, 'no crash around DROP/CREATE EXTENSION');

# ---------------------------------------------------------------------
# DROP DATABASE and CREATE DATABASE ... TEMPLATE with idle dispatchers.
# ---------------------------------------------------------------------
ok($node->poll_query_until('postgres', dispatchers_idle_q('dropme')),
	'dropme has two idle dispatchers');
$t0 = time();
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE dropme');
my $dropdb_s = time() - $t0;
note sprintf('DROP DATABASE took %.2f s%s', $dropdb_s, $ret ? ": $err" : '');
is($ret, 0, 'DROP DATABASE (without FORCE) of a database with dispatchers succeeds');
unlike($err, qr/being accessed by other users/, 'it is not refused as being accessed');
cmp_ok($dropdb_s, '<', 10, 'DROP DATABASE returns within 10 s');

ok($node->poll_query_until('postgres', dispatchers_idle_q('tmpl')),
	'tmpl has two idle dispatchers');
$t0 = time();
($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE copy1 TEMPLATE tmpl');
my $copy_s = time() - $t0;
note sprintf('CREATE DATABASE ... TEMPLATE took %.2f s%s', $copy_s, $ret ? ": $err" : '');
is($ret, 0, 'CREATE DATABASE copy1 TEMPLATE tmpl succeeds');
unlike($err, qr/being accessed by other users/, 'it is not refused as being accessed');
cmp_ok($copy_s, '<', 10, 'CREATE DATABASE ... TEMPLATE returns within 10 s');
my $tt = sql(q{SELECT taskq.enqueue('work', '{"n": 1}')}, 'tmpl');
is(sql("SELECT status FROM taskq.wait($tt, '30s')", 'tmpl'),
	'completed', 'the template database\'s dispatchers come back and run a task');

# ---------------------------------------------------------------------
# An idle dispatcher holds no transaction, snapshot or lock.
# ---------------------------------------------------------------------
my $id = sql(q{SELECT taskq.enqueue('work', '{"n": 1}')}, 'app3');
is(sql("SELECT status FROM taskq.wait($id, '30s')", 'app3'), 'completed', 'app3 dispatches');
ok($node->poll_query_until('app3', dispatchers_idle_q('app3')), 'app3 dispatchers are idle');
is(idle_dispatchers_holding($node, 'app3'), 0,
	'idle dispatchers: backend_xmin NULL, no xid, xact_start NULL, state idle (but in their short wake-ups)');
is( sql(q{SELECT count(*) FROM pg_locks l JOIN taskq.workers w USING (pid)
          WHERE w.database = 'app3'}, 'app3'),
	'0', 'idle dispatchers hold no lock');

# A handler that takes a session-level advisory lock and returns: the lock
# must not outlive its task in the dispatcher's session.
sql(q{CREATE FUNCTION public.grab(p jsonb) RETURNS void LANGUAGE sql
      AS $$ SELECT pg_advisory_lock(4242) $$;
      SELECT taskq.register_handler('grab', 'public.grab(jsonb)')}, 'app3');
$id = sql(q{SELECT taskq.enqueue('grab')}, 'app3');
is(sql("SELECT status FROM taskq.wait($id, '30s')", 'app3'), 'completed',
	'a handler that takes a session advisory lock completes');
ok($node->poll_query_until('app3', dispatchers_idle_q('app3')), 'app3 dispatchers are idle again');
is( sql(q{SELECT count(*) FROM pg_locks l JOIN taskq.workers w USING (pid)
          WHERE w.database = 'app3'}, 'app3'),
	'0', 'idle dispatchers hold no lock after a handler took a session advisory lock');
is(sql(q{SELECT pg_try_advisory_lock(4242)}, 'app3'), 't',
	'another session can take the advisory lock the finished handler took');

# ---------------------------------------------------------------------
# A 10 s handler on one dispatcher does not stall the other.
# ---------------------------------------------------------------------
my $long = sql(q{SELECT taskq.enqueue('work', '{"n": 10, "sleep": 10}')}, 'app3');
ok( $node->poll_query_until('app3',
		"SELECT count(*) = 1 FROM taskq.workers WHERE current_task = $long AND state = 'running'"),
	'one dispatcher runs the 10 s handler');
$t0 = time();
sql(q{SELECT count(*) FROM taskq.enqueue_many('work',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(100, 119) g))}, 'app3');
ok( $node->poll_query_until('app3',
		q{SELECT count(*) = 20 FROM ledger WHERE n BETWEEN 100 AND 119}),
	'20 other tasks complete meanwhile');
my $quick_s = time() - $t0;
is(sql("SELECT status FROM taskq.tasks WHERE id = $long", 'app3'),
	'running', 'the long handler was still running when they completed');
note sprintf('20 tasks completed in %.2f s next to the 10 s handler', $quick_s);
is( sql(qq{SELECT count(*) FROM ledger l
           WHERE l.n BETWEEN 100 AND 119
             AND l.pid = (SELECT pid FROM taskq.workers WHERE current_task = $long)}, 'app3'),
	'0', 'they ran on the other dispatcher');

# ---------------------------------------------------------------------
# Misconfigured names in taskq.databases: one LOG line each, no loop.
# ---------------------------------------------------------------------
# The launcher retries a database without the extension every 10 s; wait
# until 25 s have passed since the reload so that it has retried twice.
ok( $node->poll_query_until('postgres',
		qq{SELECT clock_timestamp() > '$reload_at'::timestamptz + interval '25 s'}),
	'25 s have passed since taskq.databases named them');
my $log = slurp_file($node->logfile, $log_start);
# every line that mentions them, except the reload's own "parameter changed"
my @lines = grep { !/parameter "taskq.databases" changed/ } split /\n/, $log;
my @nosuch = grep { /\bnosuchdb\b/ } @lines;
my @noext  = grep { /\bnoext\b/ } @lines;
note "log lines about nosuchdb:\n" . join("\n", @nosuch);
note "log lines about noext:\n" . join("\n", @noext);
is(scalar(@nosuch), 1, 'a database that does not exist: one LOG line');
like($nosuch[0] // '', qr/LOG:  taskq: database "nosuchdb" named in taskq.databases does not exist/,
	'which names the database and the problem');
is(scalar(@noext), 1, 'a database without the extension: one LOG line');
like($noext[0] // '', qr/LOG:  taskq: extension taskq is not installed in database "noext"/,
	'which names the database and the problem');
$id = sql(q{SELECT taskq.enqueue('work', '{"n": 2}')}, 'app3');
is(sql("SELECT status FROM taskq.wait($id, '30s')", 'app3'), 'completed',
	'meanwhile the database with the extension dispatches normally');
unlike($log, qr/terminated by signal|PANIC/, 'no worker crashed during the test');

# ---------------------------------------------------------------------
# Fast shutdown with handlers running.
# ---------------------------------------------------------------------
# one task per transaction, each once the previous one runs, so that each
# dispatcher claims one
for my $k (1 .. 2)
{
	sql(qq{SELECT taskq.enqueue('work', '{"n": 20$k, "sleep": 30}')}, 'app3');
	ok( $node->poll_query_until('app3',
			qq{SELECT count(*) = $k FROM taskq.workers WHERE database = 'app3' AND state = 'running'}),
		"$k app3 dispatcher(s) run a 30 s handler");
}
$t0 = time();
$node->stop('fast');
my $stop_s = time() - $t0;
note sprintf('pg_ctl stop -m fast took %.2f s', $stop_s);
cmp_ok($stop_s, '<', 10, 'a fast shutdown with handlers running finishes within 10 s');
my ($cd_out) = run_command([ 'pg_controldata', $node->data_dir ]);
like($cd_out, qr/^Database cluster state:\s+shut down$/m,
	'pg_controldata says the cluster was shut down cleanly');

# The two interrupted tasks go back to the queue, not charged (README: "A
# task interrupted by a server shutdown is returned to the queue without
# being charged"), and run again.
$node->start;
ok( $node->poll_query_until('app3',
		q{SELECT count(*) = 2 FROM taskq.tasks
          WHERE payload->>'n' IN ('201', '202') AND status = 'running'
            AND started_at > pg_postmaster_start_time()}),
	'after a restart the interrupted tasks run again');
is( sql(q{SELECT string_agg(attempts || '/' || crashes, ',') FROM taskq.tasks
          WHERE payload->>'n' IN ('201', '202')}, 'app3'),
	'0/0,0/0', 'the shutdown charged them no attempt and no crash');
$node->stop('immediate');

done_testing();
