# Pausing queues, and settings changed on reload (SIGHUP): taskq.enabled,
# taskq.workers and taskq.databases, including a database that does not
# exist.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('reload', <<'EOC');
taskq.databases = 'postgres,nosuchdb'
taskq.workers = 1
taskq.poll_interval = '200ms'
EOC

my $missing_re =
  qr/LOG:  taskq: database "nosuchdb" named in taskq.databases does not exist; no dispatcher runs for it/;

sub sql
{
	my ($q, $db) = @_;
	return $node->safe_psql($db // 'postgres', $q);
}

sub wait_status { return wait_task_status($node, @_); }

# Wait until $seconds have passed since task $id was enqueued (a condition
# on the server's clock, checked by polling), so that dispatchers have had
# several poll intervals to pick it up.
sub wait_past_enqueue
{
	my ($id, $seconds, $db) = @_;
	return $node->poll_query_until($db // 'postgres',
		"SELECT clock_timestamp() > enqueued_at + interval '$seconds s'
         FROM taskq.tasks WHERE id = $id");
}

sub set_conf
{
	my ($line) = @_;
	$node->append_conf('postgresql.conf', "$line\n");
	$node->reload;
}

# number of dispatchers of a database, as taskq.workers shows them
sub dispatchers_q
{
	my ($db, $n) = @_;
	return "SELECT count(*) = $n FROM taskq.workers
            WHERE type = 'dispatcher' AND database = '$db'";
}

my $setup = <<'EOS';
CREATE EXTENSION taskq;
CREATE TABLE runs (
    seq bigserial PRIMARY KEY,
    label text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION public.record(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO runs (label) VALUES (p->>'label');
$$;
SELECT taskq.register_handler('record', 'public.record(jsonb)');
EOS
sql($setup);

sub enqueue
{
	my ($label, $opts, $db) = @_;
	$opts = defined $opts ? ", $opts" : '';
	return sql(qq{SELECT taskq.enqueue('record', '{"label": "$label"}'$opts)},
		$db);
}

ok($node->poll_query_until('postgres', dispatchers_q('postgres', 1)),
	'one dispatcher runs in postgres');
$node->wait_for_log($missing_re);
pass('the missing database is logged');

# ---------------------------------------------------------------------
# pause / resume
# ---------------------------------------------------------------------
sql("SELECT taskq.pause('slow')");
is(sql(q{SELECT paused FROM taskq.queues WHERE name = 'slow'}),
	't', 'taskq.queues shows the queue paused');
my $s1 = enqueue('slow-1', "queue => 'slow'");
my $s2 = enqueue('slow-2', "queue => 'slow'");
my $f1 = enqueue('fast-1', "queue => 'fast'");
ok(wait_status($f1, 'completed'), 'a task of another queue runs');
my $f2 = enqueue('fast-2', "queue => 'fast'");
ok(wait_status($f2, 'completed'), 'a later task of another queue runs');
ok(wait_past_enqueue($s2, 1), 'a second has passed since the paused tasks were enqueued');
is( sql("SELECT string_agg(status::text, ',' ORDER BY id) FROM taskq.tasks
         WHERE id IN ($s1, $s2)"),
	'queued,queued', 'the paused queue\'s tasks stay queued');
is(sql(q{SELECT count(*) FROM runs WHERE label LIKE 'slow%'}),
	'0', 'no handler of the paused queue ran');

sql("SELECT taskq.resume('slow')");
ok(wait_status($s2, 'completed'), 'after resume the paused tasks run');
ok(wait_status($s1, 'completed'), 'both of them');
is( sql(q{SELECT string_agg(label, ' ' ORDER BY seq) FROM runs}),
	'fast-1 fast-2 slow-1 slow-2',
	'the paused tasks ran after resume, in order');

# ---------------------------------------------------------------------
# taskq.enabled = off on reload
# ---------------------------------------------------------------------
set_conf('taskq.enabled = off');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 AND bool_and(state = 'disabled')
          FROM taskq.workers WHERE type = 'dispatcher'}),
	'after reload with taskq.enabled = off the dispatcher is disabled');
my $off = enqueue('while-off');
ok(wait_past_enqueue($off, 1), 'a second (5 poll intervals) has passed');
is(sql("SELECT status, attempts FROM taskq.tasks WHERE id = $off"),
	'queued|0', 'a task enqueued while disabled stays queued');
is(sql(q{SELECT count(*) FROM runs WHERE label = 'while-off'}),
	'0', 'its handler did not run');

set_conf('taskq.enabled = on');
ok(wait_status($off, 'completed'), 'after reload with taskq.enabled = on it runs');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 AND bool_and(state <> 'disabled')
          FROM taskq.workers WHERE type = 'dispatcher'}),
	'the dispatcher is no longer disabled');

# ---------------------------------------------------------------------
# taskq.workers on reload
# ---------------------------------------------------------------------
set_conf('taskq.workers = 3');
ok($node->poll_query_until('postgres', dispatchers_q('postgres', 3)),
	'taskq.workers = 3 on reload starts 3 dispatchers');
is( sql(q{SELECT string_agg(worker::text, ',' ORDER BY worker) FROM taskq.workers
          WHERE type = 'dispatcher'}),
	'0,1,2', 'numbered 0 to 2');
set_conf('taskq.workers = 1');
ok($node->poll_query_until('postgres', dispatchers_q('postgres', 1)),
	'taskq.workers = 1 on reload stops the extra dispatchers');
my $after_workers = enqueue('after-workers');
ok(wait_status($after_workers, 'completed'), 'the remaining dispatcher runs tasks');

# ---------------------------------------------------------------------
# taskq.databases on reload: add a database, then remove it.
# ---------------------------------------------------------------------
sql('CREATE DATABASE db2');
sql($setup, 'db2');
my $d1 = enqueue('db2-before', undef, 'db2');
ok($node->poll_query_until('postgres', dispatchers_q('db2', 0)),
	'no dispatcher runs in db2 while it is not in taskq.databases');
ok(wait_past_enqueue($d1, 1, 'db2'), 'a second has passed');
is(sql("SELECT status FROM taskq.tasks WHERE id = $d1", 'db2'),
	'queued', 'a task of db2 stays queued');

set_conf(q{taskq.databases = 'postgres,nosuchdb,db2'});
ok($node->poll_query_until('postgres', dispatchers_q('db2', 1)),
	'after reload a dispatcher runs in db2');
is( sql(q{SELECT count(*) FROM pg_stat_activity
          WHERE backend_type = 'taskq dispatcher' AND datname = 'db2'}),
	'1', 'pg_stat_activity shows it connected to db2');
ok(wait_status($d1, 'completed', 'db2'), 'the queued task of db2 runs');
my $d2 = enqueue('db2-during', undef, 'db2');
ok(wait_status($d2, 'completed', 'db2'), 'a new task of db2 runs');
is(sql(q{SELECT string_agg(label, ' ' ORDER BY seq) FROM runs}, 'db2'),
	'db2-before db2-during', 'db2\'s handler ran its tasks');
my $p1 = enqueue('postgres-during');
ok(wait_status($p1, 'completed'), 'postgres still runs its tasks');

set_conf(q{taskq.databases = 'postgres,nosuchdb'});
ok($node->poll_query_until('postgres', dispatchers_q('db2', 0)),
	'after removing db2 from taskq.databases its dispatcher stops');
is( sql(q{SELECT count(*) FROM pg_stat_activity
          WHERE backend_type = 'taskq dispatcher' AND datname = 'db2'}),
	'0', 'no dispatcher is connected to db2');
ok($node->poll_query_until('postgres', dispatchers_q('postgres', 1)),
	'postgres keeps its dispatcher');
my $d3 = enqueue('db2-after', undef, 'db2');
ok(wait_past_enqueue($d3, 1, 'db2'), 'a second has passed');
is(sql("SELECT status FROM taskq.tasks WHERE id = $d3", 'db2'),
	'queued', 'a task of the removed database stays queued');
my $p2 = enqueue('postgres-after');
ok(wait_status($p2, 'completed'), 'postgres still runs its tasks');

# ---------------------------------------------------------------------
# The missing database: one log line in all, despite the launcher going
# through taskq.databases at each of the reloads above; no restart loop.
# ---------------------------------------------------------------------
my $log = slurp_file($node->logfile);
my $missing = () = $log =~ /$missing_re/g;
is($missing, 1, 'the missing database was logged exactly once');
my $launchers = () = $log =~ /LOG:  taskq launcher started/g;
is($launchers, 1, 'the launcher started once (no restart loop)');
my $nosuch = () = $log =~ /^(?!.*parameter "taskq\.databases" changed).*nosuchdb/mg;
is($nosuch, 1, 'nothing else in the log is about the missing database');
my $exits = () = $log =~ /background worker "taskq dispatcher" \(PID \d+\) (exited|was terminated)/g;
my $retired = () = $log =~ /taskq dispatcher \d+ of executor "default" in database "\w+" leaves: the configuration no longer wants it/g;
is("$exits $retired", '0 3',
	'exactly 3 dispatchers left, between batches: 2 when taskq.workers went down, 1 when db2 was removed');
is(sql(q{SELECT count(*) FROM taskq.workers WHERE type = 'launcher'}),
	'1', 'taskq.workers shows the launcher');

$node->stop;
done_testing();
