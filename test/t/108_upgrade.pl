# Upgrade from the released 0.1: a server running taskq 0.1 (built from
# git history by test/run, in its own PostgreSQL installation) leaves
# tasks in every state; the 0.2 package is installed over it and the
# server restarted.  Until ALTER EXTENSION taskq UPDATE the dispatchers
# wait (one log line) and the API refuses with a hint; the update keeps
# every task, takes over schema taskq, and dispatch carries on from where
# 0.1 left it.  An updated database has exactly the objects of a fresh
# 0.2 install.
#
# Later versions extend this test with their own objects: add them to the
# 0.1 fixture if 0.1 had them, and to what the updated database must do.
use strict;
use warnings;
use File::Copy qw(copy);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use TaskqTest;
use Test::More;

my ($oldpg, $newfiles) = @ENV{qw(TASKQ_UPGRADE_PG TASKQ_UPGRADE_NEW)};
unless ($oldpg && $newfiles && -x "$oldpg/bin/postgres")
{
	# test/run prepares both; a run without them must not look green
	fail('test/run prepared a taskq 0.1 installation (TASKQ_UPGRADE_PG)');
	done_testing();
	exit;
}

my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => $oldpg);
$node->init;
$node->append_conf('postgresql.conf', <<'EOC');
shared_preload_libraries = 'taskq'
taskq.databases = 'postgres'
max_worker_processes = 16
taskq.workers = 2
taskq.poll_interval = '200ms'
taskq.ack_timeout = '1h'
taskq.retry_backoff = '10ms'
# for the logical kind, which 0.2 adds
wal_level = logical
EOC
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

# ---------------------------------------------------------------------
# taskq 0.1 at work: tasks in every state.
# ---------------------------------------------------------------------
is(sql(q{CREATE EXTENSION taskq; SELECT extversion FROM pg_extension WHERE extname = 'taskq'}),
	'0.1', 'the old installation creates taskq 0.1');
sql(<<'EOS');
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE TABLE ctl (hold boolean NOT NULL);          -- the slow handler waits while true
INSERT INTO ctl VALUES (true);
CREATE TABLE ledger (id bigint PRIMARY KEY, by_role name NOT NULL);
GRANT SELECT ON ctl TO alice;
GRANT INSERT, SELECT ON ledger TO alice, bob;
CREATE FUNCTION public.book(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger VALUES ((p->>'n')::bigint, current_user);
    RETURN jsonb_build_object('booked', p->'n');
END $$;
CREATE FUNCTION public.slow(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    WHILE (SELECT hold FROM ctl) LOOP PERFORM pg_sleep(0.02); END LOOP;
    RETURN public.book(p);
END $$;
CREATE FUNCTION public.bad(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'bad task %', p->>'n'; END $$;
SELECT taskq.register_handler('book', 'public.book(jsonb)');
SELECT taskq.register_handler('slow', 'public.slow(jsonb)', queue => 'slow');
SELECT taskq.register_handler('bad', 'public.bad(jsonb)', max_attempts => 1);
SELECT taskq.register_handler('note', 'upgrade_channel', kind => 'notify');
SELECT taskq.pause('held');
SELECT taskq.register_handler('gone', 'public.book(jsonb)');
EOS

my $enq = q{SET ROLE alice;
  SELECT count(*) FROM taskq.enqueue_many('book',
    ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(%d, %d) g)%s)};
sql(sprintf($enq, 1, 20, ''));                                   # completed
sql(sprintf($enq, 101, 130, ", queue => 'held'"));               # queued
sql(q{SET ROLE alice; SELECT taskq.enqueue('book', '{"n": 200}', queue => 'held', dedupe_key => 'k200')});
sql(q{SET ROLE alice; SELECT taskq.enqueue('bad', '{"n": 300}')});        # failed
sql(q{SET ROLE alice; SELECT taskq.enqueue('note', '{"n": 400}') FROM generate_series(1, 3)}); # dispatched
sql(q{SET ROLE alice; SELECT taskq.enqueue('slow', '{"n": 500}')});       # running
sql(q{SET ROLE alice; SELECT taskq.cancel(taskq.enqueue('book', '{"n": 600}', queue => 'held'))}); # cancelled
# 0.1 left the live tasks of an unregistered handler queued
sql(q{SET ROLE alice; SELECT taskq.enqueue('gone', '{"n": 900}', queue => 'held')});
sql(q{SELECT taskq.unregister_handler('gone')});

ok( $node->poll_query_until(
		'postgres', q{
    SELECT count(*) FILTER (WHERE status = 'completed') = 20
       AND count(*) FILTER (WHERE status = 'failed') = 1
       AND count(*) FILTER (WHERE status = 'dispatched') = 3
       AND count(*) FILTER (WHERE status = 'running') = 1
    FROM taskq.tasks}),
	'0.1 completed, failed, dispatched and is running tasks');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND backend_type = 'taskq dispatcher'}),
	'the slow handler is inside its loop');

# 0.1 installed into a schema taskq that another role had made
$node->safe_psql('postgres', q{CREATE DATABASE premade; CREATE ROLE mallory});
$node->safe_psql('premade', q{CREATE SCHEMA taskq AUTHORIZATION mallory; CREATE EXTENSION taskq});
is($node->safe_psql('premade', q{SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'taskq'}),
	'mallory', '0.1 installs into a schema taskq made beforehand by another role');

my $rows = q{SELECT id, status, handler, queue, owner, attempts, payload, result, last_error IS NOT NULL
             FROM taskq.tasks ORDER BY id};
my $before = sql($rows);
# status => number of tasks
sub counts { return map { split /\|/ } split /\n/, sql(q{SELECT status, count(*) FROM taskq.tasks GROUP BY 1}); }
my %count_before = counts();
note 'before the upgrade: ' . join(', ', map { "$_ $count_before{$_}" } sort keys %count_before);

# ---------------------------------------------------------------------
# The 0.2 package over it, and a restart.
# ---------------------------------------------------------------------
$node->stop;
my $pkglib = $node->config_data('--pkglibdir');
my $share  = $node->config_data('--sharedir');
copy("$newfiles/lib/taskq.so", "$pkglib/taskq.so") or die "copy taskq.so: $!";
for my $f (glob "$newfiles/extension/*")
{
	copy($f, "$share/extension/") or die "copy $f: $!";
}
# The postmaster logs each dispatcher start at DEBUG1: the launcher's
# retries of the waiting dispatchers are counted in the log below.
$node->append_conf('postgresql.conf', "log_min_messages = debug1\n");
my $log_offset = -s $node->logfile;
$node->start;

ok( $node->wait_for_log(
		qr/extension taskq in database "postgres" is at version 0\.1, but the installed library serves version 0\.2; its dispatchers wait/,
		$log_offset),
	'the 0.2 library logs that the database is still at 0.1');
is(sql($rows), $before, 'before the update no task has changed');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT taskq.enqueue('book', '{"n": 700}')});
isnt($ret, 0, 'enqueue() before the update fails');
like($err, qr/taskq's SQL objects in this database are at version 0\.1, but the loaded library is 0\.2/,
	'naming both versions');
like($err, qr/HINT:  Run ALTER EXTENSION taskq UPDATE/, 'with the command to run');
# The launcher starts the waiting dispatchers again every 10 s: wait for
# the log to show dispatcher 0 of database postgres started three times
# (the first start and two retries, each of which found the version wrong
# again), then the line must still be there only once.
my $postgres_oid = sql(q{SELECT oid FROM pg_database WHERE datname = 'postgres'});
my $start_line =
  qr/starting background worker process "taskq dispatcher default\/0 for database $postgres_oid"/;
$node->wait_for_log(qr/(?s:.*?$start_line){3}/, $log_offset);
my $since_start = substr(slurp_file($node->logfile), $log_offset);
my $starts = () = $since_start =~ /$start_line/g;
ok($starts >= 3, "the launcher retried the waiting dispatcher at least twice ($starts starts)");
is( () = $since_start =~ /is at version 0\.1, but the installed library/g,
	1, 'the line is logged once, over two retries');
$node->append_conf('postgresql.conf', "log_min_messages = warning\n");
$node->reload;

# ---------------------------------------------------------------------
# ALTER EXTENSION taskq UPDATE.
# ---------------------------------------------------------------------
sql('ALTER EXTENSION taskq UPDATE');
my ($pre_ret, $pre_out, $pre_err) = $node->psql('premade', 'ALTER EXTENSION taskq UPDATE');
is($pre_ret, 0, 'the update of a database whose schema taskq another role made succeeds');
like($pre_err, qr/schema taskq was owned by role mallory; it now belongs to the extension's owner/,
	'saying whose the schema was');
is($node->safe_psql('premade', q{SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'taskq'}),
	(sql(q{SELECT extowner::regrole FROM pg_extension WHERE extname = 'taskq'})),
	'and the schema now belongs to the extension\'s owner');
is( sql(q{SELECT extversion || ' ' || extnamespace::regnamespace FROM pg_extension WHERE extname = 'taskq'}),
	'0.2 pg_catalog', 'the database is at 0.2, the extension recorded in pg_catalog');
is( sql(q{SELECT count(*) FROM pg_depend
          WHERE classid = 'pg_namespace'::regclass AND objid = 'taskq'::regnamespace
            AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'taskq') AND deptype = 'e'}),
	'1', 'schema taskq is now a member of the extension');
my %count_after = counts();
my %expected = %count_before;
$expected{queued}--;       # the unregistered handler's task ...
$expected{cancelled}++;    # ... is ended by the update
is_deeply(\%count_after, \%expected,
	'the update kept every task in its state, but for the live task of a handler 0.1 unregistered');
is( sql(q{SELECT status || ' ' || last_error FROM taskq.tasks WHERE handler = 'gone'}),
	'cancelled handler "gone" was unregistered',
	'which is cancelled, so that a new registration of the name cannot receive it');
like(
	sql(q{SELECT pg_get_indexdef('taskq.tasks_dedupe_idx'::regclass)}),
	qr/^CREATE UNIQUE INDEX tasks_dedupe_idx ON taskq\.tasks USING btree \(handler, dedupe_key, owner\) WHERE/,
	'deduplication is per enqueuing role: tasks_dedupe_idx is on (handler, dedupe_key, owner)');
is( sql(q{SELECT pg_get_indexdef('taskq.tasks_queue_idx'::regclass)}),
	q{CREATE INDEX tasks_queue_idx ON taskq.tasks USING btree (queue, group_key, priority DESC, run_at, id) WHERE ((status = 'queued'::taskq.status) AND (NOT external))},
	'claims read one queue and group at a time: tasks_queue_idx is on (queue, group_key, priority DESC, run_at, id) of queued tasks');
is( sql(q{SELECT pg_get_indexdef('taskq.tasks_scheduled_idx'::regclass)}),
	q{CREATE INDEX tasks_scheduled_idx ON taskq.tasks USING btree (run_at) WHERE ((status = 'queued'::taskq.status) AND (run_at > enqueued_at))},
	'tasks_scheduled_idx holds the delayed tasks only');
is(sql(q{SELECT to_regclass('taskq.tasks_group_idx') IS NULL}), 't', 'no separate index of group keys');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE external}), 0,
	'the tasks of 0.1 are not external (0.1 had no external kind)');
is(sql(q{SELECT to_regclass('taskq.tasks_due_idx') IS NULL}), 't', 'and 0.1\'s tasks_due_idx is gone');
my $alices = sql(q{SELECT id FROM taskq.tasks WHERE dedupe_key = 'k200'});
my $bobs = sql(q{SET ROLE bob; SELECT taskq.enqueue('book', '{"n": 201}', queue => 'held', dedupe_key => 'k200')});
isnt($bobs, $alices, 'bob\'s enqueue of the key alice took under 0.1 writes his own task');
is(sql(q{SET ROLE alice; SELECT taskq.enqueue('book', '{"n": 202}', queue => 'held', dedupe_key => 'k200')}),
	$alices, 'alice\'s enqueue of her 0.1 key still returns her 0.1 task');

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM taskq.workers WHERE type = 'dispatcher'}),
	'the dispatchers start once the update commits');
is(sql(q{SELECT string_agg(DISTINCT coalesce(executor, '-'), ',') FROM taskq.workers WHERE type = 'dispatcher'}),
	'default', 'the updated taskq.workers names each dispatcher\'s executor');

# the 0.1 orphan (its dispatcher stopped with the old server) runs again
sql('UPDATE ctl SET hold = false');
ok( $node->poll_query_until(
		'postgres', q{SELECT status = 'completed' FROM taskq.tasks WHERE payload->>'n' = '500'}),
	'the task 0.1 was running completes');
sql(q{SELECT taskq.resume('held')});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 32 FROM taskq.tasks WHERE queue = 'held' AND status = 'completed'}),
	'the tasks 0.1 queued complete, and bob\'s');
is(sql(q{SELECT count(DISTINCT id) || ' ' || min(by_role) || ' ' || max(by_role) FROM ledger WHERE id BETWEEN 101 AND 200}),
	'31 alice alice', 'each ran once, as the role that enqueued it under 0.1');
is( sql(q{SET ROLE alice; SELECT cardinality(taskq.ack_many(ARRAY(SELECT id FROM taskq.tasks WHERE status = 'dispatched')))}),
	'3', 'the notify tasks 0.1 dispatched are acknowledged under 0.2');
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE payload->>'n' = '400' AND status = 'completed'}),
	'3', 'and completed');
is(sql(q{SELECT string_agg(result->>'booked', ',' ORDER BY id) FROM taskq.tasks WHERE handler = 'book' AND id <= 20}),
	join(',', 1 .. 20), 'the results 0.1 stored are intact');
is(sql(q{SELECT status || ' ' || (last_error LIKE '%bad task 300%') FROM taskq.tasks WHERE handler = 'bad'}),
	'failed true', 'the task 0.1 failed is kept with its error');
is(sql(q{SELECT taskq.retry(id) FROM taskq.tasks WHERE handler = 'bad'}), 't', 'and can be retried');
ok( $node->poll_query_until(
		'postgres', q{SELECT status = 'failed' AND attempts = 1 FROM taskq.tasks WHERE handler = 'bad'}),
	'the retried task ran again under 0.2');
is(sql(q{SELECT status FROM taskq.tasks WHERE payload->>'n' = '600'}), 'cancelled', 'the cancelled task stays cancelled');
is(sql(q{SET ROLE alice; SELECT count(*) FROM (SELECT taskq.enqueue('book', '{"n": 800}')) t}),
	'1', 'enqueue() works after the update');
ok(wait_task_status($node, sql(q{SELECT max(id) FROM taskq.tasks}), 'completed'), 'and its task completes');

# The logical kind, which the update's CHECK constraint on taskq.handlers
# admits: registered, then enqueued by an application role as a logical
# message with an id from the outbox's sequence, and no row.
sql(q{SELECT 1 FROM pg_create_logical_replication_slot('upgrade_slot', 'test_decoding')});
sql(q{SELECT taskq.register_handler('kafka', 'taskq.upgraded', kind => 'logical')});
is(sql(q{SELECT kind || ' ' || target FROM taskq.handlers WHERE name = 'kafka'}),
	'logical taskq.upgraded', 'a logical handler can be registered after the update');
my $logical_id = sql(q{SET ROLE alice; SELECT taskq.enqueue('kafka', '{"n": 900}')});
cmp_ok($logical_id, '>', sql(q{SELECT max(id) FROM taskq.tasks}), 'its task id comes from taskq.tasks_id_seq');
is(sql("SELECT count(*) FROM taskq.tasks WHERE id = $logical_id"), '0', 'its task writes no row');
like(
	sql(q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('upgrade_slot', NULL, NULL)
          WHERE data LIKE 'message:%'}),
	qr/^message: transactional: 1 prefix: taskq\.upgraded, sz: \d+ content:\{"id": $logical_id, "handler": "kafka", .*"payload": \{"n": 900\}.*"owner": "alice"\}$/,
	'it reaches a logical-decoding client as a transactional message');
sql(q{SELECT pg_drop_replication_slot('upgrade_slot')});
# queue limits and group keys (issue 9) on the updated database
is( sql(q{SELECT count(*) > 50 AND bool_and(group_key IS NULL) FROM taskq.tasks}),
	't', 'the tasks of 0.1 have group_key NULL');
is( sql(q{SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
          WHERE attrelid = 'taskq.queues'::regclass AND attnum > 0 AND NOT attisdropped
            AND attname IN ('concurrency', 'group_concurrency', 'rate_limit', 'group_rate_limit', 'aging')}),
	'concurrency,group_concurrency,rate_limit,group_rate_limit,aging',
	'taskq.queues has the limit columns');
sql(q{SELECT taskq.set_queue('held', concurrency => 1, rate_limit => '50/1s')});
is( sql(q{SELECT concurrency || ' ' || rate_limit || ' ' || paused FROM taskq.queues WHERE name = 'held'}),
	'1 50/1s false', 'set_queue() sets the limits of a queue that 0.1 paused and 0.2 resumed');
my $grouped = sql(q{SET ROLE alice; SELECT taskq.enqueue('book', '{"n": 900}', queue => 'held', group_key => 'tenant-9')});
ok(wait_task_status($node, $grouped, 'completed'), 'a task with a group_key in the limited queue completes');
is(sql(qq{SELECT group_key FROM taskq.tasks WHERE id = $grouped}), 'tenant-9', 'with its group_key stored');
like(sql(qq{SELECT taskq.explain($grouped)}), qr/^task $grouped ended with status completed at /,
	'and explain() says so');
# dependencies (0.2): the status 'waiting' exists, and a task enqueued
# after another waits for it and is released by its completion
is(sql(q{SELECT count(*) FROM pg_enum WHERE enumtypid = 'taskq.status'::regtype AND enumlabel = 'waiting'}),
	'1', 'the update adds the status waiting');
sql(q{SELECT taskq.pause('deps_held')});
my $dep_parent = sql(q{SET ROLE alice; SELECT taskq.enqueue('book', '{"n": 910}', queue => 'deps_held')});
my $dep_child = sql(qq{SET ROLE alice; SELECT taskq.enqueue('book', '{"n": 911}', after => ARRAY[$dep_parent])});
is(sql("SELECT status FROM taskq.tasks WHERE id = $dep_child"), 'waiting',
	'a task enqueued after a queued one waits');
is(sql("SELECT has_dependants FROM taskq.tasks WHERE id = $dep_parent"), 't',
	'and its parent is marked');
sql(q{SELECT taskq.resume('deps_held')});
ok(wait_task_status($node, $dep_child, 'completed'), 'the parent\'s completion releases it and it runs');
is(sql(q{SELECT count(*) FROM taskq.task_deps}), '0', 'no dependency is left');
# 0.2's recurring tasks: the update made taskq.schedules and its index,
# and a schedule made on the updated database fires, as its owner.
is( sql(q{SELECT count(*) FROM pg_class
          WHERE oid IN ('taskq.schedules'::regclass, 'taskq.schedules_due_idx'::regclass)}),
	'2', 'the update created taskq.schedules and its index');
sql(q{SET ROLE alice; SELECT taskq.schedule('upgraded_tick', '1 second', 'note')});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) >= 2 FROM taskq.tasks
          WHERE metadata->>'schedule' = 'upgraded_tick' AND owner = 'alice'::regrole
            AND metadata ? 'scheduled_for'}),
	'a schedule made on the updated database fires, as its owner');
is( sql(q{SELECT last_task_id IS NOT NULL AND next_run_at > last_run_at
          FROM taskq.schedules WHERE name = 'upgraded_tick'}),
	't', 'and advances');
is(sql(q{SET ROLE alice; SELECT taskq.unschedule('upgraded_tick')}), 't', 'and can be unscheduled');
# external handlers (new in 0.2): registered without a target, their
# tasks left to external workers, claimed with a lease and acked
sql(q{SELECT taskq.register_handler('ext_up', NULL, kind => 'external', queue => 'ext_up')});
my $ext = sql(q{SELECT taskq.enqueue('ext_up', '{"n": 900}')});
# dispatchers had their chance: a function task of the same queue,
# enqueued after it, has been claimed and completed
my $after_ext = sql(q{SET ROLE alice; SELECT taskq.enqueue('book', '{"n": 920}', queue => 'ext_up')});
ok(wait_task_status($node, $after_ext, 'completed'), 'a later task of the external queue was dispatched');
is(sql(qq{SELECT status FROM taskq.tasks WHERE id = $ext}), 'queued', 'dispatchers leave an external task to workers');
is(sql(q{SELECT id || ' ' || attempt || ' ' || (lease_until > now()) FROM taskq.claim('ext_up', 10, '1 minute')}),
	"$ext 1 true", 'an external task is claimed after the update');
is(sql(qq{SELECT taskq.ack($ext)}), 't', 'and acknowledged');
is(sql(q{SELECT taskq.unregister_handler('ext_up')}), 't', 'the external handler unregisters');

# ---------------------------------------------------------------------
# Updated = fresh: the same objects, definitions, privileges, comments.
# ---------------------------------------------------------------------
my $describe = <<'EOS';
WITH ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'taskq'),
members AS (
    SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS obj, d.classid, d.objid
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass
      AND d.refobjid = ext.oid AND d.deptype = 'e')
SELECT 'member ' || obj || ' ' || coalesce(obj_description(objid, classid::regclass::name), '-')
FROM members
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '-')
FROM pg_proc p WHERE p.pronamespace = 'taskq'::regnamespace AND p.prokind <> 'a'
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '-')
       || ' ' || coalesce(c.reloptions::text, '-') || ' rls ' || c.relrowsecurity
       || coalesce(' view ' || pg_get_viewdef(c.oid), '')
FROM pg_class c WHERE c.relnamespace = 'taskq'::regnamespace
UNION ALL
SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE c.relnamespace = 'taskq'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relnamespace = 'taskq'::regnamespace
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'taskq'::regnamespace
UNION ALL
SELECT 'policy ' || polname || ' ' || polcmd::text || ' ' || pg_get_expr(polqual, polrelid) FROM pg_policy
WHERE polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'taskq'::regnamespace)
UNION ALL
SELECT 'enum ' || enumtypid::regtype || ' ' || string_agg(enumlabel, ',' ORDER BY enumsortorder)
FROM pg_enum WHERE enumtypid IN (SELECT oid FROM pg_type WHERE typnamespace = 'taskq'::regnamespace)
GROUP BY enumtypid
UNION ALL
SELECT 'config ' || string_agg(c::regclass::text, ',' ORDER BY c::regclass::text) FROM ext, unnest(extconfig) c
UNION ALL
SELECT 'schema ' || nspname || ' ' || nspowner::regrole || ' ' || coalesce(nspacl::text, '-')
FROM pg_namespace WHERE nspname = 'taskq'
ORDER BY 1
EOS
sql('CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION taskq');
my $updated = sql($describe);
my $fresh   = $node->safe_psql('fresh', $describe);
cmp_ok(length($updated), '>', 10000, 'the description of taskq covers its objects');
is($updated, $fresh, 'an updated database has exactly the objects of a fresh 0.2 install');

# ---------------------------------------------------------------------
# The schema belongs to the extension.
# ---------------------------------------------------------------------
$node->safe_psql('fresh', 'DROP EXTENSION taskq');
is($node->safe_psql('fresh', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'taskq'}),
	'0', 'DROP EXTENSION removes schema taskq');
$node->safe_psql('fresh', 'CREATE SCHEMA taskq AUTHORIZATION mallory');
($ret, $out, $err) = $node->psql('fresh', 'CREATE EXTENSION taskq');
isnt($ret, 0, 'CREATE EXTENSION fails when someone else made a schema taskq');
like($err, qr/schema "taskq" already exists/, 'saying the schema exists');
is($node->safe_psql('fresh', q{SELECT count(*) FROM pg_extension WHERE extname = 'taskq'}),
	'0', 'and installs nothing into that schema');

sql('DROP EXTENSION taskq');
is(sql(q{SELECT count(*) FROM pg_namespace WHERE nspname = 'taskq'}),
	'0', 'on the updated database too, DROP EXTENSION removes the schema 0.1 made');

$node->stop;
done_testing();
