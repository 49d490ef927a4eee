# Too few background worker slots: with max_worker_processes = 3 the
# launcher and two dispatchers (or one and a parallel worker) fill them.
# The server log then says how to size max_worker_processes, enqueue() in
# a listed database that got no dispatcher warns, and once slots free up
# the dispatchers start promptly (not after a minute) and run the tasks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = taskq_node('slots', <<'EOC');
# the launcher + 2 dispatchers; no logical replication launcher
max_worker_processes = 3
max_logical_replication_workers = 0
taskq.workers = 1
taskq.poll_interval = '200ms'
EOC

sub sql { return $node->safe_psql($_[1] // 'postgres', $_[0]); }

sub set_conf
{
	my ($line) = @_;
	$node->append_conf('postgresql.conf', "$line\n");
	$node->reload;
}

sub dispatchers_q
{
	my ($db, $n) = @_;
	return "SELECT count(*) = $n FROM pg_stat_activity
            WHERE backend_type = 'taskq dispatcher' AND datname = '$db'";
}

my $setup = <<'EOS';
CREATE EXTENSION taskq;
CREATE FUNCTION public.ok(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"ok": true}'::jsonb $$;
SELECT taskq.register_handler('ok', 'public.ok(jsonb)');
EOS
sql($setup);
sql('CREATE DATABASE other');
sql($setup, 'other');
ok($node->poll_query_until('postgres', dispatchers_q('postgres', 1)),
	'one dispatcher runs in postgres');

# ---------------------------------------------------------------------
# A parallel query holds the free slot when a second dispatcher is
# wanted; the dispatcher starts soon after the query ends.  (taskq is not
# told when another process frees a slot: this is the retry's backoff.)
# ---------------------------------------------------------------------
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('SET force_parallel_mode = on');
$bg->query_safe('SET max_parallel_workers_per_gather = 1');
$bg->query_until(qr/sleeping/, "\\echo sleeping\nSELECT pg_sleep(600);\n");
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'parallel worker'}),
	'a parallel worker holds the last free slot');
my $offset = -s $node->logfile;
set_conf('taskq.workers = 2');
$node->wait_for_log(
	qr/taskq: 1 of 2 dispatchers could not start: no background worker slot is free/, $offset);
pass('the second dispatcher could not start');
my $t0 = time();
sql(q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity
      WHERE query = 'SELECT pg_sleep(600);' AND backend_type = 'client backend'});
ok($node->poll_query_until('postgres', dispatchers_q('postgres', 2)),
	'the second dispatcher starts once the parallel query has ended');
my $took = time() - $t0;
note sprintf('it started %.2f s after the cancel', $took);
cmp_ok($took, '<', 10, 'promptly (within the retry backoff of at most 5 s)');
$bg->quit;

# ---------------------------------------------------------------------
# Two dispatchers for postgres fill the slots; "other" gets none.
# ---------------------------------------------------------------------
$offset = -s $node->logfile;
set_conf(q{taskq.databases = 'postgres, other'});
$node->wait_for_log(
	qr/taskq: 2 of 4 dispatchers could not start: no background worker slot is free \(max_worker_processes = 3\)/,
	$offset);
pass('the dispatchers that could not start are logged');
ok($node->log_contains(
		qr/HINT:  Set max_worker_processes to at least 5 \(taskq: 1 launcher \+ every executor's workers per database\) \+ max_parallel_workers \(8\)/,
		$offset),
	'the log line says how to size max_worker_processes');
ok($node->log_contains(qr/taskq needs 5 of max_worker_processes = 3 background worker slots/, $offset),
	'the sizing line says what taskq needs');
ok($node->poll_query_until('postgres', dispatchers_q('postgres', 2)),
	'two dispatchers run in postgres');
is(sql(dispatchers_q('other', 0)), 't', 'none runs in other');

my ($ret, $id, $err) = $node->psql('other', q{SELECT taskq.enqueue('ok')});
is($ret, 0, 'enqueue in other works');
like($err,
	qr/WARNING:  no taskq dispatcher runs in database "other": no background worker slot is free; tasks are recorded and wait/,
	'enqueue in other warns that no dispatcher runs there');
($ret, my $out, $err) = $node->psql('other',
	q{SELECT taskq.enqueue('ok'); SELECT taskq.enqueue('ok')});
is(() = $err =~ /WARNING/g, 1, 'once per session');
($ret, $out, $err) = $node->psql('postgres', q{SELECT taskq.enqueue('ok')});
unlike($err, qr/WARNING/, 'enqueue in postgres, which has dispatchers, does not warn');

# ---------------------------------------------------------------------
# Slots free up: "other" gets its dispatchers at once.
# ---------------------------------------------------------------------
$offset = -s $node->logfile;
$t0 = time();
set_conf(q{taskq.databases = 'other'});
ok($node->poll_query_until('postgres', dispatchers_q('other', 2)),
	'both dispatchers of other start once the slots are free');
$took = time() - $t0;
note sprintf('the dispatchers of other started %.2f s after the reload', $took);
cmp_ok($took, '<', 10, 'promptly (the retry does not wait a minute)');
$node->wait_for_log(qr/taskq: no dispatcher waits for a background worker slot any more/, $offset);
pass('the log says no dispatcher waits for a slot any more');
ok($node->poll_query_until('other',
		q{SELECT count(*) = 3 FROM taskq.tasks WHERE status = 'completed'}),
	'the tasks of other run');
($ret, $out, $err) = $node->psql('other', q{SELECT taskq.enqueue('ok')});
unlike($err, qr/WARNING/, 'enqueue in other no longer warns');

$node->stop;
done_testing();
