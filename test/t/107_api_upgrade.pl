# The 0.1 -> 0.2 update of the SQL API's objects on a populated database:
# deduplication becomes per enqueuing role (tasks_dedupe_idx gains the
# owner), and the live tasks that 0.1 left behind for handlers no longer
# registered are cancelled, so that a new registration of the name never
# receives them.  Between the new library's installation and ALTER
# EXTENSION UPDATE, enqueue() with a dedupe_key keeps working on the 0.1
# objects.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

# taskq.enabled = off: nothing dispatches, so every task keeps its status
my $node = taskq_node('api_upgrade', "taskq.enabled = off\n");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(<<'EOS');
CREATE EXTENSION taskq VERSION '0.1';
CREATE ROLE alice;
CREATE ROLE bob;
CREATE FUNCTION public.h(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p $$;
SELECT taskq.register_handler('h', 'public.h');
SELECT taskq.register_handler('gone', 'public.h');
EOS
is(sql(q{SELECT extversion FROM pg_extension WHERE extname = 'taskq'}), '0.1',
	'the database is at 0.1');

# enqueue with a dedupe_key on the 0.1 objects: still deduplicates
my $bobs = sql(q{SET ROLE bob; SELECT taskq.enqueue('h', '{"by": "bob"}', dedupe_key => 'k')});
is( sql(q{SET ROLE bob; SELECT taskq.enqueue('h', '{"by": "bob", "n": 2}', dedupe_key => 'k')}),
	$bobs, 'before the update: a second enqueue of the key returns the live task');

# a task that 0.1 left queued for a handler it then removed
my $orphan = sql(q{SELECT taskq.enqueue('gone', '{"orphan": true}')});
sql(q{DELETE FROM taskq.handlers WHERE name = 'gone'});

sql(q{ALTER EXTENSION taskq UPDATE TO '0.2'});
is(sql(q{SELECT extversion FROM pg_extension WHERE extname = 'taskq'}), '0.2',
	'the database is at 0.2');
like(
	sql(q{SELECT pg_get_indexdef('taskq.tasks_dedupe_idx'::regclass)}),
	qr/^CREATE UNIQUE INDEX tasks_dedupe_idx ON taskq\.tasks USING btree \(handler, dedupe_key, owner\) WHERE/,
	'tasks_dedupe_idx is on (handler, dedupe_key, owner)');
is( sql("SELECT status, last_error, finished_at IS NOT NULL FROM taskq.tasks WHERE id = $orphan"),
	'cancelled|handler "gone" was unregistered|t',
	'the live task of a handler no longer registered is cancelled');
is(sql("SELECT status, owner FROM taskq.tasks WHERE id = $bobs"),
	'queued|bob', 'the other tasks are kept as they were');

# after the update the key is each role's own
my $alices = sql(q{SET ROLE alice; SELECT taskq.enqueue('h', '{"by": "alice"}', dedupe_key => 'k')});
isnt($alices, $bobs, 'after the update: alice\'s enqueue of bob\'s key writes her own task');
is( sql(q{SET ROLE alice; SELECT taskq.enqueue('h', '{"by": "alice", "n": 2}', dedupe_key => 'k')}),
	$alices, 'and her second one deduplicates into hers');
is( sql(
		q{SELECT string_agg(owner::text || ':' || status, ',' ORDER BY id)
          FROM taskq.tasks WHERE dedupe_key = 'k'}),
	'bob:queued,alice:queued', 'one live task per role holds the key');

# the name is free: a new registration does not get the orphan
sql(q{SELECT taskq.register_handler('gone', 'gone_channel', kind => 'notify')});
is( sql(
		q{SELECT count(*) FROM taskq.tasks
          WHERE handler = 'gone' AND status IN ('queued', 'running', 'dispatched')}),
	'0', 'a new registration of the name has no live task waiting for it');

$node->stop;
done_testing();
