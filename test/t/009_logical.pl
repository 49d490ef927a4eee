# The logical kind end to end, with a real logical replication client
# (test/logical_client.py, psycopg2) that speaks pgoutput as Debezium's
# PostgreSQL connector does: the tasks of interleaved transactions arrive
# in commit order, rolled-back ones (whole or to a savepoint) never; a
# client restarted resumes from its confirmed LSN, with the unconfirmed
# transaction again and no confirmed one twice; a row queued before its
# handler became logical is sent by the dispatcher; committing a logical
# task wakes no dispatcher; taskq.trace logs the decision; without
# wal_level = logical the enqueue is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use TaskqTest;
use Test::More;
use IPC::Run;

my $client = 'test/logical_client.py';
plan skip_all => "/usr/bin/python3 with psycopg2 is needed (Debian python3-psycopg2)"
  unless -x '/usr/bin/python3'
  && system('/usr/bin/python3', '-c', 'import psycopg2.extras') == 0;

# poll_interval 1h: a dispatcher works only when a commit wakes it
my $node = taskq_node('logical', <<'EOC');
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
taskq.workers = 1
taskq.poll_interval = '1h'
taskq.trace = on
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{CREATE EXTENSION taskq});
sql(q{CREATE PUBLICATION taskq_pub});
sql(q{SELECT taskq.register_handler('orders', 'taskq.orders', kind => 'logical')});
sql(q{SELECT 1 FROM pg_create_logical_replication_slot('kafka', 'pgoutput')});
sql(q{CREATE FUNCTION public.noop(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT'});
sql(q{SELECT taskq.register_handler('fn', 'public.noop(jsonb)')});

# Run the client until it has --count messages; its output lines.
sub start_client
{
	my (@opts) = @_;
	my $c = { out => '', err => '' };
	$c->{timer} = IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default);
	$c->{h} = IPC::Run::start(
		[
			'/usr/bin/python3', $client, $node->connstr('postgres') . ' replication=database',
			'kafka', 'taskq_pub', '--timeout', $PostgreSQL::Test::Utils::timeout_default, @opts
		],
		'>', \$c->{out}, '2>', \$c->{err}, $c->{timer});
	pump_until($c->{h}, $c->{timer}, \$c->{out}, qr/^ready\n/m)
	  or die "logical client did not start: $c->{err}";
	return $c;
}

sub finish_client
{
	my ($c) = @_;
	$c->{h}->finish;
	note "client (exit " . $c->{h}->result(0) . ") printed:\n$c->{out}$c->{err}";
	is($c->{h}->result(0), 0, 'the client received what it waited for');
	return $c->{out};
}

# The payloads of the messages in the output, in order, and the ids.
sub payloads
{
	my ($out) = @_;
	my @p;
	for my $line (split /\n/, $out)
	{
		next unless $line =~ /^message \d+ taskq\.orders (.*)$/;
		my $json = $1;
		$json =~ /"payload": (\{[^}]*\})/ or die "no payload in $json";
		my $p = $1;
		$json =~ /"id": (\d+)/ or die "no id in $json";
		push @p, "$1 $p";
	}
	return @p;
}

sub enqueue_id
{
	my ($session, $payload) = @_;
	return $session->query_safe(qq{SELECT taskq.enqueue('orders', '$payload')});
}

# ---------------------------------------------------------------------
# Interleaved transactions arrive in commit order
# ---------------------------------------------------------------------
my $c = start_client('--count', '6');

my $s1 = $node->background_psql('postgres');
my $s2 = $node->background_psql('postgres');
$s1->query_safe('BEGIN');
$s2->query_safe('BEGIN');
my $a1 = enqueue_id($s1, '{"s": 1, "n": 1}');
my $b1 = enqueue_id($s2, '{"s": 2, "n": 1}');
my $a2 = enqueue_id($s1, '{"s": 1, "n": 2}');
my $b2 = enqueue_id($s2, '{"s": 2, "n": 2}');
$s2->query_safe('COMMIT');
$s1->query_safe('SAVEPOINT sp');
enqueue_id($s1, '{"s": 1, "n": "rolled back to savepoint"}');
$s1->query_safe('ROLLBACK TO SAVEPOINT sp');
my $a3 = enqueue_id($s1, '{"s": 1, "n": 3}');
$s1->query_safe('COMMIT');
sql(q{BEGIN; SELECT taskq.enqueue('orders', '{"s": 3, "n": "rolled back"}'); ROLLBACK});
my $c1 = sql(q{SELECT taskq.enqueue('orders', '{"s": 0, "n": 1}')});
$s1->quit;
$s2->quit;

my $out = finish_client($c);
is_deeply(
	[ payloads($out) ],
	[
		"$b1 {\"n\": 1, \"s\": 2}", "$b2 {\"n\": 2, \"s\": 2}",
		"$a1 {\"n\": 1, \"s\": 1}", "$a2 {\"n\": 2, \"s\": 1}",
		"$a3 {\"n\": 3, \"s\": 1}", "$c1 {\"n\": 1, \"s\": 0}"
	],
	'tasks arrive in commit order with their ids; rolled-back ones never');
ok($a1 < $b1, 'the first transaction to enqueue committed second');
is(scalar(() = $out =~ /^commit /mg), 3, 'one commit per transaction');
is(sql(q{SELECT count(*) FROM taskq.tasks}), '0', 'no outbox row was written');

# ---------------------------------------------------------------------
# A restarted client resumes from its confirmed LSN
# ---------------------------------------------------------------------
$out =~ /^confirmed (\S+)$/m or die "no confirmed LSN in: $out";
my $confirmed = $1;
ok( $node->poll_query_until('postgres',
		"SELECT confirmed_flush_lsn >= '$confirmed' FROM pg_replication_slots WHERE slot_name = 'kafka'"),
	'the slot has the LSN the client confirmed');

my $d7 = sql(q{SELECT taskq.enqueue('orders', '{"n": 7}')});
my $d8 = sql(q{SELECT taskq.enqueue('orders', '{"n": 8}')});

# receives n 7, stops without confirming it
$c = start_client('--count', '1', '--no-confirm-last');
is_deeply([ payloads(finish_client($c)) ], ["$d7 {\"n\": 7}"],
	'after a restart: the first task after the confirmed LSN');

# an unconfirmed transaction comes again (at least once); nothing confirmed does
$c = start_client('--count', '1');
is_deeply([ payloads(finish_client($c)) ], ["$d7 {\"n\": 7}"],
	'the unconfirmed task is delivered again, nothing before it');
$c = start_client('--count', '1');
$out = finish_client($c);
is_deeply([ payloads($out) ], ["$d8 {\"n\": 8}"],
	'once confirmed, it is not delivered again');

# ---------------------------------------------------------------------
# A row queued before its handler became logical is sent by the dispatcher
# ---------------------------------------------------------------------
sql(q{SELECT taskq.register_handler('switched', 'public.noop(jsonb)', queue => 'held')});
sql(q{SELECT taskq.pause('held')});
my $row = sql(q{SELECT taskq.enqueue('switched', '{"n": "queued row"}')});
sql(q{SELECT taskq.register_handler('switched', 'taskq.orders', kind => 'logical', queue => 'held')});
sql(q{SELECT taskq.resume('held')});
ok(wait_task_status($node, $row, 'completed'), 'the dispatcher completes the row of a handler now logical');
$c = start_client('--count', '1');
$out = finish_client($c);
is_deeply([ payloads($out) ], ["$row {\"n\": \"queued row\"}"],
	'and the client receives it as a message with the row\'s id');
like($out, qr/"handler": "switched", "queue": "held", "attempt": 1,/, 'with its queue and attempt');

# ---------------------------------------------------------------------
# Committing a logical task wakes no dispatcher
# ---------------------------------------------------------------------
# taskq.workers.wakeups counts the commits that woke the dispatcher: the
# logical task's commit, then a function task's, add exactly one.
my $wakeups = q{SELECT wakeups FROM taskq.workers
                WHERE type = 'dispatcher' AND database = 'postgres'};
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM ($wakeups) w}),
	'one dispatcher runs');
my $before = sql($wakeups);
sql(q{SELECT taskq.enqueue('orders', '{"n": "no wake-up"}')});
my $fid = sql(q{SELECT taskq.enqueue('fn', '{}')});
ok(wait_task_status($node, $fid, 'completed'), 'a function task commits after it and runs');
is(sql($wakeups), $before + 1,
	'of the two commits, only the function task\'s woke the dispatcher');

# ---------------------------------------------------------------------
# taskq.trace logs the decision
# ---------------------------------------------------------------------
ok( $node->log_contains(
		qr/taskq: enqueue handler=orders kind=logical queue=default mode=async delay=0ms priority=0 outcome=emitted id=$d8\b/),
	'taskq.trace logs the emitted task with its id');

$node->stop;

# ---------------------------------------------------------------------
# Without wal_level = logical: registration warns, enqueue refuses
# ---------------------------------------------------------------------
my $replica = taskq_node('replica', "taskq.workers = 1\nwal_level = replica\n");
$replica->safe_psql('postgres', 'CREATE EXTENSION taskq');
my ($ret, $stdout, $stderr) = $replica->psql('postgres',
	q{SELECT taskq.register_handler('orders', 'taskq.orders', kind => 'logical')});
is($ret, 0, 'a logical handler can be registered under wal_level = replica');
like($stderr, qr/WARNING:  wal_level is not logical: enqueue\(\) for logical handler prefix "taskq.orders" will fail until it is/,
	'with a warning');
($ret, $stdout, $stderr) = $replica->psql('postgres', q{SELECT taskq.enqueue('orders', '{}')});
isnt($ret, 0, 'its enqueue fails');
like($stderr, qr/ERROR:  logical handler "orders" needs wal_level = logical\nDETAIL:  wal_level is "replica"; no logical-decoding client could read the task.\nHINT:  Set wal_level = logical in postgresql.conf and restart the server./,
	'with the reason and a hint');
$replica->stop;

done_testing();
