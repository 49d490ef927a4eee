# Immediate shutdown (no checkpoint, no clean exit of any process) while
# function tasks run, delayed tasks wait for their run_at, and notify tasks
# wait 'dispatched' for an ack.  After the restart: every function task
# completes exactly once (ledger with a UNIQUE constraint), none is charged
# an attempt (a shutdown is not a crash of its handler), delayed tasks do
# not start before their run_at, and the dispatched notify tasks are
# delivered again and end completed once a listener acks them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $listener = $ENV{TASKQ_LISTENER};
plan skip_all => 'TASKQ_LISTENER is not set (run through test/run)'
  unless defined $listener && -x $listener;

my $nnow     = 3000;    # due at once
my $ndelayed = 50;      # run_after 3 s
my $nnotify  = 10;      # notify tasks, dispatched before the shutdown

my $node = taskq_node('immediate', <<'EOC');
taskq.workers = 2
taskq.batch_size = 16
taskq.poll_interval = '200ms'
taskq.ack_timeout = '2s'
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    n  int PRIMARY KEY,          -- UNIQUE: a second run of a task fails
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.book(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (n) VALUES ((p->>'n')::int);
    PERFORM pg_sleep(0.002);
END $$;
SELECT taskq.register_handler('book', 'public.book(jsonb)');
SELECT taskq.register_handler('ship', 'shipping', kind => 'notify',
                              queue => 'mail', max_attempts => 20);
EOS

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'two dispatchers run');

# The backlog and the delayed tasks wait in the paused default queue while
# the notify tasks (queue 'mail') are sent to a channel nobody listens on.
sql(q{SELECT taskq.pause('default')});
sql(qq{SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, $nnow) g))});
sql(qq{SELECT count(*) FROM taskq.enqueue_many('book',
        ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(100001, 100000 + $ndelayed) g),
        run_after => '3s')});
sql(qq{SELECT count(*) FROM taskq.enqueue_many('ship',
        ARRAY(SELECT jsonb_build_object('parcel', g) FROM generate_series(1, $nnotify) g))});
ok( $node->poll_query_until(
		'postgres',
		qq{SELECT count(*) = $nnotify FROM taskq.tasks
           WHERE handler = 'ship' AND status = 'dispatched'}),
	"the $nnotify notify tasks are dispatched and wait for an ack");
my @notify_ids = split /\n/, sql(q{SELECT id FROM taskq.tasks WHERE handler = 'ship' ORDER BY id});

sql(q{SELECT taskq.resume('default')});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) >= 300 FROM taskq.tasks WHERE status = 'completed' AND handler = 'book'}),
	'the backlog is being worked on');

my $before = sql(
	q{SELECT string_agg(handler || '/' || status || (CASE WHEN run_at > now() THEN '/not due' ELSE '' END)
                        || '=' || c, ' ' ORDER BY handler, status)
      FROM (SELECT handler, status, run_at > now() AS nd, max(run_at) AS run_at, count(*) AS c
            FROM taskq.tasks GROUP BY 1, 2, 3) s});
note "just before the immediate shutdown: $before";
my ($queued_before, $delayed_waiting, $notify_waiting) = split /\|/, sql(
	q{SELECT count(*) FILTER (WHERE handler = 'book' AND status IN ('queued', 'running')
                                 AND run_at <= now()),
             count(*) FILTER (WHERE handler = 'book' AND status = 'queued' AND run_at > now()),
             count(*) FILTER (WHERE handler = 'ship' AND status = 'dispatched')
      FROM taskq.tasks});

$node->stop('immediate');
cmp_ok($queued_before, '>', 0, 'due tasks were still queued or running at the shutdown');
is($delayed_waiting, $ndelayed, 'the delayed tasks were not yet due at the shutdown');
is($notify_waiting, $nnotify, 'the notify tasks were waiting for an ack at the shutdown');

$node->start;

# A listener that acks what it receives, started after the restart.
my ($out, $err) = ('', '');
my $timer = IPC::Run::timer(90);
my $h = IPC::Run::start(
	[ $listener, '--timeout', '60', $node->connstr('postgres'), 'shipping' ],
	'>', \$out, '2>', \$err, $timer);
ok(pump_until($h, $timer, \$out, qr/^listening on shipping\n/m), 'the listener listens');

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM taskq.tasks WHERE status IN ('queued', 'running', 'dispatched')}),
	'every task ends after the restart');
# the listener's output is read while pumping it
my @acked = grep { my $id = $_; pump_until($h, $timer, \$out, qr/^acked task $id$/m) } @notify_ids;
$h->kill_kill;
note "listener output:\n$out$err";

# Function tasks: exactly once, never charged.
is( sql(q{SELECT status || '=' || count(*) FROM taskq.tasks WHERE handler = 'book' GROUP BY status}),
	'completed=' . ($nnow + $ndelayed), 'every function task completed');
is( sql(q{SELECT count(*) || '|' || count(DISTINCT n) FROM ledger}),
	($nnow + $ndelayed) . '|' . ($nnow + $ndelayed),
	'the ledger has each function task exactly once');
is( sql(q{SELECT count(*) FROM taskq.tasks t LEFT JOIN ledger l ON l.n = (t.payload->>'n')::int
          WHERE t.handler = 'book' AND l.n IS NULL}),
	'0', 'no function task is lost');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE handler = 'book' AND (attempts <> 1 OR crashes <> 0)}),
	'0', 'no function task was charged an attempt or a crash by the shutdown');

# Delayed tasks: not before run_at.
is( sql(q{SELECT count(*) FROM taskq.tasks t JOIN ledger l ON l.n = (t.payload->>'n')::int
          WHERE l.n > 100000 AND (l.at < t.run_at OR t.started_at < t.run_at)}),
	'0', 'no delayed task started before its run_at');
note 'delayed tasks ran between '
  . sql(q{SELECT round(extract(epoch FROM min(l.at - t.run_at))::numeric, 3) || ' and '
                 || round(extract(epoch FROM max(l.at - t.run_at))::numeric, 3)
          FROM taskq.tasks t JOIN ledger l ON l.n = (t.payload->>'n')::int WHERE l.n > 100000})
  . ' s after their run_at';

# Notify tasks: delivered again after the restart, acked, completed.
is( sql(q{SELECT status || '=' || count(*) FROM taskq.tasks WHERE handler = 'ship' GROUP BY status}),
	"completed=$nnotify", 'every notify task completed');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE handler = 'ship' AND attempts < 2}),
	'0', 'each notify task was delivered again (a new attempt) after the restart');
is( sql(q{SELECT count(*) FROM taskq.tasks WHERE handler = 'ship'
          AND result->>'acked_by' = 'taskq_listener'}),
	$nnotify, 'each notify task holds the listener\'s ack');
is(scalar(@acked), $nnotify, 'the listener received and acked every notify task');

$node->stop;
done_testing();
