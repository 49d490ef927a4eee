# Claim cursors (src/cursors.c): a dispatcher's claim reads each queue
# from the last key it took there, so every task that becomes claimable
# behind that key must move it back.  One dispatcher, batches of one, a
# backlog of 20 ms tasks: each late arrival below must run soon after it
# became claimable, ahead of most of the backlog still queued then (it
# comes first in dispatch order), and not after the backlog, which is
# where a task the cursor had passed would wait until the cursors are
# dropped (every 60 s; each backlog here lasts 2 to 3 s).
#
#   - a task whose transaction began before the backlog was enqueued, and
#     committed after the dispatcher had claimed into it (its run_at is
#     earlier than the cursor): its commit rewinds;
#   - a task of a higher priority: its commit rewinds;
#   - a delayed task of a higher priority, whose run_at comes while the
#     backlog drains: the claim looks up delayed tasks that became due;
#   - with a session holding a snapshot all along, every task of the
#     queue still runs once, in dispatch order;
#   - a task of a prepared transaction, whose COMMIT PREPARED wakes
#     nobody: the dispatcher's next wake-up by taskq.poll_interval (1 s)
#     claims from the start.  The bound asserted (10 s) is generous for
#     that and short of the minute after which cursors are dropped anyway.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('claim_cursors', <<'EOC');
taskq.workers = 1
taskq.batch_size = 1
max_prepared_transactions = 2
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (seq bigserial, label text NOT NULL);
CREATE FUNCTION public.step(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger (label) VALUES (p->>'label');
    PERFORM pg_sleep((p->>'sleep')::float8);
END $$;
SELECT taskq.register_handler('step', 'public.step(jsonb)');
EOS

# Enqueue n backlog tasks labelled "$tag-<i>".
sub backlog
{
	my ($tag, $n) = @_;
	sql(qq{SELECT count(*) FROM taskq.enqueue_many('step',
             ARRAY(SELECT jsonb_build_object('label', '$tag-' || g, 'sleep', 0.02)
                   FROM generate_series(1, $n) g))});
}

# Wait until n tasks of the backlog tag have run.
sub wait_ran
{
	my ($tag, $n) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) >= $n FROM ledger WHERE label LIKE '$tag-%'");
}

# How many backlog tasks of tag ran after the task labelled label, once
# both the backlog and the task have run.
sub ran_after
{
	my ($tag, $label, $total) = @_;
	$node->poll_query_until('postgres',
		"SELECT count(*) = $total + 1 FROM ledger WHERE label LIKE '$tag-%' OR label = '$label'")
	  or diag sql("SELECT string_agg(label, ' ' ORDER BY seq) FROM ledger");
	return sql(qq{SELECT count(*) FROM ledger b, ledger l
                  WHERE l.label = '$label' AND b.label LIKE '$tag-%' AND b.seq > l.seq});
}

ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM taskq.workers WHERE type = 'dispatcher' AND state = 'idle'}),
	'the dispatcher is idle');

# An enqueue whose transaction began before the backlog's.
my $bg = $node->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe('SELECT now()');
backlog('a', 100);
ok(wait_ran('a', 10), 'the dispatcher has claimed into the first backlog');
$bg->query_safe(q{SELECT taskq.enqueue('step', '{"label": "early-start", "sleep": 0}')});
$bg->query_safe('COMMIT');
my $after = ran_after('a', 'early-start', 100);
cmp_ok($after, '>=', 50,
	"a task whose transaction began before the backlog runs next after its commit ($after backlog tasks ran after it)");

# While a backlog of n tasks tagged tag drains, once 10 have run, enqueue
# with sql the task labelled label; how many backlog tasks ran after it.
sub arrives_during
{
	my ($tag, $n, $label, $sql) = @_;
	backlog($tag, $n);
	ok(wait_ran($tag, 10), "the dispatcher has claimed into backlog $tag");
	sql($sql);
	return ran_after($tag, $label, $n);
}

# A higher priority.
$after = arrives_during('b', 100, 'urgent',
	q{SELECT taskq.enqueue('step', '{"label": "urgent", "sleep": 0}', priority => 10)});
cmp_ok($after, '>=', 50,
	"a task of a higher priority runs next after its commit ($after backlog tasks ran after it)");

# A delayed task of a higher priority, due while the backlog drains.
$after = arrives_during('c', 150, 'delayed',
	q{SELECT taskq.enqueue('step', '{"label": "delayed", "sleep": 0}', priority => 10,
                           run_after => '500 milliseconds')});
cmp_ok($after, '>=', 30,
	"a delayed task of a higher priority runs when due ($after backlog tasks ran after it)");
is( sql(q{SELECT started_at >= run_at FROM taskq.tasks WHERE payload->>'label' = 'delayed'}),
	't', 'and not before its run_at');

# Under a held snapshot (the case the cursors are for): every task once,
# in dispatch order (the backlog in enqueue order, the urgent one first).
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$holder->query_safe('SELECT count(*) FROM taskq.tasks');
$after = arrives_during('d', 100, 'held-urgent',
	q{SELECT taskq.enqueue('step', '{"label": "held-urgent", "sleep": 0}', priority => 10)});
cmp_ok($after, '>=', 50,
	"under a held snapshot, a higher priority still runs next ($after backlog tasks ran after it)");
is( sql(q{SELECT count(*) FROM (
            SELECT label, lag(split_part(label, '-', 2)::int) OVER (ORDER BY seq) AS prev,
                   split_part(label, '-', 2)::int AS n
              FROM ledger WHERE label LIKE 'd-%') x
          WHERE prev IS NOT NULL AND n <> prev + 1}),
	'0', 'the backlog ran in enqueue order');
is( sql(q{SELECT count(*) || ' ' || count(DISTINCT label) FROM ledger}),
	'454 454', 'every task ran once');
$holder->query_safe('COMMIT');
$holder->quit;

# Two-phase commit: prepared before a task that moves the cursor past it.
$bg->query_safe('BEGIN');
$bg->query_safe(q{SELECT taskq.enqueue('step', '{"label": "prepared", "sleep": 0}')});
$bg->query_safe(q{PREPARE TRANSACTION 'cursor_2pc'});
my $moved = sql(q{SELECT taskq.enqueue('step', '{"label": "moves-cursor", "sleep": 0}')});
ok(wait_task_status($node, $moved, 'completed'), 'a later task has run');
my $committed_at = sql(q{COMMIT PREPARED 'cursor_2pc'; SELECT clock_timestamp()});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM ledger WHERE label = 'prepared'}),
	'the prepared transaction\'s task runs');
my $waited = sql(qq{SELECT extract(epoch FROM started_at - '$committed_at'::timestamptz)
                    FROM taskq.tasks WHERE payload->>'label' = 'prepared'});
note "the prepared task started $waited s after COMMIT PREPARED";
cmp_ok($waited, '<', 10, 'within a poll interval or so, not after the cursors\' minute');
$bg->quit;

done_testing();
