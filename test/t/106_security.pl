# Security with real dispatchers and real login roles: handlers run as the
# enqueuing role (never as the dispatcher's superuser), roles cannot forge,
# rewrite, see or cancel each other's tasks, internals and registration are
# closed to them, a handler cannot SET ROLE away, a search_path full of
# look-alike objects changes nothing, a handler cannot leave objects in the
# dispatcher's session that hijack the next role's handler, and odd
# handler/queue names round-trip or are refused clearly.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use TaskqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = taskq_node('security', <<'EOC', init => { extra => [ '--encoding=UTF8', '--locale=C' ] });
# one dispatcher: every task runs in the same session, one after another
taskq.workers = 1
taskq.poll_interval = '200ms'
taskq.retry_backoff = '50ms'
taskq.ack_timeout = '1h'
log_statement = none
EOC


# run SQL as a role; as() dies on error, try_as() returns (ok, stdout, stderr)
sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, extra_params => [ '-U', $role ]);
}

sub try_as
{
	my ($role, $q) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres', $q, extra_params => [ '-U', $role ]);
	return ($ret == 0, $out, $err);
}
sub sql { return as('postgres', $_[0]); }

# a statement that must fail for $role with an error matching $re
sub refused
{
	my ($role, $q, $re, $name) = @_;
	my ($ok, $out, $err) = try_as($role, $q);
	ok(!$ok, "$name: refused");
	like($err, $re, "$name: error says why") or diag "stderr: $err";
	return;
}

sub wait_ended
{
	my ($id) = @_;
	return $node->poll_query_until('postgres',
		"SELECT status::text NOT IN ('queued', 'running') FROM taskq.tasks WHERE id = $id");
}

sql(<<'EOS');
CREATE EXTENSION taskq;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE listener LOGIN;
-- the pre-15 default: anyone may create in public (so alice can try to
-- shadow names there)
GRANT CREATE ON SCHEMA public TO PUBLIC;

-- what a handler sees: its current_user and session_user
CREATE TABLE public.notes (tag text, cu text, su text, detail text);
GRANT INSERT, SELECT ON public.notes TO alice, bob;
CREATE FUNCTION public.note(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.notes VALUES (p->>'tag', current_user, session_user, NULL);
    RETURN jsonb_build_object('current_user', current_user, 'session_user', session_user);
END $$;

-- a table alice may not write, and a handler that writes it
CREATE TABLE public.secrets (x text);
CREATE FUNCTION public.write_secret(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.secrets VALUES ('stolen') $$;

-- a handler that tries to become the superuser, catching each failure
CREATE FUNCTION public.escalate(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    errs text := '';
BEGIN
    BEGIN EXECUTE 'SET ROLE postgres'; EXCEPTION WHEN others THEN errs := errs || 'SET ROLE: ' || SQLERRM || E'\n'; END;
    BEGIN EXECUTE 'SET SESSION AUTHORIZATION postgres'; EXCEPTION WHEN others THEN errs := errs || 'SET SESSION AUTHORIZATION: ' || SQLERRM || E'\n'; END;
    BEGIN PERFORM set_config('role', 'postgres', false); EXCEPTION WHEN others THEN errs := errs || 'set_config: ' || SQLERRM || E'\n'; END;
    BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN others THEN errs := errs || 'RESET ROLE: ' || SQLERRM || E'\n'; END;
    INSERT INTO public.notes VALUES ('escalate', current_user, session_user, errs);
    RETURN jsonb_build_object('current_user', current_user);
END $$;
-- the same without catching: the task fails with the error
CREATE FUNCTION public.set_role(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET ROLE postgres;
    INSERT INTO public.secrets VALUES ('after SET ROLE as ' || current_user);
END $$;

-- bob's handler writes his table by its unqualified name, as most code does
CREATE TABLE public.bob_notes (note text, cu text);
GRANT INSERT, SELECT ON public.bob_notes TO bob;
CREATE FUNCTION public.bob_note(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bob_notes VALUES (p->>'note', current_user);
END $$;

SELECT taskq.register_handler('note', 'public.note(jsonb)');
SELECT taskq.register_handler('write_secret', 'public.write_secret(jsonb)', max_attempts => 1);
SELECT taskq.register_handler('escalate', 'public.escalate(jsonb)', max_attempts => 1);
SELECT taskq.register_handler('set_role', 'public.set_role(jsonb)', max_attempts => 1);
SELECT taskq.register_handler('bob_note', 'public.bob_note(jsonb)', max_attempts => 1);
EOS

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM taskq.workers WHERE type = 'dispatcher'}),
	'the dispatcher runs');

# ---------------------------------------------------------------------
# Tasks run as the enqueuing role.
# ---------------------------------------------------------------------
my $t = as('alice', q{SELECT taskq.enqueue('note', '{"tag": "alice-1"}')});
ok(wait_ended($t), "alice's task $t ends");
is(sql("SELECT status::text || '|' || owner::text FROM taskq.tasks WHERE id = $t"),
	'completed|alice', "alice's task completed and is owned by alice");
my ($cu, $su) = split /\|/, sql(q{SELECT cu, su FROM notes WHERE tag = 'alice-1'});
is($cu, 'alice', 'the handler ran with current_user alice');
note "the handler's session_user was $su";
is(sql("SELECT result->>'current_user' FROM taskq.tasks WHERE id = $t"),
	'alice', 'the stored result says current_user alice');

$t = as('alice', q{SELECT taskq.enqueue('write_secret')});
ok(wait_ended($t), "alice's forbidden write ($t) ends");
my ($st, $err) = split /\|/, sql("SELECT status, last_error FROM taskq.tasks WHERE id = $t"), 2;
is($st, 'failed', 'a handler writing a table alice may not write fails');
like($err, qr/permission denied for table secrets/, "last_error: $err");
is(sql('SELECT count(*) FROM secrets'), '0', 'nothing was written to the table');

# ---------------------------------------------------------------------
# alice cannot forge a task's owner, nor rewrite the outbox.
# ---------------------------------------------------------------------
is( sql(q{SELECT count(*) FROM pg_proc p, unnest(p.proargnames) a
          WHERE p.pronamespace = 'taskq'::regnamespace
            AND p.proname IN ('enqueue', 'enqueue_many', 'retry', 'register_handler')
            AND a ~* 'owner|role|user'}),
	'0', 'no API function takes an owner, role or user argument');
refused('alice', 'SET ROLE bob', qr/permission denied to set role "bob"/, 'alice SET ROLE bob');
refused('alice',
	q{INSERT INTO taskq.tasks (priority, max_attempts, owner, run_at, timeout, handler, queue, payload)
      VALUES (0, 1, 'bob', now(), '1 min', 'note', 'default', '{}')},
	qr/permission denied for table tasks/, 'alice INSERT INTO taskq.tasks as bob');
refused('alice', q{UPDATE taskq.tasks SET owner = 'bob'},
	qr/permission denied for table tasks/, 'alice UPDATE taskq.tasks');
refused('alice', q{DELETE FROM taskq.tasks}, qr/permission denied for table tasks/,
	'alice DELETE FROM taskq.tasks');
refused('alice', q{UPDATE taskq.handlers SET target = 'public.write_secret(jsonb)'},
	qr/permission denied for table handlers/, 'alice UPDATE taskq.handlers');
refused('alice', q{INSERT INTO taskq.queues VALUES ('default', true, now())},
	qr/permission denied for table queues/, 'alice INSERT INTO taskq.queues');
for my $f ('taskq._crash_suspect(1)', 'taskq._dispatcher_alive(1, now())',
	'taskq._wake_launcher()')
{
	refused('alice', "SELECT $f", qr/permission denied for function/, "alice calls $f");
}
is(sql(q{SELECT count(*) FROM taskq.tasks WHERE owner::text <> 'alice'}),
	'0', 'every task so far is owned by alice');

# ---------------------------------------------------------------------
# Registration.
# ---------------------------------------------------------------------
refused('alice', q{SELECT taskq.register_handler('mine', 'public.note(jsonb)')},
	qr/permission denied for function register_handler/, 'alice registers a handler');
refused('alice', q{SELECT taskq.unregister_handler('note')},
	qr/permission denied for function unregister_handler/, 'alice unregisters a handler');
refused('alice', q{SELECT taskq.pause('default')}, qr/permission denied for function pause/,
	'alice pauses a queue');
sql(q{GRANT EXECUTE ON FUNCTION taskq.register_handler(text, text, text, text, int, int, interval, boolean, boolean),
                               taskq.unregister_handler(text) TO alice, listener});
refused('alice', q{SELECT taskq.register_handler('note', 'public.write_secret(jsonb)')},
	qr/permission denied to update handler "note"/,
	'alice (granted register_handler) re-registers the superuser\'s handler');
refused('alice', q{SELECT taskq.unregister_handler('note')},
	qr/permission denied to unregister handler "note"/,
	'alice (granted unregister_handler) removes the superuser\'s handler');
is(sql(q{SELECT target || '|' || owner::text FROM taskq.handlers WHERE name = 'note'}),
	'public.note(jsonb)|postgres', 'the superuser\'s handler is unchanged');

# ---------------------------------------------------------------------
# A handler cannot SET ROLE away from its role.
# ---------------------------------------------------------------------
$t = as('alice', q{SELECT taskq.enqueue('escalate')});
ok(wait_ended($t), "alice's escalating task $t ends");
my ($ecu, $edetail) = split /\|/, sql(q{SELECT cu, detail FROM notes WHERE tag = 'escalate'}), 2;
note "the handler's attempts:\n$edetail";
is($ecu, 'alice', 'after every attempt the handler is still alice');
like($edetail, qr/^SET ROLE: .+$/m, 'SET ROLE postgres failed');
like($edetail, qr/^SET SESSION AUTHORIZATION: .+$/m, 'SET SESSION AUTHORIZATION failed');
like($edetail, qr/^set_config: .+$/m, "set_config('role') failed");
$t = as('alice', q{SELECT taskq.enqueue('set_role')});
ok(wait_ended($t), "alice's SET ROLE task $t ends");
($st, $err) = split /\|/, sql("SELECT status, last_error FROM taskq.tasks WHERE id = $t"), 2;
is($st, 'failed', 'a handler that runs SET ROLE postgres fails');
like($err, qr/role/, "and last_error records why: $err");
is(sql('SELECT count(*) FROM secrets'), '0', 'and it wrote nothing');

# ---------------------------------------------------------------------
# bob vs alice's tasks; a listener acks them.
# ---------------------------------------------------------------------
sql(q{SELECT taskq.pause('held')});
my $held = as('alice', q{SELECT taskq.enqueue('note', '{"tag": "held"}', queue => 'held')});
is(as('bob', q{SELECT count(*) FROM taskq.tasks}), '0', 'bob sees none of alice\'s tasks');
refused('bob', "SELECT taskq.cancel($held)", qr/task $held does not exist/,
	"bob cancels alice's queued task (for him it does not exist)");
refused('bob', "SELECT taskq.wait($held, '0')", qr/task $held does not exist/,
	"bob waits on alice's task");
my $failed_one = sql(q{SELECT id FROM taskq.tasks WHERE handler = 'write_secret'});
refused('bob', "SELECT taskq.retry($failed_one)", qr/task $failed_one does not exist/,
	"bob retries alice's failed task (for him it does not exist)");
is(sql("SELECT status FROM taskq.tasks WHERE id = $held"), 'queued',
	"alice's task is still queued");
is(as('alice', "SELECT taskq.cancel($held)"), 't', 'alice can cancel her own task');

as('listener', q{SELECT taskq.register_handler('mail', 'mailbox', kind => 'notify')});
my @mail = split /\n/, as('alice',
	q{SELECT taskq.enqueue('mail', '{"to": "x"}') FROM generate_series(1, 2)});
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 2 FROM taskq.tasks WHERE id IN ($mail[0], $mail[1]) AND status::text = 'dispatched'"),
	"alice's two notify tasks are dispatched");
refused('bob', "SELECT taskq.ack($mail[0])", qr/task $mail[0] does not exist/,
	"bob acks alice's notify task (for him it does not exist)");
refused('bob', "SELECT taskq.nack($mail[0], 'no')", qr/task $mail[0] does not exist/,
	"bob nacks alice's notify task (for him it does not exist)");
is(as('listener', "SELECT taskq.ack($mail[0], '{\"by\": \"listener\"}')"), 't',
	'the role that registered the notify handler acks alice\'s task');
is(as('listener', "SELECT taskq.ack($mail[1])"), 't', 'and the second one');
is( sql("SELECT string_agg(status::text, ',' ORDER BY id) FROM taskq.tasks WHERE id IN ($mail[0], $mail[1])"),
	'completed,completed', 'both notify tasks completed');
is(as('listener', q{SELECT count(*) FROM taskq.tasks}), '0',
	'the listener still does not see alice\'s tasks');

# ---------------------------------------------------------------------
# search_path: look-alikes of taskq's objects first in alice's path.
# ---------------------------------------------------------------------
as('alice', <<'EOS');
CREATE TABLE public.decoy_calls (who text, what text, backend text);
GRANT INSERT, SELECT ON public.decoy_calls TO PUBLIC;
CREATE FUNCTION public.decoy(what text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.decoy_calls
    SELECT current_user, what, backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()
$$;
CREATE TABLE public.tasks (LIKE taskq.tasks);
CREATE TABLE public.handlers (LIKE taskq.handlers);
CREATE TABLE public.queues (LIKE taskq.queues);
CREATE FUNCTION public._crash_suspect(bigint) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.decoy('_crash_suspect'); RETURN true; END $$;
CREATE FUNCTION public._dispatcher_alive(int, timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.decoy('_dispatcher_alive'); RETURN false; END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.decoy('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.status_eq(taskq.status, taskq.status) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.decoy('status ='); RETURN $1::text OPERATOR(pg_catalog.=) $2::text; END $$;
CREATE OPERATOR public.= (LEFTARG = taskq.status, RIGHTARG = taskq.status, FUNCTION = public.status_eq);
CREATE FUNCTION public.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.decoy('text ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
ALTER ROLE alice SET search_path = public, taskq, pg_catalog;
EOS
# alice's session now resolves names to her objects first
is(as('alice', q{SELECT current_setting('search_path')}), 'public, taskq, pg_catalog',
	'alice\'s search_path puts her look-alikes first');

sql(q{SELECT taskq.resume('held')});
my @ids;
push @ids, as('alice', q{SELECT taskq.enqueue('note', '{"tag": "sp-1"}')});
push @ids, as('alice', q{SELECT taskq.enqueue('note', '{"tag": "sp-2"}', dedupe_key => 'k1')});
push @ids, as('alice', q{SELECT taskq.enqueue('write_secret', '{}', dedupe_key => 'k2')});
for my $id (@ids) { ok(wait_ended($id), "alice's task $id ends"); }
is( sql("SELECT string_agg(status::text, ',' ORDER BY id) FROM taskq.tasks WHERE id IN (" . join(',', @ids) . ')'),
	'completed,completed,failed', 'alice\'s tasks were dispatched normally');
is(as('alice', "SELECT taskq.retry($ids[2])"), 't',
	'alice retries her failed task that has a dedupe key');
ok(wait_ended($ids[2]), 'the retried task ends');
is(as('alice', "SELECT status FROM taskq.wait($ids[0], '1s')"), 'completed', 'wait() works for her');
is(as('alice', "SELECT taskq.cancel($ids[0])"), 'f', 'cancel() of an ended task says false');
is(sql(q{SELECT count(*) FROM public.tasks}) . '|' . sql(q{SELECT count(*) FROM public.handlers}),
	'0|0', 'nothing was written to her look-alike tables');
my $calls = sql(q{SELECT coalesce(string_agg(DISTINCT who || ' via ' || what || ' in ' || coalesce(backend, '?'), '; '), '')
                  FROM public.decoy_calls WHERE who <> 'alice'});
is($calls, '', 'none of her look-alike functions or operators ran as another role');
note 'her look-alikes ran (as herself) for: '
  . (sql(q{SELECT string_agg(DISTINCT what, ', ') FROM public.decoy_calls WHERE who = 'alice'}) || 'nothing');

# ---------------------------------------------------------------------
# A handler cannot leave objects in the dispatcher's session that capture
# the next role's handler: alice's handler creates a temporary table named
# like bob's, with a trigger, in the (shared) dispatcher session.
# ---------------------------------------------------------------------
as('alice', <<'EOS');
CREATE TABLE public.loot (who text, note text);
GRANT INSERT ON public.loot TO PUBLIC;
CREATE FUNCTION public.loot_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.loot VALUES (current_user, NEW.note);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE alice SUPERUSER';
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION public.plant(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE bob_notes (note text, cu text);
    GRANT ALL ON pg_temp.bob_notes TO PUBLIC;
    CREATE TRIGGER steal BEFORE INSERT ON pg_temp.bob_notes
        FOR EACH ROW EXECUTE FUNCTION public.loot_trigger();
END $$;
SELECT taskq.register_handler('plant', 'public.plant(jsonb)', max_attempts => 1);
EOS
my $plant = as('alice', q{SELECT taskq.enqueue('plant')});
ok(wait_ended($plant), "alice's planting task $plant ends");
note 'planting task: ' . sql("SELECT status || ' ' || coalesce(last_error, '') FROM taskq.tasks WHERE id = $plant");
my $bobs = as('bob', q{SELECT taskq.enqueue('bob_note', '{"note": "bob was here"}')});
ok(wait_ended($bobs), "bob's task $bobs ends");
is(sql("SELECT status FROM taskq.tasks WHERE id = $bobs"), 'completed', "bob's task completed");
is(sql(q{SELECT count(*) FROM public.bob_notes WHERE note = 'bob was here' AND cu = 'bob'}),
	'1', "bob's handler wrote his own table");
is(sql(q{SELECT coalesce(string_agg(who || ': ' || note, '; '), '') FROM public.loot}),
	'', "no code of alice's ran as bob (her trigger captured nothing)");
# the same for a task a superuser enqueues for bob's handler
my $admins = sql(q{SELECT taskq.enqueue('bob_note', '{"note": "admin was here"}')});
ok(wait_ended($admins), "the superuser's task $admins ends");
is(sql(q{SELECT count(*) FROM public.bob_notes WHERE note = 'admin was here' AND cu = 'postgres'}),
	'1', "the superuser's task wrote bob's table");
is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'}), 'f',
	'alice did not become a superuser through a later superuser task');

# ---------------------------------------------------------------------
# Names with quotes, spaces and non-ASCII characters.
# ---------------------------------------------------------------------
my @names = ("it's \"quoted\"", 'with  two spaces', 'ünïcødé ✓ 名前', ' lead and trail ');
my $qname = "queue \"q\" ü ✓";
for my $i (0 .. $#names)
{
	my $n  = $names[$i];
	(my $lit = $n) =~ s/'/''/g;
	(my $qlit = $qname) =~ s/'/''/g;
	my ($ok, $out, $e) = try_as('postgres',
		qq{SELECT taskq.register_handler('$lit', 'public.note(jsonb)', queue => '$qlit')});
	ok($ok, "handler name [$n] is accepted") or diag $e;
	my $id = sql(qq{SELECT taskq.enqueue('$lit', '{"tag": "name-$i"}')});
	ok(wait_ended($id), "a task of handler [$n] ends");
	is(sql("SELECT status || '|' || handler || '|' || queue FROM taskq.tasks WHERE id = $id"),
		"completed|$n|$qname", "handler [$n] and queue [$qname] round-trip and the task completes");
}
(my $qlit = $qname) =~ s/'/''/g;
sql(qq{SELECT taskq.pause('$qlit')});
my $p = sql(qq{SELECT taskq.enqueue('$names[2]', '{"tag": "paused"}')});
is(sql(qq{SELECT paused FROM taskq.queues WHERE name = '$qlit'}), 't', 'the odd queue name pauses');
sql(qq{SELECT taskq.resume('$qlit')});
ok(wait_ended($p), 'and resumes');
is( sql(qq{SELECT count(*) FROM taskq.stats WHERE queue = '$qlit' AND handler = '$names[2]'}),
	'1', 'taskq.stats shows the odd names');

my %bad = (
	'a' x 64                => qr/invalid handler name .*1 to 63 bytes/s,
	'名' x 22               => qr/invalid handler name .*1 to 63 bytes/s,
	''                      => qr/invalid handler name/,
	"tab\there"             => qr/invalid handler name .*control characters/s,
	"new\nline"             => qr/invalid handler name .*control characters/s,
);
for my $n (sort keys %bad)
{
	(my $lit = $n) =~ s/'/''/g;
	$lit =~ s/\t/\\t/g;
	$lit =~ s/\n/\\n/g;
	my ($ok, $out, $e) = try_as('postgres',
		qq{SELECT taskq.register_handler(E'$lit', 'public.note(jsonb)')});
	(my $shown = $n) =~ s/([\t\n])/sprintf('\\x%02x', ord $1)/ge;
	ok(!$ok, "handler name [$shown] is refused");
	like($e, $bad{$n}, "with a clear error") or diag $e;
}
my ($qok, $qout, $qerr) = try_as('postgres',
	q{SELECT taskq.enqueue('note', '{}', queue => E'bad\tqueue')});
ok(!$qok, 'a queue name with a control character is refused');
like($qerr, qr/invalid queue name/, 'with a clear error');

$node->stop;
done_testing();
