# The monitoring views show each role what it may see: taskq.workers shows
# a dispatcher's current task and last error (which may quote a payload)
# only to roles with the privileges of the task's role, to members of
# pg_read_all_stats and to superusers; taskq.stats counts the tasks the
# caller can see, and its counters since start are aggregate counts that
# everyone sees.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('view_privacy', <<'EOC');
# one dispatcher: its last error is the last failed task's
taskq.workers = 1
taskq.poll_interval = '200ms'
EOC

sub as { my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, extra_params => [ '-U', $role ]); }
sub sql { return as('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN IN ROLE pg_read_all_stats;   -- a monitoring role
CREATE ROLE dave LOGIN IN ROLE alice;                -- has alice's privileges
CREATE TABLE public.go (x int);
GRANT SELECT ON public.go TO PUBLIC;
-- charges a card; a bad card number fails with the value in the error;
-- with "wait", first waits until public.go has a row
CREATE FUNCTION public.charge(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p ? 'wait' THEN
        WHILE NOT EXISTS (SELECT FROM public.go) LOOP
            PERFORM pg_sleep(0.02);
        END LOOP;
    END IF;
    PERFORM (p->>'card')::int;
END $$;
SELECT taskq.register_handler('charge', 'public.charge(jsonb)', max_attempts => 1);
EOS

my $last_error = q{SELECT coalesce(last_error, '(null)') FROM taskq.workers WHERE type = 'dispatcher'};

# ---------------------------------------------------------------------
# alice's task fails, quoting her card number
# ---------------------------------------------------------------------
my $a1 = as('alice', q{SELECT taskq.enqueue('charge', '{"card": "secret-4242"}')});
ok(wait_task_status($node, $a1, 'failed'), "alice's task $a1 fails");
like(as('alice', $last_error), qr/invalid input syntax for type integer: "secret-4242"/,
	'alice sees the last error of her task');
like(as('dave', $last_error), qr/secret-4242/, 'so does a role with her privileges');
like(as('carol', $last_error), qr/secret-4242/, 'and a member of pg_read_all_stats');
like(sql($last_error), qr/secret-4242/, 'and a superuser');
is(as('bob', $last_error), '<insufficient privilege>', 'bob does not see it');
is(as('bob', q{SELECT failed FROM taskq.workers WHERE type = 'dispatcher'}), '1',
	'bob still sees the count of failures');
isnt(as('bob', q{SELECT last_error_at FROM taskq.workers WHERE type = 'dispatcher'}), '',
	'and when the last one was');

# ---------------------------------------------------------------------
# bob's task fails next: now the last error is his
# ---------------------------------------------------------------------
my $b1 = as('bob', q{SELECT taskq.enqueue('charge', '{"card": "bobs-card"}')});
ok(wait_task_status($node, $b1, 'failed'), "bob's task $b1 fails");
like(as('bob', $last_error), qr/bobs-card/, 'bob sees the last error of his task');
is(as('alice', $last_error), '<insufficient privilege>', 'alice does not see it');
is(as('dave', $last_error), '<insufficient privilege>', 'nor does a role with her privileges');
like(as('carol', $last_error), qr/bobs-card/, 'the monitoring role does');

# ---------------------------------------------------------------------
# The task running now: its id, queue and start only for those who may
# see it
# ---------------------------------------------------------------------
my $a2 = as('alice', q{SELECT taskq.enqueue('charge', '{"card": "1", "wait": true}')});
ok( $node->poll_query_until('postgres',
		"SELECT current_task = $a2 FROM taskq.workers WHERE type = 'dispatcher'"),
	"alice's task $a2 runs");
my $current = q{SELECT state || ' ' || coalesce(current_task::text, '(null)') || ' '
                       || coalesce(queue, '(null)') || ' ' || (task_started_at IS NOT NULL)
                FROM taskq.workers WHERE type = 'dispatcher'};
is(as('alice', $current), "running $a2 default true", 'alice sees her running task');
is(as('carol', $current), "running $a2 default true", 'so does the monitoring role');
is(as('bob', $current), 'running (null) (null) false', 'bob sees only that a task runs');
sql(q{INSERT INTO public.go VALUES (1)});
ok(wait_task_status($node, $a2, 'completed'), "alice's task $a2 completes");

# ---------------------------------------------------------------------
# taskq.stats: the tasks each role sees; counters of all
# ---------------------------------------------------------------------
my $stats = q{SELECT failed || ' ' || completed || ' ' || failed_since_start || ' ' || completed_since_start
              FROM taskq.stats WHERE handler = 'charge'};
is(as('bob', $stats), '1 0 2 1', 'bob counts his own task, and the counters of all');
is(as('alice', $stats), '1 1 2 1', 'alice counts her own tasks');
is(as('carol', $stats), '0 0 2 1', 'the monitoring role sees no task, only the counters');
is(sql($stats), '2 1 2 1', 'the superuser counts every task');

done_testing();
