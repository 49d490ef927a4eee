# External workers (DESIGN.md 8) with the Python library: eight worker
# processes drain one queue while two of them are killed (kill -9) mid-run;
# every task completes once, no task is held by two workers at overlapping
# times, and only the killed workers' unacknowledged tasks are worked
# twice.  Then: a session lease ends with its session, idle workers hold
# no transaction or xmin, and pickup latency through the wake channel.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);

my $python = '/usr/bin/python3';
plan skip_all => 'python3 with psycopg is not installed'
  unless system("$python -c 'import psycopg' 2>/dev/null") == 0;
my $top = $ENV{TASKQ_PG_CWD} // '.';
my $script = "$top/test/external_worker.py";

my $node = taskq_node('external', <<'EOC');
taskq.workers = 2
taskq.poll_interval = '200ms'
max_connections = 60
EOC
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{CREATE EXTENSION taskq});
sql(q{CREATE TABLE ledger (n bigserial PRIMARY KEY, task bigint NOT NULL, attempt int NOT NULL,
      worker text NOT NULL, started timestamptz NOT NULL, ended timestamptz)});
sql(q{SELECT taskq.register_handler('ext_job', NULL, kind => 'external', queue => 'ext_q', max_attempts => 10)});
my $dsn = $node->connstr('postgres');

# start a worker process; returns its handle, once it is running
sub start_worker
{
	my ($name, $queue, $lease, $sleep_ms, $poll) = @_;
	my $w = { out => '', err => '', name => $name };
	$w->{timer} = IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default);
	$w->{h} = IPC::Run::start(
		[ $python, $script, $dsn, $name, $queue, $lease, $sleep_ms, $poll // 5 ],
		'>', \$w->{out}, '2>', \$w->{err}, $w->{timer});
	$w->{pid} = $w->{h}{KIDS}[0]{PID};
	pump_until($w->{h}, $w->{timer}, \$w->{out}, qr/^ready$/m)
	  or die "worker $name did not start: $w->{err}";
	return $w;
}

sub stop_worker
{
	my ($w) = @_;
	kill 'TERM', $w->{pid};
	$w->{h}->finish;
	note "worker $w->{name}: $w->{out}$w->{err}";
	return $w->{h}->result(0);
}

# ---------------------------------------------------------------------
# Eight workers, two killed mid-run
# ---------------------------------------------------------------------
my $n = 600;
my @workers = map { start_worker("w$_", 'ext_q', 2, 100) } 1 .. 8;
sql(qq{SELECT taskq.enqueue_many('ext_job', ARRAY(SELECT jsonb_build_object('i', i) FROM generate_series(1, $n) i))});

ok($node->poll_query_until('postgres', "SELECT count(*) >= 150 FROM ledger WHERE ended IS NOT NULL"),
	'the workers are under way');
my @killed = @workers[ 2, 5 ];
for my $w (@killed)
{
	kill 'KILL', $w->{pid};
	$w->{h}->finish;
}
# a killed worker ran nothing after this: close its open ledger rows here
my $names = join ',', map { "'$_->{name}'" } @killed;
sql(qq{UPDATE ledger SET ended = clock_timestamp() WHERE worker IN ($names) AND ended IS NULL});

ok($node->poll_query_until('postgres',
		"SELECT count(*) = $n FROM taskq.tasks WHERE handler = 'ext_job' AND status = 'completed'"),
	'every task completed');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE handler = 'ext_job' AND status <> 'completed'}),
	'0', 'no task ended otherwise');
is(sql(q{SELECT count(DISTINCT task) FROM ledger}), $n, 'every task was worked');
is( sql(q{SELECT count(*) FROM ledger a JOIN ledger b ON a.task = b.task AND a.n < b.n
          AND tstzrange(a.started, a.ended) && tstzrange(b.started, b.ended)}),
	'0',
	'no task was held by two workers at overlapping times');
is( sql(qq{SELECT count(*) FROM ledger a WHERE EXISTS (SELECT FROM ledger b WHERE b.task = a.task AND b.n > a.n)
          AND a.worker NOT IN ($names)}),
	'0',
	'only the killed workers\' tasks were worked again');
my $redone = sql(q{SELECT count(*) FROM (SELECT task FROM ledger GROUP BY task HAVING count(*) > 1) s});
note "tasks worked twice (their worker was killed): $redone";
cmp_ok($redone, '>=', 1, 'the kill hit tasks in flight, which ran again');
is( sql(q{SELECT count(*) FROM taskq.tasks t WHERE t.attempts <>
          (SELECT max(attempt) FROM ledger l WHERE l.task = t.id)}),
	'0', 'a lease that ran out came back as a new attempt');

# ---------------------------------------------------------------------
# Idle workers hold nothing
# ---------------------------------------------------------------------
my @live = grep { my $w = $_; !grep { $_ == $w } @killed } @workers;
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name ~ '^w[0-9]$'
		  AND (state <> 'idle' OR backend_xmin IS NOT NULL OR xact_start IS NOT NULL)}),
	'idle workers: sessions idle, no transaction, no xmin');
cmp_ok(sql(q{SELECT count(*) FROM pg_stat_activity WHERE application_name ~ '^w[0-9]$'}),
	'>=', 12, 'the live workers are connected (listen and claim sessions)');
is(stop_worker($_), 0, "$_->{name} stops on SIGTERM") for @live;

# ---------------------------------------------------------------------
# Session leases
# ---------------------------------------------------------------------
my $claim_and_exit = sub {
	my ($session) = @_;
	my $code = "import sys, psycopg; c = psycopg.connect(sys.argv[1], autocommit=True);"
	  . "print(c.execute(\"SELECT id FROM taskq.claim('ext_q', lease => '1 hour', session_lease => $session)\").fetchone()[0])";
	my $out = '';
	IPC::Run::run([ $python, '-c', $code, $dsn ], '>', \$out) or die "claiming session failed";
	chomp $out;
	return $out;
};
my $s1 = sql(q{SELECT taskq.enqueue('ext_job', queue => 'ext_q')});
is($claim_and_exit->('true'), $s1, 'a session-lease claim took the task');
ok(wait_task_status($node, $s1, 'queued'), 'the task is back in the queue when its session ended');
is( sql(qq{SELECT attempts || ' ' || last_error FROM taskq.tasks WHERE id = $s1}),
	'1 the session that claimed this task ended (attempt 1)',
	'as a new attempt, saying why');
my $s2 = sql(qq{SELECT taskq.enqueue('ext_job', queue => 'ext_q')});
# s1 is due again too: claim both, then look at s2
sql(qq{UPDATE taskq.tasks SET run_at = now() + interval '1 hour' WHERE id = $s1});
is($claim_and_exit->('false'), $s2, 'a claim without session lease took the other');
# a later session-lease claim whose session ends too: once that task is
# back, the pass that returns ended sessions' tasks has run after s2's
# session ended as well
my $s3 = sql(qq{SELECT taskq.enqueue('ext_job', queue => 'ext_q')});
is($claim_and_exit->('true'), $s3, 'a session-lease claim took a third task');
ok(wait_task_status($node, $s3, 'queued'), 'which is back when its session ended');
is(sql(qq{SELECT status FROM taskq.tasks WHERE id = $s2}), 'dispatched', 'its lease outlives the session');
sql(qq{DELETE FROM taskq.tasks WHERE id IN ($s1, $s2, $s3)});

# ---------------------------------------------------------------------
# Pickup latency through the wake channel (the worker never polls)
# ---------------------------------------------------------------------
sql(q{TRUNCATE ledger});
sql(q{SELECT taskq.register_handler('ext_lat', NULL, kind => 'external', queue => 'ext_lat')});
my $lat = start_worker('lat', 'ext_lat', 30, 0, 600);
for my $i (1 .. 200)
{
	sql(q{SELECT taskq.enqueue('ext_lat')});
}
ok($node->poll_query_until('postgres', q{SELECT count(*) = 200 FROM ledger WHERE ended IS NOT NULL}),
	'200 tasks picked up without polling');
my ($p50, $p99) = split /\|/, sql(q{SELECT
	percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
	FROM (SELECT extract(epoch FROM l.started - t.enqueued_at) * 1000 AS ms
	      FROM ledger l JOIN taskq.tasks t ON t.id = l.task) s});
diag sprintf('wake-channel pickup latency over 200 tasks: p50 %.2f ms, p99 %.2f ms', $p50, $p99);
cmp_ok($p50, '<', 250, 'pickup p50 within a generous bound');
is(stop_worker($lat), 0, 'the latency worker stops');

done_testing();
