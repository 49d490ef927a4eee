# Queue limits end to end (issue 9): a concurrency limit holds across five
# dispatchers, also through a kill -9 of one of them; a group of one task
# is not delayed by a group of 5,000; a rate limit spaces starts out; and
# aging lets a priority -100 task start while priority 0 tasks keep
# becoming due.  Overlap is measured from the handlers' own start and end
# stamps, which commit with the tasks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = taskq_node('limits', <<'EOC');
taskq.workers = 5
taskq.batch_size = 16
restart_after_crash = on
log_statement = none
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE stamps (
    n       int NOT NULL,
    tag     text NOT NULL,
    started timestamptz NOT NULL,
    ended   timestamptz NOT NULL,
    seq     bigserial
);
-- sleeps p.ms milliseconds between its two stamps
CREATE FUNCTION public.work(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(coalesce((p->>'ms')::int, 0) / 1000.0);
    INSERT INTO stamps (n, tag, started, ended)
    VALUES ((p->>'n')::int, coalesce(p->>'tag', ''), t0, clock_timestamp());
END $$;
SELECT taskq.register_handler('work', 'public.work(jsonb)');
-- the most handlers of a tag that ran at the same time
CREATE FUNCTION max_overlap(t text, since timestamptz DEFAULT '-infinity') RETURNS bigint LANGUAGE sql AS $$
    SELECT max(c) FROM (
        SELECT (SELECT count(*) FROM stamps b
                WHERE b.tag = t AND b.started <= a.started AND a.started < b.ended) AS c
        FROM stamps a WHERE a.tag = t AND a.started > since) x
$$;
EOS

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 5 FROM taskq.workers WHERE type = 'dispatcher'}),
	'five dispatchers run');

# ---------------------------------------------------------------------
# concurrency 3 over 200 tasks of 100 ms, with a kill -9 in the middle
# ---------------------------------------------------------------------
sql(q{SELECT taskq.set_queue('c3', concurrency => 3)});
sql(q{SELECT count(*) FROM taskq.enqueue_many('work',
        ARRAY(SELECT jsonb_build_object('n', g, 'tag', 'c3', 'ms', 100) FROM generate_series(1, 200) g),
        queue => 'c3')});
ok($node->poll_query_until('postgres', q{SELECT count(*) >= 60 FROM stamps WHERE tag = 'c3'}),
	'60 of the limited tasks ran');
my $victim = sql(q{SELECT pid FROM taskq.workers WHERE type = 'dispatcher' AND current_task IS NOT NULL LIMIT 1});
ok($victim, "a dispatcher runs a task of the queue: $victim");
my $killed_at = sql(q{SELECT clock_timestamp()});
ok(kill('KILL', $victim), "SIGKILL sent to dispatcher $victim");
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 200 FROM taskq.tasks WHERE queue = 'c3' AND status = 'completed'}, 't'),
	'after the crash restart every task of the queue completes');
is(sql(q{SELECT count(DISTINCT n) FROM stamps WHERE tag = 'c3'}), '200', 'each ran to its end');
is(sql(q{SELECT max_overlap('c3')}), '3', 'never more than 3 ran at once, and 3 did');
is(sql(qq{SELECT max_overlap('c3', '$killed_at')}), '3', 'also after the crash');

# ---------------------------------------------------------------------
# group fairness: a group of 5,000 and five groups of one
# ---------------------------------------------------------------------
sql(q{SELECT taskq.pause('fair')});
sql(q{SELECT count(*) FROM taskq.enqueue_many('work',
        ARRAY(SELECT jsonb_build_object('n', g, 'tag', 'fair') FROM generate_series(1, 5000) g),
        queue => 'fair', group_key => 'big')});
sql(q{SELECT taskq.enqueue('work', jsonb_build_object('n', 10000 + g, 'tag', 'fair'), queue => 'fair',
                            group_key => 'single-' || g) FROM generate_series(1, 5) g});
my $first_seq = sql(q{SELECT coalesce(max(seq), 0) FROM stamps});
sql(q{SELECT taskq.resume('fair')});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 5005 FROM stamps WHERE tag = 'fair'}),
	'the 5,005 grouped tasks ran');
my $worst = sql(qq{SELECT max(r) FROM (SELECT n, rank() OVER (ORDER BY seq) AS r FROM stamps WHERE tag = 'fair') x
                   WHERE n > 10000});
note "the last of the five single tasks finished as number $worst of 5005";
cmp_ok($worst, '<=', 5 * 16, 'all five single tasks finish among the first tasks (one turn per dispatcher)');

# ---------------------------------------------------------------------
# rate limit 20/1s over 100 tasks
# ---------------------------------------------------------------------
sql(q{SELECT taskq.set_queue('r20', rate_limit => '20/1s')});
my $t0 = time();
sql(q{SELECT count(*) FROM taskq.enqueue_many('work',
        ARRAY(SELECT jsonb_build_object('n', g, 'tag', 'r20') FROM generate_series(1, 100) g),
        queue => 'r20')});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 100 FROM stamps WHERE tag = 'r20'}),
	'the 100 rate-limited tasks ran');
my $span = sql(q{SELECT extract(epoch FROM max(started)) FROM stamps WHERE tag = 'r20'}) - $t0;
note sprintf('100 tasks at 20/1s took %.2f s from enqueue to the last start', $span);
cmp_ok($span, '>=', 4.0, 'a rate limit of 20/1s spreads 100 starts over at least 4 s');
cmp_ok( sql(q{SELECT max(c) FROM (SELECT count(*) AS c FROM stamps a, stamps b
          WHERE a.tag = 'r20' AND b.tag = 'r20'
            AND b.started >= a.started AND b.started < a.started + interval '1 s' GROUP BY a.n) x}),
	'<=', 40, 'no one-second window holds more than the full bucket and one second of refill');

# ---------------------------------------------------------------------
# aging: a priority -100 task starts while priority 0 tasks keep coming
# ---------------------------------------------------------------------
sql(q{SELECT taskq.set_queue('aged', concurrency => 1, aging => '2 ms')});
sql(q{SELECT taskq.pause('aged')});
my $low = sql(q{SELECT taskq.enqueue('work', '{"n": -1, "tag": "aged"}', queue => 'aged', priority => -100)});
# 1,000 tasks of priority 0 and 10 ms, one due every 5 ms over 5 s: more
# arrive than one at a time can run
sql(q{SELECT count(*) FROM (SELECT taskq.enqueue('work', jsonb_build_object('n', g, 'tag', 'aged', 'ms', 10),
        queue => 'aged', run_after => g * interval '5 ms') FROM generate_series(1, 1000) g) e});
sql(q{SELECT taskq.resume('aged')});
ok(wait_task_status($node, $low, 'completed'), 'the priority -100 task completes');
my ($low_start, $later_due, $later_ran) = split /\|/, sql(qq{
    SELECT (SELECT started FROM stamps WHERE tag = 'aged' AND n = -1),
           (SELECT count(*) FROM taskq.tasks WHERE queue = 'aged' AND run_at >
                (SELECT started FROM stamps WHERE tag = 'aged' AND n = -1)),
           (SELECT count(*) FROM stamps WHERE tag = 'aged' AND n > 0 AND started >
                (SELECT started FROM stamps WHERE tag = 'aged' AND n = -1))});
note "the priority -100 task started at $low_start; $later_due priority 0 tasks became due later, $later_ran ran after it";
cmp_ok($later_due, '>', 0, 'it started while priority 0 tasks were still arriving');
is(sql(qq{SELECT priority FROM taskq.tasks WHERE id = $low}), '-100', 'its stored priority is unchanged');

done_testing();
