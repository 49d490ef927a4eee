# A handler function redefined under a registered handler: DROP + CREATE
# with another return type (int, text, void, record, jsonb), CREATE OR
# REPLACE with another body, language and volatility, and a function that
# disappears or takes another argument type.  Each dispatcher and each
# sync-mode session keeps a prepared call per target; after every change
# the result must be the new function's, stored as valid jsonb, and the
# server must not crash-restart.  The function belongs to an unprivileged
# role: any owner of a handler function can redefine it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('redefine', <<'EOC');
# one dispatcher: every task runs in the same session, with its plan cache
taskq.workers = 1
taskq.poll_interval = '200ms'
taskq.retry_backoff = '50ms'
EOC

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub as_alice
{
	return $node->safe_psql('postgres', $_[0], extra_params => [ '-U', 'alice' ]);
}

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE ROLE alice LOGIN;
CREATE SCHEMA app AUTHORIZATION alice;
EOS
as_alice(q{CREATE FUNCTION app.h(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"v": "first"}'::jsonb $$});
sql(q{SELECT taskq.register_handler('h', 'app.h(jsonb)', max_attempts => 1)});

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM taskq.workers WHERE type = 'dispatcher'}),
	'the dispatcher runs');
my $started = sql('SELECT pg_postmaster_start_time()');

# Enqueue as alice (mode async or sync), wait until the task has ended and
# return "status|result::text|last_error".
sub run_task
{
	my ($mode) = @_;
	my $id = as_alice(qq{SELECT taskq.enqueue('h', '{}', mode => '$mode')});
	$node->poll_query_until('postgres',
		"SELECT status::text NOT IN ('queued', 'running') FROM taskq.tasks WHERE id = $id")
	  or diag "task $id did not end";
	return sql(
		"SELECT status || '|' || coalesce(result::text, '<null>') || '|' || coalesce(last_error, '')
         FROM taskq.tasks WHERE id = $id");
}

# the server has not crash-restarted since the test began
sub no_restart
{
	my ($what) = @_;
	my ($ret, $out) = $node->psql('postgres', 'SELECT pg_postmaster_start_time()');
	is($out, $started, "$what: the server did not restart");
	return;
}

is(run_task('async'), 'completed|{"v": "first"}|', 'the first definition runs (plan cached)');

# A sync-mode session that keeps its prepared call across the changes.
my $bg = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
sub run_sync
{
	my $id = $bg->query_safe(q{SELECT taskq.enqueue('h', '{}', mode => 'sync')});
	return sql(
		"SELECT status || '|' || coalesce(result::text, '<null>') || '|' || coalesce(last_error, '')
         FROM taskq.tasks WHERE id = $id");
}
is(run_sync(), 'completed|{"v": "first"}|', 'sync: the first definition runs (plan cached)');

# Each return type in turn, by DROP + CREATE (a new function oid under the
# same registered name), with the result it must store.
my @defs = (
	[ 'int',   'integer LANGUAGE sql AS $$ SELECT 42 $$',                    '42' ],
	[ 'text',  q{text LANGUAGE sql AS $$ SELECT 'hello'::text $$},           '"hello"' ],
	[ 'void',  'void LANGUAGE plpgsql AS $$ BEGIN END $$',                   '<null>' ],
	[ 'record', q{record LANGUAGE sql AS $$ SELECT 7 AS n, 'x'::text AS s $$}, '{"n": 7, "s": "x"}' ],
	[ 'jsonb', q{jsonb LANGUAGE plpgsql AS $$ BEGIN RETURN '{"v": "last"}'; END $$}, '{"v": "last"}' ],
	[ 'int again', 'integer LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$', '<null>' ],
	[ 'jsonb again', q{jsonb LANGUAGE sql AS $$ SELECT '[1, 2]'::jsonb $$},  '[1, 2]' ],
);
for my $d (@defs)
{
	my ($name, $def, $want) = @$d;
	as_alice("DROP FUNCTION app.h(jsonb); CREATE FUNCTION app.h(p jsonb) RETURNS $def");
	is(run_task('async'), "completed|$want|", "returns $name after DROP + CREATE: the new result is stored");
	no_restart("returns $name (dispatcher)");
	is(run_sync(), "completed|$want|", "sync: returns $name after DROP + CREATE");
	no_restart("returns $name (sync)");
}

# CREATE OR REPLACE keeps the oid and return type but may change the body,
# the language and the volatility.
as_alice(q{CREATE OR REPLACE FUNCTION app.h(p jsonb) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN '{"v": "replaced"}'; END $$});
is(run_task('async'), 'completed|{"v": "replaced"}|', 'CREATE OR REPLACE (language, volatility): the new body runs');
is(run_sync(), 'completed|{"v": "replaced"}|', 'sync: CREATE OR REPLACE: the new body runs');
as_alice(q{CREATE OR REPLACE FUNCTION app.h(p jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$ SELECT '{"v": "sql again"}'::jsonb $$});
is(run_task('async'), 'completed|{"v": "sql again"}|', 'CREATE OR REPLACE (back to sql): the new body runs');
is(run_sync(), 'completed|{"v": "sql again"}|', 'sync: CREATE OR REPLACE (back to sql): the new body runs');

# The function takes another argument type: the attempt fails cleanly.
as_alice(q{DROP FUNCTION app.h(jsonb); CREATE FUNCTION app.h(p text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"v": "text arg"}'::jsonb $$});
like(run_task('async'), qr/^failed\|<null>\|handler function app\.h\(jsonb\) does not exist$/,
	'the function takes text now: the attempt fails, naming the function');
no_restart('argument type changed');
{
	my ($ret, $out, $err) = $node->psql('postgres', q{SELECT taskq.enqueue('h', '{}', mode => 'sync')});
	like($err, qr/handler function app\.h\(jsonb\) does not exist/, 'sync: the argument type changed: a clear error');
}

# The function disappears, then comes back.
as_alice('DROP FUNCTION app.h(text)');
like(run_task('async'), qr/^failed\|<null>\|handler function app\.h\(jsonb\) does not exist$/,
	'the function is gone: the attempt fails, naming the function');
as_alice(q{CREATE FUNCTION app.h(p jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'back' $$});
is(run_task('async'), 'completed|"back"|', 'the function is back: it runs');
is(run_sync(), 'completed|"back"|', 'sync: the function is back: it runs');
no_restart('function dropped and created again');

# Every stored result is valid jsonb: the table reads and dumps.
is(sql(q{SELECT count(*) FROM (SELECT result::text FROM taskq.tasks) r}),
	sql('SELECT count(*) FROM taskq.tasks'), 'every stored result reads as jsonb');
$node->command_ok(
	[ 'pg_dump', '-d', $node->connstr('postgres'), '-t', 'taskq.tasks', '-f', '/dev/null' ],
	'pg_dump of taskq.tasks succeeds');

$bg->quit;
$node->stop;
done_testing();
