# Dependencies end to end (DESIGN §11), under two executors: the default
# one (two dispatchers) runs the root and the collector, executor "fan"
# (two dispatchers) runs the 1,000 children in queue "fanout", so every
# release crosses from one executor's dispatchers to the other's.
#
# Fan-out/fan-in: one root task, 1,000 tasks after it, and one collector
# after all 1,000, which reads what they produced through taskq.results().
# One of the 1,000 waits inside its handler on a lock the test holds, and
# its dispatcher is SIGKILLed there: after the crash restart every task
# runs exactly once and the collector runs once, after all of its parents,
# and sees all 1,000 results.
#
# Failure propagation three levels deep through the dispatchers, and
# retry() of the failed parent: its cancelled dependants stay cancelled,
# a task enqueued after the retried parent waits for it again, and a
# cancelled dependant retried runs at once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $nkids = 1000;

my $node = taskq_node('deps', <<'EOC');
taskq.workers = 2
taskq.executors = 'fan: queues=fanout workers=2'
taskq.batch_size = 16
taskq.poll_interval = '10min'   # released tasks must be woken, not polled for
restart_after_crash = on
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ledger (
    n    int PRIMARY KEY,          -- UNIQUE: a second run of a task fails
    task bigint NOT NULL           -- taskq.current_task() inside the handler
);
CREATE TABLE collected (
    task      bigint NOT NULL,
    parents   int NOT NULL,
    completed int NOT NULL,
    total     bigint
);
CREATE TABLE flags (name text PRIMARY KEY, fail boolean NOT NULL);
INSERT INTO flags VALUES ('root', false), ('a', true);

-- every task: a ledger row, and n*n as its result; n = 0 stalls on
-- advisory lock 4343, which the test holds
CREATE FUNCTION public.square(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF (p->>'n')::int = 0 THEN
        PERFORM pg_advisory_xact_lock_shared(4343);
    END IF;
    INSERT INTO ledger VALUES ((p->>'n')::int, taskq.current_task());
    RETURN jsonb_build_object('square', ((p->>'n')::bigint) ^ 2);
END $$;
SELECT taskq.register_handler('square', 'public.square(jsonb)');

-- the collector: sums its parents' results
CREATE FUNCTION public.collect(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[] := ARRAY(SELECT jsonb_array_elements_text(p->'parents')::bigint);
BEGIN
    INSERT INTO collected
    SELECT taskq.current_task(), count(*), count(*) FILTER (WHERE r.status = 'completed'),
           sum((r.result->>'square')::bigint)
    FROM taskq.results(ids) r;
    RETURN '{}';
END $$;
SELECT taskq.register_handler('collect', 'public.collect(jsonb)');

-- fails while its flag says so
CREATE FUNCTION public.flaky(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT fail FROM flags WHERE name = p->>'flag') THEN
        RAISE EXCEPTION 'flaky % failed', p->>'flag';
    END IF;
    RETURN jsonb_build_object('ran', p->>'flag');
END $$;
SELECT taskq.register_handler('flaky', 'public.flaky(jsonb)', max_attempts => 1);
EOS

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) FILTER (WHERE executor = 'default') = 2
                 AND count(*) FILTER (WHERE executor = 'fan') = 2
          FROM taskq.workers WHERE type = 'dispatcher'}),
	'two dispatchers run in each of the two executors');

# ---------------------------------------------------------------------
# Fan-out / fan-in with a kill -9 in the middle
# ---------------------------------------------------------------------

my ($hout, $herr) = ('', '');
my $holder = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' application_name=holder',
	  '-c', 'SELECT pg_advisory_lock(4343), pg_sleep(600)' ],
	'>', \$hout, '2>', \$herr);
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND granted}),
	'a client holds advisory lock 4343');

# The root is paused in its queue until everything is enqueued, so the
# children are certainly 'waiting' first.
sql(q{SELECT taskq.pause('root')});
my $ids = sql(qq{
    BEGIN;
    CREATE TEMP TABLE ids AS SELECT taskq.enqueue('square', '{"n": -1}', queue => 'root') AS root;
    CREATE TEMP TABLE kids AS
        SELECT id FROM taskq.enqueue_many('square',
            ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(0, $nkids - 1) g),
            queue => 'fanout', after => ARRAY(SELECT root FROM ids)) AS id;
    SELECT root, (SELECT taskq.enqueue('collect',
                      jsonb_build_object('parents', (SELECT jsonb_agg(id ORDER BY id) FROM kids)),
                      after => (SELECT array_agg(id) FROM kids)))
    FROM ids;
    COMMIT;});
my ($root, $collector) = split /\|/, $ids;
like($collector, qr/^\d+$/, "root $root, $nkids children and collector $collector enqueued");
is( sql(q{SELECT status || ':' || count(*) FROM taskq.tasks WHERE status <> 'queued' GROUP BY status}),
	'waiting:' . ($nkids + 1), 'the children and the collector wait');
sql(q{SELECT taskq.resume('root')});

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM taskq.workers w JOIN pg_stat_activity a USING (pid)
          JOIN taskq.tasks t ON t.id = w.current_task
          WHERE t.payload->>'n' = '0' AND a.wait_event_type = 'Lock'}),
	'a dispatcher waits inside the stalling child');
my $victim = sql(q{SELECT w.pid FROM taskq.workers w JOIN taskq.tasks t ON t.id = w.current_task
                   WHERE t.payload->>'n' = '0'});
is(sql("SELECT executor FROM taskq.workers WHERE pid = $victim"), 'fan',
	'the stalling child runs in executor "fan"');
is(sql("SELECT status FROM taskq.tasks WHERE id = $collector"), 'waiting',
	'the collector still waits');
my $log_offset = -s $node->logfile;
ok(kill('KILL', $victim), "SIGKILL sent to dispatcher $victim");
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$holder->finish;
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server accepts connections again');

ok(wait_task_status($node, $collector, 'completed'), 'the collector completes after the restart');
is(sql(q{SELECT count(*) || '|' || count(DISTINCT n) FROM ledger}),
	($nkids + 1) . '|' . ($nkids + 1), 'the root and every child ran exactly once');
is( sql(q{SELECT count(*) FROM ledger l JOIN taskq.tasks t ON t.id = l.task
          WHERE (t.payload->>'n')::int <> l.n}),
	'0', 'current_task() named each handler\'s own task');
my $sum = 0;
$sum += $_ * $_ for 0 .. $nkids - 1;
is( sql(q{SELECT task || '|' || parents || '|' || completed || '|' || total FROM collected}),
	"$collector|$nkids|$nkids|$sum",
	'the collector ran once, after all its parents, and read their results');
is( sql(q{SELECT count(*) FROM taskq.tasks t JOIN taskq.tasks c ON c.id = } . $collector
		  . q{ WHERE t.handler = 'square' AND t.finished_at > c.started_at}),
	'0', 'no parent finished after the collector started');
is(sql(q{SELECT count(*) FROM taskq.task_deps}), '0', 'no dependency is left behind');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE status <> 'completed'}), '0',
	'every task completed');

# ---------------------------------------------------------------------
# Failure three levels deep, then retry() of the failed parent
# ---------------------------------------------------------------------

my ($a, $b, $c, $d) = split /\|/, sql(q{
    SELECT taskq.pause('chain');
    WITH a AS (SELECT taskq.enqueue('flaky', '{"flag": "a"}', queue => 'chain') AS id),
         b AS (SELECT taskq.enqueue('flaky', '{"flag": "root"}', after => ARRAY[a.id]) AS id FROM a),
         c AS (SELECT taskq.enqueue('flaky', '{"flag": "root"}', after => ARRAY[b.id]) AS id FROM b),
         d AS (SELECT taskq.enqueue('flaky', '{"flag": "root"}', after => ARRAY[c.id]) AS id FROM c)
    SELECT a.id || '|' || b.id || '|' || c.id || '|' || d.id FROM a, b, c, d;
    SELECT taskq.resume('chain');}) =~ s/^\s+|\s+$//gr;
ok(wait_task_status($node, $a, 'failed'), "task $a fails in its dispatcher");
is( sql(qq{SELECT string_agg(id || ' ' || status || ' ' || coalesce(last_error, '-'), '; ' ORDER BY id)
           FROM taskq.tasks WHERE id IN ($b, $c, $d)}),
	"$b cancelled parent task $a ended failed; $c cancelled parent task $b ended cancelled; "
	  . "$d cancelled parent task $c ended cancelled",
	'its dependants three levels deep are cancelled, each naming its parent');

sql(q{UPDATE flags SET fail = false WHERE name = 'a'});
my $e = sql(qq{SELECT taskq.pause('chain'); SELECT taskq.retry($a);
               SELECT taskq.enqueue('flaky', '{"flag": "root"}', after => ARRAY[$a]);}) =~ s/^.*\n//sr;
is(sql("SELECT status FROM taskq.tasks WHERE id = $e"), 'waiting',
	'a task enqueued after the retried parent waits for it');
sql(q{SELECT taskq.resume('chain')});
ok(wait_task_status($node, $a, 'completed'), 'the retried parent completes');
ok(wait_task_status($node, $e, 'completed'), 'the task after it is released and completes');
is( sql(qq{SELECT string_agg(status::text, ',' ORDER BY id) FROM taskq.tasks WHERE id IN ($b, $c, $d)}),
	'cancelled,cancelled,cancelled', 'the cancelled dependants stay cancelled');
is(sql("SELECT taskq.retry($b)"), 't', 'a cancelled dependant can be retried');
ok(wait_task_status($node, $b, 'completed'), 'and runs without waiting');
is( sql(qq{SELECT string_agg(status::text, ',' ORDER BY id) FROM taskq.tasks WHERE id IN ($c, $d)}),
	'cancelled,cancelled', 'its own dependants stay cancelled');

done_testing();
