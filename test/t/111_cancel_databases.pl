# Task ids are per database (each has its own sequence), so two served
# databases run tasks with the same id at once.  A cancel() in one must
# interrupt its own task and never the other database's task of that id.
# taskq.interrupt_grace is long here: only the real interrupt can end a
# handler within the test, not the launcher's termination.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use TaskqTest;
use Test::More;

my $node = taskq_node('cancel_databases', <<'EOC');
taskq.databases = 'a, b'
taskq.workers = 1
taskq.poll_interval = '200ms'
taskq.interrupt_grace = '1h'
EOC

for my $db (qw(a b))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, <<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE ctl (hold boolean NOT NULL);
INSERT INTO ctl VALUES (true);
CREATE FUNCTION public.gate(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    WHILE (SELECT hold FROM ctl) LOOP PERFORM pg_sleep(0.02); END LOOP;
    RETURN '{"done": true}';
END $$;
SELECT taskq.register_handler('gate', 'public.gate(jsonb)', max_attempts => 1);
EOS
}

my %id;
for my $db (qw(a b))
{
	$id{$db} = $node->safe_psql($db, q{SELECT taskq.enqueue('gate')});
	ok( $node->poll_query_until(
			$db, qq{SELECT count(*) = 1 FROM taskq.workers
                    WHERE database = '$db' AND current_task = $id{$db}}),
		"the task of database $db runs");
}
is($id{a}, $id{b}, 'both databases run a task with the same id');

is($node->safe_psql('b', "SELECT taskq.cancel($id{b})"), 't', 'cancel() in database b');
ok( $node->poll_query_until(
		'b', q{SELECT count(*) = 0 FROM taskq.workers WHERE database = 'b' AND current_task IS NOT NULL}),
	"database b's handler is interrupted");
is($node->safe_psql('b', "SELECT status FROM taskq.tasks WHERE id = $id{b}"),
	'cancelled', "database b's task is cancelled");

is( $node->safe_psql('a', q{SELECT count(*) FROM taskq.workers WHERE database = 'a' AND current_task IS NOT NULL}),
	'1', "database a's handler still runs");
$node->safe_psql('a', 'UPDATE ctl SET hold = false');
ok(wait_task_status($node, $id{a}, 'completed', 'a'), "database a's task completes");
is( $node->safe_psql('a', "SELECT attempts, last_error IS NULL FROM taskq.tasks WHERE id = $id{a}"),
	'1|t', 'on its first attempt, never interrupted');

$node->stop;
done_testing();
