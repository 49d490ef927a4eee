# NOTIFY handlers with a real libpq listener (test/listener.c): ack,
# redelivery after taskq.ack_timeout, failure when no ack ever comes,
# fire-and-forget (ack => false), and nack then ack.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);

my $listener = $ENV{TASKQ_LISTENER};
plan skip_all => 'TASKQ_LISTENER is not set (run through test/run)'
  unless defined $listener && -x $listener;

my $node = taskq_node('notify', <<'EOC');
taskq.workers = 2
taskq.ack_timeout = '1s'
taskq.retry_backoff = '50ms'
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_status { return wait_task_status($node, @_); }

# Start the listener on a channel; return once it printed its
# "listening on" line, i.e. once its LISTEN has succeeded.
sub start_listener
{
	my ($channel, @opts) = @_;
	my $l = { out => '', err => '', channel => $channel };
	$l->{timer} = IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default);
	$l->{h} = IPC::Run::start(
		[
			$listener, @opts, '--timeout', '60',
			$node->connstr('postgres'), $channel
		],
		'>', \$l->{out}, '2>', \$l->{err}, $l->{timer});
	$l->{pid} = $l->{h}{KIDS}[0]{PID};
	pump_until($l->{h}, $l->{timer}, \$l->{out},
		qr/^listening on \Q$channel\E\n/m)
	  or die "listener on $channel did not start: $l->{err}";
	return $l;
}

# pump the listener until its output matches; false on timeout or exit
sub listener_until
{
	my ($l, $re) = @_;
	return pump_until($l->{h}, $l->{timer}, \$l->{out}, $re);
}

# wait for the listener to exit; its exit status
sub finish_listener
{
	my ($l) = @_;
	$l->{h}->finish;
	my $rc = $l->{h}->result(0);
	note "listener on $l->{channel} (exit $rc) printed:\n$l->{out}$l->{err}";
	return $rc;
}

sql(<<'EOS');
CREATE EXTENSION taskq;
SELECT taskq.register_handler('ship', 'shipping', kind => 'notify');
SELECT taskq.register_handler('ship_lost', 'lost_shipping', kind => 'notify',
                              max_attempts => 2);
SELECT taskq.register_handler('fire', 'fire_and_forget', kind => 'notify',
                              ack => false);
SELECT taskq.register_handler('picky', 'picky_shipping', kind => 'notify',
                              max_attempts => 3);
EOS

# ---------------------------------------------------------------------
# Delivery and ack.
# ---------------------------------------------------------------------
my $l = start_listener('shipping', '--count', '1');
my $id = sql(q{SELECT taskq.enqueue('ship', '{"order": 42}')});
is(finish_listener($l), 0, 'the listener got one task and exited 0');
like($l->{out}, qr/^received task $id attempt 1 payload \{"order": 42\}$/m,
	'the listener received the task id, attempt 1 and the payload');
like($l->{out}, qr/^acked task $id$/m, 'the listener acknowledged it');
is($l->{err}, '', 'the listener printed no error');
ok(wait_status($id, 'completed'), 'the acknowledged task is completed');
is( sql(
		"SELECT attempts, result->>'acked_by', result->>'pid', lease_until IS NULL,
                finished_at IS NOT NULL
         FROM taskq.tasks WHERE id = $id"),
	"1|taskq_listener|$l->{pid}|t|t",
	'the task stores the listener\'s ack result after one attempt');
is(sql("SELECT taskq.ack($id)"), 'f', 'a second ack of the task is refused');

# ---------------------------------------------------------------------
# No ack: redelivered after taskq.ack_timeout, then failed after
# max_attempts (2).
# ---------------------------------------------------------------------
$l = start_listener('lost_shipping', '--no-ack', '--count', '2');
$id = sql(q{SELECT taskq.enqueue('ship_lost', '{"order": 43}')});
ok(listener_until($l, qr/^received task $id attempt 1 /m),
	'attempt 1 is delivered');
my $t1 = time();
is( sql(
		"SELECT status, attempts, lease_until > clock_timestamp(),
                lease_until <= clock_timestamp() + interval '1s'
         FROM taskq.tasks WHERE id = $id"),
	'dispatched|1|t|t',
	'an unacknowledged task waits dispatched with a lease of ack_timeout');
ok(listener_until($l, qr/^received task $id attempt 2 /m),
	'attempt 2 is delivered after the lease ran out');
my $gap = time() - $t1;
is(finish_listener($l), 0, 'the listener received two messages and exited 0');
note sprintf('redelivery came %.3f s after the first delivery', $gap);
cmp_ok($gap, '>=', 0.8, 'redelivery waited for taskq.ack_timeout (1 s)');
my @got = $l->{out} =~ /^received task (\d+) attempt (\d+) payload (.*)$/mg;
is_deeply(\@got, [ $id, 1, '{"order": 43}', $id, 2, '{"order": 43}' ],
	'the same task was received exactly twice, attempts 1 and 2');

ok(wait_status($id, 'failed'),
	'with max_attempts reached and no ack, the task fails');
is( sql(
		"SELECT attempts, last_error, lease_until IS NULL, finished_at IS NOT NULL
         FROM taskq.tasks WHERE id = $id"),
	'2|no ack() within taskq.ack_timeout (attempt 2)|t|t',
	'the failed task has 2 attempts and last_error about the missing ack');
is(sql("SELECT taskq.ack($id)"), 'f', 'a late ack of a failed task is refused');

# ---------------------------------------------------------------------
# ack => false: completed as soon as it is sent.
# ---------------------------------------------------------------------
$l = start_listener('fire_and_forget', '--no-ack', '--json', '--count', '1');
$id = sql(q{SELECT taskq.enqueue('fire', '{"order": 44}')});
is(finish_listener($l), 0, 'the fire-and-forget message arrived');
like($l->{out}, qr/^\{"id": $id, "handler": "fire", .*"ack": false, .*"payload": \{"order": 44\}/m,
	'the message says ack is not expected');
ok(wait_status($id, 'completed'), 'a fire-and-forget task completes on send');
is( sql("SELECT attempts, result IS NULL, lease_until IS NULL
         FROM taskq.tasks WHERE id = $id"),
	'1|t|t', 'it completed in one attempt, without a lease or an ack');
is(sql("SELECT taskq.ack($id)"), 'f', 'ack of a fire-and-forget task is refused');

# ---------------------------------------------------------------------
# nack then ack: the nacked attempt is retried at once (retry_in 0).
# ---------------------------------------------------------------------
$l = start_listener('picky_shipping', '--nack-first', '--count', '2');
$id = sql(q{SELECT taskq.enqueue('picky', '{"order": 45}')});
is(finish_listener($l), 0, 'the nack-first listener handled two messages');
like(
	$l->{out},
	qr/^received task $id attempt 1 payload \{"order": 45\}\nnacked task $id: it will be retried\nreceived task $id attempt 2 payload \{"order": 45\}\nacked task $id$/m,
	'attempt 1 was nacked and attempt 2 acked');
ok(wait_status($id, 'completed'), 'the nacked task completes on its retry');
is( sql(
		"SELECT attempts, last_error, result->>'acked_by'
         FROM taskq.tasks WHERE id = $id"),
	'2|listener asked for a retry|taskq_listener',
	'it took 2 attempts; the nack reason is kept as last_error');

# ---------------------------------------------------------------------
# The counters agree: the table's statuses, and the counters since start
# (a lease that ran out is a retry, or a failure on the last attempt).
# ---------------------------------------------------------------------
is( sql(
		q{SELECT string_agg(handler || ':' || completed || '/' || failed, ' ' ORDER BY handler)
          FROM taskq.stats}),
	'fire:1/0 picky:1/0 ship:1/0 ship_lost:0/1',
	'taskq.stats counts the tasks by handler and status');
is( sql(
		q{SELECT string_agg(handler || ':' || completed_since_start || '/'
                            || failed_since_start || '/' || retried_since_start,
                            ' ' ORDER BY handler)
          FROM taskq.stats}),
	'fire:1/0/0 picky:1/0/1 ship:1/0/0 ship_lost:0/1/1',
	'counters since start: completed/failed/retried, lease expiries included');

# ---------------------------------------------------------------------
# A short ack_timeout: while a lease runs out the dispatcher waits for it,
# it does not spin.  Nobody listens; the task is sent 3 times and fails.
# ---------------------------------------------------------------------
$node->append_conf('postgresql.conf', "taskq.ack_timeout = '100ms'\n");
$node->reload;
ok( $node->poll_query_until(
		'postgres', q{SELECT setting = '100' FROM pg_settings WHERE name = 'taskq.ack_timeout'}),
	'taskq.ack_timeout is 100ms after reload');
sql(q{SELECT taskq.register_handler('ship_short', 'short_shipping', kind => 'notify',
                                    max_attempts => 3)});
# let the dispatchers finish whatever they were doing and publish their
# statistics, then count the transactions of the database
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 AND bool_and(state = 'idle') FROM taskq.workers WHERE type = 'dispatcher'}),
	'the dispatchers are idle');
my $commits_before = sql(
	q{SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'});
my $t_short = time();
$id = sql(q{SELECT taskq.enqueue('ship_short', '{"order": 46}')});
is(sql("SELECT status FROM taskq.wait($id, '30s')"),
	'failed', 'an unacknowledged task with a 100ms lease ends failed');
my $short_elapsed = time() - $t_short;
is( sql("SELECT attempts, last_error FROM taskq.tasks WHERE id = $id"),
	'3|no ack() within taskq.ack_timeout (attempt 3)',
	'after 3 deliveries');
# dispatchers publish their statistics at most once a second
ok( $node->poll_query_until(
		'postgres',
		"SELECT clock_timestamp() > finished_at + interval '1.5s' FROM taskq.tasks WHERE id = $id"),
	'the dispatchers have had time to report their statistics');
my $commits = sql(
	q{SELECT pg_stat_force_next_flush();
      SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'})
  - $commits_before;
note sprintf('3 deliveries with a 100ms lease took %.2f s and %d transactions in the database',
	$short_elapsed, $commits);
cmp_ok($commits, '<', 200,
	'the dispatchers did not busy-loop while the leases ran out');

# ---------------------------------------------------------------------
# A burst: 3000 messages at once, from both dispatchers.  The listener
# acks them in batches with ack_many(), and gets through all of them.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.register_handler('bulk', 'bulk_shipping', kind => 'notify')});
$l = start_listener('bulk_shipping', '--quiet', '--count', '3000');
sql(q{SELECT count(taskq.enqueue('bulk', jsonb_build_object('n', g)))
      FROM generate_series(1, 3000) g});
is(finish_listener($l), 0, 'burst: the listener received 3000 messages and exited 0');
is( sql(q{SELECT count(*) || '|' || count(*) FILTER (WHERE status = 'completed'
                                               AND result->>'acked_by' = 'taskq_listener')
          FROM taskq.tasks WHERE handler = 'bulk'}),
	'3000|3000', 'burst: every task was acknowledged by the listener');
my $acks = sql(q{SELECT count(DISTINCT finished_at) FROM taskq.tasks WHERE handler = 'bulk'});
note "burst: 3000 tasks acknowledged in $acks transactions";
cmp_ok($acks, '<', 3000, 'burst: acknowledged in batches, not one transaction each');

$node->stop;
done_testing();
