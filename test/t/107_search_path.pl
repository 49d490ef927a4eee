# search_path: nobody's search_path reaches taskq's own statements.
#
# A database owner who is not a superuser sets the database's search_path
# to a schema of hers with a hostile "=" for bigint, whose function makes
# her a superuser whenever a superuser runs it.  The dispatchers' own
# statements (lease expiry, task expiry, retention) must not run it; nor
# may the API's statements, which run as the table owner, run the
# look-alikes of a role that puts them first in its session's search_path.
# Handlers see the database's search_path (or their function's own SET
# clause), and what a handler sets does not outlive it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('search_path', <<'EOC');
taskq.databases = 'app'
taskq.workers = 1
taskq.poll_interval = '200ms'
taskq.ack_timeout = '1s'
EOC

# The test's own sessions never use the database's hostile search_path:
# each one sets a safe one when it connects (the dispatchers are not
# affected: they are no client of ours).
$ENV{PGOPTIONS} = '-c search_path=pg_catalog,public';

sub sql_in { my ($db, $q, $role) = @_;
	return $node->safe_psql($db, $q, extra_params => [ '-U', $role // 'postgres' ]); }
sub sql { return sql_in('app', $_[0]); }

sql_in('postgres', <<'EOS');
CREATE ROLE mallory LOGIN;
CREATE ROLE alice LOGIN;
CREATE DATABASE app OWNER mallory;
EOS

# mallory, owner of app but no superuser, prepares her trap: an "=" for
# bigint that makes her a superuser when a superuser runs it, and records
# every call, then puts her schema first in the database's search_path.
sql_in('app', <<'EOS', 'mallory');
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE TABLE evil.calls (who name, su boolean, a bigint, b bigint);
GRANT INSERT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    su boolean;
BEGIN
    SELECT r.rolsuper INTO su FROM pg_catalog.pg_roles r
     WHERE r.rolname OPERATOR(pg_catalog.=) current_user;
    INSERT INTO evil.calls VALUES (current_user, su, a, b);
    IF su THEN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    END IF;
    RETURN a OPERATOR(pg_catalog.=) b;
END $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.eq);
ALTER DATABASE app SET search_path = evil, pg_catalog, public;
EOS
is(sql_in('app', q{SELECT count(*) FROM pg_operator WHERE oprnamespace = 'evil'::regnamespace}, 'mallory'),
	'1', 'mallory has her "=" for bigint');
# without PGOPTIONS, a session in app gets mallory's search_path
{
	local $ENV{PGOPTIONS} = '';
	is(sql_in('app', q{SELECT current_setting('search_path')}, 'alice'),
		'evil, pg_catalog, public', 'the database puts her schema first');
}

# The extension goes in after the trap is set: its dispatchers start now,
# with the database's search_path.
sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE TABLE public.seen (tag text, search_path text, cu name);
GRANT INSERT, SELECT ON public.seen TO PUBLIC;
-- reports the search_path it sees; sets another one if asked to
CREATE FUNCTION public.whereami(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.seen VALUES (p->>'tag', pg_catalog.current_setting('search_path'), current_user);
    IF p ? 'set' THEN
        PERFORM pg_catalog.set_config('search_path', p->>'set', false);
    END IF;
    IF p ? 'set_local' THEN
        PERFORM pg_catalog.set_config('search_path', p->>'set_local', true);
    END IF;
    IF p ? 'fail' THEN
        RAISE EXCEPTION 'failing after setting search_path';
    END IF;
END $$;
CREATE FUNCTION public.whereami_fixed(p jsonb) RETURNS void LANGUAGE plpgsql
SET search_path = public AS $$
BEGIN
    INSERT INTO public.seen VALUES (p->>'tag', pg_catalog.current_setting('search_path'), current_user);
END $$;
SELECT taskq.register_handler('whereami', 'public.whereami(jsonb)', max_attempts => 1);
SELECT taskq.register_handler('whereami_fixed', 'public.whereami_fixed(jsonb)');
SELECT taskq.register_handler('mail', 'mailbox', kind => 'notify', max_attempts => 1);
EOS
ok( $node->poll_query_until('app',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'taskq dispatcher' AND datname = 'app'}),
	'a dispatcher runs in app');
{
	local $ENV{PGOPTIONS} = '';
	is( sql(q{SELECT pg_catalog.current_setting('search_path')}),
		'evil, pg_catalog, public', 'and app sessions get mallory\'s search_path');
}

# After each path: mallory is no superuser, and her function never ran as
# a superuser or as the owner of taskq.tasks (then reset for the next).
sub trap_held
{
	my ($what) = @_;
	is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}), 'f',
		"$what: mallory did not become a superuser");
	is( sql(q{SELECT coalesce(string_agg(DISTINCT who || CASE WHEN su THEN ' (superuser)' ELSE '' END, ', '), '')
              FROM evil.calls
              WHERE su OR who = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'taskq.tasks'::regclass)}),
		'', "$what: her \"=\" never ran as a superuser or as the table owner");
	sql(q{ALTER ROLE mallory NOSUPERUSER; DELETE FROM evil.calls});
}

# ---------------------------------------------------------------------
# Lease expiry: a notify task whose ack does not come.
# ---------------------------------------------------------------------
my $mail = sql(q{SELECT taskq.enqueue('mail', '{"to": "x"}')});
ok(wait_task_status($node, $mail, 'failed', 'app'), "notify task $mail fails when its lease runs out");
like(sql("SELECT last_error FROM taskq.tasks WHERE id = $mail"), qr/no ack\(\) within taskq.ack_timeout/,
	'the lease expiry ended it');
trap_held('lease expiry');

# ---------------------------------------------------------------------
# Task expiry: a task of a paused queue whose expires_at passes.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.pause('held')});
my $held = sql(q{SELECT taskq.enqueue('whereami', '{"tag": "held"}', queue => 'held',
                                      expires_at => clock_timestamp() + interval '300 ms')});
ok(wait_task_status($node, $held, 'expired', 'app'), "task $held expires");
trap_held('task expiry');

# ---------------------------------------------------------------------
# Handlers see the database's search_path, or their function's own; what
# a handler sets (for the session, or locally, then failing or not) does
# not reach the next task.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.resume('held')});
my @ids;
push @ids, sql(q{SELECT taskq.enqueue('whereami', '{"tag": "first", "set": "public, pg_catalog"}', priority => 5)});
push @ids, sql(q{SELECT taskq.enqueue('whereami', '{"tag": "second", "set_local": "public", "fail": true}', priority => 4)});
push @ids, sql(q{SELECT taskq.enqueue('whereami', '{"tag": "third"}', priority => 3)});
push @ids, sql(q{SELECT taskq.enqueue('whereami_fixed', '{"tag": "fixed"}', priority => 2)});
ok(wait_task_status($node, $ids[3], 'completed', 'app'), 'the handlers ran');
# (the failing one's row was rolled back with it)
like(sql("SELECT status || ': ' || last_error FROM taskq.tasks WHERE id = $ids[1]"),
	qr/^failed: failing after setting search_path/, 'the second handler failed after its SET LOCAL');
is( sql(q{SELECT string_agg(tag || ': ' || search_path, '; ' ORDER BY tag) FROM public.seen}),
	'first: evil, pg_catalog, public; fixed: public; third: evil, pg_catalog, public',
	'each handler saw the database\'s search_path (or its function\'s), not what the one before set');
trap_held('handlers');

# ---------------------------------------------------------------------
# The API: alice calls it with look-alike operators first in her path.
# ---------------------------------------------------------------------
sql(<<'EOS');
CREATE SCHEMA alice_ops AUTHORIZATION alice;
GRANT USAGE ON SCHEMA alice_ops TO PUBLIC;
GRANT EXECUTE ON FUNCTION taskq.register_handler(text, text, text, text, int, int, interval, boolean, boolean),
                          taskq.unregister_handler(text), taskq.pause(text), taskq.resume(text) TO alice;
EOS
sql_in('app', <<'EOS', 'alice');
CREATE TABLE alice_ops.calls (who name, what text);
GRANT INSERT ON alice_ops.calls TO PUBLIC;
CREATE FUNCTION alice_ops.note(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alice_ops.calls VALUES (current_user, what);
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
        EXECUTE 'ALTER ROLE alice SUPERUSER';
    END IF;
END $$;
CREATE FUNCTION alice_ops.int8eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('bigint ='); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR alice_ops.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = alice_ops.int8eq);
CREATE FUNCTION alice_ops.int4eq(a int, b int) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('int ='); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR alice_ops.= (LEFTARG = int, RIGHTARG = int, FUNCTION = alice_ops.int4eq);
CREATE FUNCTION alice_ops.texteq(a text, b text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('text ='); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR alice_ops.= (LEFTARG = text, RIGHTARG = text, FUNCTION = alice_ops.texteq);
CREATE FUNCTION alice_ops.statuseq(a taskq.status, b taskq.status) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('status ='); RETURN a::text OPERATOR(pg_catalog.=) b::text; END $$;
CREATE OPERATOR alice_ops.= (LEFTARG = taskq.status, RIGHTARG = taskq.status, FUNCTION = alice_ops.statuseq);
CREATE FUNCTION alice_ops.tsle(a timestamptz, b timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('timestamptz <='); RETURN a OPERATOR(pg_catalog.<=) b; END $$;
CREATE OPERATOR alice_ops.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = alice_ops.tsle);
CREATE FUNCTION alice_ops.now() RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION alice_ops.coalesce_ts(timestamptz, timestamptz) RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('coalesce'); RETURN $1; END $$;
CREATE FUNCTION alice_ops.nextval(regclass) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM alice_ops.note('nextval'); RETURN pg_catalog.nextval($1); END $$;
EOS

# every API call that writes as the table owner, in one session of alice's
# with her schema first
my $api = sql_in('app', <<'EOS', 'alice');
SET search_path = alice_ops, pg_catalog, public;
CREATE FUNCTION alice_ops.h(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT taskq.register_handler('alice_h', 'alice_ops.h(jsonb)', queue => 'alice_q');
SELECT taskq.register_handler('alice_mail', 'alice_box', kind => 'notify', queue => 'alice_q');
SELECT taskq.pause('alice_q');
SELECT taskq.enqueue('alice_h', '{}', dedupe_key => 'k1') AS a \gset
SELECT taskq.enqueue('alice_h', '{}', dedupe_key => 'k1') = :a AS deduplicated;
SELECT taskq.enqueue('alice_h', '{}', mode => 'sync') AS s \gset
SELECT taskq.enqueue_many('alice_h', ARRAY['{}', '{}']::jsonb[]) IS NOT NULL;
SELECT taskq.cancel(:a);
SELECT taskq.retry(:a);
SELECT taskq.cancel(:a);
SELECT taskq.enqueue('alice_mail', '{}', mode => 'sync') AS m1 \gset
SELECT taskq.enqueue('alice_mail', '{}', mode => 'sync') AS m2 \gset
SELECT taskq.enqueue('alice_mail', '{}', mode => 'sync') AS m3 \gset
SELECT taskq.ack(:m1, '{"ok": true}');
SELECT taskq.ack_many(ARRAY[:m2]::bigint[]);
SELECT taskq.nack(:m3, 'no');
SELECT status FROM taskq.wait(:s, '0s');
SELECT taskq.resume('alice_q');
SELECT taskq.unregister_handler('alice_mail');
EOS
note "alice's API calls:\n$api";
is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'}), 'f', 'alice did not become a superuser');
is( sql(q{SELECT coalesce(string_agg(DISTINCT who || ' via ' || what, ', '), '') FROM alice_ops.calls WHERE who <> 'alice'}),
	'', 'none of her look-alikes ran as another role (the table owner)');
note 'her look-alikes ran as herself for: '
  . (sql(q{SELECT string_agg(DISTINCT what, ', ') FROM alice_ops.calls WHERE who = 'alice'}) || 'nothing');
trap_held('API');

# ---------------------------------------------------------------------
# Retention: the ended tasks are removed (last: with taskq.retention = 0
# tasks end and vanish at once).
# ---------------------------------------------------------------------
sql(q{ALTER SYSTEM SET taskq.retention = 0; SELECT pg_reload_conf()});
ok( $node->poll_query_until('app', "SELECT count(*) = 0 FROM taskq.tasks WHERE id IN ($mail, $held)"),
	'retention removes the ended tasks');
trap_held('retention');

done_testing();
